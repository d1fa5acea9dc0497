"""GPU codec timing: the fused Triton kernels against the eager-PyTorch baseline and a device copy,
on the KV shapes of real models. Tensors and records in, tables (DataFrames) out: the files (KV files read, tables
written) are ``kvwire.stages.gpu_bench``'s, which the rule ``time_gpu`` and ``bench/gpu_codecs.py`` call.

For each shape (layers x kv_heads x head_dim of a model, a sequence length, fp16 or bf16) and each
codec with a kernel, it checks the kernel's payload against the CPU codec byte for byte: the first
and last layer where seq <= 2048, the whole cache against the eager baseline everywhere, and the
CPU codec again wherever those two disagree. Then it times encode and decode with CUDA events
(``triton.testing.do_bench``: median, L2 flushed between runs). When a cache is smaller than 4x the
L2, inputs rotate over up to 16 buffers. Bytes moved are input read + output written. The copy
bandwidth is measured in the same run (``dst.copy_(src)``, 2 GiB, read + write).

Sliding-window models (``kvwire.windows.BENCH_LAYOUTS``: Gemma-3's 15 of 18 layers keep ``window - 1``
= 511 tokens, as extraction keeps them) are timed on the cache that is really sent: layers of different
lengths do not stack into one tensor, so the cache is split into groups of equal layers
(``kernels.base.split_groups``; Gemma-3 at 2048 tokens: 15 x 511 and 3 x 2048), each group is encoded
by one kernel call inside ``cache_group`` (which gives codecs that plan over the whole cache -- guardband,
pyramidkv, CacheGen's tiers -- and KVQuant's pre-RoPE positions the real layer contexts), and ONE timed
call runs every group in turn: the time is the whole cache's, launches of every group included, and
nothing is padded (padding would time tokens that are never sent). Raw bytes count the kept tokens;
the conformance checks run per group against the CPU codec with the wire container's contexts.
Columns ``sliding_window`` and ``layer_tokens`` (e.g. ``15x511+3x2048``) say what was timed; models
without windows, and lengths inside the window, are timed exactly as before (one group).
"""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path
from typing import Callable, Sequence

import pandas as pd
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
    "qwen2.5-coder-0.5b": (24, 2, 64),  # the study's Qwen2 models (biased keys, 2 KV heads)
    "qwen2.5-coder-1.5b": (28, 2, 128),
}
SEQS = (512, 2048, 8192, 32768)
# issue 30's cases (model, seq): the study's own caches (one request, 4-64 MB, where launch and host
# costs weigh) and two of at least 64 MB (where the kernels should run at memory speed), interleaved so
# that a run cut short by its time limit still has both kinds
ISSUE30_CASES = (("smollm2-135m", 1024), ("llama-3.1-8b", 2048), ("qwen2.5-coder-1.5b", 2048),
                 ("qwen2.5-7b", 8192), ("qwen2.5-coder-0.5b", 2048), ("gemma-3-270m", 2048))
DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}


def layer_tokens(model: str, layers: int, seq: int) -> list[int]:
    """Per layer, the tokens a ``seq``-token cache of bench shape ``model`` keeps (``kvwire.windows``)."""
    from ..windows import bench_layout, kept_tokens

    types, window = bench_layout(model, layers)
    return kept_tokens(types, window, seq, n_layers=layers)


def describe_tokens(tokens: Sequence[int]) -> str:
    """``15x511+3x2048``: the layers of each length, in order of first appearance."""
    counts: dict[int, int] = {}
    for t in tokens:
        counts[int(t)] = counts.get(int(t), 0) + 1
    return "+".join(f"{c}x{t}" for t, c in counts.items())


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


def gpu_environment() -> dict[str, str]:
    """What a GPU table's numbers depend on besides the GPU's name: the driver, CUDA, torch and Triton
    versions (a column each in every row)."""
    import subprocess

    import triton

    try:
        smi = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
        driver = smi.stdout.split()[0] if smi.returncode == 0 and smi.stdout.split() else "unknown"
    except (OSError, subprocess.SubprocessError):
        driver = "unknown"
    return {"driver": driver, "cuda": str(torch.version.cuda), "torch": torch.__version__,
            "triton": triton.__version__}


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
    "cachegen_lanes": ("cachegen", {"entropy": "rans_lanes"}),
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


