"""The wire container, version 1: the exact bytes that cross the link.

Layout (all integers little-endian)::

    preamble  b"KVWR" | u16 version | u16 flags | u32 header_len
    header    UTF-8 JSON: codec name + params, tensor layout, metadata   (header_len bytes)
              u32 crc32(preamble + header)
    frame*    b"KVFR" | u32 layer | u64 payload_len | u32 crc32(payload) | u32 crc32(frame head)
              payload (payload_len bytes: the codec's encoding of that layer's K and V)
    trailer   b"KVEN" | u32 n_frames | u32 crc32 of the frames' payload crcs

One frame per layer, self-delimiting, so a sender can stream layer i while encoding
layer i+1 and a receiver can decode each frame as it lands. Every byte of the header
and payloads is covered by a CRC32; any truncation or corruption raises ``WireError``
naming the part that is wrong. The container knows nothing of codec internals.
"""

from __future__ import annotations

import json
import os
import struct
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

import torch

from .codecs import LayerContext, LayerKV, Pipeline, build
from .codecs.base import Buffer
from .errors import KvwireError, WireError
from .limits import DEFAULT_LIMITS, WireLimits, json_depth, payload_limit

MAGIC = b"KVWR"
FRAME_MAGIC = b"KVFR"
END_MAGIC = b"KVEN"
VERSION = 1

_PREAMBLE = struct.Struct("<4sHHI")
_CRC = struct.Struct("<I")
_FRAME_HEAD = struct.Struct("<4sIQI")  # magic, layer, payload_len, payload crc
_TRAILER = struct.Struct("<4sII")

DTYPE_NAMES = {torch.float16: "float16", torch.bfloat16: "bfloat16", torch.float32: "float32"}
DTYPES = {v: k for k, v in DTYPE_NAMES.items()}


