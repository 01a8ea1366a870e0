"""Request-body checks for the OpenAI endpoints the gateway serves.

Hand-written rather than pydantic: this runs on every request, and it only checks the
fields the gateway itself interprets. Everything else passes through to the upstream
untouched. Each error names the field and says what to send instead.
"""

from __future__ import annotations

from typing import Any

import orjson

from gateway.errors import InvalidRequest

_ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
_TYPE_NAMES = {
    str: "a string",
    int: "an integer",
    float: "a number",
    bool: "a boolean",
    list: "an array",
    dict: "an object",
    type(None): "null",
}

# the deepest nesting the gateway can forward: orjson serialises at most 254 levels
MAX_DEPTH = 254

_COUNTS = (
    ("max_tokens", "send a whole number of tokens, 0 or more, such as 256, or leave it out"),
    (
        "max_completion_tokens",
        "send a whole number of tokens, 0 or more, such as 256, or leave it out",
    ),
    ("n", "send how many answers you want as a whole number, such as 1, or leave it out"),
)
_NUMBERS = (
    ("temperature", "send a number such as 0.7 (no quotes), or leave it out"),
    ("top_p", "send a number from 0 to 1 such as 0.9 (no quotes), or leave it out"),
)


def _kind(value: Any) -> str:
    return _TYPE_NAMES.get(type(value), type(value).__name__)


def _shown(value: Any) -> str:
    """What the client sent, as they would recognise it: a scalar's JSON text (a long string
    cut short), a container's kind."""
    if isinstance(value, bool) or value is None:
        return orjson.dumps(value).decode()
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        text = orjson.dumps(value if len(value) <= 40 else value[:37] + "...").decode()
        return f"the string {text}"
    return _kind(value)


def _bad(param: str, expected: str, value: Any, fix: str = "") -> InvalidRequest:
    """'<param>' must be <expected>, got <the value>; <how to fix it>."""
    tail = f"; {fix}" if fix else ""
    return InvalidRequest(f"'{param}' must be {expected}, got {_shown(value)}{tail}", param=param)


def _common(body: Any) -> None:
    if not isinstance(body, dict):
        raise InvalidRequest(
            f"the request body must be a JSON object, got {_shown(body)}; send "
            '{"model": ..., ...} as the whole body',
            param=None,
        )
    model = body.get("model")
    if model is None:
        raise InvalidRequest(
            "'model' is required: name a model or route from GET /v1/models, or 'auto'",
            param="model",
        )
    if not isinstance(model, str) or not model:
        raise _bad(
            "model", "a non-empty string", model, "name a model or route from GET /v1/models"
        )
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise _bad("stream", "a boolean", stream, "send true or false (no quotes)")
    so = body.get("stream_options")
    if so is not None and not isinstance(so, dict):
        raise _bad(
            "stream_options", "an object", so, 'send {"include_usage": true} or leave it out'
        )
    for name, fix in _COUNTS:
        v = body.get(name)
        if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 0):
            raise _bad(name, "a non-negative integer", v, fix)
    for name, fix in _NUMBERS:
        v = body.get(name)
        if v is not None and (not isinstance(v, int | float) or isinstance(v, bool)):
            raise _bad(name, "a number", v, fix)


def validate_chat(body: Any) -> None:
    _common(body)
    messages = body.get("messages")
    if messages is None:
        raise InvalidRequest(
            '\'messages\' is required: send a list like [{"role": "user", "content": "Hello"}]',
            param="messages",
        )
    if not isinstance(messages, list):
        raise _bad(
            "messages",
            "an array of message objects",
            messages,
            'send a list like [{"role": "user", "content": "Hello"}]',
        )
    if not messages:
        raise InvalidRequest(
            "'messages' must contain at least one message; send a list like "
            '[{"role": "user", "content": "Hello"}]',
            param="messages",
        )
    for i, m in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise _bad(
                where,
                "an object with 'role' and 'content'",
                m,
                'send {"role": "user", "content": "..."}',
            )
        role = m.get("role")
        if not isinstance(role, str):
            raise _bad(f"{where}.role", "a string", role, f"use one of {', '.join(sorted(_ROLES))}")
        if role not in _ROLES:
            raise InvalidRequest(
                f"'{where}.role' is {role!r}; use one of {', '.join(sorted(_ROLES))}",
                param=f"{where}.role",
            )
        content = m.get("content")
        if content is not None and not isinstance(content, str | list):
            raise _bad(
                f"{where}.content",
                "a string or an array of content parts",
                content,
                'send the text as a string, or parts like [{"type": "text", "text": "..."}]',
            )
        if isinstance(content, list):
            for j, part in enumerate(content):
                if not isinstance(part, dict) or not isinstance(part.get("type"), str):
                    raise _bad(
                        f"{where}.content[{j}]",
                        'an object with a "type" such as "text"',
                        part,
                        'send {"type": "text", "text": "..."}',
                    )
                if part["type"] == "text" and not isinstance(part.get("text"), str):
                    raise _bad(
                        f"{where}.content[{j}].text",
                        "a string",
                        part.get("text"),
                        'send {"type": "text", "text": "..."}',
                    )
        name = m.get("name")
        if name is not None and not isinstance(name, str):
            raise _bad(
                f"{where}.name",
                "a string",
                name,
                "send the participant's name as a string, or leave it out",
            )
        calls = m.get("tool_calls")
        if calls is not None:
            _tool_calls(calls, f"{where}.tool_calls")
    tools = body.get("tools")
    if tools is not None and not isinstance(tools, list):
        raise _bad(
            "tools",
            "an array of tool definitions",
            tools,
            'send [{"type": "function", "function": {"name": ..., "parameters": ...}}]',
        )


