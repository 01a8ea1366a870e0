"""A real local model behind the gateway: llama.cpp's llama-server running Gemma 3 270M.

`scripts/local-model install` builds the server once per machine (CI runs it); these tests
start it on a free port, route to it through the gateway from config/examples, and check
what a user sees and what the store records.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import anthropic
import httpx
import openai
import pytest

from tests.fake_upstream import FakeUpstream
from tests.support import REPO, GatewayProcess, free_port

pytestmark = pytest.mark.llamacpp
SCRIPT = REPO / "scripts" / "local-model"
PUBLIC = "gemma-local"
ALIAS = "gemma-3-270m"
# $0.10/hour at 30 tokens/s: price of one output token; input tokens cost 0.1 of it
OUT_TOKEN_USD = 0.10 / 3600 / 30
IN_TOKEN_USD = 0.1 * OUT_TOKEN_USD


def _installed() -> bool:
    r = subprocess.run([str(SCRIPT), "path"], capture_output=True, text=True, timeout=30)
    return r.returncode == 0


@dataclass
class Llama:
    port: int

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def stop(self) -> None:
        subprocess.run([str(SCRIPT), "stop"], capture_output=True, timeout=60, check=False)


@pytest.fixture(scope="module")
def llama() -> Iterator[Llama]:
    if not _installed():
        msg = "llama.cpp is not installed: run scripts/local-model install (.ci/run does)"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    port = free_port()
    r = subprocess.run(
        [str(SCRIPT), "start", "--port", str(port)], capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 0 and "READY" in r.stdout, r.stdout + r.stderr
    server = Llama(port)
    yield server
    server.stop()


def _config(llama: Llama, large: FakeUpstream) -> str:
    text = (REPO / "config" / "examples" / "local-llamacpp.yaml").read_text()
    text = text.replace("circuit_breaker: {failure_threshold: 3, cooldown_s: 10}",
                        "circuit_breaker: {failure_threshold: 1, cooldown_s: 60}")  # fmt: skip
    return text.replace("${TOLLGATE_LLAMACPP_URL:-http://127.0.0.1:8089/v1}", llama.base_url)


@pytest.fixture
def gw(
    llama: Llama, fakes: Callable[..., FakeUpstream], gateway: Callable[..., GatewayProcess]
) -> GatewayProcess:
    large = fakes("large")
    return gateway(_config(llama, large), env={"TOLLGATE_LARGE_URL": large.base_url})


def _records(gw: GatewayProcess, n: int, timeout: float = 10.0) -> list[dict[str, Any]]:
    db = gw.tmp / "tollgate.db"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            con = sqlite3.connect(db)
            con.row_factory = sqlite3.Row
            rows = [dict(r) for r in con.execute("SELECT * FROM requests ORDER BY ts")]
            if len(rows) >= n:
                return rows
        except sqlite3.OperationalError:
            pass
        time.sleep(0.05)
    raise AssertionError(f"{n} records did not arrive in the store")


MSGS = [{"role": "user", "content": "Name three colours."}]


# a conversation that already holds a tool turn: the assistant's tool_use and the user's
# tool_result (the 270M model on a server without tool-call templates gets them as chat's
# assistant tool_calls and a tool message, and answers in text)
TOOL_HISTORY: list[Any] = [
    {"role": "user", "content": "What is the weather in Paris?"},
    {
        "role": "assistant",
        "content": [
            {"type": "text", "text": "Let me check."},
            {"type": "tool_use", "id": "toolu_01", "name": "get_weather",
             "input": {"city": "Paris"}},
        ],
    },
    {
        "role": "user",
        "content": [
            {"type": "tool_result", "tool_use_id": "toolu_01", "content": "18 C and sunny"},
            {"type": "text", "text": "Say it in one short sentence."},
        ],
    },
]  # fmt: skip


T0 = {"temperature": 0}  # the SDK's own temperature argument is gone from messages.create


def test_messages_api_text_unary_and_streamed_with_tool_history(gw: GatewayProcess) -> None:
    """Anthropic's Messages API, translated to chat for llama.cpp: text answers, unary and
    streamed, priced on llama.cpp's own usage."""
    client = anthropic.Anthropic(base_url=gw.url, api_key="x", max_retries=0)
    m = client.messages.create(
        model=PUBLIC, max_tokens=12, system="Answer briefly.", messages=MSGS, extra_body=T0
    )
    assert m.type == "message" and m.model == PUBLIC
    assert m.content[0].type == "text" and m.content[0].text.strip()
    assert m.stop_reason in ("end_turn", "max_tokens")
    h = client.messages.create(model=PUBLIC, max_tokens=12, messages=TOOL_HISTORY, extra_body=T0)
    assert h.content[0].type == "text" and h.content[0].text.strip()
    assert h.usage.input_tokens > m.usage.input_tokens  # the tool turns reached the model
    with client.messages.stream(
        model=PUBLIC, max_tokens=12, messages=TOOL_HISTORY, extra_body=T0
    ) as s:
        streamed = "".join(s.text_stream)
        final = s.get_final_message()
    assert streamed.strip() and final.content[0].text == streamed
    assert final.stop_reason in ("end_turn", "max_tokens") and final.model == PUBLIC
    recs = _records(gw, 3)
    for rec, ans in zip(recs, (m, h, final), strict=True):
        assert rec["endpoint"] == "messages" and rec["status"] == 200
        assert rec["tokens_estimated"] == 0  # llama.cpp's own counts
        assert (rec["prompt_tokens"], rec["completion_tokens"]) == (
            ans.usage.input_tokens,
            ans.usage.output_tokens,
        )
        cost = rec["prompt_tokens"] * IN_TOKEN_USD + rec["completion_tokens"] * OUT_TOKEN_USD
        assert rec["cost_usd"] == pytest.approx(cost, rel=1e-12)
    assert recs[2]["stream"] == 1


