"""Conversation stickiness: the turns of one conversation stay where the provider's prompt
cache is warm.

A conversation is named by the request header `router.sticky.session_header`
(`x-tollgate-session`), else by its leading messages (the system messages and the first
other turn, which every later turn repeats), always within one gateway key. For each one the
map keeps what served the previous turn (`Turn`: model, endpoint, when, the tokens of its
prompt and answer, which the next turn's prompt starts with). A routed request of a known
conversation stays on that model and endpoint unless the router's expected saving from a
switch (`switch_gain`) is more than the cached prefix it would lose (`cache_value`):

    cache value = (input price - cached input price) x prefix tokens x P(still warm)
    P(still warm) = 1 within the model's prompt_cache_ttl_s of the previous turn, then
                    exp(-(age - ttl) / ttl)

The map is bounded (`max_entries`, least recently used out; `ttl_s`) in each process, or
shared by every replica in Redis (`backend: redis`; keys `{tollgate-sticky}:<blake2b>` with an
expiry, one hash slot, so a Redis Cluster takes them as the other Redis users' keys).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

from gateway.config import RoutingConfig, StickyConfig

if TYPE_CHECKING:
    from gateway.accounting.pricing import Rates
    from gateway.routing.policies import Decision, Policy

log = logging.getLogger("tollgate.sticky")

REDIS_PREFIX = "{tollgate-sticky}:"
NEW, STAYED, KEPT, SWITCHED = "new", "stayed", "kept", "switched"
# kinds whose turns repeat a message list: chat, and the API faces, whose bodies the proxy has
# translated to chat before it asks (gateway/api/face.py)
_PREFIX_KINDS = ("chat", "responses", "messages")
_LEADING = ("system", "developer")  # roles that come before a conversation's first turn


@dataclass(slots=True)
class Turn:
    """What served a conversation's previous turn."""

    model: str
    endpoint: int  # index in the model's endpoints
    at: float  # unix seconds
    prefix_tokens: int  # its prompt and answer tokens: what the next prompt starts with

    def encode(self) -> bytes:
        return orjson.dumps([self.model, self.endpoint, self.at, self.prefix_tokens])

    @classmethod
    def decode(cls, raw: bytes) -> Turn | None:
        try:
            m, e, at, n = orjson.loads(raw)
            return cls(str(m), int(e), float(at), int(n))
        except (orjson.JSONDecodeError, TypeError, ValueError):
            return None


def conversation_key(
    session: bytes | None, key_id: str | None, kind: str, body: dict[str, Any]
) -> bytes | None:
    """What names the conversation a request belongs to, within its gateway key: its session
    header's value, else (chat, and responses and messages as translated to chat) its
    leading messages (the system ones and the first other turn); None when it names none
    (a completions prompt without the header). `StickyMap.key` turns it into the map's key."""
    scope = (key_id or "").encode()
    if session:
        return scope + b"\0s\0" + session[:512]
    if kind not in _PREFIX_KINDS:
        return None
    turns = body.get("messages")
    if not isinstance(turns, list) or not turns:
        return None
    first = turns[0]
    if not (isinstance(first, dict) and first.get("role") in _LEADING):
        lead: Any = first  # the usual chat: no system message, the first turn names it
    else:
        lead = []
        for t in turns:
            lead.append(t)
            if not (isinstance(t, dict) and t.get("role") in _LEADING):
                break
    try:
        return scope + b"\0p\0" + orjson.dumps(lead)
    except orjson.JSONEncodeError:
        return None


def warm_chance(age_s: float, ttl_s: float) -> float:
    """P(the provider still has the prefix cached) `age_s` after the previous turn."""
    if age_s <= ttl_s:
        return 1.0
    return math.exp(-(age_s - ttl_s) / ttl_s)


def cache_value(r: Rates, prefix_tokens: int, age_s: float, ttl_s: float) -> float:
    """USD a switch would lose: the discount on the prefix the previous model has cached."""
    return max(0.0, r.input - r.cached_input) * prefix_tokens * warm_chance(age_s, ttl_s)


def switch_gain(policy: Policy, decision: Decision, old: str, new: str) -> float:
    """The router's expected saving (USD) from answering with `new` instead of `old`.
    max_utility: the utility difference in USD (quality / cost_weight + the cost saved;
    infinite at cost_weight 0 when `new` is predicted better). Other policies: the cost
    saved; infinite when the policy picked a dearer model (a quality it needs: the
    threshold's strong model, a target `old` does not reach)."""
    c_old, c_new = decision.cost.get(old, 0.0), decision.cost.get(new, 0.0)
    q_old, q_new = decision.quality.get(old, 0.0), decision.quality.get(new, 0.0)
    w = getattr(policy, "cost_weight", None)
    if w is not None:
        if w <= 0:
            return math.inf if q_new > q_old else c_old - c_new
        return (q_new - q_old) / w + (c_old - c_new)
    return c_old - c_new if c_new < c_old else math.inf


