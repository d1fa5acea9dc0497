"""cachegen: anchor/delta token coding, layer-dependent quantization and an rANS entropy coder.

Follows CacheGen (Y. Liu, H. Li, Y. Cheng, S. Ray, ..., J. Jiang: "CacheGen: KV Cache Compression
and Streaming for Fast Large Language Model Serving", ACM SIGCOMM 2024, arXiv 2310.07240).

What this codec does, per layer and separately for K and V (tensors [heads, seq, head_dim]):

1. **Token chunks and anchors.** Tokens are cut into chunks of ``chunk_size`` contiguous tokens
   (default 16: the paper groups a small number of contiguous tokens; we pick a power of two and
   make it a parameter). The first token of each chunk is the *anchor*: it is quantized asymmetrically with
   ``anchor_bits`` (default 8) bits, one scale and zero point per (head, channel) over all anchors.
2. **Deltas.** Every other token is coded as its difference from the *decoded* anchor of its chunk
   (closed loop: the decoder sees the same anchor, so anchor error does not leak into the deltas),
   quantized uniformly and symmetrically (levels -q..+q, q = 2**(bits-1) - 1, so a zero delta is
   exact) with one scale per (head, channel) over all non-anchor tokens of the layer.
3. **Layer-dependent bins.** ``bits`` is ``bits_early`` / ``bits_mid`` / ``bits_late`` (6 / 5 / 4 by
   default) for the first / middle / last third of the layers (``3 * layer // n_layers``): shallow
   layers are quantized more finely, as CacheGen does because they are the most sensitive to loss.
4. **Entropy coding** (``entropy="rans"``). The quantized symbols are coded with a real rANS coder
   (the ``constriction`` package: ``stream.stack.AnsCoder`` with ``stream.model.Categorical``,
   24-bit probabilities, 32-bit words). The model is *fitted to this layer's data*: one symbol-count
   table per group of ``channels_per_table`` consecutive channels (a channel = one (head, dim)
   pair, CacheGen's "channel" after flattening heads), separately for K and V, plus one table for
   each tensor's anchors. A table has 2**bits entries; counts are rescaled so the largest is 255
   (every occurring symbol keeps a count >= 1) and stored as uint8 in the payload (uint8 tables
   gave smaller payloads than uint16 ones in our tests: the precision lost costs fewer bytes than
   the tables save); the decoder rebuilds the identical ``Categorical`` models from those integers,
   so coding is deterministic and exactly invertible. Every stream (anchors or deltas of K or V)
   carries a one-byte mode: if the rANS stream plus its tables would not be smaller than the plain
   bit-packed codes (tiny layers), the bit-packed form is stored instead, so ``rans`` is never
   larger than ``none``. ``entropy="none"`` bit-packs exactly the same symbols (``bitpack.pack``),
   which is the "same quantization without entropy coding" baseline.
5. **GPU-friendly entropy coding** (``entropy="rans_lanes"``). The same symbols and the same uint8
   count tables, coded by an interleaved rANS over ``rans_lanes.LANES`` (32) independent lanes
   (symbol i of the stream in lane ``i % 32``; 32-bit states, 16-bit words, probabilities quantized
   from the uint8 tables to 14 bits by integer arithmetic), so that a GPU codes a stream's lanes as
   one vector (``kernels/cachegen/rans_jit.py`` writes the identical bytes; no ``constriction``).
   A stream in this mode is: mode byte 2, the uint8 tables (as ``rans``), each lane's final encoder
   state and word count (uint32 each), then the lanes' uint16 words, lane by lane
   (``codecs/rans_lanes.py`` describes the coder and checks). The bit-packed fallback rule is the
   same as ``rans``'s. Decoding accepts every mode (0, 1, 2) whatever ``entropy`` is set to.

Error bound (per element, before rounding to the output dtype): an anchor token is within
``anchor_scale / 2`` of the input (plus the rounding of its zero point to ``scale_dtype``), any
other token within ``delta_scale / 2`` (the scales of its (head, channel), as stored). Constant
channels decode exactly. The entropy stage is lossless: ``rans`` and ``none`` decode bit-identically.

Faithful: anchor + delta coding within token groups, more bins for shallow layers, an arithmetic-
class entropy coder whose probability tables are computed per (layer, channel group) from the data
and shipped with the stream (CacheGen's released encoder, UChi-JCL/CacheGen ``src/encoder/
encoder.py``, builds one CDF per (layer, channel) from the quantized data the same way).

Differs: (a) the paper's coder is a GPU arithmetic coder (torchac); here it is CPU rANS from
``constriction`` -- same entropy, different speed (and the GIL-holding coder runs on one core).
(b) the paper's released encoder quantizes each token vector directly (no delta step in that
code) with an absmax scale (``torch_quant``, ``dim=-1``) and uses 32 / 16 / 16 bins for keys
(layers 0-9 / 10-19 / 20-31 of 7B models, ``config/quantization_7b.json``) and 32 / 16 for values
(layers 0-1 / the rest); 32 bins = levels -15..15, our 5 bits, 16 bins = our 4 bits. We use
per-(head, channel) scales over the layer (one scale per channel costs far fewer bytes than one per
token, and keys' outlier channels then do not squash other channels), the same bit schedule for K
and V, and split layers into equal thirds. (c) tables are shared by ``channels_per_table``
channels (default 16) instead of one per channel, because a full table per channel costs more bytes
than it saves at these sequence lengths; ``channels_per_table=1`` is CacheGen's granularity.
(d) no chunk-level streaming or bitrate adaptation (the wire container streams per layer).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ..errors import CodecError, WireError
from . import bitpack, quant, rans_lanes
from ..limits import MAX_GROUP, MAX_HEAD_DIM, MAX_TOKENS
from .base import (LayerContext, LayerKV, Param, TensorCodec, check_layer, pack_sections,
                   require_finite, tensor_bytes, tensor_from, unpack_sections)
from .registry import register

try:  # a hard requirement of this codec only; the rest of kvwire does not need it
    import constriction
except ImportError:  # pragma: no cover - exercised only when the dependency is missing
    constriction = None

_MODE_PACKED = 0
_MODE_RANS = 1
_MODE_LANES = 2  # entropy="rans_lanes": interleaved rANS over rans_lanes.LANES lanes
_TABLE_MAX = 255  # counts are rescaled so the largest is this, stored as uint8


def layer_tier(layer: int, n_layers: int) -> int:
    """0 / 1 / 2 for the first / middle / last third of the layers."""
    return min(2, (3 * layer) // max(1, n_layers))


# ---- the entropy stage: one stream = a flat symbol array cut into groups, one table per group --

def _stream_groups(n_rows: int, row_len: int, rows_per_table: int) -> list[tuple[int, int]]:
    """[start, end) symbol ranges of each table's group; rows are contiguous in the flat array."""
    n_tables = math.ceil(n_rows / rows_per_table)
    return [(g * rows_per_table * row_len, min((g + 1) * rows_per_table, n_rows) * row_len)
            for g in range(n_tables)]


