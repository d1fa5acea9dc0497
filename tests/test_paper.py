"""The paper's generated parts: macros, decision table, LaTeX tables, and the text's own contract
(no hand-typed results, every caption names its rule, every macro it uses is generated)."""

import re
from pathlib import Path

import pandas as pd
import pytest

from kvwire.paper import decision, latex_tables, macros
from kvwire.stages import paper as paper_stage
from kvwire.stages.paper import CsvTables

REPO = Path(__file__).resolve().parents[1]
TABLES = REPO / "paper" / "tables"  # the published tables the paper is built from
TEX = REPO / "paper" / "kvwire.tex"


def committed(tmp_path=None, drop=()):
    paths = {n: TABLES / f"{n}.csv" for n in macros.TABLES if n != "decision"}
    if tmp_path is not None:  # the decision table is derived: make it from the committed ones
        paper_stage.decision_table(TABLES / "transfer_sweep.csv", TABLES / "gpu_transfer_sweep.csv",
                                   TABLES / "quality.csv", 0.95, tmp_path / "decision.csv")
        paths["decision"] = tmp_path / "decision.csv"
    return CsvTables({k: v for k, v in paths.items() if k not in drop})


def test_macro_names_are_latex_command_names():
    assert macros.macro_name("ratio", "int8_channel", "smollm2-135m") == "kwRatioIntEightChannelSmollmTwo"
    assert macros.macro_name("agree", "guardband_8x", "gemma3-270m") == "kwAgreeGuardbandEightXGemmaThree"
    assert macros.num(0.97392) == "0.974" and macros.num(4272.8, 4) == "4273" and macros.num(118.4) == "118"
    with pytest.raises(ValueError, match="NaN"):
        macros.num(float("nan"))


def test_macros_are_computed_from_the_tables(tmp_path):
    m, missing = macros.build_macros(committed(tmp_path), 0.95)
    assert missing == [t for t in macros.TABLES if t != "decision" and not (TABLES / f"{t}.csv").exists()]
    shift = pd.read_csv(TABLES / "break_even_shift.csv")
    assert m["kwShiftMedian"] == macros.num(shift["shift_pipelined"].median(), 2)
    assert m["kwShiftCases"] == str(len(shift))
    q = pd.read_csv(TABLES / "quality.csv")
    smol = q[(q.model == "smollm2-135m") & (q.codec == "int8_channel")].iloc[0]
    assert m["kwAgreeIntEightChannelSmollmTwo"] == macros.num(smol.token_agreement)
    ok = q[(q.model == "gemma3-270m") & (q.codec != "identity") & (q.token_agreement >= 0.95)]
    assert m["kwBestAtFloorGemmaThree"] == macros.tt(ok.loc[ok.ratio.idxmax(), "codec"])
    gates = pd.read_csv(TABLES / "gates.csv")
    assert m["kwGatesPassed"] == str(int(gates.passed.sum()))
    waived = gates[(gates.passed.astype(str) != "True") & gates.waived.fillna("").astype(str).ne("")]
    for r in waived.itertuples():  # the list names every waived (gate, model), and only those
        assert f"{macros.tt(r.gate)} on {macros.tt(r.model)}" in m["kwGatesWaivedList"]
    assert m["kwGatesWaivedList"].count(" on ") == len(waived) or (len(waived) == 0 and m["kwGatesWaivedList"] == "none")
    assert all(re.fullmatch(r"kw[A-Za-z]+", k) for k in m)
    assert not any("nan" in v.lower() for v in m.values())


