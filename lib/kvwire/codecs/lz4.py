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
        # decompress_chunk, not LZ4FrameDecompressor.decompress: that copies a memoryview (a payload
        # read in place from the container) to bytes first
        dctx = lz4.frame.create_decompression_context()
        try:  # one byte past the limit says the frame holds more than the layer may
            out, read, eof = lz4.frame.decompress_chunk(dctx, data, max_length=-1 if max_size is None else max_size + 1)
        except (RuntimeError, ValueError) as exc:
            raise WireError(f"lz4 stage: corrupted payload ({exc})") from exc
        if max_size is not None and len(out) > max_size:
            raise WireError(f"lz4 stage: the frame holds more than the layer's limit of {max_size} bytes")
        # lz4.frame.decompress() silently ignores bytes after the frame and returns what it has of a
        # truncated one: refuse both
        n = memoryview(data).nbytes
        if not eof:
            raise WireError(f"lz4 stage: truncated payload ({n} bytes end inside the frame)")
        if read < n:
            raise WireError(f"lz4 stage: {n - read} unexpected byte(s) after the frame")
        return out
