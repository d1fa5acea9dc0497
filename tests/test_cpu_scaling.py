"""CPU scaling (issue 27): thread counts really applied, the table's arithmetic, hostile inputs."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from conftest import random_layers
from kvwire.errors import KVError
from kvwire.kv import KVRecord, save_kv
from kvwire.stages.cpu_scaling import (
    RAW_COLUMNS,
    check_threads,
    cpu_scaling,
    read_scaling,
    scaling_table,
    time_scaling,
)


@pytest.fixture
def kv_file(tmp_path):
    path = tmp_path / "kv" / "tiny" / "wikitext2" / "64" / "p0000.safetensors"
    path.parent.mkdir(parents=True)
    save_kv(path, KVRecord(layers=random_layers(n_layers=2, heads=2, seq=64, dim=16), meta={"model": "tiny"}))
    return path


def test_time_scaling_times_each_codec_at_each_thread_count_on_the_real_container(kv_file):
    before = torch.get_num_threads()
    raw = time_scaling([kv_file], {"identity": ("identity", {}), "int4": ("int4", {})}, [1, 2],
                       repeats=1, warmup=0, run="test", progress=lambda s: None)
    assert list(raw.columns) == RAW_COLUMNS
    assert torch.get_num_threads() == before  # restored
    assert sorted(zip(raw.threads, raw.codec)) == [(1, "identity"), (1, "int4"), (2, "identity"), (2, "int4")]
    assert set(raw.model) == {"tiny"} and set(raw.seq) == {64} and set(raw.layers) == {2}
    ident, int4 = raw[raw.codec == "identity"].iloc[0], raw[raw.codec == "int4"].iloc[0]
    assert ident.wire_bytes > ident.raw_bytes > int4.wire_bytes  # framing on identity; int4 packs 4x
    assert (raw.encode_s > 0).all() and (raw.decode_s > 0).all()


def test_bad_thread_counts_and_codecs_fail_before_any_timing(kv_file):
    with pytest.raises(KVError, match="exceeds this host's 4 logical CPUs"):
        check_threads([1, 8], available=4)
    for bad, msg in (([0], "positive"), ([2, 2], "twice"), ([], "no thread counts"), ([1.5], "positive")):
        with pytest.raises(KVError, match=msg):
            check_threads(bad, available=4)
    with pytest.raises(Exception, match="int9"):
        time_scaling([kv_file], {"x": ("int9", {})}, [1], progress=lambda s: None)


def _raw(**over):
    rows = []
    for t, enc in ((1, 4.0), (2, 2.5), (4, 1.0)):
        rows.append({"device_name": "CPU X", "logical_cpus": 4, "omp_wait_policy": "ACTIVE", "threads": t,
                     "model": "m", "seq": 2048, "layers": 2, "codec": "int8", "raw_bytes": 8_000_000,
                     "wire_bytes": 4_000_000, "encode_s": enc, "decode_s": enc / 2, "run": "r", **over})
    return pd.DataFrame(rows)


def test_scaling_table_speedup_efficiency_and_whole_cpu_flag():
    t = scaling_table(_raw())
    assert list(t.threads) == [1, 2, 4]
    assert t.encode_speedup.tolist() == pytest.approx([1.0, 1.6, 4.0])
    assert t.encode_efficiency.tolist() == pytest.approx([1.0, 0.8, 1.0])
    assert t.encode_mbps.tolist() == pytest.approx([2.0, 3.2, 8.0])
    assert t.decode_mbps.tolist() == pytest.approx([4.0, 6.4, 16.0])
    assert t.whole_cpu.tolist() == [False, False, True]
    assert t.fastest.tolist() == [False, False, True]
    slower = _raw()
    slower.loc[slower.threads == 4, ["encode_s", "decode_s"]] = [3.0, 2.0]  # 16 threads slower than 2
    assert scaling_table(slower).fastest.tolist() == [False, True, False]


def test_read_scaling_rejects_missing_columns_and_nonpositive_times(tmp_path):
    good = tmp_path / "good.csv"
    _raw().to_csv(good, index=False)
    bad = tmp_path / "bad.csv"
    _raw(encode_s=0.0).to_csv(bad, index=False)
    short = tmp_path / "short.csv"
    _raw().drop(columns=["threads"]).to_csv(short, index=False)
    with pytest.raises(KVError, match="non-positive"):
        read_scaling([bad])
    with pytest.raises(KVError, match=r"missing columns \['threads'\]"):
        read_scaling([short])
    with pytest.raises(KVError, match="unreadable"):
        read_scaling([tmp_path / "absent.csv"])
    out = tmp_path / "cpu_scaling.csv"
    t = cpu_scaling([good], out)
    assert pd.read_csv(out).encode_speedup.tolist() == pytest.approx(t.encode_speedup.tolist())
