"""What a local tier's tokens really cost (gateway/accounting/utilisation.py), seen through a
real gateway in front of a fake upstream that takes a fixed time per token: an idle window and
a saturated window, the marginal and effective prices in /v1/usage, /metrics and
`tollgate report`, and the policy option that prefers an idle local tier."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.fake_upstream import FakeUpstream
from tests.support import REPO, GatewayProcess, metric_samples

Fakes = Callable[..., FakeUpstream]
Gw = Callable[..., GatewayProcess]
WINDOW_S = 3.0
TOKENS = 20  # each answer: 20 tokens, 10 ms apart
USD_PER_HOUR = 3.6  # $0.001 a second
TPS = 100.0  # marginal: 3.6 / 3600 / 100 = $0.00001 a token = $10 per million
MARGINAL = 10.0


def config(local_url: str, api_url: str, window_s: float = WINDOW_S, extra: str = "") -> str:
    return f"""
store: {{backend: sqlite, sqlite_path: "${{TOLLGATE_DB}}"}}
utilisation: {{window_s: {window_s}}}
{extra}
models:
  - name: local
    tier: small
    profile: gemma-2b-it
    pricing: {{hardware_usd_per_hour: {USD_PER_HOUR}, tokens_per_second: {TPS}}}
    max_concurrency: 4
    retries: 0
    endpoints: [{{base_url: '{local_url}', model: fake}}]
  - name: api
    tier: large
    profile: humpback-llama2-70b
    pricing: {{input_per_mtok: 0.01, output_per_mtok: 0.01}}
    retries: 0
    endpoints: [{{base_url: '{api_url}', model: fake}}]
"""


def stream(client: openai.OpenAI, model: str = "local") -> int:
    chunks = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "Count."}], max_tokens=64,
        stream=True, stream_options={"include_usage": True},
    )  # fmt: skip
    usage = [c.usage for c in chunks if c.usage is not None]
    return usage[-1].completion_tokens


def local_row(gw: GatewayProcess) -> dict[str, Any]:
    body = httpx.get(f"{gw.base_url}/usage", params={"since": "1h"}).json()
    (row,) = body["local_cost"]  # the API-priced model has no row
    assert row["model"] == "local"
    return dict(row)


def test_effective_cost_falls_by_the_ratio_of_served_tokens(fakes: Fakes, gateway: Gw) -> None:
    local = fakes("local", completion_tokens=TOKENS, chunks=TOKENS, chunk_delay_ms=10)
    api = fakes("api")
    gw = gateway(config(local.base_url, api.base_url))
    client = openai.OpenAI(base_url=gw.base_url, api_key="x", max_retries=0)
    time.sleep(WINDOW_S + 0.2)  # the gateway is older than its window: every window is whole

    # an idle window: one answer in it
    assert stream(client) == TOKENS
    idle = local_row(gw)
    assert idle["span_s"] == WINDOW_S and idle["endpoints"] == 1
    assert (idle["requests"], idle["completion_tokens"]) == (1, TOKENS)
    assert 0.0 < idle["busy_share"] < 0.5
    assert idle["marginal_usd_per_mtok"] == pytest.approx(MARGINAL)
    paid = USD_PER_HOUR * WINDOW_S / 3600  # the hardware's price over the window
    assert idle["hardware_cost_usd"] == pytest.approx(paid)
    assert idle["effective_usd_per_mtok"] == pytest.approx(paid / TOKENS * 1e6)
    samples = metric_samples(httpx.get(f"{gw.url}/metrics").text)
    shown = {
        dict(labels)["price"]: v
        for (name, labels), v in samples.items()
        if name == "tollgate_local_usd_per_mtok" and dict(labels)["model"] == "local"
    }
    assert shown == pytest.approx(
        {"marginal": MARGINAL, "effective": idle["effective_usd_per_mtok"]}
    )
    assert samples[("tollgate_local_tokens_served", (("model", "local"),))] == TOKENS

    # the answer leaves the window: the hardware was paid for and served nothing
    time.sleep(WINDOW_S + 0.3)
    empty = local_row(gw)
    assert empty["completion_tokens"] == 0 and empty["effective_usd_per_mtok"] is None
    assert empty["busy_share"] == 0.0

    # a saturated window: four streams back to back for longer than the window
    stop = threading.Event()
    served: list[int] = []

    def load() -> None:
        c = openai.OpenAI(base_url=gw.base_url, api_key="x", max_retries=0)
        while not stop.is_set():
            served.append(stream(c))

    threads = [threading.Thread(target=load) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        time.sleep(WINDOW_S + 0.5)
        busy = local_row(gw)  # read while the load still runs: the whole window was busy
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert busy["span_s"] == WINDOW_S
    assert busy["busy_share"] >= 0.95
    assert busy["completion_tokens"] % TOKENS == 0
    assert busy["completion_tokens"] == TOKENS * busy["requests"]
    ratio = busy["completion_tokens"] / idle["completion_tokens"]
    assert ratio >= 4  # at least one answer per stream in the window
    assert busy["completion_tokens"] <= sum(served)
    # the same hardware price over the same window, spread over `ratio` times the tokens
    assert busy["effective_usd_per_mtok"] == pytest.approx(idle["effective_usd_per_mtok"] / ratio)
    assert busy["marginal_usd_per_mtok"] == idle["marginal_usd_per_mtok"]  # routing unchanged


def test_report_shows_both_prices(fakes: Fakes, gateway: Gw) -> None:
    local = fakes("local", completion_tokens=TOKENS)
    api = fakes("api")
    gw = gateway(config(local.base_url, api.base_url, window_s=600))
    client = openai.OpenAI(base_url=gw.base_url, api_key="x", max_retries=0)
    for _ in range(3):
        client.chat.completions.create(
            model="local", messages=[{"role": "user", "content": "hi"}], max_tokens=64
        )

    def report(*args: str) -> str:
        r = subprocess.run(
            [sys.executable, "-m", "gateway.cli", "report", *args], capture_output=True,
            text=True, timeout=60, cwd=str(REPO), env={**gw.env},
        )  # fmt: skip
        assert r.returncode == 0, r.stderr
        return r.stdout

    live = report("--url", gw.url).splitlines()
    header = next(i for i, ln in enumerate(live) if ln.startswith("LOCAL MODEL"))
    cells = live[header + 1].split()
    assert cells[0] == "local" and cells[3:5] == ["3", f"{3 * TOKENS}"]
    assert cells[6] == "10.0000"  # marginal
    # over the gateway's window so far (it grows up to window_s): its hardware $ / 60 tokens
    assert float(cells[7]) == pytest.approx(float(cells[5]) / (3 * TOKENS) * 1e6, rel=1e-3)
    deadline = time.monotonic() + 10
    while (
        httpx.get(f"{gw.base_url}/usage").json()["pending_records"] and time.monotonic() < deadline
    ):
        time.sleep(0.05)
    stored = report("--config", str(gw.config_path), "--since", "1h").splitlines()
    header = next(i for i, ln in enumerate(stored) if ln.startswith("LOCAL MODEL"))
    cells = stored[header + 1].split()
    # over the report's hour: $3.60 of hardware for the 60 tokens the store holds
    assert cells[:5] == ["local", "3,600", "-", "3", f"{3 * TOKENS}"]
    assert cells[5] == "3.600000" and cells[6] == "10.0000"
    assert cells[7] == f"{3.6 / (3 * TOKENS) * 1e6:.4f}"


def test_idle_local_free_prefers_the_idle_local_tier(fakes: Fakes, gateway: Gw) -> None:
    local = fakes("local", completion_tokens=8)
    api = fakes("api", completion_tokens=8)
    router = """
