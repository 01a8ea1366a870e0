"""Teams on one gateway: keys made at run time (CLI, admin API), one authenticated plane for
the side API, each team key scoped to its own requests, the dashboard's sign-in.

Real gateway subprocesses sharing a real SQLite file; real fake upstreams; httpx and the
openai SDK as clients.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.fake_upstream import FakeUpstream
from tests.postgres_server import postgres_url
from tests.support import REPO, GatewayProcess, free_port, model_block

__all__ = ["postgres_url"]  # a fixture

MASTER = "tg-master-4b1d9e7c2a6f8e0d5c3b1a9f7e"
METRICS_TOKEN = "mt-2f6e9a1c4d8b7e3f0a5c"
MSGS = [{"role": "user", "content": "hello"}]


def routing(
    up: FakeUpstream, db: Path, auth: str = "{required: true, refresh_interval_s: 0.2}"
) -> str:
    return "\n".join(
        [
            "server:",
            "  drain_timeout_s: 1",
            '  metrics_token: "${TOLLGATE_METRICS_TOKEN:-}"',
            f"store: {{backend: sqlite, sqlite_path: {db}, flush_interval_s: 0.05}}",
            f"auth: {auth}",
            "models:",
            model_block("small", "small", up.base_url),
            model_block("large", "large", up.base_url),
        ]
    )


def keys_cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", "keys", *args, "--config", str(config)],
        capture_output=True,
        text=True,
        env=env,
        cwd=str(REPO),
        timeout=60,
    )


def created_key(out: str) -> str:
    m = re.search(r"(tg-[A-Za-z0-9_-]{20,})", out)
    assert m, out
    return m.group(1)


def bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


def chat(gw: GatewayProcess, headers: dict[str, str], model: str = "small") -> httpx.Response:
    return httpx.post(
        f"{gw.base_url}/chat/completions",
        json={"model": model, "messages": MSGS},
        headers=headers,
        timeout=30,
    )


def admin_create(gw: GatewayProcess, name: str, **limits: Any) -> str:
    r = httpx.post(
        f"{gw.url}/admin/keys", json={"name": name, **limits}, headers=bearer(MASTER), timeout=10
    )
    assert r.status_code == 201, r.text
    return str(r.json()["key"])


def until(pred: Callable[[], bool], limit_s: float = 10.0) -> float:
    """Seconds until pred() holds (polled every 10 ms); fails after limit_s (an upper bound)."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < limit_s:
        if pred():
            return time.monotonic() - t0
        time.sleep(0.01)
    raise AssertionError(f"not within {limit_s} s")


def usage(gw: GatewayProcess, key: str, group_by: str = "key") -> dict[str, Any]:
    r = httpx.get(f"{gw.url}/v1/usage?group_by={group_by}", headers=bearer(key), timeout=10)
    assert r.status_code == 200, r.text
    return dict(r.json())


@pytest.fixture
def up(fakes: Callable[..., FakeUpstream]) -> FakeUpstream:
    return fakes("small")


