"""Triton kernels for ``cachegen`` (``codecs/cachegen.py``): chunk anchors quantized per (head,
channel), closed-loop deltas against the DECODED anchor, layer-dependent delta bits -- the
quantization part on the device; the entropy stage stays the CPU codec's own.

Two parts, exposed separately so they can be timed and labelled apart:

- ``encode_symbols(kv)`` (device only, no host sync) -> ``CacheGenSymbols``: the quantized symbols
  exactly as the CPU codec hands them to its entropy stage (anchor codes [layers, 2, heads,
  chunks, head_dim], delta codes channel-major [layers, 2, heads, head_dim, deltas], float16
  anchor scales / zero points / delta scales). Three kernels:
  1. ``anchor_range_kernel`` (one launch): every (head, channel)'s min/max over the anchors -> scale,
     zero point;
  2. ``delta_range_kernel``: quantizes the anchors (codes out), decodes them as the decoder will,
     and reduces every channel's delta absmax (``atomic_max`` on the float bits);
  3. ``delta_codes_kernel``: the delta codes, against the decoded anchor.
  Deltas need their channel's absmax over the whole sequence before any code exists, so the keys
  and values are read twice (plus the anchors, 1/16 of the cache, once more). 2 and 3 take every
  layer tier in one launch each (the bit width is a run-time value); optionally
  (``TUNING["l2_group_bytes"]``, off by default) they run per group of tensor-heads small enough for
  the L2, so that the second read comes from it, at the cost of more launches.
- ``host_encode(symbols)``: the CPU codec's ``encode_stream`` (rANS through constriction, or its
  bit-packed fallback) on the host, framed by ``pack_sections`` -- the identical payload bytes.
  ``host_stage`` names it.

With ``entropy="none"`` the whole payload is built on the device: the same kernels write the
bit-packed codes (``bitpack`` layout), the scales and the section tables in place. Decode is the
mirror image: ``host_decode`` (the CPU rANS decoder, or nothing for ``none``) and
``decode_symbols`` / the in-place decode of packed payloads.

With ``entropy="rans_lanes"`` there is no host stage either: ``lanes.py`` counts the tables, runs the
interleaved rANS kernels of ``rans_jit.py`` (one program per stream, its 32 lanes as a vector) and
puts the payload together on the device; decode reads the lane headers to the host (a small copy,
checked there) and decodes the lanes on the device. Its eager baseline is the eager symbols plus the
CPU codec's numpy coder (``host_encode`` / ``host_decode``): there is no op-by-op torch rANS.

Bit-exactness with ``codecs/quant.py``: correctly rounded divisions (``div_rn``), float16 rounding
of min, max-range / qmax and absmax / qmax exactly as torch (``+ 0.0`` turning -0.0 into +0.0),
round-half-even by the 1.5 * 2**23 trick, decoded anchors ``code * scale + zero`` (the product is
exact), no multiply-add contraction on the GPU (``enable_fp_fusion=False``).

Not implemented (``CodecError``): ``scale_dtype`` other than float16.
"""

from __future__ import annotations

from functools import lru_cache

import torch
import triton

from ...codecs.cachegen import _MODE_PACKED, layer_tier
from ...errors import CodecError, KVError, WireError
from ..base import GpuPayloads, KernelCodec, Stats, check_cache, current_group, register_kernel
from ..launch import interpreted
from .jit import anchor_range_kernel, decode_kernel, delta_codes_kernel, delta_range_kernel, pack_stream_kernel
from .layout import CacheGenSymbols, PackedLayout, packed_layout

# launch tuning (a knob to sweep on the GPU): elements per program tile and warps (8 elements per thread
# keeps every kernel under ~70 registers, sm_90 compile), chunks per program of ``delta_range_kernel``,
# anchor rows per iteration of ``anchor_range_kernel``
TUNING = {"tile": 1024, "warps": 4, "range_chunks": 64, "anchor_tile": 4096, "decode_tile": 1024, "decode_warps": 4,
          # the two delta passes per group of tensor-heads of at most this many bytes, so the second pass
          # reads the group from the L2 (0: off); only while that makes at most l2_max_groups launch pairs
          "l2_group_bytes": 0, "l2_max_groups": 24}
