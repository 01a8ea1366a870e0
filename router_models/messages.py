"""OpenAI chat messages -> the text and structure the featurizers read (whole conversation)."""

from __future__ import annotations

import json
from typing import Any


def content_text(content: Any) -> tuple[str, int]:
    """Text of one message's `content` (str, None or a list of parts) and its image count."""
    if content is None:
        return "", 0
    if isinstance(content, str):
        return content, 0
    if isinstance(content, list):
        texts: list[str] = []
        images = 0
        for part in content:
            if isinstance(part, str):
                texts.append(part)
            elif isinstance(part, dict):
                kind = part.get("type")
                if kind in ("text", "input_text", "output_text") and isinstance(
                    part.get("text"), str
                ):
                    texts.append(part["text"])
                elif kind in ("image_url", "input_image", "image"):
                    images += 1
        return "\n".join(texts), images
    return str(content), 0


def _tool_text(tools: list[Any] | None) -> str:
    if not tools:
        return ""
    out: list[str] = []
    for tool in tools:
        fn = tool.get("function", tool) if isinstance(tool, dict) else {}
        if not isinstance(fn, dict):
            continue
        out.append(str(fn.get("name", "")))
        out.append(str(fn.get("description", "")))
        params = fn.get("parameters")
        if isinstance(params, dict):
            out.append(" ".join(str(k) for k in (params.get("properties") or {})))
    return "\n".join(x for x in out if x)


class Conversation:
    """The parts of a request the router looks at, computed once."""

    __slots__ = (
        "last_user",
        "n_assistant",
        "n_images",
        "n_messages",
        "n_tool_msgs",
        "n_tools",
        "n_user",
        "system",
        "text",
        "tool_text",
    )

    def __init__(self, messages: list[dict[str, Any]], tools: list[Any] | None = None) -> None:
        parts: list[str] = []
        system: list[str] = []
        self.last_user = ""
        self.n_user = self.n_assistant = self.n_tool_msgs = self.n_images = 0
        for msg in messages:
            role = str(msg.get("role", "user"))
            text, images = content_text(msg.get("content"))
            self.n_images += images
            calls = msg.get("tool_calls")
            if calls:
                for call in calls:
                    fn = call.get("function") if isinstance(call, dict) else None
                    if not isinstance(fn, dict):  # the gateway refuses these; others skip
                        continue
                    text += f"\n{fn.get('name', '')} {fn.get('arguments', '')}"
            if role in ("system", "developer"):
                system.append(text)
            elif role == "user":
                self.n_user += 1
                self.last_user = text
            elif role == "assistant":
                self.n_assistant += 1
            else:
                self.n_tool_msgs += 1
            parts.append(text)
        self.system = "\n".join(system)
        self.tool_text = _tool_text(tools)
        self.n_tools = len(tools or [])
        self.n_messages = len(messages)
        if self.tool_text:
            parts.append(self.tool_text)
        self.text = "\n".join(parts)


def parse_bench_messages(obj: dict[str, Any]) -> list[dict[str, Any]]:
    """`messages` of a benchmark line, or one user turn from its `prompt`."""
    if "messages" in obj:
        msgs = obj["messages"]
        if not isinstance(msgs, list) or not all(isinstance(m, dict) for m in msgs):
            raise ValueError("`messages` must be a list of {role, content} objects")
        return msgs
    if isinstance(obj.get("prompt"), str):
        return [{"role": "user", "content": obj["prompt"]}]
    raise ValueError('needs "messages": [...] or "prompt": "..."')


def dumps_conversation(messages: list[dict[str, Any]]) -> str:
    return json.dumps(messages, ensure_ascii=False, sort_keys=True)
