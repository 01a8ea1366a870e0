"""Anthropic's Messages API (`POST /v1/messages`, `/v1/messages/count_tokens`) as an API face.

For OpenAI-style upstreams a request is translated to chat completions and the answer back:
the system prompt becomes a system message, content blocks become chat content parts
(images as data or https URLs), `tool_use` blocks become `tool_calls`, `tool_result`
blocks become `tool` messages, tools and `tool_choice` their chat forms, and the answer's
`finish_reason` the `stop_reason`. A stream is converted event by event into Anthropic's
sequence: message_start, ping, content_block_start / content_block_delta /
content_block_stop per block, message_delta (stop_reason, usage), message_stop.

Endpoints with `api: anthropic` get the client's body as it came (the model name swapped)
with the endpoint's own `x-api-key` and `anthropic-version`; their usage (cache writes and
reads included) is read from the answer or the stream's message_start and message_delta.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import orjson

from gateway.accounting import pricing
from gateway.api.face import StreamConverter, Usage, read_usage, sse_data, sse_object
from gateway.errors import GatewayError, InvalidRequest, UpstreamClientError

ANTHROPIC_API = "anthropic"

_STOP_REASONS = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}
_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "request_too_large",
    415: "invalid_request_error",
    429: "rate_limit_error",
    503: "overloaded_error",
    529: "overloaded_error",
}
_TOOL_CHOICES = ("auto", "any", "tool", "none")
_FORWARDED = (b"anthropic-beta",)  # client headers a native upstream gets as they came


def error_type(e: GatewayError) -> str:
    """The Anthropic error type of a gateway error, by its status."""
    return _ERROR_TYPES.get(e.status, "api_error" if e.status >= 500 else "invalid_request_error")


def error_json(e: GatewayError) -> bytes:
    """`{"type": "error", "error": {"type", "message"}}`; an Anthropic-style upstream's own
    error for the client's request goes back as it came."""
    if isinstance(e, UpstreamClientError):
        try:
            raw = orjson.loads(e.raw_body)
        except orjson.JSONDecodeError:
            raw = None
        if isinstance(raw, dict) and raw.get("type") == "error":
            return e.raw_body
        msg = e.message
        err = raw.get("error") if isinstance(raw, dict) else None
        if isinstance(err, dict) and isinstance(err.get("message"), str):
            msg = f"{e.message}: {err['message'][:500]}"
        elif raw is None:
            msg = f"{e.message}: {e.raw_body[:500].decode('utf-8', 'replace')}"
        return orjson.dumps({"type": "error", "error": {"type": error_type(e), "message": msg}})
    return orjson.dumps({"type": "error", "error": {"type": error_type(e), "message": e.message}})


# -- request checks ----------------------------------------------------------------------------
def _bad(message: str, param: str) -> InvalidRequest:
    return InvalidRequest(f"{param}: {message}", param=param)


def _check_blocks(content: Any, where: str) -> None:
    if isinstance(content, str):
        return
    if not isinstance(content, list):
        raise _bad(
            "send a string or an array of content blocks such as "
            '[{"type": "text", "text": "Hello"}]',
            where,
        )
    for j, b in enumerate(content):
        if not isinstance(b, dict) or not isinstance(b.get("type"), str):
            raise _bad(
                'each content block is an object with a "type", such as '
                '{"type": "text", "text": "Hello"}',
                f"{where}.{j}",
            )
        t = b["type"]
        if t == "text" and not isinstance(b.get("text"), str):
            raise _bad("a text block needs a string 'text'", f"{where}.{j}.text")
        if t == "tool_use" and not (
            isinstance(b.get("id"), str) and isinstance(b.get("name"), str)
        ):
            raise _bad("a tool_use block needs a string 'id' and 'name'", f"{where}.{j}")
        if t == "tool_result" and not isinstance(b.get("tool_use_id"), str):
            raise _bad(
                "a tool_result block needs the string 'tool_use_id' of its tool_use",
                f"{where}.{j}.tool_use_id",
            )
        if t == "image" and not isinstance(b.get("source"), dict):
            raise _bad(
                'an image block needs a "source" object ({"type": "base64", '
                '"media_type": "image/png", "data": ...} or {"type": "url", "url": ...})',
                f"{where}.{j}.source",
            )


