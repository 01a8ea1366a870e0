"""Hostile clients against `tollgate serve` on default settings: the gateway's peak memory.

    .venv/bin/python bench/hostile_clients.py [--only NAME,...] [--connections 4200]

Starts the fake upstream (`tests/fake_upstream.py`, streaming long answers: 3,000 events,
about 3 MB) and the gateway with default `server:` settings, then plays each hostile client
in turn, every one bounded in bytes, connections and time:

- huge-header: one request head of up to 200 MB;
- pipeline-flood: up to 100,000 pipelined requests in 5 s, nothing read for 2 s;
- many-connections: `--connections` connections, each with half a request head;
- slow-headers / slow-body: 100 connections that send their head (or body) a byte a second;
- slow-reader: 20 streams whose clients read nothing after the first bytes;
- repeated-heads: 50 connections one after another, each with a 60 KiB head (under the cap).

For each it records the gateway's peak RSS (VmHWM, reset before each client through
/proc/PID/clear_refs, and VmRSS sampled every 20 ms where that is not allowed), its RSS after,
what the client saw, and whether the gateway still answers /healthz. Prints a Markdown table.
Runs about three minutes (slow-body waits for the 60 s body deadline).
"""

from __future__ import annotations

import argparse
import contextlib
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.fake_upstream import FakeUpstream
from tests.support import GatewayProcess, model_block

MIB = 1 << 20
CHAT = b'{"model": "m", "stream": true, "messages": [{"role": "user", "content": "hi"}]}'


def status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


