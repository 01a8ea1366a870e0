"""OpenAI's Responses API (`POST /v1/responses`) in terms of chat completions.

Pure functions, no I/O: the face (`gateway/api/face.py`) calls them around the hot path.

- `check` validates a Responses request body (400s that name the field).
- `to_chat` turns it (and the items of a stored conversation it continues) into a chat
  completions body for upstreams that speak only chat (llama.cpp, vLLM, Ollama).
- `to_response` turns a chat completion into a Response object.
- `StreamTranslator` turns chat completion chunks into the Responses event stream, one chunk
  at a time (response.created ... response.completed, each with its sequence_number).
"""

from __future__ import annotations

import time
from typing import Any

import orjson

from gateway.errors import InvalidRequest

# Responses request fields with a chat counterpart of the same name and meaning
_SAME = ("temperature", "top_p", "user", "parallel_tool_calls", "service_tier", "seed")
# Responses-only fields the translation reads or that concern the gateway, not the upstream
_KNOWN = frozenset(
    {
        "model",
        "input",
        "instructions",
        "tools",
        "tool_choice",
        "text",
        "reasoning",
        "max_output_tokens",
        "stream",
        "stream_options",
        "previous_response_id",
        "store",
        "metadata",
        "include",
        "truncation",
        "top_logprobs",
        "prompt_cache_key",
        "safety_identifier",
        "background",
        "conversation",
        "max_tool_calls",
        *_SAME,
    }
)
_EFFORTS = ("minimal", "low", "medium", "high", "none", "xhigh")
_ROLES = ("user", "assistant", "system", "developer")


def _bad(param: str, msg: str) -> InvalidRequest:
    return InvalidRequest(f"'{param}' {msg}", param=param)


def check(body: Any) -> None:
    """A Responses body the gateway can serve, else a 400 that names the field and the fix."""
    if not isinstance(body, dict):
        raise InvalidRequest(
            'the request body must be a JSON object such as {"model": "auto", "input": "Hello"}'
        )
    model = body.get("model")
    if model is None:
        raise _bad("model", "is required: name a model or route from GET /v1/models, or 'auto'")
    if not isinstance(model, str) or not model:
        raise _bad("model", "must be a non-empty string: a model or route from GET /v1/models")
    if "input" not in body:
        raise _bad(
            "input",
            'is required: send a string, or a list of items like [{"role": '
            '"user", "content": "Hello"}]',
        )
    inp = body["input"]
    if not isinstance(inp, str | list):
        raise _bad("input", "must be a string or an array of input items")
    if isinstance(inp, list):
        for i, item in enumerate(inp):
            _check_item(item, f"input[{i}]")
    for name in ("instructions", "previous_response_id"):
        v = body.get(name)
        if v is not None and not isinstance(v, str):
            raise _bad(name, "must be a string or null")
    for name in ("stream", "store", "background", "parallel_tool_calls"):
        v = body.get(name)
        if v is not None and not isinstance(v, bool):
            raise _bad(name, "must be true or false (no quotes)")
    if body.get("background"):
        raise _bad(
            "background",
            "is not supported by this gateway: send the request without it (the answer "
            "comes in the HTTP response, or streamed with stream: true)",
        )
    if body.get("conversation") is not None:
        raise _bad(
            "conversation",
            "is not supported by this gateway: continue a conversation with "
            "previous_response_id (when the gateway stores responses), or send the history "
            "in input",
        )
    mot = body.get("max_output_tokens")
    if mot is not None and (not isinstance(mot, int) or isinstance(mot, bool) or mot < 1):
        raise _bad("max_output_tokens", "must be a whole number of tokens, 1 or more, or null")
    for name in ("temperature", "top_p"):
        v = body.get(name)
        if v is not None and (not isinstance(v, int | float) or isinstance(v, bool)):
            raise _bad(name, "must be a number such as 0.7 (no quotes), or null")
    tools = body.get("tools")
    if tools is not None:
        if not isinstance(tools, list):
            raise _bad("tools", "must be an array of tools")
        for i, t in enumerate(tools):
            if not isinstance(t, dict) or t.get("type") != "function":
                kind = t.get("type") if isinstance(t, dict) else None
                raise _bad(
                    f"tools[{i}]",
                    f"is a {kind!r} tool; this gateway serves function tools only "
                    '({"type": "function", "name": ..., "parameters": {...}}): the built-in '
                    "tools run at OpenAI, not at the models behind it",
                )
            if not isinstance(t.get("name"), str) or not t["name"]:
                raise _bad(f"tools[{i}].name", "is required: the function's name, a string")
    tc = body.get("tool_choice")
    if (
        tc is not None
        and tc not in ("auto", "none", "required")
        and not (isinstance(tc, dict) and tc.get("type") == "function" and tc.get("name"))
    ):
        raise _bad(
            "tool_choice",
            'must be "auto", "none", "required" or {"type": "function", "name": ...}',
        )
    text = body.get("text")
    if text is not None:
        if not isinstance(text, dict):
            raise _bad("text", 'must be an object such as {"format": {"type": "text"}}')
        fmt = text.get("format")
        if fmt is not None:
            kind = fmt.get("type") if isinstance(fmt, dict) else None
            if kind not in ("text", "json_object", "json_schema"):
                raise _bad("text.format.type", 'must be "text", "json_object" or "json_schema"')
            if kind == "json_schema" and not (
                isinstance(fmt.get("name"), str) and isinstance(fmt.get("schema"), dict)
            ):
                raise _bad(
                    "text.format",
                    'of type "json_schema" needs a "name" (a string) and a "schema" (an object)',
                )
    reasoning = body.get("reasoning")
    if reasoning is not None:
        if not isinstance(reasoning, dict):
            raise _bad("reasoning", 'must be an object such as {"effort": "low"}')
        effort = reasoning.get("effort")
        if effort is not None and effort not in _EFFORTS:
            raise _bad("reasoning.effort", f"must be one of {', '.join(_EFFORTS)}")
    tl = body.get("top_logprobs")
    if tl is not None and (not isinstance(tl, int) or isinstance(tl, bool) or not 0 <= tl <= 20):
        raise _bad("top_logprobs", "must be a whole number from 0 to 20")


