"""Rate limits and budgets (gateway/tenants/limits.py), end to end: real gateways (two
replicas on one real redis-server, one gateway with --workers 4 on the local backend), a
fake upstream with fixed usage, the openai SDK and httpx as clients."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import socket
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from gateway.accounting.records import SCHEMA_VERSION
from gateway.tenants.limits import window_of
from gateway.views import report
from tests.fake_upstream import FakeUpstream
from tests.redis_server import RedisClusterServers, RedisServer, have_redis
from tests.support import GatewayProcess, free_port, metric_samples, metric_total, tier_models

# a key that may send 6 requests a minute, and one with a budget of $0.1
RPM_KEY, BUDGET_KEY = "sk-team-rpm-0000000001", "sk-team-budget-0000002"
# $1 per 1,000 tokens both ways: a one-word prompt answered with 16 tokens costs
# (5 + 16) * 0.001 = $0.021 upstream; the gateway reserves (8 estimated + 16) * 0.001
PRICE = "{input_per_mtok: 1000, output_per_mtok: 1000}"
COST = 0.021
MAX_COST = 0.024


def sha(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def config(
    base_url: str,
    tmp: Path,
    limits: list[str],
    keys: list[str] | None = None,
    model_extra: list[str] | None = None,
    server: list[str] | None = None,
) -> str:
    lines = [
        "version: 1",
        "server:",
        "  drain_timeout_s: 1",
        *(server or []),
        "store:",
        f"  sqlite_path: {tmp / 'tollgate.db'}",
        "limits:",
        *limits,
        "auth:",
        "  keys:",
        *(
            keys
            or [
                f"    - {{id: team-rpm, sha256: {sha(RPM_KEY)}, rpm: 6}}",
                f"    - {{id: team-budget, sha256: {sha(BUDGET_KEY)}, budget_usd: 0.1}}",
            ]
        ),
        "models:",
        "  - name: m",
        "    tier: small",
        f"    pricing: {PRICE}",
        "    retries: 0",
        f"    endpoints: [{{base_url: '{base_url}', model: upstream-m}}]",
        *(model_extra or []),
    ]
    return "\n".join(lines) + "\n"


def chat(c: httpx.Client, url: str, key: str, model: str = "m") -> httpx.Response:
    return c.post(
        f"{url}/v1/chat/completions",
        json={"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 16},
        headers={"authorization": f"Bearer {key}"},
    )


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    if not have_redis():
        pytest.skip("redis-server not installed")
    srv = RedisServer(tmp_path / "redis").start()
    yield srv
    srv.stop()


def _counts(urls: list[str], key: str, n: int) -> tuple[int, list[httpx.Response]]:
    """n requests with `key`, spread over `urls` in turn, each on a new connection."""
    refused = []
    ok = 0
    for i in range(n):
        with httpx.Client(timeout=10) as c:
            r = chat(c, urls[i % len(urls)], key)
        if r.status_code == 200:
            ok += 1
        else:
            refused.append(r)
    return ok, refused


def _check_shared(urls: list[str]) -> int:
    """The shared rpm and budget hold; returns how many requests the budget let through."""
    ok, refused = _counts(urls, RPM_KEY, 12)
    assert ok == 6, f"{ok} of 12 requests passed a limit of 6 a minute"
    assert {r.status_code for r in refused} == {429}
    body = refused[0].json()["error"]
    assert body["code"] == "rate_limit_exceeded" and "6 requests per minute" in body["message"]
    assert refused[0].headers["x-ratelimit-limit-requests"] == "6"
    # the budget: $0.1 at $0.021 a request is 5 requests (the 5th starts at $0.084)
    ok, refused = _counts(urls, BUDGET_KEY, 10)
    assert 5 <= ok <= 6, f"{ok} of 10 requests passed a budget that holds 5"
    assert refused and all(r.json()["error"]["code"] == "insufficient_quota" for r in refused)
    return ok


@pytest.mark.redis
def test_two_replicas_on_one_redis_enforce_one_rpm_and_one_budget(
    fakes: Callable[..., FakeUpstream],
    gateway: Callable[..., GatewayProcess],
    redis_server: RedisServer,
    tmp_path: Path,
) -> None:
    up = fakes("m")
    limits = ["  backend: redis", f"  redis_url: {redis_server.url}"]
    a = gateway(config(up.base_url, tmp_path / "a", limits))
    b = gateway(config(up.base_url, tmp_path / "b", limits))
    ok = _check_shared([a.url, b.url])
    # the report of one replica's store reads the spend both replicas counted in Redis
    deadline = time.monotonic() + 20
    while not (tmp_path / "a" / "tollgate.db").exists():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    text = _report(a.config_path)
    spent = f"${ok * COST:.4f} spent"
    assert f"  team-budget: - / - / $0.1000 (month): {spent}" in text, text
    assert f"limits: spend read from the limits' Redis at {redis_server.url}" in text


@pytest.mark.redis
def test_a_redis_cluster_takes_the_limits_too(
    fakes: Callable[..., FakeUpstream],
    gateway: Callable[..., GatewayProcess],
    redis_cluster: RedisClusterServers,
    tmp_path: Path,
) -> None:
    """Each scope's keys hash to one slot: the scripts run on a cluster (no CROSSSLOT)."""
    up = fakes("m")
    # a key id of its own: the session's cluster is shared by tests
    tag = f"c{time.time_ns()}"
    keys = [
        f"    - {{id: {tag}-rpm, sha256: {sha(RPM_KEY)}, rpm: 6}}",
        f"    - {{id: {tag}-budget, sha256: {sha(BUDGET_KEY)}, budget_usd: 0.1}}",
    ]
    limits = ["  backend: redis", f"  redis_url: {redis_cluster.url}", "  redis_cluster: true"]
    a = gateway(config(up.base_url, tmp_path / "a", limits, keys))
    b = gateway(config(up.base_url, tmp_path / "b", limits, keys))
    _check_shared([a.url, b.url])


