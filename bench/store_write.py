"""CPU the SQLite (or PostgreSQL) store spends per request record, as the recorder writes them.

    taskset -c 0 .venv/bin/python bench/store_write.py [--records 60000] [--repeat 2]
        [--backend sqlite|postgres]

Writes `--records` records shaped like a routed request's (`model="auto"`: the router's scores
and its 32-number prompt vector included) through `SQLiteStore.write_batch` in batches of 32,
as the recorder does, into a fresh database in a temporary directory, and prints the process
CPU time (user + system, the writer thread included) per record, the wall time per record and
the database bytes per record. It also times `Recorder.submit` (what the request path itself
pays to hand a record over) and `Recorder.commit` (the record journal's append, paid before
the response's last byte). Two kinds of request id are compared in the same run:
`random` (`tg-` + 24 random hex digits, the gateway's ids before) and `time-ordered` (what
`gateway.proxy.new_request_id` makes now). The gateway pins its writer thread to the same core
as the event loop, so every microsecond here is one the request path does not get.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import resource
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.store_usage import open_store
from gateway.accounting.journal import Journal
from gateway.accounting.metrics import Metrics
from gateway.accounting.recorder import Recorder
from gateway.accounting.records import RequestRecord
from gateway.accounting.store.postgres_store import PostgresStore
from gateway.accounting.store.sqlite_store import SQLiteStore
from gateway.config import StoreConfig
from gateway.proxy import new_request_id


def _random_id() -> str:
    return "tg-" + os.urandom(12).hex()


def _record(make_id: Callable[[], str], features: list[float]) -> RequestRecord:
    return RequestRecord(
        request_id=make_id(), ts=time.time(), key_id="bench", route="auto", policy="balanced",
        model="small", tier="small", router_score=0.41,
        router_scores={"small": 0.6, "medium": 0.7, "large": 0.8, "gpt": 0.85},
        router_features=features, attempts=1, prompt_tokens=20, completion_tokens=32,
        cost_usd=1e-6, baseline_cost_usd=3e-6, baseline_model="large", latency_ms=0.5,
        upstream_ms=0.2, overhead_ms=0.3, quality_predicted=0.6,
    )  # fmt: skip


async def _write(
    n: int, make_id: Callable[[], str], backend: str = "sqlite"
) -> tuple[float, float, float]:
    rng = random.Random(1)
    features = [rng.uniform(-1, 1) for _ in range(32)]
    records = [_record(make_id, features) for _ in range(n)]
    with tempfile.TemporaryDirectory() as d:
        async with open_store(backend, Path(d)) as store:
            r0 = resource.getrusage(resource.RUSAGE_SELF)
            t0 = time.perf_counter()
            for i in range(0, n, 32):
                await store.write_batch(records[i : i + 32])
            wall = time.perf_counter() - t0
            r1 = resource.getrusage(resource.RUSAGE_SELF)
            if isinstance(store, PostgresStore):
                size = float(await store.table_bytes())
        if backend == "sqlite":
            size = sum(p.stat().st_size for p in Path(d).iterdir())
    cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    return cpu / n * 1e6, wall / n * 1e6, size / n


async def _hand_over_us(n: int, journal: bool) -> float:
    """Wall µs per Recorder.submit, with nothing written meanwhile (flush interval 1 h); with
    `journal`, per Recorder.commit (one journal line: orjson + os.write) instead."""
    rng = random.Random(2)
    features = [rng.uniform(-1, 1) for _ in range(32)]
    records = [_record(new_request_id, features) for _ in range(n)]
    with tempfile.TemporaryDirectory() as d:
        cfg = StoreConfig(queue_size=n + 10, batch_size=n + 10, flush_interval_s=3600)
        j = Journal(os.path.join(d, "bench.db.journal"), cfg.journal_max_bytes) if journal else None
        rec = Recorder(SQLiteStore(os.path.join(d, "bench.db")), cfg, Metrics(), j)
        await rec.start()
        step = rec.commit if journal else rec.submit
        t0 = time.perf_counter()
        for r in records:
            step(r)
        took = time.perf_counter() - t0
        if journal:
            for r in records:
                rec.submit(r)
        await rec.close()
    return took / n * 1e6


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--records", type=int, default=60000)
    p.add_argument("--repeat", type=int, default=2, help="alternating runs of each kind")
    p.add_argument(
        "--backend", default="sqlite", choices=["sqlite", "postgres"],
        help="postgres: a new database on 127.0.0.1:5432, dropped after (CPU is this "
        "process's only; the server's is not counted)",
    )  # fmt: skip
    args = p.parse_args()
    print(f"{args.backend}:")
    print("| request ids | CPU µs/record | wall µs/record | bytes/record |")
    print("| --- | ---: | ---: | ---: |")
    for _ in range(args.repeat):
        for name, make_id in (("random", _random_id), ("time-ordered", new_request_id)):
            cpu, wall, size = asyncio.run(_write(args.records, make_id, args.backend))
            print(f"| {name} | {cpu:.1f} | {wall:.1f} | {size:,.0f} |")
    subs = [
        asyncio.run(_hand_over_us(min(args.records, 10_000), False)) for _ in range(args.repeat)
    ]
    print(f"\nRecorder.submit: {', '.join(f'{u:.2f}' for u in subs)} µs per record (wall)")
    coms = [asyncio.run(_hand_over_us(min(args.records, 10_000), True)) for _ in range(args.repeat)]
    print(f"Recorder.commit (journal): {', '.join(f'{u:.2f}' for u in coms)} µs per record (wall)")


if __name__ == "__main__":
    main()