def _check_item(item: Any, where: str) -> None:
    if not isinstance(item, dict):
        raise _bad(where, 'must be an object such as {"role": "user", "content": "Hello"}')
    kind = item.get("type")
    if kind in (None, "message"):
        role = item.get("role")
        if role not in _ROLES:
            raise _bad(f"{where}.role", f"must be one of {', '.join(_ROLES)}")
        content = item.get("content")
        if not isinstance(content, str | list):
            raise _bad(f"{where}.content", "must be a string or an array of content parts")
        if isinstance(content, list):
            for k, part in enumerate(content):
                if not isinstance(part, dict) or part.get("type") not in _PARTS:
                    raise _bad(
                        f"{where}.content[{k}]",
                        "must be a content part of type " + ", ".join(_PARTS),
                    )
    elif kind == "function_call":
        for f in ("call_id", "name", "arguments"):
            if not isinstance(item.get(f), str):
                raise _bad(f"{where}.{f}", "is required on a function_call item (a string)")
    elif kind == "function_call_output":
        if not isinstance(item.get("call_id"), str):
            raise _bad(f"{where}.call_id", "is required on a function_call_output item")
        if not isinstance(item.get("output"), str | list):
            raise _bad(f"{where}.output", "must be a string (the function's result)")
    elif kind == "reasoning":
        pass  # a reasoning item of an earlier answer: the chat upstream does not take it back
    elif kind == "item_reference":
        raise _bad(
            where,
            "is an item_reference; this gateway does not keep items by id: send the item "
            "itself, or continue with previous_response_id",
        )
    else:
        raise _bad(
            f"{where}.type",
            f"{kind!r} is not an input item this gateway serves; send messages, "
            "function_call and function_call_output items",
        )


_PARTS = ("input_text", "output_text", "input_image", "refusal", "text")


# -- request: Responses -> chat ---------------------------------------------------------------


def items_of(body: dict[str, Any]) -> list[dict[str, Any]]:
    """The request's input as a list of items (a string is one user message)."""
    inp = body["input"]
    if isinstance(inp, str):
        return [{"type": "message", "role": "user", "content": inp}]
    return list(inp)


