"""A GPU codec's encode or decode replayed from a CUDA graph: one launch and a few microseconds of host
time per call, whatever the codec launches inside.

At the study's cache sizes (one request's cache, 4-64 MB) the kernels finish in 10-60 us, while the
Python around their launches takes 80-440 us per call (bench/NOTES.md, issue 30's first profile): the
host, not the GPU, sets the pace. A serving system sends the same shapes again and again from the same
buffers (a static KV buffer, a posted receive buffer), which is what a CUDA graph needs: capture the call
once, then replay it.

    enc = graph_encode(kernel, kv)         # kv: the buffer the cache is written into, every time
    payloads = enc()                        # the same GpuPayloads object, refilled on every replay
    dec = graph_decode(kernel, payloads, tuple(kv.shape), kv.dtype)
    restored = dec()

What is bound: the input tensors' memory (write new data into them in place), the shapes, the codec
and its parameters, and the output buffers (allocated once, from the graph's pool: copy a result out
before the next replay if it must outlive it). A call that waits for the host inside (a host-side
entropy stage, a size read back from the device) cannot be captured: ``CodecError`` naming the codec.
Captured calls skip the codec's own checks (``check=False``: the finite-scale check reads a value back
to the host); ``GraphedCall.check`` runs the plain, checked call once where a caller wants them.

Without CUDA (CI's CPU, Triton's interpreter) there is no graph: the object calls the codec directly,
so the same code runs everywhere and the tests compare both paths.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from ..errors import CodecError
from .base import GpuPayloads, KernelCodec, Stats

WARMUP_CALLS = 2  # Triton compiles and caches its section tables on the first call: never inside a capture


class GraphedCall:
    """``fn`` captured once in a CUDA graph where the inputs live on a CUDA device (plain calls otherwise).

    ``__call__`` replays it and returns the result captured (the same tensors, refilled). ``what`` names
    the call in errors."""

    def __init__(self, fn: Callable[[], Any], *, cuda: bool, what: str,
                 checked: Callable[[], Any] | None = None) -> None:
        self.fn, self.what, self._checked = fn, what, checked
        self.graph: torch.cuda.CUDAGraph | None = None
        if not cuda:
            self.result = None
            return
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up on a side stream, as torch's capture recipe asks
            for _ in range(WARMUP_CALLS):
                fn()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph):
                self.result = fn()
        except CodecError:
            raise
        except Exception as exc:  # noqa: BLE001  torch raises RuntimeError subclasses for an illegal sync
            torch.cuda.synchronize()
            raise CodecError(f"{what} cannot be replayed from a CUDA graph: it waits for the host inside "
                             f"({type(exc).__name__}: {str(exc).splitlines()[0][:120]})") from None
        self.graph = graph

    @property
    def captured(self) -> bool:
        return self.graph is not None

    def __call__(self):
        if self.graph is None:
            return self.fn()
        self.graph.replay()
        return self.result

    def check(self):
        """The plain call with the codec's own checks (host syncs included), outside the graph."""
        return (self._checked or self.fn)()


def graph_encode(kernel: KernelCodec, kv: torch.Tensor, stats: Stats = None) -> GraphedCall:
    """``kernel.encode(kv, stats)`` bound to ``kv``'s memory; each call returns the refilled ``GpuPayloads``."""
    return GraphedCall(lambda: kernel.encode(kv, stats, check=False), cuda=kv.is_cuda,
                       what=f"the {kernel.name!r} encode", checked=lambda: kernel.encode(kv, stats))


def graph_decode(kernel: KernelCodec, payloads: GpuPayloads, shape: tuple[int, ...],
                 dtype: torch.dtype) -> GraphedCall:
    """``kernel.decode(payloads, shape, dtype)`` bound to ``payloads``' memory; each call returns the
    refilled decode (a cache tensor, or the codec's list of layers)."""
    shape = tuple(int(x) for x in shape)
    return GraphedCall(lambda: kernel.decode(payloads, shape, dtype, check=False), cuda=payloads.data.is_cuda,
                       what=f"the {kernel.name!r} decode", checked=lambda: kernel.decode(payloads, shape, dtype))
