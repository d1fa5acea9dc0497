"""Which body tokens the guardband GPU encoder keeps when the plan drops tokens -- the same ones as
the CPU codec, whose choice rests on float32 scores (``GuardBand._scores`` + ``selection.top_up``).

The CPU ranks a layer's body tokens by a float32 score, higher first, ties to the earlier token:
``-sum over heads of ||key||`` (key norm) or ``sum over heads of attn_sum``. The float32 rounding
of those sums depends on torch's CPU reduction order (vector width, cascade blocks, column
position), which no GPU reduction reproduces. So the device computes the scores almost exactly
(float64; the key norms come from ``key_stats_kernel``), sorts them, and checks the cut: the CPU
score of a token is within ``delta = 2 (head_dim + heads + 4) 2**-24 |score|`` of the exact one
(a sum of n positive terms in any order is off by at most (n-1) units of rounding, a square root
halves that), so when the gap between the last kept and the first dropped token exceeds
``2 delta`` every CPU ranking keeps the same set. Where it does not (near-ties), the few tokens
around the cut whose scores lie within ``2 delta`` of each other are sent to the host, scored
there by the CPU codec's own torch expression (each column of a reduction only depends on its own
values, so scoring a subset in place reproduces the CPU's floats) and ranked as ``top_up`` does.

Cost: one host sync per encode that drops tokens (the near-tie check), plus two small transfers
when a layer has near-ties. ``GuardBandKernel.exact_selection = False`` skips all of it and keeps
the device's ranking (no sync; a layer may then differ from the CPU codec where two scores are
within float32 rounding at the cut).
"""

from __future__ import annotations

import numpy as np
import torch

from ...errors import KVError, WireError
from ..base import Stats

UNIT = 2.0 ** -24  # float32 unit roundoff
WINDOW = 32  # sorted scores fetched on each side of a near-tie cut (doubled until a band fits)


def uses_attn(score: str, stats: Stats, layer: int) -> bool:
    """Whether ``layer`` ranks body tokens by accumulated attention (else by key norm), as the CPU codec."""
    return score == "attn_sum" or (score == "auto" and bool(stats) and "attn_sum" in stats[layer])


def _accurate_scores(codec, kv: torch.Tensor, lay, tabs: dict, norms: torch.Tensor | None, stats,
                     check: bool) -> torch.Tensor:
    """float64 [drop layers, body] scores, higher = kept first (the CPU's, without its float32 rounding)."""
    lo, hi = lay.sinks, lay.seq - lay.recent
    by_attn = [uses_attn(codec.params["score"], stats, i) for i in lay.drop_layers]
    if not any(by_attn):  # one batched reduction over every token-dropping layer
        return -norms.index_select(0, tabs["drop"])[:, :, lo:hi].sum(dim=1)
    rows = []
    for i, attn in zip(lay.drop_layers, by_attn):
        if attn:
            rows.append(_attn_stat(stats, i, lay, check).to(kv.device).double().sum(dim=0)[lo:hi])
        else:
            rows.append(-norms[i, :, lo:hi].sum(dim=0))
    return torch.stack(rows)


def _attn_stat(stats, layer: int, lay, check: bool) -> torch.Tensor:
    from ...codecs.base import LayerContext
    from ...codecs.selection import stat

    ctx = LayerContext(layer, lay.n_layers, torch.float32, (lay.heads, lay.seq, lay.head_dim),
                       dict(stats[layer]) if stats else {})
    if check:
        return stat(ctx, "attn_sum", "guardband")  # the CPU's shape and finiteness checks (KVError/CodecError)
    t = ctx.stats.get("attn_sum") if ctx.stats else None
    if t is None or tuple(t.shape) != (lay.heads, lay.seq):
        return stat(ctx, "attn_sum", "guardband")  # raises the CPU codec's error
    return t.float()


