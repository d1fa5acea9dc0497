"""Host-side launch helpers shared by every kernel family: whether Triton interprets (CI's CPU runs),
grid arithmetic, compile options, section tables copied to the device once, and the host's cost of a call."""

from __future__ import annotations

import functools
import os
import statistics
import time

import torch


def interpreted() -> bool:
    """Whether Triton runs kernels in its CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def fp_args(num_warps: int) -> dict:
    """Compile options of an exact kernel: no multiply-add fusion (a fused ``x * inv + c`` rounds once
    where the CPU rounds twice); the interpreter ignores compile options."""
    return {} if interpreted() else {"enable_fp_fusion": False, "num_warps": num_warps}


@functools.lru_cache(maxsize=64)
def header_tensor(header: bytes, device: str) -> torch.Tensor:
    """A layout's section table on ``device``, copied there once (not on every call)."""
    return torch.frombuffer(bytearray(header), dtype=torch.uint8).to(device)


def triton_cdiv(a: int, b: int) -> int:
    return -(-a // b)


def host_us(fn, calls: int = 64, batches: int = 5) -> float:
    """Host-thread µs per call of ``fn`` with the device's work not waited for (the cost of issuing it:
    Python and launches), the median of ``batches`` batches of ``calls``; the device is drained before
    each batch and after the last, so the launch queue never fills."""
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    times = []
    for _ in range(batches):
        sync()
        t = time.perf_counter()
        for _ in range(calls):
            fn()
        times.append((time.perf_counter() - t) * 1e6 / calls)
    sync()
    return statistics.median(times)
