"""`tollgate demo --no-wait`: starts replay backends and the gateway, routes, summarises, stops."""

from __future__ import annotations

import io
import re
from pathlib import Path

import httpx
import pytest

from gateway.demo import demo
from tests.charts import assert_png, assert_readable, spy_charts


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
            str(tmp_path / "run"),
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
    assert "vs always large: cost" in text
    assert "dashboard: http://127.0.0.1:" in text
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
    url = re.search(r"dashboard: (http://\S+)/dashboard", text)
    assert url
    with pytest.raises(httpx.HTTPError):
        httpx.get(url.group(1) + "/healthz", timeout=1)


def test_demo_config_adds_only_the_replay_judge() -> None:
    text = demo.demo_config(demo.DEFAULT_CONFIG_PATH.read_text(), "http://127.0.0.1:1/v1")
    from gateway.config import parse_config

    cfg = parse_config(text)
    assert cfg.judge.model == demo.JUDGE_NAME and cfg.judge.sample_rate == 1.0
    judge = cfg.model(demo.JUDGE_NAME)
    assert judge is not None and judge.profile is None  # never a routing candidate
    assert [m.name for m in cfg.models][:4] == ["small", "medium", "large", "gpt-3.5-turbo"]
