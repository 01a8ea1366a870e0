"""/v1/usage, /v1/feedback, the sampled judge and `tollgate report`, over a real SQLite store."""

from __future__ import annotations

import asyncio
import io
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
import uvicorn
from prometheus_client.parser import text_string_to_metric_families
from starlette.applications import Starlette
from starlette.routing import Route

from gateway.accounting.metrics import Metrics
from gateway.accounting.quality import Judge, parse_score
from gateway.accounting.recorder import Recorder
from gateway.accounting.records import RequestRecord
from gateway.accounting.store.sqlite_store import SQLiteStore
from gateway.accounting.usage import feedback_endpoint, parse_time, usage_endpoint
from gateway.config import JudgeConfig, StoreConfig, parse_config
from gateway.tenants.keys import KeyTable
from gateway.views import report
from tests.redis_server import free_port

NOW = time.time()
OPEN_CONFIG = (
    "auth: {required: false}\n"
    "models: [{name: m, tier: small, endpoints: [{base_url: 'http://127.0.0.1:9', model: m}]}]\n"
)


def make_app(gw: Any) -> Starlette:
    app = Starlette(
        routes=[
            Route("/v1/usage", usage_endpoint, methods=["GET"]),
            Route("/v1/feedback", feedback_endpoint, methods=["POST"]),
        ]
    )
    app.state.gw = gw
    return app


@pytest.fixture
async def gw(tmp_path: Path) -> AsyncIterator[SimpleNamespace]:
    cfg = StoreConfig(backend="sqlite", sqlite_path=str(tmp_path / "t.db"), flush_interval_s=0.02)
    store = SQLiteStore(cfg.sqlite_path)
    metrics = Metrics()
    recorder = Recorder(store, cfg, metrics)
    await recorder.start()
    # keys not required: these tests are about the store behind the endpoints
    keys = KeyTable(parse_config(OPEN_CONFIG), [], None)
    ns = SimpleNamespace(store=store, recorder=recorder, metrics=metrics, config=None, keys=keys)
    yield ns
    await recorder.close(timeout=5)


@pytest.fixture
async def client(gw: SimpleNamespace) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=make_app(gw))
    async with httpx.AsyncClient(transport=transport, base_url="http://gw") as c:
        yield c


def rec(i: int, model: str = "small", **kw: Any) -> RequestRecord:
    base: dict[str, Any] = dict(
        request_id=f"u-{i}", ts=NOW - 60, route="chat", model=model, tier=model,
        key_id="team-a", prompt_tokens=100, completion_tokens=40, cost_usd=0.001,
        baseline_cost_usd=0.005, latency_ms=100.0 + i, attempts=1,
    )  # fmt: skip
    base.update(kw)
    return RequestRecord(**base)


async def settle(gw: SimpleNamespace) -> None:
    for _ in range(200):
        if gw.recorder.queue_depth == 0:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("recorder did not drain")


def quality_sum(m: Metrics, source: str) -> tuple[float, float]:
    body, _ = m.render()
    count = total = 0.0
    for fam in text_string_to_metric_families(body.decode()):
        for s in fam.samples:
            if s.labels.get("source") != source:
                continue
            if s.name == "tollgate_quality_count":
                count += s.value
            elif s.name == "tollgate_quality_sum":
                total += s.value
    return count, total


