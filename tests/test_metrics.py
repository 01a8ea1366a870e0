"""Metrics: what observe() and the event methods record is what /metrics renders."""

from __future__ import annotations

import os
import random
import string
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from gateway.accounting.metrics import Metrics
from gateway.accounting.records import RequestRecord
from tests.fake_upstream import FakeUpstream
from tests.support import (
    TIERS,
    GatewayProcess,
    metric_samples,
    metric_total,
    model_block,
    tier_models,
)


def samples(m: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    body, ctype = m.render()
    assert ctype.startswith("text/plain")
    out = metric_samples(body.decode())
    for name, _ in out:
        assert name.startswith("tollgate_"), name
    return out


total = metric_total


def rec(i: int, **kw: object) -> RequestRecord:
    base: dict[str, object] = dict(
        request_id=f"m-{i}",
        ts=1.0,
        route="chat",
        model="small",
        tier="small",
        prompt_tokens=100,
        cached_tokens=20,
        completion_tokens=50,
        cost_usd=0.001,
        baseline_cost_usd=0.004,
        latency_ms=250.0,
        ttft_ms=40.0,
        overhead_ms=1.5,
        router_score=0.3,
        attempts=1,
        quality_predicted=0.6,
    )
    base.update(kw)
    return RequestRecord(**base)  # type: ignore[arg-type]


def test_observe_totals_match() -> None:
    m = Metrics()
    for i in range(10):
        m.observe(rec(i))
    # one request that retried once on "large" then fell back once to "gpt" (3 attempts)
    m.observe(rec(10, model="gpt", tier="external", attempts=3, fallbacks=1, status=200,
                  cost_usd=0.01, baseline_cost_usd=0.004))  # fmt: skip
    m.observe(rec(11, status=502, cost_usd=0.0, baseline_cost_usd=0.0, prompt_tokens=0,
                  cached_tokens=0, completion_tokens=0, tokens_estimated=True))  # fmt: skip
    s = samples(m)
    assert total(s, "tollgate_requests_total") == 12
    assert total(s, "tollgate_requests_total", model="small", status="200") == 10
    assert total(s, "tollgate_requests_total", status="502") == 1
    assert total(s, "tollgate_tokens_total", direction="input") == 1100
    assert total(s, "tollgate_tokens_total", direction="cached_input") == 220
    assert total(s, "tollgate_tokens_total", direction="output") == 550
    assert total(s, "tollgate_tokens_estimated_requests_total") == 1
    assert total(s, "tollgate_cost_usd_total") == pytest.approx(0.02)
    assert total(s, "tollgate_baseline_cost_usd_total") == pytest.approx(0.044)
    # savings = 10 * 0.003 + (0.004 - 0.01) = 0.024
    assert total(s, "tollgate_savings_usd", route="chat") == pytest.approx(0.024)
    # the series keep their names; their help says which savings number they are
    page = m.render()[0].decode()
    assert "# HELP tollgate_savings_usd Savings vs reference (same tokens) in USD" in page
    assert "# HELP tollgate_baseline_cost_usd_total Reference cost in USD" in page
    assert total(s, "tollgate_request_latency_seconds_count") == 12
    assert total(s, "tollgate_request_latency_seconds_sum") == pytest.approx(3.0)
    assert total(s, "tollgate_ttft_seconds_sum") == pytest.approx(0.48)
    assert total(s, "tollgate_gateway_overhead_seconds_count") == 12
    assert total(s, "tollgate_router_score_count") == 12
    assert total(s, "tollgate_retries_total", model="gpt") == 1  # 3 attempts - 1 - 1 fallback
    assert total(s, "tollgate_fallbacks_total", route="chat") == 1
    assert total(s, "tollgate_quality_count", source="predicted") == 12
    assert total(s, "tollgate_quality_sum", source="predicted") == pytest.approx(7.2)


def test_event_methods() -> None:
    m = Metrics()
    m.router_decision(0.0004)
    m.upstream_error("large", "timeout")
    m.upstream_error("large", "timeout")
    m.set_circuit("large", "large#0", 2)
    m.inflight("large", "large#0", 3)
    m.inflight("large", "large#0", -1)
    m.store_queue_depth(17)
    m.dropped(4)
    m.dropped(0)
    m.quality("small", "feedback", 1.0)
    m.quality("small", "judge", 0.5)
    m.judge_error("unparsable")
    s = samples(m)
    assert total(s, "tollgate_router_decision_seconds_count") == 1
    assert total(s, "tollgate_upstream_errors_total", model="large", kind="timeout") == 2
    assert total(s, "tollgate_circuit_state", endpoint="large#0") == 2
    assert total(s, "tollgate_inflight_requests", model="large") == 2
    assert total(s, "tollgate_store_queue_depth") == 17
    assert total(s, "tollgate_store_dropped_records_total") == 4
    assert total(s, "tollgate_quality_sum", model="small", source="feedback") == 1.0
    assert total(s, "tollgate_quality_sum", model="small", source="judge") == 0.5
    assert total(s, "tollgate_judge_errors_total", kind="unparsable") == 1


def test_label_values_are_bounded() -> None:
    m = Metrics(max_label_values=5)
    for i in range(50):
        m.observe(rec(i, model=f"model-{i}", route=f"route-{i}"))
    s = samples(m)
    models = {dict(lab)["model"] for (n, lab) in s if n == "tollgate_requests_total"}
    assert len(models) == 6 and "other" in models
    assert total(s, "tollgate_requests_total") == 50


def test_multiprocess_mode_merges_workers(tmp_path: Path) -> None:
    """Two processes observe; a third renders the sum, as uvicorn --workers would."""
    mp = tmp_path / "prom"
    mp.mkdir()
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(mp)}
    root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    worker = textwrap.dedent(
        """
        from gateway.accounting.metrics import Metrics
        from gateway.accounting.records import RequestRecord
        m = Metrics()
        for i in range(3):
            m.observe(RequestRecord(request_id=str(i), ts=1.0, route="chat", model="small",
                                    tier="small", cost_usd=0.5, latency_ms=100.0))
        m.dropped(2)
        m.inflight("small", "small#0", 1)
        """
    )
    for _ in range(2):
        subprocess.run([sys.executable, "-c", worker], env=env, check=True, timeout=60)
    render = (
        "import sys; from gateway.accounting.metrics import Metrics; "
        "sys.stdout.write(Metrics().render()[0].decode())"
    )
    out = subprocess.run(
        [sys.executable, "-c", render], env=env, check=True, capture_output=True, text=True,
        timeout=60,
    ).stdout  # fmt: skip
    smp = metric_samples(out)
    assert total(smp, "tollgate_requests_total") == 6
    assert total(smp, "tollgate_cost_usd_total") == pytest.approx(3.0)
    assert total(smp, "tollgate_store_dropped_records_total") == 4
    assert total(smp, "tollgate_savings_usd") == pytest.approx(-3.0)


