"""KV-cache statistics: synthetic tensors with known answers, and a real model's cache."""

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from kvwire.codecs import LayerKV
from kvwire.errors import KVError, KvwireError
from kvwire.kv import KVRecord, prefill, save_kv
from kvwire.kvstats import STATS, layer_statistics, model_statistics, record_statistics, summarise

from conftest import STORIES


def channel_outliers(n_outliers, heads=4, seq=32, dim=64, scale=10.0, seed=0):
    """Every channel's absmax is exactly 1, except ``n_outliers`` per head (different ones per head) at ``scale``."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(heads, seq, dim, generator=g)
    x = x / x.abs().amax(dim=1, keepdim=True)
    for h in range(heads):
        x[h, :, [(3 * h + 7 * j) % dim for j in range(n_outliers)]] *= scale
    return x


def test_outlier_share_and_absmax_ratio_are_exact():
    layer = LayerKV(channel_outliers(2), channel_outliers(5, seed=1))
    s = layer_statistics(layer)
    assert s["key_outlier_channel_share"] == 2 / 64
    assert s["value_outlier_channel_share"] == 5 / 64
    assert s["key_channel_absmax_ratio"] == pytest.approx(10.0, rel=1e-6)
    # the same channels are no longer outliers once the threshold is above their 10x
    assert layer_statistics(layer, outlier_factor=12.0)["key_outlier_channel_share"] == 0.0
    # bf16 input (1 and 10 are exact there) gives the same answer
    low = layer_statistics(LayerKV(layer.k.to(torch.bfloat16), layer.v.to(torch.bfloat16)))
    assert low["key_outlier_channel_share"] == 2 / 64 and low["value_outlier_channel_share"] == 5 / 64


def test_constant_tensor_has_unit_dynamic_range_and_no_outliers():
    c = torch.full((2, 9, 16), -3.0)
    s = layer_statistics(LayerKV(c, c.clone()))
    assert s["key_token_dynamic_range"] == 1.0 and s["value_token_dynamic_range"] == 1.0
    assert s["key_channel_absmax_ratio"] == 1.0 and s["key_outlier_channel_share"] == 0.0
    assert s["key_rms"] == 3.0 and s["value_rms"] == 3.0
    assert math.isnan(s["key_kurtosis"])  # undefined for zero variance, not invented


def test_one_hot_tokens_have_dynamic_range_sqrt_dim_and_zero_tokens_are_skipped():
    dim = 16
    k = torch.zeros(2, 8, dim)
    k[:, torch.arange(8), torch.arange(8)] = 5.0  # each token one non-zero channel
    v = k.clone()
    v[:, 3] = 0.0  # an all-zero token: left out, not 0/0
    s = layer_statistics(LayerKV(k, v))
    assert s["key_token_dynamic_range"] == pytest.approx(math.sqrt(dim), rel=1e-6)
    assert s["value_token_dynamic_range"] == pytest.approx(math.sqrt(dim), rel=1e-6)


def test_kurtosis_of_gaussian_and_laplace():
    rng = np.random.default_rng(0)
    gauss = torch.from_numpy(rng.normal(2.0, 3.0, size=(4, 4096, 64)).astype(np.float32))
    laplace = torch.from_numpy(rng.laplace(0.0, 1.5, size=(4, 4096, 64)).astype(np.float32))
    s = layer_statistics(LayerKV(gauss, laplace))
    assert s["key_kurtosis"] == pytest.approx(0.0, abs=0.05)  # sampling sd ~0.005 at 1M elements
    assert s["value_kurtosis"] == pytest.approx(3.0, abs=0.25)  # sampling sd ~0.05
    assert s["key_rms"] == pytest.approx(math.sqrt(2.0**2 + 3.0**2), rel=1e-2)
    assert s["value_rms"] == pytest.approx(1.5 * math.sqrt(2), rel=1e-2)
    assert s["key_outlier_channel_share"] == 0.0  # Gaussian channels all peak near 4 sigma


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_input_is_an_error(bad):
    k = torch.randn(2, 4, 8)
    v = torch.randn(2, 4, 8)
    v[1, 2, 3] = bad
    with pytest.raises(KVError, match="values hold NaN/Inf"):
        layer_statistics(LayerKV(k, v))
    with pytest.raises(KVError, match="layer 1: values hold NaN/Inf"):
        record_statistics([LayerKV(k, k.clone()), LayerKV(k, v)])


def test_empty_or_malformed_input_is_an_error():
    empty = torch.empty(2, 0, 8)
    with pytest.raises(KVError, match="keys tensor is empty"):
        layer_statistics(LayerKV(empty, empty))
    with pytest.raises(KVError, match="not \\[kv_heads, seq, head_dim\\]"):
        layer_statistics(LayerKV(torch.ones(4, 8), torch.ones(4, 8)))
    with pytest.raises(KVError, match="no layers"):
        record_statistics([])
    with pytest.raises(KvwireError, match="outlier_factor"):
        layer_statistics(LayerKV(torch.ones(1, 2, 2), torch.ones(1, 2, 2)), outlier_factor=0.0)


def save(path, layers):
    layers = [LayerKV(layer.k.clone(), layer.v.clone()) for layer in layers]  # safetensors refuses shared storage
    save_kv(path, KVRecord(layers=layers, prefix_ids=torch.arange(layers[0].k.shape[1])))
    return path


def test_model_statistics_averages_files_per_layer_and_summarises(tmp_path):
    # file a: layer 0 has 2 key outliers per head, layer 1 none; file b: 4 and none
    flat = torch.ones(4, 32, 64)
    a = save(tmp_path / "a.safetensors", [LayerKV(channel_outliers(2), flat), LayerKV(flat, flat)])
    b = save(tmp_path / "b.safetensors", [LayerKV(channel_outliers(4), flat), LayerKV(2 * flat, flat)])
    per_layer = model_statistics([a, b], model="m")
    assert list(per_layer.columns) == ["model", "layer", "n_prompts", *STATS]
    assert per_layer.layer.tolist() == [0, 1] and (per_layer.model == "m").all() and (per_layer.n_prompts == 2).all()
    assert per_layer.key_outlier_channel_share.tolist() == [3 / 64, 0.0]
    assert per_layer.key_rms[1] == pytest.approx(1.5)  # mean of RMS 1 and 2

    other = per_layer.assign(model="n", key_rms=1.0)
    summary = summarise(pd.concat([per_layer, other])).set_index("model")
    assert summary.loc["m", "key_outlier_channel_share"] == pytest.approx(1.5 / 64)
    assert summary.loc["m", "key_outlier_channel_share_max"] == 3 / 64
    rms = per_layer.key_rms.to_numpy()
    assert summary.loc["m", "key_layer_spread"] == pytest.approx(rms.std() / rms.mean())
    assert summary.loc["n", "key_layer_spread"] == 0.0
    assert summary.loc["m", "n_layers"] == 2 and summary.loc["m", "n_prompts"] == 2


def test_model_statistics_rejects_files_that_disagree_or_are_missing(tmp_path):
    flat = torch.ones(1, 4, 8)
    a = save(tmp_path / "a.safetensors", [LayerKV(flat, flat)])
    b = save(tmp_path / "b.safetensors", [LayerKV(flat, flat), LayerKV(flat, flat)])
    with pytest.raises(KVError, match="b.safetensors: 2 layers"):
        model_statistics([a, b], model="m")
    with pytest.raises(KVError, match="no KV files"):
        model_statistics([], model="m")
    with pytest.raises(KVError, match="not found"):
        model_statistics([tmp_path / "missing.safetensors"], model="m")


def test_statistics_of_a_real_models_cache_are_finite_and_in_range(tmp_path):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(STORIES, dtype=torch.float32).eval()
    ids = torch.randint(3, model.config.vocab_size, (2, 48), generator=torch.Generator().manual_seed(0))
    per_prompt, _ = prefill(model, ids)
    head_dim = per_prompt[0][0].k.shape[-1]
    for layers in per_prompt:
        stats = record_statistics(layers)
        assert [s["layer"] for s in stats] == list(range(model.config.num_hidden_layers))
        for s in stats:
            assert all(math.isfinite(s[name]) for name in STATS), s
            assert 0.0 <= s["key_outlier_channel_share"] <= 1.0 and 0.0 <= s["value_outlier_channel_share"] <= 1.0
            assert s["key_channel_absmax_ratio"] >= 1.0
            # absmax^2 <= sum of squares = dim * RMS^2, and >= RMS^2
            for name in ("key_token_dynamic_range", "value_token_dynamic_range"):
                assert 1.0 <= s[name] <= math.sqrt(head_dim) * (1 + 1e-5)
            assert s["key_kurtosis"] >= -2.0 and s["value_kurtosis"] >= -2.0  # excess kurtosis is >= -2
            assert s["key_rms"] > 0 and s["value_rms"] > 0
    # the file route (KV files on disk, averaged) agrees with the in-memory one
    files = [save(tmp_path / f"p{i}.safetensors", layers) for i, layers in enumerate(per_prompt)]
    per_layer = model_statistics(files, model="stories260K")
    direct = pd.DataFrame([s for layers in per_prompt for s in record_statistics(layers)]).groupby("layer").mean()
    np.testing.assert_allclose(per_layer[list(STATS)].to_numpy(), direct[list(STATS)].to_numpy(), rtol=1e-6)
