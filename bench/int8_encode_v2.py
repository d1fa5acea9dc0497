"""Experiment toward kernels version 2 (bench/NOTES.md): per-token int8 encode from 2D [BLOCK_R, D]
tiles, without the size-4 reductions of version 1 that go through shared memory.

Variant ``split``: code words built with ``tl.reshape`` + ``tl.split`` and stored whole (4-byte).
Variant ``bytes``: codes stored byte by byte straight from the 2D tile.
Variant ``grid2d`` (``--grid2d``): see ``encode_int8_v3``.
All must write exactly version 1's payload (which is byte-identical to the CPU codec); the script
checks that, prints each variant's registers, shared memory and PTX access widths, and times it
against version 1 and a device copy on Llama-3.1-8B's shape at 8192 tokens (bf16). Needs a GPU.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "lib"))

import torch  # noqa: E402
import triton  # noqa: E402
import triton.language as tl  # noqa: E402

from kvwire.kernels.jit import rint  # noqa: E402
from kvwire.kernels.token.jit import _row_index  # noqa: E402

SHAPE = (32, 2, 8, 8192, 128)


@triton.jit
def _int8_rows(x):
    """Rows of float32 ``x`` [R, D] -> (fp16 scales, int32 codes in -127..127), exactly as version 1."""
    amax = tl.max(tl.abs(x), axis=1)
    amax = amax + tl.where(tl.max((x != x).to(tl.int32), axis=1) > 0, float("nan"), 0.0)
    scale16 = tl.math.div_rn(amax, 127.0).to(tl.float16)
    s = scale16.to(tl.float32)
    inv = tl.where(s > 0, tl.math.div_rn(tl.full(s.shape, 1.0, tl.float32), s), 0.0)
    return scale16, tl.minimum(tl.maximum(rint(x * inv[:, None]), -127.0), 127.0).to(tl.int32)


@triton.jit
def encode_int8_v2(x_ptr, u8_ptr, i32_ptr, f16_ptr, n_rows, rows_per_tensor, LAYER_BYTES, CODES_OFF, CODES_STRIDE,
                   SCALES_OFF, SCALES_STRIDE, D: tl.constexpr, BLOCK_R: tl.constexpr, SPLIT: tl.constexpr):
    row_ok, rows64, kv, i, base = _row_index(tl.program_id(0), n_rows, rows_per_tensor, LAYER_BYTES, BLOCK_R)
    col = tl.arange(0, D)
    x = tl.load(x_ptr + rows64[:, None] * D + col[None, :], mask=row_ok[:, None], other=0.0).to(tl.float32)
    scale16, q = _int8_rows(x)
    q = q & 0xFF
    at = base + CODES_OFF + kv * CODES_STRIDE + i * D
    if SPLIT:
        a, b = tl.split(tl.reshape(q, [BLOCK_R, D // 4, 2, 2]))  # bytes 4w+2p and 4w+2p+1
        lo, hi = tl.split(a | (b << 8))  # half-words 2w and 2w+1
        w = tl.arange(0, D // 4)
        tl.store(i32_ptr + (at // 4)[:, None] + w[None, :], lo | (hi << 16), mask=row_ok[:, None])
    else:
        tl.store(u8_ptr + at[:, None] + col[None, :], q.to(tl.uint8), mask=row_ok[:, None])
    tl.store(f16_ptr + (base + SCALES_OFF + kv * SCALES_STRIDE) // 2 + i, scale16, mask=row_ok)


@triton.jit
def encode_int8_v3(x_ptr, u8_ptr, f16_ptr, rows_per_tensor, LAYER_BYTES, CODES_OFF, CODES_STRIDE, SCALES_OFF,
                   SCALES_STRIDE, D: tl.constexpr, BLOCK_R: tl.constexpr, BLOCKS: tl.constexpr,
                   STAGES: tl.constexpr):
    """Variant ``grid2d``: a 2D grid (row blocks, layer*2 + kv) with no per-row div/mod, each program
    looping over BLOCKS row blocks with software pipelining (STAGES), codes stored as bytes."""
    t = tl.program_id(1)
    base = (t // 2).to(tl.int64) * LAYER_BYTES
    codes0 = base + CODES_OFF + (t % 2) * CODES_STRIDE
    scales0 = (base + SCALES_OFF + (t % 2) * SCALES_STRIDE) // 2
    x0 = x_ptr + t.to(tl.int64) * rows_per_tensor * D
    col = tl.arange(0, D)
    for b in tl.range(0, BLOCKS, num_stages=STAGES):
        i = (tl.program_id(0) * BLOCKS + b) * BLOCK_R + tl.arange(0, BLOCK_R)
        ok = i < rows_per_tensor
        x = tl.load(x0 + i[:, None] * D + col[None, :], mask=ok[:, None], other=0.0).to(tl.float32)
        scale16, q = _int8_rows(x)
        tl.store(u8_ptr + codes0 + i[:, None] * D + col[None, :], q.to(tl.uint8), mask=ok[:, None])
        tl.store(f16_ptr + scales0 + i, scale16, mask=ok)


def sweep_grid2d(kv, v1, lay, moved, copy, do_bench, header_tensor, triton_cdiv, ptx_accesses) -> None:
    off = lay.offsets()
    for block_r in (8, 16):
        for blocks in (1, 4, 16):
            for stages in (1, 2, 3):
                for warps in (1, 2):
                    out = torch.full_like(v1, 0xAB)
                    out.view(SHAPE[0], lay.layer_bytes)[:, :len(lay.header)] = header_tensor(lay.header, "cuda")
                    grid = (triton_cdiv(lay.rows, block_r * blocks), SHAPE[0] * 2)

                    def launch():
                        return encode_int8_v3[grid](
                            kv, out, out.view(torch.float16), lay.rows, lay.layer_bytes, off["k_codes"],
                            off["v_codes"] - off["k_codes"], off["k_scales"], off["v_scales"] - off["k_scales"],
                            D=SHAPE[-1], BLOCK_R=block_r, BLOCKS=blocks, STAGES=stages, num_warps=warps,
                            enable_fp_fusion=False)

                    k = launch()
                    torch.cuda.synchronize()
                    same = torch.equal(out, v1)
                    t = do_bench(launch, warmup=25, rep=200, return_mode="median")
                    widths = ", ".join(f"{a}.{v}.{w}:{n}" for (a, v, w), n in sorted(ptx_accesses(k.asm["ptx"]).items()))
                    print(f"grid2d BLOCK_R {block_r:2d} blocks {blocks:2d} stages {stages} warps {warps}: {t:.3f} ms, "
                          f"{moved / t / 1e6 / copy:.2f} of copy, identical {same}, regs {k.n_regs}, "
                          f"shared {k.metadata.shared} B; {widths}", flush=True)


def main() -> int:
    if not torch.cuda.is_available():
        print("needs a CUDA device")
        return 2
    from triton.testing import do_bench

    from kvwire.kernels.launch import header_tensor, triton_cdiv
    from kvwire.kernels.token import kernel as kernels
    from kvwire.kernels.token.layout import token_layout
    from kvwire.kernels.bench import copy_bandwidth

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from profile_kernels import ptx_accesses

    copy = copy_bandwidth(do_bench)
    kv = (torch.randn(SHAPE, device="cuda") * torch.rand(SHAPE[:-1] + (1,), device="cuda") * 4).to(torch.bfloat16)
    lay = token_layout("int8", SHAPE)
    off = lay.offsets()
    v1 = kernels.encode_cache("int8", kv)
    moved = kv.numel() * 2 + v1.numel()
    t1 = do_bench(lambda: kernels.encode_cache("int8", kv, out=v1, check=False), warmup=25, rep=200,
                  return_mode="median")
    print(f"copy {copy:.0f} GB/s; version 1: {t1:.3f} ms, {moved / t1 / 1e6 / copy:.2f} of copy")
    if "--grid2d" in sys.argv:
        sweep_grid2d(kv, v1, lay, moved, copy, do_bench, header_tensor, triton_cdiv, ptx_accesses)
        return 0
    n_rows = SHAPE[0] * 2 * lay.rows
    for split in (True, False):
        for block_r in (4, 8, 16, 32):
            for warps in (1, 2, 4, 8):
                out = torch.full_like(v1, 0xAB)  # poisoned: every byte must be written
                out.view(SHAPE[0], lay.layer_bytes)[:, :len(lay.header)] = header_tensor(lay.header, "cuda")

                def launch():
                    return encode_int8_v2[(triton_cdiv(n_rows, block_r),)](
                        kv, out, out.view(torch.int32), out.view(torch.float16), n_rows, lay.rows, lay.layer_bytes,
                        off["k_codes"], off["v_codes"] - off["k_codes"], off["k_scales"],
                        off["v_scales"] - off["k_scales"], D=SHAPE[-1], BLOCK_R=block_r, SPLIT=split,
                        num_warps=warps, enable_fp_fusion=False)

                k = launch()
                torch.cuda.synchronize()
                same = torch.equal(out, v1)
                t = do_bench(launch, warmup=25, rep=200, return_mode="median")
                acc = ptx_accesses(k.asm["ptx"])
                widths = ", ".join(f"{a}.{v}.{w}:{n}" for (a, v, w), n in sorted(acc.items()))
                print(f"{'split' if split else 'bytes':5} BLOCK_R {block_r:2d} warps {warps}: {t:.3f} ms, "
                      f"{moved / t / 1e6 / copy:.2f} of copy, identical {same}, regs {k.n_regs}, "
                      f"shared {k.metadata.shared} B; {widths}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
