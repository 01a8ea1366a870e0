"""One suite, run unchanged against every store backend: SQLite, a real redis-server, a real
three-node Redis Cluster and a real PostgreSQL (a database of its own per test)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.accounting.records import (
    CLIENT,
    JUDGE,
    OVER_BUDGET,
    RATE_LIMITED,
    SCHEMA_VERSION,
    RequestRecord,
)
from gateway.accounting.store import (
    Store,
    StoreError,
    StoreUnavailable,
    describe_store,
    make_store,
)
from gateway.accounting.store.base import Retention
from gateway.accounting.store.postgres_store import PostgresStore
from gateway.accounting.store.redis_store import RedisStore
from gateway.accounting.store.sqlite_store import SQLiteStore, _statement_sizes
from gateway.config import StoreConfig
from tests.postgres_server import postgres_url
from tests.redis_server import RedisClusterServers, RedisServer, have_redis

__all__ = ["postgres_url"]  # a fixture

T0 = 1_699_999_980.0  # a minute boundary (28_333_333 * 60), 180 s into a 300 s bucket


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    if not have_redis():
        pytest.skip("redis-server not installed")
    srv = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield srv
    srv.stop()


MakeStore = Callable[..., Store]


@pytest.fixture(params=["sqlite", "redis", "redis-cluster", "postgres"])
async def make(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[MakeStore]:
    """Factory of stores of one backend that share their records (one SQLite file, one Redis
    prefix, one PostgreSQL database); keyword arguments go to the store. Closed at the end."""
    made: list[Store] = []
    if request.param == "sqlite":
        path = str(tmp_path / "sub" / "tollgate.db")

        def new(**kw: Any) -> Store:
            return SQLiteStore(path, **kw)
    elif request.param == "redis":
        url = request.getfixturevalue("redis_server").url
        prefix = f"t{uuid.uuid4().hex[:8]}:"

        def new(**kw: Any) -> Store:
            return RedisStore(url, stream_maxlen=100_000, prefix=prefix, **kw)
    elif request.param == "redis-cluster":  # each test's own hash tag: a slot of any node
        cluster: RedisClusterServers = request.getfixturevalue("redis_cluster")
        tag = f"{{t{uuid.uuid4().hex[:8]}}}:"

        def new(**kw: Any) -> Store:
            return RedisStore(cluster.url, stream_maxlen=100_000, prefix=tag, cluster=True, **kw)
    else:
        pg: str = request.getfixturevalue("postgres_url")

        def new(**kw: Any) -> Store:
            return PostgresStore(pg, **kw)

    def tracked(**kw: Any) -> Store:
        made.append(s := new(**kw))
        return s

    yield tracked
    for s in made:
        await s.close()


@pytest.fixture
async def store(make: MakeStore) -> Store:
    s = make()
    await s.open()
    return s


def rec(i: int, **kw: object) -> RequestRecord:
    base: dict[str, object] = dict(
        request_id=f"req-{i}",
        ts=T0 + i,
        route="chat",
        model="small",
        tier="small",
        key_id="k1",
        prompt_tokens=100,
        completion_tokens=50,
        cost_usd=0.001,
        baseline_cost_usd=0.004,
        latency_ms=100.0 + i,
        attempts=1,
    )
    base.update(kw)
    return RequestRecord(**base)  # type: ignore[arg-type]


async def test_write_get_roundtrip_every_field(store: Store) -> None:
    r = rec(
        1,
        router_scores={"small": 0.4, "large": 0.8},
        router_score=0.3,
        stream=True,
        tokens_estimated=True,
        ttft_ms=12.5,
        cached_tokens=30,
        error_type=None,
        quality_predicted=0.7,
        baseline_model="large",
        cache_hit=True,
        router_features=[0.5, -0.25, 1.0, 0.125, 0.0],  # exact in float32 (SQLite's format)
        propensity=0.15,
        explored=True,
    )
    await store.write_batch([r])
    got = await store.get("req-1")
    assert got == r
    assert got is not None and got.schema_version == SCHEMA_VERSION
    assert await store.get("nope") is None
    assert await store.count() == 1


async def test_rewrite_is_idempotent(store: Store) -> None:
    batch = [rec(i) for i in range(10)]
    await store.write_batch(batch)
    await store.write_batch(batch)  # a retried batch whose first attempt did land
    await store.write_batch([rec(3, cost_usd=99.0)])  # same id: the first write wins
    assert await store.count() == 10
    rows = await store.usage(None, None, "model")
    assert rows[0]["requests"] == 10
    assert rows[0]["cost_usd"] == pytest.approx(0.01, abs=1e-12)


async def test_usage_groups_and_window(store: Store) -> None:
    records = [
        rec(i, model="small", tier="small", latency_ms=float(10 * (i + 1))) for i in range(10)
    ]
    records += [
        rec(
            100 + i,
            model="large",
            tier="large",
            key_id=None,
            cost_usd=0.004,
            latency_ms=500.0,
            status=502 if i == 0 else 200,
            tokens_estimated=i == 1,
        )
        for i in range(4)
    ]
    await store.write_batch(records)
    rows = {r["group"]: r for r in await store.usage(None, None, "model")}
    small, large = rows["small"], rows["large"]
    assert small["requests"] == 10 and large["requests"] == 4
    assert small["prompt_tokens"] == 1000 and small["completion_tokens"] == 500
    # cost 10 * 0.001 = 0.01, reference 10 * 0.004 = 0.04 -> savings vs reference 0.03 = 75 %
    assert small["cost_usd"] == pytest.approx(0.01, abs=1e-12)
    assert small["reference_cost_usd"] == pytest.approx(0.04, abs=1e-12)
    assert small["savings_vs_reference_usd"] == pytest.approx(0.03, abs=1e-12)
    assert small["savings_vs_reference_pct"] == pytest.approx(75.0)
    # the same numbers under their earlier names, for existing clients
    for old, new in (("baseline_cost_usd", "reference_cost_usd"),
                     ("savings_usd", "savings_vs_reference_usd"),
                     ("savings_pct", "savings_vs_reference_pct")):  # fmt: skip
        assert small[old] == small[new] and large[old] == large[new]
    # latencies 10..100: p50 = (50 + 60) / 2 = 55; p95 at rank 8.55 -> 90 + 0.55 * 10 = 95.5
    assert small["latency_p50_ms"] == pytest.approx(55.0)
    assert small["latency_p95_ms"] == pytest.approx(95.5)
    assert large["savings_pct"] == pytest.approx(0.0)
    assert large["errors"] == 1 and small["errors"] == 0
    assert large["estimated"] == 1
    # rows come most expensive first
    assert [r["group"] for r in await store.usage(None, None, "model")] == ["large", "small"]

    keys = {r["group"]: r["requests"] for r in await store.usage(None, None, "key")}
    assert keys == {"k1": 10, "(none)": 4}
    tiers = {r["group"]: r["requests"] for r in await store.usage(None, None, "tier")}
    assert tiers == {"small": 10, "large": 4}
    routes = {r["group"]: r["requests"] for r in await store.usage(None, None, "route")}
    assert routes == {"chat": 14}

    # window: since inclusive, until exclusive; small has ts T0+0..T0+9
    win = {r["group"]: r["requests"] for r in await store.usage(T0 + 3, T0 + 7, "model")}
    assert win == {"small": 4}
    assert await store.usage(T0 + 10_000, None, "model") == []

    with pytest.raises(ValueError, match="group_by must be one of model, tier, key, route"):
        await store.usage(None, None, "colour")


async def test_usage_counts_cache_hits_and_what_they_saved(store: Store) -> None:
    # a hit costs nothing; its reference is what the original request cost
    hits = [rec(i, cost_usd=0.0, baseline_cost_usd=0.003, cache_hit=True) for i in range(3)]
    await store.write_batch([rec(10), rec(11), *hits])
    (row,) = await store.usage(None, None, "model")
    assert row["requests"] == 5 and row["cache_hits"] == 3
    assert row["cache_saved_usd"] == pytest.approx(0.009, abs=1e-12)
    assert row["cost_usd"] == pytest.approx(0.002, abs=1e-12)


async def test_usage_counts_the_gateways_limit_rejections(store: Store) -> None:
    """Requests the gateway's own limits refused (error_type = the code the client got)
    count as limit rejections; an upstream's 429 does not."""
    refused = [
        rec(1, status=429, error_type=RATE_LIMITED, key_id="a", model=None),
        rec(2, status=429, error_type=OVER_BUDGET, key_id="a", model=None),
        rec(3, status=429, error_type="rate_limit_error", key_id="a"),  # the upstream's
        rec(4, status=429, error_type=RATE_LIMITED, key_id="b", model=None),
    ]
    await store.write_batch([rec(10, key_id="a"), *refused])
    rows = {r["group"]: r for r in await store.usage(None, None, "key")}
    assert rows["a"]["limit_rejections"] == 2 and rows["a"]["errors"] == 3
    assert rows["b"]["limit_rejections"] == 1
    assert [r["limit_rejections"] for r in await store.usage(None, None, "key", key_id="a")] == [2]


