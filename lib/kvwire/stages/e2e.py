"""Stage: end-to-end transfer of a real cache, measured, against the analytical model.

A sender process encodes the cache with each codec and streams it with ``transport.send_kv``; a
receiver process (``recv_kv``) verifies and decodes every frame as it lands. On a shaped veth link
they run in two network namespaces (``netlab.veth_link``); on loopback, side by side. The sender
times each transfer from its first encode to the receiver's acknowledgement. The model is fed the
same run's per-layer encode and decode times and wire bytes (``transfer.pipelined_time`` /
``sequential_time``) at the link's nominal rate, so model and measurement see the same codec work.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Sequence

import pandas as pd

from .. import netlab
from ..errors import KvwireError
from ..io import write_csv
from ..transfer import baseline_time, cost_from_arrays, pipelined_time, sequential_time

PORT = 5601

# results go to a file, not stdout: a pipe nobody reads while the sender runs fills at 64 KB and
# would stall the receiver mid-stream (seen at 90 transfers)
RECEIVER = """
import json, sys
sys.path.insert(0, {lib!r})
from kvwire.transport import listen, recv_kv
with listen("0.0.0.0", {port}) as srv, open({out!r}, "w") as out:
    print("ready", flush=True)
    for pipelined in {modes!r}:
        header, layers, st = recv_kv(srv, timeout={timeout}, pipelined=pipelined)
        out.write(json.dumps({{"decode_s": st.decode_s, "recv_wall_s": st.wall_s, "bytes": st.total_bytes}}) + "\\n")
"""

SENDER = """
import json, sys, time
sys.path.insert(0, {lib!r})
import torch
torch.set_num_threads(1)
from kvwire.kv import load_kv
from kvwire.transport import send_kv
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
                repeats: int = 2, timeout: float = 120.0) -> list[dict]:
    """Every (codec label, name, params) x {sequential, pipelined} x ``repeats`` over ``link``."""
    runs = [(name, params, pipelined) for _label, name, params in codecs for pipelined in (False, True)
            for _ in range(repeats)]
    labels = [label for label, _n, _p in codecs for _pl in (False, True) for _ in range(repeats)]
    # sequential runs decode after the last frame, pipelined ones as frames land (the model's two modes)
    results = tempfile.NamedTemporaryFile(prefix="kvwire-e2e-", suffix=".jsonl", delete=False)
    results.close()
    recv_code = RECEIVER.format(lib=netlab.LIB, port=PORT, modes=[p for _n, _p, p in runs], timeout=timeout,
                                out=results.name)
    receiver = subprocess.Popen([*link.receiver_prefix, sys.executable, "-c", recv_code], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
    try:
        if receiver.stdout.readline().strip() != "ready":
            raise KvwireError(f"the receiver did not start: {receiver.stderr.read()[-2000:]}")
        send_code = SENDER.format(lib=netlab.LIB, kv=str(kv_file), runs=runs, host=link.receiver_host, port=PORT,
                                  timeout=timeout)
        sender = subprocess.run([*link.sender_prefix, sys.executable, "-c", send_code], capture_output=True,
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


def compare_with_model(rows: Sequence[dict], raw_bytes: int, rate_gbps: float, latency_s: float = 0.0) -> pd.DataFrame:
    """Measured wall time against the model fed the same run's per-layer times and bytes."""
    out = []
    for r in rows:
        cost = cost_from_arrays(raw_bytes, r["wire_bytes"], r["encode_s"], r["decode_s"])
        model = (pipelined_time if r["mode"] == "pipelined" else sequential_time)(cost, rate_gbps, latency_s)
        out.append({"codec": r["codec"], "mode": r["mode"], "link": r["link"], "rate_gbps": rate_gbps,
                    "raw_bytes": raw_bytes, "wire_bytes": r["total_bytes"], "measured_s": r["wall_s"],
                    "model_s": model, "rel_error": abs(model - r["wall_s"]) / r["wall_s"],
                    "encode_s": sum(r["encode_s"]), "decode_s": sum(r["decode_s"]),
                    "raw_transfer_model_s": baseline_time(raw_bytes, rate_gbps, latency_s)})
    return pd.DataFrame(out)


def e2e_transfer(kv_file: str | Path, codecs: Sequence[tuple[str, str, dict]], rate_gbps: float, out_csv: str | Path,
                 *, repeats: int = 2) -> pd.DataFrame:
    """Measure on a veth link shaped at ``rate_gbps`` and write the comparison table."""
    from ..kv import load_kv

    rec = load_kv(kv_file)
    raw = sum(x.raw_bytes for x in rec.layers)
    with netlab.veth_link(rate_gbps, prefix="kve") as link:
        rows = measure_e2e(link, kv_file, codecs, repeats=repeats)
    table = compare_with_model(rows, raw, rate_gbps)
    write_csv(out_csv, table)
    return table


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
              raw_transfer_model_s=("raw_transfer_model_s", "first")))
    s["speedup_measured_vs_raw_model"] = s["raw_transfer_model_s"] / s["measured_s"]
    write_csv(out_csv, s)
    return s