@dataclass
class WireHeader:
    codec: str
    params: dict[str, Any]
    dtype: torch.dtype
    shapes: list[tuple[int, int, int]]  # per layer (kv_heads, seq, head_dim)
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def n_layers(self) -> int:
        return len(self.shapes)

    def to_json(self) -> dict[str, Any]:
        return {
            "codec": self.codec,
            "params": self.params,
            "layout": {"order": "kv_heads,seq,head_dim", "dtype": DTYPE_NAMES[self.dtype],
                       "shapes": [list(s) for s in self.shapes]},
            "meta": self.meta,
        }

    @classmethod
    def from_json(cls, obj: Any, limits: WireLimits = DEFAULT_LIMITS) -> "WireHeader":
        """Validate a header object against ``limits`` before anything is sized from it: every field
        of the right type, every dimension a positive int within its limit, the raw cache within
        ``max_cache_bytes``. Anything else is a ``WireError`` naming the field."""
        if not isinstance(obj, dict):
            raise WireError(f"wire header is malformed: a JSON object is needed, got {type(obj).__name__}")
        codec, params, layout, meta = obj.get("codec"), obj.get("params"), obj.get("layout"), obj.get("meta", {})
        if not isinstance(codec, str) or not 0 < len(codec) <= 256:
            raise WireError(f"wire header is malformed: codec must be a short name, got {codec!r:.80}")
        for name, value in (("params", params), ("layout", layout), ("meta", meta)):
            if not isinstance(value, dict):
                raise WireError(f"wire header is malformed: {name} must be an object, got {type(value).__name__}")
        dtype = DTYPES.get(layout.get("dtype")) if isinstance(layout.get("dtype"), str) else None
        if dtype is None:
            raise WireError(f"wire header is malformed: dtype {layout.get('dtype')!r:.80} is not one of {sorted(DTYPES)}")
        shapes = layout.get("shapes")
        if not isinstance(shapes, list) or not 1 <= len(shapes) <= limits.max_layers:
            n = len(shapes) if isinstance(shapes, list) else type(shapes).__name__
            raise WireError(f"wire header is malformed: shapes must list 1 to {limits.max_layers} layers, got {n}")
        bounds = (("kv_heads", limits.max_heads), ("seq", limits.max_tokens), ("head_dim", limits.max_head_dim))
        for i, shape in enumerate(shapes):
            if not isinstance(shape, list) or len(shape) != 3:
                raise WireError(f"wire header is malformed: layer {i} shape {shape!r:.80} is not [kv_heads, seq, head_dim]")
            for (dim, top), x in zip(bounds, shape):
                if not isinstance(x, int) or isinstance(x, bool) or not 1 <= x <= top:
                    raise WireError(f"wire header: layer {i} {dim} {x!r:.40} is not an integer in [1, {top}]")
        header = cls(codec=codec, params=params, dtype=dtype, shapes=[tuple(s) for s in shapes], meta=meta)
        if header.raw_bytes > limits.max_cache_bytes:
            raise WireError(f"wire header declares a {header.raw_bytes}-byte cache, more than the limit "
                            f"max_cache_bytes={limits.max_cache_bytes}")
        return header

    def context(self, layer: int, stats: dict[str, torch.Tensor] | None = None) -> LayerContext:
        """Layer ``layer``'s codec context: its shape, every layer's shape and its window start (the
        meta's ``window_starts``, 0 when absent)."""
        return LayerContext(layer=layer, n_layers=self.n_layers, dtype=self.dtype, shape=self.shapes[layer],
                            stats=stats or {}, shapes=tuple(self.shapes), start=self.window_starts[layer])

    @property
    def window_starts(self) -> list[int]:
        """Per layer, the original position of its first stored token (``meta["window_starts"]``, which
        extraction writes for window-trimmed sliding layers; all 0 when absent)."""
        starts = self.meta.get("window_starts")
        if starts is None:
            return [0] * self.n_layers
        if (not isinstance(starts, list) or len(starts) != self.n_layers
                or any(not isinstance(s, int) or isinstance(s, bool) or s < 0 for s in starts)):
            raise WireError(f"wire header meta window_starts {starts!r} is not one non-negative int per layer "
                            f"({self.n_layers})")
        return list(starts)

    @property
    def raw_bytes(self) -> int:
        elt = torch.empty((), dtype=self.dtype).element_size()
        return sum(2 * h * s * d * elt for h, s, d in self.shapes)


@dataclass
class Frame:
    layer: int
    payload: bytes | memoryview  # a read-only view into a bytes container (read_frame), else bytes
    crc: int = -1  # the payload's CRC32, verified when read (each side computes it once, not again)


# ---- writing --------------------------------------------------------------------------------

def header_bytes(header: WireHeader) -> bytes:
    body = json.dumps(header.to_json(), sort_keys=True, separators=(",", ":")).encode()
    pre = _PREAMBLE.pack(MAGIC, VERSION, 0, len(body))
    return pre + body + _CRC.pack(zlib.crc32(pre + body))


def frame_bytes(layer: int, payload: Buffer, crc: int | None = None) -> bytes:
    """One frame: head (magic, layer, length, payload CRC), the head's CRC, the payload. ``crc``: the
    payload's CRC32 when the caller already has it (a CRC costs as much as a copy: take it once)."""
    return b"".join(_frame_parts(layer, [payload], zlib.crc32(payload) if crc is None else crc))


def _frame_parts(layer: int, parts: Sequence[Buffer], crc: int) -> list[Buffer]:
    """A frame as buffers to concatenate: its head, the head's CRC, the payload's parts (not copied)."""
    head = _FRAME_HEAD.pack(FRAME_MAGIC, layer, sum(memoryview(p).nbytes for p in parts), crc)
    return [head, _CRC.pack(zlib.crc32(head)), *parts]


def _crc(parts: Buffer | Sequence[Buffer]) -> int:
    """The CRC32 of a buffer, or of a list of buffers concatenated."""
    if not isinstance(parts, (list, tuple)):
        return zlib.crc32(parts)
    crc = 0
    for part in parts:
        crc = zlib.crc32(part, crc)
    return crc


