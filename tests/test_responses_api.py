"""POST /v1/responses through the real gateway with the official `openai` SDK: unary and
streamed answers with a function tool round trip through model="auto" (translated to chat
for the fake upstreams), passed through to an upstream that speaks the Responses API itself,
each request in /v1/usage with its cost, previous_response_id with the store on (scoped to
the key that made the answer) and off (a 400 that says how to turn it on), and errors in
OpenAI's format."""

from __future__ import annotations

import hashlib
import sqlite3
import time
from collections.abc import Callable
from typing import Any

import httpx
import openai
import pytest

from tests.fake_upstream import FakeUpstream
from tests.support import TIERS, GatewayProcess, tier_models

Fakes = Callable[..., FakeUpstream]
Gw = Callable[..., GatewayProcess]

TOOLS: list[Any] = [
    {
        "type": "function",
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    }
]
KEY_A, KEY_B = "tg-key-team-a-0123456789", "tg-key-team-b-0123456789"


def _sha(k: str) -> str:
    return hashlib.sha256(k.encode()).hexdigest()


def _config(fakes: Fakes, store: bool = False, keys: bool = False, extra: str = "") -> str:
    ups = {name: fakes(name).base_url for name, *_ in TIERS}
    lines = [
        "store: {backend: sqlite, sqlite_path: '${TOLLGATE_DB}'}",
        f"responses: {{store: {str(store).lower()}}}",
        "router: {default_policy: balanced, policies: {balanced: {kind: cheapest_above, "
        "target: 0.5}}}",
        "models:",
        *tier_models(ups),
    ]
    if keys:
        lines.append(
            "auth: {required: true, keys: ["
            f"{{id: team-a, sha256: {_sha(KEY_A)}}}, {{id: team-b, sha256: {_sha(KEY_B)}}}]}}"
        )
    return "\n".join(lines) + "\n" + extra


def _records(gw: GatewayProcess, n: int, timeout: float = 10.0) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            con = sqlite3.connect(gw.tmp / "tollgate.db")
            con.row_factory = sqlite3.Row
            rows = [dict(r) for r in con.execute("SELECT * FROM requests ORDER BY ts")]
            con.close()
            if len(rows) >= n:
                return rows
        except sqlite3.OperationalError:
            pass
        time.sleep(0.05)
    raise AssertionError(f"{n} records did not arrive in the store")


def _usage(gw: GatewayProcess, n: int, key: str | None = None) -> dict[str, Any]:
    headers = {"authorization": f"Bearer {key}"} if key else {}
    deadline = time.monotonic() + 10
    while True:
        r = httpx.get(f"{gw.url}/v1/usage", params={"since": "1h"}, headers=headers)
        assert r.status_code == 200, r.text
        u: dict[str, Any] = r.json()
        if u["totals"]["requests"] >= n or time.monotonic() > deadline:
            return u
        time.sleep(0.05)


def test_unary_tool_round_trip_through_auto(fakes: Fakes, gateway: Gw) -> None:
    gw = gateway(_config(fakes))
    c = openai.OpenAI(base_url=gw.base_url, api_key="x", max_retries=0)
    first_input: list[Any] = [{"role": "user", "content": "What is the weather in Oslo?"}]
    raw = c.responses.with_raw_response.create(
        model="auto", input=first_input, tools=TOOLS, instructions="Use the tools."
    )
    r = raw.parse()
    assert r.object == "response" and r.status == "completed"
    assert r.id.startswith("resp_")
    tier = raw.headers["x-tollgate-model"]
    assert r.model == tier and tier in {"small", "medium", "large"}
    calls = [o for o in r.output if o.type == "function_call"]
    assert len(calls) == 1 and calls[0].name == "get_weather"
    assert calls[0].arguments == '{"x": 1}'  # what the fake upstream's model "called" with
    assert r.usage is not None and r.usage.input_tokens > 0 and r.usage.output_tokens == 16
    # the tool's result goes back with the call, as the SDK's docs show
    second_input = [
        *first_input,
        *[o.to_dict() for o in r.output],
        {"type": "function_call_output", "call_id": calls[0].call_id, "output": "4 C, rain"},
    ]
    r2 = c.responses.create(model="auto", input=second_input, tools=TOOLS)
    assert r2.output_text.startswith("[") and " tok0 tok1" in r2.output_text
    assert all(o.type == "message" for o in r2.output)
    # the chat upstream got the whole conversation in chat form
    rows = _records(gw, 2)
    assert [r["endpoint"] for r in rows] == ["responses", "responses"]
    assert all(r["cost_usd"] > 0 for r in rows)
    assert rows[0]["request_id"] == "tg-" + r.id.removeprefix("resp_")
    assert rows[0]["prompt_tokens"] == r.usage.input_tokens
    assert float(raw.headers["x-tollgate-cost-usd"]) == pytest.approx(rows[0]["cost_usd"])
    u = _usage(gw, 2)
    assert u["totals"]["requests"] == 2
    assert u["totals"]["cost_usd"] == pytest.approx(sum(r["cost_usd"] for r in rows))


