"""A cached answer in both shapes: the final completion assembled from a stream's chunks, and
SSE chunks (OpenAI's chunk shape) synthesised from a completion.

An entry holds what its original client got: the JSON completion, or the SSE body. A hit
asked the other way is served through these, so either original serves both.
"""

from __future__ import annotations

from typing import Any

import orjson

_DONE = b"data: [DONE]\n\n"


def assemble(blocks: list[bytes], kind: str, usage: dict[str, Any] | None) -> bytes | None:
    """The completion a stream's events (as sent to the client, [DONE] included) add up to,
    as JSON; `usage` stands in when the client's stream had no usage chunk. None when the
    stream cannot be put together faithfully (no chunk, a completions stream with logprobs)."""
    head: dict[str, Any] | None = None
    choices: dict[int, dict[str, Any]] = {}
    for block in blocks:
        for ev in block.split(b"\n\n"):
            if not ev.startswith(b"data:"):
                continue
            payload = ev[5:].strip()
            if payload == b"[DONE]":
                continue
            try:
                chunk = orjson.loads(payload)
            except orjson.JSONDecodeError:
                return None
            if not isinstance(chunk, dict):
                return None
            if head is None:
                head = chunk
            if isinstance(chunk.get("usage"), dict):
                usage = chunk["usage"]
            for ch in chunk.get("choices") or ():
                if not _merge(choices, ch, kind):
                    return None
    if head is None or not choices:
        return None
    out: dict[str, Any] = {
        "id": head.get("id"),
        "object": "chat.completion" if kind == "chat" else "text_completion",
        "created": head.get("created"),
        "model": head.get("model"),
        "choices": [choices[i] for i in sorted(choices)],
    }
    if head.get("system_fingerprint") is not None:
        out["system_fingerprint"] = head["system_fingerprint"]
    if usage is not None:
        out["usage"] = usage
    return orjson.dumps(out)


def _merge(choices: dict[int, dict[str, Any]], ch: Any, kind: str) -> bool:
    if not isinstance(ch, dict) or not isinstance(ch.get("index", 0), int):
        return False
    i = ch.get("index", 0)
    acc = choices.get(i)
    if kind != "chat":
        if ch.get("logprobs") is not None:
            return False
        if acc is None:
            acc = choices[i] = {"text": "", "index": i, "logprobs": None, "finish_reason": None}
        if isinstance(ch.get("text"), str):
            acc["text"] += ch["text"]
    else:
        if acc is None:
            msg: dict[str, Any] = {"role": "assistant", "content": None}
            acc = choices[i] = {"index": i, "message": msg, "logprobs": None, "finish_reason": None}
        msg = acc["message"]
        delta = ch.get("delta")
        if isinstance(delta, dict) and not _merge_delta(msg, delta):
            return False
        lp = ch.get("logprobs")
        if isinstance(lp, dict):
            have = acc["logprobs"] or {}
            for k, v in lp.items():
                if isinstance(v, list):
                    have[k] = (have.get(k) or []) + v
            acc["logprobs"] = have
    if ch.get("finish_reason") is not None:
        acc["finish_reason"] = ch["finish_reason"]
    return True


def _merge_delta(msg: dict[str, Any], delta: dict[str, Any]) -> bool:
    if isinstance(delta.get("role"), str):
        msg["role"] = delta["role"]
    for field in ("content", "refusal"):
        piece = delta.get(field)
        if isinstance(piece, str):
            msg[field] = (msg.get(field) or "") + piece
        elif field == "refusal" and field in delta and field not in msg:
            msg[field] = None
    for tc in delta.get("tool_calls") or ():
        if not isinstance(tc, dict) or not isinstance(tc.get("index"), int):
            return False
        calls: list[dict[str, Any]] = msg.setdefault("tool_calls", [])
        while len(calls) <= tc["index"]:
            calls.append(
                {"id": None, "type": "function", "function": {"name": "", "arguments": ""}}
            )
        call = calls[tc["index"]]
        if tc.get("id"):
            call["id"] = tc["id"]
        if tc.get("type"):
            call["type"] = tc["type"]
        fn = tc.get("function")
        if isinstance(fn, dict):
            if isinstance(fn.get("name"), str):
                call["function"]["name"] += fn["name"]
            if isinstance(fn.get("arguments"), str):
                call["function"]["arguments"] += fn["arguments"]
    return True


def synthesize(answer: bytes, kind: str, include_usage: bool) -> bytes:
    """A complete SSE body for a cached completion: per choice one chunk with the whole
    message (role, content, tool calls) and one with its finish_reason, then the usage chunk
    when the client asked for it (stream_options.include_usage), then [DONE]."""
    data = orjson.loads(answer)
    base: dict[str, Any] = {
        "id": data.get("id"),
        "object": "chat.completion.chunk" if kind == "chat" else "text_completion",
        "created": data.get("created"),
        "model": data.get("model"),
    }
    if data.get("system_fingerprint") is not None:
        base["system_fingerprint"] = data["system_fingerprint"]
    extra: dict[str, Any] = {"usage": None} if include_usage else {}
    out: list[bytes] = []

    def event(choice: dict[str, Any]) -> None:
        out.append(b"data: " + orjson.dumps({**base, "choices": [choice], **extra}) + b"\n\n")

    for ch in data.get("choices") or ():
        i = ch.get("index", 0)
        fr = ch.get("finish_reason")
        if kind == "chat":
            msg = ch.get("message") or {}
            delta: dict[str, Any] = {"role": msg.get("role", "assistant")}
            delta["content"] = msg.get("content")
            if msg.get("refusal") is not None:
                delta["refusal"] = msg["refusal"]
            calls = msg.get("tool_calls")
            if calls:
                delta["tool_calls"] = [{"index": n, **c} for n, c in enumerate(calls)]
            lp = ch.get("logprobs")
            event({"index": i, "delta": delta, "logprobs": lp, "finish_reason": None})
            event({"index": i, "delta": {}, "logprobs": None, "finish_reason": fr})
        else:
            event({"text": ch.get("text", ""), "index": i, "logprobs": None, "finish_reason": None})
            event({"text": "", "index": i, "logprobs": None, "finish_reason": fr})
    if include_usage and isinstance(data.get("usage"), dict):
        out.append(
            b"data: " + orjson.dumps({**base, "choices": [], "usage": data["usage"]}) + b"\n\n"
        )
    out.append(_DONE)
    return b"".join(out)
