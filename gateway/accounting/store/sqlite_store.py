"""SQLite record store: the embedded default. One WAL database file, stdlib sqlite3 in threads.

Layout: table `requests` (one row per record, one column per RequestRecord field, primary key
request_id, so `INSERT OR IGNORE` makes a retried batch harmless; the judge's own calls are
rows with purpose 'judge', left out of everything but `usage(purpose="judge")` and `get()`;
the router's prompt vector
is little-endian float32 bytes, 128 bytes for 32 numbers, where JSON text took ~780; rows
written before schema 3 hold JSON text there, and both read back as a list of floats) and
table `tollgate_schema` (one row: the schema version). Columns for RequestRecord fields added
later are created on open (additive migration); a database written by a newer schema is
refused.
synchronous=NORMAL: a committed batch survives a gateway crash; a power cut may lose the last
few batches (WAL default trade-off).
"""

from __future__ import annotations

import asyncio
import functools
import operator
import sqlite3
import struct
import threading
from collections.abc import Callable
from dataclasses import fields
from itertools import chain
from pathlib import Path
from typing import Any, TypeVar

import orjson

from gateway.accounting.records import SCHEMA_VERSION, RequestRecord
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

T = TypeVar("T")

_FIELDS = [f.name for f in fields(RequestRecord)]
_BOOL = {"stream", "tokens_estimated", "cache_hit", "explored", "budget_soft"}
_JSON = {"router_scores"}
_VECTOR = "router_features"  # list[float] <-> little-endian float32 bytes
_TYPES = {
    "ts": "REAL NOT NULL",
    "request_id": "TEXT PRIMARY KEY",
    # rows from before schema 4 read as client traffic (SQLite fills an added column's
    # default into existing rows)
    "purpose": "TEXT NOT NULL DEFAULT 'client'",
}


def _sql_type(name: str) -> str:
    if name in _TYPES:
        return _TYPES[name]
    # Annotations are strings here (records.py uses `from __future__ import annotations`).
    hint = str(RequestRecord.__dataclass_fields__[name].type)
    if name == _VECTOR:
        return "BLOB"
    if name in _JSON or "dict" in hint or "str" in hint:
        return "TEXT"
    if "float" in hint:
        return "REAL"
    if "int" in hint or "bool" in hint:
        return "INTEGER"
    return "BLOB"  # no affinity: stored as given


# A row is every field in _FIELDS order, read at C level, then the few that need converting:
# ~1.5 us per record instead of ~6 us for a getattr loop (it runs on the gateway's core).
_values = operator.attrgetter(*_FIELDS)
_JSON_AT = [_FIELDS.index(n) for n in sorted(_JSON)]
_VECTOR_AT = _FIELDS.index(_VECTOR)
_BOOL_AT = [_FIELDS.index(n) for n in sorted(_BOOL)]


_CHUNK = 5000  # records deleted per statement by retention
_DELETE_CHUNK = (
    "DELETE FROM requests WHERE rowid IN (SELECT rowid FROM requests WHERE ts < ? LIMIT ?)"
)
_ROW_MARKS = f"({', '.join('?' * len(_FIELDS))})"


