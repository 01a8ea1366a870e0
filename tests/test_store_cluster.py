"""The Redis store on a real three-node Redis Cluster (loopback ports), and the hash-tagged
key prefix on a single Redis: what a gateway upgraded in place keeps reading.

The store suite itself (tests/test_store_suite.py) also runs whole against the cluster."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from gateway.accounting.records import RequestRecord
from gateway.accounting.store import StoreUnavailable, describe_store, make_store
from gateway.accounting.store.redis_store import DEFAULT_PREFIX, RedisStore, hash_tag
from gateway.config import ConfigError, StoreConfig, parse_config
from tests.fake_upstream import FakeUpstream
from tests.redis_server import (
    RedisClusterServers,
    RedisServer,
    free_port,
    have_redis,
    have_redis_cluster,
)
from tests.support import GatewayProcess, metric_samples, metric_total, model_block
from tests.test_accounting_e2e import usage, wait_for

pytestmark = pytest.mark.redis

T0 = 1_699_999_980.0  # a minute boundary


def rec(i: int, **kw: object) -> RequestRecord:
    base: dict[str, object] = dict(
        request_id=f"req-{i}", ts=T0 + i, route="chat", model="small", tier="small",
        key_id="k1", prompt_tokens=100, completion_tokens=50, cost_usd=0.001,
        baseline_cost_usd=0.004, latency_ms=100.0 + i, attempts=1,
    )  # fmt: skip
    base.update(kw)
    return RequestRecord(**base)  # type: ignore[arg-type]


def tag_on(cluster: RedisClusterServers, node: RedisServer) -> str:
    """A hash tag whose slot `node` owns."""
    for i in range(1000):
        tag = f"t{i}-{time.monotonic_ns()}"
        if cluster.owner("{" + tag + "}") is node:
            return tag
    raise AssertionError(f"no tag found for the node on port {node.port}")


async def test_store_works_when_its_slot_lives_on_another_node(
    redis_cluster: RedisClusterServers,
) -> None:
    """Pointed at each node in turn, a store whose keys hash to a slot of the next node
    writes, scores, reads and rolls up; its keys are all on the owning node (read there
    without cluster redirection), so the three stores used all three nodes."""
    nodes = redis_cluster.nodes
    for i, startup in enumerate(nodes):
        owner = nodes[(i + 1) % len(nodes)]
        tag = tag_on(redis_cluster, owner)
        s = RedisStore(startup.url, stream_maxlen=10_000, prefix=f"{{{tag}}}:", cluster=True)
        await s.open()
        try:
            await s.write_batch([rec(i) for i in range(40)])
            await s.write_batch([rec(i) for i in range(30, 50)])  # 10 already stored
            assert await s.count() == 50
            assert await s.set_quality("req-7", "feedback", 1.0)
            got = await s.get("req-7")
            assert got is not None and got.quality_feedback == 1.0
            [row] = await s.usage(None, None, "model")
            assert row["requests"] == 50 and row["quality_n"] == 1
            series = await s.timeseries(None, 60)  # the rollup hashes, through a pipeline
            assert sum(r["requests"] for r in series) == 50
            assert [r.request_id for r in await s.recent(2)] == ["req-49", "req-48"]
        finally:
            await s.close()
        # the owner answers for every key itself (no MOVED): stream, rollups, record hash
        assert redis_cluster.cli(owner.port, "XLEN", f"{{{tag}}}:records").strip() == "50"
        assert redis_cluster.cli(owner.port, "ZCARD", f"{{{tag}}}:minutes").strip() == "1"
        assert "sid" in redis_cluster.cli(owner.port, "HKEYS", f"{{{tag}}}:rec:req-7")


def gateway_on(
    cluster: RedisClusterServers,
    fakes: Callable[..., FakeUpstream],
    gateway: Callable[..., GatewayProcess],
) -> tuple[GatewayProcess, RedisServer, RedisServer]:
    """A gateway (one model, a fake upstream) whose store is `cluster`, told only a node
    that does not own the store's slot; with the owner and that startup node."""
    owner = cluster.owner(DEFAULT_PREFIX + "records")
    startup = next(n for n in cluster.nodes if n is not owner)
    small = fakes("small")
    store = (
        f'{{backend: redis, redis_cluster: true, redis_url: "{startup.url}", '
        "flush_interval_s: 0.05, retry_interval_s: 0.2}"
    )
    gw = gateway(f"store: {store}\nmodels:\n{model_block('small', 'small', small.base_url)}\n")
    return gw, owner, startup


