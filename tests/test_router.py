"""The learned router: labels from per-prompt quality and expected times, a prompt-wise split, the
tree, and the comparison against the oracle and the best fixed codec."""

import numpy as np
import pandas as pd
import pytest

from kvwire.router import DecisionTree, PROMPT_KEY, best_fixed, evaluate, label_examples, split_by_document


def test_tree_learns_a_threshold_and_an_interaction():
    rng = np.random.default_rng(0)
    X = rng.uniform(0, 1, size=(400, 3))
    y = np.where(X[:, 0] < 0.3, "a", np.where(X[:, 2] < 0.5, "b", "c"))
    tree = DecisionTree(max_depth=4, min_leaf=3).fit(X, y)
    Xt = rng.uniform(0, 1, size=(200, 3))
    yt = np.where(Xt[:, 0] < 0.3, "a", np.where(Xt[:, 2] < 0.5, "b", "c"))
    assert (tree.predict(Xt) == yt).mean() > 0.95
    # depth 0 is the majority class
    assert set(DecisionTree(max_depth=0).fit(X, y).predict(Xt)) == {pd.Series(y).value_counts().idxmax()}


def test_split_keeps_each_document_on_one_side_and_is_stable():
    # every document read by two models, and (as older studies did) cut at two lengths
    ex = pd.DataFrame([{"model": m, "dataset": "d", "bin": b, "prompt_id": i, "bandwidth_gbps": bw}
                       for m in ("m1", "m2") for b in (8, 16) for i in range(200) for bw in (1, 10, 100)])
    test = split_by_document(ex, 0.3, seed=1)
    per_document = test.groupby(ex["prompt_id"]).nunique()
    assert (per_document == 1).all()
    assert 0.2 < test.mean() < 0.4
    assert (split_by_document(ex.iloc[::-1], 0.3, seed=1).sort_index() == test).all()  # order-free
    assert not (split_by_document(ex, 0.3, seed=2) == test).all()


def _study():
    """One model shape at one length; codec "lossy" is fast but misses the floor on odd prompts."""
    quality, features = [], []
    for i in range(60):
        key = {"model": "m", "dataset": "d", "bin": 100, "prompt_id": i}
        quality += [{**key, "codec": "lossy", "token_agreement": 0.9 if i % 2 else 0.99, "wire_bytes": 250,
                     "raw_bytes": 1000},
                    {**key, "codec": "safe", "token_agreement": 0.99, "wire_bytes": 500, "raw_bytes": 1000}]
        features.append({**key, "key_outlier_share": 0.5 if i % 2 else 0.0, "key_outlier_layer_spread": 0.0,
                         "key_dynamic_range": 1.0, "value_dynamic_range": 1.0, "key_kurtosis": 0.0})
    timings = pd.DataFrame([{"device": "cpu", "device_name": "CPU", "model": "m", "seq": 100, "codec": c,
                             "layers": 2, "kv_heads": 1, "head_dim": 4, "encode_ms": 1e-3, "decode_ms": 1e-3}
                            for c in ("lossy", "safe")])
    return pd.DataFrame(quality), pd.DataFrame(features), timings


def test_labels_are_the_fastest_codec_meeting_the_floor_on_that_prompt():
    quality, features, timings = _study()
    ex = label_examples(quality, features, timings, [1e-6, 1e6], floor=0.95)
    slow = ex[ex.bandwidth_gbps == 1e-6].set_index("prompt_id")
    assert (slow.loc[slow.index % 2 == 0, "label"] == "lossy").all()  # it met the floor there
    assert (slow.loc[slow.index % 2 == 1, "label"] == "safe").all()
    assert (ex[ex.bandwidth_gbps == 1e6]["label"] == "raw").all()  # nothing pays on a huge link
    assert (ex["oracle_s"] <= ex["s:raw"]).all()


def test_content_features_beat_the_fixed_codec_when_quality_depends_on_content():
    quality, features, timings = _study()
    ex = label_examples(quality, features, timings, [1e-6, 1e-5], floor=0.95)
    summary, per_bw = evaluate(ex, test_fraction=0.4, seed=0, min_leaf=2)
    s = summary.set_index("router")
    assert s.loc["oracle", "accuracy"] == 1 and s.loc["oracle", "regret_mean"] == 0
    assert s.loc["tree_content", "accuracy"] == 1 and s.loc["tree_content", "floor_violations"] == 0
    # bandwidth alone cannot tell the prompts apart: it either violates the floor or loses time
    assert s.loc["tree_bandwidth", "accuracy"] < 0.75
    assert s.loc["best_fixed", "accuracy"] == s.loc["tree_bandwidth", "accuracy"]
    assert s.loc["best_fixed", "vs_best_fixed_mean"] == 0
    assert s.loc["oracle", "vs_best_fixed_mean"] <= 0
    assert set(per_bw.router) == set(s.index)
    assert s["test_prompts"].iloc[0] + s["train_prompts"].iloc[0] == 60


def test_best_fixed_is_the_training_mode_per_encoder_and_bandwidth():
    train = pd.DataFrame({"encoder": ["c"] * 3, "bandwidth_gbps": [1.0] * 3, "label": ["a", "b", "b"]})
    test = pd.DataFrame({"encoder": ["c", "c"], "bandwidth_gbps": [1.0, 9.0]})
    assert list(best_fixed(train, test)) == ["b", "raw"]