def test_without_a_key_the_side_api_answers_401_in_openai_format(
    up: FakeUpstream, gateway: Callable[..., GatewayProcess], tmp_path: Path
) -> None:
    env = {"TOLLGATE_MASTER_KEY": MASTER, "TOLLGATE_METRICS_TOKEN": METRICS_TOKEN}
    gw = gateway(routing(up, tmp_path / "t.db"), env=env)
    for method, path in [
        ("GET", "/v1/usage"),
        ("GET", "/dashboard/data"),
        ("POST", "/v1/feedback"),
        ("GET", "/v1/models"),
        ("GET", "/admin/keys"),
        ("POST", "/admin/keys"),
    ]:
        r = httpx.request(method, f"{gw.url}{path}", json={"request_id": "x", "score": 1})
        assert r.status_code == 401, (path, r.text)
        err = r.json()["error"]
        assert err["type"] == "authentication_error" and err["code"] == "missing_api_key"
        assert "x-api-key" in err["message"] or "Bearer" in err["message"], err
    # a wrong key is refused the same way, whichever header carries it
    r = httpx.get(f"{gw.url}/v1/usage", headers={"x-api-key": "tg-nope"})
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    # /readyz: ready or not for anyone, the details only with the master key
    open_ready = httpx.get(f"{gw.url}/readyz").json()
    assert open_ready["status"] == "ready" and open_ready["auth_required"] is True
    assert "models" not in open_ready and "config_error" not in open_ready
    full = httpx.get(f"{gw.url}/readyz", headers=bearer(MASTER)).json()
    assert full["models"]["small"]["endpoints"][0]["circuit"] == "closed"
    assert "config_error" in full
    assert httpx.get(f"{gw.url}/healthz").status_code == 200
    # /metrics has its own token
    r = httpx.get(f"{gw.url}/metrics")
    assert r.status_code == 401 and r.json()["error"]["code"] == "missing_metrics_token"
    assert httpx.get(f"{gw.url}/metrics", headers=bearer(MASTER)).status_code == 401
    r = httpx.get(f"{gw.url}/metrics", headers=bearer(METRICS_TOKEN))
    assert r.status_code == 200 and "tollgate_" in r.text
    # a team key may not use the admin API
    team = admin_create(gw, "team-a")
    r = httpx.get(f"{gw.url}/admin/keys", headers=bearer(team))
    assert r.status_code == 403 and r.json()["error"]["code"] == "master_key_required"
    assert httpx.get(f"{gw.url}/v1/models", headers={"x-api-key": team}).status_code == 200


def test_the_shipped_routing_file_runs_without_keys(gateway: Callable[..., GatewayProcess]) -> None:
    """The quick start: the packaged default says auth.required: false, /readyz says so."""
    from gateway.config import DEFAULT_CONFIG_PATH, load_config

    assert load_config(DEFAULT_CONFIG_PATH).auth.required is False


def test_team_a_cannot_read_or_score_team_b_requests(
    up: FakeUpstream, gateway: Callable[..., GatewayProcess], tmp_path: Path
) -> None:
    gw = gateway(routing(up, tmp_path / "t.db"), env={"TOLLGATE_MASTER_KEY": MASTER})
    a = admin_create(gw, "team-a")
    made = keys_cli(gw.config_path, "create", "--name", "team-b", "--rpm", "600")
    assert made.returncode == 0, made.stderr
    b = created_key(made.stdout)
    ra = chat(gw, bearer(a))
    assert ra.status_code == 200, ra.text
    # team-b's key came through the CLI: accepted within the refresh interval
    until(lambda: chat(gw, {"x-api-key": b}).status_code == 200)
    rb = chat(gw, {"x-api-key": b})
    rid_a, rid_b = ra.headers["x-tollgate-request-id"], rb.headers["x-tollgate-request-id"]
    until(lambda: usage(gw, MASTER)["totals"]["requests"] >= 3)
    seen_a = usage(gw, a)
    assert [row["group"] for row in seen_a["data"]] == ["team-a"]
    assert seen_a["totals"]["requests"] == 1 and seen_a["key_id"] == "team-a"
    by_model = usage(gw, a, "model")
    assert by_model["totals"]["requests"] == 1
    # (the polls refused before team-b's key was taken up are recorded without a key)
    assert {row["group"] for row in usage(gw, MASTER)["data"]} >= {"team-a", "team-b"}
    # scoring team-b's request with team-a's key: as if it did not exist
    fb = f"{gw.url}/v1/feedback"
    r = httpx.post(fb, json={"request_id": rid_b, "score": 0.0}, headers=bearer(a))
    assert r.status_code == 404 and r.json()["error"]["code"] == "request_not_found"
    r = httpx.post(fb, json={"request_id": rid_a, "thumbs": "up"}, headers=bearer(a))
    assert r.status_code in (200, 202), r.text
    r = httpx.post(fb, json={"request_id": rid_b, "score": 0.5}, headers=bearer(MASTER))
    assert r.status_code in (200, 202), r.text
    # the dashboard's data: team-a's requests only, no gateway-wide details
    d = httpx.get(f"{gw.url}/dashboard/data", headers=bearer(a)).json()
    assert [row["request_id"] for row in d["recent"]] == [rid_a]
    assert d["totals"]["requests"] == 1 and d["backends"] == {} and d["config_error"] is None
    full = httpx.get(f"{gw.url}/dashboard/data", headers=bearer(MASTER)).json()
    assert {row["request_id"] for row in full["recent"]} >= {rid_a, rid_b}


