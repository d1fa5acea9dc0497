"""kvquant2 / kvquant3 / kvquant4: KVQuant-style non-uniform quantization with dense-and-sparse outliers.

Follows Hooper, Kim, Mohammadzadeh, Mahoney, Shao, Keutzer, Gholami: "KVQuant: Towards 10 Million
Context Length LLM Inference with KV Cache Quantization", NeurIPS 2024, arXiv:2401.18079.
The "nf" levels are the NormalFloat construction of Dettmers, Pagnoni, Holtzman, Zettlemoyer:
"QLoRA: Efficient Finetuning of Quantized LLMs", NeurIPS 2023, arXiv:2305.14314.

What is faithful to KVQuant:

- keys are quantized PER CHANNEL (one normalization per (head, channel) over all tokens of the
  layer) and values PER TOKEN (one per (head, token) over head_dim);
- each vector is normalized as KVQuant's ``quant_fn_nuq_recon`` does: ``offset = (max + min) / 2``,
  ``range = (max - min) / 2`` of its INLIER values, ``x_n = (x - offset) / range`` in [-1, 1],
  and x_n is rounded to the nearest of 2**bits non-uniform levels ("signposts");
- dense-and-sparse: outliers are removed before the normalization is fitted, stored exactly (their
  values in the cache's own dtype plus their flat int32 indices into [kv_heads, seq, head_dim]) and
  scattered back on decode, so they come back bit-exact;
- codes are bit-packed at 2, 3 (8 codes per 3 bytes) or 4 bits; offsets and ranges are stored in
  ``scale_dtype`` (float16 by default).

What differs (plainly):

- Pre-RoPE keys only with ``pre_rope=True``. KVQuant quantizes keys *before* the rotary
  embedding and applies RoPE on the fly. transformers caches post-RoPE keys, so with
  ``pre_rope=True`` this codec takes them back before RoPE (``kvwire.rope``: the per-layer
  frequencies extraction stores as ``rope_inv_freq`` / ``rope_scaling`` statistics; checked against
  the keys the model projected, ``tests/test_rope.py``), quantizes the pre-RoPE keys, sends the
  frequencies (a few hundred bytes per layer) and rotates back after decoding. A window-trimmed
  sliding layer (``kvwire.kv``: its stored tokens start at ``window_starts[i]``, in the wire header's
  meta) is un-rotated at its tokens' ORIGINAL positions, ``ctx.start + 0 .. n - 1``: the wire header
  gives encoder and decoder the same start, so the round trip stays an exact inverse, and a layer that
  starts at 0 (every layer of a model without windows) gets the bytes it got before. The rotation runs
  in float32, so key outliers come back exact in the pre-RoPE domain but not bit-exact after the
  rotation, and a cache without the statistics is refused. ``pre_rope=False`` (the default, which
  needs no statistics) quantizes post-RoPE keys, whose per-channel structure the rotation smears.
- No offline calibration. KVQuant derives its non-uniform datatype offline (sensitivity-weighted
  k-means over calibration activations, one per layer) and calibrates the key outlier thresholds
  offline. Here everything is fitted online on the layer being sent: ``levels="nf"`` uses fixed
  NormalFloat levels (nothing stored); ``levels="kmeans"`` runs an unweighted 1-D k-means (Lloyd,
  ``kmeans_iters`` iterations, vectorized over all channels at once, initialized deterministically
  at the (i + 1/2)/2**bits quantiles) PER CHANNEL -- for keys on the per-channel-normalized keys,
  for values on the per-token-normalized values, one codebook per (head, channel) in both cases --
  and stores the 2**bits float16 centroids of every channel (in normalized units) in the payload.
- Outlier selection. KVQuant uses per-vector percentile thresholds (each channel for keys, each
  token for values). This codec keeps KVQuant's per-vector notion of "outlier" but spends an exact
  budget: per layer tensor (keys and values separately) it removes the ``floor(outlier_fraction *
  numel)`` entries with the largest per-vector z-score ``|x - mean_v| / std_v`` (mean/std over the
  entry's quantization vector: its channel for keys, its token for values). A flat
  magnitude ranking would spend the whole budget on one loud key channel, which per-channel
  quantization already handles; the z-score spreads it over every vector's tails.
- NormalFloat levels are the SYMMETRIC variant: 2**(bits-1) positive levels at the normal
  quantiles of probabilities ``linspace(0.5, 0.9677083, 2**(bits-1) + 1)[1:]`` (QLoRA's offset),
  mirrored and divided by the largest, so the levels are sorted, symmetric and include +-1.
  QLoRA's NF4 is asymmetric (7 negative, 0, 8 positive) to hold an exact zero; KVQuant's
  min/max normalization makes the symmetric set the natural fit (zero vectors still decode
  exactly through the offset). Fixed NF levels fit short absmax blocks (QLoRA's 64) best: a key
  channel normalized by its min/max over ~1000 tokens keeps most values near 0, so the +-1 levels
  are rarely used; on Gaussian [3, 1024, 64] data ``levels="kmeans"`` has ~2.5x lower MSE than nf
  at 2 bits and ~1.1x at 4 bits. No attention-sink fp16 token, no Q-Norm, no per-layer mixed
  precision.

Implementation (CPU, vectorized torch): nearest-NF-level codes come from an exact lookup on a
256-bin grid over [-1, 1] plus one comparison (``nf_codes``); k-means sorts each channel's row
once and runs every Lloyd step as a ``searchsorted`` of the decision boundaries plus prefix sums
(``kmeans_1d``); the outlier top-k pre-filters with a threshold from a strided sample and falls
back to a full ``torch.topk`` when too few entries pass (``_top_indices``), so its result is exact.

Error: an inlier's error is at most ``range * gap / 2`` where ``gap`` is the largest distance
between adjacent levels (nf; the end levels are +-1, so nothing is clipped), plus the float16
rounding of the stored offset and range; outliers are exact.

Payload: 12 length-prefixed sections, six for keys then six for values: packed codes (in
[H, S, D] order), offsets and ranges (keys [H, 1, D], values [H, S, 1]), codebook (kmeans:
[H, D, 2**bits] float16; nf: empty), outlier values (cache dtype), outlier flat indices (int32,
strictly increasing). Sizes follow from the layer shape and params; decode checks them and the
indices.
"""

