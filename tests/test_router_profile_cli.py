"""A model the router has never seen gets a profile from a small file of scored prompts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from router_models import load_router
from router_models.data import load_source
from tests.support import REPO


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", "router", *args],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip


def test_profile_from_scored_prompts_file(tmp_path: Path) -> None:
    prompts = load_source("alpaca_eval").prompts[:40]
    scores = tmp_path / "scores.jsonl"
    with scores.open("w") as f:
        for i, p in enumerate(prompts):
            if i % 2:
                f.write(json.dumps({"prompt": p, "score": 0.95}) + "\n")
            else:
                f.write(json.dumps({"messages": [{"role": "user", "content": p}],
                                    "scores": {"acme-7b": 0.95}}) + "\n")  # fmt: skip
    out = tmp_path / "art"
    r = _cli("profile", "--name", "acme-7b", "--scores", str(scores), "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert "profile 'acme-7b' added from 40 prompts" in r.stdout
    base, new = load_router("default"), load_router(str(out))
    assert not base.has_profile("acme-7b") and new.has_profile("acme-7b")
    held = [[{"role": "user", "content": p}] for p in load_source("alpaca_eval").prompts[-30:]]
    q_new = np.mean([new.quality(new.featurize(c), ["acme-7b"])[0] for c in held])
    q_avg = np.mean([np.mean(base.quality(base.featurize(c), base.profiles)) for c in held])
    assert q_new > q_avg  # a model that scored 0.95 everywhere is predicted above average
    # the shipped profiles are unchanged
    v0, b0 = base.profile_vector("gemma-2b-it")
    v1, b1 = new.profile_vector("gemma-2b-it")
    assert np.allclose(v0, v1, atol=1e-3) and abs(b0 - b1) < 1e-3


def test_profile_file_errors_name_the_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "hi", "score": 0.5}\n{"prompt": "x", "score": 3}\n')
    r = _cli("profile", "--name", "m", "--scores", str(bad), "--out", str(tmp_path / "o"))
    assert r.returncode != 0
    assert f"{bad}:2" in r.stderr and "must be in [0, 1]" in r.stderr
    assert not (tmp_path / "o").exists()