def test_streamed_tool_round_trip_through_auto(fakes: Fakes, gateway: Gw) -> None:
    gw = gateway(_config(fakes))
    c = openai.OpenAI(base_url=gw.base_url, api_key="x", max_retries=0)
    first_input: list[Any] = [{"role": "user", "content": "What is the weather in Oslo?"}]
    events = list(c.responses.create(model="auto", input=first_input, tools=TOOLS, stream=True))
    types = [e.type for e in events]
    assert types[:2] == ["response.created", "response.in_progress"]
    assert types[-1] == "response.completed"
    assert "response.function_call_arguments.delta" in types
    assert "response.function_call_arguments.done" in types
    assert [e.sequence_number for e in events] == list(range(len(events)))
    final = events[-1].response  # type: ignore[union-attr]
    call = next(o for o in final.output if o.type == "function_call")
    assert call.name == "get_weather" and call.arguments == '{"x": 1}'
    assert final.usage is not None and final.usage.output_tokens == 16
    second_input = [
        *first_input,
        *[o.to_dict() for o in final.output],
        {"type": "function_call_output", "call_id": call.call_id, "output": "4 C, rain"},
    ]
    with c.responses.stream(model="auto", input=second_input, tools=TOOLS) as s:
        deltas = [e.delta for e in s if e.type == "response.output_text.delta"]
        done = s.get_final_response()
    assert "".join(deltas) == done.output_text and " tok15" in done.output_text
    rows = _records(gw, 2)
    assert [(r["endpoint"], bool(r["stream"])) for r in rows] == [("responses", True)] * 2
    assert rows[1]["completion_tokens"] == 16 and not rows[1]["tokens_estimated"]
    u = _usage(gw, 2)
    assert u["totals"]["requests"] == 2
    assert u["totals"]["cost_usd"] == pytest.approx(sum(r["cost_usd"] for r in rows))
    assert u["totals"]["cost_usd"] > 0


def test_previous_response_id_continues_only_for_the_same_key(fakes: Fakes, gateway: Gw) -> None:
    gw = gateway(_config(fakes, store=True, keys=True))
    a = openai.OpenAI(base_url=gw.base_url, api_key=KEY_A, max_retries=0)
    b = openai.OpenAI(base_url=gw.base_url, api_key=KEY_B, max_retries=0)
    r1 = a.responses.create(model="small", input="My name is Ada.", instructions="Be brief.")
    r2 = a.responses.create(model="small", input="What is my name?", previous_response_id=r1.id)
    assert r2.previous_response_id == r1.id
    # the upstream got the first turn, its answer and the new question (no old instructions)
    # the fake counts 4 per message plus the words: 3 turns
    assert r2.usage is not None
    assert r2.usage.input_tokens == (4 + 4) + (4 + len(r1.output_text.split())) + (4 + 4)
    got = a.responses.retrieve(r1.id)
    assert got.id == r1.id and got.output_text == r1.output_text
    # another key sees none of it
    with pytest.raises(openai.NotFoundError) as e:
        b.responses.retrieve(r1.id)
    assert e.value.status_code == 404 and r1.id in str(e.value.body)
    with pytest.raises(openai.NotFoundError):
        b.responses.create(model="small", input="And mine?", previous_response_id=r1.id)
    with pytest.raises(openai.NotFoundError):
        b.responses.delete(r1.id)
    a.responses.delete(r1.id)
    with pytest.raises(openai.NotFoundError):
        a.responses.retrieve(r1.id)
    # store: false in a request: that answer is not kept
    r3 = a.responses.create(model="small", input="Forget this.", store=False)
    with pytest.raises(openai.NotFoundError):
        a.responses.retrieve(r3.id)
    # streamed answers are kept too
    events = list(
        a.responses.create(model="small", input="Hi", previous_response_id=r2.id, stream=True)
    )
    final = events[-1].response  # type: ignore[union-attr]
    assert a.responses.retrieve(final.id).output_text == final.output_text


