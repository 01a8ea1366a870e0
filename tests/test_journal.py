"""The record journal: a gateway killed with `kill -9` loses no record of an answered request.

Every request a client saw answered has its record once the gateway is back on the same
config (replayed from the journal of the killed process), and none is counted twice."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import signal
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import redis as redis_client

from gateway.accounting.journal import Journal
from gateway.accounting.metrics import Metrics
from gateway.accounting.recorder import Recorder
from gateway.accounting.records import RequestRecord
from gateway.accounting.store.redis_store import DEFAULT_PREFIX
from gateway.accounting.store.sqlite_store import SQLiteStore
from gateway.config import StoreConfig
from tests.fake_upstream import FakeUpstream
from tests.redis_server import RedisServer, have_redis
from tests.support import GatewayProcess, metric_samples, metric_total

Fakes = Callable[..., FakeUpstream]
needs_redis = pytest.mark.skipif(not have_redis(), reason="redis-server not installed")

# The buffer goes to the store every 0.1 s: what was written before the kill is in the store
# AND still in the journal (replayed, not counted twice); what arrived after the last write is
# only in the journal.
CONFIG = """
store: {{backend: sqlite, sqlite_path: "${{TOLLGATE_DB}}", batch_size: 1000, flush_interval_s: 0.1}}
models:
  - name: m
    tier: small
    endpoints: [{{base_url: "{url}", model: up-m}}]