def _statement_sizes(n: int, most: int) -> list[int]:
    """Rows per INSERT for n records: `most` (a power of two) as often as it fits, then the
    powers of two of the rest. Each size is one statement SQLite compiles and sqlite3 caches
    per connection; sizes from 1 to 256 made up to 128 cached statements of up to 8,000
    parameters each, and the writer thread's memory grew with every new batch size."""
    sizes = [most] * (n // most)
    rest = n % most
    bit = most >> 1
    while rest:
        if rest & bit:
            sizes.append(bit)
            rest -= bit
        bit >>= 1
    return sizes


@functools.lru_cache(maxsize=16)
def _insert_sql(rows: int) -> str:
    """INSERT of `rows` records at once; OR IGNORE skips (row by row) ids already stored."""
    return f"INSERT OR IGNORE INTO requests ({', '.join(_FIELDS)}) VALUES " + ", ".join(
        [_ROW_MARKS] * rows
    )


def _row(rec: RequestRecord) -> list[Any]:
    out = list(_values(rec))
    for i in _JSON_AT:
        if out[i] is not None:
            out[i] = orjson.dumps(out[i]).decode()
    vec = out[_VECTOR_AT]
    if vec is not None:
        out[_VECTOR_AT] = struct.pack(f"<{len(vec)}f", *vec)
    for i in _BOOL_AT:
        out[i] = int(bool(out[i]))
    return out


def _vector(v: bytes | str | None) -> list[float] | None:
    if v is None:
        return None
    if isinstance(v, bytes):
        return list(struct.unpack(f"<{len(v) // 4}f", v))
    out: list[float] = orjson.loads(v)  # a row written before schema 3: JSON text
    return out


def _record(row: sqlite3.Row) -> RequestRecord:
    data: dict[str, Any] = {}
    for name in row.keys():  # noqa: SIM118 - sqlite3.Row has keys() but no __iter__ over names
        v = row[name]
        if name in _JSON:
            v = orjson.loads(v) if v is not None else None
        elif name == _VECTOR:
            v = _vector(v)
        elif name in _BOOL:
            v = bool(v)
        data[name] = v
    return record_from_dict(data)


class SQLiteStore(Store):
    name = "sqlite"

    def __init__(
        self, path: str, retention_days: float | None = None, retention_every_s: float = 3600.0
    ) -> None:
        self.path = path
        self.retention = Retention(retention_days, retention_every_s)
        self._w: sqlite3.Connection | None = None  # writes
        self._r: sqlite3.Connection | None = None  # reads, so reports never wait on writes
        self._wlock = threading.Lock()
        self._rlock = threading.Lock()
        self._rows_per_insert = 32  # set at open() to what SQLite's `?` limit allows

    # -- plumbing ---------------------------------------------------------------------------
    def _connect(self) -> sqlite3.Connection:
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, timeout=10.0, check_same_thread=False)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA busy_timeout=10000")
        return conn

    def _open_sync(self) -> None:
        w = self._connect()
        mode = w.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if self.path != ":memory:" and str(mode).lower() != "wal":
            raise StoreUnavailable(f"{self.path}: could not enable WAL (journal_mode={mode})")
        w.execute("PRAGMA synchronous=NORMAL")
        with w:
            w.execute("CREATE TABLE IF NOT EXISTS tollgate_schema (version INTEGER NOT NULL)")
            row = w.execute("SELECT version FROM tollgate_schema").fetchone()
            if row is None:
                w.execute("INSERT INTO tollgate_schema (version) VALUES (?)", (SCHEMA_VERSION,))
            elif row[0] > SCHEMA_VERSION:
                raise StoreError(
                    f"{self.path}: written by record schema v{row[0]}, this gateway reads up to "
                    f"v{SCHEMA_VERSION}; upgrade the gateway or point sqlite_path elsewhere"
                )
            elif row[0] < SCHEMA_VERSION:
                w.execute("UPDATE tollgate_schema SET version = ?", (SCHEMA_VERSION,))
            cols = ", ".join(f"{n} {_sql_type(n)}" for n in _FIELDS)
            w.execute(f"CREATE TABLE IF NOT EXISTS requests ({cols})")
            have = {r[1] for r in w.execute("PRAGMA table_info(requests)")}
            for n in _FIELDS:
                if n not in have:
                    w.execute(f"ALTER TABLE requests ADD COLUMN {n} {_sql_type(n)}")
            w.execute("CREATE INDEX IF NOT EXISTS requests_ts ON requests (ts)")
        marks = w.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)  # 999 before SQLite 3.32
        fit = max(1, min(32, marks // len(_FIELDS)))
        self._rows_per_insert = 1 << (fit.bit_length() - 1)  # a power of two
        self._w = w
        self._r = w if self.path == ":memory:" else self._connect()
        if self._r is w:
            self._rlock = self._wlock

    async def _run(self, lock: threading.Lock, fn: Callable[[], T]) -> T:
        def locked() -> T:
            with lock:
                return fn()

        try:
            return await asyncio.to_thread(locked)
        except sqlite3.OperationalError as e:
            raise StoreUnavailable(f"sqlite {self.path}: {e}") from e
        except sqlite3.Error as e:
            raise StoreError(f"sqlite {self.path}: {e}") from e

    def _wc(self) -> sqlite3.Connection:
        if self._w is None:
            raise StoreUnavailable("sqlite store is not open")
        return self._w

    def _rc(self) -> sqlite3.Connection:
        if self._r is None:
            raise StoreUnavailable("sqlite store is not open")
        return self._r

    # -- Store ------------------------------------------------------------------------------
    async def open(self) -> None:
        if self._w is not None:
            return
        try:
            await asyncio.to_thread(self._open_sync)
        except sqlite3.Error as e:
            raise StoreUnavailable(f"sqlite {self.path}: {e}") from e
        except OSError as e:
            raise StoreUnavailable(f"sqlite {self.path}: {e}") from e
        await self._prune_if_due()

    async def close(self) -> None:
        await self.retention.stop()
        w, r = self._w, self._r
        self._w = self._r = None

        def shut() -> None:
            with self._wlock:
                if w is not None:
                    w.close()
            if r is not None and r is not w:
                with self._rlock:
                    r.close()

        await asyncio.to_thread(shut)

    async def write_batch(self, records: list[RequestRecord]) -> None:
        records = self.retention.keep(records)
        if records:
            await self._write(records)
        await self._prune_if_due()

    async def _prune_if_due(self, wait: bool = False) -> None:
        def chunk(cutoff: float) -> int:
            c = self._wc()
            with c:
                return c.execute(_DELETE_CHUNK, (cutoff, _CHUNK)).rowcount

        async def delete(cutoff: float) -> int:
            total = 0
            while True:  # the write lock is released between chunks: writes go on
                n = await self._run(self._wlock, lambda: chunk(cutoff))
                total += n
                if n < _CHUNK:
                    return total

        await self.retention.run_if_due(delete, wait=wait)

    async def _write(self, records: list[RequestRecord]) -> None:
        per = self._rows_per_insert

        def write() -> None:
            # Rows are built here, in the writer thread, which the event loop preempts every
            # switch interval: a catch-up write of 1,024 records would otherwise hold the loop
            # for milliseconds. (The recorder no longer changes a record once it is taken.)
            # One INSERT of many rows, not executemany: the thread releases and retakes the
            # GIL around every sqlite3_step, and on the gateway's busy core each retake can
            # wait out the switch interval; one statement per up to `per` rows does that a
            # few times, not once a row, and costs ~15% less CPU per record
            # (bench/store_write.py).
            c = self._wc()
            with c:
                i = 0
                for n in _statement_sizes(len(records), per):
                    part = records[i : i + n]
                    i += n
                    c.execute(_insert_sql(n), list(chain.from_iterable(map(_row, part))))

        await self._run(self._wlock, write)

    async def set_quality(self, request_id: str, source: QualitySource, score: float) -> bool:
        check_source(source)
        col = f"quality_{source}"

        def upd() -> bool:
            c = self._wc()
            with c:
                cur = c.execute(
                    f"UPDATE requests SET {col} = ? WHERE request_id = ?",
                    (float(score), request_id),
                )
            return cur.rowcount > 0

        return await self._run(self._wlock, upd)

    async def get(self, request_id: str) -> RequestRecord | None:
        def q() -> RequestRecord | None:
            row = (
                self._rc()
                .execute("SELECT * FROM requests WHERE request_id = ?", (request_id,))
                .fetchone()
            )
            return _record(row) if row is not None else None

        return await self._run(self._rlock, q)

    async def recent(self, limit: int) -> list[RequestRecord]:
        def q() -> list[RequestRecord]:
            cur = self._rc().execute(
                "SELECT * FROM requests WHERE purpose = 'client' "
                "ORDER BY ts DESC, request_id DESC LIMIT ?",
                (max(0, int(limit)),),
            )
            return [_record(r) for r in cur]

        return await self._run(self._rlock, q)

    async def count(self) -> int:
        def q() -> int:
            sql = "SELECT COUNT(*) FROM requests WHERE purpose = 'client'"
            return int(self._rc().execute(sql).fetchone()[0])

        return await self._run(self._rlock, q)

    async def usage(
        self,
        since: float | None,
        until: float | None,
        group_by: str,
        purpose: Purpose = "client",
        key_id: str | None = None,
    ) -> list[dict[str, Any]]:
        col = check_group_by(group_by)
        kind = check_purpose(purpose)
        lo = float("-inf") if since is None else float(since)
        hi = float("inf") if until is None else float(until)
        g = f"COALESCE(NULLIF(CAST({col} AS TEXT), ''), '{NONE_GROUP}')"
        where = "WHERE ts >= ? AND ts < ? AND purpose = ?"
        args: tuple[Any, ...] = (lo, hi, kind)
        if key_id is not None:
            where += " AND key_id = ?"
            args = (*args, key_id)
        agg_sql = f"""
            SELECT {g} AS g, COUNT(*) AS requests, TOTAL(status >= 400) AS errors,
                   TOTAL(prompt_tokens) AS prompt_tokens, TOTAL(cached_tokens) AS cached_tokens,
                   TOTAL(completion_tokens) AS completion_tokens,
                   TOTAL(tokens_estimated) AS estimated,
                   TOTAL(cost_usd) AS cost_usd, TOTAL(baseline_cost_usd) AS baseline_cost_usd,
                   TOTAL(cache_hit) AS cache_hits,
                   TOTAL(CASE WHEN cache_hit THEN baseline_cost_usd END) AS cache_saved_usd,
                   TOTAL({LIMIT_REJECTED_SQL}) AS limit_rejections,
                   AVG(COALESCE(quality_feedback, quality_judge)) AS quality_mean,
                   COUNT(COALESCE(quality_feedback, quality_judge)) AS quality_n,
                   AVG(quality_feedback) AS quality_feedback_mean,
                   AVG(quality_judge) AS quality_judge_mean,
                   AVG(quality_predicted) AS quality_predicted_mean
            FROM requests {where} GROUP BY g"""
        lat_sql = f"SELECT {g} AS g, latency_ms FROM requests {where} ORDER BY g, latency_ms"

        def q() -> list[dict[str, Any]]:
            c = self._rc()
            aggs = {r["g"]: dict(r) for r in c.execute(agg_sql, args)}
            lats: dict[str, list[float]] = {}
            for r in c.execute(lat_sql, args):
                lats.setdefault(r[0], []).append(float(r[1]))
            return [
                usage_row(a, percentile(lat, 50), percentile(lat, 95))
                for k, a in aggs.items()
                for lat in [lats.get(k, [])]
            ]

        rows = await self._run(self._rlock, q)
        rows.sort(key=lambda row: (-row["cost_usd"], row["group"]))
        return rows

    async def timeseries(self, since: float | None, bucket_s: int) -> list[dict[str, Any]]:
        b = check_bucket(bucket_s)
        lo = float("-inf") if since is None else bucket_start(float(since), b)
        sql = f"""
            SELECT CAST(ts / ? AS INTEGER) AS k,  -- floor: ts is unix time, never negative
                   COALESCE(NULLIF(tier, ''), '{NONE_GROUP}') AS tier,
                   COUNT(*), TOTAL(cost_usd), TOTAL(baseline_cost_usd)
            FROM requests WHERE ts >= ? AND purpose = 'client' GROUP BY k, tier"""

        def q() -> dict[tuple[float, str], list[float]]:
            cur = self._rc().execute(sql, (b, lo))
            return {(float(r[0] * b), r[1]): [r[2], r[3], r[4]] for r in cur}

        return bucket_rows(await self._run(self._rlock, q))