def test_a_revoked_key_is_refused_by_a_second_gateway_sharing_the_sqlite_file(
    up: FakeUpstream, gateway: Callable[..., GatewayProcess], tmp_path: Path
) -> None:
    db = tmp_path / "shared.db"
    g1 = gateway(routing(up, db), env={"TOLLGATE_MASTER_KEY": MASTER})
    g2 = gateway(routing(up, db), env={"TOLLGATE_MASTER_KEY": MASTER})
    key = admin_create(g1, "team-a", models=["small"])
    assert chat(g1, bearer(key)).status_code == 200  # at once on the replica that made it
    seen = until(lambda: chat(g2, bearer(key)).status_code == 200)
    r = httpx.delete(f"{g1.url}/admin/keys/team-a", headers=bearer(MASTER), timeout=10)
    assert r.status_code == 200, r.text
    t0 = time.monotonic()
    assert chat(g1, bearer(key)).status_code == 401
    until(lambda: chat(g2, bearer(key)).status_code == 401)
    delay = time.monotonic() - t0
    print(f"created key seen by the 2nd gateway after {seen:.3f} s; revoke after {delay:.3f} s")
    r = chat(g2, bearer(key))
    assert r.json()["error"]["code"] == "invalid_api_key"
    listed = keys_cli(g1.config_path, "list")
    assert "team-a\trevoked" in listed.stdout, listed.stdout


def test_a_key_may_call_only_its_models(
    up: FakeUpstream, gateway: Callable[..., GatewayProcess], tmp_path: Path
) -> None:
    gw = gateway(routing(up, tmp_path / "t.db"), env={"TOLLGATE_MASTER_KEY": MASTER})
    key = admin_create(gw, "team-a", models=["small"], tpm=200000, budget_usd=50)
    client = openai.OpenAI(base_url=gw.base_url, api_key=key, max_retries=0)
    assert client.chat.completions.create(model="small", messages=MSGS).model == "small"  # type: ignore[arg-type]
    with pytest.raises(openai.PermissionDeniedError) as ei:
        client.chat.completions.create(model="large", messages=MSGS)  # type: ignore[arg-type]
    err = ei.value.response.json()["error"]
    assert err["code"] == "model_not_allowed" and err["param"] == "model"
    assert "small" in err["message"]
    listed = httpx.get(f"{gw.url}/admin/keys", headers=bearer(MASTER)).json()["data"]
    assert listed[0]["id"] == "team-a" and listed[0]["models"] == ["small"]
    assert listed[0]["tpm"] == 200000 and listed[0]["budget_window"] == "month"
    assert "sha256" not in listed[0] and key not in str(listed)