from __future__ import annotations

import functools
import math

import torch

from .. import rope
from ..errors import CodecError, KVError, WireError
from . import bitpack
from .base import (LayerContext, LayerKV, Param, TensorCodec, check_layer, pack_sections,
                   require_finite, tensor_bytes, tensor_from, unpack_sections)
from .quant import SCALE_DTYPES
from .registry import register

NF_OFFSET = 0.9677083  # QLoRA's extreme-quantile probability for NormalFloat levels
_CODEBOOK_DTYPE = torch.float16


def nf_levels(bits: int) -> torch.Tensor:
    """Symmetric NormalFloat levels: 2**bits sorted float32 values in [-1, 1], mirrored, +-1 included."""
    half = 2 ** (bits - 1)
    p = torch.linspace(0.5, NF_OFFSET, half + 1, dtype=torch.float64)[1:]
    pos = torch.special.ndtri(p)
    pos = pos / pos[-1]
    return torch.cat([-pos.flip(0), pos]).to(torch.float32)


def n_outliers(numel: int, fraction: float) -> int:
    return int(math.floor(fraction * numel + 1e-9))


def select_outliers(x: torch.Tensor, dim: int, count: int) -> torch.Tensor:
    """Sorted flat indices of the ``count`` entries with the largest z-score along ``dim``'s vectors.

    The z-score of an entry is ``|x - mean_v| / std_v`` over its vector v (ranked as its square)."""
    if count == 0:
        return torch.empty(0, dtype=torch.int64)
    dev = x - x.mean(dim=dim, keepdim=True)
    sq = dev.square_()
    inv_var = 1.0 / sq.mean(dim=dim, keepdim=True).clamp_min(torch.finfo(torch.float32).tiny)
    return _top_indices(sq.mul_(inv_var).reshape(-1), count).sort().values


