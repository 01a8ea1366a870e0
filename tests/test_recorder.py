"""The recorder against real stores: outages, overflow, a Redis killed mid-burst, shutdown flush."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.accounting.metrics import Metrics
from gateway.accounting.recorder import Recorder
from gateway.accounting.records import RequestRecord
from gateway.accounting.store.redis_store import RedisStore
from gateway.accounting.store.sqlite_store import SQLiteStore
from gateway.config import StoreConfig
from tests.redis_server import RedisServer, free_port, have_redis

needs_redis = pytest.mark.skipif(not have_redis(), reason="redis-server not installed")


def rec(i: int, prefix: str = "r") -> RequestRecord:
    return RequestRecord(
        request_id=f"{prefix}-{i}",
        ts=time.time(),
        route="chat",
        model="small",
        tier="small",
        prompt_tokens=10,
        completion_tokens=5,
        cost_usd=0.001,
        baseline_cost_usd=0.002,
        latency_ms=12.0,
        attempts=1,
    )


def cfg(**kw: object) -> StoreConfig:
    base: dict[str, object] = dict(
        queue_size=10_000, batch_size=256, flush_interval_s=0.05, retry_interval_s=0.1
    )
    base.update(kw)
    return StoreConfig.model_validate(base)


async def until(cond: Callable[[], Awaitable[bool]], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await cond():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("condition not met in time")


def dropped_metric(m: Metrics) -> float:
    body, _ = m.render()
    for fam in text_string_to_metric_families(body.decode()):
        if fam.name == "tollgate_store_dropped_records":
            return sum(s.value for s in fam.samples if s.name.endswith("_total"))
    raise AssertionError("tollgate_store_dropped_records_total not exported")


async def test_sqlite_batches_and_shutdown_flush(tmp_path: Path) -> None:
    store = SQLiteStore(str(tmp_path / "t.db"))
    m = Metrics()
    # a flush interval far beyond the test: only close() can write these
    r = Recorder(store, cfg(flush_interval_s=60, batch_size=5000), m)
    await r.start()
    for i in range(3000):
        r.submit(rec(i))
    # submit() only buffers (its cost is measured by bench/store_write.py, not here)
    assert r.queue_depth == 3000
    await r.close(timeout=10)
    assert r.queue_depth == 0 and r.dropped == 0
    check = SQLiteStore(str(tmp_path / "t.db"))
    await check.open()
    assert await check.count() == 3000
    await check.close()


@needs_redis
async def test_store_down_at_start_then_up(tmp_path: Path) -> None:
    port = free_port()
    store = RedisStore(f"redis://127.0.0.1:{port}/0", socket_timeout_s=1.0)
    m = Metrics()
    r = Recorder(store, cfg(), m)
    await r.start()  # nothing listens yet: must not raise
    for i in range(500):
        r.submit(rec(i))
    await asyncio.sleep(0.3)
    assert r.queue_depth == 500
    srv = RedisServer(tmp_path / "redis", port=port).start()
    try:
        await until(lambda: _count(store, 500))
        assert r.dropped == 0 and dropped_metric(m) == 0
        await r.close(timeout=5)
    finally:
        srv.stop()


async def _count(store: RedisStore | SQLiteStore, n: int) -> bool:
    try:
        return await store.count() == n
    except Exception:
        return False


@needs_redis
async def test_overflow_drops_newest_and_counts_exactly(tmp_path: Path) -> None:
    port = free_port()
    store = RedisStore(f"redis://127.0.0.1:{port}/0", socket_timeout_s=1.0)
    m = Metrics()
    r = Recorder(store, cfg(queue_size=100, batch_size=30), m)
    await r.start()
    for i in range(250):
        r.submit(rec(i))
        if i % 50 == 0:
            await asyncio.sleep(0.02)  # let the writer take (and fail on) a batch meanwhile
    assert r.dropped == 150
    assert dropped_metric(m) == 150
    srv = RedisServer(tmp_path / "redis", port=port).start()
    try:
        await until(lambda: _count(store, 100))
        # the first 100 were kept: an accepted record is never evicted later
        assert await store.get("r-0") is not None and await store.get("r-99") is not None
        assert await store.get("r-100") is None
        await r.close(timeout=5)
    finally:
        srv.stop()


@needs_redis
async def test_redis_killed_and_restarted_during_burst(tmp_path: Path) -> None:
    srv = RedisServer(tmp_path / "redis", durable=True).start()
    store = RedisStore(srv.url, socket_timeout_s=1.0)
    m = Metrics()
    r = Recorder(store, cfg(queue_size=10_000, batch_size=100, flush_interval_s=0.02), m)
    await r.start()
    n = 2000
    try:
        for i in range(n):
            r.submit(rec(i, "burst"))
            if i % 20 == 19:
                await asyncio.sleep(0.005)  # a burst spread over ~0.5 s, writes in flight
            if i == 600:
                written_before_kill = r.written
                srv.kill()
            if i == 1400:
                buffered_at_restart = r.queue_depth
                srv.start()
        assert written_before_kill > 0
        # everything submitted while Redis was dead was buffered (800 records)
        assert buffered_at_restart >= 800
        assert r.last_error is not None
        await until(lambda: _count(store, n), timeout=30)
        await until(_idle(r))
        assert r.dropped == 0 and dropped_metric(m) == 0
        # no double counting from retried batches: rollups and usage agree with the count
        [row] = await store.usage(None, None, "model")
        assert row["requests"] == n
        series = await store.timeseries(None, 60)
        assert sum(s["requests"] for s in series) == n
    finally:
        await r.close(timeout=5)
        srv.stop()


def _idle(r: Recorder) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return r.queue_depth == 0

    return check


@needs_redis
async def test_quality_attaches_wherever_the_record_is(tmp_path: Path) -> None:
    srv = RedisServer(tmp_path / "redis").start()
    store = RedisStore(srv.url, prefix=f"q{uuid.uuid4().hex[:6]}:", socket_timeout_s=1.0)
    r = Recorder(store, cfg(flush_interval_s=0.05), Metrics())
    await r.start()
    try:
        # 1. still in the buffer: updated in place
        r.submit(rec(1))
        got = await r.attach_quality("r-1", "feedback", 0.9)
        assert (got.status, got.model) == ("attached", "small")
        # 2. already stored: updated in the store
        r.submit(rec(2))
        await until(_idle(r))
        assert (await r.attach_quality("r-2", "judge", 0.4)).status == "attached"
        # 3. unknown id
        assert (await r.attach_quality("nope", "feedback", 1.0)).status == "unknown"
        stored1, stored2 = await store.get("r-1"), await store.get("r-2")
        assert stored1 is not None and stored1.quality_feedback == 0.9
        assert stored2 is not None and stored2.quality_judge == 0.4
        # 4. store down: queued behind the records and applied when it is back
        port = srv.port
        srv.stop()
        r.submit(rec(3))
        await asyncio.sleep(0.2)  # r-3 is now the batch being retried
        assert (await r.attach_quality("r-3", "feedback", 0.1)).status == "attached"
        assert (await r.attach_quality("r-2", "feedback", 0.2)).status == "queued"
        srv = RedisServer(tmp_path / "redis2", port=port).start()
        await until(_idle(r))
        # the non-durable server lost r-1, r-2; r-3 and its score arrive, in order
        s3 = await store.get("r-3")
        assert s3 is not None and s3.quality_feedback == 0.1
    finally:
        await r.close(timeout=5)
        srv.stop()


async def test_no_store_is_a_noop() -> None:
    r = Recorder(None, cfg(), Metrics())
    await r.start()
    r.submit(rec(1))
    assert r.queue_depth == 0
    assert (await r.attach_quality("r-1", "feedback", 1.0)).status == "disabled"
    await r.close(timeout=1)


async def test_close_with_store_down_counts_leftovers(tmp_path: Path) -> None:
    store = RedisStore(f"redis://127.0.0.1:{free_port()}/0", socket_timeout_s=0.5)
    m = Metrics()
    r = Recorder(store, cfg(), m)
    await r.start()
    for i in range(40):
        r.submit(rec(i))
    await r.close(timeout=0.5)
    assert r.dropped == 40 and dropped_metric(m) == 40


async def test_submit_after_close_is_counted(tmp_path: Path) -> None:
    m = Metrics()
    r = Recorder(SQLiteStore(str(tmp_path / "t.db")), cfg(), m)
    await r.start()
    r.submit(rec(1))
    await r.close(timeout=5)
    r.submit(rec(2))  # a straggler after shutdown: not written, so counted
    assert r.dropped == 1 and dropped_metric(m) == 1


def write_sizes(store: SQLiteStore) -> list[int]:
    """The sizes of the batches the store is asked to write, in order (the writes still happen)."""
    sizes: list[int] = []
    write = store.write_batch

    async def counted(records: list[RequestRecord]) -> None:
        sizes.append(len(records))
        await write(records)

    store.write_batch = counted  # type: ignore[method-assign]  # observe the real writes
    return sizes


async def test_trickle_is_written_in_full_batches(tmp_path: Path) -> None:
    """Records that trickle in go out in batches of batch_size (the rest once the oldest has
    waited flush_interval_s), not in one small transaction per write cycle."""
    store = SQLiteStore(str(tmp_path / "t.db"))
    sizes = write_sizes(store)
    r = Recorder(store, cfg(batch_size=32, flush_interval_s=0.5), Metrics())
    await r.start()
    for i in range(100):
        r.submit(rec(i))
        await asyncio.sleep(0.002)

    async def all_written() -> bool:
        return r.written == 100

    await until(all_written)
    assert sizes == [32, 32, 32, 4]
    await r.close()


async def test_backlog_is_written_in_catch_up_batches(tmp_path: Path) -> None:
    """While the writer keeps up it writes batch_size records at a time. Once three batches
    wait, or while the gateway closes, it takes many batches in one write."""
    store = SQLiteStore(str(tmp_path / "t.db"))
    sizes = write_sizes(store)
    r = Recorder(store, cfg(batch_size=32, flush_interval_s=0.2), Metrics())
    await r.start()
    for i in range(160):  # five batches at once: behind, so written in one go
        r.submit(rec(i))

    async def all_written() -> bool:
        return r.written == 160

    await until(all_written)
    for i in range(160, 230):  # two batches and 6: not behind, so batch by batch
        r.submit(rec(i))

    async def rest_written() -> bool:
        return r.written == 230

    await until(rest_written)
    for i in range(230, 330):  # closing: whatever is left, at once
        r.submit(rec(i))
    await r.close()
    assert sizes == [160, 32, 32, 6, 100]
    check = SQLiteStore(str(tmp_path / "t.db"))
    await check.open()
    assert await check.count() == 330
    await check.close()


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("redis", marks=needs_redis)])
async def test_writer_keeps_up_with_a_saturated_event_loop(tmp_path: Path, backend: str) -> None:
    """A saturated gateway gives the recorder one event-loop turn in many milliseconds. The
    writer must still keep up with 100 records per turn: none dropped, all stored. (Writing
    one batch_size batch per write dropped most of them: a write needs a few turns.)"""
    srv = RedisServer(tmp_path / "redis").start() if backend == "redis" else None
    try:

        def make() -> SQLiteStore | RedisStore:
            return RedisStore(srv.url) if srv is not None else SQLiteStore(str(tmp_path / "t.db"))

        m = Metrics()
        r = Recorder(make(), cfg(batch_size=32, queue_size=2000, flush_interval_s=0.25), m)
        await r.start()
        n = 0
        for _turn in range(60):
            for _ in range(100):
                r.submit(rec(n))
                n += 1
            time.sleep(0.02)  # the loop is busy with requests for 20 ms, no await in between
            await asyncio.sleep(0)  # one turn of the loop for everything else
        assert (r.dropped, dropped_metric(m)) == (0, 0)
        await r.close()  # closes its store
        check = make()
        await check.open()
        assert await check.count() == 6000
        await check.close()
    finally:
        if srv is not None:
            srv.stop()
