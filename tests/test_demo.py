"""`tollgate demo --no-wait`: starts replay backends and the gateway, routes, summarises, stops."""

from __future__ import annotations

import io
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from gateway.demo import demo
from gateway.demo.procutil import stop_process
from tests.charts import assert_png, assert_readable, spy_charts
from tests.support import REPO


def _routable_config(tmp_path: Path) -> tuple[str, str]:
    """The default routing file, and the model the demo should ask for.

    With the learned router installed that is "auto"; without it the profiles are dropped
    and the demo asks for the `chat` route, so the demo's plumbing is still tested.
    """
    try:
        from router_models import load_router  # type: ignore[attr-defined]

        load_router("default")
        return str(demo.DEFAULT_CONFIG_PATH), "auto"
    except Exception:
        text = "\n".join(
            ln for ln in demo.DEFAULT_CONFIG_PATH.read_text().splitlines() if "profile:" not in ln
        )
        p = tmp_path / "no-router.yaml"
        p.write_text(text)
        return str(p), "chat"


def test_demo_runs_and_prints_the_summary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config, model = _routable_config(tmp_path)
    # --dir relative to where the user stands (the gateway child runs in that folder)
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    charts = spy_charts(monkeypatch)
    out = io.StringIO()
    plot = tmp_path / "qc.png"
    rc = demo.main(
        [
            "--n",
            "40",
            "--speed",
            "1000",
            "--no-wait",
            "--config",
            config,
            "--model",
            model,
            "--port",
            "0",
            "--dir",
            "../out/run",
            "--plot",
            str(plot),
        ],
        out=out,
    )
    text = out.getvalue()
    assert rc == 0, text
    assert "40/40" in text
    for row in ("always small", "always medium", "always large", "always external"):
        assert re.search(rf"^{row}\s+40\s", text, re.M), text
    assert re.search(rf'^routed \("{model}"\)\s+40\s', text, re.M), text
    # its two savings numbers, each under its one name, each defined below the table
    assert re.search(
        r"^routed \(.+\) cost vs always-large \(replayed answers\): [-+]\d", text, re.M
    )
    saved = re.search(
        r"^routed \(.+\) savings vs reference \(same tokens\): (-?[\d.]+) % "
        r"\(reference: (\S+)\), the dashboard's number$",
        text,
        re.M,
    )
    assert saved, text
    assert saved.group(2) == ("gpt-3.5-turbo" if model == "auto" else "large")
    assert "\ncost vs always-<tier> (replayed answers): the routed cost against" in text
    assert "\nsavings vs reference (same tokens): 1 - cost / reference cost" in text
    assert "dashboard:" not in text  # --no-wait: it would not answer
    db = tmp_path / "out" / "run" / "tollgate.db"
    assert f"records kept in {db}: TOLLGATE_DB={db} tollgate report --since 1h" in text
    run = tmp_path / "out" / "run"
    assert (run / "tollgate.db").is_file()
    # which routing file and which store it used
    used = (
        f"\n  routing file {Path(config).absolute()} plus the replay judge: {run}/routing.yaml"
        f"\n  store SQLite at {run / 'tollgate.db'}\n"
    )
    assert used in text
    assert_png(plot, "demo.png")
    (fig,) = charts
    routed = f'routed ("{model}")'
    tiers = {f"always {t}" for t in ("small", "medium", "large", "external")}
    assert_readable(
        fig,
        points={routed, *tiers},
        legend={routed, "one tier", "random mix of single tiers (frontier)"},
    )
    if model == "chat":  # the route always answers with medium: same numbers as always-medium
        routed = re.search(r'^routed \("chat"\)\s+40\s+([\d.]+)\s+[\d.]+\s+([\d.]+)', text, re.M)
        medium = re.search(r"^always medium\s+40\s+([\d.]+)\s+[\d.]+\s+([\d.]+)", text, re.M)
        assert routed and medium and routed.groups() == medium.groups(), text
    # everything it started is gone
    url = re.search(r"^gateway on (http://\S+)$", text, re.M)
    assert url
    with pytest.raises(httpx.HTTPError):
        httpx.get(url.group(1) + "/healthz", timeout=1)


def _proc_stat(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name (state, ppid, ...); None if gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None


def _children(pid: int) -> list[int]:
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            st = _proc_stat(int(d.name))
            if st is not None and int(st[1]) == pid:
                out.append(int(d.name))
    return out


def _running(pid: int) -> bool:
    st = _proc_stat(pid)
    return st is not None and st[0] != "Z"


def test_sigterm_stops_the_demo_children_and_removes_its_temp_folder(tmp_path: Path) -> None:
    """`kill PID` of a waiting `tollgate demo` cleans up like Ctrl-C: its gateway and replay
    children end (not reparented to PID 1) and its temporary folder is removed."""
    config, model = _routable_config(tmp_path)
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    env = dict(os.environ, TMPDIR=str(tmpdir), PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1")
    log = tmp_path / "demo.out"
    cmd = [sys.executable, "-m", "gateway.cli", "demo", "--n", "8", "--speed", "1000",
           "--config", config, "--model", model, "--port", "0"]  # fmt: skip
    children: list[int] = []
    with open(log, "wb") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=tmp_path)
    try:
        deadline = time.monotonic() + 180  # a guard against a hang, not a measurement
        while "Ctrl-C stops" not in log.read_text() and proc.poll() is None:
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        assert proc.poll() is None, log.read_text()
        children = _children(proc.pid)
        assert len(children) == 2, log.read_text()  # the replay backends and the gateway
        folders = list(tmpdir.glob("tollgate-demo-*"))
        assert len(folders) == 1 and (folders[0] / "tollgate.db").is_file()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0, log.read_text()
        assert [c for c in children if _running(c)] == [], log.read_text()
        assert not folders[0].exists()
        assert log.read_text().rstrip().endswith("stopping")
    finally:
        stop_process(proc)
        for c in children:  # only on failure: what this test's demo left behind
            if _running(c):
                os.kill(c, signal.SIGKILL)


def test_demo_config_adds_only_the_replay_judge() -> None:
    text = demo.demo_config(demo.DEFAULT_CONFIG_PATH.read_text(), "http://127.0.0.1:1/v1")
    from gateway.config import parse_config

    cfg = parse_config(text)
    assert cfg.judge.model == demo.JUDGE_NAME and cfg.judge.sample_rate == 1.0
    judge = cfg.model(demo.JUDGE_NAME)
    assert judge is not None and judge.profile is None  # never a routing candidate
    assert [m.name for m in cfg.models][:4] == ["small", "medium", "large", "gpt-3.5-turbo"]
