"""Quality of a decoded cache: re-inject it and compare with the original cache's behaviour.

Protocol (the codec sees only the prefix): the prefill side computes the prefix KV and its
greedy next token ``first_token``; only the KV crosses the wire. The decode side then
(a) teacher-forces the true continuation c_0..c_{T-1} and predicts c_1..c_{T-1}, and
(b) generates ``steps`` tokens greedily after ``first_token``. Both run once with the
original cache (reference) and once with the decoded one, in the same batch composition,
so identity gives exactly agreement 1.0 and delta cross-entropy 0.0.

Metrics per prompt: teacher-forced token agreement (argmax equality), cross-entropy of the
true continuation (nats/token) and its delta, greedy match rate and first divergence,
key/value cosine similarity and relative MSE between original and decoded tensors, and (when
the reference recorded it) attention retention: per layer, the share of the attention the
continuation's queries paid to the ORIGINAL cache that falls on the tokens the decoded cache kept.

Window-trimmed sliding-window layers (``kvwire.kv``: a record's ``window_starts``): the original
cache IS the trimmed one (what a serving system sends), the codecs saw only its tokens, and both
caches re-enter the model at their tokens' original positions (``KVRecord.placed_layers``). Error
metrics compare stored tokens with stored tokens; ``decoded`` layers are taken as a codec returns
them (positions, if any, index the stored tokens).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F

from .codecs import LayerKV
from .errors import KVError
from .kv import KVRecord, continue_attention, continue_logits, greedy_against, greedy_generate


def kv_errors(original: Sequence[LayerKV], decoded: Sequence[LayerKV]) -> dict[str, float]:
    """Mean per-vector cosine and relative MSE of keys and values, over the tokens the decoded cache kept."""
    out: dict[str, float] = {}
    for label, get in (("key", lambda layer: layer.k), ("value", lambda layer: layer.v)):
        cos_sum, cos_n, err, ref = 0.0, 0, 0.0, 0.0
        for orig, dec in zip(original, decoded, strict=True):
            a = get(orig).double()
            if dec.positions is not None:
                a = a.index_select(1, dec.positions.long())
            b = get(dec).double()
            # cosine as 1 - |a/|a| - b/|b||^2 / 2: exactly 1.0 for identical vectors
            na = a / a.norm(dim=-1, keepdim=True).clamp_min(1e-30)
            nb = b / b.norm(dim=-1, keepdim=True).clamp_min(1e-30)
            cos = 1.0 - (na - nb).pow(2).sum(-1) / 2.0
            cos_sum += float(cos.sum())
            cos_n += cos.numel()
            err += float((a - b).pow(2).sum())
            ref += float(a.pow(2).sum())
        out[f"{label}_cosine"] = cos_sum / max(cos_n, 1)
        out[f"{label}_rel_mse"] = err / ref if ref > 0 else 0.0
    return out


def _scores(model, batch_layers, prefix_len, cont_ids, first_tokens, steps, attention=False, draft=None):
    """Teacher-forced argmax and cross-entropy over the continuation, and the free greedy generation:
    checked against ``draft`` (the reference's generation) when given, else generated step by step
    and then passed through the same check, so both sides come from one procedure."""
    mass = None
    if attention:
        logits, mass = continue_attention(model, batch_layers, prefix_len, cont_ids[:, :-1])
    else:
        logits = continue_logits(model, batch_layers, prefix_len, cont_ids[:, :-1])
    targets = cont_ids[:, 1:]
    ce = F.cross_entropy(logits.transpose(1, 2), targets, reduction="none")  # [B, T-1]
    if draft is None:
        draft = greedy_generate(model, batch_layers, prefix_len, first_tokens, steps)
    greedy = greedy_against(model, batch_layers, prefix_len, first_tokens, draft)
    return logits.argmax(-1), ce, greedy, mass


@dataclass(frozen=True)
class Reference:
    """What the original cache does, per prompt: the baseline every decoded cache is scored against.

    ``argmax`` [T-1] teacher-forced predictions, ``ce`` [T-1] cross-entropy of the true continuation
    (nats), ``greedy`` [steps] free greedy tokens, and ``attention`` [layers, P] the attention mass
    each prefix token receives from the continuation's queries (summed over queries and heads; None
    if not recorded). Cached once per (model, prompt set) so codec jobs run only the decoded side.
    """

    argmax: torch.Tensor
    ce: torch.Tensor
    greedy: torch.Tensor
    attention: torch.Tensor | None = None


def _inputs(records: Sequence[KVRecord]):
    lengths = {r.seq_len for r in records}
    if len(lengths) != 1:
        raise KVError(f"a scoring batch needs one prefix length, got {sorted(lengths)}")
    cont = torch.stack([r.continuation_ids for r in records])
    first = torch.tensor([r.first_token for r in records])
    return lengths.pop(), cont, first


def reference_batch(model, records: Sequence[KVRecord], steps: int, *, attention: bool = True) -> list[Reference]:
    """Run the original caches of ``records`` (one batch) and keep what scoring needs; ``attention``
    also records where the continuation's queries look (for ``attention_retention``)."""
    prefix_len, cont, first = _inputs(records)
    arg, ce, gen, mass = _scores(model, [r.placed_layers() for r in records], prefix_len, cont, first, steps,
                                 attention)
    return [Reference(arg[b].clone(), ce[b].float().clone(), gen[b].clone(),
                      None if mass is None else mass[b, :, :prefix_len].clone()) for b in range(len(records))]


