"""Conversation stickiness through the running gateway: the turns of one conversation stay on
the model (and endpoint) whose prompt cache is warm, unless the router's expected saving from a
switch is more than the cached prefix it would lose. The fake upstreams report cached prompt
tokens the way OpenAI does, so the saving is measured, not assumed."""

from __future__ import annotations

import json
import sqlite3
import statistics
import time
from collections.abc import Callable
from typing import Any

import httpx
import openai
import pytest
import redis

from gateway.routing.sticky import REDIS_PREFIX
from tests.fake_upstream import FakeUpstream
from tests.redis_server import RedisClusterServers, RedisServer
from tests.support import GatewayProcess

Fakes = Callable[..., FakeUpstream]
Gw = Callable[..., GatewayProcess]

# API prices (USD per million tokens: input, cached input, output): both providers discount
# cached input by 90%, so a long prefix cached at large costs less than sending it to small
PRICES = {
    "small": (5.0, 0.5, 10.0),
    "large": (10.0, 1.0, 30.0),
}
PROFILES = {"small": "gemma-2b-it", "large": "humpback-llama2-70b"}
REPLY = "Here is a careful answer with the steps, the reasons and an example for each one."
TOPICS = [
    "how tides work and why there are two a day",
    "the proof that there are infinitely many primes",
    "how a hash map handles collisions in practice",
    "why the sky is blue and sunsets are red",
    "the difference between TCP and UDP for a game server",
    "how vaccines train the immune system",
    "what a Fourier transform does to a sound wave",
    "how to write a recursive descent parser for arithmetic",
    "why compound interest grows faster than simple interest",
    "how a compiler turns a for loop into machine code",
]


def turn_text(i: int) -> str:
    """A user turn of ~120 words, so that the shared prefix grows turn after turn."""
    return f"Question {i + 1}: explain {TOPICS[i]}. " + " ".join(
        f"Please cover point {k} of {TOPICS[i]} in detail with an example." for k in range(10)
    )


def config(
    ups: dict[str, FakeUpstream], sticky: str, store: str = "{backend: none}", weight: float = 200
) -> str:
    """small and large at PRICES; `auto` is max_utility at cost weight `weight`."""
    lines = [
        f"store: {store}",
        "router:",
        f"  sticky: {sticky}",
        "  default_policy: conv",
        f"  policies: {{conv: {{kind: max_utility, cost_weight: {weight!r}}}}}",
        "models:",
    ]
    for name, (inp, cached, out) in PRICES.items():
        lines += [
            f"  - name: {name}",
            f"    tier: {name}",
            f"    profile: {PROFILES[name]}",
            f"    pricing: {{input_per_mtok: {inp}, cached_input_per_mtok: {cached}, "
            f"output_per_mtok: {out}}}",
            "    retries: 0",
            f"    endpoints: [{{base_url: '{ups[name].base_url}'}}]",
        ]
    return "\n".join(lines)


def pool_config(eps: list[FakeUpstream], sticky: str, store: str = "{backend: none}") -> str:
    """One model, `pool`, with an endpoint at each of `eps`."""
    return "\n".join(
        [
            f"store: {store}",
            "router:",
            f"  sticky: {sticky}",
            "models:",
            "  - name: pool",
            "    tier: small",
            "    profile: gemma-2b-it",
            "    retries: 0",
            "    endpoints: [" + ", ".join(f"{{base_url: '{e.base_url}'}}" for e in eps) + "]",
        ]
    )


def fakes_for(fakes: Fakes) -> dict[str, FakeUpstream]:
    return {n: fakes(n, reply=REPLY, prompt_cache_min_tokens=64) for n in PRICES}


def converse(
    gw: GatewayProcess, model: str, turns: int = 10, explain: bool = False, **last: Any
) -> list[httpx.Response]:
    """One conversation of `turns` turns; each turn sends the whole history; `last`: more
    body fields for the last turn."""
    messages: list[dict[str, str]] = [{"role": "system", "content": "You are a patient tutor."}]
    out = []
    c = openai.OpenAI(base_url=gw.base_url, api_key="unused", max_retries=0)
    for i in range(turns):
        messages.append({"role": "user", "content": turn_text(i)})
        raw = c.chat.completions.with_raw_response.create(
            model=model,
            messages=messages,  # type: ignore[arg-type]
            max_tokens=16,
            extra_headers={"x-tollgate-explain": "1"} if explain else None,
            extra_body=last if i == turns - 1 else None,
        )
        answer = raw.parse().choices[0].message.content
        assert answer == REPLY
        out.append(raw.http_response)
        messages.append({"role": "assistant", "content": answer})
    return out


def cached_tokens(r: httpx.Response) -> int:
    return int(r.json()["usage"]["prompt_tokens_details"]["cached_tokens"])


def cache_saving(r: httpx.Response) -> float:
    """USD the cached prompt tokens of one answer did not cost: (input - cached) x tokens."""
    inp, cached, _ = PRICES[r.headers["x-tollgate-model"]]
    return cached_tokens(r) * (inp - cached) / 1e6


