"""Stage: end-to-end transfer of a real cache, measured, against the analytical model.

A sender process encodes the cache with each codec and streams it with ``transport.send_kv``; a
receiver process (``recv_kv``) verifies and decodes every frame as it lands. On a shaped veth link
they run in two network namespaces (``netlab.veth_link``); on loopback, side by side. Where the host
has two CPUs or more the two ends are pinned to disjoint halves of them (the model's two hosts do not
share cores). The sender times each transfer from its first encode to the receiver's acknowledgement.

The model (``transfer.pipelined_time`` / ``sequential_time``) is fed **the timing table the
break-even uses** (rule ``time_cpu``: per-layer encode and decode seconds and wire bytes of this very
cache) at the link's nominal rate: the validation tests the numbers the conclusions rest on. The
model fed the run's own per-layer times is kept beside it (``model_own_s``), and so are the in-transfer
codec times over the table's (``encode_in_transfer_over_table``): what the connector adds.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Mapping, Sequence

import pandas as pd

from .. import netlab
from ..errors import KvwireError
from ..io import write_csv
from ..limits import WireLimits
from ..transfer import CodecCost, baseline_time, cost_from_arrays, pipelined_time, sequential_time

PORT = 5601

# results go to a file, not stdout: a pipe nobody reads while the sender runs fills at 64 KB and
# would stall the receiver mid-stream (seen at 90 transfers)
RECEIVER = """
import json, sys
sys.path.insert(0, {lib!r})
import torch
torch.set_num_threads({threads})
from kvwire.limits import WireLimits
from kvwire.transport import listen, recv_kv, retain_freed_memory
retain_freed_memory()
limits = WireLimits.from_mapping({limits!r})
with listen({host!r}, {port}) as srv, open({out!r}, "w") as out:
    print("ready", flush=True)
    for pipelined in {modes!r}:
        header, layers, st = recv_kv(srv, timeout={timeout}, pipelined=pipelined, limits=limits)
        out.write(json.dumps({{"decode_s": st.decode_s, "recv_wall_s": st.wall_s, "bytes": st.total_bytes}}) + "\\n")
"""

SENDER = """
import json, sys, time
sys.path.insert(0, {lib!r})
import torch
torch.set_num_threads({threads})
from kvwire.kv import load_kv
from kvwire.transport import retain_freed_memory, send_kv
retain_freed_memory()
rec = load_kv({kv!r})
layers = rec.layers
stats = rec.stats or None
for codec, params, pipelined in {runs!r}:
    t = time.perf_counter()
    s = send_kv(({host!r}, {port}), layers, codec, params, stats=stats, pipelined=pipelined, timeout={timeout})
    wall = time.perf_counter() - t
    print(json.dumps({{"codec": codec, "pipelined": pipelined, "encode_s": s.encode_s, "wire_bytes": s.wire_bytes,
                      "total_bytes": s.total_bytes, "wall_s": wall}}), flush=True)
