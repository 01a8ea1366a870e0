"""Exploration (router.explore): a share of model="auto" requests goes to another candidate
near the router's choice, the record keeps the probability of the model that served, and
`router train --from-store` weights each scored record by 1 / that probability."""

from __future__ import annotations

import json
import math
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest

from gateway.config import ConfigError, parse_config
from gateway.routing.explore import draws
from router_models import load_router
from router_models.data import load_source
from tests.fake_upstream import FakeUpstream
from tests.support import REPO, TIERS, GatewayProcess, metric_samples, metric_total, tier_models

# gateway keys: (id, key, explore_share or None)
KEYS = [
    ("explorer", "key-explorer", 1.0),
    ("steady", "key-steady", 0.0),
    ("plain", "key-plain", None),
]


def config(
    ups: dict[str, FakeUpstream],
    explore: str = "",
    store: str = "{backend: none}",
    keys: bool = False,
    policy: str = "{kind: cheapest_above, target: 0.5}",
) -> str:
    lines = [
        "server: {retry_backoff_s: 0.01}",
        f"store: {store}",
        "router:",
        "  default_policy: balanced",
        "  policies:",
        f"    balanced: {policy}",
    ]
    if explore:
        lines.append(f"  explore: {explore}")
    if keys:
        import hashlib

        lines.append("auth:")
        lines.append("  keys:")
        for kid, key, share in KEYS:
            lines.append(f"    - id: {kid}")
            lines.append(f"      sha256: {hashlib.sha256(key.encode()).hexdigest()}")
            if share is not None:
                lines.append(f"      explore_share: {share}")
    lines.append("models:")
    lines += tier_models({n: u.base_url for n, u in ups.items()})
    return "\n".join(lines)


def prompts(n: int) -> list[str]:
    return load_source("alpaca_eval").prompts[:n]


def ask(
    c: httpx.Client,
    gw: GatewayProcess,
    prompt: str,
    headers: dict[str, str] | None = None,
    **body: object,
) -> httpx.Response:
    r = c.post(
        f"{gw.base_url}/chat/completions",
        json={"model": "auto", "messages": [{"role": "user", "content": prompt}], **body},
        headers={"x-tollgate-explain": "1", **(headers or {})},
    )
    return r


def wait_rows(db: Path, n: int, where: str = "1") -> None:
    deadline = time.monotonic() + 30
    got = 0
    while time.monotonic() < deadline:
        with sqlite3.connect(db) as c:
            got = c.execute(f"SELECT count(*) FROM requests WHERE {where}").fetchone()[0]
        if got >= n:
            return
        time.sleep(0.1)
    raise AssertionError(f"{got} of {n} records stored")


