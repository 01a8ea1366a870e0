"""Anthropic's Messages API (`POST /v1/messages`) through the gateway, with the official
`anthropic` SDK: translated to chat for an OpenAI-style upstream (the fake upstream),
passed through to an Anthropic-style one (tests/fake_anthropic.py), routed by `auto`,
priced, recorded, limited, and its errors in Anthropic's format."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import anthropic
import httpx
import pytest

from tests.fake_anthropic import FakeAnthropic
from tests.fake_upstream import FakeUpstream
from tests.support import GatewayProcess, tier_models

WEATHER = {
    "name": "get_weather",
    "description": "The weather in a city",
    "input_schema": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
}
STORE = 'store: {backend: sqlite, sqlite_path: "${TOLLGATE_DB}"}'
ANT_KEY = "sk-ant-upstream-secret-0123456789"
# Anthropic's prices for claude-3-haiku per million tokens: input, output; cache writes
# cost 1.25x input, cache reads 0.1x
CLAUDE_PRICING = (
    "{input_per_mtok: 0.25, output_per_mtok: 1.25, cached_input_per_mtok: 0.03, "
    "cache_write_input_per_mtok: 0.30}"
)


@pytest.fixture
def claude() -> Iterator[FakeAnthropic]:
    fa = FakeAnthropic("claude", ANT_KEY).start()
    yield fa
    fa.close()


def _claude_model(fa: FakeAnthropic, extra: str = "") -> list[str]:
    return [
        "  - name: claude",
        "    tier: external",
        f"    pricing: {CLAUDE_PRICING}",
        "    retries: 0",
        "    endpoints:",
        f"      - {{base_url: '{fa.base_url}', model: claude-3-haiku-20240307, "
        f"api: anthropic, api_key: '{ANT_KEY}'}}",
        *([f"    {extra}"] if extra else []),
    ]


@pytest.fixture
def gw(
    fakes: Callable[..., FakeUpstream],
    claude: FakeAnthropic,
    gateway: Callable[..., GatewayProcess],
) -> GatewayProcess:
    """Three OpenAI-style tiers (fake upstreams) and `claude` on the fake Anthropic server;
    `auto` routes among the tiers (router.candidates), the route `to-claude` goes to claude."""
    urls = {n: fakes(n).base_url for n in ("small", "medium", "large")}
    lines = [
        STORE,
        "circuit_breaker: {failure_threshold: 1, cooldown_s: 60}",
        "router: {candidates: [small, medium, large]}",
        "models:",
        *tier_models(urls),
        *_claude_model(claude),
        "routes:",
        "  - {name: to-claude, models: [claude]}",
        "  - {name: claude-then-small, models: [claude, small]}",
    ]
    return gateway("\n".join(lines) + "\n")


def _client(gw: GatewayProcess, **kw: Any) -> anthropic.Anthropic:
    return anthropic.Anthropic(
        base_url=gw.url, api_key=kw.pop("api_key", "unused"), max_retries=0, **kw
    )


def _messages_row(gw: GatewayProcess, n: int) -> dict[str, Any]:
    """The /v1/usage row of endpoint `messages`, once it counts `n` requests (records are
    written in batches after the answers)."""
    deadline = time.monotonic() + 10.0
    row: dict[str, Any] = {}
    while time.monotonic() < deadline:
        r = httpx.get(f"{gw.base_url}/usage", params={"since": "1h", "group_by": "endpoint"})
        assert r.status_code == 200, r.text
        row = next((x for x in r.json()["data"] if x["group"] == "messages"), {})
        if row.get("requests") == n:
            return row
        time.sleep(0.05)
    raise AssertionError(f"/v1/usage never counted {n} messages requests: {row}")


def _tool_round_trip(client: anthropic.Anthropic, model: str) -> tuple[Any, Any]:
    """A tool call, its result sent back: both answers."""
    msgs: list[Any] = [{"role": "user", "content": "What is the weather in Paris?"}]
    first = client.messages.create(
        model=model, max_tokens=200, system="You are terse.", messages=msgs, tools=[WEATHER]
    )
    call = next(b for b in first.content if b.type == "tool_use")
    msgs += [
        {"role": "assistant", "content": [b.model_dump() for b in first.content]},
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": call.id, "content": "18 C and sunny"},
                {"type": "text", "text": "Answer in one line."},
            ],
        },
    ]
    second = client.messages.create(model=model, max_tokens=200, messages=msgs)
    return first, second


def test_auto_tool_round_trip_translated_to_chat(gw: GatewayProcess) -> None:
    client = _client(gw)
    first, second = _tool_round_trip(client, "auto")
    assert first.type == "message" and first.role == "assistant"
    assert first.stop_reason == "tool_use"
    call = next(b for b in first.content if b.type == "tool_use")
    assert call.name == "get_weather" and isinstance(call.input, dict) and call.input
    assert first.model in ("small", "medium", "large")  # the public name, not upstream-*
    assert second.stop_reason == "end_turn"
    text = "".join(b.text for b in second.content if b.type == "text")
    assert text.startswith(f"[{second.model}]")  # the fake upstream's answer, as text
    # the upstream's own counts: words of every turn + 4 per chat message (system, user,
    # assistant's tool call, the tool result, the user's text: 5 messages)
    assert second.usage.input_tokens > first.usage.input_tokens
    assert second.usage.output_tokens == 16
    row = _messages_row(gw, 2)
    assert row["cost_usd"] > 0
    assert row["prompt_tokens"] == first.usage.input_tokens + second.usage.input_tokens


def test_auto_stream_with_tool_call_has_anthropics_event_sequence(gw: GatewayProcess) -> None:
    client = _client(gw)
    kinds: list[str] = []
    with client.messages.stream(
        model="auto",
        max_tokens=100,
        messages=[{"role": "user", "content": "Weather in Paris?"}],
        tools=[WEATHER],
    ) as s:
        for ev in s:
            kinds.append(ev.type)
        final = s.get_final_message()
    raw = [k for k in kinds if k not in ("text", "input_json", "signature", "thinking", "citation")]
    assert raw[:2] == ["message_start", "content_block_start"] or raw[0] == "message_start"
    assert raw[-2:] == ["message_delta", "message_stop"]
    assert "content_block_delta" in raw and "content_block_stop" in raw
    call = next(b for b in final.content if b.type == "tool_use")
    assert call.name == "get_weather"
    assert isinstance(call.input, dict) and call.input  # the streamed JSON fragments, whole
    assert final.stop_reason == "tool_use"
    assert final.usage.output_tokens == 16
    # the tool result, streamed back: text this time
    with client.messages.stream(
        model="auto",
        max_tokens=100,
        messages=[
            {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": [b.model_dump() for b in final.content]},
            {
                "role": "user",
                "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "18 C"}],
            },
        ],
    ) as s:
        text = "".join(s.text_stream)
        done = s.get_final_message()
    assert text.startswith(f"[{done.model}]") and done.stop_reason == "end_turn"
    assert _messages_row(gw, 2)["cost_usd"] > 0


def test_passthrough_to_anthropic_upstream_with_its_own_key(
    gw: GatewayProcess, claude: FakeAnthropic
) -> None:
    client = _client(gw, default_headers={"anthropic-beta": "tools-2024-04-04"})
    first, second = _tool_round_trip(client, "to-claude")
    assert first.model == "claude" and first.stop_reason == "tool_use"
    assert next(b for b in first.content if b.type == "tool_use").input == {
        "city": "Paris",
        "unit": "celsius",
    }
    assert second.content[0].text.startswith("[claude]")
    last = httpx.get(f"{claude.url}/_fake/last").json()
    # the endpoint's own key and version went upstream; the gateway's key did not
    assert last["key_ok"] and not last["authorization"]
    assert last["anthropic_version"] == "2023-06-01"
    assert last["anthropic_beta"] == "tools-2024-04-04"
    assert last["model"] == "claude-3-haiku-20240307"
    with client.messages.stream(
        model="to-claude", max_tokens=50, messages=[{"role": "user", "content": "hi"}]
    ) as s:
        text = "".join(s.text_stream)
        final = s.get_final_message()
    assert text.startswith("[claude]") and final.model == "claude"
    assert final.usage.output_tokens == 16
    with client.messages.stream(
        model="to-claude",
        max_tokens=50,
        messages=[{"role": "user", "content": "hi"}],
        tools=[WEATHER],
    ) as s:
        called = s.get_final_message()
    assert called.model == "claude" and called.stop_reason == "tool_use"
    assert called.content[0].type == "tool_use"
    assert called.content[0].input == {"city": "Paris", "unit": "celsius"}
    assert _messages_row(gw, 4)["cost_usd"] > 0


def test_cache_writes_and_reads_are_priced(gw: GatewayProcess) -> None:
    """Anthropic's cache_creation_input_tokens and cache_read_input_tokens, priced at the
    model's cache_write_input_per_mtok and cached_input_per_mtok."""
    client = _client(gw)
    system = [
        {
            "type": "text",
            "text": " ".join(f"rule{i}" for i in range(1000)),
            "cache_control": {"type": "ephemeral"},
        }
    ]
    costs = []
    for _ in range(2):
        r = client.messages.with_raw_response.create(
            model="to-claude",
            max_tokens=50,
            system=system,
            messages=[{"role": "user", "content": "hello there"}],
        )
        m = r.parse()
        costs.append((m.usage, float(r.headers["x-tollgate-cost-usd"])))
    (u1, c1), (u2, c2) = costs
    assert u1.cache_creation_input_tokens == 1000 and u1.cache_read_input_tokens == 0
    assert u2.cache_read_input_tokens == 1000 and u2.cache_creation_input_tokens == 0
    assert u1.input_tokens == u2.input_tokens == 6  # "hello there" + 4
    # $/token: input 0.25e-6, output 1.25e-6, cache write 0.30e-6, cache read 0.03e-6
    assert c1 == pytest.approx(1000 * 0.30e-6 + 6 * 0.25e-6 + 16 * 1.25e-6, rel=1e-6)
    assert c2 == pytest.approx(1000 * 0.03e-6 + 6 * 0.25e-6 + 16 * 1.25e-6, rel=1e-6)
    row = _messages_row(gw, 2)
    assert row["cost_usd"] == pytest.approx(c1 + c2, rel=1e-4)
    assert row["cached_tokens"] == 1000


