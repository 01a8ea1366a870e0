"""Tests for the fake OpenAI-compatible upstream (test tooling, not a model)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from tests.fake_upstream import FakeUpstream, answer_pieces

MESSAGES: list[Any] = [
    {"role": "system", "content": "be brief"},
    {"role": "user", "content": "hello there fake model"},
]
# words: 2 + 4, plus 4 per message
PROMPT_TOKENS = 6 + 2 * 4
TOOLS: list[Any] = [
    {
        "type": "function",
        "function": {"name": "lookup", "parameters": {"type": "object", "properties": {}}},
    },
    {"type": "function", "function": {"name": "other", "parameters": {"type": "object"}}},
]


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeUpstream]:
    with FakeUpstream(name="small", completion_tokens=16, chunks=8) as fu:
        yield fu
        # Resets, cuts and disconnects must not make uvicorn log errors.
        assert "Traceback" not in fu.logs()
        assert "ERROR" not in fu.logs()


@pytest.fixture()
def fu(upstream: FakeUpstream) -> FakeUpstream:
    upstream.reset()
    return upstream


@pytest.fixture()
def http() -> Iterator[httpx.Client]:
    with httpx.Client(trust_env=False, timeout=10.0) as client:
        yield client


@pytest.fixture()
def client(fu: FakeUpstream) -> Iterator[openai.OpenAI]:
    # No retries: each SDK call is exactly one upstream request.  trust_env=False: never route
    # 127.0.0.1 through a proxy from the environment.
    with openai.OpenAI(
        base_url=fu.base_url,
        api_key="x",
        max_retries=0,
        http_client=openai.DefaultHttpxClient(trust_env=False),
    ) as sdk:
        yield sdk


def test_chat_non_stream(fu: FakeUpstream, client: openai.OpenAI) -> None:
    resp = client.chat.completions.create(model="my-model", messages=MESSAGES)
    assert resp.object == "chat.completion"
    assert resp.model == "my-model"
    assert resp.id.startswith("chatcmpl-")
    assert resp.created > 0
    choice = resp.choices[0]
    assert choice.finish_reason == "stop"
    assert choice.message.role == "assistant"
    content = choice.message.content or ""
    assert content.startswith("[small] ")
    assert content.split()[1:] == [f"tok{i}" for i in range(16)]
    assert resp.usage is not None
    assert resp.usage.prompt_tokens == PROMPT_TOKENS
    assert resp.usage.completion_tokens == 16
    assert resp.usage.total_tokens == PROMPT_TOKENS + 16

    stats = fu.stats()
    assert stats["requests"] == 1
    assert stats["completed"] == 1
    assert stats["by_path"] == {"/v1/chat/completions": 1}
    assert stats["last_request"]["model"] == "my-model"
    assert stats["last_headers"]["authorization"] == "Bearer x"


def test_chat_stream_without_usage(client: openai.OpenAI) -> None:
    chunks = list(client.chat.completions.create(model="m", messages=MESSAGES, stream=True))
    assert len(chunks) == 8 + 1  # 8 content deltas + the finish chunk
    assert all(c.object == "chat.completion.chunk" and c.model == "m" for c in chunks)
    assert all(c.usage is None for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert all(c.choices[0].delta.role is None for c in chunks[1:])
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert all(c.choices[0].finish_reason is None for c in chunks[:-1])
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert text == answer_pieces("small", 16, 8)[0]
    assert len({c.id for c in chunks}) == 1


def test_chat_stream_with_include_usage(client: openai.OpenAI) -> None:
    chunks = list(
        client.chat.completions.create(
            model="m", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
        )
    )
    assert len(chunks) == 8 + 2
    last = chunks[-1]
    assert last.choices == []
    assert last.usage is not None
    assert last.usage.prompt_tokens == PROMPT_TOKENS
    assert last.usage.completion_tokens == 16
    assert all(c.usage is None for c in chunks[:-1])
    assert chunks[-2].choices[0].finish_reason == "stop"


def test_no_usage_header_suppresses_usage(client: openai.OpenAI) -> None:
    hdrs = {"x-fake-no-usage": "1", "x-fake-completion-tokens": "3", "x-fake-chunks": "2"}
    resp = client.chat.completions.create(model="m", messages=MESSAGES, extra_headers=hdrs)
    assert resp.usage is None
    assert resp.choices[0].message.content == "[small] tok0 tok1 tok2"
    chunks = list(
        client.chat.completions.create(
            model="m",
            messages=MESSAGES,
            stream=True,
            stream_options={"include_usage": True},
            extra_headers=hdrs,
        )
    )
    assert len(chunks) == 2 + 1
    assert all(c.usage is None and c.choices for c in chunks)


def test_tool_call_non_stream(client: openai.OpenAI) -> None:
    resp = client.chat.completions.create(model="m", messages=MESSAGES, tools=TOOLS)
    choice = resp.choices[0]
    assert choice.finish_reason == "tool_calls"
    calls = choice.message.tool_calls or []
    assert len(calls) == 1
    call = calls[0]
    assert call.type == "function"
    assert call.id.startswith("call_")
    assert call.function.name == "lookup"
    assert json.loads(call.function.arguments) == {"x": 1}


def test_tool_call_stream_deltas(client: openai.OpenAI) -> None:
    chunks = list(
        client.chat.completions.create(model="m", messages=MESSAGES, tools=TOOLS, stream=True)
    )
    deltas = [tc for c in chunks if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
    assert len(deltas) >= 3
    first = deltas[0]
    assert first.index == 0
    assert first.id and first.id.startswith("call_")
    assert first.type == "function"
    assert first.function is not None
    assert first.function.name == "lookup"
    assert first.function.arguments == ""
    for later in deltas[1:]:
        assert later.index == 0 and later.id is None
        assert later.function is not None and later.function.name is None
    args = "".join(d.function.arguments or "" for d in deltas if d.function)
    assert json.loads(args) == {"x": 1}
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_completions(client: openai.OpenAI) -> None:
    resp = client.completions.create(model="c", prompt="one two three")
    assert resp.object == "text_completion"
    assert resp.choices[0].text.startswith("[small] tok0")
    assert resp.usage is not None and resp.usage.prompt_tokens == 3
    chunks = list(
        client.completions.create(
            model="c", prompt="x", stream=True, stream_options={"include_usage": True}
        )
    )
    assert "".join(c.choices[0].text for c in chunks if c.choices) == resp.choices[0].text
    assert chunks[-1].choices == [] and chunks[-1].usage is not None


def test_embeddings(client: openai.OpenAI, fu: FakeUpstream, http: httpx.Client) -> None:
    # The SDK asks for base64 by default and decodes it.
    resp = client.embeddings.create(model="emb", input=["alpha beta", "gamma"])
    assert resp.model == "emb"
    assert [d.index for d in resp.data] == [0, 1]
    assert all(len(d.embedding) == 8 for d in resp.data)
    assert resp.data[0].embedding != resp.data[1].embedding
    assert resp.usage.prompt_tokens == 3
    single = client.embeddings.create(model="emb", input="alpha beta", encoding_format="float")
    assert len(single.data) == 1
    assert single.data[0].embedding == pytest.approx(resp.data[0].embedding)
    raw = http.post(f"{fu.base_url}/embeddings", json={"model": "e", "input": "alpha beta"}).json()
    assert raw["data"][0]["embedding"] == single.data[0].embedding


def test_models(client: openai.OpenAI) -> None:
    ids = [m.id for m in client.models.list()]
    assert "fake-model" in ids


def test_scripted_500_then_ok(fu: FakeUpstream, client: openai.OpenAI, http: httpx.Client) -> None:
    fu.script([{"kind": "status", "status": 500, "retry_after": 1.5}])
    with pytest.raises(openai.InternalServerError) as info:
        client.chat.completions.create(model="m", messages=MESSAGES)
    assert info.value.status_code == 500
    assert info.value.response.headers["retry-after"] == "1.5"
    body = info.value.response.json()
    assert set(body["error"]) >= {"message", "type", "code"}
    resp = client.chat.completions.create(model="m", messages=MESSAGES)
    assert resp.choices[0].finish_reason == "stop"

    fu.script([{"kind": "status", "status": 429, "body": {"custom": True}, "repeat": 2}])
    url = f"{fu.base_url}/chat/completions"
    payload = {"model": "m", "messages": MESSAGES}
    assert [http.post(url, json=payload).status_code for _ in range(3)] == [429, 429, 200]
    assert fu.stats()["requests"] == 5


def test_default_action_until_reset(fu: FakeUpstream, http: httpx.Client) -> None:
    fu.script([{"kind": "ok"}], default={"kind": "status", "status": 503})
    url = f"{fu.base_url}/chat/completions"
    payload = {"model": "m", "messages": MESSAGES}
    assert [http.post(url, json=payload).status_code for _ in range(3)] == [200, 503, 503]
    fu.reset()
    assert http.post(url, json=payload).status_code == 200
    assert fu.stats()["requests"] == 1


def test_bad_script_rejected(fu: FakeUpstream) -> None:
    with pytest.raises(httpx.HTTPStatusError):
        fu.script([{"kind": "explode"}])


def test_reset_is_a_connection_error(fu: FakeUpstream, http: httpx.Client) -> None:
    fu.script([{"kind": "reset"}])
    with pytest.raises((httpx.ReadError, httpx.RemoteProtocolError)):
        http.post(f"{fu.base_url}/chat/completions", json={"model": "m", "messages": MESSAGES})
    # The next request is answered normally.
    ok = http.post(f"{fu.base_url}/chat/completions", json={"model": "m", "messages": MESSAGES})
    assert ok.status_code == 200
    assert fu.stats()["aborted"] == 1


def test_cut_stream(fu: FakeUpstream, client: openai.OpenAI) -> None:
    fu.script([{"kind": "cut", "after_chunks": 2}])
    received = []
    with pytest.raises((openai.APIConnectionError, httpx.TransportError)):
        for chunk in client.chat.completions.create(model="m", messages=MESSAGES, stream=True):
            received.append(chunk)
    assert len(received) == 2
    assert received[0].choices[0].delta.role == "assistant"


def test_trickle_and_chunk_delay(fu: FakeUpstream, client: openai.OpenAI) -> None:
    fu.script([{"kind": "trickle", "ms": 50}])
    start = time.monotonic()
    chunks = list(client.chat.completions.create(model="m", messages=MESSAGES, stream=True))
    assert len(chunks) == 9
    assert time.monotonic() - start >= 0.4  # 9 gaps of 50 ms


def test_client_disconnect_during_delay_is_cancelled(fu: FakeUpstream) -> None:
    fu.script([{"kind": "delay", "ms": 5000}])
    with (
        httpx.Client(trust_env=False, timeout=0.3) as short,
        pytest.raises(httpx.ReadTimeout),
    ):
        short.post(f"{fu.base_url}/chat/completions", json={"model": "m", "messages": MESSAGES})
    gave_up = time.monotonic()
    stats = fu.stats()
    while stats["cancelled"] == 0 and time.monotonic() - gave_up < 2.0:
        time.sleep(0.01)
        stats = fu.stats()
    assert stats["cancelled"] == 1
    assert time.monotonic() - gave_up < 1.0
    assert stats["completed"] == 0
    assert stats["in_flight"] == 0


def test_client_disconnect_during_stream_is_cancelled(fu: FakeUpstream, http: httpx.Client) -> None:
    url = f"{fu.base_url}/chat/completions"
    payload = {"model": "m", "messages": MESSAGES, "stream": True}
    with http.stream("POST", url, json=payload, headers={"x-fake-chunk-delay-ms": "200"}) as r:
        next(r.iter_lines())
    deadline = time.monotonic() + 2.0
    while fu.stats()["cancelled"] == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    stats = fu.stats()
    assert stats["cancelled"] == 1 and stats["completed"] == 0


def test_delayed_requests_leave_no_reference_cycles(fu: FakeUpstream, http: httpx.Client) -> None:
    """A delayed answer (the benchmarks' 50 ms upstream) is freed by reference counting. The
    sleep used to time out an asyncio.wait_for and cancel its watcher task, which left ~21
    objects in cycles per request; collecting them paused the fake for 30-44 ms at a time
    and set the tail latency that the gateway benchmark compares against."""
    url = f"{fu.base_url}/chat/completions"
    payload = {"model": "m", "messages": MESSAGES}
    fu.collect_garbage(pause=True)  # nothing collects the cycles meanwhile: all are counted
    for i in range(200):
        headers = {"x-fake-latency-ms": "2", "x-fake-chunk-delay-ms": "1"}
        stream = i % 2 == 1  # streams sleep between their events too
        r = http.post(url, json={**payload, "stream": stream}, headers=headers)
        assert r.status_code == 200
    left = fu.collect_garbage(pause=False)
    assert left < 50, f"{left} objects in reference cycles after 200 delayed requests"


def test_in_flight_tracking(fu: FakeUpstream) -> None:
    import concurrent.futures

    url = f"{fu.base_url}/chat/completions"
    payload = {"model": "m", "messages": MESSAGES}

    def call() -> int:
        with httpx.Client(trust_env=False, timeout=10.0) as c:
            return c.post(url, json=payload, headers={"x-fake-latency-ms": "300"}).status_code

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        codes = list(pool.map(lambda _: call(), range(4)))
    assert codes == [200] * 4
    stats = fu.stats()
    assert stats["max_in_flight"] == 4
    assert stats["in_flight"] == 0


def test_kill_and_restart_same_port() -> None:
    with FakeUpstream(name="crashy") as fu, httpx.Client(trust_env=False, timeout=5.0) as http:
        port, pid = fu.port, fu.pid
        url = f"{fu.base_url}/chat/completions"
        payload = {"model": "m", "messages": MESSAGES}
        assert (
            http.post(url, json=payload)
            .json()["choices"][0]["message"]["content"]
            .startswith("[crashy] ")
        )
        fu.kill()
        assert not fu.running
        with pytest.raises(httpx.TransportError):
            http.post(url, json=payload)
        fu.restart()
        assert fu.running and fu.port == port and fu.pid != pid
        assert http.post(url, json=payload).status_code == 200
    assert not fu.running


def test_prompt_cache_reports_a_repeated_prefix_as_openai_does() -> None:
    with FakeUpstream(name="pc", prompt_cache_min_tokens=8) as fu:
        c = openai.OpenAI(base_url=fu.base_url, api_key="x", max_retries=0)
        turn1 = [
            {"role": "system", "content": "you are terse and helpful and kind"},
            {"role": "user", "content": "one two three"},
        ]
        first = c.chat.completions.create(model="m", messages=turn1)  # type: ignore[arg-type]
        assert first.usage is not None and first.usage.prompt_tokens_details is not None
        assert first.usage.prompt_tokens_details.cached_tokens == 0  # nothing seen yet
        turn2 = [*turn1, {"role": "assistant", "content": "ok"}, {"role": "user", "content": "go"}]
        second = c.chat.completions.create(model="m", messages=turn2)  # type: ignore[arg-type]
        assert second.usage is not None and second.usage.prompt_tokens_details is not None
        # the first request's whole prompt (4 + 7 words, 4 + 3 words) is the cached prefix
        assert second.usage.prompt_tokens_details.cached_tokens == 18
        assert second.usage.prompt_tokens == 18 + 5 + 5
        other = c.chat.completions.create(model="m", messages=[turn1[1]])  # type: ignore[arg-type]
        assert other.usage is not None and other.usage.prompt_tokens_details is not None
        assert other.usage.prompt_tokens_details.cached_tokens == 0  # no prefix in common
