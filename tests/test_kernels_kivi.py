"""The KIVI (kivi2 / kivi4) and k8v4 Triton kernels against their CPU codecs: the same payload bytes,
the same decoded tensors, the same refusals.

Without a GPU the kernels run in Triton's CPU interpreter (conftest sets TRITON_INTERPRET=1); the
``gpu`` tests run the compiled kernels at realistic shapes.
"""

import pytest
import torch

pytest.importorskip("triton")

from kvwire.errors import CodecError, KVError, WireError  # noqa: E402
from kvwire.kernels.k8v4 import kernel as k8v4_kernels  # noqa: E402  (importing registers the kernels)
from kvwire.kernels.kivi import kernel as kivi_kernels  # noqa: E402
from kvwire.kernels.base import GpuPayloads, kernel_for, supported  # noqa: E402
from kvwire.kernels.reference import conformance  # noqa: E402

pytestmark = [pytest.mark.filterwarnings("ignore:divide by zero:RuntimeWarning"),  # the interpreter's numpy
              pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning"),  # on masked lanes
              pytest.mark.filterwarnings("ignore:overflow:RuntimeWarning")]

GPU = torch.cuda.is_available()
DEVICE = "cuda" if GPU else "cpu"


def random_cache(layers=2, heads=3, seq=37, dim=64, dtype=torch.bfloat16, seed=0, device=DEVICE):
    """Rows of very different magnitudes (attention-sink-like), outlier key channels, a zero row and a
    key channel of -0.0 over a whole token group (its zero point must be written +0.0)."""
    g = torch.Generator().manual_seed(seed)
    scale = torch.rand(layers, 2, heads, seq, 1, generator=g).pow(3) * 8
    kv = torch.randn(layers, 2, heads, seq, dim, generator=g) * scale
    kv[:, 0, :, :, :2] *= 20
    kv[:, :, :, 0] *= 50  # sink token
    kv[0, 1, 0, 0] = 0.0
    kv[0, 0, 0, :min(seq, 32), 5] = -0.0
    return kv.to(dtype).to(device)


def check(name, params, shape, dtype, seed=0):
    kernel = kernel_for(name, params)
    kv = random_cache(*shape, dtype=dtype, seed=seed)
    result = conformance(kernel, kv)
    assert result.identical, f"{name} {params} {shape} {dtype}: payload differs from the CPU codec's"
    assert result.decode_identical, f"{name} {params} {shape} {dtype}: decode differs from the CPU codec's"
    return kernel, kv


KIVI_CASES = [  # (name, params, (layers, heads, seq, head_dim), dtype)
    ("kivi4", {}, (2, 3, 200, 64), torch.bfloat16),  # defaults: 64 key tokens quantized, 72 value tokens, 2 value groups
    ("kivi2", {}, (2, 3, 201, 96), torch.float16),  # odd seq: a partial key group in the residual
    ("kivi4", {"residual": 32}, (2, 2, 101, 128), torch.float16),  # prune_quant's setting
    ("kivi2", {}, (2, 2, 100, 64), torch.bfloat16),  # seq <= residual: nothing quantized
    ("kivi4", {"group_size": 24, "residual": 5, "value_group_size": 32}, (2, 2, 77, 96), torch.float32),
    ("kivi2", {"group_size": 16, "residual": 0, "scale_dtype": "bfloat16"}, (2, 3, 50, 8), torch.bfloat16),
    ("kivi4", {"residual": 3, "value_group_size": 16, "scale_dtype": "float32"}, (2, 3, 45, 64), torch.float16),
    ("kivi2", {}, (2, 2, 160, 128), torch.bfloat16),  # defaults at head_dim 128: 4 value groups of 32
    ("kivi4", {}, (1, 2, 140, 256), torch.float16),  # defaults at head_dim 256 (Gemma-3): 8 value groups
    ("kivi4", {"value_group_size": 0}, (2, 3, 200, 64), torch.bfloat16),  # kivi4_tokenwise: one value group
    ("kivi2", {"value_group_size": 24, "residual": 9}, (1, 2, 50, 64), torch.float16),  # falls back to 16
]


@pytest.mark.parametrize("name,params,shape,dtype", KIVI_CASES)
def test_kivi_kernels_write_the_cpu_codecs_bytes(name, params, shape, dtype):
    check(name, params, shape, dtype, seed=shape[2])


