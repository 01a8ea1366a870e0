"""What the deployment files (deploy/, Dockerfile) expect of a running gateway, checked on
real gateway processes: a Kubernetes ConfigMap update reloads the routing file, the image's
environment sets the workers, its HEALTHCHECK command tells a live gateway from a dead one,
and every metric the Grafana dashboard and the alert rules query is exported."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import httpx
import openai
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.fake_upstream import FakeUpstream
from tests.support import (
    REPO,
    GatewayProcess,
    free_port,
    metric_samples,
    metric_total,
    model_block,
    tier_models,
)
from tests.test_accounting_e2e import wait_for

TIERS = ("small", "medium", "large")

Fakes = Callable[..., FakeUpstream]
DEPLOY = REPO / "deploy"


def _models(gw: GatewayProcess) -> set[str]:
    r = httpx.get(f"{gw.base_url}/models", timeout=5)
    assert r.status_code == 200, r.text
    return {m["id"] for m in r.json()["data"]}


class ConfigMapFolder:
    """A folder laid out as the kubelet lays out a ConfigMap volume: each version of the
    files in its own `..<timestamp>` folder, `..data` a symlink to the current one, and each
    key a symlink through `..data` (routing.yaml -> ..data/routing.yaml). An update writes a
    new version folder, points a temporary symlink at it, renames that over `..data` (the
    atomic step) and removes the old folder: the path the gateway was given never changes."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.root.mkdir()
        self.n = 0
        self.current: Path | None = None

    @property
    def path(self) -> Path:
        return self.root / "routing.yaml"

    def write(self, text: str, like: Path | None = None) -> None:
        """A new version holding `text`; with `like`, its file takes that file's modification
        time (as `tar`, `cp -p` or `rsync -t` leave a copied file)."""
        self.n += 1
        version = self.root / f"..2026_12_08_00_00_00.{self.n:09d}"
        version.mkdir()
        (version / "routing.yaml").write_text(text)
        if like is not None:
            st = like.stat()
            os.utime(version / "routing.yaml", ns=(st.st_atime_ns, st.st_mtime_ns))
        tmp = self.root / "..data_tmp"
        tmp.symlink_to(version.name)
        os.replace(tmp, self.root / "..data")
        if not self.path.is_symlink():
            self.path.symlink_to("..data/routing.yaml")
        if self.current is not None:
            (self.current / "routing.yaml").unlink()
            self.current.rmdir()
        self.current = version


def test_a_configmap_update_reloads_the_routing_file(fakes: Fakes, tmp_path: Path) -> None:
    """The kubelet's `..data` swap, reproduced: the gateway reads the routing file through
    the key's symlink and picks up each new version within its one-second poll, also one
    whose file has the same size and modification time as the one before."""
    up = fakes("small")
    cm = ConfigMapFolder(tmp_path / "config")
    base = ["auth: {required: false}", "models:", model_block("small", "small", up.base_url)]
    cm.write("\n".join(base))
    (tmp_path / "gw-home").mkdir()
    gw = GatewayProcess("", tmp_path / "gw-home")
    gw.config_path = cm.path  # the gateway is given the key's path, as in the Deployment
    gw.start()
    try:
        assert _models(gw) >= {"small"} and "mid" not in _models(gw)
        # an update as the kubelet writes it (a fresh file)
        cm.write("\n".join([*base, model_block("mid", "medium", up.base_url)]))
        wait_for(lambda: "mid" in _models(gw))
        # the next version has the same length and keeps the previous file's time: only the
        # file the path now resolves to differs
        old = cm.current
        assert old is not None
        cm.write(
            "\n".join([*base, model_block("big", "medium", up.base_url)]), like=old / "routing.yaml"
        )
        wait_for(lambda: "big" in _models(gw) and "mid" not in _models(gw))
        assert gw.logs().count("config reloaded (file changed)") == 2
    finally:
        gw.close()