def trailer_bytes(payload_crcs: Sequence[int]) -> bytes:
    return _TRAILER.pack(END_MAGIC, len(payload_crcs), _crc_of_crcs(payload_crcs))


def _crc_of_crcs(crcs: Sequence[int]) -> int:
    return zlib.crc32(b"".join(_CRC.pack(c) for c in crcs))


def make_header(codec: Pipeline, layers: Sequence[LayerKV], meta: dict[str, Any] | None = None) -> WireHeader:
    if not layers:
        raise KvwireError("cannot encode a cache with no layers")
    dtype = layers[0].k.dtype
    if dtype not in DTYPE_NAMES:
        raise KvwireError(f"KV dtype {dtype} not supported (float16, bfloat16, float32)")
    for i, layer in enumerate(layers):
        if layer.k.dtype != dtype or layer.v.dtype != dtype:
            raise KvwireError(f"layer {i} dtype {layer.k.dtype}/{layer.v.dtype} differs from layer 0 ({dtype})")
    return WireHeader(codec=codec.name, params=codec.params, dtype=dtype,
                      shapes=[tuple(layer.k.shape) for layer in layers], meta=dict(meta or {}))


def _pieces(codec: Pipeline, layers: Sequence[LayerKV], meta: dict[str, Any] | None,
            stats: Sequence[dict[str, torch.Tensor]] | None) -> Iterator[list[Buffer]]:
    """The container as lists of buffers: the header, each frame (encoded lazily; its payload parts
    may be views of the layer's tensors, valid until the next piece is asked for), the trailer."""
    header = make_header(codec, layers, meta)
    yield [header_bytes(header)]
    crcs = []
    for i, layer in enumerate(layers):
        parts = codec.encode_parts(layer, header.context(i, stats[i] if stats else None))
        crcs.append(_crc(parts))
        yield _frame_parts(i, parts, crcs[-1])
    yield [trailer_bytes(crcs)]


def iter_encode(codec: Pipeline, layers: Sequence[LayerKV], meta: dict[str, Any] | None = None,
                stats: Sequence[dict[str, torch.Tensor]] | None = None) -> Iterator[bytes]:
    """Yield the container piece by piece: header, one frame per layer (encoded lazily), trailer."""
    for piece in _pieces(codec, layers, meta, stats):
        yield piece[0] if len(piece) == 1 else b"".join(piece)


def encode(codec: Pipeline, layers: Sequence[LayerKV], meta: dict[str, Any] | None = None,
           stats: Sequence[dict[str, torch.Tensor]] | None = None) -> bytes:
    """Encode a whole cache (list of per-layer K/V) into one wire container. Every piece is joined
    once, at the end (an identity payload's bytes go from the tensors to the container in one copy),
    and the payload CRCs run on several threads (``crc32_many``)."""
    header = make_header(codec, layers, meta)
    payloads = [codec.encode_parts(layer, header.context(i, stats[i] if stats else None))
                for i, layer in enumerate(layers)]
    crcs = crc32_many(payloads)
    pieces = [header_bytes(header)]
    for i, (parts, crc) in enumerate(zip(payloads, crcs)):
        pieces += _frame_parts(i, parts, crc)
    pieces.append(trailer_bytes(crcs))
    return b"".join(pieces)


# ---- reading --------------------------------------------------------------------------------

