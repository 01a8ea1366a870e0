"""FAKE Anthropic-style upstream server: TEST TOOLING ONLY, NOT A MODEL.

Canned, deterministic answers in the wire shapes of Anthropic's Messages API, so that the
gateway's pass-through to `api: anthropic` endpoints is tested against a real server:

* ``POST /v1/messages`` (JSON, or SSE with Anthropic's event sequence: message_start, ping,
  content_block_start / _delta / _stop, message_delta, message_stop) and
  ``POST /v1/messages/count_tokens``. Both need ``x-api-key`` equal to ``--api-key`` (else a
  401 ``authentication_error``) and an ``anthropic-version`` header (else a 400).
* The answer: a ``tool_use`` block for the first tool when the request has tools and its last
  message holds no ``tool_result``; else the text ``"[NAME] tok0 tok1 ..."`` (16 words).
* Usage: ``input_tokens`` counts the words of every text (system, messages) plus 4 per
  message. A system prompt whose last block carries ``cache_control`` is a cached prefix:
  the first request with it reports its words as ``cache_creation_input_tokens``, later ones
  as ``cache_read_input_tokens`` (neither counted in ``input_tokens``), as Anthropic does.
* ``POST /_fake/fail`` with ``{"status": 529, "times": 1}``: the next requests answer that
  status with an Anthropic error body. ``GET /_fake/last``: the last request's model, whether
  its key matched, its ``anthropic-version`` and ``anthropic-beta``.

Run: ``python -m tests.fake_anthropic --port 0 --name claude --api-key K``; prints
``READY <port>``. From tests: :class:`FakeAnthropic`.
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import MutableMapping, Sequence
from typing import Any

import orjson

from gateway.demo.procutil import bind, serve
from tests.fake_upstream import FakeUpstream

Scope = MutableMapping[str, Any]
_TOOL_INPUT = {"city": "Paris", "unit": "celsius"}
_ERRORS = {
    400: "invalid_request_error",
    401: "authentication_error",
    429: "rate_limit_error",
    500: "api_error",
    529: "overloaded_error",
}


def _words(content: Any) -> int:
    if isinstance(content, str):
        return len(content.split())
    n = 0
    for b in content or ():
        if isinstance(b, dict):
            for k in ("text", "content"):
                if k in b:
                    n += _words(b[k])
            if b.get("type") == "tool_use":
                n += len(orjson.dumps(b.get("input")).split())
    return n


class FakeAnthropicApp:
    def __init__(self, name: str, api_key: str) -> None:
        self.name = name
        self.api_key = api_key
        self.cached: set[bytes] = set()
        self.fail: list[int] = []
        self.last: dict[str, Any] = {}
        self.n = 0

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        raw = b""
        while True:
            msg = await receive()
            raw += msg.get("body", b"")
            if not msg.get("more_body"):
                break
        path = scope["path"]
        headers = dict(scope["headers"])
        if path == "/_fake/fail":
            req = orjson.loads(raw)
            self.fail += [int(req["status"])] * int(req.get("times", 1))
            return await self._json(send, 200, {"ok": True})
        if path == "/_fake/last":
            return await self._json(send, 200, self.last)
        if path not in ("/v1/messages", "/v1/messages/count_tokens"):
            return await self._error(send, 404, f"no route {path}")
        body = orjson.loads(raw) if raw else {}
        self.last = {
            "path": path,
            "model": body.get("model"),
            "key_ok": headers.get(b"x-api-key", b"").decode() == self.api_key,
            "authorization": b"authorization" in headers,
            "anthropic_version": headers.get(b"anthropic-version", b"").decode() or None,
            "anthropic_beta": headers.get(b"anthropic-beta", b"").decode() or None,
            "messages": len(body.get("messages") or ()),
        }
        if not self.last["key_ok"]:
            return await self._error(send, 401, "invalid x-api-key")
        if not self.last["anthropic_version"]:
            return await self._error(send, 400, "anthropic-version: header is required")
        if self.fail:
            status = self.fail.pop(0)
            return await self._error(send, status, f"fake failure {status}")
        usage = self._usage(body)
        if path.endswith("/count_tokens"):
            total = sum(
                usage[k]
                for k in ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")
            )
            return await self._json(send, 200, {"input_tokens": total})
        self._cache(body)
        self.n += 1
        content = self._content(body)
        stop = "tool_use" if content[0]["type"] == "tool_use" else "end_turn"
        usage["output_tokens"] = 16
        msg = {
            "id": f"msg_fake{self.n:06d}",
            "type": "message",
            "role": "assistant",
            "model": body.get("model"),
            "content": content,
            "stop_reason": stop,
            "stop_sequence": None,
            "usage": usage,
        }
        if not body.get("stream"):
            return await self._json(send, 200, msg)
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"text/event-stream")],
            }
        )
        for ev in self._events(msg):
            await send({"type": "http.response.body", "body": ev, "more_body": True})
            await asyncio.sleep(0)
        await send({"type": "http.response.body", "body": b""})

    def _prefix(self, body: dict[str, Any]) -> bytes | None:
        system = body.get("system")
        last = system[-1] if isinstance(system, list) and system else None
        if isinstance(last, dict) and last.get("cache_control"):
            return orjson.dumps(system)
        return None

    def _usage(self, body: dict[str, Any]) -> dict[str, int]:
        system = _words(body.get("system") or "")
        msgs = body.get("messages") or []
        total = system + sum(_words(m.get("content")) + 4 for m in msgs if isinstance(m, dict))
        write = read = 0
        prefix = self._prefix(body)
        if prefix is not None:
            if prefix in self.cached:
                read = system
            else:
                write = system
        return {
            "input_tokens": total - write - read,
            "cache_creation_input_tokens": write,
            "cache_read_input_tokens": read,
        }

    def _cache(self, body: dict[str, Any]) -> None:
        prefix = self._prefix(body)
        if prefix is not None:
            self.cached.add(prefix)

    def _content(self, body: dict[str, Any]) -> list[dict[str, Any]]:
        tools = body.get("tools") or []
        last = (body.get("messages") or [{}])[-1]
        content = last.get("content") if isinstance(last, dict) else None
        answered = isinstance(content, list) and any(
            isinstance(b, dict) and b.get("type") == "tool_result" for b in content
        )
        if tools and not answered:
            return [
                {
                    "type": "tool_use",
                    "id": f"toolu_fake{self.n:06d}",
                    "name": tools[0].get("name", "tool"),
                    "input": _TOOL_INPUT,
                }
            ]
        text = f"[{self.name}] " + " ".join(f"tok{i}" for i in range(15))
        return [{"type": "text", "text": text}]

    @staticmethod
    def _events(msg: dict[str, Any]) -> list[bytes]:
        def ev(name: str, data: dict[str, Any]) -> bytes:
            return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"

        usage = msg["usage"]
        start = {**msg, "content": [], "stop_reason": None, "usage": {**usage, "output_tokens": 1}}
        out = [ev("message_start", {"type": "message_start", "message": start})]
        out.append(ev("ping", {"type": "ping"}))
        for i, block in enumerate(msg["content"]):
            if block["type"] == "text":
                first = {"type": "text", "text": ""}
                words = block["text"].split(" ")
                deltas = [
                    {"type": "text_delta", "text": (" " if j else "") + w}
                    for j, w in enumerate(words)
                ]
            else:
                first = {**block, "input": {}}
                js = orjson.dumps(block["input"]).decode()
                deltas = [
                    {"type": "input_json_delta", "partial_json": js[j : j + 7]}
                    for j in range(0, len(js), 7)
                ]
            out.append(
                ev(
                    "content_block_start",
                    {"type": "content_block_start", "index": i, "content_block": first},
                )
            )
            for d in deltas:
                out.append(
                    ev(
                        "content_block_delta",
                        {"type": "content_block_delta", "index": i, "delta": d},
                    )
                )
            out.append(ev("content_block_stop", {"type": "content_block_stop", "index": i}))
        out.append(
            ev(
                "message_delta",
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": msg["stop_reason"], "stop_sequence": None},
                    "usage": {"output_tokens": usage["output_tokens"]},
                },
            )
        )
        out.append(ev("message_stop", {"type": "message_stop"}))
        return out

    @staticmethod
    async def _json(send: Any, status: int, data: Any) -> None:
        body = orjson.dumps(data)
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": body})

    async def _error(self, send: Any, status: int, message: str) -> None:
        t = _ERRORS.get(status, "api_error")
        await self._json(send, status, {"type": "error", "error": {"type": t, "message": message}})


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="fake Anthropic-style upstream (tests only)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--name", default="claude")
    p.add_argument("--api-key", default="sk-ant-fake")
    p.add_argument("--exit-on-stdin-eof", action="store_true")
    args = p.parse_args(argv)
    app = FakeAnthropicApp(args.name, args.api_key)
    return asyncio.run(serve(app, [bind(args.host, args.port)], args.exit_on_stdin_eof))


class FakeAnthropic(FakeUpstream):
    """`python -m tests.fake_anthropic` in a subprocess, started and stopped like FakeUpstream
    (by its own PID only)."""

    def __init__(self, name: str = "claude", api_key: str = "sk-ant-fake") -> None:
        super().__init__(name)
        self.api_key = api_key

    def _command(self, port: int) -> list[str]:
        import sys

        return [
            sys.executable,
            "-m",
            "tests.fake_anthropic",
            "--port",
            str(port),
            "--name",
            self.name,
            "--api-key",
            self.api_key,
            "--exit-on-stdin-eof",
        ]


if __name__ == "__main__":
    raise SystemExit(main())
