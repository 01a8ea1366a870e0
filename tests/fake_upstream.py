"""FAKE OpenAI-compatible upstream server: TEST TOOLING ONLY, NOT A MODEL.

Nothing here runs a language model or produces meaningful text.  The server returns canned,
deterministic answers in the exact wire shapes the OpenAI API uses, so that the gateway's tests
and benchmarks have a fast, scriptable upstream to talk to:

* ``POST /v1/chat/completions`` (JSON or SSE stream, optional tool calls),
  ``POST /v1/completions`` (JSON or SSE stream), ``POST /v1/embeddings`` (dimension-8 vectors,
  ``float`` or ``base64`` encoding), ``GET /v1/models``.
* The answer text is ``"[NAME] tok0 tok1 ..."`` with ``completion_tokens`` words, so a test can
  tell which upstream answered.  ``prompt_tokens`` is the number of whitespace-separated words in
  all message contents plus 4 per message (completions/embeddings: words of the input).
* ``POST /v1/responses`` (JSON or the Responses event stream, text only) when started with
  ``--responses``: an upstream that speaks OpenAI's Responses API itself. A chat request whose
  last message is a tool result gets a text answer (the tool call has been answered).
* With ``--prompt-cache-min-tokens N`` it reports cached prompt tokens the way OpenAI does:
  ``usage.prompt_tokens_details.cached_tokens`` is the prompt tokens of the longest run of
  leading messages (at least N tokens) that an earlier chat request to this server sent
  within ``--prompt-cache-ttl-s`` (300); each request's message prefixes are kept (at most
  ``PROMPT_CACHE_ENTRIES``), as a provider's prompt cache keeps recent prefixes.
* Per-request knobs in request headers: ``x-fake-latency-ms``, ``x-fake-completion-tokens``,
  ``x-fake-chunks``, ``x-fake-chunk-delay-ms``, ``x-fake-no-usage: 1``.
* A failure script controlled over HTTP: ``POST /_fake/script`` with
  ``{"actions": [ACTION, ...], "default": ACTION | null}``.  Each ``/v1/*`` request pops one
  action; once the queue is empty the ``default`` action (or normal behaviour) is used.  Any
  action may carry ``"repeat": N`` (it then occupies N consecutive queue slots).  Actions::

      {"kind": "ok"}
      {"kind": "status", "status": 500, "body": {...}, "retry_after": 1.5}
      {"kind": "delay", "ms": 5000}          # sleep, then answer normally
      {"kind": "reset"}                      # abort the TCP connection (RST), no HTTP response
      {"kind": "cut", "after_chunks": 2}     # send N SSE events, then close without [DONE]
      {"kind": "trickle", "ms": 200}         # stream with this delay between events

  ``POST /_fake/reset`` clears the script, the default action and the stats.
  ``GET /_fake/stats`` returns request counters (see :meth:`FakeUpstreamApp.stats_payload`).
  ``POST /_fake/gc`` runs a full garbage collection and returns ``{"unreachable": N}``: the
  objects that only reference cycles kept alive (the benchmarks need it near 0, see
  ``_Exchange.sleep``); with ``{"pause": true}`` automatic collections stay off until the
  next call without it.

Run it as a separate process::

    python -m tests.fake_upstream --host 127.0.0.1 --port 0 --name small

It prints exactly one line ``READY <port>`` on stdout once it accepts connections.  From tests,
use :class:`FakeUpstream`, which starts and stops that subprocess.

It is a raw ASGI app (no framework routing) served by uvicorn with uvloop + httptools, because
benchmarks use it as the "direct upstream" baseline and it must add as little overhead as
possible.  ``reset`` and ``cut`` reach into uvicorn's transport (the httptools protocol exposes
it as ``send.__self__.transport``); with another ASGI server they degrade to an exception.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import gc
import hashlib
import ipaddress
import itertools
import os
import secrets
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterator, MutableMapping, Sequence
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Final, Literal

import httpx
import orjson

from gateway.demo.procutil import bind, first_line, serve, stop_process

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
Outcome = Literal["completed", "cancelled", "aborted"]

EMBEDDING_DIM: Final = 8
_TOOL_ARGUMENTS: Final = '{"x": 1}'
# How OpenAI streams arguments: small fragments of the JSON text, concatenated by the client.
_TOOL_ARGUMENT_FRAGMENTS: Final = ('{"', "x", '": ', "1", "}")
_SYSTEM_FINGERPRINT: Final = "fp_fake"
_ACTION_KINDS: Final = frozenset({"ok", "status", "delay", "reset", "cut", "trickle"})
_JSON_CT: Final = (b"content-type", b"application/json")
_SSE_CT: Final = (b"content-type", b"text/event-stream; charset=utf-8")
_DONE_EVENT: Final = b"data: [DONE]\n\n"
_LOOPBACK_NAMES: Final = frozenset({"localhost"})


# --------------------------------------------------------------------------------------------
# Configuration, knobs and script actions
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Knobs:
    """Behaviour of one answer; server defaults, overridable per request via ``x-fake-*``."""

    latency_ms: float = 0.0
    completion_tokens: int = 16
    chunks: int = 8
    chunk_delay_ms: float = 0.0
    no_usage: bool = False


_KNOB_HEADERS: Final = {
    b"x-fake-latency-ms": "latency_ms",
    b"x-fake-completion-tokens": "completion_tokens",
    b"x-fake-chunks": "chunks",
    b"x-fake-chunk-delay-ms": "chunk_delay_ms",
    b"x-fake-no-usage": "no_usage",
}


def _knobs_for(defaults: Knobs, headers: Sequence[tuple[bytes, bytes]]) -> Knobs:
    overrides: dict[str, Any] = {}
    for key, raw in headers:
        if not key.startswith(b"x-fake-"):
            continue
        field = _KNOB_HEADERS.get(key)
        if field is None:
            continue
        value = raw.decode("latin-1").strip()
        try:
            if field == "no_usage":
                overrides[field] = value.lower() in {"1", "true", "yes", "on"}
            elif field in {"completion_tokens", "chunks"}:
                overrides[field] = max(0 if field == "completion_tokens" else 1, int(value))
            else:
                overrides[field] = max(0.0, float(value))
        except ValueError:
            continue
    return replace(defaults, **overrides) if overrides else defaults


class ScriptError(ValueError):
    """An invalid ``/_fake/script`` body."""


def _number(action: dict[str, Any], key: str, default: float | None = None) -> float:
    value = action.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise ScriptError(f"action {action!r}: {key!r} must be a non-negative number")
    return float(value)


def validate_action(action: Any) -> dict[str, Any]:
    """Check one script action and return a normalised copy (``repeat`` removed)."""
    if not isinstance(action, dict):
        raise ScriptError(f"action must be an object, got {action!r}")
    kind = action.get("kind")
    if kind not in _ACTION_KINDS:
        raise ScriptError(f"unknown action kind {kind!r}; expected one of {sorted(_ACTION_KINDS)}")
    out = {k: v for k, v in action.items() if k != "repeat"}
    if kind == "status":
        status = action.get("status", 500)
        if isinstance(status, bool) or not isinstance(status, int) or not 100 <= status <= 599:
            raise ScriptError(f"action {action!r}: 'status' must be an HTTP status code")
        out["status"] = status
        if "retry_after" in action and action["retry_after"] is not None:
            out["retry_after"] = _number(action, "retry_after")
    elif kind in {"delay", "trickle"}:
        out["ms"] = _number(action, "ms")
    elif kind == "cut":
        after = action.get("after_chunks", 1)
        if isinstance(after, bool) or not isinstance(after, int) or after < 0:
            raise ScriptError(f"action {action!r}: 'after_chunks' must be an int >= 0")
        out["after_chunks"] = after
    return out


def parse_script(body: Any) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """Parse a ``/_fake/script`` body into (expanded queue, default action)."""
    if not isinstance(body, dict):
        raise ScriptError("script body must be an object with an 'actions' list")
    actions = body.get("actions", [])
    if not isinstance(actions, list):
        raise ScriptError("'actions' must be a list")
    queue: list[dict[str, Any]] = []
    for action in actions:
        normalised = validate_action(action)
        repeat = action.get("repeat", 1)
        if isinstance(repeat, bool) or not isinstance(repeat, int) or repeat < 0:
            raise ScriptError(f"action {action!r}: 'repeat' must be an int >= 0")
        queue.extend(dict(normalised) for _ in range(repeat))
    default_raw = body.get("default")
    default = None if default_raw is None else validate_action(default_raw)
    return queue, default


# --------------------------------------------------------------------------------------------
# Deterministic content
# --------------------------------------------------------------------------------------------


@lru_cache(maxsize=1024)
def answer_pieces(
    name: str, completion_tokens: int, chunks: int, reply: str | None = None
) -> tuple[str, tuple[str, ...]]:
    """Return (full answer text, the text split into exactly ``chunks`` stream deltas).

    With ``reply`` (``--reply``), the answer is that fixed text instead of ``[NAME] tok0 ...``:
    used to stand in for a judge model that answers ``Score: 8``.
    """
    if reply is not None:
        words = reply.split(" ")
    else:
        words = [f"[{name}]", *(f"tok{i}" for i in range(completion_tokens))]
    content = " ".join(words)
    chunks = max(1, chunks)
    pieces: list[str] = []
    start = 0
    for i in range(chunks):
        end = round(len(words) * (i + 1) / chunks)
        group = words[start:end]
        text = " ".join(group)
        if group and start > 0:
            text = " " + text
        pieces.append(text)
        start = end
    return content, tuple(pieces)


def _words(text: Any) -> int:
    if isinstance(text, str):
        return len(text.split())
    if isinstance(text, list):  # content parts, or a list of prompts / token ids
        total = 0
        for part in text:
            if isinstance(part, dict):
                total += _words(part.get("text"))
            elif isinstance(part, int):
                total += 1
            else:
                total += _words(part)
        return total
    return 0


def chat_prompt_tokens(messages: Any) -> int:
    """Words in all message contents + 4 per message."""
    if not isinstance(messages, list):
        return 0
    return sum(4 + _words(m.get("content")) for m in messages if isinstance(m, dict))


@lru_cache(maxsize=4096)
def embedding_vector(text: str) -> tuple[float, ...]:
    """A deterministic unit vector of dimension 8 derived from a hash of ``text``."""
    digest = hashlib.blake2b(text.encode("utf-8"), digest_size=4 * EMBEDDING_DIM).digest()
    raw = [(v / 0xFFFFFFFF) * 2.0 - 1.0 for v in struct.unpack(f"<{EMBEDDING_DIM}I", digest)]
    norm = sum(x * x for x in raw) ** 0.5 or 1.0
    # Round-trip through float32 so float and base64 encodings give identical numbers.
    packed = struct.pack(f"<{EMBEDDING_DIM}f", *(x / norm for x in raw))
    return struct.unpack(f"<{EMBEDDING_DIM}f", packed)


def _embedding_inputs(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        if value and all(isinstance(v, int) for v in value):  # one tokenised input
            return [orjson.dumps(value).decode()]
        return [v if isinstance(v, str) else orjson.dumps(v).decode() for v in value]
    return []


PROMPT_CACHE_ENTRIES: Final = 10_000


class PromptCache:
    """Which message prefixes this server has seen, and when (a provider's prompt cache)."""

    def __init__(self, min_tokens: int, ttl_s: float) -> None:
        self.min_tokens = min_tokens
        self.ttl_s = ttl_s
        self._seen: dict[bytes, float] = {}  # prefix hash -> last use (insertion-ordered)

    def lookup_and_store(self, messages: Any) -> int:
        """The cached prompt tokens of `messages`; then every prefix of it is cached."""
        if not isinstance(messages, list):
            return 0
        now = time.monotonic()
        h = hashlib.sha256()
        cached = tokens = 0
        prefixes: list[bytes] = []
        for m in messages:
            if not isinstance(m, dict):
                break
            h.update(orjson.dumps(m, option=orjson.OPT_SORT_KEYS))
            key = h.copy().digest()
            prefixes.append(key)
            tokens += 4 + _words(m.get("content"))
            seen = self._seen.get(key)
            if seen is not None and now - seen <= self.ttl_s and tokens >= self.min_tokens:
                cached = tokens
        for key in prefixes:
            self._seen.pop(key, None)
            self._seen[key] = now
        while len(self._seen) > PROMPT_CACHE_ENTRIES:
            del self._seen[next(iter(self._seen))]
        return cached


def _usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def _error_type(status: int) -> tuple[str, str | None]:
    if status == 401:
        return "invalid_request_error", "invalid_api_key"
    if status == 404:
        return "invalid_request_error", "model_not_found"
    if status == 429:
        return "requests", "rate_limit_exceeded"
    if status >= 500:
        return "server_error", None
    return "invalid_request_error", None


def error_body(status: int, message: str | None = None) -> dict[str, Any]:
    """An OpenAI-shaped error body."""
    etype, code = _error_type(status)
    return {
        "error": {
            "message": message or f"Fake upstream scripted error (HTTP {status}).",
            "type": etype,
            "param": None,
            "code": code,
        }
    }


# --------------------------------------------------------------------------------------------
# Per-request connection helper
# --------------------------------------------------------------------------------------------


def _settle(fut: asyncio.Future[bool], value: bool) -> None:
    if not fut.done():
        fut.set_result(value)


class _Exchange:
    """Watches for client disconnects and can abort the underlying transport."""

    __slots__ = ("_gone", "_sleeper", "_watcher", "receive", "send")

    def __init__(self, receive: Receive, send: Send) -> None:
        self.receive = receive
        self.send = send
        self._gone: asyncio.Event | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._sleeper: asyncio.Future[bool] | None = None

    def watch(self) -> asyncio.Event:
        if self._gone is None:
            self._gone = asyncio.Event()
            self._watcher = asyncio.get_running_loop().create_task(self._watch(self._gone))
        return self._gone

    async def _watch(self, gone: asyncio.Event) -> None:
        while True:
            message = await self.receive()
            if message["type"] == "http.disconnect":
                gone.set()
                if self._sleeper is not None:
                    _settle(self._sleeper, True)
                return

    @property
    def gone(self) -> bool:
        if self._gone is not None and self._gone.is_set():
            return True
        # uvicorn's send() silently drops data once the peer is gone; peek at its flag.
        cycle = getattr(self.send, "__self__", None)
        return bool(getattr(cycle, "disconnected", False))

    async def sleep(self, ms: float) -> bool:
        """Sleep ``ms``; return True (early) if the client disconnected meanwhile.

        A timer and the disconnect watcher settle one future. (asyncio.wait_for left a
        chained exception, a reference cycle, behind on every timed-out sleep: under load
        the collections of that garbage paused this server for up to ~40 ms at a time.)
        """
        if ms <= 0:
            return self.gone
        gone = self.watch()
        if gone.is_set():
            return True
        loop = asyncio.get_running_loop()
        sleeper: asyncio.Future[bool] = loop.create_future()
        timer = loop.call_later(ms / 1000.0, _settle, sleeper, False)
        self._sleeper = sleeper
        try:
            if await sleeper:
                return True
        finally:
            timer.cancel()
            self._sleeper = None
        return self.gone

    def _transport(self) -> asyncio.Transport:
        cycle = getattr(self.send, "__self__", None)
        transport = getattr(cycle, "transport", None)
        if transport is None:
            raise RuntimeError(
                "fake upstream: cannot reach the transport (needs uvicorn/httptools)"
            )
        return transport  # type: ignore[no-any-return]

    async def abort(self, *, rst: bool) -> None:
        """Drop the connection: RST (``rst``) or a FIN after flushing what was sent."""
        transport = self._transport()
        if rst:
            sock = transport.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            transport.abort()
        else:
            transport.close()
        # Let uvicorn see connection_lost so it does not log "returned without completing".
        gone = self.watch()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(gone.wait(), 1.0)

    def close(self) -> None:
        if self._watcher is not None and not self._watcher.done():
            self._watcher.cancel()


# --------------------------------------------------------------------------------------------
# The ASGI app
# --------------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Stats:
    requests: int = 0
    completed: int = 0
    cancelled: int = 0
    aborted: int = 0
    in_flight: int = 0
    max_in_flight: int = 0
    by_path: dict[str, int] = field(default_factory=dict)
    last_request: Any = None
    last_headers: Sequence[tuple[bytes, bytes]] = ()


class FakeUpstreamApp:
    """Raw ASGI application implementing the fake upstream."""

    def __init__(
        self,
        name: str = "fake",
        knobs: Knobs | None = None,
        reply: str | None = None,
        responses: bool = False,
        prompt_cache: PromptCache | None = None,
    ) -> None:
        self.prompt_cache = prompt_cache
        self.name = name
        self.reply = reply
        self.responses = responses  # serve POST /v1/responses too
        self.knobs = knobs or Knobs()
        self.models = ["fake-model", f"fake-{name}"]
        self.queue: deque[dict[str, Any]] = deque()
        self.default_action: dict[str, Any] | None = None
        self.stats = _Stats()
        self._id_prefix = secrets.token_hex(4)
        self._counter = 0
        self._common_headers = [(b"x-fake-upstream", name.encode("latin-1", "replace"))]
        self._models_created = int(time.time())

    # ---- plumbing ---------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        stype = scope["type"]
        if stype == "http":
            path: str = scope["path"]
            if path.startswith("/v1/"):
                await self._handle_v1(scope, receive, send)
            elif path.startswith("/_fake/"):
                await self._handle_control(scope, receive, send)
            else:
                await self._send_json(send, 404, orjson.dumps(error_body(404, "Not found.")))
        elif stype == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return

    @staticmethod
    async def _read_body(receive: Receive) -> bytes:
        message = await receive()
        body = message.get("body", b"")
        if not message.get("more_body", False):
            return body  # type: ignore[no-any-return]
        parts = [body]
        while message.get("more_body", False):
            message = await receive()
            if message["type"] == "http.disconnect":
                break
            parts.append(message.get("body", b""))
        return b"".join(parts)

    async def _send_json(
        self,
        send: Send,
        status: int,
        payload: bytes,
        extra_headers: Sequence[tuple[bytes, bytes]] = (),
    ) -> None:
        headers = [_JSON_CT, (b"content-length", str(len(payload)).encode()), *self._common_headers]
        headers.extend(extra_headers)
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": payload, "more_body": False})

    def _next_id(self, prefix: str) -> str:
        self._counter += 1
        return f"{prefix}-{self._id_prefix}{self._counter:08x}"

    # ---- control endpoints ------------------------------------------------------------------

    def stats_payload(self) -> dict[str, Any]:
        s = self.stats
        return {
            "name": self.name,
            "requests": s.requests,
            "by_path": dict(s.by_path),
            "cancelled": s.cancelled,
            "completed": s.completed,
            "aborted": s.aborted,
            "last_request": s.last_request,
            "last_headers": {k.decode("latin-1"): v.decode("latin-1") for k, v in s.last_headers},
            "in_flight": s.in_flight,
            "max_in_flight": s.max_in_flight,
            "script_remaining": len(self.queue),
            "default": self.default_action,
        }

    def reset(self) -> None:
        self.queue.clear()
        self.default_action = None
        in_flight = self.stats.in_flight
        self.stats = _Stats(in_flight=in_flight, max_in_flight=in_flight)

    async def _handle_control(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = await self._read_body(receive)
        path, method = scope["path"], scope["method"]
        if path == "/_fake/stats" and method == "GET":
            await self._send_json(send, 200, orjson.dumps(self.stats_payload()))
        elif path == "/_fake/gc" and method == "POST":
            # a full collection (what it finds unreachable was left in reference cycles), then
            # automatic collections off or back on, so that a test can count a run's cycles
            found = gc.collect()
            pause = bool(orjson.loads(body or b"{}").get("pause"))
            (gc.disable if pause else gc.enable)()
            await self._send_json(send, 200, orjson.dumps({"unreachable": found}))
        elif path == "/_fake/health" and method == "GET":
            await self._send_json(send, 200, orjson.dumps({"ok": True, "name": self.name}))
        elif path == "/_fake/reset" and method == "POST":
            self.reset()
            await self._send_json(send, 200, b'{"ok":true}')
        elif path == "/_fake/script" and method == "POST":
            try:
                queue, default = parse_script(orjson.loads(body or b"{}"))
            except (orjson.JSONDecodeError, ScriptError) as exc:
                await self._send_json(send, 400, orjson.dumps(error_body(400, str(exc))))
                return
            self.queue = deque(queue)
            self.default_action = default
            payload = {"ok": True, "queued": len(queue), "default": default}
            await self._send_json(send, 200, orjson.dumps(payload))
        else:
            await self._send_json(send, 404, orjson.dumps(error_body(404, "Unknown control path.")))

    # ---- /v1 ----------------------------------------------------------------------------------

    async def _handle_v1(self, scope: Scope, receive: Receive, send: Send) -> None:
        raw = await self._read_body(receive)
        stats = self.stats
        path: str = scope["path"]
        headers: list[tuple[bytes, bytes]] = scope["headers"]
        stats.requests += 1
        stats.by_path[path] = stats.by_path.get(path, 0) + 1
        stats.in_flight += 1
        stats.max_in_flight = max(stats.max_in_flight, stats.in_flight)
        stats.last_headers = headers
        body: Any = None
        bad_json = False
        if raw:
            try:
                body = orjson.loads(raw)
            except orjson.JSONDecodeError:
                bad_json = True
        stats.last_request = body
        action = self.queue.popleft() if self.queue else self.default_action
        exchange = _Exchange(receive, send)
        outcome: Outcome = "cancelled"
        try:
            outcome = await self._respond(scope, exchange, headers, body, bad_json, action)
        finally:
            if outcome != "completed":
                # A complete response wakes the watcher's receive() (uvicorn answers it with
                # http.disconnect), so it ends by itself; cancelling it would leave a
                # CancelledError and its traceback, a reference cycle, per request.
                exchange.close()
            # ``self.stats`` may have been replaced by /_fake/reset meanwhile: count there.
            current = self.stats
            current.in_flight = max(0, current.in_flight - 1)
            if outcome == "completed":
                current.completed += 1
            elif outcome == "cancelled":
                current.cancelled += 1
            else:
                current.aborted += 1

    async def _respond(
        self,
        scope: Scope,
        ex: _Exchange,
        headers: list[tuple[bytes, bytes]],
        body: Any,
        bad_json: bool,
        action: dict[str, Any] | None,
    ) -> Outcome:
        kind = action["kind"] if action else "ok"
        if action is not None:
            if kind == "reset":
                await ex.abort(rst=True)
                return "aborted"
            if kind == "status":
                status = int(action["status"])
                payload = action.get("body")
                data = orjson.dumps(payload if payload is not None else error_body(status))
                extra: list[tuple[bytes, bytes]] = []
                if action.get("retry_after") is not None:
                    ra = float(action["retry_after"])
                    text = str(int(ra)) if ra.is_integer() else repr(ra)
                    extra.append((b"retry-after", text.encode()))
                if ex.gone:
                    return "cancelled"
                await self._send_json(ex.send, status, data, extra)
                return "completed"
            if kind == "delay" and await ex.sleep(float(action["ms"])):
                return "cancelled"

        knobs = _knobs_for(self.knobs, headers)
        if knobs.latency_ms > 0 and await ex.sleep(knobs.latency_ms):
            return "cancelled"

        path: str = scope["path"]
        method: str = scope["method"]
        if path == "/v1/models":
            if method != "GET":
                return await self._error(ex, 405, "Method not allowed.")
            return await self._models(ex)
        if method != "POST":
            return await self._error(ex, 405, "Method not allowed.")
        if bad_json or not isinstance(body, dict):
            return await self._error(ex, 400, "We could not parse the JSON body of your request.")
        if path == "/v1/chat/completions":
            return await self._chat(ex, body, knobs, action)
        if path == "/v1/completions":
            return await self._completions(ex, body, knobs, action)
        if path == "/v1/embeddings":
            return await self._embeddings(ex, body, knobs, action)
        if path == "/v1/responses" and self.responses:
            return await self._responses(ex, body, knobs)
        return await self._error(ex, 404, f"Unknown path {path}.")

    async def _error(self, ex: _Exchange, status: int, message: str) -> Outcome:
        await self._send_json(ex.send, status, orjson.dumps(error_body(status, message)))
        return "completed"

    async def _send_payload(
        self, ex: _Exchange, payload: dict[str, Any], action: dict[str, Any] | None
    ) -> Outcome:
        """Send a non-streamed JSON answer, honouring ``cut``/``trickle`` actions."""
        data = orjson.dumps(payload)
        if action is not None:
            kind = action["kind"]
            if kind == "trickle" and await ex.sleep(float(action["ms"])):
                return "cancelled"
            if kind == "cut":
                # Headers promise the full length; half the body arrives, then the socket closes.
                headers = [_JSON_CT, (b"content-length", str(len(data)).encode())]
                await ex.send({"type": "http.response.start", "status": 200, "headers": headers})
                half = data[: len(data) // 2]
                await ex.send({"type": "http.response.body", "body": half, "more_body": True})
                await ex.abort(rst=False)
                return "aborted"
        if ex.gone:
            return "cancelled"
        await self._send_json(ex.send, 200, data)
        return "completed"

    async def _stream(
        self,
        ex: _Exchange,
        events: list[bytes],
        knobs: Knobs,
        action: dict[str, Any] | None,
    ) -> Outcome:
        """Send SSE ``events`` then ``data: [DONE]``; honours ``cut`` and ``trickle``."""
        delay_ms = knobs.chunk_delay_ms
        cut_after: int | None = None
        if action is not None:
            if action["kind"] == "trickle":
                delay_ms = float(action["ms"])
            elif action["kind"] == "cut":
                cut_after = min(int(action["after_chunks"]), len(events))
        ex.watch()
        headers = [_SSE_CT, (b"cache-control", b"no-cache"), *self._common_headers]
        if ex.gone:
            return "cancelled"
        await ex.send({"type": "http.response.start", "status": 200, "headers": headers})
        for i, event in enumerate(events):
            if cut_after is not None and i >= cut_after:
                break
            if i and delay_ms > 0 and await ex.sleep(delay_ms):
                return "cancelled"
            if ex.gone:
                return "cancelled"
            await ex.send({"type": "http.response.body", "body": event, "more_body": True})
        if cut_after is not None:
            await ex.abort(rst=False)
            return "aborted"
        if delay_ms > 0 and await ex.sleep(delay_ms):
            return "cancelled"
        if ex.gone:
            return "cancelled"
        await ex.send({"type": "http.response.body", "body": _DONE_EVENT, "more_body": False})
        return "completed"

    # ---- endpoint bodies --------------------------------------------------------------------

    async def _models(self, ex: _Exchange) -> Outcome:
        data = [
            {"id": m, "object": "model", "created": self._models_created, "owned_by": "fake"}
            for m in self.models
        ]
        await self._send_json(ex.send, 200, orjson.dumps({"object": "list", "data": data}))
        return "completed"

    @staticmethod
    def _include_usage(body: dict[str, Any], knobs: Knobs) -> bool:
        if knobs.no_usage:
            return False
        opts = body.get("stream_options")
        return isinstance(opts, dict) and bool(opts.get("include_usage"))

    @staticmethod
    def _first_tool_name(body: dict[str, Any]) -> str | None:
        tools = body.get("tools")
        if not isinstance(tools, list) or not tools:
            return None
        first = tools[0]
        if isinstance(first, dict):
            fn = first.get("function")
            if isinstance(fn, dict) and isinstance(fn.get("name"), str):
                return str(fn["name"])
            if isinstance(first.get("name"), str):
                return str(first["name"])
        return "tool"

    async def _chat(
        self, ex: _Exchange, body: dict[str, Any], knobs: Knobs, action: dict[str, Any] | None
    ) -> Outcome:
        model = body.get("model") if isinstance(body.get("model"), str) else "fake-model"
        prompt_tokens = chat_prompt_tokens(body.get("messages"))
        usage: dict[str, Any] = _usage(prompt_tokens, knobs.completion_tokens)
        if self.prompt_cache is not None:
            cached = self.prompt_cache.lookup_and_store(body.get("messages"))
            usage["prompt_tokens_details"] = {"cached_tokens": cached}
        tool_name = self._first_tool_name(body)
        msgs = body.get("messages")
        last = msgs[-1] if isinstance(msgs, list) and msgs else None
        if isinstance(last, dict) and last.get("role") == "tool":
            tool_name = None  # the tool's result is in: the answer is text
        rid = self._next_id("chatcmpl")
        created = int(time.time())
        base = {
            "id": rid,
            "object": "chat.completion",
            "created": created,
            "model": model,
            "system_fingerprint": _SYSTEM_FINGERPRINT,
        }
        call_id = f"call_{rid.rsplit('-', 1)[-1]}" if tool_name else ""

        if not body.get("stream"):
            message: dict[str, Any]
            if tool_name:
                message = {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "id": call_id,
                            "type": "function",
                            "function": {"name": tool_name, "arguments": _TOOL_ARGUMENTS},
                        }
                    ],
                    "refusal": None,
                }
                finish = "tool_calls"
            else:
                content, _ = answer_pieces(
                    self.name, knobs.completion_tokens, knobs.chunks, self.reply
                )
                message = {"role": "assistant", "content": content, "refusal": None}
                finish = "stop"
            payload = {
                **base,
                "choices": [
                    {"index": 0, "message": message, "logprobs": None, "finish_reason": finish}
                ],
            }
            if not knobs.no_usage:
                payload["usage"] = usage
            return await self._send_payload(ex, payload, action)

        include_usage = self._include_usage(body, knobs)
        base["object"] = "chat.completion.chunk"
        extra: dict[str, Any] = {"usage": None} if include_usage else {}

        def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
            return b"data: " + orjson.dumps({**base, "choices": [choice], **extra}) + b"\n\n"

        events: list[bytes] = []
        if tool_name:
            first_call = {
                "index": 0,
                "id": call_id,
                "type": "function",
                "function": {"name": tool_name, "arguments": ""},
            }
            events.append(
                chunk(
                    {
                        "role": "assistant",
                        "content": None,
                        "tool_calls": [first_call],
                        "refusal": None,
                    }
                )
            )
            for fragment in _TOOL_ARGUMENT_FRAGMENTS:
                events.append(
                    chunk({"tool_calls": [{"index": 0, "function": {"arguments": fragment}}]})
                )
            events.append(chunk({}, "tool_calls"))
        else:
            _, pieces = answer_pieces(self.name, knobs.completion_tokens, knobs.chunks, self.reply)
            for i, piece in enumerate(pieces):
                delta = {"role": "assistant", "content": piece} if i == 0 else {"content": piece}
                events.append(chunk(delta))
            events.append(chunk({}, "stop"))
        if include_usage:
            final: dict[str, Any] = {**base, "choices": [], "usage": usage}
            events.append(b"data: " + orjson.dumps(final) + b"\n\n")
        return await self._stream(ex, events, knobs, action)

    async def _responses(self, ex: _Exchange, body: dict[str, Any], knobs: Knobs) -> Outcome:
        """A native Responses answer (``--responses``): text only, OpenAI's event stream."""
        model = body.get("model") if isinstance(body.get("model"), str) else "fake-model"
        inp = body.get("input")
        items = [{"content": inp}] if isinstance(inp, str) else inp
        words = chat_prompt_tokens([i for i in items or () if isinstance(i, dict)])
        text, pieces = answer_pieces(self.name, knobs.completion_tokens, knobs.chunks, self.reply)
        rid = self._next_id("resp")
        mid = self._next_id("msg")
        part = {"type": "output_text", "text": text, "annotations": []}
        item = {"type": "message", "id": mid, "status": "completed", "role": "assistant"}
        usage = {
            "input_tokens": words,
            "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
            "output_tokens": knobs.completion_tokens,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": words + knobs.completion_tokens,
        }
        resp = {
            "id": rid,
            "object": "response",
            "created_at": int(time.time()),
            "status": "completed",
            "model": model,
            "output": [{**item, "content": [part]}],
            "parallel_tool_calls": True,
            "tool_choice": "auto",
            "tools": [],
            "usage": usage,
        }
        if not body.get("stream"):
            await self._send_json(ex.send, 200, orjson.dumps(resp))
            return "completed"
        seq = itertools.count()

        def ev(kind: str, **data: Any) -> bytes:
            data = {"type": kind, "sequence_number": next(seq), **data}
            return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"

        start = {**resp, "status": "in_progress", "output": [], "usage": None}
        at = {"item_id": mid, "output_index": 0, "content_index": 0}
        events = [
            ev("response.created", response=start),
            ev("response.output_item.added", output_index=0,
               item={**item, "status": "in_progress", "content": []}),
            ev("response.content_part.added", **at, part={**part, "text": ""}),
            *(ev("response.output_text.delta", **at, delta=p, logprobs=[]) for p in pieces),
            ev("response.output_text.done", **at, text=text, logprobs=[]),
            ev("response.content_part.done", **at, part=part),
            ev("response.output_item.done", output_index=0, item={**item, "content": [part]}),
            ev("response.completed", response=resp),
        ]  # fmt: skip
        headers = [_SSE_CT, (b"cache-control", b"no-cache"), *self._common_headers]
        await ex.send({"type": "http.response.start", "status": 200, "headers": headers})
        for e in events:  # no [DONE]: a Responses stream ends after response.completed
            await ex.send({"type": "http.response.body", "body": e, "more_body": True})
        await ex.send({"type": "http.response.body", "body": b"", "more_body": False})
        return "completed"

    async def _completions(
        self, ex: _Exchange, body: dict[str, Any], knobs: Knobs, action: dict[str, Any] | None
    ) -> Outcome:
        model = body.get("model") if isinstance(body.get("model"), str) else "fake-model"
        usage = _usage(_words(body.get("prompt")), knobs.completion_tokens)
        content, pieces = answer_pieces(
            self.name, knobs.completion_tokens, knobs.chunks, self.reply
        )
        base = {
            "id": self._next_id("cmpl"),
            "object": "text_completion",
            "created": int(time.time()),
            "model": model,
            "system_fingerprint": _SYSTEM_FINGERPRINT,
        }
        if not body.get("stream"):
            choice = {"text": content, "index": 0, "logprobs": None, "finish_reason": "stop"}
            payload = {**base, "choices": [choice]}
            if not knobs.no_usage:
                payload["usage"] = usage
            return await self._send_payload(ex, payload, action)

        include_usage = self._include_usage(body, knobs)
        extra: dict[str, Any] = {"usage": None} if include_usage else {}

        def chunk(text: str, finish: str | None = None) -> bytes:
            choice = {"text": text, "index": 0, "logprobs": None, "finish_reason": finish}
            return b"data: " + orjson.dumps({**base, "choices": [choice], **extra}) + b"\n\n"

        events = [chunk(piece) for piece in pieces]
        events.append(chunk("", "stop"))
        if include_usage:
            events.append(
                b"data: " + orjson.dumps({**base, "choices": [], "usage": usage}) + b"\n\n"
            )
        return await self._stream(ex, events, knobs, action)

    async def _embeddings(
        self, ex: _Exchange, body: dict[str, Any], knobs: Knobs, action: dict[str, Any] | None
    ) -> Outcome:
        model = body.get("model") if isinstance(body.get("model"), str) else "fake-embedding"
        inputs = _embedding_inputs(body.get("input"))
        as_base64 = body.get("encoding_format") == "base64"
        data: list[dict[str, Any]] = []
        for i, text in enumerate(inputs):
            vec = embedding_vector(text)
            embedding: Any = (
                base64.b64encode(struct.pack(f"<{EMBEDDING_DIM}f", *vec)).decode()
                if as_base64
                else list(vec)
            )
            data.append({"object": "embedding", "index": i, "embedding": embedding})
        prompt_tokens = _words(body.get("input"))
        payload: dict[str, Any] = {"object": "list", "data": data, "model": model}
        if not knobs.no_usage:
            payload["usage"] = {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens}
        return await self._send_payload(ex, payload, action)


# --------------------------------------------------------------------------------------------
# Server entry point
# --------------------------------------------------------------------------------------------


def _check_loopback(host: str) -> None:
    if host in _LOOPBACK_NAMES:
        return
    try:
        if ipaddress.ip_address(host).is_loopback:
            return
    except ValueError:
        pass
    raise SystemExit(f"fake_upstream: refusing to bind non-loopback host {host!r}")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m tests.fake_upstream",
        description="Fake OpenAI-compatible upstream for tests/benchmarks (not a model).",
    )
    p.add_argument("--host", default="127.0.0.1", help="loopback address only")
    p.add_argument("--port", type=int, default=0, help="0 picks a free port")
    p.add_argument("--latency-ms", type=float, default=0.0, help="delay before answering")
    p.add_argument("--completion-tokens", type=int, default=16)
    p.add_argument("--chunks", type=int, default=8, help="content deltas per stream")
    p.add_argument("--chunk-delay-ms", type=float, default=0.0)
    p.add_argument("--name", default="fake", help="answers start with '[NAME] '")
    p.add_argument("--reply", default=None, help="answer with this fixed text instead")
    p.add_argument("--no-usage", action="store_true", help="never send usage")
    p.add_argument("--responses", action="store_true", help="serve POST /v1/responses too")
    p.add_argument(
        "--prompt-cache-min-tokens",
        type=int,
        default=None,
        help="report cached prompt tokens (OpenAI's prompt_tokens_details.cached_tokens) for "
        "a repeated message prefix of at least this many tokens (OpenAI: 1024)",
    )
    p.add_argument("--prompt-cache-ttl-s", type=float, default=300.0)
    p.add_argument(
        "--hostile",
        action="store_true",
        help="serve the raw, scriptable hostile upstream instead (HostileUpstreamServer)",
    )
    p.add_argument(
        "--exit-on-stdin-eof",
        action="store_true",
        help="shut down when stdin closes (the parent process went away)",
    )
    return p