async def test_quality_scores_and_means(store: Store) -> None:
    await store.write_batch(
        [
            rec(1, quality_predicted=0.5),
            rec(2, quality_predicted=0.7),
            rec(3),
            rec(4),
        ]
    )
    assert await store.set_quality("req-1", "feedback", 1.0)
    assert await store.set_quality("req-1", "judge", 0.2)
    assert await store.set_quality("req-2", "judge", 0.6)
    assert await store.set_quality("req-3", "feedback", 0.0)
    assert not await store.set_quality("missing", "feedback", 1.0)
    got = await store.get("req-1")
    assert got is not None
    assert (got.quality_feedback, got.quality_judge) == (1.0, 0.2)
    [row] = await store.usage(None, None, "model")
    # per record feedback-else-judge: req-1 -> 1.0, req-2 -> 0.6, req-3 -> 0.0, req-4 none
    assert row["quality_mean"] == pytest.approx((1.0 + 0.6 + 0.0) / 3)
    assert row["quality_n"] == 3
    assert row["quality_feedback_mean"] == pytest.approx(0.5)
    assert row["quality_judge_mean"] == pytest.approx(0.4)
    assert row["quality_predicted_mean"] == pytest.approx(0.6)
    recent = {r.request_id: r for r in await store.recent(10)}
    assert recent["req-2"].quality_judge == 0.6


