"""The int8 / int4 group and channel kernels, token granularity with non-default parameters, and
FP8 E5M2 (``kvwire.kernels.granular``) against the CPU codecs: the same payload bytes, the same
decoded tensors. Without a GPU they run in Triton's interpreter (conftest sets TRITON_INTERPRET=1).
"""

import pytest
import torch

pytest.importorskip("triton")

from kvwire.errors import CodecError, KVError, WireError  # noqa: E402
from kvwire.kernels.granular import kernel as granular  # noqa: E402,F401  (registers the kernels)
from kvwire.kernels.base import GpuPayloads, kernel_for  # noqa: E402
from kvwire.kernels.reference import conformance, cpu_payloads  # noqa: E402

GPU = torch.cuda.is_available()
DEVICE = "cuda" if GPU else "cpu"

# the study's settings first (int8_channel, int4_channel, fp8_e5m2), then the other options
STUDY = [("int8", {"granularity": "channel"}), ("int4", {"granularity": "channel"}), ("fp8_e5m2", {}),
         ("int8", {"granularity": "group"}), ("int4", {"granularity": "group"})]
OPTIONS = [
    ("int8", {"granularity": "channel", "symmetric": False, "scale_dtype": "float32"}),
    ("int4", {"granularity": "channel", "symmetric": True, "scale_dtype": "bfloat16"}),
    ("int8", {"granularity": "group", "group_size": 16, "symmetric": False, "scale_dtype": "bfloat16"}),
    ("int4", {"granularity": "group", "group_size": 16, "symmetric": True, "scale_dtype": "float32"}),
    ("int8", {"symmetric": False}),
    ("int4", {"symmetric": True, "scale_dtype": "bfloat16"}),
]
SETTINGS = STUDY + OPTIONS


def label(setting):
    name, params = setting
    return name + "".join(f"-{v}" for v in params.values())


def random_cache(layers=2, heads=3, seq=37, dim=64, dtype=torch.bfloat16, seed=0, device="cpu"):
    """Rows of very different magnitudes (attention-sink-like), outlier key channels, a zero row."""
    g = torch.Generator().manual_seed(seed)
    kv = torch.randn(layers, 2, heads, seq, dim, generator=g) * torch.rand(layers, 2, heads, seq, 1, generator=g).pow(3) * 8
    kv[:, 0, :, :, :2] *= 20
    kv[:, :, :, 0] *= 50  # sink token: it sets every channel's range
    kv[0, 1, 0, 1] = 0.0
    return kv.to(dtype).to(device)


def fits(setting, dim):
    """Whether a setting's group_size divides head_dim ``dim``."""
    name, params = setting
    return params.get("granularity") != "group" or dim % params.get("group_size", 64 if name == "int8" else 32) == 0


def check(name, params, kv, **encode_args):
    kernel = kernel_for(name, params)
    assert type(kernel).__module__ == granular.__name__, f"{name} {params} is served by {type(kernel).__name__}"
    payloads = kernel.encode(kv, **encode_args)
    c = conformance(kernel, kv, payloads=payloads)
    assert c.identical, f"{name} {params}: payload differs from the CPU codec's ({c})"
    assert c.decode_identical, f"{name} {params}: decode differs from the CPU codec's"
    return kernel, payloads


@pytest.mark.parametrize("setting", SETTINGS, ids=label)
def test_kernels_write_the_cpu_codecs_bytes(setting):
    name, params = setting
    # 37 tokens x 3 heads: odd section lengths (byte stores); head_dim 96 is padded to 128 lanes
    check(name, params, random_cache(seq=37, dim=64, seed=1))
    dim = 96 if fits(setting, 96) else 128
    check(name, params, random_cache(layers=3, heads=2, seq=40, dim=dim, dtype=torch.float16, seed=2))


@pytest.mark.parametrize("setting", STUDY, ids=label)
def test_float32_caches_and_head_dim_128(setting):
    check(*setting, random_cache(layers=1, heads=2, seq=19, dim=128, dtype=torch.float32, seed=3))


@pytest.mark.parametrize("chunk", [2, 8])
@pytest.mark.parametrize("setting", [STUDY[0], OPTIONS[0]], ids=label)
def test_channel_ranges_combine_over_any_chunking(setting, chunk):
    # chunk 2 at 37 tokens: 19 chunks, more than one step (BLOCK_CHUNKS) of the combining kernel
    check(*setting, random_cache(layers=1, heads=2, seq=37, dim=32, seed=4), chunk=chunk)