def test_quoted_numbers_are_the_ones_the_sentences_mean(tmp_path):
    m, _ = macros.build_macros(committed(tmp_path), 0.95)
    be = pd.read_csv(TABLES / "break_even_all.csv")
    n = int(m["kwBreakEvenTokens"])
    gpu = be[(be.device == "gpu") & (be.codec == "int8") & (be.seq == n) & be.model.isin(pd.read_csv(TABLES / "quality.csv").model)]
    assert set(gpu.dtype) > {"bfloat16"}  # the table has fp16 rows too: the macro must not mix them in
    assert m["kwBeGpuIntEight"] == macros.num(gpu[gpu.dtype == "bfloat16"].break_even_gbps_pipelined.median())
    # "keeps paying up to": the last bandwidth a codec wins, below the first where raw wins
    d = pd.read_csv(tmp_path / "decision.csv")
    gpu_d = d[d.encoder == "GPU"]
    assert float(m["kwPaysUpToGPU"]) == gpu_d[gpu_d.choice != "raw"].to_gbps.max() < float(m["kwRawFromGPU"])
    # raw as measured through the connector, not the model's raw time
    e = pd.read_csv(TABLES / "e2e_transfer.csv")
    raw = e[(e.model == "smollm2-135m") & (e.codec == "identity") & (e["mode"] == "pipelined") & (e.rate_gbps == e.rate_gbps.min())]
    assert m["kwERawSSmollmTwo"] == macros.num(float(raw.measured_s.iloc[0]), 2) != macros.num(float(raw.raw_transfer_model_s.iloc[0]), 2)
    cpu = be[(be.device == "cpu") & (be.seq == n)].assign(ms=lambda x: x.encode_ms + x.decode_ms).set_index(["model", "codec"]).ms
    assert m["kwZstdCpuOverIntEight"] == macros.num((cpu.xs("zstd", level="codec") / cpu.xs("int8", level="codec")).median(), 2)


def test_the_server_cpu_and_end_to_end_macros_are_the_tables(tmp_path):
    m, _ = macros.build_macros(committed(tmp_path), 0.95)
    shift = pd.read_csv(TABLES / "break_even_shift.csv")
    server = shift.dropna(subset=["shift_server_pipelined"])
    assert len(server) > 0  # the published shift table sets the GPU against a whole server CPU
    assert m["kwShiftServerMedian"] == macros.num(server["shift_server_pipelined"].median(), 2)
    assert m["kwShiftServerVmMedian"] == macros.num(server["shift_pipelined"].median(), 2)  # the same cases
    assert m["kwShiftServerCases"] == str(len(server))
    assert m["kwServerLogicalCpus"] == str(int(server["server_logical_cpus"].iloc[0]))
    # an end-to-end table fed the break-even's own timing table gets its own sentence's numbers
    e = pd.DataFrame([{"model": "m", "rate_gbps": r, "codec": "int8", "mode": mode, "runs": 3, "measured_s": 1.0,
                       "model_s": 1.0 - err, "rel_error": err, "wire_bytes": 2_000_000, "raw_bytes": 4_000_000,
                       "raw_transfer_model_s": 0.5, "model_source": "time_cpu table", "model_own_s": 0.99,
                       "rel_error_own": 0.01, "encode_in_transfer_over_table": enc, "decode_in_transfer_over_table": 1.0,
                       "speedup_measured_vs_raw_model": 0.5}
                      for r, err in ((1, 0.05), (10, 0.2)) for mode, enc in (("sequential", 1.1), ("pipelined", 1.5))])
    got = macros._e2e({"e2e_transfer": e}, 0.95)
    assert got["kwEtoEErrMedianLowRate"] == macros.pct(0.05) and got["kwEtoEErrMedianHi"] == macros.pct(0.2)
    assert got["kwEEncOverTablePipelined"] == macros.num(1.5, 2) and got["kwEtoEOwnErrMedianLo"] == macros.pct(0.01)


def test_the_selection_cost_and_timer_macros_are_the_tables_cpu_rows():
    rows = [{"device": "cpu", "codec": c, "model": m, "encode_ms": 10.0, "prefill_stats_ms": s,
             "break_even_gbps_pipelined": free, "break_even_gbps_pipelined_with_stats": charged, "timer": "pass"}
            for m in ("a", "b") for c, s, free, charged in (("snapkv", 5.0, 8.0, 4.0), ("prune_quant", 20.0, 6.0, 2.0),
                                                           ("int8", 0.0, 9.0, 9.0))]
    cpu = pd.DataFrame(rows)
    got = macros._selection_cost(cpu)
    assert got["kwStatsCodecs"] == macros.and_list([macros.tt("prune_quant"), macros.tt("snapkv")])  # not int8
    assert got["kwStatsMs"] == macros.num(12.5, 2) and got["kwStatsOverEncode"] == macros.num(1.25, 2)
    assert (got["kwStatsBeFree"], got["kwStatsBeCharged"]) == (macros.num(7.0), macros.num(3.0))
    assert macros._selection_cost(cpu.assign(prefill_stats_ms=0.0)) == {}  # nothing measured, no sentence
    assert macros._selection_cost(cpu.drop(columns="prefill_stats_ms")) == {}


