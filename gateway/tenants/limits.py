"""Rate limits and budgets: requests and tokens per minute per key and per model, spend per
calendar window per key, shared by every worker and replica.

Each limited scope (a key: `key:<id>`, a model: `model:<name>`) has token buckets for
requests and tokens (capacity = the per-minute value, refilled continuously at value / 60
per second) and, for a key with a budget, its spend in the current UTC day, ISO week or
month. A request reserves before the upstream call (1 request; its estimated prompt tokens
plus `max_tokens`; its estimated maximum cost) and settles on its real usage after the
answer. A reservation succeeds as long as the spend so far is under the budget, so
concurrent requests overspend a budget by at most one request's estimated maximum cost.

Backends: `local`, one memory-mapped file every worker process of the host shares, each
operation under an exclusive `flock` of that file (a few µs); `redis`, one Lua script per
scope and operation, every key of a scope in one hash slot (`{tollgate-limits:<scope>}`),
so a Redis Cluster takes it too. When nothing is limited, the proxy does no work at all.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import fcntl
import hashlib
import logging
import math
import mmap
import os
import struct
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.accounting.records import OVER_BUDGET, RATE_LIMITED
from gateway.config import (
    BudgetSoftConfig,
    GatewayKey,
    LimitsConfig,
    RoutingConfig,
    StoreConfig,
)
from gateway.errors import GatewayError
from gateway.routing.runtime import Runtime
from gateway.tenants.resp import RespClient

log = logging.getLogger("tollgate.limits")

# the kinds a rejection is counted under (tollgate_limit_rejections_total{kind})
RPM, TPM, BUDGET = "rpm", "tpm", "budget"


class LimitExceeded(GatewayError):
    """Over a rate limit (429 rate_limit_exceeded) or a budget (429 insufficient_quota)."""

    status = 429
    type = "rate_limit_error"
    code = RATE_LIMITED

    def __init__(
        self, message: str, kind: str, scope: str, headers: list[tuple[bytes, bytes]], wait: float
    ) -> None:
        super().__init__(message, retry_after=wait)
        self.kind = kind
        self.scope = scope
        self.rate_headers = headers
        if kind == BUDGET:
            self.type = self.code = OVER_BUDGET

    def headers(self) -> list[tuple[bytes, bytes]]:
        return [*super().headers(), *self.rate_headers]


@dataclass(frozen=True, slots=True)
class Spec:
    """One scope's limits (None: not limited in that dimension)."""

    scope: str  # "key:<id>" | "model:<name>"
    rpm: int | None
    tpm: int | None
    budget: float | None = None
    window: str = "month"
    soft_share: float | None = None


@dataclass(slots=True)
class Outcome:
    """What a reservation saw: the buckets' levels after it (for the x-ratelimit headers),
    the spend so far, and on refusal which limit and how long to wait."""

    ok: bool
    req_level: float = 0.0
    tok_level: float = 0.0
    spent: float = 0.0
    kind: str = ""
    wait: float = 0.0


_WINDOWS: dict[str, tuple[float, float, int]] = {}  # kind -> (start, end, id) last seen


