"""A hostile sender recomputes every checksum: each reproducer of the outside review ends in the
project's own error, with memory bounded by the declared (validated) cache, and a fuzzer that reseals
its mutants finds no foreign exception (docs/TRANSFER.md, "Threat model")."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import zstandard

from conftest import random_layers
from test_codec_contract import synthetic_stats
from kvwire import fuzz, wire
from kvwire.codecs import build
from kvwire.errors import ConfigError, WireError
from kvwire.limits import WireLimits, json_depth, payload_limit

LIB = Path(__file__).resolve().parents[1] / "lib"


def container(name="int8", **shape):
    layers = random_layers(n_layers=shape.get("layers", 2), heads=shape.get("heads", 2), seq=shape.get("seq", 32),
                           dim=shape.get("dim", 64), dtype=torch.float16)
    return wire.encode(build(name), layers, stats=synthetic_stats(layers))


def resealed(data, edit=None, payloads=None, text=None):
    header, p = fuzz.split(data)
    if edit is not None:
        edit(header)
    return fuzz.reseal(text if text is not None else fuzz._dump(header), payloads if payloads is not None else p)


def test_a_resealed_container_is_valid_and_a_resealed_edit_passes_every_checksum():
    data = container()
    assert resealed(data) == data  # reseal writes exactly what the encoder wrote
    bad = resealed(data, lambda h: h["layout"].update(shapes=[[2, -1, 64], [2, 32, 64]]))
    with pytest.raises(WireError, match=r"layer 0 seq -1 is not an integer in \[1, "):
        wire.decode(bad)
    # inspect no longer says "checksum: ok" for a header that declares a negative shape
    assert wire.inspect(bad)["checksum"].startswith("FAILED")


@pytest.mark.parametrize("raw, match", [
    ("1e400", "overflows a float"), ("Infinity", "not a JSON number"), ("NaN", "not a JSON number"),
    ("0", r"head_dim 0 is not an integer"), ("1.5", "is not an integer"), ("true", "is not an integer"),
    ('"64"', "is not an integer"), ("5000", r"head_dim 5000 is not an integer in \[1, 4096\]"),
])
def test_a_shape_that_is_not_a_small_positive_integer_is_refused(raw, match):
    data = container("kivi2")
    header, payloads = fuzz.split(data)
    text = fuzz._with_raw(header, ["layout", "shapes", 0, 2], raw)
    with pytest.raises(WireError, match=match):
        wire.decode(fuzz.reseal(text, payloads))


def test_deep_json_and_huge_headers_are_refused_before_parsing():
    data = container()
    header, payloads = fuzz.split(data)
    deep = fuzz._with_raw(header, ["meta", "x"], "[" * 5000 + "]" * 5000)  # RecursionError in json.loads
    with pytest.raises(WireError, match="deeper than the limit max_json_depth=16"):
        wire.decode(fuzz.reseal(deep, payloads))
    assert json_depth(b'{"a": "[[[[[["}', 3) == 1  # brackets inside strings do not count
    big = fuzz._with_raw(header, ["meta", "pad"], json.dumps("x" * (2 << 20)))
    with pytest.raises(WireError, match="longer than the limit max_header_bytes"):
        wire.decode(fuzz.reseal(big, payloads))


def test_the_declared_cache_and_each_frame_are_bounded_by_configurable_limits():
    data = container(seq=64)
    small = WireLimits(max_cache_bytes=1 << 10)
    with pytest.raises(WireError, match="more than the limit max_cache_bytes=1024"):
        wire.decode(data, small)
    assert len(wire.decode(data)[1]) == 2  # the defaults admit it
    with pytest.raises(WireError, match="layers"):
        wire.decode(data, WireLimits(max_layers=1))
    # a frame larger than its layer could ever need is refused before it is read
    header, payloads = fuzz.split(data)
    limit = payload_limit((2, 64, 64), 2)
    with pytest.raises(WireError, match=f"frame 0 claims {limit + 1} payload bytes"):
        wire.decode(fuzz.reseal(json.dumps(header), [bytes(limit + 1), payloads[1]]))
    with pytest.raises(ConfigError, match="unknown wire limit"):
        WireLimits.from_mapping({"max_tokns": 5})
    with pytest.raises(ConfigError, match="positive integer"):
        WireLimits(max_tokens=0)


@pytest.mark.parametrize("name, key, value, match", [
    ("svd_runtime_int4", "group_size", 1 << 24, "must be <= 4096"),
    ("kivi2", "group_size", 1 << 63, "must be <= 4096"),
    ("int8", "group_size", -1, "must be >= 1"),
    ("guardband", "target_ratio", None, "must be float"),
    ("zstd", "level", 10 ** 30, "must be <= 22"),
])
def test_parameters_without_bounds_are_refused_as_wire_errors(name, key, value, match):
    data = container(name)

    def edit(h):
        h["params"][key] = value
    with pytest.raises(WireError, match=match):
        wire.decode(resealed(data, edit))


def test_a_non_finite_float_parameter_is_refused():
    data = container("guardband")
    header, payloads = fuzz.split(data)
    text = fuzz._with_raw(header, ["params", "target_ratio"], "1e400")
    with pytest.raises(WireError, match="overflows a float"):
        wire.decode(fuzz.reseal(text, payloads))
    from kvwire.errors import CodecError
    with pytest.raises(CodecError, match="finite"):
        build("guardband", {"target_ratio": float("inf")})


def test_the_zstd_stage_refuses_bombs_undeclared_sizes_and_trailing_bytes():
    layers = random_layers(n_layers=1, heads=1, seq=1, dim=32, dtype=torch.float16)  # a 128-byte layer
    data = wire.encode(build("zstd"), layers)
    header, (payload,) = fuzz.split(data)
    # a frame declaring far more than the layer's limit: refused from its header, nothing decompressed
    declared = zstandard.ZstdCompressor(write_content_size=True).compress(bytes(1 << 20))
    with pytest.raises(WireError, match=r"declares 1048576 bytes, more than the layer's limit"):
        wire.decode(fuzz.reseal(json.dumps(header), [declared]))
    undeclared = zstandard.ZstdCompressor(write_content_size=False).compress(bytes(1 << 20))
    with pytest.raises(WireError, match="does not declare its content size"):
        wire.decode(fuzz.reseal(json.dumps(header), [undeclared]))
    with pytest.raises(WireError, match="3 unexpected byte"):
        wire.decode(fuzz.reseal(json.dumps(header), [payload + b"xyz"]))
    with pytest.raises(WireError, match="truncated"):
        wire.decode(fuzz.reseal(json.dumps(header), [payload[:-3]]))
    assert torch.equal(wire.decode(data)[1][0].k, layers[0].k)


def test_the_lz4_stage_stops_at_the_layer_limit():
    layers = random_layers(n_layers=1, heads=1, seq=1, dim=32, dtype=torch.float16)
    header, _ = fuzz.split(wire.encode(build("lz4"), layers))
    import lz4.frame
    bomb = lz4.frame.compress(bytes(1 << 22), store_size=False)
    with pytest.raises(WireError, match="more than the layer's limit"):
        wire.decode(fuzz.reseal(json.dumps(header), [bomb]))


def _peak_rss_mb(code: str) -> float:
    """Peak RSS of a fresh interpreter that imports kvwire and runs ``code`` (which must not raise
    anything but WireError)."""
    script = "\n".join([
        "import resource, sys",
        f"sys.path.insert(0, {str(LIB)!r})",
        "import json, struct, zlib",
        "import torch, zstandard",
        "from kvwire import wire, fuzz",
        "from kvwire.errors import WireError",
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss",
        "try:",
        textwrap.indent(textwrap.dedent(code).strip(), "    "),
        "except WireError as exc:",
        "    print('WireError', exc, file=sys.stderr)",
        "print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024)",
    ])
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "WireError" in out.stderr, out.stderr
    return float(out.stdout.strip().splitlines()[-1])


def test_a_zstd_bomb_costs_no_memory_and_a_huge_declared_frame_is_not_allocated():
    # the review's reproducers: a 33 KB zstd bomb for a 128-byte layer (1.25 GB before), and a
    # 188-byte header declaring a 1 GiB frame (allocated and held before)
    bomb = textwrap.dedent("""
        h = {"codec": "zstd", "params": {"level": 3, "threads": 0}, "meta": {},
             "layout": {"order": "kv_heads,seq,head_dim", "dtype": "float16", "shapes": [[1, 1, 32]]}}
        c = zstandard.ZstdCompressor(write_content_size=False).compressobj()
        chunks = [c.compress(bytes(1 << 24)) for _ in range(64)] + [c.flush()]
        wire.decode(fuzz.reseal(json.dumps(h), [b"".join(chunks)]))
    """)
    assert _peak_rss_mb(bomb) < 100
    frame = textwrap.dedent("""
        h = {"codec": "identity", "params": {}, "meta": {},
             "layout": {"order": "kv_heads,seq,head_dim", "dtype": "float16", "shapes": [[1, 1, 32]]}}
        body = json.dumps(h).encode()
        data = bytearray(fuzz.reseal(body, [bytes(128)]))
        head = wire._PREAMBLE.size + len(body) + 4
        fh = wire._FRAME_HEAD.pack(wire.FRAME_MAGIC, 0, 1 << 30, 0)
        data[head:head + len(fh) + 4] = fh + struct.pack("<I", zlib.crc32(fh))
        wire.decode(bytes(data))
    """)
    assert _peak_rss_mb(frame) < 100


def test_a_decoder_that_fails_on_crafted_bytes_raises_a_wire_error_naming_the_frame():
    data = container("cachegen")
    header, payloads = fuzz.split(data)
    with pytest.raises(WireError, match=r"frame 1 \(cachegen\)"):
        wire.decode(fuzz.reseal(json.dumps(header), [payloads[0], payloads[1][:40]]))
    # one codec's payload read by another codec: an error of ours, never a foreign one
    header["codec"], header["params"] = "kivi2", {}
    with pytest.raises(WireError):
        wire.decode(fuzz.reseal(json.dumps(header), payloads))


def test_the_fuzzer_that_reseals_its_mutants_finds_no_foreign_exception():
    """A bounded run over every codec (tests must stay fast); bench/fuzz_wire.py runs 100,000 and more."""
    layers = random_layers(n_layers=3, heads=2, seq=48, dim=64, dtype=torch.bfloat16)
    seeds = fuzz.seed_containers(layers, synthetic_stats(layers))
    report = fuzz.run(seeds, 1500, seed=20261207)
    assert report.inputs == 1500 and report.foreign_count == 0, report.foreign
    assert report.outcomes["WireError"] > 500  # most mutants are refused ...
    assert set(report.by_mutation) >= {"shape", "codec", "param", "payload_bytes", "payload_int"}
    assert report.slowest_s < 5.0


ALL_CODECS = sorted(fuzz.TENSOR_CODECS) + sorted(fuzz.BYTE_STAGES)


@pytest.mark.parametrize("name", ALL_CODECS)
@pytest.mark.parametrize("shape, dim", [((2, 0, 64), "seq"), ((2, 16, 0), "head_dim"), ((0, 16, 64), "kv_heads")])
def test_an_empty_dimension_is_a_kv_error_naming_it(name, shape, dim):
    from kvwire.codecs import LayerKV
    from kvwire.errors import KVError

    layer = LayerKV(torch.zeros(shape, dtype=torch.float16), torch.zeros(shape, dtype=torch.float16))
    with pytest.raises(KVError, match=f"{dim} is 0"):
        wire.encode(build(name), [layer], stats=[{}])


@pytest.mark.parametrize("name", ALL_CODECS)
def test_a_non_contiguous_cache_encodes_as_its_contiguous_copy(name):
    from kvwire.codecs import LayerKV

    layers = random_layers(n_layers=2, heads=2, seq=48, dim=64, dtype=torch.bfloat16)
    # the same values held as a transposed view: [heads, dim, seq] storage seen as [heads, seq, dim]
    views = [LayerKV(x.k.transpose(1, 2).contiguous().transpose(1, 2), x.v.transpose(1, 2).contiguous().transpose(1, 2))
             for x in layers]
    assert not views[0].k.is_contiguous()
    stats = synthetic_stats(layers)
    assert wire.encode(build(name), views, stats=stats) == wire.encode(build(name), layers, stats=stats)


@pytest.mark.parametrize("name", ["int8", "k8v4", "cachegen"])
def test_values_that_would_underflow_the_scale_dtype_are_refused_with_a_hint(name):
    from kvwire.codecs import LayerKV
    from kvwire.errors import CodecError

    g = torch.Generator().manual_seed(0)
    tiny = [LayerKV((torch.randn(2, 64, 64, generator=g) * 1e-6).to(torch.bfloat16),
                    (torch.randn(2, 64, 64, generator=g) * 1e-6).to(torch.bfloat16))]
    # before: int8 decoded 98 % of the values to 0, cachegen erred by 53 % of the range
    with pytest.raises(CodecError, match="underflows torch.float16.*scale_dtype=float32"):
        wire.encode(build(name), tiny)
    _, out = wire.decode(wire.encode(build("int8", {"scale_dtype": "float32"}), tiny))
    err = (out[0].k.float() - tiny[0].k.float()).abs().max() / tiny[0].k.float().abs().max()
    assert err < 0.01


def test_the_cli_reports_a_crafted_container_in_one_line(tmp_path, capsys):
    from kvwire.cli import main

    data = container("kivi2")
    header, payloads = fuzz.split(data)
    crafted = {
        "deep": fuzz.reseal(fuzz._with_raw(header, ["meta", "x"], "[" * 3000 + "]" * 3000), payloads),
        "negative": resealed(data, lambda h: h["layout"].update(shapes=[[-1, -1, 8], [2, 32, 64]])),
        "swapped": resealed(data, lambda h: h.update(codec="cachegen", params={})),
    }
    for name, blob in crafted.items():
        path = tmp_path / f"{name}.kvw"
        path.write_bytes(blob)
        assert main(["decode", str(path), str(tmp_path / f"{name}.safetensors")]) == 2
        err = capsys.readouterr().err
        assert err.startswith("kvwire: error:") and "Traceback" not in err and len(err.splitlines()) == 1, err
        # inspect reads headers and checksums, not payloads: a header that breaks the limits fails
        # there; a valid header over another codec's payload fails only when decoded
        assert main(["inspect", str(path)]) == (0 if name == "swapped" else 1)
        out = capsys.readouterr().out
        assert ("FAILED" in out) == (name != "swapped"), out


def test_a_cachegen_header_declaring_a_huge_sequence_is_refused_before_decoding():
    # the review's reproducer: 814 bytes of cachegen whose header declared 134 M symbols (1.25 GB, 6.9 s)
    data = container("cachegen", layers=1)
    header, payloads = fuzz.split(data)
    header["layout"]["shapes"] = [[2, 1 << 27, 64]]
    with pytest.raises(WireError, match=r"seq 134217728 is not an integer in \[1, 4194304\]"):
        wire.decode(fuzz.reseal(fuzz._dump(header), payloads))


def test_over_tcp_a_declared_gigabyte_frame_is_neither_allocated_nor_waited_for_past_the_deadline():
    code = """
        import socket, threading, time
        from kvwire.transport import listen, recv_kv
        h = {"codec": "identity", "params": {}, "meta": {},
             "layout": {"order": "kv_heads,seq,head_dim", "dtype": "float16", "shapes": [[8, 1 << 20, 64]]}}
        body = json.dumps(h).encode()
        pre = wire._PREAMBLE.pack(wire.MAGIC, wire.VERSION, 0, len(body))
        head = pre + body + struct.pack("<I", zlib.crc32(pre + body))
        fh = wire._FRAME_HEAD.pack(wire.FRAME_MAGIC, 0, 1 << 30, 0)
        head += fh + struct.pack("<I", zlib.crc32(fh)) + bytes(1000)  # then nothing more
        with listen() as server:
            peer = socket.create_connection(server.getsockname())
            peer.sendall(head)
            t = time.monotonic()
            try:
                recv_kv(server, timeout=5, deadline_s=1.0)
            except Exception as exc:
                assert "deadline passed" in str(exc) and time.monotonic() - t < 3, exc
                raise WireError(str(exc))
    """
    assert _peak_rss_mb(code) < 100  # a 1 GiB frame (a 2 GiB layer: within the default limits) never allocated