def stack_groups(layers, starts: Sequence[int] | None = None, stats=None, device="cuda"):
    """A cache's layers (``LayerKV``) as kernel inputs: ``[(group, kv [n, 2, heads, seq, head_dim], stats)]``
    with one entry per group of equal layers (``kernels.base.split_groups``; ``starts``: the layers' window
    starts). A cache of equal layers is one entry whose group is None (the plain whole-cache call)."""
    from .base import split_groups

    groups = split_groups([tuple(layer.k.shape) for layer in layers], starts)
    out = []
    for g in groups:
        kv = torch.stack([torch.stack([layers[i].k, layers[i].v]) for i in g.layers]).to(device)
        st = [{k: v.to(device) for k, v in (stats[i] or {}).items()} for i in g.layers] if stats else None
        out.append((None if len(groups) == 1 and not g.starts else g, kv, st))
    return out


def check_record(rec, name: str, codecs: Sequence[str] | None = None, device: str = "cuda") -> list[str]:
    """Every layer of a real cache (a ``KVRecord``, ``name`` its file) through every kernel against the
    CPU codec (with the record's own statistics and, for window-trimmed caches, one kernel call per group
    of equal layers with the wire container's layer contexts); a line per codec; ``KVError`` at the first failure."""
    from .base import cache_group
    from .reference import conformance

    lines = []
    parts = stack_groups(rec.layers, rec.window_starts, _file_stats(rec), device)
    what = describe_tokens([layer.k.shape[1] for layer in rec.layers])
    for label, kernel in bench_kernels(codecs):
        missing = [k for k in kernel.needs_stats if k not in parts[0][2][0]]
        if missing:
            lines.append(f"real KV {name} {label}: skipped, the file has no {missing}")
            continue
        cs = []
        for group, kv, stats in parts:
            with cache_group(group):
                cs.append(conformance(kernel, kv, stats))
        ok = all(c.ok for c in cs)
        lines.append(f"real KV {name} {len(rec.layers)} layers of {what} tokens {label}: payload "
                     f"identical {all(c.identical for c in cs)}, within tolerance "
                     f"{all(c.within_tolerance for c in cs)} ({sum(c.differing for c in cs)}/"
                     f"{sum(c.elements for c in cs)} differ, max {max(c.max_steps for c in cs)} steps), "
                     f"decode identical {all(c.decode_identical for c in cs)}")
        if not ok:
            raise KVError(lines[-1])
    return lines


def time_record(do_bench, rec, name: str, kernels, *, gpu: str, copy_gbps: float, l2_bytes: int,
                rep_ms: int = 100, log: Callable[[str], None] = print, device: str = "cuda") -> pd.DataFrame:
    """Time every kernel on a real cache (a ``KVRecord``: its own data, layer lengths and statistics)
    in its dtype: rows as ``time_shape``'s, ``model`` the record's model and ``cache`` its file
    ``name``, to set beside the synthetic caches of the same shape (CacheGen's entropy coder, for one,
    compresses real caches differently)."""
    rec.meta["source_file"] = name
    first = rec.layers[0].k
    heads, dim = int(first.shape[0]), int(first.shape[2])
    seq = max(int(layer.k.shape[1]) for layer in rec.layers)
    if rec.window_starts:
        seq = max(int(s) + int(layer.k.shape[1]) for s, layer in zip(rec.window_starts, rec.layers))
    model = str(rec.meta.get("model") or Path(name).stem)
    return time_shape(do_bench, model, (len(rec.layers), 2, heads, seq, dim), first.dtype, kernels, gpu=gpu,
                      copy_gbps=copy_gbps, l2_bytes=l2_bytes, rep_ms=rep_ms, log=log, device=device, real=rec)


