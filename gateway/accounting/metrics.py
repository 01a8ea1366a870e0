"""Prometheus metrics (all named tollgate_*), kept on a private registry, rendered for /metrics.

With several uvicorn workers set PROMETHEUS_MULTIPROC_DIR (an empty directory, wiped before
start) in the environment before the workers import prometheus_client: every process then
writes its values to mmap files there and render() merges all of them with the multiprocess
collector. Gauges say how they merge: in-flight and queue depth are summed over live
processes, circuit state is the worst (max) over live processes, savings is summed over all.

In one process (no PROMETHEUS_MULTIPROC_DIR) a finished request's numbers are added to plain
Python numbers per label combination (`_Pending`) and folded into the prometheus_client series
when /metrics is rendered: the ~12 labelled inc()/observe() calls cost ~20 us per request,
the plain additions ~3 us. With several workers every value goes to the mmap files at once
(the rendering worker cannot make the others flush). Observing and rendering both run on the
event loop's thread, so a fold never races an addition.

A client chooses the `model` it sends, so no label value is taken from it as it is: once the
gateway has told `names()` what is configured, a route or model name that is none of those
is reported as "other", and router-<policy>-<x> as router-<policy> (x is any number the
client likes). On top of that, every label value is cut to `max_label_length` characters,
every label keeps at most `max_label_values` distinct values, and every metric at most
`max_series_per_metric` label combinations; past either, values are reported as "other".
"""

from __future__ import annotations

import contextlib
import os
import threading
from bisect import bisect_left
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from gateway.accounting.records import RequestRecord

OTHER = "other"
LATENCY_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
OVERHEAD_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25)
DECISION_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05)
LAG_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
UNIT_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)


def multiprocess_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


class _Bounded:
    """Maps label values onto at most `limit` distinct values per label name, each at most
    `length` characters long."""

    def __init__(self, limit: int, length: int) -> None:
        self.limit = limit
        self.length = length
        self._seen: dict[str, set[str]] = {}
        self._lock = threading.Lock()

    def __call__(self, label: str, value: object) -> str:
        v = "none" if value is None or value == "" else str(value)
        if len(v) > self.length:
            v = v[: self.length]
        seen = self._seen.setdefault(label, set())
        if v in seen:
            return v
        with self._lock:
            if len(seen) >= self.limit:
                return OTHER
            seen.add(v)
        return v


_CHILD_CACHE_MAX = 4096


@dataclass(slots=True)
class _Children:
    requests: Any
    tokens_in: Any
    tokens_cached: Any
    tokens_out: Any
    tokens_estimated: Any
    cost: Any
    baseline_cost: Any
    savings: Any
    latency: Any
    ttft: Any
    retries: Any
    fallbacks: Any
    quality_predicted: Any


class _Hist:
    """Observations of one histogram series, kept as plain numbers until folded in."""

    __slots__ = ("bounds", "counts", "n", "total")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # per bucket, not cumulative; the last is +Inf
        self.total = 0.0
        self.n = 0

    def add(self, v: float) -> None:
        # the first bucket whose upper bound is >= v, as Histogram.observe picks it
        self.counts[bisect_left(self.bounds, v)] += 1
        self.total += v
        self.n += 1

    def fold(self, child: Any) -> None:
        """Add the observations to a prometheus_client histogram child, and forget them.
        Its `_buckets` (one value per upper bound, +Inf last, not cumulative) and `_sum`
        are what Histogram.observe itself updates."""
        if not self.n:
            return
        for value, c in zip(child._buckets, self.counts, strict=True):
            if c:
                value.inc(c)
        child._sum.inc(self.total)
        self.counts = [0] * len(self.counts)
        self.total = 0.0
        self.n = 0


# the _Pending fields folded into the _Children series of the same name with inc()
_COUNTED = ("requests", "tokens_in", "tokens_cached", "tokens_out", "tokens_estimated", "cost",
            "baseline_cost", "savings", "retries", "fallbacks")  # fmt: skip


