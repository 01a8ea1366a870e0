"""PostgreSQL record store: one database shared by many gateway replicas.

psycopg 3 in asyncio, connections from a psycopg_pool.AsyncConnectionPool
(store.postgres_pool_min.._max per replica); a batch is one pipelined executemany in a
transaction, so it lands whole or not at all.

Layout: table `tollgate_requests` (one row per record, one column per RequestRecord field,
primary key request_id in the "C" collation, so `INSERT ... ON CONFLICT (request_id) DO
NOTHING` makes a retried or replayed batch harmless; the judge's own calls are rows with
purpose 'judge', left out of everything but `usage(purpose="judge")` and `get()`;
router_scores is jsonb, the router's prompt vector real[] (float32, as SQLite keeps it)) and
table `tollgate_schema_version` (one row: how many of MIGRATIONS have run). Each replica runs
the missing migrations at open, in order, in one transaction under an advisory lock, so
replicas starting together migrate once; a database migrated by a newer gateway is refused.

usage() and timeseries() aggregate in the database; the (purpose, ts) index serves short
windows, recent() and count(). usage() never sorts its window: each row keeps its latency
bucket (a stored column, migration 4), a hashed GROUP BY (group, bucket) gives the sums and
how many latencies each bucket holds, and only the records of the buckets holding the ranks
p50 and p95 interpolate between (base.percentile's rule, percentile_cont's) are read and
numbered, through the (purpose, latency_bucket, ts) index: exact percentiles, the same as the
other stores give. Where the server's autovacuum is off the store runs ANALYZE
itself as the table grows (see _analyze). Retention (store.retention_days) is a DELETE by
ts, at open and then at most hourly from the write path.
"""

from __future__ import annotations

import logging
import math
from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import fields
from typing import Any, overload

import orjson
import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from gateway.accounting.records import RequestRecord
from gateway.accounting.store.base import (
    LIMIT_REJECTED_SQL,
    NONE_GROUP,
    Purpose,
    QualitySource,
    Retention,
    Store,
    StoreError,
    StoreUnavailable,
    bucket_rows,
    bucket_start,
    check_bucket,
    check_group_by,
    check_purpose,
    check_source,
    percentile,
    record_from_dict,
    usage_row,
)
from gateway.config import mask_url_password

log = logging.getLogger("tollgate.store")

TABLE = "tollgate_requests"
VERSION_TABLE = "tollgate_schema_version"
# latency buckets (migration 4): floor(ln(latency_ms) * 32), each 3.2% wide; every latency of
# one bucket is >= every latency of a lower one (NaN and >= 1e12 ms at the top, <= 1 us below)
BUCKET_FN = "tollgate_latency_bucket"
BUCKETS_PER_E = 32
BUCKET_LOW, BUCKET_HIGH = -1000, 1000
_LOCK_ID = 0x70_6C_67_61_74_65  # the migrations' pg_advisory_xact_lock key (any fixed number)

_FIELDS = [f.name for f in fields(RequestRecord)]
# the table's columns as migration 1 created them (record schema 4); frozen, as a shipped
# migration must be: a field added to RequestRecord later gets its own ADD COLUMN below
_V1_FIELDS = [
    "request_id", "ts", "endpoint", "key_id", "route", "policy", "model", "tier",
    "router_score", "router_scores", "router_features", "propensity", "explored", "attempts",
    "fallbacks", "status", "error_type", "stream", "prompt_tokens", "cached_tokens",
    "completion_tokens", "tokens_estimated", "cost_usd", "baseline_cost_usd", "baseline_model",
    "latency_ms", "ttft_ms", "upstream_ms", "overhead_ms", "cache_hit", "quality_predicted",
    "quality_feedback", "quality_judge", "purpose", "schema_version",
]  # fmt: skip
_BOOL = {"stream", "tokens_estimated", "cache_hit", "explored", "budget_soft"}
_TYPES = {
    "request_id": 'text COLLATE "C" PRIMARY KEY',
    "ts": "double precision NOT NULL",
    "purpose": "text NOT NULL DEFAULT 'client'",
    "router_scores": "jsonb",
    "router_features": "real[]",
}


