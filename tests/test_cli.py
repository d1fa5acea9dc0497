"""The kvwire command, run as a real subprocess on a real KV file."""

import copy
import json
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
