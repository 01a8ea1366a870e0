"""GET /dashboard: a self-contained live page whose totals equal GET /v1/usage.

The browser test drives real traffic through the real gateway (replay backends behind it),
loads the page in a real headless Chromium over the DevTools protocol, compares what the
page shows with /v1/usage, records every request the page makes (all must go to the
gateway) and keeps screenshots in test-artifacts/ (laptop and phone widths).
"""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.accounting.store.base import SAVINGS_DEFINITION
from gateway.config import DEFAULT_CONFIG_PATH
from gateway.demo.demo import demo_config
from gateway.demo.procutil import stop_process
from gateway.demo.replay import ReplayServer, dataset
from tests.redis_server import RedisServer, have_redis
from tests.support import REPO, GatewayProcess

ARTIFACTS = REPO / "test-artifacts"
URL_ENV = ["TOLLGATE_SMALL_URL", "TOLLGATE_MEDIUM_URL", "TOLLGATE_LARGE_URL",
           "TOLLGATE_EXTERNAL_URL"]  # fmt: skip
# XML namespace names are identifiers, never fetched.
ALLOWED_ABSOLUTE = {"http://www.w3.org/2000/svg"}


def config_text(judge_url: str) -> str:
    """The default routing file (router profiles dropped: these tests use concrete models,
    so they do not depend on the router artifact) plus the replay judge."""
    base = "\n".join(
        ln for ln in DEFAULT_CONFIG_PATH.read_text().splitlines() if "profile:" not in ln
    )
    return demo_config(base, judge_url)