def read_header(data: bytes | memoryview, limits: WireLimits = DEFAULT_LIMITS) -> tuple[WireHeader, int]:
    """Parse and verify the header against ``limits``; return it and the offset of the first frame."""
    view = memoryview(data)
    if len(view) < _PREAMBLE.size:
        raise WireError(f"truncated: {len(view)} bytes is shorter than the {_PREAMBLE.size}-byte preamble")
    magic, version, _flags, hlen = _PREAMBLE.unpack_from(view, 0)
    if magic != MAGIC:
        raise WireError(f"not a kvwire container: magic {bytes(magic)!r}, expected {MAGIC!r}")
    if version != VERSION:
        raise WireError(f"unsupported wire version {version} (this kvwire reads version {VERSION})")
    check_header_length(hlen, limits)
    end = _PREAMBLE.size + hlen
    if len(view) < end + _CRC.size:
        raise WireError(f"truncated header: need {end + _CRC.size} bytes, have {len(view)}")
    (crc,) = _CRC.unpack_from(view, end)
    if zlib.crc32(view[:end]) != crc:
        raise WireError("header checksum mismatch: the header is corrupted")
    return WireHeader.from_json(parse_header_json(bytes(view[_PREAMBLE.size:end]), limits), limits), end + _CRC.size


def check_header_length(hlen: int, limits: WireLimits = DEFAULT_LIMITS) -> None:
    if hlen > limits.max_header_bytes:
        raise WireError(f"header of {hlen} bytes is longer than the limit max_header_bytes={limits.max_header_bytes}")


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not a JSON number kvwire accepts")


def parse_header_json(text: bytes, limits: WireLimits = DEFAULT_LIMITS) -> Any:
    """The header's JSON, refused when nested deeper than ``max_json_depth`` (checked before parsing:
    the parser recurses) or holding NaN/Infinity or a number that overflows a float."""
    depth = json_depth(text, limits.max_json_depth)
    if depth > limits.max_json_depth:
        raise WireError(f"header JSON nests deeper than the limit max_json_depth={limits.max_json_depth}")
    try:
        obj = json.loads(text.decode(), parse_constant=_no_constant, parse_float=_finite_float)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise WireError(f"header JSON unreadable: {exc}") from None
    return obj


def _finite_float(text: str) -> float:
    x = float(text)
    if x != x or x in (float("inf"), float("-inf")):
        raise ValueError(f"number {text[:40]} overflows a float")
    return x


def read_frame(view: memoryview, offset: int, expect_layer: int, limit: int | None = None,
               views: bool = False) -> tuple[Frame, int]:
    """Parse and verify one frame at ``offset``; return it and the next offset. ``limit``: the most
    payload bytes the frame's layer may hold (``payload_limit``). ``views``: a read-only ``view`` (of
    bytes) gives the payload as a view into it rather than a copy."""
    layer, payload, payload_crc, end = _frame_at(view, offset, expect_layer, limit)
    _check_payload_crcs([(layer, payload, payload_crc)])
    return _frame(view, layer, payload, payload_crc, views), end


def _frame_at(view: memoryview, offset: int, expect_layer: int,
              limit: int | None) -> tuple[int, memoryview, int, int]:
    """The frame at ``offset`` with its head verified (magic, CRC, order, length within ``limit`` and
    within the data): its layer, payload view, declared payload CRC (not yet checked) and end."""
    head_end = offset + _FRAME_HEAD.size + _CRC.size
    if len(view) < head_end:
        raise WireError(f"truncated: frame {expect_layer} header missing at byte {offset}")
    magic, layer, n, payload_crc = _FRAME_HEAD.unpack_from(view, offset)
    (head_crc,) = _CRC.unpack_from(view, offset + _FRAME_HEAD.size)
    if zlib.crc32(view[offset:offset + _FRAME_HEAD.size]) != head_crc or magic != FRAME_MAGIC:
        raise WireError(f"frame {expect_layer} header corrupted at byte {offset}")
    if layer != expect_layer:
        raise WireError(f"frame out of order: got layer {layer}, expected {expect_layer}")
    if limit is not None and n > limit:
        raise WireError(f"frame {layer} claims {n} payload bytes, more than its layer's limit of {limit}")
    if len(view) < head_end + n:
        raise WireError(f"truncated: frame {layer} needs {n} payload bytes, only {len(view) - head_end} left")
    return layer, view[head_end:head_end + n], payload_crc, head_end + n


