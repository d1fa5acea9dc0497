"""cachegen's ``entropy="rans_lanes"`` on the device: the whole payload built and read there (no host stage).

Encode (``encode_payloads``), after ``CacheGenKernel.encode_symbols``:
  1. count tables of every stream on the device (one ``bincount`` for the anchors, one for the deltas),
     rescaled to uint8 exactly as ``codecs/cachegen._count_tables`` and quantized to 14-bit
     frequencies exactly as ``codecs/rans_lanes.quantize`` (integer torch ops);
  2. ``rans_lanes_encode_kernel`` (one launch for the anchor streams, one for the delta streams): every
     lane's words into its scratch region (one int16 slot per symbol, the worst case), its final state
     and word count;
  3. one device->host copy of the lane states and counts (a few bytes per lane): the streams' coded
     sizes, the CPU codec's "bit-packed if not smaller" choice, the layers' section tables;
  4. the payload put together by gathers on the device: section tables, mode bytes and lane headers
     (host bytes, one copy), float16 scales, uint8 tables, the lanes' words (a compaction: each lane's
     ``count`` words, at prefix sums of the counts) and, for streams that stay bit-packed,
     ``pack_stream_kernel``'s bytes.
Decode (``decode_payloads``): the section tables, stream mode bytes and lane headers are read to the
host (two small copies) and checked as ``rans_lanes.check_header`` does; the tables are gathered and
quantized on the device, ``rans_lanes_decode_kernel`` decodes every lane stream into the symbol
tensors (bit-packed streams: ``bitpack.unpack`` on the device), and ``decode_symbols`` dequantizes.
A payload with a constriction (``rans``) stream is left to the host decoder (``None``).

Hostile payloads: every length and lane count is checked on the host before anything is allocated
from it; what only the decode can tell (a lane reading past its words, words left over, a wrong
final state, an all-zero table) is counted by the kernel and raised as ``WireError`` after one sync
(with ``check``; ``check=False`` trusts the payload, as for the other entropy stages).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
import triton

from ...codecs import rans_lanes as rl
from ...codecs.base import section_header
from ...codecs.bitpack import packed_size, unpack
from ...codecs.cachegen import _MODE_LANES, _MODE_PACKED, _MODE_RANS, _TABLE_MAX
from ...errors import WireError
from ..base import GpuPayloads
from ..launch import interpreted
from .jit import pack_stream_kernel
from .layout import CacheGenSymbols
from .rans_jit import DESC, ROW, rans_lanes_decode_kernel, rans_lanes_encode_kernel

N_SECTIONS = 10
HEAD = len(section_header([0] * N_SECTIONS))  # bytes of a layer's section table


@dataclass(frozen=True)
class Stream:
    """One symbol stream of the cache: layer, K/V, anchors (0) or deltas (1)."""

    layer: int
    kv: int
    kind: int
    n: int  # symbols
    bits: int
    group: int  # symbols per table
    tables: int
    src: int  # flat offset in anchor_codes / delta_codes
    row: int  # first table row in the cache's table buffer
    n_packed: int  # bytes of the bit-packed form, mode byte included

    @property
    def alphabet(self) -> int:
        return 1 << self.bits

    @property
    def candidate(self) -> bool:
        """Whether the CPU codec tries ``rans_lanes`` (the tables and lane header are smaller than the codes)."""
        return self.n > 0 and self.tables * self.alphabet + 1 + rl.HEADER_BYTES < self.n_packed


@dataclass(frozen=True, eq=False)
class Plan:
    streams: tuple[Stream, ...]  # layer-major, then K/V, then anchors / deltas (the sections' order)
    n_rows: int  # table rows of the whole cache
    a_n: int
    d_n: int
    hd: int  # heads * head_dim (a scale section holds 2 * hd bytes)
    delta_tables: int


@lru_cache(maxsize=64)
def plan(params_items: tuple, shape: tuple[int, ...], tiers: tuple[int, ...]) -> Plan:
    p = dict(params_items)
    n, _, h, s, d = shape
    c = p["chunk_size"]
    nc = -(-s // c)
    nd = s - nc
    ab = p["anchor_bits"]
    a_n, d_n = h * nc * d, h * d * nd
    dt = math.ceil(h * d / p["channels_per_table"])
    out = []
    for i in range(n):
        bits = p[("bits_early", "bits_mid", "bits_late")[tiers[i]]]
        for j in range(2):
            t = i * 2 + j
            out.append(Stream(i, j, 0, a_n, ab, a_n, 1, t * a_n, t, 1 + (packed_size(a_n, ab) if ab < 8 else a_n)))
            out.append(Stream(i, j, 1, d_n, bits, p["channels_per_table"] * nd, dt, t * d_n, 2 * n + t * dt,
                              1 + (packed_size(d_n, bits) if bits < 8 else d_n)))
    return Plan(tuple(out), 2 * n + 2 * n * dt, a_n, d_n, h * d, dt)


def quantize_device(tables: torch.Tensor) -> torch.Tensor:
    """``rans_lanes.quantize`` in torch (integers only): uint8 counts [R, W] -> int64 frequencies."""
    t = tables.to(torch.int64)
    occ = t > 0
    n_occ = occ.sum(dim=1, keepdim=True)
    total = t.sum(dim=1, keepdim=True)
    f = torch.where(occ, 1 + t * (rl.PROB_SCALE - n_occ) // total.clamp(min=1), 0)
    left = rl.PROB_SCALE - f.sum(dim=1)
    w = t.shape[1]
    key = t * (2 * w) + (w - 1 - torch.arange(w, device=t.device))  # unique: the first maximum wins
    top = key.argmax(dim=1)
    f[torch.arange(len(t), device=t.device), top] += torch.where(total[:, 0] > 0, left, 0)
    return f


def _tables(sym: CacheGenSymbols, pl: Plan, rows_per_table: int) -> torch.Tensor:
    """uint8 count tables [rows, 256] of every stream (``_count_tables``' rescaling), on the device."""
    n2 = len(pl.streams) // 2
    dev = sym.anchor_codes.device
    a = sym.anchor_codes.reshape(n2, -1).to(torch.int64)
    counts = [torch.bincount((a + (torch.arange(n2, device=dev) * ROW)[:, None]).reshape(-1),
                             minlength=n2 * ROW).view(n2, ROW)]
    if pl.d_n:
        hd, nd = pl.hd, pl.d_n // pl.hd
        row_table = torch.arange(hd, device=dev) // rows_per_table
        key = (torch.arange(n2, device=dev)[:, None, None] * pl.delta_tables + row_table[None, :, None]) * ROW
        dc = sym.delta_codes.reshape(n2, hd, nd).to(torch.int64) + key
        counts.append(torch.bincount(dc.reshape(-1), minlength=n2 * pl.delta_tables * ROW).view(-1, ROW))
    else:
        counts.append(torch.zeros((n2 * pl.delta_tables, ROW), dtype=torch.int64, device=dev))
    counts = torch.cat(counts)
    top = counts.amax(dim=1, keepdim=True).clamp(min=1)
    scaled = (counts * _TABLE_MAX + top // 2) // top
    return torch.where(counts > 0, scaled.clamp(min=1), 0).to(torch.uint8)


def _freq_cum(t8: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    f = quantize_device(t8)
    return f.to(torch.int32).contiguous(), (torch.cumsum(f, dim=1) - f).to(torch.int32).contiguous()


def _gather(out: torch.Tensor, src: torch.Tensor, src_at, dst_at, lengths) -> None:
    """``out[dst_at[k] : + lengths[k]] = src[src_at[k] : + lengths[k]]`` for every segment k (host int arrays)."""
    lengths = np.asarray(lengths, dtype=np.int64)
    total = int(lengths.sum())
    if total == 0:
        return
    dev = out.device
    seg_t = torch.repeat_interleave(torch.arange(len(lengths), device=dev), torch.from_numpy(lengths).to(dev),
                                    output_size=total)
    first = torch.from_numpy(np.cumsum(lengths) - lengths).to(dev)
    within = torch.arange(total, device=dev) - first[seg_t]
    s = torch.from_numpy(np.asarray(src_at, dtype=np.int64)).to(dev)
    d = torch.from_numpy(np.asarray(dst_at, dtype=np.int64)).to(dev)
    out[d[seg_t] + within] = src[s[seg_t] + within]


def _launch_encode(codes: torch.Tensor, streams, freq, cum, scratch, states, counts, scr_at, caps) -> None:
    if not streams:
        return
    desc = np.zeros((len(streams), DESC), dtype=np.int64)
    for k, st in enumerate(streams):
        desc[k, :7] = (st.src, st.n, st.group, st.row, scr_at[k], caps[k], st.bits)
    rans_lanes_encode_kernel[(len(streams),)](
        codes, freq, cum, torch.from_numpy(desc).to(codes.device), scratch, states, counts,
        LANES=rl.LANES, PROB_BITS=rl.PROB_BITS, RANS_L=rl.RANS_L, **_opts())


def _opts() -> dict:
    return {} if interpreted() else {"num_warps": 1}


def encode_payloads(kernel, sym: CacheGenSymbols) -> GpuPayloads:
    """The ``entropy="rans_lanes"`` payloads of ``sym``'s cache, on its device (the CPU codec's bytes)."""
    shape = tuple(sym.shape)
    pl = plan(tuple(sorted(kernel.params.items())), shape, kernel._tiers(shape))
    dev = sym.anchor_codes.device
    a_codes, d_codes = sym.anchor_codes.contiguous(), sym.delta_codes.contiguous()
    cand_q = [q for q, st in enumerate(pl.streams) if st.candidate]
    cand = [pl.streams[q] for q in cand_q]
    t8 = _tables(sym, pl, kernel.params["channels_per_table"]) if cand else None
    lanes_of: dict[int, tuple] = {}  # stream index -> (coded size, states, counts, scratch offset, capacity)
    if cand:
        freq, cum = _freq_cum(t8)
        caps = [-(-st.n // rl.LANES) for st in cand]
        scr_at = np.concatenate(([0], np.cumsum([rl.LANES * c for c in caps])[:-1])).astype(np.int64)
        scratch = torch.empty(int(sum(rl.LANES * c for c in caps)), dtype=torch.int16, device=dev)
        states = torch.empty((len(cand), rl.LANES), dtype=torch.int64, device=dev)
        counts = torch.empty((len(cand), rl.LANES), dtype=torch.int32, device=dev)
        for kind, codes in ((0, a_codes), (1, d_codes)):  # one launch per symbol tensor
            ks = [k for k, st in enumerate(cand) if st.kind == kind]
            if ks:
                sub_s = torch.empty((len(ks), rl.LANES), dtype=torch.int64, device=dev)
                sub_c = torch.empty((len(ks), rl.LANES), dtype=torch.int32, device=dev)
                _launch_encode(codes, [cand[k] for k in ks], freq, cum, scratch, sub_s, sub_c,
                               scr_at[ks], [caps[k] for k in ks])
                idx = torch.as_tensor(ks, device=dev)
                states[idx], counts[idx] = sub_s, sub_c
        host = torch.cat([states, counts.to(torch.int64)], dim=1).cpu().numpy()  # the one sync
        for k, (q, st) in enumerate(zip(cand_q, cand)):
            cnt = host[k, rl.LANES:]
            size = 1 + st.tables * st.alphabet + rl.HEADER_BYTES + 2 * int(cnt.sum())
            if size < st.n_packed:  # the CPU codec's rule: bit-packed unless strictly smaller
                lanes_of[q] = (size, host[k, :rl.LANES], cnt, int(scr_at[k]), caps[k])

    # section lengths and the payload layout
    hd2 = 2 * pl.hd
    nd = pl.d_n // pl.hd if pl.hd else 0
    offsets, layer_lengths = [0], []
    for i in range(len(pl.streams) // 4):
        lengths = []
        for j in range(2):
            qa, qd = 4 * i + 2 * j, 4 * i + 2 * j + 1
            lengths += [hd2, hd2, lanes_of[qa][0] if qa in lanes_of else pl.streams[qa].n_packed,
                        hd2 if nd else 0, lanes_of[qd][0] if qd in lanes_of else pl.streams[qd].n_packed]
        layer_lengths.append(lengths)
        offsets.append(offsets[-1] + HEAD + sum(lengths))
    out = torch.empty(offsets[-1], dtype=torch.uint8, device=dev)

    meta = bytearray()
    seg = {k: ([], [], []) for k in ("meta", "scale", "table", "word", "packed")}

    def add(kind, src_at, dst_at, length):  # scalars or equal-length int arrays
        for k, v in enumerate((src_at, dst_at, length)):
            seg[kind][k].append(np.atleast_1d(np.asarray(v, dtype=np.int64)))

    def add_meta(data: bytes, dst_at: int):
        add("meta", len(meta), dst_at, len(data))
        meta.extend(data)

    packed_jobs = {0: [], 1: []}  # kind -> (src, dst in the packed buffer, n, bits)
    packed_size_total = 0
    packed_at: list[tuple[int, int, int]] = []  # (packed buffer offset, payload offset, length)
    scale_block = len(pl.streams) // 2 * hd2  # bytes of one of the three scale tensors
    for i, lengths in enumerate(layer_lengths):
        pos = offsets[i]
        add_meta(section_header(lengths), pos)
        pos += HEAD
        for j in range(2):
            t = i * 2 + j
            for sec in range(5):
                length = lengths[5 * j + sec]
                if sec in (0, 1, 3):
                    if length:
                        add("scale", (0 if sec == 0 else 1 if sec == 1 else 2) * scale_block + t * hd2, pos, length)
                else:
                    q = 4 * i + 2 * j + (0 if sec == 2 else 1)
                    st = pl.streams[q]
                    if q in lanes_of:
                        size, st_states, cnt, base, cap = lanes_of[q]
                        add_meta(bytes([_MODE_LANES]), pos)
                        ta = st.tables * st.alphabet
                        g = np.arange(st.tables)
                        add("table", (st.row + g) * ROW, pos + 1 + g * st.alphabet, np.full(st.tables, st.alphabet))
                        add_meta(st_states.astype("<u4").tobytes() + cnt.astype("<u4").tobytes(), pos + 1 + ta)
                        w_dst = pos + 1 + ta + rl.HEADER_BYTES + 2 * (np.cumsum(cnt) - cnt)
                        w_src = 2 * (base + np.arange(rl.LANES) * cap + cap - cnt)
                        add("word", w_src, w_dst, 2 * cnt)  # the compaction: lane j's words at prefix sums
                    else:
                        add_meta(bytes([_MODE_PACKED]), pos)
                        if st.n:
                            packed_jobs[st.kind].append((st.src, packed_size_total, st.n, st.bits))
                            packed_at.append((packed_size_total, pos + 1, length - 1))
                            packed_size_total += length - 1
                pos += length
    seg = {k: [np.concatenate(v) if v else np.zeros(0, dtype=np.int64) for v in lists] for k, lists in seg.items()}
    _gather(out, torch.frombuffer(meta, dtype=torch.uint8).to(dev), *seg["meta"])
    scales = torch.stack([sym.anchor_scale, sym.anchor_zero, sym.delta_scale]).contiguous().view(torch.uint8)
    _gather(out, scales.reshape(-1), *seg["scale"])
    if len(seg["table"][0]):
        _gather(out, t8.reshape(-1), *seg["table"])
    if len(seg["word"][0]):
        _gather(out, scratch.view(torch.uint8), *seg["word"])
    if packed_at:
        packed = torch.empty(packed_size_total, dtype=torch.uint8, device=dev)
        for kind, codes in ((0, a_codes), (1, d_codes)):
            jobs = packed_jobs[kind]
            if jobs:
                table = torch.as_tensor(jobs, dtype=torch.int64, device=dev)
                blocks = 256 if not interpreted() else 4096
                longest = max(job[2] for job in jobs)
                pack_stream_kernel[(triton.cdiv(triton.cdiv(longest, 8), blocks), len(jobs))](
                    codes, packed, table, BLOCKS=blocks, **({} if interpreted() else {"num_warps": 4}))
        _gather(out, packed, *zip(*packed_at))
    return GpuPayloads(out, tuple(offsets))


def _what(kernel) -> str:
    return f"codec {kernel.name!r}"


def decode_payloads(kernel, payloads: GpuPayloads, shape, dtype, *, check: bool = True):
    """The decoded cache of ``rans_lanes`` (or bit-packed) payloads, on their device; ``None`` where a
    stream is constriction-coded (mode 1: the caller's host decoder takes the payload)."""
    shape = tuple(shape)
    what = _what(kernel)
    n = shape[0]
    pl = plan(tuple(sorted(kernel.params.items())), shape, kernel._tiers(shape))
    data = payloads.data
    dev = data.device
    if payloads.n_layers != n:
        raise WireError(f"{what}: {payloads.n_layers} layer payloads for a cache of {n} layers")
    sizes = np.diff(np.asarray(payloads.offsets, dtype=np.int64))
    if (sizes < HEAD).any():
        raise WireError(f"{what}: payload too short for its section table ({int(sizes.min())} bytes)")
    starts = np.asarray(payloads.offsets[:-1], dtype=np.int64)
    head = data[torch.from_numpy((starts[:, None] + np.arange(HEAD)).reshape(-1)).to(dev)].cpu().numpy()
    head = head.reshape(n, HEAD)
    count = head[:, :4].copy().view("<u4")[:, 0]
    if (count != N_SECTIONS).any():
        raise WireError(f"{what}: payload has {int(count[count != N_SECTIONS][0])} sections, expected {N_SECTIONS}")
    lengths = head[:, 4:].copy().view("<u8").astype(np.uint64)
    if (lengths.sum(axis=1, dtype=np.float64) + HEAD != sizes).any() or (lengths > sizes.max()).any():
        raise WireError(f"{what}: payload section lengths do not add up to the payload size")
    lengths = lengths.astype(np.int64)
    sec_at = starts[:, None] + HEAD + np.cumsum(lengths, axis=1) - lengths  # [n, 10]
    hd2 = 2 * pl.hd
    nd = pl.d_n // pl.hd if pl.hd else 0
    want = np.array([hd2, hd2, -1, hd2 if nd else 0, -1] * 2)
    bad = (want >= 0) & (lengths != want)
    if bad.any():
        i, k = np.argwhere(bad)[0]
        raise WireError(f"{what}: scale section of {int(lengths[i, k])} bytes, expected {int(want[k])}")
    # every stream's mode byte and (where it fits) its lane header, in one copy
    q_sec = np.array([2, 4, 7, 9])
    s_at = sec_at[:, q_sec].reshape(-1)  # stream order: layer, K anchor, K delta, V anchor, V delta
    s_len = lengths[:, q_sec].reshape(-1)
    if (s_len == 0).any():
        raise WireError(f"{what}: empty symbol stream")
    ta = np.array([st.tables * st.alphabet for st in pl.streams], dtype=np.int64)
    fits = s_len >= 1 + ta + rl.HEADER_BYTES
    idx = np.concatenate([s_at[:, None], np.where(fits[:, None], s_at[:, None] + 1 + ta[:, None] +
                                                  np.arange(rl.HEADER_BYTES), s_at[:, None])], axis=1)
    meta = data[torch.from_numpy(idx.reshape(-1)).to(dev)].cpu().numpy().reshape(len(s_at), -1)
    modes = meta[:, 0]
    if (modes == _MODE_RANS).any():
        return None
    a_codes = torch.empty((n, 2) + (pl.a_n,), dtype=torch.uint8, device=dev)
    d_codes = torch.empty((n, 2) + (pl.d_n,), dtype=torch.uint8, device=dev)
    lane_streams, lane_rows = {0: [], 1: []}, {0: [], 1: []}
    for q, st in enumerate(pl.streams):
        mode, length, at = int(modes[q]), int(s_len[q]), int(s_at[q])
        if st.kind == 1 and nd == 0:
            if mode != _MODE_PACKED or length != 1:
                raise WireError(f"{what}: delta sections present for a layer without deltas")
            continue
        if mode == _MODE_PACKED:
            target = (a_codes if st.kind == 0 else d_codes).view(-1)
            target[st.src:st.src + st.n] = unpack(data[at + 1:at + length], st.bits, st.n)  # checks the length
        elif mode == _MODE_LANES:
            if length < 1 + ta[q]:
                raise WireError(f"{what}: rans_lanes stream of {length - 1} bytes is shorter than its "
                                f"{st.tables} tables of {st.alphabet} symbols")
            if not fits[q]:
                raise WireError(f"{what}: rans_lanes stream of {length - 1 - int(ta[q])} bytes is shorter than "
                                f"its {rl.HEADER_BYTES}-byte lane header")
            lane = meta[q, 1:].copy().view("<u4").astype(np.int64)
            states, counts, _ = rl.check_header(lane[:rl.LANES], lane[rl.LANES:], st.n,
                                                length - 1 - int(ta[q]) - rl.HEADER_BYTES, what)
            word_at = at + 1 + int(ta[q]) + rl.HEADER_BYTES + 2 * (np.cumsum(counts) - counts)
            lane_streams[st.kind].append((st, at + 1, states, word_at, counts))
        else:
            raise WireError(f"{what}: unknown symbol stream mode {mode}")
    flags = torch.zeros(4, dtype=torch.int32, device=dev)
    if lane_streams[0] or lane_streams[1]:
        used = [(st, tab_at) for kind in (0, 1) for st, tab_at, *_ in lane_streams[kind]]
        t8 = torch.zeros((pl.n_rows, ROW), dtype=torch.uint8, device=dev)
        src, dst, ln = [], [], []
        for st, tab_at in used:
            for g in range(st.tables):
                src.append(tab_at + g * st.alphabet)
                dst.append((st.row + g) * ROW)
                ln.append(st.alphabet)
        _gather(t8.view(-1), data, src, dst, ln)
        rows = torch.as_tensor([st.row + g for st, _ in used for g in range(st.tables)], device=dev)
        flags[3] += (t8[rows].to(torch.int32).sum(dim=1) == 0).sum().to(torch.int32)
        freq, cum = _freq_cum(t8)
        for kind, codes in ((0, a_codes), (1, d_codes)):
            items = lane_streams[kind]
            if not items:
                continue
            desc = np.zeros((len(items), DESC), dtype=np.int64)
            for k, (st, *_rest) in enumerate(items):
                desc[k, :7] = (st.src, st.n, st.group, st.row, 0, 0, st.bits)
            host = np.stack([np.concatenate([it[2], it[3], it[4]]) for it in items]).astype(np.int64)
            dev_host = torch.from_numpy(host).to(dev)
            rans_lanes_decode_kernel[(len(items),)](
                data, freq, cum, torch.from_numpy(desc).to(dev), dev_host[:, :rl.LANES].contiguous(),
                dev_host[:, rl.LANES:2 * rl.LANES].contiguous(), dev_host[:, 2 * rl.LANES:].contiguous(),
                codes, flags, LANES=rl.LANES, PROB_BITS=rl.PROB_BITS, RANS_L=rl.RANS_L, **_opts())
    if check:
        f = flags.cpu().tolist()
        if f[3]:
            raise WireError(f"{what}: an rANS frequency table is all zero")
        if f[0]:
            raise WireError(f"{what}: rans_lanes: {f[0]} lane(s) ran out of words (corrupted stream)")
        if f[1]:
            raise WireError(f"{what}: rans_lanes: {f[1]} lane(s) have words left after their symbols "
                            "(corrupted stream)")
        if f[2]:
            raise WireError(f"{what}: rans_lanes: {f[2]} lane(s) do not end in the initial state (corrupted stream)")
    # the scales, straight from their sections
    scales = torch.empty((3, n, 2, pl.hd), dtype=torch.float16, device=dev)
    src, dst, ln = [], [], []
    for i in range(n):
        for j in range(2):
            for which, sec in ((0, 0), (1, 1), (2, 3)):
                if lengths[i, 5 * j + sec]:
                    src.append(int(sec_at[i, 5 * j + sec]))
                    dst.append(((which * n + i) * 2 + j) * hd2)
                    ln.append(hd2)
    if not nd:
        scales[2] = 0
    _gather(scales.view(torch.uint8).view(-1), data, src, dst, ln)
    _, _, h, s, d = shape
    nc = -(-s // kernel.params["chunk_size"])
    sym = CacheGenSymbols(shape, a_codes.view(n, 2, h, nc, d), scales[0].view(n, 2, h, d), scales[1].view(n, 2, h, d),
                          d_codes.view(n, 2, h, d, nd), scales[2].view(n, 2, h, d))
    return kernel.decode_symbols(sym, dtype, check=check)
