"""The kvwire command, run as a real subprocess on a real KV file."""

import copy
import json
import re
import subprocess
import sys

import pytest
import torch

from kvwire.kv import KVRecord, load_kv, prefill, save_kv


def kvwire(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "kvwire.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=120)


@pytest.fixture(scope="module")
def kv_file(small_model, tmp_path_factory):
    ids = torch.randint(3, small_model.config.vocab_size, (1, 24), generator=torch.Generator().manual_seed(5))
    # a bf16 copy: casting the shared fixture would round its RoPE buffers for every later test
    layers, first = prefill(copy.deepcopy(small_model).to(torch.bfloat16), ids)
    path = tmp_path_factory.mktemp("cli") / "kv.safetensors"
    save_kv(path, KVRecord(layers[0], ids[0], torch.arange(4), int(first[0]), {"prompt_id": "cli-0"}))
    return path


def test_codecs_lists_names_and_params():
    out = kvwire("codecs", "--json")
    assert out.returncode == 0
    rows = {r["name"]: r for r in json.loads(out.stdout)}
    assert rows["zstd"]["params"]["level"]["default"] == 3
    assert rows["int8"]["kind"] == "lossy" and rows["identity"]["kind"] == "lossless"


@pytest.mark.parametrize("codec,params", [("identity", None), ("int8+zstd", '{"zstd": {"level": 9}}')])
def test_encode_inspect_decode(kv_file, tmp_path, codec, params):
    wire_path = tmp_path / "x.kvw"
    args = ["encode", "--codec", codec, kv_file, wire_path] + (["--params", params] if params else [])
    out = kvwire(*args)
    assert out.returncode == 0, out.stderr
    original = load_kv(kv_file)
    assert f"ratio {original.raw_bytes / wire_path.stat().st_size:.4f}" in out.stdout

    out = kvwire("inspect", "--json", wire_path)
    report = json.loads(out.stdout)
    assert out.returncode == 0 and report["checksum"] == "ok"
    assert report["header"]["codec"] == codec and report["header"]["meta"]["prompt_id"] == "cli-0"
    assert len(report["frames"]) == len(original.layers)

    decoded_path = tmp_path / "back.safetensors"
    assert kvwire("decode", wire_path, decoded_path).returncode == 0
    back = load_kv(decoded_path)
    for a, b in zip(original.layers, back.layers):
        assert b.k.dtype == a.k.dtype and b.k.shape == a.k.shape
        if codec == "identity":
            assert torch.equal(a.k, b.k) and torch.equal(a.v, b.v)


def test_corrupted_file_gives_clear_error_and_nonzero_exit(kv_file, tmp_path):
    wire_path = tmp_path / "x.kvw"
    kvwire("encode", "--codec", "int8", kv_file, wire_path)
    data = bytearray(wire_path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    wire_path.write_bytes(bytes(data))
    out = kvwire("decode", wire_path, tmp_path / "y.safetensors")
    assert out.returncode == 2 and "checksum mismatch" in out.stderr
    assert not (tmp_path / "y.safetensors").exists()
    out = kvwire("inspect", wire_path)
    assert out.returncode == 1 and "FAILED" in out.stdout


@pytest.mark.parametrize("args,needle", [
    (["encode", "--codec", "int9", "KV", "o"], "unknown codec 'int9'"),
    (["encode", "--codec", "int8", "--params", "{bad", "KV", "o"], "not valid JSON"),
    (["encode", "--codec", "int8", "missing.safetensors", "o"], "KV file not found"),
])
def test_bad_input_names_the_problem(kv_file, tmp_path, args, needle):
    args = [str(kv_file) if a == "KV" else a for a in args]
    out = kvwire(*args, cwd=tmp_path)
    assert out.returncode == 2 and needle in out.stderr


# ---- inspect's exit status: 1 when any reported check failed, 2 when the file cannot be read --------------

def _container(tmp_path):
    """A real int8 container of random layers (no model needed), and its bytes."""
    from conftest import random_layers
    from kvwire import wire
    from kvwire.codecs import build

    data = wire.encode(build("int8"), random_layers(), {"prompt_id": "cli-1"})
    path = tmp_path / "ok.kvw"
    path.write_bytes(data)
    return path, data


def _first_payload_byte(data):
    from kvwire import wire

    return wire.read_header(data)[1] + wire._FRAME_HEAD.size + wire._CRC.size


def _corrupt(data, how):
    from kvwire import wire

    data = bytearray(data)
    if how == "payload":
        data[_first_payload_byte(bytes(data))] ^= 0xFF
    elif how == "header":
        data[wire._PREAMBLE.size + 1] ^= 0x01  # a byte of the header JSON
    elif how == "trailer":
        data[-1] ^= 0xFF
    elif how == "trailing bytes":
        data += b"\0"
    elif how == "truncated":
        del data[-5:]
    return bytes(data)


def test_inspect_intact_container_exits_0(tmp_path, capsys):
    from kvwire.cli import main

    path, _ = _container(tmp_path)
    assert main(["inspect", str(path)]) == 0
    out = capsys.readouterr()
    assert "checksum:  ok" in out.out and "FAILED" not in out.out and out.err == ""
    assert main(["inspect", "--json", str(path)]) == 0
    assert json.loads(capsys.readouterr().out)["checksum"] == "ok"


@pytest.mark.parametrize("how,needle", [
    ("payload", "frame 0 payload checksum mismatch"),
    ("header", "header checksum mismatch"),
    ("trailer", "trailer does not match"),
    ("trailing bytes", "1 unexpected byte(s) after the trailer"),
    ("truncated", "truncated"),
])
def test_inspect_failed_check_exits_1_with_the_full_report(tmp_path, capsys, how, needle):
    from kvwire.cli import main

    path, data = _container(tmp_path)
    path.write_bytes(_corrupt(data, how))
    assert main(["inspect", str(path)]) == 1
    out = capsys.readouterr()
    assert f"checksum:  FAILED: {needle}" in out.out and "result:    FAILED" in out.out
    assert f"file:      {path} ({path.stat().st_size} bytes)" in out.out and out.err == ""
    if how != "header":  # the header is still readable and printed
        assert "codec:     int8" in out.out and '"prompt_id": "cli-1"' in out.out
    assert main(["inspect", "--json", str(path)]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["checksum"].startswith("FAILED") and needle in report["checksum"]


def test_inspect_corrupted_payload_exits_1_as_a_command(tmp_path):
    path, data = _container(tmp_path)
    assert kvwire("inspect", path).returncode == 0
    path.write_bytes(_corrupt(data, "payload"))
    out = kvwire("inspect", path)
    assert out.returncode == 1, out.stderr
    assert "FAILED: frame 0 payload checksum mismatch" in out.stdout and "Traceback" not in out.stderr
    assert kvwire("inspect", "--json", path).returncode == 1


@pytest.mark.parametrize("content,needle", [
    (None, "no such file"),
    (b"", "is not a kvwire container: it is empty"),
    (b"hello, not a container", "is not a kvwire container: it starts with b'hell'"),
    ("dir", "cannot read"),
])
def test_inspect_unreadable_file_is_a_kvwire_error_exit_2(tmp_path, capsys, content, needle):
    from kvwire.cli import _read_container, main
    from kvwire.errors import KvwireError

    path = tmp_path / "x.kvw"
    if content == "dir":
        path.mkdir()
    elif content is not None:
        path.write_bytes(content)
    with pytest.raises(KvwireError, match=re.escape(needle)):
        _read_container(str(path))
    for args in (["inspect", str(path)], ["inspect", "--json", str(path)], ["decode", str(path), "o"]):
        assert main(args) == 2
        out = capsys.readouterr()
        assert out.out == "" and out.err.startswith("kvwire: error: ") and needle in out.err
        assert out.err.count("\n") == 1


def test_inspect_missing_file_as_a_command(tmp_path):
    out = kvwire("inspect", tmp_path / "missing.kvw")
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr == f"kvwire: error: no such file: {tmp_path / 'missing.kvw'}\n"