def test_budget_windows_are_utc_calendar_days_iso_weeks_and_months() -> None:
    import datetime as dt

    def at(*a: int) -> float:
        return dt.datetime(*a, tzinfo=dt.UTC).timestamp()

    sunday_night, monday = at(2026, 12, 6, 23, 59, 59), at(2026, 12, 7)
    assert window_of("week", sunday_night)[0] + 1 == window_of("week", monday)[0]
    assert window_of("week", sunday_night)[1] == pytest.approx(1.0)
    assert window_of("day", monday)[1] == pytest.approx(86400.0)
    new_year = at(2027, 1, 1)
    assert window_of("month", new_year - 1)[0] + 1 == window_of("month", new_year)[0]
    assert window_of("month", new_year - 1)[1] == pytest.approx(1.0)
    assert window_of("month", at(2027, 2, 1) - 1)[1] == pytest.approx(1.0)


def test_four_workers_without_redis_enforce_one_rpm_and_one_budget(
    fakes: Callable[..., FakeUpstream], gateway: Callable[..., GatewayProcess], tmp_path: Path
) -> None:
    up = fakes("m")
    limits = ["  backend: local", f"  local_path: {tmp_path / 'limits.bin'}"]
    gw = gateway(config(up.base_url, tmp_path, limits), args=["--workers", "4"])
    _check_shared([gw.url])


