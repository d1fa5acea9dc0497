"""guardband: layer-wise mixed precision with guard bands, planned to meet a target compression ratio.

A fixed set of "guard bands" crosses the wire at high precision (``guard_bits``, default 8; 16 means
a raw copy in the cache dtype) and everything else, the *body*, gets the precision -- and if need
be the token count -- that makes the WHOLE CONTAINER meet ``target_ratio`` (raw bytes / container
bytes, the ratio ``kvwire.wire.inspect`` reports). The guard bands are

- the first ``guard_layers_first`` (1) and last ``guard_layers_last`` (1) layers, entirely;
- in every other layer, the first ``sinks`` (4) tokens -- attention sinks, which soak up attention
  whatever their content (Xiao, Tian, Chen, Han, Lewis, "Efficient Streaming Language Models with
  Attention Sinks", ICLR 2024, arXiv:2309.17453; KVQuant -- Hooper et al., NeurIPS 2024,
  arXiv:2401.18079 -- likewise keeps its first token in fp16) -- and the last ``recent`` (32)
  tokens, KIVI's full-precision residual of recent tokens (Liu et al., "KIVI: A Tuning-Free
  Asymmetric 2bit Quantization for KV Cache", ICML 2024, arXiv:2402.02750).

Related allocation schemes this follows in spirit: mixed precision by token importance with
unimportant tokens kept at low precision instead of evicted -- MiKV (Yang et al., "No Token Left
Behind: Reliable KV Cache Compression via Importance-Aware Mixed Precision Quantization",
arXiv:2402.18096) and ZipCache (He et al., arXiv:2405.14256); KVQuant's dense-and-sparse split
(a few values exact, the rest low-bit); per-layer budgets that differ by depth -- PyramidKV (Cai et
al., arXiv:2406.02069). None of them is reproduced: guard bands here are positional (no saliency
metric), and the per-layer allocation is a budget plan from shapes alone.

Keys are first divided by their per-(head, channel) absmax over the layer (``key_scale``, default
on; SmoothQuant-style equalization, Xiao et al., ICML 2023, arXiv:2211.10438): keys have a few loud
channels, and a per-token group spanning them would round the quiet ones away. The scales
([kv_heads, head_dim] in ``scale_dtype``) travel in the payload and are multiplied back on decode;
on a real SmolLM2-135M cache they cut 2-bit key error ~3x.

Quantization: uniform asymmetric min-max round-to-nearest, per token, in groups of ``group_size``
(32) consecutive head_dim elements, one scale + zero point per group in ``scale_dtype`` (float16),
codes bit-packed in ``codecs/bitpack.py``'s layout. Keys and values are grouped the same way (per
token), NOT KIVI's per-channel keys: per-token groups do not depend on the sequence length and
survive token dropping unchanged. ``group_size`` must divide head_dim; a head_dim smaller than
``group_size`` uses one group per head_dim vector. At group 32 an element costs ``bits + 1`` bits
(8 -> 9, 4 -> 5, 3 -> 4, 2 -> 3). The arithmetic is ``codecs/quant.py``'s (zero point = group min
and scale = range / (2**bits - 1) rounded to ``scale_dtype`` BEFORE the codes are computed, so the
decoder uses exactly what the encoder did), re-implemented in place on one float32 buffer holding
a segment's keys and values, with rounding as ``floor(x / scale + 1/2)`` (ties up, not to even;
same bound) and numpy bit packing -- see ``pack_codes`` -- for speed.

The plan (``plan_cache``) is a pure function of (every layer's shape, dtype, params), so every
layer's ``encode_layer`` computes the same whole-cache plan from its own ``LayerContext`` -- whose
``cache_shapes`` are the wire header's per-layer shapes -- and takes its row. Layers may differ in
length: kvwire's extraction trims a sliding-window layer to its last ``window - 1`` tokens (Gemma-3 at
2048 tokens: 15 layers of 511 and 3 of 2048), and every layer's sinks, recent tokens, body and byte
cost are its own. Byte costs are exact (the same
arithmetic as the encoder; the tests check every payload length against it), plus the container:
12 + 4 + 12 bytes of preamble, header CRC and trailer, 24 bytes per frame and the JSON header,
estimated by rebuilding it with empty ``meta`` plus ``META_SLACK`` (1024) bytes. With B the
``floor(raw / target_ratio)`` byte budget:

1. guard layers: every token at ``guard_bits``;
2. body layers: guard tokens at ``guard_bits``; the body at the highest step of the ladder
   8, 4, 3, 2 bits (steps above ``guard_bits`` and below ``min_body_bits`` skipped) that fits in every body layer; if the top
   step does not fit, two adjacent steps are mixed: the first ``m`` body layers (lowest depth
   first, PyramidKV's "lower layers need more") at the higher step, the rest at the lower, ``m``
   as large as fits;
3. if even the lowest step (``min_body_bits``, default 2) everywhere does not fit, body tokens are
   DROPPED (removed, never zero-filled) at that step. On real SmolLM2 caches at 5x-12x,
   ``min_body_bits=4`` (drop tokens rather than quantize the body below 4 bits) raised token
   agreement from ~0.68 to ~0.80-0.89, so the study's config uses it: every body layer keeps the same ``n`` body tokens, the remainder one token each to
   the lowest body layers, as many as fit. With layers of different lengths every body layer keeps the
   same share of its body: ``floor(k * body_i / body_max)`` tokens, ``k`` as large as fits (equal
   layers: ``n = k`` as before), then the remainder as above. Which tokens: the ``n`` lowest summed key L2 norms
   (Devoto et al., EMNLP 2024, arXiv:2406.11430, as ``keynorm``) or, with ``score="attn_sum"`` or
   ``score="auto"`` when ``ctx.stats`` holds it, the highest accumulated attention (``attn_sum``,
   H2O, arXiv:2306.14048), summed over the kv heads (one token set per layer, see ``selection``).
   Guard tokens are always kept. Decode then returns ``positions`` (ascending int64), as the
   token-selection codecs do;
4. if the guard bands alone (no body token kept) exceed B, the target is UNREACHABLE. Default
   (``strict=False``): best effort, i.e. step 3's plan with ``n = 0`` -- only guard bands, the
   highest ratio the guard bands allow (``CachePlan.ratio`` tells it in advance); with
   ``sinks = recent = 0`` every layer still keeps one body token (a layer is never empty). With
   ``strict=True`` encoding raises ``CodecError`` naming the reachable ratio and what to lower.
   Highest reachable ratios with the defaults (bf16): SmolLM2-135M (30 layers, 3 x 64) 8.9 at
   seq 256, 13.4 at 512, 17.8 at 1024; Gemma-3-270M (18 layers, 1 x 256, 15 of them trimmed to their
   511-token window) 7.4 at 256, 10.1 at 512, 9.0 at 1024, 7.8 at 2048 -- its last layer, a guard
   layer, attends to the whole prefix, so its share grows with the prefix while the sliding layers'
   stays fixed. ``recent=16`` (Gemma: 9.6 / 12.0 / 10.2 / 8.5; the study's ``guardband_8x``
   becomes unreachable from about 2500 tokens) or ``guard_bits=4`` (13.1 / 18.0 / 16.0 / 13.9) reach
   further.

Guarantee: for a reachable target, any layer shapes and ``meta`` of at most ~1 KB of JSON,
the measured container ratio is >= ``target_ratio``. Overshoot: when mixing, the container lies
within one layer's step difference below the budget; when dropping, within one body token per
body layer (plus the header slack); at the top step (target below what 8-bit bodies give) the
ratio is simply the 8-bit one. For SmolLM2-135M and Gemma-3-270M shapes at seq 512..2048 and
targets 5, 8, 12 the measured ratio is within 1% of the target where reachable (``tests``).

Error per element: quantized segments ``|x - x_hat| <= scale / 2`` plus the storage rounding of
scale/zero point and the output dtype's rounding (``codecs/quant.py``); ``guard_bits=16`` segments
are bit-exact.

Wire layout (``pack_sections``, 5 sections; plan version 2):

0. plan header ``<BBBBIII``: version (1), guard_bits, body_bits, flags (bit 0: tokens dropped),
   sinks, recent, kept body tokens -- the decoder recomputes the plan and refuses a mismatch;
1. keep mask over the layer's ``seq`` tokens, 1 bit each (``ceil(seq / 8)`` bytes, padding bits
   zero, guard tokens set) -- only when tokens are dropped, else empty;
2. guard segment: the sink tokens then the recent tokens, keys then values
   ([2, kv_heads, sinks + recent, head_dim]);
3. body segment: the kept body tokens in order, keys then values ([2, kv_heads, kept, head_dim]);
4. key channel scales [kv_heads, 1, head_dim] in ``scale_dtype`` when ``key_scale`` and a segment
   of the layer is quantized, else empty (quantized key codes are of ``key / scale``).

A quantized segment is ``packed codes | scales | zero points`` (codes in [2, kv_heads, tokens,
head_dim] order; scales and zeros [2, kv_heads, tokens, head_dim / group] in ``scale_dtype``); a
16-bit segment is the raw tensor in the cache dtype. On guard layers the body segment holds the
remaining tokens at ``guard_bits``. NaN/Inf are refused (``KVError``): a quantized value's NaN/Inf
surfaces in its group's min/max; values no quantizer sees (raw guard tokens, dropped tokens) are
checked with one float32 sum.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache
from typing import Any, Sequence

import numpy as np
import torch

from ..errors import CodecError, KVError, WireError
from . import bitpack
from ..limits import MAX_HEAD_DIM, MAX_LAYERS, MAX_TOKENS
from .base import (LayerContext, LayerKV, Param, TensorCodec, check_layer, pack_sections, require_finite,
                   tensor_bytes, tensor_from, unpack_sections)
from .quant import SCALE_DTYPES
from .registry import register
from .selection import stat, top_up

RAW_BITS = 16  # guard_bits=16: a raw copy in the cache dtype (bit-exact, whatever that dtype's width)
LADDER = (8, 4, 3, 2)
SCORES = ("auto", "keynorm", "attn_sum")
N_SECTIONS = 5
VERSION = 2
FLAG_DROP = 1
_PLAN = struct.Struct("<BBBBIII")
_SECTIONS_OVERHEAD = 4 + 8 * N_SECTIONS  # pack_sections' count + length table
# kvwire.wire v1 container: preamble 12 + header crc 4 + trailer 12; per frame head 20 + crc 4
CONTAINER_FIXED = 12 + 4 + 12
FRAME_BYTES = 24
META_SLACK = 1024  # bytes of header JSON reserved for wire.encode(meta=...): the workflow sends model, source, prompt id
_DTYPE_NAMES = {torch.float16: "float16", torch.bfloat16: "bfloat16", torch.float32: "float32"}


def effective_group(head_dim: int, group_size: int) -> int | None:
    """Elements per quantization group: ``group_size``, or head_dim when smaller; None if it does not divide."""
    g = min(group_size, head_dim)
    return g if g and head_dim % g == 0 else None


def segment_bytes(heads: int, tokens: int, head_dim: int, bits: int, group: int, scale_size: int,
                  elt: int) -> int:
    """Bytes of one segment section: keys and values of ``tokens`` tokens, quantized (or raw at ``bits=16``)."""
    n = 2 * heads * tokens * head_dim
    if bits == RAW_BITS:
        return n * elt
    codes = n if bits == 8 else bitpack.packed_size(n, bits)
    return codes + 2 * (n // group) * scale_size


@dataclass(frozen=True)
class LayerPlan:
    """What one layer sends: guard tokens at ``guard_bits``, ``kept`` of ``body`` body tokens at ``body_bits``."""

    guard_layer: bool
    guard_bits: int
    body_bits: int
    sinks: int
    recent: int
    body: int
    kept: int
    drop: bool

    def header(self) -> tuple[int, ...]:
        return (VERSION, self.guard_bits, self.body_bits, FLAG_DROP if self.drop else 0,
                self.sinks, self.recent, self.kept)

    @property
    def quantized(self) -> bool:
        """Whether any segment of this layer is quantized (then its keys carry channel scales)."""
        return self.guard_bits != RAW_BITS or (self.body_bits != RAW_BITS and self.kept > 0)

    def payload_bytes(self, shape: tuple[int, int, int], group: int, scale_size: int, elt: int,
                      key_scale: bool = True) -> int:
        h, s, d = shape
        mask = bitpack.packed_size(s, 1) if self.drop else 0
        channel = h * d * scale_size if key_scale and self.quantized else 0
        return (_SECTIONS_OVERHEAD + _PLAN.size + mask + channel
                + segment_bytes(h, self.sinks + self.recent, d, self.guard_bits, group, scale_size, elt)
                + segment_bytes(h, self.kept, d, self.body_bits, group, scale_size, elt))


@dataclass(frozen=True)
class CachePlan:
    """The whole cache's plan and its predicted container size (``meta`` empty)."""

    layers: tuple[LayerPlan, ...]
    raw_bytes: int
    budget_bytes: int  # floor(raw / target_ratio)
    container_bytes: int  # predicted len(wire.encode(...)) with meta={}
    feasible: bool
    regime: str  # "top", "mix", "drop", "guard-only" (nothing to plan) or "unreachable"

    @property
    def ratio(self) -> float:
        return self.raw_bytes / self.container_bytes

    @property
    def bits(self) -> list[int]:
        return [lp.body_bits for lp in self.layers]

    @property
    def kept(self) -> list[int]:
        return [lp.kept for lp in self.layers]


