"""One break-even table over (shape, length, codec, CPU/GPU) and the GPU speed-up curves."""

import re
from pathlib import Path

import pandas as pd
import pytest

from kvwire.errors import KVError
from kvwire.stages.break_even import gpu_sweep, unified_break_even
from kvwire.transfer import break_even_gbps, cost_from_arrays

TABLES = Path(__file__).resolve().parents[1] / "paper" / "tables"  # the published tables
MODELS = pd.DataFrame([{"name": "tiny", "num_layers": 4, "num_kv_heads": 2, "head_dim": 64}])


def cpu_table():
    base = dict(model="tiny", bin=512, codec="int8", device="cpu", device_name="AMD EPYC", raw_bytes=1000,
                wire_bytes=500, ratio=2.0)
    return pd.DataFrame([{**base, "dataset": "a", "encode_s": 0.01, "decode_s": 0.02,
                          "break_even_gbps_sequential": 1.0, "break_even_gbps_pipelined": 2.0},
                         {**base, "dataset": "b", "encode_s": 0.03, "decode_s": 0.04,
                          "break_even_gbps_sequential": 3.0, "break_even_gbps_pipelined": 4.0}])


def gpu_table():
    base = dict(gpu="NVIDIA H200", seq=512, dtype="bfloat16", codec="int8", raw_bytes=1 << 30,
                wire_bytes=1 << 29, ratio=2.0, encode_ms=1.0, decode_ms=0.5, host_stage=False,
                per_layer_time="cache time / layers", break_even_gbps_sequential=9.0, break_even_gbps_pipelined=9.5)
    return pd.DataFrame([{**base, "model": "tiny-gpu-name", "layers": 4, "kv_heads": 2, "head_dim": 64},
                         {**base, "model": "big", "layers": 32, "kv_heads": 8, "head_dim": 128}])


def test_cpu_rows_are_the_median_over_datasets_and_gpu_shapes_take_the_study_name():
    t = unified_break_even(cpu_table(), MODELS, gpu_table())
    cpu = t[t.device == "cpu"].iloc[0]
    assert len(t[t.device == "cpu"]) == 1
    assert cpu.encode_ms == pytest.approx(20.0) and cpu.break_even_gbps_pipelined == pytest.approx(3.0)
    assert (cpu.layers, cpu.kv_heads, cpu.head_dim) == (4, 2, 64)
    gpu = t[t.device == "gpu"].set_index("shape")
    assert gpu.loc["tiny-gpu-name", "model"] == "tiny"  # matched by (layers, kv heads, head dim)
    assert gpu.loc["big", "model"] == "big"  # no study model of that shape: keeps its own name
    assert pd.isna(cpu.threads) and gpu.threads.isna().all()  # a timing table without threads: unknown
    # the CPU's thread count travels with its times; two thread counts are two rows, never one median
    two = pd.concat([cpu_table().assign(threads=1), cpu_table().assign(threads=16, encode_s=0.001)])
    rows = unified_break_even(two, MODELS, gpu_table())
    rows = rows[rows.device == "cpu"].set_index("threads")
    assert sorted(rows.index) == [1, 16] and rows.loc[1, "encode_ms"] == pytest.approx(20.0)


def test_the_cpu_timer_and_the_selection_cost_travel_into_the_unified_table():
    old = unified_break_even(cpu_table(), MODELS, gpu_table())
    cpu = old[old.device == "cpu"].iloc[0]
    # a table from before the pass timer and the stats columns: the per-layer timer, the cost unknown
    assert cpu.timer == "layer" and pd.isna(cpu.prefill_stats_ms) and pd.isna(cpu.break_even_gbps_pipelined_with_stats)
    charged = cpu_table().assign(timer="pass", prefill_stats_s=[0.004, 0.006],
                                 break_even_gbps_sequential_with_stats=[0.5, 1.5],
                                 break_even_gbps_pipelined_with_stats=[1.0, 2.0])
    new = unified_break_even(charged, MODELS, gpu_table())
    cpu = new[new.device == "cpu"].iloc[0]
    assert cpu.timer == "pass" and cpu.prefill_stats_ms == pytest.approx(5.0)
    assert cpu.break_even_gbps_pipelined_with_stats == pytest.approx(1.5)
    assert cpu.break_even_gbps_pipelined_with_stats < cpu.break_even_gbps_pipelined
    gpu = new[new.device == "gpu"]
    assert (gpu.timer == "cuda events").all() and gpu.prefill_stats_ms.isna().all()
    # two timers are two rows, never one median
    both = unified_break_even(pd.concat([charged, charged.assign(timer="layer")]), MODELS, gpu_table())
    assert sorted(both[both.device == "cpu"].timer) == ["layer", "pass"]