@pytest.mark.parametrize("backend", ["local", pytest.param("redis", marks=pytest.mark.redis)])
def test_a_hundred_concurrent_requests_overspend_by_at_most_one_request(
    fakes: Callable[..., FakeUpstream],
    gateway: Callable[..., GatewayProcess],
    tmp_path: Path,
    request: pytest.FixtureRequest,
    backend: str,
) -> None:
    """local: one gateway with two workers; redis: two replicas, the requests split."""
    up = fakes("m", latency_ms=100)  # every request reserves before the first one settles
    budget = 0.5
    keys = [f"    - {{id: t, sha256: {sha(BUDGET_KEY)}, budget_usd: {budget}}}"]
    if backend == "local":
        limits = ["  backend: local", f"  local_path: {tmp_path / 'limits.bin'}"]
        gws = [gateway(config(up.base_url, tmp_path, limits, keys), args=["--workers", "2"])]
    else:
        srv: RedisServer = request.getfixturevalue("redis_server")
        limits = ["  backend: redis", f"  redis_url: {srv.url}"]
        gws = [gateway(config(up.base_url, tmp_path / n, limits, keys)) for n in "ab"]

    async def run() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=100)) as c:
            body = {"model": "m", "messages": [{"role": "user", "content": "hi"}],
                    "max_tokens": 16}  # fmt: skip
            h = {"authorization": f"Bearer {BUDGET_KEY}"}
            urls = [f"{gw.base_url}/chat/completions" for gw in gws]
            return await asyncio.gather(
                *(c.post(urls[i % len(urls)], json=body, headers=h) for i in range(100))
            )

    got = asyncio.run(run())
    ok = [r for r in got if r.status_code == 200]
    assert {r.status_code for r in got} == {200, 429}
    spent = sum(float(r.headers["x-tollgate-cost-usd"]) for r in ok)
    assert spent == pytest.approx(len(ok) * COST)
    # the reservations are estimated maxima: more than 100 * $0.021 would be spent without
    # limits; with them, at most the budget plus one request's estimated maximum cost
    assert spent <= budget + MAX_COST + 1e-9, f"spent ${spent} of a ${budget} budget"
    assert len(ok) >= int(budget / MAX_COST)


def test_over_limit_answers_are_openai_429s_with_rate_limit_headers(
    fakes: Callable[..., FakeUpstream], gateway: Callable[..., GatewayProcess], tmp_path: Path
) -> None:
    up = fakes("m")
    limits = ["  backend: local", f"  local_path: {tmp_path / 'limits.bin'}"]
    keys = [
        f"    - {{id: r, sha256: {sha(RPM_KEY)}, rpm: 2}}",
        # 8 + 16 tokens reserved a request: the second one does not fit in 30
        f"    - {{id: t, sha256: {sha(BUDGET_KEY)}, tpm: 30}}",
    ]
    gw = gateway(config(up.base_url, tmp_path, limits, keys, server=["  metrics_per_key: true"]))
    sdk = openai.OpenAI(base_url=gw.base_url, api_key=RPM_KEY, max_retries=0)
    for left in ("1", "0"):  # an answer carries the headers too, as OpenAI's do
        ok = sdk.chat.completions.with_raw_response.create(
            model="m", messages=[{"role": "user", "content": "hi"}], stream=left == "0"
        )
        assert ok.headers["x-ratelimit-limit-requests"] == "2"
        assert ok.headers["x-ratelimit-remaining-requests"] == left
    with pytest.raises(openai.RateLimitError) as exc:
        sdk.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
    r = exc.value.response
    assert exc.value.code == "rate_limit_exceeded"
    assert int(r.headers["retry-after"]) >= 1
    assert r.headers["x-ratelimit-limit-requests"] == "2"
    assert r.headers["x-ratelimit-remaining-requests"] == "0"
    assert r.headers["x-ratelimit-reset-requests"].endswith("s")
    with httpx.Client(timeout=10) as c:
        assert chat(c, gw.url, BUDGET_KEY).status_code == 200
        r = chat(c, gw.url, BUDGET_KEY)
    assert r.status_code == 429
    assert r.json()["error"]["code"] == "rate_limit_exceeded"
    assert "30 tokens per minute" in r.json()["error"]["message"]
    assert r.headers["x-ratelimit-limit-tokens"] == "30"
    assert int(r.headers["x-ratelimit-remaining-tokens"]) < 24
    assert "retry-after" in r.headers
    samples = metric_samples(httpx.get(f"{gw.url}/metrics").text)
    assert metric_total(samples, "tollgate_limit_rejections_total", key="r", kind="rpm") == 1
    assert metric_total(samples, "tollgate_limit_rejections_total", key="t", kind="tpm") == 1
    # each key's requests (refused ones too) and spend, by key id
    assert metric_total(samples, "tollgate_key_requests_total", key="r") == 3
    assert metric_total(samples, "tollgate_key_requests_total", key="t") == 2
    assert metric_total(samples, "tollgate_key_cost_usd_total", key="t") == pytest.approx(COST)