def cost_weight(fakes: Fakes, gateway: Gw) -> float:
    """A max_utility cost weight at which the router's own choice changes during the
    conversation: between the turns' (quality gain of large) / (its extra cost) ratios."""
    gw = gateway(config(fakes_for(fakes), "{enabled: false}"))
    ratios = []
    for r in converse(gw, "router-max_utility-0", explain=True):
        est = {e["model"]: e for e in json.loads(r.headers["x-tollgate-explain"])}
        dq = est["large"]["predicted_quality"] - est["small"]["predicted_quality"]
        dc = est["large"]["estimated_cost_usd"] - est["small"]["estimated_cost_usd"]
        ratios.append(dq / dc)
    assert max(ratios) > 0  # large is predicted better on some turn
    return float(statistics.median(ratios))


def test_ten_turns_through_auto_stay_on_one_model_and_keep_the_cache_warm(
    fakes: Fakes, gateway: Gw
) -> None:
    w = cost_weight(fakes, gateway)
    model = "auto"  # max_utility at cost weight w
    fresh = converse(gateway(config(fakes_for(fakes), "{enabled: false}", weight=w)), model)
    sticky_gw = gateway(config(fakes_for(fakes), "{enabled: true}", weight=w))
    kept = converse(sticky_gw, model, explain=True)

    # routed afresh each turn, the conversation moves between models and loses its cache
    fresh_models = [r.headers["x-tollgate-model"] for r in fresh]
    assert len(set(fresh_models)) == 2, fresh_models
    # with stickiness every turn stays where the first went, and says so
    models = [r.headers["x-tollgate-model"] for r in kept]
    states = [r.headers["x-tollgate-sticky"] for r in kept]
    assert states[0] == "new"
    assert len(set(models)) == 1, [
        (m, s, r.headers.get("x-tollgate-sticky-explain"))
        for m, s, r in zip(models, states, kept, strict=True)
    ]
    assert "kept" in states and set(states[1:]) <= {"stayed", "kept"}
    for r in kept:
        if r.headers["x-tollgate-sticky"] == "kept":  # the saving was less than the cache
            weighed = json.loads(r.headers["x-tollgate-sticky-explain"])
            assert weighed["previous_model"] == models[0]
            assert weighed["switch_saving_usd"] <= weighed["cache_value_usd"]
    # every later turn found its prefix cached at the provider
    assert all(cached_tokens(r) > 0 for r in kept[1:])
    fresh_cached = sum(cached_tokens(r) for r in fresh)
    kept_cached = sum(cached_tokens(r) for r in kept)
    assert kept_cached > fresh_cached
    saved = sum(cache_saving(r) for r in kept)
    fresh_saved = sum(cache_saving(r) for r in fresh)
    cost = sum(float(r.headers["x-tollgate-cost-usd"]) for r in kept)
    fresh_cost = sum(float(r.headers["x-tollgate-cost-usd"]) for r in fresh)
    print(
        f"\nten turns through auto (max_utility, cost weight {w:.4g}): sticky on "
        f"{models[0]} x10, {kept_cached} cached prompt tokens, the cache saved ${saved:.6f}, "
        f"cost ${cost:.6f}; afresh on {fresh_models}: {fresh_cached} cached, "
        f"${fresh_saved:.6f} saved, cost ${fresh_cost:.6f}; stickiness saved "
        f"${saved - fresh_saved:.6f} of cached-token cost"
    )
    assert saved > fresh_saved
    # the cost the gateway charged reflects the cached price
    for r in kept[1:]:
        inp, cached, out = PRICES[r.headers["x-tollgate-model"]]
        u = r.json()["usage"]
        c = u["prompt_tokens_details"]["cached_tokens"]
        want = ((u["prompt_tokens"] - c) * inp + c * cached + u["completion_tokens"] * out) / 1e6
        assert float(r.headers["x-tollgate-cost-usd"]) == pytest.approx(want, abs=1e-12)


def test_a_switch_worth_more_than_the_cache_is_made(fakes: Fakes, gateway: Gw) -> None:
    """On large with a warm cache, a turn asking for 20,000 output tokens saves far more on
    small than the cached prefix is worth: the conversation switches."""
    gw = gateway(config(fakes_for(fakes), "{enabled: true}"))
    model = "router-max_utility-5"
    turns = converse(gw, model, turns=4, explain=True, max_completion_tokens=20000)
    assert [r.headers["x-tollgate-model"] for r in turns[:3]] == ["large"] * 3
    assert [r.headers["x-tollgate-sticky"] for r in turns[:3]] == ["new", "stayed", "stayed"]
    long = turns[-1]
    assert long.headers["x-tollgate-sticky"] == "switched"
    assert long.headers["x-tollgate-model"] == "small"
    weighed = json.loads(long.headers["x-tollgate-sticky-explain"])
    assert weighed["switch_saving_usd"] > weighed["cache_value_usd"] > 0


