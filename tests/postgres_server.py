"""A private PostgreSQL database for tests, on the server at 127.0.0.1:5432 (user postgres,
trust auth on loopback; .ci/run starts one where none answers).

Each test database is `tollgate_test_<random>`, created for the test and dropped after it
(WITH (FORCE), so a connection a failed test left open does not keep it), so parallel runs
never see each other's records. TOLLGATE_TEST_POSTGRES overrides the server's URL.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
import pytest

SERVER = os.environ.get("TOLLGATE_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")
START = "apt-get install -y postgresql && pg_ctlcluster 15 main start   (.ci/run does)"


def _admin() -> psycopg.Connection[tuple[object, ...]]:
    return psycopg.connect(SERVER, autocommit=True, connect_timeout=3)


def postgres_answers() -> str | None:
    """None when the test server accepts connections, else why not."""
    try:
        with _admin() as c:
            c.execute("SELECT 1")
    except psycopg.Error as e:
        return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return None


def need_postgres() -> None:
    """Skip the test when no PostgreSQL answers; under CI=true fail instead (CI starts one,
    so a missing server there is a broken CI, not a test to skip)."""
    why = postgres_answers()
    if why is None:
        return
    msg = f"no PostgreSQL at {SERVER} ({why}): {START}"
    if os.environ.get("CI"):
        pytest.fail(msg)
    pytest.skip(msg)


def db_url(name: str) -> str:
    head, _, _db = SERVER.rpartition("/")
    return f"{head}/{name}"


@contextmanager
def scratch_database() -> Iterator[str]:
    """A new, empty database on the test server; its URL. Dropped on exit."""
    name = f"tollgate_test_{uuid.uuid4().hex[:12]}"
    with _admin() as c:
        c.execute(f"CREATE DATABASE {name}")  # type: ignore[arg-type]
    try:
        yield db_url(name)
    finally:
        with _admin() as c:
            c.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")  # type: ignore[arg-type]


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """The URL of a fresh database for this test (see need_postgres for when none answers)."""
    need_postgres()
    with scratch_database() as url:
        yield url
