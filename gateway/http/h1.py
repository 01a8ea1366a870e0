"""Lean HTTP/1.1 client for the gateway's upstream calls (the request hot path).

This module owns the bytes between the gateway and its upstreams: connection pooling, request
serialisation, response parsing (``httptools``/llhttp), timeouts, cancellation and flow control.

It exists instead of httpx on the hot path because profiling showed ~80% of the gateway's CPU
(~2 ms per request) inside httpx/httpcore/anyio: a scan over every pooled connection per request
for expiry, anyio's socket layer and h11's pure-Python parsing.  Here a request is one
``transport.write`` of a pre-joined byte string on an ``asyncio.Protocol`` (works with uvloop and
the default loop); the response is parsed in C by ``httptools.HttpResponseParser``; the pool is a
LIFO deque whose expiry is checked only on the connection being popped (plus one peek at the
oldest), so a request costs O(1) regardless of the pool size.

Error mapping: a failure to establish TCP/TLS is :class:`ConnectError` (:class:`ConnectTimeout`
for the connect deadline) and means the request was never sent, so failing over is always safe.
Anything after the connection exists (reset, EOF before the response is complete, malformed
bytes) is :class:`RemoteProtocolError`, because the upstream may have processed the request.
A request is never sent twice once it was written (a POST resent is a second, billed
completion): a keep-alive connection the peer closed while idle is left out when it is taken
from the pool (EOF seen, transport closing); only an idempotent request (GET, HEAD, ...) on a
reused connection that dies before a single response byte is retried once on a fresh one.

A body over the caller's ``max_bytes`` raises :class:`ResponseTooLarge` (at the headers when
Content-Length says so, else once that many bytes arrived) and closes the connection. 1xx,
204 and 304 answers (and HEAD's) have no body by HTTP rules: whatever bytes follow them are
never a body, and such a connection is never reused.

A response's connection goes back to the pool only once its whole body has been received off
the wire (consumed or not, e.g. an SSE reader stopping at ``[DONE]``) and keep-alive is allowed;
otherwise (early ``aclose``, error, cancellation) it is aborted so the upstream sees us go away.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections import deque
from collections.abc import AsyncIterator
from typing import Final, cast
from urllib.parse import urlsplit

import httptools

__all__ = [
    "ConnectError",
    "ConnectTimeout",
    "H1Error",
    "H1Pool",
    "H1Response",
    "PoolClosed",
    "ReadTimeout",
    "RemoteProtocolError",
    "ResponseTooLarge",
]

_READ_HIGH_WATER: Final = 1 << 20  # pause reading once the consumer is this far behind
_WRITE_CHUNK: Final = 1 << 16  # bodies above this are written in slices, honouring pause_writing
_NO_BODY_METHODS: Final = frozenset({"GET", "HEAD", "DELETE", "OPTIONS"})
_IDEMPOTENT: Final = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})
_LINE_CACHE_MAX: Final = 256


class H1Error(Exception):
    """Base class of every error raised by this module."""


class ConnectError(H1Error):
    """The TCP (or TLS) connection could not be established; the request was not sent."""


class ConnectTimeout(ConnectError):
    """Connecting took longer than ``connect_timeout``."""


class ReadTimeout(H1Error):
    """No bytes arrived from the upstream for ``read_timeout`` seconds."""


class DeadlineExceeded(H1Error):
    """The exchange was not done by the caller's ``deadline`` (loop time)."""


class RemoteProtocolError(H1Error):
    """The peer closed/reset the connection before the response was complete, or sent junk."""