def test_unary_chat_is_priced_locally_and_named_publicly(gw: GatewayProcess, llama: Llama) -> None:
    c = openai.OpenAI(base_url=gw.base_url, api_key="x", max_retries=0)
    raw = c.chat.completions.with_raw_response.create(
        model=PUBLIC, messages=MSGS, max_tokens=12, temperature=0
    )
    r = raw.parse()
    assert r.model == PUBLIC  # not llama.cpp's alias or file path
    assert r.choices[0].message.content
    assert raw.headers["x-tollgate-model"] == PUBLIC and raw.headers["x-tollgate-tier"] == "small"
    direct = openai.OpenAI(base_url=llama.base_url, api_key="x", max_retries=0)
    d = direct.chat.completions.create(model="x", messages=MSGS, max_tokens=12, temperature=0)
    assert d.model == ALIAS
    assert r.usage.prompt_tokens == d.usage.prompt_tokens
    rec = _records(gw, 1)[0]
    # the record holds llama.cpp's own usage, not an estimate
    assert (rec["prompt_tokens"], rec["completion_tokens"]) == (
        r.usage.prompt_tokens,
        r.usage.completion_tokens,
    )
    assert rec["tokens_estimated"] == 0
    cost = rec["prompt_tokens"] * IN_TOKEN_USD + rec["completion_tokens"] * OUT_TOKEN_USD
    assert rec["cost_usd"] == pytest.approx(cost, rel=1e-12)
    assert float(raw.headers["x-tollgate-cost-usd"]) == pytest.approx(cost, abs=1e-9)


def test_streamed_chat_records_llamacpp_usage(gw: GatewayProcess) -> None:
    c = openai.OpenAI(base_url=gw.base_url, api_key="x", max_retries=0)
    with_usage = list(
        c.chat.completions.create(
            model=PUBLIC, messages=MSGS, max_tokens=12, temperature=0, stream=True,
            stream_options={"include_usage": True},
        )
    )  # fmt: skip
    assert all(ch.model == PUBLIC for ch in with_usage)
    usage = with_usage[-1].usage
    assert with_usage[-1].choices == [] and usage.completion_tokens > 0
    text = "".join(ch.choices[0].delta.content or "" for ch in with_usage if ch.choices)
    assert text
    # without include_usage the client sees no usage chunk, but the gateway still records it
    plain = list(
        c.chat.completions.create(
            model=PUBLIC, messages=MSGS, max_tokens=12, temperature=0, stream=True
        )
    )
    assert all(ch.usage is None for ch in plain)
    recs = _records(gw, 2)
    for rec in recs:
        assert rec["stream"] == 1 and rec["tokens_estimated"] == 0
        assert rec["prompt_tokens"] == usage.prompt_tokens
        assert rec["completion_tokens"] == usage.completion_tokens
        assert rec["ttft_ms"] is not None and rec["ttft_ms"] < rec["latency_ms"]


def test_two_concurrent_streams_both_complete(gw: GatewayProcess) -> None:
    async def one(c: openai.AsyncOpenAI, i: int) -> str:
        stream = await c.chat.completions.create(
            model=PUBLIC, messages=[{"role": "user", "content": f"Count to {i + 3}."}],
            max_tokens=16, stream=True,
        )  # fmt: skip
        parts = []
        finish = None
        async for ch in stream:
            for choice in ch.choices:
                parts.append(choice.delta.content or "")
                finish = choice.finish_reason or finish
        assert finish in ("stop", "length")
        return "".join(parts)

    async def both() -> list[str]:
        c = openai.AsyncOpenAI(base_url=gw.base_url, api_key="x", max_retries=0)
        try:
            return await asyncio.gather(one(c, 0), one(c, 1))
        finally:
            await c.close()

    texts = asyncio.run(both())
    assert all(texts)
    recs = _records(gw, 2)
    assert all(r["status"] == 200 and r["completion_tokens"] > 0 for r in recs)


def test_killed_server_opens_circuit_and_falls_back(gw: GatewayProcess, llama: Llama) -> None:
    c = openai.OpenAI(base_url=gw.base_url, api_key="x", max_retries=0)
    first = c.chat.completions.with_raw_response.create(model="chat", messages=MSGS, max_tokens=4)
    assert first.headers["x-tollgate-model"] == PUBLIC
    llama.stop()
    try:
        second = c.chat.completions.with_raw_response.create(
            model="chat", messages=MSGS, max_tokens=4
        )
        assert second.headers["x-tollgate-model"] == "large"
        assert second.parse().choices[0].message.content.startswith("[large]")
        ready = httpx.get(f"{gw.url}/readyz").json()
        assert ready["models"][PUBLIC]["endpoints"][0]["circuit"] == "open"
        # with the circuit open, the next request goes straight to the next tier
        third = c.chat.completions.with_raw_response.create(
            model="chat", messages=MSGS, max_tokens=4
        )
        assert third.headers["x-tollgate-model"] == "large"
        assert third.headers["x-tollgate-attempts"] == "1"
    finally:
        r = subprocess.run(
            [str(SCRIPT), "start", "--port", str(llama.port)],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert r.returncode == 0, r.stdout + r.stderr