def check_common(body: Any) -> None:
    """What /v1/messages and /v1/messages/count_tokens both need: model, messages, system,
    tools."""
    if not isinstance(body, dict):
        raise InvalidRequest(
            'the request body must be a JSON object such as {"model": "auto", "max_tokens": '
            '256, "messages": [{"role": "user", "content": "Hello"}]}'
        )
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise _bad(
            'send the model name as a string, such as "auto" (GET /v1/models lists them)', "model"
        )
    msgs = body.get("messages")
    if not isinstance(msgs, list) or not msgs:
        raise _bad(
            'send a non-empty array of messages such as [{"role": "user", "content": "Hello"}]',
            "messages",
        )
    for i, m in enumerate(msgs):
        if not isinstance(m, dict):
            raise _bad("each message is an object with a role and content", f"messages.{i}")
        if m.get("role") not in ("user", "assistant"):
            raise _bad(
                'role must be "user" or "assistant" (the system prompt goes in the '
                "top-level 'system' field)",
                f"messages.{i}.role",
            )
        if "content" not in m:
            raise _bad("each message needs content", f"messages.{i}.content")
        _check_blocks(m["content"], f"messages.{i}.content")
    if "system" in body and body["system"] is not None:
        _check_blocks(body["system"], "system")
    tools = body.get("tools")
    if tools is not None:
        if not isinstance(tools, list):
            raise _bad("send an array of tools", "tools")
        for i, t in enumerate(tools):
            if not isinstance(t, dict) or not isinstance(t.get("name"), str):
                raise _bad(
                    'each tool is an object with a "name" and an "input_schema"', f"tools.{i}"
                )
    tc = body.get("tool_choice")
    if tc is not None and (not isinstance(tc, dict) or tc.get("type") not in _TOOL_CHOICES):
        raise _bad(
            'send {"type": "auto"}, {"type": "any"}, {"type": "none"} or '
            '{"type": "tool", "name": "..."}',
            "tool_choice",
        )


def check(body: Any) -> None:
    check_common(body)
    mt = body.get("max_tokens")
    if not isinstance(mt, int) or isinstance(mt, bool) or mt < 1:
        raise _bad(
            "send the most tokens the answer may have as a whole number of 1 or more, "
            "such as 1024 (the Messages API requires it)",
            "max_tokens",
        )
    if "stream" in body and not isinstance(body["stream"], bool):
        raise _bad("send true or false", "stream")
    for name in ("temperature", "top_p"):
        v = body.get(name)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int | float)):
            raise _bad("send a number such as 0.7 (no quotes), or leave it out", name)
    ss = body.get("stop_sequences")
    if ss is not None and (not isinstance(ss, list) or not all(isinstance(s, str) for s in ss)):
        raise _bad("send an array of strings", "stop_sequences")


# -- request translation -----------------------------------------------------------------------
def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        return ""
    return "\n\n".join(
        b["text"]
        for b in content
        if isinstance(b, dict) and b.get("type") == "text" and isinstance(b.get("text"), str)
    )


def _image_part(block: dict[str, Any]) -> dict[str, Any] | None:
    src = block.get("source")
    if not isinstance(src, dict):
        return None
    if src.get("type") == "base64":
        url = f"data:{src.get('media_type', 'image/png')};base64,{src.get('data', '')}"
    elif src.get("type") == "url" and isinstance(src.get("url"), str):
        url = src["url"]
    else:
        return None
    return {"type": "image_url", "image_url": {"url": url}}


def _user_turn(content: Any, out: list[dict[str, Any]]) -> None:
    """A user message: its tool_result blocks become tool messages (first, as the chat API
    wants them right after the assistant's tool calls), the rest one user message."""
    if isinstance(content, str):
        out.append({"role": "user", "content": content})
        return
    parts: list[dict[str, Any]] = []
    for b in content:
        t = b.get("type")
        if t == "tool_result":
            res = b.get("content")
            text = _text_of(res) if not isinstance(res, str) else res
            if b.get("is_error"):
                text = f"(error) {text}"
            out.append({"role": "tool", "tool_call_id": b["tool_use_id"], "content": text})
            if isinstance(res, list):  # images a tool returned go along as user content
                parts += [
                    p
                    for x in res
                    if isinstance(x, dict) and x.get("type") == "image"
                    for p in [_image_part(x)]
                    if p is not None
                ]
        elif t == "text":
            parts.append({"type": "text", "text": b["text"]})
        elif t == "image":
            p = _image_part(b)
            if p is not None:
                parts.append(p)
        elif t == "document":
            src = b.get("source")
            if isinstance(src, dict) and src.get("type") == "text":
                parts.append({"type": "text", "text": str(src.get("data", ""))})
    if parts:
        if all(p["type"] == "text" for p in parts):
            out.append({"role": "user", "content": "\n\n".join(p["text"] for p in parts)})
        else:
            out.append({"role": "user", "content": parts})


