"""Statistics of real KV caches that explain why some codecs hurt a model more than others.

Per-channel quantizers (KIVI keys) pay for outlier channels; per-token quantizers pay for a
token whose scale one channel sets (its absmax far above its RMS); heavy tails (kurtosis) hurt
every uniform grid. Everything is computed in float32 on the tensors as cached (post-RoPE keys).

Degenerate inputs give undefined numbers rather than made-up ones: the kurtosis of a constant
tensor is NaN, an all-zero token is left out of the dynamic range, and a head whose median
channel absmax is zero has an infinite absmax ratio (and every non-zero channel counts as an
outlier, as the definition says).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import pandas as pd
import torch

from .codecs import LayerKV
from .errors import KVError, KvwireError

STATS = ("key_outlier_channel_share", "value_outlier_channel_share", "key_channel_absmax_ratio",
         "key_token_dynamic_range", "value_token_dynamic_range", "key_kurtosis", "value_kurtosis",
         "key_rms", "value_rms")


def _checked(t: torch.Tensor, label: str) -> torch.Tensor:
    if t.dim() != 3:
        raise KVError(f"{label} shape {tuple(t.shape)} is not [kv_heads, seq, head_dim]")
    if t.numel() == 0:
        raise KVError(f"{label} tensor is empty (shape {tuple(t.shape)})")
    x = t.detach().to(torch.float32)
    if not torch.isfinite(x).all():
        raise KVError(f"{label} hold NaN/Inf")
    return x


def _channel_absmax(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each channel's absmax over tokens [heads, dim] and each head's median of them [heads, 1]."""
    absmax = x.abs().amax(dim=1)
    return absmax, absmax.quantile(0.5, dim=1, keepdim=True)  # interpolated median (even head_dim)


def _outlier_share(x: torch.Tensor, factor: float) -> float:
    absmax, median = _channel_absmax(x)
    return float((absmax > factor * median).float().mean())


def _absmax_ratio(x: torch.Tensor) -> float:
    absmax, median = _channel_absmax(x)
    peak = absmax.amax(dim=1, keepdim=True)
    # 0/0: every channel of the head is zero, so all are alike (ratio 1)
    ratio = torch.where(peak == 0, torch.ones_like(peak), peak / median)
    return float(ratio.mean())


def _token_dynamic_range(x: torch.Tensor) -> float:
    absmax = x.abs().amax(dim=2)
    rms = x.square().mean(dim=2).sqrt()
    live = rms > 0  # an all-zero token has no scale to pay for
    if not live.any():
        return float("nan")
    return float((absmax[live] / rms[live]).mean())


def _excess_kurtosis(x: torch.Tensor) -> float:
    centred = x - x.mean()
    var = centred.square().mean()
    if var == 0:
        return float("nan")
    return float(centred.pow(4).mean() / var.square() - 3.0)


def layer_statistics(layer: LayerKV, *, outlier_factor: float = 6.0) -> dict[str, float]:
    """The statistics in ``STATS`` for one layer's cache.

    A channel is an outlier when its absmax over tokens exceeds ``outlier_factor`` times the
    median channel absmax of its kv head; shares count channels over all heads.
    """
    if not outlier_factor > 0:
        raise KvwireError(f"outlier_factor must be > 0, got {outlier_factor}")
    k, v = _checked(layer.k, "keys"), _checked(layer.v, "values")
    return {
        "key_outlier_channel_share": _outlier_share(k, outlier_factor),
        "value_outlier_channel_share": _outlier_share(v, outlier_factor),
        "key_channel_absmax_ratio": _absmax_ratio(k),
        "key_token_dynamic_range": _token_dynamic_range(k),
        "value_token_dynamic_range": _token_dynamic_range(v),
        "key_kurtosis": _excess_kurtosis(k),
        "value_kurtosis": _excess_kurtosis(v),
        "key_rms": float(k.square().mean().sqrt()),
        "value_rms": float(v.square().mean().sqrt()),
    }


def record_statistics(layers: Sequence[LayerKV], **kw) -> list[dict]:
    """``layer_statistics`` of every layer, each dict with its ``layer`` index first."""
    if not layers:
        raise KVError("no layers to compute statistics of")
    out = []
    for i, layer in enumerate(layers):
        try:
            out.append({"layer": i, **layer_statistics(layer, **kw)})
        except KVError as exc:
            raise KVError(f"layer {i}: {exc}") from exc
    return out


def model_statistics(paths: Sequence[str | Path], *, model: str, **kw) -> pd.DataFrame:
    """Per-layer statistics of a model's KV files, averaged over the files (one prompt each).

    Columns: model, layer, n_prompts, then ``STATS``; one row per layer.
    """
    from .kv import load_kv

    if not paths:
        raise KVError(f"model {model!r}: no KV files to compute statistics of")
    rows = []
    n_layers = None
    for path in paths:
        record = load_kv(path)
        if n_layers is not None and len(record.layers) != n_layers:
            raise KVError(f"{path}: {len(record.layers)} layers, but the model's other KV files have {n_layers}")
        n_layers = len(record.layers)
        try:
            rows.extend(record_statistics(record.layers, **kw))
        except KVError as exc:
            raise KVError(f"{path}: {exc}") from exc
    per_layer = pd.DataFrame(rows).groupby("layer", sort=True)[list(STATS)].mean().reset_index()
    per_layer.insert(0, "model", model)
    per_layer.insert(2, "n_prompts", len(paths))
    return per_layer


def summarise(per_layer: pd.DataFrame) -> pd.DataFrame:
    """One row per model: each statistic's mean over layers, the worst layer's key outlier share
    (``key_outlier_channel_share_max``) and ``key_layer_spread``, the coefficient of variation of
    key RMS over layers (population std / mean: the layers are all there are, not a sample).

    Columns: model, n_layers, n_prompts, ``STATS``, key_outlier_channel_share_max, key_layer_spread.
    """
    missing = [c for c in ("model", "layer", "n_prompts", *STATS) if c not in per_layer.columns]
    if missing:
        raise KvwireError(f"per-layer statistics lack columns {missing}")
    out = []
    for model, g in per_layer.groupby("model", sort=True):
        row = {"model": model, "n_layers": int(g.layer.nunique()), "n_prompts": int(g.n_prompts.min())}
        row.update({name: float(g[name].mean()) for name in STATS})
        row["key_outlier_channel_share_max"] = float(g.key_outlier_channel_share.max())
        row["key_layer_spread"] = float(g.key_rms.std(ddof=0) / g.key_rms.mean())
        out.append(row)
    return pd.DataFrame(out)