"""


def measure_e2e(link: netlab.Link, kv_file: str | Path, codecs: Sequence[tuple[str, str, dict]], *,
                repeats: int = 2, timeout: float = 120.0, threads: int = 1,
                cpus: tuple[str, str] | None = None, wire_limits: dict | None = None) -> list[dict]:
    """Every (codec label, name, params) x {sequential, pipelined} x ``repeats`` over ``link``.

    ``threads``: torch threads of the sender and of the receiver (the timing table's). ``cpus``: CPU
    lists (taskset syntax) for the sender and the receiver, so the two ends do not share cores, as the
    model's two hosts do not; None lets the OS place them."""
    runs = [(name, params, pipelined) for _label, name, params in codecs for pipelined in (False, True)
            for _ in range(repeats)]
    labels = [label for label, _n, _p in codecs for _pl in (False, True) for _ in range(repeats)]
    # sequential runs decode after the last frame, pipelined ones as frames land (the model's two modes)
    results = tempfile.NamedTemporaryFile(prefix="kvwire-e2e-", suffix=".jsonl", delete=False)
    results.close()
    # the receiver listens on the link's own address only (loopback, or its namespace's veth end)
    WireLimits.from_mapping(wire_limits)  # a bad key stops here, not in the receiver process
    recv_code = RECEIVER.format(lib=netlab.LIB, host=link.receiver_host, port=PORT, modes=[p for _n, _p, p in runs],
                                timeout=timeout, limits=dict(wire_limits or {}),
                                out=results.name, threads=threads)
    pin_send, pin_recv = (("taskset", "-c", cpus[0]), ("taskset", "-c", cpus[1])) if cpus else ((), ())
    receiver = subprocess.Popen([*link.receiver_prefix, *pin_recv, sys.executable, "-c", recv_code], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
    try:
        if receiver.stdout.readline().strip() != "ready":
            raise KvwireError(f"the receiver did not start: {receiver.stderr.read()[-2000:]}")
        send_code = SENDER.format(lib=netlab.LIB, kv=str(kv_file), runs=runs, host=link.receiver_host, port=PORT,
                                  timeout=timeout, threads=threads)
        sender = subprocess.run([*link.sender_prefix, *pin_send, sys.executable, "-c", send_code], capture_output=True,
                                text=True, timeout=timeout * (len(runs) + 1))
        if sender.returncode != 0:
            raise KvwireError(f"the sender failed: {sender.stderr[-3000:]}")
        _, err = receiver.communicate(timeout=timeout)
        if receiver.returncode != 0:
            raise KvwireError(f"the receiver failed: {err[-3000:]}")
        got = [json.loads(line) for line in Path(results.name).read_text().splitlines() if line.startswith("{")]
    finally:
        if receiver.poll() is None:
            receiver.kill()
            receiver.wait(timeout=10)
        Path(results.name).unlink(missing_ok=True)
    sent = [json.loads(line) for line in sender.stdout.splitlines() if line.startswith("{")]
    if len(sent) != len(runs) or len(got) != len(runs):
        raise KvwireError(f"{len(sent)} sends and {len(got)} receives for {len(runs)} runs")
    rows = []
    for label, s, r in zip(labels, sent, got):
        rows.append({"codec": label, "mode": "pipelined" if s["pipelined"] else "sequential", "link": link.kind,
                     "rate_gbps": link.rate_gbps, "wall_s": s["wall_s"], "total_bytes": s["total_bytes"],
                     "encode_s": s["encode_s"], "decode_s": r["decode_s"], "wire_bytes": s["wire_bytes"]})
    return rows


def split_cpus(n: int | None = None) -> tuple[str, str] | None:
    """Disjoint CPU lists (taskset syntax) for the sender and the receiver: halves of this host's CPUs."""
    n = n or os.cpu_count() or 1
    if n < 2:
        return None
    half = n // 2
    return (f"0-{half - 1}" if half > 1 else "0", f"{half}-{n - 1}" if n - half > 1 else str(half))


def table_costs(timing_csvs: dict[str, str | Path], kv_file: str | Path, dataset: str,
                bin_tokens: int) -> dict[str, CodecCost]:
    """Codec label -> the per-layer cost the break-even uses for ``kv_file``'s cache: the rows of each
    codec's ``time_cpu`` table for this cache's (dataset, bin), checked layer by layer against the cache."""
    from ..kv import load_kv

    layer_raw = [x.raw_bytes for x in load_kv(kv_file).layers]
    out = {}
    for label, path in timing_csvs.items():
        t = pd.read_csv(path)
        rows = t[(t["dataset"] == dataset) & (t["bin"] == bin_tokens)].sort_values("layer")
        if rows.empty:
            raise KvwireError(f"{path} has no timing of {dataset} bin {bin_tokens} (the cache of the end-to-end run)")
        if list(rows["layer_raw_bytes"]) != layer_raw:
            raise KvwireError(f"{path}: the {dataset} bin {bin_tokens} timing's layers differ from "
                              f"{Path(kv_file).name}'s ({len(rows)} layers timed, {len(layer_raw)} in the cache)")
        out[label] = cost_from_arrays(sum(layer_raw), rows["wire_bytes"], rows["encode_s"], rows["decode_s"])
    return out


def compare_with_model(rows: Sequence[dict], raw_bytes: int, rate_gbps: float, latency_s: float = 0.0,
                       table: dict[str, CodecCost] | None = None) -> pd.DataFrame:
    """Measured wall time against the model fed ``table`` (codec label -> the break-even's cost), and
    against the model fed the same run's per-layer times (``model_own_s``: all there is without a table)."""
    out = []
    for r in rows:
        own = cost_from_arrays(raw_bytes, r["wire_bytes"], r["encode_s"], r["decode_s"])
        f = pipelined_time if r["mode"] == "pipelined" else sequential_time
        model_own = f(own, rate_gbps, latency_s)
        ref = table[r["codec"]] if table is not None else own
        model = f(ref, rate_gbps, latency_s)
        out.append({"codec": r["codec"], "mode": r["mode"], "link": r["link"], "rate_gbps": rate_gbps,
                    "raw_bytes": raw_bytes, "wire_bytes": r["total_bytes"], "measured_s": r["wall_s"],
                    "model_s": model, "rel_error": abs(model - r["wall_s"]) / r["wall_s"],
                    "model_source": "time_cpu table" if table is not None else "this run",
                    "model_own_s": model_own, "rel_error_own": abs(model_own - r["wall_s"]) / r["wall_s"],
                    "encode_s": sum(r["encode_s"]), "decode_s": sum(r["decode_s"]),
                    "table_encode_s": sum(ref.encode_s), "table_decode_s": sum(ref.decode_s),
                    "encode_in_transfer_over_table": sum(r["encode_s"]) / max(sum(ref.encode_s), 1e-12),
                    "decode_in_transfer_over_table": sum(r["decode_s"]) / max(sum(ref.decode_s), 1e-12),
                    "raw_transfer_model_s": baseline_time(raw_bytes, rate_gbps, latency_s)})
    return pd.DataFrame(out)


def e2e_transfer(kv_file: str | Path, codecs: Sequence[tuple[str, str, dict]], rate_gbps: float, out_csv: str | Path,
                 *, timing_csvs: dict[str, str | Path], dataset: str, bin_tokens: int, repeats: int = 2,
                 threads: int = 1, pin: bool = True, wire_limits: dict | None = None) -> pd.DataFrame:
    """Measure on a veth link shaped at ``rate_gbps`` and write the comparison with the model fed the
    ``time_cpu`` tables (codec label -> table) the break-even uses."""
    from ..kv import load_kv

    missing = sorted({label for label, _n, _p in codecs} - set(timing_csvs))
    if missing:
        raise KvwireError(f"no time_cpu table for codec(s) {', '.join(missing)}: the model needs the break-even's")
    table = table_costs(timing_csvs, kv_file, dataset, bin_tokens)  # before the link: a table that does not fit stops here
    raw = next(iter(table.values())).raw_bytes if table else sum(x.raw_bytes for x in load_kv(kv_file).layers)
    cpus = split_cpus() if pin else None
    with netlab.veth_link(rate_gbps, prefix="kve") as link:
        rows = measure_e2e(link, kv_file, codecs, repeats=repeats, threads=threads, cpus=cpus,
                           wire_limits=wire_limits)
    out = compare_with_model(rows, raw, rate_gbps, table=table)
    out.insert(out.columns.get_loc("rate_gbps") + 1, "sender_cpus", cpus[0] if cpus else "")
    out.insert(out.columns.get_loc("sender_cpus") + 1, "receiver_cpus", cpus[1] if cpus else "")
    write_csv(out_csv, out)
    return out


def e2e_summary(tables: Sequence[str | Path], out_csv: str | Path) -> pd.DataFrame:
    """Median measured and modelled seconds per (model, rate, codec, mode) of the end-to-end runs."""
    frames = []
    for p in tables:
        t = pd.read_csv(p)
        t.insert(0, "model", Path(p).parent.name)
        frames.append(t)
    if not frames:
        raise KvwireError("no end-to-end transfer tables (results/transfer/e2e/<model>/veth<rate>.csv): "
                          "run the rule e2e_transfer as root")
    t = pd.concat(frames, ignore_index=True)
    s = (t.groupby(["model", "rate_gbps", "codec", "mode"], as_index=False)
         .agg(runs=("measured_s", "size"), measured_s=("measured_s", "median"), model_s=("model_s", "median"),
              rel_error=("rel_error", "median"), wire_bytes=("wire_bytes", "first"), raw_bytes=("raw_bytes", "first"),
              raw_transfer_model_s=("raw_transfer_model_s", "first"),
              **({"model_source": ("model_source", "first"), "model_own_s": ("model_own_s", "median"),
                  "rel_error_own": ("rel_error_own", "median"),
                  "encode_in_transfer_over_table": ("encode_in_transfer_over_table", "median"),
                  "decode_in_transfer_over_table": ("decode_in_transfer_over_table", "median")}
                 if "model_own_s" in t.columns else {})))
    s["speedup_measured_vs_raw_model"] = s["raw_transfer_model_s"] / s["measured_s"]
    write_csv(out_csv, s)
    return s


def e2e_transfer_of_manifest(manifest_json: str | Path, codecs_config: Mapping[str, Any], rate_gbps: float,
                             out_csv: str | Path, *, timing_csvs: Sequence[str | Path], transfer: Mapping[str, Any],
                             threads: int = 1) -> pd.DataFrame:
    """``e2e_transfer`` on the first prompt's cache of an extraction manifest, every configured codec,
    the model fed the ``time_cpu`` tables ``results/timing/cpu/{model}/{codec}.csv`` (named by codec)."""
    from ..config import codec_spec
    from ..io import read_json

    manifest = read_json(manifest_json)
    codecs = [(cid, *codec_spec(cid, codecs_config[cid])) for cid in codecs_config]
    return e2e_transfer(Path(manifest_json).parent / manifest["prompts"][0]["file"], codecs, rate_gbps, out_csv,
                        timing_csvs={Path(p).stem: p for p in timing_csvs}, dataset=manifest["dataset"],
                        bin_tokens=int(manifest["prefix_tokens"]), repeats=transfer["link_repeats"],
                        threads=threads, wire_limits=transfer["wire_limits"])