def _frame(view: memoryview, layer: int, payload: memoryview, crc: int, views: bool) -> Frame:
    # a read-only container (bytes) cannot change after its check: its frames may be views into it; a
    # writable one (a receive buffer) could, so its payload is copied out, as verified
    return Frame(layer, payload if views and view.readonly else bytes(payload), crc)


def _check_payload_crcs(found: Sequence[tuple[int, memoryview, int]]) -> None:
    """Each (layer, payload, declared CRC) checked; the first mismatch, in order, is the error."""
    crcs = crc32_many([payload for _, payload, _ in found])
    for (layer, _, declared), crc in zip(found, crcs):
        if crc != declared:
            raise WireError(f"frame {layer} payload checksum mismatch: the payload is corrupted")


# Checksums of several buffers run on up to torch.get_num_threads() threads (zlib.crc32 releases the
# GIL): a CRC32 runs at ~4 GB/s on one core, slower than a copy, so one core's CRC would bound the
# container. Below _PARALLEL_CRC_BYTES a thread hand-off costs more than it saves.
_PARALLEL_CRC_BYTES = 2 << 20
_crc_pool: ThreadPoolExecutor | None = None


def _forget_crc_pool() -> None:  # a forked child inherits the pool object but not its threads
    global _crc_pool
    _crc_pool = None


os.register_at_fork(after_in_child=_forget_crc_pool)


def crc32_many(buffers: Sequence[Buffer | Sequence[Buffer]]) -> list[int]:
    """The CRC32 of each buffer (or of each list of buffers, concatenated), the buffers split into
    contiguous groups of about equal bytes, one group per thread (torch.get_num_threads(), the
    threads a codec may use)."""
    global _crc_pool
    sizes = [memoryview(b).nbytes if not isinstance(b, (list, tuple)) else sum(memoryview(p).nbytes for p in b)
             for b in buffers]
    threads = min(torch.get_num_threads(), len(buffers), os.cpu_count() or 1)
    if threads < 2 or sum(sizes) < _PARALLEL_CRC_BYTES:
        return [_crc(b) for b in buffers]
    groups, start, acc, total = [], 0, 0, sum(sizes)
    for i, n in enumerate(sizes):
        acc += n
        if acc * threads >= total * (len(groups) + 1) or i == len(sizes) - 1:
            groups.append((start, i + 1))
            start = i + 1
    if _crc_pool is None or _crc_pool._max_workers < threads - 1:
        _crc_pool = ThreadPoolExecutor(max_workers=max(threads - 1, 1), thread_name_prefix="kvwire-crc")

    def run(group: tuple[int, int]) -> list[int]:
        return [_crc(b) for b in buffers[group[0]:group[1]]]

    futures = [_crc_pool.submit(run, g) for g in groups[1:]]
    out = run(groups[0])
    for f in futures:
        out += f.result()
    return out


def frame_limit(header: WireHeader, layer: int) -> int:
    """The most payload bytes layer ``layer`` of this (validated) header may carry."""
    return payload_limit(header.shapes[layer], torch.empty((), dtype=header.dtype).element_size())


def read_frames(data: bytes | memoryview, limits: WireLimits = DEFAULT_LIMITS,
                views: bool = False) -> tuple[WireHeader, list[Frame]]:
    """Verify the whole container (header, every frame, trailer) and return its parts. ``views``: the
    payloads of a read-only container as views into it (``read_frame``), not copies."""
    view = memoryview(data)
    header, offset = read_header(view, limits)
    found, broken = [], None
    for i in range(header.n_layers):  # every head first, then the payload CRCs, on several threads
        try:
            layer, payload, crc, offset = _frame_at(view, offset, i, frame_limit(header, i))
        except WireError as exc:  # raised after the CRCs of the frames before it, as frame by frame
            broken = exc
            break
        found.append((layer, payload, crc))
    _check_payload_crcs(found)
    if broken is not None:
        raise broken
    frames = [_frame(view, *f, views) for f in found]
    if len(view) < offset + _TRAILER.size:
        raise WireError("truncated: trailer missing")
    magic, count, crc = _TRAILER.unpack_from(view, offset)
    if magic != END_MAGIC:
        raise WireError(f"trailer corrupted at byte {offset}")
    if count != len(frames) or crc != _crc_of_crcs([f.crc for f in frames]):
        raise WireError("trailer does not match the frames (count or checksum)")
    if len(view) != offset + _TRAILER.size:
        raise WireError(f"{len(view) - offset - _TRAILER.size} unexpected byte(s) after the trailer")
    return header, frames


