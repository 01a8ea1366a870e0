"""The gateway as a user sees it: the official SDK against a real uvicorn gateway over fakes."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import openai
import pytest

from tests.fake_upstream import FakeUpstream
from tests.support import GatewayProcess, metric_samples, metric_total, model_block

Fakes = Callable[..., FakeUpstream]
Gw = Callable[..., GatewayProcess]


def two_tier_config(primary: FakeUpstream, backup: FakeUpstream, **primary_extra: Any) -> str:
    extra = {"retries": 1, **primary_extra}
    return "\n".join(
        [
            "server: {retry_backoff_s: 0.01, max_backoff_s: 2.0, drain_timeout_s: 5}",
            "circuit_breaker: {failure_threshold: 3, cooldown_s: 1.0}",
            "store: {backend: none}",
            "models:",
            model_block("primary", "small", primary.base_url, **extra),
            model_block("backup", "large", backup.base_url, retries=0),
            "  - name: embedder",
            "    tier: small",
            "    kinds: [embeddings]",
            "    endpoints:",
            f"      - base_url: {primary.base_url}",
            "        model: upstream-embed",
            "routes:",
            "  - name: chat",
            "    models: [primary, backup]",
        ]
    )


@pytest.fixture
def pair(fakes: Fakes, gateway: Gw) -> tuple[FakeUpstream, FakeUpstream, GatewayProcess]:
    primary = fakes("primary")
    backup = fakes("backup")
    gw = gateway(two_tier_config(primary, backup))
    return primary, backup, gw


def client(gw: GatewayProcess, **kw: Any) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.base_url, api_key="unused", max_retries=0, **kw)


# -- the happy paths, sync and async, streamed and not ---------------------------------
def test_chat_sync_returns_upstream_answer_with_public_name_and_headers(pair: Any) -> None:
    primary, _, gw = pair
    raw = client(gw).chat.completions.with_raw_response.create(
        model="primary", messages=[{"role": "user", "content": "hello there"}], seed=7, user="u1"
    )
    resp = raw.parse()
    assert resp.model == "primary"
    assert resp.choices[0].message.content.startswith("[primary] tok0")
    assert resp.usage.completion_tokens == 16
    assert raw.headers["x-tollgate-model"] == "primary"
    assert raw.headers["x-tollgate-tier"] == "small"
    assert raw.headers["x-tollgate-attempts"] == "1"
    rid = raw.headers["x-tollgate-request-id"]
    # tg-, 11 hex digits of Unix milliseconds (time order), 16 random hex digits
    assert re.fullmatch(r"tg-[0-9a-f]{27}", rid), rid
    assert abs(int(rid[3:14], 16) / 1000 - time.time()) < 60
    # a JSON answer is sent with its length, not chunked
    assert raw.headers["content-length"] == str(len(raw.http_response.content))
    assert "transfer-encoding" not in raw.headers
    sent = primary.stats()["last_request"]
    # unknown fields pass through untouched; the upstream gets its own model name
    assert sent["model"] == "upstream-primary"
    assert sent["seed"] == 7 and sent["user"] == "u1"
    again = client(gw).chat.completions.with_raw_response.create(
        model="primary", messages=[{"role": "user", "content": "hello again"}]
    )
    later = again.headers["x-tollgate-request-id"]
    assert later[3:14] >= rid[3:14] and later[14:] != rid[14:]


def test_chat_stream_sync_forwards_chunks_and_hides_injected_usage(pair: Any) -> None:
    primary, _, gw = pair
    chunks = list(
        client(gw).chat.completions.create(
            model="primary", messages=[{"role": "user", "content": "hi"}], stream=True
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.startswith("[primary] tok0")
    assert all(c.model == "primary" for c in chunks)
    assert all(c.usage is None for c in chunks)  # the client did not ask for usage
    # ... but the gateway asked the upstream for it
    assert primary.stats()["last_request"]["stream_options"] == {"include_usage": True}


def test_chat_stream_with_usage_when_client_asks(pair: Any) -> None:
    _, _, gw = pair
    chunks = list(
        client(gw).chat.completions.create(
            model="primary",
            messages=[{"role": "user", "content": "hi"}],
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 16


async def test_async_sdk_chat_stream_and_completions(pair: Any) -> None:
    _, _, gw = pair
    ac = openai.AsyncOpenAI(base_url=gw.base_url, api_key="unused", max_retries=0)
    r = await ac.chat.completions.create(
        model="chat", messages=[{"role": "user", "content": "hello"}]
    )
    assert r.model == "primary"
    stream = await ac.chat.completions.create(
        model="primary", messages=[{"role": "user", "content": "hello"}], stream=True
    )
    parts = [c.choices[0].delta.content or "" async for c in stream if c.choices]
    assert "".join(parts).startswith("[primary]")
    comp = await ac.completions.create(model="primary", prompt="Once upon a time")
    assert comp.model == "primary" and comp.choices[0].text
    cstream = await ac.completions.create(model="primary", prompt="Once", stream=True)
    assert "".join([c.choices[0].text async for c in cstream if c.choices])
    await ac.close()


def test_embeddings_and_model_list(pair: Any) -> None:
    _, _, gw = pair
    c = client(gw)
    emb = c.embeddings.create(model="embedder", input=["a b", "c"])
    assert len(emb.data) == 2 and len(emb.data[0].embedding) == 8
    assert emb.model == "embedder"
    ids = {m.id for m in c.models.list()}
    assert {"primary", "backup", "embedder", "chat"} <= ids


def test_tool_call_deltas_arrive_exactly_as_upstream_sent_them(pair: Any) -> None:
    primary, _, gw = pair
    tools = [
        {
            "type": "function",
            "function": {
                "name": "lookup",
                "parameters": {"type": "object", "properties": {"x": {"type": "integer"}}},
            },
        }
    ]
    msgs = [{"role": "user", "content": "call the tool"}]

    def deltas(base_url: str, model: str) -> list[Any]:
        c = openai.OpenAI(base_url=base_url, api_key="x", max_retries=0)
        out = []
        for ch in c.chat.completions.create(model=model, messages=msgs, tools=tools, stream=True):
            for choice in ch.choices:
                if choice.delta.tool_calls:
                    dumped = [tc.model_dump() for tc in choice.delta.tool_calls]
                    for d in dumped:  # the fake numbers its call ids per request
                        if d["id"] is not None:
                            assert d["id"].startswith("call_")
                            d["id"] = "call_ID"
                    out.append(dumped)
        return out

    via_gateway = deltas(gw.base_url, "primary")
    direct = deltas(primary.base_url, "upstream-primary")
    assert len(via_gateway) >= 3
    assert via_gateway == direct
    assert primary.stats()["last_request"]["tools"] == tools
    full = client(gw).chat.completions.create(model="primary", messages=msgs, tools=tools)
    assert full.choices[0].finish_reason == "tool_calls"
    assert full.choices[0].message.tool_calls[0].function.arguments == '{"x": 1}'


# -- faults ------------------------------------------------------------------------------
def test_retry_then_success(pair: Any) -> None:
    primary, _, gw = pair
    primary.script([{"kind": "status", "status": 503}])
    raw = client(gw).chat.completions.with_raw_response.create(
        model="primary", messages=[{"role": "user", "content": "x"}]
    )
    assert raw.headers["x-tollgate-attempts"] == "2"
    assert raw.parse().choices[0].message.content.startswith("[primary]")


def test_connection_reset_is_retried(pair: Any) -> None:
    primary, _, gw = pair
    primary.script([{"kind": "reset"}])
    raw = client(gw).chat.completions.with_raw_response.create(
        model="primary", messages=[{"role": "user", "content": "x"}]
    )
    assert raw.headers["x-tollgate-attempts"] == "2"


def test_fallback_on_persistent_500(pair: Any) -> None:
    primary, _backup, gw = pair
    primary.script([], default={"kind": "status", "status": 500})
    raw = client(gw).chat.completions.with_raw_response.create(
        model="chat", messages=[{"role": "user", "content": "x"}]
    )
    resp = raw.parse()
    assert raw.headers["x-tollgate-model"] == "backup"
    assert raw.headers["x-tollgate-tier"] == "large"
    assert raw.headers["x-tollgate-attempts"] == "3"  # 2 on primary, 1 on backup
    assert resp.model == "backup" and resp.choices[0].message.content.startswith("[backup]")


def test_all_fail_gives_502_naming_the_model(pair: Any) -> None:
    primary, _, gw = pair
    primary.script([], default={"kind": "status", "status": 500})
    with pytest.raises(openai.APIStatusError) as ei:
        client(gw).chat.completions.create(
            model="primary", messages=[{"role": "user", "content": "x"}]
        )
    assert ei.value.status_code == 502
    body = ei.value.response.json()["error"]
    assert body["type"] == "upstream_error" and "primary" in body["message"]
    assert "HTTP 500" in body["message"]


def test_retry_after_honoured_on_429(pair: Any) -> None:
    primary, _, gw = pair
    primary.script([{"kind": "status", "status": 429, "retry_after": 1}])
    t = time.monotonic()
    raw = client(gw).chat.completions.with_raw_response.create(
        model="primary", messages=[{"role": "user", "content": "x"}]
    )
    assert time.monotonic() - t >= 1.0
    assert raw.headers["x-tollgate-attempts"] == "2"
    assert raw.headers["x-tollgate-model"] == "primary"


def test_timeout_then_fallback(fakes: Fakes, gateway: Gw) -> None:
    primary, backup = fakes("primary"), fakes("backup")
    gw = gateway(two_tier_config(primary, backup, timeouts="{total_s: 0.5}"))
    primary.script([{"kind": "delay", "ms": 3000}])
    t = time.monotonic()
    raw = client(gw).chat.completions.with_raw_response.create(
        model="chat", messages=[{"role": "user", "content": "x"}]
    )
    assert time.monotonic() - t < 2.5
    assert raw.headers["x-tollgate-model"] == "backup"


def test_timeout_alone_is_504(fakes: Fakes, gateway: Gw) -> None:
    primary, backup = fakes("primary"), fakes("backup")
    gw = gateway(two_tier_config(primary, backup, timeouts="{total_s: 0.3}"))
    primary.script([{"kind": "delay", "ms": 2000}])
    with pytest.raises(openai.APIStatusError) as ei:
        client(gw).chat.completions.create(
            model="primary", messages=[{"role": "user", "content": "x"}]
        )
    assert ei.value.status_code == 504
    assert "did not answer in time" in ei.value.response.json()["error"]["message"]


def test_circuit_opens_after_failures_and_closes_after_recovery(pair: Any) -> None:
    primary, _, gw = pair
    primary.script([], default={"kind": "status", "status": 500})
    c = client(gw)
    msgs = [{"role": "user", "content": "x"}]
    with pytest.raises(openai.APIStatusError):
        c.chat.completions.create(model="primary", messages=msgs)  # 2 failures
    with pytest.raises(openai.APIStatusError):
        c.chat.completions.create(model="primary", messages=msgs)  # 3rd opens it
    seen = primary.stats()["requests"]
    with pytest.raises(openai.APIStatusError) as ei:
        c.chat.completions.create(model="primary", messages=msgs)
    assert ei.value.status_code == 503
    assert "circuit breaker is open" in ei.value.response.json()["error"]["message"]
    assert "retry-after" in ei.value.response.headers
    assert primary.stats()["requests"] == seen  # the open circuit spared the upstream
    ready = httpx.get(f"{gw.url}/readyz").json()
    assert ready["models"]["primary"]["endpoints"][0]["circuit"] == "open"
    # while open, the route falls through to the backup at once
    raw = c.chat.completions.with_raw_response.create(model="chat", messages=msgs)
    assert raw.headers["x-tollgate-model"] == "backup"
    # recovery: after the cool-down, a half-open probe succeeds and closes the circuit
    primary.reset()
    time.sleep(1.1)
    r = c.chat.completions.create(model="primary", messages=msgs)
    assert r.choices[0].message.content.startswith("[primary]")
    ready = httpx.get(f"{gw.url}/readyz").json()
    assert ready["models"]["primary"]["endpoints"][0]["circuit"] == "closed"


def test_mid_stream_cut_reaches_client_as_error_event(pair: Any) -> None:
    primary, _, gw = pair
    primary.script([{"kind": "cut", "after_chunks": 2}])
    got: list[str] = []
    with pytest.raises(openai.APIError) as ei:
        for ch in client(gw).chat.completions.create(
            model="primary", messages=[{"role": "user", "content": "x"}], stream=True
        ):
            got.extend(c.delta.content or "" for c in ch.choices)
    assert got, "the chunks before the cut were forwarded"
    assert "incomplete" in ei.value.message
    # raw view: a 200 whose last event is an OpenAI error object, then a clean end
    primary.script([{"kind": "cut", "after_chunks": 2}])
    with httpx.stream(
        "POST",
        f"{gw.base_url}/chat/completions",
        json={
            "model": "primary",
            "messages": [{"role": "user", "content": "x"}],
            "stream": True,
        },
    ) as r:
        events = [ln for ln in r.iter_lines() if ln.startswith("data: ")]
    last = json.loads(events[-1][6:])
    assert last["error"]["type"] == "upstream_error"
    assert last["error"]["code"] == "stream_interrupted"


# The gateway's own protocol calls back from connection_lost (the tollgate.on_disconnect
# scope extension); under uvicorn's httptools protocol a watcher task on receive() does it.
PROTOCOLS = pytest.mark.parametrize("http", ["tollgate", "httptools"])


def _wait_cancelled_and_recorded(primary: FakeUpstream, gw: GatewayProcess) -> None:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and primary.stats()["cancelled"] < 1:
        time.sleep(0.05)
    assert primary.stats()["cancelled"] == 1
    # the request is still recorded, as a 499 (the client closed the request)
    while True:
        seen = metric_samples(httpx.get(f"{gw.url}/metrics").text)
        if metric_total(seen, "tollgate_requests_total", status="499"):
            break
        assert time.monotonic() < deadline, "no 499 in /metrics"
        time.sleep(0.05)
    assert metric_total(seen, "tollgate_requests_total", status="499", model="primary") == 1
    assert metric_total(seen, "tollgate_requests_total") == 1


@PROTOCOLS
def test_client_disconnect_cancels_upstream_request(fakes: Fakes, gateway: Gw, http: str) -> None:
    primary, backup = fakes("primary"), fakes("backup")
    gw = gateway(two_tier_config(primary, backup), args=["--http", http])
    primary.script([{"kind": "delay", "ms": 5000}])
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(
            f"{gw.base_url}/chat/completions",
            timeout=0.5,
            json={"model": "primary", "messages": [{"role": "user", "content": "x"}]},
        )
    _wait_cancelled_and_recorded(primary, gw)


@PROTOCOLS
def test_client_disconnect_mid_stream_cancels_upstream(
    fakes: Fakes, gateway: Gw, http: str
) -> None:
    primary, backup = fakes("primary"), fakes("backup")
    gw = gateway(two_tier_config(primary, backup), args=["--http", http])
    primary.script([{"kind": "trickle", "ms": 300}])
    with httpx.stream(
        "POST",
        f"{gw.base_url}/chat/completions",
        json={
            "model": "primary",
            "messages": [{"role": "user", "content": "x"}],
            "stream": True,
        },
    ) as r:
        for _ in r.iter_lines():
            break
    _wait_cancelled_and_recorded(primary, gw)


def test_concurrency_cap_queue_then_503(fakes: Fakes, gateway: Gw) -> None:
    slow = fakes("slow", latency_ms=600)
    gw = gateway(
        "\n".join(
            [
                "store: {backend: none}",
                "models:",
                model_block(
                    "slow",
                    "small",
                    slow.base_url,
                    max_concurrency=1,
                    max_queue=1,
                    queue_timeout_s=5,
                ),
            ]
        )
    )

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=10) as c:
            body = {"model": "slow", "messages": [{"role": "user", "content": "x"}]}
            return await asyncio.gather(
                *[c.post(f"{gw.base_url}/chat/completions", json=body) for _ in range(3)]
            )

    codes = sorted(r.status_code for r in asyncio.run(burst()))
    assert codes == [200, 200, 503]  # one in flight, one queued, one refused
    assert slow.stats()["max_in_flight"] == 1


def test_least_outstanding_balances_replicas(fakes: Fakes, gateway: Gw) -> None:
    a, b = fakes("a", latency_ms=100), fakes("b", latency_ms=100)
    gw = gateway(
        "\n".join(
            [
                "store: {backend: none}",
                "models:",
                "  - name: pool",
                "    tier: medium",
                "    endpoints:",
                f"      - base_url: {a.base_url}",
                f"      - base_url: {b.base_url}",
            ]
        )
    )

    async def burst() -> None:
        async with httpx.AsyncClient(timeout=10) as c:
            body = {"model": "pool", "messages": [{"role": "user", "content": "x"}]}
            rs = await asyncio.gather(
                *[c.post(f"{gw.base_url}/chat/completions", json=body) for _ in range(20)]
            )
            assert all(r.status_code == 200 for r in rs)

    asyncio.run(burst())
    na, nb = a.stats()["requests"], b.stats()["requests"]
    assert na + nb == 20 and abs(na - nb) <= 2


# -- bad input ----------------------------------------------------------------------------
GOOD = {"model": "primary", "messages": [{"role": "user", "content": "x"}]}


@pytest.mark.parametrize(
    ("body", "headers", "status", "etype", "param", "needle"),
    [
        (b"{not json", None, 400, "invalid_request_error", None, "not valid JSON"),
        (b"", None, 400, "invalid_request_error", None, "empty"),
        (
            json.dumps({"model": "primary"}).encode(),
            None,
            400,
            "invalid_request_error",
            "messages",
            "'messages' is required",
        ),
        (
            json.dumps({"messages": GOOD["messages"]}).encode(),
            None,
            400,
            "invalid_request_error",
            "model",
            "'model' is required",
        ),
        (
            json.dumps({**GOOD, "messages": "hi"}).encode(),
            None,
            400,
            "invalid_request_error",
            "messages",
            "must be an array",
        ),
        (
            json.dumps({**GOOD, "messages": [{"role": 3, "content": "x"}]}).encode(),
            None,
            400,
            "invalid_request_error",
            "messages[0].role",
            "must be a string",
        ),
        (
            json.dumps({**GOOD, "messages": [{"role": "wizard", "content": "x"}]}).encode(),
            None,
            400,
            "invalid_request_error",
            "messages[0].role",
            "use one of",
        ),
        (
            json.dumps({**GOOD, "stream": "yes"}).encode(),
            None,
            400,
            "invalid_request_error",
            "stream",
            "must be a boolean",
        ),
        (
            json.dumps({**GOOD, "max_tokens": -1}).encode(),
            None,
            400,
            "invalid_request_error",
            "max_tokens",
            "non-negative integer",
        ),
        (json.dumps([1, 2]).encode(), None, 400, "invalid_request_error", None, "JSON object"),
        (
            json.dumps({**GOOD, "model": "nope"}).encode(),
            None,
            404,
            "invalid_request_error",
            "model",
            "does not exist",
        ),
        (
            json.dumps(GOOD).encode(),
            {"content-type": "text/plain"},
            415,
            "invalid_request_error",
            None,
            "application/json",
        ),
        (
            json.dumps({**GOOD, "pad": "x" * 5000}).encode(),
            None,
            413,
            "invalid_request_error",
            None,
            "at most 4096",
        ),
    ],
)
def test_bad_input_matrix(
    bad_input_gateway: GatewayProcess,
    body: bytes,
    headers: dict[str, str] | None,
    status: int,
    etype: str,
    param: str | None,
    needle: str,
) -> None:
    gw = bad_input_gateway
    h = {"content-type": "application/json", **(headers or {})}
    r = httpx.post(f"{gw.base_url}/chat/completions", content=body, headers=h)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["type"] == etype
    assert err["param"] == param
    assert needle in err["message"]
    assert "Traceback" not in r.text
    assert r.headers["content-length"] == str(len(r.content))


@pytest.fixture(scope="module")
def bad_input_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    with FakeUpstream(name="primary") as up:
        config = "\n".join(
            [
                "server: {max_body_bytes: 4096}",
                "store: {backend: none}",
                "models:",
                model_block("primary", "small", up.base_url),
            ]
        )
        with GatewayProcess(config, tmp_path_factory.mktemp("badinput")) as gw:
            yield gw


def test_bad_paths_and_methods_use_openai_errors(pair: Any) -> None:
    _, _, gw = pair
    r = httpx.get(f"{gw.base_url}/chat/completions")
    assert r.status_code == 405 and r.json()["error"]["code"] == "method_not_allowed"
    r = httpx.get(f"{gw.base_url}/nothing-here")
    assert r.status_code == 404 and r.json()["error"]["type"] == "invalid_request_error"
    r = httpx.post(f"{gw.base_url}/embeddings", json={"model": "primary", "input": "x"})
    assert r.status_code == 400 and "does not serve" in r.json()["error"]["message"]


# -- hot reload -------------------------------------------------------------------------
def test_hot_reload_adds_model_and_survives_broken_edit(fakes: Fakes, gateway: Gw) -> None:
    a, b = fakes("a"), fakes("b")
    base = ["store: {backend: none}", "models:", model_block("a", "small", a.base_url)]
    gw = gateway("\n".join(base))
    c = client(gw)
    with pytest.raises(openai.NotFoundError):
        c.chat.completions.create(model="b", messages=[{"role": "user", "content": "x"}])
    gw.write_config("\n".join([*base, model_block("b", "large", b.base_url)]))
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if "b" in {m.id for m in c.models.list()}:
            break
        time.sleep(0.1)
    r = c.chat.completions.create(model="b", messages=[{"role": "user", "content": "x"}])
    assert r.choices[0].message.content.startswith("[b]")
    # a broken edit: the old config keeps serving and the error is visible
    gw.write_config("\n".join([*base, "  - name: c\n    tier: gigantic\n    endpoints: []"]))
    gw.sighup()
    deadline = time.monotonic() + 5
    ready: dict[str, Any] = {}
    while time.monotonic() < deadline:
        ready = httpx.get(f"{gw.url}/readyz").json()
        if ready["config_error"]:
            break
        time.sleep(0.1)
    assert "models[1].tier" in ready["config_error"]
    assert "models[1].endpoints" in ready["config_error"]
    r = c.chat.completions.create(model="b", messages=[{"role": "user", "content": "x"}])
    assert r.choices[0].message.content.startswith("[b]")
    assert "config reload" in gw.logs() and "rejected" in gw.logs()


def test_graceful_shutdown_drains_in_flight(fakes: Fakes, gateway: Gw) -> None:
    slow = fakes("slow", latency_ms=800)
    gw = gateway(
        "\n".join(
            ["store: {backend: none}", "models:", model_block("slow", "small", slow.base_url)]
        )
    )

    async def run() -> httpx.Response:
        async with httpx.AsyncClient(timeout=10) as c:
            task = asyncio.create_task(
                c.post(
                    f"{gw.base_url}/chat/completions",
                    json={"model": "slow", "messages": [{"role": "user", "content": "x"}]},
                )
            )
            await asyncio.sleep(0.3)
            stopper = asyncio.get_running_loop().run_in_executor(None, gw.stop)
            r = await task
            # uvicorn re-raises the SIGTERM it handled once shutdown is complete
            assert await stopper in (0, -15)
            return r

    r = asyncio.run(run())
    assert r.status_code == 200
    assert r.json()["choices"][0]["message"]["content"].startswith("[slow]")
    assert "Finished server process" in gw.logs()


def test_in_flight_request_finishes_on_the_config_it_started_with(
    fakes: Fakes, gateway: Gw
) -> None:
    slow, other = fakes("slow", latency_ms=1500), fakes("other")
    gw = gateway(
        "\n".join(["store: {backend: none}", "models:", model_block("m", "small", slow.base_url)])
    )

    async def run() -> httpx.Response:
        async with httpx.AsyncClient(timeout=10) as c:
            body = {"model": "m", "messages": [{"role": "user", "content": "x"}]}
            task = asyncio.create_task(c.post(f"{gw.base_url}/chat/completions", json=body))
            await asyncio.sleep(0.3)
            # while it is in flight, "m" is re-pointed at another upstream
            gw.write_config(
                "\n".join(
                    ["store: {backend: none}", "models:", model_block("m", "small", other.base_url)]
                )
            )
            gw.sighup()
            return await task

    r = asyncio.run(run())
    assert r.status_code == 200
    assert r.json()["choices"][0]["message"]["content"].startswith("[slow]")
    after = httpx.post(
        f"{gw.base_url}/chat/completions",
        json={"model": "m", "messages": [{"role": "user", "content": "x"}]},
    )
    assert after.json()["choices"][0]["message"]["content"].startswith("[other]")


def test_event_loop_lag_is_measured(pair: Any) -> None:
    """tollgate_event_loop_lag_seconds samples the loop ten times a second; a gateway that
    could not run for 0.4 s (stopped here with SIGSTOP) shows it as a late sample."""
    _, _, gw = pair
    assert gw.proc is not None

    def lag() -> tuple[float, float]:
        seen = metric_samples(httpx.get(f"{gw.url}/metrics").text)
        count = metric_total(seen, "tollgate_event_loop_lag_seconds_count")
        return count, metric_total(seen, "tollgate_event_loop_lag_seconds_bucket", le="0.25")

    n0, on_time0 = lag()
    os.kill(gw.proc.pid, signal.SIGSTOP)
    try:
        time.sleep(0.4)
    finally:
        os.kill(gw.proc.pid, signal.SIGCONT)
    deadline = time.monotonic() + 5
    while (got := lag())[0] < n0 + 3:
        assert time.monotonic() < deadline, "the loop-lag samples stopped"
        time.sleep(0.1)
    count, on_time = got
    late_before, late_after = n0 - on_time0, count - on_time
    assert late_after - late_before >= 1, "no sample later than 0.25 s after a 0.4 s stop"
