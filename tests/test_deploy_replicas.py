"""The compose deployment's shape, run for real on 127.0.0.1: two gateway processes sharing
one Redis (limits) and one PostgreSQL (records, keys) behind a real nginx on the rendered
deploy/nginx/nginx.conf. Traffic goes through nginx; one replica is stopped with SIGTERM
while traffic flows."""

from __future__ import annotations

import re
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import psycopg
import pytest

from tests.fake_upstream import FakeUpstream
from tests.nginx_server import NginxServer, need_tool
from tests.postgres_server import postgres_url
from tests.redis_server import RedisServer, have_redis
from tests.support import GatewayProcess, metric_samples, metric_total, model_block
from tests.test_accounting_e2e import wait_for

__all__ = ["postgres_url"]  # a fixture

pytestmark = [pytest.mark.deploy, pytest.mark.postgres, pytest.mark.redis]

MASTER = "tg-master-9c1e5a7b3d2f4e6a8b0c"
MSGS = [{"role": "user", "content": "one two three"}]


def replica_config(up: FakeUpstream, pg: str, redis: str, journal: Path) -> str:
    """What deploy/gateway/tollgate.yaml sets for replicas (PostgreSQL store and keys, Redis
    limits, keys required, per-key metrics), on test servers and short intervals."""
    return "\n".join(
        [
            "server: {drain_timeout_s: 10, metrics_per_key: true}",
            f'store: {{backend: postgres, postgres_url: "{pg}", postgres_timeout_s: 2, '
            f'flush_interval_s: 0.05, redis_url: "{redis}", journal_path: "{journal}"}}',
            "limits: {backend: redis}",
            "auth: {required: true, refresh_interval_s: 0.2}",
            "models:",
            model_block("small", "small", up.base_url),
        ]
    )


def bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


@pytest.fixture
def redis_url(tmp_path: Path) -> Iterator[str]:
    if not have_redis():
        msg = "redis-server not installed: apt-get install -y redis-server  (.ci/run does)"
        if __import__("os").environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    srv = RedisServer(tmp_path / "redis").start()
    yield srv.url
    srv.stop()


class Deployment:
    """Two replicas and nginx, stopped in reverse order by their PIDs."""

    def __init__(self, tmp: Path, up: FakeUpstream, pg: str, redis: str) -> None:
        need_tool("nginx")
        self.replicas: list[GatewayProcess] = []
        for n in (1, 2):
            home = tmp / f"replica-{n}"
            home.mkdir()
            cfg = replica_config(up, pg, redis, home / "journal")
            gw = GatewayProcess(cfg, home, env={"TOLLGATE_MASTER_KEY": MASTER})
            self.replicas.append(gw)
        self.nginx: NginxServer | None = None
        self.tmp = tmp

    def start(self) -> Deployment:
        for gw in self.replicas:
            gw.start()
        addrs = [f"127.0.0.1:{gw.port}" for gw in self.replicas]
        self.nginx = NginxServer(self.tmp / "nginx", addrs).start()
        return self

    @property
    def url(self) -> str:
        assert self.nginx is not None
        return self.nginx.url

    def served_by(self) -> dict[str, str]:
        """request id -> the replica address nginx got its answer from (the access log)."""
        assert self.nginx is not None
        out = {}
        for line in self.nginx.access_log().splitlines():
            m = re.search(r"upstream=(\S+(?:, \S+)*) upstream_status.*request_id=(\S+)", line)
            if m and m.group(2) != "-":
                out[m.group(2)] = m.group(1).split(", ")[-1]
        return out

    def close(self) -> None:
        if self.nginx is not None:
            self.nginx.stop()
        for gw in self.replicas:
            gw.close()


@pytest.fixture
def deployment(
    fakes: Callable[..., FakeUpstream], postgres_url: str, redis_url: str, tmp_path: Path
) -> Iterator[Deployment]:
    up = fakes("small", latency_ms=30)
    d = Deployment(tmp_path, up, postgres_url, redis_url)
    try:
        yield d.start()
    finally:
        d.close()


def stored_ids(pg: str) -> set[str]:
    with psycopg.connect(pg) as c:
        return {str(r[0]) for r in c.execute("SELECT request_id FROM tollgate_requests")}


def chat(client: httpx.Client, url: str, key: str) -> httpx.Response:
    return client.post(
        f"{url}/v1/chat/completions",
        json={"model": "small", "messages": MSGS},
        headers=bearer(key),
        timeout=30,
    )