router:
  default_policy: free
  candidates: [local, api]
  fallback: route_order
  policies:
    free: {kind: max_utility, cost_weight: 1000000, idle_local_free: true}
"""
    text = config(local.base_url, api.base_url, extra=router)
    # the local box is dear per token at its marginal price: $1 a token
    text = text.replace(f"hardware_usd_per_hour: {USD_PER_HOUR}, tokens_per_second: {TPS}",
                        "hardware_usd_per_hour: 3600, tokens_per_second: 1")  # fmt: skip
    text = text.replace("max_concurrency: 4", "max_concurrency: 1")
    gw = gateway(text)
    client = openai.OpenAI(base_url=gw.base_url, api_key="x", max_retries=0)
    msgs = [{"role": "user", "content": "What is the capital of France?"}]

    def routed(model: str) -> str:
        raw = client.chat.completions.with_raw_response.create(
            model=model,
            messages=msgs,
            max_tokens=8,  # type: ignore[arg-type]
        )
        return raw.headers["x-tollgate-model"]

    # priced at the margin, the local tier loses; idle, its hardware is paid for anyway
    assert routed("router-max_utility-1000000") == "api"
    assert routed("auto") == "local"
    # with its one slot taken, the local tier is not idle: priced at the margin again
    local.script([{"kind": "delay", "ms": 3000}])
    busy = threading.Thread(target=routed, args=("local",))
    busy.start()
    try:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            ready = httpx.get(f"{gw.url}/readyz").json()
            if ready["models"]["local"]["endpoints"][0]["in_flight"] == 1:
                break
            time.sleep(0.02)
        assert routed("auto") == "api"
    finally:
        busy.join()
    assert routed("auto") == "local"


@pytest.mark.browser
def test_dashboard_shows_both_prices(fakes: Fakes, gateway: Gw, tmp_path: Path) -> None:
    from tests.test_dashboard import ARTIFACTS, Chromium, chromium_binary

    chromium_binary()
    local = fakes("local", completion_tokens=TOKENS)
    api = fakes("api")
    gw = gateway(config(local.base_url, api.base_url, window_s=600))
    client = openai.OpenAI(base_url=gw.base_url, api_key="x", max_retries=0)
    browser = Chromium(tmp_path / "profile")

    def shown(requests: int) -> list[str]:
        """The local tier's row once the page shows `requests` answers in it."""
        got = browser.wait_for(
            "(() => { const r = document.querySelector('#table-local tbody tr');"
            f" return r && r.cells[3].textContent === '{requests}'"
            " ? JSON.stringify([...r.cells].map(c => c.textContent)) : null })()",
            timeout=20,
        )
        return list(json.loads(got))

    try:
        browser.call("Runtime.enable")
        browser.call("Page.navigate", url=f"{gw.url}/dashboard")
        stream(client)
        one = shown(1)
        assert one[0] == "local" and one[4] == f"{TOKENS}"
        assert one[6] == "10.0000"  # marginal: the routing price
        hardware, effective = float(one[5]), float(one[7])
        assert effective == pytest.approx(hardware / TOKENS * 1e6, rel=1e-3)
        for _ in range(8):
            stream(client)
        nine = shown(9)
        assert nine[4] == f"{9 * TOKENS}" and nine[6] == "10.0000"
        assert float(nine[7]) == pytest.approx(float(nine[5]) / (9 * TOKENS) * 1e6, rel=1e-3)
        # nine times the tokens on (a little more of) the same hardware time
        assert float(nine[7]) < effective
        ARTIFACTS.mkdir(exist_ok=True)
        browser.screenshot(ARTIFACTS / "dashboard-local-cost.png")
    finally:
        browser.close()
