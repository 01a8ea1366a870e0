"""GET /dashboard: the live cost dashboard (one self-contained page, assets in this package).

Routes: `/dashboard` (the page), `/dashboard/static/<file>` (its JS and CSS, nothing else),
`/dashboard/data?since=24h&until=` (the JSON the page polls every few seconds, see `data.py`).
Every dashboard response carries `Content-Security-Policy: default-src 'self'`, so the page can
load nothing from outside the gateway.

When gateway keys are required, `/dashboard` answers a sign-in form (401) until it has a
session: `POST /dashboard/login` (form field `key`, a team key or the master key) sets an
HttpOnly, SameSite=Strict session cookie that names the key id, never the key (see
`gateway.tenants.auth`), and `/dashboard/data` then shows that key's requests only (the
master key: everything). `POST /dashboard/logout` clears it.
"""

from __future__ import annotations

import time
from functools import cache
from pathlib import Path
from urllib.parse import parse_qs

import orjson
from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import Response

from gateway.accounting.store.base import StoreError
from gateway.accounting.usage import BadParam, parse_time
from gateway.tenants.auth import (
    caller,
    new_session,
    presented_key,
    sees_all,
    session_cookie,
)
from gateway.views.dashboard.data import snapshot

STATIC = Path(__file__).resolve().parent / "static"
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
_TYPES = {
    "index.html": "text/html; charset=utf-8",
    "login.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "app.css": "text/css; charset=utf-8",
}
_HEADERS = {
    "content-security-policy": CSP,
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "cache-control": "no-cache",
}


@cache
def _asset(name: str) -> bytes:
    return (STATIC / name).read_bytes()


def _file(name: str) -> Response:
    return Response(_asset(name), media_type=_TYPES[name], headers=_HEADERS)


def _json(body: object, status: int = 200) -> Response:
    return Response(
        orjson.dumps(body), status_code=status, media_type="application/json", headers=_HEADERS
    )


def _error(status: int, message: str, param: str | None, code: str) -> Response:
    err = {"message": message, "type": "invalid_request_error", "param": param, "code": code}
    return _json({"error": err}, status)


def _login_page(message: str = "", status: int = 401) -> Response:
    html = _asset("login.html")
    if message:
        html = html.replace(
            b"<!--MESSAGE-->", b'<p id="message" class="error">%s</p>' % (message.encode())
        )
    headers = {
        **_HEADERS,
        "content-security-policy": CSP.replace("form-action 'none'", "form-action 'self'"),
    }
    return Response(html, status_code=status, media_type=_TYPES["login.html"], headers=headers)


async def page(request: Request) -> Response:
    if isinstance(caller(request, "the dashboard", cookie=True), Response):
        return _login_page()
    return _file("index.html")


async def login(request: Request) -> Response:
    """POST /dashboard/login, form field `key`: a session cookie, then back to /dashboard."""
    gw = request.app.state.gw
    form = parse_qs((await request.body())[:4096].decode("utf-8", "replace"))
    key = (form.get("key") or [""])[0].strip() or presented_key(request.headers) or ""
    found = gw.keys.lookup(key) if key else None
    if found is None:
        return _login_page("That key is not valid (unknown or revoked). Check it and try again.")
    ttl = gw.config.auth.session_ttl_s
    headers = {
        **_HEADERS,
        "location": "/dashboard",
        "set-cookie": session_cookie(new_session(gw.session_secret, found, ttl), ttl),
    }
    return Response(b"", status_code=303, headers=headers)


async def logout(request: Request) -> Response:
    headers = {**_HEADERS, "location": "/dashboard", "set-cookie": session_cookie("", 0)}
    return Response(b"", status_code=303, headers=headers)


async def static(request: Request) -> Response:
    name = request.path_params["name"]
    if name not in _TYPES or name.endswith(".html"):
        return _error(404, f"no dashboard asset {name!r}", None, "not_found")
    return _file(name)


async def data(request: Request) -> Response:
    """GET /dashboard/data?since=24h&until=  (same time forms as /v1/usage)."""
    gw = request.app.state.gw
    who = caller(request, "/dashboard/data", cookie=True)
    if isinstance(who, Response):
        return who
    only = None if sees_all(gw.keys, who) else who.id
    q = request.query_params
    now = time.time()
    try:
        since = parse_time(q["since"], "since", now) if q.get("since") else now - 86400.0
        until = parse_time(q["until"], "until", now) if q.get("until") else None
    except BadParam as e:
        return _error(400, str(e), e.param, "invalid_time")
    try:
        body = await snapshot(gw, since, until, now, key_id=only)
    except StoreError as e:
        return _json(
            {
                "error": {
                    "message": f"the {gw.store.name} store is unavailable: {e}",
                    "type": "service_unavailable",
                    "param": None,
                    "code": "store_unavailable",
                }
            },
            503,
        )
    return _json(body)


def mount(app: FastAPI) -> None:
    """Add the dashboard routes to the gateway's side app (called by gateway.app)."""
    app.add_route("/dashboard", page, methods=["GET"])
    app.add_route("/dashboard/", page, methods=["GET"])
    app.add_route("/dashboard/data", data, methods=["GET"])
    app.add_route("/dashboard/login", login, methods=["POST"])
    app.add_route("/dashboard/logout", logout, methods=["POST"])
    app.add_route("/dashboard/static/{name}", static, methods=["GET"])
