"""Summaries of cached GPU timing tables: throughput over >= 64 MB shapes, break-even from kernel times."""

import math

import pandas as pd
import pytest

from kvwire.errors import KVError
from kvwire.stages.gpu_tables import LARGE_BYTES, break_even, gpu_tables, kernel_summary, read_gpu_tables


def rows(codec="int8", raw=LARGE_BYTES * 2, pay=LARGE_BYTES, enc=1.0, dec=0.5, host=None, frac=0.7, seq=8192):
    base = dict(gpu="NVIDIA H200", copy_gbps=4000.0, model="m", layers=4, kv_heads=8, seq=seq, head_dim=128,
                dtype="bfloat16", codec=codec, raw_bytes=raw, payload_bytes=pay, ratio=raw / pay, gbps=1.0,
                identical_to_cpu=True)
    out = [{**base, "impl": "triton", "op": "encode", "ms": enc, "frac_copy": frac, "speedup_vs_eager": 10.0},
           {**base, "impl": "triton", "op": "decode", "ms": dec, "frac_copy": frac / 2, "speedup_vs_eager": 6.0},
           {**base, "impl": "eager", "op": "encode", "ms": enc * 10, "frac_copy": frac / 10, "speedup_vs_eager": None},
           {**base, "impl": "eager", "op": "decode", "ms": dec * 6, "frac_copy": frac / 12, "speedup_vs_eager": None}]
    if host is not None:
        out += [{**base, "impl": "host", "op": op, "ms": host, "frac_copy": 0.01, "speedup_vs_eager": None}
                for op in ("encode", "decode")]
    return out


def test_break_even_is_the_sequential_closed_form_and_adds_host_stages():
    t = pd.DataFrame(rows(enc=2.0, dec=1.0) + rows(codec="cachegen", enc=1.0, dec=1.0, host=3.0))
    be = break_even(t).set_index("codec")
    raw, pay = LARGE_BYTES * 2, LARGE_BYTES
    # raw at B == encode + payload at B + decode  <=>  B = 8 (raw - pay) / (enc + dec)
    assert be.loc["int8", "break_even_gbps_sequential"] == pytest.approx(8 * (raw - pay) / 3e-3 / 1e9, rel=1e-9)
    assert be.loc["cachegen", "break_even_gbps_sequential"] == pytest.approx(8 * (raw - pay) / 8e-3 / 1e9, rel=1e-9)
    assert bool(be.loc["cachegen", "host_stage"]) and not bool(be.loc["int8", "host_stage"])
    # overlapping layers can only help
    assert (be.break_even_gbps_pipelined >= be.break_even_gbps_sequential).all()