@dataclass(slots=True)
class _Pending:
    """What the requests of one label combination added since the last fold."""

    ch: _Children
    latency: _Hist
    ttft: _Hist
    quality_predicted: _Hist
    requests: int = 0
    tokens_in: int = 0
    tokens_cached: int = 0
    tokens_out: int = 0
    tokens_estimated: int = 0
    cost: float = 0.0
    baseline_cost: float = 0.0
    savings: float = 0.0
    retries: int = 0
    fallbacks: int = 0

    def fold(self) -> None:
        ch = self.ch
        for name in _COUNTED:  # at scrape time only: getattr is cheap enough here
            v = getattr(self, name)
            if v:
                getattr(ch, name).inc(v)
                setattr(self, name, 0)
        self.latency.fold(ch.latency)
        self.ttft.fold(ch.ttft)
        self.quality_predicted.fold(ch.quality_predicted)


@dataclass(slots=True)
class _Globals:
    """Unlabelled histograms and the in-flight counts, since the last fold."""

    overhead: _Hist = field(default_factory=lambda: _Hist(OVERHEAD_BUCKETS))
    router_score: _Hist = field(default_factory=lambda: _Hist(UNIT_BUCKETS))
    decision: _Hist = field(default_factory=lambda: _Hist(DECISION_BUCKETS))
    inflight: dict[tuple[str, str], int] = field(default_factory=dict)


