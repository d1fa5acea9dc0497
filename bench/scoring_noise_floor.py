"""How much of a codec's measured quality loss is the scoring harness's own noise?

Scores the same real caches with the model computing in bf16 and in float32, against four
"codecs": identity, one ulp of bf16 noise (each K/V element times 1 + N(0, 2^-9)), 1 % relative noise,
and real per-token / per-channel int8. Prints mean token agreement and how many argmax flips there
were, with the largest top-1/top-2 logit margin among the flipped positions: in bf16 the logits
themselves are rounded to ~0.25 at their magnitude, so near-ties flip on any perturbation.

Usage (KV files from any study, e.g. the default one):
    python bench/scoring_noise_floor.py --model resources/models/smollm2-135m \
        --kv results/kv/smollm2-135m/wikitext2/256/manifest.json results/kv/smollm2-135m/wikitext2/512/manifest.json

Measured 2026-11-23 on SmolLM2-135M, 16 prompts of 256/512 tokens, 63 scored tokens each:
    scoring dtype   identity  bf16-ulp noise  1 % noise  int8 (token)  int8 (channel)
    bfloat16        1.0000    0.9812          0.9772     0.9821        0.9821
    float32         1.0000    0.9970          0.9921     0.9960        0.9940
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "lib"))

import kvwire  # noqa: E402,F401  (sets the OpenMP policy before torch loads)
import torch  # noqa: E402

from kvwire import wire  # noqa: E402
from kvwire.codecs import build  # noqa: E402
from kvwire.kv import continue_logits, load_kv  # noqa: E402
from kvwire.models import load_model  # noqa: E402
from kvwire.stages.extract import kv_batches  # noqa: E402


def noisy(layers, rel: float, seed: int):
    g = torch.Generator().manual_seed(seed)
    out = []
    for layer in layers:
        k, v = layer.k.float(), layer.v.float()
        k = k * (1 + rel * torch.randn(k.shape, generator=g))
        v = v * (1 + rel * torch.randn(v.shape, generator=g))
        out.append(replace(layer, k=k.to(layer.k.dtype), v=v.to(layer.v.dtype)))
    return out


def through(codec, layers):
    return wire.decode(wire.encode(codec, layers))[1]


PERTURBATIONS = {
    "identity": lambda layers, i: layers,
    "bf16-ulp noise": lambda layers, i: noisy(layers, 2.0 ** -9, i),
    "1% noise": lambda layers, i: noisy(layers, 0.01, i),
    "int8 (token)": lambda layers, i: through(build("int8"), layers),
    "int8 (channel)": lambda layers, i: through(build("int8", {"granularity": "channel"}), layers),
}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="a materialized model directory (resources/models/NAME)")
    ap.add_argument("--kv", nargs="+", required=True, help="extraction manifests")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"{'scoring dtype':14s} " + " ".join(f"{name:>15s}" for name in PERTURBATIONS) + "   flips (max margin)")
    for dtype in (torch.bfloat16, torch.float32):
        model, _ = load_model(args.model, dtype=dtype, device="cpu")
        agree = {name: [] for name in PERTURBATIONS}
        flips = {name: [] for name in PERTURBATIONS}
        for b, batch in enumerate(kv_batches(args.kv, args.batch_size)):
            records = [load_kv(p) for p in batch]
            P = records[0].seq_len
            cont = torch.stack([r.continuation_ids for r in records])[:, :-1]
            ref = continue_logits(model, [r.layers for r in records], P, cont)
            top2 = ref.topk(2, -1).values
            margin = top2[..., 0] - top2[..., 1]
            for name, perturb in PERTURBATIONS.items():
                logits = continue_logits(model, [perturb(r.layers, 1000 * b + j) for j, r in enumerate(records)],
                                         P, cont)
                same = logits.argmax(-1) == ref.argmax(-1)
                agree[name].append(same.float().mean(1))
                flips[name] += margin[~same].tolist()
        means = {name: float(torch.cat(v).mean()) for name, v in agree.items()}
        print(f"{str(dtype).removeprefix('torch.'):14s} " + " ".join(f"{means[n]:15.4f}" for n in PERTURBATIONS)
              + "   " + ", ".join(f"{len(flips[n])} ({max(flips[n], default=0):.3f})" for n in PERTURBATIONS))


if __name__ == "__main__":
    main()