def test_a_planted_key_never_appears_in_logs_metrics_records_or_error_bodies(
    up: FakeUpstream, gateway: Callable[..., GatewayProcess], tmp_path: Path
) -> None:
    db = tmp_path / "t.db"
    gw = gateway(routing(up, db), env={"TOLLGATE_MASTER_KEY": MASTER})
    key = admin_create(gw, "team-a", models=["small"])
    bodies = [chat(gw, bearer(key)).text, chat(gw, {"x-api-key": key}).text]
    assert "authorization" not in up.stats()["last_headers"]
    assert "x-api-key" not in up.stats()["last_headers"]
    bodies.append(chat(gw, bearer(key), model="large").text)  # 403
    bodies.append(chat(gw, bearer(key + "x")).text)  # 401
    bodies.append(httpx.get(f"{gw.url}/admin/keys", headers=bearer(key)).text)  # 403
    bodies.append(httpx.get(f"{gw.url}/v1/usage", headers=bearer(key)).text)
    bodies.append(httpx.get(f"{gw.url}/dashboard", headers={"x-api-key": key + "x"}).text)
    bodies.append(httpx.post(f"{gw.url}/dashboard/login", data={"key": key + "x"}).text)
    until(lambda: usage(gw, MASTER)["totals"]["requests"] >= 3)
    metrics = httpx.get(f"{gw.url}/metrics").text
    gw.stop()
    stored = b"".join(p.read_bytes() for p in tmp_path.iterdir() if p.name.startswith("t.db"))
    journals = b"".join(p.read_bytes() for p in tmp_path.rglob("*.journal*") if p.is_file())
    assert b"team-a" in stored  # the records and the key store are there ...
    for text in (key, key[3:], MASTER):  # ... the key is not, in any form
        assert text not in gw.logs()
        assert text not in metrics
        assert text.encode() not in stored + journals
        for b in bodies:
            assert text not in b


def test_dashboard_sign_in_form_sets_a_strict_httponly_session_cookie(
    up: FakeUpstream, gateway: Callable[..., GatewayProcess], tmp_path: Path
) -> None:
    gw = gateway(routing(up, tmp_path / "t.db"), env={"TOLLGATE_MASTER_KEY": MASTER})
    a, b = admin_create(gw, "team-a"), admin_create(gw, "team-b")
    rid_a = chat(gw, bearer(a)).headers["x-tollgate-request-id"]
    chat(gw, bearer(b))
    until(lambda: usage(gw, MASTER)["totals"]["requests"] >= 2)
    with httpx.Client(base_url=gw.url, timeout=10) as c:
        page = c.get("/dashboard")
        assert page.status_code == 401 and 'action="/dashboard/login"' in page.text
        assert "form-action 'self'" in page.headers["content-security-policy"]
        bad = c.post("/dashboard/login", data={"key": "tg-wrong"})
        assert bad.status_code == 401 and "not valid" in bad.text
        ok = c.post("/dashboard/login", data={"key": a})
        assert ok.status_code == 303 and ok.headers["location"] == "/dashboard"
        cookie = ok.headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/dashboard" in cookie
        assert a not in cookie and a[3:] not in cookie and "?" not in ok.headers["location"]
        assert c.get("/dashboard").status_code == 200
        d = c.get("/dashboard/data").json()
        assert [row["request_id"] for row in d["recent"]] == [rid_a]
        # the cookie is not a key for the API
        assert c.get("/v1/usage").status_code == 401
        # revoked: the session ends with the key
        httpx.delete(f"{gw.url}/admin/keys/team-a", headers=bearer(MASTER))
        assert c.get("/dashboard/data").status_code == 401


@pytest.mark.browser
def test_dashboard_sign_in_in_headless_chromium(
    up: FakeUpstream, gateway: Callable[..., GatewayProcess], tmp_path: Path
) -> None:
    """A real browser: the form, the redirect, the page polling with its cookie, which
    scripts cannot read; the page counts team-a's requests only."""
    from tests.test_dashboard import Chromium, chromium_binary

    chromium_binary()
    gw = gateway(routing(up, tmp_path / "t.db"), env={"TOLLGATE_MASTER_KEY": MASTER})
    a, b = admin_create(gw, "team-a"), admin_create(gw, "team-b")
    for key in (a, a, b):
        assert chat(gw, bearer(key)).status_code == 200
    until(lambda: usage(gw, MASTER)["totals"]["requests"] >= 3)
    browser = Chromium(tmp_path / "profile")
    try:
        browser.call("Page.enable")
        browser.call("Runtime.enable")
        browser.call("Page.navigate", url=f"{gw.url}/dashboard")
        browser.wait_for("!!document.getElementById('signin')")
        browser.eval(
            f"document.getElementById('key').value = {a!r};"
            "document.getElementById('signin').submit(); true"
        )
        browser.wait_for("document.body && document.body.dataset.loaded >= '1'")
        requests = browser.eval("document.getElementById('kpi-requests').textContent")
        assert requests == "2"
        assert browser.eval("document.cookie") == ""  # HttpOnly
        assert browser.eval("location.href") == f"{gw.url}/dashboard"
    finally:
        browser.close()


