"""The replay backend: an OpenAI-compatible server that answers with RECORDED answers.

It runs no model. `POST /v1/chat/completions` looks up the last user message among the 805
AlpacaEval instructions and answers with what the requested model really answered (see
`dataset.py`), after a latency simulated from the answer's length. A prompt outside the set
gets HTTP 400 `replay_no_answer` (never an invented answer; not 404, because the gateway
counts upstream 404s as endpoint failures). Everything it sends is labelled: the field
`"replay": true` in every body and chunk, the header `x-replay: true`, and the model cards of
`GET /v1/models`.

The model `judge` returns the recorded GPT-4-Turbo judgment of an answer in the form
`gateway/accounting/quality.py` parses: "Score: N" with N = 1 + 9 * (preference - 1), so the gateway
records quality = preference - 1.

One process serves every model on every socket it listens on (the request's `model` picks the
answers); the demo gives it one socket per tier:

    python -m gateway.demo.replay --listen 127.0.0.1:8101 --listen 127.0.0.1:8102 --speed 100

It prints one line `READY <port> <port> ...` once it accepts connections. Raw ASGI under
uvicorn (uvloop + httptools), like `tests/fake_upstream.py`.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import ipaddress
import secrets
import sys
import time
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from typing import Any, Final

import orjson

from gateway.demo.procutil import bind, serve
from gateway.demo.replay.dataset import (
    JUDGE_MODEL,
    REPLAY_MODELS,
    Answer,
    ReplayModel,
    key,
    load_all,
    prompt_tokens,
    simulated_latency_s,
)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

_JSON_CT: Final = (b"content-type", b"application/json")
_SSE_CT: Final = (b"content-type", b"text/event-stream; charset=utf-8")
_REPLAY_H: Final = (b"x-replay", b"true")
_DONE: Final = b"data: [DONE]\n\n"
_CHUNK_CHARS: Final = 64  # ~16 tokens per streamed delta
_SOURCE: Final = (
    "tatsu-lab/alpaca_eval @ cd543a1 (CC BY-NC 4.0): recorded answers and GPT-4-Turbo "
    "judgments; see gateway/demo/replay/data/PROVENANCE.md"
)

# The judge prompt of gateway/accounting/quality.py: rubric_messages().
_CONV: Final = "[Conversation]\n"
_ANSWER: Final = "\n\n[Answer to grade]\n"
_TRAILER: Final = "\n\nGrade the answer."


def _error(
    status: int, message: str, code: str | None, type_: str = "invalid_request_error"
) -> bytes:
    err = {"message": message, "type": type_, "param": None, "code": code}
    return orjson.dumps({"error": err, "replay": True})


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") if isinstance(p, dict) else str(p) for p in content)
    return ""


def last_user_message(messages: Any) -> str | None:
    if not isinstance(messages, list):
        return None
    for m in reversed(messages):
        if isinstance(m, dict) and m.get("role") == "user":
            return _text(m.get("content"))
    return None


def _digest(text: str) -> bytes:
    return hashlib.blake2b(text.strip().encode("utf-8"), digest_size=16).digest()


class Judgments:
    """Recorded judgments, found from the judge prompt that gateway/accounting/quality.py builds."""

    def __init__(self, models: dict[str, ReplayModel]) -> None:
        self.by_answer: dict[bytes, list[Answer]] = {}
        for m in models.values():
            for a in m.answers.values():
                self.by_answer.setdefault(_digest(a.text), []).append(a)

    @staticmethod
    def parse(prompt: str) -> tuple[str, str] | None:
        """(instruction, answer) from a rubric prompt, or None if it is not one."""
        start = prompt.find(_CONV)
        mid = prompt.find(_ANSWER, start + len(_CONV)) if start >= 0 else -1
        end = prompt.rfind(_TRAILER)
        if start < 0 or mid < 0 or end < mid:
            return None
        conv = prompt[start + len(_CONV) : mid]
        answer = prompt[mid + len(_ANSWER) : end]
        # lines are "role: content"; the instruction is the last user turn (it may span lines)
        pos = conv.rfind("\nuser: ")
        pos = pos + 1 if pos >= 0 else (0 if conv.startswith("user: ") else -1)
        instruction = conv[pos + len("user: ") :] if pos >= 0 else ""
        return instruction, answer

    def find(self, instruction: str, answer: str) -> Answer | None:
        found = self.by_answer.get(_digest(answer), [])
        for a in found:
            if key(a.instruction) == key(instruction):
                return a
        return found[0] if len(found) == 1 else None


class ReplayApp:
    """Raw ASGI app serving recorded answers (see the module docstring)."""

    def __init__(self, models: dict[str, ReplayModel] | None = None, speed: float = 1.0) -> None:
        self.models = models if models is not None else load_all()
        self.speed = max(speed, 1e-6)
        self.judgments = Judgments(self.models)
        self._prefix = secrets.token_hex(4)
        self._n = 0
        self.created = int(time.time())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                msg = await receive()
                if msg["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif msg["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        body = await self._read(receive)
        path, method = scope["path"], scope["method"]
        if path == "/v1/models" and method == "GET":
            cards = [self.card(n) for n in [*self.models, JUDGE_MODEL]]
            await self._json(send, 200, orjson.dumps({"object": "list", "data": cards}))
        elif path.startswith("/v1/models/") and method == "GET":
            name = path[len("/v1/models/") :]
            if name in self.models or name == JUDGE_MODEL:
                await self._json(send, 200, orjson.dumps(self.card(name)))
            else:
                await self._json(
                    send, 404, _error(404, f"no replay model {name!r}", "model_not_found")
                )
        elif path == "/v1/chat/completions" and method == "POST":
            await self._chat(send, body)
        elif path in ("/healthz", "/health"):
            await self._json(send, 200, b'{"status":"ok","replay":true}')
        else:
            # 400, not 404: the gateway would count a 404 against the endpoint's circuit.
            text = (
                f"{method} {path}: the replay backend serves only POST /v1/chat/completions "
                "and GET /v1/models"
            )
            await self._json(send, 400, _error(400, text, "replay_unsupported"))

    def card(self, name: str) -> dict[str, Any]:
        card: dict[str, Any] = {
            "id": name,
            "object": "model",
            "created": self.created,
            "owned_by": "tollgate-replay",
            "replay": True,
            "source": _SOURCE,
        }
        if name == JUDGE_MODEL:
            card["description"] = (
                "REPLAYED judgments: returns the recorded GPT-4-Turbo AlpacaEval preference of "
                "an answer as 'Score: N', N = 1 + 9 * (preference - 1). Not a model."
            )
        else:
            m = self.models[name]
            card["description"] = (
                f"REPLAYED answers of {name}: the answers it really gave to the "
                f"{len(m)} AlpacaEval instructions. No model runs here; other prompts get "
                "HTTP 400 replay_no_answer."
            )
            card["tier"] = m.tier
            card["simulated_tokens_per_s"] = m.speed.tokens_per_s
            card["speed_factor"] = self.speed
        return card

    # -- plumbing ------------------------------------------------------------------------
    @staticmethod
    async def _read(receive: Receive) -> bytes:
        parts = []
        while True:
            msg = await receive()
            if msg["type"] == "http.disconnect":
                break
            parts.append(msg.get("body", b""))
            if not msg.get("more_body", False):
                break
        return b"".join(parts)

    @staticmethod
    async def _json(send: Send, status: int, payload: bytes) -> None:
        headers = [_JSON_CT, (b"content-length", str(len(payload)).encode()), _REPLAY_H]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": payload})

    def _id(self) -> str:
        self._n += 1
        return f"chatcmpl-replay-{self._prefix}{self._n:08x}"

    # -- chat ----------------------------------------------------------------------------
    async def _chat(self, send: Send, raw: bytes) -> None:
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            body = None
        if not isinstance(body, dict):
            await self._json(
                send, 400, _error(400, "the body must be a JSON object", "invalid_json")
            )
            return
        model = body.get("model")
        prompt = last_user_message(body.get("messages"))
        if prompt is None:
            await self._json(
                send, 400, _error(400, "messages must contain a user message", "invalid_messages")
            )
            return
        if model == JUDGE_MODEL:
            await self._judge(send, body, prompt)
            return
        if not isinstance(model, str) or model not in self.models:
            known = ", ".join([*self.models, JUDGE_MODEL])
            await self._json(
                send,
                400,
                _error(
                    400,
                    f"model {model!r} is not replayed here; replayed: {known}",
                    "model_not_found",
                ),
            )
            return
        m = self.models[model]
        ans = m.get(prompt)
        if ans is None:
            await self._json(
                send,
                400,
                _error(
                    400,
                    f"REPLAY: there is no recorded answer of {model} to this prompt. The replay "
                    f"backend only answers the {len(m)} AlpacaEval instructions, verbatim, with "
                    "the answers the model really gave; it never invents one.",
                    "replay_no_answer",
                ),
            )
            return
        usage = {
            "prompt_tokens": prompt_tokens(prompt),
            "completion_tokens": ans.completion_tokens,
            "total_tokens": prompt_tokens(prompt) + ans.completion_tokens,
        }
        s = m.speed
        ttft = s.ttft_s / self.speed
        total = simulated_latency_s(model, ans.completion_tokens, self.speed)
        if body.get("stream"):
            await self._stream(send, body, model, ans.text, usage, ttft, total - ttft)
            return
        await asyncio.sleep(total)
        payload = {
            "id": self._id(),
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "system_fingerprint": "replay",
            "replay": True,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": ans.text, "refusal": None},
                    "logprobs": None,
                    "finish_reason": "stop",
                }
            ],
            "usage": usage,
        }
        await self._json(send, 200, orjson.dumps(payload))

    async def _judge(self, send: Send, body: dict[str, Any], prompt: str) -> None:
        parsed = Judgments.parse(prompt)
        ans = self.judgments.find(*parsed) if parsed else None
        if ans is None:
            await self._json(
                send,
                400,
                _error(
                    400,
                    "REPLAY judge: no recorded judgment for this answer (it grades only the "
                    "recorded answers, in the prompt format of gateway/accounting/quality.py)",
                    "replay_no_judgment",
                ),
            )
            return
        n = 1.0 + 9.0 * ans.quality
        text = (
            f"Replayed judgment (not generated): the GPT-4-Turbo AlpacaEval judge preferred "
            f"this answer of {ans.model} over the gpt4_1106_preview reference with preference "
            f"{ans.preference:.6f} (1 = reference, 2 = this answer).\nScore: {n:.10f}"
        )
        usage = {"prompt_tokens": prompt_tokens(prompt), "completion_tokens": 0, "total_tokens": 0}
        usage["completion_tokens"] = (len(text) + 3) // 4
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        if body.get("stream"):
            await self._stream(send, body, JUDGE_MODEL, text, usage, 0.0, 0.0)
            return
        payload = {
            "id": self._id(),
            "object": "chat.completion",
            "created": int(time.time()),
            "model": JUDGE_MODEL,
            "system_fingerprint": "replay",
            "replay": True,
            "replay_judgment": {"model": ans.model, "preference": ans.preference},
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text, "refusal": None},
                    "logprobs": None,
                    "finish_reason": "stop",
                }
            ],
            "usage": usage,
        }
        await self._json(send, 200, orjson.dumps(payload))

    async def _stream(
        self,
        send: Send,
        body: dict[str, Any],
        model: str,
        text: str,
        usage: dict[str, int],
        ttft: float,
        decode: float,
    ) -> None:
        opts = body.get("stream_options")
        include_usage = isinstance(opts, dict) and bool(opts.get("include_usage"))
        base: dict[str, Any] = {
            "id": self._id(),
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": model,
            "system_fingerprint": "replay",
            "replay": True,
        }
        extra: dict[str, Any] = {"usage": None} if include_usage else {}

        def event(delta: dict[str, Any], finish: str | None = None) -> bytes:
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
            return b"data: " + orjson.dumps({**base, "choices": [choice], **extra}) + b"\n\n"

        pieces = [text[i : i + _CHUNK_CHARS] for i in range(0, len(text), _CHUNK_CHARS)] or [""]
        gap = decode / len(pieces)
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [_SSE_CT, (b"cache-control", b"no-cache"), _REPLAY_H],
            }
        )
        await asyncio.sleep(ttft)
        for i, piece in enumerate(pieces):
            if i:
                await asyncio.sleep(gap)
            delta = {"role": "assistant", "content": piece} if i == 0 else {"content": piece}
            await send({"type": "http.response.body", "body": event(delta), "more_body": True})
        await send({"type": "http.response.body", "body": event({}, "stop"), "more_body": True})
        if include_usage:
            final = orjson.dumps({**base, "choices": [], "usage": usage})
            await send(
                {
                    "type": "http.response.body",
                    "body": b"data: " + final + b"\n\n",
                    "more_body": True,
                }
            )
        await send({"type": "http.response.body", "body": _DONE, "more_body": False})


# -- entry point -------------------------------------------------------------------------


def _parse_listen(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    host = host or "127.0.0.1"
    try:
        if not ipaddress.ip_address(host).is_loopback:
            raise ValueError
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r}: listen on a loopback address only") from None
    return host, int(port)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m gateway.demo.replay",
        description="Replay backends: recorded answers of real models (AlpacaEval), no model.",
    )
    p.add_argument(
        "--listen",
        action="append",
        type=_parse_listen,
        help="HOST:PORT to listen on (repeatable; port 0 picks a free one); default 127.0.0.1:0",
    )
    p.add_argument("--speed", type=float, default=1.0, help="divide simulated latencies by this")
    p.add_argument("--exit-on-stdin-eof", action="store_true", help="stop when stdin closes")
    return p


async def _serve(args: argparse.Namespace) -> int:
    app = ReplayApp(speed=args.speed)
    listen: Sequence[tuple[str, int]] = args.listen or [("127.0.0.1", 0)]
    try:
        socks = [bind(h, p, retry_s=0) for h, p in listen]
    except OSError as e:
        sys.stdout.write(f"ERROR cannot listen: {e}\n")
        sys.stdout.flush()
        return 1
    return await serve(app, socks, args.exit_on_stdin_eof)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    import uvloop

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(_serve(args))


__all__ = ["REPLAY_MODELS", "Judgments", "ReplayApp", "last_user_message", "main"]