def _file_stats(rec) -> list[dict]:
    return [dict(s) for s in rec.stats] if rec.stats else [{} for _ in rec.layers]


def _random_caches(shape: tuple[int, ...], dtype: torch.dtype, n: int, seed: int,
                   device: str = "cuda") -> list[torch.Tensor]:
    """Rows of very different magnitudes (what per-token scales meet in real caches), never zeros."""
    g = torch.Generator(device=device).manual_seed(seed)
    return [(torch.randn(shape, device=device, generator=g) *
             torch.rand(shape[:-1] + (1,), device=device, generator=g) * 4).to(dtype) for _ in range(n)]


def time_shape(do_bench, model: str, shape: tuple[int, ...], dtype: torch.dtype,
               codecs: Sequence[tuple[str, "KernelCodec"]], *, gpu: str, copy_gbps: float, l2_bytes: int,
               rep_ms: int = 100, cpu_check_seq: int = 2048, cpu_check_elems: int = 1 << 24,
               log: Callable[[str], None] = print, tokens: Sequence[int] | None = None,
               device: str = "cuda", real=None) -> pd.DataFrame:
    """Check and time every (label, kernel) on one cache shape [layers, 2, kv_heads, seq, head_dim]:
    a table (DataFrame) with a row per (codec, implementation, op).

    ``tokens``: per layer, the tokens the cache keeps (``layer_tokens``: a sliding-window layer keeps
    ``window - 1``); default ``seq`` everywhere. Layers of different lengths are split into groups of
    equal layers, each encoded by its own kernel call in its ``cache_group``, and one timed call runs
    every group (the module docstring).

    Checks: the whole cache against the eager baseline (exact kernels), the first and last layer
    against the CPU codec where seq <= ``cpu_check_seq``, the first layer otherwise while a layer has
    at most ``cpu_check_elems`` elements (the CPU codec on a 32k-token Phi-3.5 layer takes minutes),
    and the first few layers where eager and Triton disagree -- per group of equal layers. A kernel
    with a host stage (CacheGen's rANS) is timed on its device part (``impl`` triton) and its host
    part separately (``impl`` host, wall clock). ``device``: "cuda" (the tests run the logic on "cpu",
    in Triton's interpreter, with ``_time`` / ``_wall_ms`` replaced).

    ``real``: a real cache (``KVRecord``) to time instead of random data of the shape: its own layer
    lengths, window starts and attention statistics; rotation buffers are copies of it, and the rows'
    ``cache`` column names it (``synthetic`` otherwise). A codec whose statistics the file lacks is
    skipped (logged)."""
    from .base import cache_group, split_groups
    from .launch import host_us
    from .reference import conformance

    layers, _, heads, seq, dim = shape
    if real is not None:
        tokens = [int(layer.k.shape[1]) for layer in real.layers]
        if len(tokens) != layers or any(tuple(x.k.shape) != (heads, t, dim) for x, t in zip(real.layers, tokens)):
            raise KVError(f"{model}: the real cache's layers do not match the shape {shape}")
    tokens = [seq] * layers if tokens is None else [int(t) for t in tokens]
    if len(tokens) != layers or not all(0 < t <= seq for t in tokens):
        raise KVError(f"{model}: {len(tokens)} layer lengths {sorted(set(tokens))} for {layers} layers of at most {seq}")
    starts = list(real.window_starts) if real is not None and real.window_starts else [seq - t for t in tokens]
    groups = split_groups([(heads, t, dim) for t in tokens], starts)
    windowed = len(groups) > 1 or any(starts)
    ctx = [g if windowed else None for g in groups]  # a cache of equal, untrimmed layers: the plain call
    part_shapes = [(len(g.layers), 2, heads, g.shape[1], dim) for g in groups]
    elt = torch.empty((), dtype=dtype).element_size()
    raw = sum(math.prod(ps) for ps in part_shapes) * elt
    n_buf = max(1, min(16, math.ceil(4 * l2_bytes / raw)))
    if real is None:
        bufs = [_random_caches(ps, dtype, n_buf, seed=seq + dim + 7919 * j, device=device)
                for j, ps in enumerate(part_shapes)]
        real_stats = None
    else:  # the file's tensors, copied into every rotation buffer (distinct memory, same data)
        kv = [torch.stack([torch.stack([real.layers[i].k, real.layers[i].v]) for i in g.layers]).to(device, dtype)
              for g in groups]
        bufs = [[x] + [x.clone() for _ in range(n_buf - 1)] for x in kv]
        file_stats = _file_stats(real)
        real_stats = [[{k: v.to(device) for k, v in file_stats[i].items()} for i in g.layers] for g in groups]
    cache = "synthetic" if real is None else str(real.meta.get("source_file", "real"))
    parts = range(len(groups))

    def each(fn) -> list:
        """``fn(j)`` for every group j, inside its cache group."""
        out = []
        for j in parts:
            with cache_group(ctx[j]):
                out.append(fn(j))
        return out

    rows = []
    for label, kernel in codecs:
        g = torch.Generator(device=device).manual_seed(seq)
        if real_stats is None:
            stats = [kernel.bench_stats(ps, g) for ps in part_shapes]
        else:
            missing = [k for k in kernel.needs_stats if k not in real_stats[0][0]]
            if missing:
                log(f"  {model} {cache} {label}: skipped, the file has no {missing}")
                continue
            stats = real_stats  # the file's own (as check_real_caches passes them)
        payload = each(lambda j: kernel.encode(bufs[j][0], stats[j]))
        eager = each(lambda j: kernel.encode_eager(bufs[j][0], stats[j]))
        confs, eager_same = [], True
        for j, grp in enumerate(groups):
            n_j, seq_j = part_shapes[j][0], part_shapes[j][3]
            per_layer = 2 * heads * seq_j * dim
            check_layers = (sorted({0, n_j - 1}) if seq_j <= cpu_check_seq else
                            [0] if per_layer <= cpu_check_elems else [])
            same = kernel.exact and eager[j].offsets == payload[j].offsets and torch.equal(eager[j].data,
                                                                                           payload[j].data)
            eager_same &= bool(same)
            if kernel.exact and not same:  # who is wrong? the CPU codec on the layers that differ
                e, p = eager[j], payload[j]
                bad = [i for i in range(n_j) if e.offsets[i + 1] - e.offsets[i] != p.offsets[i + 1] - p.offsets[i]
                       or not torch.equal(e.layer(i), p.layer(i))]
                check_layers = sorted(set(check_layers) | set(bad[:4]))
                log(f"  {model} {seq} {dtype} {label}: eager and Triton differ in layers "
                    f"{[grp.layers[i] for i in bad]}")
            if check_layers:
                with cache_group(ctx[j]):
                    c = conformance(kernel, bufs[j][0], stats[j], check_layers, payload[j])
                confs.append(dataclasses.replace(c, layers=tuple(grp.layers[i] for i in c.layers)))
        eager_ok = eager_same if kernel.exact else None
        if len(confs) == len(groups):  # every group checked against the CPU codec
            conf = confs[0] if len(confs) == 1 else _Combined(confs)
        elif confs:  # some groups too large for the CPU codec: those rest on the eager baseline's bytes
            conf = _Combined(confs)
            if kernel.exact and not eager_same:
                conf.ok = conf.identical = False
        else:  # too large for the CPU codec: the eager baseline (same bytes) is the check
            conf = _EagerOnly(eager_same if kernel.exact else None)
        if conf.ok is False:
            log(f"  {model} {seq} {dtype} {label}: NOT conformant on layers {list(conf.layers)}: {conf}")
        payloads = each(lambda j: [kernel.encode(b, stats[j]) for b in bufs[j]])
        dec_bytes = sum(each(lambda j: _decoded_bytes(kernel.decode(payload[j], part_shapes[j], dtype))))
        turn = {"i": 0}

        def nxt() -> int:
            turn["i"] = (turn["i"] + 1) % n_buf
            return turn["i"]

        def over(op):
            """One timed call: ``op(j, i)`` for every group j on rotation buffer i (the plain call for a
            cache of one group, as before)."""
            if len(groups) == 1 and ctx[0] is None:
                return lambda: op(0, nxt())

            def run():
                i = nxt()
                for j in parts:
                    with cache_group(ctx[j]):
                        op(j, i)
            return run

        host_stage = getattr(kernel, "host_stage", None)
        if host_stage:  # the device stage alone (vs its eager twin); the host stage timed apart below
            symbols = each(lambda j: [kernel.encode_symbols(b) for b in bufs[j]])
            timed = {
                ("triton", "encode"): over(lambda j, i: kernel.encode_symbols(bufs[j][i])),
                ("triton", "decode"): over(lambda j, i: kernel.decode_symbols(symbols[j][i], dtype)),
                ("eager", "encode"): over(lambda j, i: kernel.encode_symbols_eager(bufs[j][i])),
                ("eager", "decode"): over(lambda j, i: kernel.decode_symbols_eager(symbols[j][i], dtype)),
            }
            device_bytes = sum(sym[0].nbytes for sym in symbols)
        else:
            timed = {
                ("triton", "encode"): over(lambda j, i: kernel.encode(bufs[j][i], stats[j], check=False)),
                ("triton", "decode"): over(lambda j, i: kernel.decode(payloads[j][i], part_shapes[j], dtype,
                                                                      check=False)),
                ("eager", "encode"): over(lambda j, i: kernel.encode_eager(bufs[j][i], stats[j])),
                ("eager", "decode"): over(lambda j, i: kernel.decode_eager(payloads[j][i], part_shapes[j], dtype)),
            }
            device_bytes = sum(p.nbytes for p in payload)
        ms = {k: _time(do_bench, f, rep_ms) for k, f in timed.items()}
        host = {k: host_us(timed[k], calls=16, batches=3) for k in timed if k[0] == "triton"} if device == "cuda" else {}
        graph_ok = None
        if not host_stage and device == "cuda":  # the same calls replayed from CUDA graphs, one per buffer
            graphs, graph_ok = _graphs(kernel, label, bufs, payloads, stats, part_shapes, dtype, ctx, log)
            if graphs:
                for op, calls in graphs.items():
                    timed[("graph", op)] = lambda calls=calls: calls[nxt()]()
                    ms[("graph", op)] = _time(do_bench, timed[("graph", op)], rep_ms)
                    host[("graph", op)] = host_us(timed[("graph", op)], calls=16, batches=3)
                graph_ok = graph_ok and all(torch.equal(a.data, b.data) for a, b in zip(graphs["encode"][0](), payload))
                del graphs
        if host_stage:
            ms[("host", "encode")] = _wall_ms(lambda: each(lambda j: kernel.host_encode(symbols[j][0])))
            ms[("host", "decode")] = _wall_ms(lambda: each(lambda j: kernel.host_decode(payload[j],
                                                                                          part_shapes[j])))
        pay = sum(p.nbytes for p in payload)
        # what each op really reads: token selection reads only the kept rows (plus its statistics)
        enc_read = sum(kernel.encode_bytes_read(math.prod(ps) * elt, p.nbytes, st)
                       for ps, p, st in zip(part_shapes, payload, stats))
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
                "speedup_vs_eager": ms[("eager", op)] / t if impl in ("triton", "graph") else float("nan"),
                "host_us": host.get((impl, op), float("nan")),
                "identical_to_cpu": (eager_ok if impl == "eager" else
                                     conf.identical and graph_ok if impl == "graph" else conf.identical),
                "conformant": eager_ok if impl == "eager" else conf.ok and graph_ok if impl == "graph" else conf.ok,
                "checked_layers": " ".join(map(str, conf.layers)),
                "host_stage": host_stage if impl == "host" else "",
                "layer_tokens": describe_tokens(tokens), "cache": cache,
            })
        del payloads, eager, payload
        if host_stage:
            del symbols
    del bufs
    if device == "cuda":
        torch.cuda.empty_cache()
    return pd.DataFrame(rows)


