"""model="auto" through the running gateway: the learned router picks a tier per request."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest

from router_models.data import load_source
from tests.fake_upstream import FakeUpstream
from tests.support import GatewayProcess

TIERS = [
    ("small", "small", "gemma-2b-it", "{hardware_usd_per_hour: 0.35, tokens_per_second: 120}"),
    ("medium", "medium", "vicuna-13b-v1.5", "{hardware_usd_per_hour: 1.2, tokens_per_second: 60}"),
    (
        "large",
        "large",
        "humpback-llama2-70b",
        "{hardware_usd_per_hour: 4.8, tokens_per_second: 30}",
    ),
]
RANK = {"small": 0, "medium": 1, "large": 2}


def _median_threshold() -> float:
    """RouteLLM's calibration (`tollgate router calibrate --target-share 0.5`) on the
    training prompts: the strong-vs-weak score that sends half of them to the strong tier."""
    from router_models import load_router
    from router_models.evaluate import BenchItem, calibrate

    m = load_source("alpaca_eval")
    train = m.subset(~m.heldout)
    items = [BenchItem(i, c, {}) for i, c in zip(train.ids, train.conversations(), strict=True)]
    return calibrate(load_router(), items, 0.5, "humpback-llama2-70b", "gemma-2b-it")


def routed_config(fakes: dict[str, FakeUpstream], policies: str = "") -> str:
    lines = [
        "server: {retry_backoff_s: 0.01}",
        "circuit_breaker: {failure_threshold: 1, cooldown_s: 30}",
        "store: {backend: none}",
        "router:",
        "  default_policy: two-tier",
        "  policies:",
        f"    two-tier: {{kind: threshold, threshold: {_median_threshold():.5f}}}",
        "    balanced: {kind: cheapest_above, target: 0.5}",
        policies,
        "models:",
    ]
    for name, tier, profile, pricing in TIERS:
        lines += [
            f"  - name: {name}",
            f"    tier: {tier}",
            f"    profile: {profile}",
            f"    pricing: {pricing}",
            "    retries: 0",
            f"    endpoints: [{{base_url: '{fakes[name].base_url}'}}]",
        ]
    return "\n".join(x for x in lines if x)


@pytest.fixture
def routed(
    fakes: Callable[..., FakeUpstream], gateway: Callable[..., GatewayProcess]
) -> Iterator[tuple[dict[str, FakeUpstream], GatewayProcess]]:
    ups = {name: fakes(name) for name, *_ in TIERS}
    yield ups, gateway(routed_config(ups))


def heldout_prompts(n: int) -> tuple[list[str], np.ndarray]:
    """Held-out AlpacaEval prompts with their 'gap' label: large's score minus small's."""
    m = load_source("alpaca_eval")
    held = m.subset(m.heldout)
    j_small, j_large = held.models.index("gemma-2b-it"), held.models.index("humpback-llama2-70b")
    gap = held.scores[:, j_large] - held.scores[:, j_small]
    ok = ~np.isnan(gap)
    prompts = [p for p, k in zip(held.prompts, ok, strict=True) if k][:n]
    return prompts, gap[ok][:n]


def test_auto_sends_hard_heldout_prompts_to_bigger_tiers(routed: tuple) -> None:
    _, gw = routed
    prompts, gap = heldout_prompts(120)
    tiers, scores = [], []
    with httpx.Client(timeout=30) as c:
        for p in prompts:
            r = c.post(f"{gw.base_url}/chat/completions", json={
                "model": "auto", "messages": [{"role": "user", "content": p}]})  # fmt: skip
            assert r.status_code == 200, r.text
            tiers.append(RANK[r.headers["x-tollgate-tier"]])
            scores.append(float(r.headers["x-tollgate-router-score"]))
    tiers_a, scores_a = np.array(tiers), np.array(scores)
    assert 0 < tiers_a.mean() < 2, "the router should use both tiers on varied prompts"
    # prompts where the large model beats the small one by a wide margin ("hard") get a
    # higher need-for-strong score and go to bigger tiers more often than the rest
    hard = gap >= np.quantile(gap, 0.75)
    easy = gap <= np.quantile(gap, 0.25)
    assert scores_a[hard].mean() > scores_a[easy].mean()
    assert tiers_a[hard].mean() > tiers_a[easy].mean()
    # the score ranks prompts better than chance (AUC of score vs. "hard")
    auc = _auc(scores_a[hard | easy], hard[hard | easy])
    assert auc > 0.55, auc


def _auc(score: np.ndarray, positive: np.ndarray) -> float:
    pos, neg = score[positive], score[~positive]
    wins = sum((p > neg).sum() + 0.5 * (p == neg).sum() for p in pos)
    return float(wins / (len(pos) * len(neg)))


def test_score_headers_explain_and_virtual_policy_names(routed: tuple) -> None:
    _, gw = routed
    c = openai.OpenAI(base_url=gw.base_url, api_key="x", max_retries=0)
    msgs = [{"role": "user", "content": "Write a proof that sqrt(2) is irrational."}]
    raw = c.chat.completions.with_raw_response.create(
        model="auto", messages=msgs, extra_headers={"x-tollgate-explain": "1"}
    )
    score = float(raw.headers["x-tollgate-router-score"])
    assert 0.0 <= score <= 1.0
    assert raw.headers["x-tollgate-policy"] == "two-tier"
    assert raw.headers["x-tollgate-tier"] in ("small", "large")
    explain = json.loads(raw.headers["x-tollgate-explain"])
    assert {e["model"] for e in explain} == {"small", "medium", "large"}
    for e in explain:
        assert 0.0 <= e["predicted_quality"] <= 1.0 and e["estimated_cost_usd"] > 0
    # a threshold of 0 sends everything to the strong tier, 1.0 (almost) nothing
    strong = c.chat.completions.with_raw_response.create(model="router-threshold-0", messages=msgs)
    assert strong.headers["x-tollgate-tier"] == "large"
    weak = c.chat.completions.with_raw_response.create(model="router-threshold-1.01", messages=msgs)
    assert weak.headers["x-tollgate-tier"] == "small"
    # cheapest_above with an impossible target falls to the best predicted quality
    cheap = c.chat.completions.with_raw_response.create(
        model="router-cheapest_above-0", messages=msgs
    )
    assert cheap.headers["x-tollgate-tier"] == "small"
    util = c.chat.completions.with_raw_response.create(model="router-max_utility-0", messages=msgs)
    assert util.headers["x-tollgate-tier"] in ("small", "medium", "large")
    assert "auto" in {m.id for m in c.models.list()}
    with pytest.raises(openai.NotFoundError):
        c.chat.completions.create(model="router-nosuchpolicy-0.5", messages=msgs)


def test_auto_honours_an_open_circuit_by_choosing_the_next_tier(routed: tuple) -> None:
    ups, gw = routed
    c = openai.OpenAI(base_url=gw.base_url, api_key="x", max_retries=0)
    msgs = [{"role": "user", "content": "hello"}]
    first = c.chat.completions.with_raw_response.create(model="router-threshold-0", messages=msgs)
    assert first.headers["x-tollgate-tier"] == "large"
    ups["large"].kill()
    # the failed attempt opens large's circuit (threshold 1) and falls back to a smaller tier
    second = c.chat.completions.with_raw_response.create(model="router-threshold-0", messages=msgs)
    assert second.headers["x-tollgate-tier"] != "large"
    ready = httpx.get(f"{gw.url}/readyz").json()
    assert ready["models"]["large"]["endpoints"][0]["circuit"] == "open"
    # now the policy itself skips the open tier: one attempt, on the next best tier
    third = c.chat.completions.with_raw_response.create(model="router-threshold-0", messages=msgs)
    assert third.headers["x-tollgate-attempts"] == "1"
    assert third.headers["x-tollgate-tier"] != "large"
    assert not math.isnan(float(third.headers["x-tollgate-router-score"]))


def test_tampered_artifact_in_config_is_refused_on_reload(routed: tuple, tmp_path: Path) -> None:
    _, gw = routed
    src = Path(__file__).resolve().parent.parent / "router_models" / "artifacts" / "default"
    bad = tmp_path / "tampered"
    bad.mkdir()
    for f in src.iterdir():
        (bad / f.name).write_bytes(f.read_bytes())
    weights = bad / "weights.npz"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    text = gw.config_path.read_text().replace("router:\n", f"router:\n  artifact: '{bad}'\n")
    gw.write_config(text)
    deadline = time.monotonic() + 5
    err = None
    while time.monotonic() < deadline and not err:
        err = httpx.get(f"{gw.url}/readyz").json()["config_error"]
        time.sleep(0.1)
    assert err and "weights.npz" in err
    # still routing with the old artifact
    r = httpx.post(f"{gw.base_url}/chat/completions", json={
        "model": "auto", "messages": [{"role": "user", "content": "x"}]})  # fmt: skip
    assert r.status_code == 200 and "x-tollgate-router-score" in r.headers
