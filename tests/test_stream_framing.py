"""Streams whose bytes arrive in awkward pieces: the gateway forwards whole SSE events in
blocks, so the framing edge cases are tested here against a raw, scripted upstream.

The upstream is a real HTTP/1.1 server on 127.0.0.1 (asyncio, no framework) that answers
every chat request with the same byte script, cut into TCP writes at fixed offsets: mid-event,
between CR and LF, across the `\\n\\n` that ends an event. It frames events with CRLF or LF
(vLLM and llama.cpp use LF; some servers CRLF), sends `"usage": null` on every chunk as vLLM
does, and has content that quotes `data: [DONE]` and a JSON `"model"` field.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import openai
import pytest

from tests.support import GatewayProcess, free_port

Gw = Callable[..., GatewayProcess]

PIECES = [
    "",
    "say data: [DONE] now, ",
    'then {"model":"upstream-edge","usage":{"prompt_tokens":1}} verbatim, ',
    "and a last line\n\n",
]
PROMPT_TOKENS, COMPLETION_TOKENS = 11, 7


def _chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> dict[str, Any]:
    return {
        "id": "chatcmpl-edge",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "upstream-edge",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        **extra,
    }


def sse_script(sep: bytes) -> bytes:
    events = [_chunk({"role": "assistant", "content": PIECES[0]}, usage=None)]
    events += [_chunk({"content": p}, usage=None) for p in PIECES[1:]]
    events.append(_chunk({}, "stop", usage=None))
    usage = {
        "prompt_tokens": PROMPT_TOKENS,
        "completion_tokens": COMPLETION_TOKENS,
        "total_tokens": PROMPT_TOKENS + COMPLETION_TOKENS,
    }
    events.append({**_chunk({}), "choices": [], "usage": usage})
    out = b"".join(b"data: " + json.dumps(e).encode() + sep + sep for e in events)
    return out + b"data: [DONE]" + sep + sep


def cut_points(script: bytes) -> list[int]:
    """Offsets to cut at: every 29 bytes, plus between each CR and LF and inside each
    event separator."""
    cuts = set(range(29, len(script), 29))
    for pair in (b"\r\n", b"\n\n"):
        i = script.find(pair)
        while i >= 0:
            cuts.add(i + 1)
            i = script.find(pair, i + 1)
    return sorted(c for c in cuts if 0 < c < len(script))


class ScriptedSSE:
    """A keep-alive HTTP/1.1 server that streams `script` in pieces to every POST."""

    def __init__(self, script: bytes) -> None:
        self.script = script
        self.cuts = cut_points(script)
        self.port = free_port()
        self.requests: list[dict[str, Any]] = []
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def __enter__(self) -> ScriptedSSE:
        self._thread.start()
        assert self._ready.wait(5), "scripted upstream did not start"
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    async def _shutdown(self) -> None:
        self._server.close()
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._server = self._loop.run_until_complete(
            asyncio.start_server(self._serve, "127.0.0.1", self.port)
        )
        self._ready.set()
        try:
            self._loop.run_forever()
        finally:
            self._loop.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                self.requests.append(json.loads(await reader.readexactly(length)))
                writer.write(
                    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                    b"transfer-encoding: chunked\r\n\r\n"
                )
                start = 0
                for end in [*self.cuts, len(self.script)]:
                    piece = self.script[start:end]
                    start = end
                    writer.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                    await writer.drain()
                    await asyncio.sleep(0.002)  # separate TCP segments, separate reads
                writer.write(b"0\r\n\r\n")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


CONFIG = """
server: {{retry_backoff_s: 0.01}}
store: {{backend: sqlite, sqlite_path: "${{TOLLGATE_DB}}"}}
models:
  - name: edge
    tier: small
    pricing: {{input_per_mtok: 1.0, output_per_mtok: 2.0}}
    endpoints: [{{base_url: "{url}", model: upstream-edge}}]
"""


@pytest.fixture(params=[b"\n", b"\r\n"], ids=["lf", "crlf"])
def edge(request: pytest.FixtureRequest, gateway: Gw) -> Iterator[tuple[ScriptedSSE, Any]]:
    with ScriptedSSE(sse_script(request.param)) as up:
        yield up, gateway(CONFIG.format(url=up.base_url))


def _stream(gw: GatewayProcess, include_usage: bool) -> list[Any]:
    c = openai.OpenAI(base_url=gw.base_url, api_key="x", max_retries=0)
    extra: dict[str, Any] = {"stream_options": {"include_usage": True}} if include_usage else {}
    stream = c.chat.completions.create(
        model="edge", messages=[{"role": "user", "content": "go"}], stream=True, **extra
    )
    return list(stream)


def test_events_cut_anywhere_arrive_whole_with_the_public_model_name(edge: Any) -> None:
    up, gw = edge
    chunks = _stream(gw, include_usage=False)
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    # the content is byte-for-byte the upstream's: the quoted [DONE] did not end the stream,
    # and the "model" inside the text was not renamed
    assert text == "".join(PIECES)
    assert {ch.model for ch in chunks} == {"edge"}
    assert chunks[-1].choices[0].finish_reason == "stop"
    # the usage chunk exists only because the gateway asked for it: hidden from this client
    assert all(ch.usage is None for ch in chunks)
    assert up.requests[-1]["stream_options"] == {"include_usage": True}
    assert up.requests[-1]["model"] == "upstream-edge"


def test_usage_reaches_a_client_that_asked_and_the_record(edge: Any) -> None:
    _, gw = edge
    chunks = _stream(gw, include_usage=True)
    last = chunks[-1]
    assert last.choices == [] and last.model == "edge"
    assert (last.usage.prompt_tokens, last.usage.completion_tokens) == (
        PROMPT_TOKENS,
        COMPLETION_TOKENS,
    )
    _stream(gw, include_usage=False)
    deadline = time.monotonic() + 10
    while True:
        u = httpx.get(f"{gw.url}/v1/usage", params={"since": "1h"}).json()
        if u["totals"]["requests"] == 2 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    t = u["totals"]
    # both streams recorded the upstream's own usage (not an estimate), priced from it
    assert t["requests"] == 2
    assert (t["prompt_tokens"], t["completion_tokens"]) == (
        2 * PROMPT_TOKENS,
        2 * COMPLETION_TOKENS,
    )
    assert t["cost_usd"] == pytest.approx(2 * (PROMPT_TOKENS * 1e-6 + COMPLETION_TOKENS * 2e-6))
