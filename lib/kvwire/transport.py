"""Streaming the wire container over TCP: the serving connector (``send_kv`` / ``recv_kv``).

The sender writes the container (``wire.py``) piece by piece: header, one frame per layer, trailer.
An encoder thread fills a bounded queue while the sending thread drains it, so encoding layer i+1
overlaps sending layer i (``pipelined=True``; ``False`` encodes everything first: the sequential
model). The receiver verifies every piece as it lands -- header CRC, each frame's head and payload
CRC, the trailer's count and CRC of CRCs -- and hands each verified frame to a decoder thread, so
decoding layer i overlaps receiving layer i+1. A broken connection, a timeout or a bad byte raises
``TransportError`` / ``WireError`` naming what is wrong, and no partial cache is ever returned.

Example (two processes, or two threads)::

    # decode side                                  # prefill side
    with listen("10.0.0.2", 5555) as server:       send_kv(("10.0.0.2", 5555), layers, "kivi4")
        header, layers, stats = recv_kv(server)

Every wait is bounded by ``timeout`` (seconds per socket operation) and each connection by
``deadline_s``; the header is checked against ``WireLimits`` and a payload length against its layer
before any memory is allocated for it. A listening receiver serves several senders at once, so an idle
or slow peer never blocks another; with a ``key`` (``kvwire.auth``) only its holder is accepted and
every piece carries a MAC (docs/TRANSFER.md, "Threat model").
"""

from __future__ import annotations

import queue
import select
import socket
import struct
import threading
import time
import zlib
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping, Sequence

import torch

from . import auth, wire
from .auth import check_key
from .codecs import LayerKV, Pipeline, build
from .errors import KvwireError, WireError
from .limits import DEFAULT_LIMITS, WireLimits

DEFAULT_TIMEOUT_S = 30.0
DEFAULT_DEADLINE_S = 600.0  # one connection, start to acknowledgement (a 16 GB cache at 1 Gbps: 128 s)
DEFAULT_MAX_CONNECTIONS = 8
_IDLE_CHECK_S = 0.5  # how often a listening receiver with nothing to do checks its timeout
_ACK_WAIT_S = 60.0  # a received container waits this long for its call to take it before the acknowledgement
_QUEUE_DEPTH = 2  # frames encoded ahead of the socket: enough to overlap, bounded memory
_FRAME_HEAD_LEN = wire._FRAME_HEAD.size + wire._CRC.size
_EAGER_FRAME_BYTES = 16 << 20  # frames up to this are received into one buffer allocated up front


class TransportError(KvwireError):
    """The connection failed: refused, closed early, or silent past the timeout."""


@dataclass
class SendStats:
    """What one ``send_kv`` did: per-layer encode seconds and wire bytes, and the wall time."""

    encode_s: list[float] = field(default_factory=list)
    wire_bytes: list[int] = field(default_factory=list)
    total_bytes: int = 0
    wall_s: float = 0.0


@dataclass
class RecvStats:
    """What one ``recv_kv`` did: per-layer decode seconds, arrival times, and the wall time."""

    decode_s: list[float] = field(default_factory=list)
    arrived_s: list[float] = field(default_factory=list)  # since the first byte, per frame
    total_bytes: int = 0
    wall_s: float = 0.0


# ---- the process's allocator ----------------------------------------------------------------

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc mallopt parameters (malloc.h)
_MMAP_THRESHOLD_MAX = 32 << 20  # glibc refuses larger values on 64-bit hosts