def _graphs(kernel, label: str, bufs, payloads, stats, part_shapes, dtype, ctx, log):
    """({"encode": [call per rotation buffer], "decode": [...]}, whether every replayed decode equals the
    plain call's), or (None, None) where the codec cannot be captured (it waits for the host: logged).
    A cache of several groups is one graph per buffer running every group, as the plain timed call."""
    from .base import as_layers, cache_group, same_layers
    from .graph import GraphedCall

    def every_group(op, i):
        out = []
        for j in range(len(part_shapes)):
            with cache_group(ctx[j]):
                out.append(op(j, i))
        return out

    try:
        enc = [GraphedCall(lambda i=i: every_group(lambda j, i: kernel.encode(bufs[j][i], stats[j], check=False), i),
                           cuda=True, what=f"{label} encode") for i in range(len(bufs[0]))]
        dec = [GraphedCall(lambda i=i: every_group(lambda j, i: kernel.decode(payloads[j][i], part_shapes[j], dtype,
                                                                              check=False), i),
                           cuda=True, what=f"{label} decode") for i in range(len(bufs[0]))]
    except Exception as exc:  # noqa: BLE001  a codec that syncs inside: report, time it plainly
        log(f"  {label}: no CUDA graph: {exc}")
        return None, None
    plain = every_group(lambda j, i: kernel.decode(payloads[j][i], part_shapes[j], dtype, check=False), 0)
    same = all(same_layers(as_layers(a), as_layers(b)) for a, b in zip(dec[0](), plain))
    return {"encode": [lambda c=c: c() for c in enc], "decode": [lambda c=c: c() for c in dec]}, same


