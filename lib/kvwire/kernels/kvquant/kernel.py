"""KVQuant on the GPU: ``kvquant2`` / ``kvquant3`` / ``kvquant4`` (``codecs/kvquant.py``) with NF
levels, dense-and-sparse outliers, keys per channel and values per token, ``pre_rope`` on or off,
every scale dtype and outlier fraction. The Triton kernels are in ``jit.py`` (the order
of launches and why each result is the CPU's is documented there) and ``select.py`` (the
exact top-k), the eager baseline in ``eager.py``.

What is exact: the z-scores (torch's CPU sum order reproduced), hence the outlier set (ties
too, below); offsets and ranges (with the sign of zero torch's ``amin``/``amax`` return for all-zero
vectors); codes, packing, outlier values and indices; the decode (outliers scattered bit-exact,
RoPE rotation in float32 with cos/sin tables computed on the host by ``kvwire.rope``'s own torch
ops, as the CPU codec does, at each layer's original positions: a window-trimmed sliding layer's
start comes from the ``kernels.base.cache_group`` the call runs in, as the CPU codec's from the wire
header). Ties: when several entries share the k-th largest z-score exactly and only some fit the
budget, both keep the LOWEST flat indices (the CPU codec's ``_top_indices`` follows the kernel's rule
since issue 27: with ``torch.topk``'s unspecified order the two chose different, equally valid
outliers on about 1e-4 of a real bf16 cache's entries, where random caches rarely tie). The CPU
orders are those of x86 builds of torch (8-lane AVX2 reduction kernels, also on AVX512 hosts);
another CPU's torch could order its sums differently.

Not done: ``levels="kmeans"`` (refused by ``supports``); head_dim must be a multiple of 8 and at
most 256; pre-RoPE layers must share one frequency count.
"""

from __future__ import annotations

import functools
import math
import weakref
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import torch

from ... import rope
from ...codecs.base import LayerContext, LayerKV, section_header, tensor_from, unpack_sections
from ...codecs.bitpack import packed_size
from ...codecs.kvquant import _nf_coder, n_outliers
from ...codecs.quant import SCALE_DTYPES
from ...errors import CodecError, KVError, WireError
from ..base import UNKNOWN_STEPS, GpuPayloads, KernelCodec, Stats, check_cache, current_group, register_kernel
from ..launch import header_tensor, interpreted
from . import jit
from . import select as topk

ROPE_STATS = ("rope_inv_freq", "rope_scaling")
DTYPE_CODE = {torch.float16: 0, torch.bfloat16: 1, torch.float32: 2}
TILE = 1024  # elements per tile program on a GPU (rows = TILE // padded head_dim), as the per-token kernels
KEY_ROWS = 4  # key tiles are KEY_ROWS times taller: fewer per-channel min/max atomics
NUM_WARPS = {"tile": 1, "keys": 4, "moments": 2, "select": 4}
ROWS_INTERPRETED = 64  # the interpreter pays per program: fewer, larger ones
SELECT_PROGRAMS = 8  # programs per tensor of the selection rounds (persistent loops over the candidates)
BLOCK_E = 1024  # candidates per step of a selection round
BUFFER_FRACTION = 16  # candidate buffer: n / 16 entries per tensor (the k-th score's bin holds ~0.3 % of n)
MIN_BUFFER = 4096  # ... and at least this many (a test lowers it to take the overflow path)


def _fp(kind: str) -> dict:
    # no multiply-add contraction (the CPU rounds every product); interpreter runs take no options
    return {} if interpreted() else {"enable_fp_fusion": False, "num_warps": NUM_WARPS[kind]}


