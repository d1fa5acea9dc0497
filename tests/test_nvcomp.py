"""The optional nvCOMP stage: clear errors where it cannot run, lossless where it can (GPU + wheel)."""

import pytest
import torch

from kvwire.errors import CodecError, KVError
from kvwire.kernels import nvcomp

RUNNABLE = torch.cuda.is_available() and nvcomp.available()


def test_unknown_algorithm_and_missing_gpu_or_package_are_named():
    with pytest.raises(CodecError, match="unknown nvCOMP algorithm 'Brotli'"):
        nvcomp.NvcompStage("Brotli")
    if not RUNNABLE:
        with pytest.raises(KVError, match="nvidia-nvcomp-cu13|CUDA device"):
            nvcomp.NvcompStage("ANS")


@pytest.mark.gpu
@pytest.mark.skipif(not RUNNABLE, reason="needs a CUDA device and nvidia-nvcomp-cu13")
@pytest.mark.parametrize("algorithm", nvcomp.ALGORITHMS)
def test_nvcomp_is_lossless_on_kernel_payloads(algorithm):
    from kvwire.kernels.base import kernel_for

    g = torch.Generator(device="cuda").manual_seed(0)
    kv = (torch.randn(4, 2, 2, 512, 64, device="cuda", generator=g) *
          torch.rand(4, 2, 2, 512, 1, device="cuda", generator=g)).to(torch.bfloat16)
    payloads = kernel_for("int4").encode(kv)
    stage = nvcomp.NvcompStage(algorithm)
    comp = stage.compress(payloads.data)
    assert comp.dtype == torch.uint8 and 0 < comp.numel()
    assert torch.equal(stage.decompress(comp), payloads.data)
    per_layer = stage.compress_payloads(payloads)
    assert per_layer.n_layers == 4
    for i in range(4):
        assert torch.equal(stage.decompress(per_layer.layer(i).clone()), payloads.layer(i))
    # a uint8 view of a bf16 cache (not an owning tensor) is accepted too
    raw = kv.reshape(-1).view(torch.uint8)
    assert torch.equal(stage.decompress(stage.compress(raw)), raw)