def test_gateway_records_into_a_cluster(
    redis_cluster: RedisClusterServers,
    fakes: Callable[..., FakeUpstream],
    gateway: Callable[..., GatewayProcess],
) -> None:
    """A real gateway whose store is the cluster, told only a node that does not own the
    store's slot: it serves, records, takes feedback, and /v1/usage shows the requests."""
    for n in redis_cluster.nodes:  # the session's cluster: start from empty
        redis_cluster.cli(n.port, "FLUSHALL")
    gw, owner, startup = gateway_on(redis_cluster, fakes, gateway)
    c = openai.OpenAI(base_url=gw.base_url, api_key="x", max_retries=0, timeout=10)
    ids = []
    for i in range(5):
        msgs = [{"role": "user", "content": f"hello {i}"}]
        raw = c.chat.completions.with_raw_response.create(model="small", messages=msgs)
        ids.append(raw.headers["x-tollgate-request-id"])
    u = wait_for(lambda: (u := usage(gw))["totals"]["requests"] == 5 and u)
    assert [r["group"] for r in u["data"]] == ["small"]
    fb = httpx.post(f"{gw.url}/v1/feedback", json={"request_id": ids[0], "score": 0.8})
    assert fb.status_code in (200, 202), fb.text
    assert usage(gw)["data"][0]["quality_feedback_mean"] == pytest.approx(0.8)
    assert redis_cluster.cli(owner.port, "XLEN", DEFAULT_PREFIX + "records").strip() == "5"
    assert f"Redis Cluster at {startup.url}" in gw.logs()


def test_cluster_node_killed_mid_burst_loses_no_record(
    tmp_path: Path,
    fakes: Callable[..., FakeUpstream],
    gateway: Callable[..., GatewayProcess],
) -> None:
    """The node that owns the store's slot is killed during traffic: the gateway keeps
    answering, feedback sent meanwhile is queued (not an error), and once the node is back
    every record and the score are in the store."""
    if not have_redis_cluster():
        pytest.skip("redis-server / redis-cli not installed")
    cluster = RedisClusterServers(tmp_path / "cluster", durable=True).start()
    try:
        gw, owner, _startup = gateway_on(cluster, fakes, gateway)

        def burst(n: int) -> list[str]:
            body = {"model": "small", "messages": [{"role": "user", "content": "x"}]}
            with httpx.Client(timeout=10) as c:
                rs = [c.post(f"{gw.base_url}/chat/completions", json=body) for _ in range(n)]
            assert [r.status_code for r in rs] == [200] * n
            return [r.headers["x-tollgate-request-id"] for r in rs]

        ids = burst(20)
        wait_for(lambda: usage(gw)["totals"]["requests"] == 20)
        owner.kill()
        ids += burst(30)  # the store's node is down: answered, buffered
        fb = httpx.post(f"{gw.url}/v1/feedback", json={"request_id": ids[0], "score": 0.5})
        assert fb.status_code == 202, fb.text
        down = httpx.get(f"{gw.url}/v1/usage", params={"since": "1h"})
        assert down.status_code == 503 and down.json()["error"]["code"] == "store_unavailable"
        owner.start()
        ids += burst(10)

        def settled() -> dict[str, Any] | None:  # 503 until the cluster has healed
            r = httpx.get(f"{gw.url}/v1/usage", params={"since": "1h"})
            ok = r.status_code == 200 and r.json()["totals"]["requests"] == 60
            return r.json() if ok else None

        u = wait_for(settled, timeout=30)
        assert u["data"][0]["quality_feedback_mean"] == pytest.approx(0.5)
        samples = metric_samples(httpx.get(f"{gw.url}/metrics").text)
        assert metric_total(samples, "tollgate_store_dropped_records_total") == 0
    finally:
        cluster.stop()


