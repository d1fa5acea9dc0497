"""Prefill -> decode KV transfer between two processes over torch.distributed (issue 11).

Rank 0 (prefill) encodes the cache layer by layer and sends each layer's payload with ``isend``;
rank 1 (decode) posts every layer's ``irecv`` up front and decodes layer i as soon as it lands,
while later layers are still arriving. On GPUs (backend ``nccl``) the codec is kvwire's Triton
kernels, encoding on their own CUDA stream; on CPUs (backend ``gloo``) it is the CPU codec, the
same bytes (``kvwire.kernels.dispatch`` picks by the tensor's device). ``pipelined=False`` encodes everything, sends, then
decodes: the sequential model. ``identity`` sends the raw cache.

The payload size of a layer follows from the codec and the shape, so no length travels: the codecs
carried are those whose kernel says so (``KernelCodec.layer_bytes``, ``kernels.fixed_size_codecs``),
and ``identity``. The receiver checks every layer's section table and refuses a mismatch with a
``WireError``.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import torch

from .errors import KvwireError

# NVLink SHARP / multicast off: the lent machines' README asks for it (no NVLS on these nodes)
NCCL_ENV = {"NCCL_NVLS_ENABLE": "0", "NCCL_CUMEM_ENABLE": "0"}


class P2PError(KvwireError):
    """The two-process transfer was set up wrongly (world size, backend, codec)."""


@dataclass
class TransferResult:
    codec: str
    pipelined: bool
    raw_bytes: int
    wire_bytes: int
    seconds: float  # rank 1: from the shared start to the last layer decoded

    @property
    def effective_gbps(self) -> float:
        """Raw cache bits delivered per second, end to end."""
        return self.raw_bytes * 8 / self.seconds / 1e9


def codecs() -> list[str]:
    """The codecs a transfer can carry: ``identity`` and every fixed-size kernel codec."""
    from .kernels import fixed_size_codecs

    return ["identity", *fixed_size_codecs()]


def _require_known(codec: str) -> None:
    known = codecs()
    if codec not in known:
        raise P2PError(f"unknown p2p codec {codec!r}; known: {', '.join(known)}")


def layer_payload_bytes(codec: str, shape: tuple) -> int:
    """Bytes one layer [2, heads, seq, dim] travels as: raw bf16/fp16 for identity, else the codec's layout."""
    if codec == "identity":
        return 2 * shape[-3] * shape[-2] * shape[-1] * 2
    from .kernels import layer_payload_bytes as codec_layer_bytes

    return codec_layer_bytes(codec, shape)


def _encode(codec: str, layer: torch.Tensor) -> torch.Tensor:
    if codec == "identity":
        return layer.contiguous().view(torch.uint8).reshape(-1)
    from .kernels import encode_layers

    return encode_layers(codec, layer.unsqueeze(0))


def _decode(codec: str, payload: torch.Tensor, shape: tuple, dtype: torch.dtype) -> torch.Tensor:
    if codec == "identity":
        return payload.view(dtype).view(shape)
    from .kernels import decode_layers

    return decode_layers(codec, payload, (1, *shape), dtype)[0]


def send_cache(kv: torch.Tensor, codec: str, *, dst: int = 1, pipelined: bool = True) -> int:
    """Rank 0: encode ``kv`` [layers, 2, heads, seq, dim] per layer and send it; wire bytes sent."""
    import torch.distributed as dist

    _require_known(codec)
    stream = torch.cuda.Stream() if kv.is_cuda else None
    handles, payloads = [], []
    sent = 0
    for i in range(kv.shape[0]):
        if stream is not None:
            with torch.cuda.stream(stream):
                payload = _encode(codec, kv[i])
            torch.cuda.current_stream().wait_stream(stream)  # the send waits for this layer's encode only
        else:
            payload = _encode(codec, kv[i])
        payloads.append(payload)
        sent += payload.numel()
        if pipelined:
            handles.append(dist.isend(payload, dst))
    if not pipelined:
        handles = [dist.isend(p, dst) for p in payloads]
    for h in handles:
        h.wait()
    return sent


def recv_cache(shape: tuple, dtype: torch.dtype, codec: str, *, src: int = 0, device: str = "cpu",
               pipelined: bool = True) -> torch.Tensor:
    """Rank 1: receive and decode a cache of ``shape`` [layers, 2, heads, seq, dim]."""
    import torch.distributed as dist

    _require_known(codec)
    n = layer_payload_bytes(codec, shape)
    bufs = [torch.empty(n, dtype=torch.uint8, device=device) for _ in range(shape[0])]
    handles = [dist.irecv(b, src) for b in bufs]
    out = torch.empty(shape, dtype=dtype, device=device)
    if not pipelined:  # everything lands, then everything decodes
        for h in handles:
            h.wait()
    for i, (h, b) in enumerate(zip(handles, bufs)):
        if pipelined:
            h.wait()
        out[i] = _decode(codec, b, tuple(shape[1:]), dtype)
    return out


def transfer(rank: int, kv: torch.Tensor | None, shape: tuple, dtype: torch.dtype, codec: str, *,
             pipelined: bool = True, device: str = "cpu", repeats: int = 3) -> list[TransferResult]:
    """Both ranks call this (rank 0 with the cache); rank 1 returns its timed results (median order
    kept: one per repeat), rank 0 an empty list. A barrier starts every repeat."""
    import torch.distributed as dist

    results = []
    raw = int(torch.Size(shape).numel()) * torch.tensor([], dtype=dtype).element_size()
    for _ in range(repeats + 1):  # the first is a warm-up (connections, kernels)
        dist.barrier()
        t0 = time.perf_counter()
        if rank == 0:
            sent = send_cache(kv, codec, pipelined=pipelined)
        else:
            got = recv_cache(shape, dtype, codec, device=device, pipelined=pipelined)
            if device != "cpu":
                torch.cuda.synchronize()
            results.append(TransferResult(codec, pipelined, raw, layer_payload_bytes(codec, shape) * shape[0],
                                          time.perf_counter() - t0))
            last = got
    if rank == 1:
        transfer.last = last  # the decoded cache of the last repeat, for checks
    return results[1:] if rank == 1 else []


def init(rank: int, world: int, backend: str, init_method: str) -> None:
    import torch.distributed as dist

    if world != 2:
        raise P2PError(f"the prefill -> decode transfer runs on 2 ranks, got {world}")
    if backend == "nccl":
        for k, v in NCCL_ENV.items():
            os.environ.setdefault(k, v)
        torch.cuda.set_device(rank)
    dist.init_process_group(backend, rank=rank, world_size=world, init_method=init_method)