def test_both_code_store_paths_are_exercised():
    """Whole-word code stores where every code row is 4-aligned, byte stores elsewhere (KIVI: only
    code rows shorter than a word, head_dim 8 at 2 bits; k8v4: an odd heads * seq)."""
    def kivi_flags(name, params, shape, dtype):
        kernel = kernel_for(name, params)
        lay = kernel.layout((shape[0], 2) + shape[1:], dtype)
        return kernel._keys_args(lay, "encode")[2]["WORDS"], kernel._values_args(lay, "encode")[2]["WORDS"]

    def k8v4_flags(params, shape, dtype):
        kernel = kernel_for("k8v4", params)
        meta = kernel._meta(kernel.layout((shape[0], 2) + shape[1:], dtype), dtype, "encode")[1]
        return meta["K_WORDS"], meta["V_WORDS"]

    assert kivi_flags(*KIVI_CASES[0]) == kivi_flags(*KIVI_CASES[1]) == (True, True)
    assert kivi_flags(*KIVI_CASES[5]) == (False, False)
    assert k8v4_flags(*K8V4_CASES[0]) == (False, False) and k8v4_flags(*K8V4_CASES[1]) == (True, True)


K8V4_CASES = [
    ({}, (2, 3, 37, 64), torch.bfloat16),  # byte stores (odd heads * seq: layers start off a word)
    ({}, (2, 3, 40, 96), torch.float16),  # word stores, padded head_dim
    ({}, (2, 3, 19, 8), torch.float32),
    ({"key_granularity": "group", "key_group_size": 32, "value_granularity": "group", "value_group_size": 8,
      "scale_dtype": "float32"}, (2, 2, 21, 96), torch.float16),
    ({"value_granularity": "group", "scale_dtype": "bfloat16"}, (2, 2, 24, 128), torch.bfloat16),
]


@pytest.mark.parametrize("params,shape,dtype", K8V4_CASES)
def test_k8v4_kernel_writes_the_cpu_codecs_bytes(params, shape, dtype):
    check("k8v4", params, shape, dtype, seed=shape[2])


def test_gpu_launch_shapes_in_the_interpreter(monkeypatch):
    """The GPU's launch shapes (key channel blocks narrower than head_dim, 8-token value blocks)
    give the same bytes as the interpreter's large blocks. (Not the GPU's native bf16 cast: the
    interpreter's truncates; the gpu tests check that one.)"""
    for module in (kivi_kernels, k8v4_kernels):
        monkeypatch.setattr(module, "interpreted", lambda: False)
    kernel, kv = check("kivi4", {"residual": 16}, (2, 1, 70, 128), torch.bfloat16, seed=1)
    lay = kernel.layout(tuple(kv.shape), kv.dtype)
    assert kernel._keys_args(lay, "encode")[2]["CB"] < 128 and kernel._values_args(lay, "decode")[2]["BLOCK_R"] == 8
    check("kivi2", {"residual": 7}, (1, 2, 45, 64), torch.float16, seed=2)
    check("k8v4", {}, (2, 1, 20, 128), torch.bfloat16, seed=3)


@pytest.mark.parametrize("name,params", [("kivi4", {"residual": 16}), ("kivi2", {"value_group_size": 32}),
                                         ("k8v4", {"value_granularity": "group"})])
def test_eager_baseline_writes_the_same_bytes(name, params):
    kernel = kernel_for(name, params)
    kv = random_cache(seq=150, seed=5)
    fused = kernel.encode(kv)
    eager = kernel.encode_eager(kv)
    assert eager.offsets == fused.offsets and torch.equal(eager.data, fused.data)
    shape = tuple(kv.shape)
    assert torch.equal(kernel.decode_eager(fused, shape, kv.dtype), kernel.decode(fused, shape, kv.dtype))


def test_kernels_on_a_real_cache(small_model):
    """stories260K's (or the tiny Llama's) real prefill cache, every layer in one launch per kernel."""
    from kvwire.kv import prefill

    torch.manual_seed(3)
    ids = torch.randint(3, small_model.config.vocab_size, (1, 48))
    layers, _ = prefill(small_model, ids)
    kv = torch.stack([torch.stack([layer.k, layer.v]) for layer in layers[0]]).to(torch.bfloat16).to(DEVICE)
    for name, params in (("kivi2", {"group_size": 16, "residual": 16}), ("k8v4", {})):
        result = conformance(kernel_for(name, params), kv)
        assert result.identical and result.decode_identical, name