def test_share_explores_a_binomial_fraction_and_records_the_propensity(
    fakes: Callable[..., FakeUpstream], gateway: Callable[..., GatewayProcess]
) -> None:
    ups = {name: fakes(name) for name, *_ in TIERS}
    store = '{backend: sqlite, sqlite_path: "${TOLLGATE_DB}"}'
    # margin 1: every candidate is near enough, so each request has k = 2 alternatives
    gw = gateway(config(ups, "{share: 0.3, margin: 1.0}", store))
    n, share = 300, 0.3
    explored: dict[str, str] = {}  # request id -> the model it went to
    steady: dict[str, str] = {}
    with httpx.Client(timeout=30) as c:
        for p in prompts(n):
            r = ask(c, gw, p)
            assert r.status_code == 200, r.text
            rid = r.headers["x-tollgate-request-id"]
            served = r.headers["x-tollgate-model"]
            cands = {e["model"]: e for e in json.loads(r.headers["x-tollgate-explain"])}
            choice = next(m for m, e in cands.items() if e["router_choice"])
            assert sum(e["probability"] for e in cands.values()) == pytest.approx(1.0)
            # the draw is the request id's hash: anyone can recompute it
            assert (r.headers.get("x-tollgate-explored") == "1") == (draws(rid)[0] < share)
            if r.headers.get("x-tollgate-explored") == "1":
                assert served != choice
                assert float(r.headers["x-tollgate-propensity"]) == pytest.approx(share / 2)
                assert cands[served]["probability"] == pytest.approx(share / 2)
                explored[rid] = served
            else:
                assert served == choice
                assert float(r.headers["x-tollgate-propensity"]) == pytest.approx(1 - share)
                assert cands[served]["probability"] == pytest.approx(1 - share)
                steady[rid] = served
    # Binomial(300, 0.3): mean 90, sd 7.9; 4.5 sd either side fails once in ~150,000 runs
    sd = math.sqrt(n * share * (1 - share))
    assert abs(len(explored) - n * share) <= 4.5 * sd, len(explored)
    assert len(set(explored.values())) >= 2  # cheaper and dearer alternatives both explored

    db = gw.tmp / "tollgate.db"
    wait_rows(db, n)
    with sqlite3.connect(db) as c:
        rows = c.execute("SELECT request_id, model, explored, propensity FROM requests").fetchall()
    assert len(rows) == n
    for rid, model, was_explored, propensity in rows:
        if rid in explored:
            assert was_explored == 1 and model == explored[rid]
            assert propensity == pytest.approx(share / 2) and propensity < 1
        else:
            assert was_explored == 0 and model == steady[rid]
            assert propensity == pytest.approx(1 - share)

    samples = metric_samples(httpx.get(f"{gw.url}/metrics").text)
    assert metric_total(samples, "tollgate_router_explored_total", route="auto") == len(explored)
    for m in set(explored.values()):
        want = sum(1 for v in explored.values() if v == m)
        assert metric_total(samples, "tollgate_router_explored_total", model=m) == want


def test_share_zero_never_explores(
    fakes: Callable[..., FakeUpstream], gateway: Callable[..., GatewayProcess]
) -> None:
    ups = {name: fakes(name) for name, *_ in TIERS}
    store = '{backend: sqlite, sqlite_path: "${TOLLGATE_DB}"}'
    gw = gateway(config(ups, store=store))  # no explore section: share 0
    n = 100
    with httpx.Client(timeout=30) as c:
        for p in prompts(n):
            r = ask(c, gw, p)
            assert r.status_code == 200, r.text
            assert "x-tollgate-explored" not in r.headers
            assert "x-tollgate-propensity" not in r.headers
            cands = json.loads(r.headers["x-tollgate-explain"])
            [choice] = [e for e in cands if e["router_choice"]]
            assert choice["model"] == r.headers["x-tollgate-model"]
            assert choice["probability"] == 1.0
            assert all(e["probability"] == 0.0 for e in cands if not e["router_choice"])
    db = gw.tmp / "tollgate.db"
    wait_rows(db, n)
    with sqlite3.connect(db) as c:
        got = c.execute("SELECT explored, propensity, count(*) FROM requests GROUP BY 1, 2")
        assert got.fetchall() == [(0, 1.0, n)]
    samples = metric_samples(httpx.get(f"{gw.url}/metrics").text)
    assert metric_total(samples, "tollgate_router_explored_total") == 0