def test_a_models_rpm_counts_every_key_and_a_route_falls_back(
    fakes: Callable[..., FakeUpstream], gateway: Callable[..., GatewayProcess], tmp_path: Path
) -> None:
    up = fakes("m")
    other = fakes("n")
    limits = ["  backend: local", f"  local_path: {tmp_path / 'limits.bin'}"]
    keys = [
        f"    - {{id: a, sha256: {sha(RPM_KEY)}}}",
        f"    - {{id: b, sha256: {sha(BUDGET_KEY)}}}",
    ]
    extra = [
        "    rpm: 2",
        "  - name: n",
        "    tier: medium",
        "    retries: 0",
        f"    endpoints: [{{base_url: '{other.base_url}', model: upstream-n}}]",
        "routes:",
        "  - {name: r, models: [m, n]}",
    ]
    gw = gateway(config(up.base_url, tmp_path, limits, keys, extra))
    with httpx.Client(timeout=10) as c:
        assert chat(c, gw.url, RPM_KEY).status_code == 200
        assert chat(c, gw.url, BUDGET_KEY).status_code == 200
        r = chat(c, gw.url, RPM_KEY)  # the model's 2 a minute are used, by two keys
        assert r.status_code == 429
        assert "the model 'm'" in r.json()["error"]["message"]
        assert r.headers["x-ratelimit-limit-requests"] == "2"
        routed = chat(c, gw.url, RPM_KEY, model="r")
    assert routed.status_code == 200 and routed.headers["x-tollgate-model"] == "n"
    # without server.metrics_per_key no key id is a label value
    samples = metric_samples(httpx.get(f"{gw.url}/metrics").text)
    assert metric_total(samples, "tollgate_limit_rejections_total", key="all", kind="rpm") == 2
    assert metric_total(samples, "tollgate_limit_rejections_total", key="a") == 0
    assert metric_total(samples, "tollgate_key_requests_total") == 0


PRIMES = [{"role": "user", "content": "Prove that there are infinitely many primes."}]


def routed_gateway(
    fakes: Callable[..., FakeUpstream],
    gateway: Callable[..., GatewayProcess],
    tmp_path: Path,
    head: list[str],
    policies: list[str],
) -> openai.OpenAI:
    """Three tiers behind `auto`, a key with a $0.01 budget, and its SDK client; the
    `balanced` policy's target is out of reach, so the best predicted quality (the large
    tier) wins while the budget is fresh."""
    ups = {n: fakes(n) for n in ("small", "medium", "large")}
    lines = [
        "version: 1",
        *head,
        "router:",
        "  policies:",
        "    balanced: {kind: cheapest_above, target: 0.9999}",
        *policies,
        "auth:",
        "  keys:",
        f"    - {{id: t, sha256: {sha(BUDGET_KEY)}, budget_usd: 0.01}}",
        "models:",
        *tier_models({n: u.base_url for n, u in ups.items()}),
    ]
    gw = gateway("\n".join(lines) + "\n")
    return openai.OpenAI(base_url=gw.base_url, api_key=BUDGET_KEY, max_retries=0)


