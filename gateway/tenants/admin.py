"""The admin API, master key only: `POST /admin/keys` (create; the answer holds the key, once),
`GET /admin/keys` (list, never a hash) and `DELETE /admin/keys/{id}` (revoke).

The change goes to the key store (every replica reads it within auth.refresh_interval_s)
and into this replica's key table at once.
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import Response

from gateway.errors import error_body
from gateway.tenants.auth import master_only
from gateway.tenants.keys import KeyStoreError, create_key


def _json(body: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")


def _bad(status: int, message: str, code: str, param: str | None = None) -> Response:
    type_ = "invalid_request_error" if status < 500 else "service_unavailable"
    return Response(
        error_body(message, type_, param, code), status_code=status, media_type="application/json"
    )


def _no_store() -> Response:
    return _bad(
        503,
        "this gateway has no key store (store.sqlite_path is :memory:); keys can only be "
        "listed in the routing file (auth.keys)",
        "key_store_unavailable",
    )


async def _refresh(gw: Any) -> None:
    gw.key_refresher.apply(await gw.key_refresher.fetch_async())


async def create(request: Request) -> Response:
    who = master_only(request, "POST /admin/keys")
    if isinstance(who, Response):
        return who
    gw = request.app.state.gw
    if gw.key_refresher.store is None:
        return _no_store()
    try:
        body = orjson.loads(await request.body())
    except orjson.JSONDecodeError:
        body = None
    if not isinstance(body, dict) or not isinstance(body.get("name"), str):
        return _bad(
            400,
            'send a JSON object with "name" (the key id) and optional rpm, tpm, budget_usd, '
            "budget_window (day|week|month), models (a list of model names)",
            "invalid_request",
            "name",
        )
    name = body.pop("name")
    if name in {k.id for k in gw.config.auth.keys}:
        return _bad(409, f"{name!r} is a key of the routing file; choose another name", "conflict")
    try:
        key, stored = await asyncio.to_thread(create_key, gw.key_refresher.store, name, body)
    except ValueError as e:
        return _bad(400, str(e), "invalid_request")
    except KeyStoreError as e:
        status = 409 if "exists" in str(e) or "reserved" in str(e) else 503
        return _bad(status, str(e), "conflict" if status == 409 else "key_store_unavailable")
    await _refresh(gw)
    return _json({"object": "gateway_key", "key": key, **stored.public()}, 201)


async def listing(request: Request) -> Response:
    who = master_only(request, "GET /admin/keys")
    if isinstance(who, Response):
        return who
    gw = request.app.state.gw
    stored = []
    if gw.key_refresher.store is not None:
        try:
            stored = await asyncio.to_thread(gw.key_refresher.store.all)
        except KeyStoreError as e:
            return _bad(503, str(e), "key_store_unavailable")
    data = [{**s.public(), "source": "key_store"} for s in stored]
    data += [{"id": k.id, "source": "routing_file"} for k in gw.config.auth.keys]
    return _json({"object": "list", "data": data})


async def revoke(request: Request) -> Response:
    who = master_only(request, "DELETE /admin/keys")
    if isinstance(who, Response):
        return who
    gw = request.app.state.gw
    key_id = request.path_params["key_id"]
    if gw.key_refresher.store is None:
        return _no_store()
    try:
        done = await asyncio.to_thread(gw.key_refresher.store.revoke, key_id)
    except KeyStoreError as e:
        return _bad(503, str(e), "key_store_unavailable")
    if not done:
        return _bad(
            404,
            f"no active key {key_id[:80]!r} in the key store (routing-file keys are removed "
            "from the routing file)",
            "key_not_found",
        )
    await _refresh(gw)
    return _json({"object": "gateway_key", "id": key_id, "revoked": True})


def mount(app: FastAPI) -> None:
    app.add_route("/admin/keys", create, methods=["POST"])
    app.add_route("/admin/keys", listing, methods=["GET"])
    app.add_route("/admin/keys/{key_id}", revoke, methods=["DELETE"])
