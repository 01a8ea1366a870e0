"""The sampled judge's own calls through the running gateway: they use every endpoint of the
judge model and its circuit breakers like client traffic, and they are priced and recorded
as judge spend (records with purpose "judge"), apart from client usage."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable

import httpx
import openai
import pytest

from tests.fake_upstream import FakeUpstream
from tests.support import GatewayProcess, free_port, metric_samples, metric_total
from tests.test_accounting_e2e import usage, wait_for

Fakes = Callable[..., FakeUpstream]
Gw = Callable[..., GatewayProcess]
MSGS = [{"role": "user", "content": "Name three rivers in France."}]


def config(small: FakeUpstream, judge_endpoints: list[str], extra: str = "") -> str:
    eps = ", ".join(f'{{base_url: "{u}"}}' for u in judge_endpoints)
    return f"""
server: {{retry_backoff_s: 0.01}}
store: {{backend: sqlite, sqlite_path: "${{TOLLGATE_DB}}"}}
judge: {{model: grader, sample_rate: 1.0}}
{extra}
models:
  - name: small
    tier: small
    pricing: {{input_per_mtok: 0.5, output_per_mtok: 1.5}}
    endpoints: [{{base_url: "{small.base_url}"}}]
  - name: grader
    tier: large
    pricing: {{input_per_mtok: 3.0, output_per_mtok: 15.0}}
    endpoints: [{eps}]
"""


def test_judge_with_its_first_endpoint_down_still_judges_and_its_cost_is_judge_spend(
    fakes: Fakes, gateway: Gw
) -> None:
    small = fakes("small")
    grader = fakes("grader", reply="Score: 8")
    dead = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    gw = gateway(config(small, [dead, grader.base_url]))
    c = openai.OpenAI(base_url=gw.base_url, api_key="x", max_retries=0)
    for _ in range(3):
        c.chat.completions.create(model="small", messages=MSGS)
    # every answer is graded, by the endpoint that is up: (8 - 1) / 9
    row = wait_for(
        lambda: next((r for r in usage(gw)["data"] if r["quality_n"] == 3), None), timeout=20
    )
    assert row["group"] == "small" and row["quality_judge_mean"] == pytest.approx(7 / 9)
    assert grader.stats()["requests"] == 3

    # each judge call is recorded, priced at the judge model's prices, marked as the judge's
    u = wait_for(lambda: (lambda u: u if u["judge"]["requests"] == 3 else None)(usage(gw)))
    db = sqlite3.connect(gw.tmp / "tollgate.db")
    judged = db.execute(
        "SELECT model, route, status, prompt_tokens, completion_tokens, tokens_estimated, "
        "cost_usd FROM requests WHERE purpose = 'judge'"
    ).fetchall()
    assert len(judged) == 3
    for model, route, status, pt, ct, estimated, cost in judged:
        assert (model, route, status, estimated) == ("grader", "grader", 200, 0)
        assert pt > 20 and ct == 16  # the rubric and the conversation; the fake's 16 tokens
        assert cost == pytest.approx(pt * 3.0e-6 + ct * 15.0e-6, rel=1e-9)
    judge_cost = sum(r[-1] for r in judged)
    # /v1/usage: client traffic in data and totals, the judge's calls as judge spend
    assert [r["group"] for r in u["data"]] == ["small"]
    assert u["totals"]["requests"] == 3
    client_cost = db.execute(
        "SELECT sum(cost_usd) FROM requests WHERE purpose = 'client'"
    ).fetchone()[0]
    assert u["totals"]["cost_usd"] == pytest.approx(client_cost, rel=1e-9)
    assert u["judge"]["cost_usd"] == pytest.approx(judge_cost, rel=1e-9) and judge_cost > 0
    assert u["judge"]["errors"] == 0
    assert [(r["model"], r["requests"]) for r in u["judge"]["data"]] == [("grader", 3)]
    # /metrics: judge spend in its own series, not in the client request and cost series
    samples = metric_samples(httpx.get(f"{gw.url}/metrics").text)
    assert metric_total(samples, "tollgate_judge_cost_usd_total", model="grader") == (
        pytest.approx(judge_cost, rel=1e-9)
    )
    assert metric_total(samples, "tollgate_judge_requests_total", status="200") == 3
    assert metric_total(samples, "tollgate_requests_total") == 3
    assert metric_total(samples, "tollgate_cost_usd_total", model="grader") == 0


def test_judge_respects_an_open_circuit(fakes: Fakes, gateway: Gw) -> None:
    small = fakes("small")
    grader = fakes("grader", reply="Score: 8")
    gw = gateway(
        config(small, [grader.base_url], "circuit_breaker: {failure_threshold: 1, cooldown_s: 60}")
    )
    c = openai.OpenAI(base_url=gw.base_url, api_key="x", max_retries=0)
    # a client request to the judge model fails and opens its circuit ...
    grader.script([{"kind": "status", "status": 500}])
    with pytest.raises(openai.APIStatusError):
        c.chat.completions.with_raw_response.create(
            model="grader", messages=MSGS, extra_body={"max_tokens": 8}
        )
    ready = httpx.get(f"{gw.url}/readyz").json()
    assert ready["models"]["grader"]["endpoints"][0]["circuit"] == "open"
    before = grader.stats()["requests"]
    # ... so the judge does not call it (the upstream would answer now) and says why
    c.chat.completions.create(model="small", messages=MSGS)
    wait_for(
        lambda: (
            metric_total(
                metric_samples(httpx.get(f"{gw.url}/metrics").text),
                "tollgate_judge_errors_total",
                kind="unavailable",
            )
            == 1
        )
    )
    assert grader.stats()["requests"] == before
    u = wait_for(lambda: (lambda u: u if u["judge"]["requests"] == 1 else None)(usage(gw)))
    assert u["judge"]["errors"] == 1 and u["judge"]["cost_usd"] == 0
    db = sqlite3.connect(gw.tmp / "tollgate.db")
    assert db.execute(
        "SELECT status, error_type, attempts FROM requests WHERE purpose = 'judge'"
    ).fetchall() == [(503, "service_unavailable", 0)]
    quality = db.execute(
        "SELECT quality_judge FROM requests WHERE model = 'small' AND purpose = 'client'"
    ).fetchall()
    assert quality == [(None,)]