_CALL_FIX = (
    'send [{"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]'
)


def _tool_calls(calls: Any, where: str) -> None:
    """An assistant message's `tool_calls`: a list of {"function": {"name", "arguments"}}."""
    if not isinstance(calls, list):
        raise _bad(where, "an array of tool calls", calls, _CALL_FIX)
    for k, call in enumerate(calls):
        at = f"{where}[{k}]"
        if not isinstance(call, dict):
            raise _bad(at, "an object", call, _CALL_FIX)
        fn = call.get("function")
        if fn is None:
            continue
        if not isinstance(fn, dict):
            raise _bad(f"{at}.function", 'an object with "name" and "arguments"', fn, _CALL_FIX)
        for field in ("name", "arguments"):
            v = fn.get(field)
            if v is not None and not isinstance(v, str):
                fix = (
                    "send the arguments as a string holding JSON, such as '{\"x\": 1}'"
                    if field == "arguments"
                    else "send the function's name as a string"
                )
                raise _bad(f"{at}.function.{field}", "a string", v, fix)


def too_deep(body: dict[str, Any]) -> InvalidRequest:
    """The 400 for a body nested deeper than MAX_DEPTH (orjson parses up to 1024 levels but
    serialises at most 254). Only on that error path: names the field that is too deep, down
    to one item of a list and its field (such as messages[2].content)."""
    param = "(the request body)"
    for key, value in body.items():
        if _fits(value, 1):
            continue
        param = key if len(key) <= 40 else key[:37] + "..."
        for i, item in enumerate(value if isinstance(value, list) else ()):
            if _fits(item, 2):
                continue
            param += f"[{i}]"
            for k, v in item.items() if isinstance(item, dict) else ():
                if not _fits(v, 3):
                    param += f".{k if len(k) <= 40 else k[:37] + '...'}"
                    break
            break
        break
    return InvalidRequest(
        f"'{param}' nests arrays and objects more than {MAX_DEPTH} levels deep, more than this "
        "gateway forwards; flatten it, or send that data as a JSON-encoded string",
        param=param,
    )


def _fits(value: Any, above: int) -> bool:
    """Whether `value`, inside `above` levels of nesting, is shallow enough to serialise."""
    for _ in range(above):
        value = [value]
    try:
        orjson.dumps(value)
    except orjson.JSONEncodeError:
        return False
    return True


def validate_completion(body: Any) -> None:
    _common(body)
    prompt = body.get("prompt")
    if prompt is None:
        raise InvalidRequest("'prompt' is required: send a string", param="prompt")
    if not isinstance(prompt, str | list):
        raise _bad("prompt", "a string or an array of strings", prompt, 'send "Once upon a time"')


def validate_embeddings(body: Any) -> None:
    _common(body)
    inp = body.get("input")
    if inp is None:
        raise InvalidRequest(
            "'input' is required: send a string or an array of strings", param="input"
        )
    if not isinstance(inp, str | list):
        raise _bad(
            "input",
            "a string or an array of strings or token arrays",
            inp,
            'send the text to embed, such as "hello" or ["hello", "world"]',
        )
    if isinstance(inp, list) and not inp:
        raise InvalidRequest(
            "'input' must not be an empty array; send at least one string to embed",
            param="input",
        )