def test_a_keys_share_overrides_the_routes(
    fakes: Callable[..., FakeUpstream], gateway: Callable[..., GatewayProcess]
) -> None:
    ups = {name: fakes(name) for name, *_ in TIERS}
    gw = gateway(config(ups, "{margin: 1.0, routes: {auto: 0.3}}", keys=True))
    counts: dict[str, int] = {}
    n = 60
    with httpx.Client(timeout=30) as c:
        for kid, key, _ in KEYS:
            counts[kid] = 0
            for p in prompts(n):
                r = ask(c, gw, p, {"authorization": f"Bearer {key}"})
                assert r.status_code == 200, r.text
                counts[kid] += r.headers.get("x-tollgate-explored") == "1"
                share = {"explorer": 1.0, "steady": 0.0, "plain": 0.3}[kid]
                rid = r.headers["x-tollgate-request-id"]
                assert (r.headers.get("x-tollgate-explored") == "1") == (draws(rid)[0] < share)
    assert counts["explorer"] == n  # its share 1.0 beats the route's 0.3
    # streamed through the official SDK: the same headers, the explored model answers
    client = openai.OpenAI(base_url=gw.base_url, api_key="key-explorer", max_retries=0)
    with client.chat.completions.with_streaming_response.create(
        model="auto",
        messages=[{"role": "user", "content": prompts(1)[0]}],
        stream=True,
        extra_headers={"x-tollgate-explain": "1"},
    ) as resp:
        assert resp.headers["x-tollgate-explored"] == "1"
        cands = json.loads(resp.headers["x-tollgate-explain"])
        [choice] = [e["model"] for e in cands if e["router_choice"]]
        served = resp.headers["x-tollgate-model"]
        assert served != choice
        assert float(resp.headers["x-tollgate-propensity"]) == pytest.approx(1 / 2)
        chunks = list(resp.parse())
    assert chunks and all(ch.model == served for ch in chunks)
    assert counts["steady"] == 0  # its share 0 beats the route's 0.3
    assert 0 < counts["plain"] < n  # no share of its own: the route's 0.3


def test_exploring_never_breaks_the_clients_cost_ceiling(
    fakes: Callable[..., FakeUpstream], gateway: Callable[..., GatewayProcess]
) -> None:
    ups = {name: fakes(name) for name, *_ in TIERS}
    # share 1 and margin 1: every request goes to an alternative whenever one is eligible;
    # target 0: the router's own choice is always the cheapest, small
    cheapest = "{kind: cheapest_above, target: 0.0}"
    gw = gateway(config(ups, "{share: 1.0, margin: 1.0}", policy=cheapest))
    served_free: set[str] = set()
    served_capped: set[str] = set()
    explored_capped = 0
    with httpx.Client(timeout=30) as c:
        for p in prompts(40):
            free = ask(c, gw, p, max_tokens=64)
            assert free.status_code == 200, free.text
            served_free.add(free.headers["x-tollgate-model"])
            est = {e["model"]: e["estimated_cost_usd"] for e in json.loads(
                free.headers["x-tollgate-explain"])}  # fmt: skip
            ceiling = est["medium"]  # small and medium fit, large does not
            capped = ask(c, gw, p, {"x-tollgate-max-cost-usd": repr(ceiling)}, max_tokens=64)
            assert capped.status_code == 200, capped.text
            model = capped.headers["x-tollgate-model"]
            served_capped.add(model)
            assert model in ("small", "medium")
            assert float(capped.headers["x-tollgate-cost-usd"]) <= ceiling
            cands = json.loads(capped.headers["x-tollgate-explain"])
            assert {e["model"] for e in cands} == {"small", "medium"}
            explored_capped += capped.headers.get("x-tollgate-explored") == "1"
        # without a ceiling exploration does reach the large tier; with one it never does
        assert "large" in served_free
        assert "large" not in served_capped
        assert explored_capped == 40  # the alternative under the ceiling was explored

        # a ceiling no candidate fits, and one that is not a number: clear 400s
        r = ask(c, gw, "hello", {"x-tollgate-max-cost-usd": "0"}, max_tokens=64)
        assert r.status_code == 400
        err = r.json()["error"]
        assert err["type"] == "invalid_request_error" and err["code"] == "cost_ceiling"
        assert "'small'" in err["message"] and "raise the ceiling" in err["message"]
        r = ask(c, gw, "hello", {"x-tollgate-max-cost-usd": "cheap"})
        assert r.status_code == 400
        err = r.json()["error"]
        assert err["param"] == "x-tollgate-max-cost-usd" and "'cheap'" in err["message"]


