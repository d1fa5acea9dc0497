"""The GPU codec bench's files: KV files read, timing tables written (rule ``time_gpu``,
``bench/gpu_codecs.py``). The checks and timings themselves are ``kvwire.kernels.bench``'s, on
tensors and records."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, Mapping, Sequence

import torch

from ..errors import KVError
from ..io import write_csv
from ..kernels.bench import (DTYPES, MODEL_SHAPES, SEQS, bench_kernels, check_record, concat, copy_bandwidth,
                             gpu_environment, layer_tokens, nvcomp_rows, require_gpu, time_record, time_shape)
from ..kv import load_kv


def time_gpu(out_csv: str | Path, *, label: str | None = None, models: Mapping[str, tuple[int, int, int]] | None = None,
             seqs: Sequence[int] = SEQS, dtypes: Sequence[str] = tuple(DTYPES), codecs: Sequence[str] | None = None,
             kv_files: Sequence[str | Path] = (), rep_ms: int = 100, log: Callable[[str], None] = print,
             time_kv_files: bool = False, cases: Sequence[tuple[str, int]] | None = None,
             cpu_check_seq: int = 2048):
    """Check and time every (model shape, seq, dtype, codec) and write the table to ``out_csv``
    (rewritten after every model, atomically: a run cut short keeps what it measured). ``codecs``:
    labels of ``BENCH_CODECS`` (default: every one with a kernel). ``kv_files`` (real caches) are
    checked against the CPU codec and, with ``time_kv_files``, timed too (``time_real``: rows whose
    ``cache`` names the file). ``cases``: (model, seq) pairs to time instead of ``models`` x ``seqs``
    (``kernels.bench.ISSUE30_CASES``: the study's own cache sizes and two large ones). ``cpu_check_seq``:
    the longest synthetic cache whose first and last layers are checked against the CPU codec (longer
    ones are checked against the eager baseline's bytes; real caches always against the CPU codec)."""
    from triton.testing import do_bench

    gpu = require_gpu(label)
    unknown = sorted(set(dtypes) - set(DTYPES))
    if unknown:
        raise KVError(f"GPU timing dtypes are {sorted(DTYPES)}, not {unknown}")
    l2 = getattr(torch.cuda.get_device_properties(0), "L2_cache_size", 50 << 20)
    copy_gbps = copy_bandwidth(do_bench)
    env = gpu_environment()
    log(f"{gpu}: copy {copy_gbps:.0f} GB/s (read+write), L2 {l2 >> 20} MiB, driver {env['driver']}, "
        f"CUDA {env['cuda']}, torch {env['torch']}, triton {env['triton']}")

    def table():
        return concat(tables).assign(**env) if tables else concat(tables)

    kernels = bench_kernels(codecs)
    log(f"codecs with kernels: {', '.join(k for k, _ in kernels)}")
    for line in check_real_caches(kv_files, [k for k, _ in kernels]):
        log(line)
    tables, t0 = [], time.time()
    if time_kv_files and kv_files:
        tables.append(time_real(do_bench, kv_files, kernels, gpu=gpu, copy_gbps=copy_gbps, l2_bytes=l2,
                                rep_ms=rep_ms, log=log))
        write_csv(out_csv, table())
        log(f"  real caches done ({time.time() - t0:.0f} s)")
    shapes = MODEL_SHAPES if models is None else models
    if cases is None:
        cases = [(m, seq) for m in shapes for seq in seqs]
    unknown = sorted({m for m, _ in cases} - set(MODEL_SHAPES))
    if unknown:
        raise KVError(f"GPU bench model shapes are {sorted(MODEL_SHAPES)}, not {unknown}")
    for model, seq in cases:
        layers, heads, dim = MODEL_SHAPES[model]
        for dtype in dtypes:
            tables.append(time_shape(do_bench, model, (layers, 2, heads, seq, dim), DTYPES[dtype], kernels,
                                     gpu=gpu, copy_gbps=copy_gbps, l2_bytes=l2, rep_ms=rep_ms, log=log,
                                     tokens=layer_tokens(model, layers, seq), cpu_check_seq=cpu_check_seq))
            write_csv(out_csv, table())  # after every shape: a run cut short keeps them
        log(f"  {model} at {seq} tokens done ({time.time() - t0:.0f} s)")
    return table()


def check_real_caches(paths: Sequence[str | Path], codecs: Sequence[str] | None = None,
                      device: str = "cuda") -> list[str]:
    """``kernels.bench.check_record`` on every KV file: a line per (file, codec); ``KVError`` at the first failure."""
    lines = []
    for path in paths:
        lines += check_record(load_kv(path), Path(path).name, codecs, device)
    return lines


def time_real(do_bench, kv_files: Sequence[str | Path], kernels, *, gpu: str, copy_gbps: float, l2_bytes: int,
              rep_ms: int = 100, log: Callable[[str], None] = print, device: str = "cuda"):
    """``kernels.bench.time_record`` on every KV file, one table (rows whose ``cache`` names the file)."""
    return concat([time_record(do_bench, load_kv(path), Path(path).name, kernels, gpu=gpu, copy_gbps=copy_gbps,
                               l2_bytes=l2_bytes, rep_ms=rep_ms, log=log, device=device) for path in kv_files])


def time_nvcomp(do_bench, kv_files: Sequence[str | Path], codecs: Sequence[str] | None = None,
                algorithms: Sequence[str] | None = None, *, gpu: str, min_bytes: int = 64 << 20,
                out_csv: str | Path | None = None, log: Callable[[str], None] = print):
    """``kernels.bench.nvcomp_rows`` on every KV file, one table; ``out_csv`` is rewritten after every
    codec (a run cut short keeps what it measured)."""
    import pandas as pd

    from ..kernels.nvcomp import ALGORITHMS, version

    log(f"nvCOMP {version()}: {', '.join(algorithms or ALGORITHMS)}")
    tables = []
    for path in kv_files:
        def save(so_far: list[dict], done=tuple(tables)) -> None:
            if out_csv is not None:
                write_csv(out_csv, concat([*done, pd.DataFrame(so_far)]))

        tables.append(nvcomp_rows(do_bench, load_kv(path), Path(path).name, codecs, algorithms, gpu=gpu,
                                  min_bytes=min_bytes, log=log, progress=save))
    return concat(tables)
