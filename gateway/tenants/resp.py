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
import hashlib
from typing import Any
from urllib.parse import unquote, urlsplit


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
        waiting, self._waiting = self._waiting, collections.deque()
        for fut in waiting:
            if not fut.done():
                fut.set_exception(RespError(f"the connection to Redis closed ({exc})"))

    async def call(self, *args: Any) -> Any:
        proto = self._proto or await self._connect()
        assert proto.transport is not None
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._waiting.append(fut)
        proto.transport.write(encode(args))
        async with asyncio.timeout(self.timeout):
            return await fut

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

    def close(self) -> None:
        if self._proto is not None and self._proto.transport is not None:
            self._proto.transport.close()
        self._proto = None