# -- what the dashboard and the alerts read ---------------------------------------------------
PROMETHEUS_OWN = {"up"}  # series Prometheus makes itself for each target
GRAFANA_RANGES = {"$__rate_interval": "1m", "$__range": "6h"}
PROMQL_WORDS = {
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "and",
    "or",
    "unless",
    "offset",
    "inf",
    "nan",
}


def deploy_queries() -> list[str]:
    dash = json.loads((DEPLOY / "grafana" / "dashboards" / "tollgate.json").read_text())
    rules = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    exprs += [r["expr"] for g in rules["groups"] for r in g["rules"]]
    for var, value in GRAFANA_RANGES.items():
        exprs = [e.replace(var, value) for e in exprs]
    return exprs


def series_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects: identifiers not followed by `(` (a
    function or aggregation), outside label matchers, `by (...)` lists, strings and
    durations."""
    text = re.sub(r'"[^"]*"', '""', expr)
    text = re.sub(r"\{[^}]*\}", "{}", text)
    text = re.sub(r"\b(by|without|on|ignoring)\s*\([^)]*\)", " ", text)
    text = re.sub(r"\[[^\]]*\]", "[]", text)
    names = set(re.findall(r"\b([a-zA-Z_:][a-zA-Z0-9_:]*)\b(?!\s*\()", text))
    return {n for n in names if n not in PROMQL_WORDS and not re.fullmatch(r"[0-9e.]+", n)}


def label_names(expr: str) -> set[str]:
    """The labels an expression groups by or matches on (Prometheus' own `instance`, `job`
    and the histograms' `le` aside)."""
    out: set[str] = set()
    for group in re.findall(r"\b(?:by|without)\s*\(([^)]*)\)", expr):
        out |= {x.strip() for x in group.split(",") if x.strip()}
    for matchers in re.findall(r"\{([^}]*)\}", expr):
        out |= set(re.findall(r"(\w+)\s*(?:=~|!~|!=|=)", matchers))
    return out - {"instance", "job", "le"}


def test_the_query_parser_finds_names_and_labels() -> None:
    e = 'sum by (model, le) (rate(tollgate_ttft_seconds_bucket{route=~"auto|x"}[5m])) / 3600'
    assert series_names(e) == {"tollgate_ttft_seconds_bucket"}
    assert label_names(e) == {"model", "route"}
    assert series_names('up{job="tollgate"} == 0') == {"up"}


def test_every_metric_the_dashboard_and_alerts_query_is_exported(
    fakes: Fakes, gateway: Callable[..., GatewayProcess], tmp_path: Path
) -> None:
    """A gateway with routed tiers, a route whose first model is down and a key held to one
    request a minute is sent the traffic that makes each kind of series (routed, streamed,
    fallen back, refused); its /metrics then has every series the deployment's dashboard
    and alert rules select, with every label they group by or match on."""
    ups = {name: fakes(name) for name in TIERS}
    dead = f"http://127.0.0.1:{free_port()}/v1"
    key, other = "tg-metrics-check-5f1b2c3d4e5f6a7b8c9d", "tg-metrics-check-0a9b8c7d6e5f4a3b2c1d"
    digest, digest_b = (hashlib.sha256(k.encode()).hexdigest() for k in (key, other))
    cfg = "\n".join(
        [
            "server: {metrics_per_key: true, retry_backoff_s: 0.01}",
            f"limits: {{local_path: {tmp_path / 'limits.bin'}}}",
            f"auth: {{required: true, keys: [{{id: team-a, sha256: {digest}, rpm: 1}}, "
            f"{{id: team-b, sha256: {digest_b}}}]}}",
            "models:",
            *tier_models({n: u.base_url for n, u in ups.items()}),
            model_block("down", "large", dead, retries=0),
            "routes:",
            "  - {name: chat, models: [down, small]}",
        ]
    )
    gw = gateway(cfg)
    client = openai.OpenAI(base_url=gw.base_url, api_key=key, max_retries=0)
    msgs = [{"role": "user", "content": "Explain how a toll road is financed."}]
    client.chat.completions.create(model="auto", messages=msgs)  # routed; the key's one
    with pytest.raises(openai.RateLimitError):  # the key's second in the minute
        client.chat.completions.create(model="auto", messages=msgs)
    client = openai.OpenAI(base_url=gw.base_url, api_key=other, max_retries=0)
    for stream in (False, True):
        for model in ("auto", "chat", "small"):
            r = client.chat.completions.create(model=model, messages=msgs, stream=stream)
            if stream:
                assert [c for c in r]  # type: ignore[union-attr]
    text = httpx.get(f"{gw.url}/metrics").text
    exported: dict[str, set[str]] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            exported.setdefault(s.name, set()).update(s.labels)
    queries = deploy_queries()
    assert len(queries) > 20
    missing = {}
    for e in queries:
        names = series_names(e) - PROMETHEUS_OWN
        assert names or series_names(e), f"no series found in {e!r}"
        absent = [n for n in names if n not in exported]
        labels = label_names(e)
        unlabelled = [
            lab for lab in labels if not any(lab in exported.get(n, set()) for n in names)
        ]
        if absent or unlabelled:
            missing[e] = (absent, unlabelled)
    assert not missing, missing
    # what makes the per-key panel and alert: the key's id, never the key
    assert 'tollgate_limit_rejections_total{key="team-a",kind="rpm"} 1.0' in text
    assert key not in text


# -- the image ----------------------------------------------------------------------------------
def healthcheck_command(port: int) -> list[str]:
    """The Dockerfile's HEALTHCHECK command (exec form), aimed at `port` on this machine,
    with this interpreter for the image's `python`."""
    text = (REPO / "Dockerfile").read_text().replace("\\\n", " ")
    m = re.search(r"^HEALTHCHECK .*?CMD (\[.*\])\s*$", text, flags=re.M)
    assert m, "the Dockerfile has no HEALTHCHECK ... CMD [...]"
    cmd = json.loads(m.group(1))
    assert cmd[0] == "python" and any("127.0.0.1:8000/healthz" in a for a in cmd)
    return [sys.executable, *(a.replace("127.0.0.1:8000", f"127.0.0.1:{port}") for a in cmd[1:])]


def test_the_image_healthcheck_tells_a_live_gateway_from_a_dead_one(
    fakes: Fakes, gateway: Callable[..., GatewayProcess]
) -> None:
    gw = gateway("models:\n" + model_block("small", "small", fakes("small").base_url))
    assert subprocess.run(healthcheck_command(gw.port), timeout=30).returncode == 0
    dead = subprocess.run(healthcheck_command(free_port()), capture_output=True, timeout=30)
    assert dead.returncode != 0


def test_tollgate_workers_in_the_environment_sets_the_worker_processes(
    fakes: Fakes, gateway: Callable[..., GatewayProcess]
) -> None:
    """The image sets TOLLGATE_WORKERS; `tollgate serve` takes it as --workers' default, and
    /metrics then sums over the workers."""
    gw = gateway(
        "models:\n" + model_block("small", "small", fakes("small").base_url),
        env={"TOLLGATE_WORKERS": "2"},
    )
    wait_for(lambda: gw.logs().count("Started server process") == 2)
    for _ in range(6):
        assert (
            httpx.post(
                f"{gw.base_url}/chat/completions",
                json={"model": "small", "messages": [{"role": "user", "content": "hi"}]},
            ).status_code
            == 200
        )
    samples = metric_samples(httpx.get(f"{gw.url}/metrics").text)
    assert metric_total(samples, "tollgate_requests_total") == 6
    bad = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "serve", "--port", str(free_port())],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO), "TOLLGATE_WORKERS": "two"},
    )
    assert bad.returncode == 2 and "'two' is not a number of processes" in bad.stderr
