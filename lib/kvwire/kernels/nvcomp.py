"""nvCOMP as an optional lossless GPU stage after a kernel codec: the payload bytes never leave the device.

NVIDIA's nvCOMP (PyPI ``nvidia-nvcomp-cu13``, which pulls ``nvidia-libnvcomp-cu13``; the device machine
has no network, so the two wheels travel with the working tree) compresses a device buffer with one of
its GPU algorithms. After quantization a payload is mostly codes with skewed histograms (near-zero
codes dominate), so an entropy coder (ANS) or a bit-plane coder (Bitcomp) can buy ratio on top of
the codec; LZ-class coders (zstd, LZ4) find little repetition in codes. ``bench.nvcomp_rows``
measures what each algorithm gains and costs on each kernel codec's payload.

The stage is lossless (``decompress(compress(x)) == x``, checked on every measured payload). Its
bitstream is nvCOMP's native format (chunked, with nvCOMP's header), so it is a GPU-to-GPU stage:
the CPU codecs cannot read it, and a CPU sender would use ``zstd`` instead (``codecs/zstd.py``).
"""

from __future__ import annotations

import importlib.util

import torch

from ..errors import CodecError, KVError
from .base import GpuPayloads

ALGORITHMS = ("ANS", "Bitcomp", "Zstd", "LZ4", "Cascaded", "GDeflate")


def available() -> bool:
    """Whether nvCOMP's Python package is importable here (it needs a CUDA device to run)."""
    return importlib.util.find_spec("nvidia") is not None and importlib.util.find_spec("nvidia.nvcomp") is not None


def version() -> str:
    from nvidia import nvcomp

    return str(getattr(nvcomp, "__version__", "?"))


class NvcompStage:
    """One nvCOMP algorithm on the current CUDA stream (so CUDA-event timings include it)."""

    def __init__(self, algorithm: str) -> None:
        if algorithm not in ALGORITHMS:
            raise CodecError(f"unknown nvCOMP algorithm {algorithm!r}; known: {', '.join(ALGORITHMS)}")
        if not available():
            raise KVError("the nvCOMP stage needs the nvidia-nvcomp-cu13 package (pip install nvidia-nvcomp-cu13)")
        if not torch.cuda.is_available():
            raise KVError("the nvCOMP stage runs on a CUDA device and this machine has none")
        from nvidia import nvcomp

        self.algorithm = algorithm
        self._nvcomp = nvcomp
        # nvCOMP's default 64 KB chunks; passing uncomp_chunk_size explicitly gave "invalid argument" on
        # an H200 (nvCOMP 6.0.0), the default did not
        self._codec = nvcomp.Codec(algorithm=algorithm, cuda_stream=torch.cuda.current_stream().cuda_stream)

    def compress(self, data: torch.Tensor) -> torch.Tensor:
        """A 1-D uint8 device tensor -> its nvCOMP bitstream (a uint8 device tensor)."""
        if data.dtype != torch.uint8 or data.dim() != 1 or data.device.type != "cuda":
            raise CodecError(f"nvCOMP compresses 1-D uint8 CUDA tensors, not {data.dtype} {list(data.shape)} "
                             f"on {data.device}")
        return _as_tensor(self._codec.encode(self._nvcomp.as_array(_CudaArray(_owned(data)))))

    def decompress(self, comp: torch.Tensor) -> torch.Tensor:
        return _as_tensor(self._codec.decode(self._nvcomp.as_array(_CudaArray(_owned(comp)))))

    def compress_payloads(self, payloads: GpuPayloads) -> GpuPayloads:
        """Every layer's payload compressed on its own (a receiver decodes layer by layer as frames arrive)."""
        parts = [self.compress(payloads.layer(i).contiguous()) for i in range(payloads.n_layers)]
        offsets = [0]
        for p in parts:
            offsets.append(offsets[-1] + p.numel())
        return GpuPayloads(torch.cat(parts) if parts else payloads.data[:0], tuple(offsets))


class _CudaArray:
    """A tensor seen through ``__cuda_array_interface__`` only (nvCOMP 6.0's DLPack import of torch
    tensors ended in heap corruption on the device machine; the interface is plain pointers)."""

    def __init__(self, t: torch.Tensor) -> None:
        self._t = t  # keeps the memory alive while nvCOMP reads it
        self.__cuda_array_interface__ = t.__cuda_array_interface__


def _owned(t: torch.Tensor) -> torch.Tensor:
    # nvCOMP 6.0 refused a uint8 view of a bf16 cache ("Buffer is not CUDA-accessible") on an H200:
    # hand it a tensor that owns its uint8 storage
    return t if t._base is None and t.storage_offset() == 0 else t.clone()


def _as_tensor(arr) -> torch.Tensor:
    """An nvCOMP array (device) as a flat uint8 torch tensor, without a copy.

    An encoded array's exported view spans its whole allocation (nvCOMP 6.0: 1.48 MB exported for a
    290 KB bitstream, measured), so it is cut to ``buffer_size``; a decoded one may come back as
    int8 or uint32 and is viewed as bytes."""
    t = torch.as_tensor(arr, device="cuda").reshape(-1)  # via __cuda_array_interface__ (see _CudaArray)
    t = t.view(torch.uint8) if t.dtype != torch.uint8 else t
    return t[:int(arr.buffer_size)]
