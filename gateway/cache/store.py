"""Which requests the response cache serves, under what key, and where entries live.

A request is looked up when the cache applies to it: `cache: true` on the route or model
name it asked for, or on its gateway key, or the header `x-tollgate-cache: 1` (and
`x-tollgate-cache: 0` turns it off for one request). Of those, only deterministic requests
are cached: chat and completions with `temperature: 0` given explicitly or a `seed`, and
n absent or 1 (completions: no `logprobs` either); embeddings always. The key is the sha256
of the endpoint kind, the gateway key id (unless `cache.shared_across_keys`) and the body
serialised with sorted keys, minus the fields that do not change the answer (`stream`,
`stream_options`, `user`, `metadata`, `store`): every other field counts, the model name
the client asked for included.

Entries live in this process's memory (an LRU bounded by `cache.max_entries` and
`cache.max_bytes`, each expiring after `cache.ttl_s`) or in Redis (`cache.backend: redis`;
keys `{tollgate-cache}:<sha256>`, all in one slot, expiry by SET PX, size bounded by Redis
itself; every gateway process on that Redis serves the others' entries). Without
`cache.redis_url` it is the store's Redis, a Redis Cluster when `store.redis_cluster`.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import orjson

from gateway.cache import sse
from gateway.config import CacheConfig, RoutingConfig

log = logging.getLogger("tollgate.cache")

REDIS_PREFIX = "{tollgate-cache}:"
SKIP = ""  # `ResponseCache.key_for`: the cache applies, but the request is not deterministic
_IGNORED = ("stream", "stream_options", "user", "metadata", "store")
_ENTRY_OVERHEAD = 300  # bytes an entry costs besides its answer (object, key, index)


@dataclass(slots=True)
class Entry:
    """A complete 200 answer and what the original request cost. `body` is the JSON answer,
    or for a streamed original (`sse`) the SSE body its client got, [DONE] included, with
    the usage chunk when `sse_usage`: a streamed hit that asks the same replays it as it is,
    anything else is served from the completion it adds up to (`answer()`, assembled once
    an entry in memory)."""

    body: bytes
    model: str | None
    tier: str | None
    cost_usd: float
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    tokens_estimated: bool
    kind: str = "chat"
    sse: bool = False
    sse_usage: bool = False
    expires: float = 0.0  # time.monotonic() (memory backend)
    assembled: bytes | None = None

    def answer(self) -> bytes | None:
        """The JSON completion (None: a stream that does not add up to one)."""
        if not self.sse:
            return self.body
        if self.assembled is None:
            self.assembled = sse.assemble([self.body], self.kind, self.usage())
        return self.assembled

    def usage(self) -> dict[str, Any] | None:
        """The original's usage as recorded (for a stream whose client did not ask for it)."""
        if self.tokens_estimated:
            return None
        u: dict[str, Any] = {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
        }
        if self.cached_tokens:
            u["prompt_tokens_details"] = {"cached_tokens": self.cached_tokens}
        return u

    def encode(self) -> bytes:
        meta = [
            self.model,
            self.tier,
            self.cost_usd,
            self.prompt_tokens,
            self.completion_tokens,
            self.cached_tokens,
            self.tokens_estimated,
            self.kind,
            self.sse,
            self.sse_usage,
        ]
        return orjson.dumps(meta) + b"\n" + self.body

    @classmethod
    def decode(cls, raw: bytes) -> Entry:
        meta, _, body = raw.partition(b"\n")
        m, t, c, pt, ct, cached, est, kind, is_sse, sse_usage = orjson.loads(meta)
        return cls(
            body, m, t, float(c), int(pt), int(ct), int(cached), bool(est), str(kind),
            bool(is_sse), bool(sse_usage),
        )  # fmt: skip


class _Memory:
    """An LRU of entries with a count bound, a byte bound and an expiry time each."""

    def __init__(self) -> None:
        self._d: OrderedDict[str, Entry] = OrderedDict()
        self.bytes = 0

    def __len__(self) -> int:
        return len(self._d)

    def get(self, key: str) -> Entry | None:
        e = self._d.get(key)
        if e is None:
            return None
        if e.expires <= time.monotonic():
            self._drop(key)
            return None
        self._d.move_to_end(key)
        return e

    def put(self, key: str, e: Entry, ttl: float, max_entries: int, max_bytes: int) -> None:
        if key in self._d:
            self._drop(key)
        e.expires = time.monotonic() + ttl
        self._d[key] = e
        self.bytes += len(e.body) + _ENTRY_OVERHEAD
        while self._d and (len(self._d) > max_entries or self.bytes > max_bytes):
            self._drop(next(iter(self._d)))

    def _drop(self, key: str) -> None:
        e = self._d.pop(key)
        self.bytes -= len(e.body) + _ENTRY_OVERHEAD


