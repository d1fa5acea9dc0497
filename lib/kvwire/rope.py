"""Rotary position embedding (RoPE) as transformers applies it, so keys can be taken back before it.

transformers caches keys AFTER RoPE: ``k_rot = k * cos + rotate_half(k) * sin`` with
``cos = cos(pos * f) * s`` and ``sin = sin(pos * f) * s`` over ``cat(f, f)`` (``f`` the inverse
frequencies, ``s`` the rope type's attention scaling; the rotated dims are the first
``2 * len(f)``, the rest pass through, as partial-rotary models do). Each (i, i + d/2) pair is
rotated by ``pos * f_i`` and scaled by ``s``, so the inverse is exact up to float rounding:
``k = (k_rot * cos - rotate_half(k_rot) * sin) / s**2``.

Codecs that quantize PRE-RoPE keys (KVQuant) un-rotate before quantizing and rotate back after
decoding, using the per-layer frequencies that extraction stores as the statistics
``rope_inv_freq`` [n_freq] and ``rope_scaling`` [1] (``rope_tables`` reads them off the model and
checks them against the model's own rotary module).
"""

from __future__ import annotations

import torch

from .errors import KVError


def _cos_sin(positions: torch.Tensor, inv_freq: torch.Tensor, scaling: float):
    freqs = positions.to(torch.float32)[:, None] * inv_freq.to(torch.float32)[None, :]
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos() * scaling, emb.sin() * scaling


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def rotate(k: torch.Tensor, positions: torch.Tensor, inv_freq: torch.Tensor, scaling: float = 1.0, *,
           inverse: bool = False) -> torch.Tensor:
    """Apply (or, ``inverse``, undo) RoPE on keys [..., seq, head_dim]; returns float32."""
    n_rot = 2 * inv_freq.numel()
    if n_rot == 0 or n_rot > k.shape[-1]:
        raise KVError(f"RoPE with {inv_freq.numel()} frequencies does not fit head_dim {k.shape[-1]}")
    if not scaling > 0:
        raise KVError(f"RoPE attention scaling must be positive, got {scaling}")
    cos, sin = _cos_sin(positions, inv_freq, scaling)
    x = k.to(torch.float32)
    rot, rest = x[..., :n_rot], x[..., n_rot:]
    if inverse:
        out = (rot * cos - _rotate_half(rot) * sin) / (scaling * scaling)
    else:
        out = rot * cos + _rotate_half(rot) * sin
    return torch.cat((out, rest), dim=-1) if rest.shape[-1] else out


def rope_tables(model) -> list[dict[str, torch.Tensor]] | None:
    """Per-layer ``{"rope_inv_freq", "rope_scaling"}`` read off a transformers model, or None.

    None when the model has no recognisable rotary module or its cos/sin do not match the
    plain formula (dynamic or otherwise position-dependent RoPE variants): pre-RoPE codecs then
    refuse the cache with a clear error instead of un-rotating it wrongly.
    """
    inner = getattr(model, "model", model)
    rotary = getattr(inner, "rotary_emb", None)
    cfg = getattr(model, "config", None)
    n_layers = getattr(cfg, "num_hidden_layers", None)
    if rotary is None or n_layers is None:
        return None
    layer_types = list(getattr(cfg, "layer_types", None) or [None] * n_layers)
    tables = []
    probe_pos = torch.arange(0, 4096, 511)
    cache: dict = {}
    for i in range(n_layers):
        kind = layer_types[i]
        if kind not in cache:
            prefix = f"{kind}_" if kind is not None and hasattr(rotary, f"{kind}_inv_freq") else ""
            inv_freq = getattr(rotary, f"{prefix}inv_freq", None)
            scaling = getattr(rotary, f"{prefix}attention_scaling", None)
            if inv_freq is None or scaling is None:
                return None
            inv_freq = inv_freq.detach().float().cpu()
            # the model's own cos/sin at a few positions must equal the formula's
            x = torch.zeros(1, probe_pos.numel(), 1, dtype=torch.float32, device=inv_freq.device)
            try:
                args = (x, probe_pos[None]) + ((kind,) if prefix else ())
                cos, sin = rotary(*args)
            except Exception:  # a rotary module with another signature: not one we can invert safely
                return None
            want_cos, want_sin = _cos_sin(probe_pos, inv_freq, float(scaling))
            if not (torch.allclose(cos[0].float().cpu(), want_cos, atol=1e-4)
                    and torch.allclose(sin[0].float().cpu(), want_sin, atol=1e-4)):
                return None
            cache[kind] = {"rope_inv_freq": inv_freq.clone(),
                           "rope_scaling": torch.tensor([float(scaling)], dtype=torch.float32)}
        tables.append({k: v.clone() for k, v in cache[kind].items()})
    return tables