def _pg_type(name: str) -> str:
    if name in _TYPES:
        return _TYPES[name]
    hint = str(RequestRecord.__dataclass_fields__[name].type)
    if name in _BOOL or "bool" in hint:
        return "boolean NOT NULL DEFAULT false"
    if "str" in hint:
        return "text"
    if "float" in hint:
        return "double precision"
    if "int" in hint:
        return "bigint"
    raise TypeError(f"no PostgreSQL column type for RequestRecord.{name}: {hint}")


# Ordered; migration N (1-based) brings a database from version N-1 to N. Never edit one that
# has shipped: append. A RequestRecord field added later is a new "ALTER TABLE ... ADD COLUMN".
MIGRATIONS: list[tuple[str, ...]] = [
    (f"CREATE TABLE {TABLE} ({', '.join(f'{n} {_pg_type(n)}' for n in _V1_FIELDS)})",),
    (
        # recent(), count(), usage() and timeseries() read one purpose over a ts range
        f"CREATE INDEX {TABLE}_purpose_ts ON {TABLE} (purpose, ts, request_id)",
        # retention deletes by ts alone
        f"CREATE INDEX {TABLE}_ts ON {TABLE} (ts)",
    ),
    # record schema 5: the key was past its budget's soft share (limits.budget_soft)
    (f"ALTER TABLE {TABLE} ADD COLUMN budget_soft boolean NOT NULL DEFAULT false",),
    # usage() finds its latency percentiles without sorting the window (see _usage_ranks):
    # each record's latency bucket, written with the row (rewrites the table once), and an
    # index that fetches one bucket's records of a window
    (
        f"""CREATE FUNCTION {BUCKET_FN}(x double precision) RETURNS integer
            LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
            SELECT CASE WHEN x IS NULL THEN NULL
                        WHEN x > 0.001 AND x < 1e12 THEN floor(ln(x) * {BUCKETS_PER_E})::integer
                        WHEN x <= 0.001 THEN {BUCKET_LOW} ELSE {BUCKET_HIGH} END $$""",
        f"ALTER TABLE {TABLE} ADD COLUMN latency_bucket integer "
        f"GENERATED ALWAYS AS ({BUCKET_FN}(latency_ms)) STORED",
        f"CREATE INDEX {TABLE}_latency ON {TABLE} (purpose, latency_bucket, ts)",
    ),
    # record schema 6: prompt-cache writes (Anthropic's cache_creation_input_tokens)
    (f"ALTER TABLE {TABLE} ADD COLUMN cache_write_tokens bigint NOT NULL DEFAULT 0",),
    # record schema 7: the client's limits, conversation stickiness
    (
        f"ALTER TABLE {TABLE} ADD COLUMN max_cost_usd double precision",
        f"ALTER TABLE {TABLE} ADD COLUMN min_quality double precision",
        f"ALTER TABLE {TABLE} ADD COLUMN sticky text",
    ),
]
SCHEMA = len(MIGRATIONS)

_COLS = ", ".join(_FIELDS)
_INSERT = (
    f"INSERT INTO {TABLE} ({_COLS}) VALUES ({', '.join(['%s'] * len(_FIELDS))}) "
    "ON CONFLICT (request_id) DO NOTHING"
)
_JSON_AT = _FIELDS.index("router_scores")
_VECTOR_AT = _FIELDS.index("router_features")
_CHUNK = 10_000  # records deleted per statement by retention
_DELETE_CHUNK = (
    f"DELETE FROM {TABLE} WHERE ctid = ANY(ARRAY(SELECT ctid FROM {TABLE} WHERE ts < %s LIMIT %s))"
)


def _row(rec: RequestRecord) -> list[Any]:
    out = [getattr(rec, n) for n in _FIELDS]
    if out[_JSON_AT] is not None:
        out[_JSON_AT] = Jsonb(out[_JSON_AT], dumps=_dumps)
    vec = out[_VECTOR_AT]
    if vec is not None:
        # an array literal (the column's type gives it meaning): psycopg's list dumper checks
        # every element in Python, ~100 us for the router's 32 numbers, 3/4 of a record's cost
        out[_VECTOR_AT] = "{" + ",".join(map(repr, vec)) + "}"
    return out


