"""Token selection on the GPU: ``streaming_llm``, ``h2o``, ``snapkv``, ``pyramidkv`` and ``keynorm``
(every parameter of each), writing the CPU codecs' payload bytes (``codecs/selection.py``) exactly.

Encode, for a whole cache ``[layers, 2, kv_heads, seq, head_dim]``:

1. scoring (policies that rank tokens): Triton kernels compute every layer's token scores
   ``[layers, seq]`` in float32 -- H2O: ``attn_sum`` summed over kv heads; SnapKV/PyramidKV: the
   observation window's votes (``obs_attn`` summed over its last ``w`` query rows), pooled, summed
   over kv heads; key norm: minus the sum over kv heads of each key's L2 norm (the sum itself with
   ``order="highest"``; layers below ``skip_layers`` keep every token) -- with the tokens
   the policy always keeps (sinks, recent window, observation window) set to ``-inf``;
2. ``torch.sort(stable=True)`` of each layer's scores (glue): its ``free``-th entry (value ``v*``,
   token ``i*``) is where the CPU's ``argsort(descending, stable)[:free]`` stops, so a token is kept
   iff forced, or its score ``> v*``, or ``== v*`` with index ``<= i*`` (the CPU's tie rule: the
   earlier token first);
3. one Triton launch (a program per layer) writes each layer's section table and bit-packed keep
   mask into the payload and the kept positions (a prefix sum) into a scratch buffer;
4. one Triton gather launch over the whole cache copies the kept K and V rows, in the cache dtype,
   to their payload offsets (per-layer kept counts and offsets come from a host table: they are
   functions of the shape and the parameters; PyramidKV's differ by layer).

Decode: one launch unpacks every layer's mask into its kept positions (int64) and one copies the
kept rows into one dense device buffer; ``decode`` returns a ``LayerKV`` per layer whose ``k``/``v``
are views into it (no zero-filling of dropped tokens anywhere).

Exactness (same tokens as the CPU, same ties): the payload is raw copies, so it is byte-identical
once the kept set is. The scores are computed in the CPU's float32 operation order, replicated
operation by operation (no fused multiply-add: ``enable_fp_fusion=False``):
- sums over kv heads and over SnapKV's query rows follow ATen's CPU ``sum`` (``SumKernel.cpp``,
  ``cascade_sum``): a column ``j < F`` (F = 32 * floor(C / 32) for C >= 8 columns, else 4 * floor(C / 4))
  is summed by ``multi_row_sum`` -- running sums of 16 rows added into a second-level accumulator --
  and the others by ``row_sum`` -- four interleaved accumulators (ILP), each such a cascade, added up
  at the end. This holds for rows < 256 (kv heads, ``obs_window``) and any number of CPU threads
  (ATen splits columns at multiples of 32); checked bit for bit against torch's CPU ``sum``;
- SnapKV average pooling is ``avg_pool2d``'s CPU loop: a running sum of the in-range votes
  left to right, divided (correctly rounded) by ``kernel_size``; max pooling is a max;
- key norms are ATen's CPU ``norm`` over the last dim: 8 float32 lanes of ``acc += x * x`` (a
  multiply then an add), the lanes added left to right, the tail elements after them, then a
  correctly rounded square root (``sqrt_rn``). For fp16/bf16 keys every square is exact, so this
  is exact for any head_dim; fp32 caches need head_dim % 8 == 0 (the CPU's scalar tail is compiled
  with contractions we cannot predict), else the kernel refuses them.
These orders are those of torch's CPU build (the reference the conformance checks run); the eager
GPU baseline uses CUDA's own reduction orders and may break a near-tie differently.

Statistics must be contiguous per layer (as extraction writes them); one ``[layers, ...]`` tensor
is read in place when the per-layer tensors are views of one (``bench_stats`` builds them so), else
they are stacked (one copy).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import triton

from ...codecs import LayerKV, bitpack
from ...codecs.base import section_header
from ...codecs.snapkv import window_size
from ...errors import CodecError, KVError, WireError
from ..launch import interpreted
from ..base import (
    Decoded,
    GpuPayloads,
    KernelCodec,
    Stats,
    check_cache,
    layer_contexts,
    register_kernel,
)
from . import eager
from .jit import (_compact_kernel, _copy_kernel, _gather_kernel, _key_norms_kernel, _scores_kernel, _unpack_kernel,
                  _votes_kernel)
from .layout import HDR, _require_finite

POLICIES = ("streaming_llm", "h2o", "snapkv", "pyramidkv", "keynorm")
MAX_ROWS = 255  # kv heads / obs_window handled by the two-level cascade (ATen adds a third at 256)
NORM_LANES = 8  # float32 lanes of ATen's CPU norm kernel (its AVX2 build, used on AVX512 CPUs too)
# launch knobs (sweepable on the GPU): rows per gather program = GATHER_TILE // words per row
GATHER_TILE = 2048
GATHER_WARPS = 4
COPY_BLOCK = 4096  # words per decode copy program
SCORE_BLOCK = 256  # tokens per scoring program
MASK_BLOCK = 256  # mask bytes (x8 tokens) per iteration of the per-layer compaction loop
INTERPRETED_BLOCK = 1024  # the interpreter's cost is per program: fewer, larger ones
M_N, M_FIRST, M_LAST, M_FREE, M_LAYER_OFF, M_DATA_WORD, M_OUT_WORD, M_POS_OFF = range(8)
META_W = 8


def _launch(num_warps: int) -> dict:
    # no multiply-add contraction: the scores must round like the CPU's separate multiply and add
    return {} if interpreted() else {"enable_fp_fusion": False, "num_warps": num_warps}


# ---- host: layouts -------------------------------------------------------------------------

class _Layout:
    """Per-layer kept counts, forced edges and byte offsets of one (policy, params, shape, dtype)."""

    def __init__(self, n: Sequence[int], first: Sequence[int], last: Sequence[int], h: int, s: int, d: int,
                 itemsize: int):
        self.n, self.first, self.last = list(n), list(first), list(last)
        self.free = [a - b - c for a, b, c in zip(self.n, self.first, self.last)]
        self.h, self.s, self.d, self.itemsize = h, s, d, itemsize
        self.mask_bytes = bitpack.packed_size(s, 1)
        row = d * itemsize
        data_off = HDR + self.mask_bytes
        # widest word that every row, section and layer start is aligned to (28-byte table: never 8)
        self.word = 4 if data_off % 4 == 0 and row % 4 == 0 else 2 if data_off % 2 == 0 and row % 2 == 0 else 1
        self.row_words = row // self.word
        self.section = [h * k * row for k in self.n]
        self.offsets = [0]
        for sec in self.section:
            self.offsets.append(self.offsets[-1] + data_off + 2 * sec)
        self.headers = [section_header([self.mask_bytes, sec, sec]) for sec in self.section]

    @property
    def total(self) -> int:
        return self.offsets[-1]

    def meta(self) -> list[list[int]]:
        out_word, pos, rows = 0, 0, []
        for i, k in enumerate(self.n):
            rows.append([k, self.first[i], self.last[i], self.free[i], self.offsets[i],
                         (self.offsets[i] + HDR + self.mask_bytes) // self.word, out_word, pos])
            out_word += 2 * self.section[i] // self.word
            pos += k
        return rows


@functools.lru_cache(maxsize=64)
def _device_tables(key: tuple, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(meta int64 [layers, META_W], section tables uint8 [layers, 28]) on ``device``, made once."""
    lay = _LAYOUTS[key]
    meta = torch.tensor(lay.meta(), dtype=torch.int64).to(device)
    hdr = torch.frombuffer(bytearray(b"".join(lay.headers)), dtype=torch.uint8).view(len(lay.n), HDR).to(device)
    return meta, hdr


