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
        "threads": Param(int, 0, "zstd worker threads (0 = single-threaded, deterministic output)", minimum=0),
    }

    def compress(self, data: bytes) -> bytes:
        cctx = zstandard.ZstdCompressor(level=self.params["level"], threads=self.params["threads"],
                                        write_content_size=True)
        return cctx.compress(data)

    def decompress(self, data: bytes) -> bytes:
        try:
            return zstandard.ZstdDecompressor().decompress(bytes(data))
        except zstandard.ZstdError as exc:
            raise WireError(f"zstd stage: corrupted payload ({exc})") from exc
