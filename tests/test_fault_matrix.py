"""The fault matrix's store and process rows, with real processes on 127.0.0.1 (each
upstream fault's own behaviour is tested in test_upstream_limits.py, test_gateway_core.py,
test_records_truth.py, test_h1.py and test_stream_framing.py; the last test here sends them
through every API face).

* Redis and PostgreSQL record stores behind a loopback fault proxy (tests/fault_proxy.py;
  a private redis-server, the shared PostgreSQL with a scratch database: neither server is
  ever stopped): down when the gateway starts, back, down in the middle of traffic, slow,
  back. Every request is answered 200 throughout, and once the store is back every answered
  request has exactly one record and none was dropped.
* The SQLite path unusable (its parent is a file): the gateway still serves, and says so.
* A broken routing file written while traffic runs: every request is answered, the error
  shows at /readyz, and the fixed file is taken up.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import psycopg
import pytest
import redis as redis_client

from gateway.accounting.store.redis_store import DEFAULT_PREFIX
from tests.fake_upstream import FakeUpstream, HostileUpstream
from tests.fault_proxy import FaultProxy
from tests.postgres_server import need_postgres, scratch_database
from tests.redis_server import RedisServer, have_redis
from tests.support import GatewayProcess, free_port, metric_samples, metric_total
from tests.test_openapi import error_problem

Fakes = Callable[..., FakeUpstream]
Gw = Callable[..., GatewayProcess]
MODEL = "  - {{name: m, tier: small, retries: 0, endpoints: [{{base_url: '{url}'}}]}}\n"


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[Gw]:
    """Like conftest's, with a start-up allowance for a loaded machine (a gateway that is
    slow to start is not what these tests are about)."""
    started: list[GatewayProcess] = []

    def make(config_text: str) -> GatewayProcess:
        sub = tmp_path / f"gw{len(started)}"
        sub.mkdir()
        gp = GatewayProcess(config_text, sub)
        started.append(gp)
        return gp.start(timeout=180)

    yield make
    for gp in started:
        gp.close()


def _send(gw: GatewayProcess, n: int) -> dict[str, int]:
    """n chat requests (every third streamed); request id -> status."""
    out: dict[str, int] = {}
    with httpx.Client(base_url=gw.url, timeout=30) as c:
        for i in range(n):
            body = {
                "model": "m",
                "stream": i % 3 == 0,
                "messages": [{"role": "user", "content": f"hello {i}"}],
            }
            r = c.post("/v1/chat/completions", json=body)
            out[r.headers.get("x-tollgate-request-id", f"none-{i}")] = r.status_code
    return out


def _wait(cond: Callable[[], bool], what: str, limit: float = 90.0) -> None:
    end = time.monotonic() + limit
    while not cond():
        assert time.monotonic() < end, f"never happened: {what}"
        time.sleep(0.2)


class _Redis:
    def __init__(self, tmp: Path) -> None:
        if not have_redis():
            pytest.fail("redis-server is not installed (.ci/run installs it)")
        self.server = RedisServer(tmp / "redis").start()

    def store(self, port: int, tmp: Path) -> str:
        return (
            f'{{backend: redis, redis_url: "redis://127.0.0.1:{port}/0", '
            f'journal_path: "{tmp}/journal", flush_interval_s: 0.1, retry_interval_s: 0.2}}'
        )

    def ids(self) -> list[str]:
        r = redis_client.Redis.from_url(self.server.url)
        try:
            return [
                orjson.loads(f[b"r"])["request_id"]
                for _sid, f in r.xrange(DEFAULT_PREFIX + "records")
            ]
        finally:
            r.close()

    def close(self) -> None:
        self.server.stop()


class _Postgres:
    def __init__(self, tmp: Path) -> None:
        need_postgres()
        self._db = scratch_database("tollgate_fault_")
        self.url = self._db.__enter__()

    def store(self, port: int, tmp: Path) -> str:
        via = self.url.replace("@127.0.0.1:5432/", f"@127.0.0.1:{port}/")
        return (
            f'{{backend: postgres, postgres_url: "{via}", postgres_timeout_s: 1, '
            f'journal_path: "{tmp}/journal", flush_interval_s: 0.1, retry_interval_s: 0.2}}'
        )

    def ids(self) -> list[str]:
        try:
            with psycopg.connect(self.url) as c:
                return [r[0] for r in c.execute("SELECT request_id FROM tollgate_requests")]
        except psycopg.errors.UndefinedTable:
            return []

    def close(self) -> None:
        self._db.__exit__(None, None, None)


@pytest.fixture(params=["redis", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[_Redis | _Postgres]:
    s: _Redis | _Postgres = _Redis(tmp_path) if request.param == "redis" else _Postgres(tmp_path)
    try:
        yield s
    finally:
        s.close()


def test_store_down_at_start_back_down_mid_traffic_and_slow_loses_no_record(
    store: _Redis | _Postgres, fakes: Fakes, gateway: Gw, tmp_path: Path
) -> None:
    target = store.server.port if isinstance(store, _Redis) else 5432
    proxy = FaultProxy(target).start()
    try:
        proxy.down()  # the store is unreachable when the gateway starts
        up = fakes("m")
        gw = gateway(
            f"store: {store.store(proxy.port, tmp_path)}\nmodels:\n" + MODEL.format(url=up.base_url)
        )
        answered = _send(gw, 15)  # store down at start: answered all the same
        proxy.up()
        answered |= _send(gw, 15)

        # down in the middle of traffic
        mid: dict[str, int] = {}
        t = threading.Thread(target=lambda: mid.update(_send(gw, 30)))
        t.start()
        _wait(lambda: len(mid) > 0 or not t.is_alive(), "traffic started")
        proxy.down()
        t.join(120)
        answered |= mid
        proxy.slow(0.3)  # slow store: every write waits
        proxy.up()
        answered |= _send(gw, 15)
        proxy.slow(0)
        answered |= _send(gw, 5)

        assert len(answered) == 80 and set(answered.values()) == {200}, answered
        _wait(lambda: set(answered) <= set(store.ids()), "every answered request stored")
        ids = store.ids()
        assert len(ids) == len(set(ids)) == 80  # each once
        samples = metric_samples(httpx.get(f"{gw.url}/metrics", timeout=10).text)
        assert metric_total(samples, "tollgate_store_dropped_records_total") == 0
        assert proxy.accepted >= 2  # the gateway did reconnect through the proxy
    finally:
        proxy.close()


def test_sqlite_path_unusable_the_gateway_serves_and_says_so(
    fakes: Fakes, gateway: Gw, tmp_path: Path
) -> None:
    """The SQLite file's parent is a file (root ignores chmod, so that is the way to make a
    path nobody can create, the journal's included): requests are still answered, the
    records wait in the bounded buffer (/readyz counts them), /v1/usage says the store is
    unavailable and the log names the path."""
    (tmp_path / "blocker").write_text("a file, not a folder")
    db = tmp_path / "blocker" / "records.db"
    up = fakes("m")
    gw = gateway(
        f'store: {{backend: sqlite, sqlite_path: "{db}"}}\nmodels:\n'
        + MODEL.format(url=up.base_url)
    )
    answered = _send(gw, 10)
    assert set(answered.values()) == {200}
    assert not db.exists()
    usage = httpx.get(f"{gw.url}/v1/usage", timeout=10)  # what is recorded cannot be read
    assert usage.status_code == 503 and "error" in usage.json(), usage.text
    # the records wait in the buffer (counted, none lost yet), and the log says why
    assert httpx.get(f"{gw.url}/readyz", timeout=10).json()["store_queue_depth"] == 10
    assert f"{db}" in gw.logs() and "unavailable" in gw.logs()


def test_broken_routing_file_during_traffic(fakes: Fakes, gateway: Gw, tmp_path: Path) -> None:
    up = fakes("m")
    good = (
        f'store: {{backend: sqlite, sqlite_path: "{tmp_path}/r.db", flush_interval_s: 0.1}}\n'
        "models:\n" + MODEL.format(url=up.base_url)
    )
    gw = gateway(good)
    answered: dict[str, int] = {}
    t = threading.Thread(target=lambda: answered.update(_send(gw, 60)))
    t.start()
    broken = [good.replace("models:", "models: [oops"), "models: []\n", "\x00\x01: :"]
    for text in broken:
        gw.write_config(text)
        _wait(
            lambda: (
                httpx.get(f"{gw.url}/readyz", timeout=10).json().get("config_error") is not None
                or not t.is_alive()
            ),
            "the broken file seen",
        )
    t.join(120)
    assert len(answered) == 60 and set(answered.values()) == {200}
    gw.write_config(good.replace("tier: small", "tier: medium"))
    _wait(
        lambda: httpx.get(f"{gw.url}/readyz", timeout=10).json().get("config_error") is None,
        "the fixed file taken up",
    )
    assert _send(gw, 3) and all(s == 200 for s in _send(gw, 3).values())
    db = tmp_path / "r.db"
    _wait(
        lambda: (
            len(
                set(answered)
                & {r[0] for r in sqlite3.connect(db).execute("SELECT request_id FROM requests")}
            )
            == 60
        ),
        "every answered request recorded",
    )


def test_sigterm_during_traffic_then_restart_accounts_every_answer(
    fakes: Fakes, tmp_path: Path
) -> None:
    """SIGTERM while clients send: the gateway drains and stops; after a restart on the same
    files, every request a client got an answer for (200, or the 503 of the shutdown) has
    its record, each once, with the status a unary client got. (SIGKILL during traffic,
    then a restart: tests/test_journal.py.)"""
    up = fakes("m")
    db = tmp_path / "r.db"
    cfg = f'store: {{backend: sqlite, sqlite_path: "{db}"}}\nmodels:\n' + MODEL.format(
        url=up.base_url
    )
    answered: dict[str, int] = {}
    streamed: set[str] = set()
    first = GatewayProcess(cfg, tmp_path).start(timeout=180)
    try:

        def clients() -> None:
            with httpx.Client(base_url=first.url, timeout=30) as c:
                for i in range(400):
                    body = {
                        "model": "m",
                        "stream": i % 3 == 0,
                        "messages": [{"role": "user", "content": "hi"}],
                    }
                    try:
                        r = c.post("/v1/chat/completions", json=body)
                    except httpx.HTTPError:
                        return  # the gateway is gone
                    if "x-tollgate-request-id" in r.headers:
                        answered[r.headers["x-tollgate-request-id"]] = r.status_code
                        if i % 3 == 0:
                            streamed.add(r.headers["x-tollgate-request-id"])

        t = threading.Thread(target=clients)
        t.start()
        _wait(lambda: len(answered) >= 40, "traffic under way")
        first.stop(timeout=30)  # SIGTERM: drain, flush, exit
        t.join(60)
    finally:
        first.close()
    assert len(answered) >= 40 and set(answered.values()) <= {200, 503}
    second = GatewayProcess(cfg, tmp_path).start(timeout=180)
    try:
        with sqlite3.connect(db) as c:
            rows = c.execute("SELECT request_id, status FROM requests").fetchall()
        ids = [rid for rid, _ in rows]
        assert len(ids) == len(set(ids))
        status = dict(rows)
        missing = [rid for rid in answered if rid not in status]
        assert not missing, f"{len(missing)} of {len(answered)} answered requests not recorded"
        # a stream the drain cut ends with an error event after its 200 head: its record
        # says so; a unary answer's record has the status the client got
        assert all(status[rid] == s for rid, s in answered.items() if rid not in streamed)
    finally:
        second.close()


# -- upstream faults through every API face ---------------------------------------------------
# (each fault's own behaviour is tested through chat in test_upstream_limits.py,
# test_gateway_core.py and test_h1.py; here: the answer is in the face's own error format)

FAULTS: dict[str, dict[str, Any]] = {
    "5xx": {"kind": "status", "status": 500, "body": '{"error": {"message": "boom"}}'},
    "429": {"kind": "status", "status": 429, "body": "{}", "headers": {"retry-after": "1"}},
    "reset-before-first-byte": {"kind": "hangup"},
    "not-http": {"kind": "raw", "data": "garbage that is not HTTP\r\n\r\n"},
    "not-json": {"kind": "raw", "data": "HTTP/1.1 200 OK\r\ncontent-length: 8\r\n\r\nnot json"},
    "304": {"kind": "raw", "data": "HTTP/1.1 304 Not Modified\r\n\r\n"},
    "1xx-then-close": {"kind": "raw", "data": "HTTP/1.1 103 Early Hints\r\n\r\n"},
}
QUICK = "retries: 0, timeouts: {read_s: 2, total_s: 5},"
FACES = {
    "chat": ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}]}),
    "responses": ("/v1/responses", {"input": "hi"}),
    "messages": (
        "/v1/messages",
        {"max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]},
    ),
}


@pytest.fixture(scope="module")
def hostile() -> Iterator[HostileUpstream]:
    with HostileUpstream(name="hostile") as up:
        yield up


@pytest.mark.parametrize("face", list(FACES))
def test_upstream_faults_reach_each_face_in_its_own_error_format(
    face: str, hostile: HostileUpstream, gateway: Gw, tmp_path: Path
) -> None:
    hostile.reset()
    path, body = FACES[face]
    dead = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens: connection refused
    gw = gateway(
        f'store: {{backend: sqlite, sqlite_path: "{tmp_path}/r.db", flush_interval_s: 0.1}}\n'
        "server: {retry_backoff_s: 0.01}\n"
        "circuit_breaker: {failure_threshold: 1000}\n"
        "models:\n"
        # an upstream that goes quiet (after a 1xx, say) is a read timeout, then a 504
        + MODEL.format(url=hostile.base_url).replace("retries: 0,", QUICK)
        + MODEL.format(url=dead).replace("name: m,", "name: dead,")
    )
    hostile.script(list(FAULTS.values()))
    sent = 0
    problems = []
    with httpx.Client(base_url=gw.url, timeout=30) as c:
        for fault in [*FAULTS, "refused"]:
            model = "dead" if fault == "refused" else "m"
            r = c.post(path, json={"model": model, **body})
            sent += 1
            if not 400 <= r.status_code < 600 or r.status_code == 500:
                problems.append(f"{fault}: {r.status_code} {r.text[:200]}")
            elif (p := error_problem(path, "post", r)) is not None:
                problems.append(f"{fault}: {p}")
        assert c.get("/healthz").status_code == 200  # still up
        ok = c.post(path, json={"model": "m", **body})  # the script is spent: a good answer
        sent += 1
    assert not problems, "\n".join(problems)
    assert ok.status_code == 200, ok.text
    db = tmp_path / "r.db"
    _wait(
        lambda: (
            db.exists()
            and sqlite3.connect(db).execute("SELECT count(*) FROM requests").fetchone()[0] == sent
        ),
        "every request recorded",
    )