def test_errors_in_anthropics_format(gw: GatewayProcess, claude: FakeAnthropic) -> None:
    client = _client(gw)
    with pytest.raises(anthropic.BadRequestError) as bad:
        client.messages.create(
            model="auto", max_tokens=0, messages=[{"role": "user", "content": "x"}]
        )
    body = bad.value.body
    assert isinstance(body, dict) and body["type"] == "error"
    assert body["error"]["type"] == "invalid_request_error"
    assert "max_tokens" in body["error"]["message"]
    with pytest.raises(anthropic.NotFoundError) as nf:
        client.messages.create(
            model="nope", max_tokens=5, messages=[{"role": "user", "content": "x"}]
        )
    assert nf.value.body["error"]["type"] == "not_found_error"  # type: ignore[index]
    # the Anthropic upstream's own error for the client's request: as it came
    httpx.post(f"{claude.url}/_fake/fail", json={"status": 400})
    with pytest.raises(anthropic.BadRequestError) as up:
        client.messages.create(
            model="to-claude", max_tokens=5, messages=[{"role": "user", "content": "x"}]
        )
    assert up.value.body["error"]["message"] == "fake failure 400"  # type: ignore[index]
    # overloaded upstream, no fallback left: an api_error (502) naming the model
    httpx.post(f"{claude.url}/_fake/fail", json={"status": 529})
    with pytest.raises(anthropic.APIStatusError) as over:
        client.messages.create(
            model="to-claude", max_tokens=5, messages=[{"role": "user", "content": "x"}]
        )
    assert over.value.status_code == 502
    assert over.value.body["error"]["type"] == "api_error"  # type: ignore[index]
    assert "claude" in over.value.body["error"]["message"]  # type: ignore[index]
    # that failure opened claude's circuit (failure_threshold 1): no capacity, overloaded
    with pytest.raises(anthropic.APIStatusError) as shut:
        client.messages.create(
            model="to-claude", max_tokens=5, messages=[{"role": "user", "content": "x"}]
        )
    assert shut.value.status_code == 503 and "retry-after" in shut.value.response.headers
    assert shut.value.body["error"]["type"] == "overloaded_error"  # type: ignore[index]
    assert "circuit breaker" in shut.value.body["error"]["message"]  # type: ignore[index]
    # ... and with a fallback the next model answers, translated
    r = client.messages.create(
        model="claude-then-small", max_tokens=5, messages=[{"role": "user", "content": "x"}]
    )
    assert r.model == "small" and r.content[0].text.startswith("[small]")
    # a GET is refused in the same format
    g = httpx.get(f"{gw.url}/v1/messages")
    assert g.status_code == 405 and g.json()["type"] == "error"


