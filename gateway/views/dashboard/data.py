"""The JSON behind the dashboard: one snapshot of usage, series, backends and recent requests.

Built only from the Store interface (`usage`, `timeseries`, `recent`) and
`Gateway.readiness()`, so it works the same with SQLite and Redis. `totals` is computed by
`gateway.accounting.usage.totals` over the same rows as `GET /v1/usage`, so the two always agree.
"""

from __future__ import annotations

import math
import time
from typing import Any

from gateway.accounting.records import RequestRecord
from gateway.accounting.store.base import (
    NONE_GROUP,
    SAVINGS_DEFINITION,
    SAVINGS_NAME,
    bucket_rows,
    bucket_start,
    group_value,
    percentile,
    record_quality,
)
from gateway.accounting.usage import key_limits, totals

# What the page says its savings number is, and which other number it is not.
SAVINGS_TEXT = {
    "name": SAVINGS_NAME,
    "definition": SAVINGS_DEFINITION,
    "text": (
        f"Savings vs reference (same tokens): {SAVINGS_DEFINITION}. This is not the "
        '"cost vs always-<tier> (replayed answers)" that `tollgate demo` prints, which prices '
        "that tier's own recorded answers to the same prompts."
    ),
}
TARGET_BUCKETS = 60  # points per chart
RECENT_ROWS = 25
LATENCY_SAMPLE = 2000  # newest records used for the latency-over-time chart
_NICE_BUCKETS = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 21600, 86400)


def nice_bucket(span_s: float) -> int:
    """The smallest 'round' bucket that fits `span_s` into at most TARGET_BUCKETS buckets."""
    want = max(1.0, span_s / TARGET_BUCKETS)
    for b in _NICE_BUCKETS:
        if b >= want:
            return b
    return math.ceil(want / 86400.0) * 86400


def recent_row(r: RequestRecord) -> dict[str, Any]:
    return {
        "request_id": r.request_id,
        "ts": r.ts,
        "route": r.route,
        "policy": r.policy,
        "model": r.model,
        "tier": r.tier,
        "router_score": r.router_score,
        "status": r.status,
        "stream": r.stream,
        "attempts": r.attempts,
        "prompt_tokens": r.prompt_tokens,
        "completion_tokens": r.completion_tokens,
        "cost_usd": r.cost_usd,
        "reference_cost_usd": r.baseline_cost_usd,
        "reference_model": r.baseline_model,
        "baseline_cost_usd": r.baseline_cost_usd,  # earlier names of the two above
        "baseline_model": r.baseline_model,
        "latency_ms": r.latency_ms,
        "cached_tokens": r.cached_tokens,
        "sticky": r.sticky,  # conversation stickiness: new | stayed | kept | switched
        "quality": record_quality(r),
        "quality_predicted": r.quality_predicted,
    }


KEY_FIELDS = ("rpm", "tpm", "budget_usd", "budget_window", "budget_spent_usd",
              "budget_remaining_usd", "budget_soft_share", "budget_soft")  # fmt: skip