"""


async def _traffic(gw: GatewayProcess, answered: dict[str, int], kill_after: int) -> None:
    """Eight clients send requests (every third one streamed) until the gateway dies, which
    happens by SIGKILL once `kill_after` answers have come back."""
    killed = asyncio.Event()

    async def client(n: int, http: httpx.AsyncClient) -> None:
        i = 0
        while not killed.is_set():
            i += 1
            stream = (i + n) % 3 == 0
            body = {"model": "m", "stream": stream, "messages": [{"role": "user", "content": "hi"}]}
            try:
                r = await http.post("/v1/chat/completions", json=body)
            except httpx.HTTPError:
                return  # the gateway is gone
            if r.status_code == 200 and (not stream or r.text.rstrip().endswith("[DONE]")):
                answered[r.headers["x-tollgate-request-id"]] = 200
            if len(answered) >= kill_after and not killed.is_set():
                killed.set()
                assert gw.proc is not None
                os.kill(gw.proc.pid, signal.SIGKILL)

    limits = httpx.Limits(max_connections=8)
    async with httpx.AsyncClient(base_url=gw.url, timeout=5, limits=limits) as http:
        await asyncio.wait_for(asyncio.gather(*(client(n, http) for n in range(8))), 60)


class _Stored:
    """The records a store holds, read straight from it: (request id, status) rows, repeats
    included."""

    def __init__(self, tmp: Path, redis: RedisServer | None) -> None:
        self.db = tmp / "tollgate.db"
        self.redis = redis

    def store_line(self, tmp: Path) -> str:
        if self.redis is None:
            return f'backend: sqlite, sqlite_path: "{self.db}"'
        return f'backend: redis, redis_url: "{self.redis.url}", journal_path: "{tmp}/rj"'

    def rows(self) -> list[tuple[str, int]]:
        if self.redis is None:
            if not self.db.exists():
                return []
            with sqlite3.connect(self.db) as c:
                return c.execute("SELECT request_id, status FROM requests").fetchall()
        r = redis_client.Redis.from_url(self.redis.url)
        try:
            out = []
            for _sid, fields in r.xrange(DEFAULT_PREFIX + "records"):
                rec = orjson.loads(fields[b"r"])
                out.append((rec["request_id"], rec["status"]))
            return out
        finally:
            r.close()


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("redis", marks=needs_redis)])
def test_kill_9_loses_no_answered_request(fakes: Fakes, tmp_path: Path, backend: str) -> None:
    up = fakes("m")
    redis = RedisServer(tmp_path / "redis").start() if backend == "redis" else None
    try:
        stored = _Stored(tmp_path, redis)
        config = CONFIG.format(url=up.base_url).replace(
            'backend: sqlite, sqlite_path: "${TOLLGATE_DB}"', stored.store_line(tmp_path)
        )
        _kill_and_restart(config, tmp_path, stored)
    finally:
        if redis is not None:
            redis.stop()


def _kill_and_restart(config: str, tmp_path: Path, stored: _Stored) -> None:
    answered: dict[str, int] = {}
    first = GatewayProcess(config, tmp_path).start()
    try:
        asyncio.run(_traffic(first, answered, kill_after=400))
        assert first.proc is not None and first.proc.wait(10) == -signal.SIGKILL
    finally:
        first.close()
    journals = list(tmp_path.glob("*j*-*.jsonl"))
    assert len(journals) == 1  # the killed process's
    stored_before = {rid for rid, _ in stored.rows()}
    assert len(answered) >= 400
    assert 0 < len(stored_before) < len(answered)  # without the journal the rest is lost

    second = GatewayProcess(config, tmp_path).start()  # same config, same store
    try:
        rows = stored.rows()  # replayed during start-up, before the gateway is healthy
        ids = [rid for rid, _ in rows]
        assert len(ids) == len(set(ids))  # none written twice
        status = dict(rows)
        missing = [rid for rid in answered if rid not in status]
        assert not missing, f"{len(missing)} of {len(answered)} answered requests not recorded"
        assert all(status[rid] == 200 for rid in answered)
        usage = httpx.get(f"{second.url}/v1/usage", params={"since": "1h"}).json()
        assert sum(row["requests"] for row in usage["data"]) == len(rows)  # none counted twice
        assert "replayed" in second.logs()
    finally:
        second.close()
    # the second gateway stopped cleanly: it wrote everything, its journal and the replayed
    # one are gone
    assert not list(tmp_path.glob("*j*-*.jsonl"))


def test_journal_off_writes_no_file(fakes: Fakes, tmp_path: Path) -> None:
    up = fakes("m")
    config = CONFIG.format(url=up.base_url).replace("flush_interval_s: 0.1", "journal: false")
    with GatewayProcess(config, tmp_path) as gw:
        r = httpx.post(
            f"{gw.base_url}/chat/completions",
            json={"model": "m", "messages": [{"role": "user", "content": "hi"}]},
        )
        assert r.status_code == 200
        assert not list(tmp_path.glob("*journal*"))


def test_journal_path_names_where_each_process_writes(fakes: Fakes, tmp_path: Path) -> None:
    up = fakes("m")
    where = tmp_path / "elsewhere" / "records"
    config = CONFIG.format(url=up.base_url).replace(
        "flush_interval_s: 0.1", f"flush_interval_s: 30, journal_path: '{where}'"
    )
    with GatewayProcess(config, tmp_path) as gw:
        r = httpx.post(
            f"{gw.base_url}/chat/completions",
            json={"model": "m", "messages": [{"role": "user", "content": "hi"}]},
        )
        assert r.status_code == 200
        assert gw.proc is not None
        files = list(where.parent.glob(f"records-{gw.proc.pid}-*.jsonl"))
        assert len(files) == 1  # this process's own file, at journal_path
        assert r.headers["x-tollgate-request-id"] in files[0].read_text()
        assert not list(tmp_path.glob("tollgate.db.journal*"))


def test_two_workers_write_two_journals(fakes: Fakes, tmp_path: Path) -> None:
    up = fakes("m")
    with GatewayProcess(CONFIG.format(url=up.base_url), tmp_path, args=["--workers", "2"]) as gw:
        deadline = time.monotonic() + 20
        files: list[Path] = []
        while len(files) < 2 and time.monotonic() < deadline:  # both workers have started
            files = list(tmp_path.glob("tollgate.db.journal-*.jsonl"))
            time.sleep(0.1)
        pids = {f.name.split("-")[1] for f in files}
        assert len(files) == 2 and len(pids) == 2  # one file per worker process
        assert gw.proc is not None and str(gw.proc.pid) not in pids  # the workers', not uvicorn's
    assert not list(tmp_path.glob("tollgate.db.journal-*"))  # stopped cleanly: all stored


def _rec(i: int, prefix: str) -> RequestRecord:
    return RequestRecord(request_id=f"{prefix}-{i}", ts=time.time(), route="m", model="m")


def _child_journal(prefix: str, tag: str, n: int, hold: Any, release: Any) -> None:
    """A worker process: journals n records; with `hold`, signals and waits while alive."""
    j = Journal(prefix, 1 << 20)
    j.open()
    for i in range(n):
        j.append(_rec(i, tag))
    if hold:
        hold.set()
        release.wait(20)
    os._exit(0)  # no clean shutdown: as if killed


def _down_store(tmp: Path) -> SQLiteStore:
    """A SQLite store that cannot open: its folder would be inside a regular file."""
    (tmp / "a-file").write_text("")
    return SQLiteStore(str(tmp / "a-file" / "t.db"))


def _store_cfg(**kw: Any) -> StoreConfig:
    return StoreConfig.model_validate({"flush_interval_s": 0.05, **kw})


def test_each_worker_has_its_own_journal_and_replay_takes_every_dead_one(tmp_path: Path) -> None:
    prefix = str(tmp_path / "t.db.journal")
    ctx = multiprocessing.get_context("spawn")
    dead = [
        ctx.Process(target=_child_journal, args=(prefix, f"w{k}", 40, None, None)) for k in (1, 2)
    ]
    for p in dead:
        p.start()
    for p in dead:
        p.join(20)
    hold, release = ctx.Event(), ctx.Event()
    alive = ctx.Process(target=_child_journal, args=(prefix, "live", 5, hold, release))
    alive.start()
    try:
        assert hold.wait(20)
        files = sorted(tmp_path.glob("t.db.journal-*.jsonl"))
        assert len(files) == 3  # one file per process, none shared

        async def replay() -> list[str]:
            store = SQLiteStore(str(tmp_path / "t.db"))
            rec = Recorder(store, _store_cfg(), Metrics(), Journal(prefix, 1 << 20))
            await rec.start()
            ids = [r.request_id for r in await store.recent(1000)]
            await rec.close()
            return ids

        ids = asyncio.run(replay())
        # the two dead workers' records, not the live one's (it still owns its file)
        assert sorted(ids) == sorted(f"w{k}-{i}" for k in (1, 2) for i in range(40))
        left = sorted(p.name for p in tmp_path.glob("t.db.journal-*.jsonl"))
        assert len(left) == 1 and f"-{alive.pid}-" in left[0]
    finally:
        release.set()
        alive.join(20)


def test_full_journal_drops_and_counts(tmp_path: Path) -> None:
    """With the store down the journal fills to journal_max_bytes; past it records are
    dropped and counted in tollgate_store_dropped_records_total, the file stays bounded."""

    async def run() -> tuple[float, int]:
        store = _down_store(tmp_path)
        cfg = _store_cfg(journal_max_bytes=65536, retry_interval_s=5)
        metrics = Metrics()
        rec = Recorder(store, cfg, metrics, Journal(tmp_path / "t.journal", cfg.journal_max_bytes))
        await rec.start()
        for i in range(2000):
            r = _rec(i, "x")
            rec.commit(r)
            rec.submit(r)
        size = sum(p.stat().st_size for p in tmp_path.glob("t.journal-*"))
        samples = metric_samples(metrics.render()[0].decode())
        await rec.close(timeout=0.2)
        return metric_total(samples, "tollgate_store_dropped_records_total"), size

    dropped, size = asyncio.run(run())
    assert 0 < size < 65536 + 2048
    assert 1000 < dropped < 2000


def test_records_the_store_refused_at_shutdown_wait_in_the_journal(tmp_path: Path) -> None:
    """The store is down through shutdown: the records are not dropped but kept in the
    journal, and the next start writes them."""
    prefix = tmp_path / "t.journal"

    async def run() -> tuple[float, list[str]]:
        down = _down_store(tmp_path)
        metrics = Metrics()
        first = Recorder(down, _store_cfg(retry_interval_s=5), metrics, Journal(prefix, 1 << 20))
        await first.start()
        for i in range(10):
            r = _rec(i, "kept")
            first.commit(r)
            first.submit(r)
        await first.close(timeout=0.2)
        dropped = metric_total(
            metric_samples(metrics.render()[0].decode()), "tollgate_store_dropped_records_total"
        )
        store = SQLiteStore(str(tmp_path / "t.db"))
        second = Recorder(store, _store_cfg(), Metrics(), Journal(prefix, 1 << 20))
        await second.start()
        ids = [r.request_id for r in await store.recent(100)]
        await second.close()
        return dropped, ids

    dropped, ids = asyncio.run(run())
    assert dropped == 0
    assert sorted(ids) == sorted(f"kept-{i}" for i in range(10))
    assert not list(tmp_path.glob("t.journal-*"))


@pytest.fixture(autouse=True)
def _no_stray_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TOLLGATE_STORE", raising=False)
