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


# label -> (codec, params): every codec setting of the default study, then other kernels' defaults
BENCH_CODECS: dict[str, tuple[str, dict]] = {
    "int8": ("int8", {}), "int8_channel": ("int8", {"granularity": "channel"}),
    "int4": ("int4", {}), "int4_channel": ("int4", {"granularity": "channel"}),
    "fp8_e4m3": ("fp8_e4m3", {}), "fp8_e5m2": ("fp8_e5m2", {}),
    "kivi4": ("kivi4", {}), "kivi2": ("kivi2", {}), "k8v4": ("k8v4", {}),
    "kvquant4": ("kvquant4", {}), "kvquant4_prerope": ("kvquant4", {"pre_rope": True}),
    "cachegen": ("cachegen", {}), "cachegen_none": ("cachegen", {"entropy": "none"}),
    "guardband_8x": ("guardband", {"target_ratio": 8, "recent": 16, "min_body_bits": 4, "strict": True}),
    "streaming_llm": ("streaming_llm", {}), "h2o": ("h2o", {}), "snapkv": ("snapkv", {}),
    "pyramidkv": ("pyramidkv", {}), "keynorm": ("keynorm", {}),
    "prune_quant": ("prune_quant", {"policy": "snapkv", "budget": 0.5, "quant": "kivi4",
                                    "quant_params": {"residual": 32}}),
    "svd_runtime": ("svd_runtime", {}), "svd_runtime_int4": ("svd_runtime_int4", {}),
}
CODECS = tuple(BENCH_CODECS)


def bench_kernels(labels: Sequence[str] | None = None) -> list[tuple[str, "KernelCodec"]]:
    """(label, kernel) of every bench codec setting that has a GPU kernel (``labels``: a subset; an
    unknown label or one without a kernel is an error)."""
    from ..errors import CodecError
    from .base import kernel_for, supported

    if labels is None:
        return [(k, kernel_for(*BENCH_CODECS[k])) for k in BENCH_CODECS if supported(*BENCH_CODECS[k])]
    unknown = [k for k in labels if k not in BENCH_CODECS]
    if unknown:
        raise CodecError(f"unknown GPU bench codec(s) {unknown}; known: {', '.join(BENCH_CODECS)}")
    return [(k, kernel_for(*BENCH_CODECS[k])) for k in labels]


def _decoded_bytes(decoded) -> int:
    from .base import as_layers

    return sum(x.k.numel() * x.k.element_size() * 2 for x in as_layers(decoded))


def check_real_caches(paths: Sequence[str | Path], codecs: Sequence[str] | None = None) -> list[str]:
    """Every layer of real kvwire KV files through every kernel against the CPU codec (with the
    file's own statistics); a line per (file, codec); ``KVError`` at the first failure."""
    from ..kv import load_kv
    from .reference import conformance

    lines = []
    for path in paths:
        rec = load_kv(path)
        kv = torch.stack([torch.stack([layer.k, layer.v]) for layer in rec.layers]).cuda()
        stats = [{k: v.cuda() for k, v in (s or {}).items()} for s in _file_stats(rec)]
        for label, kernel in bench_kernels(codecs):
            missing = [k for k in kernel.needs_stats if k not in stats[0]]
            if missing:
                lines.append(f"real KV {Path(path).name} {label}: skipped, the file has no {missing}")
                continue
            c = conformance(kernel, kv, stats)
            lines.append(f"real KV {Path(path).name} {list(kv.shape)} {label}: payload identical {c.identical}, "
                         f"within tolerance {c.within_tolerance} ({c.differing}/{c.elements} differ, "
                         f"max {c.max_steps} steps), decode identical {c.decode_identical}")
            if not c.ok:
                raise KVError(lines[-1])
    return lines


def _file_stats(rec) -> list[dict]:
    return [dict(s) for s in rec.stats] if rec.stats else [{} for _ in rec.layers]


def _random_caches(shape: tuple[int, ...], dtype: torch.dtype, n: int, seed: int) -> list[torch.Tensor]:
    """Rows of very different magnitudes (what per-token scales meet in real caches), never zeros."""
    g = torch.Generator(device="cuda").manual_seed(seed)
    return [(torch.randn(shape, device="cuda", generator=g) *
             torch.rand(shape[:-1] + (1,), device="cuda", generator=g) * 4).to(dtype) for _ in range(n)]