class _Combined:
    """Conformance over several groups of equal layers: identical / ok where every group is."""

    def __init__(self, confs) -> None:
        self.layers = tuple(sorted(i for c in confs for i in c.layers))
        self.identical = all(c.identical for c in confs)
        self.ok = all(c.ok for c in confs)
        self.parts = confs

    def __repr__(self) -> str:
        return f"groups({', '.join(map(repr, self.parts))})"


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


def summary(table) -> str:
    """The bf16 device rows as a text table: time, GB/s, fraction of copy, eager time, speed-up, and
    whether the kernel conforms to the CPU codec (identical bytes, or within issue 5's tolerance)."""
    t = table[(table.impl == "triton") & (table["dtype"] == "bfloat16")]
    key = ["model", "seq", "dtype", "codec", "op"] + (["cache"] if "cache" in table.columns else [])
    eager = table[table.impl == "eager"].set_index(key)["ms"]
    graph = table[table.impl == "graph"].set_index(key) if "graph" in set(table.impl) else None
    lines = [f"{'model':14} {'seq':>6} {'codec':16} {'op':6} {'triton ms':>9} {'GB/s':>6} {'of copy':>7} "
             f"{'host us':>7} {'graph ms':>8} {'of copy':>7} {'host us':>7} {'eager ms':>9} {'speedup':>7} ok"]
    for _, r in t.iterrows():
        k = tuple(r[c] for c in key)
        e = eager.loc[k]
        g = graph.loc[k] if graph is not None and k in graph.index else None
        gtxt = f"{g['ms']:8.3f} {g['frac_copy']:7.2f} {g['host_us']:7.1f}" if g is not None else f"{'-':>8} {'':7} {'':7}"
        lines.append(f"{r['model']:14} {r['seq']:6d} {r['codec']:16} {r['op']:6} {r['ms']:9.3f} {r['gbps']:6.0f} "
                     f"{r['frac_copy']:7.2f} {r.get('host_us', float('nan')):7.1f} {gtxt} {e:9.3f} "
                     f"{r['speedup_vs_eager']:7.1f} {r[_ok_column(table)]}")
    col = _ok_column(table)
    bad = int((table[table.impl == "triton"][col] == False).sum())  # noqa: E712  (None: not checked)
    eager_rows = table[table.impl == "eager"][col].dropna()
    eager_bad = int((~eager_rows.astype(bool)).sum())
    lines.append(f"{len(table)} rows; Triton not conformant to the CPU codec: {bad}; eager not identical: {eager_bad}")
    return "\n".join(lines)


