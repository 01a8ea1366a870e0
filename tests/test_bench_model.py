"""`tollgate bench-model` against fake upstreams: the tables it prints, exact-match grading,
two endpoints compared in one table, errors counted, `--write` changing one value only, and
the shipped task set being what its script makes. (The real llama.cpp server:
tests/test_bench_llamacpp.py.)"""

from __future__ import annotations

import difflib
import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from gateway.config import parse_config
from gateway.measure.rewrite import format_tps
from gateway.measure.scored import BUILTIN_TASKS
from tests.fake_upstream import FakeUpstream
from tests.support import REPO

Fakes = Callable[..., FakeUpstream]
EXAMPLE = REPO / "config" / "examples" / "local-llamacpp.yaml"
URL_VAR = "TOLLGATE_LLAMACPP_URL"


def bench(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", "bench-model", *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=str(REPO),
        env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})},
    )


def rows(stdout: str, first: str) -> list[list[str]]:
    """The rows of the table whose header starts with `first`, split on 2+ spaces."""
    lines = stdout.splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith(first))
    out = []
    for ln in lines[start + 1 :]:
        if not ln.strip() or ": " in ln:  # a blank line or the prose after the table
            break
        out.append(re.split(r"\s{2,}", ln.strip()))
    return out


def test_levels_table_saturation_and_price(fakes: Fakes, tmp_path: Path) -> None:
    fu = fakes("fake", completion_tokens=12, chunks=12)
    out = tmp_path / "bench.json"
    r = bench("gemma-local", "--config", str(EXAMPLE), "--levels", "1,2", "--warmup", "0",
              "--requests-per-stream", "2", "--json", str(out),
              env={URL_VAR: fu.base_url})  # fmt: skip
    assert r.returncode == 0, r.stderr
    table = rows(r.stdout, "CONC")
    assert [row[0] for row in table] == ["1", "2"]
    assert [row[1] for row in table] == ["2", "4"]  # requests: 2 per stream
    assert [row[3] for row in table] == ["24", "48"]  # 12 tokens an answer, every one counted
    data = json.loads(out.read_text())["targets"][0]
    for row, lv in zip(table, data["levels"], strict=True):
        assert lv["completion_tokens"] == int(row[3])
        assert lv["aggregate_tps"] == lv["completion_tokens"] / lv["wall_s"]
        assert row[5] == f"{lv['aggregate_tps']:,.1f}"
    sat = data["saturation"]
    best = max(lv["aggregate_tps"] for lv in data["levels"])
    assert sat["tokens_per_second"] >= 0.95 * best
    # the example's price: $0.10 an hour; input at 0.1 of output
    assert sat["usd_per_mtok_output"] == pytest.approx(0.10 / 3600 / sat["tokens_per_second"] * 1e6)
    assert sat["usd_per_mtok_input"] == pytest.approx(0.1 * sat["usd_per_mtok_output"])
    assert f"${sat['usd_per_mtok_output']:.4f} per million output tokens" in r.stdout
    assert fu.stats()["requests"] == 6  # nothing else was sent: no warm-up asked for


def test_errors_are_counted_not_priced(fakes: Fakes) -> None:
    fu = fakes("fake", completion_tokens=8)
    fu.script([{"kind": "status", "status": 500, "repeat": 2}])
    r = bench("gemma-local", "--config", str(EXAMPLE), "--levels", "1", "--warmup", "0",
              "--requests-per-stream", "4", env={URL_VAR: fu.base_url})  # fmt: skip
    assert r.returncode == 0, r.stderr
    (row,) = rows(r.stdout, "CONC")
    assert row[1:4] == ["4", "2", "16"]  # 4 sent, 2 failed, the 2 answers' 16 tokens


def test_scored_file_graded_by_exact_match(fakes: Fakes, tmp_path: Path) -> None:
    fu = fakes("fake", reply="Answer: 51.")
    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text(
        '{"prompt": "What is 39 + 12?", "answer": "51"}\n{"prompt": "What is 3 * 17?", '
        '"answer": 52}\n'
    )
    out = tmp_path / "bench.json"
    r = bench("gemma-local", "--config", str(EXAMPLE), "--levels", "1,2", "--warmup", "0",
              "--requests-per-stream", "2", "--scored", str(tasks), "--json", str(out),
              env={URL_VAR: fu.base_url})  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert [row[-1] for row in rows(r.stdout, "CONC")] == ["1/2", "2/4"]
    assert json.loads(out.read_text())["targets"][0]["exact_match"] == {"right": 3, "graded": 6}