def retain_freed_memory(trim_threshold: int = 1 << 30) -> bool:
    """Keep freed buffers in this process instead of handing them back to the OS (glibc only).

    By default glibc unmaps every freed block above a moving threshold and trims the heap's free top,
    so each frame a connector builds lands on fresh pages: on a 47 MB cache that is about 12,800 page
    faults per transfer and side, which doubled the identity codec's encode time inside a transfer
    (docs/TRANSFER.md, "Why a codec was slower inside a transfer"). A serving process that sends or
    receives caches all day wants its buffers kept; this sets ``M_MMAP_THRESHOLD`` to 32 MB and
    ``M_TRIM_THRESHOLD`` to ``trim_threshold`` for the whole process, so call it once at start-up,
    knowingly. Returns False (and changes nothing) where the C library is not glibc."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    ok = mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX) == 1
    return bool(ok and mallopt(_M_TRIM_THRESHOLD, min(int(trim_threshold), (1 << 31) - 1)) == 1)


# ---- connections ----------------------------------------------------------------------------

@contextmanager
def listen(host: str = "127.0.0.1", port: int = 0, *, backlog: int = 1) -> Iterator[socket.socket]:
    """A listening TCP socket (port 0: the OS picks one; ``sock.getsockname()[1]`` says which)."""
    server = socket.create_server((host, port), backlog=backlog)
    try:
        yield server
    finally:
        server.close()


def connect(address: tuple[str, int], *, timeout: float = DEFAULT_TIMEOUT_S, retries: int = 50,
            retry_wait_s: float = 0.1) -> socket.socket:
    """Connect, retrying a refused connection a bounded number of times (the receiver may be starting)."""
    last: Exception | None = None
    for _ in range(max(1, retries)):
        try:
            sock = socket.create_connection(address, timeout=timeout)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            return sock
        except (ConnectionRefusedError, socket.timeout) as exc:
            last = exc
            time.sleep(retry_wait_s)
    raise TransportError(f"cannot connect to {address[0]}:{address[1]}: {last}")


# ---- sending --------------------------------------------------------------------------------

def send_kv(target: socket.socket | tuple[str, int], layers: Sequence[LayerKV], codec: Pipeline | str,
            params: Mapping[str, Any] | None = None, *, meta: Mapping[str, Any] | None = None,
            stats: Sequence[Mapping[str, torch.Tensor]] | None = None, pipelined: bool = True,
            timeout: float = DEFAULT_TIMEOUT_S, retries: int = 50, key: bytes | None = None) -> SendStats:
    """Encode ``layers`` with ``codec`` and stream the container to ``target`` (a connected socket,
    or an address to connect to, tried ``retries`` times 0.1 s apart). Returns per-layer encode
    times and bytes. Raises ``WireError`` when the receiver refused the bytes (it says why). With
    ``key`` the sender answers the receiver's challenge and tags every piece (``kvwire.auth``)."""
    codec = build(codec, params) if isinstance(codec, str) else codec
    key = check_key(key)
    own = not isinstance(target, socket.socket)
    sock = connect(target, timeout=timeout, retries=retries) if own else target
    sock.settimeout(timeout)
    out = SendStats()
    t0 = time.perf_counter()
    try:
        mac = _client_handshake(sock, key) if key is not None else None
        pieces = _tagged(_timed_pieces(codec, layers, meta, stats, out), mac)
        try:
            if pipelined:
                _send_pipelined(sock, pieces)
            else:
                for piece in list(pieces):  # sequential: every layer encoded before the first byte leaves
                    _sendall(sock, piece)
            sock.shutdown(socket.SHUT_WR)
        except TransportError:
            sock.settimeout(min(timeout, 2.0))  # a receiver that refused says why before closing
            _await_ack(sock)
            raise
        _await_ack(sock)
    finally:
        if own:
            sock.close()
    out.total_bytes = sum(out.wire_bytes) + _header_len(codec, layers, meta) + wire._TRAILER.size
    out.wall_s = time.perf_counter() - t0
    return out


def _header_len(codec, layers, meta) -> int:
    return len(wire.header_bytes(wire.make_header(codec, layers, dict(meta or {}))))


def _timed_pieces(codec: Pipeline, layers, meta, stats, out: SendStats) -> Iterator[bytes]:
    """``wire.iter_encode``'s pieces, recording each frame's encode time and size."""
    it = wire.iter_encode(codec, layers, dict(meta or {}), stats)
    yield next(it)  # header
    for _ in range(len(layers)):
        t = time.perf_counter()
        frame = next(it)
        out.encode_s.append(time.perf_counter() - t)
        out.wire_bytes.append(len(frame))
        yield frame
    yield next(it)  # trailer


def _tagged(pieces: Iterator[bytes], mac: auth.PieceMac | None) -> Iterator[bytes]:
    """Each piece followed by its MAC when the connection is authenticated (computed on the encoder
    thread when pipelined)."""
    for piece in pieces:
        yield piece
        if mac is not None:  # sent after the piece, not joined to it: a frame is not copied again
            yield mac.tag(piece)


