"""Tests for gateway/http/h1.py (the lean upstream HTTP/1.1 client) against real local servers.

Two kinds of servers, both on 127.0.0.1: the repo's fake OpenAI upstream (a uvicorn subprocess)
and :class:`RawServer`, a tiny asyncio server in this process whose handler writes raw bytes, for
framing edge cases (chunk extensions, trailers, split writes, ``Connection: close``, stale
keep-alive connections, ...).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import subprocess
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import uvloop

from gateway.http.h1 import (
    ConnectError,
    ConnectTimeout,
    DeadlineExceeded,
    H1Pool,
    PoolClosed,
    ReadTimeout,
    RemoteProtocolError,
)
from tests.fake_upstream import FakeUpstream

CHAT = orjson.dumps({"model": "m", "messages": [{"role": "user", "content": "hello there"}]})
CHAT_STREAM = orjson.dumps(
    {"model": "m", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
)
JSON_HEADERS = [(b"content-type", b"application/json")]

Handler = Callable[["Conn"], Awaitable[None]]


# --------------------------------------------------------------------------------------------
# Servers
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeUpstream]:
    with FakeUpstream(name="u", completion_tokens=16, chunks=8) as fu:
        yield fu
        assert "Traceback" not in fu.logs()


@pytest.fixture()
def fu(fake: FakeUpstream) -> FakeUpstream:
    fake.reset()
    return fake


async def stats(fu: FakeUpstream) -> dict[str, Any]:
    return await asyncio.to_thread(fu.stats)


class Conn:
    """One accepted connection of :class:`RawServer`."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    async def read_request(self) -> bytes | None:
        """Read one request (head + Content-Length body); None on EOF."""
        try:
            head = await self.reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError):
            return None
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":", 1)[1])
        body = await self.reader.readexactly(length) if length else b""
        return head + body

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()


