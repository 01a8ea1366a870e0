"""Redis record store: shared by several gateway replicas; a single Redis (or a primary with
replicas) or a Redis Cluster (``store.redis_cluster: true``, ``redis_url`` naming any one node).

Layout (prefix ``{tollgate}:``):

- ``records``        stream, one entry per client record, field ``r`` = the record as
                     orjson, capped with ``XADD MAXLEN ~ redis_stream_maxlen``.
- ``judge``          the same for the judge's own calls (purpose "judge"): read only by
                     ``usage(purpose="judge")`` and get(), never rolled up.
- ``rec:{id}``       hash {sid: stream entry id, ts, feedback?, judge?}; the idempotency
                     marker and the index used by get()/set_quality(). Expires after
                     ``record_ttl_s`` (30 days).
- ``m:{minute}``     per-minute rollup hash, minute = floor(record ts / 60) * 60, fields
                     ``{dim}|{value}|{metric}`` for dim in model, tier, key, route and metric in
                     requests, errors, prompt_tokens, completion_tokens, cost_usd,
                     baseline_cost_usd, latency_ms_sum (HINCRBY / HINCRBYFLOAT). Same expiry.
- ``minutes``        sorted set of the minutes that have a rollup hash (newest
                     record_ttl_s / 60 kept).
- ``quality``        sorted set (score = record ts) of request ids that received a quality
                     score, so usage() fetches only those scores (newest stream_maxlen kept).
- ``late``           sorted set (score = record ts) of "stream entry-id" for records written
                     more than the clock skew after their ts (newest stream_maxlen kept).

Retention (``retention_days``) deletes by stream id time, which is write time: XTRIM MINID at
the cutoff less the clock skew, then one by one the entries written near the cutoff or listed
in ``late`` whose ts is older; and the rollups and quality index of before the cutoff.

A batch is written by one Lua script: each record whose ``rec:{id}`` exists is skipped, so a
batch retried after a lost reply is never counted twice, and a record and its rollups land
together or not at all.

Redis Cluster: the ``{tollgate}`` in the prefix is a hash tag, so every key above hashes to
one slot (the slot of "tollgate") and lives on one node. That is what lets the write script
build ``rec:{id}`` and ``m:{minute}`` names itself: it declares the stream and ``minutes``
(so the cluster client sends it to the node that owns the slot), and every key it builds is
in that same slot. The pipelines (quality scores, rollup hashes) are non-transactional and
same-slot too. The price is that one store's keys are served by one node: a cluster spreads
several stores (other prefixes, other applications), not one store's records. A prefix given
to a cluster store must carry a hash tag (``{...}``).

Upgrading in place from a gateway that used the untagged prefix ``tollgate:``: on a single
Redis where ``tollgate:records`` (or ``:judge``, ``:minutes``) exists and no ``{tollgate}:``
key does, the store keeps using ``tollgate:``, so the records, rollups and scores written
before stay readable and replicas upgraded one at a time keep writing to the same stream.
A new Redis starts with ``{tollgate}:``. (Old data cannot be in a cluster: the untagged
script fails there.) Nothing is renamed or copied.

usage() reads the stream over the window (exact p50/p95 and quality; linear in the window,
fine up to ~1e6 records) starting 5 minutes before ``since`` in stream-id time to absorb clock
skew between replicas and Redis. timeseries() with buckets that are a multiple of 60 s reads
the rollups; other bucket sizes read the stream. recent() sorts the newest ``limit + 1000``
stream entries by ts.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import orjson
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ClusterError, RedisClusterException, RedisError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from gateway.accounting.records import CLIENT, JUDGE, RequestRecord
from gateway.accounting.store.base import (
    Purpose,
    QualitySource,
    Retention,
    Store,
    StoreError,
    StoreUnavailable,
    aggregate,
    bucket_rows,
    bucket_start,
    check_bucket,
    check_group_by,
    check_purpose,
    check_source,
    group_value,
    record_from_dict,
)

_DIMS = ("model", "tier", "key", "route")
_WRITE_LUA = """
local stream, minutes, late = KEYS[1], KEYS[2], KEYS[3]
local maxlen, ttl, prefix, keep_minutes = ARGV[1], tonumber(ARGV[2]), ARGV[3], ARGV[4]
local rollup = ARGV[5] == '1'
local dims = {'model', 'tier', 'key', 'route'}
local metrics = {'requests', 'errors', 'prompt_tokens', 'completion_tokens',
                 'cost_usd', 'baseline_cost_usd', 'latency_ms_sum'}
