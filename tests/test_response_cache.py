"""The response cache (gateway/cache/) through the running gateway: a repeated deterministic
request is answered without the upstream, with the original's content, for $0."""

from __future__ import annotations

import hashlib
import io
import socket
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from gateway.views import report
from tests.fake_upstream import FakeUpstream
from tests.redis_server import RedisClusterServers, RedisServer, have_redis
from tests.support import GatewayProcess, metric_samples, metric_total

Fakes = Callable[..., FakeUpstream]
Gw = Callable[..., GatewayProcess]

# $0.5 / M input, $1.5 / M output
CONFIG = """
server: {{retry_backoff_s: 0.01}}
store: {{backend: sqlite, sqlite_path: "${{TOLLGATE_DB}}", flush_interval_s: 0.05}}
cache: {cache}
{auth}
models:
  - name: small
    tier: small
    pricing: {{input_per_mtok: 0.5, output_per_mtok: 1.5}}
    retries: 0
    endpoints: [{{base_url: "{url}", model: up-small}}]
  - name: emb
    tier: small
    kinds: [embeddings]
    cache: true
    endpoints: [{{base_url: "{url}", model: up-emb}}]
routes:
  - name: cached
    models: [small]
    cache: true
"""
KEY_A, KEY_B = "sk-team-a-0123456789", "sk-team-b-0123456789"
TOOLS: list[Any] = [
    {
        "type": "function",
        "function": {"name": "lookup", "parameters": {"type": "object", "properties": {}}},
    }
]


def config(fake: FakeUpstream, cache: str = "{}", keys: bool = False, key_cache: str = "") -> str:
    auth = ""
    if keys:
        rows = [
            f"    - {{id: {name}, sha256: {hashlib.sha256(k.encode()).hexdigest()}{key_cache}}}"
            for name, k in (("team-a", KEY_A), ("team-b", KEY_B))
        ]
        auth = "auth:\n  keys:\n" + "\n".join(rows)
    return CONFIG.format(cache=cache, auth=auth, url=fake.base_url)


def client(gw: GatewayProcess, key: str = "x") -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.base_url, api_key=key, max_retries=0)


def records(gw: GatewayProcess, n: int) -> list[sqlite3.Row]:
    """The first `n` stored records, in arrival order (waits for the recorder's flush)."""
    deadline = time.monotonic() + 10.0
    while True:
        db = sqlite3.connect(gw.tmp / "tollgate.db")
        db.row_factory = sqlite3.Row
        try:
            rows = db.execute("SELECT * FROM requests ORDER BY ts").fetchall()
        except sqlite3.OperationalError:
            rows = []
        finally:
            db.close()
        if len(rows) >= n or time.monotonic() > deadline:
            assert len(rows) == n, f"{len(rows)} records, expected {n}"
            return rows
        time.sleep(0.05)


def streamed(stream: Any) -> dict[str, Any]:
    """What the SDK's chunks add up to: text, tool calls, finish reason, usage."""
    text, calls, finish, usage = "", {}, None, None
    for chunk in stream:
        if chunk.usage is not None:
            usage = (chunk.usage.prompt_tokens, chunk.usage.completion_tokens)
        for ch in chunk.choices:
            text += ch.delta.content or ""
            for tc in ch.delta.tool_calls or ():
                c = calls.setdefault(tc.index, {"id": None, "name": "", "arguments": ""})
                c["id"] = tc.id or c["id"]
                if tc.function is not None:
                    c["name"] += tc.function.name or ""
                    c["arguments"] += tc.function.arguments or ""
            finish = ch.finish_reason or finish
    return {"text": text, "calls": list(calls.values()), "finish": finish, "usage": usage}


def unary(resp: Any) -> dict[str, Any]:
    ch = resp.choices[0]
    calls = [
        {"id": c.id, "name": c.function.name, "arguments": c.function.arguments}
        for c in ch.message.tool_calls or ()
    ]
    usage = (resp.usage.prompt_tokens, resp.usage.completion_tokens)
    return {
        "text": ch.message.content or "",
        "calls": calls,
        "finish": ch.finish_reason,
        "usage": usage,
    }


MSGS = [{"role": "user", "content": "one two three four five"}]