async def test_recent_newest_first(store: Store) -> None:
    await store.write_batch([rec(i) for i in (5, 1, 9, 3, 7)])  # stored out of ts order
    assert [r.request_id for r in await store.recent(3)] == ["req-9", "req-7", "req-5"]
    assert await store.recent(0) == []


@pytest.mark.parametrize("bucket_s", [60, 300, 30])
async def test_timeseries_per_bucket_and_tier(store: Store, bucket_s: int) -> None:
    await store.write_batch(
        [rec(i, tier="small", cost_usd=0.001, baseline_cost_usd=0.002) for i in (0, 10, 70)]
        + [rec(200 + i, ts=T0 + 65, tier="large", cost_usd=0.01) for i in range(2)]
    )
    rows = await store.timeseries(T0, bucket_s)
    got = {(r["bucket"] - T0, r["tier"]): (r["requests"], r["cost_usd"]) for r in rows}
    if bucket_s == 60:
        expect = {(0, "small"): (2, 0.002), (60, "small"): (1, 0.001), (60, "large"): (2, 0.02)}
    elif bucket_s == 300:  # one bucket, T0 - 180 .. T0 + 120, holds everything
        expect = {(-180, "small"): (3, 0.003), (-180, "large"): (2, 0.02)}
    else:  # 30 s buckets: 0, 10 -> 0; 65 -> 60; 70 -> 60
        expect = {(0, "small"): (2, 0.002), (60, "small"): (1, 0.001), (60, "large"): (2, 0.02)}
    assert got.keys() == expect.keys()
    for k, (n, cost) in expect.items():
        assert got[k][0] == n
        assert got[k][1] == pytest.approx(cost, abs=1e-12)
    assert [r["bucket"] for r in rows] == sorted(r["bucket"] for r in rows)
    assert await store.timeseries(T0 + 100_000, bucket_s) == []
    assert sum(r["requests"] for r in await store.timeseries(None, bucket_s)) == 5


async def test_judge_calls_are_kept_apart_from_client_traffic(store: Store) -> None:
    """Records of the judge's own calls (purpose "judge") are read back whole, counted by
    usage(purpose="judge") only, and never in client usage, recent, timeseries or count."""
    client = [rec(i) for i in range(3)]
    judge = [
        rec(10 + i, model="grader", tier="large", route="grader", purpose=JUDGE, cost_usd=0.02)
        for i in range(2)
    ]
    await store.write_batch([client[0], judge[0], client[1], judge[1], client[2]])
    await store.write_batch(judge)  # a retried batch is still harmless
    got = await store.get("req-10")
    assert got == judge[0] and got is not None and got.purpose == JUDGE
    assert (await store.get("req-0")) == client[0] and client[0].purpose == CLIENT
    assert await store.count() == 3
    [row] = await store.usage(None, None, "model")
    assert row["group"] == "small" and row["requests"] == 3
    assert row["cost_usd"] == pytest.approx(0.003, abs=1e-12)
    [jrow] = await store.usage(None, None, "model", purpose="judge")
    assert jrow["group"] == "grader" and jrow["requests"] == 2
    assert jrow["cost_usd"] == pytest.approx(0.04, abs=1e-12)
    assert {r.request_id for r in await store.recent(10)} == {"req-0", "req-1", "req-2"}
    for bucket_s in (60, 30):
        series = await store.timeseries(None, bucket_s)
        assert sum(r["requests"] for r in series) == 3
        assert {r["tier"] for r in series} == {"small"}
    assert await store.set_quality("req-10", "judge", 0.5)  # addressable like any record
    with pytest.raises(ValueError, match="purpose must be one of"):
        await store.usage(None, None, "model", purpose="nope")  # type: ignore[arg-type]


async def test_many_records_in_batches(store: Store) -> None:
    for start in range(0, 1500, 250):
        await store.write_batch([rec(i) for i in range(start, start + 250)])
    assert await store.count() == 1500
    [row] = await store.usage(None, None, "tier")
    assert row["requests"] == 1500