def test_past_the_soft_share_auto_leaves_out_the_top_tier_and_the_record_says_so(
    fakes: Callable[..., FakeUpstream], gateway: Callable[..., GatewayProcess], tmp_path: Path
) -> None:
    head = [
        "store:",
        f"  sqlite_path: {tmp_path / 'tollgate.db'}",
        "  flush_interval_s: 0.05",
        "limits:",
        f"  local_path: {tmp_path / 'limits.bin'}",
        "  budget_soft: {share: 0.5, drop_top_tiers: 1}",
    ]
    sdk = routed_gateway(fakes, gateway, tmp_path, head, [])
    msgs = PRIMES
    gw_url = str(sdk.base_url).removesuffix("/v1/").removesuffix("/v1")
    first = sdk.chat.completions.with_raw_response.create(model="auto", messages=msgs)
    assert first.headers["x-tollgate-model"] == "large"
    served = [first.headers["x-tollgate-model"]]
    spent = float(first.headers["x-tollgate-cost-usd"])
    for _ in range(50):  # until past half the budget: then never the large tier
        if spent >= 0.005:
            break
        r = sdk.chat.completions.with_raw_response.create(
            model="auto", messages=msgs, max_tokens=2000
        )
        spent += float(r.headers["x-tollgate-cost-usd"])
        served.append(r.headers["x-tollgate-model"])
    assert spent >= 0.005
    after = sdk.chat.completions.with_raw_response.create(model="auto", messages=msgs)
    assert after.headers["x-tollgate-model"] == "medium"
    assert after.headers["x-tollgate-budget-soft"] == "1"
    assert "x-tollgate-budget-soft" not in first.headers
    rid = after.headers["x-tollgate-request-id"]
    deadline = time.monotonic() + 20
    row = None
    while row is None and time.monotonic() < deadline:
        with sqlite3.connect(tmp_path / "tollgate.db") as c:
            row = c.execute(
                "SELECT budget_soft, model, schema_version FROM requests WHERE request_id = ?",
                (rid,),
            ).fetchone()
        time.sleep(0.05)
    assert row == (1, "medium", SCHEMA_VERSION)
    usage = httpx.get(  # the key's own usage: with keys, /v1/usage needs one
        f"{gw_url}/v1/usage",
        params={"group_by": "key"},
        headers={"authorization": f"Bearer {BUDGET_KEY}"},
    ).json()
    lim = usage["limits"]["t"]
    assert lim["budget_usd"] == 0.01 and lim["budget_window"] == "month"
    assert lim["budget_spent_usd"] == pytest.approx(
        spent + float(after.headers["x-tollgate-cost-usd"])
    )
    row_t = next(r for r in usage["data"] if r["group"] == "t")
    assert row_t["budget_remaining_usd"] == pytest.approx(0.01 - lim["budget_spent_usd"])
    # the operator's report of the running gateway shows the same budget line
    out = io.StringIO()
    argv = ["--url", gw_url, "--group-by", "key", "--api-key", BUDGET_KEY]
    assert report.main(argv, out=out) == 0
    text = out.getvalue()
    assert "limits per key: rpm / tpm / budget (window): spent, remaining" in text
    spent_s, left_s = f"${lim['budget_spent_usd']:.4f}", f"${row_t['budget_remaining_usd']:.4f}"
    assert f"  t: - / - / $0.0100 (month): {spent_s} spent, {left_s} left" in text, text


def test_no_limits_means_no_limits_file(
    fakes: Callable[..., FakeUpstream], gateway: Callable[..., GatewayProcess], tmp_path: Path
) -> None:
    up = fakes("m")
    path = tmp_path / "limits.bin"
    keys = [f"    - {{id: a, sha256: {sha(RPM_KEY)}}}"]
    gw = gateway(config(up.base_url, tmp_path, [f"  local_path: {path}"], keys))
    with httpx.Client(timeout=10) as c:
        for _ in range(10):
            assert chat(c, gw.url, RPM_KEY).status_code == 200
    assert not path.exists()


def test_limits_added_to_the_file_apply_after_a_reload(
    fakes: Callable[..., FakeUpstream], gateway: Callable[..., GatewayProcess], tmp_path: Path
) -> None:
    up = fakes("m")
    limits = [f"  local_path: {tmp_path / 'limits.bin'}"]
    plain = [f"    - {{id: a, sha256: {sha(RPM_KEY)}}}"]
    gw = gateway(config(up.base_url, tmp_path, limits, plain))
    with httpx.Client(timeout=10) as c:
        assert all(chat(c, gw.url, RPM_KEY).status_code == 200 for _ in range(3))
        gw.write_config(
            config(
                up.base_url, tmp_path, limits, [f"    - {{id: a, sha256: {sha(RPM_KEY)}, rpm: 1}}"]
            )
        )
        gw.sighup()
        deadline = time.monotonic() + 10
        statuses: list[int] = []
        while time.monotonic() < deadline and 429 not in statuses:
            statuses.append(chat(c, gw.url, RPM_KEY).status_code)
    assert 429 in statuses, "the rpm of 1 never applied after the reload"
    assert statuses[-1] == 429 and statuses.count(200) <= 3


