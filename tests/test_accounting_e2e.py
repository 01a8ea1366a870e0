"""Accounting through the running gateway: what a request costs, where it is recorded,
and that /metrics, /v1/usage and the store tell the same story."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.fake_upstream import FakeUpstream
from tests.redis_server import RedisServer
from tests.support import GatewayProcess, metric_samples, metric_total

Fakes = Callable[..., FakeUpstream]
Gw = Callable[..., GatewayProcess]

# API pricing: $3 / M input, $1.5 / M cached input, $15 / M output (large);
# $0.5 / M input, $1.5 / M output (small).
PRICED = """
server: {{retry_backoff_s: 0.01}}
store: {store}
judge: {judge}
models:
  - name: small
    tier: small
    pricing: {{input_per_mtok: 0.5, output_per_mtok: 1.5}}
    endpoints: [{{base_url: "{small}", model: up-small}}]
  - name: large
    tier: large
    pricing: {{input_per_mtok: 3.0, cached_input_per_mtok: 1.5, output_per_mtok: 15.0}}
    endpoints: [{{base_url: "{large}", model: up-large}}]
{extra}
routes:
  - name: chat
    models: [small, large]
    reference: large
"""


SQLITE = '{backend: sqlite, sqlite_path: "${TOLLGATE_DB}"}'


def config(
    small: FakeUpstream,
    large: FakeUpstream,
    store: str = SQLITE,
    judge: str = "{}",
    extra: str = "",
) -> str:
    return PRICED.format(
        store=store, judge=judge, small=small.base_url, large=large.base_url, extra=extra
    )


def wait_for(pred: Callable[[], Any], timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = pred()
        if got:
            return got
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


def usage(gw: GatewayProcess, group_by: str = "model") -> dict[str, Any]:
    r = httpx.get(f"{gw.url}/v1/usage", params={"since": "1h", "group_by": group_by})
    assert r.status_code == 200, r.text
    return r.json()


def burst(gw: GatewayProcess, n: int) -> list[int]:
    """n concurrent chat requests to model small; their status codes."""

    async def send() -> list[int]:
        async with httpx.AsyncClient(timeout=10) as c:
            body = {"model": "small", "messages": [{"role": "user", "content": "x"}]}
            rs = await asyncio.gather(
                *[c.post(f"{gw.base_url}/chat/completions", json=body) for _ in range(n)]
            )
            return [r.status_code for r in rs]

    return asyncio.run(send())


def test_cost_is_exact_and_streamed_equals_unary(fakes: Fakes, gateway: Gw) -> None:
    small, large = fakes("small", completion_tokens=40), fakes("large", completion_tokens=40)
    gw = gateway(config(small, large))
    c = openai.OpenAI(base_url=gw.base_url, api_key="x", max_retries=0)
    msgs = [{"role": "user", "content": "one two three four five"}]
    raw = c.chat.completions.with_raw_response.create(model="small", messages=msgs)
    resp = raw.parse()
    # the fake counts 5 words + 4 per message = 9 prompt tokens; 40 completion tokens
    assert (resp.usage.prompt_tokens, resp.usage.completion_tokens) == (9, 40)
    expected = 9 * 0.5e-6 + 40 * 1.5e-6  # = 0.0000645
    assert float(raw.headers["x-tollgate-cost-usd"]) == pytest.approx(expected, abs=1e-12)
    stream = c.chat.completions.create(model="small", messages=msgs, stream=True)
    for _ in stream:
        pass
    rows = wait_for(lambda: (u := usage(gw))["totals"]["requests"] == 2 and u)
    small_row = next(r for r in rows["data"] if r["group"] == "small")
    assert small_row["requests"] == 2
    assert small_row["cost_usd"] == pytest.approx(2 * expected, abs=1e-12)
    # the reference for a concrete model is itself: no savings claimed
    assert small_row["baseline_cost_usd"] == pytest.approx(2 * expected, abs=1e-12)
    db = sqlite3.connect(gw.tmp / "tollgate.db")
    costs = db.execute(
        "SELECT stream, cost_usd, tokens_estimated FROM requests ORDER BY ts"
    ).fetchall()
    assert [(bool(s), pytest.approx(expected, abs=1e-12), bool(e)) for s, _, e in costs] == [
        (False, costs[0][1], False),
        (True, costs[1][1], False),
    ]
    assert costs[0][1] == pytest.approx(costs[1][1], abs=1e-15)


def test_route_savings_against_reference(fakes: Fakes, gateway: Gw) -> None:
    small, large = fakes("small", completion_tokens=100), fakes("large")
    gw = gateway(config(small, large))
    c = openai.OpenAI(base_url=gw.base_url, api_key="x", max_retries=0)
    c.chat.completions.create(model="chat", messages=[{"role": "user", "content": "a b c d e f"}])
    u = wait_for(lambda: (u := usage(gw, "route"))["totals"]["requests"] == 1 and u)
    row = u["data"][0]
    # 10 prompt tokens, 100 completion tokens, answered by small, baseline large
    cost = 10 * 0.5e-6 + 100 * 1.5e-6
    base = 10 * 3e-6 + 100 * 15e-6
    assert row["group"] == "chat"
    assert row["cost_usd"] == pytest.approx(cost, abs=1e-12)
    assert row["baseline_cost_usd"] == pytest.approx(base, abs=1e-12)
    assert row["savings_pct"] == pytest.approx(100 * (base - cost) / base, abs=1e-6)


def test_no_usage_from_upstream_is_estimated_and_marked(fakes: Fakes, gateway: Gw) -> None:
    small, large = fakes("small", no_usage=True, completion_tokens=20), fakes("large")
    gw = gateway(config(small, large))
    c = openai.OpenAI(base_url=gw.base_url, api_key="x", max_retries=0)
    msgs = [{"role": "user", "content": "hello world"}]
    unary = c.chat.completions.create(model="small", messages=msgs)
    assert unary.usage is None
    list(c.chat.completions.create(model="small", messages=msgs, stream=True))
    db_path = gw.tmp / "tollgate.db"
    wait_for(lambda: _count(db_path) == 2)
    rows = (
        sqlite3.connect(db_path)
        .execute(
            "SELECT stream, tokens_estimated, prompt_tokens, completion_tokens, cost_usd "
            "FROM requests ORDER BY ts"
        )
        .fetchall()
    )
    # estimate: ceil(chars / 4) per text, +4 per message +3 for the reply
    # (gateway/accounting/pricing.py)
    answer = "[small] " + " ".join(f"tok{i}" for i in range(20))
    completion = -(-len(answer) // 4)
    for _stream, estimated, pt, ct, cost in rows:
        assert estimated == 1
        assert pt > 0 and ct == completion
        assert cost == pytest.approx(pt * 0.5e-6 + ct * 1.5e-6, abs=1e-12)
    assert rows[0][2:] == rows[1][2:]  # streamed and unary estimate the same
    assert [r[0] for r in rows] == [0, 1]


def _count(db_path: Path) -> int:
    try:
        return int(sqlite3.connect(db_path).execute("SELECT count(*) FROM requests").fetchone()[0])
    except sqlite3.OperationalError:
        return 0


def test_metrics_agree_with_usage_and_store(fakes: Fakes, gateway: Gw) -> None:
    small, large = fakes("small"), fakes("large")
    gw = gateway(config(small, large))
    c = openai.OpenAI(base_url=gw.base_url, api_key="x", max_retries=0)
    msgs = [{"role": "user", "content": "hi"}]
    for _ in range(5):
        c.chat.completions.create(model="small", messages=msgs)
    for _ in range(3):
        list(c.chat.completions.create(model="chat", messages=msgs, stream=True))
    large.script([{"kind": "status", "status": 400}])
    with pytest.raises(openai.BadRequestError):
        c.chat.completions.create(model="large", messages=msgs)
    u = wait_for(lambda: (u := usage(gw))["totals"]["requests"] == 9 and u)
    samples = metric_samples(httpx.get(f"{gw.url}/metrics").text)
    assert metric_total(samples, "tollgate_requests_total") == 9
    assert metric_total(samples, "tollgate_requests_total", model="small") == 8
    assert metric_total(samples, "tollgate_requests_total", status="400") == 1
    assert metric_total(samples, "tollgate_cost_usd_total") == pytest.approx(
        u["totals"]["cost_usd"], abs=1e-12
    )
    assert metric_total(samples, "tollgate_baseline_cost_usd_total") == pytest.approx(
        u["totals"]["baseline_cost_usd"], abs=1e-12
    )
    tokens_in = metric_total(samples, "tollgate_tokens_total", direction="input")
    assert tokens_in == u["totals"]["prompt_tokens"]
    db = sqlite3.connect(gw.tmp / "tollgate.db")
    n, cost = db.execute("SELECT count(*), sum(cost_usd) FROM requests").fetchone()
    assert n == 9 and cost == pytest.approx(u["totals"]["cost_usd"], abs=1e-12)


def test_feedback_and_judge_reach_record_usage_and_metrics(fakes: Fakes, gateway: Gw) -> None:
    small, large = fakes("small"), fakes("large")
    judge = fakes("judge", reply="Score: 8")
    extra = f'  - name: judge\n    tier: large\n    endpoints: [{{base_url: "{judge.base_url}"}}]'
    gw = gateway(config(small, large, judge="{model: judge, sample_rate: 1.0}", extra=extra))
    c = openai.OpenAI(base_url=gw.base_url, api_key="x", max_retries=0)
    msgs = [{"role": "user", "content": "grade me"}]
    r1 = c.chat.completions.with_raw_response.create(model="small", messages=msgs)
    rid = r1.headers["x-tollgate-request-id"]
    fb = httpx.post(f"{gw.url}/v1/feedback", json={"request_id": rid, "thumbs": "up"})
    assert fb.status_code in (200, 202), fb.text
    # the judge model was called with a rubric and answered "Score: 8" -> (8-1)/9
    wait_for(lambda: judge.stats()["requests"] >= 1)
    row = wait_for(
        lambda: next(
            (
                r
                for r in usage(gw)["data"]
                if r["group"] == "small"
                and r.get("quality_judge_mean") is not None
                and r.get("quality_feedback_mean") is not None
            ),
            None,
        )
    )
    assert row["quality_judge_mean"] == pytest.approx(7 / 9, abs=1e-9)
    assert row["quality_feedback_mean"] == 1.0
    assert row["quality_mean"] == 1.0  # feedback wins over the judge
    db = sqlite3.connect(gw.tmp / "tollgate.db")
    fbk, jdg = db.execute(
        "SELECT quality_feedback, quality_judge FROM requests WHERE request_id = ?", (rid,)
    ).fetchone()
    assert (fbk, pytest.approx(7 / 9)) == (1.0, jdg)
    samples = metric_samples(httpx.get(f"{gw.url}/metrics").text)
    assert metric_total(samples, "tollgate_quality_count", model="small", source="judge") == 1
    assert metric_total(samples, "tollgate_quality_count", model="small", source="feedback") == 1
    bad = httpx.post(f"{gw.url}/v1/feedback", json={"request_id": rid, "score": 7})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "score"


def test_redis_killed_mid_burst_loses_no_record(fakes: Fakes, gateway: Gw, tmp_path: Path) -> None:
    redis = RedisServer(tmp_path / "redis", durable=True).start()
    try:
        small, large = fakes("small"), fakes("large")
        store = f'{{backend: redis, redis_url: "{redis.url}", retry_interval_s: 0.2}}'
        gw = gateway(config(small, large, store=store))
        sent = burst(gw, 100)
        redis.kill()
        sent += burst(gw, 150)  # store down: the gateway keeps serving
        ready = httpx.get(f"{gw.url}/readyz").json()
        assert ready["status"] == "ready"
        redis.start()
        sent += burst(gw, 50)
        assert sent == [200] * 300
        u = wait_for(lambda: (u := usage(gw))["totals"]["requests"] == 300 and u, timeout=20)
        assert u["totals"]["requests"] == 300
        samples = metric_samples(httpx.get(f"{gw.url}/metrics").text)
        assert metric_total(samples, "tollgate_store_dropped_records_total") == 0
    finally:
        redis.stop()