def test_gateway_keys_and_rate_limits_speak_anthropic(
    fakes: Callable[..., FakeUpstream], gateway: Callable[..., GatewayProcess], tmp_path: Any
) -> None:
    fu = fakes("small")
    key = "tg-team-a-key-0123456789abcdef"
    import hashlib

    digest = hashlib.sha256(key.encode()).hexdigest()
    cfg = (
        f"{STORE}\n"
        "auth:\n  required: true\n  keys:\n"
        f"    - {{id: team-a, sha256: {digest}, rpm: 2}}\n"
        "models:\n"
        "  - {name: small, tier: small, retries: 0, "
        f"endpoints: [{{base_url: '{fu.base_url}'}}]}}\n"
    )
    gw = gateway(cfg)
    with pytest.raises(anthropic.AuthenticationError) as no_key:
        _client(gw, api_key="wrong").messages.create(
            model="small", max_tokens=5, messages=[{"role": "user", "content": "x"}]
        )
    assert no_key.value.body["error"]["type"] == "authentication_error"  # type: ignore[index]
    client = _client(gw, api_key=key)  # the SDK sends it as x-api-key
    for _ in range(2):
        client.messages.create(
            model="small", max_tokens=5, messages=[{"role": "user", "content": "x"}]
        )
    with pytest.raises(anthropic.RateLimitError) as limited:
        client.messages.create(
            model="small", max_tokens=5, messages=[{"role": "user", "content": "x"}]
        )
    err = limited.value
    assert err.body["error"]["type"] == "rate_limit_error"  # type: ignore[index]
    assert "requests per minute" in err.body["error"]["message"]  # type: ignore[index]
    assert int(err.response.headers["retry-after"]) >= 1