def _send_pipelined(sock: socket.socket, pieces: Iterator[bytes]) -> None:
    """An encoder thread fills a bounded queue; this thread sends. An encoder error is re-raised here."""
    q: queue.Queue = queue.Queue(maxsize=_QUEUE_DEPTH)
    done = object()
    stop = threading.Event()

    def encoder() -> None:
        try:
            for piece in pieces:
                while not stop.is_set():
                    try:
                        q.put(piece, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put(done)
        except BaseException as exc:  # noqa: BLE001 -- handed to the sending thread
            q.put(exc)

    thread = threading.Thread(target=encoder, name="kvwire-encoder", daemon=True)
    thread.start()
    try:
        while True:
            item = q.get()
            if item is done:
                break
            if isinstance(item, BaseException):
                raise item
            _sendall(sock, item)
    finally:
        stop.set()
        thread.join(timeout=5)


def _sendall(sock: socket.socket, data: bytes) -> None:
    try:
        sock.sendall(data)
    except socket.timeout as exc:
        raise TransportError("the receiver stopped reading: send timed out") from exc
    except OSError as exc:
        raise TransportError(f"connection lost while sending: {exc}") from exc


_ACK = b"KVOK"
_NAK = b"KVNO"


def _await_ack(sock: socket.socket) -> None:
    """The receiver answers KVOK once every byte verified, or KVNO + reason: a sender knows."""
    try:
        head = _recv_exact(sock, 4, "the receiver's acknowledgement")
    except TransportError as exc:
        raise TransportError(f"no acknowledgement from the receiver: {exc}") from exc
    if head == _ACK:
        return
    if head == _NAK:
        _read_refusal(sock)
    raise TransportError(f"unexpected acknowledgement {head!r}")


def _read_refusal(sock: socket.socket) -> None:
    (n,) = struct.unpack("<I", _recv_exact(sock, 4, "the refusal's length"))
    reason = _recv_exact(sock, min(n, 4096), "the refusal").decode(errors="replace")
    raise WireError(f"the receiver refused the container: {reason}")


# ---- receiving ------------------------------------------------------------------------------

def recv_kv(source: socket.socket, *, timeout: float = DEFAULT_TIMEOUT_S, pipelined: bool = True,
            limits: WireLimits = DEFAULT_LIMITS, key: bytes | None = None,
            deadline_s: float | None = DEFAULT_DEADLINE_S,
            max_connections: int = DEFAULT_MAX_CONNECTIONS) -> tuple[wire.WireHeader, list[LayerKV], RecvStats]:
    """Receive one container: from a listening socket or a connected one. Verifies everything (the
    header against ``limits`` before any buffer is sized from it), decodes every layer, and
    acknowledges; raises on any fault.

    ``timeout`` bounds each socket operation (and, on a listening socket, the wait for a first
    sender); ``deadline_s`` bounds each connection as a whole, so a peer trickling bytes cannot hold it
    longer. A listening socket serves up to ``max_connections`` senders at once (more are refused as
    busy), so an idle or slow peer never blocks another: the first container to arrive whole is
    returned. A failed connection ends the receive only when no other is in progress. With ``key``
    (``kvwire.auth``), a sender must prove it holds the same key and every piece carries a MAC."""
    key = check_key(key)
    if _is_listening(source):
        return _recv_listening(source, timeout, pipelined, limits, key, deadline_s, max_connections)
    source.settimeout(timeout)
    try:
        result = _serve_connection(source, pipelined, limits, key, _deadline(deadline_s))
    except WireError as exc:
        _refuse(source, str(exc))
        raise
    _sendall(source, _ACK)
    return result


def _deadline(seconds: float | None) -> float | None:
    return None if seconds is None else time.monotonic() + seconds


def _recv_listening(server: socket.socket, timeout: float, pipelined: bool, limits: WireLimits, key: bytes | None,
                    deadline_s: float | None, max_connections: int):
    done: queue.Queue = queue.Queue()
    active: dict[socket.socket, threading.Thread] = {}
    # a worker that finishes wakes this loop at once through the pair (a polling accept would add up
    # to its period to every transfer's acknowledgement, and so to every measured end-to-end time)
    wake_r, wake_w = socket.socketpair()
    server.settimeout(0.0)  # accept only what select saw: a connection gone meanwhile must not block
    idle_since = time.monotonic()
    winner: tuple[threading.Thread, threading.Event] | None = None
    try:
        while True:
            try:
                conn, outcome, release = done.get_nowait()
            except queue.Empty:
                pass
            else:
                worker = active.pop(conn, None)
                if isinstance(outcome, tuple):
                    winner = (worker, release)
                    return outcome
                if not active:  # a failure ends the receive only when no other sender is in progress
                    raise outcome
                idle_since = time.monotonic()
                continue
            ready, _, _ = select.select([server, wake_r], [], [], _IDLE_CHECK_S)
            if wake_r in ready:
                wake_r.recv(4096)
            if server not in ready:
                if not active and time.monotonic() - idle_since > timeout:
                    raise TransportError(f"no sender connected within {timeout} s") from None
                continue
            try:
                conn, _addr = server.accept()
            except (BlockingIOError, socket.timeout):
                continue
            idle_since = time.monotonic()
            if len(active) >= max_connections:
                _refuse(conn, f"busy: {max_connections} connections in progress")
                conn.close()
                continue
            conn.settimeout(timeout)
            worker = threading.Thread(target=_connection_worker, name="kvwire-recv", daemon=True,
                                      args=(conn, done, wake_w, pipelined, limits, key, _deadline(deadline_s)))
            active[conn] = worker
            worker.start()
    finally:
        for conn in active:  # the other senders are cut off: their workers fail and close
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        if winner is not None:
            # acknowledged only now that this call accepts no more connections: a sender's next
            # container waits in the backlog for the next call instead of being cut off by this one
            thread, release = winner
            release.set()
            if thread is not None:
                thread.join(timeout=timeout)
        wake_r.close()
        wake_w.close()


def _connection_worker(conn: socket.socket, done: queue.Queue, wake: socket.socket, pipelined: bool,
                       limits: WireLimits, key: bytes | None, deadline: float | None) -> None:
    release = threading.Event()

    def report(outcome) -> None:
        done.put((conn, outcome, release))
        try:
            wake.send(b"w")
        except OSError:
            pass  # the receive is over and closed the pair: nobody waits for this outcome

    try:
        result = _serve_connection(conn, pipelined, limits, key, deadline)
        report(result)
        if release.wait(timeout=_ACK_WAIT_S):
            _sendall(conn, _ACK)
    except WireError as exc:
        _refuse(conn, str(exc))
        report(exc)
    except KvwireError as exc:
        report(exc)
    except BaseException as exc:  # noqa: BLE001 -- a worker must always report, in our own error type
        report(TransportError(f"receiving failed: {type(exc).__name__}: {exc}"))
    finally:
        conn.close()


def _serve_connection(sock: socket.socket, pipelined: bool, limits: WireLimits, key: bytes | None,
                      deadline: float | None) -> tuple[wire.WireHeader, list[LayerKV], RecvStats]:
    mac = _server_handshake(sock, key, deadline) if key is not None else None
    return _receive(sock, pipelined, limits, mac, deadline)


def _server_handshake(sock: socket.socket, key: bytes, deadline: float | None) -> auth.PieceMac:
    hello = _recv_exact(sock, len(auth.HELLO), "the sender's hello", deadline)
    if hello != auth.HELLO:
        raise WireError("authentication required: this receiver has a key and the sender did not offer one")
    nonce = auth.new_nonce()
    _sendall(sock, auth.NONCE + nonce)
    answer = _recv_exact(sock, len(auth.PROOF) + auth.TAG_LEN, "the sender's proof", deadline)
    if answer[:len(auth.PROOF)] != auth.PROOF or not auth.proof_ok(key, nonce, answer[len(auth.PROOF):]):
        raise WireError("authentication failed: the sender does not hold this receiver's key")
    return auth.PieceMac(key, nonce)


def _client_handshake(sock: socket.socket, key: bytes) -> auth.PieceMac:
    _sendall(sock, auth.HELLO)
    head = _recv_exact(sock, 4, "the receiver's challenge")
    if head == _NAK:
        _read_refusal(sock)
    if head != auth.NONCE:
        raise TransportError(f"unexpected answer {head!r} to the authentication hello")
    nonce = _recv_exact(sock, auth.NONCE_LEN, "the receiver's nonce")
    _sendall(sock, auth.PROOF + auth.proof(key, nonce))
    return auth.PieceMac(key, nonce)


def _check_tag(sock: socket.socket, mac: auth.PieceMac | None, what: str, deadline: float | None, *parts) -> None:
    if mac is None:
        return
    tag = _recv_exact(sock, auth.TAG_LEN, f"the MAC of {what}", deadline)
    if not mac.ok(tag, *parts):
        raise WireError(f"{what} fails its MAC: changed, dropped, reordered or not from the key's holder")


def _is_listening(sock: socket.socket) -> bool:
    try:
        return bool(sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN))
    except OSError:
        return False