def _dumps(obj: Any) -> str:
    return orjson.dumps(obj).decode()


def _record(row: dict[str, Any]) -> RequestRecord:
    return record_from_dict(row)


_MEANS = {  # usage_row's means: (sum, count) per (group, bucket) in usage()'s first read
    "quality_mean": ("quality_sum", "quality_n"),
    "quality_feedback_mean": ("feedback_sum", "feedback_n"),
    "quality_judge_mean": ("judge_sum", "judge_n"),
    "quality_predicted_mean": ("predicted_sum", "predicted_n"),
}


_SUMS = ["requests", "errors", "prompt_tokens", "cached_tokens", "completion_tokens", "estimated",
         "cost_usd", "baseline_cost_usd", "cache_hits", "cache_saved_usd", "limit_rejections",
         "quality_n"]  # fmt: skip


def _group(column: str) -> str:
    """usage()'s group of a row: the column's value, '' and NULL both NONE_GROUP."""
    return f"COALESCE(NULLIF({column}::text, ''), '{NONE_GROUP}')"


_TRIPLES = "SELECT * FROM unnest(%s::text[], %s::int[], %s::bigint[])"


class _Group:
    """One usage() group: its sums over every latency bucket, each bucket's count of
    latencies, and the latencies read at the ranks its percentiles need."""

    def __init__(self, row: dict[str, Any]) -> None:
        self.sums = row  # usage_row's sums and means, the group in "g"
        self.counts: dict[int, int] = {}  # latency bucket -> latencies in it
        for b, n in zip(row["buckets"] or (), row["counts"] or (), strict=True):
            self.counts[b] = self.counts.get(b, 0) + n
        self.values: dict[tuple[int, int], float] = {}  # (bucket, rank in it) -> latency

    def _where(self, rank: int) -> tuple[int, int]:
        """(bucket, rank within the bucket) of the group's rank-th lowest latency."""
        before = 0
        for b in sorted(self.counts):
            if rank < before + self.counts[b]:
                return b, rank - before
            before += self.counts[b]
        raise IndexError(rank)

    def _ranks(self) -> set[int]:
        n = sum(self.counts.values())
        out: set[int] = set()
        for q in (50, 95):  # the two ranks base.percentile reads
            lo = math.floor((n - 1) * q / 100.0)
            out |= {lo, min(lo + 1, n - 1)}
        return out if n else set()

    def wanted(self) -> list[tuple[int, int]]:
        return sorted({self._where(r) for r in self._ranks()})

    def usage_row(self) -> dict[str, Any]:
        lat = _Ranked(self)
        return usage_row(self.sums, percentile(lat, 50), percentile(lat, 95))


class _Ranked(Sequence[float]):
    """A group's latencies in ascending order, as far as base.percentile reads them."""

    def __init__(self, group: _Group) -> None:
        self.group = group
        self.n = sum(group.counts.values())

    def __len__(self) -> int:
        return self.n

    @overload
    def __getitem__(self, i: int) -> float: ...
    @overload
    def __getitem__(self, i: slice) -> Sequence[float]: ...
    def __getitem__(self, i: int | slice) -> float | Sequence[float]:
        if isinstance(i, slice):
            raise TypeError("ranks are read one at a time")
        return self.group.values[self.group._where(i)]