class Stack:
    def __init__(self, tmp: Path, env: dict[str, str] | None = None) -> None:
        self.replay = ReplayServer([0, 0, 0, 0], speed=2000).start()
        urls = {v: self.replay.url(i) for i, v in enumerate(URL_ENV)}
        self.gw = GatewayProcess(config_text(self.replay.url(3)), tmp, {**urls, **(env or {})})
        self.gw.start()
        self.ok = 0
        self.sent = 0

    def drive(self, n: int = 30) -> None:
        prompts = dataset.instructions()
        models = ["small", "medium", "large", "gpt-3.5-turbo", "chat"]
        with httpx.Client(base_url=self.gw.base_url, timeout=30) as c:
            for i in range(n):
                body: dict[str, Any] = {
                    "model": models[i % len(models)],
                    "messages": [{"role": "user", "content": prompts[i]}],
                }
                if i % 7 == 3:
                    body.update(stream=True, stream_options={"include_usage": True})
                    with c.stream("POST", "/chat/completions", json=body) as r:
                        r.read()
                else:
                    r = c.post("/chat/completions", json=body)
                self.sent += 1
                self.ok += r.status_code == 200
            # one prompt the replay has no answer for: an error record, never an answer
            r = c.post(
                "/chat/completions",
                json={
                    "model": "small",
                    "messages": [{"role": "user", "content": "hi, who are you?"}],
                },
            )
            assert r.status_code == 400 and "no recorded answer" in r.text
            self.sent += 1

    def settle(self, judged: bool = True, timeout: float = 30.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            u = httpx.get(f"{self.gw.url}/v1/usage", params={"since": "24h"}).json()
            t = u["totals"]
            done = t["requests"] >= self.sent and not u["pending_records"]
            if done and (not judged or t["quality_n"] >= self.ok):
                return dict(u)
            if time.monotonic() > deadline:
                raise AssertionError(f"traffic not recorded/judged in time: {u}")
            time.sleep(0.2)

    def close(self) -> None:
        self.gw.close()
        self.replay.stop()


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    with tempfile.TemporaryDirectory(prefix="tollgate-dash-") as tmp:
        s = Stack(Path(tmp))
        try:
            s.drive()
            s.settle()
            yield s
        finally:
            s.close()


def test_page_is_self_contained_with_a_csp(stack: Stack) -> None:
    r = httpx.get(f"{stack.gw.url}/dashboard")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    csp = r.headers["content-security-policy"]
    assert "default-src 'self'" in csp and "connect-src 'self'" in csp
    html = r.text
    refs = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert refs, html
    for ref in refs:
        assert ref.startswith("/dashboard/static/") or ref.startswith("data:"), ref
    texts = {"index.html": html}
    for ref in refs:
        if ref.startswith("/"):
            a = httpx.get(stack.gw.url + ref)
            assert a.status_code == 200, ref
            assert "default-src 'self'" in a.headers["content-security-policy"]
            texts[ref] = a.text
    assert any(k.endswith(".js") for k in texts) and any(k.endswith(".css") for k in texts)
    for name, text in texts.items():
        absolute = set(re.findall(r"(?:https?:)?//[A-Za-z0-9.-]+\.[A-Za-z]{2,}[^\s\"')]*", text))
        assert absolute <= ALLOWED_ABSOLUTE, f"{name} names outside URLs: {absolute}"
        assert "@import" not in text and "cdn" not in text.lower()
    # the asset route serves only the page's own files
    assert httpx.get(f"{stack.gw.url}/dashboard/static/..%2Fdata.py").status_code == 404
    assert httpx.get(f"{stack.gw.url}/dashboard/static/index.html").status_code == 404


def test_data_totals_equal_v1_usage(stack: Stack) -> None:
    d = httpx.get(f"{stack.gw.url}/dashboard/data", params={"since": "24h"}).json()
    u = httpx.get(f"{stack.gw.url}/v1/usage", params={"since": "24h"}).json()
    assert d["totals"] == u["totals"]
    assert d["by_model"] == u["data"]
    assert d["totals"]["requests"] == stack.sent and d["totals"]["errors"] == 1
    assert d["totals"]["quality_n"] == stack.ok  # every answer judged by the replay judge
    tiers = {r["group"] for r in d["by_tier"]}
    assert {"small", "medium", "large", "external"} <= tiers
    assert sum(r["requests"] for r in d["timeseries"]) == stack.sent
    assert d["latency_all"]["n"] == stack.sent and d["latency_all"]["p95_ms"] > 0
    assert len(d["recent"]) == 25 and d["recent"][0]["ts"] >= d["recent"][-1]["ts"]
    assert d["recent"][0]["status"] == 400  # the newest: the prompt the replay did not have
    circuits = {m: b["endpoints"][0]["circuit"] for m, b in d["backends"].items()}
    assert circuits["small"] == "closed" and "large" in circuits
    r = httpx.get(f"{stack.gw.url}/dashboard/data", params={"since": "yesterday-ish"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "since"


def test_data_with_no_store(tmp_path: Path) -> None:
    s = Stack(tmp_path, {"TOLLGATE_STORE": "none"})
    try:
        r = httpx.get(f"{s.gw.url}/dashboard/data")
        assert r.status_code == 200
        d = r.json()
        assert d["store"] == "none" and d["totals"]["requests"] == 0 and d["recent"] == []
        assert httpx.get(f"{s.gw.url}/dashboard").status_code == 200
    finally:
        s.close()


@pytest.mark.redis
def test_data_with_redis_store(tmp_path: Path) -> None:
    if not have_redis():
        pytest.skip("needs redis-server (CI installs it)")
    redis = RedisServer(tmp_path / "redis").start()
    s = Stack(tmp_path, {"TOLLGATE_STORE": "redis", "TOLLGATE_REDIS_URL": redis.url})
    try:
        s.drive(10)
        u = s.settle()
        d = httpx.get(f"{s.gw.url}/dashboard/data", params={"since": "24h"}).json()
        assert d["store"] == "redis"
        assert d["totals"] == u["totals"] and d["totals"]["requests"] == s.sent
        assert sum(r["requests"] for r in d["timeseries"]) == s.sent
    finally:
        s.close()
        redis.stop()


# -- the real browser -------------------------------------------------------------------------


def chromium_binary() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    pytest.fail(
        "chromium is not installed: apt-get install -y chromium chromium-driver "
        "(the browser test must not be skipped)"
    )


class Chromium:
    """Headless Chromium driven over the DevTools protocol (websockets, no selenium)."""

    def __init__(self, profile: Path) -> None:
        from websockets.sync.client import connect

        self.log = profile.parent / "chromium.log"
        self.proc = subprocess.Popen(
            [
                chromium_binary(),
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-extensions",
                "--disable-default-apps",
                "--enable-logging=stderr",
                "--v=1",
                # no network at run time: names other than the gateway's do not resolve
                "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
                f"--user-data-dir={profile}",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
                "about:blank",
            ],
            stdout=subprocess.DEVNULL,
            stderr=open(self.log, "wb"),  # noqa: SIM115 - closed with the process
        )
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 30
        while not (port_file.exists() and port_file.read_text().count("\n") >= 1):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("chromium did not start:\n" + self.log.read_text()[-3000:])
            time.sleep(0.05)
        port = int(port_file.read_text().split()[0])
        pages = [t for t in httpx.get(f"http://127.0.0.1:{port}/json/list").json()
                 if t["type"] == "page"]  # fmt: skip
        self.ws = connect(pages[0]["webSocketDebuggerUrl"], max_size=None, open_timeout=10)
        self.ws.__enter__()
        self.next_id = 0
        self.events: list[dict[str, Any]] = []

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        self.next_id += 1
        mid = self.next_id
        self.ws.send(json.dumps({"id": mid, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv(timeout=30))
            if msg.get("id") == mid:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return dict(msg.get("result", {}))
            self.events.append(msg)

    def eval(self, expr: str) -> Any:
        r = self.call("Runtime.evaluate", expression=expr, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in r:
            raise RuntimeError(f"{expr}: {r['exceptionDetails']}")
        return r["result"].get("value")

    def wait_for(self, expr: str, timeout: float = 20.0) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            v = self.eval(expr)
            if v:
                return v
            time.sleep(0.1)
        raise AssertionError(f"timed out waiting for {expr}")

    def screenshot(self, path: Path) -> None:
        shot = self.call("Page.captureScreenshot", format="png", captureBeyondViewport=True)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(shot["data"]))

    def close(self) -> None:
        try:
            self.ws.close()
        finally:
            stop_process(self.proc, grace=10)


def usd(v: float) -> str:
    return "$" + (f"{v:.6f}" if abs(v) < 1 else f"{v:.4f}")


@pytest.mark.browser
def test_dashboard_in_headless_chromium(stack: Stack, tmp_path: Path) -> None:
    chromium_binary()
    browser = Chromium(tmp_path / "profile")
    try:
        for domain in ("Page", "Network", "Runtime", "Log"):
            browser.call(f"{domain}.enable")
        browser.call(
            "Emulation.setDeviceMetricsOverride", width=1280, height=900, deviceScaleFactor=1,
            mobile=False,
        )  # fmt: skip
        browser.call("Page.navigate", url=f"{stack.gw.url}/dashboard")
        browser.wait_for("document.body && document.body.dataset.loaded >= '1'")
        # live: a second poll arrives by itself a few seconds later
        browser.wait_for("Number(document.body.dataset.loaded) >= 2", timeout=15)
        shown = browser.eval(
            "JSON.stringify(Object.fromEntries([...document.querySelectorAll('[id^=kpi-]')]"
            ".map(e => [e.id, [e.textContent, e.getAttribute('data-value')]])))"
        )
        kpi = json.loads(shown)
        usage = httpx.get(f"{stack.gw.url}/v1/usage", params={"since": "24h"}).json()["totals"]

        def raw(k: str) -> float:
            return float(kpi[k][1])

        assert int(raw("kpi-requests")) == usage["requests"] == stack.sent
        assert raw("kpi-cost") == pytest.approx(usage["cost_usd"], rel=1e-12)
        assert raw("kpi-reference") == pytest.approx(usage["reference_cost_usd"], rel=1e-12)
        assert raw("kpi-savings") == pytest.approx(usage["savings_vs_reference_pct"], rel=1e-12)
        assert raw("kpi-quality") == pytest.approx(usage["quality_mean"], rel=1e-12)
        assert kpi["kpi-requests"][0] == f"{usage['requests']:,}"
        assert kpi["kpi-cost"][0] == usd(usage["cost_usd"])
        assert kpi["kpi-reference"][0] == usd(usage["reference_cost_usd"])
        assert kpi["kpi-savings"][0] == f"{usage['savings_vs_reference_pct']:.1f} %"
        # the page names its savings number, defines it, and says it is not the demo's
        labels = json.loads(
            browser.eval(
                "JSON.stringify([...document.querySelectorAll('.kpi .label')]"
                ".map(e => e.textContent))"
            )
        )
        assert "savings vs reference" in labels and "reference cost" in labels
        definition = browser.eval("document.getElementById('savings-definition').textContent")
        assert definition.startswith(
            f"Savings vs reference (same tokens): {SAVINGS_DEFINITION}. This is not the "
            '"cost vs always-<tier> (replayed answers)" that `tollgate demo` prints'
        ), definition
        assert kpi["kpi-quality"][0] == f"{usage['quality_mean']:.3f}"
        assert float(kpi["kpi-p95"][1]) > 0
        counts = json.loads(
            browser.eval(
                "JSON.stringify({"
                " recent: document.querySelectorAll('#table-recent tbody tr').length,"
                " backends: [...document.querySelectorAll('#table-backends tbody tr')]"
                "   .map(r => r.cells[0].textContent + ':' + r.cells[3].textContent),"
                " mixBars: document.querySelectorAll('#chart-mix rect').length,"
                " spendPaths: document.querySelectorAll('#chart-spend path').length,"
                " latencyPaths: document.querySelectorAll('#chart-latency path').length,"
                " qualityBars: document.querySelectorAll('#chart-quality rect').length,"
                " banner: document.getElementById('banner').hidden})"
            )
        )
        assert counts["recent"] == 25
        assert "small:closed" in counts["backends"] and "large:closed" in counts["backends"]
        assert counts["mixBars"] >= 4 and counts["spendPaths"] == 2
        assert counts["latencyPaths"] == 2 and counts["qualityBars"] >= 4
        assert counts["banner"] is True
        ARTIFACTS.mkdir(exist_ok=True)
        browser.screenshot(ARTIFACTS / "dashboard.png")
        # a phone: one column, no sideways scrolling of the page
        browser.call(
            "Emulation.setDeviceMetricsOverride", width=390, height=844, deviceScaleFactor=2,
            mobile=True,
        )  # fmt: skip
        time.sleep(0.3)
        overflow = browser.eval("document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 1, f"page is {overflow}px wider than a phone screen"
        browser.screenshot(ARTIFACTS / "dashboard-phone.png")
        assert (ARTIFACTS / "dashboard.png").read_bytes().startswith(b"\x89PNG")

        # every request the page made went to the gateway; nothing was blocked or thrown
        urls = [
            e["params"]["request"]["url"]
            for e in browser.events
            if e.get("method") == "Network.requestWillBeSent"
        ]
        assert any(u.endswith("/dashboard/static/app.js") for u in urls)
        assert any("/dashboard/data?since=" in u for u in urls)
        outside = [
            u for u in urls if not (u.startswith(stack.gw.url + "/") or u.startswith("data:"))
        ]
        assert outside == [], outside
        problems = [
            e["params"] for e in browser.events
            if e.get("method") == "Runtime.exceptionThrown"
            or (e.get("method") == "Log.entryAdded" and e["params"]["entry"]["level"] == "error")
        ]  # fmt: skip
        assert problems == [], problems
    finally:
        browser.close()
    # the browser's own log (--enable-logging --v=1): no request to a host but the gateway
    host = re.escape(stack.gw.url)
    log = browser.log.read_text(errors="replace")
    fetched = re.findall(r"NotifyBeforeURLRequest: (\S+)", log)
    assert any(u.endswith("/dashboard/static/app.js") for u in fetched), "no request log"
    # Chromium's own services (component updater, clock, accounts) show up here too even
    # with --disable-background-networking; they are not the page's, so they are set aside.
    own = re.compile(r"https?://[^/]*\.(google\.com|googleapis\.com|gstatic\.com)/")
    assert [u for u in fetched if not re.match(host + "/", u) and not own.match(u)] == []