def _refuse(sock: socket.socket, reason: str) -> None:
    data = reason.encode()[:4096]
    try:
        sock.sendall(_NAK + struct.pack("<I", len(data)) + data)
    except OSError:
        pass  # the sender may be gone; the receiver's own error is what matters here


def _receive(sock: socket.socket, pipelined: bool, limits: WireLimits = DEFAULT_LIMITS,
             mac: auth.PieceMac | None = None,
             deadline: float | None = None) -> tuple[wire.WireHeader, list[LayerKV], RecvStats]:
    stats = RecvStats()
    t0 = time.perf_counter()
    pre = _recv_exact(sock, wire._PREAMBLE.size, "the container preamble", deadline)
    magic, _version, _flags, hlen = wire._PREAMBLE.unpack(pre)
    if magic != wire.MAGIC:
        raise WireError(f"not a kvwire container: magic {magic!r}, expected {wire.MAGIC!r}")
    wire.check_header_length(hlen, limits)  # before allocating its buffer
    rest = _recv_exact(sock, hlen + wire._CRC.size, "the container header", deadline)
    _check_tag(sock, mac, "the header", deadline, pre, rest)
    header, _ = wire.read_header(pre + rest, limits)
    codec = wire.build_codec(header)
    decoder = _Decoder(codec, header, pipelined)
    crcs = []
    total = len(pre) + len(rest)
    try:
        for i in range(header.n_layers):
            head = _recv_exact(sock, _FRAME_HEAD_LEN, f"frame {i}'s header", deadline)
            magic, layer, n, _crc = wire._FRAME_HEAD.unpack_from(head, 0)
            (head_crc,) = wire._CRC.unpack_from(head, wire._FRAME_HEAD.size)
            if zlib.crc32(head[:wire._FRAME_HEAD.size]) != head_crc or magic != wire.FRAME_MAGIC:
                raise WireError(f"frame {i} header corrupted")
            limit = wire.frame_limit(header, i)
            if n > limit:  # before allocating its buffer
                raise WireError(f"frame {i} claims {n} payload bytes, more than its layer's limit of {limit}")
            what = f"frame {layer}'s payload ({n} bytes)"
            if n <= _EAGER_FRAME_BYTES:
                # head and payload land in one buffer: read_frame verifies it in place and copies the
                # payload out once (a concatenation would copy every payload a second time)
                whole = bytearray(len(head) + n)
                whole[:len(head)] = head
                _recv_into(sock, memoryview(whole)[len(head):], what, deadline)
            else:
                # a large frame's memory follows the bytes that really arrive: a header may declare a
                # frame it never sends, and must not hold its whole size meanwhile
                whole = b"".join([head, *_recv_chunks(sock, n, what, deadline)])
            _check_tag(sock, mac, f"frame {i}", deadline, whole)
            frame, _ = wire.read_frame(memoryview(whole), 0, i, limit)  # checks order and payload CRC
            del whole
            crcs.append(frame.crc)
            total += len(head) + n
            stats.arrived_s.append(time.perf_counter() - t0)
            decoder.submit(frame)
        trailer = _recv_exact(sock, wire._TRAILER.size, "the trailer", deadline)
        _check_tag(sock, mac, "the trailer", deadline, trailer)
        magic, count, crc = wire._TRAILER.unpack(trailer)
        if magic != wire.END_MAGIC or count != len(crcs) or crc != wire._crc_of_crcs(crcs):
            raise WireError("trailer does not match the frames (count or checksum)")
        total += len(trailer)
        layers = decoder.finish()
    except BaseException:
        decoder.abort()
        raise
    stats.decode_s = decoder.times
    stats.total_bytes = total
    stats.wall_s = time.perf_counter() - t0
    return header, layers, stats


