"""One codec on either device, the same bytes: a CUDA tensor goes through the codec's GPU kernel, a
CPU tensor through the CPU codec (``reference``). What ``p2p`` sends over NCCL or gloo.

Only codecs whose every layer's payload length follows from the shape (``KernelCodec.layer_bytes``)
are offered: a receiver posts each layer's buffer before the bytes arrive, so no length travels.
"""

from __future__ import annotations

import functools

import torch

from ..codecs import build
from ..codecs.base import Pipeline
from ..errors import CodecError
from .base import GpuPayloads, KernelCodec, kernel_for, kernel_names, supported
from .reference import cpu_decoded, cpu_payloads

_PROBE_SHAPE = (1, 8, 64)  # (kv_heads, seq, head_dim) any kernel accepts, to ask whether sizes are fixed


@functools.lru_cache(maxsize=1)
def fixed_size_codecs() -> tuple[str, ...]:
    """Codec names (default parameters) whose kernel fixes every layer's payload length by the shape
    (asked once: p2p asks per layer, on the sender's hot path)."""
    return tuple(n for n in kernel_names() if supported(n) and kernel_for(n).layer_bytes(_PROBE_SHAPE) is not None)


@functools.lru_cache(maxsize=None)
def _fixed_size_kernel(name: str) -> KernelCodec:
    if name not in fixed_size_codecs():
        raise CodecError(f"codec {name!r} has no GPU kernel with payloads of a length fixed by the shape; "
                         f"those are {', '.join(fixed_size_codecs())}")
    return kernel_for(name)


def layer_payload_bytes(name: str, shape: tuple[int, ...]) -> int:
    """Bytes of one layer's payload for a cache of ``shape`` (its last three: kv_heads, seq, head_dim)."""
    return _fixed_size_kernel(name).layer_bytes(tuple(int(x) for x in shape[-3:]))


class _CpuCodec:
    """The CPU codec behind a kernel's ``encode`` / ``decode`` (its ``Pipeline``, layer by layer)."""

    def __init__(self, codec: Pipeline) -> None:
        self.codec = codec

    def encode(self, kv: torch.Tensor, *, check: bool = True) -> GpuPayloads:
        return GpuPayloads.from_bytes(cpu_payloads(self.codec, kv), kv.device)

    def decode(self, payloads: GpuPayloads, shape, dtype: torch.dtype) -> torch.Tensor:
        layers = cpu_decoded(self.codec, payloads.to_bytes(), tuple(shape), dtype)
        return torch.stack([torch.stack([x.k, x.v]) for x in layers])


def codec_on(name: str, tensor: torch.Tensor) -> KernelCodec | _CpuCodec:
    """THE device switch: codec ``name`` (default parameters) for data on ``tensor``'s device."""
    kernel = _fixed_size_kernel(name)
    return kernel if tensor.is_cuda else _CpuCodec(build(name))


def encode_layers(name: str, kv: torch.Tensor) -> torch.Tensor:
    """``kv`` [layers, 2, kv_heads, seq, head_dim] as every layer's payload back to back (uint8, on
    ``kv``'s device; no finite check on the GPU: the sender's hot path)."""
    return codec_on(name, kv).encode(kv, check=False).data


def decode_layers(name: str, payload: torch.Tensor, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """``encode_layers``' bytes back to a cache of ``shape``; each layer's section table is checked."""
    return codec_on(name, payload).decode(GpuPayloads.equal_slots(payload, shape[0]), tuple(shape), dtype)
