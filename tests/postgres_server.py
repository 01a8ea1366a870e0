"""A private PostgreSQL database for tests, on the server at 127.0.0.1:5432 (user postgres,
trust auth on loopback; .ci/run starts one where none answers).

Each test database is `tollgate_test_<random>`, created for the test and dropped after it
(WITH (FORCE), so a connection a failed test left open does not keep it), so parallel runs
never see each other's records. TOLLGATE_TEST_POSTGRES overrides the server's URL.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
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
def scratch_database(prefix: str = "tollgate_test_") -> Iterator[str]:
    """A new, empty database on the test server; its URL. Dropped on exit."""
    name = f"{prefix}{uuid.uuid4().hex[:12]}"
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


class TcpCut:
    """A TCP forwarder on 127.0.0.1 in front of the test server, for outage tests: `cut()`
    closes the listener and every forwarded connection (the server looks gone), `start()`
    listens again on the same port. Threads only; every socket is closed by `cut()`."""

    def __init__(self, target: tuple[str, int] = ("127.0.0.1", 5432)) -> None:
        self.target = target
        self.port = 0
        self._listener: socket.socket | None = None
        self._socks: list[socket.socket] = []
        self._lock = threading.Lock()

    def via(self, url: str) -> str:
        """`url` (of the test server) through this forwarder."""
        host, port = self.target
        return url.replace(f"@{host}:{port}/", f"@127.0.0.1:{self.port}/")

    def start(self) -> TcpCut:
        ls = socket.socket()
        ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        ls.bind(("127.0.0.1", self.port))
        ls.listen(64)
        self.port = ls.getsockname()[1]
        self._listener = ls
        threading.Thread(target=self._accept, args=(ls,), daemon=True).start()
        return self

    def _accept(self, ls: socket.socket) -> None:
        while True:
            try:
                client, _ = ls.accept()
            except OSError:
                return  # cut
            try:
                server = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            server.settimeout(None)
            with self._lock:
                self._socks += [client, server]
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        if self._listener is not None:
            with contextlib.suppress(OSError):  # wakes the accept() (close alone does not)
                self._listener.shutdown(socket.SHUT_RDWR)
            self._listener.close()
            self._listener = None
        with self._lock:
            socks, self._socks = self._socks, []
        for s in socks:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()
