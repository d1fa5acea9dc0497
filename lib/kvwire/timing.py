"""Timing of codecs on the CPU: what producing and consuming the real wire bytes costs, per layer.

The encode time of layer i covers the codec's encode *and* framing (checksum) of that layer:
everything the sender does before the bytes can leave. The decode time covers frame
verification and the codec's decode. Each layer is timed ``repeats`` times after ``warmup``
runs and the median is kept. The container header and trailer are folded into the first and
last layer's byte counts, so the per-layer bytes add up to the container's exact length.
"""

from __future__ import annotations

import statistics
import zlib
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


def time_codec_cpu(codec: Pipeline, layers: Sequence[LayerKV], *, repeats: int = 5, warmup: int = 1,
                   meta: dict | None = None, stats: Sequence[dict] | None = None) -> tuple[CodecCost, bytes]:
    """Per-layer CPU cost of ``codec`` on ``layers``; also returns the full container it produced."""
    if repeats < 1:
        raise ValueError("repeats must be >= 1")
    header = wire.make_header(codec, layers, meta)
    head = wire.header_bytes(header)
    enc_s, dec_s, frames = [], [], []
    with torch.inference_mode():
        for i, layer in enumerate(layers):
            ctx = header.context(i, stats[i] if stats else None)
            t_enc, frame = _median_time(lambda: wire.frame_bytes(i, codec.encode_layer(layer, ctx)), repeats, warmup)
            view = memoryview(frame)

            def decode_frame():
                parsed, _ = wire.read_frame(view, 0, i)
                return codec.decode_layer(parsed.payload, ctx)

            t_dec, _ = _median_time(decode_frame, repeats, warmup)
            enc_s.append(t_enc)
            dec_s.append(t_dec)
            frames.append(frame)
    payload_crcs = [wire.read_frame(memoryview(f), 0, i)[0] for i, f in enumerate(frames)]
    tail = wire.trailer_bytes([zlib.crc32(p.payload) for p in payload_crcs])
    sizes = [len(f) for f in frames]
    sizes[0] += len(head)
    sizes[-1] += len(tail)
    container = head + b"".join(frames) + tail
    cost = CodecCost(raw_bytes=header.raw_bytes, wire_bytes=sizes, encode_s=enc_s, decode_s=dec_s)
    assert cost.total_wire_bytes == len(container)
    return cost, container