_LAYOUTS: dict[tuple, _Layout] = {}


def _cached_layout(key: tuple, make) -> tuple[tuple, _Layout]:
    if key not in _LAYOUTS:
        if len(_LAYOUTS) > 256:
            _LAYOUTS.clear()
            _device_tables.cache_clear()
        _LAYOUTS[key] = make()
    return key, _LAYOUTS[key]


def _word_view(t: torch.Tensor, word: int) -> torch.Tensor:
    flat = t.reshape(-1).view(torch.uint8)
    if flat.data_ptr() % word:  # a payload slice off a word boundary: an aligned copy
        flat = flat.clone()
    return flat.view({4: torch.int32, 2: torch.int16, 1: torch.uint8}[word])


def _block(default: int) -> int:
    return INTERPRETED_BLOCK if interpreted() else default


# ---- the kernel codec -----------------------------------------------------------------------

class TokenSelectionKernel(KernelCodec):
    """The token-dropping codecs (every parameter): CPU-order scores, a stable sort, one compaction
    and one gather launch; decode = mask unpack + one copy launch into a single device buffer.
    One registered subclass per statistic a policy reads."""

    @classmethod
    def supports(cls, name: str, params: Mapping[str, Any]) -> bool:
        return name in cls.names and params.get("obs_window", 1) <= MAX_ROWS

    @classmethod
    def limits(cls) -> str:
        return f"it implements every parameter except obs_window > {MAX_ROWS}"

    def encode_bytes_read(self, raw_bytes: int, payload_bytes: int, stats: Stats = None) -> int:
        # the gather reads only the kept rows (~ the payload) and the scoring reads the statistics
        read = sum(t.numel() * t.element_size() for s in (stats or []) for t in s.values())
        return payload_bytes + read

    # -- layout --

    def _edges(self, n: int, seq: int) -> tuple[int, int]:
        """(first, last): the tokens the policy keeps whatever the scores (``codecs/*.select``)."""
        p = self.params
        if self.name == "streaming_llm":
            first = min(p["sinks"], n)
            return first, n - first
        if self.name == "h2o":
            return 0, min(n, math.floor(n * p["recent_ratio"] + 0.5))
        if self.name in ("snapkv", "pyramidkv"):
            return 0, min(window_size(p["obs_window"], seq), n)
        return 0, 0

    def layout(self, shape: tuple[int, ...], dtype: torch.dtype) -> tuple[tuple, _Layout]:
        _, _, h, s, d = shape
        key = (self.name, tuple(sorted(self.params.items())), tuple(shape), dtype)

        def make() -> _Layout:
            ctxs = layer_contexts(tuple(shape), dtype)
            n = [self.codec.tensor.budget_for(ctx) for ctx in ctxs]
            edges = [self._edges(k, s) for k in n]
            return _Layout(n, [e[0] for e in edges], [e[1] for e in edges], h, s, d,
                           torch.empty((), dtype=dtype).element_size())

        return _cached_layout(key, make)

    # -- scoring --

    def _stat(self, stats: Stats, name: str, shape: tuple[int, ...], check: bool) -> torch.Tensor:
        """Every layer's statistic ``name`` as one float32 [layers, ...] tensor (read in place when
        the per-layer tensors are views of one, as ``bench_stats`` makes them)."""
        n_layers, _, h, s, _ = shape
        if not stats or len(stats) != n_layers or any(name not in st for st in stats):
            have = sorted(stats[0]) if stats else []
            raise CodecError(f"codec {self.name!r} needs the attention statistic {name!r} for every layer "
                             f"(have: {', '.join(have) or 'none'}); pass stats=record.stats (see codecs/selection.stat)")
        ts = [st[name] for st in stats]
        rows = name == "obs_attn"
        for i, t in enumerate(ts):
            ok = (t.dim() == 3 and t.shape[0] == h and t.shape[1] >= 1 and t.shape[2] == s) if rows else \
                tuple(t.shape) == (h, s)
            if not ok:
                want = f"[{h}, obs, {s}]" if rows else f"[{h}, {s}]"
                raise KVError(f"layer {i}: statistic {name!r} has shape {list(t.shape)}, expected {want}")
        if any(t.shape != ts[0].shape for t in ts):
            raise CodecError(f"the GPU kernel for {self.name!r} needs {name!r} of one shape in every layer")
        t0 = ts[0]
        step = ts[1].data_ptr() - t0.data_ptr() if n_layers > 1 else 0
        in_place = (t0.dtype == torch.float32 and t0.is_contiguous() and step % 4 == 0 and step >= t0.numel() * 4
                    and all(t.is_contiguous() and t.dtype == t0.dtype and t.device == t0.device
                            and t.untyped_storage().data_ptr() == t0.untyped_storage().data_ptr()
                            and t.data_ptr() == t0.data_ptr() + i * step for i, t in enumerate(ts)))
        if in_place:
            out = torch.as_strided(t0, (n_layers,) + tuple(t0.shape), (max(step // 4, 1),) + tuple(t0.stride()))
        else:
            out = torch.stack([t.float().contiguous() for t in ts])
        if check and not bool(torch.isfinite(out).all()):
            raise KVError(f"codec {self.name!r}: NaN/Inf in statistic {name!r}")
        return out

    def scores(self, kv: torch.Tensor, lay: _Layout, meta: torch.Tensor, stats: Stats, check: bool) -> torch.Tensor:
        """Every layer's token scores [layers, seq] float32 (forced tokens -inf), in the CPU's order."""
        n_layers, _, h, s, d = kv.shape
        if h > MAX_ROWS:
            raise CodecError(f"the GPU kernel for {self.name!r} sums at most {MAX_ROWS} kv heads, got {h}")
        out = torch.empty(n_layers, s, dtype=torch.float32, device=kv.device)
        pool, k, pad, negate = 0, 1, 0, False
        if self.name == "h2o":
            src = self._stat(stats, "attn_sum", tuple(kv.shape), check)
            cols = s
        elif self.name == "keynorm":
            if kv.dtype == torch.float32 and d % NORM_LANES:
                raise CodecError(f"the GPU keynorm kernel takes fp32 caches only with head_dim % {NORM_LANES} == 0 "
                                 f"(got {d}): the CPU's scalar tail cannot be reproduced bit for bit")
            src = torch.empty(n_layers, h, s, dtype=torch.float32, device=kv.device)
            block = _block(128)
            _key_norms_kernel[(triton.cdiv(s, block), n_layers * h)](kv, src, s, h, D=d, BLOCK=block,
                                                                    LANES=NORM_LANES, **_launch(4))
            cols, negate = s, self.params["order"] == "lowest"  # keep the lowest norms (or the highest)
        else:  # snapkv / pyramidkv: votes of the observation window, pooled
            p = self.params
            obs = self._stat(stats, "obs_attn", tuple(kv.shape), check)
            w = window_size(p["obs_window"], s)
            if obs.shape[2] < w:
                raise CodecError(f"codec {self.name!r}: obs_window={p['obs_window']} needs the attention of the "
                                 f"last {w} queries, but obs_attn holds {obs.shape[2]}")
            cols = s - w
            src = torch.empty(n_layers, h, max(cols, 1), dtype=torch.float32, device=kv.device)
            if cols:
                block = _block(SCORE_BLOCK)
                window = obs[:, :, obs.shape[2] - w:]  # the last w query rows (a view)
                _votes_kernel[(triton.cdiv(cols, block), n_layers * h)](
                    window, src, obs.stride(0), obs.stride(1), obs.stride(2), cols, _fast_columns(cols), h,
                    W=w, BLOCK=block, **_launch(4))
            if p["kernel_size"] > 1:
                pool, k, pad = (1 if p["pooling"] == "avg" else 2), p["kernel_size"], p["kernel_size"] // 2
        block = _block(SCORE_BLOCK)
        _scores_kernel[(triton.cdiv(s, block), n_layers)](
            src, out, meta, src.stride(0), src.stride(1), s, cols, _fast_columns(cols), H=h, POOL=pool, K=k,
            PAD=pad, NEGATE=negate, META=META_W, BLOCK=block, **_launch(4))
        return out

    # -- encode / decode --

    def encode(self, kv: torch.Tensor, stats: Stats = None, *, check: bool = True) -> GpuPayloads:
        n_layers, h, s, _ = check_cache(kv, f"GPU {self.name} kernel")
        if s < 1:
            raise KVError("empty cache (0 tokens)")
        kv = kv.contiguous()
        if check:
            _require_finite(kv, self.name)
        key, lay = self.layout(tuple(kv.shape), kv.dtype)
        meta, hdr = _device_tables(key, str(kv.device))
        dev = kv.device
        has_scores = any(f > 0 for f in lay.free)
        if has_scores:
            scores = self.scores(kv, lay, meta, stats, check)
            vals, idx = torch.sort(scores, dim=1, descending=True, stable=True)  # glue: the CPU's stable argsort
        else:
            scores = vals = idx = torch.empty(1, dtype=torch.float32, device=dev)
        out = torch.empty(lay.total, dtype=torch.uint8, device=dev)
        pos = torch.empty(n_layers, s, dtype=torch.int32, device=dev)
        count = torch.empty(n_layers, dtype=torch.int32, device=dev)
        _compact_kernel[(n_layers,)](scores, vals, idx, meta, hdr, out, pos, count, s, lay.mask_bytes,
                                     HAS_SCORES=has_scores, META=META_W, HDR_BYTES=HDR,
                                     BB=_block(MASK_BLOCK), **_launch(4))
        wp2 = max(1, 1 << (lay.row_words - 1).bit_length())
        block_r = max(1, (_block(GATHER_TILE) if not interpreted() else 256 * wp2) // wp2)
        _gather_kernel[(triton.cdiv(max(lay.n), block_r), n_layers * 2 * h)](
            _word_view(kv, lay.word), _word_view(out, lay.word), pos, meta, s, h, WPR=lay.row_words, WP2=wp2,
            BLOCK_R=block_r, META=META_W, **_launch(GATHER_WARPS))
        if check and not torch.equal(count.cpu(), torch.tensor(lay.n, dtype=torch.int32)):
            raise CodecError(f"internal: the GPU {self.name!r} selection kept {count.tolist()} tokens, "
                             f"expected {lay.n}")
        return GpuPayloads(out, tuple(lay.offsets))

    def decode_layout(self, payloads: GpuPayloads, shape: tuple[int, ...], dtype: torch.dtype) -> tuple[tuple, _Layout]:
        """The layout a payload's per-layer sizes imply (kept counts n = section bytes / row bytes)."""
        n_layers, _, h, s, d = shape
        if payloads.n_layers != n_layers:
            raise WireError(f"codec {self.name!r}: {payloads.n_layers} payloads for a cache of {n_layers} layers")
        itemsize = torch.empty((), dtype=dtype).element_size()
        per_token = 2 * h * d * itemsize
        n = []
        for i, (a, b) in enumerate(zip(payloads.offsets, payloads.offsets[1:])):
            body = b - a - HDR - bitpack.packed_size(s, 1)
            if body < per_token or body % per_token or body // per_token > s:
                raise WireError(f"codec {self.name!r}: layer {i}'s payload of {b - a} bytes is no keep mask over "
                                f"{s} tokens plus whole kept rows of {per_token} bytes")
            n.append(body // per_token)
        key = ("decode", tuple(n), tuple(shape), dtype)
        return _cached_layout(key, lambda: _Layout(n, [0] * n_layers, [0] * n_layers, h, s, d, itemsize))

    def decode(self, payloads: GpuPayloads, shape: tuple[int, ...], dtype: torch.dtype, *,
               check: bool = True) -> Decoded:
        n_layers, _, h, s, _ = shape
        key, lay = self.decode_layout(payloads, tuple(shape), dtype)
        dev = payloads.data.device
        meta, hdr = _device_tables(key, str(dev))
        out = torch.empty(2 * sum(lay.section) // lay.itemsize, dtype=dtype, device=dev)
        pos = torch.empty(sum(lay.n), dtype=torch.int64, device=dev)
        count = torch.empty(n_layers, dtype=torch.int32, device=dev)
        pad = torch.empty(n_layers, dtype=torch.int32, device=dev)
        _unpack_kernel[(n_layers,)](payloads.data, meta, pos, count, pad, s, lay.mask_bytes, META=META_W,
                                    HDR_BYTES=HDR, BT=_block(MASK_BLOCK) * 8,
                                    **_launch(4))
        block = _block(COPY_BLOCK) if not interpreted() else 1 << 16
        per_token = 2 * h * lay.row_words
        _copy_kernel[(triton.cdiv(max(lay.n) * per_token, block), n_layers)](
            _word_view(payloads.data, lay.word), _word_view(out, lay.word), meta, per_token, META=META_W,
            BLOCK=block, **_launch(4))
        if check:
            _check_decoded(self.name, payloads, lay, hdr, count, pad)
        return _views(out, pos, lay)

    # -- eager baseline --

    def encode_eager(self, kv: torch.Tensor, stats: Stats = None) -> GpuPayloads:
        """The CPU codec's ``encode_layer`` ops run one by one on the device tensors, layer by layer."""
        return eager.encode_eager(self, kv, stats)

    def decode_eager(self, payloads: GpuPayloads, shape: tuple[int, ...], dtype: torch.dtype) -> Decoded:
        """The CPU codec's ``decode_layer`` ops on the device (section lengths from the layer sizes)."""
        return eager.decode_eager(self, payloads, shape, dtype)

    # -- statistics for benchmarks --

    def bench_stats(self, shape: tuple[int, ...], generator: torch.Generator | None = None) -> Stats:
        """Attention statistics shaped like ``kvwire.kv.prefill_stats``' for a cache of ``shape``: each
        kv head's queries attend to keys with fixed random weights (a heavy sink token, log-normal
        others), so ``attn_sum`` favours early and heavy tokens as real accumulated attention does.
        One [layers, ...] tensor on the generator's device; the per-layer dicts are views of it."""
        if not self.needs_stats:
            return None
        n_layers, _, h, s, _ = shape
        dev = generator.device if generator is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
        g = generator
        weight = torch.exp(torch.randn(n_layers, h, s, generator=g, device=dev) * 1.5)
        weight[:, :, 0] *= 50.0  # attention sink
        group = 4  # query heads per kv head (GQA): every statistic is summed over them
        if self.name == "h2o":
            total = weight.double().cumsum(dim=2)  # query q attends key t <= q with weight / total[q]
            tail = (1.0 / total).flip(2).cumsum(dim=2).flip(2)  # sum over q >= t
            attn = (weight.double() * tail * group).float()
            return [{"attn_sum": attn[i]} for i in range(n_layers)]
        rows = min(max(32, self.params["obs_window"]), s)
        noise = torch.exp(torch.randn(n_layers, h, rows, s, generator=g, device=dev) * 0.5)
        logits = weight[:, :, None, :] * noise
        q_pos = torch.arange(s - rows, s, device=dev)
        logits = logits.masked_fill(torch.arange(s, device=dev)[None, :] > q_pos[:, None], 0.0)
        obs = (logits / logits.sum(dim=3, keepdim=True) * group).contiguous()
        return [{"obs_attn": obs[i]} for i in range(n_layers)]


@register_kernel
class StreamingKernel(TokenSelectionKernel):
    """``streaming_llm``: sinks + recent window; no scores, no sort."""

    names = ("streaming_llm",)


@register_kernel
class HeavyHitterKernel(TokenSelectionKernel):
    """``h2o``: accumulated attention (``attn_sum``) + recent window."""

    names = ("h2o",)
    needs_stats = ("attn_sum",)


@register_kernel
class SnapKernel(TokenSelectionKernel):
    """``snapkv`` and ``pyramidkv``: pooled votes of the observation window (``obs_attn``)."""

    names = ("snapkv", "pyramidkv")
    needs_stats = ("obs_attn",)


@register_kernel
class KeyNormKernel(TokenSelectionKernel):
    """``keynorm``: the lowest key L2 norms (computed in a Triton pass over K)."""

    names = ("keynorm",)


def _fast_columns(c: int) -> int:
    """Columns of a C-column CPU sum taken by the cascade (the rest by the ILP row sum)."""
    return (c // 32) * 32 if c >= 8 else (c // 4) * 4


def _check_decoded(name: str, payloads: GpuPayloads, lay: _Layout, hdr: torch.Tensor, count: torch.Tensor,
                   pad: torch.Tensor) -> None:
    """Section tables, mask popcounts and padding bits against the layout: one sync."""
    starts = torch.tensor(lay.offsets[:-1], device=hdr.device)[:, None] + torch.arange(HDR, device=hdr.device)
    got = payloads.data[starts]
    want_n = torch.tensor(lay.n, dtype=torch.int32, device=hdr.device)
    flags = torch.stack([(got != hdr).any(dim=1), count != want_n, pad != 0]).cpu()
    for what, row in zip(("section table does not match its size", "keep mask's popcount differs from its rows",
                          "keep mask has bits set past the layer's tokens"), flags):
        if bool(row.any()):
            raise WireError(f"codec {name!r}: layer {int(row.nonzero()[0])}'s {what}")


def _views(out: torch.Tensor, pos: torch.Tensor, lay: _Layout) -> list[LayerKV]:
    layers, at, p = [], 0, 0
    for n, sec in zip(lay.n, lay.section):
        count = sec // lay.itemsize
        k = out[at:at + count].view(lay.h, n, lay.d)
        v = out[at + count:at + 2 * count].view(lay.h, n, lay.d)
        layers.append(LayerKV(k, v, pos[p:p + n]))
        at += 2 * count
        p += n
    return layers

