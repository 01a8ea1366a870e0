"""How long `/v1/usage?since=30d&group_by=model` takes in each store, over many records.

    .venv/bin/python bench/store_usage.py [--records 200000] [--stores sqlite,redis,postgres]

Bulk-loads `--records` client records (ts spread over the last 30 days, 6 models, 3 tiers,
latencies and costs varied) into a fresh store of each kind: SQLite in a temporary file, a
private redis-server on a free port, a new database `tollgate_bench_<random>` on the
PostgreSQL at 127.0.0.1:5432 (dropped after). Then times `store.usage(now - 30 d, None,
"model")`, what `/v1/usage?since=30d&group_by=model` runs, `--repeat` times, and prints the
median and the slowest wall time, the median CPU time (this process and the store's server
process: what the query costs on a machine busy with other work, where wall time also counts
the wait for a core), and the wall time of the load. A parallel plan's worker processes come
and go with each query and their CPU is not counted: `--pg-serial` runs the PostgreSQL
queries without workers (`max_parallel_workers_per_gather = 0`), where the CPU column is all
of it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gateway.accounting.records import RequestRecord
from gateway.accounting.store import Store
from gateway.accounting.store.postgres_store import PostgresStore
from gateway.accounting.store.redis_store import RedisStore
from gateway.accounting.store.sqlite_store import SQLiteStore
from tests.postgres_server import scratch_database
from tests.redis_server import RedisServer

DAY = 86400.0
MODELS = [("small", "small"), ("mini", "small"), ("mid", "medium"), ("mid-2", "medium"),
          ("large", "large"), ("gpt", "large")]  # fmt: skip


def records(n: int, now: float, seed: int = 1) -> list[RequestRecord]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        model, tier = rng.choice(MODELS)
        out.append(
            RequestRecord(
                request_id=f"bench-{i:08d}", ts=now - rng.uniform(0, 30 * DAY) + 60,
                key_id=rng.choice(["team-a", "team-b", None]), route="auto", model=model,
                tier=tier, status=rng.choice([200] * 30 + [429, 502]), attempts=1,
                prompt_tokens=rng.randint(10, 4000), completion_tokens=rng.randint(1, 800),
                cost_usd=rng.uniform(0, 0.02), baseline_cost_usd=rng.uniform(0, 0.05),
                latency_ms=rng.lognormvariate(6, 0.8), quality_predicted=rng.random(),
            )
        )  # fmt: skip
    return out


@contextlib.asynccontextmanager
async def open_store(
    kind: str, workdir: Path, pids: list[int] | None = None, pg_serial: bool = False
) -> AsyncIterator[Store]:
    """A fresh, open store of `kind`; everything it made is removed on exit. The PIDs of the
    server processes that do its work are appended to `pids` (the redis-server; the one
    PostgreSQL backend of a one-connection pool)."""
    s: Store
    pids = [] if pids is None else pids
    with contextlib.ExitStack() as stack:
        if kind == "sqlite":
            s = SQLiteStore(str(workdir / "bench.db"))
        elif kind == "redis":
            srv = RedisServer(workdir / "redis").start()
            stack.callback(srv.stop)
            s = RedisStore(srv.url, stream_maxlen=10_000_000)
            assert srv.proc is not None
            pids.append(srv.proc.pid)
        elif kind == "postgres":
            url = stack.enter_context(scratch_database("tollgate_bench_"))
            serial = "?options=-c%20max_parallel_workers_per_gather%3D0" if pg_serial else ""
            s = PostgresStore(url + serial, pool_min=1, pool_max=1)
        else:
            raise SystemExit(f"unknown store {kind!r}: sqlite, redis or postgres")
        await s.open()
        if kind == "postgres":
            with psycopg.connect(url) as c:
                sql = "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
                pids += [pid for (pid,) in c.execute(sql + "AND pid <> pg_backend_pid()")]
        try:
            yield s
        finally:
            await s.close()


def cpu_s(pids: list[int]) -> float:
    """CPU seconds (user + system) used so far by this process and `pids`: what a query
    costs whatever else the machine is doing, where wall time counts the wait for a core."""
    ru = resource.getrusage(resource.RUSAGE_SELF)
    total = ru.ru_utime + ru.ru_stime
    tick = os.sysconf("SC_CLK_TCK")
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / tick
    return total


async def run(kind: str, n: int, repeat: int, pg_serial: bool = False) -> str:
    now = time.time()
    recs = records(n, now)
    with tempfile.TemporaryDirectory() as d:
        pids: list[int] = []
        async with open_store(kind, Path(d), pids, pg_serial) as store:
            t0 = time.perf_counter()
            for i in range(0, n, 5000):
                await store.write_batch(recs[i : i + 5000])
            load = time.perf_counter() - t0
            assert await store.count() == n, "the load lost records"
            times, cpus = [], []
            for _ in range(repeat):
                c0, t0 = cpu_s(pids), time.perf_counter()
                rows = await store.usage(now - 30 * DAY, None, "model")
                times.append((time.perf_counter() - t0) * 1000)
                cpus.append((cpu_s(pids) - c0) * 1000)
            assert sum(r["requests"] for r in rows) == n
    wall, cpu = statistics.median(times), statistics.median(cpus)
    return f"| {kind} | {n:,} | {wall:.0f} | {max(times):.0f} | {cpu:.0f} | {load:.1f} |"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--records", type=int, default=200_000)
    p.add_argument("--stores", default="sqlite,redis,postgres")
    p.add_argument("--repeat", type=int, default=7)
    p.add_argument("--pg-serial", action="store_true", help="PostgreSQL without parallel workers")
    args = p.parse_args()
    print("| store | records | usage() median ms | slowest ms | CPU ms | load s |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for kind in args.stores.split(","):
        print(asyncio.run(run(kind.strip(), args.records, args.repeat, args.pg_serial)), flush=True)


if __name__ == "__main__":
    main()