def test_unknown_study_model_is_an_error_naming_it():
    with pytest.raises(KVError, match="ghost"):
        unified_break_even(cpu_table().assign(model="ghost"), MODELS, gpu_table())


def test_gpu_sweep_crosses_one_at_the_break_even_bandwidth():
    g = gpu_table().iloc[[0]]
    n = 4
    cost = cost_from_arrays(1 << 30, [(1 << 29) / n] * n, [1e-3 / n] * n, [0.5e-3 / n] * n)
    be = {m: break_even_gbps(cost, m) for m in ("sequential", "pipelined")}
    s = gpu_sweep(g, MODELS, [be["sequential"] * 0.9, be["sequential"] * 1.1, be["pipelined"] * 0.9,
                              be["pipelined"] * 1.1])
    assert list(s.model) == ["tiny"] * 4
    assert s.speedup_sequential.iloc[0] > 1 > s.speedup_sequential.iloc[1]
    assert s.speedup_pipelined.iloc[2] > 1 > s.speedup_pipelined.iloc[3]
    with pytest.raises(KVError, match="bandwidth"):
        gpu_sweep(g, MODELS, [])


def test_committed_gpu_break_evens_follow_from_their_own_times_and_bytes():
    """The cached table is computed, not typed: every GPU row's break-even is re-derived from its
    kernel times and wire bytes, split over the layers as its row says (evenly, or by the tokens each
    layer sends where a sliding-window layer sends fewer: its stated kept total must match)."""
    from kvwire.stages.gpu_tables import sent_tokens

    t = pd.read_csv(TABLES / "break_even_all.csv")
    assert {"cpu", "gpu"} <= set(t.device)
    split = 0
    for r in t[t.device == "gpu"].itertuples():
        n = int(r.layers)
        if r.per_layer_time == "cache time / layers":
            tokens = [1] * n
        else:
            assert r.per_layer_time.startswith("cache time split by layer tokens")
            tokens = sent_tokens(r.shape, n, int(r.seq))
            assert len(set(tokens)) > 1
            kept = re.search(r"scaled to the (\d+) kept", r.per_layer_time)
            assert kept is None or int(kept.group(1)) == sum(tokens)
            split += 1
        w = [x / sum(tokens) for x in tokens]
        cost = cost_from_arrays(int(r.raw_bytes), [r.wire_bytes * x for x in w], [r.encode_ms / 1e3 * x for x in w],
                                [r.decode_ms / 1e3 * x for x in w])
        assert r.break_even_gbps_sequential == pytest.approx(break_even_gbps(cost, "sequential"), rel=1e-4)
        assert r.break_even_gbps_pipelined == pytest.approx(break_even_gbps(cost, "pipelined"), rel=1e-4)
    assert split  # Gemma-3's sliding-window rows exercise the uneven split


def test_speedup_figure_draws_a_panel_per_model_and_mode_or_says_nothing_matches(tmp_path):
    from PIL import Image

    from kvwire.stages.figures import draw_figure

    def speedup_cpu_gpu(cpu, gpu, pdf, png):
        draw_figure("speedup_cpu_gpu", {"transfer_sweep": cpu, "gpu_transfer_sweep": gpu}, pdf, png)

    speedup_cpu_gpu(TABLES / "transfer_sweep.csv", TABLES / "gpu_transfer_sweep.csv", tmp_path / "a.pdf",
                    tmp_path / "a.png")
    empty_gpu = tmp_path / "gpu.csv"
    pd.read_csv(TABLES / "gpu_transfer_sweep.csv").assign(model="elsewhere").to_csv(empty_gpu, index=False)
    speedup_cpu_gpu(TABLES / "transfer_sweep.csv", empty_gpu, tmp_path / "b.pdf", tmp_path / "b.png")
    full, note = Image.open(tmp_path / "a.png").size, Image.open(tmp_path / "b.png").size
    assert full[1] > 3 * note[1]  # two rows of panels against a one-line note
