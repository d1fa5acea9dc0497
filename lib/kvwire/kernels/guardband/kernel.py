"""Triton kernels for ``guardband`` (``codecs/guardband.py``): layer-wise mixed precision with guard
bands, written straight into the CPU codec's wire payload bytes.

The plan (``plan_cache``) is a pure function of the cache's shapes and the parameters, so the host
computes it once per shape (inside a ``kernels.base.cache_group``: over the whole cache's unequal
layer shapes, laid out for the group's layers) and turns it into byte offsets: every layer's section table, plan header,
keep mask, guard and body segments and key channel scales (``GuardBandLayout``). The device then runs

1. ``key_stats_kernel`` (one launch): every key channel's absmax over the layer (the equalization
   scales, ``atomic_max`` on the float bits, which are ordered for non-negative floats) and, when a
   layer drops tokens by key norm, each (head, token)'s L2 norm in float64;
2. where tokens are dropped: the selection in ``select.py`` (torch glue: a sort);
3. ``encode_kernel``, one launch per (bits, segment kind) -- at most four -- on the grid
   (group-row block, K/V * heads + head, segment): a program quantizes ``BLOCK_G`` consecutive
   groups of ``group_size`` elements of one (K/V, head) and writes their packed codes, scales and
   zero points at the segment's offsets; a segment reads its tokens through a split (sinks |
   recent) or through the kept-token table (dropped bodies).

``decode_kernel`` is the inverse on the same grid; it writes a dense ``[layers, 2, heads, seq,
head_dim]`` cache, or, when layers drop tokens, one ``[2, heads, kept, head_dim]`` block per layer
(returned as ``LayerKV`` with ``positions``, as the CPU codec does).

Bit-exactness with the CPU codec (``_quantize`` / ``_decode_segment``):
- keys are divided by their channel scale with a correctly rounded division (``div_rn``);
- zero point = group min rounded to float16, scale = ``div_rn(max - zero, qmax)`` rounded to
  float16, ``inv = div_rn(1, scale)`` (0 for a constant group);
- the code is ``floor(clamp((x - (zero - scale / 2)) * inv, 0, qmax))`` -- the CPU's rounding, ties
  up, not round-half-even -- with the truncating float->int cast (the values are >= 0);
- ``scale * -0.5`` is exact, so the CPU's fused ``add(zero, scale, alpha=-0.5)`` and this separate
  multiply-add round the same; kernels are compiled with ``enable_fp_fusion=False`` anyway;
- a group whose min (or max) is a ``-0.0`` / ``+0.0`` tie gets the sign torch's CPU ``amin`` / ``amax``
  returns (``cpu_zero_key``: its reduction order, measured on the host by ``cpu_zero_lanes``) -- the
  CPU codec does not normalize the zero point's sign, and a GPU min is free to pick either zero;
- decode ``code * scale`` is exact in float32 (<= 8 + 11 significant bits), then ``+ zero``, the
  CPU's clamps (before and after the key channel multiply) and a round-to-nearest-even cast.
The one place float reductions differ is the token selection of token-dropping plans (float32 key
norms / attention sums); ``select.py`` makes it exact too: near-ties at the cut are settled by
the CPU's own arithmetic on the few tokens involved, at the cost of one host sync per encode.

Not implemented (``CodecError``): ``guard_bits=16`` (raw copies), ``scale_dtype`` other than
float16, head_dim or group sizes that are not multiples of 8.
"""

from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np
import torch
import triton

from ...codecs import LayerKV
from ...codecs.base import LayerContext, section_header
from ...codecs.bitpack import packed_size
from ...codecs.guardband import _PLAN, RAW_BITS, CachePlan, effective_group, plan_cache
from ...errors import CodecError, KVError, WireError
from ..base import CacheGroup, GpuPayloads, KernelCodec, Stats, check_cache, current_group, register_kernel
from ..launch import interpreted
from ..bytepack import byte_lanes
from .jit import decode_kernel, encode_kernel, key_stats_kernel, layer_prologue_kernel
from .select import kept_positions, select_kept, uses_attn

