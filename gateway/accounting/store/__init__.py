"""Record stores behind one interface: SQLite (embedded default), Redis and PostgreSQL (shared
by replicas)."""

from __future__ import annotations

import os
from pathlib import Path

from gateway.accounting.store.base import (
    GROUP_BY,
    QUALITY_SOURCES,
    QualitySource,
    Store,
    StoreError,
    StoreUnavailable,
    record_quality,
)
from gateway.config import StoreConfig, mask_url_password


def make_store(cfg: StoreConfig) -> Store | None:
    """The configured store, not yet opened (the Recorder opens it); None for backend "none"."""
    if cfg.backend == "none":
        return None
    if cfg.backend == "sqlite":
        from gateway.accounting.store.sqlite_store import SQLiteStore

        return SQLiteStore(cfg.sqlite_path, retention_days=cfg.retention_days)
    if cfg.backend == "postgres":
        from gateway.accounting.store.postgres_store import PostgresStore

        return PostgresStore(
            cfg.postgres_url,
            pool_min=cfg.postgres_pool_min,
            pool_max=cfg.postgres_pool_max,
            timeout_s=cfg.postgres_timeout_s,
            retention_days=cfg.retention_days,
        )
    from gateway.accounting.store.redis_store import RedisStore

    return RedisStore(
        cfg.redis_url,
        stream_maxlen=cfg.redis_stream_maxlen,
        cluster=cfg.redis_cluster,
        retention_days=cfg.retention_days,
    )


def sqlite_file(cfg: StoreConfig) -> Path | None:
    """The absolute path of the SQLite file (relative paths are relative to the current
    directory); None when the store is not a SQLite file."""
    if cfg.backend != "sqlite" or cfg.sqlite_path == ":memory:":
        return None
    return Path(cfg.sqlite_path).expanduser().absolute()


def describe_store(cfg: StoreConfig) -> str:
    """Which store this is, for an operator: "SQLite at /abs/path", "Redis at redis://...",
    "Redis Cluster at redis://...", "PostgreSQL at postgresql://..." (passwords masked) or
    "none"."""
    if cfg.backend == "none":
        return "none (store.backend: none, nothing is recorded)"
    if cfg.backend == "sqlite":
        f = sqlite_file(cfg)
        return f"SQLite at {f if f is not None else cfg.sqlite_path}"
    if cfg.backend == "postgres":
        return "PostgreSQL at " + mask_url_password(cfg.postgres_url)
    kind = "Redis Cluster" if cfg.redis_cluster else "Redis"
    return f"{kind} at " + mask_url_password(cfg.redis_url)


def describe_sources(config_path: str | os.PathLike[str], cfg: StoreConfig) -> str:
    """One line naming the routing file and the store a command uses."""
    return f"routing file {Path(config_path).absolute()}, store {describe_store(cfg)}"


def missing_store(cfg: StoreConfig, config_path: str | Path) -> str | None:
    """Why a command that only reads records cannot read this store (its SQLite file does
    not exist), with how to point at the right one; None when there is a file to read.

    Opening a missing SQLite file would create an empty store and report "no requests"."""
    f = sqlite_file(cfg)
    if f is None or f.exists():
        return None
    return (
        f"there is no SQLite store at {f} (store.sqlite_path of {config_path}, relative to "
        "the current directory), and none was created. Point at the store your gateway "
        "writes: --config with the gateway's routing file (run from the gateway's directory "
        "when its sqlite_path is relative), or TOLLGATE_DB=/path/to/tollgate.db with the "
        "default routing file"
    )


__all__ = [
    "GROUP_BY",
    "QUALITY_SOURCES",
    "QualitySource",
    "Store",
    "StoreError",
    "StoreUnavailable",
    "describe_sources",
    "describe_store",
    "make_store",
    "missing_store",
    "record_quality",
    "sqlite_file",
]