@pytest.mark.parametrize("setting", [STUDY[0], STUDY[1], OPTIONS[0], OPTIONS[1]], ids=label)
def test_the_one_launch_channel_kernel_and_the_three_launch_path_write_the_same_bytes(setting, monkeypatch):
    """Caches up to FUSED_MAX_TOKENS take channel_fused_kernel (every token of a channel block held by
    one program); longer ones, or CHANNEL_FUSED off, the three launches: both are the CPU's bytes."""
    assert granular._fused_channels(37, 64, 1) == 64 and granular._fused_channels(2048, 128, 2) == 16
    assert granular._fused_channels(4097, 128, 1) is None and granular._fused_channels(37, 15, 1) is None
    kv = random_cache(layers=2, heads=2, seq=45, dim=32, seed=9)
    monkeypatch.setattr(granular, "FUSED_ELEMENTS", 512)  # 64 padded tokens x 8 channels: 4 channel blocks
    _, fused = check(*setting, kv)
    monkeypatch.setattr(granular, "CHANNEL_FUSED", False)
    kernel, three = check(*setting, kv)
    assert torch.equal(fused.data, three.data)
    # the decode on flat rows (default where the layout allows) and on [words, 4 bytes, P codes] tiles
    _, _, h, s, d = kv.shape
    assert granular._layout_args(kernel.scheme(d), tuple(kv.shape), 4)[1]["WORDS"]  # the flat path is taken
    flat = kernel.decode(three, tuple(kv.shape), kv.dtype)
    monkeypatch.setattr(granular, "FLAT_DECODE", False)
    assert torch.equal(flat, kernel.decode(three, tuple(kv.shape), kv.dtype))


@pytest.mark.parametrize("setting", [STUDY[2], STUDY[3], STUDY[4], OPTIONS[2], OPTIONS[3]], ids=label)
def test_the_flat_row_decode_equals_the_word_tile_decode(setting, monkeypatch):
    """Group rows (and FP8 E5M2's token rows) decode on flat [G] rows where the layout has whole-word rows
    of a power-of-two group, on [words, 4 bytes, P codes] tiles otherwise: the same tensor, the CPU's."""
    kv = random_cache(layers=2, heads=2, seq=40, dim=64, seed=11)
    kernel, payloads = check(*setting, kv)  # check() decodes with the default (flat) path against the CPU
    sch = kernel.scheme(64)
    assert granular._layout_args(sch, tuple(kv.shape), 4)[1]["WORDS"] and sch.group & (sch.group - 1) == 0
    flat = kernel.decode(payloads, tuple(kv.shape), kv.dtype)
    monkeypatch.setattr(granular, "FLAT_DECODE", False)
    assert torch.equal(flat, kernel.decode(payloads, tuple(kv.shape), kv.dtype))


def test_unaligned_sections_use_byte_stores():
    """Odd head_dim: int8 codes sections of odd length put the scales off their alignment; head_dim
    18 at 3 x 13 tokens puts float32 scales 2 bytes off a word."""
    for scheme, shape in ((granular.Scheme("int8", True, 15, True, "float16"), (2, 2, 3, 13, 15)),
                          (granular.Scheme("int8", True, 18, True, "float32"), (2, 2, 3, 13, 18))):
        _, flags, _ = granular._layout_args(scheme, shape, 4)
        assert not flags["SALIGN"] and not flags["WORDS"]
    _, flags, _ = granular._layout_args(granular.Scheme("int8", True, 16, True, "float32"), (2, 2, 3, 13, 16), 4)
    assert flags["SALIGN"] and flags["WORDS"]
    check("int8", {"granularity": "channel"}, random_cache(seq=13, dim=15, seed=5))
    check("int8", {"granularity": "group", "group_size": 5, "symmetric": False}, random_cache(seq=13, dim=15, seed=6))
    check("int8", {"granularity": "channel", "scale_dtype": "float32"}, random_cache(seq=13, dim=18, seed=7))
    check("int4", {"granularity": "group", "group_size": 6, "scale_dtype": "float32"}, random_cache(seq=13, dim=18, seed=8))


@pytest.mark.parametrize("setting", [("int4", {"granularity": "channel", "symmetric": True}),
                                     ("int4", {"granularity": "group", "group_size": 6}), STUDY[2],
                                     ("int8", {"granularity": "channel", "symmetric": False})], ids=label)
