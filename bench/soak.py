"""Soak: many requests over every API face, some failing, some clients slow or vanishing,
with the gateway's RSS, open file descriptors and upstream connections sampled.

    nice .venv/bin/python bench/soak.py [--requests 100000] [--samples 10] [--concurrency 16]

One gateway (SQLite store, journal on) in front of one fake upstream (tests/fake_upstream.py)
and a model whose endpoint refuses connections. The mix, in turn: chat (unary and streamed),
completions, embeddings, the Responses API (unary and streamed), Anthropic Messages
(unary and streamed), an unknown model (404), an invalid body (400), the dead endpoint
(502/503), a client that reads a stream slowly, and a client that goes away after the first
bytes of a stream. After each `requests / samples` requests, once the gateway is idle, it
samples the gateway's VmRSS, its open descriptors (/proc/PID/fd) and its TCP connections to
the upstream (/proc/net/tcp by socket inode). Bounded: the run stops after its requests, and
each request has a 60 s client timeout. Prints one row per sample and a verdict: RSS at the
end within 10% of the sample at 10% of the run, descriptors and upstream connections back
to their first idle values.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.fake_upstream import FakeUpstream  # noqa: E402
from tests.support import GatewayProcess, free_port  # noqa: E402

MSG = [{"role": "user", "content": "Summarise the toll road's pricing rules in a sentence."}]


def _kinds() -> list[tuple[str, str, dict[str, Any], str]]:
    """(name, path, body, how): how is 'read', 'slow' or 'vanish'."""
    chat = {"model": "m", "messages": MSG}
    return [
        ("chat", "/v1/chat/completions", chat, "read"),
        ("chat-stream", "/v1/chat/completions", {**chat, "stream": True}, "read"),
        ("completions", "/v1/completions", {"model": "m", "prompt": "toll"}, "read"),
        ("embeddings", "/v1/embeddings", {"model": "e", "input": "toll road"}, "read"),
        ("responses", "/v1/responses", {"model": "m", "input": "a haiku"}, "read"),
        (
            "responses-stream",
            "/v1/responses",
            {"model": "m", "input": "a haiku", "stream": True},
            "read",
        ),
        ("messages", "/v1/messages", {"model": "m", "max_tokens": 64, "messages": MSG}, "read"),
        (
            "messages-stream",
            "/v1/messages",
            {"model": "m", "max_tokens": 64, "messages": MSG, "stream": True},
            "read",
        ),
        ("unknown-model", "/v1/chat/completions", {**chat, "model": "nope"}, "read"),
        ("invalid-body", "/v1/chat/completions", {"model": "m", "messages": 7}, "read"),
        ("dead-upstream", "/v1/chat/completions", {**chat, "model": "dead"}, "read"),
        ("slow-client", "/v1/chat/completions", {**chat, "stream": True}, "slow"),
        ("vanishing-client", "/v1/chat/completions", {**chat, "stream": True}, "vanish"),
    ]


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return -1


def fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def upstream_conns(pid: int, port: int) -> int:
    """The gateway's TCP sockets connected to 127.0.0.1:port (ESTABLISHED)."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if link.startswith("socket:["):
            inodes.add(link[8:-1])
    n = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        f = line.split()
        if f[3] == "01" and int(f[2].split(":")[1], 16) == port and f[9] in inodes:
            n += 1
    return n


async def one(c: httpx.AsyncClient, kind: tuple[str, str, dict[str, Any], str]) -> int:
    _name, path, body, how = kind
    try:
        async with c.stream("POST", path, json=body) as r:
            if how == "vanish":
                async for _ in r.aiter_raw():
                    break  # gone after the first bytes
                return r.status_code
            async for _ in r.aiter_raw():
                if how == "slow":
                    await asyncio.sleep(0.02)
            return r.status_code
    except httpx.HTTPError:
        return -1