def _count_tables(symbols: np.ndarray, n_rows: int, rows_per_table: int, alphabet: int) -> np.ndarray:
    """symbols int32 [n_rows, row_len] -> uint8-range counts [n_tables, alphabet] (one bincount, no loop)."""
    n_tables = math.ceil(n_rows / rows_per_table)
    offset = (np.arange(n_rows, dtype=np.int32) // rows_per_table * alphabet)[:, None]
    counts = np.bincount((symbols + offset).ravel(), minlength=n_tables * alphabet).reshape(n_tables, alphabet)
    top = np.maximum(counts.max(axis=1, keepdims=True), 1)
    scaled = (counts * _TABLE_MAX + top // 2) // top
    return np.where(counts > 0, np.maximum(scaled, 1), 0).astype(np.uint8)


def _models(tables: np.ndarray) -> list:
    return [constriction.stream.model.Categorical(row.astype(np.float64), perfect=False) for row in tables]


def encode_stream(codes: torch.Tensor, bits: int, rows_per_table: int, entropy: str) -> bytes:
    """codes [n_rows, row_len] uint8 in [0, 2**bits) -> mode byte + (packed codes | uint8 tables + rANS words
    | uint8 tables + ``rans_lanes`` header and words).

    Row g * rows_per_table .. (g + 1) * rows_per_table - 1 share table g; the Python loop below runs
    over these few tables (one ``encode_reverse`` call per table), never over symbols.
    """
    def packed() -> bytes:
        return bytes([_MODE_PACKED]) + tensor_bytes(bitpack.pack(codes, bits))

    n_packed = 1 + (bitpack.packed_size(codes.numel(), bits) if bits < 8 else codes.numel())
    if entropy == "none" or codes.numel() == 0:
        return packed()
    n_rows = codes.shape[0]
    alphabet = 2**bits
    n_tables = math.ceil(n_rows / rows_per_table)
    if n_tables * alphabet + 1 + (rans_lanes.HEADER_BYTES if entropy == "rans_lanes" else 0) >= n_packed:
        return packed()  # the tables (and lane header) alone would cost more than the codes
    symbols = codes.numpy().astype(np.int32)
    tables = _count_tables(symbols, n_rows, rows_per_table, alphabet)
    table_bytes = tables.tobytes()
    symbols = symbols.reshape(-1)
    if entropy == "rans_lanes":
        words = rans_lanes.encode(symbols, rans_lanes.quantize(tables), rows_per_table * codes.shape[1])
        coded = bytes([_MODE_LANES]) + table_bytes + words
        return coded if len(coded) < n_packed else packed()
    models = _models(tables)
    coder = constriction.stream.stack.AnsCoder()
    groups = _stream_groups(n_rows, codes.shape[1], rows_per_table)
    for (start, end), model in zip(reversed(groups), reversed(models)):  # a stack: encode last group first
        coder.encode_reverse(symbols[start:end], model)
    words = coder.get_compressed().astype("<u4").tobytes()
    coded = bytes([_MODE_RANS]) + table_bytes + words
    return coded if len(coded) < n_packed else packed()


def decode_stream(buf: memoryview, n_rows: int, row_len: int, bits: int, rows_per_table: int,
                  codec: str) -> torch.Tensor:
    """Inverse of :func:`encode_stream`: uint8 codes [n_rows, row_len]; any inconsistency is a WireError."""
    n = n_rows * row_len
    if len(buf) < 1:
        raise WireError(f"codec {codec!r}: empty symbol stream")
    mode, body = buf[0], buf[1:]
    if mode == _MODE_PACKED:
        packed = tensor_from(body, torch.uint8, (len(body),))
        return bitpack.unpack(packed, bits, n).view(n_rows, row_len)
    if mode not in (_MODE_RANS, _MODE_LANES) or n == 0:
        raise WireError(f"codec {codec!r}: unknown symbol stream mode {mode}")
    alphabet = 2**bits
    groups = _stream_groups(n_rows, row_len, rows_per_table)
    n_table_bytes = len(groups) * alphabet
    if mode == _MODE_LANES:
        if len(body) < n_table_bytes:
            raise WireError(f"codec {codec!r}: rans_lanes stream of {len(body)} bytes is shorter than its "
                            f"{len(groups)} tables of {alphabet} symbols")
        tables = np.frombuffer(body[:n_table_bytes], dtype=np.uint8).reshape(len(groups), alphabet)
        if (tables.sum(axis=1) == 0).any():
            raise WireError(f"codec {codec!r}: an rANS frequency table is all zero")
        out = rans_lanes.decode(body[n_table_bytes:], n, rans_lanes.quantize(tables), rows_per_table * row_len,
                                f"codec {codec!r}")
        return torch.from_numpy(out.astype(np.uint8)).view(n_rows, row_len)  # symbols < alphabet <= 256
    if constriction is None:
        raise CodecError(f"codec {codec!r}: this payload is rANS-coded; decoding it needs the 'constriction' package")
    if len(body) < n_table_bytes or (len(body) - n_table_bytes) % 4:
        raise WireError(f"codec {codec!r}: rANS stream of {len(body)} bytes does not fit "
                        f"{len(groups)} tables of {alphabet} symbols plus 32-bit words")
    tables = np.frombuffer(body[:n_table_bytes], dtype=np.uint8).reshape(len(groups), alphabet)
    if (tables.sum(axis=1) == 0).any():
        raise WireError(f"codec {codec!r}: an rANS frequency table is all zero")
    words = np.frombuffer(body[n_table_bytes:], dtype="<u4").astype(np.uint32)
    out = np.empty(n, dtype=np.int32)
    try:
        coder = constriction.stream.stack.AnsCoder(words)
        for (start, end), model in zip(groups, _models(tables)):
            out[start:end] = coder.decode(model, end - start)
        consumed = coder.is_empty()
    except (ValueError, RuntimeError, OverflowError) as exc:
        raise WireError(f"codec {codec!r}: corrupted rANS stream ({exc})") from exc
    if not consumed:
        raise WireError(f"codec {codec!r}: rANS stream has data left after {n} symbols (corrupted)")
    return torch.from_numpy(out).to(torch.uint8).view(n_rows, row_len)  # callers check the code range


# ---- the codec -------------------------------------------------------------------------------

@register
class CacheGen(TensorCodec):
    name = "cachegen"
    summary = "CacheGen-style anchor/delta tokens, layer-dependent bits, rANS-coded (per channel-group tables)"
    PARAMS = {
        "chunk_size": Param(int, 16, "tokens per chunk; the first is the anchor, the rest are deltas", minimum=1,
                            maximum=MAX_GROUP),
        "anchor_bits": Param(int, 8, "bits of the anchor tokens (asymmetric, per head and channel)",
                             minimum=2, maximum=8),
        "bits_early": Param(int, 6, "delta bits in the first third of the layers", minimum=2, maximum=8),
        "bits_mid": Param(int, 5, "delta bits in the middle third of the layers", minimum=2, maximum=8),
        "bits_late": Param(int, 4, "delta bits in the last third of the layers", minimum=2, maximum=8),
        "entropy": Param(str, "rans", "entropy stage: rANS with per-channel-group tables (constriction), the "
                         "same tables coded by 32 interleaved rANS lanes (GPU-friendly), or plain bit packing",
                         choices=("rans", "rans_lanes", "none")),
        "channels_per_table": Param(int, 16, "(head, dim) channels sharing one frequency table", minimum=1,
                                    maximum=MAX_TOKENS),
        "scale_dtype": Param(str, "float16", "dtype of the stored scales and zero points",
                             choices=tuple(quant.SCALE_DTYPES)),
    }

    def __init__(self, **params) -> None:
        super().__init__(**params)
        if self.params["entropy"] == "rans" and constriction is None:
            raise CodecError("codec 'cachegen': entropy='rans' needs the 'constriction' package "
                             "(pip install constriction), or use entropy='none'")

    def delta_bits(self, ctx: LayerContext) -> int:
        return self.params[("bits_early", "bits_mid", "bits_late")[layer_tier(ctx.layer, ctx.n_layers)]]

    # layout helpers: S tokens -> n_chunks anchors and n_delta = S - n_chunks delta tokens
    def _layout(self, seq: int) -> tuple[int, int, int]:
        c = self.params["chunk_size"]
        n_chunks = math.ceil(seq / c)
        return c, n_chunks, seq - n_chunks

    def encode_layer(self, kv: LayerKV, ctx: LayerContext) -> bytes:
        check_layer(kv, ctx)
        require_finite(kv, ctx, self.name)
        sections: list[bytes] = []
        for t in (kv.k, kv.v):
            sections += self._encode_tensor(t, self.delta_bits(ctx))
        return pack_sections(sections)

    def _encode_tensor(self, t: torch.Tensor, bits: int) -> list[bytes]:
        p = self.params
        sdt = quant.SCALE_DTYPES[p["scale_dtype"]]
        h, s, d = t.shape
        c, n_chunks, n_delta = self._layout(s)
        x = torch.nn.functional.pad(t.float(), (0, 0, 0, n_chunks * c - s)).view(h, n_chunks, c, d)
        anchors = quant.quantize(x[:, :, 0, :], p["anchor_bits"], dim=1, symmetric=False, scale_dtype=sdt)
        a_hat = quant.dequantize(anchors, p["anchor_bits"], torch.float32)  # what the decoder will see
        rows = self.params["channels_per_table"]
        anchor_codes = anchors.codes.reshape(1, -1)
        out = [tensor_bytes(anchors.scale), tensor_bytes(anchors.zero),
               encode_stream(anchor_codes, p["anchor_bits"], 1, p["entropy"])]
        if n_delta == 0:
            return out + [b"", bytes([_MODE_PACKED])]
        delta = x[:, :, 1:, :] - a_hat.unsqueeze(2)  # [h, n_chunks, c-1, d]
        pad = n_chunks * c - s
        if pad:
            delta[:, -1, c - 1 - pad:, :] = 0.0  # padded slots: zero never raises a channel's absmax
        delta = delta.permute(0, 3, 1, 2).reshape(h, d, -1)  # channel-major: [h, d, n_chunks*(c-1)]
        q = quant.quantize(delta, bits, dim=-1, symmetric=True, scale_dtype=sdt)
        codes = q.codes[:, :, :n_delta].reshape(h * d, n_delta)  # padded slots sit at each row's end
        return out + [tensor_bytes(q.scale), encode_stream(codes, bits, rows, p["entropy"])]

    def decode_layer(self, payload: bytes, ctx: LayerContext) -> LayerKV:
        secs = unpack_sections(payload, 10, self.name)
        bits = self.delta_bits(ctx)
        k = self._decode_tensor(secs[:5], ctx, bits)
        v = self._decode_tensor(secs[5:], ctx, bits)
        return LayerKV(k, v)

    def _decode_tensor(self, secs: list[memoryview], ctx: LayerContext, bits: int) -> torch.Tensor:
        p = self.params
        sdt = quant.SCALE_DTYPES[p["scale_dtype"]]
        h, s, d = ctx.shape
        c, n_chunks, n_delta = self._layout(s)
        a_scale, a_zero, a_stream, d_scale, d_stream = secs
        a_codes = decode_stream(a_stream, 1, h * n_chunks * d, p["anchor_bits"], 1, self.name)
        anchors = quant.Quantized(a_codes.view(h, n_chunks, d), tensor_from(a_scale, sdt, (h, 1, d)),
                                  tensor_from(a_zero, sdt, (h, 1, d)))
        a_hat = quant.dequantize(anchors, p["anchor_bits"], torch.float32)
        limit = torch.finfo(ctx.dtype).max
        if n_delta == 0:
            if len(d_scale) or bytes(d_stream) != bytes([_MODE_PACKED]):
                raise WireError(f"codec {self.name!r}: delta sections present for a layer without deltas")
            _finite(a_hat, self.name)
            return a_hat.clamp_(-limit, limit).to(ctx.dtype)
        codes = decode_stream(d_stream, h * d, n_delta, bits, p["channels_per_table"], self.name)
        qmax = quant.levels(bits, True)
        if int(codes.max()) > 2 * qmax:
            raise WireError(f"codec {self.name!r}: delta code out of range")
        codes = torch.nn.functional.pad(codes.view(h, d, n_delta), (0, n_chunks * (c - 1) - n_delta), value=qmax)
        q = quant.Quantized(codes, tensor_from(d_scale, sdt, (h, d, 1)), None)
        delta = quant.dequantize(q, bits, torch.float32, symmetric=True)
        delta = delta.view(h, d, n_chunks, c - 1).permute(0, 2, 3, 1)  # [h, n_chunks, c-1, d]
        base = a_hat.unsqueeze(2)
        x = torch.cat((base, base + delta), dim=2).view(h, n_chunks * c, d)[:, :s]
        _finite(x, self.name)
        return x.clamp_(-limit, limit).to(ctx.dtype)


def _finite(t: torch.Tensor, codec: str) -> None:
    if not torch.isfinite(t).all():
        raise WireError(f"codec {codec!r}: payload decodes to NaN/Inf (corrupted scales)")
