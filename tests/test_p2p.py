"""The two-process prefill -> decode transfer on the CPU (gloo): what arrives is what the codec
decodes, byte for byte; identity arrives exact. NCCL on two GPUs runs from bench/p2p_nccl.py."""

import pytest
import torch
import torch.multiprocessing as mp

from kvwire.p2p import P2PError, layer_payload_bytes, recv_cache

SHAPE = (3, 2, 2, 40, 16)


def _worker(rank, init_method, codec, pipelined, queue):
    from kvwire import p2p

    p2p.init(rank, 2, "gloo", init_method)
    g = torch.Generator().manual_seed(0)
    kv = (torch.randn(SHAPE, generator=g) * 3).to(torch.bfloat16)
    results = p2p.transfer(rank, kv if rank == 0 else None, SHAPE, torch.bfloat16, codec, pipelined=pipelined,
                           repeats=1)
    if rank == 1:
        # a numpy copy travels by value: a torch tensor is shared through this process, which may exit first
        queue.put((results[0].seconds, results[0].wire_bytes, p2p.transfer.last.float().numpy().copy()))
    torch.distributed.destroy_process_group()


def _run(tmp_path, codec, pipelined):
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    init_method = f"file://{tmp_path}/store-{codec}-{pipelined}"
    procs = [ctx.Process(target=_worker, args=(r, init_method, codec, pipelined, queue)) for r in range(2)]
    for p in procs:
        p.start()
    seconds, wire, got = queue.get(timeout=60)
    got = torch.from_numpy(got)
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    return seconds, wire, got


@pytest.mark.parametrize("codec,pipelined", [("identity", True), ("int8", True), ("int8", False), ("int4", True)])
def test_gloo_transfer_delivers_the_codecs_decoding(tmp_path, codec, pipelined):
    from kvwire.kernels.reference import decode_cache_reference, encode_cache_reference

    seconds, wire, got = _run(tmp_path, codec, pipelined)
    g = torch.Generator().manual_seed(0)
    kv = (torch.randn(SHAPE, generator=g) * 3).to(torch.bfloat16)
    if codec == "identity":
        expected = kv.float()
    else:
        expected = decode_cache_reference(codec, encode_cache_reference(codec, kv), SHAPE, torch.bfloat16).float()
    assert torch.equal(got, expected)
    assert wire == layer_payload_bytes(codec, SHAPE) * SHAPE[0] and seconds > 0
    if codec != "identity":
        assert wire < kv.numel() * 2


def test_unknown_codec_is_refused_before_any_communication():
    with pytest.raises(P2PError, match="unknown p2p codec 'zstd'"):
        recv_cache(SHAPE, torch.bfloat16, "zstd")