def time_shape(do_bench, model: str, shape: tuple[int, ...], dtype: torch.dtype,
               codecs: Sequence[tuple[str, "KernelCodec"]], *, gpu: str, copy_gbps: float, l2_bytes: int,
               rep_ms: int = 100, cpu_check_seq: int = 2048, cpu_check_elems: int = 1 << 24,
               log: Callable[[str], None] = print) -> list[dict]:
    """Check and time every (label, kernel) on one cache shape [layers, 2, kv_heads, seq, head_dim]:
    a row per (codec, implementation, op).

    Checks: the whole cache against the eager baseline (exact kernels), the first and last layer
    against the CPU codec where seq <= ``cpu_check_seq``, the first layer otherwise while a layer has
    at most ``cpu_check_elems`` elements (the CPU codec on a 32k-token Phi-3.5 layer takes minutes),
    and the first few layers where eager and Triton disagree. A kernel with a host stage (CacheGen's rANS) is timed on its
    device part (``impl`` triton) and its host part separately (``impl`` host, wall clock)."""
    from .reference import conformance

    layers, _, heads, seq, dim = shape
    raw = math.prod(shape) * 2
    n_buf = max(1, min(16, math.ceil(4 * l2_bytes / raw)))
    bufs = _random_caches(shape, dtype, n_buf, seed=seq + dim)
    rows = []
    for label, kernel in codecs:
        g = torch.Generator(device="cuda").manual_seed(seq)
        stats = kernel.bench_stats(shape, g)
        payload = kernel.encode(bufs[0], stats)
        per_layer = 2 * heads * seq * dim
        check_layers = sorted({0, layers - 1}) if seq <= cpu_check_seq else [0] if per_layer <= cpu_check_elems else []
        eager = kernel.encode_eager(bufs[0], stats)
        eager_same = kernel.exact and eager.offsets == payload.offsets and torch.equal(eager.data, payload.data)
        if kernel.exact and not eager_same:  # who is wrong? the CPU codec on the layers that differ
            bad = [i for i in range(layers) if eager.offsets[i + 1] - eager.offsets[i] != payload.offsets[i + 1]
                   - payload.offsets[i] or not torch.equal(eager.layer(i), payload.layer(i))]
            check_layers = sorted(set(check_layers) | set(bad[:4]))
            log(f"  {model} {seq} {dtype} {label}: eager and Triton differ in layers {bad}")
        conf = conformance(kernel, bufs[0], stats, check_layers, payload) if check_layers else None
        eager_ok = eager_same if kernel.exact else None
        if conf is None:  # too large for the CPU codec: the eager baseline (same bytes) is the check
            conf = _EagerOnly(eager_same if kernel.exact else None)
        if conf.ok is False:
            log(f"  {model} {seq} {dtype} {label}: NOT conformant on layers {check_layers}: {conf}")
        payloads = [kernel.encode(b, stats) for b in bufs]
        dec_bytes = _decoded_bytes(kernel.decode(payload, shape, dtype))
        turn = {"i": 0}

        def nxt() -> int:
            turn["i"] = (turn["i"] + 1) % n_buf
            return turn["i"]

        host_stage = getattr(kernel, "host_stage", None)
        if host_stage:  # the device stage alone (vs its eager twin); the host stage timed apart below
            symbols = [kernel.encode_symbols(b) for b in bufs]
            timed = {
                ("triton", "encode"): lambda: kernel.encode_symbols(bufs[nxt()]),
                ("triton", "decode"): lambda: kernel.decode_symbols(symbols[nxt()], dtype),
                ("eager", "encode"): lambda: kernel.encode_symbols_eager(bufs[nxt()]),
                ("eager", "decode"): lambda: kernel.decode_symbols_eager(symbols[nxt()], dtype),
            }
            device_bytes = symbols[0].nbytes
        else:
            timed = {
                ("triton", "encode"): lambda: kernel.encode(bufs[nxt()], stats, check=False),
                ("triton", "decode"): lambda: kernel.decode(payloads[nxt()], shape, dtype, check=False),
                ("eager", "encode"): lambda: kernel.encode_eager(bufs[nxt()], stats),
                ("eager", "decode"): lambda: kernel.decode_eager(payloads[nxt()], shape, dtype),
            }
            device_bytes = payload.nbytes
        ms = {k: _time(do_bench, f, rep_ms) for k, f in timed.items()}
        if host_stage:
            ms[("host", "encode")] = _wall_ms(lambda: kernel.host_encode(symbols[0]))
            ms[("host", "decode")] = _wall_ms(lambda: kernel.host_decode(payloads[0], shape))
        pay = payload.nbytes
        # what each op really reads: token selection reads only the kept rows (plus its statistics)
        enc_read = kernel.encode_bytes_read(raw, pay, stats)
        for (impl, op), t in ms.items():
            if impl == "host":
                moved = device_bytes + pay
            else:
                moved = (enc_read + device_bytes) if op == "encode" else (device_bytes + dec_bytes)
            rows.append({
                "gpu": gpu, "copy_gbps": round(copy_gbps, 1), "model": model, "layers": layers,
                "kv_heads": heads, "seq": seq, "head_dim": dim, "dtype": str(dtype).split(".")[-1],
                "codec": label, "impl": impl, "op": op, "ms": t, "raw_bytes": raw, "payload_bytes": pay,
                "ratio": raw / pay, "bytes_moved": moved, "gbps": moved / t / 1e6,
                "frac_copy": moved / t / 1e6 / copy_gbps,
                "speedup_vs_eager": ms[("eager", op)] / t if impl == "triton" else float("nan"),
                "identical_to_cpu": conf.identical if impl != "eager" else eager_ok,
                "conformant": conf.ok if impl != "eager" else eager_ok,
                "checked_layers": " ".join(map(str, conf.layers)),
                "host_stage": host_stage if impl == "host" else "",
            })
        del payloads, eager, payload
        if host_stage:
            del symbols
    del bufs
    torch.cuda.empty_cache()
    return rows