def test_previous_response_id_without_the_store_says_how_to_turn_it_on(
    fakes: Fakes, gateway: Gw
) -> None:
    gw = gateway(_config(fakes))
    c = openai.OpenAI(base_url=gw.base_url, api_key="x", max_retries=0)
    with pytest.raises(openai.BadRequestError) as e:
        c.responses.create(model="auto", input="Hi", previous_response_id="resp_123")
    err = e.value.body
    assert isinstance(err, dict)
    assert err["param"] == "previous_response_id" and err["type"] == "invalid_request_error"
    assert "responses: {store: true}" in err["message"]
    with pytest.raises(openai.NotFoundError) as nf:
        c.responses.retrieve("resp_123")
    assert "responses: {store: true}" in nf.value.message


def test_errors_come_in_openai_format(fakes: Fakes, gateway: Gw) -> None:
    gw = gateway(_config(fakes))
    c = openai.OpenAI(base_url=gw.base_url, api_key="x", max_retries=0)
    with pytest.raises(openai.BadRequestError) as e:
        c.responses.create(model="auto", input="Hi", tools=[{"type": "web_search"}])
    assert isinstance(e.value.body, dict) and e.value.body["param"] == "tools[0]"
    with pytest.raises(openai.NotFoundError) as nf:
        c.responses.create(model="no-such-model", input="Hi")
    assert isinstance(nf.value.body, dict) and nf.value.body["code"] == "model_not_found"
    r = httpx.post(f"{gw.base_url}/responses", content=b"{not json", headers={
        "content-type": "application/json"})  # fmt: skip
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"
    r = httpx.get(f"{gw.base_url}/responses")
    assert r.status_code == 405 and r.json()["error"]["type"] == "invalid_request_error"


def test_an_upstream_that_speaks_responses_gets_the_request_as_it_came(
    fakes: Fakes, gateway: Gw
) -> None:
    native = fakes("native", responses=True)
    text = "\n".join(
        [
            "store: {backend: sqlite, sqlite_path: '${TOLLGATE_DB}'}",
            "models:",
            "  - name: nat",
            "    tier: large",
            "    pricing: {input_per_mtok: 1.0, output_per_mtok: 2.0}",
            f"    endpoints: [{{base_url: '{native.base_url}', model: up-nat, responses: true}}]",
        ]
    )
    gw = gateway(text)
    c = openai.OpenAI(base_url=gw.base_url, api_key="x", max_retries=0)
    r = c.responses.create(model="nat", input="one two three", instructions="x")
    assert r.model == "nat" and r.output_text.startswith("[native] tok0")
    sent = httpx.get(f"{native.url}/_fake/stats").json()
    assert sent["by_path"] == {"/v1/responses": 1}
    assert sent["last_request"]["model"] == "up-nat"
    assert sent["last_request"]["instructions"] == "x"
    events = list(c.responses.create(model="nat", input="one two", stream=True))
    assert events[-1].type == "response.completed"
    assert events[-1].response.model == "nat"  # type: ignore[union-attr]
    rows = _records(gw, 2)
    assert [(r["endpoint"], r["completion_tokens"]) for r in rows] == [("responses", 16)] * 2
    assert rows[0]["prompt_tokens"] == r.usage.input_tokens  # type: ignore[union-attr]
    assert rows[0]["cost_usd"] == pytest.approx((rows[0]["prompt_tokens"] + 2 * 16) * 1e-6)


def test_a_stream_cut_mid_answer_ends_with_an_error_event(fakes: Fakes, gateway: Gw) -> None:
    small = fakes("small", chunks=8)
    text = "\n".join(
        [
            "store: {backend: sqlite, sqlite_path: '${TOLLGATE_DB}'}",
            "models:",
            "  - name: small",
            "    tier: small",
            "    retries: 0",
            "    pricing: {input_per_mtok: 1.0, output_per_mtok: 2.0}",
            f"    endpoints: [{{base_url: '{small.base_url}'}}]",
        ]
    )
    gw = gateway(text)
    script = {"actions": [{"kind": "cut", "after_chunks": 3}]}
    assert httpx.post(f"{small.url}/_fake/script", json=script).status_code == 200
    c = openai.OpenAI(base_url=gw.base_url, api_key="x", max_retries=0)
    events = list(c.responses.create(model="small", input="Hi", stream=True))
    types = [e.type for e in events]
    assert "response.output_text.delta" in types and "response.completed" not in types
    assert types[-2:] == ["error", "response.failed"]
    err = events[-2]
    assert err.code == "stream_interrupted" and "incomplete" in err.message  # type: ignore[union-attr]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    rec = _records(gw, 1)[0]
    assert rec["endpoint"] == "responses" and rec["status"] == 502