def to_chat(body: dict[str, Any], history: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """The chat completions body for a (checked) Responses body; `history` holds the items
    of the stored conversation that previous_response_id continues."""
    messages: list[dict[str, Any]] = []
    instructions = body.get("instructions")
    if instructions:
        messages.append({"role": "system", "content": instructions})
    for item in [*(history or ()), *items_of(body)]:
        _add_item(messages, item)
    out: dict[str, Any] = {"model": body["model"], "messages": messages}
    for name in _SAME:
        if body.get(name) is not None:
            out[name] = body[name]
    if body.get("max_output_tokens") is not None:
        out["max_tokens"] = body["max_output_tokens"]
    tools = body.get("tools")
    if tools:
        out["tools"] = [_chat_tool(t) for t in tools]
    tc = body.get("tool_choice")
    if tc is not None:
        out["tool_choice"] = (
            tc if isinstance(tc, str) else {"type": "function", "function": {"name": tc["name"]}}
        )
    fmt = (body.get("text") or {}).get("format")
    if isinstance(fmt, dict) and fmt.get("type") == "json_object":
        out["response_format"] = {"type": "json_object"}
    elif isinstance(fmt, dict) and fmt.get("type") == "json_schema":
        js = {k: fmt[k] for k in ("name", "schema", "strict", "description") if k in fmt}
        out["response_format"] = {"type": "json_schema", "json_schema": js}
    effort = (body.get("reasoning") or {}).get("effort")
    if effort is not None:
        out["reasoning_effort"] = effort
    if body.get("top_logprobs"):
        out["logprobs"] = True
        out["top_logprobs"] = body["top_logprobs"]
    if body.get("stream"):
        out["stream"] = True
    return out


def _chat_tool(t: dict[str, Any]) -> dict[str, Any]:
    fn = {k: t[k] for k in ("name", "description", "parameters", "strict") if t.get(k) is not None}
    return {"type": "function", "function": fn}


def _text_of(content: Any) -> str:
    """The text of a content part list (or a string)."""
    if isinstance(content, str):
        return content
    out = []
    for p in content or ():
        if isinstance(p, dict):
            t = p.get("text", p.get("refusal"))
            if isinstance(t, str):
                out.append(t)
    return "".join(out)


def _chat_content(content: Any) -> Any:
    """A message's Responses content as chat content: a string, or parts (images kept)."""
    if isinstance(content, str):
        return content
    if all(isinstance(p, dict) and p.get("type") != "input_image" for p in content):
        return _text_of(content)
    parts: list[dict[str, Any]] = []
    for p in content:
        if p.get("type") == "input_image":
            img: dict[str, Any] = {"url": p.get("image_url") or ""}
            if p.get("detail"):
                img["detail"] = p["detail"]
            parts.append({"type": "image_url", "image_url": img})
        else:
            parts.append({"type": "text", "text": p.get("text", p.get("refusal", ""))})
    return parts


def _add_item(messages: list[dict[str, Any]], item: dict[str, Any]) -> None:
    kind = item.get("type")
    if kind in (None, "message"):
        role = item["role"]
        content = item["content"]
        if role == "assistant":
            messages.append({"role": "assistant", "content": _text_of(content)})
        else:
            messages.append({"role": role, "content": _chat_content(content)})
    elif kind == "function_call":
        call = {
            "id": item["call_id"],
            "type": "function",
            "function": {"name": item["name"], "arguments": item["arguments"]},
        }
        last = messages[-1] if messages else None
        # calls that follow an assistant turn belong to it (one chat message: text and calls)
        if last is not None and last["role"] == "assistant":
            last.setdefault("tool_calls", []).append(call)
            if last.get("content") == "":
                last["content"] = None
        else:
            messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
    elif kind == "function_call_output":
        out = item["output"]
        messages.append({"role": "tool", "tool_call_id": item["call_id"], "content": _text_of(out)})
    # reasoning items: dropped (a chat upstream takes no reasoning back)


# -- answer: chat -> Response -----------------------------------------------------------------


def response_id(request_id: str) -> str:
    """The Response's id: the gateway's request id under OpenAI's `resp_` prefix, so that a
    response and its usage record name each other."""
    return "resp_" + request_id.removeprefix("tg-")


def request_id_of(resp_id: str) -> str:
    return "tg-" + resp_id.removeprefix("resp_")


def _echo(body: dict[str, Any]) -> dict[str, Any]:
    """The request settings a Response repeats back."""
    fmt = (body.get("text") or {}).get("format") or {"type": "text"}
    reasoning = body.get("reasoning") or {}
    return {
        "instructions": body.get("instructions"),
        "max_output_tokens": body.get("max_output_tokens"),
        "metadata": body.get("metadata") or {},
        "parallel_tool_calls": body.get("parallel_tool_calls", True),
        "previous_response_id": body.get("previous_response_id"),
        "reasoning": {"effort": reasoning.get("effort"), "summary": reasoning.get("summary")},
        "store": bool(body.get("store", True)),
        "temperature": body.get("temperature"),
        "text": {"format": fmt},
        "tool_choice": body.get("tool_choice", "auto"),
        "tools": [
            {
                "type": "function",
                "name": t["name"],
                "description": t.get("description"),
                "parameters": t.get("parameters"),
                "strict": t.get("strict", True),
            }
            for t in body.get("tools") or ()
        ],
        "top_p": body.get("top_p"),
        "truncation": body.get("truncation") or "disabled",
        "user": body.get("user"),
    }


def as_int(v: Any) -> int:
    """An integer field's value, 0 when it is missing or not an integer."""
    return v if isinstance(v, int) and not isinstance(v, bool) else 0


def _usage(u: Any) -> dict[str, Any] | None:
    if not isinstance(u, dict):
        return None
    pt = as_int(u.get("prompt_tokens"))
    ct = as_int(u.get("completion_tokens"))
    pd = u.get("prompt_tokens_details")
    cd = u.get("completion_tokens_details")
    pd = pd if isinstance(pd, dict) else {}
    cached = pd.get("cached_tokens")
    written = pd.get("cache_write_tokens", u.get("cache_creation_input_tokens"))
    reasoning = cd.get("reasoning_tokens") if isinstance(cd, dict) else None
    return {
        "input_tokens": pt,
        "input_tokens_details": {
            "cached_tokens": cached if isinstance(cached, int) else 0,
            "cache_write_tokens": written if isinstance(written, int) else 0,
        },
        "output_tokens": ct,
        "output_tokens_details": {
            "reasoning_tokens": reasoning if isinstance(reasoning, int) else 0
        },
        "total_tokens": pt + ct,
    }


def _status(finish: Any) -> tuple[str, dict[str, str] | None]:
    if finish == "length":
        return "incomplete", {"reason": "max_output_tokens"}
    if finish == "content_filter":
        return "incomplete", {"reason": "content_filter"}
    return "completed", None


def _suffix(rid: str, n: int) -> str:
    return f"{rid.removeprefix('resp_')}_{n}"


def _message_item(rid: str, n: int, text: str, refusal: str | None, status: str) -> dict[str, Any]:
    part: dict[str, Any] = (
        {"type": "refusal", "refusal": refusal}
        if refusal
        else {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
    )
    return {
        "type": "message",
        "id": f"msg_{_suffix(rid, n)}",
        "status": status,
        "role": "assistant",
        "content": [part],
    }


def _call_item(rid: str, n: int, call_id: str, name: str, args: str, status: str) -> dict[str, Any]:
    return {
        "type": "function_call",
        "id": f"fc_{_suffix(rid, n)}",
        "call_id": call_id,
        "name": name,
        "arguments": args,
        "status": status,
    }


def _reasoning_item(rid: str, n: int, text: str) -> dict[str, Any]:
    return {
        "type": "reasoning",
        "id": f"rs_{_suffix(rid, n)}",
        "summary": [],
        "content": [{"type": "reasoning_text", "text": text}],
    }


def to_response(
    data: dict[str, Any], body: dict[str, Any], rid: str, model: str, created: float
) -> dict[str, Any]:
    """The Response object for a chat completion `data` answering Responses `body`."""
    choices = data.get("choices") or [{}]
    ch = choices[0] if isinstance(choices[0], dict) else {}
    m = ch.get("message")
    msg: dict[str, Any] = m if isinstance(m, dict) else {}
    output: list[dict[str, Any]] = []
    rc = msg.get("reasoning_content")
    if isinstance(rc, str) and rc:
        output.append(_reasoning_item(rid, len(output), rc))
    content = msg.get("content")
    refusal = msg.get("refusal")
    if (isinstance(content, str) and content) or refusal:
        output.append(_message_item(rid, len(output), content or "", refusal or None, "completed"))
    for tc in msg.get("tool_calls") or ():
        fn = tc.get("function") if isinstance(tc, dict) else None
        if isinstance(fn, dict):
            output.append(
                _call_item(
                    rid,
                    len(output),
                    str(tc.get("id") or f"call_{_suffix(rid, len(output))}"),
                    str(fn.get("name") or ""),
                    str(fn.get("arguments") or ""),
                    "completed",
                )
            )
    if not output:  # an empty answer is still one (empty) message
        output.append(_message_item(rid, 0, "", None, "completed"))
    status, incomplete = _status(ch.get("finish_reason"))
    return _response(
        rid, body, model, created, status, output, _usage(data.get("usage")), incomplete
    )


def _response(
    rid: str,
    body: dict[str, Any],
    model: str,
    created: float,
    status: str,
    output: list[dict[str, Any]],
    usage: dict[str, Any] | None,
    incomplete: dict[str, str] | None = None,
) -> dict[str, Any]:
    return {
        "id": rid,
        "object": "response",
        "created_at": int(created),
        "status": status,
        "background": False,
        "error": None,
        "incomplete_details": incomplete,
        "model": model,
        "output": output,
        **_echo(body),
        "usage": usage,
    }


def output_text(resp: dict[str, Any]) -> str:
    """All output text and call arguments of a Response (what the judge and estimates read)."""
    out: list[str] = []
    for item in resp.get("output") or ():
        if not isinstance(item, dict):
            continue
        if item.get("type") == "message":
            out.append(_text_of(item.get("content")))
        elif item.get("type") == "function_call" and isinstance(item.get("arguments"), str):
            out.append(item["arguments"])
    return "".join(out)


def conversation(
    history: list[dict[str, Any]], body: dict[str, Any], resp: dict[str, Any]
) -> list[dict[str, Any]]:
    """The items a later previous_response_id continues from: the stored history, this
    request's input and this answer's output (instructions are not carried over, as at
    OpenAI)."""
    out = [*history, *items_of(body)]
    for item in resp.get("output") or ():
        if item.get("type") == "message":
            out.append(
                {"type": "message", "role": "assistant", "content": _text_of(item["content"])}
            )
        elif item.get("type") == "function_call":
            out.append(
                {
                    "type": "function_call",
                    "call_id": item["call_id"],
                    "name": item["name"],
                    "arguments": item["arguments"],
                }
            )
    return out


# -- stream: chat chunks -> Responses events --------------------------------------------------


_DELTA = b"response.output_text.delta"
_DELTA_HEAD = b"event: " + _DELTA + b'\ndata: {"type":"' + _DELTA + b'","sequence_number":'
_DELTA_TAIL = b',"logprobs":[]}\n\n'


class StreamTranslator:
    """Chat completion chunks in, Responses SSE events out, incrementally.

    `start()` gives response.created and response.in_progress; `feed(chunk)` the events of
    one parsed chat chunk; `finish()` closes open items and gives response.completed (or
    response.incomplete). Every event has its `sequence_number`."""

    __slots__ = (
        "body",
        "created",
        "delta_mid",
        "finish_reason",
        "items",
        "model",
        "open",
        "pieces",
        "rid",
        "seq",
        "usage",
    )

    def __init__(self, body: dict[str, Any], rid: str, model: str, created: float) -> None:
        self.body = body
        self.rid = rid
        self.model = model
        self.created = created
        self.seq = 0
        self.items: list[dict[str, Any]] = []  # output items, in order
        # what is open now: ("text" | "reasoning", item index) or ("call", chat call index)
        self.open: dict[Any, int] = {}
        self.finish_reason: Any = None
        self.usage: dict[str, Any] | None = None
        # the open message's text as its deltas came (joined once, not at every delta), and
        # the middle of its delta events: everything but the sequence number and the text
        self.pieces: list[str] = []
        self.delta_mid = b""

    def _sync(self) -> None:
        """The open message's text, joined into its part (before anyone reads it)."""
        i = self.open.get("text")
        if i is not None:
            self.items[i]["content"][0]["text"] = "".join(self.pieces)

    def _ev(self, kind: str, data: dict[str, Any]) -> bytes:
        data = {"type": kind, "sequence_number": self.seq, **data}
        self.seq += 1
        return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"

    def _snapshot(self, status: str, incomplete: Any = None) -> dict[str, Any]:
        self._sync()
        return _response(
            self.rid,
            self.body,
            self.model,
            self.created,
            status,
            self.items if status != "in_progress" else [],
            self.usage,
            incomplete,
        )

    def start(self) -> bytes:
        snap = {"response": self._snapshot("in_progress")}
        return self._ev("response.created", snap) + self._ev("response.in_progress", snap)

    def feed(self, chunk: dict[str, Any]) -> bytes:
        u = chunk.get("usage")
        if u is not None and isinstance(u, dict):
            self.usage = _usage(u)
        choices = chunk.get("choices")
        if not choices or not isinstance(choices, list):
            return b""
        ch = choices[0]
        if len(choices) == 1 and type(ch) is dict and not ch.get("index"):
            delta = ch.get("delta")
            # the common chunk: a piece of text and nothing else
            if (
                type(delta) is dict
                and ch.get("finish_reason") is None
                and (len(delta) == 1 or (len(delta) == 2 and "role" in delta))
            ):
                text = delta.get("content")
                if type(text) is str:
                    return self._text(text) if text else b""
        out: list[bytes] = []
        for ch in choices:
            if not isinstance(ch, dict) or ch.get("index", 0) != 0:
                continue
            delta = ch.get("delta")
            if isinstance(delta, dict):
                rc = delta.get("reasoning_content")
                if isinstance(rc, str) and rc:
                    out.append(self._reasoning(rc))
                text = delta.get("content")
                if isinstance(text, str) and text:
                    out.append(self._text(text))
                for tc in delta.get("tool_calls") or ():
                    if isinstance(tc, dict):
                        out.append(self._call(tc))
            if ch.get("finish_reason") is not None:
                self.finish_reason = ch["finish_reason"]
        return b"".join(out)

    def _close(self, key: Any) -> bytes:
        """End an open item: its .done events."""
        if key == "text":
            self._sync()
        i = self.open.pop(key)
        item = self.items[i]
        item["status"] = "completed"
        out = b""
        if item["type"] == "message":
            part = item["content"][0]
            base = {"item_id": item["id"], "output_index": i, "content_index": 0}
            out += self._ev(
                "response.output_text.done", {**base, "text": part["text"], "logprobs": []}
            )
            out += self._ev("response.content_part.done", {**base, "part": part})
        elif item["type"] == "function_call":
            out += self._ev(
                "response.function_call_arguments.done",
                {
                    "item_id": item["id"],
                    "output_index": i,
                    "name": item["name"],
                    "arguments": item["arguments"],
                },
            )
        elif item["type"] == "reasoning":
            part = item["content"][0]
            out += self._ev(
                "response.reasoning_text.done",
                {
                    "item_id": item["id"],
                    "output_index": i,
                    "content_index": 0,
                    "text": part["text"],
                },
            )
        return out + self._ev("response.output_item.done", {"output_index": i, "item": item})

    def _close_others(self, keep: Any) -> bytes:
        return b"".join(self._close(k) for k in [k for k in self.open if k != keep])

    def _text(self, text: str) -> bytes:
        i = self.open.get("text")
        if i is not None and len(self.open) == 1:  # the common case: one more piece of text
            self.pieces.append(text)
            seq = self.seq
            self.seq += 1
            return _DELTA_HEAD + b"%d" % seq + self.delta_mid + orjson.dumps(text) + _DELTA_TAIL
        out = self._close_others("text")
        if i is None:
            i = self.open["text"] = len(self.items)
            item = _message_item(self.rid, i, "", None, "in_progress")
            part = item["content"][0]
            item["content"] = []
            self.items.append(item)
            out += self._ev("response.output_item.added", {"output_index": i, "item": item})
            item["content"] = [part]
            out += self._ev(
                "response.content_part.added",
                {
                    "item_id": item["id"],
                    "output_index": i,
                    "content_index": 0,
                    "part": {**part, "text": ""},
                },
            )
            self.pieces = []
            self.delta_mid = (
                b',"item_id":'
                + orjson.dumps(item["id"])
                + b',"output_index":%d' % i
                + b',"content_index":0,"delta":'
            )
        return out + self._text(text)

    def _reasoning(self, text: str) -> bytes:
        out = self._close_others("reasoning")
        i = self.open.get("reasoning")
        if i is None:
            i = self.open["reasoning"] = len(self.items)
            item = _reasoning_item(self.rid, i, "")
            self.items.append(item)
            out += self._ev("response.output_item.added", {"output_index": i, "item": item})
        item = self.items[i]
        item["content"][0]["text"] += text
        return out + self._ev(
            "response.reasoning_text.delta",
            {"item_id": item["id"], "output_index": i, "content_index": 0, "delta": text},
        )

    def _call(self, tc: dict[str, Any]) -> bytes:
        key = ("call", tc.get("index", 0))
        f = tc.get("function")
        fn: dict[str, Any] = f if isinstance(f, dict) else {}
        out = b""
        i = self.open.get(key)
        if i is None:
            out = self._close_others(key)
            i = self.open[key] = len(self.items)
            call_id = tc.get("id") or f"call_{_suffix(self.rid, i)}"
            item = _call_item(
                self.rid, i, str(call_id), str(fn.get("name") or ""), "", "in_progress"
            )
            self.items.append(item)
            out += self._ev("response.output_item.added", {"output_index": i, "item": item})
        item = self.items[i]
        if fn.get("name") and not item["name"]:
            item["name"] = fn["name"]
        args = fn.get("arguments")
        if isinstance(args, str) and args:
            item["arguments"] += args
            out += self._ev(
                "response.function_call_arguments.delta",
                {"item_id": item["id"], "output_index": i, "delta": args},
            )
        return out

    def finish(self) -> bytes:
        """The closing events, once the chat stream's [DONE] has come."""
        out = self.close()
        return out + self.completed(self.response())

    def close(self) -> bytes:
        """The .done events of every item still open (the chat stream has ended)."""
        return self._close_others(None)

    def response(self) -> dict[str, Any]:
        """The Response as it stands (after `close`: the final one)."""
        status, incomplete = _status(self.finish_reason)
        return self._snapshot(status, incomplete)

    def completed(self, resp: dict[str, Any]) -> bytes:
        """The last event: response.completed, or response.incomplete (cut by a limit)."""
        kind = "response.completed" if resp["status"] == "completed" else "response.incomplete"
        return self._ev(kind, {"response": resp})

    def error(self, message: str, code: str) -> bytes:
        """The stream broke: an error event, then response.failed (the SDK's stream helper
        raises on either)."""
        snap = self._snapshot("failed")
        snap["error"] = {"code": code, "message": message}
        out = error_event(self.seq, message, code)
        self.seq += 1
        return out + self._ev("response.failed", {"response": snap})


def error_event(seq: int, message: str, code: str) -> bytes:
    """Responses' `error` stream event."""
    data = {
        "type": "error",
        "sequence_number": seq,
        "code": code,
        "message": message,
        "param": None,
    }
    return b"event: error\ndata: " + orjson.dumps(data) + b"\n\n"


def now() -> float:
    return time.time()


def named_event(kind: Any, data: dict[str, Any]) -> bytes:
    """One Responses SSE event: `event: <type>` and its JSON."""
    head = b"event: " + str(kind).encode() + b"\n" if isinstance(kind, str) else b""
    return head + b"data: " + orjson.dumps(data) + b"\n\n"