def test_bad_scored_file_says_what_is_wrong(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('[{"prompt": "2+2?"}]')
    r = bench("gemma-local", "--config", str(EXAMPLE), "--scored", str(bad))
    assert r.returncode == 2
    assert 'task 0: needs a non-empty string "prompt" and an "answer"' in r.stderr
    r = bench("nope", "--config", str(EXAMPLE))
    assert r.returncode == 2 and "no model 'nope' in the routing file" in r.stderr


def test_two_endpoints_compared_in_one_table(fakes: Fakes, tmp_path: Path) -> None:
    quick = fakes("quick", completion_tokens=10, chunks=10)
    slow = fakes("slow", completion_tokens=10, chunks=10, chunk_delay_ms=20)
    out = tmp_path / "bench.json"
    chart = tmp_path / "bench.png"
    r = bench("gemma-local", "--config", str(EXAMPLE), "--levels", "1,2",
              "--requests-per-stream", "2", "--scored", "builtin",
              "--url", quick.base_url, "--label", "quick", "--url", slow.base_url,
              "--label", "slow", "--json", str(out), "--plot", str(chart))  # fmt: skip
    assert r.returncode == 0, r.stderr
    compared = rows(r.stdout, "TARGET")
    assert [row[0] for row in compared] == ["quick", "slow"]
    data = {t["label"]: t for t in json.loads(out.read_text())["targets"]}
    for row in compared:
        sat = data[row[0]]["saturation"]
        assert row[1] == f"c={sat['concurrency']}"
        assert row[2] == f"{sat['tokens_per_second']:,.1f}"
        assert row[8] == f"{sat['usd_per_mtok_output']:.4f}"
        assert row[9] == "0/6"  # the fake's answers are never right
    # every token of the slow one waited its 20 ms
    assert data["slow"]["saturation"]["per_token_p50_ms"] >= 20.0
    assert chart.read_bytes().startswith(b"\x89PNG")
    assert quick.stats()["requests"] == slow.stats()["requests"] == 1 + 2 + 4


def test_write_changes_only_tokens_per_second(fakes: Fakes, tmp_path: Path) -> None:
    fu = fakes("fake", completion_tokens=10, chunks=10)
    cfg = tmp_path / "local-llamacpp.yaml"
    before = EXAMPLE.read_bytes()
    cfg.write_bytes(before)
    out = tmp_path / "bench.json"
    r = bench("gemma-local", "--config", str(cfg), "--levels", "1,2", "--requests-per-stream",
              "2", "--json", str(out), "--write", env={URL_VAR: fu.base_url})  # fmt: skip
    assert r.returncode == 0, r.stderr
    tps = json.loads(out.read_text())["targets"][0]["saturation"]["tokens_per_second"]
    after = cfg.read_bytes()
    diff = [
        ln
        for ln in difflib.unified_diff(
            before.decode().splitlines(), after.decode().splitlines(), lineterm="", n=0
        )
        if not ln.startswith(("---", "+++", "@@"))
    ]
    old = "    pricing: {hardware_usd_per_hour: 0.10, tokens_per_second: 30}"
    assert diff[0] == f"-{old}"
    new = diff[1]
    assert new.startswith(f"+{old.replace('30', format_tps(tps))}  # measured ")
    assert re.search(r"# measured \d{4}-\d{2}-\d{2} by: tollgate bench-model gemma-local ", new)
    assert "--write" in new
    assert len(diff) == 2  # one line out, one in
    # every byte before and after that line is the same
    start = before.index(old.encode())
    end = start + len(old)
    assert after[:start] == before[:start]
    assert after.endswith(before[end:]) and after.count(b"\n") == before.count(b"\n")
    a = parse_config(before.decode()).model_dump()
    b = parse_config(after.decode()).model_dump()
    assert b["models"][0]["pricing"]["tokens_per_second"] == float(format_tps(tps))
    b["models"][0]["pricing"]["tokens_per_second"] = 30
    assert a == b
    # a second run replaces its own comment instead of adding another
    r = bench("gemma-local", "--config", str(cfg), "--levels", "1", "--requests-per-stream",
              "1", "--write", env={URL_VAR: fu.base_url})  # fmt: skip
    assert r.returncode == 0, r.stderr
    again = cfg.read_text()
    assert again.count("# measured ") == 1 and len(again.splitlines()) == len(before.splitlines())


def test_write_refuses_a_model_without_local_pricing(fakes: Fakes, tmp_path: Path) -> None:
    fu = fakes("fake")
    cfg = tmp_path / "r.yaml"
    cfg.write_text(
        "models:\n  - name: api\n    tier: large\n    pricing: {input_per_mtok: 1, "
        f"output_per_mtok: 2}}\n    endpoints: [{{base_url: '{fu.base_url}'}}]\n"
    )
    before = cfg.read_bytes()
    r = bench("api", "--config", str(cfg), "--levels", "1", "--requests-per-stream", "1", "--write")
    assert r.returncode == 2
    assert "has no pricing.tokens_per_second to rewrite" in r.stderr
    assert cfg.read_bytes() == before


def test_shipped_tasks_are_what_the_script_makes(tmp_path: Path) -> None:
    out = tmp_path / "tasks.json"
    r = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "make_exact_tasks.py"), "--out", str(out)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert out.read_bytes() == BUILTIN_TASKS.read_bytes()
    tasks: list[dict[str, Any]] = json.loads(out.read_text())
    assert {t["kind"] for t in tasks} == {"arithmetic", "counting", "string"}
    for t in tasks:  # each answer is right
        if t["kind"] == "arithmetic":
            a, op, b = re.match(r"What is (\d+) (.) (\d+)\?", t["prompt"]).groups()  # type: ignore[union-attr]
            assert str(eval(f"{a}{op}{b}")) == t["answer"]  # digits and + - *