async def _serve(args: argparse.Namespace) -> int:
    app = FakeUpstreamApp(
        name=args.name,
        reply=args.reply,
        responses=args.responses,
        knobs=Knobs(
            latency_ms=max(0.0, args.latency_ms),
            completion_tokens=max(0, args.completion_tokens),
            chunks=max(1, args.chunks),
            chunk_delay_ms=max(0.0, args.chunk_delay_ms),
            no_usage=args.no_usage,
        ),
        prompt_cache=(
            None
            if args.prompt_cache_min_tokens is None
            else PromptCache(args.prompt_cache_min_tokens, args.prompt_cache_ttl_s)
        ),
    )
    import uvicorn.protocols.http.httptools_impl  # noqa: F401  (imported before the freeze)

    # As the gateway does: move the startup heap out of the collector's way, so that a full
    # collection under load walks only what was made since.
    gc.collect()
    gc.freeze()
    return await serve(app, [bind(args.host, args.port)], args.exit_on_stdin_eof)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    _check_loopback(args.host)
    import uvloop

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(_serve_hostile(args) if args.hostile else _serve(args))


# --------------------------------------------------------------------------------------------
# Test/bench helper: run the server as a subprocess
# --------------------------------------------------------------------------------------------

_REPO_ROOT: Final = Path(__file__).resolve().parents[1]