def window_of(window: str, now: float) -> tuple[int, float]:
    """(a number naming the UTC calendar window `now` is in, seconds until it ends)."""
    got = _WINDOWS.get(window)
    if got is not None and got[0] <= now < got[1]:
        return got[2], got[1] - now
    day = int(now // 86400)
    if window == "day":
        wid, start, end = day, day * 86400.0, (day + 1) * 86400.0
    elif window == "week":  # ISO weeks start on Monday; 1970-01-01 was a Thursday
        wid = (day + 3) // 7
        start = (wid * 7 - 3) * 86400.0
        end = start + 7 * 86400.0
    else:
        d = datetime.datetime.fromtimestamp(now, datetime.UTC)
        wid = d.year * 12 + d.month - 1
        start = datetime.datetime(d.year, d.month, 1, tzinfo=datetime.UTC).timestamp()
        nxt = datetime.datetime((wid + 1) // 12, (wid + 1) % 12 + 1, 1, tzinfo=datetime.UTC)
        end = nxt.timestamp()
    _WINDOWS[window] = (start, end, wid)
    return wid, end - now


def _duration(s: float) -> str:
    """OpenAI's reset format: 1s, 6m0s, 1h2m3s, 20ms."""
    if s < 1:
        return f"{max(0, round(s * 1000))}ms"
    s = math.ceil(s)
    h, rest = divmod(s, 3600)
    m, sec = divmod(rest, 60)
    if h:
        return f"{h}h{m}m{sec}s"
    return f"{m}m{sec}s" if m else f"{sec}s"


def rate_headers(spec: Spec, o: Outcome) -> list[tuple[bytes, bytes]]:
    """OpenAI's x-ratelimit-* headers for a scope's buckets after a reservation."""
    h: list[tuple[bytes, bytes]] = []
    for what, limit, level in (
        (b"requests", spec.rpm, o.req_level),
        (b"tokens", spec.tpm, o.tok_level),
    ):
        if limit is None:
            continue
        level = max(0.0, level)
        h += [
            (b"x-ratelimit-limit-" + what, b"%d" % limit),
            (b"x-ratelimit-remaining-" + what, b"%d" % int(level)),
            (b"x-ratelimit-reset-" + what, _duration((limit - level) * 60 / limit).encode()),
        ]
    return h


def _take(level: float, ts: float, cap: int, need: float, now: float) -> tuple[float, float]:
    """A bucket refilled to `now`, and the wait until it holds `need` (at most its capacity:
    a request larger than a minute's worth passes on a full bucket)."""
    level = float(cap) if ts <= 0 else min(float(cap), level + (now - ts) * cap / 60.0)
    need = min(need, float(cap))
    return level, 0.0 if level >= need else (need - level) * 60.0 / cap


# -- local: one shared memory-mapped file ------------------------------------------------
_MAGIC = b"TGLIMIT1"
_SLOTS = 4096
_SLOT = struct.Struct("<16s8d")  # scope hash; req level, ts; tok level, ts; window, spent, -, -
_HEAD = 64


class LocalBackend:
    """Every worker process of the host opens the same file; an operation holds the file's
    exclusive flock while it reads and writes one slot (open addressing by the scope's hash;
    a slot is never freed, 4,096 scopes at most).

    `readonly` (what `tollgate report` opens): the file must exist and is never written;
    a scope without a slot has spent nothing."""

    def __init__(self, path: str, readonly: bool = False) -> None:
        p = Path(path)
        size = _HEAD + _SLOTS * _SLOT.size
        self.readonly = readonly
        if readonly:
            self.fd = os.open(p, os.O_RDONLY)
            if os.fstat(self.fd).st_size != size or os.pread(self.fd, 8, 0) != _MAGIC:
                os.close(self.fd)
                raise ValueError(f"{p} is not a limits file of this version of the gateway")
            self.mem = mmap.mmap(self.fd, size, access=mmap.ACCESS_READ)
            self._slots: dict[str, int] = {}
            return
        p.parent.mkdir(parents=True, exist_ok=True)
        self.fd = os.open(p, os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        try:
            if os.fstat(self.fd).st_size != size or os.pread(self.fd, 8, 0) != _MAGIC:
                os.ftruncate(self.fd, 0)  # an old layout or a torn start: start counting anew
                os.ftruncate(self.fd, size)
                os.pwrite(self.fd, _MAGIC, 0)
        finally:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
        self.mem = mmap.mmap(self.fd, size)
        self._slots = {}

    def _slot(self, scope: str) -> int:
        """The offset of `scope`'s slot (called under the lock); -1 for a scope without
        one in a read-only file."""
        off = self._slots.get(scope)
        if off is not None:
            return off
        h = hashlib.blake2b(scope.encode(), digest_size=16).digest()
        i = int.from_bytes(h[:8], "little") % _SLOTS
        mem = self.mem
        for _ in range(_SLOTS):
            off = _HEAD + i * _SLOT.size
            got = mem[off : off + 16]
            if got == h:
                break
            if got == b"\0" * 16:
                if self.readonly:
                    return -1
                _SLOT.pack_into(mem, off, h, 0, 0, 0, 0, -1, 0, 0, 0)
                break
            i = (i + 1) % _SLOTS
        else:
            if self.readonly:
                return -1
            raise RuntimeError("the limits file is full (4,096 limited keys and models)")
        self._slots[scope] = off
        return off

    async def reserve(self, spec: Spec, tokens: float, cost: float) -> Outcome:
        return self.reserve_now(spec, tokens, cost, time.time())

    def reserve_now(self, spec: Spec, tokens: float, cost: float, now: float) -> Outcome:
        fd, mem = self.fd, self.mem
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            off = self._slot(spec.scope)
            h, rl, rt, tl, tt, win, spent, _, _ = _SLOT.unpack_from(mem, off)
            o = Outcome(True)
            if spec.budget is not None:
                w, left = window_of(spec.window, now)
                if win != w:
                    win, spent = w, 0.0
                o.spent = spent
                if spent >= spec.budget:
                    o.ok, o.kind, o.wait = False, BUDGET, left
            if spec.rpm is not None:
                rl, wait = _take(rl, rt, spec.rpm, 1.0, now)
                rt = now
                if wait and o.ok:
                    o.ok, o.kind, o.wait = False, RPM, wait
            if spec.tpm is not None:
                tl, wait = _take(tl, tt, spec.tpm, tokens, now)
                tt = now
                if wait and o.ok:
                    o.ok, o.kind, o.wait = False, TPM, wait
            if o.ok:
                rl -= 1.0
                tl -= tokens
                spent += cost
            o.req_level, o.tok_level = rl, tl
            _SLOT.pack_into(mem, off, h, rl, rt, tl, tt, win, spent, 0, 0)
            return o
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)

    def settle(self, spec: Spec, token_refund: float, cost_delta: float, at: float) -> None:
        """Give back the tokens reserved but not used (negative: take more), and add the
        real cost's difference to the estimate to the spend of the window reserved in."""
        fd, mem = self.fd, self.mem
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            off = self._slot(spec.scope)
            h, rl, rt, tl, tt, win, spent, _, _ = _SLOT.unpack_from(mem, off)
            if spec.tpm is not None:
                tl = min(float(spec.tpm), tl + token_refund)
            if spec.budget is not None and win == window_of(spec.window, at)[0]:
                spent = max(0.0, spent + cost_delta)
            _SLOT.pack_into(mem, off, h, rl, rt, tl, tt, win, spent, 0, 0)
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)

    async def spent(self, spec: Spec) -> float:
        fcntl.flock(self.fd, fcntl.LOCK_SH)
        try:
            off = self._slot(spec.scope)
            if off < 0:
                return 0.0
            win, spent = _SLOT.unpack_from(self.mem, off)[5:7]
        finally:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
        return float(spent) if win == window_of(spec.window, time.time())[0] else 0.0

    async def check(self) -> None:
        """Nothing to reach: the file is open."""

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.mem.close()
        with contextlib.suppress(OSError):
            os.close(self.fd)


# -- redis: one Lua script per scope and operation ---------------------------------------
# KEYS[1] the scope's buckets (hash: rl rt tl tt), KEYS[2] its spend in the current window.
# ARGV: rpm tpm budget (0 = none), tokens, cost, window ttl (s). Redis's own clock.
# Returns {ok, req level, tok level, spent, kind, wait} with the numbers as strings.
_RESERVE_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
local rpm, tpm, budget = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]) or 0
local tokens, cost = tonumber(ARGV[4]), tonumber(ARGV[5])
local b = redis.call('HMGET', KEYS[1], 'rl', 'rt', 'tl', 'tt')
local rl, rt, tl, tt = tonumber(b[1]) or 0, tonumber(b[2]) or 0, tonumber(b[3]) or 0,
  tonumber(b[4]) or 0
