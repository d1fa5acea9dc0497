"""The per-token int8 / int4 / FP8 E4M3 kernels (``token_quant.py``) behind the ``KernelCodec``
interface: their payloads are equal-length slots, one per layer."""

from __future__ import annotations

import torch

from . import decode_cache, encode_cache
from .base import GpuPayloads, KernelCodec, Stats, register_kernel
from .eager import decode_cache_eager, encode_cache_eager


@register_kernel
class TokenQuantKernel(KernelCodec):
    """int8 (symmetric), int4 (min-max) and FP8 E4M3, per token, fp16 scales: each codec's defaults."""

    names = ("int8", "int4", "fp8_e4m3")

    def encode(self, kv: torch.Tensor, stats: Stats = None, *, out: torch.Tensor | None = None,
               check: bool = True) -> GpuPayloads:
        return GpuPayloads.equal_slots(encode_cache(self.name, kv, out=out, check=check), kv.shape[0])

    def decode(self, payloads: GpuPayloads, shape, dtype, *, out: torch.Tensor | None = None,
               check: bool = True) -> torch.Tensor:
        return decode_cache(self.name, payloads.data, tuple(shape), dtype, out=out, check=check)

    def encode_eager(self, kv: torch.Tensor, stats: Stats = None) -> GpuPayloads:
        return GpuPayloads.equal_slots(encode_cache_eager(self.name, kv), kv.shape[0])

    def decode_eager(self, payloads: GpuPayloads, shape, dtype) -> torch.Tensor:
        return decode_cache_eager(self.name, payloads.data, tuple(shape), dtype)
