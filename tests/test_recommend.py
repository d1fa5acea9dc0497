"""`kvwire recommend`: the fastest codec meeting the floor, from the cached tables, with every
approximation said."""

import json
from pathlib import Path

import pandas as pd
import pytest

from kvwire.cli import main
from kvwire.errors import KvwireError
from kvwire.recommend import CachedTables, Shape, parse_bandwidth, parse_shape, recommend
from kvwire.transfer import CodecCost, baseline_time, pipelined_time

REPO = Path(__file__).resolve().parents[1]


def _tables(tmp_path):
    """Two codecs timed on one model shape (2 layers x 1 head x 4 dims, 100 tokens, bf16) on the CPU
    and on one GPU, and their quality."""
    raw = 2 * 2 * 1 * 4 * 2 * 100
    rows = []
    for device, name, slow in (("cpu", "AMD EPYC", 1000.0), ("gpu", "NVIDIA H200", 1.0)):
        for codec, ratio, enc in (("fast", 4.0, 0.010), ("safe", 2.0, 0.002)):
            rows.append({"device": device, "device_name": name, "model": "m", "layers": 2, "kv_heads": 1,
                         "head_dim": 4, "seq": 100, "dtype": "bfloat16", "codec": codec, "raw_bytes": raw,
                         "wire_bytes": raw / ratio, "encode_ms": enc * slow, "decode_ms": enc * slow})
    pd.DataFrame(rows).to_csv(tmp_path / "break_even_all.csv", index=False)
    pd.DataFrame([{"model": "m", "codec": "fast", "token_agreement": 0.93, "ratio": 4.0},
                  {"model": "m", "codec": "safe", "token_agreement": 0.99, "ratio": 2.0}]).to_csv(
        tmp_path / "quality.csv", index=False)
    return CachedTables(tmp_path), raw


def test_bandwidth_and_shape_parsing():
    assert parse_bandwidth("25Gbps") == 25 and parse_bandwidth("100 Mbps") == pytest.approx(0.1)
    assert parse_bandwidth("1.6Tbps") == pytest.approx(1600) and parse_bandwidth("10") == 10
    assert parse_shape("32x8x128") == Shape(32, 8, 128)
    for bad in ("fast", "0Gbps", "-1"):
        with pytest.raises(KvwireError, match="not a positive rate"):
            parse_bandwidth(bad)
    with pytest.raises(KvwireError, match="LAYERSxKV_HEADSxHEAD_DIM"):
        parse_shape("32x8")


def test_choice_is_the_fastest_codec_meeting_the_floor(tmp_path):
    tables, raw = _tables(tmp_path)
    bw = 1e-5  # a slow link: every codec pays, "fast" would be faster but misses the floor of 0.95
    rec = recommend(tables, "m", 100, bw, gpu="h200")
    assert rec.encoder == "NVIDIA H200" and rec.notes == []
    assert rec.choice == "safe"
    expected = pipelined_time(CodecCost(raw, [raw / 2 / 2] * 2, [0.001e-3] * 2, [0.001e-3] * 2), bw)
    assert rec.expected_s == pytest.approx(expected) and rec.raw_s == pytest.approx(baseline_time(raw, bw))
    assert recommend(tables, "m", 100, bw, gpu="h200", floor=0.9).choice == "fast"
    # a fast link: compressing does not pay on the CPU
    assert recommend(tables, "m", 100, 400.0).choice == "raw"


def test_every_approximation_is_said(tmp_path):
    tables, _ = _tables(tmp_path)
    rec = recommend(tables, "m", 400, 1.0, gpu="h100")
    assert any("GPU 'h100' was not measured" in n and "NVIDIA H200" in n for n in rec.notes)
    assert any("400 tokens were not timed" in n for n in rec.notes)
    other = recommend(tables, "big", 100, 1.0, shape=Shape(4, 2, 4))
    assert any("big (4 layers x 2 KV heads x 4) has no CPU timings" in n for n in other.notes)
    assert any("not scored for quality" in n for n in other.notes)
    # scaled linearly in bytes: 4x the bytes of the timed shape
    cpu = recommend(tables, "m", 100, 1.0).candidates.set_index("codec")
    assert other.candidates.set_index("codec").loc["safe", "encode_ms"] == pytest.approx(4 * cpu.loc["safe", "encode_ms"])
    with pytest.raises(KvwireError, match="unknown model 'big'"):
        recommend(tables, "big", 100, 1.0)


def test_missing_tables_are_named(tmp_path):
    with pytest.raises(KvwireError, match="no cached table .*break_even_all.csv"):
        CachedTables(tmp_path)


def test_cli_on_the_committed_tables(capsys):
    tables = str(REPO / "results" / "tables")
    assert main(["recommend", "--model", "smollm2-135m", "--prompt-tokens", "2048", "--bandwidth", "25Gbps",
                 "--gpu", "h200", "--tables", tables, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    c = pd.DataFrame(out["candidates"])
    ok = c[c.meets_floor & (c.token_agreement >= 0.95)]
    assert out["choice"] == ok.sort_values("expected_s").codec.iloc[0]
    assert out["expected_s"] < out["raw_s"]
    assert main(["recommend", "--model", "smollm2-135m", "--prompt-tokens", "2048", "--bandwidth", "25Gbps",
                 "--gpu", "h100", "--tables", tables]) == 0
    text = capsys.readouterr().out
    assert "GPU 'h100' was not measured" in text and f"recommendation: {out['choice']}" in text
    assert main(["recommend", "--model", "nope", "--prompt-tokens", "10", "--bandwidth", "1Gbps",
                 "--tables", tables]) == 2
    assert "unknown model 'nope'" in capsys.readouterr().err