def test_summary_counts_only_large_shapes_and_any_nonconformant_row():
    small = rows(raw=LARGE_BYTES // 2, pay=LARGE_BYTES // 4, frac=0.1, seq=512)
    t = pd.DataFrame(rows(frac=0.8) + rows(frac=0.6, seq=16384) + small)
    t["conformant"] = True
    s = kernel_summary(t).set_index("op")
    assert s.loc["encode", "shapes"] == 2
    assert s.loc["encode", "frac_copy_median"] == pytest.approx(0.7)
    assert s.loc["encode", "frac_copy_min"] == pytest.approx(0.6)
    assert bool(s.loc["encode", "conformant"])
    # the small shapes have their own columns, and never enter the large ones
    assert s.loc["encode", "small_shapes"] == 1 and s.loc["encode", "frac_copy_small_median"] == pytest.approx(0.1)
    assert s.loc["decode", "frac_copy_small_max"] == pytest.approx(0.05)
    t.loc[(t.impl == "triton") & (t.op == "decode") & (t.seq == 16384), "conformant"] = False
    s = kernel_summary(t).set_index("op")
    assert not bool(s.loc["decode", "conformant"]) and bool(s.loc["encode", "conformant"])


def test_tables_without_a_conformant_column_read_identity_and_none_is_an_error(tmp_path):
    p = tmp_path / "old.csv"
    pd.DataFrame(rows()).to_csv(p, index=False)
    assert read_gpu_tables([p]).conformant.all()
    gpu_tables([p], tmp_path / "s.csv", tmp_path / "b.csv")
    b = pd.read_csv(tmp_path / "b.csv")
    assert len(b) == 1 and math.isfinite(b.break_even_gbps_pipelined[0])
    with pytest.raises(KVError, match="no GPU timing tables"):
        read_gpu_tables([])


def test_break_even_shift_matches_study_models_to_gpu_shapes_by_shape():
    from kvwire.stages.gpu_tables import break_even_shift

    models = pd.DataFrame([{"name": "tiny", "num_layers": 4, "num_kv_heads": 8, "head_dim": 128},
                           {"name": "other", "num_layers": 2, "num_kv_heads": 1, "head_dim": 64}])
    cpu = pd.DataFrame([{"model": "tiny", "dataset": d, "bin": 8192, "codec": "int8", "encode_s": 0.01,
                         "decode_s": 0.02, "break_even_gbps_sequential": s, "break_even_gbps_pipelined": 2 * s}
                        for d, s in (("a", 1.0), ("b", 3.0))])
    gpu = break_even(pd.DataFrame(rows()))  # model "m" of shape (4, 8, 128) at 8192 tokens, bf16
    shift = break_even_shift(cpu, models, gpu)
    assert len(shift) == 1 and shift.model[0] == "tiny"
    assert shift.cpu_gbps_sequential[0] == pytest.approx(2.0)  # the median over datasets
    assert shift.shift_sequential[0] == pytest.approx(gpu.break_even_gbps_sequential[0] / 2.0)
    assert shift.gpu_codec_ms[0] == pytest.approx(1.5) and shift.cpu_codec_ms[0] == pytest.approx(30.0)
    gpu16 = gpu.assign(dtype="float16")
    assert break_even_shift(cpu, models, gpu16).empty  # the study's caches are bf16


def test_the_gpu_is_also_set_against_a_whole_server_cpu_at_its_fastest_thread_count():
    from kvwire.stages.gpu_tables import break_even_shift

    models = pd.DataFrame([{"name": "tiny", "num_layers": 4, "num_kv_heads": 8, "head_dim": 128}])
    cpu = pd.DataFrame([{"model": "tiny", "dataset": "a", "bin": 8192, "codec": "int8", "encode_s": 0.01,
                         "decode_s": 0.02, "break_even_gbps_sequential": 1.0, "break_even_gbps_pipelined": 2.0}])
    gpu = break_even(pd.DataFrame(rows()))
    raw, wire = LARGE_BYTES * 2, LARGE_BYTES

    def scaling(threads, enc, dec, fastest, timer):
        return {"device_name": "Big CPU", "logical_cpus": 16, "timer": timer, "model": "tiny", "seq": 8192,
                "codec": "int8", "threads": threads, "layers": 4, "raw_bytes": raw, "wire_bytes": wire,
                "encode_s": enc, "decode_s": dec, "fastest": fastest}

    table = pd.DataFrame([scaling(1, 0.4, 0.4, False, "pass"), scaling(8, 0.1, 0.1, True, "pass"),
                          scaling(16, 0.2, 0.1, False, "pass"), scaling(8, 0.01, 0.01, True, "layer")])
    shift = break_even_shift(cpu, models, gpu, table)
    row = shift.iloc[0]
    assert row.server_threads == 8 and row.server_timer == "pass"  # the pass timer's rows, not the older ones
    assert row.server_cpu == "8 of 16 threads, Big CPU"
    assert row.server_gbps_sequential == pytest.approx(8 * (raw - wire) / 0.2 / 1e9)
    assert row.shift_server_pipelined == pytest.approx(row.gpu_gbps_pipelined / row.server_gbps_pipelined)
    assert row.server_gbps_pipelined >= row.server_gbps_sequential
    # without a scaling table the shift table is as before (no server columns)
    assert "server_cpu" not in break_even_shift(cpu, models, gpu).columns


def test_break_even_shift_figure_is_written_with_and_without_matches(tmp_path):
    from kvwire.stages.figures import draw_figure
    from kvwire.stages.gpu_tables import break_even_shift

    def figure(table, pdf, png):
        draw_figure("break_even_shift", {"break_even_shift": table}, pdf, png)

    empty = tmp_path / "empty.csv"
    cols = ["model", "bin", "codec", "gpu"] + [f"{d}_gbps_{m}" for d in ("cpu", "gpu") for m in ("sequential", "pipelined")]
    pd.DataFrame(columns=cols).to_csv(empty, index=False)
    figure(empty, tmp_path / "e.pdf", tmp_path / "e.png")
    assert (tmp_path / "e.png").stat().st_size > 1000
    models = pd.DataFrame([{"name": "tiny", "num_layers": 4, "num_kv_heads": 8, "head_dim": 128}])
    cpu = pd.DataFrame([{"model": "tiny", "dataset": "a", "bin": 8192, "codec": "int8", "encode_s": 0.01,
                         "decode_s": 0.02, "break_even_gbps_sequential": 1.0, "break_even_gbps_pipelined": 2.0}])
    full = tmp_path / "full.csv"
    break_even_shift(cpu, models, break_even(pd.DataFrame(rows()))).to_csv(full, index=False)
    figure(full, tmp_path / "f.pdf", tmp_path / "f.png")
    assert (tmp_path / "f.png").stat().st_size > (tmp_path / "e.png").stat().st_size


def test_real_cache_rows_sit_beside_their_synthetic_twins(tmp_path):
    """real_vs_synthetic matches a real cache's kernel rows to the synthetic rows of the same shape,
    codec, implementation and op (not by model name, which differs), and says how far apart they are."""
    import pandas as pd

    from kvwire.errors import KVError
    from kvwire.stages.gpu_tables import gpu_real_caches

    base = {"gpu": "G", "copy_gbps": 1000.0, "layers": 18, "kv_heads": 1, "seq": 2048, "head_dim": 256,
            "dtype": "bfloat16", "raw_bytes": 100, "bytes_moved": 1, "gbps": 1.0, "frac_copy": 0.1,
            "speedup_vs_eager": 1.0, "identical_to_cpu": True, "conformant": True, "layer_tokens": "15x511+3x2048"}
    rows = []
    for cache, model, ms, ratio in (("synthetic", "gemma-3-270m", 2.0, 3.97), ("p.safetensors", "gemma3-270m", 3.0, 3.6)):
        for op in ("encode", "decode"):
            rows.append({**base, "model": model, "codec": "cachegen", "impl": "triton", "op": op, "ms": ms,
                         "payload_bytes": 100 / ratio, "ratio": ratio, "cache": cache})
    rows.append({**base, "model": "gemma-3-270m", "codec": "cachegen", "impl": "eager", "op": "encode", "ms": 9.0,
                 "payload_bytes": 1, "ratio": 3.97, "cache": "synthetic"})
    rows.append({**base, "model": "gemma3-270m", "codec": "int8", "impl": "triton", "op": "encode", "ms": 1.0,
                 "payload_bytes": 50, "ratio": 2.0, "cache": "p.safetensors"})
    src = tmp_path / "g.csv"
    pd.DataFrame(rows).to_csv(src, index=False)
    t = gpu_real_caches([src], tmp_path / "out.csv")
    assert len(t) == 3 and set(t.model) == {"gemma3-270m"}
    cg = t[t.codec == "cachegen"]
    assert set(cg.synthetic_shape) == {"gemma-3-270m"}
    assert cg.time_real_over_synthetic.tolist() == pytest.approx([1.5, 1.5])
    assert cg.ratio_real_over_synthetic.tolist() == pytest.approx([3.6 / 3.97] * 2)
    assert t[t.codec == "int8"].ms_synthetic.isna().all()  # no twin: kept, said
    only_syn = tmp_path / "s.csv"
    pd.DataFrame([r for r in rows if r["cache"] == "synthetic"]).to_csv(only_syn, index=False)
    with pytest.raises(KVError, match="real cache"):
        gpu_real_caches([only_syn], tmp_path / "x.csv")


def test_the_server_side_takes_the_pass_timer_per_case_and_keeps_older_cases():
    from kvwire.stages.gpu_tables import server_cpu_rows

    def row(codec, timer, threads, fastest=True):
        return {"device_name": "CPU", "logical_cpus": 16, "timer": timer, "model": "m", "seq": 2048, "codec": codec,
                "threads": threads, "layers": 2, "raw_bytes": 4000, "wire_bytes": 2000, "encode_s": 0.01,
                "decode_s": 0.01, "fastest": fastest}

    got = server_cpu_rows(pd.DataFrame([row("int8", "layer", 8), row("int8", "pass", 4), row("int4", "layer", 16),
                                        row("int4", "layer", 2, fastest=False)])).set_index("codec")
    assert got.loc["int8", "server_timer"] == "pass" and got.loc["int8", "server_threads"] == 4
    assert got.loc["int4", "server_timer"] == "layer" and got.loc["int4", "server_threads"] == 16
    assert len(got) == 2
