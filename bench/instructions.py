"""Instructions the gateway executes per request, counted by valgrind (callgrind).

    .venv/bin/python bench/instructions.py [--requests 300] [--modes pinned,auto]
        [--kinds unary,stream] [--latency-ms 0]

Timings on this shared 2-core machine swing by 2x between runs as other tenants come and go;
an instruction count does not (the same binary, inputs and environment give the same total,
whatever else the machine does). So a change to the hot path is judged here first, and by
bench/overhead.py on the clock.

For each mode (pinned model, model="auto") and kind (unary, streamed with 20 chunks) it starts
the fake upstream and `tollgate serve` under `valgrind --tool=callgrind`, warms up with 50
requests, zeroes the counters (`callgrind_control -z`), sends `--requests` requests one at a
time with the gateway key the benchmarks use, dumps the counts (`-d`) and reads the total.
Prints instructions per request and the C functions (CPython's own, uvloop, httptools,
orjson, the router's C pass) with the most self cost. Python-level attribution is
py-spy's job (bench/pyspy_profile.py): CPython 3.11 shows Python frames to callgrind only as
the interpreter loop.
"""

from __future__ import annotations

import argparse
import itertools
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

import overhead as ov

from gateway.demo.procutil import stop_process


def _control(pid: int, *args: str) -> None:
    subprocess.run(["callgrind_control", *args, str(pid)], check=True, capture_output=True)


def _post(
    c: httpx.Client, url: str, model: str, stream: bool, cache: str = "", api: str = "chat"
) -> None:
    body = ov.request_body(api, model, stream, ov.SAME_SEED if cache else ov.NO_SEED)
    if cache in ("off", "miss"):  # a request not seen before
        body = body.replace(str(ov.SEED0).encode(), str(next(ov.SEEDS)).encode())
    r = c.post(
        url,
        content=body,
        headers={"content-type": "application/json", "authorization": f"Bearer {ov.BEARER}"},
    )
    if r.status_code != 200 or (stream and ov.APIS[api][1] not in r.content):
        raise SystemExit(f"request failed: HTTP {r.status_code}: {r.text[:300]}")


START_TIMEOUT_S = 300.0  # --start-timeout: a loaded machine may need longer
_START = {"timeout_s": START_TIMEOUT_S}