async def test_every_batch_size_is_written_whole(store: Store) -> None:
    """Batches of every size from 1 to 70 (SQLite splits them into INSERTs of 32, 16, ... 1
    rows), one of 1,024 as a recorder catching up writes, and a retried one: each record
    once."""
    n = 0
    for size in [*range(1, 71), 1024]:
        await store.write_batch([rec(i) for i in range(n, n + size)])
        n += size
    await store.write_batch([rec(i) for i in range(n - 100, n + 5)])  # 100 already stored
    assert await store.count() == n + 5
    [row] = await store.usage(None, None, "tier")
    assert row["requests"] == n + 5


def test_sqlite_statement_sizes_are_few() -> None:
    """A batch of n records is written by INSERTs of powers of two rows, at most `most`, so
    that the connection compiles and caches a handful of statements, not one per size."""
    for n in range(0, 2100):
        sizes = _statement_sizes(n, 32)
        assert sum(sizes) == n
        assert set(sizes) <= {1, 2, 4, 8, 16, 32}
        assert len(sizes) <= n // 32 + 5
    assert _statement_sizes(1000, 32)[-2:] == [32, 8]


def test_make_store_picks_backend(tmp_path: Path) -> None:
    assert make_store(StoreConfig(backend="none")) is None
    s = make_store(StoreConfig(backend="sqlite", sqlite_path=str(tmp_path / "x.db")))
    assert isinstance(s, SQLiteStore)
    assert isinstance(make_store(StoreConfig(backend="redis")), RedisStore)
    url = "postgresql://tg:s3cret@db.internal:5432/tollgate"
    pg = make_store(StoreConfig(backend="postgres", postgres_url=url, postgres_pool_max=9))
    assert isinstance(pg, PostgresStore) and pg.pool_max == 9
    told = describe_store(StoreConfig(backend="postgres", postgres_url=url))
    assert told == "PostgreSQL at postgresql://****@db.internal:5432/tollgate"
    conninfo = "host=db user=tg password=s3cret dbname=tollgate"
    assert "s3cret" not in describe_store(StoreConfig(backend="postgres", postgres_url=conninfo))


