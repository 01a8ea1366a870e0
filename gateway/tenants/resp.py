"""A lean Redis client for the limits' hot path: one pipelined connection (RESP2), commands
written as they come, replies matched to callers in order.

redis-py's asyncio client cost ~300 µs of CPU per command on the gateway's core (its pool,
health checks and parser are Python layers per call); this costs a few µs, so that a
reservation in Redis adds little more than the round trip. A single Redis only: a Redis
Cluster (`limits.redis_cluster`) goes through redis-py's cluster client.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import hashlib
import logging
from typing import Any
from urllib.parse import unquote, urlsplit

log = logging.getLogger("tollgate.limits")


def _log_failure(fut: asyncio.Future[Any]) -> None:
    if not fut.cancelled() and fut.exception() is not None:
        log.warning("a limits command to Redis failed: %s", fut.exception())


class RespError(Exception):
    """An error reply (`-ERR ...`), or the connection broke before the reply came."""


def encode(args: tuple[Any, ...]) -> bytes:
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        b = a if isinstance(a, bytes) else str(a).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(b), b))
    return b"".join(out)


def parse(buf: bytes | bytearray, at: int) -> tuple[Any, int] | None:
    """One reply from `buf` at offset `at`: (value, offset after it), None if it has not all
    arrived yet (a nil reply is (None, offset)). An error reply comes as a RespError."""
    end = buf.find(b"\r\n", at)
    if end < 0:
        return None
    kind, line = buf[at], bytes(buf[at + 1 : end])
    nxt = end + 2
    if kind == 43:  # +
        return line, nxt
    if kind == 45:  # -
        return RespError(line.decode("utf-8", "replace")), nxt
    if kind == 58:  # :
        return int(line), nxt
    if kind == 36:  # $
        n = int(line)
        if n < 0:
            return None, nxt
        if len(buf) < nxt + n + 2:
            return None
        return bytes(buf[nxt : nxt + n]), nxt + n + 2
    if kind == 42:  # *
        n = int(line)
        if n < 0:
            return None, nxt
        items = []
        for _ in range(n):
            got = parse(buf, nxt)
            if got is None:
                return None
            item, nxt = got
            items.append(item)
        return items, nxt
    raise RespError(f"unexpected reply type {chr(kind)!r} from Redis")


class _Proto(asyncio.Protocol):
    def __init__(self, client: RespClient) -> None:
        self.client = client
        self.buf = bytearray()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        at = 0
        waiting = self.client._waiting
        while at < len(buf):
            got = parse(buf, at)
            if got is None:
                break
            value, at = got
            if waiting:
                fut = waiting.popleft()
                sent = self.client._sent_at
                if len(sent) > len(waiting):
                    sent.popleft()
                if not fut.done():  # a caller that timed out left its future behind
                    if isinstance(value, RespError):
                        fut.set_exception(value)
                    else:
                        fut.set_result(value)
        del buf[:at]

    def connection_lost(self, exc: Exception | None) -> None:
        self.client._lost(exc)


class RespClient:
    def __init__(self, url: str, timeout: float = 2.0) -> None:
        u = urlsplit(url)
        self.host = u.hostname or "127.0.0.1"
        self.port = u.port or 6379
        self.db = int(u.path.strip("/") or 0)
        self.username = unquote(u.username) if u.username else None
        self.password = unquote(u.password) if u.password else None
        self.timeout = timeout
        self._proto: _Proto | None = None
        self._waiting: collections.deque[asyncio.Future[Any]] = collections.deque()
        self._sent_at: collections.deque[float] = collections.deque()  # when each was sent
        self._watchdog: asyncio.TimerHandle | None = None
        self._connecting: asyncio.Lock | None = None
        self._shas: dict[str, str] = {}

    async def _connect(self) -> _Proto:
        if self._connecting is None:
            self._connecting = asyncio.Lock()
        async with self._connecting:
            if self._proto is not None:
                return self._proto
            loop = asyncio.get_running_loop()
            async with asyncio.timeout(self.timeout):
                _, proto = await loop.create_connection(lambda: _Proto(self), self.host, self.port)
            self._proto = proto
            if self.password is not None:
                auth = (self.username, self.password) if self.username else (self.password,)
                await self.call("AUTH", *auth)
            if self.db:
                await self.call("SELECT", self.db)
            return proto

    def _lost(self, exc: Exception | None) -> None:
        self._proto = None
        self._sent_at.clear()
        waiting, self._waiting = self._waiting, collections.deque()
        for fut in waiting:
            if not fut.done():
                fut.set_exception(RespError(f"the connection to Redis closed ({exc})"))

    def send(self, proto: _Proto, args: tuple[Any, ...]) -> asyncio.Future[Any]:
        """Write one command; its reply resolves the future. One timer per connection (not
        one per command) watches for a reply that does not come within the timeout: the
        connection is then closed, which fails every command still waiting."""
        assert proto.transport is not None
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()
        self._waiting.append(fut)
        self._sent_at.append(loop.time())
        proto.transport.write(encode(args))
        if self._watchdog is None:
            self._watchdog = loop.call_later(self.timeout, self._watch, proto)
        return fut

    def _watch(self, proto: _Proto) -> None:
        self._watchdog = None
        sent, waiting = self._sent_at, self._waiting
        while len(sent) > len(waiting):  # replies arrived for these
            sent.popleft()
        if not sent or self._proto is not proto:
            return
        loop = asyncio.get_running_loop()
        late = loop.time() - sent[0]
        if late >= self.timeout:
            if proto.transport is not None:
                proto.transport.abort()  # connection_lost fails the waiting commands
            self._lost(TimeoutError(f"no reply from Redis in {self.timeout:g} s"))
            return
        self._watchdog = loop.call_later(self.timeout - late, self._watch, proto)

    async def call(self, *args: Any) -> Any:
        proto = self._proto or await self._connect()
        return await self.send(proto, args)

    async def script(self, source: str, keys: list[str], args: list[Any]) -> Any:
        """EVALSHA, or EVAL once when this Redis does not have the script yet."""
        sha = self._shas.get(source)
        if sha is None:
            sha = self._shas[source] = hashlib.sha1(source.encode()).hexdigest()
        try:
            return await self.call("EVALSHA", sha, len(keys), *keys, *args)
        except RespError as e:
            if not str(e).startswith("NOSCRIPT"):
                raise
            return await self.call("EVAL", source, len(keys), *keys, *args)

    def call_nowait(self, *args: Any) -> bool:
        """Send a command without waiting for its reply (an error reply is logged); False
        when there is no connection now."""
        proto = self._proto
        if proto is None:
            return False
        self.send(proto, args).add_done_callback(_log_failure)
        return True

    def script_nowait(self, source: str, keys: list[str], args: list[Any]) -> bool:
        """Send a script without waiting for its reply (an error reply is logged); False
        when there is no connection now (then `await script(...)`)."""
        proto = self._proto
        if proto is None:
            return False
        sha = self._shas.get(source)
        if sha is None:
            sha = self._shas[source] = hashlib.sha1(source.encode()).hexdigest()
        fut = self.send(proto, ("EVALSHA", sha, len(keys), *keys, *args))
        fut.add_done_callback(functools.partial(self._nowait_done, source, keys, args))
        return True

    def _nowait_done(
        self, source: str, keys: list[str], args: list[Any], fut: asyncio.Future[Any]
    ) -> None:
        if fut.cancelled() or fut.exception() is None:
            return
        e = fut.exception()
        if str(e).startswith("NOSCRIPT") and self._proto is not None:
            again = self.send(self._proto, ("EVAL", source, len(keys), *keys, *args))
            again.add_done_callback(_log_failure)
        else:
            _log_failure(fut)

    def close(self) -> None:
        if self._proto is not None and self._proto.transport is not None:
            self._proto.transport.close()
        self._proto = None