def test_router_train_from_store_weights_pairs_by_inverse_propensity(
    fakes: Callable[..., FakeUpstream], gateway: Callable[..., GatewayProcess], tmp_path: Path
) -> None:
    """Explored answers get better feedback than the router's own choices; a fit that
    weights each pair by 1/propensity (explored: 1/0.25, chosen: 1/0.5) moves a model's
    profile further towards the explored scores than the unweighted fit does."""
    ups = {name: fakes(name) for name, *_ in TIERS}
    store = '{backend: sqlite, sqlite_path: "${TOLLGATE_DB}"}'
    n = 240
    # the router's own choice splits these prompts between small and large (RouteLLM's
    # calibration at a 50% strong share), so both have chosen and explored pairs
    from router_models.evaluate import BenchItem, calibrate

    items = [
        BenchItem(str(i), [{"role": "user", "content": p}], {}) for i, p in enumerate(prompts(n))
    ]
    cut = calibrate(load_router(), items, 0.5, "humpback-llama2-70b", "gemma-2b-it")
    policy = f"{{kind: threshold, threshold: {cut:.6f}, strong: large, weak: small}}"
    gw = gateway(config(ups, "{share: 0.5, margin: 1.0}", store, policy=policy))
    with httpx.Client(timeout=30) as c:
        ids = []
        for p in prompts(n):
            r = ask(c, gw, p)
            assert r.status_code == 200, r.text
            ids.append((r.headers["x-tollgate-request-id"], r.headers.get("x-tollgate-explored")))
        db = gw.tmp / "tollgate.db"
        wait_rows(db, n)
        for rid, explored in ids:
            score = 0.9 if explored == "1" else 0.1
            fb = c.post(f"{gw.url}/v1/feedback", json={"request_id": rid, "score": score})
            assert fb.status_code == 200, fb.text
    wait_rows(db, n, "quality_feedback IS NOT NULL")

    env = {**os.environ, "PYTHONPATH": str(REPO), "TOLLGATE_DB": str(db)}
    cmd = [sys.executable, "-m", "gateway.cli", "router", "train", "--from-store",
           "--config", str(gw.config_path), "--min-scores", "10"]  # fmt: skip
    weighted = subprocess.run(
        [*cmd, "--out", str(tmp_path / "w")], capture_output=True, text=True, env=env, timeout=120
    )
    assert weighted.returncode == 0, weighted.stderr
    assert "weighted by 1/propensity (clipped at 20" in weighted.stdout
    # --max-weight 1 clips every weight to 1: the fit the gateway made before propensities
    plain = subprocess.run([*cmd, "--max-weight", "1", "--out", str(tmp_path / "u")],
                           capture_output=True, text=True, env=env, timeout=120)  # fmt: skip
    assert plain.returncode == 0, plain.stderr
    assert "weighted by" not in plain.stdout
    bad = subprocess.run([*cmd, "--max-weight", "0.5"], capture_output=True, text=True, env=env)
    assert bad.returncode == 2 and "--max-weight must be at least 1" in bad.stderr

    w_router, u_router = load_router(str(tmp_path / "w")), load_router(str(tmp_path / "u"))
    with sqlite3.connect(db) as c:
        rows = c.execute("SELECT model, explored, router_features FROM requests").fetchall()
    profiles = {name: profile for name, profile, _ in TIERS}
    compared = 0
    for model, profile in profiles.items():
        mine = [r for r in rows if r[0] == model]
        share_explored = sum(r[1] for r in mine) / max(1, len(mine))
        if len(mine) < 30 or not 0.2 <= share_explored <= 0.8:
            continue  # (nearly) only explored or only chosen pairs: (nearly) equal fits
        z = np.stack([np.frombuffer(r[2], dtype="<f4").astype(np.float64) for r in mine])
        vw, bw = w_router.profile_vector(profile)
        vu, bu = u_router.profile_vector(profile)
        # over this model's own prompts the weighted profile predicts closer to the
        # explored scores (0.9) than the unweighted one, which counts each pair once
        assert float(np.mean(z @ vw + bw)) > float(np.mean(z @ vu + bu)) + 0.03, model
        compared += 1
    assert compared >= 1