def test_provenance_macros_name_the_run_and_every_table_replaced_since():
    import json

    from kvwire.errors import KvwireError

    published = json.loads((TABLES / "PUBLISHED.json").read_text())
    m = macros._provenance(published)
    assert m["kwPublishedCommit"] == macros.tt(published["commit"][:7])
    for u in published.get("updates", []):
        assert macros.tt(u["table"]) in m["kwUpdatedTables"]
    study = {"commit": "abcdef0123", "tables": {}}
    assert macros._provenance(study) == {"kwPublishedCommit": macros.tt("abcdef0")}
    retimed = {**study, "updates": [{"table": "break_even_all.csv"}, {"table": "e2e_transfer.csv"},
                                    {"table": "break_even_all.csv"}]}
    got = macros._provenance(retimed)
    assert got["kwRouterTimesOlder"] == "1"  # the router was not re-run with the re-timed tables
    assert got["kwUpdatedTables"] == macros.and_list([macros.tt("break_even_all.csv"), macros.tt("e2e_transfer.csv")])
    assert "kwRouterTimesOlder" not in macros._provenance({**study, "updates": [{"table": "e2e_transfer.csv"}]})
    both = {**study, "updates": retimed["updates"] + [{"table": "router.csv"}]}
    assert "kwRouterTimesOlder" not in macros._provenance(both)
    with pytest.raises(KvwireError, match="manifest"):
        macros._provenance({"updates": "break_even.csv"})


def test_real_cache_kernel_macros_take_one_gpu_and_say_what_the_real_cache_changed():
    def row(gpu, codec, impl, op, t, ratio, ratio_syn):
        return {"gpu": gpu, "model": "m", "seq": 2048, "codec": codec, "impl": impl, "op": op,
                "time_real_over_synthetic": t, "ratio": ratio, "ratio_synthetic": ratio_syn,
                "ratio_real_over_synthetic": ratio / ratio_syn, "conformant": True}
    rows = [row("NVIDIA H200", "int8", "triton", op, t, 1.94, 1.94) for op, t in (("encode", 1.5), ("decode", 1.1))]
    rows += [row("NVIDIA H200", "cachegen", impl, "encode", 2.0, 3.6, 4.17) for impl in ("host", "triton")]
    rows += [row("NVIDIA H100 80GB HBM3", "int8", "triton", "encode", 9.0, 1.94, 1.94)]  # another GPU: not mixed in
    t = {"gpu_real_caches": pd.DataFrame(rows), "gpu_kernels": pd.DataFrame([{"gpu": "NVIDIA H200"}])}

    class T(dict):
        def has(self, name):
            return name in self
    got = macros._gpu_real(T(t), 0.95)
    assert got["kwGpuRealGpu"] == "H200" and got["kwGpuRealRows"] == "4"
    assert got["kwGpuRealTimeMedian"] == macros.num(1.75, 2) and got["kwGpuRealTimeHi"] == macros.num(2.0, 2)
    assert (got["kwGpuRealCodecs"], got["kwGpuRealSameRatio"]) == ("2", "1")  # cachegen's ratio moved, int8's not
    assert (got["kwGpuRealCachegenRatio"], got["kwGpuRealCachegenRatioSynthetic"]) == (macros.num(3.6, 3), macros.num(4.17, 3))


