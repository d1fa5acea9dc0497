"""CPU codec times at 1, 2, 4, 8 and 16 threads on real caches (issue 27): the whole-server CPU side.

Usage (on a host whose cores this process owns, e.g. the lent GPU machine's 16; see bench/NOTES.md):
    snakemake --cores 2 results/kv/{smollm2-135m,gemma3-270m,qwen2.5-coder-0.5b}/wikitext2/2048/manifest.json \\
        --configfile config/config.yaml bench/scaling-caches.yaml
    python bench/cpu_scaling.py --kv results/kv/*/wikitext2/2048/p0000.safetensors \\
        --out results/timing/cpu_scaling/<host>.csv --run "<date> <what>"

Every codec of ``--config`` (the default study's) is timed with the timer of the rule ``time_cpu``
(``kvwire.timing.time_codec_cpu``, ``--timer pass`` by default: every layer once per pass as a transfer
does, the pass of median total of ``--repeats`` after ``--warmup``, framing and checksums included) at each thread count, with OpenMP threads spinning (ACTIVE, as ``time_cpu``
sets: the process owns the cores). The CSV is the cached input of the rule ``cpu_scaling``
(``results/tables/cpu_scaling.csv``); the printed table is the scaling summary.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "lib"))
os.environ.setdefault("OMP_WAIT_POLICY", "ACTIVE")  # before torch loads OpenMP (as scripts/time_cpu.py)

import pandas as pd  # noqa: E402
import yaml  # noqa: E402

from kvwire.io import write_csv  # noqa: E402
from kvwire.stages.cpu_scaling import check_threads, scaling_table, time_scaling  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kv", nargs="+", required=True, help="kvwire KV files (real caches)")
    ap.add_argument("--config", default="config/config.yaml", help="codecs: this config's (default: the study's)")
    ap.add_argument("--codecs", nargs="*", help="only these codec ids of --config")
    ap.add_argument("--threads", default="1,2,4,8,16")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--timer", choices=["pass", "layer"], default="pass")
    ap.add_argument("--run", default="", help="a label kept in every row (date, host, what)")
    ap.add_argument("--out", required=True)
    a = ap.parse_args(argv)
    with open(a.config) as fh:
        config = yaml.safe_load(fh)
    ids = a.codecs or list(config["codecs"])
    # (registered name, params) of each entry, as kvwire.config.codec_spec reads them (not imported: it
    # needs jsonschema, which the lent GPU machine lacks)
    entries = {cid: config["codecs"][cid] or {} for cid in ids}
    codecs = {cid: (e.get("codec", cid), dict(e.get("params", {}) or {})) for cid, e in entries.items()}
    threads = check_threads([int(t) for t in a.threads.split(",")])
    parts = []
    for t in threads:  # written after each thread count: a run cut short keeps what it measured
        parts.append(time_scaling(a.kv, codecs, [t], repeats=a.repeats, warmup=a.warmup, run=a.run, timer=a.timer,
                                  progress=lambda s: print(s, flush=True)))
        raw = pd.concat(parts, ignore_index=True)
        write_csv(a.out, raw)
    t = scaling_table(raw)
    cols = ["model", "codec", "threads", "encode_mbps", "decode_mbps", "encode_speedup", "decode_speedup"]
    print(f"CPU: {raw.device_name.iloc[0]}, {raw.logical_cpus.iloc[0]} logical CPUs, OMP_WAIT_POLICY="
          f"{raw.omp_wait_policy.iloc[0]}")
    print(t[cols].to_string(index=False, float_format=lambda x: f"{x:.2f}"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
