"""The kept Responses answers (gateway/api/response_store.py) on a real SQLite file: scoped to
the key that made them, bounded in entries and bytes, deleted after their retention, and
refused when a newer gateway wrote the file."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path

import pytest

from gateway.api.response_store import ResponseStore, ResponseStoreError, store_path
from gateway.config import ResponsesConfig, StoreConfig


def _store(path: Path, **kw: object) -> ResponseStore:
    return ResponseStore(ResponsesConfig(store=True, **kw), str(path))  # type: ignore[arg-type]


def test_an_answer_is_seen_only_by_the_key_that_made_it(tmp_path: Path) -> None:
    async def run() -> None:
        s = _store(tmp_path / "r.db")
        assert await s.put("team-a", "resp_1", {"id": "resp_1"}, [{"role": "user"}])
        assert await s.get("team-a", "resp_1") == ({"id": "resp_1"}, [{"role": "user"}])
        assert await s.get("team-b", "resp_1") is None
        assert not await s.delete("team-b", "resp_1")
        assert await s.delete("team-a", "resp_1")
        assert await s.get("team-a", "resp_1") is None
        await s.close()

    asyncio.run(run())


def test_the_oldest_answers_go_past_the_entry_and_byte_bounds(tmp_path: Path) -> None:
    async def run() -> None:
        s = _store(tmp_path / "r.db", max_entries=3, max_bytes=64 * 1024)
        for i in range(5):
            await s.put("", f"resp_{i}", {"i": i}, [])
        assert (await s.count())[0] == 3
        assert await s.get("", "resp_1") is None and await s.get("", "resp_4") is not None
        big = "x" * 30_000
        await s.put("", "resp_big1", {"t": big}, [])
        await s.put("", "resp_big2", {"t": big}, [])
        await s.put("", "resp_big3", {"t": big}, [])
        _, size = await s.count()
        assert size <= 64 * 1024 and await s.get("", "resp_big3") is not None
        assert await s.get("", "resp_big1") is None
        # one conversation over max_entry_bytes is not kept at all
        s.configure(ResponsesConfig(store=True, max_entry_bytes=1024))
        assert not await s.put("", "resp_huge", {"t": "y" * 2000}, [])
        assert await s.get("", "resp_huge") is None
        await s.close()

    asyncio.run(run())


def test_answers_past_their_retention_are_gone(tmp_path: Path) -> None:
    path = tmp_path / "r.db"

    async def run() -> None:
        s = _store(path, retention_days=1.0)
        await s.put("", "resp_old", {"a": 1}, [])
        await s.put("", "resp_new", {"a": 2}, [])
        await s.close()
        with sqlite3.connect(path) as c:  # the first answer was kept two days ago
            c.execute(
                "UPDATE responses SET created = ? WHERE id = 'resp_old'", (time.time() - 2 * 86400,)
            )
        s = _store(path, retention_days=1.0)
        assert await s.get("", "resp_old") is None
        assert await s.get("", "resp_new") is not None
        assert (await s.count())[0] == 1  # deleted at open, not only hidden
        await s.close()

    asyncio.run(run())


def test_a_file_from_a_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "r.db"
    with sqlite3.connect(path) as c:
        c.execute("CREATE TABLE tollgate_responses_schema (version INTEGER NOT NULL)")
        c.execute("INSERT INTO tollgate_responses_schema VALUES (99)")

    async def run() -> None:
        with pytest.raises(ResponseStoreError, match="schema v99"):
            await _store(path).open()

    asyncio.run(run())


def test_the_default_file_sits_next_to_the_records() -> None:
    cfg = ResponsesConfig(store=True)
    assert store_path(cfg, StoreConfig(sqlite_path="var/x.db")) == "var/x.responses.db"
    assert store_path(ResponsesConfig(sqlite_path="/a/b.db"), StoreConfig()) == "/a/b.db"