def test_deferred_histograms_bucket_like_prometheus() -> None:
    """Pending observations land in the buckets Histogram.observe would pick, bounds included,
    and a scrape folds them in exactly once."""
    from prometheus_client import CollectorRegistry, Histogram

    from gateway.accounting.metrics import LATENCY_BUCKETS

    values = [0.0, 0.001, 0.025, 0.0250001, 0.05, 0.3, 1.0, 2.5, 59.9, 60.0, 120.0, 121.0, 1e6]
    ref_reg = CollectorRegistry()
    ref = Histogram("tollgate_request_latency_seconds", "ref", ["route", "model"],
                    buckets=LATENCY_BUCKETS, registry=ref_reg)  # fmt: skip
    m = Metrics()
    for i, v in enumerate(values):
        ref.labels("chat", "small").observe(v)
        m.observe(rec(i, latency_ms=v * 1000.0))

    def buckets(smp: dict) -> dict:
        return {
            dict(lab)["le"]: val
            for (n, lab), val in smp.items()
            if n == "tollgate_request_latency_seconds_bucket"
        }

    from prometheus_client import generate_latest

    want = metric_samples(generate_latest(ref_reg).decode())
    first = samples(m)
    assert buckets(first) == buckets(want)
    assert total(first, "tollgate_request_latency_seconds_sum") == pytest.approx(
        total(want, "tollgate_request_latency_seconds_sum")
    )
    # a second scrape with nothing new shows the same totals (nothing folded twice)
    again = samples(m)
    assert buckets(again) == buckets(want)
    assert total(again, "tollgate_requests_total") == len(values)
    m.observe(rec(99, latency_ms=3.0))
    assert total(samples(m), "tollgate_requests_total") == len(values) + 1


