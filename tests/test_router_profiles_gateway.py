"""`profile:` is optional: the gateway finds each model's router profile by the name its
upstream serves, and says which profile it uses and where it came from (check-config,
GET /v1/models, x-tollgate-explain)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import httpx

from tests.fake_upstream import FakeUpstream
from tests.support import REPO, GatewayProcess

REAL = {"data", "snapshot", "nearest-snapshot", "prior"}


def _config(fakes: Callable[..., FakeUpstream], extra_router: str = "") -> str:
    """Three models named as their providers name them, none with a `profile:`."""
    models = [
        ("mini", "small", "openai/gpt-4o-mini", "{input_per_mtok: 0.15, output_per_mtok: 0.6}"),
        ("local", "small", "meta-llama/Llama-3.1-8B-Instruct",
         "{input_per_mtok: 0.05, output_per_mtok: 0.1}"),
        ("big", "external", "gpt-4o-2024-08-06", "{input_per_mtok: 2.5, output_per_mtok: 10}"),
    ]  # fmt: skip
    lines = [
        "store: {backend: none}",
        "router:",
        "  default_policy: best",
        "  policies:",
        "    best: {kind: cheapest_above, target: 0.99}",
        extra_router,
        "models:",
    ]
    for name, tier, upstream, price in models:
        fu = fakes(name)
        lines += [
            f"  - name: {name}",
            f"    tier: {tier}",
            f"    pricing: {price}",
            f"    endpoints: [{{base_url: '{fu.base_url}', model: '{upstream}'}}]",
        ]
    return "\n".join(x for x in lines if x)


def _check_config(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", "check-config", str(path)],
        capture_output=True,
        text=True,
        cwd=str(REPO),
        timeout=60,
    )


def _check_with_finetune(
    fakes: Callable[..., FakeUpstream], tmp_path: Path, settings: str
) -> subprocess.CompletedProcess[str]:
    """check-config on the three models plus `ft`, a router candidate serving a model no
    catalog knows (`acme-support-ft-v3`), with the given tier/pricing lines."""
    fu = fakes("ft")
    text = _config(fakes, "  candidates: [mini, big, ft]") + (
        f"\n  - name: ft\n    {settings}"
        f"\n    endpoints: [{{base_url: '{fu.base_url}', model: 'acme-support-ft-v3'}}]"
    )
    path = tmp_path / "routing.yaml"
    path.write_text(text)
    return _check_config(path)


def test_models_without_profile_are_routed_by_their_upstream_name(
    fakes: Callable[..., FakeUpstream], gateway: Callable[..., GatewayProcess]
) -> None:
    gw = gateway(_config(fakes))
    listing = httpx.get(f"{gw.base_url}/models", timeout=10).json()["data"]
    by_id = {m["id"]: m for m in listing}
    assert "auto" in by_id and sorted(by_id["auto"]["models"]) == ["big", "local", "mini"]
    for name, upstream in [
        ("mini", "openai/gpt-4o-mini"),
        ("local", "meta-llama/Llama-3.1-8B-Instruct"),
        ("big", "gpt-4o-2024-08-06"),
    ]:
        prof = by_id[name]["router_profile"]
        assert prof["resolved_from"] == upstream
        assert prof["source"] in REAL, prof  # never the shared default weak profile
        assert prof["detail"]
    # Llama 3.1 8B Instruct was scored in the training data under another spelling
    assert by_id["local"]["router_profile"]["source"] == "data"
    assert (
        by_id["local"]["router_profile"]["profile"]
        .lower()
        .replace("meta-", "")
        .startswith("llama-3.1-8b")
    )
    # the three models have three different profiles: no prediction tie by list order
    assert len({by_id[n]["router_profile"]["profile"] for n in ("mini", "local", "big")}) == 3

    r = httpx.post(
        f"{gw.base_url}/chat/completions",
        headers={"x-tollgate-explain": "1"},
        json={
            "model": "auto",
            "messages": [{"role": "user", "content": "Prove that 17 is prime."}],
        },
        timeout=30,
    )
    assert r.status_code == 200, r.text
    explain = json.loads(r.headers["x-tollgate-explain"])
    assert {c["model"] for c in explain} == {"mini", "local", "big"}
    for c in explain:
        assert c["profile"] == by_id[c["model"]]["router_profile"]["profile"]
        assert c["profile_source"] == by_id[c["model"]]["router_profile"]["source"]


def test_check_config_says_which_profile_each_model_uses(
    fakes: Callable[..., FakeUpstream], tmp_path: Path
) -> None:
    path = tmp_path / "routing.yaml"
    path.write_text(_config(fakes))
    done = _check_config(path)
    assert done.returncode == 0, done.stderr
    assert "router profiles (artifact 'default'):" in done.stderr
    line = next(ln for ln in done.stderr.splitlines() if ln.startswith("  local: "))
    assert "[data]" in line and "candidate" in line
    assert "'meta-llama/Llama-3.1-8B-Instruct'" in line


def test_an_unknown_candidate_gets_a_prior_from_its_tier_and_price(
    fakes: Callable[..., FakeUpstream], tmp_path: Path
) -> None:
    done = _check_with_finetune(
        fakes, tmp_path, "tier: small\n    pricing: {input_per_mtok: 0.1, output_per_mtok: 0.2}"
    )
    assert done.returncode == 0, done.stderr
    line = next(ln for ln in done.stderr.splitlines() if ln.startswith("  ft: "))
    assert "[prior]" in line and "PRIOR" in line


def test_a_candidate_nothing_is_known_about_is_refused_with_the_fix(
    fakes: Callable[..., FakeUpstream], tmp_path: Path
) -> None:
    done = _check_with_finetune(fakes, tmp_path, "tier: external")
    assert done.returncode == 1
    assert "models[3] ('ft') is a router candidate, but nothing is known about" in done.stderr
    assert "set models[3].profile" in done.stderr and "Traceback" not in done.stderr


def test_a_config_of_unknown_models_does_not_route(
    fakes: Callable[..., FakeUpstream], gateway: Callable[..., GatewayProcess]
) -> None:
    """Nothing names a profile and no model is one the catalog knows: no `auto`."""
    a, b = fakes("a"), fakes("b")
    gw = gateway(
        "store: {backend: none}\nmodels:\n"
        f"  - {{name: a, tier: small, endpoints: [{{base_url: '{a.base_url}', model: 'x1'}}]}}\n"
        f"  - {{name: b, tier: large, endpoints: [{{base_url: '{b.base_url}', model: 'x2'}}]}}\n"
    )
    ids = [m["id"] for m in httpx.get(f"{gw.base_url}/models", timeout=10).json()["data"]]
    assert ids == ["a", "b"]
