"""What a locally priced model's tokens really cost: its busy share and the tokens it served
over a sliding window, against the hardware's hourly price.

A local model (`pricing: {hardware_usd_per_hour, tokens_per_second}`) is priced for routing at
its marginal rate, `hardware_usd_per_hour / 3600 / tokens_per_second` per output token
(gateway/accounting/pricing.py): what a token costs when the box runs flat out. The box costs
its hourly price whether it is busy or idle, so over a window of W seconds what its tokens
really cost is::

    effective USD per million output tokens
        = hardware_usd_per_hour * endpoints * (W / 3600) / output tokens served in W * 1e6

(each endpoint is one box; W is the window, or the time since the gateway started when that
is shorter). With no token served it is None: the hardware was paid for and produced nothing.
The busy share is the fraction of W during which an endpoint had at least one request in
flight, averaged over the model's endpoints.

Cost on the request path: `Upstream` keeps a running total of its busy seconds (two
additions when its in-flight count leaves or reaches 0, gateway/proxy.py); a sampler task
turns those totals into time buckets of W / BUCKETS seconds, and the tokens of each answer are
added to the bucket of the moment it ended, after the response (Gateway._after). Reading sums
the buckets of the window.

Several replicas: with a shared store (Redis, PostgreSQL) the tokens served are read from the
store, so every replica's answers count (`tokens_source: "store"`); the busy share is this
replica's own view of the endpoints.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from gateway.accounting import pricing
from gateway.config import ModelConfig, Pricing

BUCKETS = 200
_RING = BUCKETS + 2  # a window's buckets, the partial oldest one, and the one filling now
MIN_BUCKET_S = 0.02
_PER_M = 1_000_000.0


def is_local(p: Pricing | None) -> bool:
    return p is not None and p.hardware_usd_per_hour is not None and p.tokens_per_second is not None


class _Ring:
    """Per-bucket sums (busy seconds, output tokens, input tokens, requests) over the last
    _RING buckets; a bucket is reused once it is older than the ring."""

    __slots__ = ("ids", "values")

    def __init__(self) -> None:
        self.ids = [-1] * _RING
        self.values = [[0.0, 0, 0, 0] for _ in range(_RING)]

    def slot(self, bucket: int) -> list[Any]:
        i = bucket % _RING
        if self.ids[i] != bucket:
            self.ids[i] = bucket
            self.values[i] = [0.0, 0, 0, 0]
        return self.values[i]

    def total(self, first: int, last: int) -> list[Any]:
        out: list[Any] = [0.0, 0, 0, 0]
        for i, b in enumerate(self.ids):
            if first <= b <= last:
                v = self.values[i]
                out = [out[0] + v[0], out[1] + v[1], out[2] + v[2], out[3] + v[3]]
        return out


@dataclass(slots=True)
class _Model:
    name: str
    tier: str
    pricing: Pricing
    endpoints: list[Any]  # Upstream: busy_total(), label
    ring: _Ring
    seen_busy: dict[str, float]  # endpoint label -> busy total already put into buckets


class Utilisation:
    """The busy share and tokens served of each locally priced model over `window_s`."""

    def __init__(self, window_s: float, clock: Any = time.monotonic) -> None:
        self.clock = clock
        self.started = clock()
        self.window_s = window_s
        self.bucket_s = max(MIN_BUCKET_S, window_s / BUCKETS)
        self.models: dict[str, _Model] = {}

    def configure(
        self,
        window_s: float,
        models: Iterable[ModelConfig],
        prices: Mapping[str, Pricing | None],
        upstreams: Mapping[str, list[Any]],
    ) -> None:
        """The models to follow (a reload may change them); counts of models that stay are
        kept unless the window changed."""
        if window_s != self.window_s:
            self.window_s = window_s
            self.bucket_s = max(MIN_BUCKET_S, window_s / BUCKETS)
            self.models = {}
            self.started = self.clock()
        old = self.models
        self.models = {}
        for m in models:
            p = prices.get(m.name)
            if not is_local(p):
                continue
            assert p is not None
            ups = list(upstreams.get(m.name, []))
            prev = old.get(m.name)
            ring = prev.ring if prev is not None else _Ring()
            seen = {u.label: u.busy_total() for u in ups}
            if prev is not None:  # carry over what was already bucketed for kept endpoints
                seen.update({k: v for k, v in prev.seen_busy.items() if k in seen})
            self.models[m.name] = _Model(m.name, m.tier, p, ups, ring, seen)

    def _bucket(self, now: float) -> int:
        return int((now - self.started) // self.bucket_s)

    def sample(self) -> None:
        """Move the endpoints' busy seconds since the last sample into the current bucket."""
        now = self.clock()
        b = self._bucket(now)
        for m in self.models.values():
            busy = 0.0
            for u in m.endpoints:
                total = u.busy_total()
                busy += total - m.seen_busy.get(u.label, total)
                m.seen_busy[u.label] = total
            if busy:
                m.ring.slot(b)[0] += busy

    def served(self, model: str | None, prompt_tokens: int, completion_tokens: int) -> None:
        """An answer of `model` ended now (after its response)."""
        # (model None: no model answered; no such key)
        m = self.models.get(model)  # type: ignore[arg-type]
        if m is None:
            return
        # once per answered request: _bucket and _Ring.slot inlined
        b = int((self.clock() - self.started) // self.bucket_s)
        ring = m.ring
        i = b % _RING
        if ring.ids[i] != b:
            ring.ids[i] = b
            ring.values[i] = [0.0, 0, 0, 0]
        v = ring.values[i]
        v[1] += completion_tokens
        v[2] += prompt_tokens
        v[3] += 1

    def report(
        self, store_tokens: Mapping[str, Mapping[str, Any]] | None = None
    ) -> list[dict[str, Any]]:
        """One row per local model: busy share, tokens served, marginal and effective USD per
        million output tokens over the window. `store_tokens`: the shared store's usage rows
        by model over the same window (every replica's answers), used instead of this
        process's counts."""
        self.sample()
        now = self.clock()
        last = self._bucket(now)
        span = min(self.window_s, now - self.started)
        first = self._bucket(now - span)  # (its bucket may start up to bucket_s earlier)
        out = []
        for m in self.models.values():
            busy, out_tok, in_tok, reqs = m.ring.total(first, last)
            source = "local"
            if store_tokens is not None:
                row = store_tokens.get(m.name) or {}
                out_tok = int(row.get("completion_tokens") or 0)
                in_tok = int(row.get("prompt_tokens") or 0)
                reqs = int(row.get("requests") or 0)
                source = "store"
            busy_share = min(1.0, busy / (span * len(m.endpoints))) if span > 0 else 0.0
            out.append(
                cost_row(
                    m.name,
                    m.tier,
                    m.pricing,
                    len(m.endpoints),
                    self.window_s,
                    span,
                    busy_share,
                    (reqs, in_tok, out_tok),
                    source,
                )
            )
        return out


def cost_row(
    model: str,
    tier: str,
    price: Pricing,
    endpoints: int,
    window_s: float,
    span_s: float,
    busy_share: float | None,
    served: tuple[int, int, int],
    source: str,
) -> dict[str, Any]:
    """One local model's row: `served` is (requests, input tokens, output tokens) in span_s."""
    reqs, in_tok, out_tok = served
    n = max(1, endpoints)
    usd_h = float(price.hardware_usd_per_hour or 0.0)
    rates = pricing.rates(price)
    paid = usd_h * n * span_s / 3600.0
    return {
        "model": model,
        "tier": tier,
        "endpoints": n,
        "hardware_usd_per_hour": usd_h,
        "tokens_per_second": price.tokens_per_second,
        "window_s": window_s,
        "span_s": span_s,
        "busy_share": busy_share,
        "requests": reqs,
        "prompt_tokens": in_tok,
        "completion_tokens": out_tok,
        "tokens_source": source,
        "hardware_cost_usd": paid,
        "marginal_usd_per_mtok": rates.output * _PER_M,
        "marginal_input_usd_per_mtok": rates.input * _PER_M,
        "effective_usd_per_mtok": paid / out_tok * _PER_M if out_tok else None,
    }


def period_cost(
    models: Iterable[ModelConfig], by_model: Mapping[str, Mapping[str, Any]], span_s: float
) -> list[dict[str, Any]]:
    """The local models' rows over a past period of `span_s` seconds from the store's usage
    rows by model (`tollgate report` reading a store): no busy share there (None)."""
    out = []
    for m in models:
        if not is_local(m.pricing):
            continue
        assert m.pricing is not None
        row = by_model.get(m.name) or {}
        served = (
            int(row.get("requests") or 0),
            int(row.get("prompt_tokens") or 0),
            int(row.get("completion_tokens") or 0),
        )
        out.append(
            cost_row(
                m.name, m.tier, m.pricing, len(m.endpoints), span_s, span_s, None, served, "store"
            )
        )
    return out


async def local_cost(gw: Any) -> list[dict[str, Any]]:
    """`Utilisation.report` of a live gateway, with the tokens from its store when that store
    is shared by replicas (Redis, PostgreSQL); what /v1/usage and the dashboard show."""
    util: Utilisation | None = getattr(gw, "utilisation", None)
    if util is None or not util.models:
        return []
    store = getattr(gw, "store", None)
    rows = None
    if store is not None and gw.config.store.backend in ("redis", "postgres"):
        since = time.time() - min(util.window_s, util.clock() - util.started)
        try:
            rows = {r["group"]: r for r in await store.usage(since, None, "model")}
        except Exception:  # the store down: this replica's own counts, said so
            rows = None
    return util.report(rows)
