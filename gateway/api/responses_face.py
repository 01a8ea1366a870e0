"""POST /v1/responses on the hot path: one `ResponsesCall` per request.

The proxy routes, retries, prices and records a Responses request as the chat request it
translates to (`gateway/api/responses.py`); per attempt, an endpoint that declares
`responses: true` gets the Responses request itself instead (passed through: the gateway
only swaps in the upstream's model name, and reads the usage back). With
`responses.store: true` the call loads the conversation `previous_response_id` continues
(kept for the same key only) and keeps the answer (`gateway/api/response_store.py`).
"""

from __future__ import annotations

import logging
from typing import Any

import orjson

from gateway.api import responses as R
from gateway.api.response_store import ResponseStore, ResponseStoreError
from gateway.errors import InvalidRequest, NotFound, Unavailable

log = logging.getLogger("tollgate.responses")

STORE_OFF = (
    "this gateway does not keep responses, so previous_response_id cannot be used: send "
    "the whole conversation in input, or ask the operator to turn it on in the routing file "
    "with `responses: {store: true}`"
)


def not_found(resp_id: str, param: str | None = None) -> NotFound:
    shown = resp_id if len(resp_id) <= 80 else resp_id[:77] + "..."
    return NotFound(
        f"no response with id {shown!r} is kept for this key (it may be another key's, "
        "deleted, or past responses.retention_days)",
        param=param,
    )


def store_error(e: ResponseStoreError) -> Unavailable:
    log.error("responses store: %s", e)
    return Unavailable("the gateway's responses store cannot be reached; retry later",
                       retry_after=1.0, code="store_unavailable")  # fmt: skip


class ResponsesCall:
    """A Responses request on its way: its chat form, and what an answer turns into."""

    __slots__ = ("body", "chat", "created", "history", "key", "rid", "store")

    def __init__(
        self,
        body: dict[str, Any],
        request_id: str,
        key: str,
        store: ResponseStore | None,
        history: list[Any],
        created: float,
    ) -> None:
        self.body = body
        self.rid = R.response_id(request_id)
        self.key = key
        self.store = store
        self.history = history
        self.created = created
        self.chat = R.to_chat(body, history)

    @classmethod
    async def start(
        cls, body: dict[str, Any], request_id: str, key_id: str | None, store: ResponseStore | None
    ) -> ResponsesCall:
        """The call for a checked body: the stored conversation it continues loaded (a 400
        when the store is off, a 404 when this key has no such response)."""
        key = key_id or ""
        history: list[Any] = []
        prev = body.get("previous_response_id")
        if prev:
            if store is None:
                raise InvalidRequest(STORE_OFF, param="previous_response_id")
            try:
                got = await store.get(key, prev)
            except ResponseStoreError as e:
                raise store_error(e) from None
            if got is None:
                raise not_found(prev, "previous_response_id")
            history = got[1]
        return cls(body, request_id, key, store, history, R.now())

    # -- an attempt -------------------------------------------------------------------------
    def payload(self, native: bool, upstream_model: str, stream: bool) -> tuple[str, bytes]:
        """The upstream path and body of one attempt: the Responses request itself for an
        endpoint that speaks it (its history spelled out: the upstream does not know the
        gateway's ids), else the chat request."""
        if native:
            out = dict(self.body)
            out["model"] = upstream_model
            if self.history:
                out["input"] = [*self.history, *R.items_of(self.body)]
                out.pop("previous_response_id", None)
            return "/responses", orjson.dumps(out)
        out = dict(self.chat)
        out["model"] = upstream_model
        if stream:
            out["stream_options"] = {"include_usage": True}
        return "/chat/completions", orjson.dumps(out)

    # -- the answer -------------------------------------------------------------------------
    def answer(self, data: dict[str, Any], native: bool, model: str) -> dict[str, Any]:
        """The client's Response from an upstream's answer (chat, or a native Response)."""
        if native:
            data["id"] = self.rid
            data["model"] = model
            if self.body.get("previous_response_id"):
                data["previous_response_id"] = self.body["previous_response_id"]
            return data
        return R.to_response(data, self.body, self.rid, model, self.created)

    def translator(self, model: str) -> R.StreamTranslator:
        return R.StreamTranslator(self.body, self.rid, model, self.created)

    async def keep(self, resp: dict[str, Any]) -> None:
        """Keep a complete answer for previous_response_id and GET, when the store is on and
        the request did not say store: false; the Response's `store` says whether it was."""
        if self.store is None or self.body.get("store") is False:
            resp["store"] = False
            return
        items = R.conversation(self.history, self.body, resp)
        resp["store"] = True
        try:
            kept = await self.store.put(self.key, self.rid, resp, items)
        except ResponseStoreError as e:
            log.error("responses store: %s; %s not kept", e, self.rid)
            kept = False
        if not kept:
            resp["store"] = False


def chat_view(resp: dict[str, Any]) -> dict[str, Any]:
    """A native Response as the chat answer the proxy records: its usage in chat's names, and
    its text for an estimate when it has none."""
    out: dict[str, Any] = {
        "choices": [{"message": {"role": "assistant", "content": R.output_text(resp)}}]
    }
    u = resp.get("usage")
    if isinstance(u, dict) and isinstance(u.get("input_tokens"), int):
        d = u.get("input_tokens_details")
        out["usage"] = {
            "prompt_tokens": u["input_tokens"],
            "completion_tokens": u.get("output_tokens") or 0,
            "prompt_tokens_details": {
                "cached_tokens": (d.get("cached_tokens") or 0) if isinstance(d, dict) else 0
            },
        }
    return out