def _step(n_sub: int) -> int:
    """ATen's cascade chunk: 2 ** max(4, ceil(log2(n)) // 4) rows."""
    ceil_log2 = 1 if n_sub <= 2 else (n_sub - 1).bit_length()
    return 1 << max(4, ceil_log2 // 4)


@dataclass(frozen=True)
class Layout:
    """One layer's payload: the CPU codec's 12 sections (13 with pre_rope), every size a function of
    the shape and parameters (the RoPE table's of the frequency count)."""

    heads: int
    seq: int
    dim: int
    bits: int
    count: int  # outliers per tensor
    scale_bytes: int
    value_bytes: int
    n_freq: int  # 0 without pre_rope

    @property
    def numel(self) -> int:
        return self.heads * self.seq * self.dim

    @property
    def sections(self) -> list[int]:
        codes = packed_size(self.numel, self.bits)
        out = []
        for n_vec in (self.heads * self.dim, self.heads * self.seq):  # keys per channel, values per token
            out += [codes, n_vec * self.scale_bytes, n_vec * self.scale_bytes, 0,  # no codebook with NF levels
                    self.count * self.value_bytes, self.count * 4]
        return out + ([4 * (self.n_freq + 1)] if self.n_freq else [])

    @functools.cached_property
    def header(self) -> bytes:
        return section_header(self.sections)

    @functools.cached_property
    def offsets(self) -> dict[str, int]:
        names = [f"{t}_{n}" for t in "kv" for n in ("codes", "offs", "rng", "book", "vals", "idx")] + ["table"]
        pos, out = len(self.header), {}
        for name, n in zip(names, self.sections):
            out[name] = pos
            pos += n
        return out

    @property
    def layer_bytes(self) -> int:
        return len(self.header) + sum(self.sections)


@dataclass
class RopePlan:
    """Per-layer RoPE data on the device: cos/sin tables [tables, seq, n_freq] (``rope._cos_sin``
    run on the host, as the CPU codec does), (n_freq, table) per layer, the divisor
    float32(scaling**2) of the inverse rotation, and the payload's table section per layer."""

    cos: torch.Tensor
    sin: torch.Tensor
    meta: torch.Tensor  # int32 [layers, 2]
    scale2: torch.Tensor  # float32 [layers]
    table_bytes: torch.Tensor  # uint8 [layers, 4 * (n_freq + 1)]
    n_freq: int


_PLANS: dict = {}  # statistics identity or table bytes -> (the statistics, their RopePlan): a cache
_DECODED: dict = {}  # payload tensor identity -> (a weak reference to it, its RopePlan)


def _tables(inv_freqs: list[torch.Tensor], scalings: list[float], seq: int, device,
            starts: Sequence[int] | None = None) -> RopePlan:
    """The plan's tables: one cos/sin table per distinct (frequencies, scaling, window start), at the
    stored tokens' original positions ``start + 0 .. seq - 1`` (``starts``: per layer, default 0)."""
    starts = [0] * len(inv_freqs) if starts is None else [int(x) for x in starts]
    keys, first = [], {}
    for f, sc, st in zip(inv_freqs, scalings, starts):
        key = (f.numpy().tobytes(), sc, st)
        first.setdefault(key, len(first))
        keys.append(first[key])
    n_freq = inv_freqs[0].numel()
    cos, sin = [], []
    for key in first:
        f = torch.frombuffer(bytearray(key[0]), dtype=torch.float32)
        pos = torch.arange(seq) + key[2] if key[2] else torch.arange(seq)
        c, s = rope._cos_sin(pos, f, key[1])  # the CPU codec's own torch ops
        cos.append(c[:, :n_freq].contiguous())
        sin.append(s[:, :n_freq].contiguous())
    meta = torch.tensor([[n_freq, k] for k in keys], dtype=torch.int32)
    scale2 = torch.tensor([sc * sc for sc in scalings], dtype=torch.float32)  # python double, then float32
    table = torch.stack([torch.cat([f.float(), torch.tensor([sc])]) for f, sc in zip(inv_freqs, scalings)])
    return RopePlan(torch.stack(cos).to(device), torch.stack(sin).to(device), meta.to(device), scale2.to(device),
                    table.view(torch.uint8).to(device), n_freq)


@functools.lru_cache(maxsize=16)
def _level_table(bits: int, device: str) -> torch.Tensor:
    """The NF levels then the decision boundaries (float32, as the CPU's ``_nf_coder``)."""
    lv = _nf_coder(bits)[0]
    return torch.cat([lv, (lv[1:] + lv[:-1]) * 0.5]).to(device)


@functools.lru_cache(maxsize=64)
def _layer_starts(n_layers: int, layer_bytes: int, device: str) -> torch.Tensor:
    return (torch.arange(n_layers, dtype=torch.int64) * layer_bytes).to(device)


@register_kernel
class KVQuantKernel(KernelCodec):
    """KVQuant with NF levels: every parameter but ``levels="kmeans"``."""

    names = ("kvquant2", "kvquant3", "kvquant4")
    # ties at the k-th outlier score now go the same way on both sides (module docstring; identical in
    # the interpreter); True once a GPU run shows real caches byte-identical (bench/kvquant_real_diff.py)
    exact = False

    def __init__(self, name: str, params: Mapping[str, Any] | None = None) -> None:
        super().__init__(name, params)
        self.needs_stats = ROPE_STATS if self.params["pre_rope"] else ()
        self.bits = int(name[-1])

    @classmethod
    def supports(cls, name: str, params: Mapping[str, Any]) -> bool:
        return params.get("levels", "nf") == "nf"

    @classmethod
    def limits(cls) -> str:
        return ("it implements levels='nf' (k-means codebooks are CPU-only), any outlier_fraction, scale_dtype "
                "and pre_rope, for head_dim a multiple of 8 up to 256")

    # -- statistics --

    def bench_stats(self, shape: tuple[int, ...], generator: torch.Generator | None = None) -> Stats:
        """Llama-3-style RoPE statistics (rope_theta 500000, attention scaling 1) for every layer,
        on the host (the kernel computes its cos/sin tables there, as the CPU codec does)."""
        if not self.params["pre_rope"]:
            return None
        n_layers, _, _, _, d = shape
        inv_freq = 1.0 / (500000.0 ** (torch.arange(0, d, 2, dtype=torch.float32) / d))
        return [{"rope_inv_freq": inv_freq.clone(), "rope_scaling": torch.ones(1)} for _ in range(n_layers)]

    def _rope_plan(self, stats: Stats, n_layers: int, seq: int, dim: int, device,
                   starts: Sequence[int] | None = None) -> RopePlan:
        """The CPU codec's checks of the RoPE statistics, then their device tables (cached by the
        statistics' identity, so a repeated encode pays no host work or copy); ``starts``: each layer's
        window start (``_starts``)."""
        starts = tuple(int(x) for x in starts) if starts is not None else (0,) * n_layers
        if stats is None or len(stats) < n_layers:
            missing = list(ROPE_STATS) if stats is None else ["(layers)"]
            raise CodecError(f"codec {self.name!r} with pre_rope=True needs the RoPE statistics {missing} for "
                             f"layer 0; re-extract the cache (extraction stores them for RoPE models) or "
                             f"set pre_rope=False")
        ident = tuple((id(stats[i][k]), stats[i][k]._version) for i in range(n_layers) for k in ROPE_STATS
                      if k in stats[i]) + (seq, dim, str(device), starts)
        hit = _PLANS.get(ident)
        if hit is not None:
            return hit[1]
        inv_freqs, scalings = [], []
        for i in range(n_layers):
            missing = [k for k in ROPE_STATS if k not in stats[i]]
            if missing:
                raise CodecError(f"codec {self.name!r} with pre_rope=True needs the RoPE statistics {missing} for "
                                 f"layer {i}; re-extract the cache (extraction stores them for RoPE models) or "
                                 f"set pre_rope=False")
            f = stats[i]["rope_inv_freq"].detach().cpu().float()
            sc = float(stats[i]["rope_scaling"].detach().cpu().reshape(-1)[0])
            if not (torch.isfinite(f).all() and 0 < 2 * f.numel() <= dim and sc > 0):
                raise KVError(f"layer {i}: unusable RoPE statistics ({f.numel()} frequencies, scaling {sc}) for "
                              f"head_dim {dim}")
            inv_freqs.append(f.contiguous())
            scalings.append(sc)
        if len({f.numel() for f in inv_freqs}) != 1:
            raise CodecError(f"the GPU kernel for {self.name!r} needs one RoPE frequency count across layers, got "
                             f"{sorted({f.numel() for f in inv_freqs})}")
        plan = _tables(inv_freqs, scalings, seq, device, starts)
        if len(_PLANS) > 8:
            _PLANS.clear()
        _PLANS[ident] = ([stats[i][k] for i in range(n_layers) for k in ROPE_STATS], plan)  # refs keep ids alive
        return plan

    @staticmethod
    def _starts(shape: Sequence[int]) -> tuple[int, ...]:
        """Each layer's window start (the original position of its first stored token): from the
        ``cache_group`` the call runs in, else all 0 -- as the CPU codec's ``LayerContext.start``."""
        n, _, h, s, d = shape
        group = current_group(n, (h, s, d))
        return tuple(group.start(i) for i in group.layers) if group is not None else (0,) * n

    # -- layout --

    def layout(self, shape: tuple[int, ...], dtype: torch.dtype, n_freq: int = 0) -> Layout:
        n, _, h, s, d = shape
        if d % 8 or not 8 <= d <= 256:
            raise CodecError(f"the GPU kernel for {self.name!r} needs head_dim a multiple of 8 up to 256, got {d}")
        if h * s * d >= 2**31 and self.params["outlier_fraction"] > 0:
            raise CodecError(f"codec {self.name!r}: a layer tensor has {h * s * d} entries; outlier indices are "
                             f"int32, so split the layer or use outlier_fraction=0")
        sdt = SCALE_DTYPES[self.params["scale_dtype"]]
        return Layout(h, s, d, self.bits, n_outliers(h * s * d, self.params["outlier_fraction"]),
                      torch.empty((), dtype=sdt).element_size(), torch.empty((), dtype=dtype).element_size(), n_freq)

    def _geometry(self, lay: Layout) -> dict:
        """Tiles: rows of 8-column groups (W of them, padded to a power of two); V's BLOCK_R rows
        (NRB per head), K's BLOCK_RK (NRB_K); NTM tiles per tensor in the count arrays."""
        w = max(1, 1 << (lay.dim // 8 - 1).bit_length())
        rows = ROWS_INTERPRETED if interpreted() else max(1, TILE // (8 * w))
        key_rows = rows * (2 if interpreted() else KEY_ROWS)  # (2 in the interpreter: the tests see K != V tiles)
        nrb, nrb_k = -(-lay.seq // rows), -(-lay.seq // key_rows)
        return {"W": w, "BLOCK_R": rows, "NRB": nrb, "BLOCK_RK": key_rows, "NRB_K": nrb_k,
                "NTM": lay.heads * max(nrb, nrb_k)}

    # -- encode --

    def encode(self, kv: torch.Tensor, stats: Stats = None, *, check: bool = True) -> GpuPayloads:
        n_layers, h, s, d = check_cache(kv, f"{self.name} GPU kernel")
        self.layout(tuple(kv.shape), kv.dtype)  # shape checks before the statistics'
        pre = bool(self.params["pre_rope"])
        plan = self._rope_plan(stats, n_layers, s, d, kv.device, self._starts(kv.shape)) if pre else None
        lay = self.layout(tuple(kv.shape), kv.dtype, plan.n_freq if pre else 0)
        kv = kv.contiguous()
        out = torch.empty(n_layers * lay.layer_bytes, dtype=torch.uint8, device=kv.device)
        if lay.numel:
            self._encode_into(kv, out, lay, plan, check)
        per = out.view(n_layers, lay.layer_bytes)
        per[:, :len(lay.header)] = header_tensor(lay.header, str(kv.device))
        if pre:
            per[:, lay.offsets["table"]:] = plan.table_bytes
        return GpuPayloads(out, tuple(i * lay.layer_bytes for i in range(n_layers + 1)))

    def _encode_into(self, kv: torch.Tensor, out: torch.Tensor, lay: Layout, plan: RopePlan | None,
                     check: bool) -> None:
        L, h, s, d = kv.shape[0], lay.heads, lay.seq, lay.dim
        dev = kv.device
        g = self._geometry(lay)
        W, R, NRB, RK, NRB_K, nt = g["W"], g["BLOCK_R"], g["NRB"], g["BLOCK_RK"], g["NRB_K"], g["NTM"]
        pre, has_out, count = plan is not None, lay.count > 0, lay.count
        n_t = 2 * L
        key_geo = dict(D=d, W=W, BLOCK_R=RK)
        cap = max(MIN_BUFFER, lay.numel // BUFFER_FRACTION)
        # one zeroed int32 block: window histograms, round histograms, state, tile counts, flags
        sizes = [n_t * 256, n_t * topk.LEVELS * topk.HIST_STRIDE, n_t * topk.STATE, n_t * nt, n_t + 1]
        block = torch.zeros(sum(sizes), dtype=torch.int32, device=dev)
        hist1, hist, state, cnt, flags = torch.split(block, sizes)
        f32 = dict(dtype=torch.float32, device=dev)
        kr = torch.empty(L * h * s * d, **f32) if pre else kv
        key_src = kr if pre else kv
        kmean = torch.empty(L * h * d, **f32)
        kinv = torch.empty(L * h * d, **f32)
        vmean = torch.empty(L * h * s, **f32)
        vinv = torch.empty(L * h * s, **f32)
        lo = torch.empty(L * h * d, dtype=torch.int32, device=dev)  # channel min, max: order-preserving int32
        hi = torch.empty(L * h * d, dtype=torch.int32, device=dev)
        zk = torch.empty(L * h * d, dtype=torch.int32, device=dev)  # which zero's sign the CPU keeps
        if has_out or pre:
            self._key_moments(kv, kr, kmean, kinv, lo, hi, zk, flags, plan, lay, check, moments=has_out)
        if not has_out:
            lo.fill_(0x7F800000)  # +inf
            hi.fill_(-0x7F800000 - 1)  # -inf
            zk.copy_(torch.where(torch.arange(d, device=dev) < 32 * (d // 32), -1, 0x7FFFFFFF).int().repeat(L * h))
        buf = torch.empty(n_t * cap * 2 if has_out else 1, dtype=torch.int32, device=dev)
        common = dict(D=d, W=W, BLOCK_R=R)
        if has_out:
            jit.value_moments_kernel[(NRB, L * h)](kv, vmean, vinv, hist1, flags, s, h, HAS_OUT=True, CHECK=check,
                                                   **common, **_fp("moments"))
            jit.key_hist_kernel[(NRB_K, L * h)](key_src, kmean, kinv, hist1, s, h, PRE=pre, **key_geo, **_fp("keys"))
            topk.select_first_kernel[(n_t,)](hist1, state, count, **_fp("select"))
        tensors = ((True, (key_src, kmean, kinv), "k", NRB_K, key_geo, "keys"),
                   (False, (kv, vmean, vinv), "v", NRB, common, "tile"))
        for is_key, (src, mean, inv), _, nrb, geo, warps in tensors:
            if is_key or has_out:
                topk.collect_kernel[(nrb, L * h)](src, mean, inv, state, buf, cnt, lo, hi, zk, cap, s, h, nrb, nt,
                                                 IS_KEY=is_key, PRE=pre and is_key, HAS_OUT=has_out, **geo,
                                                 **_fp(warps))
        if has_out:
            sel = (kv, kr, kmean, kinv, vmean, vinv, s, h, NRB)
            nprog = 1 if interpreted() else SELECT_PROGRAMS
            for level, nb in enumerate(topk.LEVEL_BINS):
                if interpreted() and bool(state.view(n_t, topk.STATE)[:, 4].all()):
                    break  # every tensor's k-th key is known (the interpreter pays per launch; a GPU never syncs here)
                topk.level_kernel[(nprog, n_t)](buf, state, hist, cap, *sel, PRE=pre, LEVEL=level, NB=nb,
                                               BLOCK_E=BLOCK_E, NPROG=nprog, **common, **_fp("select"))
                topk.select_level_kernel[(n_t,)](hist, state, LEVEL=level, NB=nb, **_fp("select"))
            topk.finish_kernel[(nprog, n_t)](buf, state, cnt, lo, hi, zk, cap, *sel, NRB_K, nt, PRE=pre,
                                            BLOCK_RK=RK, BLOCK_E=BLOCK_E, NPROG=nprog, **common, **_fp("select"))
        offs = (torch.cumsum(cnt.view(n_t, nt), dim=1, dtype=torch.int32) - cnt.view(n_t, nt)) if has_out else cnt
        lv = _level_table(self.bits, str(dev))
        starts = _layer_starts(L, lay.layer_bytes, str(dev))
        o = lay.offsets
        sdt = DTYPE_CODE[SCALE_DTYPES[self.params["scale_dtype"]]]
        for is_key, (src, mean, inv), t, nrb, geo, warps in tensors:
            jit.quant_kernel[(nrb, L * h)](
                src, mean, inv, lo, hi, zk, state, offs, lv, out, starts, flags[n_t:], s, h, nrb, nt, count,
                o[f"{t}_codes"], o[f"{t}_offs"], o[f"{t}_rng"], o[f"{t}_vals"], o[f"{t}_idx"],
                BITS=self.bits, NL=2**self.bits, SDT=sdt, SDT_BYTES=lay.scale_bytes, VDT=DTYPE_CODE[kv.dtype],
                VDT_BYTES=lay.value_bytes, IS_KEY=is_key, PRE=pre and is_key, HAS_OUT=has_out, CHECK=check,
                **geo, **_fp(warps))
        if check:
            self._check_encoded(kv, flags, has_out, n_t)

    def moments(self, kv: torch.Tensor, stats: Stats = None) -> dict[str, torch.Tensor]:
        """The kernels' per-vector means and 1/var (keys per channel [L, H, D], in the pre-RoPE
        domain with pre_rope; values per token [L, H, S]): the CPU codec's, bit for bit."""
        n_layers, h, s, d = check_cache(kv, f"{self.name} GPU kernel")
        plan = (self._rope_plan(stats, n_layers, s, d, kv.device, self._starts(kv.shape))
                if self.params["pre_rope"] else None)
        lay = self.layout(tuple(kv.shape), kv.dtype, plan.n_freq if plan else 0)
        kv = kv.contiguous()
        f32 = dict(dtype=torch.float32, device=kv.device)
        out = {name: torch.empty(n_layers * h * n, **f32) for name, n in
               (("keys_mean", d), ("keys_inv_var", d), ("values_mean", s), ("values_inv_var", s))}
        ints = torch.zeros(3 * n_layers * h * d + 2 * n_layers + 1 + 2 * n_layers * 256, dtype=torch.int32,
                           device=kv.device)
        lo, hi, zk, flags, hist1 = torch.split(ints, [n_layers * h * d] * 3 + [2 * n_layers + 1, 2 * n_layers * 256])
        kr = torch.empty(n_layers * h * s * d, **f32) if plan else kv
        self._key_moments(kv, kr, out["keys_mean"], out["keys_inv_var"], lo, hi, zk, flags, plan, lay, False, True)
        g = self._geometry(lay)
        jit.value_moments_kernel[(g["NRB"], n_layers * h)](kv, out["values_mean"], out["values_inv_var"], hist1, flags,
                                                          s, h, D=d, W=g["W"], BLOCK_R=g["BLOCK_R"], HAS_OUT=False,
                                                          CHECK=False, **_fp("moments"))
        return {name: t.view(n_layers, h, -1) for name, t in out.items()}

    def _key_moments(self, kv, kr, kmean, kinv, lo, hi, zk, flags, plan: RopePlan | None, lay: Layout, check: bool,
                     moments: bool) -> None:
        """Every key channel's mean and 1/var in the CPU's sum order (two passes: sums, then squared
        deviations); the first pass also un-rotates pre-RoPE keys into ``kr``."""
        L, h, s, d = kv.shape[0], lay.heads, lay.seq, lay.dim
        dev = kv.device
        pre = plan is not None
        dp = 1 << (d - 1).bit_length()
        c32 = 32 * (d // 32)
        ng, step = -(-s // _step(s) ** 2), _step(s)
        nsub4 = s // 4
        step4 = _step(nsub4)
        ng4 = -(-nsub4 // step4 ** 2) if nsub4 else 0
        dpb = 1 << max(0, (d - c32 - 1).bit_length()) if c32 < d else 1
        f32 = dict(dtype=torch.float32, device=dev)
        g1 = torch.empty(L * h * ng * dp, **f32)
        tail = torch.empty(L * h * dp, **f32)
        g1b = torch.empty(max(1, L * h * 4 * ng4 * dpb), **f32)
        tailb = torch.empty(max(1, L * h * 4 * dpb), **f32)
        rope_args = (plan.cos, plan.sin, plan.meta, plan.scale2) if pre else (kmean, kmean, flags, kmean)
        nfm = plan.cos.shape[-1] if pre else 1
        hb = 1 << (h - 1).bit_length() if interpreted() else 1  # heads per program
        blocks = L * (-(-h // hb))
        for square in ((False, True) if moments else (False,)):
            first = not square
            jit.key_partials_kernel[(ng, blocks)](
                kv, kr, kmean, g1, tail, flags, *rope_args, s, h, s, ng, nfm, D=d, DP=dp, HB=hb, COL0=0, M=1,
                STEP=step, SQUARE=square, ROPE=pre and first, FROM_KR=pre and not first, CHECK=check and first,
                **_fp("moments"))
            if not moments:
                return
            if c32 < d and ng4:
                jit.key_partials_kernel[(ng4, blocks * 4)](
                    kv, kr, kmean, g1b, tailb, flags, *rope_args, s, h, nsub4, ng4, nfm, D=d, DP=dpb, HB=hb,
                    COL0=c32, M=4, STEP=step4, SQUARE=square, ROPE=False, FROM_KR=pre, CHECK=False, **_fp("moments"))
            jit.key_fold_kernel[(L * h,)](
                g1, tail, g1b, tailb, kv, kr, kmean, kinv if square else kmean, lo, hi, zk, s, h, s, ng, nsub4, ng4,
                D=d, DP=dp, C32=c32, DPB=dpb, STEP=step, STEP4=step4, SQUARE=square, FROM_KR=pre, **_fp("moments"))

    def _check_encoded(self, kv: torch.Tensor, flags: torch.Tensor, has_out: bool, n_t: int) -> None:
        """One sync: NaN/Inf in the cache (KVError, as the CPU's ``require_finite``), or an offset or
        range past the scale dtype (CodecError, as the CPU codec)."""
        if has_out:
            bad = flags.cpu()
        else:  # no moment passes ran: the CPU's own amax/amin check
            ext = torch.stack([kv.amax(dim=(2, 3, 4)), kv.amin(dim=(2, 3, 4))])
            bad = torch.cat([(~torch.isfinite(ext)).any(dim=0).reshape(-1).int(), flags[n_t:]]).cpu()
        for t in range(n_t):
            if bad[t]:
                label = "keys" if t % 2 == 0 else "values"
                raise KVError(f"codec {self.name!r}: NaN/Inf value(s) in layer {t // 2} {label}")
        if bad[n_t]:
            raise CodecError(f"codec {self.name!r}: a per-vector offset or range overflows "
                             f"{self.params['scale_dtype']}; use scale_dtype=float32")

    # -- decode --

    def _decode_layout(self, payloads: GpuPayloads, shape: tuple[int, ...], dtype: torch.dtype) -> Layout:
        if len(shape) != 5 or shape[1] != 2:
            raise KVError(f"a cache for the {self.name} GPU kernel is [layers, 2, kv_heads, seq, head_dim], "
                          f"got {list(shape)}")
        if dtype not in DTYPE_CODE:
            raise KVError(f"the {self.name} GPU kernel decodes to fp16, bf16 or fp32, not {dtype}")
        n_layers = shape[0]
        if payloads.n_layers != n_layers:
            raise WireError(f"codec {self.name!r}: {payloads.n_layers} payloads for {n_layers} layers")
        base = self.layout(tuple(shape), dtype, 0)
        sizes = {b - a for a, b in zip(payloads.offsets, payloads.offsets[1:])}
        n_freq = 0
        if self.params["pre_rope"]:  # the table's size gives the frequency count: 8 bytes of section length,
            extra = [sz - base.layer_bytes - 12 for sz in sizes]  # 4 of scaling, 4 per frequency
            n_freq = extra[0] // 4 if len(extra) == 1 and extra[0] % 4 == 0 else -1
            if n_freq <= 0 or not 2 * n_freq <= shape[4]:
                raise WireError(f"codec {self.name!r}: RoPE table of the payload sizes {sorted(sizes)} does not fit "
                                f"head_dim {shape[4]}")
        lay = self.layout(tuple(shape), dtype, n_freq)
        if sizes != {lay.layer_bytes}:
            raise WireError(f"codec {self.name!r}: payloads of {sorted(sizes)} bytes, expected {lay.layer_bytes} "
                            f"for shape {list(shape)}")
        return lay

    def decode(self, payloads: GpuPayloads, shape: tuple[int, ...], dtype: torch.dtype, *,
               check: bool = True) -> torch.Tensor:
        shape = tuple(shape)
        lay = self._decode_layout(payloads, shape, dtype)
        L, _, h, s, d = shape
        data = payloads.data
        dev = data.device
        out = torch.empty(shape, dtype=dtype, device=dev)
        if not lay.numel:
            return out
        per = data.view(L, lay.layer_bytes)
        if check:
            self._check_payload(per, lay, dtype)
        pre = bool(self.params["pre_rope"])
        plan = self._payload_plan(data, per, lay, s, check, self._starts(shape)) if pre else None
        g = self._geometry(lay)
        W, R, NRB = g["W"], g["BLOCK_R"], g["NRB"]
        bits_view = out.view(torch.int32 if dtype == torch.float32 else torch.int16)
        lv = _level_table(self.bits, str(dev))
        starts = _layer_starts(L, lay.layer_bytes, str(dev))
        rope_args = (plan.cos, plan.sin, plan.meta) if pre else (lv, lv, starts)
        nfm = plan.cos.shape[-1] if pre else 1
        limit = torch.finfo(dtype).max
        o = lay.offsets
        sdt = DTYPE_CODE[SCALE_DTYPES[self.params["scale_dtype"]]]
        for is_key, t in ((True, "k"), (False, "v")):
            jit.dequant_kernel[(NRB, L * h)](
                data, starts, lv, bits_view, *rope_args, s, h, nfm, limit, o[f"{t}_codes"], o[f"{t}_offs"],
                o[f"{t}_rng"], D=d, W=W, BLOCK_R=R, BITS=self.bits, SDT=sdt, SDT_BYTES=lay.scale_bytes,
                OUT_DT=DTYPE_CODE[dtype], IS_KEY=is_key, PRE=pre and is_key, **_fp("tile"))
        if lay.count:
            block = 256
            for is_key, t in ((True, "k"), (False, "v")):
                jit.outlier_kernel[(-(-lay.count // block), L)](
                    data, starts, lv, bits_view, *rope_args, lay.count, s, h, nfm, limit, o[f"{t}_codes"],
                    o[f"{t}_offs"], o[f"{t}_rng"], o[f"{t}_vals"], o[f"{t}_idx"], D=d, BITS=self.bits, SDT=sdt,
                    SDT_BYTES=lay.scale_bytes, VDT=DTYPE_CODE[dtype], VDT_BYTES=lay.value_bytes, IS_KEY=is_key,
                    PRE=pre and is_key, LOG=max(1, (lay.count + 1).bit_length()), BLOCK=block, **_fp("tile"))
        return out

    def _sections(self, per: torch.Tensor, lay: Layout, name: str, n: int, dtype: torch.dtype) -> torch.Tensor:
        at = lay.offsets[name]
        return per[:, at:at + n].clone(memory_format=torch.contiguous_format).view(dtype)  # aligned, dense copy

    def _check_payload(self, per: torch.Tensor, lay: Layout, dtype: torch.dtype) -> None:
        """The CPU decoder's checks, on the device, one sync: section tables, finite offsets and
        ranges, outlier indices in range and strictly increasing."""
        sdt = SCALE_DTYPES[self.params["scale_dtype"]]
        checks = [(per[:, :len(lay.header)] == header_tensor(lay.header, str(per.device))).all()]
        for t, n_vec in (("k", lay.heads * lay.dim), ("v", lay.heads * lay.seq)):
            for part in ("offs", "rng"):
                checks.append(torch.isfinite(self._sections(per, lay, f"{t}_{part}", n_vec * lay.scale_bytes,
                                                            sdt).float()).all())
        for t in "kv":
            if lay.count:
                idx = self._sections(per, lay, f"{t}_idx", 4 * lay.count, torch.int32)
                checks.append(((idx[:, 0] >= 0) & (idx[:, -1] < lay.numel)).all() & (idx[:, 1:] > idx[:, :-1]).all())
        ok = torch.stack(checks).cpu()
        if not ok[0]:
            raise WireError(f"codec {self.name!r}: a payload's section table does not match the shape "
                            f"[{lay.heads}, {lay.seq}, {lay.dim}] and parameters")
        if not ok[1:5].all():
            raise WireError(f"codec {self.name!r}: non-finite offset or range in the payload")
        if not ok[5:].all():
            raise WireError(f"codec {self.name!r}: outlier indices out of range or not increasing")

    def _payload_plan(self, data: torch.Tensor, per: torch.Tensor, lay: Layout, seq: int, check: bool,
                      starts: tuple[int, ...] | None = None) -> RopePlan:
        """The payloads' RoPE tables (one small copy to the host: a sync), checked as the CPU decoder
        does, then cos/sin from them by ``rope._cos_sin`` (cached by the tables' bytes). Unchecked
        (``check=False``), a payload tensor decoded before -- same storage, unchanged since by torch
        (its version counter) -- reuses its tables without the copy."""
        starts = tuple(starts) if starts is not None else (0,) * per.shape[0]
        ident = (id(data), data.data_ptr(), data._version, seq, starts)
        seen = _DECODED.get(ident)
        if not check and seen is not None and seen[0]() is data:
            return seen[1]
        tables = per[:, lay.offsets["table"]:].clone(memory_format=torch.contiguous_format).view(torch.float32).cpu()
        if not torch.isfinite(tables).all() or not (tables[:, -1] > 0).all():
            raise WireError(f"codec {self.name!r}: non-finite RoPE table or non-positive scaling in the payload")
        key = (tables.numpy().tobytes(), seq, str(data.device), starts)
        hit = _PLANS.get(key)
        if hit is None:
            plan = _tables([t[:-1].clone() for t in tables], [float(t[-1]) for t in tables], seq, data.device,
                           starts)
            if len(_PLANS) > 8:
                _PLANS.clear()
            hit = _PLANS[key] = (None, plan)
        if len(_DECODED) > 64:
            _DECODED.clear()
        _DECODED[ident] = (weakref.ref(data), hit[1])  # weak: a cache must not keep payloads alive
        return hit[1]

    # -- eager baseline --

    def encode_eager(self, kv: torch.Tensor, stats: Stats = None) -> GpuPayloads:
        from .eager import encode_eager

        return encode_eager(self, kv, stats)

    def decode_eager(self, payloads: GpuPayloads, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        from .eager import decode_eager

        return decode_eager(self, payloads, tuple(shape), dtype)

    # -- tolerance --

    def compare(self, got: bytes, want: bytes, ctx: LayerContext, kv: LayerKV | None = None) -> tuple[int, int, int]:
        """(entries that decode differently, entries, largest difference in quantization steps) of
        one layer against the CPU codec's payload. Both payloads decode with the CPU codec (keys in
        the pre-RoPE domain where they were quantized); a step is the vector's range times the
        largest gap between NF levels, so an entry that is an outlier here and an inlier there
        (a tie) differs by at most one step."""
        n = ctx.shape[0] * ctx.shape[1] * ctx.shape[2]
        if got == want:
            return 0, 2 * n, 0
        codec = self.codec.tensor
        nparts = 13 if self.params["pre_rope"] else 12
        try:
            pg = unpack_sections(got, nparts, self.name)
            pw = unpack_sections(want, nparts, self.name)
            if [len(p) for p in pg] != [len(p) for p in pw] or (nparts == 13 and bytes(pg[12]) != bytes(pw[12])):
                return 2 * n, 2 * n, UNKNOWN_STEPS
            lv = _nf_coder(self.bits)[0]
            gap = float((lv[1:] - lv[:-1]).max())
            sdt = SCALE_DTYPES[self.params["scale_dtype"]]
            h, s, d = ctx.shape
            differing, steps = 0, 0
            for j, red in ((0, 1), (1, 2)):
                a = codec._decode_tensor(pg[6 * j:6 * j + 6], red, ctx, torch.float32)
                b = codec._decode_tensor(pw[6 * j:6 * j + 6], red, ctx, torch.float32)
                step = tensor_from(pw[6 * j + 2], sdt, (h, 1, d) if red == 1 else (h, s, 1)).float() * gap
                diff = (a - b).abs()
                bad = diff != 0
                differing += int(bad.sum())
                if bool(bad.any()):
                    st = step.expand_as(diff)[bad]
                    if bool((st == 0).any()):
                        return differing + 2 * n, 2 * n, UNKNOWN_STEPS
                    steps = max(steps, int(math.ceil(float((diff[bad] / st).max()))))
            return differing, 2 * n, steps
        except WireError:
            return 2 * n, 2 * n, UNKNOWN_STEPS