def test_kernel_macros_name_each_gpu_and_the_graph_replay_where_timed():
    def row(gpu, codec, op, frac, small, graph, host, host_graph):
        return {"gpu": gpu, "copy_gbps": 3000.0 if "H100" in gpu else 4300.0, "codec": codec, "op": op,
                "frac_copy_median": frac, "speedup_vs_eager_median": 10.0, "conformant": True,
                "frac_copy_small_median": small, "frac_copy_small_graph_median": graph,
                "host_us_small_median": host, "host_us_small_graph_median": host_graph}
    nan = float("nan")
    rows = [row("NVIDIA H200", "int8", op, 0.8, 0.2, nan, nan, nan) for op in ("encode", "decode")]
    rows += [row("NVIDIA H100 80GB HBM3", "int8", "encode", 0.7, 0.3, 0.6, 100.0, 8.0),
             row("NVIDIA H100 80GB HBM3", "int4", "encode", 0.5, 0.1, 0.4, 200.0, 12.0)]
    got = macros._kernels({"gpu_kernels": pd.DataFrame(rows)}, 0.95)
    assert got["kwGpuCount"] == "2"
    assert (got["kwGpuName"], got["kwGpuBName"]) == ("H100 80GB HBM3", "H200")  # sorted by name
    assert got["kwKernelFracMedian"] == macros.pct(0.6) and got["kwGpuBKernelFracMedian"] == macros.pct(0.8)
    assert got["kwKernelFracSmallGraphMedian"] == macros.pct(0.5) and got["kwKernelsGraphed"] == "2"
    assert got["kwHostUsSmallMedian"] == macros.num(150.0, 2) and got["kwHostUsSmallGraphMedian"] == macros.num(10.0, 2)
    assert "kwGpuBKernelFracSmallGraphMedian" not in got  # the H200 rows have no graph replays


def test_sensitivity_macros_say_which_statistic_orders_the_drops(tmp_path):
    rows = [("a-1m", 0.02, 7.0, 0.30), ("b-1m", 0.01, 4.0, 0.14), ("c-1m", 0.0004, 4.7, -0.04)]
    table = pd.DataFrame(rows, columns=["model", "key_outlier_channel_share", "key_token_dynamic_range",
                                        "per_token_penalty_int4"])
    table.to_csv(tmp_path / "sensitivity.csv", index=False)
    m, _ = macros.build_macros(CsvTables({"sensitivity": tmp_path / "sensitivity.csv"}), 0.95)
    assert m["kwKeyOutlierShareA"] == r"2.0\,\%" and m["kwKeyDynamicRangeB"] == "4.0" and m["kwPenaltyIntFourC"] == "-0.040"
    # outlier share ranks c < b < a as the penalty does; the dynamic range ranks b < c < a: it does not
    assert m["kwOutlierOrdersPenalty"] == "1" and m["kwRangeOrdersPenalty"] == "0"
    table.assign(key_token_dynamic_range=[7.0, 4.8, 4.7]).to_csv(tmp_path / "sensitivity.csv", index=False)
    m, _ = macros.build_macros(CsvTables({"sensitivity": tmp_path / "sensitivity.csv"}), 0.95)
    assert m["kwRangeOrdersPenalty"] == "1"


def test_a_missing_table_turns_its_flag_off_and_defines_none_of_its_numbers(tmp_path):
    m, missing = macros.build_macros(committed(tmp_path, drop=("e2e_transfer",)), 0.95)
    assert "e2e_transfer" in missing and m["kwHaveETwoETransfer"] == "0" and m["kwHaveQuality"] == "1"
    assert "kwEtoEErrMax" not in m
    text, _ = paper_stage.paper_macros(committed(tmp_path, drop=("e2e_transfer",)).paths, 0.95, tmp_path / "m.tex")
    written = (tmp_path / "m.tex").read_text()
    missing_line = next(line for line in written.splitlines() if line.startswith("% missing tables: "))
    assert "e2e_transfer" in missing_line.split(": ", 1)[1].split(", ") and f"\\newcommand{{\\kwShiftMedian}}{{{text['kwShiftMedian']}}}" in written


def _sweep(rows, length):
    return pd.DataFrame([{"model": m, length: 2048, "codec": c, "bandwidth_gbps": bw, "speedup_pipelined": s}
                         for m, c, bw, s in rows])


