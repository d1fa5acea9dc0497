"""Quality-study figures: each writes a valid PDF and PNG, and the numbers behind them are right."""

import math

import numpy as np
import pandas as pd
import pytest

from kvwire.errors import ConfigError
from kvwire.figures import pareto, quality_pairs, sensitivity_heatmap, speedup_vs_bandwidth
from kvwire.figures.labels import LABEL_GID, LEADER_GID
from kvwire.figures.pareto import pareto_steps
from kvwire.figures.sensitivity_heatmap import sensitivity_matrix
from kvwire.figures.speedup_vs_bandwidth import speedup_matrices
from kvwire.stages.figures import draw_figure, save

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def by_model_table() -> pd.DataFrame:
    """Two models; model b did not run codec ``int2`` (a missing cell)."""
    rows = []
    codecs = {  # codec: (ratio, token agreement, delta_ce, key cosine, value cosine, pareto)
        "identity": (0.99, 1.0, 0.0, 1.0, 1.0, True),
        "int8": (1.9, 0.99, 0.01, 0.9999, 0.9998, True),
        "int4": (3.6, 0.9, 0.2, 0.995, 0.99, True),
        "int2": (6.5, 0.6, 1.5, 0.9, 0.85, True),
        "svd": (2.5, 0.8, 0.4, 0.98, 0.97, False),
    }
    for model, shift in (("a", 0.0), ("b", 0.05)):
        for codec, (ratio, agree, dce, kc, vc, pareto) in codecs.items():
            if model == "b" and codec == "int2":
                continue
            a = agree if codec == "identity" else agree - shift
            d = dce if codec == "identity" else dce + shift
            rows.append({"model": model, "codec": codec, "n_prompts": 20, "ratio": ratio,
                         "token_agreement": a, "token_agreement_ci_lo": a - 0.02 * (codec != "identity"),
                         "token_agreement_ci_hi": min(1.0, a + 0.02), "delta_ce": d,
                         "delta_ce_ci_lo": d - 0.01, "delta_ce_ci_hi": d + 0.01,
                         "key_cosine": kc, "value_cosine": vc, "pareto": pareto})
    return pd.DataFrame(rows)


def spearman_table() -> pd.DataFrame:
    return pd.DataFrame([{"model": m, "n_pairs": 80, "n_codecs": 4, "rho_key_cosine_vs_delta_ce": r,
                          "rho_key_cosine_vs_token_agreement": -r, "rho_value_cosine_vs_delta_ce": r / 2,
                          "rho_value_cosine_vs_token_agreement": -r / 2} for m, r in (("a", -0.9), ("b", -0.7))])


@pytest.fixture()
def csvs(tmp_path):
    by_model, spearman = tmp_path / "by_model.csv", tmp_path / "spearman.csv"
    by_model_table().to_csv(by_model, index=False)
    spearman_table().to_csv(spearman, index=False)
    return by_model, spearman


def assert_figures(pdf, png):
    head = png.read_bytes()
    assert head.startswith(PNG_MAGIC) and len(head) > 5000
    body = pdf.read_bytes()
    assert body.startswith(b"%PDF") and b"%%EOF" in body[-64:] and len(body) > 5000
    assert not list(pdf.parent.glob(".*.tmp"))  # atomic writes left nothing behind


def test_pareto_per_model_writes_figures(csvs, tmp_path):
    pdf, png = tmp_path / "fig/pareto.pdf", tmp_path / "fig/pareto.png"
    draw_figure("pareto", {"quality": csvs[0]}, pdf, png)
    assert_figures(pdf, png)


def test_cosine_vs_delta_ce_writes_figures(csvs, tmp_path):
    pdf, png = tmp_path / "cos.pdf", tmp_path / "cos.png"
    # model b is absent from the Spearman table: it still plots (its legend says n/a)
    spearman_table().iloc[:1].to_csv(csvs[1], index=False)
    draw_figure("cosine_vs_delta_ce", {"quality": csvs[0], "cosine_spearman": csvs[1]}, pdf, png)
    assert_figures(pdf, png)


@pytest.mark.parametrize("metric", ["token_agreement", "delta_ce"])
def test_sensitivity_heatmap_writes_figures(csvs, tmp_path, metric):
    pdf, png = tmp_path / f"{metric}.pdf", tmp_path / f"{metric}.png"
    if metric == sensitivity_heatmap.METRIC:  # the workflow's figure
        draw_figure("sensitivity_heatmap", {"quality": csvs[0]}, pdf, png)
    else:
        save(sensitivity_heatmap.heatmap(pd.read_csv(csvs[0]), metric), pdf, png)
    assert_figures(pdf, png)