async def run(gw: GatewayProcess, up_port: int, args: argparse.Namespace) -> list[dict[str, Any]]:
    assert gw.proc is not None
    pid = gw.proc.pid
    kinds = _kinds()
    per = max(1, args.requests // args.samples)
    rows: list[dict[str, Any]] = []
    statuses: dict[str, dict[int, int]] = {k[0]: {} for k in kinds}
    sent = 0
    limits = httpx.Limits(max_connections=args.concurrency)
    async with httpx.AsyncClient(base_url=gw.url, timeout=60, limits=limits) as c:
        t0 = time.monotonic()
        while sent < args.requests:
            batch = min(per, args.requests - sent)
            queue = iter(range(sent, sent + batch))

            async def worker(q: Any = queue) -> None:
                for i in q:
                    k = kinds[i % len(kinds)]
                    s = await one(c, k)
                    statuses[k[0]][s] = statuses[k[0]].get(s, 0) + 1

            await asyncio.gather(*(worker() for _ in range(args.concurrency)))
            sent += batch
            await asyncio.sleep(1.0)  # idle: vanished clients' requests have ended
            rows.append(
                {
                    "requests": sent,
                    "rss_mib": rss_kib(pid) / 1024,
                    "fds": fds(pid),
                    "upstream_conns": upstream_conns(pid, up_port),
                    "elapsed_s": time.monotonic() - t0,
                }
            )
            r = rows[-1]
            print(
                f"{r['requests']:>8} requests  RSS {r['rss_mib']:7.1f} MiB  fds {r['fds']:4d}  "
                f"upstream conns {r['upstream_conns']:3d}  {r['elapsed_s']:7.1f} s",
                flush=True,
            )
    print("statuses per kind:", {k: dict(sorted(v.items())) for k, v in statuses.items()})
    return rows


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--requests", type=int, default=100_000)
    p.add_argument("--samples", type=int, default=10)
    p.add_argument("--concurrency", type=int, default=16)
    args = p.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="tollgate-soak-"))
    up = FakeUpstream(name="soak", latency_ms=0, chunks=8, completion_tokens=16).start()
    up_port = int(up.base_url.rsplit(":", 1)[1].split("/")[0])
    cfg = "\n".join(
        [
            f'store: {{backend: sqlite, sqlite_path: "{tmp}/records.db"}}',
            "models:",
            "  - name: m",
            "    tier: small",
            "    retries: 0",
            f"    endpoints: [{{base_url: '{up.base_url}'}}]",
            "  - name: e",
            "    tier: small",
            "    kinds: [embeddings]",
            f"    endpoints: [{{base_url: '{up.base_url}'}}]",
            "  - name: dead",
            "    tier: small",
            "    retries: 0",
            f"    endpoints: [{{base_url: 'http://127.0.0.1:{free_port()}/v1'}}]",
        ]
    )
    gw = GatewayProcess(cfg + "\n", tmp, args=["--log-level", "warning"])
    try:
        gw.start(timeout=120)
        rows = asyncio.run(run(gw, up_port, args))
    finally:
        gw.close()
        up.close()
    first = rows[0]
    at10 = rows[max(0, len(rows) // 10 - 1)] if len(rows) >= 10 else first
    last = rows[-1]
    growth = (last["rss_mib"] - at10["rss_mib"]) / at10["rss_mib"]
    print(
        f"RSS after {at10['requests']:,}: {at10['rss_mib']:.1f} MiB, after {last['requests']:,}: "
        f"{last['rss_mib']:.1f} MiB ({growth:+.1%}); fds {first['fds']} -> {last['fds']}; "
        f"upstream connections {first['upstream_conns']} -> {last['upstream_conns']}"
    )
    flat = (
        growth <= 0.10
        and last["fds"] <= first["fds"]
        and last["upstream_conns"] <= max(first["upstream_conns"], args.concurrency)
    )
    print("flat" if flat else "NOT flat")
    return 0 if flat else 1


if __name__ == "__main__":
    raise SystemExit(main())