def test_decision_regimes_follow_the_fastest_codec_meeting_the_floor():
    quality = pd.DataFrame([{"model": m, "codec": c, "token_agreement": a}
                            for m in ("a", "b") for c, a in (("identity", 1.0), ("fast", 0.97), ("lossy", 0.90),
                                                             ("safe", 0.995))])
    # "lossy" would be fastest everywhere but misses the floor on both models
    rows = []
    for m in ("a", "b"):
        for bw, fast, safe, lossy in ((1, 3.0, 1.5, 9.0), (10, 1.2, 1.4, 9.0), (100, 0.5, 0.9, 9.0)):
            rows += [(m, "fast", bw, fast), (m, "safe", bw, safe), (m, "lossy", bw, lossy)]
    assert decision.eligible_codecs(quality, 0.95) == ["fast", "safe"]
    cpu, gpu = _sweep(rows, "bin"), _sweep(rows, "seq")
    regimes = decision.regimes(decision.choices(cpu, gpu, quality, 0.95))
    cpu_regimes = regimes[regimes.encoder == "CPU"]
    assert list(cpu_regimes.choice) == ["fast", "safe", "raw"]
    assert list(cpu_regimes.from_gbps) == [1, 10, 100] and cpu_regimes.speedup_max.iloc[0] == 3.0
    # at a floor of 0.99 only "safe" is eligible
    strict = decision.regimes(decision.choices(cpu, gpu, quality, 0.99))
    assert list(strict[strict.encoder == "GPU"].choice) == ["safe", "raw"]


def test_latex_codec_table_has_every_row_with_its_interval(tmp_path):
    frame = paper_stage.latex_table("codecs", {"quality": TABLES / "quality.csv"}, tmp_path / "c.tex")
    q = pd.read_csv(TABLES / "quality.csv")
    assert len(frame) == len(q)
    tex = (tmp_path / "c.tex").read_text()
    assert tex.count("\\\\") == len(q) + 1 and "\\toprule" in tex and "\\bottomrule" in tex
    r = q[(q.model == "gemma3-270m") & (q.codec == "int8")].iloc[0]
    assert f"{macros.num(r.token_agreement)} [{macros.num(r.token_agreement_ci_lo)}, " \
           f"{macros.num(r.token_agreement_ci_hi)}]" in tex
    assert "int8\\_channel" in tex


def test_latex_break_even_table_is_the_median_over_models(tmp_path):
    b = pd.read_csv(TABLES / "break_even_all.csv")
    models = ["smollm2-135m", "gemma3-270m"]
    frame, _ = latex_tables.break_even_table(b, models)
    frame = frame.set_index("codec")
    sel = b[(b.codec == "kivi4") & (b.device == "gpu") & (b.seq == 2048) & b.model.isin(models)]
    assert frame.loc["kivi4", "GPU pipelined"] == macros.num(sel.break_even_gbps_pipelined.median())


# ---------------------------------------------------------------- the text's contract

def _body(tex: str) -> str:
    body = tex.split("\\begin{document}", 1)[1]
    body = re.sub(r"(?<!\\)%.*", "", body)  # comments
    body = re.sub(r"\\(?:label|ref|cite|input|IfFileExists|kwgraphic|bibliography\w*|includegraphics)"
                  r"(\[[^\]]*\])?\{[^}]*\}", "", body)
    return re.sub(r"\\kw[A-Za-z]+", "", body)


def test_no_result_is_typed_by_hand():
    """Measured numbers come from macros: no decimals, percentages or factors in the text itself
    (the bootstrap's 95 % level is a protocol constant, not a result)."""
    body = _body(TEX.read_text()).replace("95\\,\\%", "")
    assert not re.findall(r"\d+\.\d+", body), re.findall(r".{30}\d+\.\d+.{20}", body)
    assert not re.findall(r"\d\s*(?:\\,)?\\%", body), re.findall(r".{30}\d\s*(?:\\,)?\\%", body)
    assert not re.findall(r"\d\s*\$\\times\$", body)
    assert not re.findall(r"(?<![-\w])\d{3,}(?![\w-])", body), re.findall(r".{30}(?<![-\w])\d{3,}(?![\w-]).{10}", body)


