"""Upstream HTTP client cost per request: httpx (as gateway/upstreams/pool.py sets it up)
vs aiohttp.

    bench/.litellm-venv/bin/python bench/client_micro.py [--seconds 8] [--concurrency 1,64,256]

Not part of `make bench`: evidence for choosing the gateway's upstream client. Runs each
client in this process, pinned to core 0 (where the gateway runs), against the fake upstream
on core 1, and reports requests/s and the process CPU time per request. Needs a Python with
httpx, aiohttp and uvloop: the LiteLLM venv has all three (the gateway's venv has no aiohttp).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

BODY = (
    b'{"model":"m","messages":[{"role":"user","content":"Write one short sentence."}],'
    b'"max_tokens":32}'
)


def cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


async def drive(call, concurrency: int, seconds: float) -> tuple[int, float, float]:
    n = 0
    stop = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal n
        while time.perf_counter() < stop:
            await call()
            n += 1

    c0, t0 = cpu(), time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return n, time.perf_counter() - t0, cpu() - c0


async def bench_httpx(base: str, conc: int, secs: float) -> tuple[int, float, float]:
    import httpx

    async with httpx.AsyncClient(
        base_url=base,
        headers={"content-type": "application/json"},
        timeout=httpx.Timeout(connect=2, read=60, write=60, pool=None),
        limits=httpx.Limits(
            max_connections=256, max_keepalive_connections=256, keepalive_expiry=30
        ),
        trust_env=False,
    ) as c:

        async def call() -> None:
            r = await c.post("/chat/completions", content=BODY)
            assert r.status_code == 200

        await drive(call, conc, 1.0)
        return await drive(call, conc, secs)


async def bench_httpx_sharded(base: str, conc: int, secs: float) -> tuple[int, float, float]:
    """8 AsyncClients of 32 connections each, round robin: bounds httpcore's O(n) pool scan."""
    import itertools

    import httpx

    clients = [
        httpx.AsyncClient(
            base_url=base,
            headers={"content-type": "application/json"},
            timeout=httpx.Timeout(connect=2, read=60, write=60, pool=None),
            limits=httpx.Limits(
                max_connections=32, max_keepalive_connections=32, keepalive_expiry=30
            ),
            trust_env=False,
        )
        for _ in range(8)
    ]
    rr = itertools.cycle(clients)
    try:

        async def call() -> None:
            r = await next(rr).post("/chat/completions", content=BODY)
            assert r.status_code == 200

        await drive(call, conc, 1.0)
        return await drive(call, conc, secs)
    finally:
        for c in clients:
            await c.aclose()


async def bench_aiohttp(base: str, conc: int, secs: float) -> tuple[int, float, float]:
    import aiohttp

    conn = aiohttp.TCPConnector(limit=256, keepalive_timeout=30)
    async with aiohttp.ClientSession(
        base_url=base + "/", connector=conn, headers={"content-type": "application/json"}
    ) as s:

        async def call() -> None:
            async with s.post("chat/completions", data=BODY) as r:
                await r.read()
                assert r.status == 200

        await drive(call, conc, 1.0)
        return await drive(call, conc, secs)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--seconds", type=float, default=8.0)
    p.add_argument("--concurrency", default="1,64,256")
    p.add_argument("--no-write", action="store_true", help="do not write bench/results/latest.md")
    args = p.parse_args()
    import overhead as ov
    import uvloop

    class Fake(ov.PinnedFake):
        """The fake upstream runs under the gateway's venv, not this interpreter's."""

        def _command(self, port: int) -> list[str]:
            cmd = super()._command(port)
            gw_py = str(REPO / ".venv" / "bin" / "python")
            return [gw_py if c == sys.executable else c for c in cmd]

    rows: list[str] = []
    fu = Fake(name="bench", completion_tokens=32).start()
    os.sched_setaffinity(0, {int(ov.GW_CORE)})
    try:
        for conc in [int(x) for x in args.concurrency.split(",")]:
            for name, fn in (
                ("httpx", bench_httpx),
                ("httpx x8", bench_httpx_sharded),
                ("aiohttp", bench_aiohttp),
            ):
                with asyncio.Runner(loop_factory=uvloop.new_event_loop) as r:
                    n, wall, used = r.run(fn(fu.base_url, conc, args.seconds))
                print(
                    f"concurrency {conc:>3}  {name:8s} {n / wall:8.0f} req/s  "
                    f"{used / n * 1e6:7.0f} µs CPU/request",
                    flush=True,
                )
                rows.append(f"| {conc} | {name} | {n / wall:,.0f} | {used / n * 1e6:,.0f} |")
    finally:
        fu.close()
    if not args.no_write:
        import aiohttp
        import httpx

        body = "\n".join(
            [
                "- command: `"
                + " ".join(
                    [
                        sys.executable.replace(str(REPO) + "/", ""),
                        "bench/client_micro.py",
                        *sys.argv[1:],
                    ]
                )
                + "`",
                f"- date: {ov.dt.datetime.now(ov.dt.UTC).strftime('%Y-%m-%d %H:%M UTC')}, "
                f"git commit `{ov.git_commit()}`",
                "- the upstream client alone (no gateway), in one process pinned to core 0, "
                "closed loop at the given concurrency against the fake upstream on core 1; "
                f"httpx {httpx.__version__} configured as gateway/upstreams/pool.py does "
                "(one AsyncClient, 256 connections); `httpx x8` = 8 AsyncClients of 32 "
                "connections, round robin; "
                f"aiohttp {aiohttp.__version__} = one ClientSession, TCPConnector(limit=256)",
                "",
                "| concurrency | client | req/s | CPU µs/request |",
                "| ---: | --- | ---: | ---: |",
                *rows,
            ]
        )
        ov.update_subsection("Gateway overhead", ov.CLIENT_HEAD, body)
        print("updated bench/results/latest.md: " + ov.CLIENT_HEAD)
    return 0


if __name__ == "__main__":
    sys.exit(main())