class Peak:
    """The gateway's peak RSS while a client plays: VmHWM after resetting it, or sampling."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.sampled = 0
        self.stop = threading.Event()
        try:
            Path(f"/proc/{pid}/clear_refs").write_text("5")  # resets VmHWM (Linux 4.0+)
            self.hwm = True
        except OSError:
            self.hwm = False
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()

    def _sample(self) -> None:
        while not self.stop.wait(0.02):
            with contextlib.suppress(OSError):
                self.sampled = max(self.sampled, status_kib(self.pid, "VmRSS"))

    def done(self) -> int:
        self.stop.set()
        self.thread.join()
        return max(self.sampled, status_kib(self.pid, "VmHWM") if self.hwm else 0)


def read_all(sock: socket.socket, timeout: float) -> tuple[bytes, str]:
    """What the gateway sends until it closes (or `timeout`), and how the reading ended."""
    sock.settimeout(timeout)
    data = b""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            chunk = sock.recv(1 << 16)
        except TimeoutError:
            return data, "open"
        except OSError:
            return data, "reset"
        if not chunk:
            return data, "closed"
        data += chunk
    return data, "open"


def first_status(data: bytes) -> str:
    return data[9:12].decode() if data.startswith(b"HTTP/1.1 ") else "none"


def send_bounded(sock: socket.socket, payload: bytes, total: int, seconds: float) -> int:
    """Send `payload` repeatedly, `total` bytes at most, for `seconds` at most; bytes taken."""
    sock.setblocking(False)
    sent = 0
    end = time.monotonic() + seconds
    view = memoryview(payload)
    while sent < total and time.monotonic() < end:
        try:
            n = sock.send(view)
        except BlockingIOError:
            time.sleep(0.005)
            continue
        except OSError:
            break
        sent += n
        view = view[n:] or memoryview(payload)
    sock.setblocking(True)
    return sent


def huge_header(port: int) -> str:
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-Big: ")
        sent = send_bounded(s, b"a" * MIB, 200 * MIB, 20)
        data, how = read_all(s, 5)
    return f"{first_status(data)}, {how}; took {sent / MIB:.1f} of 200 MiB"


def pipeline_flood(port: int) -> str:
    req = b"GET /v1/models HTTP/1.1\r\nHost: t\r\n\r\n"
    with socket.create_connection(("127.0.0.1", port)) as s:
        sent = send_bounded(s, req * 100_000, len(req) * 100_000, 5)
        time.sleep(2)  # nothing read meanwhile
        data, how = read_all(s, 10)
    answers = data.count(b"HTTP/1.1 ")
    return f"{answers} answers, {how}; sent {sent // len(req):,} requests"


def many_connections(port: int, n: int) -> str:
    held: list[socket.socket] = []
    try:
        for _ in range(n):
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\n")  # half a head: it stays open
            held.append(s)
        time.sleep(1)
        refused = 0
        for s in held:
            s.setblocking(False)
            with contextlib.suppress(BlockingIOError, OSError):
                if s.recv(12).startswith(b"HTTP/1.1 503"):
                    refused += 1
        return f"{n - refused:,} held, {refused:,} got 503"
    finally:
        for s in held:
            s.close()


def slow(port: int, body: bool, n: int = 100, seconds: float = 75) -> str:
    head = b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-Slow: "
    if body:
        head = (
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\ncontent-type: application/json\r\n"
            b"content-length: 100000\r\n\r\n"
        )
    socks = [socket.create_connection(("127.0.0.1", port)) for _ in range(n)]
    t0 = time.monotonic()
    statuses: dict[str, int] = {}
    took: list[float] = []
    live = list(socks)
    try:
        for s in socks:
            s.sendall(head)
            s.setblocking(False)
        while live and time.monotonic() - t0 < seconds:
            for s in list(live):
                with contextlib.suppress(OSError):
                    s.send(b"a")
                try:
                    data = s.recv(4096)
                except BlockingIOError:
                    continue
                except OSError:
                    data = b""
                statuses[first_status(data)] = statuses.get(first_status(data), 0) + 1
                took.append(time.monotonic() - t0)
                live.remove(s)
            time.sleep(1)
    finally:
        for s in socks:
            s.close()
    ended = ", ".join(f"{k}: {v}" for k, v in sorted(statuses.items()))
    return f"{ended or 'none ended'} after {max(took, default=0):.0f} s; {len(live)} still open"


def in_flight(port: int) -> float:
    """Requests the gateway has in flight upstream (tollgate_inflight_requests, all series)."""
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("tollgate_inflight_requests{")
    )


def slow_reader(port: int, n: int = 20, seconds: float = 45) -> str:
    socks = []
    for _ in range(n):
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.connect(("127.0.0.1", port))
        s.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\ncontent-type: application/json\r\n"
            b"content-length: %d\r\n\r\n%s" % (len(CHAT), CHAT)
        )
        s.settimeout(10)
        s.recv(12)  # the stream has begun; nothing more is read
        socks.append(s)
    t0 = time.monotonic()
    held = in_flight(port)
    while held and time.monotonic() - t0 < seconds:
        time.sleep(0.5)
        held = in_flight(port)
    freed = time.monotonic() - t0
    for s in socks:
        s.close()
    if held:
        return f"{held:.0f} of {n} upstream slots still held after {seconds:.0f} s"
    return f"all {n} upstream slots freed after {freed:.0f} s"


def repeated_heads(port: int, n: int = 50) -> str:
    head = b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\nX-Big: %s\r\n\r\n" % (
        b"a" * 60_000
    )
    ok = 0
    for _ in range(n):
        with socket.create_connection(("127.0.0.1", port)) as s:
            s.sendall(head)
            data, _ = read_all(s, 5)
            ok += first_status(data) == "200"
    return f"{ok} of {n} answered 200"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", default="", help="comma-separated client names")
    p.add_argument("--connections", type=int, default=4200)
    args = p.parse_args()
    only = set(filter(None, args.only.split(",")))
    rows: list[tuple[str, int, int, str, str]] = []
    with (
        FakeUpstream(name="m", completion_tokens=400_000, chunks=3000) as fake,
        tempfile.TemporaryDirectory() as tmp,
    ):
        config = "\n".join(
            ["store: {backend: none}", "models:", model_block("m", "small", fake.base_url)]
        )
        with GatewayProcess(config, Path(tmp)) as gw:
            assert gw.proc is not None
            pid, port = gw.proc.pid, gw.port
            clients: dict[str, Callable[[], str]] = {
                "huge-header": lambda: huge_header(port),
                "pipeline-flood": lambda: pipeline_flood(port),
                "many-connections": lambda: many_connections(port, args.connections),
                "slow-headers": lambda: slow(port, body=False),
                "slow-body": lambda: slow(port, body=True),
                "slow-reader": lambda: slow_reader(port),
                "repeated-heads": lambda: repeated_heads(port),
            }
            start = status_kib(pid, "VmRSS")
            print(f"gateway PID {pid}: RSS at start {start / 1024:.1f} MiB", file=sys.stderr)
            for name, play in clients.items():
                if only and name not in only:
                    continue
                peak = Peak(pid)
                t0 = time.monotonic()
                try:
                    seen = play()
                except Exception as e:  # the client's own failure is a result too
                    seen = f"client error: {type(e).__name__}: {e}"
                top = peak.done()
                time.sleep(0.5)
                alive = gw.proc.poll() is None
                try:
                    up = alive and httpx.get(f"{gw.url}/healthz", timeout=5).status_code == 200
                except httpx.HTTPError:
                    up = False
                after = status_kib(pid, "VmRSS") if alive else 0
                rows.append((name, top, after, seen, "yes" if up else "NO"))
                print(
                    f"{name}: peak {top / 1024:.1f} MiB, after {after / 1024:.1f} MiB, "
                    f"{seen}, up: {up} ({time.monotonic() - t0:.0f} s)",
                    file=sys.stderr,
                )
    print(f"\nRSS at start {start / 1024:.0f} MiB\n")
    print("| client | peak RSS | RSS after | what the client saw | gateway up |")
    print("| --- | --- | --- | --- | --- |")
    for name, top, after, seen, up in rows:
        print(f"| {name} | {top / 1024:.0f} MiB | {after / 1024:.0f} MiB | {seen} | {up} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