def test_every_caption_names_a_rule_of_the_workflow():
    tex = TEX.read_text()
    rules = set()
    for smk in (REPO / "workflow" / "rules").glob("*.smk"):
        rules |= set(re.findall(r"^\s*rule (\w+):", smk.read_text(), re.M))
    captions = re.findall(r"\\caption\{(.*?)\}\s*\\label", tex, re.S)
    assert len(captions) >= 12
    for caption in captions:
        named = [r.replace("\\_", "_") for r in re.findall(r"\\smkrule\{([^}]+)\}", caption)]
        assert named, caption[:80]
        assert set(named) <= rules, set(named) - rules


def test_every_macro_the_text_uses_is_generated(tmp_path):
    m, missing = macros.build_macros(committed(tmp_path), 0.95)
    if missing:  # a table not committed yet: its macros sit in branches the flags skip
        pytest.skip(f"cached tables not committed: {missing}")
    defined_in_tex = set(re.findall(r"\\newcommand\{\\(kw[A-Za-z]+)\}", TEX.read_text()))
    # a sentence guarded by \ifdefined (a model or pair the published tables may lack) may use macros
    # the tables do not define: TeX skips it
    unguarded = re.sub(r"\\ifdefined\\kw[A-Za-z]+.*?\\fi", "", TEX.read_text(), flags=re.S)
    used = set(re.findall(r"\\(kw[A-Za-z]+)", unguarded))
    assert used - set(m) - defined_in_tex == set()
    # and every table flag the text tests is one the macro file sets, present or not
    flags = set(re.findall(r"\\(kwHave[A-Za-z]+)", TEX.read_text()))
    assert flags <= {macros.macro_name("have", t) for t in macros.TABLES}


def test_decision_without_an_eligible_codec_or_a_shared_length_still_decides():
    """The smoke study's tiny model meets no floor and is timed at other lengths than the GPU rows."""
    quality = pd.DataFrame([{"model": "m", "codec": "c", "token_agreement": 0.5}])
    cpu = pd.DataFrame([{"model": "m", "bin": 128, "codec": "c", "bandwidth_gbps": 1.0, "speedup_pipelined": 3.0}])
    gpu = pd.DataFrame([{"model": "m", "seq": 256, "codec": "c", "bandwidth_gbps": 1.0, "speedup_pipelined": 5.0}])
    table = decision.regimes(decision.choices(cpu, gpu, quality, 0.95))
    assert list(table.choice) == ["raw", "raw"] and list(table.length) == [128, 256]
    quality["token_agreement"] = 0.99
    table = decision.regimes(decision.choices(cpu, gpu, quality, 0.95))
    assert list(table.choice) == ["c", "c"] and list(table.speedup_max) == [3.0, 5.0]


def test_the_separately_published_large_model_run_adds_only_its_own_models(tmp_path):
    q = pd.read_csv(TABLES / "quality.csv")
    main_model = q.model.iloc[0]
    extra = q[q.model == main_model].copy()
    extra["token_agreement"] = 0.5  # the main model's rows in the other run must not override the main study's
    big = q[q.model == main_model].assign(model="qwen2.5-coder-1.5b", token_agreement=0.777, n_documents=104)
    (tmp_path / "qwen1.5b").mkdir()
    pd.concat([extra, big]).to_csv(tmp_path / "qwen1.5b" / "quality.csv", index=False)
    paths = {n: TABLES / f"{n}.csv" for n in macros.TABLES if not n.startswith("qwen1.5b/") and n != "decision"}
    paths["qwen1.5b/quality"] = tmp_path / "qwen1.5b" / "quality.csv"
    m, missing = macros.build_macros(CsvTables(paths), 0.95)
    codec = big.codec.iloc[1]
    assert m[macros.macro_name("agree", codec, "qwen2.5-coder-1.5b")] == "0.777"
    main_row = q[(q.model == main_model) & (q.codec == codec)].iloc[0]
    assert m[macros.macro_name("agree", codec, main_model)] == macros.num(main_row.token_agreement)
    assert m["kwLargeNumDocuments"] == "104" and m["kwHaveQwenOneFiveBQuality"] == "1"
    assert "qwen1.5b/quality_pairs" in missing and m["kwHaveQwenOneFiveBQualityPairs"] == "0"