def test_sensitivity_matrix_drops_blanks_and_order():
    agree = sensitivity_matrix(by_model_table(), "token_agreement")
    assert list(agree.columns) == ["a", "b"]
    assert list(agree.index) == ["int8", "int4", "svd", "int2"]  # by mean drop; identity left out
    assert agree.loc["int4", "a"] == pytest.approx(0.1) and agree.loc["int4", "b"] == pytest.approx(0.15)
    assert agree.loc["int2", "a"] == pytest.approx(0.4)
    assert math.isnan(agree.loc["int2", "b"])  # never ran: blank, not zero
    dce = sensitivity_matrix(by_model_table(), "delta_ce")
    assert dce.loc["svd", "a"] == pytest.approx(0.4) and dce.loc["svd", "b"] == pytest.approx(0.45)
    assert math.isnan(dce.loc["int2", "b"])


def test_sensitivity_matrix_drop_is_relative_to_identity_not_to_perfect():
    table = by_model_table()
    worse_baseline = table.model == "a"
    table.loc[worse_baseline, "token_agreement"] -= 0.1  # identity itself at 0.9 (e.g. bf16 noise)
    matrix = sensitivity_matrix(table, "token_agreement")
    assert matrix.loc["int4", "a"] == pytest.approx(0.1)


def test_sensitivity_matrix_errors():
    table = by_model_table()
    no_ident = table[~((table.model == "b") & (table.codec == "identity"))]
    with pytest.raises(ConfigError, match="model 'b' has no identity row"):
        sensitivity_matrix(no_ident, "token_agreement")
    with pytest.raises(ConfigError, match="not one of"):
        sensitivity_matrix(table, "ppl")
    with pytest.raises(ConfigError, match="several rows"):
        sensitivity_matrix(pd.concat([table, table.iloc[:1]]), "delta_ce")


def test_sensitivity_heatmap_without_identity_names_the_model(tmp_path):
    table = by_model_table()
    table[~((table.model == "a") & (table.codec == "identity"))].to_csv(tmp_path / "t.csv", index=False)
    with pytest.raises(ConfigError, match="'a'"):
        draw_figure("sensitivity_heatmap", {"quality": tmp_path / "t.csv"}, tmp_path / "h.pdf", tmp_path / "h.png")
    assert not (tmp_path / "h.pdf").exists()


def test_pareto_steps_staircase():
    # shuffled input; the staircase holds the larger ratio's quality between neighbours
    xs, ys = pareto_steps([4.0, 1.0, 2.0], [0.5, 1.0, 0.9])
    np.testing.assert_array_equal(xs, [1.0, 1.0, 2.0, 2.0, 4.0])
    np.testing.assert_array_equal(ys, [1.0, 0.9, 0.9, 0.5, 0.5])
    xs, ys = pareto_steps([3.0], [0.7])
    assert xs.tolist() == [3.0] and ys.tolist() == [0.7]
    assert pareto_steps([], [])[0].size == 0
    with pytest.raises(ConfigError):
        pareto_steps([1.0, 2.0], [1.0])


def crowded_table() -> pd.DataFrame:
    """Two models, 14 codecs each, bunched as the real study bunches them: four within 1 % of ratio 2
    and 0.01 of agreement, four near ratio 3.7, long names; model b shifts every point a little."""
    codecs = {  # codec: (ratio, token agreement, pareto)
        "identity": (1.0, 1.0, False), "zstd_lossless": (1.29, 1.0, True),
        "int8_channel": (1.995, 0.995, True), "fp8_e4m3": (1.984, 0.978, False),
        "int8": (1.984, 0.974, False), "snapkv_selection": (1.999, 0.972, False),
        "k8v4": (2.62, 0.957, False), "kivi4": (2.627, 0.961, False),
        "kvquant4_prerope": (3.5, 0.962, True), "cachegen": (3.67, 0.936, True),
        "kivi2": (3.673, 0.933, False), "int4_per_token": (3.68, 0.931, False),
        "int4_channel": (3.965, 0.93, False), "guardband_8x": (8.0, 0.73, True),
    }
    rows = []
    for model, shift in (("model-a", 0.0), ("model-b", 0.004)):
        for codec, (ratio, agree, pareto) in codecs.items():
            a = min(1.0, agree + shift * (codec != "identity"))
            rows.append({"model": model, "codec": codec, "ratio": ratio * (1 + shift), "token_agreement": a,
                         "token_agreement_ci_lo": a - 0.01, "token_agreement_ci_hi": min(1.0, a + 0.01),
                         "pareto": pareto})
    return pd.DataFrame(rows)


