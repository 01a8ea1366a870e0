"""The routing file as an operator meets it: check-config, env expansion, errors, gateway keys."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import openai
import pytest

from gateway.config import DEFAULT_CONFIG_PATH, ConfigError, parse_config
from tests.fake_upstream import FakeUpstream
from tests.support import REPO, GatewayProcess, model_block


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    import os

    e = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", *args],
        capture_output=True,
        text=True,
        env=e,
        cwd=str(REPO),
        timeout=60,
    )


GOOD = """
models:
  - name: small
    tier: small
    endpoints:
      - base_url: http://127.0.0.1:9/v1
        model: tiny
        api_key: ${SECRET_KEY_FOR_TEST}
routes:
  - name: chat
    models: [small]
"""


def test_check_config_prints_resolved_config_with_secrets_masked(tmp_path: Path) -> None:
    f = tmp_path / "r.yaml"
    f.write_text(GOOD)
    r = run_cli("check-config", str(f), env={"SECRET_KEY_FOR_TEST": "sk-verysecretvalue123"})
    assert r.returncode == 0, r.stderr
    assert "sk-verysecretvalue123" not in r.stdout + r.stderr
    assert '"api_key": "****23"' in r.stdout
    assert "OK (1 models, 1 routes)" in r.stderr


def run_in(cwd: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """`tollgate ARGS` run from `cwd`, with no TOLLGATE_* variable but those given."""
    import os

    e = {k: v for k, v in os.environ.items() if not k.startswith("TOLLGATE_")}
    e.update(PYTHONPATH=str(REPO), **env)
    return subprocess.run([sys.executable, "-m", "gateway.cli", *args], capture_output=True,
                          text=True, env=e, cwd=cwd, timeout=60)  # fmt: skip


def test_check_config_default_file_is_valid(tmp_path: Path) -> None:
    r = run_in(tmp_path, "check-config", TOLLGATE_DB="/srv/t.db")
    assert r.returncode == 0, r.stderr
    # which routing file (and why that one) and which store the gateway would use
    assert f"config: {DEFAULT_CONFIG_PATH} (the packaged default)" in r.stderr
    assert f"routing file {DEFAULT_CONFIG_PATH}, store SQLite at /srv/t.db" in r.stderr
    # it ships inside the package, so the wheel has it
    assert DEFAULT_CONFIG_PATH.is_relative_to(REPO / "gateway")


def _minimal(name: str) -> str:
    return (
        f"models:\n  - name: {name}\n    tier: small\n    endpoints:\n"
        "      - base_url: http://127.0.0.1:9/v1\n        model: tiny\n"
    )


def test_config_is_found_by_flag_then_env_then_current_directory_then_package(
    tmp_path: Path,
) -> None:
    here, elsewhere = tmp_path / "here", tmp_path / "elsewhere"
    here.mkdir()
    elsewhere.mkdir()
    (here / "tollgate.yaml").write_text(_minimal("local"))
    (tmp_path / "env.yaml").write_text(_minimal("from-env"))
    (tmp_path / "flag.yaml").write_text(_minimal("from-flag"))
    env = {"TOLLGATE_CONFIG": str(tmp_path / "env.yaml")}
    cases = [
        (here, ["--config", str(tmp_path / "flag.yaml")], env, "flag.yaml (from --config)"),
        (here, [], env, "env.yaml (from $TOLLGATE_CONFIG)"),
        (here, [], {}, "tollgate.yaml (./tollgate.yaml in the current directory)"),
        (elsewhere, [], {}, f"{DEFAULT_CONFIG_PATH} (the packaged default)"),
    ]
    for cwd, flag, extra, said in cases:
        # report reads the store of the same file the gateway would serve with
        r = run_in(cwd, "report", *flag, **extra)
        line = next((ln for ln in r.stderr.splitlines() if ln.startswith("config: ")), "")
        assert line.endswith(said), (flag, extra, r.stderr)
        c = run_in(cwd, "check-config", *([flag[1]] if flag else []), **extra)
        assert c.returncode == 0, c.stderr
        assert said in c.stderr, c.stderr


def test_init_writes_a_commented_starter_file_and_keeps_an_existing_one(
    tmp_path: Path,
) -> None:
    r = run_in(tmp_path, "init")
    assert r.returncode == 0, r.stderr
    written = tmp_path / "tollgate.yaml"
    text = written.read_text()
    assert text.startswith("# ") and "\n# " in text  # commented for the operator
    # the file it wrote is the one check-config (and serve) now find, and it is valid
    c = run_in(tmp_path, "check-config")
    assert c.returncode == 0, c.stderr
    assert f"config: {written} (./tollgate.yaml in the current directory)" in c.stderr
    assert f"{written}: OK (4 models, 1 routes)" in c.stderr

    written.write_text("# mine\n" + text)
    again = run_in(tmp_path, "init")
    assert again.returncode == 1
    assert f"{written} exists; not overwritten (--force replaces it)" in again.stderr
    assert written.read_text().startswith("# mine\n")
    forced = run_in(tmp_path, "init", "--force")
    assert forced.returncode == 0, forced.stderr
    assert written.read_text() == text

    other = run_in(tmp_path, "init", "deploy/routing.yaml")
    assert other.returncode == 0, other.stderr
    assert (tmp_path / "deploy" / "routing.yaml").read_text() == text


def test_report_without_arguments_names_the_missing_store_and_creates_nothing(
    tmp_path: Path,
) -> None:
    """The default routing file's store is var/tollgate.db under the current directory:
    report says it is not there and how to point at a store, instead of creating an empty
    one and printing "(no requests)"."""
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith("TOLLGATE_")}
    env["PYTHONPATH"] = str(REPO)
    r = subprocess.run([sys.executable, "-m", "gateway.cli", "report"], capture_output=True,
                       text=True, env=env, cwd=tmp_path, timeout=60)  # fmt: skip
    assert r.returncode == 1, r.stdout + r.stderr
    assert f"there is no SQLite store at {tmp_path / 'var' / 'tollgate.db'}" in r.stderr
    for how in ("--config", "TOLLGATE_DB=", "--url"):
        assert how in r.stderr
    assert "no requests" not in r.stdout
    assert list(tmp_path.iterdir()) == []


def test_check_config_names_file_field_and_fix(tmp_path: Path) -> None:
    f = tmp_path / "bad.yaml"
    f.write_text(
        """
