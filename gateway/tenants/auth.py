"""Who is calling the side API (/v1/usage, /v1/feedback, /v1/models, /dashboard, /admin,
/readyz details, /metrics), and the dashboard's sign-in session.

A key comes as `Authorization: Bearer <key>` or `x-api-key: <key>`; the dashboard also
accepts its session cookie: `<key id>.<expiry>.<HMAC-SHA256 of both and the key's sha256>`
(HttpOnly, SameSite=Strict, Path=/dashboard), so it names no key, dies with its expiry, and
dies at once when the key is revoked (its id no longer resolves to the same hash).

The HMAC secret (`session_secret`), so that a session one worker or replica issued is
accepted by the others: derived from $TOLLGATE_SESSION_SECRET when set (give every replica
the same value), else from $TOLLGATE_MASTER_KEY when set (the same on every replica), else
from the file at auth.session_secret_path, made once with 0600 permissions by the first
worker that needs it and read by every other (every worker of the host; replicas too when
they share that file). A file that cannot be made or read leaves a random per-process
secret, with a warning: sessions then work only on the worker that issued them.

`caller()` answers with the `GatewayKey` (team key or the master key), `OPEN` when keys are
not required (nothing is scoped), or an OpenAI-format 401/403 `Response` to send back.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
import time
from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from gateway.config import GatewayKey
from gateway.errors import error_body
from gateway.tenants.keys import KeyTable

log = logging.getLogger("tollgate.auth")

SESSION_COOKIE = "tollgate_session"
SESSION_SECRET_ENV = "TOLLGATE_SESSION_SECRET"
OPEN = GatewayKey(id="", sha256="0" * 64)  # keys not required: the caller sees everything


def refuse(status: int, message: str, code: str) -> Response:
    type_ = "authentication_error" if status == 401 else "permission_error"
    return Response(
        error_body(message, type_, None, code),
        status_code=status,
        media_type="application/json",
        headers={"www-authenticate": "Bearer"} if status == 401 else None,
    )


def presented_key(headers: Any) -> str | None:
    auth = headers.get("authorization")
    if auth and auth[:7].lower() == "bearer ":
        return str(auth[7:].strip())
    key = headers.get("x-api-key")
    return str(key).strip() if key else None


def caller(request: Request, what: str, cookie: bool = False) -> GatewayKey | Response:
    """The key behind `request`, for `what` (named in the error). Where keys are not
    required, a key that is not one (the SDK's "unused") is ignored, as on the proxy paths."""
    table: KeyTable = request.app.state.gw.keys
    key = presented_key(request.headers)
    if key is not None and not table.required:
        return table.lookup(key) or OPEN
    if key is None and cookie:
        found = session_key(request, table, request.app.state.gw.session_secret)
        if found is not None:
            return found
    if key is None:
        if not table.required:
            return OPEN
        how = "send 'Authorization: Bearer <key>' or 'x-api-key: <key>'"
        if cookie:
            how = "sign in at /dashboard with your key, or " + how
        return refuse(401, f"{what} needs a gateway key: {how}", "missing_api_key")
    got = table.lookup(key)
    if got is None:
        return refuse(
            401,
            "the gateway key is not valid (unknown or revoked); check the key you sent or ask "
            "for a new one (tollgate keys create)",
            "invalid_api_key",
        )
    return got


def master_only(request: Request, what: str) -> GatewayKey | Response:
    """The master key, or the refusal to send (also when no master key is configured)."""
    table: KeyTable = request.app.state.gw.keys
    if table.master is None:
        return refuse(
            403,
            f"{what} needs the master key, and this gateway has none: set "
            "TOLLGATE_MASTER_KEY in its environment and restart it",
            "master_key_not_configured",
        )
    who = caller(request, what)
    if isinstance(who, Response):
        return who
    if who is not table.master:
        return refuse(
            403 if who is not OPEN else 401,
            f"{what} needs the master key (TOLLGATE_MASTER_KEY); a team key is not enough",
            "master_key_required",
        )
    return who


def sees_all(table: KeyTable, who: GatewayKey) -> bool:
    return who is OPEN or who is table.master


# -- dashboard sessions ---------------------------------------------------------------------
def _derive(material: bytes) -> bytes:
    return hashlib.sha256(b"tollgate-session\0" + material).digest()


def session_secret(path: str, master_key: str | None) -> tuple[bytes, str]:
    """The sessions' HMAC secret, and where it came from (for the log; never the secret)."""
    env = os.environ.get(SESSION_SECRET_ENV, "").strip()
    if env:
        return _derive(env.encode()), f"${SESSION_SECRET_ENV}"
    if master_key:
        return _derive(hashlib.sha256(master_key.encode()).hexdigest().encode()), ("the master key")
    p = Path(path).expanduser().absolute()
    try:
        return _derive(_secret_file(p)), f"the file {p}"
    except OSError as e:
        log.warning(
            "dashboard sessions: cannot make or read %s (%s); each worker signs its own "
            "sessions, so a sign-in works only on the worker that issued it. Set %s (the "
            "same on every replica) or make auth.session_secret_path writable",
            p,
            e.strerror or e,
            SESSION_SECRET_ENV,
        )
        return secrets.token_bytes(32), "a random per-process secret"


def _secret_file(p: Path) -> bytes:
    """The secret in `p`, made first if there is none: written to a private temporary file,
    then linked into place, so that a worker reads a whole secret or none, and the first
    worker's secret wins a race."""
    try:
        data = p.read_bytes().strip()
    except FileNotFoundError:
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_name(f".{p.name}.{os.getpid()}.{secrets.token_hex(4)}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, secrets.token_hex(32).encode() + b"\n")
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, p)
        except FileExistsError:
            pass  # another worker made it first: use its secret
        finally:
            tmp.unlink()
        data = p.read_bytes().strip()
    if len(data) < 32:
        raise OSError(0, f"holds {len(data)} bytes, fewer than 32: remove it to make a new one")
    if p.stat().st_mode & 0o077:
        log.warning("dashboard sessions: %s is readable by other users; chmod 600 it", p)
    return data


def _mac(secret: bytes, key: GatewayKey, expiry: int) -> str:
    msg = f"{key.id}\0{expiry}\0{key.sha256}".encode()
    return hmac.new(secret, msg, hashlib.sha256).hexdigest()


def new_session(secret: bytes, key: GatewayKey, ttl_s: float) -> str:
    expiry = int(time.time() + ttl_s)
    return f"{key.id}.{expiry}.{_mac(secret, key, expiry)}"


def session_key(request: Request, table: KeyTable, secret: bytes) -> GatewayKey | None:
    raw = request.cookies.get(SESSION_COOKIE)
    if not raw:
        return None
    head, _, mac = raw.rpartition(".")
    key_id, _, expiry_s = head.rpartition(".")
    key = table.by_id.get(key_id)
    if key is None or not expiry_s.isdigit() or int(expiry_s) < time.time():
        return None
    if not hmac.compare_digest(mac, _mac(secret, key, int(expiry_s))):
        return None
    return key


def session_cookie(value: str, ttl_s: float) -> str:
    return (
        f"{SESSION_COOKIE}={value}; Max-Age={int(ttl_s)}; Path=/dashboard; HttpOnly; "
        "SameSite=Strict"
    )
