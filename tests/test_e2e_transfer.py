"""End-to-end transfer: a real-format cache file, a sender and a receiver process, against the model."""

import pytest
import torch

from kvwire import netlab
from kvwire.codecs import LayerKV
from kvwire.kv import KVRecord, save_kv
from kvwire.stages.e2e import compare_with_model, measure_e2e


def kv_file(tmp_path, layers=4, heads=2, seq=128, dim=32):
    g = torch.Generator().manual_seed(1)
    rec = KVRecord([LayerKV(torch.randn(heads, seq, dim, generator=g).to(torch.bfloat16),
                            torch.randn(heads, seq, dim, generator=g).to(torch.bfloat16)) for _ in range(layers)])
    path = tmp_path / "kv.safetensors"
    save_kv(path, rec)
    return path, rec


def test_loopback_end_to_end_rows_feed_the_model(tmp_path):
    path, rec = kv_file(tmp_path)
    codecs = [("identity", "identity", {}), ("int8", "int8", {})]
    with netlab.loopback() as link:
        rows = measure_e2e(link, path, codecs, repeats=1, timeout=60)
    assert [(r["codec"], r["mode"]) for r in rows] == [("identity", "sequential"), ("identity", "pipelined"),
                                                         ("int8", "sequential"), ("int8", "pipelined")]
    assert all(len(r["encode_s"]) == len(r["decode_s"]) == 4 and r["wall_s"] > 0 for r in rows)
    raw = sum(x.raw_bytes for x in rec.layers)
    table = compare_with_model(rows, raw, rate_gbps=10.0)
    # the model's codec time is the run's own: the link term is the only difference between rows
    assert (table.model_s >= table.encode_s).all()
    assert table.loc[table.codec == "int8", "wire_bytes"].iloc[0] < table.loc[table.codec == "identity",
                                                                               "wire_bytes"].iloc[0]
    assert (table.rel_error >= 0).all()


@pytest.mark.skipif(netlab.can_shape() is not None, reason=f"shaped links: {netlab.can_shape()}")
def test_a_shaped_link_end_to_end_is_near_the_model(tmp_path):
    from kvwire.stages.e2e import e2e_transfer

    path, _ = kv_file(tmp_path, layers=8, seq=2048)  # 4 MB: 34 ms at 1 Gbps, well above the codecs' time
    table = e2e_transfer(path, [("identity", "identity", {})], 1.0, tmp_path / "e2e.csv", repeats=2)
    assert len(table) == 4
    # TCP headers and tbf's burst put the measured time within a few tens of percent of the nominal model
    assert table.rel_error.median() < 0.25
