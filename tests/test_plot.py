"""Every chart the CLI writes, drawn from real data: `tollgate report --plot` on a store filled
by real requests through a real gateway, and `tollgate router eval` on a benchmark file from
`tollgate router split`.

Each test checks the PNG is a real image with ink on it, and, in the matplotlib Figure the chart
function returns, that a person gets a title, labelled axes with units, ticks, a legend and
each model as a labelled point whose label does not overlap another. Each chart is also
copied to test-artifacts/charts/ to be looked at.
"""

from __future__ import annotations

import io
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from matplotlib.figure import Figure
from matplotlib.text import Annotation

from gateway import cli
from gateway.views import plot, report
from tests.charts import assert_png, assert_readable, spy_charts, texts
from tests.fake_upstream import FakeUpstream
from tests.support import REPO, GatewayProcess

Fakes = Callable[..., FakeUpstream]
Gw = Callable[..., GatewayProcess]

PRICED = """
store: {{backend: sqlite, sqlite_path: "${{TOLLGATE_DB}}"}}
models:
  - name: small
    tier: small
    pricing: {{input_per_mtok: 0.5, output_per_mtok: 1.5}}
    endpoints: [{{base_url: "{small}", model: up-small}}]
  - name: large
    tier: large
    pricing: {{input_per_mtok: 3.0, output_per_mtok: 15.0}}
    endpoints: [{{base_url: "{large}", model: up-large}}]
"""


@pytest.fixture
def charts(monkeypatch: pytest.MonkeyPatch) -> list[Figure]:
    """The Figures the real chart functions return while a command runs."""
    return spy_charts(monkeypatch)


def test_mix_frontier_is_the_upper_hull_from_cheapest_to_best() -> None:
    # (cost, quality): b lies under the chord a-c, so mixing a and c beats it; d is dearer
    # and worse than c, so no mix uses it; e costs as much as a but is worse.
    a, b, c, d, e = (1.0, 0.2), (2.0, 0.3), (4.0, 0.8), (6.0, 0.7), (1.0, 0.1)
    assert plot.mix_frontier([d, b, a, c, e]) == [a, c]
    assert plot.mix_frontier([a, (2.0, 0.7), c]) == [a, (2.0, 0.7), c]
    assert plot.mix_frontier([a]) == [a]


def _report(argv: list[str]) -> tuple[int, str]:
    out = io.StringIO()
    code = report.main(argv, out)
    return code, out.getvalue()


