"""zstd: lossless Zstandard compression of whatever bytes the previous stage produced.

Alone (``zstd``) it compresses the raw K/V bytes; after a lossy codec (``int8+zstd``)
it squeezes the codes and scales. Zstandard: Collet & Kucherawy, RFC 8878.
"""

from __future__ import annotations

import zstandard

from ..errors import WireError
from .base import ByteStage, Param
from .registry import register


@register
class Zstd(ByteStage):
    name = "zstd"
    summary = "lossless Zstandard stage (composable after any codec)"
    PARAMS = {
        "level": Param(int, 3, "compression level (1 fastest .. 19 smallest)", minimum=1, maximum=22),
        "threads": Param(int, 0, "zstd worker threads (0 = single-threaded, deterministic output)", minimum=0,
                         maximum=256),
    }

    def compress(self, data: bytes) -> bytes:
        cctx = zstandard.ZstdCompressor(level=self.params["level"], threads=self.params["threads"],
                                        write_content_size=True)
        return cctx.compress(data)

    def decompress(self, data: bytes, max_size: int | None = None) -> bytes:
        # hostile bytes: the frame must declare its size (this encoder always writes it), within the
        # layer's limit, and end exactly where the payload does, all checked before decompressing
        # into a buffer of exactly that size (a frame that holds more fails instead of growing it)
        data = memoryview(data)  # a view into the container: read in place, not copied
        if data[:4] != _MAGIC:
            raise WireError(f"zstd stage: not a zstd frame (magic {bytes(data[:4])!r})")
        try:
            declared = zstandard.frame_content_size(data)
        except zstandard.ZstdError as exc:
            raise WireError(f"zstd stage: corrupted frame header ({exc})") from None
        if declared < 0:
            raise WireError("zstd stage: the frame does not declare its content size")
        if max_size is not None and declared > max_size:
            raise WireError(f"zstd stage: the frame declares {declared} bytes, more than the layer's limit of {max_size}")
        end = _frame_end(data)
        if end != len(data):
            raise WireError(f"zstd stage: {len(data) - end} unexpected byte(s) after the frame")
        try:
            out = zstandard.ZstdDecompressor().decompress(data, max_output_size=max(declared, 1))
        except zstandard.ZstdError as exc:
            raise WireError(f"zstd stage: corrupted payload ({exc})") from None
        if len(out) != declared:
            raise WireError(f"zstd stage: the frame declares {declared} bytes and holds {len(out)}")
        return out


_MAGIC = b"\x28\xb5\x2f\xfd"


def _frame_end(data: bytes) -> int:
    """Where the zstd frame starting at 0 ends: its header, every block (3-byte block headers: last
    flag, type, size; an RLE block stores one byte) and the optional 4-byte checksum (RFC 8878 3.1.1)."""
    try:
        pos = zstandard.frame_header_size(data)
    except zstandard.ZstdError as exc:
        raise WireError(f"zstd stage: corrupted frame header ({exc})") from None
    checksum = 4 if data[4] & 0x04 else 0
    while True:
        if pos + 3 > len(data):
            raise WireError("zstd stage: truncated payload (a block header is missing)")
        head = int.from_bytes(data[pos:pos + 3], "little")
        kind, size = (head >> 1) & 3, head >> 3
        if kind == 3:
            raise WireError("zstd stage: corrupted payload (reserved block type)")
        pos += 3 + (1 if kind == 1 else size)
        if head & 1:
            break
    if pos + checksum > len(data):
        raise WireError("zstd stage: truncated payload (the frame ends past the payload)")
    return pos + checksum
