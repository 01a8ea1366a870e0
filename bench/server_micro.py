"""The HTTP server protocol alone: uvicorn's httptools protocol against gateway/http/server.py.

    .venv/bin/python bench/server_micro.py [--seconds 4] [--rounds 3] [--connections 64]

A hello-world ASGI app (reads the body, answers a 50-byte JSON body with Content-Length and
the gateway's six response headers) under `uvicorn.run(..., loop="uvloop")`, once with
`http="httptools"` and once with `http=H1Server`, each in its own process pinned to core 0;
Debian's `wrk` on core 1 posts a small chat body over `--connections` keep-alive connections.
The two servers are measured in alternating rounds in one invocation, so the ratio is fair on
a noisy machine. Prints req/s per round and the median per protocol.
"""

from __future__ import annotations

import argparse
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gateway.demo.procutil import stop_process
from tests.support import free_port

BODY = b'{"id":"x","object":"chat.completion","choices":[]}'
HEADERS = [
    (b"content-type", b"application/json"),
    (b"content-length", b"%d" % len(BODY)),
    (b"x-tollgate-request-id", b"tg-0123456789abcdef0123456789a"),
    (b"x-tollgate-model", b"small"),
    (b"x-tollgate-tier", b"small"),
    (b"x-tollgate-attempts", b"1"),
    (b"x-tollgate-cost-usd", b"0.000001000000"),
]
LUA = """wrk.method = "POST"
wrk.body = '{"model":"small","messages":[{"role":"user","content":"hi"}]}'
wrk.headers["Content-Type"] = "application/json"
"""


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    while (await receive()).get("more_body"):
        pass
    await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
    await send({"type": "http.response.body", "body": BODY})


def serve(port: int, protocol: str) -> None:
    import uvicorn

    from gateway.http.server import H1Server

    http: Any = H1Server if protocol == "H1Server" else "httptools"
    uvicorn.run(app, host="127.0.0.1", port=port, loop="uvloop", http=http, lifespan="off",
                access_log=False, proxy_headers=False, log_level="warning")  # fmt: skip


def _start(protocol: str) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    here = Path(__file__).resolve().parent
    code = f"import sys; sys.path[:0] = [{str(here)!r}, {str(here.parent)!r}]; " + (
        f"from server_micro import serve; serve({port}, {protocol!r})"
    )
    proc = subprocess.Popen(["taskset", "-c", "0", sys.executable, "-c", code], cwd=here.parent)

    deadline = time.monotonic() + 20
    while True:
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"{protocol} server did not start")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc, port
        except OSError:
            time.sleep(0.05)


def _wrk(port: int, seconds: int, connections: int, script: Path) -> float:
    out = subprocess.run(
        ["taskset", "-c", "1", "wrk", "-t1", f"-c{connections}", f"-d{int(seconds)}s", "-s",
         str(script), f"http://127.0.0.1:{port}/v1/chat/completions"],
        capture_output=True, text=True, check=True, timeout=seconds + 30,
    ).stdout  # fmt: skip
    m = re.search(r"Requests/sec:\s+([0-9.]+)", out)
    if m is None:
        raise SystemExit(f"wrk printed no Requests/sec:\n{out}")
    return float(m.group(1))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=int, default=4)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--connections", type=int, default=64)
    args = p.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("needs Debian's wrk: apt-get install wrk")
    protocols = ("httptools", "H1Server")
    servers = {name: _start(name) for name in protocols}
    results: dict[str, list[float]] = {name: [] for name in protocols}
    with tempfile.TemporaryDirectory() as d:
        script = Path(d) / "post.lua"
        script.write_text(LUA)
        try:
            for r in range(args.rounds):
                for name in protocols if r % 2 == 0 else protocols[::-1]:
                    rps = _wrk(servers[name][1], args.seconds, args.connections, script)
                    results[name].append(rps)
                    print(f"round {r + 1}: {name:9s} {rps:10,.0f} req/s", flush=True)
        finally:
            for proc, _ in servers.values():
                stop_process(proc)
    print("| protocol | req/s per round | median | µs per request |")
    print("| --- | --- | ---: | ---: |")
    for name in protocols:
        med = statistics.median(results[name])
        runs = ", ".join(f"{x:,.0f}" for x in results[name])
        print(f"| {name} | {runs} | {med:,.0f} | {1e6 / med:.1f} |")


if __name__ == "__main__":
    main()