def test_kernels_write_every_byte(setting):
    """Into a poisoned buffer: section tables, codes, scales and bitpack's zero padding (int4 at
    3 x 13 x 18 elements: one pad byte per codes section) all come from the kernels."""
    kernel = kernel_for(*setting)
    kv = random_cache(seq=13, dim=18, seed=11)
    sch = kernel.scheme(18)
    out = torch.full((2 * sch.layout(tuple(kv.shape)).layer_bytes,), 0xAB, dtype=torch.uint8)
    kernel._encode_launch(kv, out, sch, None, None, None)
    assert GpuPayloads.equal_slots(out, 2).to_bytes() == cpu_payloads(kernel.codec, kv)


def test_constant_zero_and_negative_scale_units():
    """Zero and -0.0 channels (scale 0, zero point +0.0), a constant channel, and a near-constant one
    whose minimum rounds above its maximum in float16 (a negative scale, codes 0)."""
    kv = random_cache(layers=1, heads=2, seq=24, dim=64, dtype=torch.float32, seed=9)
    kv[..., 3] = 0.0
    kv[..., 4] = -0.0
    kv[..., 5] = 2.5
    kv[..., 6] = 1.0006
    kv[..., 0, 6] = 1.0007
    kv[0, 0, 0, 3] = -0.0  # one token all zeros of both signs
    for name, params in SETTINGS:
        check(name, params, kv)


