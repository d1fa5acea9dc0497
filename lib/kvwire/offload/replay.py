"""Trace-driven replay of paged decode on a GPU: real page copies, real compute of the model's shape.

The real models' weights cannot travel to the GPU machine (no network there, 64 MiB per call), so
the replay takes a recorded ``AccessTrace`` and executes its plan: the KV pages (random bf16 of
the real sizes: page access, not values, is what the trace carries) live in pinned host memory,
at most ``slots`` pages per layer on the GPU; misses are copied on the compute stream (the step
waits for them), prefetches on their own stream overlapped with compute, compressed pages are
decoded on arrival with kvwire's Triton int8 kernel. Each layer computes what a decoder layer of
the model's sizes does for one token: QKV projection, attention of every query head over the
gathered pages plus the GPU-resident tail, output projection, gated MLP; each step ends with the LM
head. On a GPU the layer and head computations are CUDA graphs (one launch each, so the host's
Python does not hide the copies' cost); on the CPU the same code runs eagerly (tests).
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import OffloadError
from .policy import LayerEvent, issue_order

CODECS = (None, "int8")


@dataclass
class RunResult:
    step_end_ms: list  # per decode step, from "KV in host memory"
    ttft_ms: float
    tpot_ms: list
    peak_gpu_mib: float
    kv_gpu_mib: float  # pool + tail bytes the mode keeps on the GPU
    fetched_mib: float  # bytes copied host -> GPU per run (demand + prefetch + upload)
    host_first_ms: float = float("nan")  # when the host thread had issued the first step (GPU runs)

    @property
    def tpot_p50(self) -> float:
        return float(np.percentile(self.tpot_ms, 50))

    @property
    def tpot_p99(self) -> float:
        return float(np.percentile(self.tpot_ms, 99))


class PagedDecoder:
    """One (trace shape, context, mode): host store, GPU pool, weights, and the plan's copy schedule."""

    def __init__(self, shape: dict, *, prefix_pages: int, page_size: int, slots: int, k: int, tail_cap: int,
                 tail_start: int, device: str | torch.device, codec: str | None = None, seed: int = 0,
                 graphs: bool | None = None):
        if codec not in CODECS:
            raise OffloadError(f"replay codec must be one of {CODECS}, got {codec!r}")
        if slots < 1 or k < 1 or prefix_pages < 1:
            raise OffloadError(f"replay needs slots, k and prefix_pages >= 1 (got {slots}, {k}, {prefix_pages})")
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        self.graphs = self.cuda if graphs is None else graphs
        self.shape, self.ps, self.slots, self.k, self.codec = shape, page_size, slots, k, codec
        self.pages = prefix_pages
        L, H, D = shape["layers"], shape["kv_heads"], shape["head_dim"]
        self.L, self.H, self.D = L, H, D
        self.page_bytes = 2 * H * page_size * D * 2  # K and V, bf16
        g = torch.Generator().manual_seed(seed)
        dg = torch.Generator(device=self.device).manual_seed(seed)  # the store's values: drawn where it is fast
        host = torch.empty((L, prefix_pages, 2, H, page_size, D), dtype=torch.bfloat16, pin_memory=self.cuda)
        for layer in range(L):  # one layer at a time: float32 randn of a 32k cache would double the peak
            host[layer].copy_(torch.randn(host.shape[1:], generator=dg, device=self.device).to(torch.bfloat16))
        self.host = host
        if codec:
            from ..kernels.launch import interpreted

            if not self.cuda and not interpreted():
                raise OffloadError(f"compressed pages on the CPU need Triton's interpreter (TRITON_INTERPRET=1): "
                                   f"the {codec} kernels are the replay's decode")
            self._encode_host()
        dev, bf = self.device, torch.bfloat16
        self.pool = torch.zeros((L, slots, 2, H, page_size, D), dtype=bf, device=dev)
        self.tail = torch.randn((L, 2, H, tail_cap, D), generator=g).to(bf).to(dev)
        self.tail_start, self.tail_cap = tail_start, tail_cap
        hidden, inter, hq = shape["hidden"], shape["intermediate"], shape["heads"]
        self.hq = hq

        def w(*s):
            return (torch.randn(s, generator=g) * 0.02).to(bf).to(dev)

        self.w_qkv = [w(hidden, (hq + 2 * H) * D) for _ in range(L)]
        self.w_o = [w(hq * D, hidden) for _ in range(L)]
        self.w_gu = [w(hidden, 2 * inter) for _ in range(L)]
        self.w_down = [w(inter, hidden) for _ in range(L)]
        self.w_head = w(hidden, shape["vocab"])
        self.x = torch.zeros((1, hidden), dtype=bf, device=dev)
        self.next_token = torch.zeros((1,), dtype=torch.long, device=dev)
        self.meta = torch.zeros((L, 2 + k), dtype=torch.long, device=dev)  # [pages attended, tail position, slots]
        self._graphs: list | None = None

    # ---- host store -------------------------------------------------------------------------------
    def _encode_host(self) -> None:
        """Compress every page once (on the device), keep the payloads in pinned host memory."""
        from ..kernels.token.kernel import encode_cache

        L, P = self.L, self.pages
        flat = self.host.view(L * P, 2, self.H, self.ps, self.D)
        rows = []
        chunk = 4096
        for start in range(0, L * P, chunk):
            part = flat[start:start + chunk].to(self.device)
            rows.append(encode_cache(self.codec, part).view(part.shape[0], -1).cpu())
        payload = torch.cat(rows)
        self.host_payload = payload.pin_memory() if self.cuda else payload
        self.host_payload = self.host_payload.view(L, P, -1)
        self.payload_bytes = self.host_payload.shape[2]
        rows = {"demand": self.slots, "prefetch": self.slots, "batch": self.slots * L}  # batch: one step, all layers
        self.stage = {name: torch.empty((n, self.payload_bytes), dtype=torch.uint8, device=self.device)
                      for name, n in rows.items()}
        self.stage_out = {name: torch.empty((n, 2, self.H, self.ps, self.D), dtype=torch.bfloat16,
                                            device=self.device) for name, n in rows.items()}
        self._layer_of: dict = {}

    def wire_bytes_per_page(self) -> int:
        return self.payload_bytes if self.codec else self.page_bytes

    # ---- compute ----------------------------------------------------------------------------------
    def _layer(self, layer: int) -> None:
        """One decoder layer for one token, reading its pages through ``meta`` (static for graphs)."""
        H, D, hq, ps, k = self.H, self.D, self.hq, self.ps, self.k
        x = self.x
        h = x * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + 1e-6).to(x.dtype)
        qkv = h @ self.w_qkv[layer]
        q = qkv[:, : hq * D].view(1, hq, 1, D)
        new_k = qkv[:, hq * D:(hq + H) * D].view(H, 1, D)
        new_v = qkv[:, (hq + H) * D:].view(H, 1, D)
        meta = self.meta[layer]
        tail_pos = meta[1:2]
        self.tail[layer, 0].index_copy_(1, tail_pos, new_k)
        self.tail[layer, 1].index_copy_(1, tail_pos, new_v)
        kv = self.pool[layer].index_select(0, meta[2:])  # [k, 2, H, ps, D]
        keys = torch.cat([kv[:, 0].permute(1, 0, 2, 3).reshape(H, k * ps, D), self.tail[layer, 0]], dim=1)
        values = torch.cat([kv[:, 1].permute(1, 0, 2, 3).reshape(H, k * ps, D), self.tail[layer, 1]], dim=1)
        pos = torch.arange(k * ps + self.tail_cap, device=x.device)
        valid = (pos < meta[0] * ps) | ((pos >= k * ps) & (pos - k * ps <= tail_pos))
        attn = torch.nn.functional.scaled_dot_product_attention(
            q, keys[None], values[None], attn_mask=valid.view(1, 1, 1, -1), enable_gqa=True)
        x = x + attn.reshape(1, hq * D) @ self.w_o[layer]
        h = x * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + 1e-6).to(x.dtype)
        gate, up = (h @ self.w_gu[layer]).chunk(2, dim=-1)
        self.x.copy_(x + (torch.nn.functional.silu(gate) * up) @ self.w_down[layer])

    def _head(self) -> None:
        x = self.x
        h = x * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + 1e-6).to(x.dtype)
        self.next_token.copy_((h @ self.w_head).argmax(dim=-1))

    def _capture(self) -> None:
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):  # warm up (allocator, kernels) outside capture
            for layer in range(self.L):
                self._layer(layer)
            self._head()
        torch.cuda.current_stream(self.device).wait_stream(side)
        self._graphs = []
        for layer in range(self.L):
            gr = torch.cuda.CUDAGraph()
            with torch.cuda.graph(gr):
                self._layer(layer)
            self._graphs.append(gr)
        gr = torch.cuda.CUDAGraph()
        with torch.cuda.graph(gr):
            self._head()
        self._head_graph = gr

    def run_layer(self, layer: int) -> None:
        if self._graphs is not None:
            self._graphs[layer].replay()
        else:
            self._layer(layer)

    def run_head(self) -> None:
        if self._graphs is not None:
            self._head_graph.replay()
        else:
            self._head()

    # ---- copies -----------------------------------------------------------------------------------
    def _copy_many(self, dsts: list, srcs: list) -> None:
        """Host -> GPU copies on the current stream; one C++ loop (``_foreach_copy_``) where torch has
        it, so the host thread's cost per page is a memcpy launch, not a Python call."""
        if not dsts:
            return
        if self.cuda and self._foreach:
            try:
                torch._foreach_copy_(dsts, srcs, non_blocking=True)
                return
            except (RuntimeError, TypeError):
                self._foreach = False
        for d, s in zip(dsts, srcs):
            d.copy_(s, non_blocking=self.cuda)

    def _decode_into(self, n: int, stage: str, index: torch.Tensor, flat: bool) -> None:
        """Decode ``n`` staged payloads with one kernel and scatter them into their slots (one layer's
        slots, or ``flat`` = (layer x slots) indices across layers)."""
        from ..kernels.token.kernel import decode_cache

        out = self.stage_out[stage][:n]
        decode_cache(self.codec, self.stage[stage][:n].view(-1), (n, 2, self.H, self.ps, self.D),
                     torch.bfloat16, out=out, check=False)
        target = self.pool.view(self.L * self.slots, *self.pool.shape[2:]) if flat else self.pool[self._layer_of[stage]]
        target.index_copy_(0, index, out)

    def _upload_all(self) -> None:
        """all_gpu: the whole cache in one copy (the pool is every page, slot = page)."""
        self.pool.copy_(self.host, non_blocking=self.cuda)

    # ---- the run ----------------------------------------------------------------------------------
    def prepare(self, events: list[LayerEvent], mode: str) -> None:
        """Precompute, before any timing: every (step, layer)'s meta row, every copy's source and
        destination views, a codec's staging offsets and slot indices, and the issue order."""
        if self.graphs and self._graphs is None:
            self._capture()
        if mode == "all_gpu" and self.slots != self.pages:
            raise OffloadError(f"all_gpu needs a slot per page ({self.pages}), the pool has {self.slots}")
        steps = max(e.step for e in events)
        metas = torch.zeros((steps + 1, self.L, 2 + self.k), dtype=torch.long)
        slot_of: list[dict] = [dict() for _ in range(self.L)]
        self._foreach = hasattr(torch, "_foreach_copy_")
        self._ops: dict = {}
        batch_rows: dict[int, list] = {}
        for idx, ev in enumerate(events):
            for page, slot in ev.fetches + ev.prefetches:
                slot_of[ev.layer][page] = slot
            for which, pairs in (("demand", ev.fetches), ("prefetch", ev.prefetches)):
                if not pairs:
                    continue
                batched = self.codec and which == "prefetch" and ev.step > 0
                if not self.codec:
                    dsts = [self.pool[ev.layer, slot] for _, slot in pairs]
                    srcs = [self.host[ev.layer, page] for page, _ in pairs]
                elif batched:  # rows of the step's batch, decoded together at the step's end
                    rows = batch_rows.setdefault(ev.step, [])
                    start = len(rows)
                    rows.extend(ev.layer * self.slots + slot for _, slot in pairs)
                    dsts = [self.stage["batch"][start + i] for i in range(len(pairs))]
                    srcs = [self.host_payload[ev.layer, page] for page, _ in pairs]
                else:
                    stage = "demand" if which == "demand" else "prefetch"
                    dsts = [self.stage[stage][i] for i in range(len(pairs))]
                    srcs = [self.host_payload[ev.layer, page] for page, _ in pairs]
                index = None if not self.codec or batched else torch.tensor(
                    [slot for _, slot in pairs], dtype=torch.long, device=self.device)
                self._ops[(idx, which)] = (dsts, srcs, index)
            if ev.step == 0:
                continue
            if len(ev.needed) > self.k:
                raise OffloadError(f"step {ev.step} layer {ev.layer} needs {len(ev.needed)} pages, replay built for {self.k}")
            row = metas[ev.step, ev.layer]
            row[0] = len(ev.needed)
            row[1] = self.tail_start + ev.step - 1
            for i, page in enumerate(ev.needed):
                row[2 + i] = page if mode == "all_gpu" else slot_of[ev.layer][page]
        if int(metas[:, :, 1].max()) >= self.tail_cap:
            raise OffloadError(f"tail of {self.tail_cap} tokens cannot hold {steps} decode steps past {self.tail_start}")
        if self.codec:
            need = max((len(r) for r in batch_rows.values()), default=0)
            if need > self.stage["batch"].shape[0]:
                raise OffloadError(f"a step prefetches {need} pages, the staging buffer holds {self.stage['batch'].shape[0]}")
            self._batch_index = {step: torch.tensor(rows, dtype=torch.long, device=self.device)
                                 for step, rows in batch_rows.items()}
        self.metas = metas.pin_memory() if self.cuda else metas
        self.order = issue_order(events, self.L)
        self._index_of = {id(ev): i for i, ev in enumerate(events)}
        self.mode = mode
        self.events = events
        self.steps = steps

    def run(self) -> RunResult:
        """Execute the prepared plan once; times with CUDA events (perf_counter on the CPU)."""
        if self.cuda:
            return self._run_cuda(self.mode)
        return self._run_cpu(self.mode)

    def _copy_event(self, ev: LayerEvent, which: str) -> int:
        """Issue ``ev``'s demand fetches or prefetches on the current stream; bytes moved."""
        op = self._ops.get((self._index_of[id(ev)], which))
        if op is None:
            return 0
        dsts, srcs, index = op
        self._copy_many(dsts, srcs)
        if index is not None:  # a codec's pages outside a step batch: decode this layer's now
            stage = "demand" if which == "demand" else "prefetch"
            self._layer_of[stage] = ev.layer
            self._decode_into(len(dsts), stage, index, flat=False)
        return len(dsts) * self.wire_bytes_per_page()

    def _flush_batch(self, step: int) -> bool:
        """Decode step ``step``'s batched (codec) prefetches in one kernel; whether there were any."""
        index = self._batch_index.get(step) if self.codec else None
        if index is None:
            return False
        self._decode_into(index.numel(), "batch", index, flat=True)
        return True

    def _issue(self, mode: str, hooks) -> int:
        moved = 0
        if mode == "all_gpu":
            self._upload_all()
            moved += self.host.numel() * 2
        for kind, ev in self.order:
            if kind == "compute":
                hooks.wait_prefetch(ev.layer)
                moved += self._copy_event(ev, "demand")
                self.meta[ev.layer].copy_(self.metas[ev.step, ev.layer], non_blocking=self.cuda)
                self.run_layer(ev.layer)
                hooks.layer_done(ev.layer)
            elif kind == "prefetch":
                moved += hooks.prefetch(ev)
            else:
                self.run_head()
                hooks.step_end(ev.step)
        return moved

    def _run_cpu(self, mode: str) -> RunResult:
        t0 = time.perf_counter()
        ends: list[float] = []
        dec = self

        class Hooks:
            def wait_prefetch(self, layer):
                pass

            def layer_done(self, layer):
                pass

            def prefetch(self, ev):
                return dec._copy_event(ev, "prefetch")

            def step_end(self, step):
                dec._flush_batch(step)
                ends.append((time.perf_counter() - t0) * 1e3)

        moved = self._issue(mode, Hooks())
        return self._result(ends, moved, peak=float("nan"))

    def _run_cuda(self, mode: str) -> RunResult:
        dev = self.device
        compute = torch.cuda.Stream(dev)
        copier = torch.cuda.Stream(dev)
        layer_done = [torch.cuda.Event() for _ in range(self.L)]
        pending: list = [None] * self.L  # the event a layer's next compute waits for
        batched: set = set()  # layers with prefetches in the open step batch
        start = torch.cuda.Event(enable_timing=True)
        step_events: list = []
        dec = self
        torch.cuda.synchronize(dev)

        class Hooks:
            def wait_prefetch(self, layer):
                if pending[layer] is not None:
                    compute.wait_event(pending[layer])
                    pending[layer] = None

            def layer_done(self, layer):
                layer_done[layer].record(compute)

            def prefetch(self, ev):
                copier.wait_event(layer_done[ev.layer])  # the slots it overwrites were read by this layer
                with torch.cuda.stream(copier):
                    moved = dec._copy_event(ev, "prefetch")
                if dec.codec and ev.step > 0:
                    batched.add(ev.layer)
                else:
                    done = torch.cuda.Event()
                    done.record(copier)
                    pending[ev.layer] = done
                return moved

            def step_end(self, step):
                ev = torch.cuda.Event(enable_timing=True)
                ev.record(compute)
                step_events.append(ev)
                if not host_first:  # whether the first token waits on the GPU or on the host issuing it
                    host_first.append((time.perf_counter() - t0) * 1e3)
                with torch.cuda.stream(copier):
                    flushed = dec._flush_batch(step)
                if flushed:
                    done = torch.cuda.Event()
                    done.record(copier)
                    for layer in batched:
                        pending[layer] = done
                    batched.clear()

        host_first: list = []
        with torch.cuda.stream(compute):
            start.record(compute)
            t0 = time.perf_counter()
            copier.wait_event(start)
            moved = self._issue(mode, Hooks())
        torch.cuda.synchronize(dev)
        ends = [start.elapsed_time(ev) for ev in step_events]
        return self._result(ends, moved, peak=torch.cuda.max_memory_allocated(dev) / 2**20, host_first=host_first[0])

    def _result(self, ends: list, moved: int, peak: float, host_first: float = float("nan")) -> RunResult:
        kv_gpu = (self.pool.numel() + self.tail.numel()) * 2
        if self.codec:
            kv_gpu += sum(t.numel() for t in self.stage.values()) + sum(t.numel() * 2 for t in self.stage_out.values())
        return RunResult(step_end_ms=ends, ttft_ms=ends[0], tpot_ms=list(np.diff(ends)), peak_gpu_mib=peak,
                         kv_gpu_mib=kv_gpu / 2**20, fetched_mib=moved / 2**20, host_first_ms=host_first)

    # ---- correctness ------------------------------------------------------------------------------
    def check_pool(self) -> float:
        """Compare every slot the plan left resident with the host page it should hold: 0.0 for raw
        pages (bit-exact), the max abs error for a codec (bounded by the codec's step). Raises on a
        slot holding the wrong page."""
        worst = 0.0
        if self.mode == "all_gpu":
            if not torch.equal(self.pool.cpu(), self.host):
                raise OffloadError("all_gpu: the uploaded pool differs from the host store")
            return 0.0
        owner: list[dict] = [dict() for _ in range(self.L)]
        for ev in self.events:
            for page, slot in ev.fetches + ev.prefetches:
                owner[ev.layer][slot] = page
        for layer in range(self.L):
            for slot, page in owner[layer].items():
                got = self.pool[layer, slot].float().cpu()
                want = self.host[layer, page].float()
                err = float((got - want).abs().max())
                scale = float(want.abs().amax())
                limit = 0.0 if not self.codec else scale / 127 * 0.51 + 1e-2 * scale
                if err > limit:
                    raise OffloadError(f"layer {layer} slot {slot}: holds the wrong data for page {page} "
                                       f"(max error {err:.3g} > {limit:.3g})")
                worst = max(worst, err)
        return worst


def median_result(results: list[RunResult]) -> dict:
    """Medians over repeats of the per-run metrics."""
    return {"ttft_ms": statistics.median(r.ttft_ms for r in results),
            # the first token is one host-bound step per run: its spread over repeats is reported with it
            "ttft_min_ms": min(r.ttft_ms for r in results), "ttft_max_ms": max(r.ttft_ms for r in results),
            "ttft_host_ms": statistics.median(r.host_first_ms for r in results),
            "tpot_p50_ms": statistics.median(r.tpot_p50 for r in results),
            "tpot_p99_ms": statistics.median(r.tpot_p99 for r in results),
            "decode_ms": statistics.median(r.step_end_ms[-1] - r.step_end_ms[0] for r in results),
            "peak_gpu_mib": max(r.peak_gpu_mib for r in results),
            "kv_gpu_mib": results[0].kv_gpu_mib, "fetched_mib": results[0].fetched_mib}