class StickyMap:
    """conversation key -> Turn: an LRU per process, or Redis shared by the replicas."""

    def __init__(self, cfg: RoutingConfig) -> None:
        c = cfg.router.sticky
        self.backend = c.backend
        # memory backend: key -> Turn, oldest first (a plain dict: a put moves its key to
        # the end, the first key is the least recently used)
        self._mem: dict[int, Turn] = {}
        self._lean: Any = None
        self._cluster: Any = None
        if c.backend == "redis":
            url = c.redis_url or cfg.store.redis_url
            cluster = c.redis_cluster
            if cluster is None:
                cluster = c.redis_url is None and cfg.store.redis_cluster
            if cluster:
                from redis.asyncio.cluster import RedisCluster

                t = c.redis_timeout_s
                self._cluster = RedisCluster.from_url(
                    url, socket_timeout=max(t, 0.5), socket_connect_timeout=max(t, 0.5)
                )
            else:
                from gateway.tenants.resp import RespClient

                self._lean = RespClient(url, timeout=max(c.redis_timeout_s, 0.5))
        self.local = self._lean is None and self._cluster is None  # get_local, no await
        self._cluster_ready = False
        self._tasks: set[asyncio.Task[Any]] = set()
        self._warned = 0.0
        self.configure(cfg)

    def configure(self, cfg: RoutingConfig) -> None:
        c: StickyConfig = cfg.router.sticky
        if c.backend != self.backend:
            log.warning(
                "router.sticky.backend changed to %s; it takes effect on restart", c.backend
            )
        self.cfg = c
        self.enabled = c.enabled
        self.header = c.session_header.encode()
        self.ttl_s = c.ttl_s
        self.max_entries = c.max_entries

    def __len__(self) -> int:
        return len(self._mem)

    def key(self, conversation: bytes) -> Any:
        """The map's key for a `conversation_key`: in memory Python's 64-bit hash of it
        (per process, like the map), in Redis a 128-bit BLAKE2b (stable across replicas)."""
        if self.local:
            return hash(conversation)
        return hashlib.blake2b(conversation, digest_size=16).hexdigest()

    def get_local(self, key: Any) -> Turn | None:
        """The memory backend's lookup (a dict lookup: no coroutine on the hot path)."""
        t = self._mem.get(key)
        if t is not None and time.time() - t.at > self.ttl_s:
            del self._mem[key]
            return None
        return t

    async def get(self, key: Any) -> Turn | None:
        if self.local:
            return self.get_local(key)
        if self._cluster is not None and not self._cluster_ready:
            try:  # the cluster's slot map, once, outside the lookup's short timeout
                async with asyncio.timeout(2.0):
                    await self._cluster.initialize()
                self._cluster_ready = True
            except Exception as e:
                self._warn(e)
                return None
        try:
            async with asyncio.timeout(self.cfg.redis_timeout_s):
                if self._lean is not None:
                    raw = await self._lean.call("GET", REDIS_PREFIX + key)
                else:
                    raw = await self._cluster.get(REDIS_PREFIX + key)
        except Exception as e:  # Redis down or slow: a turn with no known previous one
            self._warn(e)
            return None
        return None if raw is None else Turn.decode(raw)

    def put(self, key: Any, turn: Turn) -> None:
        """Keep what served this turn (Redis: sent without waiting for the reply)."""
        if self.local:
            mem = self._mem
            mem.pop(key, None)
            mem[key] = turn
            while len(mem) > self.max_entries:
                del mem[next(iter(mem))]
            return
        args = ("SET", REDIS_PREFIX + key, turn.encode(), "PX", max(1, int(self.ttl_s * 1000)))
        if self._lean is not None and self._lean.call_nowait(*args):
            return
        task = asyncio.get_running_loop().create_task(self._put_later(args))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _put_later(self, args: tuple[Any, ...]) -> None:
        try:
            if self._lean is not None:
                await self._lean.call(*args)
            else:
                await self._cluster.set(args[1], args[2], px=args[4])
        except Exception as e:
            self._warn(e)

    def _warn(self, e: Exception) -> None:
        now = time.monotonic()
        if now - self._warned > 10.0:
            self._warned = now
            log.warning("conversation stickiness: redis unavailable (%s); turns routed afresh", e)

    async def close(self) -> None:
        if self._lean is not None:
            self._lean.close()
        if self._cluster is not None:
            await self._cluster.aclose()