local ok, kind, wait, spent = 1, '', 0, 0
local function take(level, ts, cap, need)
  if ts <= 0 then level = cap else level = math.min(cap, level + (now - ts) * cap / 60) end
  need = math.min(need, cap)
  if level >= need then return level, 0 end
  return level, (need - level) * 60 / cap
end
if ARGV[3] ~= '' then
  spent = tonumber(redis.call('GET', KEYS[2]) or '0')
  if spent >= budget then ok, kind, wait = 0, 'budget', tonumber(ARGV[6]) end
end
if rpm > 0 then
  local w
  rl, w = take(rl, rt, rpm, 1)
  rt = now
  if w > 0 and ok == 1 then ok, kind, wait = 0, 'rpm', w end
end
if tpm > 0 then
  local w
  tl, w = take(tl, tt, tpm, tokens)
  tt = now
  if w > 0 and ok == 1 then ok, kind, wait = 0, 'tpm', w end
end
if ok == 1 then
  rl = rl - 1
  tl = tl - tokens
  if ARGV[3] ~= '' then
    redis.call('INCRBYFLOAT', KEYS[2], ARGV[5])
    redis.call('EXPIRE', KEYS[2], math.ceil(tonumber(ARGV[6])) + 86400)
  end
end
redis.call('HSET', KEYS[1], 'rl', tostring(rl), 'rt', tostring(rt), 'tl', tostring(tl),
  'tt', tostring(tt))