def pg_routing(up: FakeUpstream, url: str, file_key: str | None = None) -> str:
    keys = f", keys: [{{id: ops, sha256: {digest(file_key)}}}]" if file_key else ""
    return "\n".join(
        [
            "server: {drain_timeout_s: 1}",
            # no journal: a gateway whose store is down would leave its records in the shared
            # default journal folder for the next PostgreSQL gateway of the suite to replay
            f'store: {{backend: postgres, postgres_url: "{url}", postgres_timeout_s: 1, '
            "journal: false}",
            f"auth: {{required: true, refresh_interval_s: 0.2{keys}}}",
            "models:",
            model_block("small", "small", up.base_url),
        ]
    )


def digest(key: str) -> str:
    import hashlib

    return hashlib.sha256(key.encode()).hexdigest()


def test_postgres_key_store_is_shared_by_replicas_and_a_dead_one_serves_file_keys(
    up: FakeUpstream, gateway: Callable[..., GatewayProcess], postgres_url: str
) -> None:
    g1 = gateway(pg_routing(up, postgres_url))
    g2 = gateway(pg_routing(up, postgres_url))
    made = keys_cli(g1.config_path, "create", "--name", "team-a", "--models", "small")
    assert made.returncode == 0, made.stderr
    assert "PostgreSQL at" in made.stdout
    key = created_key(made.stdout)
    for g in (g1, g2):
        until(lambda g=g: chat(g, bearer(key)).status_code == 200)
    assert keys_cli(g1.config_path, "revoke", "team-a").returncode == 0
    t0 = time.monotonic()
    for g in (g1, g2):
        until(lambda g=g: chat(g, bearer(key)).status_code == 401)
    print(f"postgres: revoke refused by both gateways after {time.monotonic() - t0:.3f} s")
    # a key store that cannot be reached at start: the routing file's keys work, others not
    ops = "tg-ops-file-key-0123456789abcdef"
    dead = postgres_url.replace("127.0.0.1:5432", f"127.0.0.1:{free_port()}")
    g3 = gateway(pg_routing(up, dead, file_key=ops))
    assert chat(g3, bearer(ops)).status_code == 200
    again = keys_cli(g1.config_path, "create", "--name", "team-b")
    r = chat(g3, bearer(created_key(again.stdout)))
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    assert "the key store (PostgreSQL at" in g3.logs()


def test_a_dashboard_session_ends_after_auth_session_ttl_s(
    up: FakeUpstream, gateway: Callable[..., GatewayProcess], tmp_path: Path
) -> None:
    auth = "{required: true, session_ttl_s: 1}"
    gw = gateway(routing(up, tmp_path / "t.db", auth), env={"TOLLGATE_MASTER_KEY": MASTER})
    key = admin_create(gw, "team-a")
    ok = httpx.post(f"{gw.url}/dashboard/login", data={"key": key})
    assert "Max-Age=1;" in ok.headers["set-cookie"]
    cookie = ok.headers["set-cookie"].split(";", 1)[0]  # sent by hand, past its Max-Age too
    data = f"{gw.url}/dashboard/data"
    assert httpx.get(data, headers={"cookie": cookie}).status_code == 200
    # forged: another key id, or a later expiry, with the same mac
    _kid, expiry, mac = cookie.split("=", 1)[1].split(".")
    for forged in (f"master.{expiry}.{mac}", f"team-a.{int(expiry) + 3600}.{mac}"):
        r = httpx.get(data, headers={"cookie": f"tollgate_session={forged}"})
        assert r.status_code == 401, forged
    until(lambda: httpx.get(data, headers={"cookie": cookie}).status_code == 401, 5)


