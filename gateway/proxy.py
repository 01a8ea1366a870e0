"""The hot path: request in, bytes out, for /v1/chat/completions, /v1/completions, /v1/embeddings.

A raw ASGI handler (no framework on this path). In order: read and check the body,
resolve the model name to a plan (a concrete model, a route, or the learned router),
dispatch to upstreams with retries, circuit breakers and fallback, pass the answer
back (streamed chunks forwarded as they arrive), then hand the request record to
`Gateway.after_request`, which runs after the response is sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import email.utils
import functools
import hashlib
import logging
import os
import random
import re
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, Protocol

import orjson

from gateway.accounting import pricing
from gateway.accounting.metrics import Metrics
from gateway.accounting.records import RequestRecord
from gateway.api import anthropic
from gateway.api.face import EventTooLarge, Face, SSEFramer, StreamConverter, Usage
from gateway.api.response_store import ResponseStore
from gateway.api.responses_face import RESPONSES
from gateway.api.validation import (
    too_deep,
    validate_chat,
    validate_completion,
    validate_embeddings,
)
from gateway.cache import sse
from gateway.cache.store import SKIP, Entry, ResponseCache
from gateway.config import GatewayKey
from gateway.errors import (
    AuthenticationFailed,
    BodyTooLarge,
    GatewayError,
    InvalidRequest,
    PermissionDenied,
    RateLimited,
    Unavailable,
    UnsupportedMediaType,
    UpstreamClientError,
    UpstreamError,
    UpstreamTimeout,
    error_body,
)
from gateway.http import h1
from gateway.http.server import ANSWERED, ON_DISCONNECT
from gateway.routing.runtime import Plan, Runtime
from gateway.routing.sticky import KEPT, NEW, StickyMap, Turn, conversation_key
from gateway.tenants.keys import KeyTable
from gateway.tenants.limits import LimitExceeded, Limits, Reservation
from gateway.upstreams.pool import QueueFull, Upstream


class GatewayState(Protocol):
    """What the hot path reads of the live gateway (`gateway.app.Gateway` provides it): the
    current runtime, the key table, the metrics, and the after-response hooks."""

    runtime: Runtime
    keys: KeyTable  # the gateway keys (gateway/tenants/keys.py)
    limits: Limits  # rate limits and budgets (gateway/tenants/limits.py)
    metrics: Metrics
    cache: ResponseCache
    responses_store: ResponseStore | None  # kept Responses answers (responses.store: true)
    sticky: StickyMap  # conversation stickiness (gateway/routing/sticky.py)
    judge_enabled: bool
    in_flight: int  # client requests in `Proxy.handle` now

    def price(self, rt: Runtime, rec: RequestRecord) -> None: ...

    def commit(self, rec: RequestRecord) -> None: ...

    def finish(
        self, rt: Runtime, rec: RequestRecord, messages: Any, answer: str | None
    ) -> None: ...


log = logging.getLogger("tollgate.proxy")

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

HOT_PATHS: dict[str, tuple[str, str, Callable[[Any], None]]] = {
    "/v1/chat/completions": ("chat", "/chat/completions", validate_chat),
    "/v1/completions": ("completions", "/completions", validate_completion),
    "/v1/embeddings": ("embeddings", "/embeddings", validate_embeddings),
}

# the API faces (gateway/api/face.py): path → the face that serves it
FACES: dict[str, Face] = {
    "/v1/messages": anthropic.MESSAGES,
    "/v1/responses": RESPONSES,  # OpenAI's Responses API (gateway/api/responses_face.py)
}
COUNT_TOKENS_PATH = "/v1/messages/count_tokens"

_MODEL_RE = re.compile(rb'"model"\s*:\s*"((?:[^"\\]|\\.)*)"')
_CONTENT_RE = re.compile(rb'"(?:content|text|arguments)"\s*:\s*"((?:[^"\\]|\\.)*)"')
_WATCHERS: set[asyncio.Task[None]] = set()
_USAGE_OBJ = re.compile(rb'"usage"\s*:\s*\{')  # a usage object (vLLM sends "usage":null too)
_JSON_CT = (b"application/json", b"application/json; charset=utf-8")
_SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]
_DONE = b"data: [DONE]\n\n"
_NO_BODY_STATUS = (204, 205, 304)  # with 1xx: statuses that carry no body (HTTP rules)
_DONE_EV, _DONE_EV2 = b"data: [DONE]", b"data:[DONE]"


_ROUTE_CHARS = 256  # most characters of the requested model name a record keeps


def new_request_id() -> str:
    """`tg-`, the Unix time in milliseconds (11 hex digits), 64 random bits (16 hex digits).

    Unguessable, and in time order: the store's primary-key index then grows at its end.
    With fully random ids every insert lands on a random page of that index: the SQLite
    store spent 43-44 us of CPU per record that way, 33-36 us with these
    (bench/store_write.py)."""
    return f"tg-{int(time.time() * 1000):011x}{_random_hex16()}"


class _Entropy:
    """os.urandom read 4 KiB at a time: one getrandom() call per 512 request ids instead of
    one per request (it showed as 1.7% of the gateway's samples under load)."""

    hex = ""
    at = 0


def _random_hex16() -> str:
    e = _Entropy
    at = e.at
    if at + 16 > len(e.hex):
        e.hex, at = os.urandom(4096).hex(), 0
    e.at = at + 16
    return e.hex[at : at + 16]


def _fresh_entropy() -> None:
    _Entropy.hex, _Entropy.at = "", 0  # a forked child must not repeat its parent's ids


os.register_at_fork(after_in_child=_fresh_entropy)


class _Ctx:
    """Per-request state shared with the disconnect watcher."""

    __slots__ = ("client_gone", "committed", "finished", "started", "state", "t0", "task")

    def __init__(self, task: asyncio.Task[Any] | None, t0: float, state: dict[str, Any]) -> None:
        self.task = task
        self.t0 = t0
        self.state = state
        self.client_gone = False
        self.finished = False  # the last byte is being sent: a disconnect now is normal
        self.started = False  # response headers sent
        self.committed = False  # the record is final and journaled (`Proxy._commit`)

    def client_left(self) -> None:
        """The client went away: stop the request (it is still recorded, as a 499)."""
        if not self.finished and self.task is not None:
            self.client_gone = True
            self.task.cancel()


class _Aborted(Exception):
    """The request body never arrived whole: the client left (499), or the server answered
    the request itself because the body broke the HTTP framing (the status it sent)."""

    def __init__(self, answered: int) -> None:
        self.status = answered or 499
        self.type = "invalid_request_error" if answered else "client_disconnected"


class _Retry(Exception):
    """An attempt failed in a way worth retrying on the same model."""

    def __init__(self, err: GatewayError, delay: float | None = None) -> None:
        self.err = err
        self.delay = delay


class _NextModel(Exception):
    """An attempt failed in a way that retrying this model will not fix."""

    def __init__(self, err: GatewayError) -> None:
        self.err = err


async def _watch_disconnect(receive: Receive, ctx: _Ctx) -> None:
    while True:
        msg = await receive()
        if msg["type"] == "http.disconnect":
            ctx.client_left()
            return


def _start_watch(
    loop: asyncio.AbstractEventLoop,
    receive: Receive,
    ctx: _Ctx,
    out: set[asyncio.Task[None]],
) -> None:
    if not ctx.finished:
        w = loop.create_task(_watch_disconnect(receive, ctx))
        out.add(w)  # asyncio keeps only weak references to tasks
        w.add_done_callback(out.discard)


_RETRY_AFTER_MAX = 86400.0  # a day: a longer wait is still "not now", and fits 5 digits


def _retry_after(resp: h1.H1Response) -> float | None:
    v = resp.header(b"retry-after")
    return None if not v else _parse_retry_after(v)


def _parse_retry_after(v: bytes) -> float | None:
    """An upstream's Retry-After in seconds, at most a day: delta-seconds (digits, a decimal
    fraction tolerated) or an HTTP-date; anything else (inf, nan, negative, 1e300, junk) is
    ignored (None), so the gateway's own backoff applies."""
    v = v.strip()
    if v.replace(b".", b"", 1).isdigit():
        return min(float(v), _RETRY_AFTER_MAX)  # 400 digits make inf: min() bounds it
    try:
        when = email.utils.parsedate_to_datetime(v.decode("latin-1"))
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:  # "-0000": HTTP-dates are GMT
        when = when.replace(tzinfo=datetime.UTC)
    wait = when.timestamp() - time.time()
    return min(max(0.0, wait), _RETRY_AFTER_MAX)


def _upstream_message(body: bytes) -> str:
    try:
        data = orjson.loads(body)
        err = data.get("error") if isinstance(data, dict) else None
        if isinstance(err, dict) and err.get("message"):
            return str(err["message"])[:300]
        if isinstance(err, str):
            return err[:300]
    except (orjson.JSONDecodeError, AttributeError):
        pass
    return body[:200].decode("utf-8", "replace").strip() or "(empty body)"


def _profile_of(rt: Runtime, model: str) -> dict[str, str]:
    """Which router profile scored `model`, and where it came from (for the explain header)."""
    p = rt.profiles.get(model)
    return {} if p is None else {"profile": p.profile, "profile_source": p.source}


class Proxy:
    def __init__(self, gw: GatewayState) -> None:
        self.gw = gw

    async def handle(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        kind: str,
        path: str,
        check: Any,
        face: Face | None = None,
    ) -> None:
        """One request of `kind` (chat, completions, embeddings, or a face's: then `face`
        translates it to and from chat, gateway/api/face.py)."""
        t0 = time.perf_counter()
        gw = self.gw
        rt = gw.runtime
        rid = new_request_id()
        rec = RequestRecord(request_id=rid, ts=time.time(), endpoint=kind)
        task = asyncio.current_task()
        state: dict[str, Any] = {
            "upstream_s": 0.0,
            "answer": None,
            "messages": None,
            "cache": None,  # the response cache's key for this request's answer (a miss)
            "cache_hdr": (),  # x-tollgate-cache, when the cache applied
            "sticky": None,  # the conversation's key in the stickiness map
            "endpoint": 0,  # the index of the endpoint that answered
        }
        ctx = _Ctx(task, t0, state)
        watch_later: asyncio.TimerHandle | None = None
        lim = gw.limits
        res: Reservation | None = None
        gw.in_flight += 1
        try:
            ct = b""
            length = -1
            auth = b""
            explain = False
            ceiling: bytes | None = None
            floor: bytes | None = None
            session: bytes | None = None
            sticky = gw.sticky
            session_header = sticky.header
            for k, v in scope["headers"]:
                if k == b"content-type":
                    ct = v
                elif k == b"content-length":
                    length = int(v) if v.isdigit() else -1
                elif k == b"authorization" or (k == b"x-api-key" and not auth):
                    auth = v if k == b"authorization" else b"bearer " + v
                elif k == b"x-tollgate-explain":
                    explain = v in (b"1", b"true", b"yes")
                elif k == b"x-tollgate-max-cost-usd":
                    ceiling = v
                elif k == b"x-tollgate-min-quality":
                    floor = v
                elif k == session_header:
                    session = v
            key = None
            if gw.keys.required:
                key = self._authenticate(auth)
                rec.key_id = key.id
            limit = rt.config.server.max_body_bytes
            if length > limit:
                raise BodyTooLarge(
                    f"the request body is {length} bytes; this gateway accepts at most {limit} "
                    "(server.max_body_bytes)"
                )
            if ct not in _JSON_CT and ct.split(b";", 1)[0].strip().lower() != b"application/json":
                raise UnsupportedMediaType(
                    f"send the body as JSON with 'Content-Type: application/json' "
                    f"(got {ct.decode('latin-1') or 'no content type'!r})"
                )
            raw = await self._read_body(receive, limit)
            if not raw:
                raise InvalidRequest("the request body is empty; send a JSON object")
            try:
                body = orjson.loads(raw)
            except orjson.JSONDecodeError as e:
                raise _not_json(raw, e) from None
            check(body)
            native = body  # a face's own body, kept for upstreams that speak the face
            if face is not None:
                face = await face.begin(body, rid, rec.key_id, gw)  # this request's face
                body = face.to_chat(body)
            model = body["model"]
            # the record keeps the start of a name no one configured, however long the client
            # made it (a store row per request must not carry a 1 MB name)
            rec.route = model if len(model) <= _ROUTE_CHARS else model[:_ROUTE_CHARS]
            if key is not None and key.models is not None and model not in key.models:
                raise PermissionDenied(
                    f"the gateway key {key.id!r} may not call model {model[:80]!r}; it may "
                    f"call: {', '.join(key.models)} (ask for a key with this model in --models)",
                    param="model",
                    code="model_not_allowed",
                )
            stream = bool(body.get("stream"))
            rec.stream = stream
            max_cost = None if ceiling is None else _max_cost(ceiling)
            min_q = None if floor is None else _min_quality(floor)
            rec.max_cost_usd, rec.min_quality = max_cost, min_q
            ck = gw.cache.key_for(scope["headers"], kind, native, rec.key_id)
            if ck is not None and await self._cache_lookup(ck, body, rec, ctx, send, state, face):
                return  # served from the response cache
            if lim.active:  # else no work here: nothing is limited
                res = await self._reserve(lim, rt, rec, body)
                state["limits"] = res
            thrifty = None if res is None else res.thrifty
            turn: Turn | None = None
            if sticky.enabled and (model in rt.sticky_names or model.startswith("router-")):
                conv = conversation_key(session, rec.key_id, kind, body)
                if conv is not None:
                    state["sticky"] = skey = sticky.key(conv)
                    turn = sticky.get_local(skey) if sticky.local else await sticky.get(skey)
            plan = rt.resolve(model, kind, body, rid, rec.key_id, max_cost, thrifty, min_q, turn)
            if thrifty is not None:
                rec.budget_soft = plan.decision is not None  # only a routed name goes thrifty
            rec.policy = plan.policy
            rec.baseline_model = plan.baseline_model
            if plan.decision is not None:
                rec.router_score = plan.decision.score
                rec.router_scores = dict(plan.decision.quality)
                rec.router_features = plan.features
                ex = plan.exploration
                if ex is None:
                    rec.propensity = 1.0
                else:
                    rec.propensity = ex.propensity
                    rec.explored = ex.explored
                if state["sticky"] is not None:
                    rec.sticky = plan.sticky or NEW
                    if plan.sticky == KEPT:  # kept by stickiness, not the policy's pick
                        rec.propensity = None
                gw.metrics.router_decision(plan.decision_s)
            if gw.judge_enabled and (kind == "chat" or face is not None):
                state["messages"] = body.get("messages")
            # Watch for a client that goes away. Our own server (gateway/http/server.py) calls back
            # from its connection_lost; under another server a task blocked on receive() does
            # it, started only once the request has lasted 50 ms (most answers are faster, and
            # then that task is never created).
            ext = scope.get("extensions")
            on_disconnect = ext.get(ON_DISCONNECT) if ext else None
            if on_disconnect is not None:
                on_disconnect(ctx.client_left)
            else:
                loop = asyncio.get_running_loop()
                watch_later = loop.call_later(0.05, _start_watch, loop, receive, ctx, _WATCHERS)
            if face is not None:
                await self._face(
                    face, rt, plan, body, native, rec, ctx, send, state, explain, scope
                )
            elif stream:
                await self._stream(rt, plan, body, path, rec, ctx, send, state, explain, t0)
            else:
                await self._unary(rt, plan, body, path, rec, ctx, send, state, explain)
        except GatewayError as e:
            rec.status = e.status
            # refused by the gateway's own limits: the code the client got, so usage can
            # tell these from an upstream's 429 (type rate_limit_error)
            rec.error_type = e.code if isinstance(e, LimitExceeded) else e.type
            if not ctx.started:
                await self._send_error(send, e, rid, rec, ctx, face)
        except _Aborted as e:
            ctx.started = ctx.finished = True  # nobody to answer: the client is gone
            rec.status = e.status
            rec.error_type = e.type
        except asyncio.CancelledError:
            if task is not None:
                task.uncancel()
            if ctx.client_gone:
                rec.status = 499
                rec.error_type = "client_disconnected"
            else:
                # Not the client: the server's shutdown drain (server.drain_timeout_s) ran out
                # and stopped the request. The client is told so, and the record says it.
                rec.status = 503
                rec.error_type = "cancelled_by_shutdown"
                await self._stopped(send, rid, rec, ctx, face)
        except Exception:
            log.exception("unexpected error in request %s", rid)
            rec.status = 500
            rec.error_type = "api_error"
            if not ctx.started:
                await self._send_error(
                    send,
                    GatewayError(f"internal gateway error; quote request id {rid} to the operator"),
                    rid,
                    rec,
                    ctx,
                    face,
                )
        finally:
            # A started watcher is not cancelled: the response is complete (or the client
            # gone), so its pending receive() returns on its own and it sees `finished`.
            # Cancelling it would raise CancelledError in it, and the traceback cycles that
            # leaves behind made garbage collections stall the loop (p99 +13 ms at c64).
            ctx.finished = True
            if watch_later is not None:
                watch_later.cancel()
            self._commit(rec, ctx)  # no last byte went out (client gone): the record is final now
            if state["sticky"] is not None and rec.status == 200 and rec.model is not None:
                gw.sticky.put(
                    state["sticky"],
                    Turn(
                        rec.model,
                        state["endpoint"],
                        time.time(),
                        rec.prompt_tokens + rec.completion_tokens,
                    ),
                )
            if res is not None:
                lim.settle(res, rec.model, rec.prompt_tokens + rec.completion_tokens, rec.cost_usd)
            gw.in_flight -= 1
            gw.finish(rt, rec, state["messages"], state["answer"])

    # -- helpers ---------------------------------------------------------------------
    def _commit(self, rec: RequestRecord, ctx: _Ctx, upstream_s: float | None = None) -> None:
        """The record is final: its timings up to now, handed to the journal before the
        response's last byte is sent, so that a gateway killed after it still has it. Once per
        request; `upstream_s` is the upstream time when it is not `state["upstream_s"]`."""
        if ctx.committed:
            return
        ctx.committed = True
        rec.latency_ms = (time.perf_counter() - ctx.t0) * 1000.0
        up = ctx.state["upstream_s"] if upstream_s is None else upstream_s
        rec.upstream_ms = up * 1000.0
        rec.overhead_ms = max(0.0, rec.latency_ms - rec.upstream_ms)
        self.gw.commit(rec)

    async def _stopped(
        self, send: Send, rid: str, rec: RequestRecord, ctx: _Ctx, face: Face | None
    ) -> None:
        """Tell a client whose request the shutdown drain stopped: a 503 (or, mid-stream, an
        error event that ends the stream), waiting at most a second for a slow reader."""
        e = Unavailable(
            "the gateway is shutting down and stopped this request when its drain time "
            "(server.drain_timeout_s) ran out; send the request again",
            code="shutting_down",
            retry_after=1.0,
        )
        with contextlib.suppress(TimeoutError, OSError, RuntimeError):
            async with asyncio.timeout(1.0):
                if not ctx.started:
                    await self._send_error(send, e, rid, rec, ctx, face)
                elif not ctx.finished:
                    self._commit(rec, ctx)
                    ctx.finished = True
                    conv = ctx.state.get("conv")
                    end = b"data: " + e.body() + b"\n\n" if conv is None else conv.error(e)
                    await send({"type": "http.response.body", "body": end})

    async def _reserve(
        self, lim: Limits, rt: Runtime, rec: RequestRecord, body: dict[str, Any]
    ) -> Reservation:
        """The request's reservation against its key's limits (a 429 when over one)."""
        out = body.get("max_completion_tokens") or body.get("max_tokens")
        key = self._gateway_key(rec.key_id) if rec.key_id is not None else None
        try:
            return await lim.reserve(rt, key, rec.route or "", _estimate_prompt(body), out)
        except LimitExceeded as e:
            self._rejected(e, rec.key_id)
            raise

    def _rejected(self, e: LimitExceeded, key_id: str | None) -> None:
        per_key = self.gw.runtime.config.server.metrics_per_key
        self.gw.metrics.limit_rejection((key_id or "none") if per_key else "all", e.kind)

    def _gateway_key(self, key_id: str) -> GatewayKey | None:
        """The GatewayKey of the request's key (its limits live there: the routing file's or
        a stored key's, from the current key table), or None."""
        return self.gw.keys.by_id.get(key_id)

    # -- the response cache (gateway/cache/) --------------------------------------------
    async def _cache_lookup(
        self,
        key: str,
        body: dict[str, Any],
        rec: RequestRecord,
        ctx: _Ctx,
        send: Send,
        state: dict[str, Any],
        face: Face | None,
    ) -> bool:
        """Before routing, when the response cache applies (`key`, from `key_for`): answer
        from it if it has the answer (True: answered). A miss leaves the entry's key in
        `state["cache"]` for `_cache_store`."""
        cache = self.gw.cache
        if key == SKIP:
            state["cache_hdr"] = ((b"x-tollgate-cache", b"skip"),)
            self.gw.metrics.cache("skip")
            return False
        e = await cache.get(key)
        if e is None:
            out = None
        elif face is None:
            out = self._cache_answer(e, rec.stream, body)
        else:  # a face's answer is kept in its own form: served when asked the same way
            out = e.body if e.sse == rec.stream else None
        if e is None or out is None:
            state["cache"] = key
            state["cache_hdr"] = ((b"x-tollgate-cache", b"miss"),)
            self.gw.metrics.cache("miss")
            return False
        self.gw.metrics.cache("hit", e.cost_usd)
        rec.cache_hit = True
        rec.model, rec.tier = e.model, e.tier
        rec.baseline_model = e.model
        rec.baseline_cost_usd = e.cost_usd  # what the original cost: the hit's saving
        rec.prompt_tokens, rec.completion_tokens = e.prompt_tokens, e.completion_tokens
        rec.cached_tokens, rec.tokens_estimated = e.cached_tokens, e.tokens_estimated
        if rec.stream:
            headers = list(_SSE_HEADERS)
            rec.ttft_ms = (time.perf_counter() - ctx.t0) * 1000.0
        else:
            headers = [
                (b"content-type", b"application/json"),
                (b"content-length", b"%d" % len(out)),
            ]
        headers += [
            (b"x-tollgate-request-id", rec.request_id.encode()),
            (b"x-tollgate-model", (e.model or "").encode()),
            (b"x-tollgate-tier", (e.tier or "").encode()),
            (b"x-tollgate-attempts", b"0"),
            (b"x-tollgate-cost-usd", pricing.format_usd(0.0).encode()),
            (b"x-tollgate-cache", b"hit"),
        ]
        self._commit(rec, ctx)
        ctx.started = ctx.finished = True
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": out})
        return True

    @staticmethod
    def _cache_answer(e: Entry, stream: bool, body: dict[str, Any]) -> bytes | None:
        """A hit's response body: JSON, or SSE when the client streams (the original's
        own stream when it was one and had the usage chunk just when this client asks for
        it); None when a kept stream does not add up to a completion (served as a miss)."""
        if not stream:
            return e.answer()
        so = body.get("stream_options")
        usage = isinstance(so, dict) and so.get("include_usage") is True
        if e.sse and e.sse_usage == usage:
            return e.body
        answer = e.answer()
        return None if answer is None else sse.synthesize(answer, e.kind, usage)

    async def _cache_store(
        self, key: str, rec: RequestRecord, answer: bytes, sse_usage: bool | None = None
    ) -> None:
        """After a complete 200 answer (before its last byte): keep it, and what it cost.
        A stream (`sse_usage` given: whether its client got the usage chunk) is kept as the
        SSE body its client got; it is assembled into a completion only if a hit needs it."""
        e = Entry(
            answer,
            rec.model,
            rec.tier,
            rec.cost_usd,
            rec.prompt_tokens,
            rec.completion_tokens,
            rec.cached_tokens,
            rec.tokens_estimated,
            rec.endpoint,
            sse_usage is not None,
            bool(sse_usage),
        )
        await self.gw.cache.put(key, e)

    def _authenticate(self, auth: bytes) -> GatewayKey:
        """The key (its id and limits) of `Authorization: Bearer <key>` (or `x-api-key`):
        one sha256 and one dict lookup in the current key table."""
        if not auth.lower().startswith(b"bearer "):
            raise AuthenticationFailed(
                "missing gateway key: send 'Authorization: Bearer <key>' or 'x-api-key: <key>' "
                "(api_key in the SDK)"
            )
        digest = hashlib.sha256(auth[7:].strip()).hexdigest()
        key = self.gw.keys.by_hash.get(digest)
        if key is None and not self.gw.keys.by_hash:
            raise AuthenticationFailed(
                "this gateway requires gateway keys (auth.required) and has none yet: create "
                "one with `tollgate keys create --name NAME`, or set auth.required: false in "
                "the routing file"
            )
        if key is None:
            raise AuthenticationFailed(
                "the gateway key is not valid (unknown or revoked); check the api_key you sent "
                "or ask for a new one (tollgate keys create)"
            )
        return key

    @staticmethod
    async def _read_body(receive: Receive, limit: int) -> bytes:
        chunks: list[bytes] = []
        size = 0
        while True:
            msg = await receive()
            if msg["type"] == "http.disconnect":
                raise _Aborted(msg.get(ANSWERED, 0))
            b = msg.get("body", b"")
            if b:
                size += len(b)
                if size > limit:
                    raise BodyTooLarge(
                        f"the request body is over {limit} bytes, the most this gateway accepts "
                        "(server.max_body_bytes)"
                    )
                chunks.append(b)
            if not msg.get("more_body"):
                break
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    async def _send_error(
        self,
        send: Send,
        e: GatewayError,
        rid: str,
        rec: RequestRecord,
        ctx: _Ctx,
        face: Face | None = None,
    ) -> None:
        ctx.started = ctx.finished = True
        self._commit(rec, ctx)
        body = e.body() if face is None else face.error_body(e)
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", b"%d" % len(body)),
            (b"x-tollgate-request-id", rid.encode()),
            *e.headers(),
        ]
        if rec.model:
            headers.append((b"x-tollgate-model", rec.model.encode()))
        if rec.attempts:
            headers.append((b"x-tollgate-attempts", str(rec.attempts).encode()))
        await send({"type": "http.response.start", "status": e.status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    def _headers(
        self, rt: Runtime, plan: Plan, rec: RequestRecord, explain: bool
    ) -> list[tuple[bytes, bytes]]:
        h = [
            (b"x-tollgate-request-id", rec.request_id.encode()),
            (b"x-tollgate-model", (rec.model or "").encode()),
            (b"x-tollgate-tier", (rec.tier or "").encode()),
            (b"x-tollgate-attempts", str(rec.attempts).encode()),
        ]
        d = plan.decision
        if d is not None:
            h.append((b"x-tollgate-router-score", f"{d.score:.4f}".encode()))
            h.append((b"x-tollgate-policy", (plan.policy or "").encode()))
            if rec.sticky is not None:  # the request belongs to a conversation
                h.append((b"x-tollgate-sticky", rec.sticky.encode()))
                if explain and plan.sticky_weighed is not None:
                    prev, gain, lost = plan.sticky_weighed
                    weighed = {"previous_model": prev, "switch_saving_usd": gain}
                    weighed["cache_value_usd"] = lost
                    h.append((b"x-tollgate-sticky-explain", orjson.dumps(weighed)))
            if rec.budget_soft:  # past its budget's soft share: routed thriftily
                h.append((b"x-tollgate-budget-soft", b"1"))
            ex = plan.exploration
            if ex is not None:  # exploration is on for this request
                if ex.explored:
                    h.append((b"x-tollgate-explored", b"1"))
                if rec.propensity is not None:  # None: a fallback served
                    h.append((b"x-tollgate-propensity", f"{rec.propensity:.6g}".encode()))
            if explain:
                probs = {d.order[0]: 1.0} if ex is None else ex.probabilities
                cands = [
                    {
                        "model": n,
                        "tier": rt.models[n].tier,
                        "predicted_quality": round(d.quality.get(n, 0.0), 4),
                        "estimated_cost_usd": d.cost.get(n, 0.0),
                        **_profile_of(rt, n),
                        # P(the routing policy sends the request to n), exploration included
                        "probability": round(probs.get(n, 0.0), 6),
                        "router_choice": n == d.order[0],
                    }
                    for n in d.quality
                ]
                h.append((b"x-tollgate-explain", orjson.dumps(cands)))
        return h

    def _pick(self, ups: list[Upstream], avoid: Upstream | None = None) -> Upstream | None:
        """The endpoint with the fewest requests in flight (per weight) among those whose
        circuit lets a request through; a retry goes to another endpoint than the one that
        just failed (`avoid`) when there is one."""
        if len(ups) == 1:
            u = ups[0]
            return u if u.circuit.allow() else None
        order = sorted(
            (u for u in ups if u.circuit.available()),
            key=lambda u: (u.outstanding / u.weight, random.random()),
        )
        if avoid is not None and len(order) > 1 and avoid in order:
            order.remove(avoid)
            order.append(avoid)
        for u in order:
            if u.circuit.allow():
                return u
        return None

    def _backoff(self, rt: Runtime, attempt: int) -> float:
        s = rt.config.server
        return min(s.max_backoff_s, s.retry_backoff_s * (2**attempt) * random.uniform(0.5, 1.5))

    def _payload(self, body: dict[str, Any], up: Upstream, stream: bool) -> bytes:
        out = dict(body)
        out["model"] = up.upstream_model
        if stream:
            so = dict(out.get("stream_options") or {})
            so["include_usage"] = True
            out["stream_options"] = so
        try:
            return orjson.dumps(out)
        except orjson.JSONEncodeError:  # parsed (1024 levels) but too deep to send (254)
            raise too_deep(body) from None

    async def _attempts(
        self,
        rt: Runtime,
        plan: Plan,
        rec: RequestRecord,
        state: dict[str, Any],
        attempt_fn: Callable[[Upstream], Awaitable[Any]],
        keep_slot: bool = False,
    ) -> Any:
        """Run `attempt_fn` over the plan's models: retries on one model, then fallback.

        With `keep_slot`, the winning upstream's slot stays taken (a stream still flowing);
        the caller gives it back with `_release`.
        """
        last: GatewayError | None = None
        tried_models = 0
        metrics = self.gw.metrics
        res: Reservation | None = state.get("limits")
        model_limits = res is not None and res.limits is not None and res.limits.models
        for name in plan.models:
            mcfg = rt.models[name]
            ups = rt.upstreams[name]
            if model_limits:  # this model's own rpm/tpm, for every key together
                assert res is not None and res.limits is not None
                try:
                    await res.limits.reserve_model(res, name)
                except LimitExceeded as e:
                    self._rejected(e, rec.key_id)
                    last = e
                    continue
            if tried_models:
                rec.fallbacks += 1
                rec.propensity = None  # a fallback serves: not what the policy picked
            tried_models += 1
            rec.model = name
            rec.tier = mcfg.tier
            failed: Upstream | None = None
            prefer = plan.endpoint if name == plan.models[0] else None
            for attempt in range(mcfg.retries + 1):
                if prefer is not None and prefer < len(ups) and ups[prefer].circuit.allow():
                    up: Upstream | None = ups[prefer]  # the conversation's previous endpoint
                else:
                    up = self._pick(ups, failed)
                prefer = None
                if up is None:
                    wait = min(u.circuit.cooldown_s for u in ups)
                    last = Unavailable(
                        f"model {name!r} is unavailable: its circuit breaker is open after "
                        "repeated upstream failures; retry later",
                        retry_after=wait,
                        model=name,
                    )
                    break
                try:
                    await up.limiter.acquire()
                except QueueFull:
                    up.circuit.release_probe()
                    last = Unavailable(
                        f"model {name!r} is at capacity (max_concurrency={mcfg.max_concurrency}, "
                        f"max_queue={mcfg.max_queue}); retry later",
                        retry_after=1.0,
                        model=name,
                    )
                    break
                rec.attempts += 1
                t = time.perf_counter()
                up.outstanding += 1
                if up.outstanding == 1:  # busy from now (gateway/accounting/utilisation.py)
                    up.busy_since = t
                metrics.inflight(name, up.label, 1)
                settled = False
                keep = False
                try:
                    result = await attempt_fn(up)
                    settled = True
                    keep = keep_slot
                    up.circuit.success()
                    state["endpoint"] = up.index
                    return result
                except _Retry as r:
                    settled = True
                    last = r.err
                    failed = up
                    metrics.upstream_error(name, r.err.code or r.err.type)
                    if attempt < mcfg.retries:
                        await asyncio.sleep(
                            r.delay if r.delay is not None else self._backoff(rt, attempt)
                        )
                        continue
                except _NextModel as n:
                    settled = True
                    last = n.err
                    metrics.upstream_error(name, n.err.code or n.err.type)
                    break
                except UpstreamClientError:
                    settled = True
                    up.circuit.success()
                    raise
                finally:
                    state["upstream_s"] += time.perf_counter() - t
                    if not keep:
                        self._release(up)
                    if not settled:
                        up.circuit.release_probe()
            else:
                continue
        if last is None:
            last = Unavailable("no model could take the request", retry_after=1.0)
        raise last

    def _release(self, up: Upstream) -> None:
        up.outstanding -= 1
        if not up.outstanding:
            up.busy_s += time.perf_counter() - up.busy_since
        up.limiter.release()
        self.gw.metrics.inflight(up.model_name, up.label, -1)

    def _classify(
        self,
        up: Upstream,
        resp_status: int,
        body: bytes,
        retry_after: float | None,
        max_backoff: float,
    ) -> Exception:
        name = up.model_name
        body = up.scrub(body)
        if resp_status < 200 or resp_status in _NO_BODY_STATUS:
            up.circuit.failure()  # no answer can be in it: an upstream fault, not the client's
            return _Retry(
                UpstreamError(
                    f"model {name!r}: the upstream answered HTTP {resp_status}, a status that "
                    "carries no body, instead of an answer; check the endpoint's base_url",
                    model=name,
                )
            )
        msg = _upstream_message(body)
        if resp_status == 429:
            err = RateLimited(
                f"model {name!r} is rate limited upstream (HTTP 429): {msg}",
                retry_after=retry_after,
                model=name,
            )
            if retry_after is not None and retry_after > max_backoff:
                return _NextModel(err)
            return _Retry(err, retry_after)
        if resp_status >= 500 or resp_status == 408:
            up.circuit.failure()
            return _Retry(
                UpstreamError(
                    f"model {name!r} failed upstream with HTTP {resp_status}: {msg}", model=name
                )
            )
        if resp_status in (401, 403, 404):
            up.circuit.failure()
            return _NextModel(
                UpstreamError(
                    f"model {name!r}: the upstream refused the gateway's request with HTTP "
                    f"{resp_status} ({msg}); check the endpoint's api_key and model in the "
                    "routing file",
                    model=name,
                )
            )
        return UpstreamClientError(resp_status, body, name)

    def _transport_error(self, up: Upstream, e: Exception) -> Exception:
        up.circuit.failure()
        name = up.model_name
        if isinstance(e, h1.ResponseTooLarge):  # the same request would bring the same answer
            return _NextModel(
                UpstreamError(
                    f"model {name!r}: the upstream's answer is over {e.limit} bytes, the most "
                    "this gateway reads (server.max_upstream_response_bytes in the routing "
                    "file); raise that setting if answers this large are expected",
                    model=name,
                    code="upstream_response_too_large",
                )
            )
        if isinstance(e, h1.ConnectTimeout):
            return _Retry(
                UpstreamTimeout(f"model {name!r}: connecting to the upstream timed out", model=name)
            )
        if isinstance(e, h1.ReadTimeout | h1.DeadlineExceeded):
            return _NextModel(
                UpstreamTimeout(f"model {name!r}: the upstream did not answer in time", model=name)
            )
        if isinstance(e, h1.ConnectError):
            return _Retry(
                UpstreamError(f"model {name!r}: cannot connect to the upstream ({e})", model=name)
            )
        return _Retry(
            UpstreamError(
                f"model {name!r}: the upstream connection failed ({type(e).__name__})", model=name
            )
        )

    async def _send(
        self,
        up: Upstream,
        path: str,
        body: dict[str, Any],
        stream: bool,
        max_backoff: float,
        payload: bytes | None = None,
        headers: list[tuple[bytes, bytes]] | None = None,
    ) -> h1.H1Response:
        """One attempt on `up`: a 200 response (body read unless streaming), or the exception
        `_attempts` acts on (retry, next model, or the client's own error). `payload` (and
        `headers`): a face's body for an upstream that speaks it, sent as it is."""
        if payload is None:
            payload = self._payload(body, up, stream)
        cap = self.gw.runtime.config.server.max_upstream_response_bytes
        try:
            # total_s bounds the attempt until the headers (streams) or the whole body
            if stream:
                resp = await up.client.stream("POST", path, payload, headers, timeout=up.total_s)
            else:
                resp = await up.client.request(
                    "POST", path, payload, headers, timeout=up.total_s, max_bytes=cap
                )
        except h1.H1Error as e:
            raise self._transport_error(up, e) from None
        if resp.status == 200:
            return resp
        content = resp.content
        if stream:
            try:
                resp.set_max_bytes(cap)  # an error body is read whole: bounded like an answer
                content = await resp.aread()
            except h1.ResponseTooLarge as e:
                raise self._transport_error(up, e) from None
            except h1.H1Error:
                content = b""
            finally:
                await resp.aclose()
        raise self._classify(up, resp.status, content, _retry_after(resp), max_backoff)

    # -- non-streamed ------------------------------------------------------------------
    async def _unary(
        self,
        rt: Runtime,
        plan: Plan,
        body: dict[str, Any],
        path: str,
        rec: RequestRecord,
        ctx: _Ctx,
        send: Send,
        state: dict[str, Any],
        explain: bool,
    ) -> None:
        max_backoff = rt.config.server.max_backoff_s

        # a partial, not a closure: no extra coroutine frame per attempt
        attempt = functools.partial(
            self._json_attempt, path=path, body=body, max_backoff=max_backoff
        )
        data = await self._attempts(rt, plan, rec, state, attempt)
        if "model" in data:
            data["model"] = rec.model
        self._tokens(rec, body, data)
        if state["messages"] is not None:
            state["answer"] = _answer_text(data)
        await self._answer(rt, plan, rec, ctx, send, state, explain, orjson.dumps(data))

    async def _answer(
        self,
        rt: Runtime,
        plan: Plan,
        rec: RequestRecord,
        ctx: _Ctx,
        send: Send,
        state: dict[str, Any],
        explain: bool,
        out: bytes,
    ) -> None:
        """A unary 200 answer: priced, its headers, kept by the cache, committed, sent."""
        self.gw.price(rt, rec)
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", b"%d" % len(out)),
            (b"x-tollgate-cost-usd", pricing.format_usd(rec.cost_usd).encode()),
            *self._headers(rt, plan, rec, explain),
            *state["cache_hdr"],
        ]
        if "limits" in state:  # OpenAI's x-ratelimit-* headers, as on every OpenAI answer
            headers += state["limits"].headers()
        if state["cache"] is not None:
            await self._cache_store(state["cache"], rec, out)
        self._commit(rec, ctx)
        ctx.started = True
        ctx.finished = True
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": out})

    async def _json_attempt(
        self,
        up: Upstream,
        path: str,
        body: dict[str, Any],
        max_backoff: float,
        payload: bytes | None = None,
        headers: list[tuple[bytes, bytes]] | None = None,
    ) -> dict[str, Any]:
        """One non-streamed attempt: the upstream's answer as a JSON object."""
        resp = await self._send(up, path, body, False, max_backoff, payload, headers)
        try:
            data = orjson.loads(resp.content)
            if not isinstance(data, dict):
                raise ValueError
        except (orjson.JSONDecodeError, ValueError):
            up.circuit.failure()
            raise _Retry(
                UpstreamError(
                    f"model {up.model_name!r} returned a body that is not a JSON object",
                    model=up.model_name,
                )
            ) from None
        return data

    async def internal_chat(
        self, rt: Runtime, model: str, body: dict[str, Any], rec: RequestRecord
    ) -> dict[str, Any]:
        """A chat call the gateway makes on its own behalf (the sampled judge's).

        It goes the way client traffic does: endpoint choice, slot limiter, circuit
        breakers, retries; `rec` gets its attempts, usage, latency and cost (the caller
        records it). Raises the `GatewayError` a client would have seen."""
        plan = Plan([model], model, baseline_model=model)
        state: dict[str, Any] = {"upstream_s": 0.0}
        max_backoff = rt.config.server.max_backoff_s
        t0 = time.perf_counter()

        attempt = functools.partial(
            self._json_attempt, path="/chat/completions", body=body, max_backoff=max_backoff
        )
        try:
            data = await self._attempts(rt, plan, rec, state, attempt)
        finally:
            rec.latency_ms = (time.perf_counter() - t0) * 1000.0
            rec.upstream_ms = state["upstream_s"] * 1000.0
            rec.overhead_ms = max(0.0, rec.latency_ms - rec.upstream_ms)
        self._tokens(rec, body, data)
        self.gw.price(rt, rec)
        return data

    def _tokens(self, rec: RequestRecord, body: dict[str, Any], data: dict[str, Any]) -> None:
        """A JSON answer's token counts: its `usage`, else estimated from the text."""
        if not self._usage(rec, data.get("usage")):
            rec.tokens_estimated = True
            rec.prompt_tokens = _estimate_prompt(body)
            rec.completion_tokens = pricing.estimate_tokens(_answer_text(data))

    @staticmethod
    def _usage(rec: RequestRecord, usage: Any) -> bool:
        """Token counts from an upstream's `usage`, in any provider's format (False: none)."""
        got = pricing.read_usage(usage)
        if got is None:
            return False
        rec.prompt_tokens, rec.completion_tokens, rec.cached_tokens, rec.cache_write_tokens = got
        return True

    # -- streamed ----------------------------------------------------------------------
    async def _stream(
        self,
        rt: Runtime,
        plan: Plan,
        body: dict[str, Any],
        path: str,
        rec: RequestRecord,
        ctx: _Ctx,
        send: Send,
        state: dict[str, Any],
        explain: bool,
        t0: float,
    ) -> None:
        max_backoff = rt.config.server.max_backoff_s
        so = body.get("stream_options")
        client_wants_usage = isinstance(so, dict) and so.get("include_usage") is True

        async def attempt(up: Upstream) -> tuple[h1.H1Response, Upstream]:
            return await self._send(up, path, body, True, max_backoff), up

        # Retries and fallback happen only until the upstream accepts the stream: after
        # the first byte reaches the client the answer is committed to that model.
        resp, up = await self._attempts(rt, plan, rec, state, attempt, keep_slot=True)
        public = rec.model or ""
        t_up = time.perf_counter()
        model_pat: bytes | None = None
        model_rep = b'"model":' + orjson.dumps(public)
        max_event = rt.config.server.max_sse_event_bytes
        # the start of an event whose end has not arrived yet, kept as the pieces that came:
        # each byte is looked at once (a 40 MB event with no end cost 4 s and 2.9 GB when
        # the whole buffer was joined and searched again at every read)
        pending: list[bytes] = []
        pending_len = 0
        cr = False  # the last read ended in CR: its LF may come first in the next one
        after_done = 0
        saw_done = False
        usage_seen = False
        kept: list[bytes] = []
        keep_text = state["messages"] is not None
        sent: list[bytes] | None = None if state["cache"] is None else []  # for the cache
        failure: str | None = None
        failure_code: str | None = None  # else stream_interrupted (stream_cut in /metrics)
        try:
            headers = [*_SSE_HEADERS, *self._headers(rt, plan, rec, explain), *state["cache_hdr"]]
            if "limits" in state:  # OpenAI's x-ratelimit-* headers
                headers += state["limits"].headers()
            ctx.started = True
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            async for chunk in resp.aiter_raw():
                if saw_done:
                    # the answer is complete: the rest is read so that the connection is
                    # reused, but not without end
                    after_done += len(chunk)
                    if after_done > max_event:
                        break
                    continue
                if cr:
                    chunk, cr = b"\r" + chunk, False
                if b"\r" in chunk:  # CRLF framing (a raw CR is never inside JSON text)
                    if chunk[-1] == 13:
                        chunk, cr = chunk[:-1], True
                    chunk = chunk.replace(b"\r\n", b"\n")
                # where the last complete event ends: in this read, or at its first byte
                # when the event before it ended in LF
                end = chunk.rfind(b"\n\n") + 2
                if end == 1:
                    end = int(chunk[:1] == b"\n" and bool(pending) and pending[-1][-1] == 10)
                if not end:
                    if chunk:
                        pending.append(chunk)
                        pending_len += len(chunk)
                        if pending_len > max_event:
                            break
                    continue
                # every complete event that has arrived, forwarded as one block
                if pending:
                    pending.append(chunk[:end])
                    block = b"".join(pending)
                    pending, pending_len = [], 0
                else:
                    block = chunk[:end]  # the whole read, most often: no copy
                rest = chunk[end:]
                if model_pat is None:
                    m = _MODEL_RE.search(block)
                    if m:
                        model_pat = m.group(0)
                if model_pat is not None:
                    # every event names the model once; inside JSON text a quote is escaped,
                    # so the pattern cannot match there
                    block = block.replace(model_pat, model_rep)
                m = _USAGE_OBJ.search(block)
                if m is None:
                    head, tail = block, b""
                else:  # events before the one holding the usage object take the fast path
                    i = block.rfind(b"\n\n", 0, m.start())
                    head, tail = block[: i + 2 if i >= 0 else 0], block[i + 2 if i >= 0 else 0 :]
                out: list[bytes] = []
                if head:
                    # content deltas, maybe [DONE]: forwarded as they are, no per-event work
                    if b"[DONE]" in head and _has_done(head):
                        saw_done = True
                    if not usage_seen or keep_text:
                        kept.append(head)
                    out.append(head)
                # from the usage object on, event by event: to record it and to drop the
                # usage-only chunk the client did not ask for
                for ev in tail.split(b"\n\n") if tail else ():
                    if not ev:
                        continue
                    if ev.startswith(_DONE_EV) or ev.startswith(_DONE_EV2):
                        saw_done = True
                        out.append(_DONE)
                        continue
                    if _USAGE_OBJ.search(ev):
                        drop = self._stream_usage(rec, ev, client_wants_usage)
                        usage_seen = (
                            usage_seen or rec.prompt_tokens > 0 or rec.completion_tokens > 0
                        )
                        if drop:
                            continue
                    if not usage_seen or keep_text:
                        kept.append(ev)
                    out.append(ev + b"\n\n")
                if out:
                    if rec.ttft_ms is None:
                        rec.ttft_ms = (time.perf_counter() - t0) * 1000.0
                    body_out = out[0] if len(out) == 1 else b"".join(out)
                    if sent is not None:
                        sent.append(body_out)
                    if saw_done:  # the answer is whole: its record is final before [DONE] goes
                        self._settle_stream(rt, rec, body, kept, keep_text, usage_seen, state)
                        self._commit(rec, ctx, state["upstream_s"] + time.perf_counter() - t_up)
                        if sent is not None:
                            answer = b"".join(sent)
                            has_usage = client_wants_usage and usage_seen
                            await self._cache_store(state["cache"], rec, answer, has_usage)
                    await send({"type": "http.response.body", "body": body_out, "more_body": True})
                if saw_done:
                    await self._end_stream(ctx, send)
                    after_done = len(rest)
                    if after_done > max_event:
                        break
                elif rest:  # the start of the next event
                    pending.append(rest)
                    pending_len = len(rest)
                    if pending_len > max_event:
                        break
            if pending_len > max_event:
                failure_code = "upstream_event_too_large"
                failure = _event_too_large(max_event)
            elif not saw_done:
                failure = "the upstream closed the stream before [DONE]"
        except h1.ReadTimeout:
            if not saw_done:  # after [DONE] the client has its whole answer
                failure = "the upstream stopped sending (read timeout)"
        except h1.H1Error as e:
            if not saw_done:
                failure = f"the upstream connection broke mid-stream ({type(e).__name__})"
        finally:
            state["upstream_s"] += time.perf_counter() - t_up
            await resp.aclose()
            self._release(up)
        if not ctx.committed:  # no [DONE]: the stream was cut
            self._settle_stream(rt, rec, body, kept, keep_text, usage_seen, state)
        if failure is not None:
            err = self._cut(rec, ctx, up, failure, failure_code)
            await send({"type": "http.response.body", "body": b"data: " + err.body() + b"\n\n"})
        else:
            await self._end_stream(ctx, send)

    def _cut(
        self, rec: RequestRecord, ctx: _Ctx, up: Upstream, failure: str, code: str | None
    ) -> UpstreamError:
        """A stream the upstream cut short: counted against it, the record final (502); the
        error that ends the client's stream."""
        up.circuit.failure()
        self.gw.metrics.upstream_error(up.model_name, code or "stream_cut")
        rec.status = 502
        rec.error_type = "upstream_error"
        self._commit(rec, ctx)
        ctx.finished = True
        return UpstreamError(
            f"model {up.model_name!r}: {failure}; the answer above is incomplete",
            code=code or "stream_interrupted",
        )

    def _settle_stream(
        self,
        rt: Runtime,
        rec: RequestRecord,
        body: dict[str, Any],
        kept: list[bytes],
        keep_text: bool,
        usage_seen: bool,
        state: dict[str, Any],
    ) -> None:
        """A finished or cut stream's tokens (estimated when the upstream sent no usage),
        answer text for the judge, and price: before the record is committed."""
        text = None
        if kept and (keep_text or not usage_seen):
            text = _stream_text(kept)
        if not usage_seen:
            rec.tokens_estimated = True
            rec.prompt_tokens = _estimate_prompt(body)
            rec.completion_tokens = pricing.estimate_tokens(text or "")
        if keep_text:
            state["answer"] = text
        self.gw.price(rt, rec)

    @staticmethod
    async def _end_stream(ctx: _Ctx, send: Send) -> None:
        """End the client's response once (at [DONE]: a client that hangs up as soon as it
        has [DONE] must not turn a complete answer into a cancelled request)."""
        if not ctx.finished:
            ctx.finished = True
            await send({"type": "http.response.body", "body": b""})

    @staticmethod
    def _stream_usage(rec: RequestRecord, ev: bytes, client_wants_usage: bool) -> bool:
        """Record usage from a chunk; True if the chunk exists only because we asked for it."""
        try:
            data = orjson.loads(ev[5:].lstrip() if ev.startswith(b"data:") else ev)
        except orjson.JSONDecodeError:
            return False
        if not isinstance(data, dict):
            return False
        usage = data.get("usage")
        if isinstance(usage, dict):
            Proxy._usage(rec, usage)
        return not client_wants_usage and isinstance(usage, dict) and not data.get("choices")

    # -- API faces (gateway/api/face.py) -------------------------------------------------
    async def _face(
        self,
        face: Face,
        rt: Runtime,
        plan: Plan,
        body: dict[str, Any],
        native: dict[str, Any],
        rec: RequestRecord,
        ctx: _Ctx,
        send: Send,
        state: dict[str, Any],
        explain: bool,
        scope: Scope,
    ) -> None:
        """A face's request: each attempt goes to its upstream in the face's own API when the
        endpoint speaks it (`api:`), else translated to chat; the answer comes back in the
        face's form, unary or streamed."""
        max_backoff = rt.config.server.max_backoff_s
        stream = rec.stream
        api = face.native_api
        hdrs = face.native_headers(scope["headers"]) if api is not None else None

        async def attempt(up: Upstream) -> tuple[Any, Upstream, bool]:
            is_native = api is not None and api in up.apis
            path = face.native_path if is_native else "/chat/completions"
            payload = face.native_body(native, up.upstream_model) if is_native else None
            headers = hdrs if is_native else None
            if stream:
                r = await self._send(up, path, body, True, max_backoff, payload, headers)
                return r, up, is_native
            data = await self._json_attempt(up, path, body, max_backoff, payload, headers)
            return data, up, is_native

        got, up, is_native = await self._attempts(rt, plan, rec, state, attempt, stream)
        public = rec.model or ""
        if stream:
            conv = face.native_stream(public) if is_native else face.chat_stream(public, body)
            await self._face_stream(rt, plan, body, rec, ctx, send, state, explain, got, up, conv)
            return
        if is_native:
            usage, text = face.native_answer(got, public)
            self._face_usage(rec, body, usage, text)
            answer = got
        else:
            if "model" in got:
                got["model"] = public
            self._tokens(rec, body, got)
            text = _answer_text(got) if state["messages"] is not None else ""
            answer = face.from_chat(got, public)
        if state["messages"] is not None:
            state["answer"] = text
        await face.finish(answer)
        await self._answer(rt, plan, rec, ctx, send, state, explain, orjson.dumps(answer))

    @staticmethod
    def _face_usage(
        rec: RequestRecord, body: dict[str, Any], usage: Usage | None, text: str
    ) -> None:
        """A face answer's tokens: the usage its upstream reported, else estimated."""
        if usage is None:
            rec.tokens_estimated = True
            rec.prompt_tokens = _estimate_prompt(body)
            rec.completion_tokens = pricing.estimate_tokens(text)
            return
        rec.prompt_tokens = usage.prompt_tokens
        rec.completion_tokens = usage.completion_tokens
        rec.cached_tokens = usage.cached_tokens
        rec.cache_write_tokens = usage.cache_write_tokens

    async def _face_stream(
        self,
        rt: Runtime,
        plan: Plan,
        body: dict[str, Any],
        rec: RequestRecord,
        ctx: _Ctx,
        send: Send,
        state: dict[str, Any],
        explain: bool,
        resp: h1.H1Response,
        up: Upstream,
        conv: StreamConverter,
    ) -> None:
        """A face's stream: each complete upstream event converted as it arrives; the record
        is final before the converted answer's last event goes out."""
        state["conv"] = conv
        t_up = time.perf_counter()
        max_event = rt.config.server.max_sse_event_bytes
        framer = SSEFramer(max_event)
        sent: list[bytes] | None = None if state["cache"] is None else []
        after_done = 0
        failure: str | None = None
        failure_code: str | None = None
        try:
            headers = [*_SSE_HEADERS, *self._headers(rt, plan, rec, explain), *state["cache_hdr"]]
            if "limits" in state:
                headers += state["limits"].headers()
            ctx.started = True
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            async for chunk in resp.aiter_raw():
                if conv.done:  # read on for connection reuse, but not without end
                    after_done += len(chunk)
                    if after_done > max_event:
                        break
                    continue
                out = b"".join([conv.feed(ev) for ev in framer.feed(chunk)])
                if conv.done:
                    out += await conv.finish()
                if out:
                    if rec.ttft_ms is None:
                        rec.ttft_ms = (time.perf_counter() - ctx.t0) * 1000.0
                    if sent is not None:
                        sent.append(out)
                if conv.done:  # the answer is whole: its record is final before it goes out
                    self._settle_face(rt, rec, body, conv, state)
                    self._commit(rec, ctx, state["upstream_s"] + time.perf_counter() - t_up)
                    if sent is not None:
                        await self._cache_store(state["cache"], rec, b"".join(sent), False)
                if out:
                    await send({"type": "http.response.body", "body": out, "more_body": True})
                if conv.done:
                    await self._end_stream(ctx, send)
            if not conv.done:
                failure = "the upstream closed the stream before the answer's end"
        except EventTooLarge:
            failure_code = "upstream_event_too_large"
            failure = _event_too_large(max_event)
        except h1.ReadTimeout:
            if not conv.done:
                failure = "the upstream stopped sending (read timeout)"
        except h1.H1Error as e:
            if not conv.done:
                failure = f"the upstream connection broke mid-stream ({type(e).__name__})"
        finally:
            state["upstream_s"] += time.perf_counter() - t_up
            await resp.aclose()
            self._release(up)
        if not ctx.committed:
            self._settle_face(rt, rec, body, conv, state)
        if failure is not None:
            err = self._cut(rec, ctx, up, failure, failure_code)
            await send({"type": "http.response.body", "body": conv.error(err)})
        else:
            await self._end_stream(ctx, send)

    def _settle_face(
        self,
        rt: Runtime,
        rec: RequestRecord,
        body: dict[str, Any],
        conv: StreamConverter,
        state: dict[str, Any],
    ) -> None:
        """A face stream's tokens (estimated when the upstream sent no usage), answer text for
        the judge, and price: before the record is committed."""
        u = conv.usage
        text = conv.text() if u is None or state["messages"] is not None else ""
        self._face_usage(rec, body, u, text)
        if state["messages"] is not None:
            state["answer"] = text
        self.gw.price(rt, rec)

    # -- POST /v1/messages/count_tokens ----------------------------------------------------
    async def count_tokens(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The input tokens of a Messages request: asked of the model's upstream when it is
        Anthropic-style, else the gateway's own estimate, labelled as one (the field
        `tollgate_estimate: true` and the header x-tollgate-token-estimate: 1). Not recorded:
        nothing is generated."""
        gw = self.gw
        rt = gw.runtime
        rid = new_request_id()
        extra: list[tuple[bytes, bytes]] = [(b"x-tollgate-request-id", rid.encode())]
        try:
            auth = b""
            for k, v in scope["headers"]:
                if k == b"authorization" or (k == b"x-api-key" and not auth):
                    auth = v if k == b"authorization" else b"bearer " + v
            key = self._authenticate(auth) if gw.keys.required else None
            raw = await self._read_body(receive, rt.config.server.max_body_bytes)
            try:
                body = orjson.loads(raw)
            except orjson.JSONDecodeError as e:
                raise _not_json(raw, e) from None
            anthropic.check_common(body)
            model = body["model"]
            if key is not None and key.models is not None and model not in key.models:
                raise PermissionDenied(
                    f"the gateway key {key.id!r} may not call model {model[:80]!r}",
                    param="model",
                )
            chat = anthropic.to_chat({**body, "max_tokens": 1})
            plan = rt.resolve(model, "messages", chat, rid, None if key is None else key.id)
            name = plan.models[0]
            extra.append((b"x-tollgate-model", name.encode()))
            up = next((u for u in rt.upstreams[name] if u.api == anthropic.ANTHROPIC_API), None)
            if up is None:
                n = _estimate_prompt(chat)
                if chat.get("tools"):
                    n += pricing.estimate_tokens(orjson.dumps(chat["tools"]).decode())
                out = orjson.dumps({"input_tokens": n, "tollgate_estimate": True})
                extra.append((b"x-tollgate-token-estimate", b"1"))
                status = 200
            else:
                payload = orjson.dumps({**body, "model": up.upstream_model})
                try:
                    resp = await up.client.request(
                        "POST",
                        "/messages/count_tokens",
                        payload,
                        anthropic.MESSAGES.native_headers(scope["headers"]),
                        timeout=up.total_s,
                        max_bytes=rt.config.server.max_upstream_response_bytes,
                    )
                except h1.H1Error as e:
                    raise UpstreamError(
                        f"model {name!r}: counting tokens upstream failed ({type(e).__name__})",
                        model=name,
                    ) from None
                status, out = resp.status, up.scrub(resp.content)
        except GatewayError as e:
            status, out = e.status, anthropic.error_json(e)
            extra += e.headers()
        except _Aborted:
            return
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", b"%d" % len(out)),
            *extra,
        ]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": out})


def _not_json(raw: bytes, e: orjson.JSONDecodeError) -> InvalidRequest:
    """The 400 for a body orjson refused: a bad byte named by its offset when the body is
    not UTF-8 (orjson would say "surrogates not allowed ... (char 0)"), else orjson's
    line and column."""
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as u:
        return InvalidRequest(
            f"the request body is not valid UTF-8: byte 0x{raw[u.start]:02x} at byte offset "
            f"{u.start} {_utf8_reason(u.reason)}; JSON must be sent as UTF-8, so encode "
            "the text as UTF-8 before sending it (in Python: json.dumps(body).encode('utf-8'))",
            code="invalid_utf8",
        )
    return InvalidRequest(
        f"the request body is not valid JSON ({e}); send one JSON object such as "
        '{"model": "auto", "messages": [{"role": "user", "content": "Hello"}]}',
        code="invalid_json",
    )


def _utf8_reason(reason: str) -> str:
    return {
        "invalid start byte": "cannot start a UTF-8 character",
        "invalid continuation byte": "starts a UTF-8 character that the bytes after it do not "
        "complete",
        "unexpected end of data": "starts a UTF-8 character that the body ends in the middle of",
    }.get(reason, f"is not valid there ({reason})")


def _event_too_large(max_event: int) -> str:
    return (
        f"an event of the upstream's stream is over {max_event} bytes, the most this gateway "
        "holds (server.max_sse_event_bytes in the routing file; raise it if events this large "
        "are expected)"
    )


def _has_done(block: bytes) -> bool:
    """Whether a block of complete SSE events holds the [DONE] event: at an event's start
    (the text `data: [DONE]` inside a JSON string is not one)."""
    b = b"\n\n" + block
    return b"\n\n" + _DONE_EV in b or b"\n\n" + _DONE_EV2 in b


def _max_cost(v: bytes) -> float:
    """The client's cost ceiling (x-tollgate-max-cost-usd), in USD."""
    try:
        x = float(v)
    except ValueError:
        x = float("nan")
    if not x >= 0 or x == float("inf"):
        raise InvalidRequest(
            "x-tollgate-max-cost-usd must be a non-negative number of US dollars, such as "
            f"0.002 (got {v.decode('latin-1')!r})",
            param="x-tollgate-max-cost-usd",
        )
    return x


def _min_quality(v: bytes) -> float:
    """The client's quality floor (x-tollgate-min-quality): a predicted quality, 0 to 1."""
    try:
        x = float(v)
    except ValueError:
        x = float("nan")
    if not 0.0 <= x <= 1.0:
        raise InvalidRequest(
            "x-tollgate-min-quality must be a number from 0 to 1, the router's predicted "
            f"chance of an acceptable answer, such as 0.6 (got {v.decode('latin-1')[:40]!r})",
            param="x-tollgate-min-quality",
        )
    return x


def _estimate_prompt(body: dict[str, Any]) -> int:
    if "messages" in body:
        return pricing.estimate_prompt_tokens(body["messages"])
    p = body.get("prompt", body.get("input", ""))
    return pricing.estimate_tokens(p if isinstance(p, str) else orjson.dumps(p).decode())


def _answer_text(data: dict[str, Any]) -> str:
    parts: list[str] = []
    for ch in data.get("choices") or []:
        if not isinstance(ch, dict):
            continue
        msg = ch.get("message")
        if isinstance(msg, dict):
            if isinstance(msg.get("content"), str):
                parts.append(msg["content"])
            for tc in msg.get("tool_calls") or []:
                fn = tc.get("function") if isinstance(tc, dict) else None
                if isinstance(fn, dict) and isinstance(fn.get("arguments"), str):
                    parts.append(fn["arguments"])
        elif isinstance(ch.get("text"), str):
            parts.append(ch["text"])
    return "".join(parts)


def _stream_text(events: list[bytes]) -> str:
    out: list[str] = []
    for ev in events:
        for m in _CONTENT_RE.finditer(ev):
            try:
                out.append(orjson.loads(b'"' + m.group(1) + b'"'))
            except orjson.JSONDecodeError:
                continue
    return "".join(out)


# Re-exported for the app's fallback error handler.
__all__ = ["FACES", "HOT_PATHS", "Proxy", "error_body"]