def test_negative_token_counts_are_not_counted() -> None:
    m = Metrics()
    m.observe(rec(1, prompt_tokens=-5, completion_tokens=7))
    s = samples(m)
    assert total(s, "tollgate_tokens_total", direction="input") == 0
    assert total(s, "tollgate_tokens_total", direction="output") == 7
    assert total(s, "tollgate_requests_total") == 1


def _sample_lines(text: str) -> int:
    return sum(1 for line in text.splitlines() if line and not line.startswith("#"))


def test_client_chosen_names_do_not_grow_metrics(
    fakes: Callable[..., FakeUpstream], gateway: Callable[..., GatewayProcess]
) -> None:
    """Whatever model names a client sends, /metrics stays the same size: unknown names (short
    or 1 MB) and router-<policy>-<x> thresholds collapse into bounded label values; the
    errors for the unknown names are 4xx in OpenAI's format that do not echo 1 MB back."""
    urls = {name: fakes(name).base_url for name, *_ in TIERS}
    cfg = [
        "store: {backend: none}",
        "router: {default_policy: balanced, policies: "
        "{balanced: {kind: cheapest_above, target: 0.5}}}",
        "models:",
        *tier_models(urls),
    ]
    gw = gateway("\n".join(cfg))
    rng = random.Random(7)
    msgs = [{"role": "user", "content": "hi"}]

    def chat(c: httpx.Client, model: str) -> httpx.Response:
        return c.post(f"{gw.base_url}/chat/completions", json={"model": model, "messages": msgs})

    with httpx.Client(timeout=30) as c:
        # one request of every kind first: the series they add are the bounded set
        for model in ("small", "auto", "router-max_utility-0.5", "no-such-model", "x" * 5000):
            chat(c, model)
        before = c.get(f"{gw.url}/metrics").text
        for _ in range(2000):
            name = "".join(
                rng.choices(string.ascii_lowercase + string.digits, k=rng.randint(4, 40))
            )
            r = chat(c, name)
            assert r.status_code == 404, r.text
            assert r.json()["error"]["code"] == "model_not_found"
        for i in range(5):
            huge = f"{i}" + "m" * (1 << 20)
            r = chat(c, huge)
            assert 400 <= r.status_code < 500, r.text[:300]
            err = r.json()["error"]
            assert err["type"] == "invalid_request_error" and err["param"] == "model"
            assert f"{i}mmmm" in err["message"]  # the name, cut short
            assert len(r.content) < 4096
        for _ in range(50):
            r = chat(c, f"router-max_utility-{rng.random():.6f}")
            assert r.status_code == 200, r.text
        after = c.get(f"{gw.url}/metrics")
    assert len(after.content) < 1 << 20
    assert _sample_lines(after.text) <= _sample_lines(before) + 30, after.text[-3000:]
    samples = metric_samples(after.text)
    assert metric_total(samples, "tollgate_requests_total", route="other", status="404") >= 2000
    assert metric_total(samples, "tollgate_requests_total") == 5 + 2000 + 5 + 50


