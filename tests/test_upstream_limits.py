"""Upstreams that misbehave: answers too large to hold, events that never end, bodies HTTP
forbids, absurd Retry-After values, connections dropped after the request was read, and
error texts that echo the gateway's upstream key.

Each test runs the real gateway in front of a :class:`HostileUpstream` (a raw asyncio server
that sends the bytes it is scripted to send) and looks at what a client gets, at the
upstream's own counters (requests, connections), and at the record and /metrics.
"""

from __future__ import annotations

import email.utils
import http.client
import sqlite3
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import openai
import pytest

from tests.fake_upstream import HostileUpstream
from tests.support import GatewayProcess, metric_samples, metric_total

Gw = Callable[..., GatewayProcess]

KEY = "sk-test-0c9e4b7d1a2f"
MIB = 1024 * 1024
CONFIG = """
server: {{retry_backoff_s: 0.01, max_upstream_response_bytes: {cap}, max_sse_event_bytes: {event}}}
store: {{backend: sqlite, sqlite_path: "${{TOLLGATE_DB}}"}}
circuit_breaker: {{failure_threshold: {threshold}, cooldown_s: 0.2}}
models:
  - name: m
    tier: small
    retries: 0
    timeouts: {{read_s: {read_s}, total_s: 10}}
    endpoints: [{{base_url: "{url}", model: upstream-m, api_key: "{key}"}}]
"""
CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture(scope="module")
def hostile_server() -> Iterator[HostileUpstream]:
    with HostileUpstream(name="hostile") as up:
        yield up


@pytest.fixture()
def hostile(hostile_server: HostileUpstream) -> HostileUpstream:
    hostile_server.reset()
    return hostile_server


def start(
    gateway: Gw, up: HostileUpstream, threshold: int = 100, read_s: float = 5
) -> GatewayProcess:
    cfg = CONFIG.format(
        cap=MIB, event=64 * 1024, threshold=threshold, read_s=read_s, url=up.base_url, key=KEY
    )
    return gateway(cfg)


def chat(gw: GatewayProcess, **extra: Any) -> httpx.Response:
    return httpx.post(f"{gw.base_url}/chat/completions", json={**CHAT, **extra}, timeout=20)


def records(gw: GatewayProcess, n: int) -> list[tuple[int, str | None]]:
    """The first `n` stored records' (status, error_type), waiting (bounded) for the writer."""
    deadline = time.monotonic() + 10
    rows: list[tuple[int, str | None]] = []
    while time.monotonic() < deadline:
        try:
            db = sqlite3.connect(gw.tmp / "tollgate.db")
            rows = db.execute("SELECT status, error_type FROM requests ORDER BY ts").fetchall()
            db.close()
        except sqlite3.OperationalError:
            rows = []
        if len(rows) >= n:
            break
        time.sleep(0.05)
    return rows


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_an_answer_over_the_cap_is_a_502_naming_the_setting(
    gateway: Gw, hostile: HostileUpstream, chunked: bool
) -> None:
    """3 MiB against a 1 MiB cap: refused at the Content-Length, or once 1 MiB arrived."""
    gw = start(gateway, hostile, threshold=1)
    hostile.script([{"kind": "big", "bytes": 3 * MIB, "chunked": chunked}])
    r = chat(gw)
    assert r.status_code == 502
    err = r.json()["error"]
    assert err["type"] == "upstream_error" and err["code"] == "upstream_response_too_large"
    assert "server.max_upstream_response_bytes" in err["message"]
    assert str(MIB) in err["message"]
    assert records(gw, 1) == [(502, "upstream_error")]
    samples = metric_samples(httpx.get(f"{gw.url}/metrics").text)
    kind = "upstream_response_too_large"
    assert metric_total(samples, "tollgate_upstream_errors_total", kind=kind) == 1
    assert metric_total(samples, "tollgate_circuit_state", model="m") == 2  # open
    # once the circuit lets a probe through, the answer comes on a new upstream connection:
    # the one that carried the oversized answer was closed, not put back in the pool
    deadline = time.monotonic() + 5
    while (r := chat(gw)).status_code == 503 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert r.status_code == 200
    assert hostile.stats()["connections"] == 2


def test_a_streamed_requests_error_body_over_the_cap_is_a_502(
    gateway: Gw, hostile: HostileUpstream
) -> None:
    """A stream's error answer is read whole to report it: bounded like any answer."""
    gw = start(gateway, hostile)
    hostile.script([{"kind": "big", "bytes": 3 * MIB, "status": 500, "chunked": True}])
    r = chat(gw, stream=True)
    assert r.status_code == 502
    assert r.json()["error"]["code"] == "upstream_response_too_large"


def test_after_done_a_body_that_does_not_end_is_let_go(
    gateway: Gw, hostile: HostileUpstream
) -> None:
    """After [DONE] the gateway reads on so the connection can be reused, but an upstream
    that keeps sending (here 200 KiB, then silence for 30 s) does not hold the slot."""
    gw = start(gateway, hostile, read_s=60)
    hostile.script([{"kind": "ok", "then_bytes": 200 * 1024, "then_hang_s": 30}])
    c = openai.OpenAI(base_url=gw.base_url, api_key="x", max_retries=0)
    chunks = list(c.chat.completions.create(model="m", messages=CHAT["messages"], stream=True))
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices) == "ok"
    deadline = time.monotonic() + 10  # an upper bound, well under the read timeout (60 s)
    while time.monotonic() < deadline:
        samples = metric_samples(httpx.get(f"{gw.url}/metrics").text)
        if metric_total(samples, "tollgate_inflight_requests", model="m") == 0:
            break
        time.sleep(0.05)
    assert metric_total(samples, "tollgate_inflight_requests", model="m") == 0
    assert records(gw, 1) == [(200, None)]


