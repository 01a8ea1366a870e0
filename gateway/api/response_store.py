"""Kept Responses answers: what `previous_response_id` continues and GET/DELETE
/v1/responses/{id} reach. On only with `responses.store: true` in the routing file.

One SQLite file (`responses.sqlite_path`, WAL, shared by every worker process of a host).
Each row is one answer: its id, the gateway key id that made it (a row is visible only to
that key; "" without keys), when, its size, the Response JSON and the conversation items a
later turn continues from. Bounded: rows older than `retention_days` are deleted (at open
and at most once a minute on a write, and never read back), and past `max_entries` rows or
`max_bytes` bytes the oldest go; a conversation over `max_entry_bytes` is not kept. The
schema version is in `tollgate_responses_schema`: a file written by a newer gateway is
refused, not misread.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import orjson

from gateway.config import ResponsesConfig, StoreConfig

SCHEMA_VERSION = 1
_PRUNE_EVERY_S = 60.0
T = TypeVar("T")


class ResponseStoreError(Exception):
    """The kept answers cannot be read or written."""


def store_path(cfg: ResponsesConfig, store: StoreConfig) -> str:
    """`responses.sqlite_path`, else the records' SQLite file with `.responses.db`."""
    if cfg.sqlite_path:
        return cfg.sqlite_path
    if store.sqlite_path == ":memory:":
        return ":memory:"
    return str(Path(store.sqlite_path).with_suffix(".responses.db"))


class ResponseStore:
    def __init__(self, cfg: ResponsesConfig, path: str) -> None:
        self.cfg = cfg
        self.path = path
        self._c: sqlite3.Connection | None = None
        self._lock = threading.Lock()
        self._pruned = 0.0

    def configure(self, cfg: ResponsesConfig) -> None:
        """A reloaded routing file's bounds (the file stays until restart)."""
        self.cfg = cfg

    def _open_sync(self) -> sqlite3.Connection:
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        c = sqlite3.connect(self.path, timeout=10.0, check_same_thread=False)
        c.execute("PRAGMA busy_timeout=10000")
        if self.path != ":memory:":
            c.execute("PRAGMA journal_mode=WAL")
        c.execute("PRAGMA synchronous=NORMAL")
        with c:
            c.execute(
                "CREATE TABLE IF NOT EXISTS tollgate_responses_schema (version INTEGER NOT NULL)"
            )
            row = c.execute("SELECT version FROM tollgate_responses_schema").fetchone()
            if row is None:
                c.execute(
                    "INSERT INTO tollgate_responses_schema (version) VALUES (?)", (SCHEMA_VERSION,)
                )
        if row is not None and row[0] > SCHEMA_VERSION:
            c.close()
            raise ResponseStoreError(
                f"{self.path}: written by responses schema v{row[0]}, this gateway reads up "
                f"to v{SCHEMA_VERSION}; upgrade the gateway or set responses.sqlite_path to "
                "another file"
            )
        with c:
            c.execute(
                "CREATE TABLE IF NOT EXISTS responses (id TEXT PRIMARY KEY, key TEXT NOT NULL, "
                "created REAL NOT NULL, size INTEGER NOT NULL, response BLOB NOT NULL, "
                "items BLOB NOT NULL)"
            )
            c.execute("CREATE INDEX IF NOT EXISTS responses_created ON responses (created)")
        return c

    async def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        def locked() -> T:
            with self._lock:
                if self._c is None:
                    self._c = self._open_sync()
                    self._prune(self._c, time.time())
                return fn(self._c)

        try:
            return await asyncio.to_thread(locked)
        except sqlite3.Error as e:
            raise ResponseStoreError(f"responses store {self.path}: {e}") from e

    async def open(self) -> None:
        await self._run(lambda c: None)

    async def close(self) -> None:
        def shut() -> None:
            with self._lock:
                if self._c is not None:
                    self._c.close()
                    self._c = None

        await asyncio.to_thread(shut)

    def _prune(self, c: sqlite3.Connection, now: float) -> None:
        """Delete what is past its retention, then the oldest rows past the bounds."""
        self._pruned = now
        with c:
            c.execute("DELETE FROM responses WHERE created < ?", (self._cutoff(now),))

    def _cutoff(self, now: float) -> float:
        return now - self.cfg.retention_days * 86400.0

    def _bound(self, c: sqlite3.Connection) -> None:
        n, total = c.execute("SELECT count(*), coalesce(sum(size), 0) FROM responses").fetchone()
        if n <= self.cfg.max_entries and total <= self.cfg.max_bytes:
            return
        gone: list[str] = []
        for rid, size in c.execute("SELECT id, size FROM responses ORDER BY created, id"):
            if n <= self.cfg.max_entries and total <= self.cfg.max_bytes:
                break
            gone.append(rid)
            n -= 1
            total -= size
        c.executemany("DELETE FROM responses WHERE id = ?", [(r,) for r in gone])

    async def put(self, key: str, resp_id: str, response: dict[str, Any], items: Any) -> bool:
        """Keep an answer; False (not kept) when it is over responses.max_entry_bytes."""
        r = orjson.dumps(response)
        i = orjson.dumps(items)
        size = len(r) + len(i)
        if size > self.cfg.max_entry_bytes:
            return False
        now = time.time()

        def write(c: sqlite3.Connection) -> None:
            if now - self._pruned > _PRUNE_EVERY_S:
                self._prune(c, now)
            with c:
                c.execute(
                    "INSERT OR REPLACE INTO responses VALUES (?, ?, ?, ?, ?, ?)",
                    (resp_id, key, now, size, r, i),
                )
                self._bound(c)

        await self._run(write)
        return True

    async def get(self, key: str, resp_id: str) -> tuple[dict[str, Any], list[Any]] | None:
        """The Response and conversation items of `resp_id`, if this key made it and it is
        still kept; else None."""
        cutoff = self._cutoff(time.time())

        def read(c: sqlite3.Connection) -> tuple[bytes, bytes] | None:
            row = c.execute(
                "SELECT response, items FROM responses WHERE id = ? AND key = ? AND created >= ?",
                (resp_id, key, cutoff),
            ).fetchone()
            return None if row is None else (row[0], row[1])

        row = await self._run(read)
        if row is None:
            return None
        return orjson.loads(row[0]), orjson.loads(row[1])

    async def delete(self, key: str, resp_id: str) -> bool:
        def rm(c: sqlite3.Connection) -> bool:
            with c:
                n = c.execute(
                    "DELETE FROM responses WHERE id = ? AND key = ?", (resp_id, key)
                ).rowcount
            return bool(n)

        return await self._run(rm)

    async def count(self) -> tuple[int, int]:
        """Rows and bytes kept now."""

        def q(c: sqlite3.Connection) -> tuple[int, int]:
            n, total = c.execute(
                "SELECT count(*), coalesce(sum(size), 0) FROM responses"
            ).fetchone()
            return int(n), int(total)

        return await self._run(q)
