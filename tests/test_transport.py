"""The TCP connector: real sockets, a sender in another process, faults injected by a relay."""

import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch

from kvwire import wire
from kvwire.codecs import LayerKV, build
from kvwire.errors import WireError
from kvwire.transport import TransportError, listen, recv_kv, send_kv

LIB = str(Path(__file__).resolve().parents[1] / "lib")


def cache(layers=4, heads=2, seq=96, dim=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [LayerKV(torch.randn(heads, seq, dim, generator=g).to(torch.bfloat16),
                    torch.randn(heads, seq, dim, generator=g).to(torch.bfloat16)) for _ in range(layers)]


SENDER = """
import sys, torch
sys.path.insert(0, {lib!r})
from kvwire.codecs import LayerKV
from kvwire.transport import send_kv
g = torch.Generator().manual_seed({seed})
layers = [LayerKV(torch.randn({heads}, {seq}, {dim}, generator=g).to(torch.bfloat16),
                  torch.randn({heads}, {seq}, {dim}, generator=g).to(torch.bfloat16)) for _ in range({layers})]
s = send_kv(("127.0.0.1", {port}), layers, {codec!r}, pipelined={pipelined}, timeout=20)
print(len(s.encode_s), s.total_bytes)
"""


def spawn_sender(port, codec, pipelined=True, layers=4, heads=2, seq=96, dim=32, seed=0):
    code = SENDER.format(lib=LIB, port=port, codec=codec, pipelined=pipelined, layers=layers, heads=heads,
                         seq=seq, dim=dim, seed=seed)
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


@pytest.mark.parametrize("codec,pipelined", [("int8", True), ("kivi2", False), ("identity", True)])
def test_a_sender_process_streams_a_cache_that_decodes_like_the_container(codec, pipelined):
    with listen() as server:
        port = server.getsockname()[1]
        proc = spawn_sender(port, codec, pipelined)
        header, layers, stats = recv_kv(server, timeout=20)
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    want_header, want = wire.decode(wire.encode(build(codec), cache()))
    assert header.codec == codec and header.shapes == want_header.shapes
    for a, b in zip(layers, want):
        assert torch.equal(a.k, b.k) and torch.equal(a.v, b.v)
    n_frames, sent = map(int, out.split())
    assert n_frames == 4 and sent == stats.total_bytes == len(wire.encode(build(codec), cache()))
    assert len(stats.decode_s) == 4 and stats.arrived_s == sorted(stats.arrived_s)


class Relay:
    """A TCP relay between sender and receiver that corrupts or cuts the stream at a byte offset."""

    def __init__(self, target_port, *, flip_at=None, cut_at=None):
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.target_port, self.flip_at, self.cut_at = target_port, flip_at, cut_at
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        self.server.settimeout(20)
        src, _ = self.server.accept()
        dst = socket.create_connection(("127.0.0.1", self.target_port), timeout=20)
        threading.Thread(target=self.back, args=(dst, src), daemon=True).start()
        seen = 0
        try:
            while True:
                data = bytearray(src.recv(65536))
                if not data:
                    dst.shutdown(socket.SHUT_WR)
                    break
                if self.flip_at is not None and seen <= self.flip_at < seen + len(data):
                    data[self.flip_at - seen] ^= 0x40
                if self.cut_at is not None and seen + len(data) > self.cut_at:
                    dst.sendall(data[:self.cut_at - seen])
                    for sock in (dst, src):  # shutdown, not just close: another thread is in recv on them
                        sock.shutdown(socket.SHUT_RDWR)
                        sock.close()
                    return
                dst.sendall(data)
                seen += len(data)
        except OSError:
            pass

    def back(self, dst, src):
        try:
            while data := dst.recv(4096):
                src.sendall(data)
            src.shutdown(socket.SHUT_WR)
        except OSError:
            pass


def _frame_offsets(codec):
    data = wire.encode(build(codec), cache())
    _, first = wire.read_header(data)
    return data, first


def test_a_corrupted_payload_byte_is_refused_and_the_sender_is_told():
    data, first = _frame_offsets("int8")
    with listen() as server:
        relay = Relay(server.getsockname()[1], flip_at=first + 24 + 100)  # inside frame 0's payload
        errors = {}

        def send():
            try:
                send_kv(("127.0.0.1", relay.port), cache(), "int8", timeout=10)
            except Exception as exc:  # noqa: BLE001
                errors["sender"] = exc

        t = threading.Thread(target=send)
        t.start()
        with pytest.raises(WireError, match="frame 0 payload checksum mismatch"):
            recv_kv(server, timeout=10)
        t.join(timeout=20)
    assert isinstance(errors.get("sender"), (WireError, TransportError))
    if isinstance(errors["sender"], WireError):
        assert "refused" in str(errors["sender"])


def test_a_connection_cut_mid_frame_names_the_frame():
    data, first = _frame_offsets("int8")
    with listen() as server:
        relay = Relay(server.getsockname()[1], cut_at=len(data) // 2)
        t = threading.Thread(target=lambda: _quietly(send_kv, ("127.0.0.1", relay.port), cache(), "int8",
                                                     timeout=10))
        t.start()
        with pytest.raises(TransportError, match=r"connection closed while reading frame \d"):
            recv_kv(server, timeout=10)
        t.join(timeout=20)


def test_a_silent_sender_times_out_and_a_missing_receiver_is_refused():
    with listen() as server:
        quiet = socket.create_connection(server.getsockname(), timeout=5)
        with pytest.raises(TransportError, match="timed out reading the container preamble"):
            recv_kv(server, timeout=0.5)
        quiet.close()
    with listen() as server:
        with pytest.raises(TransportError, match="no sender connected within"):
            recv_kv(server, timeout=0.3)
    with listen() as server:
        port = server.getsockname()[1]
    with pytest.raises(TransportError, match=f"cannot connect to 127.0.0.1:{port}"):
        send_kv(("127.0.0.1", port), cache(), "int8", timeout=1, retries=3)


def test_a_non_kvwire_stream_is_refused():
    with listen() as server:
        c = socket.create_connection(server.getsockname(), timeout=5)
        c.sendall(b"GET / HTTP/1.1\r\n\r\n")
        with pytest.raises(WireError, match="not a kvwire container"):
            recv_kv(server, timeout=5)
        c.close()


def _quietly(fn, *args, **kw):
    try:
        fn(*args, **kw)
    except Exception:  # noqa: BLE001 -- the receiver's error is what the test checks
        pass


# ---- a hostile or broken peer (issue 28) ----------------------------------------------------

KEY = bytes(range(32))


def _send_in_thread(port, layers, **kwargs):
    out = {}

    def run():
        try:
            out["stats"] = send_kv(("127.0.0.1", port), layers, "int8", timeout=10, **kwargs)
        except Exception as exc:  # noqa: BLE001 -- the test inspects it
            out["error"] = exc
    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, out


def _trickler(port, stop, every_s=0.2):
    """A slowloris: a valid preamble, then one header byte every ``every_s`` seconds."""
    s = socket.create_connection(("127.0.0.1", port))
    data = wire.encode(build("int8"), cache(layers=1))
    try:
        for b in data:
            if stop.is_set():
                break
            s.sendall(bytes([b]))
            stop.wait(every_s)
    except OSError:
        pass
    finally:
        s.close()


def test_an_idle_peer_and_a_slowloris_do_not_delay_a_real_sender():
    import time

    layers = cache()
    stop = threading.Event()
    with listen() as server:
        port = server.getsockname()[1]
        idle = socket.create_connection(("127.0.0.1", port))  # connects first and never sends
        slow = threading.Thread(target=_trickler, args=(port, stop), daemon=True)
        slow.start()
        time.sleep(0.3)
        t0 = time.monotonic()
        sender, out = _send_in_thread(port, layers)
        header, got, _ = recv_kv(server, timeout=5, deadline_s=3.0)
        took = time.monotonic() - t0
        sender.join(10)
        stop.set()
        idle.close()
    assert "error" not in out and len(got) == len(layers) and header.codec == "int8"
    assert took < 3.0  # neither the idle peer nor the trickle held the real sender back


def test_a_slowloris_alone_is_cut_at_the_connection_deadline():
    import time

    stop = threading.Event()
    with listen() as server:
        port = server.getsockname()[1]
        slow = threading.Thread(target=_trickler, args=(port, stop, 0.1), daemon=True)
        slow.start()
        t0 = time.monotonic()
        with pytest.raises(TransportError, match="deadline passed"):
            recv_kv(server, timeout=1.0, deadline_s=1.5)  # every byte comes well within the timeout
        took = time.monotonic() - t0
        stop.set()
    assert 1.4 < took < 4.0


def test_connections_beyond_the_bound_are_refused_as_busy():
    layers = cache(layers=1)
    with listen(backlog=4) as server:
        port = server.getsockname()[1]
        idle = socket.create_connection(("127.0.0.1", port))
        sender, out = _send_in_thread(port, layers)
        with pytest.raises(TransportError):
            recv_kv(server, timeout=1.0, deadline_s=1.5, max_connections=1)
        sender.join(10)
        idle.close()
    assert isinstance(out.get("error"), WireError) and "busy" in str(out["error"])


def test_with_a_key_only_its_holder_is_accepted_and_every_piece_is_authenticated():
    layers = cache(layers=2)
    with listen() as server:  # the same key on both ends: accepted, decoded as without a key
        sender, out = _send_in_thread(server.getsockname()[1], layers, key=KEY)
        header, got, _ = recv_kv(server, timeout=5, key=KEY)
        sender.join(10)
    assert "error" not in out and len(got) == 2
    for sender_key, reason in ((None, "authentication required"), (bytes(32), "authentication failed")):
        with listen() as server:
            sender, out = _send_in_thread(server.getsockname()[1], layers, key=sender_key)
            with pytest.raises(WireError, match=reason):
                recv_kv(server, timeout=5, key=KEY)
            sender.join(10)
        assert isinstance(out.get("error"), WireError) and reason in str(out["error"]), out
    with pytest.raises(Exception, match="at least 16 bytes"):
        recv_kv(socket.socket(), key=b"short")


def test_a_piece_changed_after_its_mac_is_refused_even_with_valid_crcs():
    """The key holder's bytes changed in flight (checksums recomputed by whoever changed them)."""
    from kvwire import auth, fuzz
    from kvwire.transport import _client_handshake

    layers = cache(layers=2)
    data = wire.encode(build("int8"), layers)
    header, payloads = fuzz.split(data)
    tampered = fuzz.split(fuzz.reseal(fuzz._dump(header), [payloads[0], bytes(len(payloads[1]))]))[1]

    def sender(port, out):
        try:
            s = socket.create_connection(("127.0.0.1", port))
            mac = _client_handshake(s, KEY)
            honest = list(wire.iter_encode(build("int8"), layers))
            bad = fuzz.reseal(fuzz._dump(header), tampered)
            pieces = list(wire.iter_encode(build("int8"), layers))
            pieces[2] = bad[len(honest[0]) + len(honest[1]):len(honest[0]) + len(honest[1]) + len(honest[2])]
            for honest_piece, sent in zip(honest, pieces):
                s.sendall(sent + mac.tag(honest_piece))  # tagged as sent by the key holder, then changed
            s.shutdown(socket.SHUT_WR)
            out["reply"] = s.recv(4)
            s.close()
        except Exception as exc:  # noqa: BLE001
            out["error"] = exc

    with listen() as server:
        out = {}
        t = threading.Thread(target=sender, args=(server.getsockname()[1], out), daemon=True)
        t.start()
        with pytest.raises(WireError, match="frame 1 fails its MAC"):
            recv_kv(server, timeout=5, key=KEY)
        t.join(10)
    assert out.get("reply") == b"KVNO" and auth.TAG_LEN == 32
