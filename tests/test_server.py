"""gateway/http/server.py (H1Server, the HTTP/1.1 protocol `tollgate serve` runs uvicorn with), on a
real uvicorn server in its own process on 127.0.0.1, read by stdlib HTTP clients and raw
sockets.

Every gateway test goes through it already; these pin the HTTP cases the gateway's own routes
do not produce: bodies sent in several messages, chunked responses, HEAD, 204, a bad header,
a body shorter than its Content-Length, an app that fails, request bodies in many pieces and
past the read high-water mark, Expect: 100-continue, pipelining, Connection: close, HTTP/1.0,
a malformed request, a client that leaves mid-request, and the keep-alive timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import http.client
import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from gateway.demo.procutil import stop_process
from gateway.http.server import ON_DISCONNECT, H1Server
from tests.fake_upstream import FakeUpstream
from tests.support import GatewayProcess, free_port, model_block

BODY = b'{"id":"x","object":"chat.completion"}'
KEEP_ALIVE_S = 1
EVENTS: list[str] = []  # what the server process saw (its own copy; read via /events)


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    assert scope["type"] == "http"
    path = scope["path"]
    length = [(b"content-length", b"%d" % len(BODY))]
    start: dict[str, Any] = {"type": "http.response.start", "status": 200}
    if path == "/echo":  # the request body, its size and how many receive() calls it took
        parts: list[bytes] = []
        calls = 0
        while True:
            msg = await receive()
            calls += 1
            assert msg["type"] == "http.request"
            parts.append(msg["body"])
            if not msg["more_body"]:
                break
        body = b"".join(parts)
        info = json.dumps(
            {"size": len(body), "calls": calls, "query": scope["query_string"].decode(),
             "path": path, "raw_path": scope["raw_path"].decode(), "method": scope["method"],
             "http_version": scope["http_version"], "client": scope["client"][0]}
        ).encode()  # fmt: skip
        await send({**start, "headers": [(b"content-length", b"%d" % len(info))]})
        await send({"type": "http.response.body", "body": info})
        return
    if path == "/wait-disconnect":  # answers only once it has seen the client leave
        await receive()
        msg = await receive()
        EVENTS.append(msg["type"])
        return
    if path == "/on-disconnect":  # no task on receive(): the server calls back when it goes
        task = asyncio.current_task()
        assert task is not None

        def gone() -> None:
            EVENTS.append("on_disconnect")
            task.cancel()

        scope["extensions"][ON_DISCONNECT](gone)
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.sleep(30)
        return
    if path == "/on-disconnect-answered":  # a complete answer: the callback is not called
        scope["extensions"][ON_DISCONNECT](lambda: EVENTS.append("on_disconnect"))
        await send({**start, "headers": length})
        await send({"type": "http.response.body", "body": BODY})
        EVENTS.append("answered")
        return
    if path == "/gc-pause":  # collect now, then no automatic collections until /gc-resume
        gc.collect()
        gc.disable()
    elif path == "/gc-resume":  # how many unreachable objects the requests since left behind
        out = b"%d" % gc.collect()
        gc.enable()
        await send({**start, "headers": [(b"content-length", b"%d" % len(out))]})
        await send({"type": "http.response.body", "body": out})
        return
    elif path == "/registered":  # an app that registers for the client leaving, then answers
        scope["extensions"][ON_DISCONNECT](lambda: None)
    if path == "/two-watchers":  # two receive() calls asleep at once: both see the client go
        await receive()
        got = await asyncio.gather(receive(), receive())
        EVENTS.append("+".join(m["type"] for m in got))
        return
    if path == "/events":
        out = json.dumps(EVENTS).encode()
        await send({**start, "headers": [(b"content-length", b"%d" % len(out))]})
        await send({"type": "http.response.body", "body": out})
        return
    while (await receive()).get("more_body"):
        pass
    if path in ("/len", "/registered", "/gc-pause"):
        await send({**start, "headers": [(b"content-type", b"application/json"), *length]})
        await send({"type": "http.response.body", "body": BODY})
    elif path == "/len-parts":
        await send({**start, "headers": length})
        for i in range(0, len(BODY), 10):
            part = BODY[i : i + 10]
            await send({"type": "http.response.body", "body": part, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
    elif path == "/chunked":
        await send({**start, "headers": [(b"content-type", b"text/plain")]})
        for part in (b"one ", b"two ", b"three"):
            await send({"type": "http.response.body", "body": part, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
    elif path == "/no-content":
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})
    elif path == "/bad-header":
        await send({**start, "headers": [*length, (b"x-evil", b"a\r\nset-cookie: x=1")]})
        await send({"type": "http.response.body", "body": BODY})
    elif path == "/short":
        await send({**start, "headers": [(b"content-length", b"100")]})
        await send({"type": "http.response.body", "body": b"only this"})
    elif path == "/big":  # 8 MiB in 64 KiB messages: the transport pauses the app's writes
        part = bytes(range(256)) * 256
        await send({**start, "headers": [(b"content-length", b"%d" % (len(part) * 128))]})
        for _ in range(128):
            await send({"type": "http.response.body", "body": part, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
    elif path == "/fail":
        raise ValueError("the app failed")
    elif path == "/close":
        await send({**start, "headers": [*length, (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": BODY})
    else:
        await send({"type": "http.response.start", "status": 404,
                    "headers": [(b"content-length", b"9")]})  # fmt: skip
        await send({"type": "http.response.body", "body": b"not found"})


def serve(port: int) -> None:
    uvicorn.run(app, host="127.0.0.1", port=port, loop="uvloop", http=H1Server,
                lifespan="off", access_log=False, log_level="critical",
                timeout_keep_alive=KEEP_ALIVE_S)  # fmt: skip


@pytest.fixture(scope="module")
def port() -> Iterator[int]:
    """The server in its own process, as `tollgate serve` runs it."""
    p = free_port()
    root = Path(__file__).resolve().parent.parent
    proc = subprocess.Popen(
        [sys.executable, "-c", f"from tests.test_server import serve; serve({p})"], cwd=root
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            assert proc.poll() is None and time.monotonic() < deadline, "server did not start"
            try:
                socket.create_connection(("127.0.0.1", p), timeout=1).close()
                break
            except OSError:
                time.sleep(0.05)
        yield p
    finally:
        stop_process(proc)


def get(port: int, path: str, method: str = "GET", body: bytes | None = None,
        headers: dict[str, str] | None = None) -> http.client.HTTPResponse:  # fmt: skip
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    c.request(method, path, body=body, headers=headers or {})
    return c.getresponse()


def test_known_length_body(port: int) -> None:
    r = get(port, "/len")
    assert r.status == 200
    assert r.getheader("content-length") == str(len(BODY))
    assert r.getheader("transfer-encoding") is None
    assert r.getheader("content-type") == "application/json"
    assert r.getheader("date") and r.getheader("server") == "uvicorn"  # uvicorn's defaults
    assert r.read() == BODY


def test_known_length_body_in_parts(port: int) -> None:
    r = get(port, "/len-parts")
    assert r.getheader("content-length") == str(len(BODY)) and r.read() == BODY


def test_chunked_body(port: int) -> None:
    r = get(port, "/chunked")
    assert r.getheader("transfer-encoding") == "chunked"
    assert r.read() == b"one two three"


def test_head_and_no_content(port: int) -> None:
    r = get(port, "/len", "HEAD")
    assert r.status == 200 and r.getheader("content-length") == str(len(BODY))
    assert r.read() == b""
    r = get(port, "/no-content")
    assert r.status == 204 and r.read() == b"" and r.getheader("transfer-encoding") is None


def test_invalid_header_value_is_never_sent(port: int) -> None:
    r = get(port, "/bad-header")
    assert r.status == 500
    assert r.getheader("set-cookie") is None and r.getheader("x-evil") is None
    assert r.read() == b"Internal Server Error"


def test_app_error_is_a_500_and_the_server_lives_on(port: int) -> None:
    r = get(port, "/fail")
    assert r.status == 500 and r.read() == b"Internal Server Error"
    assert r.getheader("connection") == "close"
    assert get(port, "/len").read() == BODY


def test_body_shorter_than_its_length_closes_the_connection(port: int) -> None:
    r = get(port, "/short")
    assert r.status == 200
    with pytest.raises(http.client.IncompleteRead):
        r.read()


def test_request_bodies(port: int) -> None:
    for size in (0, 1, 70_000, 1_000_000):  # past the 64 KiB read high-water mark
        r = get(port, "/echo?x=1&y=%20", "POST", b"a" * size)
        info = json.loads(r.read())
        assert info["size"] == size and info["query"] == "x=1&y=%20"
        assert info["method"] == "POST" and info["client"] == "127.0.0.1"
    # a chunked request body (no Content-Length)
    r = get(port, "/echo", "POST", iter([b"abc", b"defg", b"h" * 100_000]))
    assert json.loads(r.read())["size"] == 3 + 4 + 100_000
    info = json.loads(get(port, "/ech%6F?q=%41").read())  # the path unquoted, raw_path not
    assert (info["path"], info["raw_path"], info["query"]) == ("/echo", "/ech%6F", "q=%41")


def test_body_in_pieces_is_delivered_in_order(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 30000\r\n\r\n")
        for _ in range(30):
            sock.sendall(b"b" * 1000)
            time.sleep(0.005)
        (resp,) = _read_responses(sock, 1)
        info = json.loads(resp.split(b"\r\n\r\n", 1)[1])
        assert info["size"] == 30_000 and info["calls"] > 1


def test_expect_100_continue(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.settimeout(5)
        sock.sendall(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n"
                     b"Expect: 100-continue\r\n\r\n")  # fmt: skip
        assert sock.recv(100) == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(b"hello")
        (resp,) = _read_responses(sock, 1)
        assert json.loads(resp.split(b"\r\n\r\n", 1)[1])["size"] == 5


def _read_responses(sock: socket.socket, n: int) -> list[bytes]:
    """n responses with Content-Length bodies, read off a raw socket."""
    data = b""
    out: list[bytes] = []
    sock.settimeout(5)
    while len(out) < n:
        end = data.find(b"\r\n\r\n")
        if end >= 0:
            head = data[:end].lower()
            length = int(head.split(b"content-length: ", 1)[1].split(b"\r\n", 1)[0])
            if len(data) >= end + 4 + length:
                out.append(data[: end + 4 + length])
                data = data[end + 4 + length :]
                continue
        chunk = sock.recv(65536)
        assert chunk, f"connection closed after {len(out)} responses"
        data += chunk
    return out


def test_keep_alive_and_pipelining(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port)) as sock:
        for _ in range(20):  # one connection, one request at a time
            sock.sendall(b"GET /len HTTP/1.1\r\nHost: t\r\n\r\n")
            assert _read_responses(sock, 1)[0].endswith(BODY)
        # four requests in one write, one with a body: answered in order
        sock.sendall(b"GET /len HTTP/1.1\r\nHost: t\r\n\r\n"
                     b"GET /missing HTTP/1.1\r\nHost: t\r\n\r\n"
                     b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\r\nabc"
                     b"GET /len-parts HTTP/1.1\r\nHost: t\r\n\r\n")  # fmt: skip
        a, b, c, d = _read_responses(sock, 4)
        assert a.endswith(BODY) and b.endswith(b"not found") and d.endswith(BODY)
        assert json.loads(c.split(b"\r\n\r\n", 1)[1])["size"] == 3


def test_connection_close(port: int) -> None:
    for request, path in ((b"Connection: close\r\n", b"/len"), (b"", b"/close")):
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.sendall(b"GET %s HTTP/1.1\r\nHost: t\r\n%s\r\n" % (path, request))
            (resp,) = _read_responses(sock, 1)
            assert resp.lower().count(b"\r\nconnection: close\r\n") == 1
            assert sock.recv(10) == b""  # the server closed it


def test_http_1_0_closes_after_the_response(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(b"GET /echo HTTP/1.0\r\n\r\n")
        (resp,) = _read_responses(sock, 1)
        assert json.loads(resp.split(b"\r\n\r\n", 1)[1])["http_version"] == "1.0"
        assert sock.recv(10) == b""


def test_malformed_request_gets_400(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.settimeout(5)
        sock.sendall(b"GET /len HTTP/1.1\r\nHost t\r\n\r\n")  # no colon
        data = b""
        while chunk := sock.recv(4096):
            data += chunk
        assert data.startswith(b"HTTP/1.1 400 ") and b"Invalid HTTP request" in data


def _leave_and_expect(port: int, path: bytes, event: str) -> None:
    """Send GET `path`, hang up, and wait until the app has logged `event`."""
    before = json.loads(get(port, "/events").read())
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(b"GET %s HTTP/1.1\r\nHost: t\r\n\r\n" % path)
        time.sleep(0.2)
    deadline = time.monotonic() + 5
    while json.loads(get(port, "/events").read())[len(before) :] != [event]:
        assert time.monotonic() < deadline, f"the app never logged {event!r}"
        time.sleep(0.05)


def test_client_leaving_is_seen_by_the_app(port: int) -> None:
    _leave_and_expect(port, b"/wait-disconnect", "http.disconnect")


def test_on_disconnect_extension_calls_back_when_the_client_leaves(port: int) -> None:
    _leave_and_expect(port, b"/on-disconnect", "on_disconnect")


def test_on_disconnect_extension_is_quiet_after_a_complete_answer(port: int) -> None:
    before = json.loads(get(port, "/events").read())
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(b"GET /on-disconnect-answered HTTP/1.1\r\nHost: t\r\n\r\n")
        _read_responses(sock, 1)
    time.sleep(0.3)  # the hang-up has reached the server; a wrong call back would show now
    assert json.loads(get(port, "/events").read())[len(before) :] == ["answered"]


def test_requests_leave_no_reference_cycles(port: int) -> None:
    """An exchange, its scope and the on_disconnect extension are freed by reference counting
    when the request ends; a cycle among them left every request to the cyclic GC (+1.5% of
    the gateway's instructions per request)."""
    with httpx.Client(base_url=f"http://127.0.0.1:{port}") as c:
        assert c.get("/gc-pause").status_code == 200
        for _ in range(300):
            assert c.get("/registered").content == BODY
            assert c.post("/echo", content=b"x" * 100).status_code == 200
        left = int(c.get("/gc-resume").text)
    assert left < 100, f"{left} objects in reference cycles after 600 requests"


def test_idle_connection_closed_after_keep_alive_timeout(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(b"GET /len HTTP/1.1\r\nHost: t\r\n\r\n")
        _read_responses(sock, 1)
        time.sleep(KEEP_ALIVE_S * 0.5)  # still open half-way through the timeout
        sock.sendall(b"GET /len HTTP/1.1\r\nHost: t\r\n\r\n")
        _read_responses(sock, 1)
        t0 = time.monotonic()
        sock.settimeout(KEEP_ALIVE_S * 5)
        assert sock.recv(10) == b""
        assert KEEP_ALIVE_S * 0.8 < time.monotonic() - t0 < KEEP_ALIVE_S * 3


def test_many_concurrent_clients(port: int) -> None:
    async def one(i: int) -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            for _ in range(5):
                writer.write(b"GET /len HTTP/1.1\r\nHost: t\r\n\r\n")
                head = await reader.readuntil(b"\r\n\r\n")
                assert b"content-length: %d" % len(BODY) in head.lower()
                body = await reader.readexactly(len(BODY))
            return body
        finally:
            writer.close()

    async def main() -> list[bytes]:
        return await asyncio.gather(*(one(i) for i in range(50)))

    assert asyncio.run(main()) == [BODY] * 50


def test_tollgate_serve_with_two_workers(tmp_path: Path) -> None:
    """`tollgate serve --workers 2`: uvicorn spawns both with this protocol, every request is
    answered, and /metrics (any worker) counts the requests of both; on exit the gateway
    removes the folder of the workers' metric files it made."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    with FakeUpstream(name="small") as up:
        config = "\n".join(
            ["store: {backend: none}", "models:", model_block("small", "small", up.base_url)]
        )
        env = {"TMPDIR": str(tmp)}
        with GatewayProcess(config, tmp_path, env, args=["--workers", "2"]) as gw:
            chat = {"model": "small", "messages": [{"role": "user", "content": "hi"}]}
            ids = set()
            for _ in range(40):  # a new connection each time, to whichever worker accepts it
                r = httpx.post(f"{gw.base_url}/chat/completions", json=chat, timeout=10)
                assert r.status_code == 200 and r.json()["model"] == "small"
                assert r.headers["content-length"] == str(len(r.content))
                ids.add(r.headers["x-tollgate-request-id"])
            assert len(ids) == 40
            deadline = time.monotonic() + 10
            while True:
                text = httpx.get(f"{gw.url}/metrics", timeout=10).text
                total = sum(
                    float(line.rsplit(" ", 1)[1])
                    for line in text.splitlines()
                    if line.startswith("tollgate_requests_total{")
                )
                if total == 40 or time.monotonic() > deadline:
                    break
                time.sleep(0.2)
            assert total == 40
            assert len(list(tmp.glob("tollgate-prom-*"))) == 1
    assert list(tmp.iterdir()) == []


def test_large_response_to_a_slow_reader(port: int) -> None:
    """8 MiB to a client that reads slowly: the writes pause and resume (flow control), and
    every byte arrives in order."""
    part = bytes(range(256)) * 256
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        sock.settimeout(10)
        sock.sendall(b"GET /big HTTP/1.1\r\nHost: t\r\n\r\n")
        data = b""
        t0 = time.monotonic()
        while len(data) < 1_000_000:  # the first MiB slowly, so the server's buffer fills
            data += sock.recv(65536)
            time.sleep(0.01)
        while True:
            end = data.find(b"\r\n\r\n")
            length = int(data[:end].lower().split(b"content-length: ")[1].split(b"\r\n")[0])
            if len(data) >= end + 4 + length:
                break
            chunk = sock.recv(1 << 20)
            assert chunk, "connection closed early"
            data += chunk
        assert time.monotonic() - t0 < 30
        assert data[end + 4 :] == part * 128
        # the connection is still good for the next request
        sock.sendall(b"GET /len HTTP/1.1\r\nHost: t\r\n\r\n")
        assert _read_responses(sock, 1)[0].endswith(BODY)


def test_concurrent_receive_calls_all_see_the_disconnect(port: int) -> None:
    _leave_and_expect(port, b"/two-watchers", "http.disconnect+http.disconnect")


def test_stalled_request_headers_are_closed_after_two_timeouts(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(b"GET /len HTTP/1.1\r\nHost: t\r\n")  # no blank line: headers unfinished
        t0 = time.monotonic()
        sock.settimeout(KEEP_ALIVE_S * 6)
        assert sock.recv(10) == b""
        assert KEEP_ALIVE_S * 0.8 < time.monotonic() - t0 < KEEP_ALIVE_S * 4