def _top_indices(score: torch.Tensor, count: int, stride: int = 31) -> torch.Tensor:
    """Indices of the ``count`` largest entries of a flat ``score``; ties at the ``count``-th score go
    to the LOWEST indices, as the GPU kernel's radix select does (``kernels/kvquant/select.py``).

    ``torch.topk`` leaves ties unspecified, and a real bf16 cache has many equal z-scores: with it
    the CPU and GPU chose different, equally valid outliers on about 1e-4 of a real cache's entries.
    A full top-k over a whole layer is slow on CPU, so a threshold is taken from every ``stride``-th
    entry (a prime stride, so it walks through every channel) at about twice the wanted rank; only
    the entries above it go through the exact top-k. If too few pass, every entry is a candidate.
    """
    if count <= 0:
        return torch.empty(0, dtype=torch.int64)
    n = score.numel()
    rank = 2 * count // stride + 1
    cand = None
    if not (n < 64 * stride or rank * stride >= n // 4):
        threshold = torch.topk(score[::stride], rank, sorted=True).values[-1]
        cand = (score >= threshold).nonzero().squeeze(1)  # ascending indices
        if cand.numel() < count:
            cand = None
    pool = score if cand is None else score.index_select(0, cand)
    kth = torch.topk(pool, count, sorted=False).values.min()
    above = (pool > kth).nonzero().squeeze(1)
    tied = (pool == kth).nonzero().squeeze(1)[:count - above.numel()]  # ascending: the lowest indices
    chosen = torch.cat([above, tied])
    return chosen if cand is None else cand.index_select(0, chosen)


def kmeans_1d(data: torch.Tensor, weight: torch.Tensor, k: int, iters: int) -> torch.Tensor:
    """Lloyd's 1-D k-means on every row of ``data`` [C, N] at once; entries with ``weight`` 0 are left out.

    Exact Lloyd iterations, done on each row sorted once: in 1-D a cluster is a run of the sorted
    row, so an iteration is one ``searchsorted`` of the K-1 decision boundaries plus prefix sums,
    O(C * K * log N) instead of O(C * N). Initialized at the (i + 1/2)/k quantiles of each row's
    kept entries; an empty cluster keeps its centroid. A point exactly on a boundary joins the lower
    cluster (as the encoder's nearest-level rule does). Returns sorted float32 centroids [C, k].
    """
    c_rows, n = data.shape
    inf = torch.tensor(float("inf"))
    srt = torch.where(weight > 0, data, inf).sort(dim=1).values.contiguous()  # left-out entries sort last
    n_valid = (weight > 0).sum(dim=1, keepdim=True)
    csum = torch.nn.functional.pad(srt.double().cumsum(dim=1), (1, 0))  # exclusive prefix sums; finite up to n_valid
    pick = ((torch.arange(k, dtype=torch.float64) + 0.5) / k * n_valid).floor().long()
    pick = torch.minimum(pick, (n_valid - 1).clamp_min(0))
    cent = srt.gather(1, pick)
    cent = torch.where(torch.isfinite(cent), cent, torch.zeros_like(cent))  # rows with no kept entry
    for _ in range(iters):  # a fixed handful of Lloyd iterations, each vectorized over all rows
        bounds = ((cent[:, 1:] + cent[:, :-1]) * 0.5).contiguous()
        edges = torch.cat([torch.zeros_like(n_valid), torch.searchsorted(srt, bounds, right=True), n_valid], dim=1)
        edges = torch.minimum(edges, n_valid)
        counts = edges[:, 1:] - edges[:, :-1]
        sums = csum.gather(1, edges[:, 1:]) - csum.gather(1, edges[:, :-1])
        cent = torch.where(counts > 0, (sums / counts.clamp_min(1)).float(), cent)
    return cent.sort(dim=1).values


_GRID = 256  # bins of the nearest-level lookup over [-1, 1]; a power of two, so bin edges are exact


@functools.lru_cache(maxsize=None)
def _nf_coder(bits: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(levels, first [GRID] uint8, threshold [GRID] float32) for the exact NF nearest-level lookup.

    ``first[i]`` is the code of bin i's left edge (the number of decision boundaries below it) and
    ``threshold[i]`` the next boundary (inf after the last). A normalized value x in bin i gets code
    ``first[i] + (x > threshold[i])``: exact when every bin holds at most one boundary and none lies
    within rounding reach of a bin edge without lying exactly on it (checked here once)."""
    lv = nf_levels(bits)
    bounds = (lv[1:] + lv[:-1]) * 0.5
    edges = torch.arange(_GRID + 1, dtype=torch.float64) * (2.0 / _GRID) - 1.0
    b64 = bounds.double()
    near = (b64[:, None] - edges[None]).abs()  # a boundary exactly on an edge is fine (first[] counts b < edge)
    if (b64[1:] - b64[:-1]).min() <= 2.0 / _GRID or bool(((near > 0) & (near < 1e-5)).any()):
        raise AssertionError(f"NF lookup grid too coarse for {bits} bits")
    first = (b64[None, :] < edges[:-1, None]).sum(dim=1)  # boundaries left of each bin's left edge
    threshold = torch.cat([bounds, torch.tensor([float("inf")])])[first]
    return lv, first.to(torch.uint8), threshold


def nf_codes(xn: torch.Tensor, bits: int) -> torch.Tensor:
    """Index (uint8) of the nearest NF level for every xn in [-1, 1] (ties go to the lower level)."""
    _, first, threshold = _nf_coder(bits)
    flat = xn.reshape(-1)
    idx = (flat + 1.0).mul_(_GRID / 2).clamp_(0, _GRID - 1).to(torch.int32)  # >= 0: truncation is floor
    code = first.index_select(0, idx)
    above = torch.gt(flat, threshold.index_select(0, idx))
    return code.add_(above.view(torch.uint8)).view(xn.shape)


def row_codes(rows: torch.Tensor, book: torch.Tensor) -> torch.Tensor:
    """Index of the nearest of each row's sorted levels ``book`` [C, K] for rows [C, N] (ties go lower)."""
    bounds = (book[:, 1:] + book[:, :-1]) * 0.5
    codes = torch.zeros(rows.shape, dtype=torch.uint8)
    above = torch.empty(rows.shape, dtype=torch.bool)
    for j in range(bounds.shape[1]):  # a loop over the K-1 <= 15 decision boundaries, not over elements
        torch.gt(rows, bounds[:, j:j + 1], out=above)
        codes.add_(above)
    return codes


class _KVQuant(TensorCodec):
    bits: int = 4
    PARAMS = {
        "levels": Param(str, "nf", "non-uniform levels: 'nf' (fixed NormalFloat) or 'kmeans' "
                        "(per-channel 1-D k-means codebook, stored)", choices=("nf", "kmeans")),
        "outlier_fraction": Param(float, 0.01, "fraction of each layer tensor kept exact as sparse outliers "
                                  "(largest per-vector z-scores)", minimum=0.0, maximum=0.5),
        "kmeans_iters": Param(int, 8, "Lloyd iterations for levels='kmeans'", minimum=0, maximum=100),
        "scale_dtype": Param(str, "float16", "dtype of the stored per-vector offsets and ranges",
                             choices=tuple(SCALE_DTYPES)),
        "pre_rope": Param(bool, False, "quantize keys before RoPE (needs the rope_inv_freq / rope_scaling "
                          "statistics extraction stores)"),
    }

    # keys: vectors are channels (reduce over seq, dim 1); values: vectors are tokens (reduce dim 2)
    _REDUCE = {"keys": 1, "values": 2}

    def encode_layer(self, kv: LayerKV, ctx: LayerContext) -> bytes:
        check_layer(kv, ctx)
        require_finite(kv, ctx, self.name)
        keys, tail = kv.k, []
        if self.params["pre_rope"]:
            inv_freq, scaling = self._rope(kv, ctx)
            keys = rope.rotate(kv.k, self._positions(ctx, kv.k.shape[1]), inv_freq, scaling, inverse=True)
            tail = [tensor_bytes(torch.cat([inv_freq.float(), torch.tensor([scaling])]))]
        sections: list[bytes] = []
        for label, x in (("keys", keys), ("values", kv.v)):
            sections += self._encode_tensor(x, self._REDUCE[label], label, ctx)
        return pack_sections(sections + tail)

    @staticmethod
    def _positions(ctx: LayerContext, seq: int) -> torch.Tensor:
        """The stored tokens' original positions: ``ctx.start`` on (a window-trimmed sliding layer
        starts at its window start, ``kvwire.kv``; every other layer at 0)."""
        return torch.arange(seq) + int(ctx.start) if ctx.start else torch.arange(seq)

    def _rope(self, kv: LayerKV, ctx: LayerContext) -> tuple[torch.Tensor, float]:
        missing = [n for n in ("rope_inv_freq", "rope_scaling") if n not in ctx.stats]
        if missing:
            raise CodecError(f"codec {self.name!r} with pre_rope=True needs the RoPE statistics {missing} for "
                             f"layer {ctx.layer}; re-extract the cache (extraction stores them for RoPE models) or "
                             f"set pre_rope=False")
        if kv.positions is not None:
            raise CodecError(f"codec {self.name!r}: pre_rope=True needs the full cache, not a token subset")
        inv_freq, scaling = ctx.stats["rope_inv_freq"].float(), float(ctx.stats["rope_scaling"].reshape(-1)[0])
        if not (torch.isfinite(inv_freq).all() and 0 < 2 * inv_freq.numel() <= kv.k.shape[-1] and scaling > 0):
            raise KVError(f"layer {ctx.layer}: unusable RoPE statistics ({inv_freq.numel()} frequencies, "
                          f"scaling {scaling}) for head_dim {kv.k.shape[-1]}")
        return inv_freq, scaling

    def _encode_tensor(self, x: torch.Tensor, red: int, label: str, ctx: LayerContext) -> list[bytes]:
        h, s, d = x.shape
        k = 2**self.bits
        sdt = SCALE_DTYPES[self.params["scale_dtype"]]
        if x.numel() >= 2**31 and self.params["outlier_fraction"] > 0:
            raise CodecError(f"codec {self.name!r}: layer {ctx.layer} {label} has {x.numel()} entries; outlier "
                             f"indices are int32, so split the layer or use outlier_fraction=0")
        xf = x.to(torch.float32, copy=True)  # work buffer, normalized in place below
        idx = select_outliers(xf, red, n_outliers(xf.numel(), self.params["outlier_fraction"]))
        flat = xf.view(-1)
        has_out = idx.numel() > 0
        if has_out:  # outliers are left out of each vector's min/max
            flat[idx] = float("inf")
        lo = xf.amin(dim=red, keepdim=True)
        if has_out:
            flat[idx] = float("-inf")
        hi = xf.amax(dim=red, keepdim=True)
        empty = lo > hi  # a vector whose entries are all outliers
        lo = lo.masked_fill(empty, 0.0)
        hi = hi.masked_fill(empty, 0.0)
        offset = (hi * 0.5 + lo * 0.5).to(sdt)  # halves first: fp32 max + max would overflow
        rng = (hi * 0.5 - lo * 0.5).to(sdt)
        if not (torch.isfinite(offset).all() and torch.isfinite(rng).all()):
            raise CodecError(f"codec {self.name!r}, layer {ctx.layer} {label}: a per-vector offset or range "
                             f"overflows {sdt}; use scale_dtype=float32")
        r = rng.float()
        inv = torch.where(r > 0, 1.0 / r, torch.zeros_like(r))
        xn = xf.sub_(offset.float()).mul_(inv).clamp_(-1.0, 1.0)
        if has_out:
            flat[idx] = 0.0  # placeholder code under each outlier (overwritten on decode)
        if self.params["levels"] == "nf":
            codes = nf_codes(xn, self.bits)
            book = torch.empty(0, dtype=_CODEBOOK_DTYPE)
        else:
            rows = xn.transpose(1, 2).reshape(h * d, s).contiguous()  # one row per (head, channel)
            keep = torch.ones(h * s * d, dtype=torch.bool)
            keep[idx] = False
            keep = keep.view(h, s, d).transpose(1, 2).reshape(h * d, s)
            cent = kmeans_1d(rows, keep, k, self.params["kmeans_iters"])
            book = cent.to(_CODEBOOK_DTYPE).sort(dim=1).values
            codes = row_codes(rows, book.float()).view(h, d, s).transpose(1, 2)
            book = book.reshape(h, d, k)
        packed = bitpack.pack(codes, self.bits)
        return [tensor_bytes(packed), tensor_bytes(offset), tensor_bytes(rng), tensor_bytes(book),
                tensor_bytes(x.reshape(-1)[idx].to(ctx.dtype)), tensor_bytes(idx.to(torch.int32))]

    def decode_layer(self, payload: bytes, ctx: LayerContext) -> LayerKV:
        pre = self.params["pre_rope"]
        parts = unpack_sections(payload, 13 if pre else 12, self.name)
        k = self._decode_tensor(parts[:6], self._REDUCE["keys"], ctx, torch.float32 if pre else ctx.dtype)
        v = self._decode_tensor(parts[6:12], self._REDUCE["values"], ctx, ctx.dtype)
        if pre:
            h, s, d = ctx.shape
            table = parts[12]
            n_freq = len(table) // 4 - 1
            if len(table) % 4 or not 0 < 2 * n_freq <= d:
                raise WireError(f"codec {self.name!r}: RoPE table of {len(table)} bytes does not fit head_dim {d}")
            table = tensor_from(table, torch.float32, (n_freq + 1,))
            if not torch.isfinite(table).all() or not table[-1] > 0:
                raise WireError(f"codec {self.name!r}: non-finite RoPE table or non-positive scaling in the payload")
            limit = torch.finfo(ctx.dtype).max
            k = rope.rotate(k, self._positions(ctx, s), table[:-1], float(table[-1])).clamp_(-limit, limit)
            k = k.to(ctx.dtype)
        return LayerKV(k, v)

    def _decode_tensor(self, parts, red: int, ctx: LayerContext, out_dtype: torch.dtype) -> torch.Tensor:
        h, s, d = ctx.shape
        n = h * s * d
        k = 2**self.bits
        sdt = SCALE_DTYPES[self.params["scale_dtype"]]
        pc, po, pr, pb, pv, pi = parts
        sshape = (h, 1, d) if red == 1 else (h, s, 1)
        codes = bitpack.unpack(tensor_from(pc, torch.uint8, (bitpack.packed_size(n, self.bits),)), self.bits, n)
        codes = codes.view(h, s, d).long()
        offset = tensor_from(po, sdt, sshape).float()
        rng = tensor_from(pr, sdt, sshape).float()
        if not (torch.isfinite(offset).all() and torch.isfinite(rng).all()):
            raise WireError(f"codec {self.name!r}: non-finite offset or range in the payload")
        if self.params["levels"] == "nf":
            tensor_from(pb, _CODEBOOK_DTYPE, (0,))
            xn = _nf_coder(self.bits)[0].index_select(0, codes.reshape(-1)).view(h, s, d)
        else:
            book = tensor_from(pb, _CODEBOOK_DTYPE, (h, d, k)).float()
            if not torch.isfinite(book).all():
                raise WireError(f"codec {self.name!r}: non-finite k-means codebook in the payload")
            base = (torch.arange(h * d) * k).view(h, 1, d)  # start of each (head, channel) codebook
            xn = book.reshape(-1).index_select(0, (base + codes).reshape(-1)).view(h, s, d)
        limit = torch.finfo(ctx.dtype).max
        out = torch.addcmul(offset, xn, rng).clamp_(-limit, limit).to(out_dtype)
        n_out = n_outliers(n, self.params["outlier_fraction"])
        vals = tensor_from(pv, ctx.dtype, (n_out,))
        idx = tensor_from(pi, torch.int32, (n_out,)).long()
        if n_out and (idx[0] < 0 or idx[-1] >= n or (n_out > 1 and not bool((idx[1:] > idx[:-1]).all()))):
            raise WireError(f"codec {self.name!r}: outlier indices out of range or not increasing")
        out.view(-1)[idx] = vals.to(out_dtype)
        return out


@register
class KVQuant2(_KVQuant):
    name = "kvquant2"
    bits = 2
    summary = "KVQuant-style 2-bit non-uniform (nf/kmeans), keys per-channel, values per-token, sparse outliers"


@register
class KVQuant3(_KVQuant):
    name = "kvquant3"
    bits = 3
    summary = "KVQuant-style 3-bit non-uniform (nf/kmeans), keys per-channel, values per-token, sparse outliers"


@register
class KVQuant4(_KVQuant):
    name = "kvquant4"
    bits = 4
    summary = "KVQuant-style 4-bit non-uniform (nf/kmeans), keys per-channel, values per-token, sparse outliers"