@pytest.mark.parametrize("tools", [False, True], ids=["text", "tool-call"])
def test_hit_has_original_content_both_ways_for_nothing(
    fakes: Fakes, gateway: Gw, tools: bool
) -> None:
    fake = fakes("small", completion_tokens=40)
    gw = gateway(config(fake))
    c = client(gw)
    extra: dict[str, Any] = {"tools": TOOLS} if tools else {}
    # unary original, then a streamed hit (with the usage chunk)
    raw = c.chat.completions.with_raw_response.create(
        model="cached", messages=MSGS, temperature=0, **extra
    )
    assert raw.headers["x-tollgate-cache"] == "miss"
    original = unary(raw.parse())
    assert original["usage"] == (9, 40)
    raw_s = c.chat.completions.with_raw_response.create(
        model="cached",
        messages=MSGS,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
        **extra,
    )
    assert raw_s.headers["x-tollgate-cache"] == "hit"
    assert float(raw_s.headers["x-tollgate-cost-usd"]) == 0.0
    assert streamed(raw_s.parse()) == original
    # a streamed original (no usage chunk asked for), then a unary hit
    other = [{"role": "user", "content": "six seven eight"}]
    s = c.chat.completions.create(
        model="cached", messages=other, seed=7, temperature=0.9, stream=True, **extra
    )
    first = streamed(s)
    assert first["usage"] is None
    hit = c.chat.completions.with_raw_response.create(
        model="cached", messages=other, seed=7, temperature=0.9, **extra
    )
    assert hit.headers["x-tollgate-cache"] == "hit"
    got = unary(hit.parse())
    assert {**got, "usage": None} == first
    assert got["usage"] == (7, 40)  # the original's usage, as the upstream counted it
    assert fake.stats()["requests"] == 2
    rows = records(gw, 4)
    assert [bool(r["cache_hit"]) for r in rows] == [False, True, False, True]
    cost = 9 * 0.5e-6 + 40 * 1.5e-6
    assert rows[0]["cost_usd"] == pytest.approx(cost, abs=1e-12)
    assert rows[1]["cost_usd"] == 0.0
    assert rows[1]["baseline_cost_usd"] == pytest.approx(cost, abs=1e-12)  # its saving
    assert rows[1]["model"] == "small" and rows[1]["status"] == 200 and rows[1]["attempts"] == 0
    assert rows[3]["cost_usd"] == 0.0
    assert rows[3]["baseline_cost_usd"] == pytest.approx(rows[2]["cost_usd"], abs=1e-15)
    u = httpx.get(f"{gw.url}/v1/usage", params={"since": "1h"}).json()["totals"]
    assert u["requests"] == 4
    assert u["cache_hits"] == 2
    assert u["cache_saved_usd"] == pytest.approx(rows[0]["cost_usd"] + rows[2]["cost_usd"])
    assert u["cost_usd"] == pytest.approx(rows[0]["cost_usd"] + rows[2]["cost_usd"], abs=1e-12)
    out = io.StringIO()  # the operator's report says the same
    assert report.main(["--url", gw.url, "--since", "1h"], out=out) == 0
    saved = f"${u['cache_saved_usd']:.6f}"
    assert f"response cache: 2 answers served from it, {saved} their originals cost" in (
        out.getvalue()
    )
    m = metric_samples(httpx.get(f"{gw.url}/metrics").text)
    assert metric_total(m, "tollgate_cache_requests_total", result="hit") == 2
    assert metric_total(m, "tollgate_cache_requests_total", result="miss") == 2
    assert metric_total(m, "tollgate_cache_saved_usd_total") == pytest.approx(
        rows[0]["cost_usd"] + rows[2]["cost_usd"], abs=1e-12
    )


