"""Per-request limits a client sets in headers: x-tollgate-max-cost-usd (no model estimated
above it is chosen, fallbacks included, whatever name was asked for) and
x-tollgate-min-quality (no candidate the router predicts below it); both recorded."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable
from typing import Any

import httpx
import openai
import pytest

from tests.fake_upstream import FakeUpstream
from tests.support import GatewayProcess, tier_models

Fakes = Callable[..., FakeUpstream]
Gw = Callable[..., GatewayProcess]
MSGS: Any = [{"role": "user", "content": "Explain how a bicycle gear works."}]
# with max_tokens=100 the three tiers are estimated at about $0.00008 (small), $0.00056
# (medium) and $0.0045 (large): a ceiling of $0.001 leaves small and medium
CEILING = "0.001"


@pytest.fixture
def gw(fakes: Fakes, gateway: Gw) -> tuple[dict[str, FakeUpstream], GatewayProcess]:
    ups = {n: fakes(n) for n in ("small", "medium", "large")}
    cfg = "\n".join(
        [
            "server: {retry_backoff_s: 0.01}",
            'store: {backend: sqlite, sqlite_path: "${TOLLGATE_DB}", flush_interval_s: 0.05}',
            "limits: {default_completion_tokens: 1000}",
            "router: {default_policy: q, policies: {q: {kind: max_utility, cost_weight: 0}}}",
            "models:",
            *tier_models({n: u.base_url for n, u in ups.items()}),
            "routes:",
            "  - name: best-first",
            "    models: [large, medium, small]",
        ]
    )
    return ups, gateway(cfg)


def _post(gw: GatewayProcess, model: str, headers: dict[str, str], **body: Any) -> httpx.Response:
    return httpx.post(
        f"{gw.base_url}/chat/completions",
        json={"model": model, "messages": MSGS, **body},
        headers=headers,
        timeout=30,
    )


def _records(gw: GatewayProcess) -> dict[str, tuple[Any, ...]]:
    db = sqlite3.connect(gw.env["TOLLGATE_DB"])
    try:
        rows = db.execute("SELECT request_id, model, max_cost_usd, min_quality FROM requests")
        return {r[0]: r[1:] for r in rows}
    finally:
        db.close()


def test_cost_ceiling_applies_to_routes_models_and_fallbacks(gw: Any) -> None:
    ups, g = gw
    c = openai.OpenAI(base_url=g.base_url, api_key="x", max_retries=0)
    raw = c.chat.completions.with_raw_response.create(
        model="best-first",
        messages=MSGS,
        max_tokens=100,
        extra_headers={"x-tollgate-max-cost-usd": CEILING},
    )
    assert raw.headers["x-tollgate-model"] == "medium"  # large, listed first, is over it
    assert float(raw.headers["x-tollgate-cost-usd"]) <= float(CEILING)
    # medium fails: the fallback goes down to small, never up to large
    ups["medium"].script([{"kind": "status", "status": 500}])
    raw = c.chat.completions.with_raw_response.create(
        model="best-first",
        messages=MSGS,
        max_tokens=100,
        extra_headers={"x-tollgate-max-cost-usd": CEILING},
    )
    assert raw.headers["x-tollgate-model"] == "small"
    assert ups["large"].stats()["requests"] == 0
    # a concrete model over the ceiling: a 400 that names its estimate, nothing sent upstream
    r = _post(g, "large", {"x-tollgate-max-cost-usd": CEILING}, max_tokens=100)
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["code"] == "cost_ceiling" and "'large'" in err["message"]
    assert "+ 100 completion tokens" in err["message"]
    # without max_tokens the estimate assumes limits.default_completion_tokens (1000): then
    # even small is over a tiny ceiling, and the message names it as the cheapest
    r = _post(g, "best-first", {"x-tollgate-max-cost-usd": "0.0001"})
    assert r.status_code == 400
    msg = r.json()["error"]["message"]
    assert "the cheapest, 'small'" in msg and "+ 1000 completion tokens" in msg
    assert ups["large"].stats()["requests"] == 0
    # `auto` under the same ceiling: its quality-only policy would pick large
    free = _post(g, "auto", {}, max_tokens=100)
    capped = _post(g, "auto", {"x-tollgate-max-cost-usd": CEILING}, max_tokens=100)
    assert free.headers["x-tollgate-model"] == "large"
    assert capped.headers["x-tollgate-model"] in ("small", "medium")


def test_quality_floor_removes_candidates_predicted_below_it(gw: Any) -> None:
    _, g = gw
    r = _post(g, "auto", {"x-tollgate-explain": "1"}, max_tokens=100)
    quality = {
        e["model"]: e["predicted_quality"] for e in json.loads(r.headers["x-tollgate-explain"])
    }
    ranked = sorted(quality, key=quality.__getitem__)
    assert len(set(quality.values())) == 3
    # a floor just above the weakest: the weakest is never served, even as a fallback
    floor = (quality[ranked[0]] + quality[ranked[1]]) / 2
    cheapest = "router-max_utility-1000000"  # would pick small, the cheapest, without a floor
    plain = _post(g, cheapest, {}, max_tokens=100)
    assert plain.headers["x-tollgate-model"] == "small"
    floored = _post(g, cheapest, {"x-tollgate-min-quality": f"{floor:.6f}"}, max_tokens=100)
    assert floored.status_code == 200
    assert quality[floored.headers["x-tollgate-model"]] >= floor
    if ranked[0] == "small":
        assert floored.headers["x-tollgate-model"] != "small"
    # a floor nothing reaches: 400 naming the best prediction; a floor that is not 0-1: 400
    top = quality[ranked[-1]]
    r = _post(g, "auto", {"x-tollgate-min-quality": f"{min(1.0, top + 0.01):.6f}"})
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["code"] == "quality_floor"
    assert f"{ranked[-1]!r} at {top:.4f}" in err["message"]
    r = _post(g, "auto", {"x-tollgate-min-quality": "high"})
    assert r.status_code == 400
    assert r.json()["error"]["param"] == "x-tollgate-min-quality"
    assert "'high'" in r.json()["error"]["message"]
    # both limits are recorded with the request
    ok = _post(
        g,
        "auto",
        {"x-tollgate-min-quality": "0", "x-tollgate-max-cost-usd": "0.5"},
        max_tokens=100,
    )
    rid = ok.headers["x-tollgate-request-id"]
    for _ in range(100):
        recs = _records(g)
        if rid in recs:
            break
        time.sleep(0.05)
    assert recs[rid][1:] == (0.5, 0.0)
    assert recs[plain.headers["x-tollgate-request-id"]][1:] == (None, None)
