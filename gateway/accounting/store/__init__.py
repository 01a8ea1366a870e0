"""Record stores behind one interface: SQLite (embedded default) and Redis (shared by replicas)."""

from __future__ import annotations

from gateway.accounting.store.base import (
    GROUP_BY,
    QUALITY_SOURCES,
    QualitySource,
    Store,
    StoreError,
    StoreUnavailable,
    record_quality,
)
from gateway.config import StoreConfig


def make_store(cfg: StoreConfig) -> Store | None:
    """The configured store, not yet opened (the Recorder opens it); None for backend "none"."""
    if cfg.backend == "none":
        return None
    if cfg.backend == "sqlite":
        from gateway.accounting.store.sqlite_store import SQLiteStore

        return SQLiteStore(cfg.sqlite_path)
    from gateway.accounting.store.redis_store import RedisStore

    return RedisStore(cfg.redis_url, stream_maxlen=cfg.redis_stream_maxlen)


__all__ = [
    "GROUP_BY",
    "QUALITY_SOURCES",
    "QualitySource",
    "Store",
    "StoreError",
    "StoreUnavailable",
    "make_store",
    "record_quality",
]
