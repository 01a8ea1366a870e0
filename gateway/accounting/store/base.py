"""The Store interface every record backend implements, its errors, and the shared aggregation.

Both backends compute `usage()` rows with `aggregate()` so that their answers are identical
for the same records (the store test suite runs unchanged against each).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import fields
from typing import Any, Literal

from gateway.accounting.records import LIMIT_REJECTED, RequestRecord

GROUP_BY: dict[str, str] = {
    "model": "model",
    "tier": "tier",
    "key": "key_id",
    "route": "route",
    "endpoint": "endpoint",  # chat, completions, embeddings, messages, ...
}
QualitySource = Literal["feedback", "judge"]
Purpose = Literal["client", "judge"]  # RequestRecord.purpose
PURPOSES: tuple[str, ...] = ("client", "judge")
QUALITY_SOURCES: tuple[str, ...] = ("feedback", "judge")
NONE_GROUP = "(none)"
log = logging.getLogger("tollgate.store")


_RECORD_FIELDS = frozenset(f.name for f in fields(RequestRecord))

# One of the two savings numbers Tollgate shows (the other, the demo's "cost vs always-<tier>
# (replayed answers)", lives in gateway/demo/demo.py). The same words everywhere it appears.
SAVINGS_NAME = "savings vs reference (same tokens)"
SAVINGS_DEFINITION = (
    "1 - cost / reference cost, where the reference cost prices each request's own prompt "
    "and completion tokens on its reference model: for auto (and router-*) the most capable "
    "candidate (highest tier, then price), for a route its `reference` (else its most capable "
    "model), for a model itself (0 %)"
)


def savings_fields(cost: float, reference: float) -> dict[str, Any]:
    """The savings-vs-reference numbers of a usage row: reference_cost_usd,
    savings_vs_reference_usd and savings_vs_reference_pct (None when the reference cost is 0),
    and the same three values under the names they had before they had one name
    (baseline_cost_usd, savings_usd, savings_pct), kept for existing clients."""
    saved = reference - cost
    pct = 100.0 * saved / reference if reference > 0 else None
    return {
        "reference_cost_usd": reference,
        "savings_vs_reference_usd": saved,
        "savings_vs_reference_pct": pct,
        "baseline_cost_usd": reference,
        "savings_usd": saved,
        "savings_pct": pct,
    }


def record_from_dict(data: dict[str, Any]) -> RequestRecord:
    """RequestRecord.from_dict without recomputing the field set per call (hot in reports)."""
    if data.keys() <= _RECORD_FIELDS:
        return RequestRecord(**data)
    return RequestRecord(**{k: v for k, v in data.items() if k in _RECORD_FIELDS})


class StoreError(Exception):
    """A store operation failed; the recorder keeps the data and retries."""


class StoreUnavailable(StoreError):
    """The store cannot be reached (connection refused, timed out, disk unavailable)."""


class Store(ABC):
    """Durable home of RequestRecords. Writes are idempotent on request_id."""

    name: str = "store"

    @abstractmethod
    async def open(self) -> None:
        """Connect / create the schema. Raises StoreUnavailable when it cannot."""

    @abstractmethod
    async def close(self) -> None: ...

    @abstractmethod
    async def write_batch(self, records: list[RequestRecord]) -> None:
        """Write records; a request_id already stored is skipped (a retried batch is safe)."""

    @abstractmethod
    async def set_quality(self, request_id: str, source: QualitySource, score: float) -> bool:
        """Attach a quality score; False when no record has that request_id."""

    @abstractmethod
    async def get(self, request_id: str) -> RequestRecord | None: ...

    @abstractmethod
    async def usage(
        self,
        since: float | None,
        until: float | None,
        group_by: str,
        purpose: Purpose = "client",
        key_id: str | None = None,
    ) -> list[dict[str, Any]]:
        """One row per group over records of `purpose` (client traffic by default, or the
        judge's own calls) with since <= ts < until (and of gateway key `key_id` when
        given); see `aggregate()`."""

    @abstractmethod
    async def recent(self, limit: int) -> list[RequestRecord]:
        """The newest client records by ts, newest first."""

    @abstractmethod
    async def timeseries(self, since: float | None, bucket_s: int) -> list[dict[str, Any]]:
        """Per bucket and tier over client records: requests, cost_usd, baseline_cost_usd;
        see `bucket_rows()`."""

    @abstractmethod
    async def count(self) -> int:
        """Client records stored (the judge's own calls are not counted)."""


def check_group_by(group_by: str) -> str:
    """The RequestRecord attribute for a group_by name; ValueError naming the allowed values."""
    try:
        return GROUP_BY[group_by]
    except KeyError:
        raise ValueError(
            f"group_by must be one of {', '.join(GROUP_BY)}; got {group_by!r}"
        ) from None


def check_purpose(purpose: str) -> str:
    if purpose not in PURPOSES:
        raise ValueError(f"purpose must be one of {PURPOSES}; got {purpose!r}")
    return purpose


def check_source(source: str) -> None:
    if source not in QUALITY_SOURCES:
        raise ValueError(f"quality source must be one of {QUALITY_SOURCES}; got {source!r}")


def group_value(value: Any) -> str:
    return NONE_GROUP if value is None or value == "" else str(value)


def percentile(sorted_values: Sequence[float], q: float) -> float | None:
    """Linear interpolation between closest ranks (numpy's default), q in [0, 100]. Reads
    `len()` and the two ranks it interpolates between, nothing else."""
    if not sorted_values:
        return None
    pos = (len(sorted_values) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    frac = pos - lo
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * frac


def record_quality(rec: RequestRecord) -> float | None:
    """The quality of one answer: user feedback when given, else the judge's score."""
    if rec.quality_feedback is not None:
        return rec.quality_feedback
    return rec.quality_judge


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def aggregate(records: Iterable[RequestRecord], group_by: str) -> list[dict[str, Any]]:
    """Usage rows, sorted by cost descending then group name.

    Keys: group, requests, errors (status >= 400), prompt_tokens, cached_tokens,
    completion_tokens, estimated (records whose tokens were estimated), cost_usd, cache_hits
    and cache_saved_usd (answers the response cache served, and what their originals cost),
    limit_rejections (requests the gateway's own rate limits or budgets refused), the
    `savings_fields()` (reference_cost_usd, savings_vs_reference_usd/_pct and their old
    names baseline_cost_usd, savings_usd, savings_pct), latency_p50_ms, latency_p95_ms,
    quality_mean (mean over records of feedback-else-judge, records with neither left out),
    quality_n (records in that mean), quality_feedback_mean, quality_judge_mean,
    quality_predicted_mean.
    """
    attr = check_group_by(group_by)
    acc: dict[str, dict[str, Any]] = {}
    for r in records:
        g = group_value(getattr(r, attr))
        a = acc.get(g)
        if a is None:
            a = acc[g] = {
                "requests": 0,
                "errors": 0,
                "prompt_tokens": 0,
                "cached_tokens": 0,
                "completion_tokens": 0,
                "estimated": 0,
                "cost_usd": 0.0,
                "cache_hits": 0,
                "cache_saved_usd": 0.0,
                "limit_rejections": 0,
                "baseline_cost_usd": 0.0,
                "lat": [],
                "q": [],
                "qf": [],
                "qj": [],
                "qp": [],
            }
        a["requests"] += 1
        a["errors"] += 1 if r.status >= 400 else 0
        a["prompt_tokens"] += r.prompt_tokens
        a["cached_tokens"] += r.cached_tokens
        a["completion_tokens"] += r.completion_tokens
        a["estimated"] += 1 if r.tokens_estimated else 0
        a["cost_usd"] += r.cost_usd
        a["baseline_cost_usd"] += r.baseline_cost_usd
        if r.cache_hit:  # served by the response cache: its reference is the original's cost
            a["cache_hits"] += 1
            a["cache_saved_usd"] += r.baseline_cost_usd
        if r.error_type in LIMIT_REJECTED:
            a["limit_rejections"] += 1
        a["lat"].append(r.latency_ms)
        q = record_quality(r)
        if q is not None:
            a["q"].append(q)
        if r.quality_feedback is not None:
            a["qf"].append(r.quality_feedback)
        if r.quality_judge is not None:
            a["qj"].append(r.quality_judge)
        if r.quality_predicted is not None:
            a["qp"].append(r.quality_predicted)
    rows = []
    for g, a in acc.items():
        lat = sorted(a.pop("lat"))
        reference = a.pop("baseline_cost_usd")
        rows.append(
            {
                "group": g,
                **{k: v for k, v in a.items() if k not in ("q", "qf", "qj", "qp")},
                **savings_fields(a["cost_usd"], reference),
                "latency_p50_ms": percentile(lat, 50),
                "latency_p95_ms": percentile(lat, 95),
                "quality_mean": _mean(a["q"]),
                "quality_n": len(a["q"]),
                "quality_feedback_mean": _mean(a["qf"]),
                "quality_judge_mean": _mean(a["qj"]),
                "quality_predicted_mean": _mean(a["qp"]),
            }
        )
    rows.sort(key=lambda row: (-row["cost_usd"], row["group"]))
    return rows


# the SQL stores' test for a record the gateway's own limits refused
LIMIT_REJECTED_SQL = "error_type IN (" + ", ".join(f"'{t}'" for t in LIMIT_REJECTED) + ")"


def usage_row(a: dict[str, Any], p50: float | None, p95: float | None) -> dict[str, Any]:
    """An `aggregate()` row from one SQL GROUP BY row (the SQL stores' sums and means, named
    as there, with the group in "g") and the group's latency percentiles."""
    cost = float(a["cost_usd"])
    return {
        "group": a["g"],
        "requests": int(a["requests"]),
        "errors": int(a["errors"]),
        "prompt_tokens": int(a["prompt_tokens"]),
        "cached_tokens": int(a["cached_tokens"]),
        "completion_tokens": int(a["completion_tokens"]),
        "estimated": int(a["estimated"]),
        "cost_usd": cost,
        "cache_hits": int(a["cache_hits"]),
        "cache_saved_usd": float(a["cache_saved_usd"]),
        "limit_rejections": int(a["limit_rejections"]),
        **savings_fields(cost, float(a["baseline_cost_usd"])),
        "latency_p50_ms": p50,
        "latency_p95_ms": p95,
        "quality_mean": a["quality_mean"],
        "quality_n": int(a["quality_n"]),
        "quality_feedback_mean": a["quality_feedback_mean"],
        "quality_judge_mean": a["quality_judge_mean"],
        "quality_predicted_mean": a["quality_predicted_mean"],
    }


def bucket_start(ts: float, bucket_s: int) -> float:
    return float(math.floor(ts / bucket_s) * bucket_s)


def bucket_rows(acc: dict[tuple[float, str], list[float]]) -> list[dict[str, Any]]:
    """Timeseries rows from {(bucket, tier): [requests, cost, baseline]}, oldest first."""
    return [
        {
            "bucket": b,
            "tier": tier,
            "requests": int(v[0]),
            "cost_usd": v[1],
            "baseline_cost_usd": v[2],
        }
        for (b, tier), v in sorted(acc.items())
    ]


def check_bucket(bucket_s: int) -> int:
    if int(bucket_s) < 1:
        raise ValueError(f"bucket_s must be a positive number of seconds; got {bucket_s!r}")
    return int(bucket_s)


DAY_S = 86400.0


class Retention:
    """When a store deletes its old records (`store.retention_days`; None keeps them all).

    A store calls `run_if_due()` on open and after each write: a pass runs at most once per
    `every_s`, in a task of its own, so a long first delete never holds up the open or the
    writes behind it. Stores delete in chunks, so their
    writes interleave with a long pass. `keep()` drops records already past the cutoff from
    a batch, so a late write (a recorder that buffered through an outage, a replayed
    journal) does not bring back what retention removed."""

    def __init__(self, days: float | None, every_s: float = 3600.0) -> None:
        self.days = days
        self.every_s = every_s
        self._next = 0.0  # monotonic time of the next pass; 0: on open
        self._task: asyncio.Task[None] | None = None

    def cutoff(self) -> float | None:
        return None if self.days is None else time.time() - self.days * DAY_S

    def due(self) -> float | None:
        if self.days is None or time.monotonic() < self._next:
            return None
        self._next = time.monotonic() + self.every_s
        return self.cutoff()

    async def run_if_due(
        self, delete: Callable[[float], Awaitable[int]], wait: bool = False
    ) -> None:
        """Run a pass, `delete(cutoff)` (which deletes the records with ts < cutoff and
        answers how many), when one is due and none is running: awaited with `wait`, else
        in a task. A store error is logged and the pass retried at the next write, never
        raised: the batch that triggered it is already written."""
        if self._task is not None and not self._task.done():
            return
        cutoff = self.due()
        if cutoff is None:
            return
        if wait:
            await self._pass(delete, cutoff)
        else:
            self._task = asyncio.create_task(self._pass(delete, cutoff))

    async def _pass(self, delete: Callable[[float], Awaitable[int]], cutoff: float) -> None:
        try:
            n = await delete(cutoff)
        except StoreError as e:
            self._next = 0.0
            log.warning("retention: deleting old records failed, retried later: %s", e)
            return
        if n:
            log.info("retention: deleted %d records older than %s days", n, self.days)

    async def stop(self) -> None:
        """End a pass still running (the store is closing; the next open starts over)."""
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def keep(self, records: list[RequestRecord]) -> list[RequestRecord]:
        cutoff = self.cutoff()
        if cutoff is None:
            return records
        return [r for r in records if r.ts >= cutoff]
