"""Triton kernels against the CPU codecs: the same wire payload bytes, the same decoded tensors.

Without a GPU the kernels run in Triton's CPU interpreter (conftest sets TRITON_INTERPRET=1), so CI
checks their logic; with one, the ``gpu`` tests run the compiled kernels on the device.
"""

import pytest
import torch

pytest.importorskip("triton")

from kvwire.errors import CodecError, KVError, WireError  # noqa: E402
from kvwire.kernels.token import kernel as kernels  # noqa: E402  (the per-token kernels' launch functions)
from kvwire.kernels.token.eager import decode_cache_eager, encode_cache_eager  # noqa: E402
from kvwire.kernels.reference import decode_cache_reference as cpu_decoded  # noqa: E402
from kvwire.kernels.reference import encode_cache_reference as cpu_payloads  # noqa: E402

CODECS = ["int8", "int4", "fp8_e4m3"]
GPU = torch.cuda.is_available()
DEVICE = "cuda" if GPU else "cpu"  # compiled kernels on a GPU, else the interpreter


def random_cache(layers=2, heads=3, seq=37, dim=64, dtype=torch.bfloat16, seed=0, device="cpu"):
    """Rows of very different magnitudes (attention-sink-like), a few outlier channels, a zero row."""
    g = torch.Generator().manual_seed(seed)
    kv = torch.randn(layers, 2, heads, seq, dim, generator=g) * torch.rand(layers, 2, heads, seq, 1, generator=g).pow(3) * 8
    kv[:, 0, :, :, :2] *= 20  # outlier key channels
    kv[0, 1, 0, 0] = 0.0
    return kv.to(dtype).to(device)


def check_round_trip(name, kv, device):
    data = cpu_payloads(name, kv)
    got = kernels.encode_cache(name, kv.to(device))
    assert got.numel() == len(data)
    assert got.cpu().numpy().tobytes() == data, f"{name}: GPU payload differs from the CPU codec's"
    out_dtype = kv.dtype if kv.dtype != torch.float32 else torch.bfloat16
    dec = kernels.decode_cache(name, got, tuple(kv.shape), out_dtype)
    assert torch.equal(dec.cpu(), cpu_decoded(name, data, tuple(kv.shape), out_dtype))


