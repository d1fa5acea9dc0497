"""Access traces from a real model, and the replay that executes their plans (eagerly on the CPU;
compiled with CUDA graphs and streams when a GPU is present)."""

import json

import numpy as np
import pandas as pd
import pytest
import torch

from kvwire.errors import OffloadError
from kvwire.io import write_json
from kvwire.offload import AccessTrace, plan, plan_counts, record_trace
from kvwire.offload.experiment import OffloadSettings, largest_context, page_wire_bytes
from kvwire.offload.replay import PagedDecoder
from kvwire.stages.offload import gpu_study, simulate_study

GPU = torch.cuda.is_available()
DEVICES = ["cpu"] + (["cuda"] if GPU else [])


@pytest.fixture(scope="module")
def trace(small_model):
    ids = torch.randint(3, 500, (200,), generator=torch.Generator().manual_seed(0))
    return record_trace(small_model, "tiny", ids, 8, chunk=64)


def test_trace_rows_are_distributions_over_the_growing_cache(trace, small_model):
    assert trace.mass.shape[:2] == (9, small_model.config.num_hidden_layers)
    sums = trace.mass.astype(np.float64).sum(axis=2)
    assert np.allclose(sums, 1.0, atol=5e-3)  # float16 storage
    # row t sees context + t tokens: nothing past them (blocks of 16)
    for t in range(trace.mass.shape[0]):
        seen = -(-(trace.context + t) // 16)
        assert not trace.mass[t, :, seen:].any()
    pm, tail = trace.page_mass(32), trace.tail_mass(32)
    assert pm.shape[2] == 200 // 32
    assert np.allclose(pm.sum(axis=2) + tail, sums, atol=1e-6)


def test_trace_is_the_models_own_attention(trace, small_model):
    """Row 0 equals the prompt's last query's attention computed by the eager forward."""
    ids = torch.randint(3, 500, (200,), generator=torch.Generator().manual_seed(0))
    small_model.config._attn_implementation = "eager"
    try:
        with torch.no_grad():
            out = small_model(input_ids=ids.view(1, -1), output_attentions=True)
    finally:
        small_model.config._attn_implementation = "sdpa"
    for layer, att in enumerate(out.attentions):
        row = att[0, :, -1].sum(dim=0).double()
        row = row / row.sum()
        blocks = torch.zeros(208, dtype=torch.float64)
        blocks[:200] = row
        assert np.allclose(trace.mass[0, layer, :13], blocks.view(13, 16).sum(1).numpy(), atol=2e-3)
    assert trace.tokens[0] == int(out.logits[0, -1].argmax())


def test_trace_save_load_round_trip_and_corruption(trace, tmp_path):
    path = tmp_path / "t.npz"
    trace.save(path)
    back = AccessTrace.load(path)
    assert back.context == trace.context and back.shape == trace.shape and np.array_equal(back.mass, trace.mass)
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(OffloadError, match="not a readable access trace"):
        AccessTrace.load(path)
    with pytest.raises(OffloadError, match="does not exist"):
        AccessTrace.load(tmp_path / "missing.npz")
    bad = trace.mass.copy()
    bad[1, 0, 0] = np.nan
    with pytest.raises(OffloadError, match="NaN"):
        AccessTrace(model="x", context=trace.context, mass=bad)


def test_record_trace_refuses_contexts_past_the_models_positions(small_model):
    limit = small_model.config.max_position_embeddings
    with pytest.raises(OffloadError, match="exceeds the model's positions"):
        record_trace(small_model, "tiny", torch.ones(limit, dtype=torch.long), 4)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mode", ["all_gpu", "reactive", "predictive"])
def test_replay_leaves_every_slot_holding_its_page(trace, mode, device):
    pm = trace.page_mass(16)
    pages = pm.shape[2]
    slots = pages if mode == "all_gpu" else 5
    events = plan(pm, mode, k=3, slots=slots, prefetch_k=5)
    dec = PagedDecoder(trace.shape, prefix_pages=pages, page_size=16, slots=slots, k=3,
                       tail_cap=trace.context % 16 + trace.steps, tail_start=trace.context % 16, device=device)
    dec.prepare(events, mode)
    result = dec.run()
    assert dec.check_pool() == 0.0  # bit-exact raw pages
    assert len(result.tpot_ms) == trace.steps - 1 and all(t > 0 for t in result.tpot_ms)
    moved = plan_counts(events)["fetches"] + plan_counts(events)["prefetches"]
    expected = pages * dec.page_bytes * trace.layers if mode == "all_gpu" else moved * dec.page_bytes
    assert result.fetched_mib * 2**20 == pytest.approx(expected)
    if device == "cuda":  # the host clock of the first step, on the GPU timeline's origin
        assert 0 < result.host_first_ms < sum(result.tpot_ms) + result.ttft_ms + 1e3


def test_replay_detects_a_slot_holding_the_wrong_page(trace):
    pm = trace.page_mass(16)
    events = plan(pm, "reactive", k=3, slots=5)
    dec = PagedDecoder(trace.shape, prefix_pages=pm.shape[2], page_size=16, slots=5, k=3,
                       tail_cap=trace.context % 16 + trace.steps, tail_start=trace.context % 16, device="cpu")
    dec.prepare(events, "reactive")
    dec.run()
    page, slot = events[-1].fetches[-1] if events[-1].fetches else next(
        p for e in reversed(events) for p in e.fetches)
    dec.pool[events[-1].layer, slot] += 1
    with pytest.raises(OffloadError, match="wrong data"):
        dec.check_pool()


def test_compressed_pages_move_fewer_bytes_and_decode_within_the_codec_step(trace):
    pytest.importorskip("triton")
    pm = trace.page_mass(32)
    events = plan(pm, "predictive", k=2, slots=4, prefetch_k=4)
    dec = PagedDecoder(trace.shape, prefix_pages=pm.shape[2], page_size=32, slots=4, k=2,
                       tail_cap=trace.context % 32 + trace.steps, tail_start=trace.context % 32,
                       device="cuda" if GPU else "cpu", codec="int8")
    assert dec.wire_bytes_per_page() == page_wire_bytes(trace.shape, 32, "int8") < dec.page_bytes
    dec.prepare(events, "predictive")
    dec.run()
    assert 0 < dec.check_pool()  # lossy, but within int8's step


def test_settings_validate_and_clamp_contexts():
    s = OffloadSettings()
    assert s.contexts_for(8192) == [1024, 2048, 4096, 8192 - 32]
    with pytest.raises(OffloadError, match="unknown offload config key"):
        OffloadSettings.from_config({"pagesize": 16})
    with pytest.raises(OffloadError, match="multiple of 16"):
        OffloadSettings(page_size=24)
    with pytest.raises(OffloadError, match="must hold budget_tokens"):
        OffloadSettings(budget_tokens=1024, gpu_tokens=512)
    shape = {"layers": 30, "kv_heads": 3, "head_dim": 64}
    per_token = 30 * 2 * 3 * 64 * 2
    assert largest_context(shape, "all_gpu", s) == int(s.gpu_kv_mib * 2**20 // per_token)
    assert largest_context(shape, "reactive", s, compression=2.0) == int(s.host_kv_mib * 2**20 * 2 // per_token)


def test_stage_replays_and_simulates_the_same_plans(trace, tmp_path):
    trace.save(tmp_path / "tr" / "ctx200.npz")
    write_json(tmp_path / "tr" / "manifest.json", {"traces": [{"context": 200, "file": "ctx200.npz"}]})
    s = OffloadSettings(contexts=(200,), decode_tokens=8, page_size=16, budget_tokens=48, prefetch_tokens=80,
                        gpu_tokens=80, repeats=1, modes=("all_gpu", "reactive", "predictive", "predictive_int8"))
    manifest = [tmp_path / "tr" / "manifest.json"]
    replay = gpu_study(manifest, s, tmp_path / "gpu.csv", tmp_path / "cal.json", label="cpu", device="cpu",
                       log=lambda m: None)
    sim = simulate_study(manifest, s, tmp_path / "cal.json", tmp_path / "sim.csv", log=lambda m: None)
    plan_cols = ["mode", "needed", "hits", "fetches", "prefetches", "wasted_prefetches", "coverage"]
    assert replay[plan_cols].equals(sim[plan_cols])
    raw = replay["mode"] != "predictive_int8"
    assert (replay.loc[raw, "pool_check_max_abs_err"] == 0).all()
    assert 0 < replay.loc[~raw, "pool_check_max_abs_err"].item() < 0.05  # int8 pages: within the codec's step
    assert replay.loc[replay["mode"] == "reactive", "hit_rate"].item() < 1.0
    assert sim["source"].str.startswith("simulation").all()
    # the simulated baseline is its calibration's arithmetic: layers x layer time + head per step
    cal = json.loads((tmp_path / "cal.json").read_text())["models"]["tiny"]["contexts"]["200"]
    base_sim = sim.loc[sim["mode"] == "all_gpu", "tpot_p50_ms"].item()
    assert base_sim * 1e3 == pytest.approx(trace.layers * cal["layer_us"] + cal["head_us"])
    # the codec's decode is calibrated as the replay runs it (kernel + scatter); on the CPU there is no
    # separate host issue cost
    decode = json.loads((tmp_path / "cal.json").read_text())["models"]["tiny"]
    assert decode["decode_launch_us"] + decode["decode_us"] > 0 and decode["issue_decode_us"] == 0


def test_table_figures_and_macros_from_replay_and_simulation(trace, tmp_path):
    from kvwire.paper.macros import _offload
    from kvwire.stages.figures import draw_figure
    from kvwire.stages.offload import offload_table
    from kvwire.stages.paper import CsvTables

    trace.save(tmp_path / "tr" / "ctx200.npz")
    write_json(tmp_path / "tr" / "manifest.json", {"traces": [{"context": 200, "file": "ctx200.npz"}]})
    s = OffloadSettings(contexts=(200,), decode_tokens=8, page_size=16, budget_tokens=48, prefetch_tokens=80,
                        gpu_tokens=80, repeats=1, modes=("all_gpu", "reactive", "predictive"))
    manifest = [tmp_path / "tr" / "manifest.json"]
    gpu_study(manifest, s, tmp_path / "gpu.csv", tmp_path / "cal.json", label="cpu", device="cpu", log=lambda m: None)
    simulate_study(manifest, s, tmp_path / "cal.json", tmp_path / "sim.csv", log=lambda m: None)
    table = offload_table(tmp_path / "gpu.csv", tmp_path / "sim.csv", tmp_path / "offload.csv")
    assert sorted(table["kind"].unique()) == ["replay", "simulation"]
    sim = table[table["kind"] == "simulation"].set_index("mode")
    rep = table[table["kind"] == "replay"].set_index("mode")
    for mode in ("reactive", "predictive"):
        assert sim.loc[mode, "sim_error_tpot"] == pytest.approx(sim.loc[mode, "tpot_p50_ms"] / rep.loc[mode, "tpot_p50_ms"] - 1)
    macros = _offload(CsvTables({"offload": tmp_path / "offload.csv"}), 0.95)
    assert macros["kwOffloadContextTiny"] == "200"
    assert macros["kwOffloadHitReactiveTiny"].endswith(r"\,\%")
    assert macros["kwOffloadTtfthostReactiveTiny"] == "n/a"  # the CPU replay has no separate host clock
    for figure, name in (("offload_latency", "lat"), ("offload_pool", "pool")):
        draw_figure(figure, {"offload": tmp_path / "offload.csv"}, tmp_path / f"{name}.pdf", tmp_path / f"{name}.png")
        assert (tmp_path / f"{name}.png").read_bytes().startswith(b"\x89PNG") and (tmp_path / f"{name}.png").stat().st_size > 5000
        assert (tmp_path / f"{name}.pdf").read_bytes()[:4] == b"%PDF"
    broken = pd.read_csv(tmp_path / "sim.csv").drop(columns=["tpot_p50_ms"])
    broken.to_csv(tmp_path / "broken.csv", index=False)
    with pytest.raises(OffloadError, match="simulation table lacks columns"):
        offload_table(tmp_path / "gpu.csv", tmp_path / "broken.csv", tmp_path / "x.csv")
