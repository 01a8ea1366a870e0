"""Learning from production: judge scores recorded by the gateway refit a model's profile."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np

from router_models import load_router
from router_models.data import load_source
from tests.fake_upstream import FakeUpstream
from tests.support import REPO, GatewayProcess


def test_router_train_from_store_refits_profiles_on_judged_traffic(
    fakes: Callable[..., FakeUpstream], gateway: Callable[..., GatewayProcess], tmp_path: Path
) -> None:
    small = fakes("small")
    judge = fakes("judge", reply="Score: 10")  # every answer judged perfect: quality 1.0
    config = "\n".join(
        [
            'store: {backend: sqlite, sqlite_path: "${TOLLGATE_DB}"}',
            "judge: {model: judge, sample_rate: 1.0}",
            "models:",
            "  - name: small",
            "    tier: small",
            "    profile: gemma-2b-it",
            f"    endpoints: [{{base_url: '{small.base_url}'}}]",
            "  - name: judge",
            "    tier: large",
            f"    endpoints: [{{base_url: '{judge.base_url}'}}]",
        ]
    )
    gw = gateway(config)
    prompts = load_source("alpaca_eval").prompts[:80]
    with httpx.Client(timeout=30) as c:
        for p in prompts:
            r = c.post(f"{gw.base_url}/chat/completions", json={
                "model": "small", "messages": [{"role": "user", "content": p}]})  # fmt: skip
            assert r.status_code == 200
    db = gw.tmp / "tollgate.db"
    deadline = time.monotonic() + 20
    n = 0
    while time.monotonic() < deadline:
        n = (
            sqlite3.connect(db)
            .execute(
                "SELECT count(*) FROM requests WHERE quality_judge IS NOT NULL "
                "AND router_features IS NOT NULL"
            )
            .fetchone()[0]
        )
        if n == len(prompts):
            break
        time.sleep(0.1)
    assert n == len(prompts)
    # the record keeps the prompt vector, never the prompt text
    row = sqlite3.connect(db).execute("SELECT * FROM requests LIMIT 1").fetchone()
    assert not any(isinstance(v, str) and prompts[0][:30] in v for v in row)

    env = {**os.environ, "PYTHONPATH": str(REPO), "TOLLGATE_DB": str(db)}
    cmd = [sys.executable, "-m", "gateway.cli", "router", "train", "--from-store",
           "--config", str(gw.config_path), "--min-scores", "10"]  # fmt: skip
    dry = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert dry.returncode == 0, dry.stderr
    assert f"routing file {gw.config_path}, store SQLite at {db}" in dry.stderr
    line = next(ln for ln in dry.stdout.splitlines() if ln.startswith("small "))
    _, profile, n_train, n_test, mse_now, mse_new = line.split()
    assert profile == "gemma-2b-it" and int(n_train) + int(n_test) == len(prompts)
    # gemma-2b-it's trained profile predicts low quality; the judge said 1.0 every time
    assert float(mse_new) < float(mse_now)
    assert "pass --out DIR" in dry.stdout  # nothing written without asking

    out = tmp_path / "refit"
    wrote = subprocess.run([*cmd, "--out", str(out)], capture_output=True, text=True, env=env)
    assert wrote.returncode == 0, wrote.stderr
    before, after = load_router("default"), load_router(str(out))
    conv = [{"role": "user", "content": prompts[0]}]
    q_before = before.quality(before.featurize(conv), ["gemma-2b-it"])[0]
    q_after = after.quality(after.featurize(conv), ["gemma-2b-it"])[0]
    assert q_after > q_before
    assert "+store-" in after.version
    # other profiles are untouched
    v0, _ = before.profile_vector("humpback-llama2-70b")
    v1, _ = after.profile_vector("humpback-llama2-70b")
    assert np.allclose(v0, v1, atol=1e-3)