async def test_usage_endpoint(gw: SimpleNamespace, client: httpx.AsyncClient) -> None:
    for i in range(4):
        gw.recorder.submit(rec(i))
    gw.recorder.submit(rec(9, model="large", cost_usd=0.005, key_id=None))
    gw.recorder.submit(rec(10, ts=NOW - 3 * 86400))  # outside the default 24 h
    await settle(gw)
    r = await client.get("/v1/usage")
    assert r.status_code == 200
    body = r.json()
    rows = {row["group"]: row for row in body["data"]}
    assert set(rows) == {"small", "large"}
    assert rows["small"]["requests"] == 4
    # 4 * 0.001 against 4 * 0.005: 80 % saved
    assert rows["small"]["savings_pct"] == pytest.approx(80.0)
    assert body["totals"]["requests"] == 5
    # total: cost 0.009, reference 0.025 -> 64 %
    assert body["totals"]["savings_vs_reference_pct"] == pytest.approx(64.0)
    assert body["totals"]["reference_cost_usd"] == pytest.approx(0.025)
    assert body["totals"]["savings_vs_reference_usd"] == pytest.approx(0.016)
    assert body["totals"]["savings_pct"] == body["totals"]["savings_vs_reference_pct"]
    r = await client.get("/v1/usage", params={"since": "7d", "group_by": "key"})
    keys = {row["group"]: row["requests"] for row in r.json()["data"]}
    assert keys == {"team-a": 5, "(none)": 1}
    r = await client.get("/v1/usage", params={"group_by": "colour"})
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["param"] == "group_by" and err["type"] == "invalid_request_error"
    assert "model, tier, key, route" in err["message"]
    r = await client.get("/v1/usage", params={"since": "yesterday"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "since"


def test_parse_time_forms() -> None:
    assert parse_time("15m", now=1000.0) == 100.0
    assert parse_time("24h", now=100_000.0) == 100_000.0 - 86400
    assert parse_time("2d", now=200_000.0) == 200_000.0 - 172_800
    assert parse_time("1700000000") == 1_700_000_000.0
    assert parse_time("2023-11-14T22:13:20Z") == 1_700_000_000.0
    assert parse_time("2023-11-14T22:13:20") == 1_700_000_000.0  # no zone: UTC
    assert parse_time("2023-11-14T23:13:20+01:00") == 1_700_000_000.0
    with pytest.raises(ValueError, match="15m, 24h, 7d"):
        parse_time("soon")


async def test_feedback_reaches_record_usage_and_metrics(
    gw: SimpleNamespace, client: httpx.AsyncClient
) -> None:
    gw.recorder.submit(rec(1))
    # still buffered: attached in place
    r = await client.post("/v1/feedback", json={"request_id": "u-1", "thumbs": "up"})
    assert r.status_code == 200 and r.json()["status"] == "attached"
    gw.recorder.submit(rec(2))
    await settle(gw)
    # already stored
    r = await client.post("/v1/feedback", json={"request_id": "u-2", "score": 0.25})
    assert r.status_code == 200
    r = await client.post("/v1/feedback", json={"request_id": "nope", "score": 0.5})
    assert r.status_code == 404 and r.json()["error"]["code"] == "request_not_found"
    for bad in (
        {"request_id": "u-1", "score": 1.5},
        {"request_id": "u-1", "score": True},
        {"request_id": "u-1", "thumbs": "sideways"},
        {"request_id": "u-1"},
        {"request_id": "u-1", "score": 1, "thumbs": "up"},
        {"score": 0.5},
        [],
    ):
        r = await client.post("/v1/feedback", json=bad)
        assert r.status_code == 400, bad
        assert r.json()["error"]["message"]
    r = await client.post("/v1/feedback", content=b"{not json")
    assert r.status_code == 400
    await settle(gw)
    s1, s2 = await gw.store.get("u-1"), await gw.store.get("u-2")
    assert s1.quality_feedback == 1.0 and s2.quality_feedback == 0.25
    [row] = (await client.get("/v1/usage")).json()["data"]
    assert row["quality_feedback_mean"] == pytest.approx(0.625)
    assert row["quality_mean"] == pytest.approx(0.625)
    assert quality_sum(gw.metrics, "feedback") == (2.0, 1.25)


async def test_feedback_without_store_is_503() -> None:
    ns = SimpleNamespace(
        store=None, recorder=Recorder(None, StoreConfig(backend="none"), Metrics()),
        metrics=Metrics(), config=None, keys=KeyTable(parse_config(OPEN_CONFIG), [], None),
    )  # fmt: skip
    transport = httpx.ASGITransport(app=make_app(ns))
    async with httpx.AsyncClient(transport=transport, base_url="http://gw") as c:
        r = await c.post("/v1/feedback", json={"request_id": "x", "score": 1})
        assert r.status_code == 503 and "store.backend" in r.json()["error"]["message"]
        assert (await c.get("/v1/usage")).status_code == 503


def test_parse_judge_scores() -> None:
    assert parse_score("Reasoning...\nScore: 10") == 1.0
    assert parse_score("Score: 1") == 0.0
    assert parse_score("**Score:** 8/10") == pytest.approx(7 / 9)
    assert parse_score("I'd give it 7/10.") == pytest.approx(6 / 9)
    assert parse_score(" 4 ") == pytest.approx(3 / 9)
    assert parse_score("score: 3 ... on reflection, Score: 5") == pytest.approx(4 / 9)
    assert parse_score("Score: 42") is None
    assert parse_score("no idea") is None
    assert parse_score("") is None


async def test_judge_scores_reach_record_usage_and_metrics(
    gw: SimpleNamespace, client: httpx.AsyncClient
) -> None:
    seen: list[list[dict[str, Any]]] = []
    replies = iter(["Fine answer.\nScore: 10", "Score: 4", "I cannot grade this", "Score: 7"])

    async def call(messages: list[dict[str, Any]]) -> str:
        seen.append(messages)
        reply = next(replies)
        return reply

    judge = Judge(JudgeConfig(model="large", sample_rate=1.0), call, gw.recorder, gw.metrics)
    msgs = [{"role": "user", "content": "What is 2 + 2?"}]
    for i in range(4):
        r = rec(i)
        gw.recorder.submit(r)
        assert judge.maybe_judge(r, msgs, "4")
    assert not judge.maybe_judge(rec(5, status=500), msgs, "oops")
    await judge.drain()
    await settle(gw)
    assert judge.judged == 3 and judge.failed == 1
    assert "Score: N" in seen[0][0]["content"] and "What is 2 + 2?" in seen[0][1]["content"]
    stored = {i: (await gw.store.get(f"u-{i}")).quality_judge for i in range(4)}
    assert stored == {0: 1.0, 1: pytest.approx(3 / 9), 2: None, 3: pytest.approx(6 / 9)}
    [row] = (await client.get("/v1/usage")).json()["data"]
    assert row["quality_judge_mean"] == pytest.approx((1.0 + 3 / 9 + 6 / 9) / 3)
    assert quality_sum(gw.metrics, "judge") == (3.0, pytest.approx(2.0))
    # sampling: rate 0 judges nothing
    off = Judge(JudgeConfig(model="large", sample_rate=0.0), call, gw.recorder, gw.metrics)
    assert not off.maybe_judge(rec(7), msgs, "4")
    await judge.close()


async def test_judge_failures_are_counted_not_raised(gw: SimpleNamespace) -> None:
    async def broken(messages: list[dict[str, Any]]) -> str:
        raise RuntimeError("upstream down")

    judge = Judge(JudgeConfig(model="large", sample_rate=1.0), broken, gw.recorder, gw.metrics)
    judge.maybe_judge(rec(1), [{"role": "user", "content": "hi"}], "hello")
    await judge.drain()
    assert judge.failed == 1
    body, _ = gw.metrics.render()
    assert b'tollgate_judge_errors_total{kind="call"} 1.0' in body


@pytest.fixture
def served(gw: SimpleNamespace) -> Iterator[str]:
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(make_app(gw), host="127.0.0.1", port=port, log_level="warning")
    )
    t = threading.Thread(target=server.run, daemon=True)
    t.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    t.join(5)


async def test_report_from_store_and_over_http(
    gw: SimpleNamespace, tmp_path: Path, served: str
) -> None:
    for i in range(3):
        gw.recorder.submit(rec(i))
    gw.recorder.submit(rec(5, model="large", cost_usd=0.01, latency_ms=900.0))
    await settle(gw)
    cfg = tmp_path / "routing.yaml"
    cfg.write_text(
        f"""
store: {{backend: sqlite, sqlite_path: "{gw.store.path}"}}
models:
  - {{name: small, tier: small, endpoints: [{{base_url: "http://127.0.0.1:1/v1"}}]}}
"""
    )
    out = io.StringIO()
    # the sync CLI runs its own event loop: run it off this one
    code = await asyncio.to_thread(
        report.main, ["--since", "1h", "--config", str(cfg), "--group-by", "model"], out
    )
    assert code == 0
    text = out.getvalue()
    lines = text.splitlines()
    assert lines[0].endswith(f"; read routing file {cfg}, store SQLite at {gw.store.path}")
    assert lines[1].split()[:2] == ["GROUP", "REQS"]
    assert lines[2].split()[:2] == ["large", "1"]  # most expensive first
    assert lines[3].split()[:2] == ["small", "3"]
    assert lines[5].split()[:2] == ["TOTAL", "4"]
    assert "REFERENCE $" in lines[1] and "SAVED VS REF %" in lines[1]
    # the column's name and definition, the same words as the dashboard and the README
    assert "SAVED VS REF % is the savings vs reference (same tokens): 1 - cost /" in text
    assert len({len(line) for line in lines[1:4]}) == 1  # aligned
    out2 = io.StringIO()
    code = await asyncio.to_thread(report.main, ["--url", served, "--since", "1h"], out2)
    assert code == 0
    assert out2.getvalue().splitlines()[1:] == lines[1:]
    assert out2.getvalue().splitlines()[0].endswith(f"; read GET {served}/v1/usage")
    png = tmp_path / "quality-cost.png"
    code = await asyncio.to_thread(
        report.main, ["--url", served, "--group-by", "tier", "--plot", str(png)], io.StringIO()
    )
    assert code == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


async def test_judge_concurrency_is_bounded(gw: SimpleNamespace) -> None:
    release = asyncio.Event()

    async def slow(messages: list[dict[str, Any]]) -> str:
        await release.wait()
        return "Score: 10"

    judge = Judge(
        JudgeConfig(model="large", sample_rate=1.0), slow, gw.recorder, gw.metrics,
        max_concurrent=1, max_pending=2,
    )  # fmt: skip
    msgs = [{"role": "user", "content": "hi"}]
    assert judge.maybe_judge(rec(1), msgs, "a")
    assert judge.maybe_judge(rec(2), msgs, "b")
    assert not judge.maybe_judge(rec(3), msgs, "c")  # skipped, counted as busy
    body, _ = gw.metrics.render()
    assert b'tollgate_judge_errors_total{kind="busy"} 1.0' in body
    release.set()
    await judge.drain()
    assert judge.judged == 2
