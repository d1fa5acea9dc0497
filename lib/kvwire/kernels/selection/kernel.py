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
import triton.language as tl

from ...codecs import LayerKV, bitpack
from ...codecs.base import LayerContext, section_header
from ...codecs.selection import edge_mask, top_up
from ...codecs.snapkv import snap_scores, window_size
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

POLICIES = ("streaming_llm", "h2o", "snapkv", "pyramidkv", "keynorm")
MAX_ROWS = 255  # kv heads / obs_window handled by the two-level cascade (ATen adds a third at 256)
NORM_LANES = 8  # float32 lanes of ATen's CPU norm kernel (its AVX2 build, used on AVX512 CPUs too)
HDR = len(section_header([0, 0, 0]))  # 28: u32 count + three u64 lengths
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


# ---- Triton: the CPU's float32 summation orders --------------------------------------------

@triton.jit
def _row(ptr, r, stride, cols, ok, C, POOL: tl.constexpr, K: tl.constexpr, PAD: tl.constexpr):
    """Row ``r`` (row stride ``stride``) of a float32 matrix at ``cols``; with POOL 1/2 the row
    average/max pooled over ``K`` columns (stride 1, padding PAD, ``C`` columns), as the CPU does."""
    base = ptr + r * stride
    if POOL == 0:
        v = tl.load(base + cols, mask=ok, other=0.0)
    elif POOL == 1:
        v = tl.zeros(cols.shape, tl.float32)
        for q in tl.static_range(K):  # running sum from the left, out-of-range columns skipped (+0)
            c = cols - PAD + q
            v += tl.load(base + c, mask=ok & (c >= 0) & (c < C), other=0.0)
        v = tl.math.div_rn(v, K * 1.0)
    else:
        v = tl.full(cols.shape, float("-inf"), tl.float32)
        for q in tl.static_range(K):
            c = cols - PAD + q
            v = tl.maximum(v, tl.load(base + c, mask=ok & (c >= 0) & (c < C), other=float("-inf")))
    return v


