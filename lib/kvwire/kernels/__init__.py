"""GPU implementations of kvwire's codecs, behind the codecs' own names and parameters (a device
switch, not a fork): every kernel writes the CPU codec's payload bytes.

``base`` is the interface (``KernelCodec``) and the registry (``kernel_for``, ``supported``,
``kernel_names``), filled by the families: one subpackage per codec family (``token``, ``granular``,
``kivi``, ...), each with ``kernel.py`` (its ``@register_kernel`` classes and host-side launches),
``jit.py`` (its ``@triton.jit`` functions) and ``eager.py`` (its eager-PyTorch baseline), plus
``layout.py`` / ``select.py`` where it needs them. Shared modules: ``launch`` (interpreter switch,
grid and compile helpers), ``jit`` (Triton rounding helpers), ``layout`` (section tables),
``bytepack`` / ``wordpack`` (bit packing), ``reference`` (the CPU codecs in the kernels' contract,
conformance), ``dispatch`` (one codec on either device: kernel for a CUDA tensor, CPU codec
otherwise), ``bench`` (timing, tensors in, data frames out) and ``nvcomp``.

A cache is one contiguous tensor ``[layers, 2, kv_heads, seq, head_dim]`` (K then V per layer), on a
CUDA device -- or on the CPU under Triton's interpreter (``TRITON_INTERPRET=1``, set before
``triton`` is imported), which is how CI checks the kernels' logic without a GPU.
"""

from .base import GpuPayloads, KernelCodec, kernel_for, kernel_names, supported
from .dispatch import decode_layers, encode_layers, fixed_size_codecs, layer_payload_bytes

__all__ = ["GpuPayloads", "KernelCodec", "decode_layers", "encode_layers", "fixed_size_codecs", "kernel_for",
           "kernel_names", "layer_payload_bytes", "supported"]
