"""The figure registry (kvwire.figures) and every figure drawn from the published tables through the
one stage that writes figures (kvwire.stages.figures.draw_figure). Each figure's own behaviour (label
placement, heat-map cells, empty tables) is tested beside its study: test_quality_figures.py,
test_gpu_tables.py, test_break_even_all.py, test_e2e_transfer.py, test_offload_replay.py."""

import importlib
import pkgutil
import re
from pathlib import Path

import pandas as pd
import pytest

import kvwire.figures as figures_pkg
from kvwire.errors import ConfigError
from kvwire.figures import FIGURES, register_figure
from kvwire.stages import figures as stage

REPO = Path(__file__).resolve().parents[1]
TABLES = REPO / "paper" / "tables"
SUPPORT = {"style", "labels"}  # the drawing helpers several figures share: they register nothing


def test_discovery_finds_one_figure_per_module():
    modules = {m.name for m in pkgutil.iter_modules(figures_pkg.__path__) if not m.name.startswith("_")}
    assert SUPPORT <= modules
    assert {f.module.rsplit(".", 1)[-1] for f in FIGURES.values()} == modules - SUPPORT
    for name, fig in FIGURES.items():  # the module is named after the figure it registers
        assert fig.module == f"kvwire.figures.{name}"
    assert len(FIGURES) >= 14
    assert {"codec_errors", "speedup_vs_bandwidth", "speedup_cpu_gpu", "pareto", "cosine_vs_delta_ce",
            "sensitivity_heatmap", "quality_pairs", "gpu_kernels", "break_even_shift", "e2e_model_vs_measured",
            "decision_flowchart", "router_regret", "offload_latency", "offload_pool"} <= set(FIGURES)


def _tables_rules_write() -> set[str]:
    """Every table a rule writes: results/tables/<name>.csv in the rules' files."""
    text = "".join(p.read_text() for p in (REPO / "workflow" / "rules").glob("*.smk"))
    return set(re.findall(r'"results/tables/(\w+)\.csv"', text))


def test_every_figure_has_a_caption_and_sources_some_rule_writes_or_the_paper_publishes():
    made = _tables_rules_write()
    published = {p.stem for p in TABLES.glob("*.csv")}
    assert "quality" in made and "transfer_sweep" in made  # the parse found the rules' tables
    for name, fig in FIGURES.items():
        assert fig.caption and "\n" not in fig.caption, name
        assert re.search(r"\brule figure\b", fig.caption), f"{name}: the caption says which rule made it"
        assert fig.sources and len(set(fig.sources)) == len(fig.sources), name
        assert set(fig.sources) <= made | published, (name, set(fig.sources) - made - published)
        assert callable(fig.draw)


def test_a_name_registered_twice_or_without_sources_is_refused():
    with pytest.raises(ConfigError, match="registered twice"):
        register_figure("pareto", sources=("quality",), caption="x")(lambda tables: None)
    with pytest.raises(ConfigError, match="no source"):
        register_figure("nothing", sources=(), caption="x")(lambda tables: None)
    assert "nothing" not in FIGURES
    with pytest.raises(ConfigError, match="unknown figure 'nope'"):
        stage.draw_figure("nope", {}, "x.pdf", "x.png")


def test_a_missing_source_table_is_named_and_nothing_is_written(tmp_path):
    with pytest.raises(ConfigError, match=r"no table given for \['cosine_spearman'\]"):
        stage.draw_figure("cosine_vs_delta_ce", {"quality": TABLES / "quality.csv"}, tmp_path / "c.pdf",
                          tmp_path / "c.png")
    assert not list(tmp_path.iterdir())


def _n(table: pd.DataFrame, column: str) -> int:
    return table[column].nunique()


def _speedup_cpu_gpu_panels(t):
    cpu, gpu = t["transfer_sweep"], t["gpu_transfer_sweep"]
    both = cpu.rename(columns={"bin": "seq"}).merge(gpu[["model", "seq", "codec"]].drop_duplicates(),
                                                     on=["model", "seq", "codec"])
    return 2 * both["model"].nunique()  # sequential and pipelined, per model at its longest shared length


def _decision_texts(t):
    return {"send raw" if c == "raw" else c for c in t["decision"]["choice"]}