def test_session_header_and_endpoint_stickiness_recorded_and_shared_through_redis(
    fakes: Fakes, gateway: Gw, tmp_path: Any
) -> None:
    """Two replicas on one Redis: the second turn, sent to the other replica under the same
    x-tollgate-session, goes to the endpoint the first turn used; records keep `sticky`."""
    eps = [fakes(f"ep{i}", reply=REPLY, prompt_cache_min_tokens=64) for i in range(3)]
    rs = RedisServer(tmp_path / "redis").start()
    try:
        cfg = pool_config(
            eps,
            f"{{backend: redis, redis_url: 'redis://127.0.0.1:{rs.port}/3'}}",
            '{backend: sqlite, sqlite_path: "${TOLLGATE_DB}", flush_interval_s: 0.05}',
        )
        a, b = gateway(cfg), gateway(cfg)
        for i, gw in enumerate([a, b, a, b, b]):
            c = openai.OpenAI(base_url=gw.base_url, api_key="unused", max_retries=0)
            turn: Any = [
                {"role": "user", "content": f"turn {i} of a long chat"}
            ]  # only the new one
            session = {"x-tollgate-session": "conv-1"}
            if i == 3:  # a streamed turn stays, and counts as a turn, the same way
                with c.chat.completions.with_streaming_response.create(
                    model="auto", messages=turn, stream=True, extra_headers=session
                ) as stream:
                    assert stream.headers["x-tollgate-sticky"] == "stayed"
                    assert (
                        "".join(
                            ch.choices[0].delta.content or "" for ch in stream.parse() if ch.choices
                        )
                        == REPLY
                    )
                continue
            raw = c.chat.completions.with_raw_response.create(
                model="auto", messages=turn, extra_headers=session
            )
            assert raw.headers["x-tollgate-sticky"] == ("new" if i == 0 else "stayed")
            r = raw.http_response
        used = [e.stats()["requests"] for e in eps]
        assert sorted(used) == [0, 0, 5], used  # one endpoint took every turn
        # another session is another conversation: a new entry, under the one hash tag
        r2 = httpx.post(
            f"{b.base_url}/chat/completions",
            json={"model": "auto", "messages": [{"role": "user", "content": "hi"}]},
            headers={"x-tollgate-session": "conv-2"},
            timeout=30,
        )
        assert r2.headers["x-tollgate-sticky"] == "new"
        red = redis.Redis(port=rs.port, db=3)
        keys = sorted(red.keys("*"))
        red.close()
        assert len(keys) == 2 and all(k.startswith(b"{tollgate-sticky}:") for k in keys)
        rid = r.headers["x-tollgate-request-id"]
        row = None
        for _ in range(100):
            db = sqlite3.connect(b.env["TOLLGATE_DB"])
            row = db.execute("SELECT sticky FROM requests WHERE request_id = ?", (rid,)).fetchone()
            db.close()
            if row:
                break
            time.sleep(0.05)
        assert row == ("stayed",)
        # the dashboard shows each turn's outcome and the totals of the window
        data = httpx.get(f"{b.url}/dashboard/data?since=1h", timeout=30).json()
        assert {r["request_id"]: r["sticky"] for r in data["recent"]}[rid] == "stayed"
        assert (
            data["sticky"]["stayed"] == 3 and data["sticky"]["new"] == 1
        )  # b: turns 2, 4, 5; conv-2
    finally:
        rs.stop()


def test_sticky_map_on_a_redis_cluster_follows_the_slot(
    fakes: Fakes, gateway: Gw, redis_cluster: RedisClusterServers
) -> None:
    """The stickiness keys share one hash tag: on a Redis Cluster the gateway, pointed at a
    node that does not own that slot, still finds each conversation's previous turn."""
    owner = redis_cluster.owner(REDIS_PREFIX + "x")
    other = next(n for n in redis_cluster.nodes if n is not owner)
    eps = [fakes(f"ep{i}", reply=REPLY) for i in range(2)]
    cfg = pool_config(eps, f"{{backend: redis, redis_cluster: true, redis_url: '{other.url}'}}")
    gw = gateway(cfg)
    c = openai.OpenAI(base_url=gw.base_url, api_key="unused", max_retries=0)
    session = f"cluster-{time.monotonic_ns()}"
    states = []
    for i in range(4):
        raw = c.chat.completions.with_raw_response.create(
            model="auto",
            messages=[{"role": "user", "content": f"turn {i}"}],
            extra_headers={"x-tollgate-session": session},
        )
        states.append(raw.headers["x-tollgate-sticky"])
    assert states == ["new", "stayed", "stayed", "stayed"]
    assert sorted(e.stats()["requests"] for e in eps) == [0, 4]
    keys = redis_cluster.cli(owner.port, "KEYS", REDIS_PREFIX + "*").split()
    assert keys and all(k.startswith(REDIS_PREFIX) for k in keys)