def key_rows(by_key: list[dict[str, Any]], limits: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per gateway key: its traffic in the window (requests, errors, spend, limit
    rejections) and its limits now (`key_limits`: rpm, tpm, budget, spent in the budget's
    window, left, budget-soft). Keys with traffic first (by spend), then limited keys that
    sent nothing in the window; requests without a key are left out (they are in the
    totals)."""
    out = []
    for r in by_key:
        if r["group"] == NONE_GROUP:
            continue
        lim = limits.get(r["group"], {})
        out.append(
            {
                "key_id": r["group"],
                "requests": r["requests"],
                "errors": r["errors"],
                "cost_usd": r["cost_usd"],
                "limit_rejections": r["limit_rejections"],
                "limited": bool(lim),
                **{f: lim.get(f) for f in KEY_FIELDS},
            }
        )
    seen = {row["key_id"] for row in out}
    for kid in sorted(set(limits) - seen):
        lim = limits[kid]
        out.append(
            {
                "key_id": kid,
                "requests": 0,
                "errors": 0,
                "cost_usd": 0.0,
                "limit_rejections": 0,
                "limited": True,
                **{f: lim.get(f) for f in KEY_FIELDS},
            }
        )
    return out


def sticky_summary(records: list[RequestRecord]) -> dict[str, int]:
    """Conversation stickiness over the records: how many turns were new, stayed (the router
    chose the previous model anyway), kept (stickiness overrode a switch worth less than the
    cache) or switched, and the prompt tokens the providers' caches answered."""
    out = {"new": 0, "stayed": 0, "kept": 0, "switched": 0, "cached_tokens": 0}
    for r in records:
        if r.sticky in out:
            out[r.sticky] += 1
        out["cached_tokens"] += r.cached_tokens
    return out


def latency_series(
    records: list[RequestRecord], since: float, bucket_s: int
) -> list[dict[str, Any]]:
    by: dict[float, list[float]] = {}
    for r in records:
        if r.ts >= since:
            start = float(math.floor(r.ts / bucket_s) * bucket_s)
            by.setdefault(start, []).append(r.latency_ms)
    out = []
    for b in sorted(by):
        lat = sorted(by[b])
        out.append(
            {
                "bucket": b,
                "n": len(lat),
                "p50_ms": percentile(lat, 50),
                "p95_ms": percentile(lat, 95),
            }
        )
    return out


def _series(recs: list[RequestRecord], bucket_s: int) -> list[dict[str, Any]]:
    acc: dict[tuple[float, str], list[float]] = {}
    for r in recs:
        v = acc.setdefault((bucket_start(r.ts, bucket_s), group_value(r.tier)), [0, 0.0, 0.0])
        v[0] += 1
        v[1] += r.cost_usd
        v[2] += r.baseline_cost_usd
    return bucket_rows(acc)


async def snapshot(
    gw: Any, since: float, until: float | None, now: float | None = None, key_id: str | None = None
) -> dict[str, Any]:
    """Everything the page shows, as of now. Raises StoreError when the store is down.

    `keys`: each gateway key's traffic and limits (`key_rows`).
    `key_id`: what one team key may see, its own requests only (and its own key row): usage
    filtered in the store,
    the series and recent rows from its newest LATENCY_SAMPLE records, no config error,
    circuits or record count of the whole gateway."""
    now = time.time() if now is None else now
    _ready, health = gw.readiness()
    if key_id is not None:
        health = {"status": health.get("status"), "router": health.get("router")}
    body: dict[str, Any] = {
        "object": "dashboard",
        "generated_at": now,
        "since": since,
        "until": until,
        "store": gw.config.store.backend,
        "status": health.get("status"),
        "router": health.get("router"),
        "config_error": health.get("config_error"),
        "backends": health.get("models", {}),
        "pending_records": gw.recorder.queue_depth,
        "savings": SAVINGS_TEXT,
    }
    if key_id is None and getattr(gw, "utilisation", None) is not None:
        from gateway.accounting.utilisation import local_cost

        body["local_cost"] = await local_cost(gw)
    store = gw.store
    limits = getattr(gw, "limits", None)
    by_key = [] if store is None else await store.usage(since, until, "key", key_id=key_id)
    per_key = {} if limits is None else await key_limits(limits, by_key, key_id)
    body["keys"] = key_rows(by_key, per_key)
    if store is None:
        body.update(
            totals=totals([]),
            latency_all={"p50_ms": None, "p95_ms": None, "n": 0},
            by_model=[],
            by_tier=[],
            timeseries=[],
            latency_series=[],
            recent=[],
            sticky=sticky_summary([]),
            bucket_s=nice_bucket(now - since),
            recorded=0,
        )
        return body
    by_model = await store.usage(since, until, "model", key_id=key_id)
    by_tier = await store.usage(since, until, "tier", key_id=key_id)
    # Bucket over the span that has data, so a short demo still fills the chart.
    coarse = nice_bucket(now - since)
    series = [] if key_id is not None else await store.timeseries(since, coarse)
    if series:
        first = min(row["bucket"] for row in series)
        fine = nice_bucket(now - max(since, first))
        if fine < coarse:
            lo = max(since, first)
            series = await store.timeseries(lo, fine)
            coarse = fine
    if until is not None:
        series = [row for row in series if row["bucket"] < until]
    newest = await store.recent(LATENCY_SAMPLE)
    in_window = [r for r in newest if r.ts >= since and (until is None or r.ts < until)]
    if key_id is not None:
        in_window = [r for r in in_window if r.key_id == key_id]
        series = _series(in_window, coarse)
    lat = sorted(r.latency_ms for r in in_window)
    body.update(
        totals=totals(by_model),
        latency_all={
            "p50_ms": percentile(lat, 50),
            "p95_ms": percentile(lat, 95),
            "n": len(lat),
            "sampled": len(newest) >= LATENCY_SAMPLE,
        },
        by_model=by_model,
        by_tier=by_tier,
        bucket_s=coarse,
        timeseries=series,
        latency_series=latency_series(in_window, since, coarse),
        recent=[recent_row(r) for r in in_window[:RECENT_ROWS]],
        sticky=sticky_summary(in_window),
        recorded=await store.count() if key_id is None else len(in_window),
    )
    return body
