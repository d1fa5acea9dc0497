"""GPU codec timing: the fused Triton kernels against the eager-PyTorch baseline and a device copy,
on the KV shapes of real models. The rule ``time_gpu`` and ``bench/gpu_codecs.py`` both call this.

For each shape (layers x kv_heads x head_dim of a model, a sequence length, fp16 or bf16) and each
codec with a kernel, it checks the kernel's payload against the CPU codec byte for byte: the first
and last layer where seq <= 2048, the whole cache against the eager baseline everywhere, and the
CPU codec again wherever those two disagree. Then it times encode and decode with CUDA events
(``triton.testing.do_bench``: median, L2 flushed between runs). When a cache is smaller than 4x the
L2, inputs rotate over up to 16 buffers. Bytes moved are input read + output written. The copy
bandwidth is measured in the same run (``dst.copy_(src)``, 2 GiB, read + write).
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

import torch

from ..errors import KVError

MODEL_SHAPES = {  # layers, kv_heads, head_dim
    "llama-3.1-8b": (32, 8, 128),
    "qwen2.5-7b": (28, 4, 128),
    "llama-3.2-3b": (28, 8, 128),
    "mistral-7b": (32, 8, 128),
    "phi-3.5-mini": (32, 32, 96),
    "gemma-3-270m": (18, 1, 256),
    "smollm2-135m": (30, 3, 64),
}
SEQS = (512, 2048, 8192, 32768)
CODECS = ("int8", "int4", "fp8_e4m3")
DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}


def require_gpu(label: str | None = None) -> str:
    """The CUDA device's name; a clear error without one, or when it is not the GPU ``label`` names."""
    if not torch.cuda.is_available():
        raise KVError("GPU codec timing needs a CUDA device and this machine has none; the cached tables "
                      "under results/timing/gpu/ were measured on lent GPUs (bench/NOTES.md)")
    name = torch.cuda.get_device_name()
    if label is not None and label.lower() not in name.lower().replace(" ", ""):
        raise KVError(f"this job runs on {name!r}, but its output is labelled {label!r}: "
                      f"ask for results/timing/gpu/<label>.csv with a label in the device's name")
    return name


def copy_bandwidth(do_bench) -> float:
    """GB/s of a 2 GiB device-to-device copy, bytes read + written (the roofline of these codecs)."""
    n = 1 << 30
    src = torch.randn(n, device="cuda", dtype=torch.bfloat16)
    dst = torch.empty_like(src)
    ms = do_bench(lambda: dst.copy_(src), warmup=50, rep=300, return_mode="median")
    del src, dst
    return 2 * n * 2 / ms / 1e6


def _same_as_cpu(name: str, kv: torch.Tensor, payload: torch.Tensor, layers: Iterable[int]) -> bool:
    """The payload of these layers, and its decode, equal the CPU codec's."""
    from . import decode_cache
    from .reference import decode_cache_reference, encode_cache_reference

    size = payload.numel() // kv.shape[0]
    for i in layers:
        one = kv[i:i + 1].cpu()
        data = encode_cache_reference(name, one)
        part = payload[i * size:(i + 1) * size]
        if part.cpu().numpy().tobytes() != data:
            return False
        dec = decode_cache(name, part, tuple(one.shape), kv.dtype)
        if not torch.equal(dec.cpu(), decode_cache_reference(name, data, tuple(one.shape), kv.dtype)):
            return False
    return True


