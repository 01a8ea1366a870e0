"""`router eval` / `router calibrate` through the real CLI, on a case worked out by hand."""

from __future__ import annotations

import functools
import json
import re
from pathlib import Path

import numpy as np
import pytest

from router_models import Router, save_router
from router_models.lexical import STRUCT_NAMES, LexicalFeaturizer
from router_models.metrics import curve_metrics, router_curve
from tests.support import router_cli

ROOT = Path(__file__).resolve().parent.parent
_cli = functools.partial(router_cli, timeout=60)

# Ten prompts; the router below scores a prompt by its length, so prompt i (i = 1..10
# characters) has the i-th lowest score.  weak is right on prompts 1, 2 and 4 (30%), strong on
# all (100%).  RouteLLM's 11 cut points send the top k = 0..10 prompts to strong, so the curve is
#   strong %: 0   10  20  30  40  50  60  70  80  90  100
#   quality : 30  40  50  60  70  80  90  90  100 100 100
# AUC  = 0.1 * ((30 + 100) / 2 + 40+50+60+70+80+90+90+100+100) = 74.5
# APGR = (74.5 - 30) / (100 - 30) = 44.5 / 70
# CPT(50%): quality 30 + 0.5 * 70 = 65 lies halfway from (30%, 60) to (40%, 70) -> 35%
# CPT(80%): quality 30 + 0.8 * 70 = 86 lies 0.6 of the way from (50%, 80) to (60%, 90) -> 56%
# Oracle: 7 prompts gain 1 -> quality 30, 40, ..., 100 at 70%, then 100:
#   AUC = 0.1 * (65 + 40+50+60+70+80+90+100+100+100) = 75.5, APGR = 45.5 / 70 = 0.65
WEAK = [1, 1, 0, 1, 0, 0, 0, 0, 0, 0]
STRONG = [1] * 10


def _length_router(tmp_path: Path) -> Path:
    feat = LexicalFeaturizer(bits=4)
    proj = np.zeros((feat.dim, 1), dtype=np.float32)
    proj[feat.n_hash + STRUCT_NAMES.index("log_chars"), 0] = 1.0
    router = Router(
        feat,
        proj,
        np.array([[1.0], [0.0]]),
        np.zeros(2),
        ["big-profile", "small-profile"],
        "big-profile",
        "small-profile",
        "test-length-router",
    )
    return save_router(router, tmp_path / "router", "# test router\n")


def _bench(tmp_path: Path) -> Path:
    path = tmp_path / "bench.jsonl"
    with open(path, "w") as f:
        for i in range(10, 0, -1):  # file order must not matter
            line = {"id": f"p{i}", "scores": {"S": STRONG[i - 1], "W": WEAK[i - 1]}}
            if i % 2:
                line["prompt"] = "x" * i
            else:
                line["messages"] = [{"role": "user", "content": "x" * i}]
            f.write(json.dumps(line) + "\n")
    return path