class RawServer:
    """asyncio server on 127.0.0.1 running ``handler`` per connection; counts connections."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self.requests = 0
        self.server: asyncio.Server | None = None

    async def __aenter__(self) -> RawServer:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.server.wait_closed(), 1.0)

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}/v1"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            await self.handler(Conn(reader, writer))
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()


def ok(body: bytes = b"ok", extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%s\r\n%s" % (len(body), extra, body)


def keepalive_handler(server_box: list[RawServer], body: bytes = b"ok") -> Handler:
    async def handler(c: Conn) -> None:
        while await c.read_request() is not None:
            server_box[0].requests += 1
            await c.send(ok(body))

    return handler


# --------------------------------------------------------------------------------------------
# Fake upstream: the OpenAI shapes
# --------------------------------------------------------------------------------------------


async def test_json_request_response(fu: FakeUpstream) -> None:
    async with H1Pool(fu.base_url, headers={"authorization": "Bearer k"}) as pool:
        r = await pool.request("POST", "/chat/completions", CHAT, JSON_HEADERS)
        assert r.status == 200
        assert r.header(b"Content-Type") == b"application/json"
        assert all(k == k.lower() for k, _ in r.headers)
        data = orjson.loads(r.content)
        assert data["choices"][0]["message"]["content"].startswith("[u] tok0")
        models = await pool.request("GET", "/models")
        assert models.status == 200 and orjson.loads(models.content)["object"] == "list"
        st = await stats(fu)
        assert st["last_headers"]["authorization"] == "Bearer k"
        assert st["by_path"] == {"/v1/chat/completions": 1, "/v1/models": 1}


async def test_error_status_is_a_response(fu: FakeUpstream) -> None:
    fu.script([{"kind": "status", "status": 503, "retry_after": 2}])
    async with H1Pool(fu.base_url) as pool:
        r = await pool.request("POST", "/chat/completions", CHAT, JSON_HEADERS)
        assert r.status == 503 and r.header(b"retry-after") == b"2"
        assert orjson.loads(r.content)["error"]["type"] == "server_error"


async def test_sse_chunks_arrive_as_sent(fu: FakeUpstream) -> None:
    fu.script([{"kind": "ok"}, {"kind": "trickle", "ms": 120}])
    async with H1Pool(fu.base_url) as pool:
        baseline = (await pool.request("POST", "/chat/completions", CHAT_STREAM)).content
        events = baseline.count(b"data: ")
        t0 = time.perf_counter()
        async with await pool.stream("POST", "/chat/completions", CHAT_STREAM) as r:
            assert r.status == 200
            assert r.header(b"content-type") == b"text/event-stream; charset=utf-8"
            arrivals: list[float] = []
            parts: list[bytes] = []
            async for chunk in r.aiter_raw():
                arrivals.append(time.perf_counter() - t0)
                parts.append(chunk)
        body = b"".join(parts)
        assert body.endswith(b"data: [DONE]\n\n") and body.count(b"data: ") == events > 8
        assert len(parts) >= 5  # one chunk per network read, not accumulated
        assert arrivals[0] < 0.5 and arrivals[-1] - arrivals[0] > 0.6


async def test_keepalive_connection_reused_by_fake(fu: FakeUpstream) -> None:
    async with H1Pool(fu.base_url) as pool:
        for _ in range(50):
            r = await pool.request("POST", "/embeddings", b'{"model":"e","input":"x"}')
            assert r.status == 200
        assert pool._open == 1 and len(pool._idle) == 1


async def test_cancel_during_delay_is_seen_by_upstream(fu: FakeUpstream) -> None:
    fu.script([{"kind": "delay", "ms": 5000}])
    async with H1Pool(fu.base_url) as pool:
        task = asyncio.create_task(pool.request("POST", "/chat/completions", CHAT))
        for _ in range(100):
            if (await stats(fu))["in_flight"] == 1:
                break
            await asyncio.sleep(0.02)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        deadline = time.monotonic() + 1.0
        while (await stats(fu))["cancelled"] != 1:
            assert time.monotonic() < deadline, "upstream did not see the cancellation"
            await asyncio.sleep(0.02)
        assert pool._open == 0 and not pool._idle


async def test_cancel_while_iterating_stream(fu: FakeUpstream) -> None:
    fu.script([{"kind": "trickle", "ms": 300}])
    async with H1Pool(fu.base_url) as pool:
        got: list[bytes] = []

        async def consume() -> None:
            async with await pool.stream("POST", "/chat/completions", CHAT_STREAM) as r:
                async for chunk in r.aiter_raw():
                    got.append(chunk)

        task = asyncio.create_task(consume())
        while not got:
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        deadline = time.monotonic() + 1.0
        while (await stats(fu))["cancelled"] != 1:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.02)
        assert pool._open == 0


async def test_read_timeout(fu: FakeUpstream) -> None:
    fu.script([{"kind": "delay", "ms": 3000}])
    async with H1Pool(fu.base_url, read_timeout=0.3) as pool:
        t0 = time.perf_counter()
        with pytest.raises(ReadTimeout):
            await pool.request("POST", "/chat/completions", CHAT)
        assert 0.25 < time.perf_counter() - t0 < 1.5
        assert pool._open == 0
        # The pool still works afterwards.
        assert (await pool.request("POST", "/chat/completions", CHAT)).status == 200


async def test_reset_is_remote_protocol_error(fu: FakeUpstream) -> None:
    fu.script([{"kind": "reset"}])
    async with H1Pool(fu.base_url) as pool:  # fresh connection: never retried
        with pytest.raises(RemoteProtocolError):
            await pool.request("POST", "/chat/completions", CHAT)
        assert (await stats(fu))["requests"] == 1
        assert (await pool.request("POST", "/chat/completions", CHAT)).status == 200


async def test_cut_mid_stream_raises_after_received_chunks(fu: FakeUpstream) -> None:
    fu.script([{"kind": "cut", "after_chunks": 2}])
    async with H1Pool(fu.base_url) as pool:
        parts: list[bytes] = []
        async with await pool.stream("POST", "/chat/completions", CHAT_STREAM) as r:
            with pytest.raises(RemoteProtocolError):
                async for chunk in r.aiter_raw():
                    parts.append(chunk)
        assert b"".join(parts).count(b"data: ") == 2
        assert pool._open == 0


async def test_cut_json_body_is_remote_protocol_error(fu: FakeUpstream) -> None:
    fu.script([{"kind": "cut"}])
    async with H1Pool(fu.base_url) as pool:
        with pytest.raises(RemoteProtocolError):
            await pool.request("POST", "/chat/completions", CHAT)


async def test_200_concurrent_requests_over_8_connections(fu: FakeUpstream) -> None:
    async with H1Pool(fu.base_url, max_connections=8) as pool:

        async def one(i: int) -> int:
            hdrs = [(b"x-fake-latency-ms", b"5")] if i % 2 else None
            r = await pool.request("POST", "/chat/completions", CHAT, hdrs)
            assert orjson.loads(r.content)["object"] == "chat.completion"
            return r.status

        statuses = await asyncio.gather(*(one(i) for i in range(200)))
        assert statuses == [200] * 200
        assert pool._open <= 8 and len(pool._conns) <= 8 and not pool._waiters
        assert (await stats(fu))["max_in_flight"] <= 8


async def test_waiter_cancelled_while_pool_is_full(fu: FakeUpstream) -> None:
    fu.script([{"kind": "delay", "ms": 300}])
    async with H1Pool(fu.base_url, max_connections=1) as pool:
        first = asyncio.create_task(pool.request("POST", "/chat/completions", CHAT))
        await asyncio.sleep(0.05)
        second = asyncio.create_task(pool.request("POST", "/chat/completions", CHAT))
        await asyncio.sleep(0.05)
        second.cancel()
        third = asyncio.create_task(pool.request("POST", "/chat/completions", CHAT))
        assert (await first).status == 200 and (await third).status == 200
        with pytest.raises(asyncio.CancelledError):
            await second
        assert pool._open == 1


# --------------------------------------------------------------------------------------------
# Raw server: framing and connection-management edge cases
# --------------------------------------------------------------------------------------------


async def test_keepalive_fifty_requests_one_connection() -> None:
    box: list[RawServer] = []
    async with RawServer(keepalive_handler(box, b'{"a":1}')) as srv:
        box.append(srv)
        async with H1Pool(srv.url) as pool:
            for _ in range(50):
                r = await pool.request("POST", "/x", b"{}")
                assert r.content == b'{"a":1}'
        assert srv.connections == 1 and srv.requests == 50


async def test_request_bytes_on_the_wire() -> None:
    seen: list[bytes] = []

    async def handler(c: Conn) -> None:
        while (req := await c.read_request()) is not None:
            seen.append(req)
            await c.send(ok())

    async with RawServer(handler) as srv, H1Pool(srv.url, headers={"X-Key": "v"}) as pool:
        await pool.request("POST", "/chat", b"hello", [(b"x-a", b"1")])
        await pool.request("GET", "/models")
        port = srv.url.split(":")[2].split("/")[0]
        assert seen[0] == (
            b"POST /v1/chat HTTP/1.1\r\nHost: 127.0.0.1:%s\r\nX-Key: v\r\n"
            b"Content-Length: 5\r\nx-a: 1\r\n\r\nhello" % port.encode()
        )
        assert seen[1].startswith(b"GET /v1/models HTTP/1.1\r\n")
        assert b"Content-Length" not in seen[1]
        with pytest.raises(ValueError):
            await pool.request("GET", "/x", headers=[(b"x-evil", b"a\r\nInjected: 1")])
        with pytest.raises(ValueError):
            await pool.request("GET", "/x HTTP/1.0\r\nA: b")


async def test_chunked_with_extensions_and_trailers() -> None:
    async def handler(c: Conn) -> None:
        while await c.read_request() is not None:
            await c.send(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                b"5;name=value\r\nhello\r\n"
                b'7;x="quoted"\r\n, world\r\n'
                b"0\r\nX-Trailer: t\r\n\r\n"
            )

    async with RawServer(handler) as srv, H1Pool(srv.url) as pool:
        for _ in range(3):
            r = await pool.request("GET", "/")
            assert r.status == 200 and r.content == b"hello, world"
        assert srv.connections == 1


async def test_body_split_across_many_writes() -> None:
    body = bytes(range(256)) * 40

    async def handler(c: Conn) -> None:
        while await c.read_request() is not None:
            await c.send(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body))
            for i in range(0, len(body), 1024):
                await c.send(body[i : i + 1024])
                await asyncio.sleep(0.005)

    async with RawServer(handler) as srv, H1Pool(srv.url) as pool:
        assert (await pool.request("GET", "/")).content == body
        async with await pool.stream("GET", "/") as r:
            parts = [p async for p in r.aiter_raw()]
        assert b"".join(parts) == body and len(parts) > 3
        assert srv.connections == 1


async def test_connection_close_response_not_reused() -> None:
    async def handler(c: Conn) -> None:
        await c.read_request()
        await c.send(ok(b"bye", b"Connection: close\r\n"))

    async with RawServer(handler) as srv, H1Pool(srv.url) as pool:
        for _ in range(3):
            assert (await pool.request("GET", "/")).content == b"bye"
        assert srv.connections == 3 and not pool._idle


async def test_body_delimited_by_eof() -> None:
    async def handler(c: Conn) -> None:
        await c.read_request()
        await c.send(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\npart1,")
        await asyncio.sleep(0.02)
        await c.send(b"part2")

    async with RawServer(handler) as srv, H1Pool(srv.url) as pool:
        assert (await pool.request("GET", "/")).content == b"part1,part2"
        assert pool._open == 0


async def test_interim_1xx_response_skipped() -> None:
    async def handler(c: Conn) -> None:
        while await c.read_request() is not None:
            await c.send(b"HTTP/1.1 100 Continue\r\n\r\n")
            await c.send(ok(b"final"))

    async with RawServer(handler) as srv, H1Pool(srv.url) as pool:
        for _ in range(2):
            r = await pool.request("POST", "/", b"x")
            assert (r.status, r.content) == (200, b"final")
        assert srv.connections == 1


def drop_second_request(box: list[RawServer]) -> Handler:
    """Keep the connection open, then drop it on the 2nd request, read but unanswered."""

    async def handler(c: Conn) -> None:
        await c.read_request()
        box[0].requests += 1
        await c.send(ok(b"first"))
        await c.read_request()  # closes without a single byte of response
        box[0].requests += 1

    return handler


async def test_stale_keepalive_connection_retried_once_for_idempotent_requests() -> None:
    box: list[RawServer] = []
    async with RawServer(drop_second_request(box)) as srv, H1Pool(srv.url) as pool:
        box.append(srv)
        assert (await pool.request("GET", "/")).content == b"first"
        assert (await pool.request("GET", "/")).content == b"first"
        assert srv.connections == 2 and srv.requests == 3


async def test_post_written_to_a_reused_connection_is_never_sent_twice() -> None:
    """The upstream read the POST and may be working on it: sending it again would be a
    second, billed completion."""
    box: list[RawServer] = []
    async with RawServer(drop_second_request(box)) as srv, H1Pool(srv.url) as pool:
        box.append(srv)
        assert (await pool.request("POST", "/", b"a")).content == b"first"
        with pytest.raises(RemoteProtocolError, match="before sending a response"):
            await pool.request("POST", "/", b"b")
        assert srv.connections == 1 and srv.requests == 2


async def test_no_retry_once_response_bytes_arrived() -> None:
    async def handler(c: Conn) -> None:
        await c.read_request()
        await c.send(ok())
        await c.read_request()
        await c.send(b"HTTP/1.1 200 OK\r\nContent-Le")

    async with RawServer(handler) as srv, H1Pool(srv.url) as pool:
        await pool.request("GET", "/")
        with pytest.raises(RemoteProtocolError):
            await pool.request("GET", "/")
        assert srv.connections == 1


async def test_fresh_connection_closed_without_response_not_retried() -> None:
    async def handler(c: Conn) -> None:
        await c.read_request()

    async with RawServer(handler) as srv, H1Pool(srv.url) as pool:
        with pytest.raises(RemoteProtocolError, match="before sending a response"):
            await pool.request("GET", "/")
        assert srv.connections == 1


async def test_idle_connection_closed_by_peer_is_discarded() -> None:
    async def handler(c: Conn) -> None:
        await c.read_request()
        await c.send(ok())
        await asyncio.sleep(0.03)  # then close the idle keep-alive connection

    async with RawServer(handler) as srv, H1Pool(srv.url) as pool:
        await pool.request("GET", "/")
        await asyncio.sleep(0.2)
        assert pool._idle[0].lost
        await pool.request("GET", "/")
        assert srv.connections == 2 and pool._open == 1


async def test_keepalive_expiry() -> None:
    box: list[RawServer] = []
    async with (
        RawServer(keepalive_handler(box)) as srv,
        H1Pool(srv.url, keepalive_expiry=0.05) as pool,
    ):
        box.append(srv)
        await pool.request("GET", "/")
        await pool.request("GET", "/")
        assert srv.connections == 1
        await asyncio.sleep(0.15)
        await pool.request("GET", "/")
        assert srv.connections == 2 and pool._open == 1


async def test_aclose_before_body_read_closes_connection() -> None:
    half = b"x" * 50_000

    async def handler(c: Conn) -> None:
        while await c.read_request() is not None:
            await c.send(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (2 * len(half), half))
            await asyncio.sleep(0.1)
            await c.send(half)

    async with RawServer(handler) as srv, H1Pool(srv.url) as pool:
        async with await pool.stream("GET", "/") as r:
            assert r.status == 200  # body deliberately not read
        assert pool._open == 0 and not pool._idle
        async with await pool.stream("GET", "/") as r:
            assert await r.aread() == half * 2
        assert (await pool.request("GET", "/")).content == half * 2
        assert srv.connections == 2 and pool._open == 1


async def test_unconsumed_but_fully_received_body_is_reused() -> None:
    """Like an SSE consumer that stops at [DONE]: the bytes are all in, so no need to close."""
    box: list[RawServer] = []
    async with RawServer(keepalive_handler(box, b"done")) as srv, H1Pool(srv.url) as pool:
        box.append(srv)
        for _ in range(3):
            async with await pool.stream("GET", "/") as r:
                assert r.status == 200
                await asyncio.sleep(0.02)  # the whole (small) body arrives meanwhile
        assert srv.connections == 1 and pool._open == 1


async def test_malformed_response() -> None:
    async def handler(c: Conn) -> None:
        await c.read_request()
        await c.send(b"NOT HTTP AT ALL\r\n\r\n")

    async with RawServer(handler) as srv, H1Pool(srv.url) as pool:
        with pytest.raises(RemoteProtocolError, match="malformed"):
            await pool.request("GET", "/")
        assert pool._open == 0


async def test_read_timeout_between_body_chunks() -> None:
    async def handler(c: Conn) -> None:
        await c.read_request()
        await c.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n")
        await asyncio.sleep(0.15)
        await c.send(b"3\r\ndef\r\n")
        await asyncio.sleep(5)

    async with RawServer(handler) as srv, H1Pool(srv.url, read_timeout=0.4) as pool:
        parts: list[bytes] = []
        async with await pool.stream("GET", "/") as r:
            with pytest.raises(ReadTimeout):
                async for p in r.aiter_raw():
                    parts.append(p)
        assert parts == [b"abc", b"def"]


async def test_timeout_bounds_the_whole_unary_exchange() -> None:
    """Headers at once, then a body trickled inside read_timeout: the whole-exchange timeout
    still ends it, and the connection is not reused."""

    async def handler(c: Conn) -> None:
        await c.read_request()
        await c.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        for _ in range(40):
            await c.send(b"1\r\na\r\n")
            await asyncio.sleep(0.05)

    async with RawServer(handler) as srv, H1Pool(srv.url, read_timeout=1.0) as pool:
        t0 = time.perf_counter()
        with pytest.raises(DeadlineExceeded):
            await pool.request("GET", "/", timeout=0.4)
        assert 0.35 < time.perf_counter() - t0 < 1.0
        assert pool._open == 0


async def test_stream_timeout_stops_at_the_headers() -> None:
    """stream(timeout=...) bounds the wait for the headers only: a body that takes longer than
    the timeout (each read inside read_timeout) arrives whole."""

    async def handler(c: Conn) -> None:
        await c.read_request()
        await c.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        for _ in range(8):
            await asyncio.sleep(0.1)
            await c.send(b"1\r\na\r\n")
        await c.send(b"0\r\n\r\n")

    async with RawServer(handler) as srv, H1Pool(srv.url, read_timeout=1.0) as pool:
        async with await pool.stream("GET", "/", timeout=0.3) as r:
            got = b"".join([p async for p in r.aiter_raw()])
        assert got == b"a" * 8


async def test_timeout_before_the_headers(fu: FakeUpstream) -> None:
    fu.script([{"kind": "delay", "ms": 3000}])
    async with H1Pool(fu.base_url, read_timeout=10.0) as pool:
        for call in (pool.request, pool.stream):
            t0 = time.perf_counter()
            with pytest.raises(DeadlineExceeded):
                await call("POST", "/chat/completions", CHAT, None, 0.3)
            assert 0.25 < time.perf_counter() - t0 < 1.5
            fu.script([{"kind": "delay", "ms": 3000}])
        assert pool._open == 0


async def test_timeout_while_waiting_for_a_free_connection(fu: FakeUpstream) -> None:
    fu.script([{"kind": "delay", "ms": 600}])
    async with H1Pool(fu.base_url, max_connections=1) as pool:
        first = asyncio.create_task(pool.request("POST", "/chat/completions", CHAT))
        await asyncio.sleep(0.05)
        t0 = time.perf_counter()
        with pytest.raises(DeadlineExceeded):
            await pool.request("POST", "/chat/completions", CHAT, timeout=0.2)
        assert time.perf_counter() - t0 < 0.5
        assert (await first).status == 200
        assert not pool._waiters and pool._open == 1
        assert (await pool.request("POST", "/chat/completions", CHAT, timeout=5)).status == 200


async def test_large_request_body_flow_control() -> None:
    big = b"z" * (8 << 20)

    async def handler(c: Conn) -> None:
        while (req := await c.read_request()) is not None:
            await asyncio.sleep(0.05)  # let the client's write buffer fill up
            await c.send(ok(b"%d" % (len(req) - req.index(b"\r\n\r\n") - 4)))

    async with RawServer(handler) as srv, H1Pool(srv.url) as pool:
        assert (await pool.request("POST", "/", big)).content == b"%d" % len(big)
        assert (await pool.request("POST", "/", b"small")).content == b"5"
        assert srv.connections == 1


async def test_large_response_slow_consumer() -> None:
    block = b"0123456789abcdef" * 4096  # 64 KiB
    blocks = 128  # 8 MiB

    async def handler(c: Conn) -> None:
        while await c.read_request() is not None:
            await c.send(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (len(block) * blocks))
            for _ in range(blocks):
                await c.send(block)

    async with RawServer(handler) as srv, H1Pool(srv.url) as pool:
        sizes: list[int] = []
        async with await pool.stream("GET", "/") as r:
            async for p in r.aiter_raw():
                sizes.append(len(p))
                await asyncio.sleep(0.01)
        assert sum(sizes) == len(block) * blocks
        # Reading pauses once ~1 MiB is buffered: no chunk is much larger than that.
        assert max(sizes) < 1.5 * (1 << 20)
        assert (await pool.request("GET", "/")).status == 200
        assert srv.connections == 1


async def test_connect_refused() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    async with H1Pool(f"http://127.0.0.1:{port}/v1") as pool:
        with pytest.raises(ConnectError) as info:
            await pool.request("GET", "/")
        assert not isinstance(info.value, ConnectTimeout)
        assert pool._open == 0


@pytest.fixture()
def blackhole_port() -> Iterator[int]:
    """A listener that never accepts, its (tiny) accept queue filled: new SYNs get dropped."""
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(0)
    fillers: list[socket.socket] = []
    try:
        for _ in range(4):
            f = socket.socket()
            f.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                f.connect(lsock.getsockname())
            fillers.append(f)
        time.sleep(0.1)
        yield lsock.getsockname()[1]
    finally:
        for f in fillers:
            f.close()
        lsock.close()


async def test_connect_timeout(blackhole_port: int) -> None:
    async with H1Pool(f"http://127.0.0.1:{blackhole_port}", connect_timeout=0.3) as pool:
        t0 = time.perf_counter()
        with pytest.raises(ConnectTimeout):
            await pool.request("GET", "/")
        assert time.perf_counter() - t0 < 1.0
        assert pool._open == 0


async def test_cancel_during_connect(blackhole_port: int) -> None:
    async with H1Pool(f"http://127.0.0.1:{blackhole_port}", connect_timeout=10) as pool:
        task = asyncio.create_task(pool.request("GET", "/"))
        await asyncio.sleep(0.1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert pool._open == 0 and not pool._conns


async def test_head_response_has_no_body() -> None:
    async def handler(c: Conn) -> None:
        while await c.read_request() is not None:
            await c.send(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n")

    async with RawServer(handler) as srv, H1Pool(srv.url) as pool:
        r = await pool.request("HEAD", "/")
        assert (r.status, r.content, r.header(b"content-length")) == (200, b"", b"10")
        assert pool._open == 0  # never reused after HEAD


async def test_pool_closed() -> None:
    box: list[RawServer] = []
    async with RawServer(keepalive_handler(box)) as srv:
        box.append(srv)
        pool = H1Pool(srv.url, max_connections=1)
        await pool.request("GET", "/")
        r = await pool.stream("GET", "/")
        waiting = asyncio.create_task(pool.request("GET", "/"))
        await asyncio.sleep(0.02)
        await pool.aclose()
        with pytest.raises(PoolClosed):
            await waiting
        with pytest.raises(PoolClosed):
            await pool.request("GET", "/")
        await r.aclose()


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("tls")
    cert, key = d / "cert.pem", d / "key.pem"
    try:
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
             "-keyout", str(key), "-out", str(cert), "-subj", "/CN=localhost",
             "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
            check=True, capture_output=True, timeout=30,
        )  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        pytest.skip("openssl not available")
    return cert, key


async def test_https(tls_files: tuple[Path, Path]) -> None:
    cert, key = tls_files
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    conns = 0

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal conns
        conns += 1
        c = Conn(reader, writer)
        with contextlib.suppress(ConnectionError, ssl.SSLError):
            while await c.read_request() is not None:
                await c.send(ok(b"secure"))
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=server_ctx)
    port = server.sockets[0].getsockname()[1]
    try:
        client_ctx = ssl.create_default_context(cafile=str(cert))
        async with H1Pool(f"https://127.0.0.1:{port}/v1", ssl_context=client_ctx) as pool:
            for _ in range(3):
                assert (await pool.request("GET", "/")).content == b"secure"
        assert conns == 1
        async with H1Pool(f"https://127.0.0.1:{port}/v1") as untrusting:  # system CAs only
            with pytest.raises(ConnectError):
                await untrusting.request("GET", "/")
    finally:
        server.close()


# --------------------------------------------------------------------------------------------
# Under uvloop (the gateway's loop)
# --------------------------------------------------------------------------------------------


async def _uvloop_scenarios(fu: FakeUpstream) -> None:
    assert isinstance(asyncio.get_running_loop(), uvloop.Loop)
    await test_json_request_response(fu)
    fu.reset()
    await test_keepalive_connection_reused_by_fake(fu)
    fu.reset()
    await test_sse_chunks_arrive_as_sent(fu)
    fu.reset()
    await test_cut_mid_stream_raises_after_received_chunks(fu)
    fu.reset()
    await test_cancel_during_delay_is_seen_by_upstream(fu)
    fu.reset()
    await test_200_concurrent_requests_over_8_connections(fu)
    await test_stale_keepalive_connection_retried_once_for_idempotent_requests()
    await test_post_written_to_a_reused_connection_is_never_sent_twice()
    await test_large_request_body_flow_control()
    await test_large_response_slow_consumer()
    await test_read_timeout_between_body_chunks()


def test_under_uvloop(fu: FakeUpstream) -> None:
    uvloop.run(_uvloop_scenarios(fu))
