"""Gateway keys made at run time (`tollgate keys create`, `POST /admin/keys`), and the table
every request is checked against.

The key store keeps one row per key: its id (the name given at creation), the sha256 of the
key (the key itself is shown once and never stored), its limits (the fields of
`config.GatewayKey`) and when it was created and revoked. Where it lives follows the record
store: PostgreSQL (table `tollgate_gateway_keys`) when store.backend is postgres, else the
SQLite file at store.sqlite_path (table `gateway_keys`, next to the records when the record
store is SQLite). Plain blocking calls: the CLI uses them as they are, the gateway in a
thread.

`KeyTable` is what a request sees: one dict from sha256 to `GatewayKey` (routing-file keys,
store keys, and the master key from $TOLLGATE_MASTER_KEY), rebuilt and swapped whole by
`KeyRefresher` every auth.refresh_interval_s, so a check is one hash and one dict lookup
and a revoked key is refused by every replica within that interval. A key store that cannot
be read leaves the last table in place (at start: the routing file's keys only).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import re
import secrets
import sqlite3
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from pydantic import ValidationError

from gateway.config import GatewayKey, RoutingConfig, StoreConfig, mask_url_password

log = logging.getLogger("tollgate.keys")

MASTER_ENV = "TOLLGATE_MASTER_KEY"
MASTER_ID = "master"  # the key id the master key's requests carry; no other key may use it
LIMIT_FIELDS = ("rpm", "tpm", "budget_usd", "budget_window", "models")
KEY_PREFIX = "tg-"
_NAME = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")


def digest(key: str | bytes) -> str:
    return hashlib.sha256(key.encode() if isinstance(key, str) else key).hexdigest()


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(24)


class KeyStoreError(Exception):
    """The key store cannot be reached or refused the change (message says which)."""


@dataclass(frozen=True)
class StoredKey:
    key: GatewayKey
    created_at: float
    revoked_at: float | None

    def public(self) -> dict[str, Any]:
        """What `keys list` and GET /admin/keys show: never the hash."""
        return {
            "id": self.key.id,
            "created_at": self.created_at,
            "revoked_at": self.revoked_at,
            **{f: getattr(self.key, f) for f in LIMIT_FIELDS},
        }


def _key_of(row: tuple[Any, ...]) -> StoredKey:
    kid, sha, rpm, tpm, budget, window, models, created, revoked = row
    key = GatewayKey(
        id=kid,
        sha256=sha,
        rpm=rpm,
        tpm=tpm,
        budget_usd=budget,
        budget_window=window,
        models=orjson.loads(models) if models else None,
    )
    return StoredKey(key, float(created), None if revoked is None else float(revoked))


_COLUMNS = "id, sha256, rpm, tpm, budget_usd, budget_window, models, created_at, revoked_at"


class KeyStore(ABC):
    name: str

    @abstractmethod
    def active(self) -> list[GatewayKey]:
        """Keys not revoked. A store that holds none yet (no file, no table) has none."""

    @abstractmethod
    def all(self) -> list[StoredKey]: ...

    @abstractmethod
    def _insert(self, row: tuple[Any, ...]) -> None: ...

    @abstractmethod
    def revoke(self, key_id: str) -> bool:
        """Revoke the active key `key_id`; False when there is none."""

    def close(self) -> None:
        return None

    def create(self, key: GatewayKey, now: float | None = None) -> None:
        if key.id == MASTER_ID:
            raise KeyStoreError(f"the key id {MASTER_ID!r} is reserved; choose another --name")
        if any(k.id == key.id for k in self.active()):
            raise KeyStoreError(
                f"a key named {key.id!r} exists; revoke it first or choose another --name"
            )
        models = orjson.dumps(key.models).decode() if key.models is not None else None
        row = (key.id, key.sha256, key.rpm, key.tpm, key.budget_usd, key.budget_window, models)
        self._insert((*row, time.time() if now is None else now))


class SQLiteKeyStore(KeyStore):
    """Table `gateway_keys` in a SQLite file (the record store's, by default)."""

    TABLE_SQL = (
        "CREATE TABLE IF NOT EXISTS gateway_keys (id TEXT NOT NULL, sha256 TEXT NOT NULL UNIQUE,"
        " rpm INTEGER, tpm INTEGER, budget_usd REAL, budget_window TEXT NOT NULL,"
        " models TEXT, created_at REAL NOT NULL, revoked_at REAL)"
    )

    def __init__(self, path: str) -> None:
        self.path = path
        self.name = f"SQLite at {path}"

    def _connect(self, write: bool) -> sqlite3.Connection:
        if write:
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            c = sqlite3.connect(self.path, timeout=5.0)
            c.execute("PRAGMA journal_mode=WAL")
            c.execute(self.TABLE_SQL)
            return c
        return sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=5.0)

    def _rows(self, where: str) -> list[tuple[Any, ...]]:
        if not os.path.exists(self.path):
            return []
        try:
            with contextlib.closing(self._connect(False)) as c:
                return c.execute(f"SELECT {_COLUMNS} FROM gateway_keys {where}").fetchall()
        except sqlite3.Error as e:
            if "no such table" in str(e):
                return []
            raise KeyStoreError(f"the key store ({self.name}) cannot be read: {e}") from None

    def active(self) -> list[GatewayKey]:
        return [_key_of(r).key for r in self._rows("WHERE revoked_at IS NULL")]

    def all(self) -> list[StoredKey]:
        return [_key_of(r) for r in self._rows("ORDER BY created_at")]

    def _write(self, sql: str, args: tuple[Any, ...]) -> int:
        try:
            with contextlib.closing(self._connect(True)) as c, c:
                return c.execute(sql, args).rowcount
        except sqlite3.Error as e:
            raise KeyStoreError(f"the key store ({self.name}) refused the change: {e}") from None

    def _insert(self, row: tuple[Any, ...]) -> None:
        self._write(f"INSERT INTO gateway_keys ({_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,NULL)", row)

    def revoke(self, key_id: str) -> bool:
        sql = "UPDATE gateway_keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL"
        return self._write(sql, (time.time(), key_id)) > 0


