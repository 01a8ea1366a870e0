"""POST /v1/responses as an API face (gateway/api/face.py).

The proxy routes, retries, limits, prices and records a Responses request as the chat
request it translates to (`gateway/api/responses.py`); per attempt, an endpoint that
declares `responses: true` gets the Responses request itself instead (passed through: the
gateway swaps in the upstream's model name, spells out a stored history, and reads the
usage back). With `responses.store: true`, `begin` loads the conversation that
`previous_response_id` continues (kept for the same key only) and `finish` keeps the
answer before its last byte goes out (`gateway/api/response_store.py`), so the next turn
finds it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import orjson

from gateway.api import responses as R
from gateway.api.face import Usage, read_usage, sse_data, sse_object
from gateway.api.response_store import ResponseStore, ResponseStoreError
from gateway.errors import GatewayError, InvalidRequest, NotFound, Unavailable

log = logging.getLogger("tollgate.responses")

STORE_OFF = (
    "this gateway does not keep responses, so previous_response_id cannot be used: send "
    "the whole conversation in input, or ask the operator to turn it on in the routing file "
    "with `responses: {store: true}`"
)
_ENDS = ("response.completed", "response.incomplete", "response.failed")


def not_found(resp_id: str, param: str | None = None) -> NotFound:
    shown = resp_id if len(resp_id) <= 80 else resp_id[:77] + "..."
    return NotFound(
        f"no response with id {shown!r} is kept for this key (it may be another key's, "
        "deleted, or past responses.retention_days)",
        param=param,
    )


class ResponsesFace:
    """The face: stateless; `begin` gives each request its `ResponsesCall`."""

    kind = "responses"
    native_api: str | None = "responses"  # an endpoint with responses: true
    native_path = "/responses"

    def check(self, body: Any) -> None:
        R.check(body)

    async def begin(
        self, body: dict[str, Any], request_id: str, key_id: str | None, gw: Any
    ) -> ResponsesCall:
        """This request's call, with the stored conversation it continues loaded (a 400 when
        the gateway keeps none, a 404 when this key has no such response)."""
        store: ResponseStore | None = gw.responses_store
        key = key_id or ""
        history: list[Any] = []
        prev = body.get("previous_response_id")
        if prev:
            if store is None:
                raise InvalidRequest(STORE_OFF, param="previous_response_id")
            try:
                got = await store.get(key, prev)
            except ResponseStoreError as e:
                log.error("responses store: %s", e)
                raise Unavailable(
                    "the gateway's responses store cannot be read; retry later",
                    retry_after=1.0,
                    code="store_unavailable",
                ) from None
            if got is None:
                raise not_found(prev, "previous_response_id")
            history = got[1]
        return ResponsesCall(body, request_id, key, store, history)

    # what a face must answer before `begin` (a body that fails its checks)
    def error_body(self, e: GatewayError) -> bytes:
        return e.body()  # OpenAI's error format, as for chat

    def to_chat(self, body: dict[str, Any]) -> dict[str, Any]:
        return R.to_chat(body)

    def from_chat(self, data: dict[str, Any], model: str) -> dict[str, Any]:
        raise NotImplementedError("a Responses request is served by its ResponsesCall")

    def chat_stream(self, model: str, chat: dict[str, Any]) -> ChatToResponses:
        raise NotImplementedError("a Responses request is served by its ResponsesCall")

    def native_body(self, body: dict[str, Any], upstream_model: str) -> bytes:
        raise NotImplementedError("a Responses request is served by its ResponsesCall")

    def native_headers(self, headers: Iterable[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
        return []  # the endpoint's own key is the pool's constant header

    def native_answer(self, data: dict[str, Any], model: str) -> tuple[Usage | None, str]:
        raise NotImplementedError("a Responses request is served by its ResponsesCall")

    def native_stream(self, model: str) -> NativeResponses:
        raise NotImplementedError("a Responses request is served by its ResponsesCall")

    async def finish(self, answer: dict[str, Any]) -> None:
        return None


class ResponsesCall(ResponsesFace):
    """One Responses request: its chat form, the history it continues, where it is kept."""

    def __init__(
        self,
        body: dict[str, Any],
        request_id: str,
        key: str,
        store: ResponseStore | None,
        history: list[Any],
    ) -> None:
        self.body = body
        self.rid = R.response_id(request_id)
        self.key = key
        self.store = store
        self.history = history
        self.created = R.now()
        self.chat = R.to_chat(body, history)

    def to_chat(self, body: dict[str, Any]) -> dict[str, Any]:
        return self.chat

    def from_chat(self, data: dict[str, Any], model: str) -> dict[str, Any]:
        return R.to_response(data, self.body, self.rid, model, self.created)

    def chat_stream(self, model: str, chat: dict[str, Any]) -> ChatToResponses:
        return ChatToResponses(self, R.StreamTranslator(self.body, self.rid, model, self.created))

    def native_body(self, body: dict[str, Any], upstream_model: str) -> bytes:
        """The client's request for an endpoint that speaks Responses: the upstream's model
        name, and a stored history spelled out (the upstream does not know the gateway's
        ids)."""
        out = dict(body)
        out["model"] = upstream_model
        if self.history:
            out["input"] = [*self.history, *R.items_of(body)]
            out.pop("previous_response_id", None)
        return orjson.dumps(out)

    def native_answer(self, data: dict[str, Any], model: str) -> tuple[Usage | None, str]:
        self.public(data, model)
        return read_usage(data.get("usage")), R.output_text(data)

    def public(self, resp: dict[str, Any], model: str) -> None:
        """An upstream's Response as the client knows it: the public model name, the
        gateway's id (what GET and previous_response_id take)."""
        resp["id"] = self.rid
        resp["model"] = model
        if self.body.get("previous_response_id"):
            resp["previous_response_id"] = self.body["previous_response_id"]

    def native_stream(self, model: str) -> NativeResponses:
        return NativeResponses(self, model)

    async def finish(self, answer: dict[str, Any]) -> None:
        """Keep a whole answer for previous_response_id and GET, when the store is on and
        the request did not say store: false; its `store` field says whether it was."""
        if self.store is None or self.body.get("store") is False:
            answer["store"] = False
            return
        items = R.conversation(self.history, self.body, answer)
        answer["store"] = True
        try:
            kept = await self.store.put(self.key, self.rid, answer, items)
        except ResponseStoreError as e:
            log.error("responses store: %s; %s not kept", e, self.rid)
            kept = False
        if not kept:
            answer["store"] = False


