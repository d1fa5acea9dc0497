"""``identity`` on the device: every layer's payload is the CPU codec's ``pack_sections([K bytes, V
bytes])``, written with device copies (no Triton launch: a copy is this codec's whole cost, and the
copy engine is the roofline the other kernels are measured against)."""

from __future__ import annotations

import torch

from ...codecs.base import section_header
from ...errors import WireError
from ..base import GpuPayloads, KernelCodec, Stats, check_cache, register_kernel
from ..launch import header_tensor


@register_kernel
class IdentityKernel(KernelCodec):
    """Raw K and V, any float dtype the cache has (the codec has no parameters)."""

    names = ("identity",)

    @staticmethod
    def _header(shape: tuple[int, ...], itemsize: int) -> bytes:
        _, _, h, s, d = shape
        return section_header([h * s * d * itemsize] * 2)

    def encode(self, kv: torch.Tensor, stats: Stats = None, *, check: bool = True) -> GpuPayloads:
        """Lossless: NaN/Inf travel as they are, as on the CPU (``check`` has nothing to refuse)."""
        n = check_cache(kv, "identity kernel")[0]
        head = self._header(tuple(kv.shape), kv.element_size())
        raw = kv.contiguous().view(torch.uint8).view(n, -1)  # per layer: K's bytes, then V's
        out = torch.empty(n, len(head) + raw.shape[1], dtype=torch.uint8, device=kv.device)
        out[:, :len(head)] = header_tensor(head, str(kv.device))
        out[:, len(head):] = raw
        return GpuPayloads.equal_slots(out.view(-1), n)

    def decode(self, payloads: GpuPayloads, shape, dtype: torch.dtype, *, check: bool = True) -> torch.Tensor:
        itemsize = torch.empty((), dtype=dtype).element_size()
        head = self._header(tuple(shape), itemsize)
        n = shape[0]
        per = payloads.data.view(n, -1) if n else payloads.data.view(0, len(head))
        if per.shape[1] != len(head) + 2 * itemsize * shape[2] * shape[3] * shape[4]:
            raise WireError(f"identity payloads of {per.shape[1]} bytes per layer for shape {list(shape)} {dtype}")
        if check and not bool((per[:, :len(head)] == header_tensor(head, str(per.device))).all()):
            raise WireError(f"codec {self.name!r}: a payload's section table does not match shape {list(shape)}")
        return per[:, len(head):].contiguous().view(dtype).view(tuple(shape))

    def encode_eager(self, kv: torch.Tensor, stats: Stats = None) -> GpuPayloads:
        return self.encode(kv, stats, check=False)  # the copy is already the eager version

    def decode_eager(self, payloads: GpuPayloads, shape, dtype: torch.dtype) -> torch.Tensor:
        return self.decode(payloads, shape, dtype, check=False)
