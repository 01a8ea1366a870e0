"""router.fallback through the running gateway: where a routed request goes when the model
the policy chose fails (an error, an open circuit, a timeout).

The policy always picks the medium tier (a threshold no score reaches, weak: medium), so its
own preference order after medium is small (the cheapest other candidate), then large.
`next_tier_up` (the default) climbs to large instead; `route_order` keeps the policy's order.
"""

from __future__ import annotations

from collections.abc import Callable

import httpx
import openai
import pytest

from tests.fake_upstream import FakeUpstream
from tests.support import TIERS, GatewayProcess, tier_models

Fakes = Callable[..., FakeUpstream]
Gw = Callable[..., GatewayProcess]

MSGS = [{"role": "user", "content": "Summarise the causes of the French revolution."}]


def config(ups: dict[str, FakeUpstream], fallback: str | None, medium_extra: str = "") -> str:
    lines = [
        "server: {retry_backoff_s: 0.01}",
        "circuit_breaker: {failure_threshold: 1, cooldown_s: 60}",
        "store: {backend: none}",
        "router:",
        "  default_policy: pick-medium",
        *([f"  fallback: {fallback}"] if fallback else []),
        "  policies:",
        "    pick-medium: {kind: threshold, threshold: 1.01, strong: large, weak: medium}",
        "models:",
    ]
    urls = {n: u.base_url for n, u in ups.items()}
    lines += tier_models(urls, {"medium": medium_extra} if medium_extra else None)
    return "\n".join(lines)


def start(fakes: Fakes, gateway: Gw, fallback: str | None, medium_extra: str = "") -> tuple:
    ups = {name: fakes(name) for name, *_ in TIERS}
    gw = gateway(config(ups, fallback, medium_extra))
    client = openai.OpenAI(base_url=gw.base_url, api_key="x", max_retries=0)
    return ups, gw, client


@pytest.mark.parametrize(
    ("fallback", "answers"),
    [(None, "large"), ("next_tier_up", "large"), ("route_order", "small")],
)
def test_failed_choice_falls_back_per_router_fallback(
    fakes: Fakes, gateway: Gw, fallback: str | None, answers: str
) -> None:
    ups, gw, c = start(fakes, gateway, fallback)
    healthy = c.chat.completions.with_raw_response.create(model="auto", messages=MSGS)
    assert healthy.headers["x-tollgate-model"] == "medium"
    assert healthy.headers["x-tollgate-attempts"] == "1"

    # medium fails (HTTP 500, no retries left): the next model per router.fallback answers
    ups["medium"].script([], default={"kind": "status", "status": 500})
    failed = c.chat.completions.with_raw_response.create(model="auto", messages=MSGS)
    assert failed.headers["x-tollgate-model"] == answers
    assert failed.headers["x-tollgate-attempts"] == "2"
    assert failed.parse().choices[0].message.content.startswith(f"[{answers}]")

    # that failure opened medium's circuit: the policy still prefers medium, which cannot
    # serve, so the request goes straight to the same fallback, in one attempt
    ready = httpx.get(f"{gw.url}/readyz").json()
    assert ready["models"]["medium"]["endpoints"][0]["circuit"] == "open"
    skipped = c.chat.completions.with_raw_response.create(model="auto", messages=MSGS)
    assert skipped.headers["x-tollgate-model"] == answers
    assert skipped.headers["x-tollgate-attempts"] == "1"
    # streamed answers take the same path
    with c.chat.completions.with_streaming_response.create(
        model="auto", messages=MSGS, stream=True
    ) as s:
        assert s.headers["x-tollgate-model"] == answers
        assert "".join(s.iter_lines())  # drain the stream
    assert ups["medium"].stats()["requests"] == 2  # the healthy answer and the 500
    other = "small" if answers == "large" else "large"
    assert ups[other].stats()["requests"] == 0


def test_next_tier_up_after_a_timeout(fakes: Fakes, gateway: Gw) -> None:
    ups, _gw, c = start(fakes, gateway, "next_tier_up", "timeouts: {total_s: 0.5}")
    ups["medium"].script([{"kind": "delay", "ms": 10000}])
    r = c.chat.completions.with_raw_response.create(model="auto", messages=MSGS)
    assert r.headers["x-tollgate-model"] == "large"
    assert r.headers["x-tollgate-tier"] == "large"
    assert r.headers["x-tollgate-attempts"] == "2"
    assert ups["small"].stats()["requests"] == 0