def test_two_replicas_behind_nginx_share_usage_limits_and_survive_a_sigterm(
    deployment: Deployment, postgres_url: str
) -> None:
    d = deployment
    g1, g2 = d.replicas
    with httpx.Client() as c:
        # keys made through nginx (whichever replica answers): one held to 10 requests a
        # minute, one without limits; both replicas know them once their tables refresh
        made = {}
        for name, limits in (("team-a", {"rpm": 10}), ("team-b", {})):
            r = c.post(f"{d.url}/admin/keys", json={"name": name, **limits}, headers=bearer(MASTER))
            assert r.status_code == 201, r.text
            made[name] = r.json()["key"]
        for gw in d.replicas:
            for key in made.values():
                wait_for(
                    lambda gw=gw, key=key: (
                        c.get(f"{gw.url}/v1/usage", headers=bearer(key)).status_code == 200
                    )
                )

        # one enforced limit across both replicas: 16 requests, 10 answered
        limited = [chat(c, d.url, made["team-a"]) for _ in range(16)]
        codes = [r.status_code for r in limited]
        assert codes.count(200) == 10 and codes.count(429) == 6, codes
        served = d.served_by()
        ok_ids = [r.headers["x-tollgate-request-id"] for r in limited if r.status_code == 200]
        assert {served[i] for i in ok_ids} == {f"127.0.0.1:{g.port}" for g in d.replicas}
        samples = [metric_samples(c.get(f"{gw.url}/metrics").text) for gw in d.replicas]
        per_replica = [metric_total(s, "tollgate_requests_total") for s in samples]
        assert all(n > 0 for n in per_replica) and sum(per_replica) == 16, per_replica
        rejected = [
            metric_total(s, "tollgate_limit_rejections_total", key="team-a") for s in samples
        ]
        assert sum(rejected) == 6, rejected

        # one usage total, whichever replica is asked
        def totals(url: str) -> int:
            r = c.get(f"{url}/v1/usage", params={"since": "1h"}, headers=bearer(MASTER))
            assert r.status_code == 200, r.text
            return int(r.json()["totals"]["requests"])

        wait_for(lambda: len(stored_ids(postgres_url)) == 16)
        assert totals(d.url) == totals(g1.url) == totals(g2.url) == 16

    # SIGTERM to one replica mid-traffic: 6 clients keep sending through nginx
    # (start, end, status, request id)
    results: list[tuple[float, float, int, str | None]] = []
    lock = threading.Lock()
    stop = threading.Event()

    def client() -> None:
        with httpx.Client() as cc:
            while not stop.is_set() and len(results) < 2000:
                t0 = time.monotonic()
                try:
                    r = chat(cc, d.url, made["team-b"])
                    status, rid = r.status_code, r.headers.get("x-tollgate-request-id")
                except httpx.HTTPError as e:
                    status, rid = -1, type(e).__name__
                with lock:
                    results.append((t0, time.monotonic(), status, rid))

    threads = [threading.Thread(target=client) for _ in range(6)]
    for t in threads:
        t.start()
    try:
        wait_for(lambda: len(results) >= 60, timeout=60)
        assert g1.proc is not None
        sigterm_at = time.monotonic()
        g1.proc.send_signal(signal.SIGTERM)
        # drained and flushed (uvicorn ends by re-raising the SIGTERM it handled)
        assert g1.proc.wait(timeout=30) in (0, -signal.SIGTERM)
        assert "Application shutdown complete" in g1.logs()
        stopped_at = time.monotonic()
        n_then = len(results)
        wait_for(lambda: len(results) >= n_then + 60, timeout=60)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=60)

    statuses = [s for _t, _e, s, _i in results]
    assert statuses.count(200) == len(results), {s: statuses.count(s) for s in set(statuses)}
    served = d.served_by()
    g1_addr, g2_addr = (f"127.0.0.1:{g.port}" for g in d.replicas)
    # the stopped replica finished what it had when the signal came
    drained = [i for t, e, _s, i in results if t < sigterm_at < e and served[str(i)] == g1_addr]
    assert drained
    after = [str(i) for t, _e, _s, i in results if t > stopped_at]
    assert len(after) >= 60 and {served[i] for i in after} == {g2_addr}
    # every answer a client saw has its record, the stopped replica's included
    ok = {str(i) for _t, _e, s, i in results if s == 200}
    wait_for(lambda: ok <= stored_ids(postgres_url), timeout=20)
    print(
        f"sigterm: {len(results)} requests, {len(drained)} finished by the stopping replica, "
        f"{len(after)} after it stopped; all 200, all stored"
    )
