"""The gateway recording in PostgreSQL: a real gateway subprocess, fake upstreams, a
database of its own on the test server, /v1/usage read back; and a store outage."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import httpx
import openai
import psycopg
import pytest

from tests.fake_upstream import FakeUpstream
from tests.postgres_server import TcpCut, postgres_url
from tests.support import GatewayProcess, metric_samples, metric_total
from tests.test_accounting_e2e import burst, config, usage, wait_for

__all__ = ["postgres_url"]  # a fixture

Fakes = Callable[..., FakeUpstream]
Gw = Callable[..., GatewayProcess]

pytestmark = pytest.mark.postgres


def _store(url: str) -> str:
    return (
        f'{{backend: postgres, postgres_url: "{url}", postgres_timeout_s: 1, '
        "retry_interval_s: 0.2, flush_interval_s: 0.05}"
    )


def _rows(url: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(url) as c:
        return c.execute(
            "SELECT model, count(*), sum(cost_usd) FROM tollgate_requests GROUP BY model "
            "ORDER BY model"
        ).fetchall()


def test_gateway_records_in_postgres_and_usage_reads_them(
    fakes: Fakes, gateway: Gw, postgres_url: str
) -> None:
    small, large = fakes("small", completion_tokens=40), fakes("large", completion_tokens=40)
    gw = gateway(config(small, large, store=_store(postgres_url)))
    c = openai.OpenAI(base_url=gw.base_url, api_key="x", max_retries=0)
    msgs = [{"role": "user", "content": "one two three four five"}]
    for model, n in (("small", 3), ("large", 2)):
        for _ in range(n):
            assert c.chat.completions.create(model=model, messages=msgs).choices
    u = wait_for(lambda: (u := usage(gw))["totals"]["requests"] == 5 and u)
    rows = {r["group"]: r for r in u["data"]}
    assert rows["small"]["requests"] == 3 and rows["large"]["requests"] == 2
    assert rows["large"]["cost_usd"] > rows["small"]["cost_usd"] > 0
    assert rows["small"]["latency_p50_ms"] is not None
    # the same records, as the database holds them
    stored = {m: (n, cost) for m, n, cost in _rows(postgres_url)}
    assert stored.keys() == {"small", "large"}
    assert stored["small"][0] == 3 and stored["large"][0] == 2
    assert stored["large"][1] == pytest.approx(rows["large"]["cost_usd"], rel=1e-9)
    tiers = {r["group"]: r["requests"] for r in usage(gw, "tier")["data"]}
    assert tiers == {"small": 3, "large": 2}


def test_pool_holds_between_min_and_max_connections(
    fakes: Fakes, gateway: Gw, postgres_url: str
) -> None:
    """store.postgres_pool_min / _max: the gateway keeps at least min connections to the
    database and never more than max, even with 30 /v1/usage reads at once."""
    small, large = fakes("small"), fakes("large")
    store = _store(postgres_url).replace("}", ", postgres_pool_min: 2, postgres_pool_max: 3}")
    gw = gateway(config(small, large, store=store))
    name = postgres_url.rsplit("/", 1)[1]

    def connections() -> int:
        with psycopg.connect(postgres_url) as c:
            row = c.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND pid <> "
                "pg_backend_pid()",
                (name,),
            ).fetchone()
        assert row is not None
        return int(row[0])

    wait_for(lambda: connections() == 2)  # min, opened at start

    async def reads(n: int) -> list[int]:
        async with httpx.AsyncClient(timeout=10) as c:
            rs = await asyncio.gather(
                *[c.get(f"{gw.url}/v1/usage", params={"since": "1h"}) for _ in range(n)]
            )
            return [r.status_code for r in rs]

    seen: list[int] = []
    done = asyncio.run(_while_sampling(reads(30), connections, seen))
    assert done == [200] * 30
    assert max(seen) <= 3 and max(seen) >= 2
    assert connections() <= 3


async def _while_sampling(work: Any, sample: Callable[[], int], seen: list[int]) -> Any:
    """Run `work`, sampling `sample()` (in a thread) until it is done."""
    task = asyncio.ensure_future(work)
    for _ in range(200):
        seen.append(await asyncio.to_thread(sample))
        if task.done():
            break
    return await task


def test_postgres_outage_loses_no_record(fakes: Fakes, gateway: Gw, postgres_url: str) -> None:
    """The connection to PostgreSQL is cut mid-traffic: requests keep answering 200, the
    records wait in the gateway, and all of them are in the database once it is back."""
    cut = TcpCut().start()
    try:
        small, large = fakes("small"), fakes("large")
        gw = gateway(config(small, large, store=_store(cut.via(postgres_url))))

        sent = burst(gw, 40)
        wait_for(lambda: usage(gw)["totals"]["requests"] == 40)
        cut.cut()
        sent += burst(gw, 60)  # store down: the gateway keeps serving
        time.sleep(0.5)  # let the recorder try (and fail) a write or two
        down = httpx.get(f"{gw.url}/v1/usage", params={"since": "1h"}, timeout=10)
        assert down.status_code == 503 and "postgres store is unavailable" in down.text
        assert httpx.get(f"{gw.url}/readyz").json()["status"] == "ready"
        cut.start()
        sent += burst(gw, 20)
        assert sent == [200] * 120
        wait_for(lambda: sum(n for _m, n, _c in _rows(postgres_url)) == 120, timeout=30)
        assert usage(gw)["totals"]["requests"] == 120
        samples = metric_samples(httpx.get(f"{gw.url}/metrics").text)
        assert metric_total(samples, "tollgate_store_dropped_records_total") == 0
    finally:
        cut.cut()