class ResponseCache:
    """The gateway's response cache. `configure` takes each (re)loaded routing file: which
    names and keys opt in, the TTL and bounds; the backend is chosen at start."""

    def __init__(self, cfg: RoutingConfig) -> None:
        c = cfg.cache
        self.backend = c.backend
        self._mem = _Memory()
        self._redis: Any = None
        if c.backend == "redis":
            import redis.asyncio as aioredis
            from redis.asyncio.cluster import RedisCluster

            t = c.redis_timeout_s
            if c.redis_url is None and cfg.store.redis_cluster:  # the store's Redis Cluster
                self._redis = RedisCluster.from_url(
                    cfg.store.redis_url, socket_timeout=t, socket_connect_timeout=t
                )
            else:
                url = c.redis_url or cfg.store.redis_url
                self._redis = aioredis.from_url(url, socket_timeout=t, socket_connect_timeout=t)
        self._warned = 0.0
        self.configure(cfg)

    def configure(self, cfg: RoutingConfig) -> None:
        c: CacheConfig = cfg.cache
        if c.backend != self.backend:
            log.warning("cache.backend changed to %s; it takes effect on restart", c.backend)
        self.cfg = c
        self.enabled = c.enabled
        self.names = frozenset(
            [m.name for m in cfg.models if m.cache] + [r.name for r in cfg.routes if r.cache]
        )
        self.keys = frozenset(k.id for k in cfg.auth.keys if k.cache)

    def __len__(self) -> int:
        return len(self._mem)

    # -- which requests, which key ------------------------------------------------------------
    def key_for(
        self,
        headers: Iterable[tuple[bytes, bytes]],
        kind: str,
        body: dict[str, Any],
        key_id: str | None,
    ) -> str | None:
        """None: the cache does not apply to this request; SKIP: it applies, but the request
        is not deterministic; else the entry's key."""
        if not self.enabled:
            return None
        asked: bool | None = None
        for k, v in headers:
            if k == b"x-tollgate-cache":
                asked = v.strip().lower() in (b"1", b"true", b"yes")
        if asked is None:
            asked = body["model"] in self.names or key_id in self.keys
        if not asked:
            return None
        if not deterministic(kind, body):
            return SKIP
        kept = body
        for name in _IGNORED:
            if name in body:  # most bodies have none of them: no copy then
                kept = {f: v for f, v in body.items() if f not in _IGNORED}
                break
        h = hashlib.sha256(kind.encode())
        h.update(b"\0")
        if not self.cfg.shared_across_keys and key_id is not None:
            h.update(key_id.encode())
        h.update(b"\0")
        try:
            h.update(orjson.dumps(kept, option=orjson.OPT_SORT_KEYS))
        except orjson.JSONEncodeError:  # too deep to serialise: not cached
            return SKIP
        return h.hexdigest()

    # -- entries ------------------------------------------------------------------------------
    async def get(self, key: str) -> Entry | None:
        if self._redis is None:
            return self._mem.get(key)
        try:
            raw = await self._redis.get(REDIS_PREFIX + key)
            return None if raw is None else Entry.decode(raw)
        except Exception as e:  # Redis down or slow: a miss, never a failed request
            self._warn(e)
            return None

    async def put(self, key: str, e: Entry) -> bool:
        """Keep a complete answer (False: larger than cache.max_entry_bytes, not kept). With
        Redis the write is awaited, before the answer's last byte goes out: once a client has
        its answer, every gateway sharing the Redis can serve it again."""
        c = self.cfg
        if len(e.body) > c.max_entry_bytes:
            return False
        if self._redis is None:
            self._mem.put(key, e, c.ttl_s, c.max_entries, c.max_bytes)
            return True
        try:
            await self._redis.set(REDIS_PREFIX + key, e.encode(), px=max(1, int(c.ttl_s * 1000)))
        except Exception as ex:
            self._warn(ex)
            return False
        return True

    def _warn(self, e: Exception) -> None:
        now = time.monotonic()
        if now - self._warned > 10.0:
            self._warned = now
            log.warning("response cache: redis unavailable (%s); requests go upstream", e)

    async def close(self) -> None:
        if self._redis is not None:
            await self._redis.aclose()


def deterministic(kind: str, body: dict[str, Any]) -> bool:
    """Whether the same request brings the same answer (the rule in the module docstring)."""
    if kind == "embeddings":
        return not body.get("stream")
    n = body.get("n")
    if n is not None and n != 1:
        return False
    if kind == "completions" and body.get("logprobs") is not None:
        return False
    t = body.get("temperature")
    seed = body.get("seed")
    zero = t is not None and not isinstance(t, bool) and t == 0
    seeded = isinstance(seed, int) and not isinstance(seed, bool)
    return zero or seeded