async def test_sqlite_schema_version_and_wal(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "deep" / "dir" / "t.db"
    s = SQLiteStore(str(path))
    await s.open()
    await s.write_batch([rec(1)])
    await s.close()
    c = sqlite3.connect(path)
    assert c.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert c.execute("SELECT version FROM tollgate_schema").fetchone()[0] == SCHEMA_VERSION
    c.execute("UPDATE tollgate_schema SET version = ?", (SCHEMA_VERSION + 1,))
    c.commit()
    c.close()
    newer = SQLiteStore(str(path))
    with pytest.raises(Exception, match="upgrade the gateway"):
        await newer.open()


async def test_redis_stream_is_capped(redis_server: RedisServer) -> None:
    s = RedisStore(redis_server.url, stream_maxlen=1000, prefix="capped:")
    await s.open()
    for start in range(0, 3000, 250):
        await s.write_batch([rec(i) for i in range(start, start + 250)])
    # MAXLEN ~ trims whole macro-nodes: at least maxlen kept, never much more.
    assert 1000 <= await s.count() < 1300
    assert await s.get("req-0") is None  # trimmed
    assert await s.get("req-2999") is not None
    await s.close()


async def test_sqlite_prompt_vector_is_float32_bytes(tmp_path: Path) -> None:
    """The router's vector is stored as 4 bytes per number and reads back within float32
    rounding; a row written by schema 2 (JSON text) still reads, and opening that database
    moves it to the current schema."""
    import sqlite3

    import orjson

    path = tmp_path / "t.db"
    vec = [0.1 * i - 1.3 for i in range(32)]
    s = SQLiteStore(str(path))
    await s.open()
    await s.write_batch([rec(1, router_features=vec), rec(2)])
    got = await s.get("req-1")
    assert got is not None and got.router_features is not None
    assert got.router_features == pytest.approx(vec, rel=1e-6, abs=1e-7)
    none = await s.get("req-2")
    assert none is not None and none.router_features is None
    await s.close()
    c = sqlite3.connect(path)
    stored = c.execute("SELECT router_features FROM requests WHERE request_id = 'req-1'")
    assert len(stored.fetchone()[0]) == 4 * 32
    # what a schema-2 gateway left behind: JSON text in the column, version 2
    c.execute("UPDATE requests SET router_features = ? WHERE request_id = 'req-1'",
              (orjson.dumps(vec).decode(),))  # fmt: skip
    c.execute("UPDATE tollgate_schema SET version = 2")
    c.commit()
    c.close()
    again = SQLiteStore(str(path))
    await again.open()
    old = await again.get("req-1")
    assert old is not None and old.router_features == vec
    await again.close()
    c = sqlite3.connect(path)
    assert c.execute("SELECT version FROM tollgate_schema").fetchone()[0] == SCHEMA_VERSION
    c.close()


async def test_sqlite_rows_from_before_purpose_read_as_client_traffic(tmp_path: Path) -> None:
    """A database a schema-3 gateway wrote (no purpose column) opens, gains the column, and
    its rows count as client traffic."""
    import sqlite3

    path = tmp_path / "t.db"
    s = SQLiteStore(str(path))
    await s.open()
    await s.write_batch([rec(1), rec(2)])
    await s.close()
    c = sqlite3.connect(path)
    c.execute("ALTER TABLE requests DROP COLUMN purpose")
    c.execute("UPDATE tollgate_schema SET version = 3")
    c.commit()
    c.close()
    again = SQLiteStore(str(path))
    await again.open()
    got = await again.get("req-1")
    assert got is not None and got.purpose == CLIENT
    assert await again.count() == 2
    [row] = await again.usage(None, None, "model")
    assert row["requests"] == 2
    await again.write_batch([rec(3, purpose=JUDGE)])
    assert await again.count() == 2
    await again.close()


async def test_records_before_schema_4_read_back_without_propensity(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A record written before schema 4 (no propensity, no explored) reads back as not
    explored with no propensity, beside one written now that keeps both."""
    import types

    import orjson

    import gateway.accounting.store.redis_store as redis_store

    new = rec(2, propensity=0.7, explored=False, router_features=[0.5, 0.25])
    explored = rec(3, propensity=0.15, explored=True, router_features=[0.5, 0.25])
    if isinstance(store, SQLiteStore):
        import sqlite3

        await store.write_batch([rec(9)])  # creates the table
        await store.close()
        c = sqlite3.connect(store.path)
        # what a schema-3 gateway left behind: no propensity or explored column, version 3
        c.execute("ALTER TABLE requests DROP COLUMN propensity")
        c.execute("ALTER TABLE requests DROP COLUMN explored")
        c.execute("UPDATE tollgate_schema SET version = 3")
        c.execute(
            "INSERT INTO requests (request_id, ts, route, model, status) "
            "VALUES ('req-1', ?, 'auto', 'small', 200)",
            (T0 + 1,),
        )
        c.commit()
        c.close()
        await store.open()  # adds the columns back, empty for the old rows
        c = sqlite3.connect(store.path)
        assert c.execute("SELECT version FROM tollgate_schema").fetchone()[0] == SCHEMA_VERSION
        c.close()
    elif isinstance(store, PostgresStore):
        import psycopg

        # a row given only the columns a schema-3 writer knew: the rest take their defaults
        with psycopg.connect(store.url, autocommit=True) as pg:
            pg.execute(
                "INSERT INTO tollgate_requests (request_id, ts, route, model, status, "
                "schema_version) VALUES ('req-1', %s, 'auto', 'small', 200, 3)",
                (T0 + 1,),
            )
    else:
        # a schema-3 writer: the same record JSON without the two fields

        def dumps(r: RequestRecord) -> bytes:
            d = r.to_dict()
            d.pop("propensity")
            d.pop("explored")
            d["schema_version"] = 3
            return orjson.dumps(d)

        monkeypatch.setattr(
            redis_store, "orjson", types.SimpleNamespace(dumps=dumps, loads=orjson.loads)
        )
        await store.write_batch([rec(1, route="auto")])
        monkeypatch.undo()
    await store.write_batch([new, explored])
    old = await store.get("req-1")
    assert old is not None and old.propensity is None and old.explored is False
    got = {r.request_id: r for r in await store.recent(10)}
    assert got["req-1"].propensity is None and got["req-1"].explored is False
    assert got["req-2"].propensity == pytest.approx(0.7) and got["req-2"].explored is False
    assert got["req-3"].propensity == pytest.approx(0.15) and got["req-3"].explored is True


async def test_retention_deletes_old_records_and_keeps_new(
    make: MakeStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """store.retention_days: a store opened with it deletes the records older than that
    (client and judge alike, in chunks: 2 records here), on open and then from the write
    path; a late write of a record already that old is not kept; newer records stay, in
    every read."""
    import gateway.accounting.store.postgres_store as postgres_store
    import gateway.accounting.store.sqlite_store as sqlite_store

    monkeypatch.setattr(postgres_store, "_CHUNK", 2)
    monkeypatch.setattr(sqlite_store, "_CHUNK", 2)
    day = 86400.0
    now = time.time()
    old = [rec(i, ts=now - 10 * day + i) for i in range(3)]
    old.append(rec(9, ts=now - 10 * day, purpose=JUDGE, model="grader"))
    new = [rec(10 + i, ts=now - i * day) for i in range(3)]  # now, 1 and 2 days ago
    keep_all = make()
    await keep_all.open()
    await keep_all.write_batch(old + new)
    assert await keep_all.count() == 6

    pruned = make(retention_days=5, retention_every_s=0.0)
    await pruned.open()  # the first pass starts on open, in a task
    await until(lambda: pruned.count(), 3)
    for r in old:
        assert await pruned.get(r.request_id) is None
    assert {r.request_id for r in await pruned.recent(10)} == {r.request_id for r in new}
    [row] = await pruned.usage(None, None, "model")
    assert row["requests"] == 3
    assert await pruned.usage(None, None, "model", purpose="judge") == []
    assert sum(r["requests"] for r in await pruned.timeseries(None, 60)) == 3
    assert sum(r["requests"] for r in await pruned.timeseries(None, 30)) == 3

    # a record written late but already past retention is not kept
    await pruned.write_batch([rec(20, ts=now - 6 * day), rec(21, ts=now)])
    assert await pruned.get("req-20") is None and await pruned.get("req-21") is not None
    # a record that ages past retention goes at a later write (every pass here: every_s=0)
    await pruned.write_batch([rec(22, ts=time.time() - 5 * day + 0.3)])
    assert await pruned.get("req-22") is not None
    await asyncio.sleep(0.5)
    await pruned.write_batch([rec(23, ts=time.time())])  # starts a pass, in a task
    await until(lambda: pruned.get("req-22"), None)
    assert await pruned.count() == 5  # req-10..12, 21, 23


async def until(read: Callable[[], Awaitable[object]], want: object) -> None:
    """Wait (2 s at most) for `read()` to answer `want`; fail with what it answered."""
    got = None
    for _ in range(200):
        got = await read()
        if got == want:
            return
        await asyncio.sleep(0.01)
    assert got == want


@pytest.mark.redis
@pytest.mark.postgres
async def test_backends_agree_on_usage(
    redis_server: RedisServer, postgres_url: str, tmp_path: Path
) -> None:
    """The same records give the same usage rows, timeseries and recent records in every
    store (PostgreSQL aggregates in SQL, the others in Python)."""
    import random

    rnd = random.Random(7)
    records = [
        rec(
            i,
            ts=T0 + rnd.uniform(0, 3600),
            model=rnd.choice(["small", "large", "mid", None]),
            tier=rnd.choice(["small", "large", ""]),
            key_id=rnd.choice(["k1", "k2", None]),
            route=rnd.choice(["chat", "auto"]),
            status=rnd.choice([200, 200, 200, 429, 502]),
            error_type=rnd.choice([None, RATE_LIMITED, OVER_BUDGET, "rate_limit_error"]),
            prompt_tokens=rnd.randint(0, 5000),
            cached_tokens=rnd.randint(0, 100),
            completion_tokens=rnd.randint(0, 900),
            tokens_estimated=rnd.random() < 0.2,
            cost_usd=rnd.uniform(0, 0.05),
            baseline_cost_usd=rnd.uniform(0, 0.1),
            latency_ms=rnd.uniform(5, 3000),
            quality_predicted=rnd.choice([None, rnd.random()]),
            purpose=JUDGE if rnd.random() < 0.1 else CLIENT,
        )
        for i in range(400)
    ]
    stores: list[Store] = [
        SQLiteStore(str(tmp_path / "t.db")),
        RedisStore(redis_server.url, prefix=f"agree{uuid.uuid4().hex[:6]}:"),
        PostgresStore(postgres_url),
    ]
    answers = []
    for s in stores:
        await s.open()
        await s.write_batch(records)
        for r in records[::7]:
            await s.set_quality(r.request_id, "judge", 0.25)
        for r in records[::11]:
            await s.set_quality(r.request_id, "feedback", 1.0)
        got = {"recent": [r.request_id for r in await s.recent(25)], "count": await s.count()}
        for group_by in ("model", "tier", "key", "route"):
            got[group_by] = await s.usage(None, None, group_by)
        got["window"] = await s.usage(T0 + 600, T0 + 1800, "model")
        got["judge"] = await s.usage(None, None, "model", purpose="judge")
        for b in (60, 300, 45):
            got[f"series{b}"] = await s.timeseries(T0 + 100, b)
        answers.append(got)
        await s.close()
    first = answers[0]
    assert first["count"] > 300 and len(first["model"]) == 4 and first["judge"]
    for other in answers[1:]:
        assert other.keys() == first.keys()
        for k, v in first.items():
            assert same(other[k], v), k


def same(a: object, b: object) -> bool:
    """Equal, floats within summation-order rounding, recursively."""
    if isinstance(a, float) or isinstance(b, float):
        return a == pytest.approx(b, rel=1e-9, abs=1e-9)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return a == b


@pytest.mark.postgres
async def test_postgres_schema_is_created_and_migrated(postgres_url: str) -> None:
    """An empty database gets every migration; one left at an older version (here: before
    the indexes and the budget_soft column) is brought up to date with its records kept;
    replicas opening an empty database at once migrate it once; a database a newer gateway
    migrated is refused."""
    import psycopg

    from gateway.accounting.store.postgres_store import MIGRATIONS, SCHEMA, VERSION_TABLE

    def version_and_indexes() -> tuple[int, set[str]]:
        with psycopg.connect(postgres_url, autocommit=True) as c:
            row = c.execute(f"SELECT version FROM {VERSION_TABLE}").fetchone()  # type: ignore[arg-type]
            names = c.execute("SELECT indexname FROM pg_indexes WHERE tablename = %s",
                              ("tollgate_requests",)).fetchall()  # fmt: skip
        assert row is not None
        return int(row[0]), {n for (n,) in names}

    replicas = [PostgresStore(postgres_url) for _ in range(3)]
    await asyncio.gather(*(s.open() for s in replicas))
    assert SCHEMA == len(MIGRATIONS) >= 2
    version, indexes = version_and_indexes()
    assert version == SCHEMA
    assert {"tollgate_requests_purpose_ts", "tollgate_requests_ts"} <= indexes
    await replicas[0].write_batch([rec(1), rec(2)])
    for s in replicas:
        await s.close()

    with psycopg.connect(postgres_url, autocommit=True) as c:  # what a v1 gateway left
        c.execute("DROP INDEX tollgate_requests_purpose_ts")
        c.execute("DROP INDEX tollgate_requests_ts")
        c.execute("ALTER TABLE tollgate_requests DROP COLUMN budget_soft")  # record schema 5
        c.execute("ALTER TABLE tollgate_requests DROP COLUMN latency_bucket")  # and its index
        c.execute("DROP FUNCTION tollgate_latency_bucket")
        c.execute("ALTER TABLE tollgate_requests DROP COLUMN cache_write_tokens")  # schema 6
        for col in ("max_cost_usd", "min_quality", "sticky"):  # record schema 7
            c.execute(f"ALTER TABLE tollgate_requests DROP COLUMN {col}")  # type: ignore[arg-type]
        c.execute(f"UPDATE {VERSION_TABLE} SET version = 1")  # type: ignore[arg-type]
    again = PostgresStore(postgres_url)
    await again.open()
    version, indexes = version_and_indexes()
    assert (
        version == SCHEMA
        and {"tollgate_requests_purpose_ts", "tollgate_requests_latency"} <= indexes
    )
    assert await again.count() == 2
    old = await again.get("req-1")
    assert old is not None and old.budget_soft is False and old.cache_write_tokens == 0
    assert old.sticky is None and old.max_cost_usd is None and old.min_quality is None
    await again.write_batch(
        [
            rec(
                3,
                budget_soft=True,
                cache_write_tokens=120,
                sticky="kept",
                max_cost_usd=0.5,
                min_quality=0.7,
            )
        ]
    )
    new = await again.get("req-3")
    assert new is not None and new.budget_soft is True and new.cache_write_tokens == 120
    assert new.sticky == "kept" and new.max_cost_usd == 0.5 and new.min_quality == 0.7
    await again.close()

    with psycopg.connect(postgres_url, autocommit=True) as c:
        c.execute(f"UPDATE {VERSION_TABLE} SET version = %s", (SCHEMA + 1,))  # type: ignore[arg-type]
    with pytest.raises(StoreError, match="upgrade the gateway"):
        await PostgresStore(postgres_url).open()


async def test_postgres_down_raises_store_unavailable() -> None:
    """No server at the URL: open() raises StoreUnavailable (the recorder buffers and
    retries), within the configured timeout."""
    from tests.redis_server import free_port

    s = PostgresStore(f"postgresql://postgres@127.0.0.1:{free_port()}/x", timeout_s=1.0)
    with pytest.raises(StoreUnavailable, match="PostgreSQL postgresql://"):
        await asyncio.wait_for(s.open(), 10)
    with pytest.raises(StoreUnavailable):
        await s.write_batch([rec(1)])


def test_retention_passes_run_on_open_then_at_most_every_period() -> None:
    """A store asks Retention after every write: the first ask (at open) runs a pass, the
    next ones within `every_s` (an hour by default) do not; a failed pass is retried at the
    next write; no retention_days, no pass ever."""
    r = Retention(30)
    assert r.every_s == 3600.0
    first = r.due()
    assert first is not None and abs(first - (time.time() - 30 * 86400)) < 60
    assert [r.due() for _ in range(100)] == [None] * 100

    async def failing(cutoff: float) -> int:
        raise StoreUnavailable("down")

    again = Retention(30)
    asyncio.run(again.run_if_due(failing, wait=True))  # logged, not raised
    assert again.due() is not None  # retried at the next write
    assert Retention(None).due() is None
    assert StoreConfig().retention_days is None


@pytest.mark.postgres
async def test_postgres_analyzes_its_table_where_autovacuum_is_off(postgres_url: str) -> None:
    """With the server's autovacuum off nothing gathers the table's statistics, and the
    30-day usage query is planned as if the table were empty (an index walk): the store
    runs ANALYZE itself after a tenth of the table (and at least 1,000 records) is new.
    With autovacuum on it leaves that to the server."""
    import psycopg

    def analyzed() -> tuple[bool, int]:
        with psycopg.connect(postgres_url, autocommit=True) as c:
            on = c.execute("SELECT current_setting('autovacuum') = 'on'").fetchone()
            row = c.execute("SELECT reltuples FROM pg_class WHERE relname = 'tollgate_requests'")
            got = row.fetchone()
        assert on is not None and got is not None
        return bool(on[0]), int(got[0])

    s = PostgresStore(postgres_url)
    await s.open()
    await s.write_batch([rec(i) for i in range(900)])
    autovacuum, rows = analyzed()
    assert rows <= 0  # never analyzed yet (-1 on PostgreSQL 14+, 0 before)
    await s.write_batch([rec(i) for i in range(900, 1500)])
    autovacuum, rows = analyzed()
    await s.close()
    if autovacuum:
        assert rows <= 0 or rows == 1500  # the server's own autovacuum may have run
    else:
        assert rows == 1500


@pytest.mark.postgres
async def test_postgres_usage_equals_the_answer_from_raw_records(postgres_url: str) -> None:
    """PostgreSQL's usage() reads each group's percentiles from the records of one latency
    bucket only: the rows it answers equal base.aggregate over the raw records of the window,
    for windows that cut through the records of a bucket, ties, a bucket holding the whole
    group, latencies of 0 and past 1e12 ms, a key filter, quality set later, and after
    retention deleted the oldest records."""
    import random

    from gateway.accounting.store.base import aggregate

    rnd = random.Random(18)
    # latencies crowded into a few buckets (3 % wide), with ties, plus outliers
    pool = [100.0, 100.0, 101.0, 102.5, 103.0, 250.0, 251.0, 0.0, 2e12, 7.5, 7.5]
    records = [
        rec(
            i,
            ts=T0 + i * 1.5,
            model=rnd.choice(["small", "large", "mid", "", None]),  # '' and None: one group
            tier=rnd.choice(["small", "large", ""]),
            key_id=rnd.choice(["k1", "k2", None]),
            route=rnd.choice(["chat", "auto"]),
            status=rnd.choice([200, 200, 502]),
            cost_usd=rnd.uniform(0, 0.05),
            latency_ms=rnd.choice(pool) + rnd.choice([0.0, 0.0, rnd.uniform(0, 2)]),
            quality_predicted=rnd.choice([None, rnd.random()]),
        )
        for i in range(600)
    ]
    records += [rec(1000 + i, model="one", latency_ms=42.0, ts=T0 + 400) for i in range(9)]
    s = PostgresStore(postgres_url, retention_days=None)
    await s.open()
    await s.write_batch(records)
    for r in records[::5]:
        await s.set_quality(r.request_id, "feedback", 0.5)
        r.quality_feedback = 0.5

    async def check(recs: list[RequestRecord]) -> None:
        for lo, hi in ((None, None), (T0 + 1.5, T0 + 7.5), (T0 + 100.25, T0 + 700.0),
                       (T0 + 400, T0 + 401), (T0 + 899.9, None), (T0 + 5000, None)):  # fmt: skip
            window = [r for r in recs if (lo is None or r.ts >= lo) and (hi is None or r.ts < hi)]
            for group_by in ("model", "tier", "key", "route"):
                got = await s.usage(lo, hi, group_by)
                assert same(got, aggregate(window, group_by)), (lo, hi, group_by)
            got = await s.usage(lo, hi, "model", key_id="k2")
            want = aggregate([r for r in window if r.key_id == "k2"], "model")
            assert same(got, want), (lo, hi, "k2")

    await check(records)
    [one] = [r for r in await s.usage(None, None, "model") if r["group"] == "one"]
    assert one["latency_p50_ms"] == one["latency_p95_ms"] == 42.0 and one["requests"] == 9
    await s.close()

    # retention (its pass at open) deletes the records before T0 + 300.5 (+ the test's
    # own seconds, under the 1.5 s between two records)
    days = (time.time() - (T0 + 300.5)) / 86400
    s = PostgresStore(postgres_url, retention_days=days, retention_every_s=0.0)
    await s.open()
    kept = [r for r in records if r.ts > T0 + 300]
    await until(lambda: s.count(), len(kept))
    await check(kept)
    await s.close()


@pytest.mark.postgres
async def test_postgres_usage_statements_are_never_prepared(postgres_url: str) -> None:
    """psycopg prepares a statement run 5 times on a connection; PostgreSQL then plans it
    once for any window (a generic plan), which made a 30-day usage() over 200k records take
    ~1.8x the CPU from about its 10th run (bench/store_usage.py). usage() statements stay
    unprepared, on a connection that has answered many of them."""
    s = PostgresStore(postgres_url, pool_min=1, pool_max=1)
    await s.open()
    await s.write_batch([rec(i, latency_ms=float(i)) for i in range(50)])
    for i in range(12):
        [row] = await s.usage(T0 + i, None, "model")
        assert row["requests"] == 50 - i
    async with s.connection() as conn:
        cur = await conn.execute(
            "SELECT count(*) FROM pg_prepared_statements WHERE statement LIKE %s",
            ("%latency_bucket%",),
        )
        got = await cur.fetchone()
    await s.close()
    assert got == (0,)