def test_with_the_limits_redis_down_requests_still_pass_and_the_log_says_why(
    fakes: Callable[..., FakeUpstream], gateway: Callable[..., GatewayProcess], tmp_path: Path
) -> None:
    up = fakes("m")
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
    limits = ["  backend: redis", f"  redis_url: redis://127.0.0.1:{dead}/0"]
    gw = gateway(config(up.base_url, tmp_path, limits))
    with httpx.Client(timeout=10) as c:
        assert [chat(c, gw.url, RPM_KEY).status_code for _ in range(8)] == [200] * 8
    assert "limits backend unavailable, requests pass unlimited" in gw.logs()


def test_a_routes_soft_rule_can_switch_auto_to_a_thrifty_policy(
    fakes: Callable[..., FakeUpstream], gateway: Callable[..., GatewayProcess], tmp_path: Path
) -> None:
    head = [
        "store: {backend: none}",
        "limits:",
        f"  local_path: {tmp_path / 'limits.bin'}",
        # auto past 1% of a key's budget: the thrifty policy, every tier still a candidate
        "  budget_soft_routes: {auto: {share: 0.01, drop_top_tiers: 0, policy: thrifty}}",
    ]
    thrifty = ["    thrifty: {kind: max_utility, cost_weight: 1000000000}"]
    sdk = routed_gateway(fakes, gateway, tmp_path, head, thrifty)
    msgs = PRIMES
    first = sdk.chat.completions.with_raw_response.create(model="auto", messages=msgs)
    assert first.headers["x-tollgate-model"] == "large"
    assert first.headers["x-tollgate-policy"] == "balanced"
    assert float(first.headers["x-tollgate-cost-usd"]) > 0.0001  # past 1% of $0.01
    after = sdk.chat.completions.with_raw_response.create(model="auto", messages=msgs)
    assert after.headers["x-tollgate-policy"] == "thrifty"
    assert after.headers["x-tollgate-model"] == "small"
    assert after.headers["x-tollgate-budget-soft"] == "1"
    # a concrete model is not routed: served as asked
    pinned = sdk.chat.completions.with_raw_response.create(model="large", messages=msgs)
    assert pinned.headers["x-tollgate-model"] == "large"
    assert "x-tollgate-budget-soft" not in pinned.headers


def test_a_soft_rule_naming_an_unknown_policy_is_refused_with_the_known_ones() -> None:
    from gateway.config import ConfigError, parse_config

    text = (
        "limits: {budget_soft: {share: 0.8, policy: thrify}}\n"
        "router: {policies: {balanced: {kind: cheapest_above, target: 0.6}, "
        "thrifty: {kind: max_utility, cost_weight: 100}}}\n"
        "models: [{name: m, tier: small, endpoints: [{base_url: 'http://127.0.0.1:9/v1'}]}]\n"
    )
    with pytest.raises(ConfigError) as e:
        parse_config(text, "r.yaml")
    assert "limits.budget_soft.policy" in str(e.value) and "'thrifty'" in str(e.value)