def select_kept(codec, kv: torch.Tensor, lay, tabs: dict, norms, stats, *, check: bool):
    """(kept-token table int32 [drop layers, max kept] -- positions ascending, the keep mask bytes
    uint8 [drop layers, ceil(seq / 8)]) for the plan's token-dropping layers."""
    body, lo = lay.body, lay.sinks
    scores = _accurate_scores(codec, kv, lay, tabs, norms, stats, check)
    if check and not bool(torch.isfinite(scores).all()):
        raise KVError("codec 'guardband': NaN/Inf in the token scores")
    order = torch.argsort(scores, dim=1, descending=True, stable=True)
    kept = tabs["kept"]
    if codec.exact_selection:
        order = _settle_near_ties(codec, kv, lay, scores, order, stats)
    kmax = max(lay.kept)
    device = kv.device
    if kmax == 0:
        keep = torch.zeros((len(lay.drop_layers), body), dtype=torch.bool, device=device)
        idx = torch.zeros((len(lay.drop_layers), 1), dtype=torch.int32, device=device)
    else:
        top = order[:, :kmax]
        valid = torch.arange(kmax, device=device)[None, :] < kept[:, None]
        sel = torch.where(valid, top, body).sort(dim=1).values  # kept positions ascending, then the sentinel
        keep = torch.zeros((len(lay.drop_layers), body + 1), dtype=torch.bool, device=device)
        keep.scatter_(1, sel, True)
        keep = keep[:, :body]
        idx = (sel + lo).to(torch.int32)
    nbytes = lay.mask_bytes
    full = torch.zeros((len(lay.drop_layers), nbytes * 8), dtype=torch.bool, device=device)
    full[:, :lay.seq] = True
    full[:, lo:lo + body] = keep
    weights = (1 << torch.arange(8, device=device, dtype=torch.int32))
    mask = (full.view(-1, nbytes, 8).to(torch.int32) * weights).sum(dim=2).to(torch.uint8)  # bitpack's order
    return idx.contiguous(), mask


def _settle_near_ties(codec, kv, lay, scores: torch.Tensor, order: torch.Tensor, stats) -> torch.Tensor:
    """``order`` with every near-tie at a layer's cut re-ranked by the CPU codec's float32 scores."""
    body = lay.body
    if body < 2:
        return order
    kept = np.array(lay.kept)
    eps = 4 * (lay.head_dim + lay.heads + 4) * UNIT  # 2 delta, relative
    ranked = scores.gather(1, order)
    k = torch.as_tensor(np.clip(kept, 1, max(1, body - 1)), device=scores.device)
    cut = ranked.gather(1, torch.stack([k - 1, k], dim=1))  # last kept, first dropped
    gap_ok = (cut[:, 0] - cut[:, 1]) > eps * cut.abs().amax(dim=1) + 1e-300
    live = torch.as_tensor((kept > 0) & (kept < body), device=scores.device)
    flagged = (live & ~gap_ok).nonzero().squeeze(1).cpu().tolist()  # the one sync
    if not flagged:
        return order
    width = WINDOW
    bands = {}
    while flagged:
        rows = torch.as_tensor(flagged, device=scores.device)
        start = np.clip(kept[flagged] - width, 0, None)
        cols = torch.as_tensor(start[:, None] + np.arange(2 * width)[None, :], device=scores.device).clamp_(max=body - 1)
        win_scores = ranked[rows[:, None], cols].cpu().numpy()
        win_order = order[rows[:, None], cols].cpu().numpy()
        retry = []
        for j, f in enumerate(flagged):
            n_win = min(2 * width, body - start[j])
            band = _band(win_scores[j, :n_win], kept[f] - start[j], eps)
            if (band[0] == 0 and start[j] > 0) or (band[1] == n_win - 1 and start[j] + n_win < body):
                retry.append(f)  # the band runs past the window: fetch a wider one
            else:
                bands[f] = (start[j] + band[0], win_order[j, band[0]:band[1] + 1])
        flagged, width = retry, width * 2
    cpu = _cpu_scores(codec, kv, lay, {f: tokens for f, (_, tokens) in bands.items()}, stats)
    r, c, v = [], [], []
    for f, (first, tokens) in bands.items():
        # top_up: argsort(score.double(), descending, stable) -> higher first, ties to the earlier token
        ranked_tokens = sorted(range(len(tokens)), key=lambda j: (-float(cpu[f][j]), int(tokens[j])))
        r += [f] * len(tokens)
        c += list(range(first, first + len(tokens)))
        v += [int(tokens[j]) for j in ranked_tokens]
    order = order.clone()
    dev = order.device
    order[torch.as_tensor(r, device=dev), torch.as_tensor(c, device=dev)] = torch.as_tensor(v, device=dev)
    return order


