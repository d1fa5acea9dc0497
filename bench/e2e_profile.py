"""Why a codec is slower inside a transfer than alone: one real cache, isolated vs in-transfer times.

For each codec: the isolated per-layer CPU cost (``time_codec_cpu``: the timer behind ``time_cpu`` and
the break-even), then ``measure_e2e`` over a link (loopback, or a tc-shaped veth pair as root), and the
quotients in-transfer / isolated of encode and decode seconds, plus the model's error when it is fed
the isolated table (what the break-even uses) and when it is fed the run's own times.

    python bench/e2e_profile.py results/kv/smollm2-135m/wikitext2/2048/*.safetensors \
        --codecs identity int8 int4 zstd kivi4 --links loopback veth10 --repeats 3

Prints one table; ``--csv`` writes it. Runs as root for veth links; keep the machine quiet.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "lib"))

import pandas as pd  # noqa: E402
import torch  # noqa: E402

from kvwire import netlab  # noqa: E402
from kvwire.codecs import build  # noqa: E402
from kvwire.kv import load_kv  # noqa: E402
from kvwire.stages.e2e import measure_e2e  # noqa: E402
from kvwire.timing import time_codec_cpu  # noqa: E402
from kvwire.transfer import CodecCost, pipelined_time, sequential_time  # noqa: E402


def _link(name: str):
    if name == "loopback":
        return netlab.loopback()
    if name.startswith("veth"):
        return netlab.veth_link(float(name[4:]), prefix="kvp")
    raise SystemExit(f"unknown link {name!r}: loopback or veth<rate>")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("kv", help="a .safetensors KV file")
    ap.add_argument("--codecs", nargs="+", default=["identity", "int8", "int4", "zstd"],
                    help="codec ids of --config (all: every one)")
    ap.add_argument("--config", default="config/config.yaml")
    ap.add_argument("--links", nargs="+", default=["loopback"])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--rate-for-loopback", type=float, default=30.0,
                    help="Gbps fed to the model for the unshaped loopback (its measured rate)")
    ap.add_argument("--timer", choices=["pass", "layer"], default="pass")
    ap.add_argument("--pin", nargs=2, metavar=("SENDER_CPUS", "RECEIVER_CPUS"),
                    help="taskset CPU lists of the sender and the receiver (e.g. 0 1)")
    ap.add_argument("--csv")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)  # the sender's and time_cpu's setting
    import yaml

    with open(args.config) as fh:  # codec specs as kvwire.config.codec_spec reads them (no jsonschema needed)
        entries = yaml.safe_load(fh)["codecs"]
    ids = list(entries) if args.codecs == ["all"] else args.codecs
    specs = {cid: ((entries.get(cid) or {}).get("codec", cid), dict((entries.get(cid) or {}).get("params") or {}))
             for cid in ids}
    rec = load_kv(args.kv)
    raw = sum(x.raw_bytes for x in rec.layers)
    iso = {}
    for name in ids:
        cost, _ = time_codec_cpu(build(*specs[name]), rec.layers, repeats=5, warmup=1, stats=rec.stats or None,
                                 timer=args.timer)
        iso[name] = cost
    rows = []
    for link_name in args.links:
        with _link(link_name) as link:
            got = measure_e2e(link, args.kv, [(n, *specs[n]) for n in ids], repeats=args.repeats,
                             cpus=tuple(args.pin) if args.pin else None)
        rate = link.rate_gbps or args.rate_for_loopback
        for r in got:
            c = iso[r["codec"]]
            f = pipelined_time if r["mode"] == "pipelined" else sequential_time
            own = CodecCost(raw, r["wire_bytes"], r["encode_s"], r["decode_s"])
            m_iso, m_own = f(c, rate), f(own, rate)
            rows.append({"link": link_name, "codec": r["codec"], "mode": r["mode"], "measured_s": r["wall_s"],
                         "model_isolated_s": m_iso, "err_isolated": abs(m_iso - r["wall_s"]) / r["wall_s"],
                         "model_own_s": m_own, "err_own": abs(m_own - r["wall_s"]) / r["wall_s"],
                         "enc_in_transfer_over_isolated": sum(r["encode_s"]) / sum(c.encode_s),
                         "dec_in_transfer_over_isolated": sum(r["decode_s"]) / sum(c.decode_s),
                         "isolated_enc_s": sum(c.encode_s), "isolated_dec_s": sum(c.decode_s)})
    t = pd.DataFrame(rows)
    s = t.groupby(["link", "codec", "mode"], as_index=False).median(numeric_only=True)
    from kvwire.stages.runtime import cpu_model

    print(f"# {cpu_model()}, {os.cpu_count()} CPUs, torch threads 1, "
          f"{Path(args.kv).name}, {raw / 1e6:.1f} MB raw, timer {args.timer}, pin {args.pin}")
    with pd.option_context("display.width", 200, "display.max_columns", 20, "display.precision", 3):
        print(s.to_string(index=False))
        print("median err_isolated %.3f  max %.3f | median err_own %.3f  max %.3f" % (
            s.err_isolated.median(), s.err_isolated.max(), s.err_own.median(), s.err_own.max()))
    if args.csv:
        t.to_csv(args.csv, index=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