def test_pareto_labels_never_overlap_when_points_crowd(tmp_path):
    table = crowded_table()
    fig = pareto.draw({"quality": table})
    renderer = fig.canvas.get_renderer()
    px = fig.dpi / 72.0
    panels = [ax for ax in fig.axes if any(t.get_gid() == LABEL_GID for t in ax.texts)]
    assert [ax.get_title() for ax in panels] == ["model-a", "model-b"]
    boxes = []
    for ax in panels:
        sub = table[table.model == ax.get_title()]
        labels = [t for t in ax.texts if t.get_gid() == LABEL_GID]
        assert sorted(t.get_text() for t in labels) == sorted(sub.codec)  # every codec, once
        extents = {t.get_text(): t.get_window_extent(renderer) for t in labels}
        frame = ax.get_window_extent(renderer)
        points = dict(zip(sub.codec, ax.transData.transform(sub[["ratio", "token_agreement"]].to_numpy())))
        # the test means something: some points lie closer than a label is tall
        gaps = [np.hypot(*(points[a] - points[b])) for a in points for b in points if a < b]
        assert min(gaps) < min(e.height for e in extents.values())
        for codec, box in extents.items():
            assert frame.x0 <= box.x0 and box.x1 <= frame.x1 and frame.y0 <= box.y0 and box.y1 <= frame.y1
            for other, (x, y) in points.items():  # no label covers another codec's marker (ms 4: 2 pt radius)
                if other != codec:
                    near = np.clip([x, y], [box.x0, box.y0], [box.x1, box.y1])
                    assert np.hypot(x - near[0], y - near[1]) > 2 * px, (codec, other)
        boxes += [(ax.get_title(), codec, box) for codec, box in extents.items()]
        # a label moved away from its point is tied to it by a leader line ending in that point
        for line in (ln for ln in ax.lines if ln.get_gid() == LEADER_GID):
            end = ax.transData.transform((line.get_xdata()[1], line.get_ydata()[1]))
            assert min(np.hypot(*(end - q)) for q in points.values()) < 0.5
    for i, (m1, c1, b1) in enumerate(boxes):
        for m2, c2, b2 in boxes[i + 1:]:
            assert not b1.overlaps(b2), f"label {c1} ({m1}) overlaps {c2} ({m2})"
    assert fig.get_size_inches()[0] == pytest.approx(7.0)  # drawn at the full text width
    import matplotlib.pyplot as plt

    plt.close(fig)
    table.to_csv(tmp_path / "crowded.csv", index=False)
    draw_figure("pareto", {"quality": tmp_path / "crowded.csv"}, tmp_path / "p.pdf", tmp_path / "p.png")
    assert_figures(tmp_path / "p.pdf", tmp_path / "p.png")


def sweep_table() -> pd.DataFrame:
    """Two models, three codecs, four bandwidths, two length bins, two datasets; sequential speed-up
    ratio / (1 + c * bandwidth), pipelined a bit better; model b never ran codec 'c' at 100 Gbps."""
    rows = []
    for model in ("a", "b"):
        for dataset, noise in (("d1", 0.9), ("d2", 1.1)):
            for bin_ in (256, 1024):
                for codec, ratio, cost in (("int8", 2.0, 0.05), ("int4", 4.0, 0.3), ("c", 1.2, 0.01)):
                    for bw in (0.1, 1.0, 10.0, 100.0):
                        if model == "b" and codec == "c" and bw == 100.0:
                            continue
                        seq = ratio / (1 + cost * bw * (bin_ / 1024)) * noise
                        rows.append({"model": model, "dataset": dataset, "bin": bin_, "codec": codec,
                                     "bandwidth_gbps": bw, "speedup_sequential": seq,
                                     "speedup_pipelined": 1.5 * seq})
    return pd.DataFrame(rows)