def _assistant_turn(content: Any) -> dict[str, Any]:
    if isinstance(content, str):
        return {"role": "assistant", "content": content}
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for b in content:
        t = b.get("type")
        if t == "text":
            texts.append(b["text"])
        elif t == "tool_use":
            calls.append(
                {
                    "id": b["id"],
                    "type": "function",
                    "function": {
                        "name": b["name"],
                        "arguments": orjson.dumps(b.get("input") or {}).decode(),
                    },
                }
            )
    msg: dict[str, Any] = {"role": "assistant", "content": "".join(texts) if texts else None}
    if calls:
        msg["tool_calls"] = calls
    elif msg["content"] is None:
        msg["content"] = ""
    return msg


def chat_messages(body: dict[str, Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    system = body.get("system")
    if system:
        out.append({"role": "system", "content": _text_of(system)})
    for m in body["messages"]:
        if m["role"] == "user":
            _user_turn(m["content"], out)
        else:
            out.append(_assistant_turn(m["content"]))
    return out


def to_chat(body: dict[str, Any]) -> dict[str, Any]:
    chat: dict[str, Any] = {
        "model": body["model"],
        "messages": chat_messages(body),
        "max_tokens": body["max_tokens"],
    }
    if body.get("stream"):
        chat["stream"] = True
    for name in ("temperature", "top_p", "top_k"):
        if body.get(name) is not None:
            chat[name] = body[name]
    if body.get("stop_sequences"):
        chat["stop"] = body["stop_sequences"]
    md = body.get("metadata")
    if isinstance(md, dict) and isinstance(md.get("user_id"), str):
        chat["user"] = md["user_id"]
    tools = [
        {
            "type": "function",
            "function": {
                "name": t["name"],
                "description": t.get("description") or "",
                "parameters": t.get("input_schema") or {"type": "object", "properties": {}},
            },
        }
        for t in body.get("tools") or ()
        if t.get("type") in (None, "custom")  # Anthropic's server tools have no chat form
    ]
    tc = body.get("tool_choice")
    if tools:
        chat["tools"] = tools
        if isinstance(tc, dict):
            kind = tc["type"]
            if kind == "tool":
                chat["tool_choice"] = {"type": "function", "function": {"name": tc.get("name")}}
            else:
                chat["tool_choice"] = {"auto": "auto", "any": "required", "none": "none"}[kind]
            if tc.get("disable_parallel_tool_use") is True:
                chat["parallel_tool_calls"] = False
    return chat


# -- answers -----------------------------------------------------------------------------------
def _message_id(chat_id: Any) -> str:
    s = str(chat_id or "")
    for p in ("chatcmpl-", "cmpl-"):
        if s.startswith(p):
            s = s[len(p) :]
    return "msg_" + (s or "tollgate")


def _tool_input(arguments: Any) -> Any:
    if isinstance(arguments, dict):
        return arguments
    try:
        v = orjson.loads(arguments or "{}")
    except (orjson.JSONDecodeError, TypeError):
        return {"arguments": arguments}  # the model's text was not JSON: kept, not lost
    return v if isinstance(v, dict) else {"value": v}


def _usage_json(u: Usage) -> dict[str, int]:
    return {
        "input_tokens": u.prompt_tokens - u.cached_tokens - u.cache_write_tokens,
        "output_tokens": u.completion_tokens,
        "cache_creation_input_tokens": u.cache_write_tokens,
        "cache_read_input_tokens": u.cached_tokens,
    }


def from_chat(data: dict[str, Any], model: str) -> dict[str, Any]:
    choices = data.get("choices") or [{}]
    ch = choices[0] if isinstance(choices[0], dict) else {}
    m = ch.get("message")
    msg: dict[str, Any] = m if isinstance(m, dict) else {}
    content: list[dict[str, Any]] = []
    if isinstance(msg.get("content"), str) and msg["content"]:
        content.append({"type": "text", "text": msg["content"]})
    for tc in msg.get("tool_calls") or ():
        fn = tc.get("function") if isinstance(tc, dict) else None
        if isinstance(fn, dict):
            content.append(
                {
                    "type": "tool_use",
                    "id": tc.get("id") or f"toolu_{len(content)}",
                    "name": fn.get("name") or "",
                    "input": _tool_input(fn.get("arguments")),
                }
            )
    u = read_usage(data.get("usage")) or Usage()
    return {
        "id": _message_id(data.get("id")),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": _STOP_REASONS.get(ch.get("finish_reason") or "stop", "end_turn"),
        "stop_sequence": None,
        "usage": _usage_json(u),
    }


def content_text(content: Any) -> str:
    parts: list[str] = []
    for b in content or ():
        if isinstance(b, dict):
            if isinstance(b.get("text"), str):
                parts.append(b["text"])
            elif b.get("type") == "tool_use":
                parts.append(orjson.dumps(b.get("input")).decode())
    return "".join(parts)


def _event(name: str, data: dict[str, Any]) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


def error_event(e: GatewayError) -> bytes:
    return b"event: error\ndata: " + error_json(e) + b"\n\n"


class ChatToMessages:
    """A chat completions stream (with its usage chunk) → Anthropic's event sequence."""

    __slots__ = (
        "block",
        "done",
        "index",
        "model",
        "prompt_est",
        "started",
        "stop",
        "texts",
        "tool_index",
        "usage",
    )

    def __init__(self, model: str, chat: dict[str, Any]) -> None:
        self.model = model
        self.prompt_est = pricing.estimate_prompt_tokens(chat.get("messages"))
        self.started = False
        self.done = False
        self.usage: Usage | None = None
        self.block: str | None = None  # the open block's type: "text" | "tool_use"
        self.index = -1  # the open block's index
        self.tool_index: Any = None  # the chat tool call the open tool_use block is
        self.stop = "end_turn"
        self.texts: list[str] = []

    def _start(self, chat_id: Any) -> bytes:
        self.started = True
        msg: dict[str, Any] = {
            "id": _message_id(chat_id),
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": self.prompt_est, "output_tokens": 0},
        }
        return _event("message_start", {"type": "message_start", "message": msg}) + _event(
            "ping", {"type": "ping"}
        )

    def _close(self) -> bytes:
        if self.block is None:
            return b""
        self.block = None
        return _event("content_block_stop", {"type": "content_block_stop", "index": self.index})

    def _open(self, block: dict[str, Any]) -> bytes:
        out = self._close()
        self.index += 1
        self.block = block["type"]
        start = {"type": "content_block_start", "index": self.index, "content_block": block}
        return out + _event("content_block_start", start)

    def _delta(self, delta: dict[str, Any]) -> bytes:
        d = {"type": "content_block_delta", "index": self.index, "delta": delta}
        return _event("content_block_delta", d)

    def feed(self, event: bytes) -> bytes:
        data = sse_data(event)
        if data is None or self.done:
            return b""
        if data.strip() == b"[DONE]":
            return self._finish()
        chunk = sse_object(data)
        if chunk is None:
            return b""
        out = b"" if self.started else self._start(chunk.get("id"))
        u = read_usage(chunk.get("usage"))
        if u is not None:
            self.usage = u
        for ch in chunk.get("choices") or ():
            if not isinstance(ch, dict) or ch.get("index", 0) != 0:
                continue
            delta = ch.get("delta") or {}
            text = delta.get("content")
            if isinstance(text, str) and text:
                if self.block != "text":
                    out += self._open({"type": "text", "text": ""})
                self.texts.append(text)
                out += self._delta({"type": "text_delta", "text": text})
            for tc in delta.get("tool_calls") or ():
                if not isinstance(tc, dict):
                    continue
                fn = tc.get("function") or {}
                ti = tc.get("index", tc.get("id"))
                if self.block != "tool_use" or (ti != self.tool_index and tc.get("id")):
                    self.tool_index = ti
                    out += self._open(
                        {
                            "type": "tool_use",
                            "id": tc.get("id") or f"toolu_{self.index + 1}",
                            "name": fn.get("name") or "",
                            "input": {},
                        }
                    )
                args = fn.get("arguments")
                if isinstance(args, str) and args:
                    self.texts.append(args)
                    out += self._delta({"type": "input_json_delta", "partial_json": args})
            fr = ch.get("finish_reason")
            if fr:
                self.stop = _STOP_REASONS.get(fr, "end_turn")
        return out

    def _finish(self) -> bytes:
        self.done = True
        out = b"" if self.started else self._start(None)
        u = self.usage
        usage = _usage_json(u) if u is not None else {"output_tokens": 0}
        delta = {
            "type": "message_delta",
            "delta": {"stop_reason": self.stop, "stop_sequence": None},
            "usage": usage,
        }
        return (
            out
            + self._close()
            + _event("message_delta", delta)
            + _event("message_stop", {"type": "message_stop"})
        )

    def text(self) -> str:
        return "".join(self.texts)

    def error(self, e: GatewayError) -> bytes:
        return error_event(e)

    async def finish(self) -> bytes:
        return b""  # every event went out from feed


class NativeMessages:
    """An Anthropic-style upstream's stream, passed on: the model name made public in
    message_start, usage read from message_start and message_delta."""

    __slots__ = ("deltas", "done", "model", "usage")

    def __init__(self, model: str) -> None:
        self.model = model
        self.done = False
        self.usage: Usage | None = None
        self.deltas: list[bytes] = []

    def feed(self, event: bytes) -> bytes:
        data = sse_data(event)
        if data is None:
            return event + b"\n\n"
        if b'"content_block_delta"' in data[:40]:  # the most events: passed on as they are
            self.deltas.append(data)
            return event + b"\n\n"
        ev = sse_object(data)
        if ev is None:
            return event + b"\n\n"
        t = ev.get("type")
        if t == "message_start" and isinstance(ev.get("message"), dict):
            msg = ev["message"]
            msg["model"] = self.model
            self.usage = read_usage(msg.get("usage"))
            return _event("message_start", ev)
        if t == "message_delta" and isinstance(ev.get("usage"), dict):
            u = ev["usage"]
            if self.usage is None:
                self.usage = read_usage({"input_tokens": 0, **u})
            else:  # message_delta's counts are cumulative
                if isinstance(u.get("output_tokens"), int):
                    self.usage.completion_tokens = u["output_tokens"]
                if isinstance(u.get("input_tokens"), int):
                    merged = read_usage(u)
                    if merged is not None:
                        merged.completion_tokens = self.usage.completion_tokens
                        self.usage = merged
        elif t in ("message_stop", "error"):
            self.done = True
        return event + b"\n\n"

    def text(self) -> str:
        parts: list[str] = []
        for d in self.deltas:
            try:
                delta = orjson.loads(d).get("delta") or {}
            except (orjson.JSONDecodeError, AttributeError):
                continue
            s = delta.get("text", delta.get("partial_json"))
            if isinstance(s, str):
                parts.append(s)
        return "".join(parts)

    def error(self, e: GatewayError) -> bytes:
        return error_event(e)

    async def finish(self) -> bytes:
        return b""  # every event went out from feed


class MessagesFace:
    """`POST /v1/messages` (gateway/api/face.py's Face)."""

    kind = "messages"
    native_api: str | None = ANTHROPIC_API
    native_path = "/messages"

    def check(self, body: Any) -> None:
        check(body)

    async def begin(
        self, body: dict[str, Any], request_id: str, key_id: str | None, gw: Any
    ) -> MessagesFace:
        return self  # no per-request state

    async def finish(self, answer: dict[str, Any]) -> None:
        return None

    def to_chat(self, body: dict[str, Any]) -> dict[str, Any]:
        return to_chat(body)

    def from_chat(self, data: dict[str, Any], model: str) -> dict[str, Any]:
        return from_chat(data, model)

    def chat_stream(self, model: str, chat: dict[str, Any]) -> StreamConverter:
        return ChatToMessages(model, chat)

    def native_body(self, body: dict[str, Any], upstream_model: str) -> bytes:
        return orjson.dumps({**body, "model": upstream_model})

    def native_headers(self, headers: Iterable[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
        return [(k, v) for k, v in headers if k in _FORWARDED]

    def native_answer(self, data: dict[str, Any], model: str) -> tuple[Usage | None, str]:
        if "model" in data:
            data["model"] = model
        return read_usage(data.get("usage")), content_text(data.get("content"))

    def native_stream(self, model: str) -> StreamConverter:
        return NativeMessages(model)

    def error_body(self, e: GatewayError) -> bytes:
        return error_json(e)


MESSAGES = MessagesFace()