async def migrate(conn: psycopg.AsyncConnection[Any]) -> int:
    """Run the migrations this database lacks, in order, in one transaction under an
    advisory lock (replicas opening at once wait for the first); the version it is at now.
    StoreError when a newer gateway migrated it further than this one knows."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_ID,))
        await conn.execute(f"CREATE TABLE IF NOT EXISTS {VERSION_TABLE} (version int NOT NULL)")
        cur = await conn.execute(f"SELECT version FROM {VERSION_TABLE}")
        row = await cur.fetchone()
        version = 0 if row is None else int(row[0])
        if row is None:
            await conn.execute(f"INSERT INTO {VERSION_TABLE} (version) VALUES (0)")
        if version > SCHEMA:
            raise StoreError(
                f"the PostgreSQL store is at schema v{version}, this gateway knows up to "
                f"v{SCHEMA}; upgrade the gateway or point store.postgres_url elsewhere"
            )
        for n in range(version, SCHEMA):
            for sql in MIGRATIONS[n]:
                await conn.execute(sql)  # type: ignore[arg-type]
            log.info("PostgreSQL store migrated to schema v%d", n + 1)
        await conn.execute(f"UPDATE {VERSION_TABLE} SET version = %s", (SCHEMA,))
    return SCHEMA


class PostgresStore(Store):
    name = "postgres"

    def __init__(
        self,
        url: str,
        pool_min: int = 1,
        pool_max: int = 4,
        timeout_s: float = 5.0,
        retention_days: float | None = None,
        retention_every_s: float = 3600.0,
    ) -> None:
        self.url = url
        self.pool_min = pool_min
        self.pool_max = max(pool_min, pool_max)
        self.timeout_s = timeout_s
        self.retention = Retention(retention_days, retention_every_s)
        self._pool: AsyncConnectionPool[Any] | None = None
        self._analyze_self = False  # set at open: True when the server's autovacuum is off
        self._unanalyzed = 0  # records this store wrote since it last ran ANALYZE
        self._analyzed_rows = 0  # the table's rows then

    # -- plumbing ---------------------------------------------------------------------------
    def _where(self) -> str:
        return f"PostgreSQL {mask_url_password(self.url)}"

    @asynccontextmanager
    async def _conn(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        if self._pool is None:
            raise StoreUnavailable("postgres store is not open")
        try:
            async with self._pool.connection() as conn:
                yield conn
        except (psycopg.OperationalError, PoolTimeout, OSError) as e:
            raise StoreUnavailable(f"{self._where()}: {e}") from e
        except psycopg.Error as e:
            raise StoreError(f"{self._where()}: {e}") from e

    def connection(self) -> AbstractAsyncContextManager[psycopg.AsyncConnection[Any]]:
        """A connection of the pool for another table's reads (the gateway key store's);
        StoreUnavailable while the store is not open or the server is down."""
        return self._conn()

    async def _configure(self, conn: psycopg.AsyncConnection[Any]) -> None:
        psycopg.types.json.set_json_loads(orjson.loads, conn)

    # -- Store ------------------------------------------------------------------------------
    async def open(self) -> None:
        if self._pool is not None:
            return
        pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
            self.url,
            min_size=self.pool_min,
            max_size=self.pool_max,
            timeout=self.timeout_s,
            kwargs={"autocommit": True, "connect_timeout": max(1, round(self.timeout_s))},
            configure=self._configure,
            open=False,
            name="tollgate-store",
        )
        try:
            await pool.open(wait=True, timeout=self.timeout_s)
            async with pool.connection() as conn:
                await migrate(conn)
                cur = await conn.execute("SELECT current_setting('autovacuum') = 'on'")
                row = await cur.fetchone()
                self._analyze_self = not (row and row[0])
        except (psycopg.OperationalError, PoolTimeout, OSError) as e:
            await pool.close()
            raise StoreUnavailable(f"{self._where()}: {e}") from e
        except psycopg.Error as e:
            await pool.close()
            raise StoreError(f"{self._where()}: {e}") from e
        except BaseException:
            await pool.close()
            raise
        self._pool = pool
        await self._prune_if_due()

    async def close(self) -> None:
        await self.retention.stop()
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()

    async def write_batch(self, records: list[RequestRecord]) -> None:
        records = self.retention.keep(records)
        if records:
            async with self._conn() as conn, conn.transaction(), conn.cursor() as cur:
                await cur.executemany(_INSERT, [_row(r) for r in records])
            self._unanalyzed += len(records)
        await self._prune_if_due()
        if self._analyze_self and self._unanalyzed > 1000 + self._analyzed_rows // 10:
            await self._analyze()

    async def _analyze(self) -> None:
        """ANALYZE the records table, as autovacuum does after a tenth of it changed. On a
        server with autovacuum off, a table never analyzed is planned as if it were empty:
        the 30-day usage() query then walks the (purpose, ts) index row by row, ~5x the CPU of
        a sequential scan at 200,000 records."""
        self._unanalyzed = 0
        try:
            async with self._conn() as conn:
                await conn.execute(f"ANALYZE {TABLE}")  # type: ignore[arg-type]
                cur = await conn.execute(
                    "SELECT reltuples::bigint FROM pg_class WHERE oid = %s::regclass", (TABLE,)
                )
                row = await cur.fetchone()
        except StoreError as e:
            log.warning("ANALYZE %s failed, retried after more writes: %s", TABLE, e)
            return
        self._analyzed_rows = max(0, int(row[0])) if row is not None else 0

    async def _prune_if_due(self, wait: bool = False) -> None:
        async def delete(cutoff: float) -> int:
            total = 0
            while True:  # in chunks: each a short transaction, writes go on in between
                async with self._conn() as conn:
                    cur = await conn.execute(_DELETE_CHUNK, (cutoff, _CHUNK))
                total += cur.rowcount
                if cur.rowcount < _CHUNK:
                    return total

        await self.retention.run_if_due(delete, wait=wait)

    async def table_bytes(self) -> int:
        """Bytes the records table takes with its indexes and TOAST."""
        async with self._conn() as conn:
            cur = await conn.execute(f"SELECT pg_total_relation_size('{TABLE}')")  # type: ignore[arg-type]
            row = await cur.fetchone()
        return int(row[0]) if row is not None else 0

    async def set_quality(self, request_id: str, source: QualitySource, score: float) -> bool:
        check_source(source)
        async with self._conn() as conn:
            cur = await conn.execute(
                f"UPDATE {TABLE} SET quality_{source} = %s WHERE request_id = %s",  # type: ignore[arg-type]
                (float(score), request_id),
            )
            return cur.rowcount > 0

    async def get(self, request_id: str) -> RequestRecord | None:
        async with self._conn() as conn, conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(
                f"SELECT {_COLS} FROM {TABLE} WHERE request_id = %s",  # type: ignore[arg-type]
                (request_id,),
            )
            row = await cur.fetchone()
        return _record(row) if row is not None else None

    async def recent(self, limit: int) -> list[RequestRecord]:
        if limit <= 0:
            return []
        async with self._conn() as conn, conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(
                f"SELECT {_COLS} FROM {TABLE} WHERE purpose = 'client' "  # type: ignore[arg-type]
                "ORDER BY ts DESC, request_id DESC LIMIT %s",
                (int(limit),),
            )
            rows = await cur.fetchall()
        return [_record(r) for r in rows]

    async def count(self) -> int:
        async with self._conn() as conn:
            cur = await conn.execute(f"SELECT count(*) FROM {TABLE} WHERE purpose = 'client'")  # type: ignore[arg-type]
            row = await cur.fetchone()
        return int(row[0]) if row is not None else 0

    async def usage(
        self,
        since: float | None,
        until: float | None,
        group_by: str,
        purpose: Purpose = "client",
        key_id: str | None = None,
    ) -> list[dict[str, Any]]:
        """Two reads in one snapshot, neither sorting the window: (1) one hashed GROUP BY
        (group, latency bucket) for the sums and each bucket's count of latencies; (2) for the
        ranks p50 and p95 interpolate between (base.percentile, percentile_cont's rule), the
        records of only the bucket holding that rank, through the (purpose, latency_bucket,
        ts) index, numbered by latency within the bucket. The answer is exact, the same as
        a sort of every latency of the window would give."""
        col = check_group_by(group_by)
        kind = check_purpose(purpose)
        lo = float("-inf") if since is None else float(since)
        hi = float("inf") if until is None else float(until)
        g = _group(col)
        where = "purpose = %s AND ts >= %s AND ts < %s" + (
            "" if key_id is None else " AND key_id = %s"
        )
        args: tuple[Any, ...] = (kind, lo, hi) if key_id is None else (kind, lo, hi, key_id)
        # hashed per (column value, bucket), then folded per group ('' and NULL are one
        # group, a bucket may come twice): one row per group, its buckets and their
        # latency counts as two arrays in bucket order
        sums = f"""
            WITH h AS (
                SELECT {col} AS v, latency_bucket AS b, count(*) AS requests,
                       count(latency_ms) AS latencies,
                       count(*) FILTER (WHERE status >= 400) AS errors,
                       sum(prompt_tokens) AS prompt_tokens, sum(cached_tokens) AS cached_tokens,
                       sum(completion_tokens) AS completion_tokens,
                       count(*) FILTER (WHERE tokens_estimated) AS estimated,
                       sum(cost_usd) AS cost_usd, sum(baseline_cost_usd) AS baseline_cost_usd,
                       count(*) FILTER (WHERE cache_hit) AS cache_hits,
                       count(*) FILTER (WHERE {LIMIT_REJECTED_SQL}) AS limit_rejections,
                       sum(baseline_cost_usd) FILTER (WHERE cache_hit) AS cache_saved_usd,
                       sum(COALESCE(quality_feedback, quality_judge)) AS quality_sum,
                       count(COALESCE(quality_feedback, quality_judge)) AS quality_n,
                       sum(quality_feedback) AS feedback_sum, count(quality_feedback) AS feedback_n,
                       sum(quality_judge) AS judge_sum, count(quality_judge) AS judge_n,
                       sum(quality_predicted) AS predicted_sum,
                       count(quality_predicted) AS predicted_n
                FROM {TABLE} WHERE {where} GROUP BY 1, 2)
            SELECT {_group("v")} AS g, {", ".join(f"COALESCE(sum({c}), 0) AS {c}" for c in _SUMS)},
                   {
            ", ".join(
                f"sum({t}) / NULLIF(sum({n}), 0)::float8 AS {m}" for m, (t, n) in _MEANS.items()
            )
        },
                   array_agg(b ORDER BY b) FILTER (WHERE latencies > 0) AS buckets,
                   array_agg(latencies ORDER BY b) FILTER (WHERE latencies > 0) AS counts
            FROM h GROUP BY 1"""
        conn: psycopg.AsyncConnection[Any]
        async with (
            self._conn() as conn,
            conn.transaction(),
            conn.cursor(row_factory=dict_row) as cur,
        ):
            # one snapshot: the ranks read in (2) are those of the counts of (1)
            await cur.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            # never prepared: psycopg prepares a statement at its 5th run, and PostgreSQL's
            # generic plan for it (window bounds unknown) took ~1.8x the CPU from the ~10th
            await cur.execute(sums, args, prepare=False)  # type: ignore[arg-type]
            groups = {row["g"]: _Group(row) for row in await cur.fetchall()}
            wanted = [(name, b, r) for name, grp in groups.items() for b, r in grp.wanted()]
            if wanted:
                names, buckets, ranks = (list(x) for x in zip(*wanted, strict=True))
                await cur.execute(
                    f"""SELECT g, b, r, latency_ms FROM (
                        SELECT {g} AS g, latency_bucket AS b, latency_ms, row_number() OVER (
                            PARTITION BY {g}, latency_bucket ORDER BY latency_ms) - 1 AS r
                        FROM {TABLE} WHERE {where} AND latency_bucket = ANY(%s)
                            AND latency_ms IS NOT NULL) s
                    WHERE (g, b, r) IN ({_TRIPLES})""",  # type: ignore[arg-type]
                    (*args, sorted(set(buckets)), names, buckets, ranks),
                    prepare=False,
                )
                for row in await cur.fetchall():
                    groups[row["g"]].values[(row["b"], row["r"])] = row["latency_ms"]
        rows = [grp.usage_row() for grp in groups.values()]
        rows.sort(key=lambda row: (-row["cost_usd"], row["group"]))
        return rows

    async def timeseries(self, since: float | None, bucket_s: int) -> list[dict[str, Any]]:
        b = check_bucket(bucket_s)
        lo = float("-inf") if since is None else bucket_start(float(since), b)
        sql = f"""
            SELECT floor(ts / %s) AS k, COALESCE(NULLIF(tier, ''), '{NONE_GROUP}') AS tier,
                   count(*), sum(cost_usd), sum(baseline_cost_usd)
            FROM {TABLE} WHERE purpose = 'client' AND ts >= %s GROUP BY 1, 2"""
        async with self._conn() as conn:
            cur = await conn.execute(sql, (float(b), lo))  # type: ignore[arg-type]
            got = await cur.fetchall()
        return bucket_rows({(float(r[0]) * b, r[1]): [r[2], r[3], r[4]] for r in got})