def build_codec(header: WireHeader) -> Pipeline:
    """The codec a (validated) header names, or a ``WireError``: its name and params are the sender's."""
    try:
        return build(header.codec, header.params)
    except KvwireError as exc:
        raise WireError(f"container names a codec this kvwire cannot build: {exc}") from exc
    except Exception as exc:  # noqa: BLE001 -- hostile params must never escape as a foreign error
        raise WireError(f"container's codec {header.codec!r:.80} with its params cannot be built: "
                        f"{type(exc).__name__}: {exc}") from None


def decode_frame(codec: Pipeline, header: WireHeader, frame: Frame) -> LayerKV:
    """Decode one verified frame and check what came out against the header: whatever a crafted
    payload (with valid checksums) makes a codec do, the caller sees a ``WireError`` or a layer of the
    declared heads, head_dim and dtype with at most the declared tokens."""
    ctx = header.context(frame.layer)
    try:
        kv = codec.decode_layer(frame.payload, ctx)
    except KvwireError as exc:
        raise WireError(f"frame {frame.layer} ({header.codec}): {exc}") from exc
    except (Exception, RecursionError, MemoryError) as exc:  # noqa: BLE001 -- see above
        raise WireError(f"frame {frame.layer} ({header.codec}) could not be decoded: {type(exc).__name__}: "
                        f"{str(exc)[:300]}") from None
    h, s, d = ctx.shape
    ok = (isinstance(kv, LayerKV) and kv.k.dim() == 3 and kv.k.shape == kv.v.shape
          and kv.k.shape[0] == h and kv.k.shape[2] == d and kv.k.shape[1] <= s
          and kv.k.dtype == header.dtype and kv.v.dtype == header.dtype)
    if ok and kv.positions is not None:
        ok = kv.positions.dim() == 1 and kv.positions.numel() == kv.k.shape[1]
    if not ok:
        got = (tuple(kv.k.shape), kv.k.dtype) if isinstance(kv, LayerKV) else type(kv).__name__
        raise WireError(f"frame {frame.layer} ({header.codec}) decoded to {got}, not a layer of "
                        f"the declared shape {list(ctx.shape)} and dtype {header.dtype}")
    return kv


def decode(data: bytes | memoryview, limits: WireLimits = DEFAULT_LIMITS) -> tuple[WireHeader, list[LayerKV]]:
    """Verify and decode a container into per-layer K/V (original dtype and layout)."""
    header, frames = read_frames(data, limits, views=True)
    codec = build_codec(header)
    return header, [decode_frame(codec, header, f) for f in frames]


def inspect(data: bytes | memoryview) -> dict[str, Any]:
    """Header, frame sizes and checksum status, without decoding payloads."""
    view = memoryview(data)
    report: dict[str, Any] = {"total_bytes": len(view)}
    try:
        header, frames = read_frames(view, views=True)
    except WireError as exc:
        report["checksum"] = f"FAILED: {exc}"
        try:
            header, _ = read_header(view)
            report["header"] = header.to_json()
        except WireError:
            pass
        return report
    payload = sum(len(f.payload) for f in frames)
    report.update(
        header=header.to_json(),
        checksum="ok",
        raw_bytes=header.raw_bytes,
        ratio=header.raw_bytes / len(view),
        payload_bytes=payload,
        overhead_bytes=len(view) - payload,
        frames=[{"layer": f.layer, "bytes": len(f.payload)} for f in frames],
    )
    return report