def test_an_sse_event_over_the_cap_ends_the_stream_with_an_error_event(
    gateway: Gw, hostile: HostileUpstream
) -> None:
    """One 200 KiB event that does not end before it is over the 64 KiB cap."""
    gw = start(gateway, hostile)
    hostile.script([{"kind": "sse_event", "bytes": 200 * 1024}])
    c = openai.OpenAI(base_url=gw.base_url, api_key="x", max_retries=0)
    stream = c.chat.completions.create(model="m", messages=CHAT["messages"], stream=True)
    with pytest.raises(openai.APIError) as ei:
        list(stream)
    assert "server.max_sse_event_bytes" in ei.value.message
    assert "65536 bytes" in ei.value.message
    assert ei.value.code == "upstream_event_too_large"
    assert records(gw, 1) == [(502, "upstream_error")]
    samples = metric_samples(httpx.get(f"{gw.url}/metrics").text)
    kind = "upstream_event_too_large"
    assert metric_total(samples, "tollgate_upstream_errors_total", kind=kind) == 1
    # the stream's connection was dropped, not drained for reuse
    assert chat(gw).status_code == 200
    assert hostile.stats()["connections"] == 2


def test_a_204_with_a_body_never_reaches_the_client(gateway: Gw, hostile: HostileUpstream) -> None:
    """HTTP forbids a body on a 204: a client reads none, so one sent anyway would be read as
    the start of its next response. The client keeps one connection for both requests."""
    gw = start(gateway, hostile)
    junk = '{"error": "oops"}'
    raw = f"HTTP/1.1 204 No Content\r\ncontent-length: {len(junk)}\r\n\r\n{junk}"
    hostile.script([{"kind": "raw", "data": raw}])
    conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=10)
    try:
        headers = {"content-type": "application/json"}
        body = httpx.Request("POST", "/", json=CHAT).read()
        conn.request("POST", "/v1/chat/completions", body, headers)
        first = conn.getresponse()
        answer = first.read()
        sock = conn.sock
        assert first.status == 502
        err = httpx.Response(502, content=answer).json()["error"]
        assert "HTTP 204" in err["message"] and "base_url" in err["message"]
        conn.request("POST", "/v1/chat/completions", body, headers)
        second = conn.getresponse()
        assert second.status == 200
        assert httpx.Response(200, content=second.read()).json()["choices"][0]["message"]
        assert conn.sock is sock  # the same client connection carried both
    finally:
        conn.close()
    # the upstream connection that carried the 204 was not reused
    assert hostile.stats()["connections"] == 2


def test_retry_after_values_that_are_not_a_wait_are_ignored(
    gateway: Gw, hostile: HostileUpstream
) -> None:
    gw = start(gateway, hostile)
    date = email.utils.formatdate(time.time() + 120, usegmt=True)
    cases = ["inf", "nan", "-5", "1e300", "1" + "0" * 300, "soon", date]
    hostile.script(
        [
            {"kind": "status", "status": 429, "body": "{}", "headers": {"retry-after": v}}
            for v in cases
        ]
    )
    for v in cases:
        r = chat(gw)
        assert r.status_code == 429, (v, r.text)
        assert r.json()["error"]["code"] == "rate_limited"
        ra = r.headers.get("retry-after")
        if v in ("inf", "nan", "-5", "1e300", "soon"):
            assert ra is None, v  # not a wait: the gateway's own backoff applied
        elif v == date:
            assert ra is not None and 60 <= int(ra) <= 121, ra
        else:
            assert ra == "86400", ra  # a day at most


def test_a_post_is_not_sent_twice_when_a_reused_connection_drops(
    gateway: Gw, hostile: HostileUpstream
) -> None:
    """The upstream reads the 2nd request on its keep-alive connection and closes it without
    an answer: it may be generating (and billing) that completion, so the gateway must not
    send it again, even on a fresh connection, with retries: 0."""
    gw = start(gateway, hostile)
    hostile.script([{"kind": "ok"}, {"kind": "hangup"}])
    assert chat(gw).status_code == 200
    r = chat(gw)
    assert r.status_code == 502
    assert r.json()["error"]["type"] == "upstream_error"
    assert hostile.stats()["requests"] == 2


@pytest.mark.parametrize("status", [400, 401, 500])
def test_upstream_error_text_echoing_the_key_is_scrubbed(
    gateway: Gw, hostile: HostileUpstream, status: int
) -> None:
    gw = start(gateway, hostile)
    body = '{"error": {"message": "Incorrect API key provided: {authorization} (KEY)"}}'
    body = body.replace("KEY", KEY)
    hostile.script([{"kind": "status", "status": status, "body": body}])
    r = chat(gw)
    assert r.status_code == {400: 400, 401: 502, 500: 502}[status]
    assert KEY not in r.text
    assert "Bearer [redacted]" in r.text and "([redacted])" in r.text
    assert KEY not in gw.logs()
