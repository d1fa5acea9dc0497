"""A learned codec router: per request, predict the codec with the lowest expected end-to-end time
that keeps the prompt's token agreement at or above a floor.

Examples are (prompt, encoder, link bandwidth). Each is labelled with the oracle's choice, the
fastest codec that met the floor *on that prompt*, or ``raw`` when none beats sending the cache
raw. Expected times come from the prompt's real wire bytes and the measured codec times of its
model shape and length (break_even_all.csv; a cache's time split evenly over its layers, pipelined).

Features come in three nested sets: ``bandwidth`` (link rate and encoder), ``request`` (plus the
prompt length and model shape) and ``content`` (plus the prompt's own KV statistics: outlier-channel
share, its spread over layers, dynamic ranges, kurtosis). The split is by prompt, so no prompt is
in both train and test.

The classifier is a small CART decision tree in numpy (deterministic: no dependency, no seed it
could drift on). It is compared with the oracle and with the best fixed codec per (encoder,
bandwidth) learned on the training prompts.
"""

from __future__ import annotations

import hashlib
import math
from typing import Sequence

import numpy as np
import pandas as pd

from .decide import fastest_meeting_floor
from .transfer import CodecCost, baseline_time, pipelined_time

FEATURE_SETS = {
    "bandwidth": ["log_bandwidth", "gpu_encoder"],
    "request": ["log_bandwidth", "gpu_encoder", "log_tokens", "log_bytes_per_token", "layers", "kv_heads",
                "head_dim"],
    "content": ["log_bandwidth", "gpu_encoder", "log_tokens", "log_bytes_per_token", "layers", "kv_heads",
                "head_dim", "key_outlier_share", "key_outlier_layer_spread", "key_dynamic_range",
                "value_dynamic_range", "key_kurtosis"],
}
PROMPT_KEY = ["model", "dataset", "bin", "prompt_id"]
# the independent unit: a prompt's id is its document's, and every model reads the same documents, so
# a document goes wholly to one side of the split (no test prompt shares text with a training prompt)
DOCUMENT_KEY = ["dataset", "prompt_id"]


def label_examples(quality: pd.DataFrame, features: pd.DataFrame, timings: pd.DataFrame,
                   bandwidths_gbps: Sequence[float], floor: float) -> pd.DataFrame:
    """One row per (prompt, encoder, bandwidth): features, the oracle label and, per codec, the
    expected seconds (``s:<codec>``) and whether the prompt met the floor with it (``ok:<codec>``)."""
    t = timings[timings["model"].isin(set(quality["model"]))]
    codecs = sorted(set(quality["codec"]) & set(t["codec"]) - {"identity"})
    q = quality[quality["codec"].isin(codecs)].set_index(PROMPT_KEY + ["codec"])
    prompts = quality[PROMPT_KEY + ["raw_bytes"]].drop_duplicates(PROMPT_KEY).merge(features, on=PROMPT_KEY)
    out = []
    for device, rows in t.groupby("device"):
        for (model, seq), timed in rows.groupby(["model", "seq"]):
            timed = timed.drop_duplicates("codec").set_index("codec")
            shape = timed.iloc[0]
            n_layers = int(shape["layers"])
            for p in prompts[(prompts["model"] == model) & (prompts["bin"] == seq)].itertuples(index=False):
                base = p._asdict()
                key = tuple(base[k] for k in PROMPT_KEY)
                for bw in bandwidths_gbps:
                    row = {**base, "encoder": str(shape["device_name"]), "gpu_encoder": int(device == "gpu"),
                           "bandwidth_gbps": float(bw), "log_bandwidth": math.log10(bw),
                           "log_tokens": math.log10(p.bin), "layers": n_layers, "kv_heads": int(shape["kv_heads"]),
                           "head_dim": int(shape["head_dim"]),
                           "log_bytes_per_token": math.log10(p.raw_bytes / p.bin)}
                    raw_s = baseline_time(p.raw_bytes, bw)
                    seconds, meets = {}, {}
                    for c in codecs:
                        if c not in timed.index or key + (c,) not in q.index:
                            continue
                        qr = q.loc[key + (c,)]
                        cost = CodecCost.uniform(int(p.raw_bytes), qr["wire_bytes"], timed.loc[c, "encode_ms"] * 1e-3,
                                                 timed.loc[c, "decode_ms"] * 1e-3, [1] * n_layers)
                        seconds[c], meets[c] = pipelined_time(cost, bw), bool(qr["token_agreement"] >= floor)
                        row[f"s:{c}"], row[f"ok:{c}"] = seconds[c], meets[c]
                    decision = fastest_meeting_floor(seconds, meets, raw_s)
                    best, best_s = decision.choice, decision.seconds
                    row.update({"s:raw": raw_s, "ok:raw": True, "label": best, "oracle_s": best_s})
                    out.append(row)
    if not out:
        raise ValueError("no (prompt, encoder) pair has both quality rows and timings")
    return pd.DataFrame(out)