def test_registry_and_unsupported_parameters():
    assert supported("kivi2") and supported("kivi4", {"residual": 32, "value_group_size": 32})
    assert supported("k8v4") and supported("k8v4", {"key_granularity": "group"})
    assert not supported("k8v4", {"key_granularity": "channel"})
    assert not supported("kivi4", {"group_size": 1024})
    with pytest.raises(CodecError, match="not channel"):
        kernel_for("k8v4", {"value_granularity": "channel"})
    kv = random_cache(layers=1, heads=1, seq=12, dim=12)
    with pytest.raises(CodecError, match="head_dim divisible by 8"):
        kernel_for("kivi2").encode(kv)
    lay = kernel_for("kivi4", {"value_group_size": 24}).layout((1, 2, 3, 12, 64), torch.bfloat16)
    assert lay.value_group == 16  # the CPU codec's fallback: the largest divisor of head_dim not above 24
    assert kernel_for("kivi4").layout((1, 2, 3, 12, 8), torch.bfloat16).value_group == 8  # stories260K: one group
    with pytest.raises(CodecError, match="key_group_size"):
        kernel_for("k8v4", {"key_granularity": "group", "key_group_size": 48}).encode(random_cache(layers=1, seq=12))


@pytest.mark.parametrize("name,params", [("kivi4", {"residual": 8}), ("kivi2", {"residual": 8}), ("k8v4", {})])
def test_bad_input_is_refused_like_the_cpu_codec(name, params):
    kernel = kernel_for(name, params)
    kv = random_cache(heads=2, seq=40, seed=9)
    for where, value in (((1, 0, 1, 3, 5), float("nan")), ((0, 1, 1, 4, 0), float("inf")),
                         ((1, 1, 0, 39, 7), float("-inf"))):  # the last in the residual window for KIVI
        bad = kv.clone()
        bad[where] = value
        with pytest.raises(KVError, match="NaN/Inf"):
            kernel.encode(bad)
        with pytest.raises(KVError, match="NaN/Inf"):
            kernel.encode_eager(bad)
    huge = random_cache(heads=2, seq=40, dtype=torch.float32, seed=9) * 1e5  # a range past float16 scales
    with pytest.raises(CodecError, match="overflows"):
        kernel.encode(huge)
    with pytest.raises(CodecError, match="overflows"):
        kernel.codec.encode_layer(*_layer(huge, 0))
    with pytest.raises(KVError, match=r"\[layers, 2, kv_heads, seq, head_dim\]"):
        kernel.encode(kv[0])

    good = kernel.encode(kv)
    shape = tuple(kv.shape)
    with pytest.raises(WireError, match="payload bytes"):
        kernel.decode(GpuPayloads.equal_slots(good.data[:-2], 2), shape, kv.dtype)
    damaged = good.data.clone()
    damaged[good.offsets[1] + 5] ^= 1  # layer 1's section table
    with pytest.raises(WireError, match="section table"):
        kernel.decode(GpuPayloads(damaged, good.offsets), shape, kv.dtype)
    lay = kernel.layout(shape, kv.dtype)
    scales = lay.offsets()["v_scales"]
    nan_scale = good.data.clone()
    nan_scale[scales:scales + 2] = torch.tensor([0x00, 0x7E], dtype=torch.uint8)  # float16 NaN
    with pytest.raises(WireError, match="non-finite scale"):
        kernel.decode(GpuPayloads(nan_scale, good.offsets), shape, kv.dtype)


def test_k8v4_decode_refuses_key_code_minus_128():
    kernel = kernel_for("k8v4")
    kv = random_cache(seq=16, seed=4)
    good = kernel.encode(kv)
    bad = good.data.clone()
    bad[good.offsets[1] + kernel.layout(tuple(kv.shape), kv.dtype).offsets()["k_codes"] + 3] = 0x80
    with pytest.raises(WireError, match="outside -127..127"):
        kernel.decode(GpuPayloads(bad, good.offsets), tuple(kv.shape), kv.dtype)


