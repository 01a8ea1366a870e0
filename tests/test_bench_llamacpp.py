"""`tollgate bench-model` against the real llama.cpp server (Gemma 3 270M) that
scripts/local-model builds: its throughput agrees with llama.cpp's own count of the tokens it
generated, `--write` changes one value of the example routing file, and two server settings
(--parallel 1 and 4) compare in one table. Each server runs in its own run directory on a free
port, started and stopped through scripts/local-model."""

from __future__ import annotations

import difflib
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from bench.llamacpp_settings import LlamaServer
from gateway.measure.rewrite import format_tps
from tests.support import REPO, free_port

pytestmark = pytest.mark.llamacpp
SCRIPT = REPO / "scripts" / "local-model"
EXAMPLE = REPO / "config" / "examples" / "local-llamacpp.yaml"


def _installed() -> bool:
    r = subprocess.run([str(SCRIPT), "path"], capture_output=True, text=True, timeout=30)
    return r.returncode == 0


def _require() -> None:
    if not _installed():
        msg = "llama.cpp is not installed: run scripts/local-model install (.ci/run does)"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[dict[int, LlamaServer]]:
    """llama-server at --parallel 1, 2 and 4 (started on first use)."""
    _require()
    started: dict[int, LlamaServer] = {}

    class Lazy(dict[int, LlamaServer]):
        def __missing__(self, parallel: int) -> LlamaServer:
            s = LlamaServer(free_port(), tmp_path / f"llama-p{parallel}", parallel).start()
            started[parallel] = s
            self[parallel] = s
            return s

    yield Lazy()
    for s in started.values():
        s.stop()


def predicted_total(server: LlamaServer) -> float:
    """llama.cpp's own count of the tokens it generated (its /metrics, --metrics)."""
    text = httpx.get(f"{server.root}/metrics", timeout=10).text
    m = re.search(r"^llamacpp:tokens_predicted_total\s+(\S+)$", text, re.M)
    assert m, text[:500]
    return float(m.group(1))


def bench(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", "bench-model", "gemma-local", *args],
        capture_output=True, text=True, timeout=900, cwd=str(REPO),
        env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})},
    )  # fmt: skip


def test_throughput_agrees_with_llamacpp_and_write_changes_one_value(
    servers: dict[int, LlamaServer], tmp_path: Path
) -> None:
    llama = servers[2]  # the example's setting: --parallel 2, max_concurrency 2
    cfg = tmp_path / "local-llamacpp.yaml"
    cfg.write_bytes(EXAMPLE.read_bytes())
    out, chart = tmp_path / "bench.json", tmp_path / "bench.png"
    before_n = predicted_total(llama)
    r = bench("--config", str(cfg), "--requests-per-stream", "2", "--max-tokens", "32",
              "--warmup", "0", "--json", str(out), "--plot", str(chart), "--write",
              env={"TOLLGATE_LLAMACPP_URL": llama.base_url})  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    generated = predicted_total(llama) - before_n
    data = json.loads(out.read_text())["targets"][0]
    levels = data["levels"]
    assert [lv["concurrency"] for lv in levels] == [1, 2]  # up to the model's max_concurrency
    for lv in levels:
        assert lv["errors"] == 0 and lv["requests"] == 2 * lv["concurrency"]
        # llama.cpp's own timings.predicted_n of the same answers, over the same wall time
        server_tps = lv["server_predicted_n"] / lv["wall_s"]
        assert lv["aggregate_tps"] == pytest.approx(server_tps, rel=0.10)
    # and its own counter, read before and after the run, saw as many tokens
    measured = sum(lv["aggregate_tps"] * lv["wall_s"] for lv in levels)
    assert measured == pytest.approx(generated, rel=0.10)
    # the table a person reads, and the chart
    assert "AGG TOK/s" in r.stdout and "saturation at concurrency" in r.stdout
    assert chart.read_bytes().startswith(b"\x89PNG") and chart.stat().st_size > 20_000
    # --write: the one value, nothing else
    tps = data["saturation"]["tokens_per_second"]
    diff = [
        ln
        for ln in difflib.unified_diff(
            EXAMPLE.read_text().splitlines(), cfg.read_text().splitlines(), lineterm="", n=0
        )
        if not ln.startswith(("---", "+++", "@@"))
    ]
    old = "    pricing: {hardware_usd_per_hour: 0.10, tokens_per_second: 30}"
    assert diff[0] == f"-{old}" and len(diff) == 2
    assert diff[1].startswith(f"+{old.replace('30', format_tps(tps))}  # measured ")


def test_two_server_settings_in_one_table(servers: dict[int, LlamaServer], tmp_path: Path) -> None:
    one, four = servers[1], servers[4]
    out = tmp_path / "bench.json"
    before = {p: predicted_total(s) for p, s in ((1, one), (4, four))}
    r = bench("--config", str(EXAMPLE), "--levels", "1,4", "--requests-per-stream", "1",
              "--max-tokens", "16", "--scored", "builtin", "--warmup", "0", "--json", str(out),
              "--url", one.base_url, "--label", "parallel 1",
              "--url", four.base_url, "--label", "parallel 4")  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    lines = r.stdout.splitlines()
    at = next(i for i, ln in enumerate(lines) if ln.startswith("TARGET"))
    compared = [re.split(r"\s{2,}", ln.strip()) for ln in lines[at + 1 : at + 3]]
    assert [row[0] for row in compared] == ["parallel 1", "parallel 4"]
    targets = {t["label"]: t for t in json.loads(out.read_text())["targets"]}
    for row, (p, server) in zip(compared, ((1, one), (4, four)), strict=True):
        t = targets[row[0]]
        sat = t["saturation"]
        assert row[2] == f"{sat['tokens_per_second']:,.1f}"
        assert row[8] == f"{sat['usd_per_mtok_output']:.4f}"  # the example's $0.10/hour
        assert sat["usd_per_mtok_output"] == pytest.approx(
            0.10 / 3600 / sat["tokens_per_second"] * 1e6
        )
        assert row[9] == f"{t['exact_match']['right']}/5"  # 1 + 4 graded answers
        assert all(lv["errors"] == 0 for lv in t["levels"])
        tokens = sum(lv["completion_tokens"] for lv in t["levels"])
        assert tokens == pytest.approx(predicted_total(server) - before[p], rel=0.10)
