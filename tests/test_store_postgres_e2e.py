"""The gateway recording in PostgreSQL: a real gateway subprocess, fake upstreams, a
database of its own on the test server, /v1/usage read back; and a store outage."""

from __future__ import annotations

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
