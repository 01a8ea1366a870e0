"""The deployment files, checked by the tools that read them (there is no Docker engine or
cluster here): `docker-compose config`, `promtool check config / rules`, `nginx -t`,
`kubectl kustomize` with the Kubernetes schemas (kubernetes-validate), and the names each
file uses for another (services, ports, paths, variables, labels) agree."""

from __future__ import annotations

import fnmatch
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import openai
import pytest
import yaml

from tests.nginx_server import NginxServer, need_tool
from tests.support import REPO, free_port

pytestmark = pytest.mark.deploy

DEPLOY = REPO / "deploy"
COMPOSE = REPO / "docker-compose.yml"
GATEWAY_PORT = 8000
# what the gateway reads from its environment besides the routing file's ${VAR}s
GATEWAY_ENV = {"TOLLGATE_CONFIG", "TOLLGATE_WORKERS", "TOLLGATE_MASTER_KEY"}
ENV_REF = re.compile(r"\$\{(\w+)(:-[^}]*)?\}")


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=120, env=env, cwd=REPO)


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without the deployment's variables (a developer's own
    TOLLGATE_* must not decide what the files resolve to)."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("TOLLGATE_", "POSTGRES_", "GRAFANA_", "PROMETHEUS_", "OPENAI_"))
    }
    return {**env, **extra}


def routing_vars(path: Path) -> dict[str, bool]:
    """The ${VAR}s a routing file reads: name -> whether it has a default."""
    return {m.group(1): m.group(2) is not None for m in ENV_REF.finditer(path.read_text())}


def check_config(path: Path, env: dict[str, str]) -> None:
    done = run(sys.executable, "-m", "gateway.cli", "check-config", str(path), env=env)
    assert done.returncode == 0, done.stderr


# -- compose ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    """`docker-compose config`: the file as Compose resolves it (defaults filled in)."""
    tool = need_tool("docker-compose")
    quiet = run(tool, "-f", str(COMPOSE), "config", "-q", env=clean_env())
    assert quiet.returncode == 0, quiet.stderr
    done = run(tool, "-f", str(COMPOSE), "config", env=clean_env())
    assert done.returncode == 0, done.stderr
    return dict(yaml.safe_load(done.stdout))


def _volumes(service: dict[str, Any]) -> list[tuple[str, str]]:
    """(source, container path) of each volume; a source is a host path (bind mount) or
    the name of a named volume. Both of Compose's spellings (string, mapping) are read."""
    out = []
    for v in service.get("volumes", []):
        out.append((v["source"], v["target"]) if isinstance(v, dict) else tuple(v.split(":")[:2]))
    return out


def _mounts(service: dict[str, Any]) -> dict[str, Path]:
    """container path -> host path of the service's bind mounts."""
    return {dst: Path(src) for src, dst in _volumes(service) if src.startswith("/")}


def _ports(service: dict[str, Any]) -> list[tuple[str, int]]:
    """(host address, container port) of each published port."""
    out = []
    for p in service.get("ports", []):
        if isinstance(p, dict):
            out.append((p.get("host_ip", ""), int(p["target"])))
        else:
            parts = p.split("/")[0].split(":")
            out.append((parts[0] if len(parts) == 3 else "", int(parts[-1])))
    return out


def _host_file(service: dict[str, Any], container_path: str) -> Path:
    """The host file a service sees at `container_path` through its bind mounts."""
    for dst, src in sorted(_mounts(service).items(), key=lambda kv: -len(kv[0])):
        if container_path == dst or container_path.startswith(dst.rstrip("/") + "/"):
            return src / Path(container_path).relative_to(dst)
    raise AssertionError(f"{container_path} is not under any bind mount of the service")