def test_a_streamed_hit_replays_the_original_stream(fakes: Fakes, gateway: Gw) -> None:
    fake = fakes("small", completion_tokens=12)
    gw = gateway(config(fake))
    req = {
        "model": "cached",
        "messages": MSGS,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    url = f"{gw.base_url}/chat/completions"
    first = httpx.post(url, json=req)
    again = httpx.post(url, json=req)
    assert (first.headers["x-tollgate-cache"], again.headers["x-tollgate-cache"]) == ("miss", "hit")
    assert again.content == first.content  # byte for byte what the first client got
    assert first.content.endswith(b"data: [DONE]\n\n") and b'"usage":{' in first.content
    # without the usage chunk: synthesised from the completion the stream adds up to
    c = client(gw)
    plain = c.chat.completions.create(model="cached", messages=MSGS, temperature=0, stream=True)
    got = streamed(plain)
    unary_hit = unary(c.chat.completions.create(model="cached", messages=MSGS, temperature=0))
    assert got == {**unary_hit, "usage": None}
    assert unary_hit["usage"] == (9, 12)
    assert fake.stats()["requests"] == 1


def test_only_deterministic_opted_in_requests_are_cached(fakes: Fakes, gateway: Gw) -> None:
    fake = fakes("small")
    gw = gateway(config(fake))
    c = client(gw)
    for kw in ({}, {"temperature": 0.7}, {"temperature": 0, "n": 2}):
        for _ in range(2):
            raw = c.chat.completions.with_raw_response.create(model="cached", messages=MSGS, **kw)
            assert raw.headers["x-tollgate-cache"] == "skip"
    assert fake.stats()["requests"] == 6
    # a model nobody opted in: not cached, no header
    for _ in range(2):
        raw = c.chat.completions.with_raw_response.create(
            model="small", messages=MSGS, temperature=0
        )
        assert "x-tollgate-cache" not in raw.headers
    assert fake.stats()["requests"] == 8
    # ... unless the request asks for it
    for want in ("miss", "hit"):
        raw = c.chat.completions.with_raw_response.create(
            model="small", messages=MSGS, temperature=0, extra_headers={"x-tollgate-cache": "1"}
        )
        assert raw.headers["x-tollgate-cache"] == want
    # and an opted-in route's request may turn it off
    raw = c.chat.completions.with_raw_response.create(
        model="cached", messages=MSGS, temperature=0, extra_headers={"x-tollgate-cache": "0"}
    )
    assert "x-tollgate-cache" not in raw.headers
    # every field that changes the answer is in the key: another max_tokens is another entry
    for want in ("miss", "hit"):
        raw = c.chat.completions.with_raw_response.create(
            model="cached", messages=MSGS, temperature=0, max_tokens=5, user=want
        )
        assert raw.headers["x-tollgate-cache"] == want  # `user` does not change the answer
    assert fake.stats()["requests"] == 11
    m = metric_samples(httpx.get(f"{gw.url}/metrics").text)
    assert metric_total(m, "tollgate_cache_requests_total", result="skip") == 6
    assert metric_total(m, "tollgate_cache_requests_total", result="miss") == 2
    assert metric_total(m, "tollgate_cache_requests_total", result="hit") == 2


def test_completions_both_ways_and_embeddings(fakes: Fakes, gateway: Gw) -> None:
    fake = fakes("small", completion_tokens=10)
    gw = gateway(config(fake))
    c = client(gw)
    raw = c.completions.with_raw_response.create(model="cached", prompt="a b c", temperature=0)
    assert raw.headers["x-tollgate-cache"] == "miss"
    first = raw.parse()
    raw_s = c.completions.with_raw_response.create(
        model="cached",
        prompt="a b c",
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    assert raw_s.headers["x-tollgate-cache"] == "hit"
    text, finish, usage = "", None, None
    for chunk in raw_s.parse():
        for ch in chunk.choices:
            text += ch.text
            finish = ch.finish_reason or finish
        usage = chunk.usage or usage
    assert (text, finish) == (first.choices[0].text, first.choices[0].finish_reason)
    assert usage == first.usage
    # embeddings are deterministic: cached whatever the temperature (they have none)
    for want in ("miss", "hit"):
        raw_e = c.embeddings.with_raw_response.create(model="emb", input="hello there")
        assert raw_e.headers["x-tollgate-cache"] == want
    assert (
        raw_e.parse().data[0].embedding
        == c.embeddings.create(model="emb", input="hello there").data[0].embedding
    )
    assert fake.stats()["requests"] == 2


def test_keys_do_not_share_entries_unless_told(fakes: Fakes, gateway: Gw) -> None:
    fake = fakes("small")
    # opted in by the keys (`cache: true` on each), on a model that is not
    gw = gateway(config(fake, keys=True, key_cache=", cache: true"))
    a, b = client(gw, KEY_A), client(gw, KEY_B)
    ask = {"model": "small", "messages": MSGS, "temperature": 0}
    assert a.chat.completions.with_raw_response.create(**ask).headers["x-tollgate-cache"] == "miss"
    assert b.chat.completions.with_raw_response.create(**ask).headers["x-tollgate-cache"] == "miss"
    assert a.chat.completions.with_raw_response.create(**ask).headers["x-tollgate-cache"] == "hit"
    assert b.chat.completions.with_raw_response.create(**ask).headers["x-tollgate-cache"] == "hit"
    assert fake.stats()["requests"] == 2
    rows = records(gw, 4)
    assert [(r["key_id"], bool(r["cache_hit"])) for r in rows] == [
        ("team-a", False),
        ("team-b", False),
        ("team-a", True),
        ("team-b", True),
    ]
    shared = fakes("small")
    gw2 = gateway(
        config(shared, cache="{shared_across_keys: true}", keys=True, key_cache=", cache: true")
    )
    a, b = client(gw2, KEY_A), client(gw2, KEY_B)
    assert a.chat.completions.with_raw_response.create(**ask).headers["x-tollgate-cache"] == "miss"
    assert b.chat.completions.with_raw_response.create(**ask).headers["x-tollgate-cache"] == "hit"
    assert shared.stats()["requests"] == 1


def ask(c: openai.OpenAI, text: str) -> str:
    raw = c.chat.completions.with_raw_response.create(
        model="cached", messages=[{"role": "user", "content": text}], temperature=0
    )
    return str(raw.headers["x-tollgate-cache"])


def test_ttl_expires_entries(fakes: Fakes, gateway: Gw) -> None:
    fake = fakes("small")
    gw = gateway(config(fake, cache="{ttl_s: 0.5}"))
    c = client(gw)
    assert [ask(c, "a"), ask(c, "a")] == ["miss", "hit"]
    time.sleep(0.7)
    assert [ask(c, "a"), ask(c, "a")] == ["miss", "hit"]
    assert fake.stats()["requests"] == 2


def test_size_bounds_evict_the_least_recently_used(fakes: Fakes, gateway: Gw) -> None:
    fake = fakes("small")
    gw = gateway(config(fake, cache="{max_entries: 2}"))
    c = client(gw)
    assert [ask(c, "a"), ask(c, "b"), ask(c, "a"), ask(c, "c")] == ["miss", "miss", "hit", "miss"]
    # b was the least recently used of the two kept: it went when c came
    assert [ask(c, "a"), ask(c, "b")] == ["hit", "miss"]
    assert fake.stats()["requests"] == 4
    # by bytes: each answer here is ~400 bytes (+300 counted per entry), so 1024 holds one
    fake2 = fakes("small")
    gw2 = gateway(config(fake2, cache="{max_bytes: 1024}"))
    c2 = client(gw2)
    assert [ask(c2, "a"), ask(c2, "a"), ask(c2, "b"), ask(c2, "a")] == [
        "miss",
        "hit",
        "miss",
        "miss",
    ]
    # an answer over max_entry_bytes is never kept
    fake3 = fakes("small", completion_tokens=200)
    gw3 = gateway(config(fake3, cache="{max_entry_bytes: 1000}"))
    c3 = client(gw3)
    assert [ask(c3, "a"), ask(c3, "a")] == ["miss", "miss"]
    assert fake3.stats()["requests"] == 2


@pytest.mark.skipif(not have_redis(), reason="redis-server not installed")
def test_redis_backend_shares_hits_between_gateways(
    fakes: Fakes, gateway: Gw, tmp_path: Path
) -> None:
    redis = RedisServer(tmp_path / "redis").start()
    try:
        fake = fakes("small", completion_tokens=12)
        cache = f'{{backend: redis, redis_url: "{redis.url}", ttl_s: 60}}'
        gw1, gw2 = gateway(config(fake, cache=cache)), gateway(config(fake, cache=cache))
        c1, c2 = client(gw1), client(gw2)
        raw = c1.chat.completions.with_raw_response.create(
            model="cached", messages=MSGS, temperature=0, stream=True
        )
        assert raw.headers["x-tollgate-cache"] == "miss"
        original = streamed(raw.parse())
        hit = c2.chat.completions.with_raw_response.create(
            model="cached", messages=MSGS, temperature=0
        )
        assert hit.headers["x-tollgate-cache"] == "hit"
        assert {**unary(hit.parse()), "usage": None} == original
        hit_s = c2.chat.completions.with_raw_response.create(
            model="cached", messages=MSGS, temperature=0, stream=True
        )
        assert hit_s.headers["x-tollgate-cache"] == "hit"
        assert streamed(hit_s.parse()) == original
        assert fake.stats()["requests"] == 1
        keys = redis_keys(redis)
        assert len(keys) == 1 and keys[0].startswith("{tollgate-cache}:")
        rows = records(gw2, 2)
        assert [bool(r["cache_hit"]) for r in rows] == [True, True]
        assert [r["cost_usd"] for r in rows] == [0.0, 0.0]
        assert rows[0]["baseline_cost_usd"] == pytest.approx(records(gw1, 1)[0]["cost_usd"])
    finally:
        redis.stop()


def test_redis_cluster_of_the_store_holds_the_cache(
    redis_cluster: RedisClusterServers, fakes: Fakes, gateway: Gw
) -> None:
    # no cache.redis_url: the cache goes where the store's Redis Cluster is, told only a node
    # that does not own the cache's slot
    owner = redis_cluster.owner("{tollgate-cache}:x")
    startup = next(n for n in redis_cluster.nodes if n is not owner)
    fake = fakes("small")
    text = config(fake, cache="{backend: redis}").replace(
        'store: {backend: sqlite, sqlite_path: "${TOLLGATE_DB}", flush_interval_s: 0.05}',
        f'store: {{backend: redis, redis_cluster: true, redis_url: "{startup.url}"}}',
    )
    gw = gateway(text)
    c = client(gw)
    probe = f"cluster {time.monotonic_ns()}"  # the session's cluster: a request of its own
    assert [ask(c, probe), ask(c, probe)] == ["miss", "hit"]
    assert fake.stats()["requests"] == 1
    keys = redis_cluster.cli(owner.port, "KEYS", "{tollgate-cache}:*").split()
    assert keys and all(k.startswith("{tollgate-cache}:") for k in keys)


def test_a_silent_redis_costs_a_miss_not_the_request(fakes: Fakes, gateway: Gw) -> None:
    # a "Redis" that takes the connection and never answers: each lookup and store gives up
    # after cache.redis_timeout_s and the request goes upstream as a miss
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        url = f"redis://127.0.0.1:{silent.getsockname()[1]}/0"
        fake = fakes("small")
        gw = gateway(
            config(fake, cache=f'{{backend: redis, redis_url: "{url}", redis_timeout_s: 0.2}}')
        )
        c = openai.OpenAI(base_url=gw.base_url, api_key="x", max_retries=0, timeout=5.0)
        for _ in range(2):
            raw = c.chat.completions.with_raw_response.create(
                model="cached", messages=MSGS, temperature=0
            )
            assert raw.headers["x-tollgate-cache"] == "miss"
            assert raw.parse().choices[0].message.content
        assert fake.stats()["requests"] == 2


def test_reload_turns_the_cache_off(fakes: Fakes, gateway: Gw) -> None:
    fake = fakes("small")
    text = config(fake)
    gw = gateway(text)
    c = client(gw)
    assert [ask(c, "a"), ask(c, "a")] == ["miss", "hit"]
    gw.write_config(text.replace("cache: {}", "cache: {enabled: false}"))
    gw.sighup()
    deadline = time.monotonic() + 10.0
    while time.monotonic() < deadline:  # until the reload is in
        raw = c.chat.completions.with_raw_response.create(
            model="cached", messages=MSGS, temperature=0
        )
        if "x-tollgate-cache" not in raw.headers:
            break
        time.sleep(0.05)
    assert "x-tollgate-cache" not in raw.headers
    before = fake.stats()["requests"]
    c.chat.completions.create(model="cached", messages=MSGS, temperature=0)
    assert fake.stats()["requests"] == before + 1


def redis_keys(redis: RedisServer) -> list[str]:
    import redis as redis_py

    r = redis_py.Redis.from_url(redis.url)
    try:
        return [k.decode() for k in r.keys("{tollgate-cache}:*")]
    finally:
        r.close()