def check_real_caches(paths: Sequence[str | Path], codecs: Sequence[str] = CODECS) -> list[str]:
    """Every layer of real kvwire KV files through every kernel against the CPU codec; a line per
    (file, codec); ``KVError`` at the first difference."""
    from ..kv import load_kv
    from . import decode_cache, encode_cache
    from .reference import decode_cache_reference, encode_cache_reference

    lines = []
    for path in paths:
        rec = load_kv(path)
        kv = torch.stack([torch.stack([layer.k, layer.v]) for layer in rec.layers]).cuda()
        for name in codecs:
            payload = encode_cache(name, kv)
            data = encode_cache_reference(name, kv.cpu())
            same = payload.cpu().numpy().tobytes() == data
            dec = decode_cache(name, payload, tuple(kv.shape), kv.dtype)
            same_dec = torch.equal(dec.cpu(), decode_cache_reference(name, data, tuple(kv.shape), kv.dtype))
            lines.append(f"real KV {Path(path).name} {list(kv.shape)} {name}: payload identical {same}, "
                         f"decode identical {same_dec}")
            if not (same and same_dec):
                raise KVError(lines[-1])
    return lines


def _random_caches(shape: tuple[int, ...], dtype: torch.dtype, n: int, seed: int) -> list[torch.Tensor]:
    """Rows of very different magnitudes (what per-token scales meet in real caches), never zeros."""
    g = torch.Generator(device="cuda").manual_seed(seed)
    return [(torch.randn(shape, device="cuda", generator=g) *
             torch.rand(shape[:-1] + (1,), device="cuda", generator=g) * 4).to(dtype) for _ in range(n)]


