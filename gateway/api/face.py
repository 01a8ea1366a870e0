"""API faces: client APIs other than OpenAI's chat completions, served through the chat path.

A face is one client API (Anthropic's Messages, OpenAI's Responses, ...). The proxy
(`gateway/proxy.py`) asks it to:

- `check` the request body and translate it (`to_chat`) into the internal chat-completions
  body: what routing, limits, the token estimates and OpenAI-style upstreams see;
- turn a chat answer back into its own shape (`from_chat`), or a chat stream, event by event
  (`chat_stream`);
- pass the request through to an upstream that speaks the face's API natively: an endpoint
  whose `api:` is the face's `native_api` gets the client's own body (model swapped) on
  `native_path` (`native_body`, `native_headers`), its answer read by `native_answer` or,
  streamed, by `native_stream`;
- render errors in its own format (`error_body`, and `StreamConverter.error` mid-stream);
- keep per-request state when it needs some: `begin` (awaited once the body is checked)
  returns the face that serves this one request, e.g. with a stored conversation loaded;
  `finish` (unary) and `StreamConverter.finish` (streamed) are awaited once the answer is
  whole, before its last byte goes out (e.g. to keep it for a later request). Faces that
  need none of this return themselves from `begin` and do nothing in `finish`.

Usage is read by the converters (`read_usage`, every provider's format): a `Usage` per
answer, None when the upstream sent none (the proxy then estimates it, as for chat).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol

import orjson

from gateway.accounting import pricing
from gateway.errors import GatewayError


@dataclass(slots=True)
class Usage:
    """An answer's tokens as the gateway records them: `prompt_tokens` counts every input
    token (cache reads and writes included), `cached_tokens` the cache reads among them,
    `cache_write_tokens` the cache writes among them."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    cache_write_tokens: int = 0


def read_usage(usage: Any) -> Usage | None:
    """An upstream's `usage` in any provider's format (chat's, the Responses API's,
    Anthropic's: `pricing.read_usage`), None when it holds no token counts."""
    got = pricing.read_usage(usage)
    return None if got is None else Usage(*got)


class StreamConverter(Protocol):
    """One streamed answer, converted event by event into the face's stream."""

    done: bool  # the answer is complete: the proxy commits its record, then ends the response
    usage: Usage | None  # what the upstream reported, once it has

    def feed(self, event: bytes) -> bytes:
        """One complete SSE event of the upstream's stream (its lines, without the blank
        line that ends it) → the bytes for the client (b"" for none yet)."""
        ...

    def text(self) -> str:
        """The answer's text so far (token estimates when no usage came, the judge)."""
        ...

    def error(self, e: GatewayError) -> bytes:
        """The event that ends a stream cut short (the upstream broke off mid-answer)."""
        ...

    async def finish(self) -> bytes:
        """Once `done`: the stream's last bytes (b"" for none), after any work the whole
        answer needs; a converter may hold its final event back from `feed` until then."""
        ...


class Face(Protocol):
    # the record's `endpoint`, the response cache's kind, and what a model must serve to
    # answer it (Runtime.resolve: natively, or "chat" by translation), e.g. "messages"
    kind: str
    native_api: str | None  # an endpoint with this `api:` speaks the face itself
    native_path: str  # its path under such an endpoint's base_url, e.g. "/messages"

    def check(self, body: Any) -> None:
        """Field-level checks of the face's own request body (InvalidRequest naming the
        field); runs before the gateway reads `model` and `stream` from it."""
        ...

    async def begin(
        self, body: dict[str, Any], request_id: str, key_id: str | None, gw: Any
    ) -> Face:
        """The face for this one request (checked `body`, the gateway key's id, `gw` the live
        gateway: `gateway.proxy.GatewayState`); most faces return themselves."""
        ...

    async def finish(self, answer: dict[str, Any]) -> None:
        """A unary answer in the face's form, whole, before it is serialised and sent."""
        ...

    def to_chat(self, body: dict[str, Any]) -> dict[str, Any]:
        """The internal chat-completions body (`model` and `stream` as the client sent)."""
        ...

    def from_chat(self, data: dict[str, Any], model: str) -> dict[str, Any]:
        """A chat completion (its `model` already public) → the face's answer."""
        ...

    def chat_stream(self, model: str, chat: dict[str, Any]) -> StreamConverter:
        """A converter of the chat SSE stream (usage chunk included) for the request `chat`."""
        ...

    def native_body(self, body: dict[str, Any], upstream_model: str) -> bytes:
        """The client's own body for a native upstream, with that upstream's model name."""
        ...

    def native_headers(self, headers: Iterable[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
        """Per-request headers for a native upstream, from the client's (the endpoint's own
        credentials are the pool's constant headers)."""
        ...

    def native_answer(self, data: dict[str, Any], model: str) -> tuple[Usage | None, str]:
        """A native upstream's unary answer: its model name made public in place; its usage
        and its text."""
        ...

    def native_stream(self, model: str) -> StreamConverter:
        """A converter of a native upstream's stream (model name made public, usage read)."""
        ...

    def error_body(self, e: GatewayError) -> bytes:
        """The JSON body of an error answer in the face's format."""
        ...


class SSEFramer:
    """Splits a byte stream into complete SSE events (LF or CRLF framing), bounded: an event
    longer than `max_event` bytes raises EventTooLarge. The start of an unfinished event is
    kept as the pieces that came, joined once it ends (each byte is looked at once)."""

    __slots__ = ("cr", "max_event", "pending", "size")

    def __init__(self, max_event: int) -> None:
        self.pending: list[bytes] = []
        self.size = 0
        self.cr = False  # the last read ended in CR: its LF may come first in the next one
        self.max_event = max_event

    def feed(self, chunk: bytes) -> list[bytes]:
        if self.cr:
            chunk, self.cr = b"\r" + chunk, False
        if b"\r" in chunk:  # CRLF framing (a raw CR is never inside JSON text)
            if chunk[-1] == 13:
                chunk, self.cr = chunk[:-1], True
            chunk = chunk.replace(b"\r\n", b"\n")
        pending = self.pending
        end = chunk.rfind(b"\n\n") + 2
        if end == 1:  # none in this read; an event may still end at its first byte
            end = int(chunk[:1] == b"\n" and bool(pending) and pending[-1][-1:] == b"\n")
        if not end:
            if chunk:
                pending.append(chunk)
                self.size += len(chunk)
                if self.size > self.max_event:
                    raise EventTooLarge(self.max_event)
            return []
        block = b"".join([*pending, chunk[:end]]) if pending else chunk[:end]
        rest = chunk[end:]
        self.pending, self.size = ([rest], len(rest)) if rest else ([], 0)
        if self.size > self.max_event:
            raise EventTooLarge(self.max_event)
        return [ev for ev in block.split(b"\n\n") if ev.strip()]


class EventTooLarge(Exception):
    def __init__(self, limit: int) -> None:
        super().__init__(limit)
        self.limit = limit


def sse_data(event: bytes) -> bytes | None:
    """The data of one SSE event (its `data:` lines joined), None when it has none."""
    parts = [
        line[6:] if line[5:6] == b" " else line[5:]
        for line in event.split(b"\n")
        if line.startswith(b"data:")
    ]
    if not parts:
        return None
    return parts[0] if len(parts) == 1 else b"\n".join(parts)


def sse_object(data: bytes) -> dict[str, Any] | None:
    """The JSON object an SSE event's data holds; None when it is not JSON or not an object
    (a converter passes such an event by)."""
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None
