"""Hostile upstreams: what one bad answer costs the gateway in memory, CPU and loop stalls.

    .venv/bin/python bench/hostile_upstreams.py [--scenarios big,big-chunked,sse,trickle,204]

For each scenario a fresh gateway (default server settings, no store, one model) runs in
front of a HostileUpstream (tests/fake_upstream.py) scripted to answer every request so:

    big          a 100 MB JSON answer with its Content-Length
    big-chunked  the same, chunked (no length known in advance)
    sse          a stream whose one event is 40 MB with no blank line (16 KiB writes, 1 ms
                 apart)
    sse-allowed  the same with server.max_sse_event_bytes raised to 64 MiB: the framing's cost
    trickle      a stream that sends one byte every 10 ms for 3 s, never ending an event
    204          a 204 with a body (HTTP forbids one), 50 requests on one connection

One client request (or 50 for 204) goes through while a second thread asks /healthz every
10 ms: the slowest of those answers is the event-loop stall. Reported per scenario: what the
client got, wall time, the gateway's CPU seconds (utime + stime from /proc/PID/stat) and its
peak RSS (VmHWM from /proc/PID/status) against its RSS after start. Bounded: every request
has a 120 s timeout, the trickle stops after 3 s. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.fake_upstream import HostileUpstream  # noqa: E402
from tests.support import GatewayProcess  # noqa: E402

MB = 1_000_000
CONFIG = """
server: {{{server}}}
store: {{backend: none}}
models:
  - name: m
    tier: small
    endpoints: [{{base_url: "{url}", model: upstream-m}}]
"""
CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
SSE_40MB = {"kind": "sse_event", "bytes": 40 * MB, "piece": 16384, "gap_ms": 1}
SCENARIOS: dict[str, tuple[dict[str, Any], bool, int, str]] = {
    # name: (upstream action, streamed, requests, server settings other than the defaults)
    "big": ({"kind": "big", "bytes": 100 * MB}, False, 1, ""),
    "big-chunked": ({"kind": "big", "bytes": 100 * MB, "chunked": True}, False, 1, ""),
    "sse": (SSE_40MB, True, 1, ""),
    # the same event let through (cap raised): the cost of the framing itself
    "sse-allowed": (SSE_40MB, True, 1, "max_sse_event_bytes: 67108864"),
    "trickle": ({"kind": "trickle", "ms": 10, "seconds": 3}, True, 1, ""),
    "204": (
        {"kind": "raw", "data": 'HTTP/1.1 204 No Content\r\ncontent-length: 7\r\n\r\n{"a":1}'},
        False,
        50,
        "",
    ),
}


def proc_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Prober:
    """Asks /healthz every 10 ms; the slowest answer while it ran is the loop stall."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.worst = 0.0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        with httpx.Client(timeout=120) as c:
            while not self.stop.is_set():
                t = time.perf_counter()
                c.get(f"{self.url}/healthz")
                self.worst = max(self.worst, time.perf_counter() - t)
                self.stop.wait(0.01)

    def __enter__(self) -> Prober:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(130)


def outcome(r: httpx.Response, stream: bool) -> str:
    """What the client saw: the status and error code, or the stream's last event."""
    if not stream or r.status_code != 200:
        try:
            return f"{r.status_code} {r.json()['error']['code']}"
        except (ValueError, KeyError, TypeError):
            return f"{r.status_code}, {len(r.content):,} bytes"
    last = r.content.rstrip().rsplit(b"\n\n", 1)[-1]
    if b'"error"' in last:
        return "200, then error event " + last.split(b'"code":"')[-1].split(b'"')[0].decode()
    return f"200, {len(r.content):,} bytes"


def run(name: str, up: HostileUpstream, tmp: Path) -> dict[str, Any]:
    action, stream, n, server = SCENARIOS[name]
    up.reset()
    up.script([], default=action)
    sub = tmp / name
    sub.mkdir()
    with GatewayProcess(CONFIG.format(server=server, url=up.base_url), sub) as gw:
        assert gw.proc is not None
        pid = gw.proc.pid
        rss0 = proc_kib(pid, "VmRSS")
        cpu0 = cpu_s(pid)
        body: dict[str, Any] = {**CHAT, "stream": True} if stream else CHAT

        def send(c: httpx.Client) -> str:
            try:
                return outcome(c.post(f"{gw.base_url}/chat/completions", json=body), stream)
            except httpx.HTTPError as e:  # e.g. a 204's body read as the next status line
                return f"client error: {type(e).__name__}"

        t0 = time.perf_counter()
        with Prober(gw.url) as probe, httpx.Client(timeout=120) as client:
            got = [send(client) for _ in range(n)]
        wall = time.perf_counter() - t0
        return {
            "scenario": name,
            "client": ", ".join(f"{g} (x{got.count(g)})" if n > 1 else g for g in sorted(set(got))),
            "wall_s": wall,
            "cpu_s": cpu_s(pid) - cpu0,
            "stall_ms": probe.worst * 1000,
            "rss_start_mib": rss0 / 1024,
            "peak_mib": proc_kib(pid, "VmHWM") / 1024,
        }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--scenarios", default=",".join(SCENARIOS))
    args = p.parse_args()
    names = [s for s in args.scenarios.split(",") if s]
    unknown = [s for s in names if s not in SCENARIOS]
    if unknown:
        p.error(f"unknown scenarios {unknown}; choose from {list(SCENARIOS)}")
    rows = []
    with HostileUpstream(name="hostile") as up, tempfile.TemporaryDirectory() as tmp:
        for name in names:
            rows.append(run(name, up, Path(tmp)))
            r = rows[-1]
            print(
                f"{name}: {r['client']}; wall {r['wall_s']:.2f} s, gateway CPU "
                f"{r['cpu_s']:.2f} s, worst /healthz {r['stall_ms']:.0f} ms, peak RSS "
                f"{r['peak_mib']:.0f} MiB (start {r['rss_start_mib']:.0f})",
                file=sys.stderr,
            )
    print("| upstream answer | client gets | wall | gateway CPU | worst /healthz | peak RSS |")
    print("| --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(
            f"| {r['scenario']} | {r['client']} | {r['wall_s']:.2f} s | {r['cpu_s']:.2f} s | "
            f"{r['stall_ms']:.0f} ms | {r['peak_mib']:.0f} MiB (start {r['rss_start_mib']:.0f}) |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