# launch tuning (a knob to sweep on the GPU): group rows (of group_size elements) per program and warps.
# 1024 elements on 2 warps, like the per-token kernels' H200 optimum (bench/NOTES.md); compiled for sm_90
# that is 60-70 registers for encode and 32-52 for decode, with 16-byte loads of the cache.
TUNING = {"encode_rows": 32, "decode_rows": 32, "encode_warps": 2, "decode_warps": 2,
          "stats_tokens": 32, "stats_warps": 4}
INTERPRETED_ROWS = 512  # the interpreter's cost is per program: fewer, larger ones
JOB_FIELDS = ("layer", "tokens", "split", "shift", "base", "gather", "codes", "scales", "zeros",
              "x_base", "x_tokens", "pad")
NF = len(JOB_FIELDS)
BIG = 1 << 30  # a split no token index reaches (token indices are int32 in the kernels)
OUT_KINDS = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}
HEADER_BYTES = 4 + 8 * 5 + _PLAN.size  # every layer's section table (5 sections) + plan header


def _launch(warps: int) -> dict:
    # no multiply-add contraction on the GPU (see the module docstring); the interpreter ignores options
    return {} if interpreted() else {"enable_fp_fusion": False, "num_warps": warps}


# ---- the host's layout of a whole cache ----------------------------------------------------------

@dataclass
class Launch:
    """One ``encode_kernel`` / ``decode_kernel`` launch: segments of one bit width and similar size."""

    bits: int
    enc_jobs: np.ndarray  # int64 [segments, NF]
    dec_jobs: np.ndarray
    max_tokens: int


@dataclass
class GuardBandLayout:
    """Byte layout of every layer's payload for one cache shape, from the CPU codec's plan."""

    plan: CachePlan
    n_layers: int
    heads: int
    seq: int
    head_dim: int
    group: int
    sinks: int
    recent: int
    offsets: tuple[int, ...]
    header_at: np.ndarray  # int64: payload positions of every layer's section table + plan header
    header_bytes: np.ndarray  # uint8, same length ([layers, HEADER_BYTES] when viewed per layer)
    chan_at: np.ndarray | None  # int64 [layers * heads * head_dim * 2]: the key channel scales' bytes
    drop_layers: list[int]  # layers that drop body tokens (their keep mask and kept-token table)
    mask_at: np.ndarray | None  # int64 [len(drop_layers) * mask bytes]
    out_tokens: list[int]  # tokens each layer decodes to
    launches: list[Launch]
    section_lengths: list[list[int]]  # every layer's 5 section lengths (plan, mask, guard, body, channel)
    _device: dict = field(default_factory=dict)

    @property
    def body(self) -> int:
        return self.seq - self.sinks - self.recent

    @property
    def kept(self) -> list[int]:
        return [self.plan.layers[i].kept for i in self.drop_layers]

    @property
    def mask_bytes(self) -> int:
        return packed_size(self.seq, 1)

    @property
    def dense(self) -> bool:
        return not self.drop_layers

    def tables(self, device) -> dict[str, Any]:
        """The layout's index and job tensors on ``device``, copied there once."""
        key = str(device)
        if key not in self._device:
            def dev(a):
                return None if a is None else torch.from_numpy(np.ascontiguousarray(a)).to(device)
            self._device[key] = {
                "header_at": dev(self.header_at), "header_bytes": dev(self.header_bytes),
                "chan_at": dev(self.chan_at), "mask_at": dev(self.mask_at),
                "layer_at": dev(np.array(self.offsets[:-1], dtype=np.int64)),
                "chan_start": dev(None if self.chan_at is None else
                                  self.chan_at.reshape(self.n_layers, -1)[:, 0].copy()),
                "drop": dev(np.array(self.drop_layers, dtype=np.int64)),
                "kept": dev(np.array(self.kept, dtype=np.int64)),
                "enc": [dev(x.enc_jobs) for x in self.launches], "dec": [dev(x.dec_jobs) for x in self.launches]}
        return self._device[key]