def compile_for_sm90() -> list[str]:
    """Compile the default-parameter kernels for an H100/H200 (sm_90) with Triton's own frontend and
    ptxas, no GPU needed (run with TRITON_INTERPRET unset): what the interpreter cannot check (types
    that differ between the branches of a run-time ``if``, the NATIVE paths). Returns problems found
    in the PTX: a fused multiply-add (it would change rounding) or an encoder without NaN-keeping maxima."""
    import re

    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    def build(fn, values, warps):
        names = fn.arg_names
        constexprs = {names[i] for i in fn.constexprs}
        sig, attrs = {}, {}
        for i, n in enumerate(names):
            v = values[n]
            sig[n] = ("constexpr" if n in constexprs else v if isinstance(v, str) else
                      "fp32" if isinstance(v, float) else "i32")
            if isinstance(v, str) or (sig[n] == "i32" and v % 16 == 0):  # what the launcher specializes
                attrs[(i,)] = [["tt.divisibility", 16]]
        consts = {(names.index(n),): values[n] for n in constexprs}
        src = ASTSource(fn, sig, constexprs=consts, attrs=attrs)
        return triton.compile(src, target=GPUTarget("cuda", 90, 32),
                              options={"num_warps": warps, "enable_fp_fusion": False}).asm["ptx"]

    ptrs = {"x_ptr": "*bf16", "raw_ptr": "*i16", "u8": "*u8", "p16": "*i16", "p32": "*i32", "out_ptr": "*i16"}
    problems = []
    for name, shape in (("kivi4", (32, 2, 8, 4096, 128)), ("kivi2", (4, 2, 3, 1001, 96)), ("k8v4", (32, 2, 8, 4096, 128))):
        kernel = kernel_for(name)
        lay = kernel.layout(shape, torch.bfloat16)
        for op in ("encode", "decode"):
            if name == "k8v4":
                _, meta = kernel._meta(lay, torch.bfloat16, op)
                launches = [(getattr(k8v4_kernels, f"k8v4_{op}_kernel"), {**meta, "NATIVE": True})]
            else:
                launches = []
                for part in ("keys", "values"):
                    _, args, meta = getattr(kernel, f"_{part}_args")(lay, op)
                    extra = {"LIMIT": 1.0, "CLAMP": False} if op == "decode" else {}
                    launches.append((getattr(kivi_kernels, f"{part}_{op}_kernel"),
                                     {**args, **meta, **kernel._common(lay, torch.bfloat16), **extra, "NATIVE": True}))
            for fn, values in launches:
                warps = values.pop("num_warps", 1)
                values.pop("enable_fp_fusion", None)
                ptx = build(fn, {**ptrs, **values}, warps)
                label = f"{name} {fn.__name__}"
                if re.search(r"\bfma\.", ptx):
                    problems.append(f"{label}: fused multiply-add in the PTX")
                if op == "encode" and "max.NaN.f32" not in ptx:
                    problems.append(f"{label}: no NaN-keeping maximum")
    return problems


@pytest.mark.skipif(GPU, reason="the gpu tests compile and run the kernels for real")
def test_kernels_compile_for_the_gpu_without_one():
    import os
    import subprocess
    import sys
    from pathlib import Path

    import triton

    if not (Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas").exists():
        pytest.skip("this triton has no bundled ptxas")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    code = "import test_kernels_kivi as t; p = t.compile_for_sm90(); print(p); raise SystemExit(bool(p))"
    run = subprocess.run([sys.executable, "-W", "ignore", "-c", code], cwd=Path(__file__).parent, env=env,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-4000:]


def _layer(kv, i):
    from kvwire.codecs import LayerKV
    from kvwire.codecs.base import LayerContext

    n, _, h, s, d = kv.shape
    host = kv.cpu()
    return LayerKV(host[i, 0], host[i, 1]), LayerContext(i, n, kv.dtype, (h, s, d))


@pytest.mark.gpu
@pytest.mark.skipif(not GPU, reason="needs a CUDA device")
@pytest.mark.parametrize("name,params", [("kivi2", {}), ("kivi4", {}), ("kivi4", {"residual": 32}),
                                         ("kivi4", {"value_group_size": 0}), ("k8v4", {})])
def test_compiled_kernels_on_the_gpu(name, params):
    """4 layers x 8 heads x 4096 tokens x 128, bf16 and fp16: the first and last layer against the
    CPU codec, every layer against the eager baseline (and against the CPU codec wherever the eager
    baseline disagrees: eager CUDA ops promise no rounding), the GPU-only code paths (native
    rounding, NaN-keeping maxima, bf16 casts); then odd shapes."""
    kernel = kernel_for(name, params)
    for dtype in (torch.bfloat16, torch.float16):
        kv = random_cache(layers=4, heads=8, seq=4096, dim=128, dtype=dtype, seed=11)
        fused = kernel.encode(kv)
        eager = kernel.encode_eager(kv)
        assert eager.offsets == fused.offsets
        differ = [i for i in range(4) if not torch.equal(eager.layer(i), fused.layer(i))]
        result = conformance(kernel, kv, layers=sorted({0, 3, *differ}), payloads=fused)
        assert result.identical and result.decode_identical, f"{name} {dtype}"
        shape = tuple(kv.shape)
        assert torch.equal(kernel.decode(fused, shape, dtype), kernel.decode_eager(fused, shape, dtype))
        bad = kv.clone()
        bad[2, 1, 3, 7, 9] = float("nan")  # a quantized value (every codec here quantizes token 7)
        with pytest.raises(KVError, match="NaN/Inf"):
            kernel.encode(bad)
    for dim, seq, dtype in ((96, 1001, torch.float16), (64, 333, torch.bfloat16), (256, 160, torch.float32)):
        kv = random_cache(layers=3, heads=3, seq=seq, dim=dim, dtype=dtype, seed=dim)
        result = conformance(kernel, kv)
        assert result.identical and result.decode_identical, f"{name} {dim} {seq} {dtype}"