def test_compose_file_validates_and_what_it_mounts_exists(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert {
        "nginx",
        "gateway-1",
        "gateway-2",
        "postgres",
        "redis",
        "prometheus",
        "grafana",
        "local-model",
    } <= services.keys()
    assert services["local-model"]["profiles"] == ["local-model"]  # only when asked for
    for name, svc in services.items():
        for dst, src in _mounts(svc).items():
            assert src.exists(), f"{name}: {src} (mounted at {dst}) does not exist"
            assert src.is_relative_to(DEPLOY) or src == REPO, f"{name}: {src} is outside deploy/"
        assert "healthcheck" in svc, f"{name} has no health check"
        for host_ip, port in _ports(svc):  # published on the host's loopback only
            assert host_ip == "127.0.0.1", f"{name}: port {port} on {host_ip!r}"
        for dep, cond in (svc.get("depends_on") or {}).items():
            assert dep in services, f"{name} depends on unknown {dep}"
            if cond.get("condition") == "service_healthy":
                assert "healthcheck" in services[dep]
        for src, _dst in _volumes(svc):
            if not src.startswith("/"):
                assert src in compose["volumes"], f"{name}: volume {src} is not declared"


def test_compose_services_agree_with_the_files_they_mount(compose: dict[str, Any]) -> None:
    services = compose["services"]
    gateways = sorted(n for n in services if n.startswith("gateway-"))
    assert len(gateways) >= 2
    # nginx: its config's upstream servers are the gateway services on their port, and the
    # port it listens on is the one compose publishes
    nginx = services["nginx"]
    conf = _host_file(nginx, "/etc/nginx/nginx.conf").read_text()
    upstream = re.findall(r"^\s*server\s+([\w.-]+):(\d+)\b", conf, flags=re.M)
    assert upstream == [(g, str(GATEWAY_PORT)) for g in gateways]
    listen = re.findall(r"^\s*listen\s+(\d+);", conf, flags=re.M)
    assert [port for _ip, port in _ports(nginx)] == [int(x) for x in listen]
    for g in gateways:
        assert nginx["depends_on"][g]["condition"] == "service_healthy"
    # Prometheus: scrapes each gateway; its rule files exist next to its config
    prom = services["prometheus"]
    flag = next(a for a in prom["command"] if a.startswith("--config.file="))
    prom_conf_path = _host_file(prom, flag.split("=", 1)[1])
    prom_conf = yaml.safe_load(prom_conf_path.read_text())
    targets = [
        t
        for job in prom_conf["scrape_configs"]
        for sc in job["static_configs"]
        for t in sc["targets"]
    ]
    assert sorted(targets) == [f"{g}:{GATEWAY_PORT}" for g in gateways]
    for rules in prom_conf["rule_files"]:
        assert (prom_conf_path.parent / rules).exists()
    prom_ports = {port for _ip, port in _ports(prom)}
    # Grafana: its data source is the Prometheus service; the dashboards folder it is told
    # to load is the one mounted, and the dashboard's panels use that data source
    graf = services["grafana"]
    prov = _host_file(graf, "/etc/grafana/provisioning")
    ds = yaml.safe_load((prov / "datasources" / "prometheus.yml").read_text())["datasources"][0]
    ds_url = urlsplit(ds["url"])
    assert ds_url.hostname == "prometheus" and ds_url.port in prom_ports
    provider = yaml.safe_load((prov / "dashboards" / "tollgate.yml").read_text())["providers"][0]
    dash_dir = _host_file(graf, provider["options"]["path"])
    dash = json.loads((dash_dir / "tollgate.json").read_text())
    assert {p["datasource"]["uid"] for p in dash["panels"]} == {ds["uid"]}
    # the gateways: the routing file TOLLGATE_CONFIG names is mounted; every variable compose
    # sets is one the gateway reads, and the ones without a default are set
    for g in gateways:
        svc = services[g]
        env = {k: str(v) for k, v in svc["environment"].items()}
        routing = _host_file(svc, env["TOLLGATE_CONFIG"])
        reads = routing_vars(routing)
        assert set(env) <= reads.keys() | GATEWAY_ENV, set(env) - reads.keys() - GATEWAY_ENV
        assert {v for v, has_default in reads.items() if not has_default} <= set(env)
        assert "host.docker.internal:host-gateway" in svc["extra_hosts"]
        assert f"127.0.0.1:{GATEWAY_PORT}/healthz" in " ".join(svc["healthcheck"]["test"])
        # the store and limits reach the postgres and redis services, with their credentials
        pg = urlsplit(env["TOLLGATE_POSTGRES_URL"])
        pg_env = services["postgres"]["environment"]
        assert (pg.hostname, pg.username, pg.password, pg.path.strip("/")) == (
            "postgres",
            pg_env["POSTGRES_USER"],
            pg_env["POSTGRES_PASSWORD"],
            pg_env["POSTGRES_DB"],
        )
        assert urlsplit(env["TOLLGATE_REDIS_URL"]).hostname == "redis"
    # the routing file loads with exactly the gateways' environment
    check_config(routing, clean_env(**env))
    # the replicas differ only in their own journal volume
    a, b = (dict(services[g]) for g in gateways)
    assert {k: v for k, v in a.items() if k != "volumes"} == {
        k: v for k, v in b.items() if k != "volumes"
    }
    var_a, var_b = ({src for src, _d in _volumes(s) if not src.startswith("/")} for s in (a, b))
    assert var_a and var_b and not var_a & var_b


# -- Prometheus and Grafana ---------------------------------------------------------------------
def dashboard_queries() -> list[str]:
    dash = json.loads((DEPLOY / "grafana" / "dashboards" / "tollgate.json").read_text())
    return [t["expr"] for p in dash["panels"] for t in p["targets"]]


def alert_queries() -> list[str]:
    rules = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    return [r["expr"] for g in rules["groups"] for r in g["rules"]]


def test_prometheus_config_and_alert_rules_pass_promtool() -> None:
    promtool = need_tool("promtool")
    done = run(promtool, "check", "config", str(DEPLOY / "prometheus" / "prometheus.yml"))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 rule files found" in done.stdout + done.stderr
    done = run(promtool, "check", "rules", str(DEPLOY / "prometheus" / "alerts.yml"))
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"{len(alert_queries())} rules found" in done.stdout + done.stderr


def test_the_dashboard_has_a_panel_for_each_thing_an_operator_watches() -> None:
    """The panels the deployment promises (docs/operations.md, README): each subject's
    series is queried by at least one panel."""
    queries = " ".join(dashboard_queries())
    subjects = {
        "spend": "tollgate_cost_usd_total",
        "reference cost": "tollgate_baseline_cost_usd_total",
        "savings": "tollgate_savings_usd",
        "routing mix": 'tollgate_requests_total{route=~"auto|router-.*"}',
        "latency": "tollgate_request_latency_seconds_bucket",
        "time to first token": "tollgate_ttft_seconds_bucket",
        "quality by model": "tollgate_quality_sum",
        "errors": "tollgate_upstream_errors_total",
        "fallbacks": "tollgate_fallbacks_total",
        "circuit state": "tollgate_circuit_state",
        "store drops": "tollgate_store_dropped_records_total",
        "limit rejections per key": "sum by (key, kind) (rate(tollgate_limit_rejections_total",
        "replicas up": 'up{job="tollgate"}',
    }
    missing = [name for name, series in subjects.items() if series not in queries]
    assert not missing, missing


def test_every_dashboard_query_is_valid_promql(tmp_path: Path) -> None:
    """promtool parses each panel query (Grafana's $__rate_interval and $__range stand for
    durations) as a recording rule."""
    promtool = need_tool("promtool")
    exprs = dashboard_queries()
    rules = [
        {
            "record": f"tollgate:panel_{i}",
            "expr": e.replace("$__rate_interval", "1m").replace("$__range", "6h"),
        }
        for i, e in enumerate(exprs)
    ]
    path = tmp_path / "dashboard-rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    done = run(promtool, "check", "rules", str(path))
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"{len(exprs)} rules found" in done.stdout
    # a broken query fails this check
    broken = {"record": "x", "expr": "sum by (model (rate(tollgate_cost_usd_total[1m]))"}
    path.write_text(yaml.safe_dump({"groups": [{"name": "d", "rules": [broken]}]}))
    assert run(promtool, "check", "rules", str(path)).returncode != 0


# -- nginx ----------------------------------------------------------------------------------
def test_nginx_config_passes_nginx_t(tmp_path: Path) -> None:
    ngx = NginxServer(tmp_path / "nginx", ["127.0.0.1:18001", "127.0.0.1:18002"])
    done = ngx.test_config()
    assert done.returncode == 0, done.stderr
    assert "test is successful" in done.stderr
    # the check is real: a broken directive in the same rendering fails it
    ngx.conf.write_text(ngx.conf.read_text().replace("least_conn;", "least_conn on;"))
    assert ngx.test_config().returncode != 0


# -- Kubernetes -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def k8s_objects() -> list[dict[str, Any]]:
    kubectl = need_tool("kubectl")
    done = run(kubectl, "kustomize", str(DEPLOY / "kubernetes"))
    assert done.returncode == 0, done.stderr
    return [d for d in yaml.safe_load_all(done.stdout) if d]


def test_kustomize_renders_objects_the_kubernetes_schemas_accept(
    k8s_objects: list[dict[str, Any]],
) -> None:
    import kubernetes_validate

    kinds = sorted((o["apiVersion"], o["kind"]) for o in k8s_objects)
    assert kinds == [
        ("apps/v1", "Deployment"),
        ("autoscaling/v2", "HorizontalPodAutoscaler"),
        ("policy/v1", "PodDisruptionBudget"),
        ("v1", "ConfigMap"),
        ("v1", "Service"),
    ]
    version = kubernetes_validate.latest_version()
    for o in k8s_objects:
        kubernetes_validate.validate(o, version, strict=True)  # raises on any schema error
    # and it rejects what is wrong: an autoscaling/v2 HPA with a field of autoscaling/v1
    bad = next(o for o in k8s_objects if o["kind"] == "HorizontalPodAutoscaler")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(
            {**bad, "spec": {**bad["spec"], "targetCPUUtilizationPercentage": 70}},
            version,
            strict=True,
        )


def test_kubernetes_objects_agree_with_each_other_and_the_gateway(
    k8s_objects: list[dict[str, Any]],
) -> None:
    by_kind = {o["kind"]: o for o in k8s_objects}
    kinds = ("Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget", "ConfigMap")
    dep, svc, hpa, pdb, cm = (by_kind[k] for k in kinds)
    pod = dep["spec"]["template"]
    labels = pod["metadata"]["labels"]
    for selector in (
        dep["spec"]["selector"]["matchLabels"],
        svc["spec"]["selector"],
        pdb["spec"]["selector"]["matchLabels"],
    ):
        assert selector.items() <= labels.items()
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": dep["metadata"]["name"],
    }
    assert hpa["spec"]["minReplicas"] >= 2 and pdb["spec"]["minAvailable"] == 1
    (c,) = pod["spec"]["containers"]
    port = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert port == {"http": GATEWAY_PORT} and svc["spec"]["ports"][0]["targetPort"] == "http"
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert c["resources"]["requests"]["cpu"] and c["resources"]["requests"]["memory"]
    # the routing file: the ConfigMap's folder mounted whole (a subPath mount is never
    # updated), under a fixed name, with TOLLGATE_CONFIG naming its key
    env = {e["name"]: e for e in c["env"]}
    (mount,) = [m for m in c["volumeMounts"] if m["name"] == "routing"]
    assert "subPath" not in mount
    (vol,) = [v for v in pod["spec"]["volumes"] if v["name"] == "routing"]
    assert vol["configMap"]["name"] == cm["metadata"]["name"] == "tollgate-routing"
    config_path = Path(env["TOLLGATE_CONFIG"]["value"])
    assert config_path.parent == Path(mount["mountPath"]) and config_path.name in cm["data"]
    routing = DEPLOY / "kubernetes" / config_path.name
    assert cm["data"][config_path.name] == routing.read_text()
    # the keys come from the Secret; every variable the routing file needs is set
    secrets = {e["valueFrom"]["secretKeyRef"]["name"] for e in env.values() if "valueFrom" in e}
    assert secrets == {"tollgate-secrets"}
    reads = routing_vars(routing)
    assert set(env) <= reads.keys() | GATEWAY_ENV
    assert {v for v, has_default in reads.items() if not has_default} <= set(env)
    readme = (DEPLOY / "kubernetes" / "README.md").read_text()
    for e in env.values():
        if "valueFrom" in e:
            assert f"--from-literal={e['valueFrom']['secretKeyRef']['key']}=" in readme
    # SIGTERM comes after preStop; the grace period covers it and the drain
    drain = yaml.safe_load(routing.read_text())["server"]["drain_timeout_s"]
    pre_stop = float(c["lifecycle"]["preStop"]["exec"]["command"][-1])
    assert pod["spec"]["terminationGracePeriodSeconds"] > pre_stop + drain
    check_config(routing, clean_env(TOLLGATE_POSTGRES_URL="postgresql://u:p@postgres/tollgate"))