redis.call('EXPIRE', KEYS[1], 3600)
return {ok, tostring(rl), tostring(tl), tostring(spent), kind, tostring(wait)}
"""

# KEYS as above; ARGV: tpm (0 = none), token refund, cost delta (or '' for none)
_SETTLE_LUA = """
local tpm = tonumber(ARGV[1])
if tpm > 0 then
  local tl = tonumber(redis.call('HGET', KEYS[1], 'tl') or '0')
  redis.call('HSET', KEYS[1], 'tl', tostring(math.min(tpm, tl + tonumber(ARGV[2]))))
end
if ARGV[3] ~= '' and redis.call('EXISTS', KEYS[2]) == 1 then
  local v = tonumber(redis.call('INCRBYFLOAT', KEYS[2], ARGV[3]))
  if v < 0 then redis.call('SET', KEYS[2], '0', 'KEEPTTL') end
end
return 1
"""


def _redis_keys(spec: Spec, at: float) -> list[str]:
    tag = "{tollgate-limits:" + spec.scope + "}"
    win = window_of(spec.window, at)[0] if spec.budget is not None else 0
    return [tag + ":b", f"{tag}:spend:{spec.window}:{win}"]


class RedisBackend:
    """A single Redis through the lean pipelined client (gateway/tenants/resp.py); a Redis
    Cluster through redis-py's cluster client (it follows the slots)."""

    def __init__(self, url: str, cluster: bool) -> None:
        self.lean: RespClient | None = None
        self.r: Any = None
        if cluster:
            from redis.asyncio.cluster import RedisCluster

            self.r = RedisCluster.from_url(url, socket_timeout=2.0, socket_connect_timeout=2.0)
        else:
            self.lean = RespClient(url)
        self._tasks: set[asyncio.Task[Any]] = set()

    async def _script(self, source: str, keys: list[str], args: list[Any]) -> Any:
        if self.lean is not None:
            return await self.lean.script(source, keys, args)
        return await self.r.eval(source, len(keys), *keys, *args)

    async def reserve(self, spec: Spec, tokens: float, cost: float) -> Outcome:
        now = time.time()
        left = window_of(spec.window, now)[1] if spec.budget is not None else 0.0
        got = await self._script(
            _RESERVE_LUA,
            _redis_keys(spec, now),
            [
                spec.rpm or 0,
                spec.tpm or 0,
                "" if spec.budget is None else repr(spec.budget),
                repr(float(tokens)),
                repr(float(cost)),
                repr(left),
            ],
        )
        ok, rl, tl, spent, kind, wait = got
        return Outcome(
            ok == 1,
            float(rl),
            float(tl),
            float(spent),
            kind.decode() if isinstance(kind, bytes) else str(kind),
            float(wait),
        )

    def settle(self, spec: Spec, token_refund: float, cost_delta: float, at: float) -> None:
        args = [
            spec.tpm or 0,
            repr(float(token_refund)),
            "" if spec.budget is None else repr(float(cost_delta)),
        ]
        keys = _redis_keys(spec, at)
        if self.lean is not None and self.lean.script_nowait(_SETTLE_LUA, keys, args):
            return  # written on the connection; no task, no wait
        t = asyncio.get_running_loop().create_task(self._script(_SETTLE_LUA, keys, args))
        self._tasks.add(t)
        t.add_done_callback(self._settled)

    def _settled(self, t: asyncio.Task[Any]) -> None:
        self._tasks.discard(t)
        if not t.cancelled() and t.exception() is not None:
            log.warning("settling a limits reservation in Redis failed: %s", t.exception())

    async def check(self) -> None:
        """Raises when the Redis cannot be reached (one PING)."""
        await (self.lean.call("PING") if self.lean is not None else self.r.ping())

    async def spent(self, spec: Spec) -> float:
        key = _redis_keys(spec, time.time())[1]
        v = await (self.lean.call("GET", key) if self.lean is not None else self.r.get(key))
        return float(v) if v is not None else 0.0

    def close(self) -> None:
        if self.lean is not None:
            self.lean.close()

    async def aclose(self) -> None:
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=2.0)
        self.close()
        if self.r is not None:
            with contextlib.suppress(Exception):
                await self.r.aclose()


Backend = LocalBackend | RedisBackend


