"""The guardband Triton kernels against the CPU codec: the same payload bytes, the same decode, in
every plan regime (top, mix, drop), for the defaults and the study's setting.

Without a GPU the kernels run in Triton's CPU interpreter (conftest sets TRITON_INTERPRET=1); the
``gpu`` tests run the compiled kernels at realistic shapes.
"""

import pytest
import torch

pytest.importorskip("triton")

from kvwire.errors import CodecError, KVError, WireError  # noqa: E402
from kvwire.kernels.guardband import kernel as gb  # noqa: E402  (registers the kernel)
from kvwire.kernels.base import GpuPayloads, as_layers, kernel_for, same_layers  # noqa: E402
from kvwire.kernels.reference import conformance, cpu_decoded, cpu_payloads  # noqa: E402

GPU = torch.cuda.is_available()
DEVICE = "cuda" if GPU else "cpu"
STUDY = {"target_ratio": 8, "recent": 16, "min_body_bits": 4, "strict": True}  # config/config.yaml's guardband_8x
SMALL = {**STUDY, "target_ratio": 4.0}  # the same regime (drop at 4 bits) on caches small enough for the interpreter


def random_cache(layers=2, heads=3, seq=37, dim=64, dtype=torch.bfloat16, seed=0, device=DEVICE):
    """Rows of very different magnitudes (attention-sink-like), a few outlier key channels, a zero row."""
    g = torch.Generator().manual_seed(seed)
    kv = torch.randn(layers, 2, heads, seq, dim, generator=g) * torch.rand(layers, 2, heads, seq, 1, generator=g).pow(3) * 8
    kv[:, 0, :, :, :2] *= 20
    kv[0, 1, 0, 0] = 0.0
    return kv.to(dtype).to(device)


def check(params, kv, stats=None):
    kernel = gb.GuardBandKernel("guardband", params)
    result = conformance(kernel, kv, stats)
    assert result.identical, f"{params}: payload differs from the CPU codec's ({gb.plan_summary(_layout(kernel, kv))})"
    assert result.decode_identical, f"{params}: decode differs from the CPU codec's"
    return kernel


def _layout(kernel, kv):
    n, _, h, s, d = kv.shape
    return kernel.layout(n, (h, s, d), kv.dtype)


# (params, shape [layers, heads, seq, head_dim], dtype, regime): every regime, bit width 2..8, odd
# sequence lengths, head_dim 64/96/128, fp16/bf16/fp32
CASES = [
    ({"target_ratio": 1.5}, (6, 2, 201, 64), torch.bfloat16, "top"),
    ({"target_ratio": 2.0}, (6, 2, 200, 64), torch.float16, "mix"),  # 8 / 4 bits
    ({"target_ratio": 2.8}, (6, 2, 333, 64), torch.bfloat16, "mix"),  # 3 / 2 bits
    ({"target_ratio": 3.0, "guard_bits": 5}, (5, 3, 500, 96), torch.float16, "mix"),  # 5-bit guards, 4 / 3 body
    ({"target_ratio": 1.5}, (4, 1, 130, 128), torch.float32, "top"),
    (STUDY, (12, 1, 400, 64), torch.bfloat16, "drop"),
    ({}, (4, 1, 250, 64), torch.float16, "unreachable"),  # default best effort: guard bands only
    ({"target_ratio": 3.0, "key_scale": False}, (4, 1, 250, 64), torch.bfloat16, "drop"),
]


@pytest.mark.parametrize("params,shape,dtype,regime", CASES)
def test_kernel_writes_the_cpu_codecs_bytes(params, shape, dtype, regime):
    kv = random_cache(*shape, dtype=dtype, seed=shape[2])
    kernel = check(params, kv)
    assert _layout(kernel, kv).plan.regime == regime


def test_token_selection_settles_near_ties_as_the_cpu_does():
    """Key norms within float32 rounding of each other at the cut: the device's float64 ranking alone
    keeps other tokens than the CPU codec; the near-tie check hands those to the CPU's arithmetic."""
    kv = random_cache(6, 1, 200, 64, seed=4)
    base = kv[:, 0, :, 10:11].clone()
    base[..., 63] = 0
    kv[:, 0, :, 4:184] = base
    kv[:, 0, :, 4:184, 63] = torch.linspace(1e-3, 1e-4, 180).to(kv.dtype).to(kv.device)  # norms tie in float32
    kernel = gb.GuardBandKernel("guardband", SMALL)
    kernel.exact_selection = False
    assert not conformance(kernel, kv).identical  # the test can fail: device scores alone differ
    check(SMALL, kv)


def test_exact_ties_and_attention_scores():
    kv = random_cache(6, 1, 200, 64, seed=3)
    kv[:, 0, :, 50:150] = kv[:, 0, :, 30:31]  # 100 equal key norms: ties go to the earlier token
    g = torch.Generator().manual_seed(0)
    stats = [{"attn_sum": torch.rand(1, 200, generator=g).round(decimals=1).to(DEVICE)} for _ in range(6)]
    check(SMALL, kv)
    check(SMALL, kv, stats)  # score auto -> attn_sum
    check({**SMALL, "score": "keynorm"}, kv, stats)


