"""The sanity gates on the real models of the default study (SmolLM2-135M and Gemma-3-270M from PyPI):
the workflow's own stages extract real caches, encode them to wire bytes and score them in float32.

Identity must be exact, per-token int8 must keep token agreement >= 0.99 and KIVI-4 >= 0.95.
(Scored in bf16, int8 measured 0.982 on SmolLM2: one ulp of random noise alone gives 0.981 there,
so the harness, not int8, failed the gate -- see bench/scoring_noise_floor.py.)

Gemma-3-270M fails the int8 gate for a reason that was found, so the test expects it: its keys have
outlier channels (2.3 % of channels above 6x the head's median, 15 % in the worst layer; SmolLM2
0.04 %), per-token scales are set by them, and tokens flip on real margins (up to 0.25 nats), while
per-channel int8 passes (0.998). config/config.yaml waives that gate with this reason.
"""

import pytest

from conftest import WIKITEXT2
from kvwire.gates import evaluate_gates
from kvwire.prompts import build_documents, min_chars_for, write_documents
from kvwire.stages.encode import encode_prompts
from kvwire.stages.extract import extract_kv
from kvwire.stages.quality import reference_for, score_codec

PREFIX, CONTINUATION, PROMPTS, GENERATE = 256, 64, 8, 8
UNDERSTOOD_FAILURES = {"gemma3-270m": {"int8"}}  # see the module docstring
CODECS = {"identity": ("identity", {}), "int8": ("int8", {}), "int8_channel": ("int8", {"granularity": "channel"}),
          "kivi4": ("kivi4", {})}


def _docs(tmp_path):
    spec = {"source": f"file:{WIKITEXT2}", "format": "wikitext"}
    path = tmp_path / "docs.jsonl"
    write_documents(path, build_documents(spec, max_docs=24, min_chars=min_chars_for(PREFIX + CONTINUATION), seed=3))
    return path


@pytest.mark.slow
@pytest.mark.parametrize("name", ["smollm2-135m", "gemma3-270m"])
def test_sanity_gates_on_real_models(pypi_model, name, tmp_path):
    import pandas as pd

    model_dir, _ = pypi_model(name)
    facts = model_dir / "facts.json"
    kv = tmp_path / "kv" / "manifest.json"
    extract_kv(facts, _docs(tmp_path), kv, prefix_tokens=PREFIX, continuation=CONTINUATION, count=PROMPTS,
               dtype="bfloat16", device="cpu")
    ref = tmp_path / "reference.safetensors"
    reference_for(facts, kv, ref, generate_tokens=GENERATE, batch_size=PROMPTS)
    rows = []
    for codec, (codec_name, params) in CODECS.items():
        wire = tmp_path / codec / "manifest.json"
        encode_prompts(kv, wire, codec_id=codec, codec_name=codec_name, params=params)
        result = score_codec(facts, kv, wire, tmp_path / codec / "quality.json", reference=ref,
                             generate_tokens=GENERATE, batch_size=PROMPTS)
        rows += [dict(r, model=name, codec=codec) for r in result["rows"]]
    rows = pd.DataFrame(rows)
    gates = evaluate_gates(rows)
    assert set(gates.gate[~gates.passed]) == UNDERSTOOD_FAILURES.get(name, set()), gates.to_string()
    assert len(gates) == 3
    # where per-token int8 fails for outlier channels, per-channel int8 does better (and is near-lossless)
    agreement = rows.groupby("codec").token_agreement.mean()
    if "int8" in UNDERSTOOD_FAILURES.get(name, set()):
        assert agreement["int8_channel"] > agreement["int8"] and agreement["int8_channel"] >= 0.98
    # the gates can fail: a floor above what int8 measured fails it
    measured = float(gates.set_index("gate").loc["int8", "value"])
    assert not evaluate_gates(pd.DataFrame(rows), {"int8": measured + 1e-6}).passed.all()
