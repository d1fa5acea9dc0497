"""The CPU codec timer: the transfer-conditions pass timer and the hot per-layer one."""

import subprocess
import sys
import textwrap

import pytest
import torch

from kvwire import wire
from kvwire.codecs import LayerKV, build
from kvwire.timing import _median_pass, time_codec_cpu


def layers(n=3, heads=2, seq=64, dim=16):
    g = torch.Generator().manual_seed(3)
    return [LayerKV(torch.randn(heads, seq, dim, generator=g).to(torch.bfloat16),
                    torch.randn(heads, seq, dim, generator=g).to(torch.bfloat16)) for _ in range(n)]


@pytest.mark.parametrize("codec", ["int8", "kivi4", "zstd"])
def test_both_timers_time_the_bytes_the_container_has(codec):
    ls = layers()
    c = build(codec, {})
    by_pass, container = time_codec_cpu(c, ls, repeats=3, warmup=1, timer="pass")
    by_layer, container2 = time_codec_cpu(c, ls, repeats=3, warmup=1, timer="layer")
    assert container == container2 == wire.encode(c, ls)
    assert by_pass.wire_bytes == by_layer.wire_bytes and sum(by_pass.wire_bytes) == len(container)
    assert len(by_pass.encode_s) == len(by_pass.decode_s) == 3 and min(by_pass.encode_s) > 0


def test_the_pass_kept_is_the_one_of_median_total():
    passes = [[3.0, 3.0], [1.0, 0.5], [0.1, 2.0], [9.0, 0.0]]  # totals 6, 1.5, 2.1, 9
    assert _median_pass(passes) == [0.1, 2.0]
    assert _median_pass([[1.0]]) == [1.0]


def test_an_unknown_timer_is_refused():
    with pytest.raises(ValueError, match="unknown timer 'hot'"):
        time_codec_cpu(build("int8", {}), layers(), timer="hot")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")
def test_retained_memory_spares_the_page_faults_of_fresh_buffers():
    # in a child: the setting is process-wide. Three 12 MB buffers built and freed per round, as a
    # connector builds frames; glibc trims the freed heap top and the next round faults fresh pages
    code = textwrap.dedent("""
        import resource, sys
        sys.path.insert(0, {lib!r})
        from kvwire.transport import retain_freed_memory
        if sys.argv[1] == "retain":
            assert retain_freed_memory()
        flt = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        src = bytes(12 << 20)
        faults = []
        for _ in range(4):
            f0 = flt()
            bufs = [bytearray(src) for _ in range(3)]
            del bufs
            faults.append(flt() - f0)
        print(min(faults[1:]))
    """).format(lib=str(__import__("kvwire").__path__[0].rsplit("/", 1)[0]))
    got = {mode: int(subprocess.run([sys.executable, "-c", code, mode], capture_output=True, text=True,
                                    check=True).stdout) for mode in ("default", "retain")}
    pages = 3 * (12 << 20) // 4096
    assert got["default"] > pages // 2 and got["retain"] < pages // 10, got


def test_the_timing_table_says_what_attention_statistics_a_codec_read_and_what_they_cost(tmp_path):
    import json

    import pandas as pd

    from kvwire.kv import KVRecord, save_kv
    from kvwire.stages.timing import time_cpu
    from kvwire.stages.transfer import model_transfer

    ls = layers(n=2, heads=2, seq=64, dim=16)
    g = torch.Generator().manual_seed(9)
    stats = [{"obs_attn": torch.rand(2, 32, 64, generator=g), "attn_sum": torch.rand(2, 64, generator=g)} for _ in ls]
    save_kv(tmp_path / "p0.safetensors", KVRecord(ls, stats=stats))
    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps({"model": "tiny", "dataset": "d", "prefix_tokens": 64,
                                    "prompts": [{"file": "p0.safetensors", "stats_seconds": 0.25}]}))
    snap = time_cpu([manifest], tmp_path / "snapkv.csv", codec_id="snapkv", codec_name="snapkv", params={},
                    repeats=1, warmup=0)
    plain = time_cpu([manifest], tmp_path / "int8.csv", codec_id="int8", codec_name="int8", params={},
                     repeats=1, warmup=0)
    assert set(snap.stats_keys) == {"obs_attn"} and (snap.prefill_stats_s == 0.25).all()
    assert set(plain.stats_keys) == {""} and (plain.prefill_stats_s == 0).all()
    _, be = model_transfer([tmp_path / "snapkv.csv", tmp_path / "int8.csv"], tmp_path / "s.csv", tmp_path / "b.csv",
                           bandwidths_gbps=[1.0])
    be = be.set_index("codec")
    # charged, the statistics' quarter second lowers SnapKV's break-even; int8 reads none, so nothing moves
    assert be.loc["snapkv", "break_even_gbps_sequential_with_stats"] < be.loc["snapkv", "break_even_gbps_sequential"]
    assert be.loc["int8", "break_even_gbps_sequential_with_stats"] == be.loc["int8", "break_even_gbps_sequential"]
    raw, wire_b = be.loc["snapkv", "raw_bytes"], be.loc["snapkv", "wire_bytes"]
    compute = be.loc["snapkv", "encode_s"] + be.loc["snapkv", "decode_s"] + 0.25
    assert be.loc["snapkv", "break_even_gbps_sequential_with_stats"] == pytest.approx(8 * (raw - wire_b) / compute / 1e9)