def split_by_document(examples: pd.DataFrame, test_fraction: float = 0.3, seed: int = 0) -> pd.Series:
    """True for test rows: each document (with every prompt cut from it, on every model) goes wholly
    to one side, chosen by a seeded hash of its key (stable across runs and machines, independent of
    row order)."""
    def is_test(key) -> bool:
        h = hashlib.sha256(f"{seed}:{'/'.join(map(str, key))}".encode()).digest()
        return int.from_bytes(h[:8], "big") / 2**64 < test_fraction

    keys = examples[DOCUMENT_KEY].astype(str).agg("/".join, axis=1)
    decided = {k: is_test(k.split("/")) for k in keys.unique()}
    return keys.map(decided)


# ---------------------------------------------------------------- the classifier

class DecisionTree:
    """CART with Gini impurity on numeric features; ties broken by feature order then threshold."""

    def __init__(self, max_depth: int = 6, min_leaf: int = 5):
        self.max_depth, self.min_leaf = max_depth, min_leaf
        self.node = None

    @staticmethod
    def _gini(counts: np.ndarray) -> float:
        n = counts.sum()
        return 1.0 - float(((counts / n) ** 2).sum()) if n else 0.0

    def _leaf(self, y: np.ndarray):
        values, counts = np.unique(y, return_counts=True)
        return ("leaf", values[np.argmax(counts)])  # np.unique sorts: ties go to the first label

    def _grow(self, X: np.ndarray, y: np.ndarray, depth: int):
        if depth >= self.max_depth or len(y) < 2 * self.min_leaf or len(np.unique(y)) == 1:
            return self._leaf(y)
        classes = np.unique(y)
        onehot = (y[:, None] == classes[None, :]).astype(float)
        best = None
        parent = self._gini(onehot.sum(0)) * len(y)
        for j in range(X.shape[1]):
            order = np.argsort(X[:, j], kind="stable")
            xs, cum = X[order, j], np.cumsum(onehot[order], axis=0)
            total = cum[-1]
            for i in range(self.min_leaf, len(y) - self.min_leaf + 1):
                if xs[i - 1] == xs[i]:
                    continue
                left, right = cum[i - 1], total - cum[i - 1]
                score = self._gini(left) * i + self._gini(right) * (len(y) - i)
                if score < parent - 1e-12 and (best is None or score < best[0] - 1e-12):
                    best = (score, j, (xs[i - 1] + xs[i]) / 2)
        if best is None:
            return self._leaf(y)
        _, j, thr = best
        mask = X[:, j] <= thr
        return ("split", j, thr, self._grow(X[mask], y[mask], depth + 1), self._grow(X[~mask], y[~mask], depth + 1))

    def fit(self, X, y) -> "DecisionTree":
        self.node = self._grow(np.asarray(X, float), np.asarray(y), 0)
        return self

    def predict(self, X) -> np.ndarray:
        out = []
        for x in np.asarray(X, float):
            node = self.node
            while node[0] == "split":
                node = node[3] if x[node[1]] <= node[2] else node[4]
            out.append(node[1])
        return np.array(out)