def test_count_tokens(gw: GatewayProcess, claude: FakeAnthropic) -> None:
    client = _client(gw)
    msgs: Any = [{"role": "user", "content": "one two three four"}]
    native = client.messages.with_raw_response.count_tokens(model="to-claude", messages=msgs)
    assert native.parse().input_tokens == 8  # the fake Anthropic server's own count
    assert "x-tollgate-token-estimate" not in native.headers
    assert httpx.get(f"{claude.url}/_fake/last").json()["path"] == "/v1/messages/count_tokens"
    est = client.messages.with_raw_response.count_tokens(model="small", messages=msgs)
    assert est.headers["x-tollgate-token-estimate"] == "1"
    data = est.http_response.json()
    assert data["tollgate_estimate"] is True and data["input_tokens"] > 0


def test_messages_model_refused_for_chat(gw: GatewayProcess) -> None:
    """An api: anthropic model serves /v1/messages only: chat to it is a clear 400."""
    r = httpx.post(
        f"{gw.base_url}/chat/completions",
        json={"model": "claude", "messages": [{"role": "user", "content": "x"}]},
    )
    assert r.status_code == 400
    assert "messages" in r.json()["error"]["message"]


def test_response_cache_answers_a_repeated_request_in_the_same_form(gw: GatewayProcess) -> None:
    client = _client(gw, default_headers={"x-tollgate-cache": "1"})
    msgs: Any = [{"role": "user", "content": "Cache me."}]
    a = client.messages.with_raw_response.create(
        model="small", max_tokens=20, messages=msgs, extra_body={"temperature": 0}
    )
    b = client.messages.with_raw_response.create(
        model="small", max_tokens=20, messages=msgs, extra_body={"temperature": 0}
    )
    assert a.headers["x-tollgate-cache"] == "miss" and b.headers["x-tollgate-cache"] == "hit"
    assert b.parse().model_dump() == a.parse().model_dump()
    assert float(b.headers["x-tollgate-cost-usd"]) == 0.0
    body = {"model": "small", "max_tokens": 20, "temperature": 0, "messages": msgs, "stream": True}
    hdrs = {"x-tollgate-cache": "1", "anthropic-version": "2023-06-01"}
    s1 = httpx.post(f"{gw.base_url}/messages", json=body, headers=hdrs)
    s2 = httpx.post(f"{gw.base_url}/messages", json=body, headers=hdrs)
    assert s1.headers["x-tollgate-cache"] == "miss"  # a stream is not served from JSON
    assert s2.headers["x-tollgate-cache"] == "hit" and s2.content == s1.content
    assert s2.content.rstrip().endswith(b'data: {"type":"message_stop"}')