@dataclass(slots=True)
class Reservation:
    """What one request holds: the key scope's reservation (tokens and cost estimated), the
    model scopes reserved on the way (their token estimates)."""

    key: Spec | None
    tokens: float
    cost: float
    at: float
    models: list[Spec]
    limits: Limits | None
    thrifty: BudgetSoftConfig | None  # past the key's soft share: route thriftily
    seen: Outcome | None = None  # the key's buckets after the reservation

    def headers(self) -> list[tuple[bytes, bytes]]:
        """The key's x-ratelimit-* headers for the answer (none when it has no rpm/tpm)."""
        key, seen = self.key, self.seen
        if key is None or seen is None or (key.rpm is None and key.tpm is None):
            return []
        return rate_headers(key, seen)


def redis_target(cfg: LimitsConfig, store: StoreConfig) -> tuple[str, bool]:
    """The limits' Redis URL, and whether it is a Redis Cluster."""
    url = cfg.redis_url or store.redis_url
    return url, cfg.redis_cluster or (cfg.redis_url is None and store.redis_cluster)


def make_backend(cfg: LimitsConfig, store: StoreConfig, readonly: bool = False) -> Backend:
    """The configured backend; `readonly` (reports): a local file is opened only if it
    exists (FileNotFoundError) and never written."""
    if cfg.backend == "redis":
        return RedisBackend(*redis_target(cfg, store))
    return LocalBackend(cfg.local_path, readonly)