class _EagerOnly:
    """Conformance where only the eager baseline was compared (exact kernels on very large layers)."""

    layers: tuple[int, ...] = ()

    def __init__(self, same: bool | None) -> None:
        # None: not checked at this size (a kernel that is not exact has no eager bytes to match)
        self.identical = self.ok = None if same is None else bool(same)


def _time(do_bench, fn, rep_ms: int, slow_ms: float = 20.0) -> float:
    """Median CUDA-event ms: ``do_bench`` for fast calls; three timed calls for slow ones (an eager
    baseline that takes seconds would cost do_bench's five estimation runs plus its repeats)."""
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    fn()  # compile / warm up
    start.record()
    fn()
    end.record()
    torch.cuda.synchronize()
    first = start.elapsed_time(end)
    if first < slow_ms:
        return do_bench(fn, warmup=10, rep=rep_ms, return_mode="median")
    times = [first]
    for _ in range(2):
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return sorted(times)[1]


def _wall_ms(fn, repeats: int = 3, once_above_ms: float = 1000.0) -> float:
    """Median wall-clock ms of a host stage (CUDA work before it synchronised); one run when the
    first takes over ``once_above_ms`` (CacheGen's CPU rANS on a GB cache takes tens of seconds)."""
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append((time.perf_counter() - t0) * 1e3)
        if times[0] > once_above_ms:
            break
    return sorted(times)[len(times) // 2]


def time_gpu(out_csv: str | Path, *, label: str | None = None, models: Mapping[str, tuple[int, int, int]] | None = None,
             seqs: Sequence[int] = SEQS, dtypes: Sequence[str] = tuple(DTYPES), codecs: Sequence[str] | None = None,
             kv_files: Sequence[str | Path] = (), rep_ms: int = 100, log: Callable[[str], None] = print):
    """Check and time every (model shape, seq, dtype, codec) and write the table to ``out_csv``
    (rewritten after every model, atomically: a run cut short keeps what it measured). ``codecs``:
    labels of ``BENCH_CODECS`` (default: every one with a kernel)."""
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
    kernels = bench_kernels(codecs)
    log(f"codecs with kernels: {', '.join(k for k, _ in kernels)}")
    for line in check_real_caches(kv_files, [k for k, _ in kernels]):
        log(line)
    rows, t0 = [], time.time()
    for model, (layers, heads, dim) in (models or MODEL_SHAPES).items():
        for seq in seqs:
            for dtype in dtypes:
                rows += time_shape(do_bench, model, (layers, 2, heads, seq, dim), DTYPES[dtype], kernels, gpu=gpu,
                                   copy_gbps=copy_gbps, l2_bytes=l2, rep_ms=rep_ms, log=log)
                write_csv(out_csv, pd.DataFrame(rows))  # after every shape: a run cut short keeps them
        log(f"  {model} done ({time.time() - t0:.0f} s)")
    return pd.DataFrame(rows)


def summary(table) -> str:
    """The bf16 device rows as a text table: time, GB/s, fraction of copy, eager time, speed-up, and
    whether the kernel conforms to the CPU codec (identical bytes, or within issue 5's tolerance)."""
    t = table[(table.impl == "triton") & (table["dtype"] == "bfloat16")]
    eager = table[table.impl == "eager"].set_index(["model", "seq", "dtype", "codec", "op"])["ms"]
    lines = [f"{'model':14} {'seq':>6} {'codec':16} {'op':6} {'triton ms':>9} {'GB/s':>6} {'of copy':>7} "
             f"{'eager ms':>9} {'speedup':>7} ok"]
    for _, r in t.iterrows():
        e = eager.loc[(r["model"], r["seq"], r["dtype"], r["codec"], r["op"])]
        lines.append(f"{r['model']:14} {r['seq']:6d} {r['codec']:16} {r['op']:6} {r['ms']:9.3f} {r['gbps']:6.0f} "
                     f"{r['frac_copy']:7.2f} {e:9.3f} {r['speedup_vs_eager']:7.1f} {r[_ok_column(table)]}")
    col = _ok_column(table)
    bad = int((table[table.impl == "triton"][col] == False).sum())  # noqa: E712  (None: not checked)
    eager_rows = table[table.impl == "eager"][col].dropna()
    eager_bad = int((~eager_rows.astype(bool)).sum())
    lines.append(f"{len(table)} rows; Triton not conformant to the CPU codec: {bad}; eager not identical: {eager_bad}")
    return "\n".join(lines)


def _ok_column(table) -> str:
    return "conformant" if "conformant" in table.columns else "identical_to_cpu"


def time_nvcomp(do_bench, kv_files: Sequence[str | Path], codecs: Sequence[str] | None = None,
                algorithms: Sequence[str] | None = None, *, gpu: str, min_bytes: int = 64 << 20,
                out_csv: str | Path | None = None, log: Callable[[str], None] = print) -> list[dict]:
    """nvCOMP after each kernel codec, on the payloads of REAL caches (random caches have the wrong
    code histograms): the ratio it gains on the payload itself, and its GB/s on that payload tiled to
    at least ``min_bytes`` (64 KB chunks are coded independently, so tiling keeps the statistics and
    takes the launch-bound regime out). Lossless is checked on every measured buffer. ``out_csv`` is
    rewritten after every codec (a run cut short keeps what it measured)."""
    import pandas as pd

    from ..io import write_csv

    from ..kv import load_kv
    from .nvcomp import ALGORITHMS, NvcompStage, version

    rows = []
    algorithms = tuple(algorithms or ALGORITHMS)
    log(f"nvCOMP {version()}: {', '.join(algorithms)}")
    for path in kv_files:
        rec = load_kv(path)
        kv = torch.stack([torch.stack([layer.k, layer.v]) for layer in rec.layers]).cuda()
        stats = [{k: v.cuda() for k, v in s.items()} for s in _file_stats(rec)]
        raw = kv.numel() * kv.element_size()
        for label, kernel in [("identity", None)] + bench_kernels(codecs):
            if kernel is not None and any(k not in stats[0] for k in kernel.needs_stats):
                continue
            payload = kv.reshape(-1).view(torch.uint8) if kernel is None else kernel.encode(kv, stats).data
            tiled = payload.repeat(max(1, math.ceil(min_bytes / max(payload.numel(), 1))))
            for algo in algorithms:
                try:
                    stage = NvcompStage(algo)
                    comp = stage.compress(payload)
                    ok = torch.equal(stage.decompress(comp), payload)
                    comp_tiled = stage.compress(tiled)
                    ok &= torch.equal(stage.decompress(comp_tiled), tiled)
                    enc = do_bench(lambda: stage.compress(tiled), warmup=10, rep=100, return_mode="median")
                    dec = do_bench(lambda: stage.decompress(comp_tiled), warmup=10, rep=100, return_mode="median")
                except Exception as exc:  # an algorithm this build or GPU lacks: say so, keep the others
                    log(f"  nvCOMP {algo} on {label} ({Path(path).name}): {type(exc).__name__}: {exc}")
                    continue
                rows.append({
                    "gpu": gpu, "source": Path(path).name, "layers": kv.shape[0], "kv_heads": kv.shape[2],
                    "seq": kv.shape[3], "head_dim": kv.shape[4], "dtype": str(kv.dtype).split(".")[-1],
                    "codec": label, "algorithm": algo, "raw_bytes": raw, "payload_bytes": payload.numel(),
                    "compressed_bytes": comp.numel(), "codec_ratio": raw / payload.numel(),
                    "stage_ratio": payload.numel() / comp.numel(), "total_ratio": raw / comp.numel(),
                    "timed_bytes": tiled.numel(), "compress_ms": enc, "decompress_ms": dec,
                    "compress_gbps": tiled.numel() / enc / 1e6, "decompress_gbps": tiled.numel() / dec / 1e6,
                    "lossless": bool(ok),
                })
                log(f"  {Path(path).name} {label:16} {algo:9} x{rows[-1]['stage_ratio']:.3f} on the payload, "
                    f"{rows[-1]['compress_gbps']:.0f} / {rows[-1]['decompress_gbps']:.0f} GB/s, lossless {ok}")
            del payload, tiled
            if out_csv is not None and rows:
                write_csv(out_csv, pd.DataFrame(rows))
    return rows
