"""A measured link: timed TCP transfers on loopback, or between two network namespaces joined by a
veth pair shaped with ``tc`` (token bucket), to validate the transfer model's ``latency + bytes / rate``.

Everything stays on this machine: the namespaces (``<prefix>a``, ``<prefix>b``) and the veth pair
are created for one measurement and deleted after it, whatever happens. Namespaces need root; the
functions say so clearly otherwise (tests skip with that reason).

Protocol of one timed transfer (one persistent connection, after a warm-up): the sender takes the
time, writes a u64 length and that many bytes, and stops the clock when the receiver's one-byte
acknowledgement arrives. So a transfer costs ``lat + 8 n / B`` with ``lat`` one round trip plus the
per-message costs; ``fit_link`` estimates both terms by least squares on the sizes above 1 MB.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import sys

from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from .errors import KvwireError

LIB = str(Path(__file__).resolve().parents[1])
ADDR_A, ADDR_B = "10.77.0.1", "10.77.0.2"
PORT = 5599


class NetlabError(KvwireError):
    """A shaped link could not be set up (not root, no ``ip``/``tc``, a namespace left over)."""


def _missing() -> str | None:
    if os.geteuid() != 0:
        return "network namespaces need root (CI runs as root)"
    for tool in ("ip", "tc"):
        if shutil.which(tool) is None:
            return f"`{tool}` is not installed (Debian: iproute2)"
    return None


@functools.lru_cache(maxsize=1)
def can_shape() -> str | None:
    """None when namespaces, veth and tc tbf work here, else the reason they do not: root and the
    tools are checked, then a shaped link is really set up and torn down (a container may forbid it)."""
    reason = _missing()
    if reason:
        return reason
    try:
        with veth_link(1.0, prefix="kvwp"):
            pass
    except NetlabError as exc:
        return f"a shaped veth link cannot be set up here: {exc}"
    return None


def _run(*argv: str) -> None:
    res = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    if res.returncode != 0:
        raise NetlabError(f"`{' '.join(argv)}` failed: {res.stderr.strip() or res.stdout.strip()}")


@dataclass(frozen=True)
class Link:
    """Where the receiver listens and how to run a process on each side."""

    receiver_host: str
    sender_prefix: tuple[str, ...]  # argv prefix that runs a command on the sender's side
    receiver_prefix: tuple[str, ...]
    rate_gbps: float | None  # the shaped rate (None: unshaped)
    kind: str  # "loopback" or "veth"


@contextmanager
def loopback() -> Iterator[Link]:
    yield Link("127.0.0.1", (), (), None, "loopback")


@contextmanager
def veth_link(rate_gbps: float | None, *, prefix: str = "kvw", delay_ms: float = 0.0) -> Iterator[Link]:
    """Two namespaces joined by a veth pair; ``rate_gbps`` shapes both directions with tbf."""
    reason = _missing()
    if reason:
        raise NetlabError(reason)
    a, b = f"{prefix}a", f"{prefix}b"
    for ns in (a, b):  # a namespace left by a killed run: remove it, it is ours by name
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)
    try:
        _run("ip", "netns", "add", a)
        _run("ip", "netns", "add", b)
        _run("ip", "link", "add", f"{prefix}-a", "type", "veth", "peer", "name", f"{prefix}-b")
        _run("ip", "link", "set", f"{prefix}-a", "netns", a)
        _run("ip", "link", "set", f"{prefix}-b", "netns", b)
        for ns, dev, addr in ((a, f"{prefix}-a", ADDR_A), (b, f"{prefix}-b", ADDR_B)):
            _run("ip", "-n", ns, "addr", "add", f"{addr}/24", "dev", dev)
            _run("ip", "-n", ns, "link", "set", dev, "up")
            _run("ip", "-n", ns, "link", "set", "lo", "up")
            if rate_gbps:
                # burst: 1 ms of traffic at the rate (>= 64 KB), so tbf can meet the rate at HZ granularity
                burst = max(64 << 10, int(rate_gbps * 1e9 / 8 / 1000))
                qdisc = ["tbf", "rate", f"{rate_gbps * 1000:.0f}mbit", "burst", str(burst), "latency", "100ms"]
                _run("ip", "netns", "exec", ns, "tc", "qdisc", "add", "dev", dev, "root", *qdisc)
            if delay_ms and not rate_gbps:
                _run("ip", "netns", "exec", ns, "tc", "qdisc", "add", "dev", dev, "root", "netem",
                     "delay", f"{delay_ms}ms")
        yield Link(ADDR_B, ("ip", "netns", "exec", a), ("ip", "netns", "exec", b), rate_gbps, "veth")
    finally:
        for ns in (a, b):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)


RECEIVER = """
import socket, struct, sys
srv = socket.create_server(({host!r}, {port}))
srv.settimeout({timeout})
print("ready", flush=True)
conn, _ = srv.accept()
conn.settimeout({timeout})
buf = bytearray({max_bytes})
view = memoryview(buf)
def exact(n):
    got = 0
    while got < n:
        k = conn.recv_into(view[got:n])
        if k == 0:
            sys.exit("sender closed early")
        got += k
while True:
    exact(8)
    (n,) = struct.unpack("<Q", bytes(view[:8]))
    if n == 0:
        break
    exact(n)
    conn.sendall(b"K")
