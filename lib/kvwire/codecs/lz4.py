"""lz4: lossless LZ4 frame compression of whatever bytes the previous stage produced.

Alone (``lz4``) it compresses the raw K/V bytes; after a lossy codec (``int4+lz4``) it squeezes the
codes and scales. Much faster than zstd, usually a lower ratio. Format: the LZ4 Frame format
(Collet, lz4/doc/lz4_Frame_format.md) via the ``lz4`` package's ``lz4.frame``, with the content size
and a content checksum (xxHash32) in the frame, so a corrupted payload fails loudly (``WireError``)
rather than decompressing to wrong bytes.
"""

from __future__ import annotations

import lz4.frame

from ..errors import WireError
from .base import ByteStage, Param
from .registry import register


@register
class Lz4(ByteStage):
    name = "lz4"
    summary = "lossless LZ4 frame stage (fast; composable after any codec)"
    PARAMS = {
        "level": Param(int, 0, "compression level: 0-2 fast mode, 3-16 high-compression (slower)",
                       minimum=0, maximum=16),
    }

    def compress(self, data: bytes) -> bytes:
        return lz4.frame.compress(data, compression_level=self.params["level"],
                                  store_size=True, content_checksum=True)

    def decompress(self, data: bytes, max_size: int | None = None) -> bytes:
        dctx = lz4.frame.LZ4FrameDecompressor()
        try:  # one byte past the limit says the frame holds more than the layer may
            out = dctx.decompress(data, max_length=-1 if max_size is None else max_size + 1)
        except (RuntimeError, ValueError) as exc:
            raise WireError(f"lz4 stage: corrupted payload ({exc})") from exc
        if max_size is not None and len(out) > max_size:
            raise WireError(f"lz4 stage: the frame holds more than the layer's limit of {max_size} bytes")
        # lz4.frame.decompress() silently ignores bytes after the frame and returns what it has of a
        # truncated one: refuse both
        if not dctx.eof:
            raise WireError(f"lz4 stage: truncated payload ({len(data)} bytes end inside the frame)")
        if dctx.unused_data:
            raise WireError(f"lz4 stage: {len(dctx.unused_data)} unexpected byte(s) after the frame")
        return out