def test_a_key_created_at_run_time_is_held_to_its_rpm(
    up: FakeUpstream, gateway: Callable[..., GatewayProcess], tmp_path: Path
) -> None:
    """`POST /admin/keys` with rpm: 3 on a gateway whose routing file limits nothing: once
    the key table has it, the key's fourth request in the minute is a 429 with OpenAI's
    rate-limit headers, and /v1/usage shows the key's limits."""
    gw = gateway(routing(up, tmp_path / "t.db"), env={"TOLLGATE_MASTER_KEY": MASTER})
    key = admin_create(gw, "team-a", rpm=3)
    until(lambda: chat(gw, bearer(key)).status_code == 200)  # the table has it
    codes = [chat(gw, bearer(key)).status_code for _ in range(4)]
    assert codes.count(429) >= 2 and codes[0] in (200, 429), codes  # 3 per minute in all
    r = chat(gw, bearer(key))
    assert r.status_code == 429 and r.json()["error"]["code"] == "rate_limit_exceeded"
    assert r.headers["x-ratelimit-limit-requests"] == "3" and "retry-after" in r.headers
    assert usage(gw, key)["limits"]["team-a"]["rpm"] == 3


def test_a_dashboard_session_works_on_every_gateway_of_the_host_without_a_master_key(
    up: FakeUpstream, gateway: Callable[..., GatewayProcess], tmp_path: Path
) -> None:
    """No master key, no $TOLLGATE_SESSION_SECRET: two gateways sharing a key store and
    auth.session_secret_path (as the workers of one host do) sign sessions with the secret
    the first one made there (0600), so a sign-in on one is accepted by the other; a
    gateway with another secret file refuses it. $TOLLGATE_SESSION_SECRET does the same
    across replicas that share no file."""
    db, secret = tmp_path / "t.db", tmp_path / "state" / "session.key"

    def auth(path: Path) -> str:
        return f"{{required: true, session_secret_path: {path}}}"

    env = {"TOLLGATE_MASTER_KEY": "", "TOLLGATE_SESSION_SECRET": ""}
    g1, g2 = (gateway(routing(up, db, auth(secret)), env=env) for _ in range(2))
    other = gateway(routing(up, db, auth(tmp_path / "other.key")), env=env)
    made = keys_cli(g1.config_path, "create", "--name", "team-a")
    assert made.returncode == 0, made.stderr
    key = created_key(made.stdout)
    for g in (g1, g2, other):
        until(lambda g=g: chat(g, bearer(key)).status_code == 200)

    def sign_in(g: GatewayProcess) -> str:
        ok = httpx.post(f"{g.url}/dashboard/login", data={"key": key})
        assert ok.status_code == 303, ok.text
        return ok.headers["set-cookie"].split(";", 1)[0]

    def data(g: GatewayProcess, cookie: str) -> int:
        return httpx.get(f"{g.url}/dashboard/data", headers={"cookie": cookie}).status_code

    cookie = sign_in(g1)
    assert data(g1, cookie) == 200 and data(g2, cookie) == 200
    assert data(g1, sign_in(g2)) == 200
    assert data(other, cookie) == 401  # another secret: not this host's session
    assert secret.stat().st_mode & 0o777 == 0o600
    assert "dashboard sessions are signed with a secret from the file" in g1.logs()
    assert secret.read_text().strip() not in g1.logs() + g2.logs()
    # replicas without a shared file: the same $TOLLGATE_SESSION_SECRET on each
    shared = {"TOLLGATE_MASTER_KEY": "", "TOLLGATE_SESSION_SECRET": "s3cret-for-every-replica"}
    r1, r2 = (gateway(routing(up, db, auth(tmp_path / f"r{i}.key")), env=shared) for i in range(2))
    for g in (r1, r2):
        until(lambda g=g: chat(g, bearer(key)).status_code == 200)
    assert data(r2, sign_in(r1)) == 200 and data(r1, sign_in(r2)) == 200
    assert data(other, sign_in(r1)) == 401
    assert not (tmp_path / "r1.key").exists()
