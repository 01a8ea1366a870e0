"""Errors a first run meets, as the user sees them: each says what was wrong, where, and the fix.

Request errors through the running gateway (openai SDK, httpx); routing-file errors through
`tollgate check-config`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import openai
import orjson
import pytest

from tests.fake_upstream import FakeUpstream
from tests.support import TIERS, GatewayProcess, model_block, tier_models
from tests.test_config_cli import run_cli

Fakes = Callable[..., FakeUpstream]
Gw = Callable[..., GatewayProcess]
MSGS = [{"role": "user", "content": "hi"}]


def test_bad_request_fields_name_the_value_sent_and_the_fix(fakes: Fakes, gateway: Gw) -> None:
    up = fakes("small")
    gw = gateway("store: {backend: none}\nmodels:\n" + model_block("small", "small", up.base_url))
    c = openai.OpenAI(base_url=gw.base_url, api_key="x", max_retries=0)
    with pytest.raises(openai.BadRequestError) as ei:
        c.chat.completions.create(model="small", messages=MSGS, max_tokens=-1)  # type: ignore[arg-type]
    err = ei.value.body
    assert isinstance(err, dict)
    assert err["param"] == "max_tokens"
    assert err["message"].startswith("'max_tokens' must be a non-negative integer, got -1;")
    assert "0 or more" in err["message"] and "got an integer" not in err["message"]
    with pytest.raises(openai.BadRequestError) as ei:
        c.chat.completions.create(
            model="small",
            messages=MSGS,
            extra_body={"temperature": "warm"},
        )
    assert isinstance(ei.value.body, dict)
    assert "'temperature' must be a number, got the string \"warm\"" in ei.value.body["message"]
    assert "no quotes" in ei.value.body["message"]
    with pytest.raises(openai.NotFoundError) as ei:
        c.chat.completions.create(model="smal", messages=MSGS)  # type: ignore[arg-type]
    assert isinstance(ei.value.body, dict)
    assert (
        "'smal' does not exist on this gateway; did you mean 'small'?" in (ei.value.body["message"])
    )
    assert up.stats()["requests"] == 0  # refused at the gateway


def test_body_that_is_not_utf8_names_the_byte_offset(fakes: Fakes, gateway: Gw) -> None:
    up = fakes("small")
    gw = gateway("store: {backend: none}\nmodels:\n" + model_block("small", "small", up.base_url))
    good = '{"model": "small", "messages": [{"role": "user", "content": "caf\u00e9"}]}'
    raw = good.encode("latin-1")  # a client that sent Latin-1 instead of UTF-8
    offset = raw.index(b"\xe9")
    r = httpx.post(
        f"{gw.base_url}/chat/completions",
        content=raw,
        headers={"content-type": "application/json"},
    )
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["type"] == "invalid_request_error"
    msg = err["message"]
    assert msg.startswith("the request body is not valid UTF-8:"), msg
    assert f"byte 0xe9 at byte offset {offset}" in msg
    assert "encode the text as UTF-8" in msg
    assert "surrogates" not in msg and "(char 0)" not in msg
    # a body that is UTF-8 but not JSON still gets the JSON parser's line and column
    bad = httpx.post(
        f"{gw.base_url}/chat/completions",
        content=b'{"model": "small",}',
        headers={"content-type": "application/json"},
    )
    assert bad.status_code == 400
    assert "not valid JSON" in bad.json()["error"]["message"]
    assert "line 1 column" in bad.json()["error"]["message"]


def test_yaml_syntax_error_names_file_line_and_column(tmp_path: Path) -> None:
    f = tmp_path / "routing.yaml"
    f.write_text(
        "models:\n  - name: small\n   tier: small\n    endpoints: [{base_url: http://x/v1}]\n"
    )
    r = run_cli("check-config", str(f))
    assert r.returncode == 1
    assert "<unicode string>" not in r.stderr
    assert f"{f}, line 3, column 4: not valid YAML" in r.stderr, r.stderr
    assert "tier: small" in r.stderr  # the offending line is quoted
    f.write_text("")
    r = run_cli("check-config", str(f))
    assert r.returncode == 1 and "but it is empty" in r.stderr


def test_unknown_profile_names_field_path_and_closest_names(tmp_path: Path) -> None:
    f = tmp_path / "routing.yaml"
    f.write_text(
        """
store: {backend: none}
models:
  - name: small
    tier: small
    profile: gemma-2b-it
    endpoints: [{base_url: "http://127.0.0.1:9/v1"}]
  - name: medium
    tier: medium
    profile: vicuna-13b-v1.5
    endpoints: [{base_url: "http://127.0.0.1:9/v1"}]
  - name: large
    tier: large
    profile: humpback-lama2-70b
    endpoints: [{base_url: "http://127.0.0.1:9/v1"}]