class ResponseTooLarge(H1Error):
    """The response body is over the caller's ``max_bytes``; the connection was closed."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"the upstream's response body is over {limit} bytes")
        self.limit = limit


class _TooLarge(Exception):
    """Internal: stops the parser once a body went over its limit."""


class PoolClosed(H1Error):
    """The pool was closed."""


class _Extra(Exception):
    """Internal: bytes after a complete response (the connection cannot be reused)."""


class _Conn(asyncio.Protocol):
    """One upstream connection; holds the state of the exchange in progress."""

    __slots__ = (
        "active", "buffered", "chunks", "complete", "deadline", "exc", "got_bytes", "head",
        "headers", "headers_done", "idle_since", "keep_alive", "last", "limit", "loop", "lost",
        "parser", "read_paused", "read_timeout", "received", "status", "timer", "transport",
        "until_close", "waiter", "write_paused",
    )  # fmt: skip

    def __init__(self, loop: asyncio.AbstractEventLoop, read_timeout: float) -> None:
        self.loop = loop
        self.read_timeout = read_timeout
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.lost = self.active = self.write_paused = self.read_paused = False
        self.idle_since = self.last = 0.0
        self.deadline: float | None = None
        self.waiter: asyncio.Future[None] | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.exc: H1Error | None = None
        self.status = self.buffered = self.received = 0
        self.limit: int | None = None
        self.headers: list[tuple[bytes, bytes]] = []
        self.chunks: list[bytes] = []
        self.headers_done = self.complete = self.got_bytes = self.head = False
        self.keep_alive, self.until_close = True, False

    # ---- asyncio.Protocol -----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        if not self.active:  # bytes on an idle connection: never reuse it
            self.keep_alive = False
            self.abort()
            return
        self.got_bytes = True
        self.last = self.loop.time()
        try:
            self.parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as exc:
            if self.complete and isinstance(exc.__context__, _Extra):
                self.keep_alive = False  # trailing junk after a complete response
                self.abort()
            elif self.exc is None:
                self.fail(RemoteProtocolError(f"malformed HTTP response: {exc}"))
        self.wake()

    def eof_received(self) -> None:
        self.keep_alive = False  # the peer sends no more: never hand this connection out again

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.cancel_timer()
        if self.active and not self.complete:
            if exc is None and self.until_close and self.headers_done:
                self.complete, self.keep_alive = True, False  # body delimited by EOF
            elif self.exc is None:
                what = "the response was complete" if self.got_bytes else "sending a response"
                self.exc = RemoteProtocolError(f"upstream closed the connection before {what}")
        self.write_paused = False
        self.wake()

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        self.last = self.loop.time()
        self.wake()

    # ---- httptools callbacks ------------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self.complete:
            raise _Extra

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if status < 200:  # 1xx interim response: drop it, the final one follows
            self.headers = []
            return
        self.status, self.headers_done = status, True
        if self.limit is not None and self._over_length(self.limit):
            self.fail(ResponseTooLarge(self.limit))
            raise _TooLarge
        if self.head:  # llhttp cannot be told to skip a HEAD body: finish here, never reuse
            self.complete, self.keep_alive = True, False
            self.cancel_timer()
        elif not self.parser.should_keep_alive() and status not in (204, 304):
            framed = (b"content-length", b"transfer-encoding")
            self.until_close = not any(k in framed for k, _ in self.headers)

    def on_body(self, body: bytes) -> None:
        self.received += len(body)
        if self.limit is not None and self.received > self.limit:
            self.fail(ResponseTooLarge(self.limit))
            raise _TooLarge
        self.chunks.append(body)
        self.buffered += len(body)
        if self.buffered > _READ_HIGH_WATER and not self.read_paused and not self.lost:
            self.read_paused = True
            cast(asyncio.Transport, self.transport).pause_reading()

    def on_message_complete(self) -> None:
        if not self.headers_done or self.head:
            return  # end of a 1xx interim message (or a HEAD already finished)
        self.complete = True
        # a 204/304 has no body: bytes the peer sent as one anyway would be read as the
        # start of the next response, so such a connection is never reused
        self.keep_alive = self.parser.should_keep_alive() and self.status not in (204, 304)
        self.cancel_timer()

    # ---- exchange helpers ---------------------------------------------------------------------

    def begin(self, head: bool, deadline: float | None, limit: int | None) -> None:
        self.active, self.head, self.status, self.exc = True, head, 0, None
        self.headers, self.chunks, self.buffered, self.received = [], [], 0, 0
        self.limit = limit
        self.headers_done = self.complete = self.got_bytes = self.until_close = False
        self.keep_alive = True
        self.deadline = deadline
        self.last = now = self.loop.time()
        self._arm(self.read_timeout, now)

    def set_limit(self, limit: int | None) -> None:
        """Cap the body at ``limit`` bytes from now on (counting what already arrived)."""
        self.limit = limit
        if limit is None or self.exc is not None:
            return
        if self.received > limit or (
            self.headers_done and not self.complete and self._over_length(limit)
        ):
            self.fail(ResponseTooLarge(limit))

    def _over_length(self, limit: int) -> bool:
        """Whether the Content-Length already says the body is over `limit`."""
        for name, value in self.headers:
            if name == b"content-length":
                v = value.strip()
                return v.isdigit() and int(v) > limit
        return False

    def _arm(self, delay: float, now: float) -> None:
        """Fire on_timer after `delay` s, or at the deadline if that comes first."""
        deadline = self.deadline
        if deadline is not None and deadline - now < delay:
            delay = max(0.0, deadline - now)
        self.timer = self.loop.call_later(delay, self.on_timer)

    def end(self) -> None:
        self.active = False
        self.cancel_timer()
        self.chunks = []
        if self.read_paused:
            self.take()

    def take(self) -> bytes:
        """Return (and forget) the buffered body bytes; resume reading if it was paused."""
        chunks = self.chunks
        data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        self.chunks, self.buffered = [], 0
        if self.read_paused:
            self.read_paused = False
            self.last = self.loop.time()
            if not self.lost:
                cast(asyncio.Transport, self.transport).resume_reading()
        return data

    async def wait(self) -> None:
        """Sleep until the next event (data, EOF, drain, timeout); callers re-check state."""
        waiter = self.loop.create_future()
        self.waiter = waiter
        try:
            await waiter
        finally:
            self.waiter = None

    def wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def on_timer(self) -> None:
        self.timer = None
        if not self.active or self.complete:
            return
        now = self.loop.time()
        deadline = self.deadline
        if deadline is not None and now >= deadline:
            self.fail(DeadlineExceeded("the upstream did not finish before the deadline"))
            return
        remaining = self.last + self.read_timeout - now
        if remaining > 0 or self.waiter is None or self.read_paused:
            self._arm(remaining if remaining > 0 else self.read_timeout, now)
            return
        self.fail(ReadTimeout(f"no data from upstream for {self.read_timeout:g}s"))

    def cancel_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def fail(self, exc: H1Error) -> None:
        if self.exc is None:
            self.exc = exc
        self.abort()
        self.wake()

    def abort(self) -> None:
        self.keep_alive = False
        if self.transport is not None and not self.lost:
            self.transport.abort()

    async def send(self, data: bytes, big_body: bytes) -> None:
        """Write the request and wait for the status line and headers."""
        transport = cast(asyncio.Transport, self.transport)
        transport.write(data)
        if big_body:
            view = memoryview(big_body)
            for start in range(0, len(view), _WRITE_CHUNK):
                while self.write_paused and self.exc is None:
                    await self.wait()
                if self.exc is not None or self.lost:
                    break
                transport.write(view[start : start + _WRITE_CHUNK])
        while not self.headers_done:
            if self.exc is not None:
                raise self.exc
            await self.wait()


class H1Response:
    """A response; use ``async with`` so the connection is always released or closed."""

    __slots__ = ("_conn", "_pool", "content", "headers", "status")

    def __init__(self, pool: H1Pool, conn: _Conn) -> None:
        self._pool: H1Pool = pool
        self._conn: _Conn | None = conn
        self.status: int = conn.status
        self.headers: list[tuple[bytes, bytes]] = conn.headers
        self.content: bytes = b""

    def header(self, name: bytes) -> bytes | None:
        """The first value of header ``name`` (case-insensitive), or None."""
        name = name.lower()
        for key, value in self.headers:
            if key == name:
                return value
        return None

    def set_max_bytes(self, limit: int | None) -> None:
        """Cap the body at ``limit`` bytes (counting what already arrived); reading past it
        raises :class:`ResponseTooLarge` and closes the connection."""
        if self._conn is not None:
            self._conn.set_limit(limit)

    async def aread(self) -> bytes:
        """Read the whole body into ``content`` (then the connection goes back to the pool)."""
        conn = self._conn
        if conn is None:
            return self.content
        parts: list[bytes] = []
        try:
            while not conn.complete:
                if conn.exc is not None:
                    raise conn.exc
                if conn.read_paused:  # we are the consumer: drain so that reading resumes
                    parts.append(conn.take())
                await conn.wait()
        except BaseException:
            self._abort()
            raise
        self.content = conn.take()
        if parts:
            parts.append(self.content)
            self.content = b"".join(parts)
        self._finish()
        return self.content

    async def aiter_raw(self) -> AsyncIterator[bytes]:
        """Yield decoded body bytes as they arrive: one chunk per network read, never batched."""
        if self._conn is None:
            if self.content:
                yield self.content
            return
        try:
            while (conn := self._conn) is not None:
                if conn.chunks:
                    yield conn.take()
                elif conn.complete:
                    self._finish()
                elif conn.exc is not None:
                    raise conn.exc
                else:
                    await conn.wait()
        except BaseException:
            self._abort()
            raise

    async def aclose(self) -> None:
        """Release the connection: pooled if the body was fully received, else closed."""
        conn = self._conn
        if conn is not None and conn.complete:
            self._finish()
        else:
            self._abort()

    async def __aenter__(self) -> H1Response:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def _finish(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            self._pool._put(conn)

    def _abort(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            self._pool._discard(conn)


class H1Pool:
    """A keep-alive connection pool to one upstream ``base_url`` (http:// or https://)."""

    def __init__(
        self,
        base_url: str,
        *,
        headers: dict[str, str] | None = None,
        connect_timeout: float = 2.0,
        read_timeout: float = 60.0,
        max_connections: int = 256,
        keepalive_expiry: float = 30.0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        url = urlsplit(base_url)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ValueError(f"unsupported base URL {base_url!r}")
        self._host = url.hostname
        self._port = url.port or (443 if url.scheme == "https" else 80)
        self._ssl: ssl.SSLContext | None = None
        if url.scheme == "https":
            self._ssl = ssl_context or ssl.create_default_context()
        self._prefix = url.path.rstrip("/")
        host = f"[{self._host}]" if ":" in self._host else self._host
        if url.port is not None:
            host = f"{host}:{url.port}"
        lines = [f"Host: {host}\r\n"]
        lines += [f"{k}: {v}\r\n" for k, v in (headers or {}).items()]
        if any(line.count("\n") != 1 or line.count("\r") != 1 for line in lines):
            raise ValueError("header names/values must not contain CR or LF")
        self._const = "".join(lines).encode("latin-1")
        self._lines: dict[tuple[str, str], bytes] = {}
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        self._max = max_connections
        self._expiry = keepalive_expiry
        self._idle: deque[_Conn] = deque()
        self._conns: set[_Conn] = set()
        self._open = 0  # connections open or being opened (slots taken)
        self._waiters: deque[asyncio.Future[_Conn | None]] = deque()
        self._closed = False

    # ---- public API ---------------------------------------------------------------------------

    async def request(
        self,
        method: str,
        path: str,
        body: bytes = b"",
        headers: list[tuple[bytes, bytes]] | None = None,
        timeout: float | None = None,
        max_bytes: int | None = None,
    ) -> H1Response:
        """Send a request and read the whole response body (``response.content``).

        ``timeout``: seconds for the whole exchange (waiting for a connection, connecting,
        sending, the status line and the whole body), else DeadlineExceeded (or
        ConnectTimeout while connecting). One timer per exchange, no extra task or
        cancellation: the connection's own read timer also watches the deadline.
        ``max_bytes``: a body over it raises ResponseTooLarge (the connection is closed)."""
        deadline = None if timeout is None else asyncio.get_running_loop().time() + timeout
        response = await self._stream(method, path, body, headers, deadline, max_bytes)
        await response.aread()
        return response

    async def stream(
        self,
        method: str,
        path: str,
        body: bytes = b"",
        headers: list[tuple[bytes, bytes]] | None = None,
        timeout: float | None = None,
    ) -> H1Response:
        """Send a request; return once status and headers arrived (body not read yet).

        ``headers`` must not repeat Host or Content-Length (the pool writes them).
        ``timeout``: seconds until the status line and headers have arrived, as in request();
        the body is then bounded by ``read_timeout`` between reads only.
        """
        deadline = None if timeout is None else asyncio.get_running_loop().time() + timeout
        response = await self._stream(method, path, body, headers, deadline, None)
        conn = response._conn
        if conn is not None:
            conn.deadline = None
        return response

    async def _stream(
        self,
        method: str,
        path: str,
        body: bytes,
        headers: list[tuple[bytes, bytes]] | None,
        deadline: float | None,
        max_bytes: int | None,
    ) -> H1Response:
        data, big_body = self._serialise(method, path, body, headers)
        head = method == "HEAD"
        resend = method in _IDEMPOTENT
        for attempt in (0, 1):
            conn, reused = await self._acquire(deadline)
            conn.begin(head, deadline, max_bytes)
            try:
                await conn.send(data, big_body)
            except RemoteProtocolError:
                self._discard(conn)
                if resend and reused and not conn.got_bytes and attempt == 0:
                    continue  # stale keep-alive connection: an idempotent request goes again
                raise  # anything else may have been processed: never sent twice
            except BaseException:
                self._discard(conn)
                raise
            return H1Response(self, conn)
        raise AssertionError("unreachable")

    async def aclose(self) -> None:
        """Close every connection; pending and later requests raise :class:`PoolClosed`."""
        self._closed = True
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_exception(PoolClosed("pool closed"))
        self._waiters.clear()
        for conn in self._conns:
            conn.fail(PoolClosed("pool closed"))
        self._conns.clear()
        self._idle.clear()
        self._open = 0
        await asyncio.sleep(0)

    async def __aenter__(self) -> H1Pool:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # ---- internals ----------------------------------------------------------------------------

    def _serialise(
        self, method: str, path: str, body: bytes, headers: list[tuple[bytes, bytes]] | None
    ) -> tuple[bytes, bytes]:
        line = self._lines.get((method, path))
        if line is None:
            text = f"{method} {self._prefix}{path} HTTP/1.1\r\n"
            if text.count(" ") != 2 or text.count("\n") != 1 or text.count("\r") != 1:
                raise ValueError(f"invalid method or path: {method!r} {path!r}")
            line = text.encode("latin-1") + self._const
            if len(self._lines) < _LINE_CACHE_MAX:
                self._lines[(method, path)] = line
        parts = [line]
        if body or method not in _NO_BODY_METHODS:
            parts.append(b"Content-Length: %d\r\n" % len(body))
        if headers:
            extra = b"".join([b"%s: %s\r\n" % kv for kv in headers])
            if extra.count(b"\n") != len(headers) or extra.count(b"\r") != len(headers):
                raise ValueError("header names/values must not contain CR or LF")
            parts.append(extra)
        parts.append(b"\r\n")
        if len(body) > _WRITE_CHUNK:
            return b"".join(parts), body
        parts.append(body)
        return b"".join(parts), b""

    async def _acquire(self, deadline: float | None = None) -> tuple[_Conn, bool]:
        """Return (connection, reused): newest live idle one, else a new one, else wait
        (until ``deadline``, loop time, if given)."""
        loop = asyncio.get_running_loop()
        while True:
            if self._closed:
                raise PoolClosed("pool closed")
            idle = self._idle
            if idle:
                now = loop.time()
                while idle:
                    conn = idle.pop()
                    if self._usable(conn, now):
                        return conn, True
                    self._discard(conn)
            if self._open < self._max:
                self._open += 1
                break
            waiter: asyncio.Future[_Conn | None] = loop.create_future()
            self._waiters.append(waiter)
            try:
                if deadline is None:
                    got = await waiter
                else:
                    async with asyncio.timeout_at(deadline):
                        got = await waiter
            except BaseException as exc:
                if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                    handed = waiter.result()  # handed over just as we were cancelled
                    if handed is None:
                        self._free_slot()
                    else:
                        self._put(handed)
                if isinstance(exc, TimeoutError):
                    raise DeadlineExceeded(
                        "no upstream connection became free before the deadline"
                    ) from None
                raise
            if got is None:
                break  # a slot was handed over to us
            if self._usable(got, loop.time()):
                return got, True
            self._discard(got)
        try:
            conn = await self._connect(loop, deadline)
        except BaseException:
            self._free_slot()
            raise
        self._conns.add(conn)
        return conn, False

    def _usable(self, conn: _Conn, now: float) -> bool:
        """Alive, reusable and not expired: a connection whose peer already closed it (EOF
        seen, transport closing) is left out here, before a request is written to it."""
        transport = conn.transport
        return (
            not conn.lost
            and conn.keep_alive
            and now - conn.idle_since <= self._expiry
            and transport is not None
            and not transport.is_closing()
        )

    async def _connect(self, loop: asyncio.AbstractEventLoop, deadline: float | None) -> _Conn:
        where = f"{self._host}:{self._port}"
        timeout = self._connect_timeout
        if deadline is not None:
            timeout = max(0.0, min(timeout, deadline - loop.time()))
        try:
            async with asyncio.timeout(timeout):
                _, conn = await loop.create_connection(
                    lambda: _Conn(loop, self._read_timeout),
                    self._host,
                    self._port,
                    ssl=self._ssl,
                    server_hostname=self._host if self._ssl else None,
                )
        except TimeoutError as exc:
            if deadline is not None and loop.time() >= deadline:
                raise DeadlineExceeded(
                    f"connect to {where} was not done before the deadline"
                ) from exc
            raise ConnectTimeout(f"connect to {where} timed out") from exc
        except OSError as exc:
            raise ConnectError(f"connect to {where} failed: {exc}") from exc
        return conn

    def _put(self, conn: _Conn) -> None:
        """Give a connection whose response is complete back (or close it)."""
        conn.end()
        if self._closed or conn.lost or not conn.keep_alive or conn not in self._conns:
            self._discard(conn)
            return
        waiters = self._waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(conn)
                return
        now = conn.loop.time()
        conn.idle_since = now
        idle = self._idle
        idle.append(conn)
        oldest = idle[0]  # O(1) reaping: drop the oldest idle connection once it expired
        if oldest is not conn and not self._usable(oldest, now):
            idle.popleft()
            self._discard(oldest)

    def _discard(self, conn: _Conn) -> None:
        conn.active = False
        conn.cancel_timer()
        conn.abort()
        if conn in self._conns:
            self._conns.remove(conn)
            self._free_slot()

    def _free_slot(self) -> None:
        waiters = self._waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self._open = max(0, self._open - 1)