def _band(ranked: np.ndarray, k: int, eps: float) -> tuple[int, int]:
    """[first, last] positions of the sorted scores around cut ``k`` linked by gaps <= eps * |score|."""
    def close(a, b):
        return a - b <= eps * max(abs(a), abs(b)) + 1e-300

    first, last = k - 1, k
    while first > 0 and close(ranked[first - 1], ranked[first]):
        first -= 1
    while last < len(ranked) - 1 and close(ranked[last], ranked[last + 1]):
        last += 1
    return first, last


def _cpu_scores(codec, kv: torch.Tensor, lay, tokens: dict[int, np.ndarray], stats) -> dict[int, torch.Tensor]:
    """The CPU codec's float32 scores of ``tokens`` (body indices) of drop layer ``f`` (index into
    ``lay.drop_layers``), computed on the host with its own torch expressions."""
    lo, hi, body, h = lay.sinks, lay.seq - lay.recent, lay.body, lay.heads
    out, by_norm = {}, [f for f in tokens if not uses_attn(codec.params["score"], stats, lay.drop_layers[f])]
    if by_norm:
        layer_ix = torch.as_tensor(np.concatenate([[lay.drop_layers[f]] * len(tokens[f]) for f in by_norm]),
                                   device=kv.device)
        tok_ix = torch.as_tensor(np.concatenate([tokens[f] for f in by_norm]) + lo, device=kv.device)
        keys = kv[layer_ix, 0, :, tok_ix, :].cpu()  # [tokens, heads, head_dim]
        at = 0
        for f in by_norm:
            m = len(tokens[f])
            norms = keys[at:at + m].transpose(0, 1).float().norm(dim=-1)  # [heads, m]: per-row, as on the CPU
            at += m
            cols = torch.as_tensor(tokens[f])
            table = torch.zeros((h, body), dtype=torch.float32)
            table[:, cols] = norms  # the column sums of [heads, body] in the CPU's own order
            out[f] = -table.sum(dim=0)[cols]
    for f in tokens:
        if f not in out:
            attn = stats[lay.drop_layers[f]]["attn_sum"].cpu().float()
            out[f] = attn.sum(dim=0)[lo:hi][torch.as_tensor(tokens[f])]
    return out


def kept_positions(lay, data: torch.Tensor, tabs: dict, *, check: bool) -> dict[int, torch.Tensor]:
    """Each token-dropping layer's kept positions (int64, ascending) from its keep mask in the payload."""
    nbytes, s = lay.mask_bytes, lay.seq
    packed = data[tabs["mask_at"]].view(len(lay.drop_layers), nbytes)
    bits = ((packed.to(torch.int32)[:, :, None] >> torch.arange(8, device=data.device, dtype=torch.int32)) & 1)
    bits = bits.reshape(len(lay.drop_layers), nbytes * 8).bool()
    keep = bits[:, :s]
    want = [lay.sinks + lay.recent + k for k in lay.kept]
    if check:
        if bool(bits[:, s:].any()):
            raise WireError(f"codec 'guardband': keep mask has bits set past the layer's {s} tokens")
        if not (bool(keep[:, :lay.sinks].all()) and bool(keep[:, s - lay.recent:].all())):
            raise WireError("codec 'guardband': keep mask drops a guard token")
        got = keep.sum(dim=1).cpu().tolist()
        if got != want:
            raise WireError(f"codec 'guardband': keep masks keep {got[:4]}... tokens, the plan {want[:4]}...")
    order = torch.argsort((~keep).to(torch.int8), dim=1, stable=True)  # kept positions first, ascending
    return {i: order[j, :want[j]].to(torch.int64) for j, i in enumerate(lay.drop_layers)}