class PostgresKeyStore(KeyStore):
    """Table `tollgate_gateway_keys` in the record store's PostgreSQL database. A connection
    per call (the CLI, the admin API, a gateway whose record store is not open yet); the
    gateway's refresh reads through the record store's pool (`KeyRefresher.fetch_async`)."""

    TABLE_SQL = (
        "CREATE TABLE IF NOT EXISTS tollgate_gateway_keys (id text NOT NULL,"
        " sha256 text NOT NULL UNIQUE, rpm integer, tpm integer, budget_usd double precision,"
        " budget_window text NOT NULL, models text, created_at double precision NOT NULL,"
        " revoked_at double precision)"
    )

    def __init__(self, url: str, timeout_s: float = 5.0) -> None:
        self.url = url
        self.timeout_s = timeout_s
        self.name = "PostgreSQL at " + mask_url_password(url)

    def _run(self, sql: str, args: tuple[Any, ...] = (), fetch: bool = False) -> Any:
        import psycopg

        try:
            timeout = max(1, int(self.timeout_s))
            with psycopg.connect(self.url, autocommit=True, connect_timeout=timeout) as conn:
                cur = conn.execute(sql, args)  # type: ignore[arg-type]
                return cur.fetchall() if fetch else cur.rowcount
        except psycopg.errors.UndefinedTable:
            return [] if fetch else 0
        except psycopg.Error as e:
            raise KeyStoreError(f"the key store ({self.name}) is unavailable: {e}") from None

    ACTIVE_SQL = f"SELECT {_COLUMNS} FROM tollgate_gateway_keys WHERE revoked_at IS NULL"

    def active(self) -> list[GatewayKey]:
        return [_key_of(r).key for r in self._run(self.ACTIVE_SQL, fetch=True)]

    async def active_via(self, pooled: Any) -> list[GatewayKey]:
        """The same read on a connection of the record store's pool (`PostgresStore`)."""
        try:
            async with pooled.connection() as conn:
                # no failed statement on a pooled connection: ask whether the table exists
                cur = await conn.execute("SELECT to_regclass('tollgate_gateway_keys')")
                found = await cur.fetchone()
                if found is None or found[0] is None:
                    return []
                rows = await (await conn.execute(self.ACTIVE_SQL)).fetchall()
        except Exception as e:  # StoreError, psycopg.Error
            raise KeyStoreError(f"the key store ({self.name}) is unavailable: {e}") from None
        return [_key_of(tuple(r)).key for r in rows]

    def all(self) -> list[StoredKey]:
        sql = f"SELECT {_COLUMNS} FROM tollgate_gateway_keys ORDER BY created_at"
        return [_key_of(r) for r in self._run(sql, fetch=True)]

    def _insert(self, row: tuple[Any, ...]) -> None:
        self._run(self.TABLE_SQL)
        self._run(
            f"INSERT INTO tollgate_gateway_keys ({_COLUMNS}) VALUES (%s,%s,%s,%s,%s,%s,%s,%s,NULL)",
            row,
        )

    def revoke(self, key_id: str) -> bool:
        sql = (
            "UPDATE tollgate_gateway_keys SET revoked_at = %s WHERE id = %s AND revoked_at IS NULL"
        )
        return int(self._run(sql, (time.time(), key_id))) > 0