"""
    )
    r = run_cli("check-config", str(f))
    assert r.returncode == 1
    err = r.stderr
    assert str(f) in err
    assert "models[2].profile: 'humpback-lama2-70b' is not a profile" in err, err
    assert "did you mean 'humpback-llama2-70b'" in err
    # the closest names, not the artifact's whole list of profiles
    assert "OpenHermes-2.5-Mistral-7B" not in err and "qwen2.5-7b-instruct" not in err


def test_unknown_names_in_the_routing_file_get_paths_values_and_suggestions(
    tmp_path: Path,
) -> None:
    f = tmp_path / "routing.yaml"
    f.write_text(
        """
models:
  - name: small
    tier: small
    endpoints: [{base_url: "http://127.0.0.1:9/v1"}]
  - name: large
    tier: large
    endpoints: [{base_url: "http://127.0.0.1:9/v1"}]
routes:
  - name: chat
    models: [small, lage]
router: {default_policy: balance}
judge: {model: smal}
"""
    )
    err = run_cli("check-config", str(f)).stderr
    assert "routes[0].models[1]: 'lage' is not a configured model; did you mean 'large'?" in err
    assert "router.default_policy: 'balance' is not one of router.policies; did you mean " in err
    assert "judge.model: 'smal' is not a configured model; did you mean 'small'?" in err
    f.write_text(
        """
models:
  - name: small
    tier: tiny
    max_concurrency: -3
    endpoints: [{base_url: "http://127.0.0.1:9/v1", modle: x}]
"""
    )
    err = run_cli("check-config", str(f)).stderr
    assert (
        "models[0].tier: Input should be 'small', 'medium', 'large' or 'external', got 'tiny'"
        in err
    )
    assert "models[0].max_concurrency: Input should be greater than or equal to 1, got -3" in err
    assert "models[0].endpoints[0].modle: unknown field 'modle'; did you mean 'model'?" in err


def _routed(fakes: Fakes, gateway: Gw) -> GatewayProcess:
    """The three routed tiers behind `auto` (default policy cheapest_above 0.5)."""
    urls = {name: fakes(name).base_url for name, *_ in TIERS}
    return gateway(
        "\n".join(
            [
                "store: {backend: none}",
                "router: {default_policy: balanced, policies: "
                "{balanced: {kind: cheapest_above, target: 0.5}}}",
                "models:",
                *tier_models(urls),
            ]
        )
    )


def test_malformed_messages_and_deep_nesting_get_a_400_naming_the_field(
    fakes: Fakes, gateway: Gw
) -> None:
    """Shapes that once crashed the router's reading of the conversation or the re-encoding of
    the body (500 and a traceback) are the client's error: a 400 naming the field and the fix,
    for a pinned model and for `auto` alike; nothing reaches an upstream."""
    gw = _routed(fakes, gateway)
    user = {"role": "user", "content": "hi"}
    deep = "[" * 300 + "]" * 300  # parsed (orjson reads 1024 levels), too deep to re-encode
    cases: list[tuple[bytes, str, str]] = [
        (
            b'{"model": "%s", "messages": [{"role": "user", "content": "hi"}], "x_extra": '
            + deep.encode()
            + b"}",
            "x_extra[0]",
            "more than 254 levels deep",
        ),
        (
            b'{"model": "%s", "messages": [{"role": "user", "content": "hi", "meta": '
            + ('{"a": ' * 400 + "1" + "}" * 400).encode()
            + b"}]}",
            "messages[0].meta",
            "flatten it",
        ),
    ]
    m1, fn = "messages[1]", {"name": "f", "arguments": {}}
    shapes: list[tuple[Any, str, str]] = [
        ({"role": "assistant", "tool_calls": [{"function": 5}]}, f"{m1}.tool_calls[0].function",
         "got 5"),
        ({"role": "assistant", "tool_calls": {"id": "c"}}, f"{m1}.tool_calls",
         "an array of tool calls"),
        ({"role": "assistant", "tool_calls": [7]}, f"{m1}.tool_calls[0]", "must be an object"),
        ({"role": "assistant", "tool_calls": [{"function": fn}]},
         f"{m1}.tool_calls[0].function.arguments", "a string holding JSON"),
        ({"role": "user", "content": [{"type": "text", "text": 5}]}, f"{m1}.content[0].text",
         "must be a string"),
        ({"role": "user", "content": "hi", "name": 5}, f"{m1}.name", "must be a string"),
        (["user", "hi"], m1, "an object with 'role'"),
    ]  # fmt: skip
    for msg, param, words in shapes:
        body = orjson.dumps({"model": "MODEL", "messages": [user, msg]}).replace(b"MODEL", b"%s")
        cases.append((body, param, words))
    for template, param, words in cases:
        for model in ("small", "auto"):
            r = httpx.post(
                f"{gw.base_url}/chat/completions",
                content=template.replace(b"%s", model.encode(), 1),
                headers={"content-type": "application/json"},
                timeout=30,
            )
            assert r.status_code == 400, (model, param, r.text)
            err = r.json()["error"]
            assert err["type"] == "invalid_request_error"
            assert err["param"] == param, (model, err)
            assert err["message"].startswith(f"'{param}' "), err
            assert words in err["message"], err
    logs = gw.logs()
    assert "Traceback" not in logs and "unexpected error" not in logs, logs[-3000:]
