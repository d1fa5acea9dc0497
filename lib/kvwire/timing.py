"""Timing of codecs on the CPU: what producing and consuming the real wire bytes costs, per layer.

The encode time of layer i covers the codec's encode *and* framing (checksum) of that layer:
everything the sender does before the bytes can leave. The decode time covers frame
verification and the codec's decode. The container header and trailer are folded into the first
and last layer's byte counts, so the per-layer bytes add up to the container's exact length.

Two timers (``timer=``):

- ``"pass"`` (the study's): the conditions of a transfer. A pass encodes every layer once, in
  order, as ``send_kv`` does, then verifies and decodes every frame once, in order, as ``recv_kv``
  does; ``warmup`` passes, then ``repeats`` timed ones, and the per-layer times of the pass whose
  total is the median are kept (so the layers add up to a total that really happened). The process
  keeps its freed buffers (``transport.retain_freed_memory``), as the connector's processes do:
  otherwise each pass's fresh outputs page-fault, on some codecs 30,000-140,000 times per cache.
- ``"layer"``: each layer ``repeats`` times in a row after ``warmup``, the median per layer. Its
  layer is hot in the cache and the median drops the slow runs a single transfer does not get to
  drop: on a 2-core VM its totals ran 0.5-0.9x what the same codec took inside a transfer
  (bench/NOTES.md, "Why a codec is slower inside a transfer"). Kept for that comparison.
"""

from __future__ import annotations

import statistics
import time
from typing import Sequence

import torch

from . import wire
from .codecs import LayerKV, Pipeline
from .transfer import CodecCost


def _median_time(fn, repeats: int, warmup: int) -> tuple[float, object]:
    result = None
    for _ in range(warmup):
        result = fn()
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples), result


TIMERS = ("pass", "layer")


def time_codec_cpu(codec: Pipeline, layers: Sequence[LayerKV], *, repeats: int = 5, warmup: int = 1,
                   meta: dict | None = None, stats: Sequence[dict] | None = None,
                   timer: str = "pass") -> tuple[CodecCost, bytes]:
    """Per-layer CPU cost of ``codec`` on ``layers``; also returns the full container it produced."""
    if repeats < 1:
        raise ValueError("repeats must be >= 1")
    if timer not in TIMERS:
        raise ValueError(f"unknown timer {timer!r}; known: {', '.join(TIMERS)}")
    if timer == "pass":
        from .transport import retain_freed_memory

        retain_freed_memory()  # the allocator policy of the processes that send and receive caches
    header = wire.make_header(codec, layers, meta)
    head = wire.header_bytes(header)
    contexts = [header.context(i, stats[i] if stats else None) for i in range(len(layers))]
    with torch.inference_mode():
        if timer == "layer":
            enc_s, dec_s, frames = _by_layer(codec, layers, contexts, repeats, warmup)
        else:
            enc_s, dec_s, frames = _by_pass(codec, layers, contexts, repeats, warmup)
    tail = wire.trailer_bytes([wire.read_frame(memoryview(f), 0, i)[0].crc for i, f in enumerate(frames)])
    sizes = [len(f) for f in frames]
    sizes[0] += len(head)
    sizes[-1] += len(tail)
    container = head + b"".join(frames) + tail
    cost = CodecCost(raw_bytes=header.raw_bytes, wire_bytes=sizes, encode_s=enc_s, decode_s=dec_s)
    assert cost.total_wire_bytes == len(container)
    return cost, container


def _decode_frame(codec: Pipeline, frame: bytes, i: int, ctx):
    parsed, _ = wire.read_frame(memoryview(frame), 0, i)
    return codec.decode_layer(parsed.payload, ctx)


def _by_layer(codec, layers, contexts, repeats, warmup):
    enc_s, dec_s, frames = [], [], []
    for i, layer in enumerate(layers):
        ctx = contexts[i]
        t_enc, frame = _median_time(lambda: wire.frame_bytes(i, codec.encode_layer(layer, ctx)), repeats, warmup)
        t_dec, _ = _median_time(lambda: _decode_frame(codec, frame, i, ctx), repeats, warmup)
        enc_s.append(t_enc)
        dec_s.append(t_dec)
        frames.append(frame)
    return enc_s, dec_s, frames


def _median_pass(passes: list[list[float]]) -> list[float]:
    """The pass whose total is the median (the lower one of an even count)."""
    order = sorted(range(len(passes)), key=lambda k: sum(passes[k]))
    return passes[order[(len(order) - 1) // 2]]


def _by_pass(codec, layers, contexts, repeats, warmup):
    enc_passes, dec_passes = [], []
    frames: list[bytes] = []
    for r in range(warmup + repeats):
        enc, frames = [], []
        for i, layer in enumerate(layers):
            t0 = time.perf_counter()
            frames.append(wire.frame_bytes(i, codec.encode_layer(layer, contexts[i])))
            enc.append(time.perf_counter() - t0)
        dec = []
        for i, frame in enumerate(frames):
            t0 = time.perf_counter()
            _decode_frame(codec, frame, i, contexts[i])
            dec.append(time.perf_counter() - t0)
        if r >= warmup:
            enc_passes.append(enc)
            dec_passes.append(dec)
    return _median_pass(enc_passes), _median_pass(dec_passes), frames
