"""A request that did not end in an answer is recorded as what the client saw.

A client that hangs up mid-body or mid-stream, a body whose HTTP framing breaks after the
headers, a request the shutdown drain had to stop: each gets a record with the status the
client got (499 when it got nothing) and an error type, /metrics counts it under the same
status, and the log shows no CancelledError traceback."""

from __future__ import annotations

import signal
import socket
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from tests.fake_upstream import FakeUpstream
from tests.support import GatewayProcess, metric_samples

Fakes = Callable[..., FakeUpstream]
Gw = Callable[..., GatewayProcess]

CONFIG = """
server: {{drain_timeout_s: 1}}
store: {{backend: sqlite, sqlite_path: "${{TOLLGATE_DB}}", flush_interval_s: 0.05}}
models:
  - name: m
    tier: small
    retries: 0
    endpoints: [{{base_url: "{url}", model: up-m}}]
"""
BODY = b'{"model": "m", "messages": [{"role": "user", "content": "hello there"}]}'
STREAM_BODY = b'{"model": "m", "stream": true, "messages": [{"role": "user", "content": "hello"}]}'


def _rows(db: Path) -> list[tuple[Any, ...]]:
    if not db.exists():
        return []
    with sqlite3.connect(db) as c:
        return c.execute(
            "SELECT request_id, status, error_type FROM requests ORDER BY ts"
        ).fetchall()


def _wait_rows(db: Path, n: int, timeout: float = 10.0) -> list[tuple[Any, ...]]:
    deadline = time.monotonic() + timeout
    rows = _rows(db)
    while len(rows) < n and time.monotonic() < deadline:
        time.sleep(0.05)
        rows = _rows(db)
    return rows


def _requests_by_status(gw: GatewayProcess) -> dict[str, float]:
    samples = metric_samples(httpx.get(f"{gw.url}/metrics", timeout=5).text)
    out: dict[str, float] = {}
    for (name, labels), v in samples.items():
        if name == "tollgate_requests_total" and v:
            st = dict(labels)["status"]
            out[st] = out.get(st, 0) + v
    return out


def _raw(gw: GatewayProcess, head: bytes, parts: list[bytes], pause: float = 0.2) -> bytes:
    """Send `head`, then each of `parts` after a pause, then hang up; what came back."""
    with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as s:
        s.sendall(head)
        for p in parts:
            time.sleep(pause)
            s.sendall(p)
        time.sleep(pause)
        s.shutdown(socket.SHUT_WR)
        got = b""
        s.settimeout(2)
        try:
            while chunk := s.recv(65536):
                got += chunk
        except (TimeoutError, ConnectionResetError):
            pass
    return got


def _post_head(extra: str) -> bytes:
    return (
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
        f"Content-Type: application/json\r\n{extra}\r\n"
    ).encode()


def _no_traceback(logs: str) -> None:
    assert "CancelledError" not in logs and "Traceback" not in logs, logs[-3000:]


def _rid(response: bytes) -> str:
    return response.split(b"x-tollgate-request-id: ", 1)[1].split(b"\r\n", 1)[0].decode()


def _recorded(gw: GatewayProcess, status: int, error_type: str, rid: str | None = None) -> None:
    """The one request is stored with this status and error type (and request id), /metrics
    counts it under the same status, and the log has no traceback."""
    rows = _wait_rows(gw.tmp / "tollgate.db", 1)
    assert [r[1:] for r in rows] == [(status, error_type)]
    assert rid is None or rows[0][0] == rid
    assert _requests_by_status(gw) == {str(status): 1}
    _no_traceback(gw.logs())


def test_client_gone_mid_body_is_a_499_not_a_success(fakes: Fakes, gateway: Gw) -> None:
    up = fakes("m")
    gw = gateway(CONFIG.format(url=up.base_url))
    got = _raw(gw, _post_head(f"Content-Length: {len(BODY)}\r\n") + BODY[:20], [])
    assert got == b""  # the client hung up before it could get anything
    _recorded(gw, 499, "client_disconnected")