@triton.jit
def _cascade_sum(ptr, stride, cols, ok, C, R: tl.constexpr, POOL: tl.constexpr, K: tl.constexpr,
                 PAD: tl.constexpr):
    """Sum of rows 0..R-1 in ATen's ``multi_row_sum`` order (R < 256): running sums of 16 rows added
    into a second accumulator, the remaining rows' running sum added to it last."""
    a1 = tl.zeros(cols.shape, tl.float32)
    for c in tl.static_range(R // 16):
        s = tl.zeros(cols.shape, tl.float32)
        for j in tl.static_range(16):
            s += _row(ptr, c * 16 + j, stride, cols, ok, C, POOL, K, PAD)
        a1 += s
    t = tl.zeros(cols.shape, tl.float32)
    for j in tl.static_range((R // 16) * 16, R):
        t += _row(ptr, j, stride, cols, ok, C, POOL, K, PAD)
    return t + a1


@triton.jit
def _ilp_sum(ptr, stride, cols, ok, C, R: tl.constexpr, POOL: tl.constexpr, K: tl.constexpr,
             PAD: tl.constexpr):
    """Sum of rows 0..R-1 in ATen's ``row_sum`` order: four interleaved cascades (rows 4i + k),
    the leftover rows added to the first, then the four added left to right."""
    SI: tl.constexpr = R // 4
    p0 = _cascade_sum(ptr, stride * 4, cols, ok, C, SI, POOL, K, PAD)
    p1 = _cascade_sum(ptr + stride, stride * 4, cols, ok, C, SI, POOL, K, PAD)
    p2 = _cascade_sum(ptr + 2 * stride, stride * 4, cols, ok, C, SI, POOL, K, PAD)
    p3 = _cascade_sum(ptr + 3 * stride, stride * 4, cols, ok, C, SI, POOL, K, PAD)
    for j in tl.static_range(SI * 4, R):
        p0 += _row(ptr, j, stride, cols, ok, C, POOL, K, PAD)
    return ((p0 + p1) + p2) + p3


@triton.jit
def _cpu_sum(ptr, stride, cols, ok, C, F, R: tl.constexpr, POOL: tl.constexpr, K: tl.constexpr,
             PAD: tl.constexpr):
    """torch's CPU ``x.sum(dim=0)`` of R rows, column by column: cascade below column F, ILP above."""
    out = _cascade_sum(ptr, stride, cols, ok, C, R, POOL, K, PAD)
    if tl.max(cols, axis=0) >= F:  # only the last column block of a row pays for the second order
        out = tl.where(cols < F, out, _ilp_sum(ptr, stride, cols, ok, C, R, POOL, K, PAD))
    return out


@triton.jit
def _votes_kernel(obs_ptr, votes_ptr, layer_stride, head_stride, row_stride, P, F, H,
                  W: tl.constexpr, BLOCK: tl.constexpr):
    """SnapKV votes ``obs[l, h, :W, :P].sum(rows)`` (obs: the window's rows) -> votes [layers * H, P]."""
    lh = tl.program_id(1)
    cols = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    ok = cols < P
    base = obs_ptr + (lh // H).to(tl.int64) * layer_stride + (lh % H).to(tl.int64) * head_stride
    v = _cpu_sum(base, row_stride, cols, ok, P, F, W, 0, 1, 0)
    tl.store(votes_ptr + lh.to(tl.int64) * P + cols, v, mask=ok)


@triton.jit
def _key_norms_kernel(kv_ptr, norms_ptr, S, H, D: tl.constexpr, BLOCK: tl.constexpr, LANES: tl.constexpr):
    """L2 norm of every key row ([layers, 2, H, S, D] cache) in ATen's CPU order -> norms [layers * H, S]."""
    lh = tl.program_id(1)
    t = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    ok = t < S
    row = ((lh // H) * 2 * H + lh % H).to(tl.int64) * S + t  # K of layer lh // H, head lh % H
    lanes = tl.arange(0, LANES)
    acc = tl.zeros([BLOCK, LANES], tl.float32)
    for c in tl.static_range(D // LANES):
        x = tl.load(kv_ptr + row[:, None] * D + c * LANES + lanes[None, :], mask=ok[:, None], other=0.0)
        x = x.to(tl.float32)
        acc += x * x
    # lanes added left to right: one lane = a masked sum of one value and zeros (exact)
    b = tl.sum(tl.where(lanes[None, :] == 0, acc, 0.0), axis=1)
    for j in tl.static_range(1, LANES):
        b += tl.sum(tl.where(lanes[None, :] == j, acc, 0.0), axis=1)
    for c in tl.static_range((D // LANES) * LANES, D):
        x = tl.load(kv_ptr + row * D + c, mask=ok, other=0.0).to(tl.float32)
        b += x * x
    tl.store(norms_ptr + lh.to(tl.int64) * S + t, tl.sqrt_rn(b), mask=ok)


@triton.jit
def _scores_kernel(src_ptr, scores_ptr, meta_ptr, layer_stride, head_stride, S, C, F,
                   H: tl.constexpr, POOL: tl.constexpr, K: tl.constexpr, PAD: tl.constexpr,
                   NEGATE: tl.constexpr, META: tl.constexpr, BLOCK: tl.constexpr):
    """Scores [layers, S]: the CPU-order sum over the H heads of ``src`` [layers, H, C] (pooled with
    POOL), negated with NEGATE, 0 for tokens past C (SnapKV's window), -inf for forced tokens."""
    lay = tl.program_id(1)
    t = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    ok = t < C
    v = _cpu_sum(src_ptr + lay.to(tl.int64) * layer_stride, head_stride, t, ok, C, F, H, POOL, K, PAD)
    if NEGATE:
        v = -v
    v = tl.where(ok, v, 0.0)
    first = tl.load(meta_ptr + lay * META + 1)
    last = tl.load(meta_ptr + lay * META + 2)
    v = tl.where((t < first) | (t >= S - last), float("-inf"), v)
    tl.store(scores_ptr + lay.to(tl.int64) * S + t, v, mask=t < S)


# ---- Triton: keep mask, positions, gather, decode ----------------------------------------------

@triton.jit
def _kept(t, lay, S, first, last, free, vstar, istar, scores_ptr, HAS_SCORES: tl.constexpr):
    """Whether token ``t`` of layer ``lay`` is kept: forced, or within the first ``free`` of the
    stable descending order (score > v*, or == v* and not after i*)."""
    inside = t < S
    keep = inside & ((t < first) | (t >= S - last))
    if HAS_SCORES:
        s = tl.load(scores_ptr + lay.to(tl.int64) * S + t, mask=inside, other=float("-inf"))
        chosen = (s > vstar) | ((s == vstar) & (t <= istar))
        keep = keep | (inside & (free > 0) & chosen)
    return keep


@triton.jit
def _compact_kernel(scores_ptr, vals_ptr, idx_ptr, meta_ptr, hdr_ptr, out_ptr, pos_ptr, count_ptr, S, MB,
                    HAS_SCORES: tl.constexpr, META: tl.constexpr, HDR_BYTES: tl.constexpr, BB: tl.constexpr):
    """One program per layer: its section table and bit-packed keep mask into the payload, its kept
    positions (ascending) into ``pos`` [layers, S], their count into ``count``."""
    lay = tl.program_id(0)
    first = tl.load(meta_ptr + lay * META + 1)
    last = tl.load(meta_ptr + lay * META + 2)
    free = tl.load(meta_ptr + lay * META + 3)
    base = tl.load(meta_ptr + lay * META + 4)  # the layer's byte offset in the payload
    vstar = float("inf")
    istar = -1
    if HAS_SCORES:
        at = lay.to(tl.int64) * S + tl.maximum(free - 1, 0)
        vstar = tl.where(free > 0, tl.load(vals_ptr + at), float("inf"))
        istar = tl.where(free > 0, tl.load(idx_ptr + at), -1)
    h = tl.arange(0, 32)
    tl.store(out_ptr + base + h, tl.load(hdr_ptr + lay * HDR_BYTES + h, mask=h < HDR_BYTES), mask=h < HDR_BYTES)
    bit = tl.arange(0, 8)
    carry = 0
    for b0 in range(0, MB, BB):
        byte_i = b0 + tl.arange(0, BB)
        keep2 = _kept(byte_i[:, None] * 8 + bit[None, :], lay, S, first, last, free, vstar, istar, scores_ptr,
                      HAS_SCORES)
        byte = tl.sum(keep2.to(tl.int32) << bit[None, :], axis=1)  # token 8b + j at bit j
        tl.store(out_ptr + base + HDR_BYTES + byte_i, byte.to(tl.uint8), mask=byte_i < MB)
        t = b0 * 8 + tl.arange(0, BB * 8)
        keep = _kept(t, lay, S, first, last, free, vstar, istar, scores_ptr, HAS_SCORES).to(tl.int32)
        dst = carry + tl.cumsum(keep, axis=0) - 1
        tl.store(pos_ptr + lay.to(tl.int64) * S + dst, t, mask=(keep != 0) & (dst < S))
        carry += tl.sum(keep, axis=0)
    tl.store(count_ptr + lay, carry)


@triton.jit
def _gather_kernel(kv_ptr, out_ptr, pos_ptr, meta_ptr, S, H, WPR: tl.constexpr, WP2: tl.constexpr,
                   BLOCK_R: tl.constexpr, META: tl.constexpr):
    """Kept rows of the cache (words of ``WPR`` per row) -> the payload's K and V sections, on the grid
    (kept-row block, (layer * 2 + K/V) * H + head)."""
    t = tl.program_id(1)
    lay = t // (2 * H)
    kv = (t // H) % 2
    head = t % H
    n = tl.load(meta_ptr + lay * META + 0)
    j0 = tl.program_id(0) * BLOCK_R
    if j0 < n:
        j = j0 + tl.arange(0, BLOCK_R)
        ok = j < n
        p = tl.load(pos_ptr + lay.to(tl.int64) * S + j, mask=ok, other=0).to(tl.int64)
        w = tl.arange(0, WP2)
        m = ok[:, None] & (w[None, :] < WPR)
        x = tl.load(kv_ptr + (t.to(tl.int64) * S + p)[:, None] * WPR + w[None, :], mask=m)
        dst = tl.load(meta_ptr + lay * META + 5) + (kv * H + head).to(tl.int64) * n * WPR + j.to(tl.int64) * WPR
        tl.store(out_ptr + dst[:, None] + w[None, :], x, mask=m)


@triton.jit
def _unpack_kernel(pay_ptr, meta_ptr, pos_ptr, count_ptr, pad_ptr, S, MB,
                   META: tl.constexpr, HDR_BYTES: tl.constexpr, BT: tl.constexpr):
    """One program per layer: its keep mask -> kept positions (int64, ascending) at the layer's
    offset in ``pos``; popcount and set padding bits into ``count`` / ``pad`` (checked on the host)."""
    lay = tl.program_id(0)
    n = tl.load(meta_ptr + lay * META + 0)
    base = tl.load(meta_ptr + lay * META + 4) + HDR_BYTES
    pos0 = tl.load(meta_ptr + lay * META + 7)
    carry = 0
    pad = 0
    for t0 in range(0, MB * 8, BT):
        t = t0 + tl.arange(0, BT)
        byte = tl.load(pay_ptr + base + t // 8, mask=t < MB * 8, other=0).to(tl.int32)
        bit = (byte >> (t % 8)) & 1
        pad += tl.sum(tl.where(t >= S, bit, 0), axis=0)
        keep = tl.where(t < S, bit, 0)
        dst = carry + tl.cumsum(keep, axis=0) - 1
        tl.store(pos_ptr + pos0 + dst, t.to(tl.int64), mask=(keep != 0) & (dst < n))
        carry += tl.sum(keep, axis=0)
    tl.store(count_ptr + lay, carry)
    tl.store(pad_ptr + lay, pad)


@triton.jit
def _copy_kernel(src_ptr, dst_ptr, meta_ptr, WORDS_PER_TOKEN, META: tl.constexpr, BLOCK: tl.constexpr):
    """Every layer's K and V sections (one run of words) -> its slot of the decode buffer."""
    lay = tl.program_id(1)
    i = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    words = tl.load(meta_ptr + lay * META + 0) * WORDS_PER_TOKEN
    ok = i < words
    x = tl.load(src_ptr + tl.load(meta_ptr + lay * META + 5) + i, mask=ok)
    tl.store(dst_ptr + tl.load(meta_ptr + lay * META + 6) + i, x, mask=ok)


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
        n_layers, _, _, _ = check_cache(kv, f"GPU {self.name} kernel")
        ctxs = layer_contexts(tuple(kv.shape), kv.dtype, stats)
        parts, offsets = [], [0]
        for i in range(n_layers):
            layer = LayerKV(kv[i, 0], kv[i, 1])
            _require_finite(kv[i:i + 1], self.name)
            n = self.codec.tensor.budget_for(ctxs[i])
            keep = self._select_eager(layer, ctxs[i], n)
            idx = keep.nonzero().squeeze(1)
            k, v = layer.k.index_select(1, idx), layer.v.index_select(1, idx)
            mask = bitpack.pack(keep, 1)
            sections = [_raw(mask), _raw(k), _raw(v)]
            header = torch.frombuffer(bytearray(section_header([x.numel() for x in sections])), dtype=torch.uint8)
            parts.append(torch.cat([header.to(kv.device)] + sections))
            offsets.append(offsets[-1] + parts[-1].numel())
        return GpuPayloads(torch.cat(parts), tuple(offsets))

    def _select_eager(self, layer: LayerKV, ctx: LayerContext, n: int) -> torch.Tensor:
        """The policy's ``select`` with its masks made on the device (``codecs/*.py``' ops)."""
        seq, dev = layer.k.shape[1], layer.k.device
        first, last = self._edges(n, seq)
        forced = edge_mask(seq, first, last).to(dev)
        if self.name == "streaming_llm":
            return forced
        if self.name == "keynorm":
            return self.codec.tensor.select(layer, ctx, n)  # device-agnostic as written
        if self.name == "h2o":
            from ...codecs.selection import stat

            return top_up(forced, stat(ctx, "attn_sum", self.name).sum(dim=0), n)
        p = self.params
        w = window_size(p["obs_window"], seq)
        scores = snap_scores(ctx, self.name, p["obs_window"], p["kernel_size"], p["pooling"])
        return top_up(forced, torch.cat([scores, torch.zeros(w, dtype=scores.dtype, device=dev)]), n)

    def decode_eager(self, payloads: GpuPayloads, shape: tuple[int, ...], dtype: torch.dtype) -> Decoded:
        """The CPU codec's ``decode_layer`` ops on the device (section lengths from the layer sizes)."""
        n_layers, _, h, s, d = shape
        _, lay = self.decode_layout(payloads, tuple(shape), dtype)
        out = []
        for i in range(n_layers):
            p = payloads.layer(i)
            bits = bitpack.unpack(p[HDR:HDR + lay.mask_bytes], 1, 8 * lay.mask_bytes)
            positions = bits[:s].nonzero().squeeze(1).to(torch.int64)
            n = positions.numel()
            body = p[HDR + lay.mask_bytes:].clone()  # aligned copy (the CPU's tensor_from copies too)
            k = body[:lay.section[i]].view(dtype).reshape(h, n, d)
            v = body[lay.section[i]:].view(dtype).reshape(h, n, d)
            out.append(LayerKV(k, v, positions))
        return out

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


def _require_finite(kv: torch.Tensor, codec: str) -> None:
    """The CPU codec's ``require_finite`` over the whole cache (dropped tokens too): one sync."""
    lo = kv.amin(dim=(2, 3, 4))
    hi = kv.amax(dim=(2, 3, 4))
    bad = ~(torch.isfinite(lo) & torch.isfinite(hi))
    if bool(bad.any()):
        layer, which = (int(x) for x in bad.nonzero()[0])
        raise KVError(f"codec {codec!r}: NaN/Inf value(s) in layer {layer} {('keys', 'values')[which]}")


def _raw(t: torch.Tensor) -> torch.Tensor:
    t = t.contiguous().reshape(-1)
    return t.view(torch.uint8) if t.numel() else torch.empty(0, dtype=torch.uint8, device=t.device)


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