def test_report_plot_from_a_real_gateway(
    fakes: Fakes,
    gateway: Gw,
    tmp_path: Path,
    charts: list[Figure],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    small, large = fakes("small", completion_tokens=40), fakes("large", completion_tokens=200)
    gw = gateway(PRICED.format(small=small.base_url, large=large.base_url))
    c = openai.OpenAI(base_url=gw.base_url, api_key="x", max_retries=0)
    ids: dict[str, list[str]] = {"small": [], "large": []}
    for i in range(6):
        model = "small" if i % 3 else "large"
        raw = c.chat.completions.with_raw_response.create(
            model=model, messages=[{"role": "user", "content": f"question {i} about charts"}]
        )
        ids[model].append(raw.headers["x-tollgate-request-id"])
    # requests that fail before a model is chosen land in the "(none)" group
    for body in ({"model": "no-such-model"}, {"model": "small", "max_tokens": -1}):
        r = httpx.post(
            f"{gw.base_url}/chat/completions",
            json={"messages": [{"role": "user", "content": "hi"}], **body},
        )
        assert r.status_code >= 400

    def usage() -> dict[str, Any]:
        got: dict[str, Any] = httpx.get(
            f"{gw.url}/v1/usage", params={"since": "1h", "group_by": "model"}
        ).json()
        return got

    for _ in range(200):
        if usage()["totals"]["requests"] == 8:
            break
        time.sleep(0.05)
    assert {r["group"] for r in usage()["data"]} == {"small", "large", "(none)"}

    # 1. no quality scores yet: the chart shows cost only and says why
    png = tmp_path / "report-cost-only.png"
    code, text = _report(["--url", gw.url, "--since", "1h", "--plot", str(png)])
    assert code == 0, text
    assert_png(png)
    fig = charts[-1]
    (ax,) = fig.axes
    all_text = " ".join(texts(fig))
    assert ax.get_title(loc="left").startswith("Cost by model, since ")
    assert "no quality scores were recorded" in all_text and "shows cost only" in all_text
    assert "(none)" not in all_text  # the failed requests are left out
    # bottom to top: the whole mix under its groups, the dearest group on top as in the table
    assert [t.get_text() for t in ax.get_yticklabels()] == [
        "all requests, as routed",
        "small",
        "large",
    ]
    assert ax.get_ylim()[0] <= 0 < ax.get_ylim()[1]
    assert "USD per 1,000 answered requests" in ax.get_xlabel()
    assert ax.get_legend() is not None
    assert {t.get_text() for t in ax.get_legend().get_texts()} == {
        "one model",
        "all requests, as routed",
    }

    # 2. with quality (feedback on every answer): quality against cost per group
    for model, score in (("small", 0.55), ("large", 0.9)):
        for rid in ids[model]:
            fb = httpx.post(f"{gw.url}/v1/feedback", json={"request_id": rid, "score": score})
            assert fb.status_code in (200, 202), fb.text
    for _ in range(200):
        if usage()["totals"]["quality_n"] == 6:
            break
        time.sleep(0.05)
    png = tmp_path / "report-by-model.png"
    code, text = _report(["--url", gw.url, "--since", "1h", "--plot", str(png)])
    assert code == 0, text
    assert f"plot: {png}" in text
    assert_png(png)
    fig = charts[-1]
    assert "(none)" not in " ".join(texts(fig))
    assert_readable(
        fig,
        points={"small", "large", "all requests, as routed"},
        legend={"one model", "all requests, as routed", "random mix of single models (frontier)"},
    )
    (ax,) = fig.axes
    assert "quality" in ax.get_ylabel() and "USD" in ax.get_xlabel()
    # each point where its numbers put it: y = the feedback score, not 0
    spots = {a.get_text(): a.xy for a in fig.findobj(Annotation) if a.get_text()}
    assert spots["small"][1] == pytest.approx(0.55)
    assert spots["large"][1] == pytest.approx(0.9)
    assert spots["all requests, as routed"][1] == pytest.approx((4 * 0.55 + 2 * 0.9) / 6)
    assert spots["small"][0] < spots["all requests, as routed"][0] < spots["large"][0]

    # 3. the same chart from the store through the routing file (by tier), as the gateway's
    # operator runs it: with the gateway's environment
    monkeypatch.setenv("TOLLGATE_DB", gw.env["TOLLGATE_DB"])
    png = tmp_path / "report-by-tier.png"
    code, text = _report(
        ["--config", str(gw.config_path), "--since", "1h", "--group-by", "tier", "--plot", str(png)]
    )
    assert code == 0, text
    assert_png(png)
    assert_readable(
        charts[-1],
        points={"small", "large", "all requests, as routed"},
        legend={"one tier", "all requests, as routed", "random mix of single tiers (frontier)"},
    )


@pytest.fixture(scope="module")
def bench(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small benchmark file of real AlpacaEval prompts the router never trained on."""
    path = tmp_path_factory.mktemp("bench") / "heldout.jsonl"
    assert cli.main(["router", "split", "--source", "alpaca_eval", "--part", "heldout",
                     "--out", str(path)]) == 0  # fmt: skip
    return path


def test_router_eval_two_models_chart(bench: Path, tmp_path: Path, charts: list[Figure]) -> None:
    out = tmp_path / "pair"
    code = cli.main(["router", "eval", "--bench", str(bench), "--strong", "humpback-llama2-70b",
                     "--weak", "gemma-2b-it", "--out", str(out)])  # fmt: skip
    assert code == 0
    assert_png(out / "curves.png", "router-eval-two-models.png")
    (fig,) = charts
    assert_readable(
        fig,
        points={"humpback-llama2-70b (strong)", "gemma-2b-it (weak)"},
        legend={
            "routed",
            "random routing (baseline)",
            "oracle (best possible routing)",
            "single model (all calls)",
        },
    )
    (ax,) = fig.axes
    assert "humpback-llama2-70b" in ax.get_title(loc="left")
    assert "%" in ax.get_xlabel() and "%" in ax.get_ylabel()
    assert [t.get_text() for t in ax.get_xticklabels()][:2] == ["0%", "20%"]


def test_router_eval_many_models_chart(bench: Path, tmp_path: Path, charts: list[Figure]) -> None:
    out = tmp_path / "multi"
    models = {"gemma-2b-it": 0.1, "vicuna-13b": 0.3, "gpt-3.5-turbo-1106": 1.0,
              "humpback-llama2-70b": 1.2, "claude-2": 8.0}  # fmt: skip
    costs = ",".join(f"{m}={c}" for m, c in models.items())
    code = cli.main(["router", "eval", "--bench", str(bench), "--models", ",".join(models),
                     "--costs", costs, "--out", str(out)])  # fmt: skip
    assert code == 0
    assert_png(out / "quality_cost.png", "router-eval-many-models.png")
    (fig,) = charts
    assert_readable(
        fig,
        points=set(models),
        legend={
            "routed (one point per quality target)",
            "random mix of single models (frontier)",
            "single model (always this one)",
        },
    )
    (ax,) = fig.axes
    frontier = next(
        ln for ln in ax.get_lines() if ln.get_label() == "random mix of single models (frontier)"
    )
    xs = list(frontier.get_xdata())  # type: ignore[arg-type]
    assert xs[0] == 0.1 and xs[-1] == 8.0  # from the cheapest model to the best one


NO_MATPLOTLIB = (
    "import sys; sys.modules['matplotlib'] = None; "  # as if it were not installed
    "from gateway.cli import main; raise SystemExit(main(sys.argv[1:]))"
)


def _without_matplotlib(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", NO_MATPLOTLIB, *argv],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_without_matplotlib_the_commands_say_how_to_get_it(bench: Path, tmp_path: Path) -> None:
    png = tmp_path / "r.png"
    res = _without_matplotlib("report", "--url", "http://127.0.0.1:9", "--plot", str(png))
    assert res.returncode == 1
    assert "pip install 'tollgate[plot]'" in res.stderr
    assert "Traceback" not in res.stderr
    assert not png.exists()
    out = tmp_path / "eval"
    res = _without_matplotlib("router", "eval", "--bench", str(bench), "--strong",
                              "humpback-llama2-70b", "--weak", "gemma-2b-it",
                              "--out", str(out))  # fmt: skip
    assert res.returncode != 0
    assert "pip install 'tollgate[plot]'" in res.stderr
    assert "Traceback" not in res.stderr
    assert (out / "report.json").exists() and not (out / "curves.png").exists()


def test_router_models_loads_without_gateway() -> None:
    """router_models imports the charts only when it draws one."""
    code = (
        "import sys; import router_models.cli, router_models.evaluate; "
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('gateway', 'matplotlib')); "
        "print(bad); raise SystemExit(1 if bad else 0)"
    )
    res = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