def test_signed_zero_groups_get_the_cpu_zero_points():
    """Groups whose min or max is a -0.0 / +0.0 tie: the zero point's sign is torch's CPU choice."""
    assert gb.cpu_zero_lanes() in (4, 8, 16, 32)
    kv = random_cache(6, 2, 200, 64, seed=7, device="cpu")
    g = torch.Generator().manual_seed(1)
    zeros = torch.rand(kv.shape, generator=g) < 0.3
    signs = torch.where(torch.rand(kv.shape, generator=g) < 0.5, -0.0, 0.0).to(kv.dtype)
    kv = torch.where(zeros, signs, kv.abs())  # keys: non-negative groups with mixed-sign zeros (min ties)
    kv[:, 1] = torch.where(zeros[:, 1], signs[:, 1], -kv[:, 1])  # values: non-positive groups (max ties)
    check({"target_ratio": 2.0}, kv.to(DEVICE))


def test_eager_baseline_writes_the_same_bytes():
    for params, shape in ((SMALL, (6, 1, 200, 64)), ({"target_ratio": 2.0}, (6, 2, 60, 96))):
        kv = random_cache(*shape, seed=11)
        kernel = gb.GuardBandKernel("guardband", params)
        eager = kernel.encode_eager(kv)
        assert eager.to_bytes() == cpu_payloads(kernel.codec, kv)
        if GPU:
            continue  # eager float32 key norms on the GPU may rank a near-tie differently
        assert eager.to_bytes() == kernel.encode(kv).to_bytes()
        assert same_layers(as_layers(kernel.decode_eager(eager, tuple(kv.shape), kv.dtype)),
                           as_layers(kernel.decode(eager, tuple(kv.shape), kv.dtype)))


def test_gpu_launch_sizes_in_the_interpreter(monkeypatch):
    """The compiled path's tile sizes (not the interpreter's large ones) give the same bytes."""
    monkeypatch.setattr(gb, "interpreted", lambda: False)
    check(SMALL, random_cache(6, 1, 200, 128, seed=2))


def test_bad_input_is_refused_with_a_clear_error():
    kv = random_cache(4, 1, 250, 64, seed=1)
    kernel = gb.GuardBandKernel("guardband", {"target_ratio": 3.0})
    bad = kv.clone()
    bad[2, 1, 0, 7, 3] = float("nan")
    with pytest.raises(KVError, match="NaN/Inf"):
        kernel.encode(bad)
    with pytest.raises(CodecError, match="unreachable"):
        gb.GuardBandKernel("guardband", STUDY).encode(random_cache(4, 1, 100, 64))
    with pytest.raises(CodecError, match="guard_bits"):
        kernel_for("guardband", {"guard_bits": 16})
    with pytest.raises(CodecError, match="float16"):
        kernel_for("guardband", {"scale_dtype": "bfloat16"})
    with pytest.raises(CodecError, match="multiples of 8"):
        gb.GuardBandKernel("guardband", {"group_size": 4}).encode(kv)
    huge = random_cache(4, 1, 250, 64, dtype=torch.float32) * 1e6
    with pytest.raises(CodecError, match="overflow"):
        kernel.encode(huge)
    payloads = kernel.encode(kv)
    shape = tuple(kv.shape)
    damaged = payloads.data.clone()
    damaged[payloads.offsets[1] + 50] ^= 1  # a byte of layer 1's plan header
    with pytest.raises(WireError, match="plan header"):
        kernel.decode(GpuPayloads(damaged, payloads.offsets), shape, kv.dtype)
    short = GpuPayloads(payloads.data[:-1], payloads.offsets[:-1] + (payloads.offsets[-1] - 1,))
    with pytest.raises(WireError, match="payload sizes"):
        kernel.decode(short, shape, kv.dtype)
    mask = payloads.data.clone()
    mask[payloads.offsets[1] + 60] ^= 1  # layer 1's keep mask: a sink token dropped
    with pytest.raises(WireError, match="keep mask"):
        kernel.decode(GpuPayloads(mask, payloads.offsets), shape, kv.dtype)


def test_registered_and_found_by_name():
    kernel = kernel_for("guardband", STUDY)
    assert isinstance(kernel, gb.GuardBandKernel) and kernel.params["target_ratio"] == 8.0


@pytest.mark.gpu
@pytest.mark.skipif(not GPU, reason="needs a CUDA device")
@pytest.mark.parametrize("params", [STUDY, {}], ids=["study", "defaults"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_compiled_kernels_on_the_gpu(params, dtype):
    for layers, heads, seq, dim in ((4, 8, 4096, 128), (30, 3, 1000, 64), (18, 1, 777, 256)):
        kv = random_cache(layers, heads, seq, dim, dtype=dtype, seed=seq)
        kernel = gb.GuardBandKernel("guardband", {**params, "strict": False})
        result = conformance(kernel, kv)
        assert result.identical and result.decode_identical, (params, dtype, (layers, heads, seq, dim))
        fast = kernel.encode(kv, check=False)
        assert fast.to_bytes() == kernel.encode(kv).to_bytes()
        want = cpu_decoded(kernel.codec, fast.to_bytes(), tuple(kv.shape), dtype)
        assert same_layers(as_layers(kernel.decode(fast, tuple(kv.shape), dtype, check=False)), want)