def time_shape(do_bench, model: str, shape: tuple[int, ...], dtype: torch.dtype, codecs: Sequence[str],
               *, gpu: str, copy_gbps: float, l2_bytes: int, log: Callable[[str], None] = print) -> list[dict]:
    """Check and time every codec on one cache shape [layers, 2, kv_heads, seq, head_dim]: a row per
    (codec, implementation, op)."""
    from . import decode_cache, encode_cache, payload_buffer
    from .eager import decode_cache_eager, encode_cache_eager

    layers, _, heads, seq, dim = shape
    raw = math.prod(shape) * 2
    n_buf = max(1, min(16, math.ceil(4 * l2_bytes / raw)))
    bufs = _random_caches(shape, dtype, n_buf, seed=seq + dim)
    rows = []
    for name in codecs:
        payload = encode_cache(name, bufs[0])
        eager = encode_cache_eager(name, bufs[0])
        eager_ok = ok = torch.equal(eager, payload)
        if seq <= 2048:
            ok &= _same_as_cpu(name, bufs[0], payload, sorted({0, layers - 1}))
        if not eager_ok:  # who is wrong? the layers that differ, against the CPU codec
            size = payload.numel() // layers
            bad = sorted({int(b) // size for b in (eager != payload).nonzero().flatten()[:1000]})
            ok = _same_as_cpu(name, bufs[0], payload, bad)
            eager_ok = all(eager[i * size:(i + 1) * size].cpu().numpy().tobytes()
                           == _cpu_payload(name, bufs[0][i:i + 1]) for i in bad)
            log(f"  {model} {seq} {dtype} {name}: eager and Triton differ in layers {bad}; "
                f"Triton identical to the CPU codec there: {ok}, eager: {eager_ok}")
        out = payload_buffer(name, shape, "cuda")
        payloads = [encode_cache(name, b) for b in bufs]
        dec_out = torch.empty(shape, dtype=dtype, device="cuda")
        turn = {"i": 0}

        def nxt() -> int:
            turn["i"] = (turn["i"] + 1) % n_buf
            return turn["i"]

        timed = {
            ("triton", "encode"): lambda: encode_cache(name, bufs[nxt()], out=out, check=False),
            ("triton", "decode"): lambda: decode_cache(name, payloads[nxt()], shape, dtype, out=dec_out, check=False),
            ("eager", "encode"): lambda: encode_cache_eager(name, bufs[nxt()]),
            ("eager", "decode"): lambda: decode_cache_eager(name, payloads[nxt()], shape, dtype),
        }
        ms = {k: do_bench(f, warmup=25, rep=100, return_mode="median") for k, f in timed.items()}
        pay = payload.numel()
        for (impl, op), t in ms.items():
            moved = raw + pay
            rows.append({
                "gpu": gpu, "copy_gbps": round(copy_gbps, 1), "model": model, "layers": layers,
                "kv_heads": heads, "seq": seq, "head_dim": dim, "dtype": str(dtype).split(".")[-1],
                "codec": name, "impl": impl, "op": op, "ms": t, "raw_bytes": raw, "payload_bytes": pay,
                "ratio": raw / pay, "bytes_moved": moved, "gbps": moved / t / 1e6,
                "frac_copy": moved / t / 1e6 / copy_gbps, "speedup_vs_eager": ms[("eager", op)] / t,
                "identical_to_cpu": ok if impl == "triton" else eager_ok,
            })
        del payloads, out, dec_out, eager, payload
    del bufs
    torch.cuda.empty_cache()
    return rows


def _cpu_payload(name: str, kv: torch.Tensor) -> bytes:
    from .reference import encode_cache_reference

    return encode_cache_reference(name, kv)


def time_gpu(out_csv: str | Path, *, label: str | None = None, models: Mapping[str, tuple[int, int, int]] | None = None,
             seqs: Sequence[int] = SEQS, dtypes: Sequence[str] = tuple(DTYPES), codecs: Sequence[str] = CODECS,
             kv_files: Sequence[str | Path] = (), log: Callable[[str], None] = print):
    """Check and time every (model shape, seq, dtype, codec) and write the table to ``out_csv``
    (rewritten after every model, atomically: a run cut short keeps what it measured)."""
    import pandas as pd
    import triton
    from triton.testing import do_bench

    from ..io import write_csv

    gpu = require_gpu(label)
    unknown = sorted(set(dtypes) - set(DTYPES))
    if unknown:
        raise KVError(f"GPU timing dtypes are {sorted(DTYPES)}, not {unknown}")
    l2 = getattr(torch.cuda.get_device_properties(0), "L2_cache_size", 50 << 20)
    copy_gbps = copy_bandwidth(do_bench)
    log(f"{gpu}: copy {copy_gbps:.0f} GB/s (read+write), L2 {l2 >> 20} MiB, torch {torch.__version__}, "
        f"triton {triton.__version__}")
    for line in check_real_caches(kv_files, codecs):
        log(line)
    rows, t0 = [], time.time()
    for model, (layers, heads, dim) in (models or MODEL_SHAPES).items():
        for seq in seqs:
            for dtype in dtypes:
                rows += time_shape(do_bench, model, (layers, 2, heads, seq, dim), DTYPES[dtype], codecs, gpu=gpu,
                                   copy_gbps=copy_gbps, l2_bytes=l2, log=log)
        write_csv(out_csv, pd.DataFrame(rows))
        log(f"  {model} done ({time.time() - t0:.0f} s)")
    return pd.DataFrame(rows)


def summary(table) -> str:
    """The bf16 rows as a text table: Triton time, GB/s, fraction of copy, eager time, speed-up."""
    t = table[(table.impl == "triton") & (table["dtype"] == "bfloat16")]
    eager = table[table.impl == "eager"].set_index(["model", "seq", "dtype", "codec", "op"])["ms"]
    lines = [f"{'model':14} {'seq':>6} {'codec':9} {'op':6} {'triton ms':>9} {'GB/s':>6} {'of copy':>7} "
             f"{'eager ms':>9} {'speedup':>7} ok"]
    for _, r in t.iterrows():
        e = eager.loc[(r["model"], r["seq"], r["dtype"], r["codec"], r["op"])]
        lines.append(f"{r['model']:14} {r['seq']:6d} {r['codec']:9} {r['op']:6} {r['ms']:9.3f} {r['gbps']:6.0f} "
                     f"{r['frac_copy']:7.2f} {e:9.3f} {r['speedup_vs_eager']:7.1f} {r['identical_to_cpu']}")
    bad = int((~table[table.impl == "triton"].identical_to_cpu.astype(bool)).sum())
    eager_bad = int((~table[table.impl == "eager"].identical_to_cpu.astype(bool)).sum())
    lines.append(f"{len(table)} rows; Triton not identical to the CPU codec: {bad}; eager: {eager_bad}")
    return "\n".join(lines)
