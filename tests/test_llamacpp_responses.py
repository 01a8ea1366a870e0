"""OpenAI's Responses API in front of a real local model: llama.cpp's llama-server (Gemma 3
270M, which speaks only chat completions) behind the gateway, which translates. Text answers,
unary and streamed, including a history that already holds tool turns (the server runs
without tool-call templates, and a 270M model does not call tools reliably), recorded with
llama.cpp's own usage."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.fake_upstream import FakeUpstream
from tests.support import GatewayProcess
from tests.test_llamacpp import PUBLIC, Llama, _config, _records, llama  # noqa: F401  (fixture)

pytestmark = pytest.mark.llamacpp


@pytest.fixture
def gw(
    llama: Llama,  # noqa: F811
    fakes: Callable[..., FakeUpstream],
    tmp_path: Path,
) -> Iterator[GatewayProcess]:
    """The example routing file's gateway in front of llama-server (test_llamacpp's), given
    a minute to start: the router loads slowly on a busy 2-core machine."""
    large = fakes("large")
    g = GatewayProcess(_config(llama, large), tmp_path, {"TOLLGATE_LARGE_URL": large.base_url})
    g.start(timeout=60)
    yield g
    g.close()


HISTORY: list[Any] = [
    {"role": "user", "content": "What is the weather in Oslo?"},
    {
        "type": "function_call",
        "call_id": "call_1",
        "name": "get_weather",
        "arguments": '{"city": "Oslo"}',
    },
    {"type": "function_call_output", "call_id": "call_1", "output": "4 degrees and rain"},
    {"role": "assistant", "content": "It is 4 degrees and raining in Oslo."},
    {"role": "user", "content": "Name three colours."},
]


def test_unary_text_answer(gw: GatewayProcess) -> None:
    c = openai.OpenAI(base_url=gw.base_url, api_key="x", max_retries=0)
    raw = c.responses.with_raw_response.create(
        model=PUBLIC,
        input="Name three colours.",
        instructions="Answer briefly.",
        max_output_tokens=12,
        temperature=0,
    )
    r = raw.parse()
    assert r.model == PUBLIC and r.output_text.strip()
    assert raw.headers["x-tollgate-model"] == PUBLIC
    assert r.usage is not None and 0 < r.usage.output_tokens <= 12
    rec = _records(gw, 1)[0]
    assert rec["endpoint"] == "responses" and rec["tokens_estimated"] == 0
    assert (rec["prompt_tokens"], rec["completion_tokens"]) == (
        r.usage.input_tokens,
        r.usage.output_tokens,
    )
    assert rec["cost_usd"] > 0


def test_streamed_answer_after_tool_turns(gw: GatewayProcess) -> None:
    c = openai.OpenAI(base_url=gw.base_url, api_key="x", max_retries=0)
    events = list(
        c.responses.create(
            model=PUBLIC, input=HISTORY, max_output_tokens=16, temperature=0, stream=True
        )
    )
    types = [e.type for e in events]
    assert types[0] == "response.created" and types[-1] in (
        "response.completed",
        "response.incomplete",  # cut at max_output_tokens
    )
    assert [e.sequence_number for e in events] == list(range(len(events)))
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    final = events[-1].response  # type: ignore[union-attr]
    assert text.strip() and final.output_text == text
    assert final.usage is not None and final.usage.output_tokens > 0
    # the same history, unary: a text answer too
    r = c.responses.create(model=PUBLIC, input=HISTORY, max_output_tokens=16, temperature=0)
    assert r.output_text.strip()
    recs = _records(gw, 2)
    assert [(x["endpoint"], bool(x["stream"])) for x in recs] == [
        ("responses", True),
        ("responses", False),
    ]
    assert all(x["tokens_estimated"] == 0 and x["status"] == 200 for x in recs)
    assert recs[0]["completion_tokens"] == final.usage.output_tokens