def test_speedup_heatmaps_show_the_pivoted_table(tmp_path):
    sweep = sweep_table()
    panels = speedup_matrices(sweep)
    assert sorted(panels) == [("a", "pipelined"), ("a", "sequential"), ("b", "pipelined"), ("b", "sequential")]
    longest = sweep[sweep["bin"] == 1024]
    for (model, mode), m in panels.items():
        assert list(m.columns) == [0.1, 1.0, 10.0, 100.0]
        assert list(m.index) == list(panels[("a", "sequential")].index)  # one row order for all panels
        want = (longest[longest.model == model].groupby(["codec", "bandwidth_gbps"])[f"speedup_{mode}"].mean()
                .unstack().reindex(index=m.index, columns=m.columns))
        pd.testing.assert_frame_equal(m, want, check_names=False)
    assert list(panels[("a", "sequential")].index) == ["int4", "int8", "c"]  # largest gain above 1 first
    assert np.isnan(panels[("b", "sequential")].loc["c", 100.0])  # never ran: blank, not 1x

    fig = speedup_vs_bandwidth.draw({"transfer_sweep": sweep})
    heat = [ax for ax in fig.axes if ax.images]
    assert len(heat) == 4 and len(fig.axes) == 5  # models x modes; the colour bar is the one other axes
    assert sum(bool(ax.get_xlabel()) for ax in heat) == 2
    assert [ax.get_title() for ax in heat] == ["a, sequential", "b, sequential", "a, pipelined", "b, pipelined"]
    for ax in heat:
        model, mode = ax.get_title().split(", ")
        m = panels[(model, mode)]
        shown = ax.images[0].get_array()
        np.testing.assert_allclose(shown.filled(np.nan), m.to_numpy(), equal_nan=True)
        # rows and columns named (shown on the outer panels only: the axes are shared)
        assert ax.yaxis.get_major_formatter().format_ticks(ax.get_yticks()) == list(m.index)
        assert ax.xaxis.get_major_formatter().format_ticks(ax.get_xticks()) == ["0.1", "1", "10", "100"]
        norm = ax.images[0].norm
        assert norm(1.0) == pytest.approx(0.5)  # the diverging map is centred at 1x
        # the break-even line separates every cell that pays from a neighbour that does not
        values = m.to_numpy()
        flips = sum(int(values[i, j] >= 1) != int(values[i, j + 1] >= 1)
                    for i in range(values.shape[0]) for j in range(values.shape[1] - 1)
                    if np.isfinite(values[i, j]) and np.isfinite(values[i, j + 1]))
        flips += sum(int(values[i, j] >= 1) != int(values[i + 1, j] >= 1)
                     for i in range(values.shape[0] - 1) for j in range(values.shape[1])
                     if np.isfinite(values[i, j]) and np.isfinite(values[i + 1, j]))
        (line,) = [c for c in ax.collections if c.get_gid() == "break-even"]
        assert len(line.get_segments()) == flips > 0
    import matplotlib.pyplot as plt

    plt.close(fig)
    sweep.to_csv(tmp_path / "sweep.csv", index=False)
    pd.DataFrame(columns=["model", "codec"]).to_csv(tmp_path / "be.csv", index=False)  # a source it does not draw
    draw_figure("speedup_vs_bandwidth", {"transfer_sweep": tmp_path / "sweep.csv", "break_even": tmp_path / "be.csv"},
                tmp_path / "s.pdf", tmp_path / "s.png")
    assert_figures(tmp_path / "s.pdf", tmp_path / "s.png")


def test_quality_pairs_forest_marks_only_significant_differences(tmp_path):
    rows = []
    for model, n in (("a", 52), ("b", 48)):
        for (ca, cb), diff, lo, hi in ((("int8", "int8_channel"), -0.01, -0.03, 0.01),
                                       (("int4", "int4_channel"), -0.2, -0.25, -0.15)):
            rows.append({"model": model, "codec_a": ca, "codec_b": cb, "n_documents": n,
                         "token_agreement_diff": diff, "token_agreement_ci_lo": lo, "token_agreement_ci_hi": hi,
                         "token_agreement_significant": lo > 0 or hi < 0})
    pd.DataFrame(rows).to_csv(tmp_path / "pairs.csv", index=False)
    fig = quality_pairs.draw({"quality_pairs": pd.read_csv(tmp_path / "pairs.csv")})
    ax = fig.axes[0]  # the markers as drawn: (x, hollow?) per point
    drawn = {"points": [(float(line.get_xdata()[0]), line.get_markerfacecolor() == "white")
                        for line in ax.lines if line.get_marker() == "o" and len(line.get_xdata())],
             "labels": [t.get_text() for t in ax.get_yticklabels()]}
    save(fig, tmp_path / "f.pdf", tmp_path / "f.png")
    assert (tmp_path / "f.png").read_bytes()[:8] == PNG_MAGIC
    assert drawn["labels"] == ["int8 − int8_channel", "int4 − int4_channel"]
    assert sorted(drawn["points"]) == [(-0.2, False), (-0.2, False), (-0.01, True), (-0.01, True)]
    pd.DataFrame(columns=["model"]).to_csv(tmp_path / "empty.csv", index=False)
    with pytest.raises(ConfigError, match="no row"):
        draw_figure("quality_pairs", {"quality_pairs": tmp_path / "empty.csv"}, tmp_path / "e.pdf", tmp_path / "e.png")
    assert not (tmp_path / "e.pdf").exists()
