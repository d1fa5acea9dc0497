"""The container's byte path against a memory copy: identity, lz4 and zstd through ``wire.encode`` /
``wire.decode`` beside a same-run ``torch.clone`` of the same cache and, for lz4 and zstd, the library
called directly on the same bytes (issue 31, first goal).

Usage:
    python bench/cpu_container.py                        # random bf16 30x3x1024x64 (23.6 MB), 2 threads
    python bench/cpu_container.py --threads 1 --rounds 9
    python bench/cpu_container.py --checksums            # CRC32 (zlib) vs CRC32C vs xxHash, GB/s

Every case runs once per round, the cases interleaved (so a disturbance hits them all alike); each
case's median over the rounds is reported. MB/s are of raw KV bytes. ``clone`` clones every layer's K
and V (the cache as the codecs see it); ``frac`` is a case's MB/s over clone's. ``copy_`` copies into tensors allocated once, for scale:
clone's rate swings with the allocator's state (fresh pages fault), which the other cases share. ``direct`` rows call
``lz4.frame`` / ``zstandard`` with the stage's parameters on the payload the stage sees (each layer's
K and V bytes behind the identity section table), prepared outside the timing; ``stage/direct`` is
the container's MB/s over the library's (the goal: >= 0.9). The header names the CPU, the threads,
the OpenMP wait policy and the library versions.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time
import zlib
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "lib"))

import kvwire  # noqa: E402,F401  (first: sets OMP_WAIT_POLICY before torch loads OpenMP)
import lz4  # noqa: E402
import lz4.frame  # noqa: E402
import torch  # noqa: E402
import zstandard  # noqa: E402
from kvwire import wire  # noqa: E402
from kvwire.codecs import LayerKV, build  # noqa: E402
from kvwire.codecs.base import pack_sections, tensor_bytes  # noqa: E402


def random_cache(spec: str, seed: int = 0) -> list[LayerKV]:
    n_layers, heads, seq, dim = (int(x) for x in spec.split("x"))
    g = torch.Generator().manual_seed(seed)
    return [LayerKV(torch.randn(heads, seq, dim, generator=g).bfloat16(),
                    torch.randn(heads, seq, dim, generator=g).bfloat16()) for _ in range(n_layers)]


def cpu_name() -> str:
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    return platform.processor() or "unknown CPU"


def interleaved(cases: dict, rounds: int) -> dict[str, float]:
    """Median seconds of each case, the cases run in turn ``rounds`` times after one warm-up each."""
    for fn in cases.values():
        fn()
    samples: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(rounds):
        for name, fn in cases.items():
            t0 = time.perf_counter()
            fn()
            samples[name].append(time.perf_counter() - t0)
    return {name: statistics.median(s) for name, s in samples.items()}


def checksums(nbytes: int, rounds: int) -> None:
    buf = os.urandom(nbytes)
    cases = {"zlib.crc32 (CRC32)": lambda: zlib.crc32(buf)}
    try:
        import google_crc32c

        cases["google_crc32c.value (CRC32C)"] = lambda: google_crc32c.value(buf)
        impl = google_crc32c.implementation
    except ImportError:
        impl = "not installed"
    try:
        import xxhash

        cases["xxhash.xxh32"] = lambda: xxhash.xxh32_intdigest(buf)
        cases["xxhash.xxh64"] = lambda: xxhash.xxh64_intdigest(buf)
        cases["xxhash.xxh3_64"] = lambda: xxhash.xxh3_64_intdigest(buf)
        cases["xxhash.xxh3_128"] = lambda: xxhash.xxh3_128_intdigest(buf)
    except ImportError:
        pass
    src = torch.frombuffer(bytearray(buf), dtype=torch.uint8)
    cases["torch.clone (copy, for scale)"] = lambda: src.clone()
    times = interleaved(cases, rounds)
    print(f"# checksums of {nbytes / 1e6:.1f} MB, one call, median of {rounds}; google_crc32c: {impl}")
    print(f"{'function':<32}{'GB/s':>8}")
    for name, t in times.items():
        print(f"{name:<32}{nbytes / t / 1e9:>8.2f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--random", default="30x3x1024x64", help="LxHxSxD of a random bf16 cache")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--checksums", action="store_true", help="time the checksum functions instead")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"# CPU {cpu_name()} ({os.cpu_count()} logical CPUs), torch threads {torch.get_num_threads()}, "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}; python {platform.python_version()}, "
          f"torch {torch.__version__}, zlib {zlib.ZLIB_RUNTIME_VERSION}, lz4 {lz4.__version__} "
          f"(lib {lz4.library_version_string()}), zstandard {zstandard.__version__}")
    layers = random_cache(args.random)
    raw = sum(layer.raw_bytes for layer in layers)
    if args.checksums:
        checksums(raw, args.rounds)
        return 0
    payloads = [pack_sections([tensor_bytes(x.k), tensor_bytes(x.v)]) for x in layers]
    lz4_frames = [lz4.frame.compress(p, compression_level=0, store_size=True, content_checksum=True)
                  for p in payloads]
    zcomp, zdec = zstandard.ZstdCompressor(level=3, write_content_size=True), zstandard.ZstdDecompressor()
    zstd_frames = [zcomp.compress(p) for p in payloads]
    dst = [(torch.empty_like(x.k), torch.empty_like(x.v)) for x in layers]
    cases = {"clone": lambda: [(x.k.clone(), x.v.clone()) for x in layers],
             "copy_ (no allocation)": lambda: [(a.copy_(x.k), b.copy_(x.v)) for x, (a, b) in zip(layers, dst)]}
    sizes = {}
    for name in ("identity", "lz4", "zstd"):
        codec = build(name)
        data = wire.encode(codec, layers)
        sizes[name] = len(data)
        cases[f"{name} encode"] = lambda codec=codec: wire.encode(codec, layers)
        cases[f"{name} decode"] = lambda data=data: wire.decode(data)
    cases["lz4 direct compress"] = lambda: [lz4.frame.compress(p, compression_level=0, store_size=True,
                                                               content_checksum=True) for p in payloads]
    cases["lz4 direct decompress"] = lambda: [lz4.frame.decompress(f) for f in lz4_frames]
    cases["zstd direct compress"] = lambda: [zcomp.compress(p) for p in payloads]
    cases["zstd direct decompress"] = lambda: [zdec.decompress(f) for f in zstd_frames]
    times = interleaved(cases, args.rounds)
    mbs = {name: raw / t / 1e6 for name, t in times.items()}
    direct = {"lz4 encode": "lz4 direct compress", "lz4 decode": "lz4 direct decompress",
              "zstd encode": "zstd direct compress", "zstd decode": "zstd direct decompress"}
    print(f"# random bf16 {args.random}: {len(layers)} layers, {raw / 1e6:.1f} MB raw; "
          f"median of {args.rounds} interleaved rounds")
    print(f"{'case':<24}{'ratio':>7}{'MB/s':>9}{'frac clone':>12}{'stage/direct':>14}")
    for name, rate in mbs.items():
        codec = name.split()[0]
        ratio = f"{raw / sizes[codec]:.3f}" if codec in sizes else ""
        rel = f"{rate / mbs[direct[name]]:.2f}" if name in direct else ""
        print(f"{name:<24}{ratio:>7}{rate:>9.0f}{rate / mbs['clone']:>12.2f}{rel:>14}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