def test_explore_settings_are_validated() -> None:
    base = "models: [{name: a, tier: small, endpoints: [{base_url: 'http://127.0.0.1:1'}]}]\n"
    cfg = parse_config(base)
    assert cfg.router.explore.share == 0.0  # off unless asked for
    with pytest.raises(ConfigError) as e:
        parse_config(base + "router: {explore: {share: 1.5}}")
    assert "router.explore.share: Input should be less than or equal to 1" in str(e.value)
    with pytest.raises(ConfigError) as e:
        parse_config(base + "router: {explore: {routes: {chat: 0.1}}}")
    assert "'chat' is not a routed model name" in str(e.value)
    ok = parse_config(
        base + "router: {policies: {cheap: {kind: max_utility, cost_weight: 9}}, "
        "default_policy: cheap, explore: {routes: {cheap: 0.1, 'auto:cheap': 0.2}}}"
    )
    assert ok.router.explore.routes == {"cheap": 0.1, "auto:cheap": 0.2}
    with pytest.raises(ConfigError, match=r"auth.keys\[0\].explore_share"):
        parse_config(base + f"auth: {{keys: [{{id: k, sha256: '{'0' * 64}', explore_share: -1}}]}}")
    ok = parse_config(base + "router: {explore: {routes: {auto: 0.2, router-max_utility-200: 1}}}")
    assert ok.router.explore.routes == {"auto": 0.2, "router-max_utility-200": 1.0}


def test_weights_are_inverse_propensities_clipped_and_equal_weights_fit_as_before() -> None:
    from gateway.accounting.learn import MAX_WEIGHT, weight, weighted_fit
    from gateway.accounting.records import RequestRecord

    def rec(p: float | None) -> RequestRecord:
        return RequestRecord(request_id="r", ts=0.0, propensity=p)

    assert weight(rec(None)) == 1.0  # before schema 4, not routed, or a fallback served
    assert weight(rec(1.0)) == 1.0
    assert weight(rec(0.7)) == pytest.approx(1 / 0.7)
    assert weight(rec(0.15)) == pytest.approx(1 / 0.15)
    assert weight(rec(0.01)) == MAX_WEIGHT == 20.0  # clipped
    assert weight(rec(0.01), max_weight=1.0) == 1.0

    router = load_router("default")
    rng = np.random.default_rng(7)
    z, y = rng.normal(size=(60, router.abilities.shape[1])), rng.uniform(size=60)
    prior = router.profile_vector("gemma-2b-it")
    v0, b0 = router.fit_profile(z, y, alpha=1.0, prior=prior)
    # equal weights of any size, through the weighted solver (one weight a hair off)
    w = np.full(60, 3.0)
    w[0] += 1e-12
    v1, b1 = weighted_fit(router, z, y, w, alpha=1.0, prior=prior)
    assert np.allclose(v0, v1, atol=1e-9) and b0 == pytest.approx(b1, abs=1e-9)
    # a weight of 2 counts a pair as twice: the same fit as the pair repeated
    w2 = np.ones(60)
    w2[:10] = 2.0
    v2, b2 = weighted_fit(router, z, y, w2, alpha=1.0 * 70 / 60, prior=prior)
    vr, br = router.fit_profile(
        np.vstack([z, z[:10]]),
        np.concatenate([y, y[:10]]),
        alpha=1.0 * 70 / 60 * 70 / 60,
        prior=prior,
    )
    assert np.allclose(v2, vr, atol=1e-9) and b2 == pytest.approx(br, abs=1e-9)