# ---------------------------------------------------------------- evaluation

def _times(test: pd.DataFrame, choice: np.ndarray) -> np.ndarray:
    idx = np.arange(len(test))
    return np.array([test[f"s:{c}"].iloc[i] if f"s:{c}" in test and pd.notna(test[f"s:{c}"].iloc[i]) else np.inf
                     for i, c in zip(idx, choice)])


def _score(test: pd.DataFrame, choice: np.ndarray, fixed: np.ndarray | None = None) -> dict[str, float]:
    idx = np.arange(len(test))
    s = _times(test, choice)
    ok = np.array([bool(test[f"ok:{c}"].iloc[i]) if f"ok:{c}" in test and pd.notna(test[f"ok:{c}"].iloc[i])
                   else False for i, c in zip(idx, choice)])
    regret = s / test["oracle_s"].to_numpy() - 1.0
    out = {"accuracy": float((choice == test["label"].to_numpy()).mean()), "regret_mean": float(np.mean(regret)),
           "regret_p95": float(np.quantile(regret, 0.95)), "floor_violations": float(1.0 - ok.mean())}
    if fixed is not None:  # time against the best fixed codec's (negative: faster than it)
        out["vs_best_fixed_mean"] = float(np.mean(s / _times(test, fixed) - 1.0))
    return out


def best_fixed(train: pd.DataFrame, test: pd.DataFrame) -> np.ndarray:
    """Per (encoder, bandwidth): the codec the oracle chose most often on the training prompts."""
    mode = train.groupby(["encoder", "bandwidth_gbps"])["label"].agg(lambda s: s.value_counts().sort_index()
                                                                       .idxmax())
    return np.array([mode.get((e, b), "raw") for e, b in zip(test["encoder"], test["bandwidth_gbps"])])


def evaluate(examples: pd.DataFrame, *, test_fraction: float = 0.3, seed: int = 0, max_depth: int = 6,
             min_leaf: int = 5) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(summary per router, regret per router and bandwidth) on the prompts of held-out documents."""
    is_test = split_by_document(examples, test_fraction, seed)
    train, test = examples[~is_test].reset_index(drop=True), examples[is_test].reset_index(drop=True)
    if train.empty or test.empty:
        raise ValueError(f"the split left {len(train)} training and {len(test)} test examples: too few prompts")
    choices = {"oracle": test["label"].to_numpy(), "best_fixed": best_fixed(train, test)}
    for name, cols in FEATURE_SETS.items():
        tree = DecisionTree(max_depth, min_leaf).fit(train[cols].to_numpy(float), train["label"].to_numpy())
        choices[f"tree_{name}"] = tree.predict(test[cols].to_numpy(float))
    n_train = train[PROMPT_KEY].drop_duplicates().shape[0]
    n_test = test[PROMPT_KEY].drop_duplicates().shape[0]
    shared = set(map(tuple, train[DOCUMENT_KEY].to_numpy())) & set(map(tuple, test[DOCUMENT_KEY].to_numpy()))
    assert not shared, f"documents on both sides of the router's split: {sorted(shared)[:3]}"
    fixed = choices["best_fixed"]
    summary = pd.DataFrame([{"router": name, **_score(test, c, fixed), "test_examples": len(test),
                             "train_prompts": n_train, "test_prompts": n_test,
                             "train_documents": train[DOCUMENT_KEY].drop_duplicates().shape[0],
                             "test_documents": test[DOCUMENT_KEY].drop_duplicates().shape[0]}
                            for name, c in choices.items()])
    per_bw = []
    for name, c in choices.items():
        for (enc, bw), g in test.groupby(["encoder", "bandwidth_gbps"]):
            rows = g.index.to_numpy()
            per_bw.append({"router": name, "encoder": enc, "bandwidth_gbps": bw,
                           **_score(g.reset_index(drop=True), c[rows], fixed[rows])})
    return summary, pd.DataFrame(per_bw)