def attention_retention(mass: torch.Tensor, decoded: Sequence[LayerKV],
                        starts: Sequence[int] | None = None) -> list[float]:
    """Per layer: the share of the full cache's attention mass (from the continuation's queries,
    ``Reference.attention``, indexed by original position) that falls on the tokens the decoded cache
    kept. 1.0 for a dense layer. ``starts``: the record's window starts, when the decoded layers'
    positions index a trimmed layer's stored tokens.

    Measured on the ORIGINAL cache's attention: it says how much of what the model would have
    looked at survived, independent of how the pruned cache's attention redistributes."""
    starts = [0] * len(decoded) if starts is None else list(starts)
    out = []
    for i, layer in enumerate(decoded):
        row = mass[i].double()
        total = float(row.sum())
        if layer.positions is None or total <= 0:
            out.append(1.0)
        else:
            out.append(float(row.index_select(0, layer.positions.long() + starts[i]).sum()) / total)
    return out


def bit_identical(original: Sequence[LayerKV], decoded: Sequence[LayerKV]) -> bool:
    """Whether a decoded cache is the original, bit for bit (a lossless codec's output)."""
    return len(original) == len(decoded) and all(
        d.positions is None and o.k.dtype == d.k.dtype and o.v.dtype == d.v.dtype
        and torch.equal(o.k, d.k) and torch.equal(o.v, d.v) for o, d in zip(original, decoded))


def score_batch(model, records: Sequence[KVRecord], decoded: Sequence[Sequence[LayerKV]], steps: int,
                references: Sequence[Reference] | None = None, *, reuse_exact: bool = False) -> list[dict[str, float]]:
    """Quality rows for prompts whose caches share shapes (one batched forward for the decoded side).

    Without ``references`` the original caches run first in the same batch composition; with them
    (cached by ``reference_batch`` over the same batch) identity still scores exactly 1.0 / 0.0.
    ``reuse_exact``: when every decoded cache of the batch is bit-identical to its original
    (``bit_identical``), take the decoded side's outputs from the references instead of running the
    same deterministic forward again -- the result is what that forward gives (identity's job, which
    always runs, shows it), at none of the cost. Tensors are still compared for the error metrics.
    """
    if references is None:
        references = reference_batch(model, records, steps)
    if len(references) != len(records):
        raise KVError(f"{len(references)} references for {len(records)} prompts")
    prefix_len, cont, first = _inputs(records)
    for b, (record, ref) in enumerate(zip(records, references)):
        if ref.argmax.numel() != cont.shape[1] - 1 or ref.greedy.numel() != steps:
            raise KVError(f"prompt {record.meta.get('prompt_id', b)}: cached reference has "
                          f"{ref.argmax.numel()} scored / {ref.greedy.numel()} generated tokens, expected "
                          f"{cont.shape[1] - 1} / {steps} (stale reference?)")
    draft = torch.stack([r.greedy for r in references]) if steps else None
    if reuse_exact and all(bit_identical(r.layers, d) for r, d in zip(records, decoded)):
        dec_arg = torch.stack([r.argmax for r in references])
        dec_ce = torch.stack([r.ce for r in references])
        dec_gen = draft if steps else torch.empty(len(records), 0, dtype=torch.long)
    else:
        placed = [r.placed_layers(d) for r, d in zip(records, decoded)]
        dec_arg, dec_ce, dec_gen, _ = _scores(model, placed, prefix_len, cont, first, steps, draft=draft)
    rows = []
    for b, (record, ref) in enumerate(zip(records, references)):
        match = dec_gen[b] == ref.greedy
        mismatches = (~match).nonzero()
        row = {
            "prompt_id": record.meta.get("prompt_id", str(b)),
            "token_agreement": float((dec_arg[b] == ref.argmax).float().mean()),
            "ce_ref": float(ref.ce.mean()),
            "ce": float(dec_ce[b].float().mean()),
            "greedy_match": float(match.float().mean()) if steps else 1.0,
            "first_divergence": int(mismatches[0, 0]) if len(mismatches) else steps,
        }
        row["delta_ce"] = row["ce"] - row["ce_ref"]
        if ref.attention is not None:
            per_layer = attention_retention(ref.attention, decoded[b], record.window_starts)
            row["attention_retention"] = sum(per_layer) / len(per_layer)
            row["attention_retention_min"] = min(per_layer)
            row["attention_retention_layers"] = per_layer
        row.update(kv_errors(record.layers, decoded[b]))
        rows.append(row)
    return rows


def group_by_shape(decoded: Sequence[Sequence[LayerKV]]) -> list[list[int]]:
    """Indices of prompts whose decoded caches can share one batch (same per-layer shapes).

    Kept positions may differ between rows: RoPE is already inside the cached keys and the new
    tokens' positions depend only on the original prefix length.
    """
    groups: dict[tuple, list[int]] = {}
    for i, layers in enumerate(decoded):
        key = tuple(tuple(layer.k.shape) for layer in layers)
        groups.setdefault(key, []).append(i)
    return list(groups.values())