local sums, order = {}, {}
local written, lates = 0, 0
-- a record written more than the clock skew after its ts (a recorder that buffered through an
-- outage, a replayed journal) is indexed by ts, for retention to find: it deletes the rest by
-- stream id time
local function mark_late(sid, ts)
  local ms = tonumber(string.match(sid, '^(%d+)'))
  if tonumber(ts) * 1000 < ms - 300000 then
    redis.call('ZADD', late, ts, stream .. ' ' .. sid)
    lates = lates + 1
  end
end
local i = 6
while i <= #ARGV do
  local rid, ts, json, minute = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  local rk = prefix .. 'rec:' .. rid
  if redis.call('EXISTS', rk) == 1 then
    -- written before: skip
  elseif not rollup then
    local sid = redis.call('XADD', stream, 'MAXLEN', '~', maxlen, '*', 'r', json)
    mark_late(sid, ts)
    redis.call('HSET', rk, 'sid', sid, 'ts', ts, 'stream', stream)
    redis.call('EXPIRE', rk, ttl)
    written = written + 1
  else
    local sid = redis.call('XADD', stream, 'MAXLEN', '~', maxlen, '*', 'r', json)
    mark_late(sid, ts)
    redis.call('HSET', rk, 'sid', sid, 'ts', ts)
    redis.call('EXPIRE', rk, ttl)
    -- rollups are summed here and written once per (minute, field) below
    local per = sums[minute]
    if per == nil then
      per = {}
      sums[minute] = per
      order[#order + 1] = minute
    end
    local values = {1, tonumber(ARGV[i + 4]), tonumber(ARGV[i + 5]), tonumber(ARGV[i + 6]),
                    tonumber(ARGV[i + 7]), tonumber(ARGV[i + 8]), tonumber(ARGV[i + 9])}
    for d = 1, 4 do
      local f = dims[d] .. '|' .. ARGV[i + 9 + d] .. '|'
      for k = 1, 7 do
        local field = f .. metrics[k]
        per[field] = (per[field] or 0) + values[k]
      end
    end
    written = written + 1
  end
  i = i + 14
end
for _, minute in ipairs(order) do
  local mk = prefix .. 'm:' .. minute
  for field, v in pairs(sums[minute]) do
    if string.sub(field, -9) == '|requests' or string.sub(field, -7) == '|errors'
        or string.sub(field, -7) == '_tokens' then
      redis.call('HINCRBY', mk, field, string.format('%d', v))
    else
      redis.call('HINCRBYFLOAT', mk, field, string.format('%.17g', v))
    end
  end
  redis.call('EXPIRE', mk, ttl)
  redis.call('ZADD', minutes, minute, minute)
end
redis.call('ZREMRANGEBYRANK', minutes, 0, -1 - tonumber(keep_minutes))
if lates > 0 then
  redis.call('ZREMRANGEBYRANK', late, 0, -1 - tonumber(maxlen))
end
return written
"""
_PER_RECORD_ARGS = 14
_QUALITY_LUA = """
local rk, qidx = KEYS[1], KEYS[2]
if redis.call('EXISTS', rk) == 0 then return 0 end
redis.call('HSET', rk, ARGV[1], ARGV[2])
redis.call('ZADD', qidx, redis.call('HGET', rk, 'ts'), ARGV[3])
redis.call('ZREMRANGEBYRANK', qidx, 0, -1 - tonumber(ARGV[4]))
return 1
"""
_SKEW_S = 300.0
_CHUNK = 5000
DEFAULT_PREFIX = "{tollgate}:"
LEGACY_PREFIX = "tollgate:"  # before the hash tag; still used where its data is
_TOP_KEYS = ("records", "judge", "minutes")


def hash_tag(prefix: str) -> str | None:
    """The hash tag Redis Cluster reads from every key that starts with `prefix` (the text
    between the first "{" and the next "}", if not empty); None when it has none."""
    i = prefix.find("{")
    j = prefix.find("}", i + 1) if i >= 0 else -1
    return prefix[i + 1 : j] if j > i + 1 else None


def _f(v: float) -> str:
    return repr(float(v))


class RedisStore(Store):
    name = "redis"

    def __init__(
        self,
        url: str,
        stream_maxlen: int = 1_000_000,
        prefix: str | None = None,
        record_ttl_s: int = 30 * 86400,
        socket_timeout_s: float = 5.0,
        cluster: bool = False,
        retention_days: float | None = None,
        retention_every_s: float = 3600.0,
    ) -> None:
        """`prefix` None: ``{tollgate}:``, or ``tollgate:`` where an older gateway's data
        is (see the module docstring). `cluster`: `url` is one node of a Redis Cluster."""
        if cluster and prefix is not None and hash_tag(prefix) is None:
            raise ValueError(
                f"the Redis Cluster key prefix {prefix!r} has no hash tag: put one in braces "
                "(e.g. '{tollgate}:') so that the keys of one write share a slot"
            )
        self.url = url
        self.cluster = cluster
        self.retention = Retention(retention_days, retention_every_s)
        self.stream_maxlen = stream_maxlen
        self.record_ttl_s = record_ttl_s
        self._timeout = socket_timeout_s
        self._r: aioredis.Redis | RedisCluster | None = None
        self._prefix_settled = prefix is not None or cluster
        self._use_prefix(prefix or DEFAULT_PREFIX)

    def _use_prefix(self, prefix: str) -> None:
        self.prefix = prefix
        self._k_stream = prefix + "records"
        self._k_minutes = prefix + "minutes"
        self._k_quality = prefix + "quality"
        self._k_judge = prefix + "judge"
        self._k_late = prefix + "late"

    async def _settle_prefix(self) -> None:
        """Keep the untagged prefix on a Redis that has its data and none of the tagged."""
        r = self._client()
        tagged = await self._call(r.exists(*(DEFAULT_PREFIX + k for k in _TOP_KEYS)))
        if not tagged and await self._call(r.exists(*(LEGACY_PREFIX + k for k in _TOP_KEYS))):
            self._use_prefix(LEGACY_PREFIX)
        self._prefix_settled = True

    def _client(self) -> aioredis.Redis | RedisCluster:
        if self._r is None:
            raise StoreUnavailable("redis store is not open")
        return self._r

    async def _call(self, coro: Any) -> Any:
        try:
            return await coro
        except (RedisConnectionError, RedisTimeoutError, OSError) as e:
            raise StoreUnavailable(f"redis {self._safe_url()}: {e}") from e
        except (ClusterError, RedisClusterException) as e:  # cluster down, node unreachable
            raise StoreUnavailable(f"redis cluster {self._safe_url()}: {e}") from e
        except RedisError as e:
            raise StoreError(f"redis {self._safe_url()}: {e}") from e

    def _safe_url(self) -> str:
        _head, sep, tail = self.url.rpartition("@")
        return f"redis://****@{tail}" if sep else self.url

    async def open(self) -> None:
        if self._r is None:
            # One quick retry only: the recorder owns retrying (and buffering meanwhile).
            connect = RedisCluster.from_url if self.cluster else aioredis.from_url
            self._r = connect(
                self.url,
                socket_timeout=self._timeout,
                socket_connect_timeout=min(2.0, self._timeout),
                retry=Retry(ExponentialBackoff(cap=0.2, base=0.02), 1),
                health_check_interval=10,
            )
            self._write = self._r.register_script(_WRITE_LUA)
            self._quality = self._r.register_script(_QUALITY_LUA)
        await self._call(self._client().ping())
        if not self._prefix_settled:
            await self._settle_prefix()
        await self.retention.run_if_due(self._delete_before)

    async def close(self) -> None:
        await self.retention.stop()
        if self._r is not None:
            r, self._r = self._r, None
            with contextlib.suppress(RedisError, OSError):
                await r.aclose()

    async def write_batch(self, records: list[RequestRecord]) -> None:
        records = self.retention.keep(records)
        if records:
            await self._write_records(records)
        await self.retention.run_if_due(self._delete_before)

    async def _delete_before(self, cutoff: float) -> int:
        """Delete the records with ts < cutoff: whole stream head written before cutoff - skew
        (XTRIM MINID), then the entries written within the skew of the cutoff and the late ones
        whose ts is older, one by one; and the rollups and quality index entries of before."""
        r = self._client()
        deleted = 0
        minid = max(0, int((cutoff - _SKEW_S) * 1000))
        for stream in (self._k_stream, self._k_judge):
            deleted += await self._call(r.xtrim(stream, minid=minid, approximate=False))
            start, end = str(minid), str(int((cutoff + _SKEW_S) * 1000))
            while True:
                chunk = await self._call(r.xrange(stream, start, end, count=_CHUNK))
                old = [sid for sid, f in chunk if self._decode(f).ts < cutoff]
                if old:
                    deleted += await self._call(r.xdel(stream, *old))
                if len(chunk) < _CHUNK:
                    break
                start = "(" + chunk[-1][0].decode()
        late = await self._call(r.zrangebyscore(self._k_late, "-inf", f"({cutoff!r}"))
        for member in late:
            stream, _, sid = member.decode().partition(" ")
            deleted += await self._call(r.xdel(stream, sid))
        await self._call(r.zremrangebyscore(self._k_late, "-inf", f"({cutoff!r}"))
        before = bucket_start(cutoff, 60) - 60  # the minute holding the cutoff stays whole
        minutes = await self._call(r.zrangebyscore(self._k_minutes, "-inf", before))
        if minutes:
            await self._call(r.delete(*[self.prefix.encode() + b"m:" + m for m in minutes]))
            await self._call(r.zremrangebyscore(self._k_minutes, "-inf", before))
        await self._call(r.zremrangebyscore(self._k_quality, "-inf", f"({cutoff!r}"))
        return int(deleted)

    async def _write_records(self, records: list[RequestRecord]) -> None:
        self._client()
        client = [r for r in records if r.purpose == CLIENT]
        if len(client) < len(records):
            judge = [r for r in records if r.purpose != CLIENT]
            await self._write_to(self._k_judge, judge, rollup=False)
        if client:
            await self._write_to(self._k_stream, client, rollup=True)

    async def _write_to(self, stream: str, records: list[RequestRecord], rollup: bool) -> None:
        keep_minutes = self.record_ttl_s // 60 + 1
        args: list[Any] = [
            self.stream_maxlen,
            self.record_ttl_s,
            self.prefix,
            keep_minutes,
            1 if rollup else 0,
        ]
        for r in records:
            args += [
                r.request_id,
                _f(r.ts),
                orjson.dumps(r),  # orjson serializes the dataclass natively
                str(int(r.ts // 60 * 60)),
                1 if r.status >= 400 else 0,
                int(r.prompt_tokens),
                int(r.completion_tokens),
                _f(r.cost_usd),
                _f(r.baseline_cost_usd),
                _f(r.latency_ms),
                group_value(r.model),
                group_value(r.tier),
                group_value(r.key_id),
                group_value(r.route),
            ]
        assert len(args) == 5 + _PER_RECORD_ARGS * len(records)
        await self._call(self._write(keys=[stream, self._k_minutes, self._k_late], args=args))

    async def set_quality(self, request_id: str, source: QualitySource, score: float) -> bool:
        check_source(source)
        got = await self._call(
            self._quality(
                keys=[self._rk(request_id), self._k_quality],
                args=[source, _f(score), request_id, self.stream_maxlen],
            )
        )
        return bool(got)

    def _rk(self, request_id: str) -> str:
        return f"{self.prefix}rec:{request_id}"

    @staticmethod
    def _decode(fields: dict[bytes, bytes]) -> RequestRecord:
        return record_from_dict(orjson.loads(fields[b"r"]))

    @staticmethod
    def _apply_quality(rec: RequestRecord, fb: bytes | None, judge: bytes | None) -> None:
        if fb is not None:
            rec.quality_feedback = float(fb)
        if judge is not None:
            rec.quality_judge = float(judge)

    async def get(self, request_id: str) -> RequestRecord | None:
        r = self._client()
        sid, fb, judge, stream = await self._call(
            r.hmget(self._rk(request_id), ["sid", "feedback", "judge", "stream"])
        )
        if sid is None:
            return None
        entries = await self._call(r.xrange(stream or self._k_stream, sid, sid))
        if not entries:
            return None  # trimmed from the capped stream
        rec = self._decode(entries[0][1])
        self._apply_quality(rec, fb, judge)
        return rec

    async def _merge_quality(
        self, records: list[RequestRecord], lo: float | None, hi: float | None
    ) -> None:
        r = self._client()
        ids = await self._call(
            r.zrangebyscore(
                self._k_quality, "-inf" if lo is None else lo, "+inf" if hi is None else hi
            )
        )
        if not ids:
            return
        pipe = r.pipeline(transaction=False)
        for rid in ids:
            pipe.hmget(self.prefix.encode() + b"rec:" + rid, ["feedback", "judge"])
        scores = await self._call(pipe.execute())
        by_id = {rid.decode(): s for rid, s in zip(ids, scores, strict=True)}
        for rec in records:
            got = by_id.get(rec.request_id)
            if got is not None:
                self._apply_quality(rec, got[0], got[1])

    async def _scan(
        self, since: float | None, stream: str | None = None
    ) -> AsyncIterator[RequestRecord]:
        r = self._client()
        key = stream or self._k_stream
        start = "-" if since is None else str(max(0, int((since - _SKEW_S) * 1000)))
        while True:
            chunk = await self._call(r.xrange(key, start, "+", count=_CHUNK))
            for _sid, fields in chunk:
                yield self._decode(fields)
            if len(chunk) < _CHUNK:
                return
            start = "(" + chunk[-1][0].decode()

    async def _window(
        self, since: float | None, until: float | None, stream: str | None = None
    ) -> list[RequestRecord]:
        lo = float("-inf") if since is None else since
        hi = float("inf") if until is None else until
        out = [rec async for rec in self._scan(since, stream) if lo <= rec.ts < hi]
        await self._merge_quality(out, since, until)
        return out

    async def usage(
        self,
        since: float | None,
        until: float | None,
        group_by: str,
        purpose: Purpose = "client",
        key_id: str | None = None,
    ) -> list[dict[str, Any]]:
        check_group_by(group_by)
        stream = self._k_judge if check_purpose(purpose) == JUDGE else self._k_stream
        recs = await self._window(since, until, stream)
        if key_id is not None:
            recs = [r for r in recs if r.key_id == key_id]
        return aggregate(recs, group_by)

    async def recent(self, limit: int) -> list[RequestRecord]:
        if limit <= 0:
            return []
        entries = await self._call(self._client().xrevrange(self._k_stream, count=limit + 1000))
        recs = [self._decode(f) for _sid, f in entries]
        recs.sort(key=lambda x: (x.ts, x.request_id), reverse=True)
        recs = recs[:limit]
        await self._merge_quality(recs, None, None)
        return recs

    async def count(self) -> int:
        return int(await self._call(self._client().xlen(self._k_stream)))

    async def timeseries(self, since: float | None, bucket_s: int) -> list[dict[str, Any]]:
        b = check_bucket(bucket_s)
        lo = None if since is None else bucket_start(float(since), b)
        acc: dict[tuple[float, str], list[float]] = {}
        if b % 60:
            async for rec in self._scan(lo):
                if lo is None or rec.ts >= lo:
                    v = acc.setdefault((bucket_start(rec.ts, b), group_value(rec.tier)), [0, 0, 0])
                    v[0] += 1
                    v[1] += rec.cost_usd
                    v[2] += rec.baseline_cost_usd
            return bucket_rows(acc)
        r = self._client()
        minutes = await self._call(
            r.zrangebyscore(self._k_minutes, "-inf" if lo is None else lo, "+inf")
        )
        pipe = r.pipeline(transaction=False)
        for m in minutes:
            pipe.hgetall(self.prefix.encode() + b"m:" + m)
        hashes = await self._call(pipe.execute())
        for m, h in zip(minutes, hashes, strict=True):
            bucket = bucket_start(float(m), b)
            for field, value in h.items():
                dim, _, rest = field.decode().partition("|")
                if dim != "tier":
                    continue
                tier, _, metric = rest.rpartition("|")
                idx = {"requests": 0, "cost_usd": 1, "baseline_cost_usd": 2}.get(metric)
                if idx is not None:
                    acc.setdefault((bucket, tier), [0, 0, 0])[idx] += float(value)
        return bucket_rows(acc)