@pytest.mark.parametrize("name", CODECS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("dim", [64, 96, 8])
def test_kernels_write_the_cpu_codecs_bytes(name, dtype, dim):
    # 37 tokens x 3 heads: V's codes start 2 bytes off a word (byte stores); 40 x 3: every row
    # starts word-aligned (whole-word stores and loads) where head_dim allows
    for seq in (37, 40):
        check_round_trip(name, random_cache(seq=seq, dim=dim, dtype=dtype, seed=dim + seq), DEVICE)


@pytest.mark.parametrize("name", CODECS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_the_flat_row_kernels_write_the_same_bytes(name, dtype, monkeypatch):
    """LAYOUT = "flat" (rows as one [D] run, bytes <-> words by split / interleave): the CPU codec's
    bytes and decode too, with NaN still refused; where the layout has no whole-word codes (37 tokens)
    the launch falls back to the word-tile kernels."""
    monkeypatch.setattr(kernels, "LAYOUT", "flat")
    for seq, dim in ((40, 64), (40, 128), (37, 64), (16, 8)):
        check_round_trip(name, random_cache(seq=seq, dim=dim, dtype=dtype, seed=dim + seq + 1), DEVICE)
    bad = random_cache(seq=40, device=DEVICE)
    bad[1, 1, 2, 7, 3] = float("nan")
    with pytest.raises(KVError, match="non-finite"):
        kernels.encode_cache(name, bad)


def test_both_code_store_paths_are_exercised():
    from kvwire.kernels.token.kernel import _args
    from kvwire.kernels.token.layout import token_layout as _layout

    assert _args("int8", _layout("int8", (2, 2, 3, 40, 64)), 2048)["WORDS"]
    assert _args("int4", _layout("int4", (2, 2, 3, 40, 64)), 2048)["WORDS"]
    assert not _args("int8", _layout("int8", (2, 2, 3, 37, 64)), 2048)["WORDS"]
    assert not _args("fp8_e4m3", _layout("fp8_e4m3", (2, 2, 3, 40, 96)), 2048)["WORDS"]  # head_dim padded


def test_kernels_on_a_real_cache(small_model):
    """stories260K's (or the tiny Llama's) real prefill cache, every layer in one launch."""
    from kvwire.kv import prefill

    torch.manual_seed(3)
    ids = torch.randint(3, small_model.config.vocab_size, (1, 48))
    layers, _ = prefill(small_model, ids)
    kv = torch.stack([torch.stack([layer.k, layer.v]) for layer in layers[0]]).to(torch.bfloat16)
    assert kv.shape[0] == small_model.config.num_hidden_layers
    for name in CODECS:
        check_round_trip(name, kv, DEVICE)


@pytest.mark.parametrize("name", CODECS)
def test_eager_baseline_writes_the_same_bytes(name):
    kv = random_cache(seq=19, seed=5, device=DEVICE)
    data = encode_cache_eager(name, kv)
    assert data.cpu().numpy().tobytes() == cpu_payloads(name, kv)
    assert torch.equal(decode_cache_eager(name, data, tuple(kv.shape), kv.dtype),
                       kernels.decode_cache(name, data, tuple(kv.shape), kv.dtype))


def test_bad_input_is_refused_with_a_clear_error():
    kv = random_cache(seq=9, device=DEVICE)
    for name in CODECS:
        bad = kv.clone()
        bad[1, 0, 2, 3, 5] = float("nan")
        with pytest.raises(KVError, match="non-finite scale"):
            kernels.encode_cache(name, bad)
        inf = kv.clone()
        inf[0, 1, 0, 4, 0] = float("inf")
        with pytest.raises(KVError, match="non-finite scale"):
            kernels.encode_cache(name, inf)
    with pytest.raises(CodecError, match="no GPU kernel for codec 'kivi2'"):
        kernels.encode_cache("kivi2", kv)
    with pytest.raises(CodecError, match="default parameters"):
        kernels.encode_cache("int8", kv, {"granularity": "channel"})
    assert kernels.supports("int8") and not kernels.supports("int8", {"granularity": "channel"})
    with pytest.raises(KVError, match=r"\[layers, 2, kv_heads, seq, head_dim\]"):
        kernels.encode_cache("int8", kv[0])
    data = kernels.encode_cache("int8", kv)
    with pytest.raises(WireError, match="payload bytes"):
        kernels.decode_cache("int8", data[:-1], tuple(kv.shape), kv.dtype)
    # a payload of the right size whose section table was damaged
    damaged = data.clone()
    damaged[5] ^= 1
    with pytest.raises(WireError, match="section table"):
        kernels.decode_cache("int8", damaged, tuple(kv.shape), kv.dtype)


@pytest.mark.gpu
@pytest.mark.skipif(not GPU, reason="needs a CUDA device")
@pytest.mark.parametrize("name", CODECS)
def test_compiled_kernels_on_the_gpu(name):
    for dim, dtype in ((128, torch.bfloat16), (96, torch.float16), (64, torch.bfloat16), (256, torch.bfloat16)):
        check_round_trip(name, random_cache(layers=3, heads=4, seq=1000, dim=dim, dtype=dtype, seed=dim), "cuda")


def test_gpu_timing_refuses_a_machine_without_the_gpu_it_names(tmp_path):
    from kvwire.kernels import bench
    from kvwire.stages.gpu_bench import time_gpu

    if GPU:
        name = torch.cuda.get_device_name()
        assert bench.require_gpu(name.split()[-1].lower()) == name
        with pytest.raises(KVError, match="labelled 'no-such-gpu'"):
            bench.require_gpu("no-such-gpu")
    else:
        with pytest.raises(KVError, match="needs a CUDA device"):
            time_gpu(tmp_path / "t.csv", label="h200")
        assert not (tmp_path / "t.csv").exists()


def test_gpu_timing_summary_counts_rows_that_differ_from_the_cpu_codec():
    import pandas as pd

    from kvwire.kernels.bench import summary

    row = dict(model="m", seq=512, dtype="bfloat16", codec="int8", ms=1.0, gbps=100.0, frac_copy=0.5,
               speedup_vs_eager=4.0)
    table = pd.DataFrame([{**row, "impl": "triton", "op": "encode", "identical_to_cpu": True},
                          {**row, "impl": "triton", "op": "decode", "identical_to_cpu": False},
                          {**row, "impl": "eager", "op": "encode", "identical_to_cpu": True, "ms": 4.0},
                          {**row, "impl": "eager", "op": "decode", "identical_to_cpu": True, "ms": 4.0}])
    text = summary(table)
    assert "Triton not conformant to the CPU codec: 1; eager not identical: 0" in text
    assert len(text.splitlines()) == 4  # header, two Triton rows, the count


@pytest.mark.gpu
@pytest.mark.skipif(not GPU, reason="needs a CUDA device")
def test_gpu_timing_table_on_small_shapes(tmp_path):
    import pandas as pd

    from kvwire.stages.gpu_bench import time_gpu

    table = time_gpu(tmp_path / "t.csv", models={"tiny": (2, 2, 64)}, seqs=(256,), dtypes=("bfloat16",), codecs=CODECS)
    again = pd.read_csv(tmp_path / "t.csv")
    assert len(table) == len(again) == len(CODECS) * 4  # (triton, eager) x (encode, decode)
    assert table.identical_to_cpu.all() and table.conformant.all() and (table.ms > 0).all()
    assert (table.frac_copy > 0).all()
