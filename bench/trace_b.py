"""Where a request's time goes at scenario (b), read off the wire with tcpdump.

    .venv/bin/python bench/trace_b.py [--seconds 10] [--mode pinned|auto] [--store none]

Runs the fake upstream (50 ms) and one gateway as `make bench` does (gateway on core 0,
upstream and wrk on core 1), captures loopback with tcpdump (nanosecond stamps) while wrk
sends numbered requests (the number is in the prompt, so a request can be followed from the
client's connection to the upstream's), then runs the same load against the upstream
directly. For every request it has four stamps:

    A  the client's request on the wire         B  the gateway's request to the upstream
    C  the upstream's answer on the wire         D  the gateway's answer to the client

and prints, for all requests and for the slowest 1%, how D - A splits into B - A (the
gateway, inbound), C - B (the upstream, as the gateway's request found it) and D - C (the
gateway, outbound); direct gives C - A for the same load. Needs tcpdump (apt-get install
tcpdump) and root or CAP_NET_RAW. A diagnostic: it writes nothing to BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import overhead as ov

WRK_NUMBERED = r"""
local counter = 0
local head = [==[%(head)s]==]
local tail = [==[%(tail)s]==]
local hdrs = {["Content-Type"] = "application/json", ["Authorization"] = "Bearer %(bearer)s"}
function request()
  counter = counter + 1
  return wrk.format("POST", "/v1/chat/completions", hdrs, head .. "#" .. counter .. "#" .. tail)