def test_hand_computed_apgr_and_cpt(tmp_path: Path) -> None:
    router_dir = _length_router(tmp_path)
    bench = _bench(tmp_path)
    out = tmp_path / "out"
    res = _cli(
        "eval", "--bench", str(bench), "--strong", "S", "--weak", "W", "--router",
        str(router_dir), "--profile", "S=big-profile", "--profile", "W=small-profile",
        "--out", str(out),
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["n"] == 10
    assert report["apgr"] == pytest.approx(44.5 / 70, abs=1e-9)
    assert report["cpt50"] == pytest.approx(35.0, abs=1e-9)
    assert report["cpt80"] == pytest.approx(56.0, abs=1e-9)
    assert report["oracle_apgr"] == pytest.approx(0.65, abs=1e-9)
    assert report["curve"]["quality"] == pytest.approx(
        [30, 40, 50, 60, 70, 80, 90, 90, 100, 100, 100]
    )
    assert 0.0 <= report["random_apgr"] <= 1.0
    assert "S -> big-profile (from --profile)" in res.stdout
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # anyone can recompute the metrics from scores.jsonl
    scores = {}
    for line in (out / "scores.jsonl").read_text().splitlines():
        obj = json.loads(line)
        scores[obj["id"]] = obj["score"]
    ids = [f"p{i}" for i in range(1, 11)]
    assert [scores[i] for i in ids] == sorted(scores[i] for i in ids)
    c = router_curve(np.array([scores[i] for i in ids]), np.array(STRONG), np.array(WEAK))
    assert curve_metrics(c, 30.0, 100.0).apgr == pytest.approx(report["apgr"])


def test_unknown_names_fall_back_to_default_profiles_and_say_so(tmp_path: Path) -> None:
    router_dir = _length_router(tmp_path)
    res = _cli(
        "eval", "--bench", str(_bench(tmp_path)), "--strong", "S", "--weak", "W",
        "--router", str(router_dir), "--out", str(tmp_path / "o"),
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert "NO PROFILE for 'S'" in res.stdout and "default strong profile" in res.stdout
    assert "W -> small-profile" in res.stdout
    report = json.loads((tmp_path / "o" / "report.json").read_text())
    assert report["apgr"] == pytest.approx(44.5 / 70, abs=1e-9)


def test_calibrate_prints_the_threshold_for_a_share(tmp_path: Path) -> None:
    router_dir = _length_router(tmp_path)
    res = _cli(
        "calibrate", "--target-share", "0.3", "--prompts", str(_bench(tmp_path)),
        "--router", str(router_dir),
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    thr = float(res.stdout.split()[1])
    expected = 0.5 + 0.5 * np.log1p(np.arange(1, 11)) / 10.0
    assert (expected >= thr).sum() == 3


def test_n_model_quality_cost_curve(tmp_path: Path) -> None:
    router_dir = _length_router(tmp_path)
    res = _cli(
        "eval", "--bench", str(_bench(tmp_path)), "--models", "S,W", "--costs", "S=10,W=1",
        "--router", str(router_dir), "--profile", "S=big-profile,W=small-profile",
        "--out", str(tmp_path / "n"),
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    report = json.loads((tmp_path / "n" / "report.json").read_text())
    assert report["best_single_quality"] == 1.0
    assert report["cheapest_at_95pct_of_best"]["quality"] >= 0.95
    assert 0.0 < report["area"] <= 1.0
    # one line of predicted quality per prompt, every model, as the router scores it
    lines = [json.loads(x) for x in (tmp_path / "n" / "predictions.jsonl").read_text().splitlines()]
    assert sorted(x["id"] for x in lines) == sorted(f"p{i}" for i in range(1, 11))
    by_id = {x["id"]: x["quality"] for x in lines}
    assert set(by_id["p3"]) == {"S", "W"}
    # identity link: big-profile's quality is the clipped log_chars feature, small's is 0.001
    assert by_id["p3"]["S"] == pytest.approx(np.log1p(3) / 10.0, abs=1e-5)
    assert by_id["p3"]["W"] == pytest.approx(0.001)


def test_malformed_bench_line_names_file_and_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": 1, "prompt": "hi", "scores": {"S": 1, "W": 0}}\n{"id": 2}\n')
    res = _cli("eval", "--bench", str(bad), "--strong", "S", "--weak", "W", "--out", str(tmp_path))
    assert res.returncode == 2
    assert "bad.jsonl:2" in res.stderr


def test_n_model_eval_reports_cost_at_targets_against_the_frontier(tmp_path: Path) -> None:
    """Models asked for under other spellings than the benchmark's read the same scores; the
    report gives the routed and the random-mix cost at 95/97/99% of the best model's quality,
    each with a 90% interval."""
    bench = tmp_path / "crux.jsonl"
    split = _cli("split", "--source", "zeroeval_crux", "--out", str(bench))
    assert split.returncode == 0, split.stderr
    res = _cli(
        "eval", "--bench", str(bench),
        "--models", "gpt-4o,gpt-4o-mini,meta-llama/Llama-3.1-70B-Instruct,llama3.1:8b",
        "--costs", "gpt-4o=10,gpt-4o-mini=0.6,llama3.1:8b=0.2",
        "--costs", "meta-llama/Llama-3.1-70B-Instruct=0.9",
        "--out", str(tmp_path / "m"),
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert "profile: llama3.1:8b -> llama-3.1-8b-instruct (source data" in res.stdout
    report = json.loads((tmp_path / "m" / "report.json").read_text())
    assert report["n"] > 100  # every held-out prompt: the aliases found their scores
    targets = report["cost_at_targets"]
    for t in ("95", "97", "99"):
        for side in ("router", "frontier"):
            cell = targets[side][t]
            lo, hi = cell["ci90"]
            assert 0.0 < cell["cost_share"] <= 1.0 and lo <= hi
        # routed points are mixed with the single models, so never above the frontier
        assert targets["router"][t]["cost_share"] <= targets["frontier"][t]["cost_share"] + 1e-12
        assert re.search(rf"  {t}%: routed [\d.]+ \[[\d.]+, [\d.]+\]  random mix", res.stdout)