class FakeUpstream:
    """Start/stop a fake upstream subprocess (``python -m tests.fake_upstream``).

    ::

        with FakeUpstream(name="small") as fu:
            client = openai.OpenAI(base_url=fu.base_url, api_key="x")
            fu.script([{"kind": "status", "status": 500}])
            ...
            assert fu.stats()["requests"] == 2

    Only the process this object started is ever signalled (by its PID).
    """

    def __init__(
        self,
        name: str = "fake",
        *,
        latency_ms: float = 0.0,
        completion_tokens: int = 16,
        chunks: int = 8,
        chunk_delay_ms: float = 0.0,
        port: int = 0,
        startup_timeout: float = 15.0,
        reply: str | None = None,
        no_usage: bool = False,
        responses: bool = False,
        prompt_cache_min_tokens: int | None = None,
    ) -> None:
        self.name = name
        self.reply = reply
        self.no_usage = no_usage
        self.responses = responses
        self.prompt_cache_min_tokens = prompt_cache_min_tokens
        self.latency_ms = latency_ms
        self.completion_tokens = completion_tokens
        self.chunks = chunks
        self.chunk_delay_ms = chunk_delay_ms
        self.startup_timeout = startup_timeout
        self._requested_port = port
        self._port: int | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._stderr: IO[bytes] | None = None

    # ---- properties ---------------------------------------------------------------------------

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("FakeUpstream has not been started")
        return self._port

    @property
    def url(self) -> str:
        """Server root, e.g. ``http://127.0.0.1:PORT``."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        """OpenAI base URL, e.g. ``http://127.0.0.1:PORT/v1``."""
        return f"{self.url}/v1"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    # ---- lifecycle ----------------------------------------------------------------------------

    def _command(self, port: int) -> list[str]:
        return [
            sys.executable,
            "-m",
            "tests.fake_upstream",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--latency-ms",
            str(self.latency_ms),
            "--completion-tokens",
            str(self.completion_tokens),
            "--chunks",
            str(self.chunks),
            "--chunk-delay-ms",
            str(self.chunk_delay_ms),
            "--name",
            self.name,
            "--exit-on-stdin-eof",
            *(["--reply", self.reply] if self.reply is not None else []),
            *(["--no-usage"] if self.no_usage else []),
            *(["--responses"] if self.responses else []),
            *(
                ["--prompt-cache-min-tokens", str(self.prompt_cache_min_tokens)]
                if self.prompt_cache_min_tokens is not None
                else []
            ),
        ]

    def start(self) -> FakeUpstream:
        """Start the subprocess and wait for ``READY <port>``."""
        if self.running:
            return self
        self._close_handles()
        port = self._port if self._port is not None else self._requested_port
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(_REPO_ROOT), env.get("PYTHONPATH", "")) if p
        )
        env["PYTHONUNBUFFERED"] = "1"
        # Stderr goes to a file, never a pipe nobody drains (a full pipe would block the server).
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 - lives as long as the process
        self._proc = subprocess.Popen(
            self._command(port),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            env=env,
            cwd=str(_REPO_ROOT),
        )
        try:
            self._port = self._wait_ready()
        except BaseException:
            self._stop_process(grace=1.0)
            self._close_handles()
            raise
        return self

    def _wait_ready(self) -> int:
        proc = self._proc
        assert proc is not None
        line = first_line(proc, self.startup_timeout)
        if line is None:
            raise RuntimeError(
                f"fake upstream did not become ready within {self.startup_timeout}s; "
                f"stderr:\n{self.logs()}"
            )
        if not line.startswith("READY "):
            proc.poll()
            raise RuntimeError(
                f"fake upstream failed to start (exit code {proc.returncode}, "
                f"stdout {line!r}); stderr:\n{self.logs()}"
            )
        return int(line.split()[1])

    def logs(self) -> str:
        """Everything the subprocess wrote to stderr so far."""
        if self._stderr is None:
            return ""
        with contextlib.suppress(OSError, ValueError):
            self._stderr.flush()
            pos = self._stderr.tell()
            self._stderr.seek(0)
            text = self._stderr.read().decode(errors="replace")
            self._stderr.seek(pos)
            return text
        return ""

    def _stop_process(self, grace: float = 5.0) -> None:
        proc = self._proc
        if proc is None:
            return
        stop_process(proc, grace)
        for stream in (proc.stdin, proc.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()

    def _close_handles(self) -> None:
        if self._stderr is not None:
            with contextlib.suppress(OSError):
                self._stderr.close()
            self._stderr = None

    def stop(self) -> None:
        """Terminate the subprocess (SIGTERM, wait 5 s, then SIGKILL)."""
        self._stop_process(grace=5.0)

    def kill(self) -> None:
        """SIGKILL the subprocess (simulates an upstream crash); ``restart()`` brings it back."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5.0)
        for stream in (proc.stdin, proc.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()

    def restart(self) -> FakeUpstream:
        """Stop (if running) and start again on the same port."""
        self._stop_process(grace=5.0)
        return self.start()

    def close(self) -> None:
        self._stop_process(grace=5.0)
        self._close_handles()

    def __enter__(self) -> FakeUpstream:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # ---- control API ----------------------------------------------------------------------------

    @contextlib.contextmanager
    def _client(self) -> Iterator[httpx.Client]:
        with httpx.Client(base_url=self.url, timeout=10.0, trust_env=False) as client:
            yield client

    def _control(self, method: str, path: str, body: Any = None) -> Any:
        with self._client() as client:
            response = client.request(method, path, json=body)
        response.raise_for_status()
        return response.json()

    def script(
        self, actions: Sequence[dict[str, Any]], default: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """Replace the failure script (and the action used once it is exhausted)."""
        result = self._control(
            "POST", "/_fake/script", {"actions": list(actions), "default": default}
        )
        return dict(result)

    def reset(self) -> None:
        """Clear script, default action and stats."""
        self._control("POST", "/_fake/reset")

    def stats(self) -> dict[str, Any]:
        return dict(self._control("GET", "/_fake/stats"))

    def collect_garbage(self, pause: bool = False) -> int:
        """Run a full collection in the server; the number of unreachable objects it found.
        With `pause`, automatic collections stay off until the next call."""
        return int(self._control("POST", "/_fake/gc", {"pause": pause})["unreachable"])


# --------------------------------------------------------------------------------------------
# Hostile upstream: raw bytes, for answers that break HTTP or size expectations
# --------------------------------------------------------------------------------------------

_HOSTILE_KINDS: Final = frozenset({"ok", "raw", "hangup", "big", "sse_event", "trickle", "status"})
_PIECE: Final = 1 << 20


class HostileUpstreamServer:
    """A raw asyncio HTTP/1.1 server (no framework: it may break HTTP on purpose).

    Same control plane as the fake upstream (``/_fake/script``, ``/_fake/reset``,
    ``/_fake/stats``); each ``/v1/*`` request pops one action::

        {"kind": "ok"}                        # a small chat answer (JSON, or SSE if stream)
        {"kind": "ok", "then_bytes": N, "then_hang_s": S}   # SSE: after [DONE], N more
                                              # bytes, then S s of silence, then close
        {"kind": "raw", "data": "HTTP/1.1 204 No Content\r\n..."}   # bytes as they are
        {"kind": "hangup"}                    # read the request, close without a byte
        {"kind": "big", "bytes": N, "chunked": false, "status": 200}   # JSON of N bytes
        {"kind": "sse_event", "bytes": N, "piece": 65536, "gap_ms": 0}   # SSE: one event
                                              # of N bytes in writes of `piece` (`gap_ms`
                                              # apart), no blank line until its end, then
                                              # [DONE]
        {"kind": "trickle", "ms": 10, "seconds": 5}   # SSE: one byte per `ms`, no event end
        {"kind": "status", "status": 429, "body": "...", "headers": {"retry-after": "inf"}}

    A ``status`` body may hold ``{authorization}``: the Authorization header received (an
    upstream that echoes the credential it was sent). Stats count the ``/v1`` requests, the
    connections that carried them, and the answers the client stopped reading midway
    (``peer_gone``)."""

    def __init__(self) -> None:
        self.queue: deque[dict[str, Any]] = deque()
        self.default: dict[str, Any] | None = None
        self.stats = {"requests": 0, "connections": 0, "peer_gone": 0}

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        counted = False
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, asyncio.LimitOverrunError):
                    return
                lines = head.split(b"\r\n")
                method, path = lines[0].split(b" ")[:2]
                hdrs = {}
                for line in lines[1:]:
                    if b":" in line:
                        k, v = line.split(b":", 1)
                        hdrs[k.strip().lower()] = v.strip()
                length = int(hdrs.get(b"content-length", b"0"))
                raw = await reader.readexactly(length) if length else b""
                if not path.startswith(b"/v1/"):
                    await self._control(writer, method, path, raw)
                    continue
                self.stats["requests"] += 1
                if not counted:
                    counted = True
                    self.stats["connections"] += 1
                action = self.queue.popleft() if self.queue else (self.default or {"kind": "ok"})
                if not await self._answer(writer, action, hdrs, raw):
                    return
        except (ConnectionError, asyncio.IncompleteReadError):
            self.stats["peer_gone"] += 1
        finally:
            writer.close()

    async def _control(
        self, writer: asyncio.StreamWriter, method: bytes, path: bytes, raw: bytes
    ) -> None:
        if path == b"/_fake/script":
            queue, default = [], None
            body = orjson.loads(raw or b"{}")
            for action in body.get("actions", []):
                queue += [dict(action) for _ in range(action.get("repeat", 1))]
            default = body.get("default")
            for a in [*queue, *([default] if default else [])]:
                if a.get("kind") not in _HOSTILE_KINDS:
                    raise ScriptError(f"unknown hostile action {a!r}")
            self.queue, self.default = deque(queue), default
            out: Any = {"ok": True, "queued": len(queue)}
        elif path == b"/_fake/reset":
            self.queue, self.default = deque(), None
            self.stats = dict.fromkeys(self.stats, 0)
            out = {"ok": True}
        else:
            out = self.stats
        data = orjson.dumps(out)
        writer.write(_hostile_head(200, b"application/json", len(data)) + data)
        await writer.drain()

    async def _answer(
        self, writer: asyncio.StreamWriter, a: dict[str, Any], hdrs: dict[bytes, bytes], raw: bytes
    ) -> bool:
        """Send one answer; False if the connection is to be closed."""
        kind = a["kind"]
        if kind == "hangup":
            return False
        if kind == "raw":
            writer.write(str(a["data"]).encode("latin-1"))
            await writer.drain()
            return not a.get("close", False)
        if kind == "status":
            auth = hdrs.get(b"authorization", b"").decode("latin-1")
            data = str(a.get("body", "")).replace("{authorization}", auth).encode()
            extra = "".join(f"{k}: {v}\r\n" for k, v in a.get("headers", {}).items())
            head = _hostile_head(int(a["status"]), b"application/json", len(data), extra.encode())
            writer.write(head + data)
            await writer.drain()
            return True
        if kind == "big":
            n = int(a["bytes"])
            chunked = bool(a.get("chunked"))
            body_len = max(0, n - 11)  # with the 11 bytes of {"pad": "..."}
            status = int(a.get("status", 200))
            head = _hostile_head(status, b"application/json", None if chunked else n)
            writer.write(head)
            parts: Iterator[bytes] = _pieces(b'{"pad": "', body_len, b'"}')
            await _write_all(writer, parts, chunked)
            return True
        stream = b'"stream":true' in raw.replace(b" ", b"")
        if kind == "ok" and not stream:
            data = orjson.dumps(_hostile_chat())
            writer.write(_hostile_head(200, b"application/json", len(data)) + data)
            await writer.drain()
            return True
        writer.write(_hostile_head(200, b"text/event-stream", None))
        if kind == "ok":
            events = [_hostile_chunk("ok"), _hostile_chunk(None, usage=True)]
            parts = iter([*(b"data: " + orjson.dumps(e) + b"\n\n" for e in events), _DONE_EVENT])
            if a.get("then_bytes"):  # the answer is over, but the body does not end
                more = _pieces(b"", int(a["then_bytes"]), b"", 1 << 14)
                for part in itertools.chain(parts, more):
                    if part:
                        writer.write(b"%x\r\n%s\r\n" % (len(part), part))
                        await writer.drain()
                await asyncio.sleep(float(a.get("then_hang_s", 5)))
                return False
        elif kind == "sse_event":
            piece = int(a.get("piece", 1 << 16))
            parts = _pieces(b"data: ", int(a["bytes"]), b"\n\n" + _DONE_EVENT, piece)
            await _write_all(writer, parts, True, float(a.get("gap_ms", 0)))
            return True
        else:  # trickle
            writer.write(b"6\r\ndata: \r\n")
            end = time.monotonic() + float(a.get("seconds", 5))
            while time.monotonic() < end:
                writer.write(b"1\r\nx\r\n")
                await writer.drain()
                await asyncio.sleep(float(a.get("ms", 10)) / 1000)
            return False
        await _write_all(writer, parts, True)
        return True


def _hostile_head(status: int, ctype: bytes, length: int | None, extra: bytes = b"") -> bytes:
    framing = b"transfer-encoding: chunked" if length is None else b"content-length: %d" % length
    return b"HTTP/1.1 %d X\r\ncontent-type: %s\r\n%s\r\n%s\r\n" % (status, ctype, framing, extra)


def _pieces(first: bytes, n: int, last: bytes, piece: int = _PIECE) -> Iterator[bytes]:
    """`first`, then n bytes of 'x' in pieces of `piece` bytes, then `last`."""
    yield first
    block = b"x" * piece
    while n > 0:
        yield block[: min(n, piece)]
        n -= piece
    yield last


async def _write_all(
    writer: asyncio.StreamWriter, parts: Iterator[bytes], chunked: bool, gap_ms: float = 0.0
) -> None:
    for part in parts:
        writer.write(b"%x\r\n%s\r\n" % (len(part), part) if chunked else part)
        await writer.drain()
        if gap_ms:
            await asyncio.sleep(gap_ms / 1000)
    if chunked:
        writer.write(b"0\r\n\r\n")
        await writer.drain()


def _hostile_chunk(text: str | None, usage: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": "chatcmpl-hostile",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "hostile",
        "choices": [] if text is None else [{"index": 0, "delta": {"content": text}}],
    }
    if usage:
        out["usage"] = _usage(3, 1)
    return out


def _hostile_chat() -> dict[str, Any]:
    return {
        "id": "chatcmpl-hostile",
        "object": "chat.completion",
        "created": 1,
        "model": "hostile",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "ok"},
                "finish_reason": "stop",
            }
        ],
        "usage": _usage(3, 1),
    }


async def _serve_hostile(args: argparse.Namespace) -> int:
    server = HostileUpstreamServer()
    sock = bind(args.host, args.port)
    srv = await asyncio.start_server(server.serve, sock=sock)
    sys.stdout.write(f"READY {sock.getsockname()[1]}\n")
    sys.stdout.flush()
    if args.exit_on_stdin_eof:
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.buffer.read)
    else:
        await asyncio.Event().wait()
    srv.close()
    return 0


class HostileUpstream(FakeUpstream):
    """Start/stop a :class:`HostileUpstreamServer` subprocess; ``script``, ``reset`` and
    ``stats`` work as on :class:`FakeUpstream`."""

    def _command(self, port: int) -> list[str]:
        return [
            sys.executable,
            "-m",
            "tests.fake_upstream",
            "--hostile",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--exit-on-stdin-eof",
        ]


if __name__ == "__main__":
    sys.exit(main())