models:
  - name: small
    tier: tiny
    max_concurrency: -3
    endpoints:
      - base_url: localhost:8000
        modle: x
routes:
  - name: chat
    models: [small, missing]
"""
    )
    r = run_cli("check-config", str(f))
    assert r.returncode == 1
    err = r.stderr
    assert str(f) in err
    assert "models[0].tier: Input should be 'small', 'medium', 'large' or 'external'" in err
    assert "models[0].max_concurrency: Input should be greater than or equal to 1" in err
    assert "models[0].endpoints[0].modle: unknown field" in err
    assert "must start with http:// or https://" in err


def test_unknown_route_member_and_missing_env_are_explained(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SECRET_KEY_FOR_TEST", "k")
    with pytest.raises(ConfigError) as ei:
        parse_config(GOOD.replace("[small]", "[small, large]"), "x.yaml")
    assert "routes[0].models[1]: 'large' is not a configured model" in str(ei.value)
    monkeypatch.delenv("SECRET_KEY_FOR_TEST")
    with pytest.raises(ConfigError) as ei:
        parse_config(GOOD, "x.yaml")
    assert "SECRET_KEY_FOR_TEST is not set" in str(ei.value)
    assert "${SECRET_KEY_FOR_TEST:-default}" in str(ei.value)


def test_env_default_expansion() -> None:
    cfg = parse_config(GOOD.replace("${SECRET_KEY_FOR_TEST}", "${NOPE_NOT_SET:-fallback}"))
    assert cfg.models[0].endpoints[0].api_key == "fallback"


def test_gateway_keys_are_checked_hashed_and_never_logged(
    fakes: Callable[..., FakeUpstream], gateway: Callable[..., GatewayProcess]
) -> None:
    up = fakes("small")
    key = "tg-test-key-abcdefghijklmnop"
    made = run_cli("keys", "--id", "team-a", "--key", key)
    digest = hashlib.sha256(key.encode()).hexdigest()
    assert digest in made.stdout and key not in made.stdout
    gw = gateway(
        "\n".join(
            [
                "store: {backend: none}",
                "auth:",
                "  keys:",
                f"    - {{id: team-a, sha256: {digest}}}",
                "models:",
                model_block("small", "small", up.base_url),
            ]
        )
    )
    msgs = [{"role": "user", "content": "x"}]
    with pytest.raises(openai.AuthenticationError) as ei:
        openai.OpenAI(base_url=gw.base_url, api_key="wrong", max_retries=0).chat.completions.create(
            model="small", messages=msgs
        )
    assert ei.value.response.json()["error"]["code"] == "invalid_api_key"
    ok = openai.OpenAI(base_url=gw.base_url, api_key=key, max_retries=0)
    assert ok.chat.completions.create(model="small", messages=msgs).model == "small"
    # the upstream never sees the gateway key
    assert "authorization" not in up.stats()["last_headers"]
    gw.stop()
    assert key not in gw.logs()
    assert f"tollgate serve: routing file {gw.config_path}, store none" in gw.logs()


def test_yaml_error_in_a_reload_shows_no_line_of_the_file_at_readyz(
    fakes: Callable[..., FakeUpstream], gateway: Callable[..., GatewayProcess]
) -> None:
    """An edit that breaks the YAML on a line holding a key: the unauthenticated /readyz names
    the line, the column and the kind of problem, never the line's text; check-config, run
    by the operator, quotes the line with the key masked; the log holds no key either."""
    up = fakes("small")
    good = "store: {backend: none}\nmodels:\n" + model_block("small", "small", up.base_url)
    gw = gateway(good)
    key = "sk-live-4f9c2a0d8e7b6a5c4d3e2f1a0b9c"
    gw.write_config(f"{good}\n        api_key: {key}: rotated\n")
    gw.sighup()
    deadline = time.monotonic() + 10
    page = ""
    while time.monotonic() < deadline:
        r = httpx.get(f"{gw.url}/readyz", timeout=5)
        if r.json()["config_error"]:
            page = r.text
            break
        time.sleep(0.05)
    err = httpx.get(f"{gw.url}/readyz", timeout=5).json()["config_error"]
    at = f"line 8, column {len('        api_key: ' + key) + 1}"  # the ':' after the key
    assert f"{at}: not valid YAML: mapping values are not allowed here" in err, err
    for text in (key, key[-10:], "api_key", "rotated"):
        assert text not in page, page
    # still serving the old config
    r = httpx.post(
        f"{gw.base_url}/chat/completions",
        json={"model": "small", "messages": [{"role": "user", "content": "hi"}]},
        timeout=30,
    )
    assert r.status_code == 200
    assert key not in gw.logs() and "rejected" in gw.logs()
    cli = run_cli("check-config", str(gw.config_path))
    assert cli.returncode == 1
    assert at in cli.stderr and "the line reads 'api_key: ****9c: rotated'" in (cli.stderr)
    assert key not in cli.stdout + cli.stderr


def test_check_config_masks_the_postgres_password() -> None:
    """A PostgreSQL store URL's password never reaches check-config's output or the line
    naming the store."""
    url = "postgresql://tollgate:pg-secret-pass@db.example:5432/tollgate"
    env = {"TOLLGATE_STORE": "postgres", "TOLLGATE_POSTGRES_URL": url}
    r = run_cli("check-config", "gateway/defaults/routing.yaml", env=env)
    assert r.returncode == 0, r.stderr
    assert "pg-secret-pass" not in r.stdout + r.stderr
    assert '"postgres_url": "postgresql://****@db.example:5432/tollgate"' in r.stdout
    assert "store PostgreSQL at postgresql://****@db.example:5432/tollgate" in r.stderr