def test_fp8_e5m2_rounds_ties_and_subnormals_as_torch():
    """Every E5M2 value, the midpoints between neighbours and their float32 neighbours, after a
    scale of exactly 1 (a row's max |x| is 57344)."""
    vals = torch.arange(256, dtype=torch.uint8).view(torch.float8_e5m2).float()
    vals = vals[torch.isfinite(vals)].unique()
    mid = (vals[1:] + vals[:-1]) / 2
    up, down = torch.tensor(float("inf")), torch.tensor(float("-inf"))
    x = torch.cat([vals, mid, mid.nextafter(up), mid.nextafter(down)])
    rows = torch.zeros(-(-x.numel() // 63) * 63)
    rows[:x.numel()] = x
    rows = torch.cat([torch.full((rows.numel() // 63, 1), 57344.0), rows.view(-1, 63)], dim=1)
    rows = rows[:rows.shape[0] // 2 * 2]
    check("fp8_e5m2", {}, rows.reshape(1, 2, 1, -1, 64).contiguous())


@pytest.mark.parametrize("setting", SETTINGS, ids=label)
def test_eager_baseline_writes_the_same_bytes(setting):
    name, params = setting
    kernel = kernel_for(name, params)
    kv = random_cache(seq=19, seed=10, device=DEVICE)
    eager = kernel.encode_eager(kv)
    assert kernel.encode(kv).to_bytes() == cpu_payloads(kernel.codec, kv)
    if not GPU:  # (on CUDA, torch divides by a scalar through its reciprocal: eager may be a bit off)
        assert eager.to_bytes() == kernel.encode(kv).to_bytes()
    shape = tuple(kv.shape)
    assert torch.equal(kernel.decode_eager(eager, shape, kv.dtype), kernel.decode(eager, shape, kv.dtype))


def test_kernels_on_a_real_cache(small_model):
    from kvwire.kv import prefill

    torch.manual_seed(3)
    ids = torch.randint(3, small_model.config.vocab_size, (1, 48))
    layers, _ = prefill(small_model, ids)
    kv = torch.stack([torch.stack([layer.k, layer.v]) for layer in layers[0]]).to(torch.bfloat16)
    kv = kv[[0, -1]].contiguous()  # its first and last layer (the interpreter's cost is per program)
    for name, params in STUDY[:3]:
        check(name, params, kv)


def test_selection_of_kernel_classes():
    assert type(kernel_for("int8")).__name__ == "TokenQuantKernel"
    assert type(kernel_for("int4")).__name__ == "TokenQuantKernel"
    assert type(kernel_for("int8", {"granularity": "channel"})).__name__ == "ChannelQuantKernel"
    assert type(kernel_for("int4", {"granularity": "group"})).__name__ == "GroupQuantKernel"
    assert type(kernel_for("int8", {"symmetric": False})).__name__ == "GroupQuantKernel"
    assert type(kernel_for("fp8_e5m2")).__name__ == "Fp8E5M2Kernel"
    with pytest.raises(CodecError, match="even group_size"):
        kernel_for("int4", {"granularity": "group", "group_size": 5})
    with pytest.raises(CodecError, match="no GPU kernel for codec 'fp8_e5m2'"):
        kernel_for("fp8_e5m2", {"scaling": "head"})


@pytest.mark.filterwarnings("ignore:.*encountered:RuntimeWarning")  # the interpreter's numpy meets the NaN
def test_bad_input_is_refused_with_a_clear_error():
    kv = random_cache(heads=2, seq=9, dim=64, dtype=torch.float32, device=DEVICE)
    for i, (name, params) in enumerate(SETTINGS):
        kernel = kernel_for(name, params)
        bad = kv.clone()
        bad[1, 0, 1, 3, 5] = (float("nan"), float("inf"), float("-inf"))[i % 3]
        with pytest.raises(KVError, match="NaN/Inf value.*layer 1 keys"):
            kernel.encode(bad)
    huge = kv * 1e9  # finite, but max / 127 passes float16's range: the CPU codec's CodecError
    for name, params in [("int8", {"granularity": "channel"}), ("int4", {"granularity": "group"})]:
        with pytest.raises(CodecError, match="overflows float16"):
            kernel_for(name, params).encode(huge)
    with pytest.raises(CodecError, match="not a multiple of group_size 64"):
        kernel_for("int8", {"granularity": "group"}).encode(kv[..., :24])
    with pytest.raises(CodecError, match="even head_dim"):
        kernel_for("int4", {"granularity": "channel"}).encode(kv[..., :15])
    with pytest.raises(KVError, match=r"\[layers, 2, kv_heads, seq, head_dim\]"):
        kernel_for("int8", {"granularity": "channel"}).encode(kv[0])


@pytest.mark.parametrize("setting", [STUDY[0], STUDY[2], OPTIONS[3]], ids=label)
def test_damaged_payloads_are_refused(setting):
    name, params = setting
    kernel = kernel_for(name, params)
    kv = random_cache(seq=9, dim=32, device=DEVICE)
    shape = tuple(kv.shape)
    good = kernel.encode(kv)
    lay = kernel.scheme(32).layout(shape)
    off = lay.offsets()

    def damaged(at, value):
        data = good.data.clone()
        data[lay.layer_bytes + at:lay.layer_bytes + at + len(value)] = torch.tensor(value, dtype=torch.uint8)
        return GpuPayloads(data, good.offsets)

    with pytest.raises(WireError, match="section table"):
        kernel.decode(damaged(5, [good.data[5].item() ^ 1]), shape, kv.dtype)
    with pytest.raises(WireError, match="payload bytes"):
        kernel.decode(GpuPayloads.equal_slots(good.data[:-2], 2), shape, kv.dtype)
    inf = [0x00, 0x7C] if lay.scale_itemsize == 2 else [0, 0, 0x80, 0x7F]
    with pytest.raises(WireError, match="non-finite scale"):
        kernel.decode(damaged(off["v_scales"], inf), shape, kv.dtype)
    code = {"int8": [0x80], "fp8_e5m2": [0x7E], "int4": [0xF0]}[name]
    with pytest.raises(WireError, match="balanced range|NaN/Inf fp8 code"):
        kernel.decode(damaged(off["k_codes"] + 3, code), shape, kv.dtype)
    assert torch.equal(kernel.decode(good, shape, kv.dtype), kernel.decode(good, shape, kv.dtype, check=False))


@pytest.mark.gpu
@pytest.mark.skipif(not GPU, reason="needs a CUDA device")
@pytest.mark.parametrize("setting", SETTINGS, ids=label)
def test_compiled_kernels_on_the_gpu(setting):
    """Realistic shapes on the device: payload and decode against the CPU codec on the first and last
    layer and on every layer where the eager baseline disagrees (torch's CUDA division by a scalar
    multiplies by its reciprocal, so eager may be a bit off the CPU codec; the kernel may not)."""
    name, params = setting
    kernel = kernel_for(name, params)
    for layers, heads, seq, dim, dtype in ((4, 8, 4096, 128, torch.bfloat16), (4, 8, 4096, 128, torch.float16),
                                           (3, 4, 1000, 96, torch.float16), (2, 3, 777, 64, torch.bfloat16)):
        if not fits(setting, dim):
            continue
        kv = random_cache(layers, heads, seq, dim, dtype, seed=dim + seq, device="cuda")
        payloads = kernel.encode(kv)
        assert torch.equal(kernel.encode(kv, check=False).data, payloads.data)
        eager = kernel.encode_eager(kv)
        differ = [i for i in range(layers) if not torch.equal(eager.layer(i), payloads.layer(i))]
        c = conformance(kernel, kv, layers=sorted({0, layers - 1, *differ}), payloads=payloads)
        assert c.identical and c.decode_identical, f"{name} {params} {list(kv.shape)} {dtype}: {c}"
        shape = tuple(kv.shape)
        assert torch.equal(kernel.decode_eager(payloads, shape, dtype), kernel.decode(payloads, shape, dtype))
