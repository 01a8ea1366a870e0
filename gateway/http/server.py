"""The HTTP/1.1 protocol `tollgate serve` gives uvicorn (`http=H1Server`): httptools parsing and
ASGI 3 to the app, like uvicorn's own httptools protocol, with less work per request.

uvicorn still binds the socket, runs the lifespan, the workers, signals and the graceful
shutdown; this class only turns bytes into ASGI calls and back, for one connection. Most of
what uvicorn's protocol costs per request is Python machinery, not system calls; a
hello-world app on one core (bench/server_micro.py) took 35.1 us per request behind it and
27.8 us behind this one. What is leaner here:

- `receive()` returns the body at once when it has arrived with the headers (the usual case):
  no Event to set, wait on and clear;
- a response of known length goes out in one write (head and body together; uvicorn writes
  the head as soon as the app sends it), the app's header names and values are checked
  with one regular-expression search each instead of two per header, and uvicorn's default
  headers (date, server) are rendered once per second, not per response;
- the keep-alive timeout is one timer per connection that re-arms itself when it fires,
  instead of a timer created and cancelled for every request (it also closes a connection
  whose request headers stall for two timeouts, where uvicorn would wait forever);
- a path without `%`, `?` or `#` is taken as it is (no URL parser call);
- an app learns that the client went away through the `tollgate.on_disconnect` scope
  extension, a callback called from `connection_lost`, instead of keeping a task asleep
  on `receive()` for every request in flight.

Behaviour follows uvicorn's protocol: pipelined requests are answered in order, a paused
transport pauses the app's writes, a request body past 64 KiB pauses reading until the app
takes it, `Expect: 100-continue` is answered when the app first asks for the body, a client
that goes away turns `receive()` into `http.disconnect`, an app error before the response
started becomes a 500 (after it, the connection is closed), an unparsable request gets a 400,
and `shutdown()` lets a request in progress finish, then closes.

What one client may make it hold is bounded (the routing file's `server:` settings, passed as
`limits`; a short plain answer and `connection: close` where one is due, as nginx):
a request line and headers (or a chunked body's trailer fields) past `max_header_bytes` get
431 (a URL alone, 414), counted per read so the parser never buffers more than that and one
read; a request head or body that
does not arrive within `header_timeout_s` / `body_timeout_s` in total gets 408; past
`max_pipelined_requests` waiting answers nothing more is parsed and the connection closes
after the last of them; a connection past `max_connections` gets 503 at once; a client whose
socket takes no answer bytes for `write_timeout_s` is dropped (the app hears it through the
disconnect callback and frees what it holds upstream). The deadlines share the keep-alive
timer and cost a request no clock read: it ticks every min(keep-alive timeout, deadlines)
seconds, so a deadline passes by at most one tick (5 s on defaults). An HTTP/1.1 request needs
exactly one Host (400) and the only transfer coding taken is one `chunked` (501), as h11 and
nginx. `connection_lost` drops the parser (which refers back to the protocol) and what a
request left behind, so a closed connection is freed by reference counting, not at the next
full collection.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import urllib.parse
from collections import deque
from collections.abc import Callable
from http import HTTPStatus
from typing import Any

import httptools

from gateway.config import ServerConfig

log = logging.getLogger("uvicorn.error")

_HIGH_WATER = 65536  # request body bytes buffered before reading pauses (as uvicorn)
# the characters uvicorn refuses in a header name and in a header value
_BAD_NAME = re.compile(b'[\x00-\x1f\x7f()<>@,;:\\[\\]={} \t\\\\"]')
_BAD_VALUE = re.compile(b"[\x00-\x08\x0a-\x1f\x7f]")
_NO_BODY = (204, 304)
# the ASGI scope extension through which an app learns, without a task of its own, that the
# client went away: scope["extensions"][ON_DISCONNECT](callback)
ON_DISCONNECT = "tollgate.on_disconnect"
# a key of the `http.disconnect` message an app gets when the server itself answered the
# request (400: its body broke the HTTP framing after the headers): the status the client got
ANSWERED = "tollgate.answered"


def _status_line(code: int) -> bytes:
    try:
        phrase = HTTPStatus(code).phrase.encode()
    except ValueError:
        phrase = b""
    return b"HTTP/1.1 %d %s\r\n" % (code, phrase)


_STATUS = {code: _status_line(code) for code in range(100, 600)}
_FRAMING = frozenset((b"content-length", b"transfer-encoding", b"connection"))
_NOTED = frozenset((b"host", b"transfer-encoding", b"expect"))  # request headers looked at
_PLAIN_URL = re.compile(rb"/[^%?#]*")
_DEFAULT_HEAD: list[Any] = [None, b""]  # (uvicorn's default header list, rendered)
_DEFAULT_LIMITS = ServerConfig()
_QUIET_S = 10.0  # a refused connection is logged at most once in this long (a flood would spam)
_last_refusal_log = [0.0]


class _Refuse(Exception):
    """Raised from a parser callback: the request gets a short plain answer, then the connection
    is closed (the status and text are on the protocol, set before raising)."""


class _Stop(Exception):
    """Raised from on_message_begin: as many requests as allowed are waiting for their answers;
    parse nothing more on this connection (it closes after the last answer)."""


class _Exchange:
    """One request and its response: the ASGI `receive` and `send` of one app call."""

    __slots__ = (
        "answered", "chunked", "complete", "conn", "disconnected", "expect_100", "head",
        "head_only", "keep_alive", "left", "more", "on_gone", "parts", "read_all", "scope", "size",
        "started", "waiters",
    )  # fmt: skip

    def __init__(self, conn: H1Server, scope: dict[str, Any], keep_alive: bool) -> None:
        self.conn = conn
        # handed to the app when it starts; not kept: the scope's on_disconnect extension
        # refers to this exchange, and a reference cycle would leave each one to the GC
        self.scope: dict[str, Any] | None = scope
        self.keep_alive = keep_alive
        self.expect_100 = False
        self.head_only = scope["method"] == "HEAD"
        self.parts: list[bytes] = []  # request body received, not yet given to the app
        self.size = 0
        self.more = True  # more request body to come
        self.read_all = False  # the app has had the whole body
        self.disconnected = False
        self.answered = 0  # the status the server answered with itself (ANSWERED), else 0
        self.started = self.complete = self.chunked = False
        self.left = 0  # Content-Length bytes still to send
        self.head: bytes | None = None  # held until the first body bytes
        self.waiters: list[asyncio.Future[None]] = []  # receive() calls asleep (any number)
        self.on_gone: Callable[[], object] | None = None

    def on_disconnect(self, callback: Callable[[], object] | None) -> None:
        """The `tollgate.on_disconnect` extension: call `callback` (once, from the protocol)
        if the client goes away before the response is complete; None unregisters it. A task
        blocked on `receive()` does the same job at the cost of a task per request."""
        self.on_gone = callback

    def wake(self) -> None:
        if self.waiters:
            waiters, self.waiters = self.waiters, []
            for w in waiters:
                if not w.done():  # a cancelled receive() leaves a done future behind
                    w.set_result(None)

    async def _wait(self) -> None:
        w = self.conn.loop.create_future()
        self.waiters.append(w)
        await w

    # -- ASGI ---------------------------------------------------------------------------------
    async def receive(self) -> dict[str, Any]:
        conn = self.conn
        if self.expect_100 and not self.started and not conn.closing:
            self.expect_100 = False
            conn.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        if not self.read_all:
            while not self.parts and self.more and not self.disconnected:
                conn.resume_reading()
                await self._wait()
            if self.disconnected:
                if self.answered:
                    return {"type": "http.disconnect", ANSWERED: self.answered}
                return {"type": "http.disconnect"}
            parts = self.parts
            body = parts[0] if len(parts) == 1 else b"".join(parts)
            self.parts, self.size = [], 0
            self.read_all = not self.more
            conn.resume_reading()
            return {"type": "http.request", "body": body, "more_body": self.more}
        # the body has been read: the next event is the client leaving (or the response end)
        while not self.disconnected and not self.complete:
            await self._wait()
        return {"type": "http.disconnect"}

    async def send(self, message: dict[str, Any]) -> None:
        conn = self.conn
        if conn.write_paused and not self.disconnected:
            await conn.drain()
        if self.disconnected:
            return
        kind = message["type"]
        if not self.started:
            if kind != "http.response.start":
                raise RuntimeError(f"Expected ASGI message 'http.response.start', but got {kind!r}")
            self._start(message["status"], message.get("headers", ()))
        elif not self.complete:
            if kind != "http.response.body":
                raise RuntimeError(f"Expected ASGI message 'http.response.body', but got {kind!r}")
            body = message.get("body", b"")
            more = message.get("more_body", False)
            head, self.head = self.head, None
            if self.head_only:
                data = b""
            elif self.chunked:
                data = b"%x\r\n%s\r\n" % (len(body), body) if body else b""
                if not more:
                    data += b"0\r\n\r\n"
            else:
                if len(body) > self.left:
                    raise RuntimeError("Response content longer than Content-Length")
                self.left -= len(body)
                data = body
            if head is not None:
                data = head + data
            if data:
                conn.transport.write(data)
            if not more:
                if self.left and not self.head_only:
                    raise RuntimeError("Response content shorter than Content-Length")
                self.complete = True
                self.wake()
                conn.done(self)
        else:
            raise RuntimeError(f"Unexpected ASGI message {kind!r} sent after the response ended")

    def _start(self, status: int, headers: Any) -> None:
        conn = self.conn
        out = [_STATUS.get(status) or _status_line(status), conn.default_head()]
        names: list[bytes] = []
        values: list[bytes] = []
        length = -1
        says_close = False
        for name, value in headers:
            name = name.lower()
            if name in _FRAMING:
                if name == b"content-length":
                    if length < 0 and not self.chunked:
                        length = int(value)
                elif name == b"transfer-encoding":
                    self.chunked = self.chunked or value.lower() == b"chunked"
                elif b"close" in value.lower():  # connection
                    self.keep_alive = False
                    says_close = True
            out += (name, b": ", value, b"\r\n")
            names.append(name)
            values.append(value)
        # the app's headers, checked before anything is written: one search over all names
        # and one over all values (a tab is allowed in a value, so it can join them)
        if _BAD_NAME.search(b"".join(names)):
            raise RuntimeError("Invalid HTTP header name.")
        if _BAD_VALUE.search(b"\t".join(values)):
            raise RuntimeError("Invalid HTTP header value.")
        self.started = True
        self.expect_100 = False
        if not self.keep_alive and not says_close:
            out.append(b"connection: close\r\n")
        if length >= 0:
            self.left = length
        elif not self.chunked and not self.head_only and status not in _NO_BODY:
            self.chunked = True
            out.append(b"transfer-encoding: chunked\r\n")
        out.append(b"\r\n")
        head = b"".join(out)
        if length >= 0 and not self.head_only:
            self.head = head  # goes out with the body, in one write
        else:
            conn.transport.write(head)  # streams: the client sees the head at once


class H1Server(asyncio.Protocol):
    """One client connection (uvicorn creates one per accepted socket)."""

    # Slots: past 30 attributes an instance's dict stops sharing its keys with the class's
    # other instances, and CPython 3.11 no longer specializes the attribute reads of the
    # hot path (+8,000 instructions a request measured with the limits' attributes added).
    __slots__ = (
        "app", "app_state", "body_timeout_s", "client", "closing", "current", "drain_waiters",
        "expect_100", "head_size", "header_timeout_s", "headers", "hosts", "idle_since",
        "in_head", "keep_alive_s", "limit", "loop", "max_connections", "max_head",
        "max_pending", "parser", "parsing", "queue", "read_paused", "reading_since", "refusal",
        "root_path", "scheme", "server", "server_state", "stopped", "stuck_since", "te", "tes",
        "tick", "timer", "transport", "url", "write_paused", "write_timeout_s",
    )  # fmt: skip

    def __init__(
        self,
        config: Any,
        server_state: Any,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
        limits: ServerConfig | None = None,
    ) -> None:
        if not config.loaded:
            config.load()
        self.app = config.loaded_app
        self.loop = _loop or asyncio.get_event_loop()
        self.server_state = server_state
        self.app_state = app_state
        self.root_path: str = config.root_path
        self.limit = config.limit_concurrency
        self.keep_alive_s: float = config.timeout_keep_alive
        lim = limits or _DEFAULT_LIMITS
        self.max_head = lim.max_header_bytes
        self.max_pending = lim.max_pipelined_requests
        self.max_connections = lim.max_connections
        self.header_timeout_s = lim.header_timeout_s
        self.body_timeout_s = lim.body_timeout_s
        self.write_timeout_s = lim.write_timeout_s
        # Any: None once the connection is gone (the parser refers back to this protocol)
        self.parser: Any = httptools.HttpRequestParser(self)
        # answer the first of pipelined requests even when the client closes early (as uvicorn;
        # httptools < 0.6.3 has no such switch)
        with contextlib.suppress(AttributeError):
            self.parser.set_dangerous_leniencies(lenient_data_after_close=True)
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self.server: tuple[str, int] | None = None
        self.client: tuple[str, int] | None = None
        self.scheme = "http"
        self.closing = False
        self.read_paused = self.write_paused = False
        self.drain_waiters: list[asyncio.Future[None]] = []
        self.current: _Exchange | None = None  # the exchange the app is serving
        self.queue: deque[_Exchange] = deque()  # pipelined exchanges waiting their turn
        self.parsing: _Exchange | None = None  # the exchange whose request is being parsed
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.expect_100 = False  # the request being parsed asked for 100-continue
        self.hosts = 0  # Host headers of the request being parsed
        self.tes = 0  # its Transfer-Encoding headers
        self.te = b""  # the last one's value
        self.in_head = True  # waiting for (the rest of) a request line and headers
        self.head_size = 0  # bytes received since that began (counted per read)
        self.stopped = False  # parse nothing more (max_pipelined_requests reached)
        self.refusal: tuple[int, bytes] = (400, b"")  # what a _Refuse answers
        self.idle_since = 0.0
        # One timer per connection, for the keep-alive timeout and the deadlines. It ticks at
        # least every `tick` s; no request reads the clock for a deadline: a tick notes when
        # it first saw the connection wait for a request head or body, or for the client to
        # take answer bytes (the callbacks reset these at each phase's end), and a later tick
        # compares. A deadline passes by at most one tick.
        self.tick = min(
            self.keep_alive_s, self.header_timeout_s, self.body_timeout_s, self.write_timeout_s
        )
        self.timer: asyncio.TimerHandle | None = None
        self.reading_since = 0.0  # head or body of the request being parsed (0.0: not seen)
        self.stuck_since = 0.0  # writes paused by a full buffer (0.0: not seen)

    # -- asyncio.Protocol -------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        connections = self.server_state.connections
        if len(connections) >= self.max_connections:
            self._refuse_connection()
            return
        connections.add(self)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            try:
                self.server = sock.getsockname()[:2]
                self.client = sock.getpeername()[:2]
            except (OSError, TypeError):  # pragma: no cover - a unix socket
                pass
        if transport.get_extra_info("sslcontext") is not None:
            self.scheme = "https"
        self._idle()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        self.server_state.connections.discard(self)
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self._gone()
        self._wake_writers()
        # The parser refers back to this protocol (its callbacks): drop it and everything a
        # request left here, so that all of it is freed now by reference counting. Left in a
        # cycle, a large request head would wait for a full collection, which gc.freeze()
        # (Gateway.start) makes rare.
        self.parser = None
        self.current = self.parsing = None
        self.url = b""
        self.headers = []

    def _gone(self) -> None:
        """Every exchange of this connection learns that the client is gone (or will be)."""
        for ex in (self.current, self.parsing, *self.queue):
            if ex is not None and not ex.complete:
                ex.disconnected = True
                ex.wake()
                gone, ex.on_gone = ex.on_gone, None
                if gone is not None:
                    try:
                        gone()
                    except Exception:  # the app's callback must not break the protocol
                        log.exception("tollgate.on_disconnect callback failed")
        self.queue.clear()

    def eof_received(self) -> None:
        pass

    def data_received(self, data: bytes) -> None:
        self.idle_since = 0.0
        if self.in_head:
            if self.stopped:
                return  # past max_pipelined_requests: the client sends these again
            self.head_size += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserCallbackError as e:
            if isinstance(e.__context__, _Stop):
                self._stop()
            elif isinstance(e.__context__, _Refuse):
                self._refuse(*self.refusal)
            else:
                self._bad_request(b"Invalid HTTP request received.")
            return
        except httptools.HttpParserUpgrade:
            # no WebSocket or h2c here: serve the request as HTTP/1.1 (whatever body came with
            # its headers), then close; the parser reads nothing more on this connection
            for ex in (self.parsing, *self.queue, self.current):
                if ex is not None:
                    ex.keep_alive = False
            if self.parsing is not None:
                self.on_message_complete()
        except httptools.HttpParserError:
            self._bad_request(b"Invalid HTTP request received.")
            return
        if self.in_head and self.head_size > self.max_head and not self.closing:
            self._refuse(431, self._too_large(b"Request header fields too large"))

    def _too_large(self, what: bytes) -> bytes:
        limit = b"at most %d bytes of request line and headers" % self.max_head
        return b"%s: %s are accepted (server.max_header_bytes)." % (what, limit)

    def pause_writing(self) -> None:
        self.write_paused = True  # the client has write_timeout_s to take bytes again

    def resume_writing(self) -> None:
        self.write_paused = False
        self.stuck_since = 0.0
        self._wake_writers()

    # -- httptools callbacks ----------------------------------------------------------------
    def on_message_begin(self) -> None:
        if self.current is not None and len(self.queue) + 1 >= self.max_pending:
            raise _Stop
        self.url = b""
        self.headers = []
        self.expect_100 = False
        self.hosts = self.tes = 0

    def on_url(self, url: bytes) -> None:
        self.url += url
        if len(self.url) > self.max_head:
            self.refusal = (414, self._too_large(b"URI too long"))
            raise _Refuse

    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        if name in _NOTED:  # one set lookup a header, not a comparison for each name
            if name == b"host":
                self.hosts += 1
            elif name == b"transfer-encoding":
                self.tes += 1
                self.te = value
            elif value.lower() == b"100-continue":
                self.expect_100 = True
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        parser = self.parser
        version = parser.get_http_version()
        if self.hosts != 1 or self.tes:
            self._check_framing(version)
        self.in_head = False
        self.head_size = 0
        self.reading_since = 0.0  # the head is in; the body's time starts
        url = self.url
        if _PLAIN_URL.fullmatch(url):
            raw_path, query = url, b""
            path = url.decode("ascii")
        else:
            parsed = httptools.parse_url(url)
            raw_path, query = parsed.path, parsed.query or b""
            path = raw_path.decode("ascii")
            if "%" in path:
                path = urllib.parse.unquote(path)
        root = self.root_path
        scope = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},  # fresh: the app may keep it
            "http_version": version,
            "server": self.server,
            "client": self.client,
            "scheme": self.scheme,
            "method": parser.get_method().decode("ascii"),
            "root_path": root,
            "path": root + path if root else path,
            "raw_path": root.encode("ascii") + raw_path if root else raw_path,
            "query_string": query,
            "headers": self.headers,
            "state": self.app_state.copy(),
        }
        ex = _Exchange(self, scope, version != "1.0" and parser.should_keep_alive())
        scope["extensions"] = {ON_DISCONNECT: ex.on_disconnect}
        ex.expect_100 = self.expect_100
        self.parsing = ex
        if self.current is None:
            self._run(ex)
        else:  # pipelined: wait for the response in progress (its body's time starts then)
            self.queue.append(ex)
            self.pause_reading()

    def _check_framing(self, version: str) -> None:
        """Refuse what h11 and nginx refuse: an HTTP/1.1 request without exactly one Host, two
        Host headers in any version, a transfer coding other than one `chunked` (a framing a
        server on the way may read differently: request smuggling)."""
        if self.hosts > 1 or (self.hosts == 0 and version != "1.0"):
            self.refusal = (
                400,
                b"Bad Request: an HTTP/1.1 request carries exactly one Host header.",
            )
            raise _Refuse
        if self.tes > 1 or (self.tes and self.te.strip().lower() != b"chunked"):
            self.refusal = (
                501,
                b"Not Implemented: the only transfer coding accepted is one "
                b"'Transfer-Encoding: chunked'.",
            )
            raise _Refuse

    def on_chunk_header(self) -> None:
        # a chunked body's last chunk may be followed by trailer fields: the bytes of a read
        # that brings no body bytes count against max_header_bytes, like a head's
        self.in_head = True

    def on_body(self, body: bytes) -> None:
        self.head_size = 0  # (bytes of body came: not trailers)
        ex = self.parsing
        if ex is None or ex.complete:
            return
        ex.parts.append(body)
        ex.size += len(body)
        if ex.size > _HIGH_WATER:
            self.pause_reading()
        ex.wake()

    def on_message_complete(self) -> None:
        ex = self.parsing
        self.parsing = None
        self.in_head = True
        self.head_size = 0  # (trailers counted here are not the next head's)
        self.reading_since = 0.0
        if ex is not None:
            ex.more = False
            ex.wake()

    # -- the app ------------------------------------------------------------------------------
    def _run(self, ex: _Exchange) -> None:
        self.current = ex
        limit = self.limit
        state = self.server_state
        app = self.app
        if limit is not None and (
            len(state.connections) >= limit or len(state.tasks) >= limit
        ):  # as uvicorn's --limit-concurrency
            app = _service_unavailable
            log.warning("Exceeded concurrency limit.")
        task = self.loop.create_task(self._call(app, ex))
        state.tasks.add(task)
        task.add_done_callback(state.tasks.discard)

    async def _call(self, app: Any, ex: _Exchange) -> None:
        try:
            scope, ex.scope = ex.scope, None
            result = await app(scope, ex.receive, ex.send)
        except BaseException as exc:  # as uvicorn: logged, never raised into the loop
            log.error("Exception in ASGI application\n", exc_info=exc)
            if (not ex.started or ex.head is not None) and not ex.disconnected:
                await self._send_500(ex)  # nothing was written yet
            else:
                self.transport.close()
        else:
            if result is not None:
                log.error("ASGI callable should return None, but returned %r.", result)
                self.transport.close()
            elif not ex.started and not ex.disconnected:
                log.error("ASGI callable returned without starting response.")
                await self._send_500(ex)
            elif not ex.complete and not ex.disconnected:
                log.error("ASGI callable returned without completing response.")
                self.transport.close()

    @staticmethod
    async def _send_500(ex: _Exchange) -> None:
        ex.started = ex.chunked = False
        ex.head = None
        await _plain(ex.send, 500, b"Internal Server Error")

    def done(self, ex: _Exchange) -> None:
        """The response of `ex` is complete: next pipelined request, or wait for one."""
        self.server_state.total_requests += 1
        if self.current is ex:
            self.current = None
        if not ex.keep_alive or self.closing:
            self.closing = True
            self.transport.close()
            return
        if self.queue:
            self._run(self.queue.popleft())
        self.resume_reading()
        if self.current is None:
            self._idle()

    def default_head(self) -> bytes:
        """uvicorn's default headers (date, server) as header lines. uvicorn replaces the list
        once a second (the date); it is rendered once per list, not once per response."""
        headers = self.server_state.default_headers
        cached = _DEFAULT_HEAD
        if cached[0] is not headers:
            block = b"".join(b"%s: %s\r\n" % (n.lower(), v) for n, v in headers)
            if _BAD_NAME.search(b"".join(n for n, _ in headers)) or _BAD_VALUE.search(
                b"\t".join(v for _, v in headers)
            ):
                raise RuntimeError("Invalid default HTTP header (uvicorn --header).")
            cached[:] = [headers, block]
        return cached[1]  # type: ignore[no-any-return]

    # -- timers, flow control -------------------------------------------------------------------
    def _idle(self) -> None:
        self.idle_since = now = self.loop.time()
        if self.timer is None and not self.closing:
            self.timer = self.loop.call_at(now + self.tick, self._on_timer)

    def _on_timer(self) -> None:
        self.timer = None
        if self.closing:
            return
        now = self.loop.time()
        # waiting for a request head (bytes of one came) or for the body of the request the
        # app serves (a queued request's body is not read yet: its time has not begun)
        ex = self.current
        parsing = self.parsing
        if (self.in_head and self.head_size and parsing is None) or (
            ex is not None and ex is parsing
        ):
            if not self.reading_since:
                self.reading_since = now
            elif now - self.reading_since >= (
                self.header_timeout_s if parsing is None else self.body_timeout_s
            ):
                self._read_timeout()
                if self.closing:
                    return
        else:
            self.reading_since = 0.0
        if self.write_paused:
            if not self.stuck_since:
                self.stuck_since = now
            elif now - self.stuck_since >= self.write_timeout_s:
                log.info(
                    "a client took no response bytes for %.1f s (server.write_timeout_s): "
                    "connection aborted",
                    now - self.stuck_since,
                )
                self.closing = True
                self.transport.abort()  # connection_lost tells the app, which stops the request
                return
        if ex is not None or self.idle_since == 0.0:
            self.idle_since = now  # busy, or bytes came in: the keep-alive time starts again
            nxt = now + self.tick
        else:
            nxt = self.idle_since + self.keep_alive_s
            if nxt <= now:
                self.closing = True
                self.transport.close()
                return
            nxt = min(nxt, now + self.tick)
        self.timer = self.loop.call_at(nxt, self._on_timer)

    def _read_timeout(self) -> None:
        head = self.parsing is None  # else a body (or its trailers) is late
        ex = self.current
        if head and ex is not None:
            # an earlier request is being answered: do not cut it; read no more, and close
            # once its answer is complete
            self.stopped = True
            self.reading_since = 0.0
            ex.keep_alive = False
            self.pause_reading()
            return
        what, timeout = (
            (b"headers", self.header_timeout_s) if head else (b"body", self.body_timeout_s)
        )
        self._refuse(
            408,
            b"Request Timeout: the request %s did not arrive within %g s (server.%s_timeout_s)."
            % (what, timeout, b"header" if head else b"body"),
        )

    def pause_reading(self) -> None:
        if not self.read_paused and not self.closing:
            self.read_paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.read_paused and not self.closing and not self.stopped:
            self.read_paused = False
            self.transport.resume_reading()

    async def drain(self) -> None:
        waiter = self.loop.create_future()
        self.drain_waiters.append(waiter)
        await waiter

    def _wake_writers(self) -> None:
        waiters, self.drain_waiters = self.drain_waiters, []
        for w in waiters:
            if not w.done():
                w.set_result(None)

    def _bad_request(self, msg: bytes) -> None:
        log.warning("Invalid HTTP request received.")
        self._answer_and_close(400, msg)

    def _refuse(self, status: int, msg: bytes) -> None:
        """A request over a limit or against the protocol: a short plain answer, then close."""
        log.warning("HTTP request refused with %d: %s", status, msg.decode("latin-1"))
        self._answer_and_close(status, msg)

    def _answer_and_close(self, status: int, msg: bytes) -> None:
        ex = self.current
        if ex is None or not ex.started:
            self.transport.write(
                b"%scontent-type: text/plain; charset=utf-8\r\n"
                b"content-length: %d\r\nconnection: close\r\n\r\n%s"
                % (_STATUS[status], len(msg), msg)
            )
            if ex is not None:  # its app is reading the body: it learns what the client got
                ex.answered = status
                ex.disconnected = True
                ex.wake()
        self.closing = True
        self._gone()  # an app still reading this request sees the client gone, writes nothing
        self.transport.close()

    def _stop(self) -> None:
        """max_pipelined_requests are waiting: parse nothing more; the last of them is answered
        with `connection: close` and the connection closed after it. HTTP/1.1 clients send the
        requests that got no answer again (RFC 9112, 9.3.2)."""
        self.stopped = True
        self.pause_reading()
        last = self.queue[-1] if self.queue else self.current
        if last is not None:
            last.keep_alive = False

    def _refuse_connection(self) -> None:
        """Over max_connections: a 503 and close, before reading anything."""
        self.closing = True
        msg = b"Service Unavailable: too many open connections (server.max_connections)."
        self.transport.write(
            b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain; charset=utf-8\r\n"
            b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(msg), msg)
        )
        self.transport.close()
        now = self.loop.time()
        if now - _last_refusal_log[0] > _QUIET_S:
            _last_refusal_log[0] = now
            log.warning(
                "%d open connections (server.max_connections): new ones are refused with 503",
                self.max_connections,
            )

    # -- uvicorn's server calls this on graceful shutdown ---------------------------------------
    def shutdown(self) -> None:
        ex = self.current
        if ex is None or ex.complete:
            self.closing = True
            self.transport.close()
        else:
            ex.keep_alive = False  # finish this response, then close


async def _plain(send: Any, status: int, body: bytes) -> None:
    """A short text/plain response that closes the connection (as uvicorn's own)."""
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"text/plain; charset=utf-8"),
                (b"content-length", b"%d" % len(body)),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def _service_unavailable(scope: Any, receive: Any, send: Any) -> None:
    await _plain(send, 503, b"Service Unavailable")