def _ok_column(table) -> str:
    return "conformant" if "conformant" in table.columns else "identical_to_cpu"


def nvcomp_rows(do_bench, rec, name: str, codecs: Sequence[str] | None = None,
                algorithms: Sequence[str] | None = None, *, gpu: str, min_bytes: int = 64 << 20,
                log: Callable[[str], None] = print,
                progress: Callable[[list[dict]], None] | None = None) -> pd.DataFrame:
    """nvCOMP after each kernel codec, on the payloads of REAL caches (random caches have the wrong
    code histograms): the ratio it gains on the payload itself, and its GB/s on that payload tiled to
    at least ``min_bytes`` (64 KB chunks are coded independently, so tiling keeps the statistics and
    takes the launch-bound regime out). Lossless is checked on every measured buffer. ``rec``: a real
    cache (``KVRecord``), ``name`` its file; ``progress`` gets the rows so far after every codec."""
    from .base import cache_group
    from .nvcomp import ALGORITHMS, NvcompStage

    rows = []
    algorithms = tuple(algorithms or ALGORITHMS)
    parts = stack_groups(rec.layers, rec.window_starts, _file_stats(rec), "cuda")  # window-trimmed: groups
    kv = parts[0][1]
    raw = sum(p[1].numel() for p in parts) * kv.element_size()
    tokens = describe_tokens([layer.k.shape[1] for layer in rec.layers])

    def encoded(kernel) -> torch.Tensor:
        """The cache's payload bytes: every group's, in group order (one buffer, as nvCOMP sees it)."""
        if kernel is None:
            return torch.cat([p[1].reshape(-1).view(torch.uint8) for p in parts])
        out = []
        for group, x, st in parts:
            with cache_group(group):
                out.append(kernel.encode(x, st).data)
        return out[0] if len(out) == 1 else torch.cat(out)

    for label, kernel in [("identity", None)] + bench_kernels(codecs):
        if kernel is not None and any(k not in (parts[0][2] or [{}])[0] for k in kernel.needs_stats):
            continue
        payload = encoded(kernel)
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
                log(f"  nvCOMP {algo} on {label} ({name}): {type(exc).__name__}: {exc}")
                continue
            rows.append({
                "gpu": gpu, "source": name, "layers": len(rec.layers), "kv_heads": kv.shape[2],
                "seq": rec.seq_len, "head_dim": kv.shape[4], "dtype": str(kv.dtype).split(".")[-1],
                "layer_tokens": tokens,
                "codec": label, "algorithm": algo, "raw_bytes": raw, "payload_bytes": payload.numel(),
                "compressed_bytes": comp.numel(), "codec_ratio": raw / payload.numel(),
                "stage_ratio": payload.numel() / comp.numel(), "total_ratio": raw / comp.numel(),
                "timed_bytes": tiled.numel(), "compress_ms": enc, "decompress_ms": dec,
                "compress_gbps": tiled.numel() / enc / 1e6, "decompress_gbps": tiled.numel() / dec / 1e6,
                "lossless": bool(ok),
            })
            log(f"  {name} {label:16} {algo:9} x{rows[-1]['stage_ratio']:.3f} on the payload, "
                f"{rows[-1]['compress_gbps']:.0f} / {rows[-1]['decompress_gbps']:.0f} GB/s, lossless {ok}")
        del payload, tiled
        if progress is not None and rows:
            progress(rows)
    return pd.DataFrame(rows)


def concat(tables: Sequence[pd.DataFrame]) -> pd.DataFrame:
    """The rows of ``tables`` (``time_shape``'s, ``time_record``'s, ``nvcomp_rows``') in one table, the
    columns in their order; an empty table for none."""
    tables = [t for t in tables if len(t.columns)]
    return pd.concat(tables, ignore_index=True) if tables else pd.DataFrame()