def header_estimate(name: str, params: dict[str, Any], shapes: Sequence[tuple[int, int, int]],
                    dtype: torch.dtype) -> int:
    """Length of the wire header JSON ``wire.header_bytes`` writes for a cache of these layer shapes
    with empty meta."""
    obj = {"codec": name, "params": params,
           "layout": {"order": "kv_heads,seq,head_dim", "dtype": _DTYPE_NAMES[dtype],
                      "shapes": [list(s) for s in shapes]},
           "meta": {}}
    return len(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode())


def _shapes(shapes: Any) -> tuple[tuple[int, int, int], ...]:
    """``shapes`` as a hashable tuple of (kv_heads, seq, head_dim) triples (the plan cache's key)."""
    out = tuple(tuple(int(x) for x in sh) for sh in shapes)
    if not out or any(len(sh) != 3 for sh in out):
        raise CodecError(f"a guardband plan needs one (kv_heads, seq, head_dim) per layer, got {list(shapes)!r}")
    return out


def plan_cache(name: str, params_items: tuple[tuple[str, Any], ...], shapes: Sequence[tuple[int, int, int]],
               dtype: torch.dtype) -> CachePlan:
    """The deterministic plan for a cache whose layers have ``shapes`` (see the module docstring)."""
    return _plan_cache(name, params_items, _shapes(shapes), dtype)