"""

SENDER = """
import json, socket, struct, sys, time
sizes, repeats = {sizes!r}, {repeats}
sock = socket.create_connection(({host!r}, {port}), timeout={timeout})
sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
data = memoryview(bytes(max(sizes)))
def one(n):
    t = time.perf_counter()
    sock.sendall(struct.pack("<Q", n))
    sock.sendall(data[:n])
    if sock.recv(1) != b"K":
        sys.exit("no acknowledgement")
    return time.perf_counter() - t
for n in sorted(set(sizes))[:3]:
    one(n)  # warm-up: connection, buffers
rows = []
for n in sizes:
    for r in range(repeats):
        rows.append({{"bytes": n, "repeat": r, "seconds": one(n)}})
sock.sendall(struct.pack("<Q", 0))
print(json.dumps(rows))
"""


def measure(link: Link, sizes: Sequence[int], *, repeats: int = 3, timeout: float = 120.0) -> list[dict]:
    """Time ``repeats`` transfers of every size over ``link``: a row per transfer."""
    sizes = [int(n) for n in sizes]
    if not sizes or min(sizes) <= 0:
        raise NetlabError(f"transfer sizes must be positive, got {sizes}")
    recv_code = RECEIVER.format(host=link.receiver_host, port=PORT, timeout=timeout, max_bytes=max(sizes))
    receiver = subprocess.Popen([*link.receiver_prefix, sys.executable, "-c", recv_code],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = receiver.stdout.readline()  # bounded: the receiver exits on its own timeout
        if line.strip() != "ready":
            raise NetlabError(f"the receiver did not start: {receiver.stderr.read()[-2000:]}")
        send_code = SENDER.format(sizes=sizes, repeats=repeats, host=link.receiver_host, port=PORT, timeout=timeout)
        sender = subprocess.run([*link.sender_prefix, sys.executable, "-c", send_code], capture_output=True,
                                text=True, timeout=timeout * 4)
        if sender.returncode != 0:
            raise NetlabError(f"the sender failed: {sender.stderr[-2000:]}")
        rows = json.loads(sender.stdout.strip().splitlines()[-1])
        receiver.wait(timeout=timeout)
    finally:
        if receiver.poll() is None:
            receiver.kill()
            receiver.wait(timeout=10)
    for row in rows:
        row.update(link=link.kind, rate_gbps=link.rate_gbps)
    return rows


@dataclass(frozen=True)
class LinkFit:
    """``seconds = latency_s + 8 * bytes / (rate_gbps * 1e9)``, fitted on transfers above ``min_bytes``."""

    latency_s: float
    rate_gbps: float
    min_bytes: int
    n: int

    def predict(self, n_bytes) -> np.ndarray:
        return self.latency_s + 8 * np.asarray(n_bytes, dtype=float) / (self.rate_gbps * 1e9)


def fit_link(rows: Sequence[dict], *, min_bytes: int = 1 << 20) -> LinkFit:
    """Least squares of the median time per size against size (sizes >= ``min_bytes``), weighted by
    1 / time: the residuals are relative, so a 1 GB transfer does not swamp the 1 MB ones (the goal
    is a model within a few per cent at every size, not in absolute seconds)."""
    by_size: dict[int, list[float]] = {}
    for r in rows:
        if r["bytes"] >= min_bytes:
            by_size.setdefault(int(r["bytes"]), []).append(float(r["seconds"]))
    if len(by_size) < 2:
        raise NetlabError(f"fitting a link needs at least two sizes >= {min_bytes} bytes, got {sorted(by_size)}")
    x = np.array(sorted(by_size), dtype=float)
    y = np.array([np.median(by_size[int(n)]) for n in x])
    slope, intercept = np.polyfit(x, y, 1, w=1.0 / y)
    if intercept < 0:  # no negative latency: refit the rate alone, through the origin, same weights
        intercept, slope = 0.0, float(np.sum(x / y) / np.sum((x / y) ** 2))
    if slope <= 0:
        raise NetlabError("the measured time does not grow with size: no rate can be fitted")
    return LinkFit(float(intercept), 8 / slope / 1e9, min_bytes, len(x))


def model_error(rows: Sequence[dict], latency_s: float, rate_gbps: float) -> list[dict]:
    """Per size: median measured seconds, the model's, and the relative error |model - measured| / measured."""
    by_size: dict[int, list[float]] = {}
    for r in rows:
        by_size.setdefault(int(r["bytes"]), []).append(float(r["seconds"]))
    out = []
    for n in sorted(by_size):
        measured = float(np.median(by_size[n]))
        model = latency_s + 8 * n / (rate_gbps * 1e9)
        out.append({"bytes": n, "measured_s": measured, "model_s": model,
                    "rel_error": abs(model - measured) / measured})
    return out


def sizes_log(lo: int = 1 << 10, hi: int = 1 << 30, per_decade: int = 3) -> list[int]:
    """Payload sizes from ``lo`` to ``hi`` bytes, ``per_decade`` per factor of 10 (both ends included)."""
    n = int(round(np.log10(hi / lo) * per_decade)) + 1
    return sorted({int(round(v)) for v in np.geomspace(lo, hi, n)})


