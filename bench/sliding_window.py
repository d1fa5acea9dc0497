"""What trimming sliding-window layers to the decode window changes (issue #26, point 4).

Takes KV files of one bin extracted WITHOUT trimming (every layer holds the whole prefix: a study run
before the change, or ``extract_kv(..., trim_windows=False)``), trims it exactly as extraction now does
(``kvwire.kv.window_starts``: a sliding layer keeps the ``window - 1`` tokens the first decode query
reads) and prints, before and after, summed over the files: raw bytes, and per codec the real wire
bytes and ratio (the library's ``wire.encode`` with the encode stage's metadata and statistics) and
the mean quality against each side's own reference (float32 scoring in one batch, as the study).
Identity's exactness: the trimmed caches against the full ones (teacher-forced logits, argmaxes,
cross-entropy, greedy tokens), and identity through the wire against the trimmed reference.

Usage (the default study's Gemma-3 cache of the 2048 bin):
    python bench/sliding_window.py --model resources/models/gemma3-270m \
        --kv results/kv/gemma3-270m/wikitext2/2048/wikitext2-b2048-p000*.safetensors
    OMP_NUM_THREADS=1 python bench/sliding_window.py ... --kv ONE_FILE --no-quality --timing 5   # break-even

Measured 2026-12-07 on the default study's 4 prompts of the 2048 bin: docs/QUALITY.md#sliding-window-layers.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "lib"))

import kvwire  # noqa: E402,F401  (sets the OpenMP policy before torch loads)
import torch  # noqa: E402

from kvwire import wire  # noqa: E402
from kvwire.codecs import build  # noqa: E402
from kvwire.kv import (KVRecord, continue_logits, load_kv, transpose_linears_for_cpu, trim_layers,  # noqa: E402
                       trim_stats, window_starts)
from kvwire.models import load_model  # noqa: E402
from kvwire.quality import reference_batch, score_batch  # noqa: E402
from kvwire.timing import time_codec_cpu  # noqa: E402
from kvwire.transfer import break_even_gbps  # noqa: E402

CODECS = {"identity": ("identity", {}), "int8": ("int8", {}), "kivi4": ("kivi4", {}), "cachegen": ("cachegen", {}),
          "kvquant4_prerope": ("kvquant4", {"pre_rope": True}), "snapkv": ("snapkv", {}),
          "guardband_8x": ("guardband", {"target_ratio": 8, "recent": 16, "min_body_bits": 4, "strict": True})}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="dense model directory (resources/models/NAME)")
    ap.add_argument("--kv", required=True, nargs="+", help="untrimmed KV files of one bin (every layer holds the "
                    "whole prefix)")
    ap.add_argument("--codecs", nargs="*", default=list(CODECS), help=f"of {list(CODECS)}")
    ap.add_argument("--steps", type=int, default=64, help="greedy tokens (the study: quality.generate_tokens)")
    ap.add_argument("--no-quality", action="store_true", help="bytes only (no model forward)")
    ap.add_argument("--timing", type=int, default=0, metavar="REPEATS",
                    help="also time each codec on the CPU (kvwire.timing, median of REPEATS, first file) and solve "
                         "its break-even bandwidth before and after (kvwire.transfer)")
    ap.add_argument("--json", help="also write the numbers here")
    args = ap.parse_args()

    fulls = [load_kv(p) for p in args.kv]
    for rec, p in zip(fulls, args.kv):
        rec.require_scoring_inputs(p)
        if "window_starts" in rec.meta:
            raise SystemExit(f"{p} is already trimmed (window_starts {rec.meta['window_starts']})")
    P = fulls[0].seq_len
    if any(r.seq_len != P for r in fulls):
        raise SystemExit("the KV files must share one prefix length (one bin)")
    model = transpose_linears_for_cpu(load_model(args.model, dtype=torch.float32, device="cpu")[0])
    starts = window_starts(model, P)
    wins = [KVRecord(trim_layers(r.layers, starts), r.prefix_ids, r.continuation_ids, r.first_token,
                     dict(r.meta, window_starts=starts), stats=trim_stats(r.stats, starts) if r.stats else [])
            for r in fulls]
    sides = {"before": fulls, "after": wins}
    raw = {side: sum(r.raw_bytes for r in recs) for side, recs in sides.items()}
    out: dict = {"kv": args.kv, "prefix_tokens": P, "window_starts": starts,
                 "kept_tokens": [P - s for s in starts], "raw_bytes": raw}
    print(f"{len(fulls)} prompt(s) of {P} tokens, {len(starts)} layers, {sum(1 for s in starts if s)} trimmed to "
          f"{sorted({P - s for s in starts if s})} tokens")
    print(f"raw bytes: before {raw['before']:,}  after {raw['after']:,}  "
          f"({1 - raw['after'] / raw['before']:.1%} never read)")

    encoded: dict[str, dict[str, list[bytes]]] = {}
    out["codecs"] = {}
    print(f"\n{'codec':<18}{'wire before':>14}{'ratio':>8}{'wire after':>14}{'ratio':>8}{'bytes saved':>13}")
    for cid in args.codecs:
        name, params = CODECS[cid]
        pipe = build(name, params)
        row = {}
        for side, recs in sides.items():
            data = [wire.encode(pipe, r.layers, dict(r.meta, prefix_len=r.seq_len), stats=r.stats or None)
                    for r in recs]
            encoded.setdefault(cid, {})[side] = data
            n = sum(len(d) for d in data)
            row[side] = {"wire_bytes": n, "ratio": raw[side] / n}
        row["wire_bytes_saved"] = 1 - row["after"]["wire_bytes"] / row["before"]["wire_bytes"]
        out["codecs"][cid] = row
        print(f"{cid:<18}{row['before']['wire_bytes']:>14,}{row['before']['ratio']:>8.3f}"
              f"{row['after']['wire_bytes']:>14,}{row['after']['ratio']:>8.3f}{row['wire_bytes_saved']:>13.1%}")
    if args.timing:
        print(f"\n{'codec':<18}{'enc+dec ms before':>19}{'break-even Gbps seq/pipe':>27}"
              f"{'enc+dec ms after':>18}{'break-even Gbps seq/pipe':>27}")
        for cid in args.codecs:
            pipe = build(*CODECS[cid])
            line = f"{cid:<18}"
            for side, recs in sides.items():
                r = recs[0]
                cost, _ = time_codec_cpu(pipe, r.layers, repeats=args.timing, warmup=1,
                                         meta=dict(r.meta, prefix_len=r.seq_len), stats=r.stats or None)
                ms = 1e3 * (sum(cost.encode_s) + sum(cost.decode_s))
                seq, pipelined = break_even_gbps(cost, "sequential"), break_even_gbps(cost, "pipelined")
                out["codecs"][cid][side].update({"codec_ms": ms, "break_even_gbps_sequential": seq,
                                                 "break_even_gbps_pipelined": pipelined})
                line += f"{ms:>19.1f}{seq:>15.2f} / {pipelined:<9.2f}"
            print(line)
    if args.no_quality:
        _write(args.json, out)
        return 0

    # identity's exactness: the trimmed caches against the full ones, as the model sees them
    cont = torch.stack([r.continuation_ids for r in fulls])
    t0 = time.perf_counter()
    lf = continue_logits(model, [r.layers for r in fulls], P, cont[:, :-1])
    lw = continue_logits(model, [r.placed_layers() for r in wins], P, cont[:, :-1])
    refs = {side: reference_batch(model, recs, args.steps) for side, recs in sides.items()}
    rb, ra = refs["before"], refs["after"]
    exact = {"max_abs_logit_diff": float((lf - lw).abs().max()), "max_abs_logit": float(lf.abs().max()),
             "argmax_equal": bool(torch.equal(lf.argmax(-1), lw.argmax(-1))),
             "teacher_forced_agreement": float(torch.cat([(b.argmax == a.argmax).float()
                                                          for b, a in zip(rb, ra)]).mean()),
             "ce_before": float(torch.cat([b.ce for b in rb]).mean()),
             "ce_after": float(torch.cat([a.ce for a in ra]).mean()),
             "max_abs_ce_diff": max(float((b.ce - a.ce).abs().max()) for b, a in zip(rb, ra)),
             "greedy_equal": all(torch.equal(b.greedy, a.greedy) for b, a in zip(rb, ra)),
             "greedy_tokens": args.steps, "seconds": time.perf_counter() - t0}
    out["identity_exactness"] = exact
    print(f"\ntrimmed vs full caches: max |logit diff| {exact['max_abs_logit_diff']:.3g} (max |logit| "
          f"{exact['max_abs_logit']:.1f}), argmaxes equal: {exact['argmax_equal']}, cross-entropy "
          f"{exact['ce_before']:.6f} vs {exact['ce_after']:.6f} (max per-token diff {exact['max_abs_ce_diff']:.2g}), "
          f"{args.steps} greedy tokens equal: {exact['greedy_equal']}")

    metrics = ("token_agreement", "delta_ce", "greedy_match", "key_cosine", "value_cosine", "attention_retention")
    print(f"\n{'codec':<18}{'agree before':>14}{'dCE before':>12}{'agree after':>13}{'dCE after':>11}")
    for cid in args.codecs:
        for side, recs in sides.items():
            decoded = [wire.decode(d)[1] for d in encoded[cid][side]]
            rows = score_batch(model, recs, decoded, args.steps, refs[side])
            out["codecs"][cid][side].update({m: sum(r[m] for r in rows) / len(rows) for m in metrics})
            out["codecs"][cid][side]["per_prompt_token_agreement"] = [r["token_agreement"] for r in rows]
        b, a = out["codecs"][cid]["before"], out["codecs"][cid]["after"]
        print(f"{cid:<18}{b['token_agreement']:>14.4f}{b['delta_ce']:>12.5f}{a['token_agreement']:>13.4f}"
              f"{a['delta_ce']:>11.5f}")
    _write(args.json, out)
    return 0


def _write(path: str | None, out: dict) -> None:
    if path:
        Path(path).write_text(json.dumps(out, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    sys.exit(main())