end
"""

_MARK = re.compile(rb"#(\d+)#")


@dataclass
class Packet:
    t: float
    sport: int
    dport: int
    payload: bytes


def read_pcap(path: Path) -> list[Packet]:
    data = path.read_bytes()
    magic = struct.unpack_from("<I", data, 0)[0]
    scale = 1e-9 if magic == 0xA1B23C4D else 1e-6
    linktype = struct.unpack_from("<I", data, 20)[0]
    link = {1: 14, 113: 16, 276: 20}.get(linktype, 14)
    out: list[Packet] = []
    off = 24
    while off + 16 <= len(data):
        sec, frac, incl, _ = struct.unpack_from("<IIII", data, off)
        off += 16
        pkt = data[off : off + incl]
        off += incl
        ip = pkt[link:]
        if len(ip) < 20 or ip[0] >> 4 != 4 or ip[9] != 6:
            continue
        ihl = (ip[0] & 15) * 4
        tcp = ip[ihl:]
        if len(tcp) < 20:
            continue
        sport, dport = struct.unpack_from("!HH", tcp, 0)
        doff = (tcp[12] >> 4) * 4
        payload = tcp[doff:]
        if payload:
            out.append(Packet(sec + frac * scale, sport, dport, payload))
    return out


@dataclass
class Trace:
    a: dict[int, float] = field(default_factory=dict)  # mark -> time
    b: dict[int, float] = field(default_factory=dict)
    c: dict[int, float] = field(default_factory=dict)
    d: dict[int, float] = field(default_factory=dict)


def follow(packets: list[Packet], front: int, upstream: int, direct: bool) -> Trace:
    """Stamps per request number. `front` is the port the client talks to."""
    tr = Trace()
    pending_front: dict[int, int] = {}  # client port -> mark of its open request
    pending_up: dict[int, int] = {}  # gateway's upstream port -> mark
    for p in packets:
        if p.dport == front and p.payload.startswith(b"POST"):
            m = _MARK.search(p.payload)
            if m:
                n = int(m.group(1))
                tr.a[n] = p.t
                pending_front[p.sport] = n
        elif p.sport == front and p.payload.startswith(b"HTTP/1.1"):
            n = pending_front.pop(p.dport, -1)
            if n >= 0:
                (tr.c if direct else tr.d)[n] = p.t
        elif not direct and p.dport == upstream and p.payload.startswith(b"POST"):
            m = _MARK.search(p.payload)
            if m:
                n = int(m.group(1))
                tr.b[n] = p.t
                pending_up[p.sport] = n
        elif not direct and p.sport == upstream and p.payload.startswith(b"HTTP/1.1"):
            n = pending_up.pop(p.dport, -1)
            if n >= 0:
                tr.c[n] = p.t
    return tr


def describe(name: str, tr: Trace, direct: bool) -> list[str]:
    ms = 1000.0
    if direct:
        wire = [(tr.c[n] - tr.a[n]) * ms for n in tr.a if n in tr.c]
        return [
            f"{name}: {len(wire)} requests",
            f"  wire latency C-A: p50 {ov._pct(wire, 50):.2f}  p90 {ov._pct(wire, 90):.2f}  "
            f"p99 {ov._pct(wire, 99):.2f}  max {max(wire):.2f} ms",
        ]
    keys = [n for n in tr.a if n in tr.b and n in tr.c and n in tr.d]
    parts = {
        "D-A total": {n: (tr.d[n] - tr.a[n]) * ms for n in keys},
        "B-A gateway in": {n: (tr.b[n] - tr.a[n]) * ms for n in keys},
        "C-B upstream": {n: (tr.c[n] - tr.b[n]) * ms for n in keys},
        "D-C gateway out": {n: (tr.d[n] - tr.c[n]) * ms for n in keys},
    }
    out = [f"{name}: {len(keys)} requests followed end to end"]
    for label, v in parts.items():
        xs = list(v.values())
        out.append(
            f"  {label:16s} p50 {ov._pct(xs, 50):7.3f}  p90 {ov._pct(xs, 90):7.3f}  p99 "
            f"{ov._pct(xs, 99):7.3f}  max {max(xs):7.3f} ms"
        )
    tot = parts["D-A total"]
    slow = sorted(keys, key=lambda n: tot[n])[-max(1, len(keys) // 100) :]
    out.append(f"  the slowest 1% ({len(slow)}), mean of each part:")
    for label, v in parts.items():
        out.append(f"    {label:16s} {statistics.fmean(v[n] for n in slow):7.3f} ms")
    return out


def capture(port_a: int, port_b: int, path: Path) -> subprocess.Popen[bytes]:
    flt = f"tcp and (port {port_a} or port {port_b})"
    proc = subprocess.Popen(
        [
            "tcpdump",
            "-i",
            "lo",
            "-s",
            "700",
            "-B",
            "65536",
            "--time-stamp-precision=nano",
            "-w",
            str(path),
            flt,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    time.sleep(1.0)
    return proc


def stop_capture(proc: subprocess.Popen[bytes]) -> str:
    proc.send_signal(signal.SIGINT)
    try:
        _, err = proc.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
    return " ".join(ln for ln in err.decode().splitlines() if "dropped" in ln)


def load(host: str, port: int, model: str, seconds: float, tmp: Path) -> dict[str, object]:
    body = ov.chat_body(model, False).decode()
    head, _, tail = body.partition(ov.PROMPT)
    report = ov.WRK_LUA % {"body": "", "bearer": "", "limit": 0, "path": ""}
    lua = WRK_NUMBERED % {"head": head + ov.PROMPT + " ", "tail": tail, "bearer": ov.BEARER}
    lua += report[report.index("function done") :]
    return ov.run_wrk(host, port, model, 64, seconds, workdir=tmp, lua=lua)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--mode", default="pinned", choices=["pinned", "auto"])
    p.add_argument("--store", default="none", choices=["none", "sqlite"])
    p.add_argument("--latency-ms", type=float, default=50.0)
    args = p.parse_args()
    if shutil.which("tcpdump") is None:
        raise SystemExit("tcpdump not found: apt-get install tcpdump")
    if os.geteuid() != 0:
        print("note: tcpdump needs root or CAP_NET_RAW", file=sys.stderr)
    ov.setup_pinning()
    tmp = Path(tempfile.mkdtemp(prefix="trace-b-"))
    fu = ov.PinnedFake(name="bench", latency_ms=args.latency_ms, chunks=20, completion_tokens=32)
    fu.start()
    gw = ov.Tollgate(store=args.store, mode=args.mode)
    try:
        host, port = gw.start(fu)
        ov.run_wrk(host, port, gw.model, 64, 2.0)  # warm-up
        for target, front, direct in ((gw.name, port, False), ("direct", fu.port, True)):
            pcap = tmp / f"{'direct' if direct else 'gw'}.pcap"
            cap = capture(front, fu.port, pcap)
            res = load(host, front, "fake-model" if direct else gw.model, args.seconds, tmp)
            dropped = stop_capture(cap)
            print(f"{target}: wrk {ov.summarize(res)}; tcpdump: {dropped}")
            tr = follow(read_pcap(pcap), front, fu.port, direct)
            print("\n".join(describe(target, tr, direct)))
    finally:
        gw.stop()
        fu.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