class _Decoder:
    """Decodes verified frames on a worker thread as they arrive (or inline when not pipelined)."""

    def __init__(self, codec: Pipeline, header: wire.WireHeader, pipelined: bool) -> None:
        self.codec, self.header, self.pipelined = codec, header, pipelined
        self.layers: list[LayerKV] = []
        self.times: list[float] = []
        self._error: BaseException | None = None
        self._frames: list[wire.Frame] = []
        if pipelined:
            self._q: queue.Queue = queue.Queue()
            self._thread = threading.Thread(target=self._run, name="kvwire-decoder", daemon=True)
            self._thread.start()

    def _decode(self, frame: wire.Frame) -> None:
        t = time.perf_counter()
        self.layers.append(wire.decode_frame(self.codec, self.header, frame))
        self.times.append(time.perf_counter() - t)

    def _run(self) -> None:
        while True:
            frame = self._q.get()
            if frame is None:
                return
            if self._error is None:
                try:
                    self._decode(frame)
                except BaseException as exc:  # noqa: BLE001 -- re-raised by finish()
                    self._error = exc

    def submit(self, frame: wire.Frame) -> None:
        if self._error is not None:
            raise self._error
        if self.pipelined:
            self._q.put(frame)
        else:
            self._frames.append(frame)

    def finish(self) -> list[LayerKV]:
        if self.pipelined:
            self._q.put(None)
            self._thread.join()
        else:
            for frame in self._frames:
                self._decode(frame)
        if self._error is not None:
            raise self._error
        return self.layers

    def abort(self) -> None:
        if self.pipelined:
            self._error = self._error or TransportError("aborted")
            self._q.put(None)
            self._thread.join(timeout=5)