async def test_cluster_store_down_is_unavailable() -> None:
    """No node answers: open() says the store is unavailable (the recorder buffers and
    retries), not an unexpected error."""
    s = RedisStore(f"redis://127.0.0.1:{free_port()}/0", cluster=True, socket_timeout_s=1.0)
    with pytest.raises(StoreUnavailable, match="redis cluster"):
        await s.open()
    await s.close()


@pytest.mark.skipif(not have_redis(), reason="redis-server not installed")
async def test_single_redis_new_store_uses_the_tagged_prefix(tmp_path: Path) -> None:
    srv = RedisServer(tmp_path / "redis").start()
    try:
        s = RedisStore(srv.url)
        await s.open()
        await s.write_batch([rec(1)])
        await s.close()
        assert sorted(srv_keys(srv)) == [
            "{tollgate}:late", "{tollgate}:m:1699999980", "{tollgate}:minutes",
            "{tollgate}:rec:req-1",
            "{tollgate}:records",
        ]  # fmt: skip
    finally:
        srv.stop()


@pytest.mark.skipif(not have_redis(), reason="redis-server not installed")
async def test_single_redis_upgraded_in_place_keeps_its_records(tmp_path: Path) -> None:
    """A Redis that holds what a gateway wrote under the untagged prefix `tollgate:`: the
    upgraded store reads those records and scores and keeps writing beside them."""
    srv = RedisServer(tmp_path / "redis").start()
    try:
        old = RedisStore(srv.url, prefix="tollgate:")  # the layout gateways wrote before
        await old.open()
        await old.write_batch([rec(i) for i in range(3)])
        assert await old.set_quality("req-1", "judge", 0.5)
        await old.close()
        s = RedisStore(srv.url)
        await s.open()
        assert await s.count() == 3
        await s.write_batch([rec(i) for i in range(2, 6)])  # req-2 is not counted twice
        assert await s.count() == 6
        got = await s.get("req-1")
        assert got is not None and got.quality_judge == 0.5
        [row] = await s.usage(None, None, "model")
        assert row["requests"] == 6 and row["quality_n"] == 1
        await s.close()
        assert not [k for k in srv_keys(srv) if k.startswith("{")]
    finally:
        srv.stop()


def srv_keys(srv: RedisServer) -> list[str]:
    import redis

    r = redis.Redis(port=srv.port)
    try:
        return [k.decode() for k in r.keys("*")]
    finally:
        r.close()


def test_cluster_settings_are_checked() -> None:
    cfg = StoreConfig(
        backend="redis", redis_url="redis://:s3cret@10.0.0.5:7000/0", redis_cluster=True
    )
    s = make_store(cfg)
    assert isinstance(s, RedisStore) and s.cluster and hash_tag(s.prefix) == "tollgate"
    assert describe_store(cfg) == "Redis Cluster at redis://****@10.0.0.5:7000/0"
    with pytest.raises(ValueError, match="has no hash tag"):
        RedisStore(cfg.redis_url, prefix="t:", cluster=True)
    assert hash_tag("{}{x}:") is None and hash_tag("a{b}:") == "b"
    text = (
        "store: {backend: redis, redis_cluster: true, redis_url: 'redis://h:7000/2'}\n"
        "models:\n" + model_block("small", "small", "http://127.0.0.1:9/v1") + "\n"
    )
    with pytest.raises(ConfigError, match="a Redis Cluster has database 0 only"):
        parse_config(text, "routing.yaml")