class Metrics:
    def __init__(
        self,
        max_label_values: int = 200,
        max_label_length: int = 100,
        max_series_per_metric: int = 1000,
    ) -> None:
        self._inflight_children: dict[tuple[str, str], Any] = {}
        # by the request's own (route, model, tier, status), for known names only
        self._pending: dict[tuple[Any, ...], _Pending] = {}
        # by label values: every series combination there is (bounded)
        self._combos: dict[tuple[str, ...], _Pending] = {}
        self._g = _Globals()
        self.registry = CollectorRegistry(auto_describe=True)
        self._mp_dir = multiprocess_dir()
        self._defer = not self._mp_dir  # see the module docstring
        self._label = _Bounded(max_label_values, max_label_length)
        self._max_series = max_series_per_metric
        self._series: dict[int, set[tuple[str, ...]]] = {}  # id(metric) -> its combinations
        self._names: frozenset[str] | None = None  # None: not told, every name is kept
        self._routed: tuple[str, ...] = ()
        reg = self.registry
        self.requests = Counter(
            "tollgate_requests",
            "Requests answered",
            ["route", "model", "tier", "status"],
            registry=reg,
        )
        self.tokens = Counter(
            "tollgate_tokens",
            "Tokens by direction: input (all prompt tokens), cached_input (the cached subset "
            "of input), output",
            ["model", "direction"],
            registry=reg,
        )
        self.tokens_estimated = Counter(
            "tollgate_tokens_estimated_requests",
            "Requests whose token counts were estimated (upstream gave no usage)",
            ["model"],
            registry=reg,
        )
        self.cost = Counter(
            "tollgate_cost_usd", "Cost in USD", ["route", "model", "tier"], registry=reg
        )
        # Names kept from before "savings vs reference (same tokens)" had one name: they are
        # its reference cost and its USD savings (store.base.SAVINGS_DEFINITION).
        self.baseline_cost = Counter(
            "tollgate_baseline_cost_usd",
            "Reference cost in USD: each request's own tokens priced on its reference model "
            "(auto: the most capable candidate; a route: its reference; a model: itself)",
            ["route"],
            registry=reg,
        )
        self.savings = Gauge(
            "tollgate_savings_usd",
            "Savings vs reference (same tokens) in USD: reference cost minus cost, cumulative "
            "(negative when routing cost more)",
            ["route"],
            registry=reg,
            multiprocess_mode="sum",
        )
        self.latency = Histogram(
            "tollgate_request_latency_seconds",
            "Total latency as the client saw it",
            ["route", "model"],
            buckets=LATENCY_BUCKETS,
            registry=reg,
        )
        self.ttft = Histogram(
            "tollgate_ttft_seconds",
            "Time to first token (streams) or first byte",
            ["model"],
            buckets=TTFT_BUCKETS,
            registry=reg,
        )
        self.overhead = Histogram(
            "tollgate_gateway_overhead_seconds",
            "Latency minus upstream time",
            buckets=OVERHEAD_BUCKETS,
            registry=reg,
        )
        self.decision = Histogram(
            "tollgate_router_decision_seconds",
            "Time the router took to pick a model",
            buckets=DECISION_BUCKETS,
            registry=reg,
        )
        self.loop_lag = Histogram(
            "tollgate_event_loop_lag_seconds",
            "How late a timer the gateway sets every 100 ms fired, to the millisecond: how "
            "long its event loop was busy with other work; a request that arrived then waited "
            "as long before the gateway read it (not in tollgate_gateway_overhead_seconds)",
            buckets=LAG_BUCKETS,
            registry=reg,
        )
        self.router_score = Histogram(
            "tollgate_router_score",
            "Router need-for-strong score of routed requests",
            buckets=UNIT_BUCKETS,
            registry=reg,
        )
        self.retries = Counter(
            "tollgate_retries", "Extra attempts on the same model", ["model"], registry=reg
        )
        self.explored = Counter(
            "tollgate_router_explored",
            "Routed requests sent to an alternative near the router's choice (router.explore), "
            "by route and the model they went to",
            ["route", "model"],
            registry=reg,
        )
        self.limit_rejections = Counter(
            "tollgate_limit_rejections",
            "Requests refused over a rate limit or budget (gateway/tenants/limits.py), by kind "
            "(rpm, tpm, budget) and key (its id with server.metrics_per_key, else all)",
            ["key", "kind"],
            registry=reg,
        )
        # per gateway key, only with server.metrics_per_key (key ids, never keys; past
        # server.metrics_max_series_per_metric ids the rest count as "other")
        self.key_requests = Counter(
            "tollgate_key_requests",
            "Client requests per gateway key id (server.metrics_per_key)",
            ["key"],
            registry=reg,
        )
        self.key_cost = Counter(
            "tollgate_key_cost_usd",
            "Cost in USD per gateway key id (server.metrics_per_key)",
            ["key"],
            registry=reg,
        )
        self.fallbacks = Counter(
            "tollgate_fallbacks",
            "Switches to the next model of a route",
            ["route"],
            registry=reg,
        )
        self.upstream_errors = Counter(
            "tollgate_upstream_errors",
            "Failed upstream attempts",
            ["model", "kind"],
            registry=reg,
        )
        self.circuit = Gauge(
            "tollgate_circuit_state",
            "Circuit breaker: 0 closed, 1 half-open, 2 open",
            ["model", "endpoint"],
            registry=reg,
            multiprocess_mode="livemax",
        )
        self.inflight_g = Gauge(
            "tollgate_inflight_requests",
            "Requests in flight per endpoint",
            ["model", "endpoint"],
            registry=reg,
            multiprocess_mode="livesum",
        )
        self.queue_depth = Gauge(
            "tollgate_store_queue_depth",
            "Records and updates waiting to be stored",
            registry=reg,
            multiprocess_mode="livesum",
        )
        self.dropped_c = Counter(
            "tollgate_store_dropped_records",
            "Records (and quality updates) dropped because the store buffer was full or the "
            "store stayed down through shutdown",
            registry=reg,
        )
        self.quality_h = Histogram(
            "tollgate_quality",
            "Answer quality in [0, 1] by source: feedback, judge, predicted",
            ["model", "source"],
            buckets=UNIT_BUCKETS,
            registry=reg,
        )
        self.judge_errors = Counter(
            "tollgate_judge_errors",
            "Judge calls that failed or gave no parsable score",
            ["kind"],
            registry=reg,
        )
        # The judge's own calls: judge spend, kept out of the client series above
        self.judge_requests = Counter(
            "tollgate_judge_requests",
            "Calls the sampled judge made to its model, by status (not client requests)",
            ["model", "status"],
            registry=reg,
        )
        self.judge_cost = Counter(
            "tollgate_judge_cost_usd",
            "Cost in USD of the sampled judge's own calls (not in tollgate_cost_usd)",
            ["model"],
            registry=reg,
        )
        self.judge_tokens = Counter(
            "tollgate_judge_tokens",
            "Tokens of the sampled judge's own calls by direction: input, output",
            ["model", "direction"],
            registry=reg,
        )
        # the response cache (gateway/cache/): requests it applied to, by result
        self.cache_requests = Counter(
            "tollgate_cache_requests",
            "Requests the response cache applied to (cache: true on the route, model or key, "
            "or x-tollgate-cache: 1), by result: hit (served from the cache), miss (sent "
            "upstream, its answer kept), skip (not deterministic: sent upstream, not kept)",
            ["result"],
            registry=reg,
        )
        self._cache_children = {r: self.cache_requests.labels(r) for r in ("hit", "miss", "skip")}
        # locally priced models (gateway/accounting/utilisation.py), over utilisation.window_s
        self.local_busy = Gauge(
            "tollgate_local_busy_share",
            "Share of the utilisation window during which a locally priced model's endpoints "
            "had a request in flight (0-1, mean over its endpoints; this process's view)",
            ["model"],
            registry=reg,
            multiprocess_mode="livemax",
        )
        self.local_tokens = Gauge(
            "tollgate_local_tokens_served",
            "Output tokens a locally priced model served in the utilisation window",
            ["model"],
            registry=reg,
            multiprocess_mode="livesum",
        )
        self.local_cost = Gauge(
            "tollgate_local_usd_per_mtok",
            "USD per million output tokens of a locally priced model: marginal (the routing "
            "price, hardware_usd_per_hour / 3600 / tokens_per_second) and effective (the "
            "hardware's price over the window / the tokens it served there, idle time included; "
            "absent while it served none)",
            ["model", "price"],
            registry=reg,
            multiprocess_mode="livemax",
        )
        self._local: list[str] = []
        self.cache_saved = Counter(
            "tollgate_cache_saved_usd",
            "USD the response cache saved: what each hit's original request cost upstream",
            registry=reg,
        )

    def names(self, known: Iterable[str], routed_prefixes: Iterable[str] = ()) -> None:
        """The configured route and model names (kept as label values), and the prefixes of
        the router's virtual names, such as "router-max_utility-" (reported without the
        number that follows)."""
        self._names = frozenset(known)
        self._routed = tuple(routed_prefixes)
        self._pending.clear()  # a name no longer configured must not stay a known key

    def limits(self, max_label_length: int, max_series_per_metric: int) -> None:
        """New bounds (a reload); series already shown stay."""
        self._label.length = max_label_length
        self._max_series = max_series_per_metric

    def _name(self, value: str | None) -> str | None:
        """A route or model name as a label value: itself when configured, router-<policy>
        for a virtual router name, else "other"."""
        names = self._names
        if names is None or not value or value in names:
            return value
        if value.startswith(self._routed):
            return value[: value.index("-", 7)]  # router-<policy>
        return OTHER

    def _child(self, metric: Any, *values: str) -> Any:
        """metric.labels(*values), or the all-"other" series once the metric has
        `max_series_per_metric` label combinations."""
        seen = self._series.setdefault(id(metric), set())
        if values not in seen:
            if len(seen) >= self._max_series:
                values = (OTHER,) * len(values)
            seen.add(values)
        return metric.labels(*values)

    # -- per request ------------------------------------------------------------------------
    def observe(self, record: RequestRecord) -> None:
        """Everything one finished request contributes. Never raises."""
        with contextlib.suppress(Exception):  # metrics must never fail a request
            self._observe(record)

    def _children(self, route: str, model: str, tier: str, status: str) -> _Children:
        """The labelled series of one label combination (prometheus_client's labels() costs
        microseconds; `_pending_for` keeps the result per combination)."""
        c = self._child
        return _Children(
            requests=c(self.requests, route, model, tier, status),
            tokens_in=c(self.tokens, model, "input"),
            tokens_cached=c(self.tokens, model, "cached_input"),
            tokens_out=c(self.tokens, model, "output"),
            tokens_estimated=c(self.tokens_estimated, model),
            cost=c(self.cost, route, model, tier),
            baseline_cost=c(self.baseline_cost, route),
            savings=c(self.savings, route),
            latency=c(self.latency, route, model),
            ttft=c(self.ttft, model),
            retries=c(self.retries, model),
            fallbacks=c(self.fallbacks, route),
            quality_predicted=c(self.quality_h, model, "predicted"),
        )

    def _labels(self, r: RequestRecord) -> tuple[str, str, str, str]:
        lab = self._label
        return (
            lab("route", self._name(r.route)),
            lab("model", self._name(r.model)),
            lab("tier", r.tier),
            lab("status", r.status),
        )

    def _pending_for(self, r: RequestRecord) -> tuple[_Pending, bool]:
        """(the pending numbers of r's label combination, whether they stay pending)."""
        key = (r.route, r.model, r.tier, r.status)
        p = self._pending.get(key)
        if p is not None:
            return p, self._defer
        labels = self._labels(r)
        p = self._combos.get(labels)
        if p is None:
            if len(self._combos) >= self._max_series:
                labels = (OTHER, OTHER, OTHER, OTHER)
                p = self._combos.get(labels)
            if p is None:
                p = _Pending(
                    self._children(*labels),
                    _Hist(LATENCY_BUCKETS),
                    _Hist(TTFT_BUCKETS),
                    _Hist(UNIT_BUCKETS),
                )
                self._combos[labels] = p
        # only names reported as they are get a key of their own: any other name a client
        # sends is looked up through its labels each time
        if labels[0] == r.route and labels[1] == r.model and len(self._pending) < _CHILD_CACHE_MAX:
            self._pending[key] = p
        return p, self._defer

    def _observe(self, r: RequestRecord) -> None:
        p, keep = self._pending_for(r)
        p.requests += 1
        # counters only go up: an upstream's negative token count is not added
        if r.prompt_tokens > 0:
            p.tokens_in += r.prompt_tokens
        if r.cached_tokens > 0:
            p.tokens_cached += r.cached_tokens
        if r.completion_tokens > 0:
            p.tokens_out += r.completion_tokens
        if r.tokens_estimated:
            p.tokens_estimated += 1
        if r.cost_usd > 0:
            p.cost += r.cost_usd
        if r.baseline_cost_usd > 0:
            p.baseline_cost += r.baseline_cost_usd
        p.savings += r.baseline_cost_usd - r.cost_usd
        p.latency.add(r.latency_ms / 1000.0)
        if r.ttft_ms is not None:
            p.ttft.add(r.ttft_ms / 1000.0)
        g = self._g
        g.overhead.add(max(0.0, r.overhead_ms) / 1000.0)
        if r.router_score is not None:
            g.router_score.add(r.router_score)
        retries = r.attempts - 1 - r.fallbacks
        if retries > 0:
            p.retries += retries
        if r.fallbacks > 0:
            p.fallbacks += r.fallbacks
        if r.quality_predicted is not None:
            p.quality_predicted.add(r.quality_predicted)
        if r.explored:
            lab = self._label
            route, model = lab("route", self._name(r.route)), lab("model", self._name(r.model))
            self._child(self.explored, route, model).inc()
        if not keep:
            p.fold()
            self._fold_globals()

    def _fold_globals(self) -> None:
        g = self._g
        g.overhead.fold(self.overhead)
        g.router_score.fold(self.router_score)
        g.decision.fold(self.decision)
        if g.inflight:
            for (model, endpoint), delta in g.inflight.items():
                # an endpoint that has had requests shows, at 0 when none is in flight now
                child = self._inflight_child(model, endpoint)
                if delta:
                    child.inc(delta)
            g.inflight.clear()

    def fold(self) -> None:
        """Fold every pending number into the prometheus_client series (render() does)."""
        for p in self._combos.values():
            p.fold()
        self._fold_globals()

    # -- events -----------------------------------------------------------------------------
    def event_loop_lag(self, seconds: float) -> None:
        self.loop_lag.observe(seconds)  # 10 times a second: not worth deferring

    def router_decision(self, seconds: float) -> None:
        self._g.decision.add(seconds)
        if not self._defer:
            self._g.decision.fold(self.decision)

    def upstream_error(self, model: str, kind: str) -> None:
        lab = self._label
        self._child(self.upstream_errors, lab("model", model), lab("kind", kind)).inc()

    def limit_rejection(self, key: str, kind: str) -> None:
        lab = self._label
        self._child(self.limit_rejections, lab("key", key), lab("kind", kind)).inc()

    def key_usage(self, key: str, cost: float) -> None:
        """One client request of the gateway key `key` (its id) and what it cost."""
        k = self._label("key", key)
        self._child(self.key_requests, k).inc()
        if cost > 0:
            self._child(self.key_cost, k).inc(cost)

    def set_circuit(self, model: str, endpoint: str, state: int) -> None:
        lab = self._label
        self._child(self.circuit, lab("model", model), lab("endpoint", endpoint)).set(state)

    def inflight(self, model: str, endpoint: str, delta: int) -> None:
        # on the hot path twice per request: a plain count until the next fold
        if self._defer:
            pending = self._g.inflight
            pending[model, endpoint] = pending.get((model, endpoint), 0) + delta
        else:
            self._inflight_child(model, endpoint).inc(delta)

    def _inflight_child(self, model: str, endpoint: str) -> Any:
        child = self._inflight_children.get((model, endpoint))
        if child is None:
            lab = self._label
            child = self._child(self.inflight_g, lab("model", model), lab("endpoint", endpoint))
            self._inflight_children[(model, endpoint)] = child
        return child

    def local_models(self, names: list[str]) -> None:
        """The locally priced models now configured: series of models no longer there go."""
        for name in self._local:
            if name not in names:
                lab = self._label("model", name)
                for g in (self.local_busy, self.local_tokens):
                    with contextlib.suppress(KeyError):
                        g.remove(lab)
                for kind in ("marginal", "effective"):
                    with contextlib.suppress(KeyError):
                        self.local_cost.remove(lab, kind)
        self._local = list(names)

    def local_usage(self, rows: list[dict[str, Any]]) -> None:
        """Set the local-model gauges from `Utilisation.report()` rows (at /metrics)."""
        for r in rows:
            lab = self._label("model", r["model"])
            self._child(self.local_busy, lab).set(r["busy_share"])
            self._child(self.local_tokens, lab).set(r["completion_tokens"])
            self._child(self.local_cost, lab, "marginal").set(r["marginal_usd_per_mtok"])
            if r["effective_usd_per_mtok"] is None:
                with contextlib.suppress(KeyError):
                    self.local_cost.remove(lab, "effective")
            else:
                self._child(self.local_cost, lab, "effective").set(r["effective_usd_per_mtok"])

    def store_queue_depth(self, n: int) -> None:
        self.queue_depth.set(n)

    def dropped(self, n: int = 1) -> None:
        if n > 0:
            self.dropped_c.inc(n)

    def quality(self, model: str | None, source: str, score: float) -> None:
        lab = self._label
        self._child(self.quality_h, lab("model", model), lab("source", source)).observe(score)

    def judge_error(self, kind: str) -> None:
        self._child(self.judge_errors, self._label("judge_error", kind)).inc()

    def judge_call(self, r: RequestRecord) -> None:
        """One call the judge made (a record with purpose "judge"). Never raises."""
        with contextlib.suppress(Exception):
            c = self._child
            model = self._label("model", r.model)
            c(self.judge_requests, model, self._label("status", r.status)).inc()
            if r.cost_usd:
                c(self.judge_cost, model).inc(r.cost_usd)
            if r.prompt_tokens:
                c(self.judge_tokens, model, "input").inc(r.prompt_tokens)
            if r.completion_tokens:
                c(self.judge_tokens, model, "output").inc(r.completion_tokens)

    def cache(self, result: str, saved_usd: float = 0.0) -> None:
        """One request the response cache applied to: hit, miss or skip."""
        self._cache_children[result].inc()
        if saved_usd > 0:
            self.cache_saved.inc(saved_usd)

    # -- exposition -------------------------------------------------------------------------
    def render(self) -> tuple[bytes, str]:
        """(body, content type) for GET /metrics."""
        self.fold()
        if self._mp_dir:
            from prometheus_client import multiprocess

            reg = CollectorRegistry()
            multiprocess.MultiProcessCollector(reg, path=self._mp_dir)
            return generate_latest(reg), CONTENT_TYPE_LATEST
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