def _segment_sizes(h: int, n: int, d: int, bits: int, group: int) -> tuple[int, int]:
    """(code bytes, scale bytes = zero point bytes) of a quantized segment of ``n`` tokens."""
    codes = 2 * h * n * d
    return (codes if bits == 8 else packed_size(codes, bits)), (codes // group) * 2


@lru_cache(maxsize=64)
def build_layout(params_items: tuple, n: int, shape: tuple[int, int, int], dtype: torch.dtype,
                 group: CacheGroup | None = None) -> GuardBandLayout:
    """The layout of a cache of ``n`` layers of ``shape`` -- or, with ``group``, of those ``n`` layers of
    a larger cache of unequal layers, from the WHOLE cache's plan (its ``plan`` then lists the group's
    layer plans, with the whole cache's budget, size and feasibility); ``CodecError`` where the kernels
    cannot do it."""
    p = dict(params_items)
    h, s, d = shape
    if group is None:
        plan = plan_cache("guardband", params_items, (tuple(shape),) * n, dtype)
    else:
        whole = plan_cache("guardband", params_items, group.shapes, dtype)
        plan = dataclasses.replace(whole, layers=tuple(whole.layers[i] for i in group.layers))
    group = effective_group(d, p["group_size"])
    if d % 8 or group % 8:
        raise CodecError(f"the guardband GPU kernel packs 8-code blocks per group: head_dim ({d}) and the "
                         f"group size ({group}) must be multiples of 8")
    elt = torch.empty((), dtype=dtype).element_size()
    offsets, header_at, header_bytes, chan_at, mask_at = [0], [], [], [], []
    drop_layers, out_tokens, jobs, section_lengths = [], [], {}, []
    dense = not any(lp.drop for lp in plan.layers)  # decodes to one [layers, 2, heads, seq, head_dim] tensor
    for i, lp in enumerate(plan.layers):
        ng = lp.sinks + lp.recent
        mask_len = packed_size(s, 1) if lp.drop else 0
        seg = {}
        for kind, bits, tokens in (("guard", lp.guard_bits, ng), ("body", lp.body_bits, lp.kept)):
            seg[kind] = (bits, tokens) + _segment_sizes(h, tokens, d, bits, group)
        chan_len = h * d * 2 if p["key_scale"] and lp.quantized else 0
        lengths = [_PLAN.size, mask_len] + [seg[x][2] + 2 * seg[x][3] for x in ("guard", "body")] + [chan_len]
        head = section_header(lengths) + _PLAN.pack(*lp.header())
        section_lengths.append(lengths)
        at = offsets[-1]
        size = len(head) + sum(lengths[1:])
        if size != lp.payload_bytes(shape, group, 2, elt, p["key_scale"]):  # the plan's own arithmetic
            raise CodecError(f"internal: guardband layer {i} layout of {size} bytes disagrees with its plan")
        header_at.append(np.arange(at, at + len(head)))
        header_bytes.append(np.frombuffer(head, dtype=np.uint8))
        pos = at + len(head)
        if lp.drop:
            mask_at.append(np.arange(pos, pos + mask_len))
            drop_layers.append(i)
        pos += mask_len
        n_out = s if not lp.drop else ng + lp.kept
        out_tokens.append(n_out)
        out_base = 2 * h * s * d * i if dense else sum(2 * h * t * d for t in out_tokens[:-1])
        for kind in ("guard", "body"):
            bits, tokens, codes, scales = seg[kind]
            if tokens:
                if kind == "guard":  # sinks, then the recent tokens
                    src = (lp.sinks, s - lp.recent - lp.sinks, 0, -1)
                    dst = src if not lp.drop else (lp.sinks, lp.kept, 0, -1)
                else:
                    src = (BIG, 0, lp.sinks, -1) if not lp.drop else (BIG, 0, 0, len(drop_layers) - 1)
                    dst = (BIG, 0, lp.sinks, -1)
                enc = (i, tokens) + src + (pos, pos + codes, pos + codes + scales, 2 * h * s * d * i, s, 0)
                dec = (i, tokens) + dst + (pos, pos + codes, pos + codes + scales, out_base, n_out, 0)
                jobs.setdefault((bits, kind if kind == "guard" or lp.guard_layer is False else "full"),
                                []).append((enc, dec))
            pos += codes + 2 * scales  # codes | scales | zero points
        if chan_len:
            chan_at.append(np.arange(pos, pos + chan_len))
        offsets.append(at + size)
    launches = [Launch(bits, np.array([e for e, _ in rows], dtype=np.int64),
                       np.array([dd for _, dd in rows], dtype=np.int64), max(e[1] for e, _ in rows))
                for (bits, _), rows in sorted(jobs.items())]
    has_chan = bool(chan_at)
    if has_chan and len(chan_at) != n:
        raise CodecError("internal: guardband key channel scales on only some layers")
    return GuardBandLayout(
        plan, n, h, s, d, group, plan.layers[0].sinks, plan.layers[0].recent, tuple(offsets),
        np.concatenate(header_at).astype(np.int64), np.concatenate(header_bytes),
        np.concatenate(chan_at).astype(np.int64) if has_chan else None, drop_layers,
        np.concatenate(mask_at).astype(np.int64) if mask_at else None, out_tokens, launches, section_lengths)


# ---- the codec -------------------------------------------------------------------------------------

@register_kernel
class GuardBandKernel(KernelCodec):
    """``guardband`` with float16 scales and quantized guard bands (guard_bits 2..8), any plan."""

    names = ("guardband",)
    exact_selection = True  # settle key-norm near-ties on the host (a sync); False: device scores only

    @classmethod
    def supports(cls, name: str, params) -> bool:
        return name == "guardband" and params["scale_dtype"] == "float16" and params["guard_bits"] != RAW_BITS

    @classmethod
    def limits(cls) -> str:
        return ("it implements scale_dtype='float16' and guard_bits 2..8 (not 16, the raw copy), with head_dim "
                "and group size multiples of 8; every plan regime (top, mix, drop) and score")

    def layout(self, n: int, shape: tuple[int, int, int], dtype: torch.dtype) -> GuardBandLayout:
        """The payload layout of ``n`` layers of ``shape``: the whole cache, or inside a ``cache_group``
        those layers of the group's cache (planned over every layer's shape, as the CPU codec)."""
        return build_layout(tuple(sorted(self.params.items())), n, tuple(shape), dtype,
                            current_group(n, tuple(shape)))

    def _ctx(self, n: int, shape, dtype) -> LayerContext:
        group = current_group(n, tuple(shape))
        return LayerContext(0, n, dtype, tuple(shape)) if group is None else group.context(0, dtype)

    # -- encode --
    def encode(self, kv: torch.Tensor, stats: Stats = None, *, check: bool = True) -> GpuPayloads:
        n, h, s, d = check_cache(kv, "guardband GPU kernel")
        if s < 1:
            raise KVError("guardband: empty cache (0 tokens)")
        lay = self.layout(n, (h, s, d), kv.dtype)
        if not lay.plan.feasible and self.params["strict"]:
            raise CodecError(self.codec.tensor._unreachable(lay.plan, self._ctx(n, (h, s, d), kv.dtype)))
        kv = kv.contiguous()
        if check:
            _require_finite(kv)
        tabs = lay.tables(kv.device)
        out = torch.empty(lay.offsets[-1], dtype=torch.uint8, device=kv.device)
        part, norms = self._key_stats(kv, lay, stats)
        channel = part is not None
        chan = torch.empty((n, 2, h, d), dtype=torch.float32, device=kv.device) if channel else None
        layer_prologue_kernel[(n, h)](
            out, tabs["header_bytes"], tabs["layer_at"], part if channel else out, chan if channel else out,
            tabs["chan_start"] if channel else tabs["layer_at"], part.shape[0] if channel else 0, n * h,
            HB=HEADER_BYTES, HBP=triton.next_power_of_2(HEADER_BYTES), H=h, D=d, DP=triton.next_power_of_2(d),
            CHANNEL=channel, **_launch(1))
        if check and channel and not bool(torch.isfinite(chan).all()):
            raise CodecError("codec 'guardband': a key channel scale overflows float16; use "
                             "scale_dtype='float32' (CPU codec) or key_scale=False")
        idx = torch.empty(1, dtype=torch.int32, device=kv.device)  # (read only by dropped-body segments)
        if lay.drop_layers:
            idx, mask = select_kept(self, kv, lay, tabs, norms, stats, check=check)
            out[tabs["mask_at"]] = mask.reshape(-1)
        flag = torch.zeros(1, dtype=torch.int32, device=kv.device) if check else idx  # (unused without check)
        rows = INTERPRETED_ROWS if interpreted() else TUNING["encode_rows"]
        for launch, jobs in zip(lay.launches, tabs["enc"]):
            grid = (triton.cdiv(launch.max_tokens * (d // lay.group), rows), 2 * h, jobs.shape[0])
            encode_kernel[grid](kv, out, chan if chan is not None else out, idx, jobs, flag, idx.shape[-1],
                                H=h, D=d, G=lay.group, BITS=launch.bits, NB=byte_lanes(launch.bits), BLOCK_G=rows,
                                KEY_SCALE=chan is not None, CHECK=check, ZLANES=cpu_zero_lanes(),
                                **_launch(TUNING["encode_warps"]))
        if check and int(flag.item()):
            raise CodecError(f"codec 'guardband': {int(flag.item())} quantization scale(s) or zero point(s) "
                             f"overflow float16; use scale_dtype='float32' (CPU codec)")
        return GpuPayloads(out, lay.offsets)

    def _key_stats(self, kv: torch.Tensor, lay: GuardBandLayout, stats: Stats):
        """(per-chunk key channel absmax float32 [chunks, layers * heads, head_dim] or None, key norms
        float64 [layers, heads, seq] or None): one ``key_stats_kernel`` launch over every layer's keys."""
        n, _, h, s, d = kv.shape
        channel = bool(self.params["key_scale"])
        norms_needed = bool(lay.drop_layers) and any(not uses_attn(self.params["score"], stats, i)
                                                     for i in lay.drop_layers)
        if not (channel or norms_needed):
            return None, None
        block = 64 if interpreted() else triton.next_power_of_2(max(1, TUNING["stats_tokens"]))
        # tokens per program: about 2048 programs in all (at most 1024 tokens each; the interpreter: one)
        per_program = s if interpreted() else max(block, min(s, 1024, triton.next_power_of_2(
            max(1, (n * h * s) // 2048))))
        per_program = triton.cdiv(per_program, block) * block
        chunks = triton.cdiv(s, per_program)
        part = torch.empty((chunks, n * h, d), dtype=torch.float32, device=kv.device)
        norms = torch.empty((n, h, s), dtype=torch.float64, device=kv.device) if norms_needed else part
        key_stats_kernel[(chunks, n * h)](kv, part, norms, s, per_program, H=h, D=d,
                                          DP=triton.next_power_of_2(d), BLOCK_S=block, CHANNEL=channel,
                                          NORMS=norms_needed, **_launch(TUNING["stats_warps"]))
        return (part if channel else None), (norms if norms_needed else None)

    # -- decode --
    def decode(self, payloads: GpuPayloads, shape, dtype, *, check: bool = True):
        n, _, h, s, d = shape
        if dtype not in OUT_KINDS:
            raise KVError(f"the guardband GPU decode writes float16, bfloat16 or float32, not {dtype}")
        try:
            lay = self.layout(n, (h, s, d), dtype)
        except CodecError as exc:
            raise WireError(f"codec 'guardband': cannot rebuild the plan: {exc}") from exc
        if not lay.plan.feasible and self.params["strict"]:
            raise WireError("codec 'guardband': strict plan is unreachable, so no encoder emits this payload")
        if tuple(payloads.offsets) != lay.offsets:
            raise WireError(f"codec 'guardband': payload sizes {_sizes(payloads.offsets)[:4]}... differ from the "
                            f"plan's {_sizes(lay.offsets)[:4]}... for shape {list(shape)}")
        data = payloads.data
        tabs = lay.tables(data.device)
        if check and not bool((data[tabs["header_at"]] == tabs["header_bytes"]).all()):
            raise WireError("codec 'guardband': a layer's section table or plan header (version, guard_bits, "
                            "body_bits, flags, sinks, recent, kept) differs from the plan recomputed for shape "
                            f"{list(shape)}")
        chan = None
        if tabs["chan_at"] is not None:
            chan = data[tabs["chan_at"]].view(torch.float16).float().view(n, h, d)
            if check and not (bool(torch.isfinite(chan).all()) and bool((chan > 0).all())):
                raise WireError("codec 'guardband': non-finite or non-positive key channel scale")
            chan = torch.stack([chan, torch.ones_like(chan)], dim=1)  # [layers, 2, heads, head_dim]: V's ones
        total = sum(2 * h * t * d for t in lay.out_tokens)
        y = torch.empty(shape if lay.dense else (total,), dtype=dtype, device=data.device)
        target = y.view(torch.int16) if dtype == torch.bfloat16 else y
        limit = torch.finfo(dtype).max
        flag = torch.zeros(1, dtype=torch.int32, device=data.device) if check else target  # (unused without)
        rows = INTERPRETED_ROWS if interpreted() else TUNING["decode_rows"]
        for launch, jobs in zip(lay.launches, tabs["dec"]):
            grid = (triton.cdiv(launch.max_tokens * (d // lay.group), rows), 2 * h, jobs.shape[0])
            decode_kernel[grid](data, target, chan if chan is not None else data, jobs, flag, limit,
                                H=h, D=d, G=lay.group, BITS=launch.bits, NB=byte_lanes(launch.bits), BLOCK_G=rows,
                                KEY_SCALE=chan is not None, CLAMP_FIRST=limit < (2**launch.bits) * 65504.0,
                                OUT_KIND=OUT_KINDS[dtype], CHECK=check, **_launch(TUNING["decode_warps"]))
        if check and int(flag.item()):
            raise WireError("codec 'guardband': non-finite scale or zero point in a segment")
        if lay.dense:
            return y
        positions = kept_positions(lay, data, tabs, check=check)
        layers, at = [], 0
        for i, t in enumerate(lay.out_tokens):
            block = y[at:at + 2 * h * t * d].view(2, h, t, d)
            at += 2 * h * t * d
            layers.append(LayerKV(block[0], block[1], positions.get(i)))
        return layers

    # -- the eager baseline --
    def encode_eager(self, kv: torch.Tensor, stats: Stats = None) -> GpuPayloads:
        from .eager import encode_eager

        return encode_eager(self, kv, stats)

    def decode_eager(self, payloads: GpuPayloads, shape, dtype):
        from .eager import decode_eager

        return decode_eager(self, payloads, tuple(shape), dtype)


@lru_cache(maxsize=1)
def cpu_zero_lanes() -> int:
    """``V`` of ``cpu_zero_key`` for this host's torch (8 for its AVX2 and AVX512 builds alike), found by
    checking the model against ``torch.amin`` / ``amax`` on rows of mixed-sign zeros; 8 if none fits."""
    gen = np.random.default_rng(0)
    rows = []
    for g in (8, 24, 32, 64, 128):
        for _ in range(64):
            r = gen.uniform(0.1, 5.0, g) * gen.choice([-1.0, 1.0])
            at = gen.choice(g, size=min(g, int(gen.integers(2, 9))), replace=False)
            r[at] = gen.choice([0.0, -0.0], size=len(at))
            rows.append(r.astype(np.float32))

    def key(e, g, v):
        c = g // (4 * v)
        main = c * 4 * v
        if e < main:
            return (e % v) * 4 * c + (3 - (e // v) % 4) * c + (c - 1 - e // (4 * v))
        return 4 * v * c + e - main

    for v in (8, 16, 4, 32):
        fits = True
        for r in rows:
            t = torch.from_numpy(r)[None]
            zeros = [e for e in range(len(r)) if r[e] == 0]
            neg = bool(np.signbit(r[min(zeros, key=lambda e: key(e, len(r), v))]))
            if (r.min() == 0 and bool(torch.signbit(t.amin(1))[0]) != neg) or \
                    (r.max() == 0 and bool(torch.signbit(t.amax(1))[0]) != neg):
                fits = False
                break
        if fits:
            return v
    return 8


def _require_finite(kv: torch.Tensor) -> None:
    """``KVError`` for NaN/Inf anywhere in the cache (the CPU codec refuses them in every layer)."""
    if kv.numel() and not bool(torch.isfinite(torch.stack([kv.amax(), kv.amin()])).all()):
        bad = int((~torch.isfinite(kv)).sum())
        layer = int((~torch.isfinite(kv)).flatten(1).any(1).nonzero()[0, 0])
        raise KVError(f"codec 'guardband': {bad} NaN/Inf value(s) in the cache (first in layer {layer})")


def _sizes(offsets) -> list[int]:
    return [b - a for a, b in itertools.pairwise(offsets)]


def plan_summary(lay: GuardBandLayout) -> str:
    """One line: the plan's regime, bits and kept tokens (for logs and bench labels)."""
    plan = lay.plan
    return (f"{plan.regime}: body bits {sorted(set(plan.bits))}, kept {min(plan.kept)}..{max(plan.kept)} of "
            f"{lay.body} body tokens, ratio {plan.ratio:.2f}, launches {len(lay.launches)}")