def _recv_exact(sock: socket.socket, n: int, what: str, deadline: float | None = None) -> bytes:
    """Exactly ``n`` bytes, or a ``TransportError`` naming what was being read."""
    buf = bytearray(n)
    _recv_into(sock, memoryview(buf), what, deadline)
    return bytes(buf)


def _recv_chunks(sock: socket.socket, n: int, what: str, deadline: float | None = None) -> list[bytearray]:
    """``n`` bytes in buffers of at most ``_EAGER_FRAME_BYTES``, each allocated when the last is full."""
    chunks, got = [], 0
    while got < n:
        chunk = bytearray(min(n - got, _EAGER_FRAME_BYTES))
        _recv_into(sock, memoryview(chunk), f"{what}, from byte {got}", deadline)
        chunks.append(chunk)
        got += len(chunk)
    return chunks


def _recv_into(sock: socket.socket, view: memoryview, what: str, deadline: float | None = None) -> None:
    """Fill ``view`` from the socket, or raise a ``TransportError`` naming what was being read.
    ``deadline`` (a ``time.monotonic`` instant) bounds the whole read, however the bytes trickle."""
    n = len(view)
    got = 0
    per_op = sock.gettimeout()
    try:
        while got < n:
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TransportError(f"the connection's deadline passed reading {what} ({got} of {n} bytes)")
                sock.settimeout(left if per_op is None else min(per_op, left))
            try:
                k = sock.recv_into(view[got:], min(n - got, 1 << 22))
            except socket.timeout as exc:
                if deadline is not None and deadline - time.monotonic() <= 0:
                    raise TransportError(f"the connection's deadline passed reading {what} ({got} of {n} bytes)") from exc
                raise TransportError(f"timed out reading {what} ({got} of {n} bytes)") from exc
            except OSError as exc:
                raise TransportError(f"connection lost reading {what}: {exc}") from exc
            if k == 0:
                raise TransportError(f"connection closed while reading {what} ({got} of {n} bytes)")
            got += k
    finally:
        if deadline is not None:
            sock.settimeout(per_op)
