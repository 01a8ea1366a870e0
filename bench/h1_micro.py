"""Client CPU per upstream request: gateway.http.h1.H1Pool vs a pooled httpx.AsyncClient.

    .venv/bin/python bench/h1_micro.py [--requests 5000] [--concurrency 16] [--rounds 3]
                                       [--loop uvloop|asyncio]

Both clients run in this process, in the same run, alternating rounds, against one fake
upstream subprocess (pinned to another core when there are 2+). The number reported is
``time.process_time()`` spent in this process divided by the requests made: the client's own
CPU per request (serialisation, pool, syscalls, parsing, event loop), not the upstream's.
Scenarios: a non-streamed chat completion (body read whole) and an SSE stream of 8 chunks
(iterated chunk by chunk). Median of the rounds.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx
import uvloop

from gateway.http.h1 import H1Pool
from tests.fake_upstream import FakeUpstream

BODY = b'{"model":"m","messages":[{"role":"user","content":"Write one short sentence."}]}'
STREAM_BODY = (
    b'{"model":"m","stream":true,"messages":[{"role":"user","content":"Write one sentence."}]}'
)
HEADERS = {"content-type": "application/json", "authorization": "Bearer sk-bench"}

Call = Callable[[], Awaitable[None]]


async def drive(call: Call, n: int, concurrency: int) -> float:
    """Run ``n`` calls over ``concurrency`` workers; return CPU µs per request."""
    left = n

    async def worker() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            await call()

    c0 = time.process_time()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return (time.process_time() - c0) / n * 1e6


def h1_calls(pool: H1Pool) -> tuple[Call, Call]:
    async def json_call() -> None:
        r = await pool.request("POST", "/chat/completions", BODY)
        assert r.status == 200 and r.content

    async def stream_call() -> None:
        async with await pool.stream("POST", "/chat/completions", STREAM_BODY) as r:
            assert r.status == 200
            async for _ in r.aiter_raw():
                pass

    return json_call, stream_call


def httpx_calls(client: httpx.AsyncClient) -> tuple[Call, Call]:
    async def json_call() -> None:
        r = await client.post("/chat/completions", content=BODY)
        assert r.status_code == 200 and r.content

    async def stream_call() -> None:
        async with client.stream("POST", "/chat/completions", content=STREAM_BODY) as r:
            assert r.status_code == 200
            async for _ in r.aiter_raw():
                pass

    return json_call, stream_call


async def run(base_url: str, n: int, concurrency: int, rounds: int) -> dict[str, list[float]]:
    pool = H1Pool(base_url, headers=HEADERS, read_timeout=60, max_connections=256)
    client = httpx.AsyncClient(
        base_url=base_url,
        headers=HEADERS,
        timeout=httpx.Timeout(connect=2, read=60, write=60, pool=None),
        limits=httpx.Limits(
            max_connections=256, max_keepalive_connections=256, keepalive_expiry=30
        ),
        trust_env=False,
    )
    clients = {"h1": h1_calls(pool), "httpx": httpx_calls(client)}
    results: dict[str, list[float]] = {}
    for json_call, stream_call in clients.values():  # warm up both
        await drive(json_call, 500, concurrency)
        await drive(stream_call, 200, concurrency)
    for _ in range(rounds):
        for name, (json_call, stream_call) in clients.items():
            results.setdefault(f"{name} json", []).append(await drive(json_call, n, concurrency))
            results.setdefault(f"{name} sse", []).append(
                await drive(stream_call, n // 5, concurrency)
            )
    await pool.aclose()
    await client.aclose()
    return results


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--requests", type=int, default=5000)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop")
    args = ap.parse_args()
    cores = sorted(os.sched_getaffinity(0))
    with FakeUpstream(name="bench", chunks=8) as fu:
        if len(cores) >= 2 and fu.pid is not None:
            os.sched_setaffinity(0, {cores[0]})
            os.sched_setaffinity(fu.pid, {cores[1]})
        runner = uvloop.run if args.loop == "uvloop" else asyncio.run
        results = runner(run(fu.base_url, args.requests, args.concurrency, args.rounds))
    print(
        f"client CPU µs/request ({args.loop}, concurrency {args.concurrency}, "
        f"{args.requests} json / {args.requests // 5} sse requests per round, "
        f"median of {args.rounds} rounds)"
    )
    for kind in ("json", "sse"):
        h1 = statistics.median(results[f"h1 {kind}"])
        hx = statistics.median(results[f"httpx {kind}"])
        print(f"  {kind:5s} H1Pool {h1:7.1f}   httpx {hx:7.1f}   ratio {hx / h1:4.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
