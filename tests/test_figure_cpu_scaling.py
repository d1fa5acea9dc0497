"""The CPU scaling figure: every codec's encode and decode throughput against threads, per case."""

from pathlib import Path

import pandas as pd
import pytest

from kvwire.errors import ConfigError
from kvwire.figures import FIGURES
from kvwire.stages import figures as stage

TABLE = Path(__file__).resolve().parents[1] / "paper" / "tables" / "cpu_scaling.csv"


def test_cpu_scaling_draws_a_line_per_codec_and_case_from_the_published_table(tmp_path, monkeypatch):
    if not TABLE.exists():
        pytest.skip("paper/tables/cpu_scaling.csv is not published")
    assert FIGURES["cpu_scaling"].sources == ("cpu_scaling",)
    t = pd.read_csv(TABLE)
    drawn = []
    real_save = stage.save

    def keep(fig, *out):
        drawn.append(fig)
        panels = {ax.get_title(): ax for ax in fig.axes}
        cases = t.groupby(["model", "seq", "timer"])
        assert len(panels) == 2 * cases.ngroups  # encode and decode per (model, length, timer)
        for (model, seq, timer), case in cases:
            for op in ("encode", "decode"):
                ax = panels[f"{model} @ {seq}, {timer} timer: {op}"]
                lines = {line.get_label(): line for line in ax.lines}
                assert set(lines) == set(case["codec"])  # every codec of the case, once
                for codec, line in lines.items():  # the plotted MB/s are the table's, by threads
                    want = case[case["codec"] == codec].sort_values("threads")
                    assert list(line.get_xdata()) == list(want["threads"])
                    assert list(line.get_ydata()) == pytest.approx(list(want[f"{op}_mbps"]))
        real_save(fig, *out)

    monkeypatch.setattr(stage, "save", keep)
    stage.draw_figure("cpu_scaling", {"cpu_scaling": TABLE}, tmp_path / "c.pdf", tmp_path / "c.png")
    assert len(drawn) == 1
    assert (tmp_path / "c.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and (tmp_path / "c.pdf").stat().st_size > 5000


def test_cpu_scaling_of_an_empty_table_is_refused(tmp_path):
    pd.DataFrame(columns=["model", "seq", "codec", "threads", "encode_mbps", "decode_mbps"]).to_csv(
        tmp_path / "e.csv", index=False)
    with pytest.raises(ConfigError, match="no rows"):
        stage.draw_figure("cpu_scaling", {"cpu_scaling": tmp_path / "e.csv"}, tmp_path / "e.pdf", tmp_path / "e.png")
    assert not (tmp_path / "e.pdf").exists()