def test_a_streamed_answer_settles_its_tokens_on_the_real_usage(
    fakes: Callable[..., FakeUpstream], gateway: Callable[..., GatewayProcess], tmp_path: Path
) -> None:
    up = fakes("m")
    limits = [f"  local_path: {tmp_path / 'limits.bin'}"]
    keys = [f"    - {{id: t, sha256: {sha(BUDGET_KEY)}, tpm: 1000}}"]
    gw = gateway(config(up.base_url, tmp_path, limits, keys))
    sdk = openai.OpenAI(base_url=gw.base_url, api_key=BUDGET_KEY, max_retries=0)
    left = []
    for _ in range(2):
        # reserves 8 estimated + 200 tokens; the answer uses 5 + 16
        with sdk.chat.completions.with_streaming_response.create(
            model="m", messages=[{"role": "user", "content": "hi"}], max_tokens=200, stream=True
        ) as r:
            left.append(int(r.headers["x-ratelimit-remaining-tokens"]))
            assert b"[DONE]" in r.read()
    assert left[0] == 1000 - 208
    # the first gave back the 187 it did not use (plus what a second refills, at most 17
    # a second); unsettled, 584 would be left
    assert 1000 - 21 - 208 <= left[1] <= 1000 - 21 - 208 + 40


MASTER = "tg-master-limits-7c1e5a9d3b2f"


@pytest.mark.browser
def test_the_dashboard_shows_each_keys_limits_spend_rejections_and_budget_soft_mode(
    fakes: Callable[..., FakeUpstream], gateway: Callable[..., GatewayProcess], tmp_path: Path
) -> None:
    """A real headless Chromium signs in: the master key's page has a row per key with its
    limits, spend, budget left, the requests its limits refused and whether it is past its
    budget's soft share, equal to /v1/usage?group_by=key; a team key's page has its own
    row only."""
    from tests.test_dashboard import ARTIFACTS, Chromium, chromium_binary

    chromium_binary()
    up = fakes("m")
    limits = [f"  local_path: {tmp_path / 'limits.bin'}", "  budget_soft: {share: 0.3}"]
    gw = gateway(config(up.base_url, tmp_path, limits), env={"TOLLGATE_MASTER_KEY": MASTER})
    with httpx.Client(timeout=10) as c:
        rpm = [chat(c, gw.url, RPM_KEY).status_code for _ in range(8)]
        budget = [chat(c, gw.url, BUDGET_KEY).status_code for _ in range(7)]
    assert rpm.count(429) == 2 and budget == [200] * 5 + [429] * 2, (rpm, budget)
    master = {"authorization": f"Bearer {MASTER}"}

    def usage() -> dict[str, Any]:
        r = httpx.get(f"{gw.url}/v1/usage", params={"group_by": "key"}, headers=master)
        return dict(r.json())

    deadline = time.monotonic() + 20
    while usage()["totals"]["requests"] < 15 or usage()["pending_records"]:
        assert time.monotonic() < deadline, usage()
        time.sleep(0.1)
    u = usage()
    rows = {r["group"]: r for r in u["data"]}
    lim = u["limits"]
    assert rows["team-rpm"]["limit_rejections"] == 2 == rows["team-budget"]["limit_rejections"]
    soft = lim["team-budget"]
    assert soft["budget_soft"] is True and soft["budget_soft_share"] == 0.3
    assert lim["team-budget"]["budget_spent_usd"] == pytest.approx(5 * COST)

    def expected(kid: str) -> list[str]:
        r, e = rows[kid], lim[kid]

        def n(v: Any, fmt: str) -> str:
            return "–" if v is None else format(v, fmt)

        soft = "–" if e["budget_usd"] is None else "budget-soft" if e["budget_soft"] else "normal"
        return [kid, str(r["requests"]), f"{r['cost_usd']:.6f}", str(r["limit_rejections"]),
                n(e["rpm"], ","), n(e["tpm"], ","), n(e["budget_usd"], ".4f"),
                e.get("budget_window") or "–", n(e.get("budget_spent_usd"), ".6f"),
                n(e.get("budget_remaining_usd"), ".6f"), soft]  # fmt: skip

    browser = Chromium(tmp_path / "profile")
    read_rows = (
        "JSON.stringify([...document.querySelectorAll('#table-keys tbody tr')]"
        ".map(tr => [...tr.cells].map(td => td.textContent)))"
    )

    def sign_in(key: str) -> list[list[str]]:
        browser.call("Network.clearBrowserCookies")
        browser.call("Page.navigate", url=f"{gw.url}/dashboard")
        browser.wait_for("!!document.getElementById('signin')")
        browser.eval(
            f"document.getElementById('key').value = {key!r};"
            "document.getElementById('signin').submit(); true"
        )
        browser.wait_for("document.body && document.body.dataset.loaded >= '1'")
        assert browser.eval("document.getElementById('keys-card').hidden") is False
        return list(json.loads(browser.eval(read_rows)))

    try:
        for domain in ("Page", "Network", "Runtime"):
            browser.call(f"{domain}.enable")
        shown = sign_in(MASTER)
        assert sorted(shown) == sorted([expected("team-rpm"), expected("team-budget")])
        budget_row = next(r for r in shown if r[0] == "team-budget")
        assert budget_row[6:] == ["0.1000", "month", "0.105000", "0.000000", "budget-soft"]
        assert next(r for r in shown if r[0] == "team-rpm")[1:5] == ["8", "0.126000", "2", "6"]
        ARTIFACTS.mkdir(exist_ok=True)
        browser.screenshot(ARTIFACTS / "dashboard-keys.png")
        # a team key sees its own key's row only
        assert sign_in(RPM_KEY) == [expected("team-rpm")]
    finally:
        browser.close()
    team = httpx.get(f"{gw.url}/dashboard/data", headers={"authorization": f"Bearer {RPM_KEY}"})
    assert [k["key_id"] for k in team.json()["keys"]] == ["team-rpm"]


