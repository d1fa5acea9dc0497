"""RoPE inversion: keys taken back before RoPE equal the keys the attention projected, on real models."""

import pytest
import torch

from kvwire.errors import KVError
from kvwire.kv import prefill
from kvwire.rope import rope_tables, rotate


def _pre_rope_keys(model, module_of, ids):
    """Keys as the model computed them before RoPE (a hook on the last op before the rotation)."""
    cfg = model.config
    captured = {}
    hooks = [module_of(layer).register_forward_hook(lambda mod, i, o, n=n: captured.setdefault(n, o))
             for n, layer in enumerate(model.model.layers)]
    try:
        layers, _ = prefill(model, ids)
    finally:
        for h in hooks:
            h.remove()
    d = cfg.head_dim
    pre = [captured[n].reshape(ids.shape[0], ids.shape[1], -1, d).transpose(1, 2) for n in range(len(captured))]
    return layers, pre


def _check(model, module_of, seq=40):
    torch.manual_seed(0)
    ids = torch.randint(3, model.config.vocab_size, (2, seq))
    layers, pre = _pre_rope_keys(model, module_of, ids)
    tables = rope_tables(model)
    assert tables is not None and len(tables) == len(layers[0])
    for n, table in enumerate(tables):
        for b in range(ids.shape[0]):
            k_post = layers[b][n].k
            un = rotate(k_post, torch.arange(seq), table["rope_inv_freq"], float(table["rope_scaling"]), inverse=True)
            scale = pre[n][b].abs().max()
            assert (un - pre[n][b]).abs().max() <= 1e-5 * max(1.0, float(scale))
            back = rotate(un, torch.arange(seq), table["rope_inv_freq"], float(table["rope_scaling"]))
            assert (back - k_post.float()).abs().max() <= 1e-5 * max(1.0, float(k_post.abs().max()))
    return tables


def test_llama_keys_before_rope(small_model):
    tables = _check(small_model, lambda layer: layer.self_attn.k_proj)
    theta = small_model.config.rope_parameters["rope_theta"]
    d = small_model.config.head_dim
    assert torch.allclose(tables[0]["rope_inv_freq"], 1.0 / theta ** (torch.arange(0, d, 2).float() / d))


def test_gemma3_keys_before_rope_per_layer_type():
    """Gemma 3 rotates local and global layers with different bases; keys are normalised (k_norm) first."""
    from test_kv import tiny_gemma3

    model = tiny_gemma3()
    tables = _check(model, lambda layer: layer.self_attn.k_norm)
    types = model.config.layer_types
    local = [t for t, kind in zip(tables, types) if kind == "sliding_attention"]
    full = [t for t, kind in zip(tables, types) if kind == "full_attention"]
    assert not torch.equal(local[0]["rope_inv_freq"], full[0]["rope_inv_freq"])


def test_partial_rotary_and_bad_inputs():
    k = torch.randn(2, 9, 16)
    f = torch.tensor([1.0, 0.1, 0.01])  # 6 of 16 dims rotated, 10 pass through
    out = rotate(k, torch.arange(9), f)
    assert torch.equal(out[..., 6:], k[..., 6:]) and not torch.allclose(out[..., :6], k[..., :6])
    assert torch.allclose(rotate(out, torch.arange(9), f, inverse=True), k, atol=1e-6)
    scaled = rotate(k, torch.arange(9), f, 1.5)
    assert torch.allclose(rotate(scaled, torch.arange(9), f, 1.5, inverse=True), k, atol=1e-5)
    with pytest.raises(KVError, match="does not fit head_dim"):
        rotate(k, torch.arange(9), torch.ones(9))
    with pytest.raises(KVError, match="scaling"):
        rotate(k, torch.arange(9), f, 0.0)


def test_unknown_rotary_gives_none():
    assert rope_tables(torch.nn.Linear(2, 2)) is None