def create_key(store: KeyStore, name: str, limits: dict[str, Any]) -> tuple[str, StoredKey]:
    """Make a key named `name` with `limits` (fields of GatewayKey), store its hash, and
    return the key (to show once) and what was stored. ValueError names a bad field."""
    if not _NAME.match(name):
        raise ValueError(
            f"name {name[:80]!r}: use 1 to 64 letters, digits and . _ : - (it is the key id "
            "in /v1/usage and the records)"
        )
    unknown = set(limits) - set(LIMIT_FIELDS)
    if unknown:
        raise ValueError(f"unknown field(s) {sorted(unknown)}; allowed: {list(LIMIT_FIELDS)}")
    key = new_key()
    try:
        gk = GatewayKey(id=name, sha256=digest(key), **limits)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "key"
        raise ValueError(f"{where}: {first['msg']}") from None
    now = time.time()
    store.create(gk, now)
    return key, StoredKey(gk, now, None)


def make_key_store(cfg: StoreConfig) -> KeyStore | None:
    """PostgreSQL with a postgres record store, else the SQLite file at store.sqlite_path
    (None for an in-memory SQLite store: such keys would not outlive the process)."""
    if cfg.backend == "postgres":
        return PostgresKeyStore(cfg.postgres_url, cfg.postgres_timeout_s)
    if cfg.sqlite_path == ":memory:":
        return None
    return SQLiteKeyStore(str(Path(cfg.sqlite_path).expanduser().absolute()))


class KeyTable:
    """One immutable snapshot of the accepted keys; swapped whole, never changed."""

    __slots__ = ("by_hash", "by_id", "master", "required")

    def __init__(
        self, cfg: RoutingConfig, stored: list[GatewayKey], master_key: str | None
    ) -> None:
        self.master: GatewayKey | None = None
        by_hash: dict[str, GatewayKey] = {}
        for k in stored:
            by_hash[k.sha256] = k
        for k in cfg.auth.keys:  # the routing file wins a clash
            by_hash[k.sha256] = k
        if master_key:
            self.master = GatewayKey(id=MASTER_ID, sha256=digest(master_key))
            by_hash[self.master.sha256] = self.master
        self.by_hash = by_hash
        self.by_id = {k.id: k for k in by_hash.values()}
        # keys are checked when the routing file asks for them, or once any key exists
        self.required = cfg.auth.required or bool(cfg.auth.keys) or bool(stored)

    def lookup(self, key: bytes | str) -> GatewayKey | None:
        return self.by_hash.get(digest(key))

    def is_master(self, key: GatewayKey | None) -> bool:
        return key is not None and key is self.master


class KeyRefresher:
    """Keeps `holder.keys` (a KeyTable) current: the routing file's keys at once, the store's
    every `interval` seconds (in a thread)."""

    def __init__(self, holder: Any, store: KeyStore | None) -> None:
        self.holder = holder
        self.store = store
        self.stored: list[GatewayKey] = []
        self.master_key = os.environ.get(MASTER_ENV) or None
        self.loaded = False  # the store has been read at least once
        self._failing = False
        self._task: asyncio.Task[None] | None = None

    def rebuild(self, cfg: RoutingConfig) -> None:
        self.holder.keys = KeyTable(cfg, self.stored, self.master_key)

    def fetch(self) -> list[GatewayKey] | None:
        """One blocking read of the store's active keys; None when it cannot be read."""
        if self.store is None:
            return None
        return self._read(self.store.active)

    async def fetch_async(self) -> list[GatewayKey] | None:
        """A refresh: on the record store's PostgreSQL pool when it is open (no connection
        of its own), else a blocking read in a thread."""
        pooled = getattr(self.holder, "store", None)
        if isinstance(self.store, PostgresKeyStore) and getattr(pooled, "connection", None):
            try:
                stored = await self.store.active_via(pooled)
            except KeyStoreError:
                pass  # not open yet, or down: the thread's own connection says which
            else:
                return self._read(lambda: stored)
        return await asyncio.to_thread(self.fetch)

    def _read(self, read: Callable[[], list[GatewayKey]]) -> list[GatewayKey] | None:
        assert self.store is not None
        try:
            stored = read()
        except KeyStoreError as e:
            if not self._failing:
                log.warning("%s; serving the keys loaded before (routing-file keys at start)", e)
            self._failing = True
            return None
        if self._failing:
            log.info("key store %s readable again", self.store.name)
        self._failing = False
        self.loaded = True
        return stored

    def apply(self, stored: list[GatewayKey] | None) -> None:
        if stored is not None and stored != self.stored:
            self.stored = stored
            self.rebuild(self.holder.config)
            changed = getattr(self.holder, "keys_changed", None)
            if changed is not None:  # the gateway: the stored keys' limits apply
                changed()

    def start(self, interval_of: Any) -> None:
        self._task = asyncio.create_task(self._loop(interval_of))

    async def _loop(self, interval_of: Any) -> None:
        while True:
            await asyncio.sleep(interval_of())
            try:
                self.apply(await self.fetch_async())
            except Exception:  # the refresher must never die
                log.exception("key refresh failed")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self.store is not None:
            await asyncio.to_thread(self.store.close)
