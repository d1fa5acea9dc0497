"""Where the per-token kernels lose bandwidth: registers, spills and the width of global loads and
stores in the compiled PTX, for each (codec, op) on Llama-3.1-8B's shape at 8192 tokens (bf16).
Under Nsight Compute the same launches give the hardware counters:

    ncu --clock-control none --kernel-name regex:'(en|de)code_kernel' --launch-skip 0 --launch-count 6 \
        --section SpeedOfLight --section Occupancy --section LaunchStats python3 bench/profile_kernels.py

Needs a CUDA device (bench/NOTES.md records what it printed).
"""

from __future__ import annotations

import re
import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "lib"))

import torch  # noqa: E402

SHAPE = (32, 2, 8, 8192, 128)
ACCESS = re.compile(r"\b(ld|st)\.global(?:\.[a-z]+)*?(\.v[248])?\.([busf]\d+)\b")


def ptx_accesses(ptx: str) -> Counter:
    """Global loads and stores in the PTX by width: ('ld', 'v4', 'b32') -> count."""
    return Counter((m.group(1), (m.group(2) or ".v1")[1:], m.group(3)) for m in ACCESS.finditer(ptx))


def main() -> int:
    if not torch.cuda.is_available():
        print("needs a CUDA device")
        return 2
    from kvwire.kernels.launch import header_tensor, triton_cdiv
    from kvwire.kernels.token import kernel as kernels
    from kvwire.kernels.token.jit import decode_kernel, encode_kernel
    from kvwire.kernels.token.kernel import _args, _fp_args, _words_view
    from kvwire.kernels.token.layout import token_layout

    kv = torch.randn(SHAPE, device="cuda").to(torch.bfloat16)
    n_layers = SHAPE[0]
    for name in ("int8", "int4", "fp8_e4m3"):
        lay = token_layout(name, SHAPE)
        out = kernels.payload_buffer(name, SHAPE, "cuda")
        out.view(n_layers, lay.layer_bytes)[:, :len(lay.header)] = header_tensor(lay.header, "cuda")
        n_rows = n_layers * 2 * lay.rows
        a = _args(name, lay, kernels.TILE["encode"])
        enc = encode_kernel[(triton_cdiv(lay.rows, a["BLOCK_R"]), n_layers * 2)](
            kv, out, _words_view(out), out.view(torch.float16), n_rows, lay.rows, **a, **_fp_args("encode"))
        dec_out = torch.empty_like(kv)
        d = _args(name, lay, kernels.TILE["decode"])
        dec = decode_kernel[(triton_cdiv(lay.rows, d["BLOCK_R"]), n_layers * 2)](
            out, _words_view(out), out.view(torch.float16), dec_out.view(torch.int16), n_rows, lay.rows, **d,
            OUT_BF16=True, LIMIT=torch.finfo(torch.bfloat16).max, **_fp_args("decode"))
        torch.cuda.synchronize()
        for op, k, args in (("encode", enc, a), ("decode", dec, d)):
            acc = ptx_accesses(k.asm["ptx"])
            accesses = ", ".join(f"{kind}.{vec}.{w}:{n}" for (kind, vec, w), n in sorted(acc.items()))
            print(f"{name:9} {op}: BLOCK_R {args['BLOCK_R']}, WORDS {args['WORDS']}, regs {k.n_regs}, "
                  f"spills {k.n_spills}, shared {k.metadata.shared} B; global accesses in PTX: {accesses}",
                  flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