class ChatToResponses:
    """A chat stream in, the Responses event stream out (`responses.StreamTranslator`); its
    closing events wait in `finish` until the answer is kept."""

    __slots__ = ("call", "done", "started", "tr", "usage")

    def __init__(self, call: ResponsesCall, tr: R.StreamTranslator) -> None:
        self.call = call
        self.tr = tr
        self.done = False
        self.started = False
        self.usage: Usage | None = None

    def feed(self, event: bytes) -> bytes:
        data = sse_data(event)
        if data is None or self.done:
            return b""
        head = b""
        if not self.started:
            self.started = True
            head = self.tr.start()
        if data == b"[DONE]":
            self.done = True
            return head
        chunk = sse_object(data)
        if chunk is None:
            return head
        u = chunk.get("usage")
        if u is not None:
            self.usage = read_usage(u)
        return head + self.tr.feed(chunk) if head else self.tr.feed(chunk)

    def text(self) -> str:
        return R.output_text(self.tr.response())

    async def finish(self) -> bytes:
        out = self.tr.close()
        final = self.tr.response()
        await self.call.finish(final)
        return out + self.tr.completed(final)

    def error(self, e: GatewayError) -> bytes:
        return self.tr.error(e.message, e.code or "stream_interrupted")


class NativeResponses:
    """An upstream's own Responses event stream, passed on event by event with the public
    model name and the gateway's response id; its final event (response.completed,
    .incomplete or .failed) waits in `finish` until the answer is kept."""

    __slots__ = ("call", "done", "final", "kind", "last", "model", "seq", "usage")

    def __init__(self, call: ResponsesCall, model: str) -> None:
        self.call = call
        self.model = model
        self.done = False
        self.usage: Usage | None = None
        self.final: dict[str, Any] = {}
        self.last: dict[str, Any] = {}
        self.kind = ""
        self.seq = 0

    def feed(self, event: bytes) -> bytes:
        data = sse_data(event)
        if data is None or self.done:
            return b""
        ev = sse_object(data)
        if ev is None:
            return b""
        if isinstance(ev.get("sequence_number"), int):
            self.seq = ev["sequence_number"] + 1
        r = ev.get("response")
        if isinstance(r, dict):
            self.call.public(r, self.model)
        kind = ev.get("type")
        if kind in _ENDS:
            self.done = True
            self.final = r if isinstance(r, dict) else {}
            self.usage = read_usage(self.final.get("usage"))
            self.last, self.kind = ev, str(kind)
            return b""
        return R.named_event(kind, ev)

    def text(self) -> str:
        return R.output_text(self.final)

    async def finish(self) -> bytes:
        if self.kind != "response.failed":
            await self.call.finish(self.final)
        return R.named_event(self.kind, self.last)

    def error(self, e: GatewayError) -> bytes:
        return R.error_event(self.seq, e.message, e.code or "stream_interrupted")


RESPONSES = ResponsesFace()