# -- the image ----------------------------------------------------------------------------------
def _ignored(path: str, patterns: list[str]) -> bool:
    """Whether .dockerignore's patterns leave `path` (or a folder above it) out."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    ignored = False
    for pat in patterns:
        neg = pat.startswith("!")
        pat = pat.lstrip("!").strip("/")
        pats = [pat, pat[3:]] if pat.startswith("**/") else [pat]
        hit = any(
            fnmatch.fnmatchcase(p, q)
            or (
                q.count("/") == 0
                and pat.startswith("**/")
                and fnmatch.fnmatchcase(p.rsplit("/", 1)[-1], q)
            )
            for p in prefixes
            for q in pats
        )
        if hit:
            ignored = not neg
    return ignored


def test_dockerfile_copies_what_the_dockerignore_keeps() -> None:
    dockerfile = (REPO / "Dockerfile").read_text()
    patterns = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    tracked = subprocess.run(
        ["git", "ls-files"], capture_output=True, text=True, cwd=REPO, check=True
    ).stdout.split()
    sources = [
        s
        for line in re.findall(r"^COPY (?!--from)(.+)$", dockerfile, flags=re.M)
        for s in line.split()[:-1]
    ]
    assert {"pyproject.toml", "setup.py", "gateway", "router_models"} <= set(sources)
    for src in sources:
        files = [f for f in tracked if f == src or f.startswith(src + "/")]
        assert files, f"COPY {src}: nothing in the repository"
        left_out = [f for f in files if _ignored(f, patterns)]
        assert not left_out, f".dockerignore leaves out what COPY {src} needs: {left_out[:5]}"
    for heavy in (
        ".venv/bin/python",
        "var/tollgate.db",
        ".git/HEAD",
        "tests/support.py",
        "router_models/_lexical.cpython-311-x86_64-linux-gnu.so",
    ):
        assert _ignored(heavy, patterns), heavy
    # the image keeps its non-root user and the check that the C featurizer compiled
    assert re.search(r"^USER tollgate$", dockerfile, flags=re.M)
    assert "assert m.NATIVE" in dockerfile
    assert re.search(r"^ENV TOLLGATE_WORKERS=\d+$", dockerfile, flags=re.M)
    assert re.search(r"^HEALTHCHECK .*\n?.*/healthz", dockerfile, flags=re.M)
    assert f"EXPOSE {GATEWAY_PORT}" in dockerfile and f'"--port", "{GATEWAY_PORT}"' in dockerfile


def test_what_nginx_answers_itself_is_in_openai_error_format(tmp_path: Path) -> None:
    """With no replica up, and for a body over nginx's own limit, the client's SDK gets an
    OpenAI error (status, type, code, what to do), not nginx's HTML page."""
    dead = [f"127.0.0.1:{free_port()}" for _ in range(2)]
    ngx = NginxServer(tmp_path / "nginx", dead).start()
    try:
        client = openai.OpenAI(base_url=f"{ngx.url}/v1", api_key="k", max_retries=0)
        with pytest.raises(openai.APIStatusError) as e:
            client.chat.completions.create(
                model="auto", messages=[{"role": "user", "content": "hi"}]
            )
        assert e.value.status_code == 503
        err = e.value.response.json()["error"]
        assert err["code"] == "no_replica_available" and "retry" in err["message"]
        big = httpx.post(
            f"{ngx.url}/v1/chat/completions",
            content=b"x" * (9 * 1024 * 1024),
            headers={"content-type": "application/json"},
            timeout=30,
        )
        assert big.status_code == 413
        assert big.json()["error"]["type"] == "invalid_request_error"
        assert "smaller body" in big.json()["error"]["message"]
        metrics = httpx.get(f"{ngx.url}/metrics")
        assert metrics.status_code == 404 and metrics.json()["error"]["code"] == "not_found"
    finally:
        ngx.stop()
