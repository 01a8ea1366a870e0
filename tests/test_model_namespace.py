"""One model namespace for every kind of request: `auto`, `auto:<policy>` and each named policy
route chat and completions alike; routes and the router skip models that do not serve the
request's kind; GET /v1/models says which kinds each name serves; errors list only names that
would work for the path the client called."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import openai
import pytest

from tests.fake_upstream import FakeUpstream
from tests.support import GatewayProcess, tier_models

Fakes = Callable[..., FakeUpstream]
Gw = Callable[..., GatewayProcess]
MSGS: Any = [{"role": "user", "content": "Name three rivers in Europe."}]


def namespace_config(ups: dict[str, FakeUpstream], embed: FakeUpstream) -> str:
    lines = [
        "store: {backend: none}",
        "router:",
        "  default_policy: balanced",
        "  policies:",
        "    balanced: {kind: max_utility, cost_weight: 200}",
        "    thrifty: {kind: max_utility, cost_weight: 100000}",
        "    quality: {kind: max_utility, cost_weight: 0}",
        "    two-tier: {kind: threshold, threshold: 0.5, strong: large, weak: small}",
        "models:",
        *tier_models({n: u.base_url for n, u in ups.items()}),
        "  - name: embedder",
        "    tier: small",
        "    kinds: [embeddings]",
        "    retries: 0",
        f"    endpoints: [{{base_url: '{embed.base_url}', model: upstream-embed}}]",
        "routes:",
        "  - name: mixed",
        "    models: [small, embedder]",
    ]
    return "\n".join(lines)


@pytest.fixture
def gw(fakes: Fakes, gateway: Gw) -> tuple[dict[str, FakeUpstream], FakeUpstream, GatewayProcess]:
    ups = {n: fakes(n) for n in ("small", "medium", "large")}
    embed = fakes("embedder")
    return ups, embed, gateway(namespace_config(ups, embed))


def _client(gw: GatewayProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.base_url, api_key="unused", max_retries=0)


def test_auto_and_named_policies_route_chat_and_completions(gw: Any) -> None:
    ups, _, g = gw
    c = _client(g)
    for model, policy in [
        ("auto", "balanced"),
        ("auto:quality", "quality"),
        ("thrifty", "thrifty"),
        ("two-tier", "two-tier"),
    ]:
        raw = c.completions.with_raw_response.create(model=model, prompt="Say hi", max_tokens=8)
        assert raw.headers["x-tollgate-policy"] == policy, model
        done = raw.parse()
        assert done.model == raw.headers["x-tollgate-model"]
        assert done.choices[0].text.startswith(f"[{done.model}]")
        chat = c.chat.completions.with_raw_response.create(model=model, messages=MSGS)
        assert chat.headers["x-tollgate-policy"] == policy, model
    # the named policies do what they say: free of cost, the best predicted model; at a huge
    # cost weight, the cheapest
    q = c.chat.completions.with_raw_response.create(model="quality", messages=MSGS)
    t = c.chat.completions.with_raw_response.create(model="auto:thrifty", messages=MSGS)
    assert q.headers["x-tollgate-model"] == "large"
    assert t.headers["x-tollgate-model"] == "small"
    assert sum(u.stats()["requests"] for u in ups.values()) == 10


def test_routes_and_router_skip_models_that_do_not_serve_the_kind(gw: Any) -> None:
    ups, embed, g = gw
    c = _client(g)
    raw = c.embeddings.with_raw_response.create(model="mixed", input="hello")
    assert raw.headers["x-tollgate-model"] == "embedder"  # not small, listed first
    assert len(raw.parse().data[0].embedding) == 8
    assert ups["small"].stats()["requests"] == 0
    assert embed.stats()["requests"] == 1
    chat = c.chat.completions.with_raw_response.create(model="mixed", messages=MSGS)
    assert chat.headers["x-tollgate-model"] == "small"
    # embeddings are not routed by the router: the answer names what does serve them
    with pytest.raises(openai.BadRequestError) as ei:
        c.embeddings.create(model="auto", input="hello")
    msg = ei.value.body["message"]  # type: ignore[index]
    assert "none of them serves /v1/embeddings" in msg
    assert "use one of embedder, mixed for /v1/embeddings" in msg
    with pytest.raises(openai.BadRequestError) as ei:
        c.chat.completions.create(model="embedder", messages=MSGS)
    msg = ei.value.body["message"]  # type: ignore[index]
    assert "model 'embedder' does not serve /v1/chat/completions" in msg
    assert "embedder," not in msg.split("use one of", 1)[1]


def test_unknown_names_list_only_what_works_for_the_path(gw: Any) -> None:
    _, _, g = gw
    c = _client(g)
    with pytest.raises(openai.NotFoundError) as ei:
        c.completions.create(model="autoo", prompt="x")
    msg = ei.value.body["message"]  # type: ignore[index]
    assert "did you mean 'auto'" in msg
    names = msg.split("use one of ", 1)[1].split(" for /v1/completions", 1)[0].split(", ")
    assert "auto" in names and "auto:thrifty" in names and "two-tier" in names
    assert "small" in names and "mixed" in names and "embedder" not in names
    # router-<x>-<value> takes a policy kind, and the message says so
    with pytest.raises(openai.NotFoundError) as ei:
        c.chat.completions.create(model="router-thrifty-3", messages=MSGS)
    msg = ei.value.body["message"]  # type: ignore[index]
    assert "router-<policy kind>-<value>" in msg
    assert "policy kinds: cheapest_above, max_utility, threshold" in msg
    ok = c.chat.completions.with_raw_response.create(model="router-max_utility-50", messages=MSGS)
    assert ok.headers["x-tollgate-policy"] == "router-max_utility-50"
    with pytest.raises(openai.NotFoundError) as ei:
        c.chat.completions.create(model="auto:nope", messages=MSGS)
    msg = ei.value.body["message"]  # type: ignore[index]
    assert "there is no router policy 'nope'" in msg
    assert "balanced, thrifty, quality, two-tier" in msg


def test_models_listing_says_which_kinds_each_name_serves(gw: Any) -> None:
    _, _, g = gw
    listing = {m["id"]: m for m in httpx.get(f"{g.base_url}/models").json()["data"]}
    assert listing["small"]["kinds"] == {
        "chat": "native",
        "completions": "native",
        "responses": "translated",
        "messages": "translated",
    }
    assert listing["embedder"]["kinds"] == {"embeddings": "native"}
    assert listing["mixed"]["kinds"] == {
        "chat": "native",
        "completions": "native",
        "embeddings": "native",
        "responses": "translated",
        "messages": "translated",
    }
    for name, policy in [("auto", "balanced"), ("auto:thrifty", "thrifty"), ("quality", "quality")]:
        assert listing[name]["kind"] == "router"
        assert listing[name]["policy"] == policy
        assert "embeddings" not in listing[name]["kinds"]
        assert listing[name]["kinds"]["completions"] == "native"