def test_label_length_and_series_per_metric_are_capped() -> None:
    m = Metrics(max_label_length=10, max_series_per_metric=12)
    m.names(["chat", "small", "a-model-with-a-long-name"], ["router-max_utility-"])
    m.observe(rec(0, model="a-model-with-a-long-name"))
    m.observe(rec(1, route="router-max_utility-0.123", status=200))
    m.observe(rec(2, route="not-configured", model="nor-this"))
    for i in range(40):  # an upstream that answers with 40 different statuses
        m.observe(rec(10 + i, status=400 + i))
        m.upstream_error("small", f"kind-{i}")
    s = samples(m)
    routes = {dict(lab)["route"] for (n, lab) in s if n == "tollgate_requests_total"}
    models = {dict(lab)["model"] for (n, lab) in s if n == "tollgate_requests_total"}
    assert routes == {"chat", "router-max", "other"}  # cut to 10 characters
    assert models == {"small", "a-model-wi", "other"}
    for name in ("tollgate_requests_total", "tollgate_upstream_errors_total"):
        combos = {lab for (n, lab) in s if n == name}
        assert len(combos) == 13, combos  # 12, then one all-"other" series
    assert total(s, "tollgate_requests_total") == 43
    assert total(s, "tollgate_upstream_errors_total") == 40


def test_metric_limits_are_routing_file_settings(
    fakes: Callable[..., FakeUpstream], gateway: Callable[..., GatewayProcess]
) -> None:
    up = fakes("long")
    name = "a-model-named-at-some-length"
    gw = gateway(
        "store: {backend: none}\n"
        "server: {metrics_max_label_length: 12, metrics_max_series_per_metric: 10}\n"
        "models:\n" + model_block(name, "small", up.base_url)
    )
    r = httpx.post(
        f"{gw.base_url}/chat/completions",
        json={"model": name, "messages": [{"role": "user", "content": "hi"}]},
        timeout=30,
    )
    assert r.status_code == 200, r.text
    s = metric_samples(httpx.get(f"{gw.url}/metrics", timeout=30).text)
    assert total(s, "tollgate_requests_total", model=name[:12], route=name[:12]) == 1
    assert total(s, "tollgate_requests_total") == 1


def test_prometheus_client_keeps_the_private_fields_the_fold_writes() -> None:
    """Folding the pending numbers into a histogram writes the child's `_buckets` and `_sum`,
    the fields Histogram.observe itself updates (prometheus_client has no public way to add
    counts to a bucket). pyproject.toml pins prometheus-client to the versions tested with
    these; an upgrade that renames or reshapes them fails here."""
    import tomllib
    from importlib.metadata import version

    from packaging.requirements import Requirement
    from prometheus_client import CollectorRegistry, Histogram, generate_latest

    deps = tomllib.loads((Path(__file__).parent.parent / "pyproject.toml").read_text())
    (pin,) = [
        r
        for r in map(Requirement, deps["project"]["dependencies"])
        if r.name == "prometheus-client"
    ]
    assert any(s.operator == "<" for s in pin.specifier), f"{pin}: no upper bound"
    assert pin.specifier.contains(version("prometheus-client")), pin
    reg = CollectorRegistry()
    h = Histogram("h", "h", ["a"], buckets=(1.0, 2.0), registry=reg).labels("b")
    assert len(h._buckets) == 3  # one per upper bound, +Inf last, not cumulative
    h.observe(1.5)
    h.observe(7.0)
    assert [b.get() for b in h._buckets] == [0.0, 1.0, 1.0]
    assert h._sum.get() == 8.5
    h._buckets[0].inc(2)  # what _Hist.fold does
    h._sum.inc(0.5)
    s = metric_samples(generate_latest(reg).decode())
    assert total(s, "h_bucket", le="1.0") == 2
    assert total(s, "h_bucket", le="+Inf") == 4
    assert total(s, "h_count") == 4 and total(s, "h_sum") == 9.0