# per figure: (what to count on the drawn figure, what the table says it must be)
PANELS = {
    "codec_errors": (lambda fig: len(fig.axes), lambda t: _n(t["codecs"], "model")),
    "speedup_vs_bandwidth": (lambda fig: sum(bool(ax.images) for ax in fig.axes),
                             lambda t: 2 * _n(t["transfer_sweep"], "model")),
    "speedup_cpu_gpu": (lambda fig: len(fig.axes), _speedup_cpu_gpu_panels),
    "pareto": (lambda fig: [ax.get_title() for ax in fig.axes], lambda t: sorted(t["quality"]["model"].unique())),
    "cosine_vs_delta_ce": (lambda fig: [len(ax.collections) for ax in fig.axes],
                           lambda t: [_n(t["quality"], "model")] * 2),
    "sensitivity_heatmap": (lambda fig: len(fig.axes[0].get_yticklabels()),
                            lambda t: _n(t["quality"][t["quality"]["codec"] != "identity"], "codec")),
    "quality_pairs": (lambda fig: len(fig.axes[0].get_yticklabels()),
                      lambda t: len(t["quality_pairs"][["codec_a", "codec_b"]].drop_duplicates())),
    "gpu_kernels": (lambda fig: [len(ax.patches) for ax in fig.axes],
                    lambda t: [_n(t["gpu_kernels"], "codec") * _n(t["gpu_kernels"], "gpu")] * 4),
    "break_even_shift": (lambda fig: len(fig.axes), lambda t: 2 * _n(t["break_even_shift"], "model")),
    "e2e_model_vs_measured": (lambda fig: len(fig.axes),
                              lambda t: _n(t["e2e_transfer"], "model") * _n(t["e2e_transfer"], "rate_gbps")),
    "decision_flowchart": (lambda fig: {s for s in _decision_texts_drawn(fig)}, _decision_texts),
    "router_regret": (lambda fig: len(fig.axes), lambda t: 2 * _n(t["router_by_bandwidth"], "encoder")),
    "offload_latency": (lambda fig: len(fig.axes), lambda t: 2 * _n(t["offload"], "model")),
    "offload_pool": (lambda fig: len(fig.axes),
                     lambda t: 2 * _n(t["offload"][(t["offload"]["kind"] == "replay")
                                                   & (t["offload"]["mode"] != "all_gpu")], "model")),
}


def _decision_texts_drawn(fig):
    """The outcome boxes of the flowchart: the codec named on a box's first line, or 'send raw'."""
    texts = [t.get_text() for t in fig.axes[0].texts]
    return {t.split("\n")[0] for t in texts if t == "send raw" or "x faster)" in t}


def test_the_panel_checks_are_of_registered_figures():
    assert set(PANELS) <= set(FIGURES)
    assert len(PANELS) >= 14  # the figures of the registry's first commit; a later one may bring its own test


@pytest.mark.parametrize("name", sorted(FIGURES))
def test_each_figure_draws_from_the_published_tables(name, tmp_path, monkeypatch):
    """Every registered figure, from the published tables through the stage; its panels or lines
    against what its table says where PANELS knows them (a newer figure checks them in its own test)."""
    fig_def = FIGURES[name]
    paths = {s: TABLES / f"{s}.csv" for s in fig_def.sources}
    if not all(p.exists() for p in paths.values()):
        pytest.skip(f"{name}: a source table is not published")
    drawn = []
    real_save = stage.save

    count, expect = PANELS.get(name, (lambda fig: len(fig.axes), lambda t: drawn[0]))

    def keep(fig, *out):  # what the stage hands to the writer, counted before it is freed
        drawn.append(count(fig))
        real_save(fig, *out)

    monkeypatch.setattr(stage, "save", keep)
    pdf, png = tmp_path / f"{name}.pdf", tmp_path / f"{name}.png"
    stage.draw_figure(name, paths, pdf, png)
    want = expect({s: pd.read_csv(p) for s, p in paths.items()})
    assert drawn == [want]
    assert want  # the table has something to draw: the check above could fail
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    assert pdf.read_bytes()[:5] == b"%PDF-"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([pdf.name, png.name])  # no temporary left


def test_the_registry_imports_no_matplotlib():
    """The workflow reads the registry when it parses the Snakefile: no plotting library then."""
    import subprocess
    import sys

    code = "import sys, kvwire.figures; print('matplotlib' in sys.modules, 'seaborn' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={"PYTHONPATH": str(REPO / "lib"), "PATH": ""})
    assert out.stdout.split() == ["False", "False"]
    importlib.import_module("kvwire.figures")  # (and imports here)


@pytest.mark.parametrize("name, keep", [("offload_pool", "all_gpu"), ("offload_latency", None)])
def test_a_figure_without_the_rows_it_draws_says_so(name, keep):
    """offload_pool draws replay rows of an offload mode; a table holding none is our error, not a crash."""
    rows = pd.read_csv(REPO / "paper" / "tables" / "offload.csv")
    rows = rows[rows["mode"] == keep] if keep else rows.iloc[0:0]
    with pytest.raises(ConfigError, match="offload has no"):
        FIGURES[name].draw({"offload": rows})