@lru_cache(maxsize=256)
def _plan_cache(name: str, params_items: tuple[tuple[str, Any], ...], shapes: tuple[tuple[int, int, int], ...],
                dtype: torch.dtype) -> CachePlan:
    p = dict(params_items)
    n_layers = len(shapes)
    ssz = torch.empty((), dtype=SCALE_DTYPES[p["scale_dtype"]]).element_size()
    elt = torch.empty((), dtype=dtype).element_size()
    groups = []
    for h, s, d in shapes:
        group = effective_group(d, p["group_size"])
        if group is None:
            raise CodecError(f"codec {name!r}: head_dim {d} is not a multiple of group_size {p['group_size']}; "
                             f"set group_size to a divisor of {d}")
        groups.append(group)
    gb = p["guard_bits"]
    sinks = [min(p["sinks"], s) for _, s, _ in shapes]
    recent = [min(p["recent"], s - k) for (_, s, _), k in zip(shapes, sinks)]
    body = [s - k - r for (_, s, _), k, r in zip(shapes, sinks, recent)]
    ladder = tuple(b for b in LADDER if p["min_body_bits"] <= b <= gb) or (min(gb, p["min_body_bits"]),)
    guard = [i < p["guard_layers_first"] or i >= n_layers - p["guard_layers_last"] for i in range(n_layers)]
    body_idx = [i for i in range(n_layers) if not guard[i]]
    nb = len(body_idx)

    raw = sum(2 * h * s * d * elt for h, s, d in shapes)
    budget = math.floor(Fraction(raw) / Fraction(p["target_ratio"]))
    container = CONTAINER_FIXED + header_estimate(name, p, shapes, dtype) + FRAME_BYTES * n_layers

    def lp(i: int, is_guard: bool, bits: int, kept: int, drop: bool) -> LayerPlan:
        return LayerPlan(is_guard, gb, bits, sinks[i], recent[i], body[i], kept, drop)

    def cost(i: int, plan: LayerPlan) -> int:
        return plan.payload_bytes(shapes[i], groups[i], ssz, elt, p["key_scale"])

    guard_plans = {i: lp(i, True, gb, body[i], False) for i in range(n_layers) if guard[i]}
    base = container + sum(cost(i, x) for i, x in guard_plans.items())
    avail = budget - META_SLACK - base  # bytes left for the body layers' payloads

    def finish(body_plans: list[LayerPlan], regime: str) -> CachePlan:
        it = iter(body_plans)
        layers = tuple(guard_plans[i] if guard[i] else next(it) for i in range(n_layers))
        total = container + sum(cost(i, x) for i, x in enumerate(layers))
        feasible = total + META_SLACK <= budget
        return CachePlan(layers, raw, budget, total, feasible, regime if feasible else "unreachable")

    # a body layer whose tokens are all guard tokens has no body to plan: it is sent whole, never drops
    if nb == 0 or not any(body[i] for i in body_idx):  # nothing left to plan: the guard bands are the whole cache
        return finish([lp(i, False, ladder[0], body[i], False) for i in body_idx], "guard-only")

    def body_bytes(plans: list[LayerPlan]) -> int:
        return sum(cost(i, x) for i, x in zip(body_idx, plans))

    full = {b: [lp(i, False, b, body[i], False) for i in body_idx] for b in ladder}
    full_cost = {b: [cost(i, x) for i, x in zip(body_idx, full[b])] for b in ladder}
    if sum(full_cost[ladder[0]]) <= avail:
        return finish(full[ladder[0]], "top")
    for hi, lo in zip(ladder, ladder[1:]):
        if sum(full_cost[lo]) <= avail:
            # the first m body layers (lowest depth first) at the higher step: m as large as fits
            m, spent = 0, sum(full_cost[lo])
            while m < nb - 1 and spent + full_cost[hi][m] - full_cost[lo][m] <= avail:
                spent += full_cost[hi][m] - full_cost[lo][m]
                m += 1
            return finish([full[hi][j] if j < m else full[lo][j] for j in range(nb)], "mix")
    low = ladder[-1]
    least = 0 if p["sinks"] + p["recent"] else 1  # a layer never ends up empty
    top = max(body[i] for i in body_idx)

    def dropped(k: int) -> list[LayerPlan]:
        """Every body layer keeps the same share k / top of its body tokens (at least ``least``): equal
        layers keep k tokens each; a window-trimmed layer keeps the same fraction of its shorter body."""
        return [lp(i, False, low, min(body[i], max(least, k * body[i] // top)), True) if body[i] else
                lp(i, False, low, 0, False) for i in body_idx]

    if body_bytes(dropped(0)) > avail:  # the guard bands alone exceed the budget: keep only them
        return finish(dropped(0), "drop")
    lo_k, hi_k = 0, top  # largest k with body_bytes(dropped(k)) <= avail (every body kept, with masks, exceeds it)
    while lo_k < hi_k:
        mid = (lo_k + hi_k + 1) // 2
        if body_bytes(dropped(mid)) <= avail:
            lo_k = mid
        else:
            hi_k = mid - 1
    plans = dropped(lo_k)
    left = avail - body_bytes(plans)
    for j, i in enumerate(body_idx):  # the remainder: one more token each to the lowest body layers with room
        x = plans[j]
        if x.drop and x.kept < body[i]:
            step = cost(i, lp(i, False, low, x.kept + 1, True)) - cost(i, x)
            if 0 < step <= left:
                left -= step
                plans[j] = lp(i, False, low, x.kept + 1, True)
    return finish(plans, "drop")


def pack_codes(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """``bitpack.pack`` for 2, 3, 4 and 8 bits, byte for byte (tested), several times faster.

    Eight codes, one per byte, are read as little-endian words and folded together with shifts and
    masks (2 bits: uint32 words of 4 codes; 4 bits: uint16 of 2; 3 bits: uint64 of 8 -> 3 bytes)
    instead of ``bitpack``'s per-slot passes. In numpy: single-threaded, so no OpenMP wake-up per
    operation (with ``OMP_WAIT_POLICY=PASSIVE`` and 2 threads each parallel torch op costs ~0.1 ms).
    """
    flat = codes.reshape(-1)
    if bits == 8:
        return flat
    pad = (-flat.numel()) % 8
    if pad:
        flat = torch.nn.functional.pad(flat, (0, pad))
    a = flat.numpy()
    if bits == 4:
        w = a.view(np.uint16)
        out = ((w | (w >> 4)) & 0xFF).astype(np.uint8)
    elif bits == 2:
        w = a.view(np.uint32)
        w = w | (w >> 6)
        out = ((w | (w >> 12)) & 0xFF).astype(np.uint8)
    elif bits == 3:
        w = a.view(np.uint64)
        w = (w | (w >> np.uint64(5))) & np.uint64(0x003F003F003F003F)
        w = (w | (w >> np.uint64(10))) & np.uint64(0x00000FFF00000FFF)
        w = w | (w >> np.uint64(20))
        out = np.ascontiguousarray(w.view(np.uint8).reshape(-1, 8)[:, :3]).reshape(-1)
    else:
        return bitpack.pack(flat, bits)
    return torch.from_numpy(out)


def unpack_codes(packed: torch.Tensor, bits: int, n_codes: int) -> torch.Tensor:
    """Inverse of :func:`pack_codes` (= ``bitpack.unpack``): the first ``n_codes`` codes as uint8."""
    if bits == 8:
        return packed
    a = packed.numpy()
    if bits == 4:
        w = a.astype(np.uint16)
        codes = ((w | (w << 4)) & 0x0F0F).view(np.uint8)
    elif bits == 2:
        w = a.astype(np.uint32)
        w = (w | (w << 12)) & 0x000F000F
        codes = ((w | (w << 6)) & 0x03030303).view(np.uint8)
    elif bits == 3:
        words = np.zeros((a.size // 3, 8), dtype=np.uint8)
        words[:, :3] = a.reshape(-1, 3)
        w = words.view(np.uint64).reshape(-1)
        w = (w | (w << np.uint64(20))) & np.uint64(0x00000FFF00000FFF)
        w = (w | (w << np.uint64(10))) & np.uint64(0x003F003F003F003F)
        codes = ((w | (w << np.uint64(5))) & np.uint64(0x0707070707070707)).view(np.uint8)
    else:
        return bitpack.unpack(packed, bits, n_codes)
    return torch.from_numpy(codes[:n_codes])


def _quantize(buf: torch.Tensor, bits: int, group: int, sdt: torch.dtype) -> bytes:
    """float32 ``buf`` (overwritten) -> ``packed codes | scales | zeros``, groups of ``group`` along its last dim.

    The arithmetic of ``quant.quantize`` (asymmetric min-max; zero point and scale rounded to ``sdt``
    before the codes are computed), done in place on one buffer holding keys and values together,
    so a segment costs one pass per operation instead of two calls' worth of temporaries.
    """
    qmax = 2**bits - 1
    rows = buf.view(-1, group)
    hi = rows.amax(dim=1, keepdim=True)
    zero = rows.amin(dim=1, keepdim=True).to(sdt)
    zf = zero.float()
    scale = hi.sub_(zf).div_(qmax).to(sdt)
    s = scale.float()
    if not bool(torch.isfinite(zf).all()) or not bool(torch.isfinite(s).all()):
        raise CodecError(f"a quantization scale or zero point overflows {sdt}")
    inv = torch.where(s > 0, s.reciprocal(), 0.0)  # constant (or inverted, see quant.py) groups: code 0
    # round to nearest as floor((x - zero) / scale + 1/2): the half step is folded into the zero point
    # and the floor is the truncating cast of the clamped, non-negative values (one pass fewer than
    # round_; ties round up instead of to even, the bound |x - x_hat| <= scale / 2 is the same)
    rows.sub_(torch.add(zf, s, alpha=-0.5)).mul_(inv).clamp_(0, qmax)  # zf may alias zero: no in-place
    codes = torch.from_numpy(rows.numpy().astype(np.uint8))  # numpy's cast is ~3x torch's here
    return b"".join([tensor_bytes(pack_codes(codes, bits)), tensor_bytes(scale), tensor_bytes(zero)])


def _decode_segment(buf: memoryview, h: int, n: int, d: int, bits: int, group: int, sdt: torch.dtype,
                    dtype: torch.dtype, codec: str, what: str) -> torch.Tensor:
    """One segment's section -> [2, h, n, d] (keys, values): float32 if quantized, ``dtype`` if raw."""
    ssz, elt = torch.empty((), dtype=sdt).element_size(), torch.empty((), dtype=dtype).element_size()
    expected = segment_bytes(h, n, d, bits, group, ssz, elt)
    if len(buf) != expected:
        raise WireError(f"codec {codec!r}: {what} section has {len(buf)} bytes, expected {expected}")
    if n == 0:
        return torch.empty((2, h, 0, d), dtype=dtype)
    if bits == RAW_BITS:
        return tensor_from(buf, dtype, (2, h, n, d))
    n_codes = 2 * h * n * d
    pb = n_codes if bits == 8 else bitpack.packed_size(n_codes, bits)
    ns = n_codes // group * ssz
    codes = unpack_codes(tensor_from(buf[:pb], torch.uint8, (pb,)), bits, n_codes)
    scale = tensor_from(buf[pb:pb + ns], sdt, (n_codes // group, 1))
    zero = tensor_from(buf[pb + ns:], sdt, (n_codes // group, 1))
    if not (torch.isfinite(scale).all() and torch.isfinite(zero).all()):
        raise WireError(f"codec {codec!r}: non-finite scale or zero point in the {what} section")
    x = torch.from_numpy(codes.numpy().astype(np.float32)).view(-1, group)
    x.mul_(scale.float()).add_(zero.float())
    limit = torch.finfo(dtype).max
    if limit < (2**bits) * torch.finfo(sdt).max:  # a scale rounded up in storage must never produce inf
        x.clamp_(-limit, limit)
    return x.view(2, h, n, d)


@register
class GuardBand(TensorCodec):
    name = "guardband"
    summary = ("mixed precision to a target ratio: guard layers + sink/recent tokens at guard_bits, "
               "body at 8/4/3/2 bits, then body tokens dropped by key norm")
    PARAMS = {
        "target_ratio": Param(float, 8.0, "whole-container compression ratio (raw / bytes) to meet", minimum=1.0),
        "guard_bits": Param(int, 8, "bits of the guard bands (16 = raw copy in the cache dtype)",
                            choices=(2, 3, 4, 5, 6, 7, 8, 16)),
        "guard_layers_first": Param(int, 1, "first layers kept entirely at guard_bits", minimum=0,
                                    maximum=MAX_LAYERS),
        "guard_layers_last": Param(int, 1, "last layers kept entirely at guard_bits", minimum=0,
                                   maximum=MAX_LAYERS),
        "sinks": Param(int, 4, "initial (attention-sink) tokens of every layer at guard_bits", minimum=0,
                       maximum=MAX_TOKENS),
        "recent": Param(int, 32, "most recent tokens of every layer at guard_bits", minimum=0,
                        maximum=MAX_TOKENS),
        "group_size": Param(int, 32, "head_dim elements per quantization group (must divide head_dim)",
                            minimum=1, maximum=MAX_HEAD_DIM),
        "scale_dtype": Param(str, "float16", "dtype of the stored scales and zero points",
                             choices=tuple(SCALE_DTYPES)),
        "score": Param(str, "auto", "which body tokens survive dropping: keynorm (lowest key L2 norm), "
                       "attn_sum (most accumulated attention) or auto (attn_sum when the stats hold it)",
                       choices=SCORES),
        "min_body_bits": Param(int, 2, "lowest body precision before body tokens are dropped (2, 3, 4 or 8): "
                               "4 drops tokens rather than quantizing the body below 4 bits", choices=(2, 3, 4, 8)),
        "key_scale": Param(bool, True, "divide each key channel by its absmax over the layer before the "
                           "per-token quantization (outlier channels stop dominating every token's range)"),
        "strict": Param(bool, False, "raise CodecError when target_ratio is unreachable (default: best "
                        "effort, only the guard bands)"),
    }

    def plan(self, ctx: LayerContext) -> CachePlan:
        """The whole-cache plan for the cache ``ctx`` belongs to, over every layer's shape
        (``ctx.cache_shapes``: the wire header's; cached, a pure function of shapes and params)."""
        return plan_cache(self.name, tuple(sorted(self._params.items())), ctx.cache_shapes, ctx.dtype)

    def _unreachable(self, plan: CachePlan, ctx: LayerContext) -> str:
        p = self._params
        seqs = sorted({sh[1] for sh in ctx.cache_shapes})
        shape = (f"shape {list(ctx.shape)}" if len(seqs) == 1 else
                 f"shape [{ctx.shape[0]}, {'|'.join(map(str, seqs))}, {ctx.shape[2]}]")
        return (f"codec {self.name!r}: target_ratio {p['target_ratio']} is unreachable for {ctx.n_layers} "
                f"layers of {shape} {_DTYPE_NAMES[ctx.dtype]}: the guard bands alone "
                f"(guard_layers_first={p['guard_layers_first']}, guard_layers_last={p['guard_layers_last']}, "
                f"sinks={p['sinks']}, recent={p['recent']} at guard_bits={p['guard_bits']}) allow at most "
                f"{plan.ratio:.3f}; lower target_ratio, guard_bits, sinks/recent or the guard layers, or set "
                f"strict=False for that best effort")

    def _scores(self, kv: LayerKV, ctx: LayerContext, lo: int, hi: int) -> tuple[torch.Tensor, bool]:
        """Scores of the body tokens [lo, hi) (higher = kept first) and whether they are key norms."""
        mode = self._params["score"]
        if mode == "attn_sum" or (mode == "auto" and "attn_sum" in ctx.stats):
            return stat(ctx, "attn_sum", self.name).sum(dim=0)[lo:hi], False
        return -kv.k[:, lo:hi].float().norm(dim=-1).sum(dim=0), True  # Devoto et al.: low key norm = important

    def encode_layer(self, kv: LayerKV, ctx: LayerContext) -> bytes:
        check_layer(kv, ctx)
        if kv.positions is not None:
            raise CodecError(f"codec {self.name!r}: layer {ctx.layer} already holds a token subset; "
                             f"encode the full cache")
        h, s, d = kv.k.shape
        if tuple(ctx.shape) != (h, s, d):
            raise KVError(f"layer {ctx.layer}: tensors have shape {[h, s, d]}, the context says {list(ctx.shape)}")
        if s < 1:
            raise KVError(f"layer {ctx.layer}: empty cache (0 tokens)")
        plan = self.plan(ctx)
        if not plan.feasible and self._params["strict"]:
            raise CodecError(self._unreachable(plan, ctx))
        lp = plan.layers[ctx.layer]
        if lp.body_bits == RAW_BITS:  # a guard layer copied raw: no quantizer sees any value
            require_finite(kv, ctx, self.name)
        group = effective_group(d, self._params["group_size"])
        sdt = SCALE_DTYPES[self._params["scale_dtype"]]
        lo, hi = lp.sinks, s - lp.recent
        mask, idx = b"", None
        # NaN/Inf in a quantized value surface in its group's min/max (CodecError -> require_finite
        # below); values no quantizer sees -- raw guard tokens, dropped tokens -- are checked here: a
        # float32 sum is NaN/Inf whenever a term is (a finite overflow only costs the exact check)
        unseen = ([t[:, a:b] for t in (kv.k, kv.v) for a, b in ((0, lo), (hi, s))]
                  if lp.guard_bits == RAW_BITS and lp.body_bits != RAW_BITS else [])
        if lp.drop:
            scores, by_norm = self._scores(kv, ctx, lo, hi)
            if by_norm and not bool(torch.isfinite(scores).all()):  # key norms cover every body key
                require_finite(kv, ctx, self.name)
            keep = top_up(torch.zeros(lp.body, dtype=torch.bool), scores, lp.kept)
            idx = keep.nonzero().squeeze(1).add_(lo)
            dropped = (~keep).nonzero().squeeze(1).add_(lo)
            unseen += [kv.v.index_select(1, dropped)] + ([] if by_norm else [kv.k.index_select(1, dropped)])
            full = torch.ones(s, dtype=torch.bool)
            full[lo:hi] = keep
            mask = tensor_bytes(bitpack.pack(full, 1))
        if unseen and not bool(torch.isfinite(sum(t.sum(dtype=torch.float32) for t in unseen))):
            require_finite(kv, ctx, self.name)
        sections = [_PLAN.pack(*lp.header()), mask]
        channel = None
        if self._params["key_scale"] and lp.quantized:
            channel = self._key_channel_scales(kv, ctx, sdt)
        try:
            for bits, n, parts in ((lp.guard_bits, lp.sinks + lp.recent, ((0, lo), (hi, s))),
                                   (lp.body_bits, lp.kept, (idx if idx is not None else (lo, hi),))):
                buf = torch.empty((2, h, n, d), dtype=kv.k.dtype if bits == RAW_BITS else torch.float32)
                for j, t in enumerate((kv.k, kv.v)):  # gather (and convert) straight into the buffer
                    at = 0
                    for part in parts:
                        src = t.index_select(1, part) if isinstance(part, torch.Tensor) else t[:, part[0]:part[1]]
                        buf[j, :, at:at + src.shape[1]].copy_(src)
                        at += src.shape[1]
                if n == 0:
                    sections.append(b"")
                elif bits == RAW_BITS:
                    sections.append(tensor_bytes(buf))
                else:
                    if channel is not None:
                        buf[0].div_(channel.float())
                    sections.append(_quantize(buf, bits, group, sdt))
        except CodecError as exc:
            require_finite(kv, ctx, self.name)  # NaN/Inf propagate into min/max: a KVError, not a scale problem
            hint = "; use scale_dtype='float32'" if self._params["scale_dtype"] != "float32" else ""
            raise CodecError(f"codec {self.name!r}, layer {ctx.layer}: {exc}{hint}") from exc
        sections.append(tensor_bytes(channel) if channel is not None else b"")
        return pack_sections(sections)

    def _key_channel_scales(self, kv: LayerKV, ctx: LayerContext, sdt: torch.dtype) -> torch.Tensor:
        """Per (head, channel) absmax of the layer's keys in ``sdt`` ([h, 1, d]; 1 for an all-zero channel).

        Keys have a few channels far louder than the rest (KIVI, KVQuant); a per-token group spans
        all channels, so without this its range is set by the loud ones and the quiet ones round
        to nothing. Dividing by the channel scale first (SmoothQuant-style equalization, Xiao et
        al., ICML 2023, arXiv:2211.10438) cut 2-bit key error ~3x on a real SmolLM2 cache.
        """
        amax = kv.k.abs().amax(dim=1, keepdim=True).float()
        scale = torch.where(amax > 0, amax, torch.ones_like(amax)).to(sdt)
        if not bool(torch.isfinite(scale).all()):
            require_finite(kv, ctx, self.name)  # NaN/Inf in the keys: a KVError
            raise CodecError(f"codec {self.name!r}, layer {ctx.layer}: a key channel scale overflows {sdt}; "
                             f"use scale_dtype='float32' or key_scale=False")
        return scale.contiguous()

    def decode_layer(self, payload: bytes, ctx: LayerContext) -> LayerKV:
        h, s, d = ctx.shape
        try:
            plan = self.plan(ctx)
        except CodecError as exc:
            raise WireError(f"codec {self.name!r}: cannot rebuild the plan: {exc}") from exc
        if not plan.feasible and self._params["strict"]:
            raise WireError(f"codec {self.name!r}: strict plan is unreachable, so no encoder emits this payload")
        lp = plan.layers[ctx.layer]
        head, mask_b, guard_b, body_b, chan_b = unpack_sections(payload, N_SECTIONS, self.name)
        if len(head) != _PLAN.size:
            raise WireError(f"codec {self.name!r}: plan header has {len(head)} bytes, expected {_PLAN.size}")
        got = _PLAN.unpack(head)
        if got != lp.header():
            raise WireError(f"codec {self.name!r}: layer {ctx.layer} payload plan {got} differs from the plan "
                            f"{lp.header()} recomputed from the container header (version, guard_bits, "
                            f"body_bits, flags, sinks, recent, kept)")
        group = effective_group(d, self._params["group_size"])
        sdt = SCALE_DTYPES[self._params["scale_dtype"]]
        n_guard = lp.sinks + lp.recent
        positions = None
        if lp.drop:
            nbytes = bitpack.packed_size(s, 1)
            packed = tensor_from(mask_b, torch.uint8, (nbytes,))
            bits = bitpack.unpack(packed, 1, 8 * nbytes).bool()
            keep = bits[:s]
            if bits[s:].any():
                raise WireError(f"codec {self.name!r}: keep mask has bits set past the layer's {s} tokens")
            if not (keep[:lp.sinks].all() and keep[s - lp.recent:].all()):
                raise WireError(f"codec {self.name!r}: keep mask drops a guard token")
            if int(keep.sum()) != n_guard + lp.kept:
                raise WireError(f"codec {self.name!r}: keep mask keeps {int(keep.sum())} tokens, "
                                f"the plan {n_guard + lp.kept}")
            positions = keep.nonzero().squeeze(1).to(torch.int64)
        elif len(mask_b):
            raise WireError(f"codec {self.name!r}: keep mask present although the plan drops no token")
        guard = _decode_segment(guard_b, h, n_guard, d, lp.guard_bits, group, sdt, ctx.dtype, self.name, "guard")
        body = _decode_segment(body_b, h, lp.kept, d, lp.body_bits, group, sdt, ctx.dtype, self.name, "body")
        if self._params["key_scale"] and lp.quantized:
            channel = tensor_from(chan_b, sdt, (h, 1, d)).float()
            if not (bool(torch.isfinite(channel).all()) and bool((channel > 0).all())):
                raise WireError(f"codec {self.name!r}: non-finite or non-positive key channel scale")
            limit = torch.finfo(ctx.dtype).max
            for seg, bits in ((guard, lp.guard_bits), (body, lp.body_bits)):
                if bits != RAW_BITS and seg.shape[2]:
                    seg[0].mul_(channel).clamp_(-limit, limit)
        elif len(chan_b):
            raise WireError(f"codec {self.name!r}: key channel scales present although this layer has none")
        out = torch.empty((2, h, n_guard + lp.kept, d), dtype=ctx.dtype)
        out[:, :, :lp.sinks].copy_(guard[:, :, :lp.sinks])  # copy_ converts float32 to the cache dtype
        out[:, :, lp.sinks:lp.sinks + lp.kept].copy_(body)
        out[:, :, lp.sinks + lp.kept:].copy_(guard[:, :, lp.sinks:])
        return LayerKV(out[0], out[1], positions)
