"""`kvwire recommend`: the fastest codec meeting the floor, from the cached tables, with every
approximation said."""

import json
import re
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


ACCEPTED_UNITS = ["bps", "kbps", "Mbps", "Gbps", "Tbps", "b/s", "kb/s", "Mb/s", "Gb/s", "Tb/s", "bit/s", "kbit/s",
                  "Mbit/s", "Gbit/s", "Tbit/s", "B/s", "kB/s", "MB/s", "GB/s", "TB/s"]


@pytest.mark.parametrize("text,gbps", [
    # the forms accepted before, unchanged
    ("25Gbps", 25.0), ("400 Gbps", 400.0), ("100Mbps", 0.1), ("100 Mbps", 0.1), ("1.6Tbps", 1600.0), ("25", 25.0),
    ("10", 10.0), ("0.5", 0.5),
    # bits per second
    ("100Gbps", 100.0), ("100Gbit/s", 100.0), ("100Gb/s", 100.0), (" 100 Gb/s ", 100.0), ("2.5Gbit/s", 2.5),
    ("400Mbit/s", 0.4), ("100Mb/s", 0.1), ("1.6Tb/s", 1600.0), ("1.6Tbit/s", 1600.0), ("100kbps", 1e-4),
    ("100kbit/s", 1e-4), ("100kb/s", 1e-4), ("5e9bps", 5.0), ("5e9b/s", 5.0), ("5e9bit/s", 5.0),
    # bytes per second: decimal SI, 1 GB/s = 8 Gbps
    ("100GB/s", 800.0), ("100 GB/s", 800.0), ("800MB/s", 6.4), ("1.6TB/s", 12800.0), ("125kB/s", 1e-3),
    ("1e9B/s", 8.0), ("0.5GB/s", 4.0),
])
def test_parse_bandwidth(text, gbps):
    got = parse_bandwidth(text)
    assert isinstance(got, float) and got == pytest.approx(gbps, rel=1e-12)


def test_old_forms_are_bit_for_bit_unchanged():
    assert [parse_bandwidth(t) for t in ("25Gbps", "400 Gbps", "100Mbps", "1.6Tbps", "25")] == \
        [25.0, 400.0, 0.1, 1600.0, 25.0]
    assert parse_bandwidth("100GB/s") == 8 * parse_bandwidth("100Gbps") == 800.0


@pytest.mark.parametrize("text,why", [
    ("100gb", "unknown unit 'gb'"), ("100g", "unknown unit 'g'"), ("100 gigs", "unknown unit 'gigs'"),
    ("100GB", "unknown unit 'GB'"), ("100Gb", "unknown unit 'Gb'"),
    ("100 GBps", "bits or bytes"), ("100MBps", "bits or bytes"), ("100Bps", "bits or bytes"),
    ("100 mbps", "milli-bits"), ("100mb/s", "milli-bits"), ("100mB/s", "milli-bytes"),
    ("100KB/s", "K is not an SI prefix"), ("100Kbps", "K is not an SI prefix"),
    ("100gbps", "case-sensitive"), ("100gb/s", "did you mean Gb/s or GB/s"), ("1.6TBPS", "case-sensitive"),
    ("fast", "not a positive"), ("Gbps", "not a positive"), ("", "not a positive"), ("0Gbps", "not a positive"),
    ("0", "not a positive"), ("-1", "not a positive"), ("-5GB/s", "not a positive"), ("nan", "not a positive"),
    ("inf", "not a positive"), ("1e999Gbps", "not a positive"), ("1e999", "not a positive"),
    ("100 Gbps extra", "unknown unit"), ("1.2.3Gbps", "unknown unit"),
])
def test_parse_bandwidth_rejects_ambiguous_and_unknown(text, why):
    with pytest.raises(KvwireError, match=re.escape(why)) as err:
        parse_bandwidth(text)
    message = str(err.value)
    assert repr(text) in message and "a bare number is Gbps" in message and "1 GB/s = 8 Gbps" in message
    listed = message.split("accepted units", 1)[1]
    assert all(re.search(rf"(?<![\w/]){re.escape(u)}(?![\w/])", listed) for u in ACCEPTED_UNITS)


def test_shape_parsing():
    assert parse_shape("32x8x128") == Shape(32, 8, 128)
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


def test_cli_on_the_published_tables(capsys):
    tables = str(REPO / "paper" / "tables")
    assert main(["recommend", "--model", "smollm2-135m", "--prompt-tokens", "2048", "--bandwidth", "25Gbps",
                 "--gpu", "h200", "--tables", tables, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    c = pd.DataFrame(out["candidates"])
    ok = c[c.meets_floor & (c.token_agreement >= 0.95)]
    assert out["choice"] == ok.sort_values("expected_s").codec.iloc[0]
    assert out["expected_s"] < out["raw_s"]
    assert main(["recommend", "--model", "smollm2-135m", "--prompt-tokens", "2048", "--bandwidth", "25Gbps",
                 "--gpu", "a100", "--tables", tables]) == 0
    text = capsys.readouterr().out
    assert "GPU 'a100' was not measured" in text and f"recommendation: {out['choice']}" in text
    assert main(["recommend", "--model", "smollm2-135m", "--prompt-tokens", "1024", "--bandwidth", "25Gbps",
                 "--gpu", "h100", "--tables", tables]) == 0  # the H100 run timed SmolLM2 at 1024 tokens
    assert "encoder NVIDIA H100" in capsys.readouterr().out
    assert main(["recommend", "--model", "nope", "--prompt-tokens", "10", "--bandwidth", "1Gbps",
                 "--tables", tables]) == 2
    assert "unknown model 'nope'" in capsys.readouterr().err


def test_cli_bandwidth_units(tmp_path, capsys):
    _tables(tmp_path)
    base = ["recommend", "--model", "m", "--prompt-tokens", "100", "--tables", str(tmp_path), "--json"]
    assert main(base + ["--bandwidth", "100GB/s"]) == 0
    assert json.loads(capsys.readouterr().out)["bandwidth_gbps"] == 800.0
    assert main(base + ["--bandwidth", "100Gbps"]) == 0
    assert json.loads(capsys.readouterr().out)["bandwidth_gbps"] == 100.0
    assert main(base + ["--bandwidth", "100gb"]) == 2
    out = capsys.readouterr()
    assert out.out == "" and out.err.startswith("kvwire: error: bandwidth '100gb'") and "GB/s" in out.err
    with pytest.raises(SystemExit):
        main(["recommend", "--help"])
    helptext = " ".join(capsys.readouterr().out.split())
    assert "bits/s as bps, kbps, Mbps, Gbps, Tbps" in helptext and "bytes/s as B/s, kB/s, MB/s, GB/s, TB/s" in helptext
    assert "a bare number is Gbps" in helptext