def measure(
    mode: str,
    stream: bool,
    requests: int,
    tmp: Path,
    latency_ms: float = 0.0,
    store: str = "none",
    journal: bool = True,
    limits: str = "off",
    cache: str = "",
    api: str = "chat",
    sticky: bool = True,
) -> tuple[int, list[str]]:
    fu = ov.PinnedFake(name="bench", latency_ms=latency_ms, chunks=20, completion_tokens=32).start()
    out = tmp / f"callgrind-{mode}-{'stream' if stream else 'unary'}.out"
    cfg = tmp / f"routing-{mode}.yaml"
    on = cache in ("miss", "hit")
    cfg.write_text(
        ov.routing_yaml(fu.base_url, store, mode, tmp, journal, limits, cache=on, sticky=sticky)
    )
    port = ov.free_port()
    env = dict(os.environ, PYTHONPATH=str(ov.REPO))
    cmd = [
        "valgrind",
        "--tool=callgrind",
        f"--callgrind-out-file={out}",
        sys.executable,
        "-m",
        "gateway.cli",
        "serve",
        "--config",
        str(cfg),
        "--port",
        str(port),
        "--log-level",
        "warning",
    ]
    log = open(tmp / f"gateway-{mode}.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    model = "auto" if mode == "auto" else "small"
    url = f"http://127.0.0.1:{port}{ov.APIS[api][0]}"
    try:
        with httpx.Client(trust_env=False, timeout=60) as c:
            deadline = time.monotonic() + _START["timeout_s"]  # ~50x slower under valgrind
            while True:
                try:
                    if c.get(f"http://127.0.0.1:{port}/healthz").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"gateway under valgrind did not start; see {log.name}")
                time.sleep(0.5)
            for _ in range(50):
                _post(c, url, model, stream, cache, api)
            _control(proc.pid, "-z")  # zero the counters: only the window below counts
            for _ in range(requests):
                _post(c, url, model, stream, cache, api)
            time.sleep(1.0)  # let the after-response work of the last requests run: counted
            _control(proc.pid, "-d")
    finally:
        stop_process(proc, grace=30)
        fu.close()
        log.close()
    # the `-d` dump holds the collected window; the one at exit is empty: take the largest
    best: tuple[int, list[str]] = (0, [])
    for dump in tmp.glob(out.name + "*"):
        text = subprocess.run(
            ["callgrind_annotate", "--inclusive=no", "--threshold=80", str(dump)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        m = re.search(r"([\d,]+)\s+(?:\(100\.0%\)\s+)?PROGRAM TOTALS", text)
        total = int(m.group(1).replace(",", "")) if m else 0
        if total > best[0]:
            top = [ln for ln in text.splitlines() if re.match(r"\s*[\d,]+ \(\s*[\d.]+%\)\s+\S", ln)]
            best = (total, top)
        dump.unlink()
    total, top = best
    if total == 0:
        raise SystemExit("callgrind collected nothing; see the gateway log " + log.name)
    return total, top[:12]


def _stores(stores: str, journals: str) -> list[tuple[str, str]]:
    """(store, journal) pairs to measure: the journal matters to a store only."""
    return [
        (s, j) for s in stores.split(",") for j in (journals.split(",") if s != "none" else ["on"])
    ]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--requests", type=int, default=300)
    p.add_argument("--modes", default="pinned,auto")
    p.add_argument("--kinds", default="unary,stream")
    p.add_argument(
        "--latency-ms",
        type=float,
        default=0.0,
        help="the fake upstream's latency: 60 counts what a request that outlasts 50 ms costs",
    )
    p.add_argument("--store", default="none", help="none|sqlite (comma list for both)")
    ov.journal_arg(p)
    p.add_argument(
        "--limits",
        default="off",
        help="off|local (comma list for both): the bench key with an rpm, a tpm and a budget "
        "counted in a shared file (limits.backend local)",
    )
    p.add_argument(
        "--cache",
        default="",
        help="comma list of off,miss,hit: seeded requests, each new (off: the response cache "
        "off; miss: on) or all the same (hit); pinned model and one store only",
    )
    p.add_argument(
        "--api",
        default="chat",
        help="comma list of chat,messages,responses: the client API of the requests "
        "(messages: /v1/messages, responses: /v1/responses, each translated to chat)",
    )
    p.add_argument(
        "--sticky",
        default="on",
        help="on|off (comma list for both): conversation stickiness (router.sticky.enabled); "
        "auto mode only",
    )
    p.add_argument(
        "--start-timeout",
        type=float,
        default=START_TIMEOUT_S,
        help="seconds the gateway under valgrind may take to start (more on a loaded machine)",
    )
    args = p.parse_args()
    _START["timeout_s"] = args.start_timeout
    if not shutil.which("valgrind"):
        raise SystemExit("valgrind not found: apt-get install -y valgrind")
    rows = []
    with tempfile.TemporaryDirectory(prefix="tollgate-ir-") as d:
        caches = args.cache.split(",") if args.cache else [""]
        for mode in args.modes.split(","):
            for kind in args.kinds.split(","):
                for (store, journal), lim, cache, api, sticky in itertools.product(
                    _stores(args.store, args.journal),
                    args.limits.split(","),
                    caches,
                    args.api.split(","),
                    args.sticky.split(","),
                ):
                    total, top = measure(
                        mode,
                        kind == "stream",
                        args.requests,
                        Path(d),
                        args.latency_ms,
                        store,
                        journal == "on",
                        lim,
                        cache,
                        api,
                        sticky == "on",
                    )
                    per = total / args.requests
                    where = store if store == "none" else f"{store}, journal {journal}"
                    where += "" if lim == "off" else f", limits {lim}"
                    where += f", cache {cache}" if cache else ""
                    where += "" if api == "chat" else f", {ov.APIS[api][0]}"
                    where += ", sticky off" if sticky == "off" else ""
                    rows.append((mode, kind, where, per))
                    print(f"\n== {mode} {kind} ({where}): {per:,.0f} instructions per request")
                    for ln in top:
                        print("   " + ln.strip())
    print("\n| model | kind | store | instructions per request |\n| --- | --- | --- | ---: |")
    for mode, kind, where, per in rows:
        print(f"| {mode} | {kind} | {where} | {per:,.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
