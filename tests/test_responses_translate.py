"""The Responses API in terms of chat completions (gateway/api/responses.py), checked against
the official SDK's own types: what the translation produces must parse as the `openai`
package's Response and stream events, and the SDK's stream accumulator must build from the
events the same Response the final event carries."""

from __future__ import annotations

from typing import Any

import orjson
import pydantic
import pytest
from openai import omit
from openai.lib.streaming.responses._responses import ResponseStreamState
from openai.types.responses import Response, ResponseStreamEvent

from gateway.api import responses as R
from gateway.errors import InvalidRequest

TOOL = {
    "type": "function",
    "name": "get_weather",
    "description": "the weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
}


def test_string_input_and_instructions_become_system_and_user_turns() -> None:
    body = {"model": "auto", "input": "Hello", "instructions": "Be brief.", "max_output_tokens": 9}
    R.check(body)
    chat = R.to_chat(body)
    assert chat["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hello"},
    ]
    assert chat["max_tokens"] == 9 and "stream" not in chat


def test_items_with_a_tool_round_trip_become_chat_turns() -> None:
    body: dict[str, Any] = {
        "model": "auto",
        "input": [
            {"role": "user", "content": [{"type": "input_text", "text": "Weather in Oslo?"}]},
            {"type": "reasoning", "id": "rs_1", "summary": []},
            {
                "type": "function_call",
                "call_id": "call_1",
                "name": "get_weather",
                "arguments": '{"city": "Oslo"}',
            },
            {"type": "function_call_output", "call_id": "call_1", "output": "4 C, rain"},
            {
                "type": "message",
                "role": "assistant",
                "content": [{"type": "output_text", "text": "4 C and rain.", "annotations": []}],
            },
            {"role": "user", "content": "Thanks"},
        ],
        "tools": [TOOL],
        "tool_choice": {"type": "function", "name": "get_weather"},
        "text": {
            "format": {
                "type": "json_schema",
                "name": "w",
                "schema": {"type": "object"},
                "strict": True,
            }
        },
        "reasoning": {"effort": "low"},
        "temperature": 0.2,
        "stream": True,
    }
    R.check(body)
    chat = R.to_chat(body)
    assert chat["messages"] == [
        {"role": "user", "content": "Weather in Oslo?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "4 C, rain"},
        {"role": "assistant", "content": "4 C and rain."},
        {"role": "user", "content": "Thanks"},
    ]
    assert chat["tools"] == [
        {
            "type": "function",
            "function": {k: TOOL[k] for k in ("name", "description", "parameters")},
        }
    ]
    assert chat["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
    assert chat["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "w", "schema": {"type": "object"}, "strict": True},
    }
    assert chat["reasoning_effort"] == "low"
    assert chat["temperature"] == 0.2 and chat["stream"] is True


def test_a_stored_history_comes_before_the_new_input() -> None:
    history = [
        {"type": "message", "role": "user", "content": "My name is Ada."},
        {"type": "message", "role": "assistant", "content": "Hello Ada."},
    ]
    chat = R.to_chat({"model": "m", "input": "What is my name?"}, history)
    assert [m["content"] for m in chat["messages"]] == [
        "My name is Ada.",
        "Hello Ada.",
        "What is my name?",
    ]


def test_images_stay_image_parts() -> None:
    body = {
        "model": "m",
        "input": [
            {
                "role": "user",
                "content": [
                    {"type": "input_text", "text": "What is this?"},
                    {"type": "input_image", "image_url": "data:image/png;base64,AAAA"},
                ],
            }
        ],
    }
    R.check(body)
    assert R.to_chat(body)["messages"][0]["content"] == [
        {"type": "text", "text": "What is this?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
    ]


@pytest.mark.parametrize(
    ("body", "param", "words"),
    [
        ({"model": "auto"}, "input", "is required"),
        ({"model": "auto", "input": 3}, "input", "string or an array"),
        (
            {"model": "auto", "input": "x", "tools": [{"type": "web_search"}]},
            "tools[0]",
            "function tools only",
        ),
        (
            {"model": "auto", "input": [{"type": "item_reference", "id": "msg_1"}]},
            "input[0]",
            "item_reference",
        ),
        (
            {"model": "auto", "input": [{"role": "robot", "content": "x"}]},
            "input[0].role",
            "must be one of",
        ),
        (
            {"model": "auto", "input": "x", "max_output_tokens": 0},
            "max_output_tokens",
            "1 or more",
        ),
        (
            {"model": "auto", "input": "x", "text": {"format": {"type": "json_schema"}}},
            "text.format",
            "schema",
        ),
        (
            {"model": "auto", "input": "x", "reasoning": {"effort": "max"}},
            "reasoning.effort",
            "one of",
        ),
        ({"model": "auto", "input": "x", "background": True}, "background", "not supported"),
    ],
)
def test_bad_requests_name_the_field(body: dict[str, Any], param: str, words: str) -> None:
    with pytest.raises(InvalidRequest) as e:
        R.check(body)
    assert e.value.param == param and words in e.value.message


def _chat_answer(message: dict[str, Any], finish: str = "stop") -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "choices": [{"index": 0, "message": message, "finish_reason": finish}],
        "usage": {
            "prompt_tokens": 11,
            "completion_tokens": 7,
            "total_tokens": 18,
            "prompt_tokens_details": {"cached_tokens": 4},
        },
    }


def test_a_chat_answer_is_a_response_the_sdk_reads() -> None:
    body = {"model": "auto", "input": "Hi", "instructions": "Be brief.", "tools": [TOOL]}
    msg = {
        "role": "assistant",
        "content": "Let me look.",
        "tool_calls": [
            {
                "id": "call_9",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'},
            }
        ],
    }
    out = R.to_response(_chat_answer(msg, "tool_calls"), body, "resp_x1", "small", 1700000000.0)
    r = Response.model_validate(out)
    assert r.id == "resp_x1" and r.model == "small" and r.status == "completed"
    assert r.output_text == "Let me look."
    call = r.output[1]
    assert call.type == "function_call"
    assert (call.call_id, call.name, call.arguments) == ("call_9", "get_weather", '{"city":"Oslo"}')
    assert r.usage is not None
    assert (r.usage.input_tokens, r.usage.output_tokens, r.usage.total_tokens) == (11, 7, 18)
    assert r.usage.input_tokens_details.cached_tokens == 4
    assert r.instructions == "Be brief." and r.tools[0].name == "get_weather"


def test_a_cut_answer_is_incomplete() -> None:
    out = R.to_response(
        _chat_answer({"role": "assistant", "content": "a b"}, "length"),
        {"model": "m", "input": "x", "max_output_tokens": 2},
        "resp_2",
        "m",
        0.0,
    )
    r = Response.model_validate(out)
    assert r.status == "incomplete" and r.incomplete_details is not None
    assert r.incomplete_details.reason == "max_output_tokens"


def _chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {"choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}


def _events(raw: bytes) -> list[dict[str, Any]]:
    out = []
    for ev in raw.split(b"\n\n"):
        if not ev:
            continue
        name, data = ev.split(b"\n")
        d = orjson.loads(data.removeprefix(b"data: "))
        assert name == b"event: " + d["type"].encode()
        out.append(d)
    return out


def test_a_chat_stream_becomes_the_responses_event_sequence() -> None:
    body = {"model": "auto", "input": "Hi", "tools": [TOOL], "stream": True}
    t = R.StreamTranslator(body, "resp_s1", "small", 1700000000.0)
    raw = t.start()
    for c in [
        _chunk({"role": "assistant", "content": "Checking"}),
        _chunk({"content": " now."}),
        _chunk(
            {
                "tool_calls": [
                    {
                        "index": 0,
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": ""},
                    }
                ]
            }
        ),
        _chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"city"'}}]}),
        _chunk({"tool_calls": [{"index": 0, "function": {"arguments": ':"Oslo"}'}}]}),
        _chunk({}, "tool_calls"),
        {"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 9}},
    ]:
        raw += t.feed(c)
    raw += t.finish()
    events = _events(raw)
    assert [e["type"] for e in events] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.output_item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    # every event parses as the SDK's type, and its accumulator rebuilds the final Response
    adapter: pydantic.TypeAdapter[Any] = pydantic.TypeAdapter(ResponseStreamEvent)
    state = ResponseStreamState(input_tools=omit, text_format=omit)
    for e in events:
        state.handle_event(adapter.validate_python(e))
    final = Response.model_validate(events[-1]["response"])
    assert final.output_text == "Checking now."
    assert final.output[1].type == "function_call"
    assert final.output[1].arguments == '{"city":"Oslo"}'
    assert final.usage is not None and final.usage.output_tokens == 9
    built = state._ResponseStreamState__current_snapshot  # type: ignore[attr-defined]
    assert built.output_text == "Checking now."
    assert built.output[1].arguments == '{"city":"Oslo"}'


def test_a_stream_cut_by_max_output_tokens_ends_incomplete() -> None:
    t = R.StreamTranslator({"model": "m", "input": "x"}, "resp_s2", "m", 0.0)
    raw = t.start() + t.feed(_chunk({"content": "a"})) + t.feed(_chunk({}, "length"))
    events = _events(raw + t.finish())
    assert events[-1]["type"] == "response.incomplete"
    assert events[-1]["response"]["incomplete_details"] == {"reason": "max_output_tokens"}


def test_conversation_keeps_input_and_output_for_the_next_turn() -> None:
    body = {"model": "m", "input": "Hi", "instructions": "not carried over"}
    resp = R.to_response(
        _chat_answer({"role": "assistant", "content": "Hello"}), body, "resp_c", "m", 0.0
    )
    items = R.conversation([], body, resp)
    assert items == [
        {"type": "message", "role": "user", "content": "Hi"},
        {"type": "message", "role": "assistant", "content": "Hello"},
    ]