def _report(config_path: Path) -> str:
    out = io.StringIO()
    assert report.main(["--config", str(config_path), "--group-by", "key"], out=out) == 0
    return out.getvalue()


def test_report_from_the_store_reads_the_limits_where_the_gateway_counts_them(
    fakes: Callable[..., FakeUpstream], gateway: Callable[..., GatewayProcess], tmp_path: Path
) -> None:
    """`tollgate report --group-by key` without --url: the spend comes from the limits'
    file, as the gateway counts it; a file or Redis it cannot read is said, and the spend
    shows as unknown (-), never as $0."""
    up = fakes("m")
    gw = gateway(config(up.base_url, tmp_path, [f"  local_path: {tmp_path / 'limits.bin'}"]))
    with httpx.Client(timeout=10) as c:
        codes = [chat(c, gw.url, BUDGET_KEY).status_code for _ in range(6)]
    assert codes == [200] * 5 + [429]
    deadline = time.monotonic() + 20
    while True:
        with sqlite3.connect(tmp_path / "tollgate.db") as db:
            if db.execute("SELECT count(*) FROM requests").fetchone()[0] >= 6:
                break
        assert time.monotonic() < deadline
        time.sleep(0.05)
    text = _report(gw.config_path)
    line = "  team-budget: - / - / $0.1000 (month): $0.1050 spent, $0.0000 left"
    assert line + "; 1 refused by its limits" in text, text
    assert "  team-rpm: 6 / - / -" in text
    assert f"limits: spend read from the limits file at {tmp_path / 'limits.bin'}" in text
    # the same routing file with the limits' file somewhere else: no file there
    elsewhere = tmp_path / "elsewhere.yaml"
    elsewhere.write_text(
        gw.config_path.read_text().replace(str(tmp_path / "limits.bin"), str(tmp_path / "no.bin"))
    )
    text = _report(elsewhere)
    assert "  team-budget: - / - / $0.1000 (month): - spent, - left" in text, text
    assert f"limits: budget spend unknown: there is no limits file at {tmp_path / 'no.bin'}" in text
    assert not (tmp_path / "no.bin").exists()  # the report creates nothing
    # limits in a Redis nobody answers at
    port = free_port()
    unreachable = tmp_path / "redis.yaml"
    unreachable.write_text(
        gw.config_path.read_text().replace(
            f"  local_path: {tmp_path / 'limits.bin'}",
            f"  backend: redis\n  redis_url: redis://127.0.0.1:{port}/0",
        )
    )
    text = _report(unreachable)
    assert "  team-budget: - / - / $0.1000 (month): - spent, - left" in text, text
    why = (
        f"limits: budget spend unknown: cannot read the limits' Redis at redis://127.0.0.1:{port}/0"
    )
    assert why in text