class Limits:
    """The limits of one loaded config: per key and per model `Spec`s, and the backend
    (kept across reloads by the gateway while its settings are unchanged)."""

    def __init__(
        self, cfg: RoutingConfig, backend: Backend | None, keys: Iterable[GatewayKey] = ()
    ) -> None:
        self.config = cfg.limits
        self.store = cfg.store
        self.backend = backend
        # every key by id (the routing file's, then the key store's, gateway/tenants/keys.py);
        # a key's Spec is built once per key object
        self.entries: dict[str, GatewayKey] = {k.id: k for k in (*cfg.auth.keys, *keys)}
        self._specs: dict[str, tuple[GatewayKey, Spec | None]] = {}
        self.models: dict[str, Spec] = {
            m.name: Spec(f"model:{m.name}", m.rpm, m.tpm)
            for m in cfg.models
            if m.rpm is not None or m.tpm is not None
        }
        self.active = self.needed(cfg, keys)
        self.default_completion = cfg.limits.default_completion_tokens
        self._warned = 0.0

    @staticmethod
    def needed(cfg: RoutingConfig, keys: Iterable[GatewayKey] = ()) -> bool:
        """Whether any key (the routing file's or `keys`, the stored ones) or model has a
        limit: else requests do no limits work at all."""
        return any(
            k.rpm is not None or k.tpm is not None or k.budget_usd is not None
            for k in (*cfg.auth.keys, *keys)
        ) or any(m.rpm is not None or m.tpm is not None for m in cfg.models)

    def spec(self, key: GatewayKey) -> Spec | None:
        """The limits of a gateway key, None when it has none."""
        got = self._specs.get(key.id)
        if got is not None and got[0] is key:
            return got[1]
        spec = None
        if key.rpm is not None or key.tpm is not None or key.budget_usd is not None:
            spec = Spec(
                f"key:{key.id}",
                key.rpm,
                key.tpm,
                key.budget_usd,
                key.budget_window,
                key.budget_soft_share,
            )
        self._specs[key.id] = (key, spec)
        return spec

    def soft_share(self, spec: Spec, route: str) -> float | None:
        """The share of the key's budget past which its routed requests go thrifty."""
        if spec.budget is None:
            return None
        rule = self.config.budget_soft_routes.get(route) or self.config.budget_soft
        if spec.soft_share is not None:
            return spec.soft_share
        return None if rule is None else rule.share

    def first_soft_share(self, spec: Spec) -> float | None:
        """The share of the key's budget past which its routed requests start going
        thrifty: the key's own, else `limits.budget_soft`'s, else the lowest of
        `budget_soft_routes`; None when nothing routes it thriftily."""
        if spec.budget is None:
            return None
        if spec.soft_share is not None:
            return spec.soft_share
        if self.config.budget_soft is not None:
            return self.config.budget_soft.share
        shares = [r.share for r in self.config.budget_soft_routes.values()]
        return min(shares) if shares else None

    async def spent(self, spec: Spec) -> float | None:
        if self.backend is None or spec.budget is None:
            return None
        try:
            return await self.backend.spent(spec)
        except Exception as e:  # the usage page still answers without it
            log.warning("reading the spend of %s failed: %s", spec.scope, e)
            return None

    # -- per request -------------------------------------------------------------------
    async def reserve(
        self,
        rt: Runtime,
        key: GatewayKey | None,
        route: str,
        prompt_tokens: int,
        out_tokens: Any,
    ) -> Reservation:
        """Reserve the request's share of its key's limits (raises `LimitExceeded`); the
        returned reservation also carries the per-model limits, reserved model by model
        (`reserve_model`) as the plan is tried."""
        if not isinstance(out_tokens, int) or out_tokens < 0:
            out_tokens = self.default_completion
        tokens = float(prompt_tokens + out_tokens)
        spec = self.spec(key) if key is not None else None
        res = Reservation(spec, tokens, 0.0, time.time(), [], self, None)
        if spec is None:
            return res
        if spec.budget is not None:
            res.cost = self._max_cost(rt, route, prompt_tokens, out_tokens)
        o = res.seen = await self._call(spec, tokens, res.cost)
        if not o.ok:
            res.key = None  # nothing was taken
            raise self._refusal(spec, o, spec.scope[4:])
        if spec.budget is not None:
            share = self.soft_share(spec, route)
            if share is not None and o.spent >= share * spec.budget:
                res.thrifty = (
                    self.config.budget_soft_routes.get(route)
                    or self.config.budget_soft
                    or BudgetSoftConfig()
                )
        return res

    async def reserve_model(self, res: Reservation, name: str) -> None:
        spec = self.models.get(name)
        if spec is None:
            return
        o = await self._call(spec, res.tokens, 0.0)
        if not o.ok:
            raise self._refusal(spec, o, None)
        res.models.append(spec)

    def settle(self, res: Reservation, model: str | None, tokens: int, cost: float) -> None:
        """The real usage of a finished request (0 tokens when it failed): tokens reserved
        and not used go back, the spend moves from the estimate to the real cost."""
        backend = self.backend
        if backend is None:
            return
        try:
            if res.key is not None:
                backend.settle(res.key, res.tokens - tokens, cost - res.cost, res.at)
            for spec in res.models:
                used = tokens if spec.scope == f"model:{model}" else 0
                if spec.tpm is not None:
                    backend.settle(spec, res.tokens - used, 0.0, res.at)
        except Exception as e:
            log.warning("settling a limits reservation failed: %s", e)

    async def _call(self, spec: Spec, tokens: float, cost: float) -> Outcome:
        backend = self.backend
        if backend is None:
            return Outcome(True)
        try:
            return await backend.reserve(spec, tokens, cost)
        except LimitExceeded:
            raise
        except Exception as e:  # the limits store is down: serve, and say so in the log
            now = time.monotonic()
            if now - self._warned > 10.0:
                self._warned = now
                log.warning("limits backend unavailable, requests pass unlimited: %s", e)
            return Outcome(True)

    def _refusal(self, spec: Spec, o: Outcome, key_id: str | None) -> LimitExceeded:
        headers = rate_headers(spec, o)
        who = f"the gateway key {key_id!r}" if key_id else f"the model {spec.scope[6:]!r}"
        if o.kind == BUDGET:
            msg = (
                f"{who} has spent its budget of ${spec.budget:g} for this {spec.window} "
                f"(${o.spent:.6f} so far); it renews in {_duration(o.wait)}, or the operator "
                "can raise budget_usd in the routing file"
            )
        elif o.kind == RPM:
            msg = (
                f"rate limit reached for {who}: {spec.rpm} requests per minute; retry in "
                f"{_duration(o.wait)}"
            )
        else:
            msg = (
                f"rate limit reached for {who}: {spec.tpm} tokens per minute (this request "
                f"reserves {self._tokens_msg(o)}); retry in {_duration(o.wait)}, or lower "
                "max_tokens"
            )
        return LimitExceeded(msg, o.kind, spec.scope, headers, o.wait)

    @staticmethod
    def _tokens_msg(o: Outcome) -> str:
        return f"more than the {max(0, int(o.tok_level))} left"

    @staticmethod
    def _max_cost(rt: Runtime, route: str, prompt_tokens: int, out_tokens: int) -> float:
        """The request's estimated maximum cost: its tokens at the prices of the most
        expensive model it may go to."""
        if route in rt.models:
            names: list[str] = [route]
        elif route in rt.routes:
            names = list(rt.routes[route].models)
        else:
            names = rt.candidates or list(rt.models)
        rates = rt.rates
        best = 0.0
        for n in names:
            r = rates.get(n)
            if r is not None:
                best = max(best, prompt_tokens * r.input + out_tokens * r.output)
        return best