def test_broken_chunked_body_is_recorded_as_the_400_the_client_got(
    fakes: Fakes, gateway: Gw
) -> None:
    up = fakes("m")
    gw = gateway(CONFIG.format(url=up.base_url))
    got = _raw(
        gw, _post_head("Transfer-Encoding: chunked\r\n"), [b'5\r\n{"mod\r\n', b"zz\r\nxx\r\n"]
    )
    assert got.startswith(b"HTTP/1.1 400 "), got
    _recorded(gw, 400, "invalid_request_error")


def test_invalid_json_after_the_headers_is_a_400(fakes: Fakes, gateway: Gw) -> None:
    up = fakes("m")
    gw = gateway(CONFIG.format(url=up.base_url))
    bad = b'{"model": "m", "messages": [nope]}'
    got = _raw(gw, _post_head(f"Content-Length: {len(bad)}\r\n"), [bad[:10], bad[10:]])
    assert got.startswith(b"HTTP/1.1 400 "), got
    _recorded(gw, 400, "invalid_request_error", _rid(got))


def test_client_gone_mid_stream_is_a_499(fakes: Fakes, gateway: Gw) -> None:
    up = fakes("m")
    gw = gateway(CONFIG.format(url=up.base_url))
    up.script([], default={"kind": "trickle", "ms": 100})
    head = _post_head(f"Content-Length: {len(STREAM_BODY)}\r\n")
    with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as s:
        s.sendall(head + STREAM_BODY)
        got = b""
        while b"data: " not in got:  # the head and a first event: the stream is flowing
            got += s.recv(65536)
    assert got.startswith(b"HTTP/1.1 200 ")
    _recorded(gw, 499, "client_disconnected", _rid(got))


def test_request_stopped_by_the_shutdown_drain_is_recorded_as_such(
    fakes: Fakes, tmp_path: Path
) -> None:
    up = fakes("m")
    gw = GatewayProcess(CONFIG.format(url=up.base_url), tmp_path).start()
    db = tmp_path / "tollgate.db"
    up.script([], default={"kind": "delay", "ms": 8000})
    answer: list[httpx.Response] = []

    def call() -> None:
        answer.append(
            httpx.post(
                f"{gw.base_url}/chat/completions",
                content=BODY,
                headers={"content-type": "application/json"},
                timeout=10,
            )
        )

    try:
        t = threading.Thread(target=call)
        t.start()
        deadline = time.monotonic() + 5
        while up.stats()["requests"] < 1:
            assert time.monotonic() < deadline, "the request never reached the upstream"
            time.sleep(0.05)
        code = gw.stop(timeout=8)  # SIGTERM: the 1 s drain runs out, the request is stopped
        t.join(10)
        logs = gw.logs()
    finally:
        gw.close()
    assert code in (0, -signal.SIGTERM), logs[-3000:]  # uvicorn re-raises the signal
    assert len(answer) == 1
    r = answer[0]
    assert r.status_code == 503, r.text
    assert r.json()["error"]["code"] == "shutting_down"
    rows = _rows(db)
    assert rows == [(r.headers["x-tollgate-request-id"], 503, "cancelled_by_shutdown")]
    _no_traceback(logs)


def test_a_huge_model_name_is_stored_cut_not_whole(fakes: Fakes, gateway: Gw) -> None:
    """A client that names a 1 MB model gets its 404 and a record of it, but the record
    keeps only the start of the name: a client cannot grow the store by 1 MB a request."""
    up = fakes("m")
    gw = gateway(CONFIG.format(url=up.base_url))
    name = "x" * 1_000_000
    r = httpx.post(
        f"{gw.base_url}/chat/completions",
        json={"model": name, "messages": [{"role": "user", "content": "hi"}]},
        timeout=30,
    )
    assert r.status_code == 404 and len(r.content) < 4096
    assert _wait_rows(gw.tmp / "tollgate.db", 1)[0][1] == 404
    with sqlite3.connect(gw.tmp / "tollgate.db") as c:
        (route,) = c.execute("SELECT route FROM requests").fetchone()
    assert route.startswith("xxx") and len(route) <= 256
    assert (gw.tmp / "tollgate.db").stat().st_size < 500_000