OUT_KINDS = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}
N_SECTIONS = 10  # per tensor (K, V): anchor scale, anchor zero, anchor stream, delta scale, delta stream


def _launch(warps: int) -> dict:
    return {} if interpreted() else {"enable_fp_fusion": False, "num_warps": warps}


@register_kernel
class CacheGenKernel(KernelCodec):
    """``cachegen`` with float16 scales: any chunk size, anchor and delta bits, ``entropy`` rans, rans_lanes
    or none."""

    names = ("cachegen",)
    host_stage: str | None = "rANS entropy coding on the CPU (constriction)"  # None for entropy="none"

    def __init__(self, name: str, params=None) -> None:
        super().__init__(name, params)
        if self.params["entropy"] in ("none", "rans_lanes"):
            self.host_stage = None  # the whole payload is built on the device

    @classmethod
    def supports(cls, name: str, params) -> bool:
        return name == "cachegen" and params["scale_dtype"] == "float16"

    @classmethod
    def limits(cls) -> str:
        return "it implements scale_dtype='float16' (any chunk size, bits and entropy stage)"

    def _dims(self, shape) -> tuple[int, int, int, int, int, int, int]:
        n, _, h, s, d = shape
        c = self.params["chunk_size"]
        nc = -(-s // c)
        return n, h, s, d, c, nc, s - nc

    def _bits(self, tier: int) -> int:
        return self.params[("bits_early", "bits_mid", "bits_late")[tier]]

    def _tiers(self, shape) -> tuple[int, ...]:
        """Each stacked layer's depth tier (``layer_tier``): of its index in the whole cache -- inside a
        ``kernels.base.cache_group``, the group's layers' indices in the group's cache."""
        n, _, h, s, d = shape
        group = current_group(n, (h, s, d))
        if group is None:
            return tuple(layer_tier(i, n) for i in range(n))
        return tuple(layer_tier(i, group.n_layers) for i in group.layers)

    @staticmethod
    def _tier_cuts(tiers: tuple[int, ...]) -> tuple[int, int]:
        """(first stacked layer of tier >= 1, of tier 2): the kernels' ``C1``, ``C2`` (tiers never decrease)."""
        n = len(tiers)
        return next((i for i, t in enumerate(tiers) if t >= 1), n), next((i for i, t in enumerate(tiers) if t >= 2), n)

    def _layout(self, shape) -> PackedLayout:
        return packed_layout(tuple(sorted(self.params.items())), tuple(shape), self._tiers(tuple(shape)))

    # -- encode: the device part --
    def encode_symbols(self, kv: torch.Tensor, *, check: bool = False) -> CacheGenSymbols:
        """The quantized symbols of ``kv`` on its device: a memset and three launches, no host sync
        (``check`` adds the CPU codec's NaN/Inf refusal and the scales' overflow check, which sync)."""
        return self._encode(kv, check=check, payload=None)

    def _encode(self, kv: torch.Tensor, *, check: bool, payload) -> CacheGenSymbols:
        check_cache(kv, "cachegen GPU kernel")
        n, h, s, d, c, nc, nd = self._dims(tuple(kv.shape))
        if s < 1:
            raise KVError("cachegen: empty cache (0 tokens)")
        kv = kv.contiguous()
        if check:
            _require_finite(kv)
        dev = kv.device
        th = n * 2 * h  # tensor-heads
        dp = triton.next_power_of_2(d)
        a_scale = torch.empty((n, 2, h, d), dtype=torch.float16, device=dev)
        a_zero = torch.empty_like(a_scale)
        d_scale = torch.empty_like(a_scale)
        a_codes = torch.empty((n, 2, h, nc, d), dtype=torch.uint8, device=dev)
        d_codes = torch.empty((n, 2, h, d, nd), dtype=torch.uint8, device=dev)
        amax = torch.zeros((n, 2, h, d), dtype=torch.float32, device=dev)
        out, sec = (payload if payload is not None else (a_codes, None))
        sec_t = sec if sec is not None else torch.empty(1, dtype=torch.int64, device=dev)  # (unused then)
        qa = (1 << self.params["anchor_bits"]) - 1
        block_c = 64 if interpreted() else max(1, TUNING["anchor_tile"] // dp)
        anchor_range_kernel[(th,)](kv, a_scale, a_zero, out, sec_t, s, nc, H=h, C=c, D=d, DP=dp,
                                   BLOCK_C=block_c, QA=qa, PAYLOAD=payload is not None, **_launch(TUNING["warps"]))
        cp = triton.next_power_of_2(c)
        anchors_in_place = payload is not None and self.params["anchor_bits"] == 8
        tpb = 64 if interpreted() else max(1, TUNING["tile"] // (8 * dp))
        bits = self._tier_bits()
        tiers = self._tiers(tuple(kv.shape))
        cuts = self._tier_cuts(tiers)
        direct = payload is not None and nd % 8 == 0  # every (head, channel) row starts an 8-code block
        for t0, t1 in self._groups(th, s * d * kv.element_size()):
            # the deltas' range, then their codes, group by group of tensor-heads: a group small enough
            # for the L2 is read from DRAM once (``l2_group_bytes``; off by default: one launch pair).
            # Chunks per program: at most range_chunks, fewer where a group is small (>= ~1024 programs).
            cpp = nc if interpreted() else max(1, min(TUNING["range_chunks"], triton.next_power_of_2(
                max(1, nc * (t1 - t0) // 1024))))
            block_r = min(16, triton.next_power_of_2(nc)) if interpreted() else \
                min(max(1, TUNING["tile"] // (cp * dp)), triton.next_power_of_2(cpp))
            delta_range_kernel[(triton.cdiv(nc, cpp), t1 - t0)](
                kv, a_scale, a_zero, a_codes, amax.view(torch.int32), out, sec_t, s, nc, cpp, t0, H=h, C=c, CP=cp,
                D=d, DP=dp, BLOCK_C=block_r, QA=qa, PAYLOAD=anchors_in_place, **_launch(TUNING["warps"]))
            if nd:
                delta_codes_kernel[(triton.cdiv(nd, 8 * tpb), t1 - t0)](
                    kv, a_scale, a_zero, amax.view(torch.int32), d_codes, d_scale, out, sec_t, s, nd, t0, *cuts, *bits,
                    H=h, C=c, D=d, DP=dp, TPB=tpb, QA=qa, PAYLOAD=direct, **_launch(TUNING["warps"]))
        if not nd:
            d_scale.zero_()
        elif payload is not None and not direct:  # rows straddle 8-code blocks: pack the symbols after
            self._pack_streams(d_codes, out, sec, h * d * nd, 4, [self._bits(t) for t in tiers])
            per = h * d * 2
            starts = sec[:, [3, 8]].reshape(-1)
            out[(starts[:, None] + torch.arange(per, device=dev)[None, :]).reshape(-1)] = \
                d_scale.view(torch.uint8).reshape(-1)
        if payload is not None and not anchors_in_place:
            self._pack_streams(a_codes, out, sec, h * nc * d, 2, [self.params["anchor_bits"]] * n)
        sym = CacheGenSymbols(tuple(kv.shape), a_codes, a_scale, a_zero, d_codes, d_scale)
        if check and not all(bool(torch.isfinite(x).all()) for x in (a_scale, a_zero, d_scale)):
            raise CodecError("codec 'cachegen': a quantization scale or zero point overflows float16; use "
                             "scale_dtype=float32 (CPU codec)")
        return sym

    def _tier_bits(self) -> tuple[int, int, int]:
        return self.params["bits_early"], self.params["bits_mid"], self.params["bits_late"]

    def _groups(self, th: int, head_bytes: int) -> list[tuple[int, int]]:
        """[first, end) tensor-heads of the delta launch pairs: groups of at most ``l2_group_bytes`` of
        cache while that takes at most ``l2_max_groups`` pairs, else (and by default) one pair."""
        per = max(1, TUNING["l2_group_bytes"] // max(1, head_bytes)) if TUNING["l2_group_bytes"] else th
        if interpreted() or -(-th // per) > TUNING["l2_max_groups"]:
            per = th
        return [(x, min(th, x + per)) for x in range(0, th, per)]

    def _pack_streams(self, codes: torch.Tensor, out: torch.Tensor, sec: torch.Tensor, per_stream: int,
                      section: int, bits: list[int]) -> None:
        """Bit-pack the uint8 codes of every layer (one stream per layer and K/V, ``bits`` per layer) into
        the payload's section ``section`` (K) / ``section + 5`` (V), after its mode byte."""
        n_streams = 2 * len(bits)
        src = torch.arange(n_streams, device=out.device) * per_stream
        dst = sec[:, [section, section + 5]].reshape(-1) + 1
        width = torch.as_tensor([b for b in bits for _ in range(2)], device=out.device)
        table = torch.stack([src, dst, torch.full_like(src, per_stream), width], dim=1).contiguous()
        blocks = 256 if not interpreted() else 4096
        pack_stream_kernel[(triton.cdiv(triton.cdiv(per_stream, 8), blocks), n_streams)](
            codes, out, table, BLOCKS=blocks, **_launch(4))

    # -- encode: the host part --
    def host_encode(self, sym: CacheGenSymbols) -> list[bytes]:
        """The CPU codec's entropy stage on the symbols: every layer's payload bytes (one device->host copy)."""
        from ...codecs.base import pack_sections, tensor_bytes
        from ...codecs.cachegen import encode_stream

        n, _, h, _, d = sym.shape
        p = self.params
        nd = self._dims(sym.shape)[-1]
        a_codes, a_scale, a_zero = sym.anchor_codes.cpu(), sym.anchor_scale.cpu(), sym.anchor_zero.cpu()
        d_codes, d_scale = sym.delta_codes.cpu(), sym.delta_scale.cpu()
        layers = []
        tiers = self._tiers(sym.shape)
        for i in range(n):
            bits = self._bits(tiers[i])
            sections = []
            for j in range(2):
                sections += [tensor_bytes(a_scale[i, j]), tensor_bytes(a_zero[i, j]),
                             encode_stream(a_codes[i, j].reshape(1, -1), p["anchor_bits"], 1, p["entropy"])]
                if nd == 0:
                    sections += [b"", bytes([_MODE_PACKED])]
                else:
                    sections += [tensor_bytes(d_scale[i, j]),
                                 encode_stream(d_codes[i, j].reshape(h * d, nd), bits, p["channels_per_table"],
                                               p["entropy"])]
            layers.append(pack_sections(sections))
        return layers

    def encode(self, kv: torch.Tensor, stats: Stats = None, *, check: bool = True) -> GpuPayloads:
        if self.params["entropy"] == "none":
            return self.encode_packed(kv, check=check)
        if self.params["entropy"] == "rans_lanes":
            from .lanes import encode_payloads

            return encode_payloads(self, self.encode_symbols(kv, check=check))
        return GpuPayloads.from_bytes(self.host_encode(self.encode_symbols(kv, check=check)), kv.device)

    def encode_packed(self, kv: torch.Tensor, *, check: bool = True) -> GpuPayloads:
        """The ``entropy="none"`` payloads, built entirely on the device (the streams' bit-packed form,
        which is also what ``rans`` falls back to for streams it cannot shrink)."""
        lay = self._layout(tuple(kv.shape))
        out = torch.empty(lay.offsets[-1], dtype=torch.uint8, device=kv.device)
        tabs = _device_tables(lay, str(kv.device))
        out[tabs["header_at"]] = tabs["header_bytes"]
        self._encode(kv, check=check, payload=(out, tabs["sections"]))
        return GpuPayloads(out, lay.offsets)

    # -- decode --
    def decode_symbols(self, sym: CacheGenSymbols, dtype: torch.dtype, *, check: bool = False) -> torch.Tensor:
        """The decoded cache [layers, 2, heads, seq, head_dim] from symbols on the device (one launch;
        ``check`` adds the CPU codec's code-range and NaN/Inf checks, one sync)."""
        return self._decode(sym.shape, dtype, (sym.anchor_codes, sym.delta_codes), sym.anchor_scale,
                            sym.anchor_zero, sym.delta_scale, None, check)

    def _decode(self, shape, dtype, sources, a_scale, a_zero, d_scale, sec, check: bool) -> torch.Tensor:
        if dtype not in OUT_KINDS:
            raise KVError(f"the cachegen GPU decode writes float16, bfloat16 or float32, not {dtype}")
        n, h, s, d, c, nc, nd = self._dims(shape)
        dev = a_scale.device
        y = torch.empty(shape, dtype=dtype, device=dev)
        target = y.view(torch.int16) if dtype == torch.bfloat16 else y
        flag = torch.zeros(1, dtype=torch.int32, device=dev) if check else target  # (unused without check)
        dp = triton.next_power_of_2(d)
        block_t = 128 if interpreted() else max(1, TUNING["decode_tile"] // dp)
        sec_t = sec if sec is not None else a_scale  # (unused for symbols)
        decode_kernel[(triton.cdiv(s, block_t), n * 2 * h)](
            sources[0], sources[1], a_scale, a_zero, d_scale, target, sec_t, flag, s, nc, nd, 0,
            *self._tier_cuts(self._tiers(tuple(shape))), *self._tier_bits(), torch.finfo(dtype).max, H=h, C=c, D=d, DP=dp, BLOCK_T=block_t,
            AB=self.params["anchor_bits"], PACKED=sec is not None, OUT_KIND=OUT_KINDS[dtype], CHECK=check,
            **_launch(TUNING["decode_warps"]))
        if check and int(flag.item()):
            raise WireError("codec 'cachegen': delta code out of range, or the payload decodes to NaN/Inf "
                            "(corrupted scales)")
        return y

    def host_decode(self, payloads: GpuPayloads, shape, device=None) -> CacheGenSymbols:
        """The CPU codec's stream decoding (rANS or bit-packed) of every layer: the symbols, on ``device``."""
        from ...codecs.base import tensor_from, unpack_sections
        from ...codecs.cachegen import decode_stream

        n, h, _, d, _, nc, nd = self._dims(tuple(shape))
        p = self.params
        a_codes = torch.empty((n, 2, h, nc, d), dtype=torch.uint8)
        d_codes = torch.empty((n, 2, h, d, nd), dtype=torch.uint8)
        scales = torch.empty((3, n, 2, h, d), dtype=torch.float16)
        tiers = self._tiers(tuple(shape))
        for i, data in enumerate(payloads.to_bytes()):
            bits = self._bits(tiers[i])
            secs = unpack_sections(data, N_SECTIONS, self.name)
            for j in range(2):
                a_scale, a_zero, a_stream, d_scale, d_stream = secs[5 * j:5 * j + 5]
                scales[0, i, j] = tensor_from(a_scale, torch.float16, (h, d))
                scales[1, i, j] = tensor_from(a_zero, torch.float16, (h, d))
                a_codes[i, j] = decode_stream(a_stream, 1, h * nc * d, p["anchor_bits"], 1, self.name).view(h, nc, d)
                if nd == 0:
                    if len(d_scale) or bytes(d_stream) != bytes([_MODE_PACKED]):
                        raise WireError(f"codec {self.name!r}: delta sections present for a layer without deltas")
                    scales[2, i, j] = 0
                    continue
                scales[2, i, j] = tensor_from(d_scale, torch.float16, (h, d))
                codes = decode_stream(d_stream, h * d, nd, bits, p["channels_per_table"], self.name)
                if int(codes.max()) > 2 * (2 ** (bits - 1) - 1):
                    raise WireError(f"codec {self.name!r}: delta code out of range")
                d_codes[i, j] = codes.view(h, d, nd)
        device = device if device is not None else payloads.data.device
        scales = scales.to(device)
        return CacheGenSymbols(tuple(shape), a_codes.to(device), scales[0], scales[1], d_codes.to(device), scales[2])

    def decode(self, payloads: GpuPayloads, shape, dtype, *, check: bool = True) -> torch.Tensor:
        shape = tuple(shape)
        lay = self._layout(shape)
        if tuple(payloads.offsets) == lay.offsets and self._packed_headers(payloads, lay, check):
            return self.decode_packed(payloads, shape, dtype, check=check)
        if self.params["entropy"] == "rans_lanes":
            from .lanes import decode_payloads

            out = decode_payloads(self, payloads, shape, dtype, check=check)
            if out is not None:  # None: a constriction-coded stream, for the host decoder
                return out
        return self.decode_symbols(self.host_decode(payloads, shape), dtype, check=check)

    def _packed_headers(self, payloads: GpuPayloads, lay: PackedLayout, check: bool) -> bool:
        """Whether the payloads are all bit-packed streams (``none``'s layout); only checked with ``check``
        (else trusted for ``entropy="none"``, and left to the host decoder for ``rans``)."""
        if not check:
            return self.params["entropy"] == "none"
        tabs = _device_tables(lay, str(payloads.data.device))
        return bool((payloads.data[tabs["header_at"]] == tabs["header_bytes"]).all())

    def decode_packed(self, payloads: GpuPayloads, shape, dtype, *, check: bool = True) -> torch.Tensor:
        """Decode bit-packed payloads (``entropy="none"``) on the device, reading the streams in place."""
        lay = self._layout(tuple(shape))
        data = payloads.data
        sec = _device_tables(lay, str(data.device))["sections"]
        return self._decode(tuple(shape), dtype, (data, data), data, data, data, sec, check)

    # -- the eager baseline --
    def encode_symbols_eager(self, kv: torch.Tensor) -> CacheGenSymbols:
        from .eager import encode_symbols_eager

        return encode_symbols_eager(self, kv)

    def encode_eager(self, kv: torch.Tensor, stats: Stats = None) -> GpuPayloads:
        from .eager import encode_packed_eager

        if self.params["entropy"] == "none":
            return encode_packed_eager(self, kv)
        return GpuPayloads.from_bytes(self.host_encode(self.encode_symbols_eager(kv)), kv.device)

    def decode_symbols_eager(self, sym: CacheGenSymbols, dtype: torch.dtype) -> torch.Tensor:
        from .eager import decode_symbols_eager

        return decode_symbols_eager(self, sym, dtype)

    def decode_eager(self, payloads: GpuPayloads, shape, dtype) -> torch.Tensor:
        from .eager import decode_packed_eager

        if self.params["entropy"] == "none":
            return decode_packed_eager(self, payloads, tuple(shape), dtype)
        return self.decode_symbols_eager(self.host_decode(payloads, shape), dtype)


@lru_cache(maxsize=64)
def _device_tables(lay: PackedLayout, device: str) -> dict:
    return {"sections": torch.from_numpy(lay.sections).to(device),
            "header_at": torch.from_numpy(lay.header_at).to(device),
            "header_bytes": torch.from_numpy(lay.header_bytes).to(device)}


def _require_finite(kv: torch.Tensor) -> None:
    if kv.numel() and not bool(torch.isfinite(torch.stack([kv.amax(), kv.amin()])).all()):
        bad = int((~torch.isfinite(kv)).sum())
        layer = int((~torch.isfinite(kv)).flatten(1).any(1).nonzero()[0, 0])
        raise KVError(f"codec 'cachegen': {bad} NaN/Inf value(s) in the cache (first in layer {layer})")
