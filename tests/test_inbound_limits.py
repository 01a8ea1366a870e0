"""The gateway's limits on what one client may make it hold (gateway/http/server.py, `server:`
settings): the size of a request head, pipelined requests, open connections, the time to send
a request and to take an answer, and the framing it accepts. Each test runs the real gateway
(`tollgate serve`) and plays the hostile client over a raw socket, or the official SDK."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.fake_upstream import FakeUpstream
from tests.support import GatewayProcess, metric_samples, metric_total, model_block

LIMITS = {
    "max_header_bytes": 8192,
    "max_pipelined_requests": 4,
    "header_timeout_s": 0.5,
    "body_timeout_s": 0.5,
    "write_timeout_s": 0.5,
}
# a long streamed answer (about 3 MB in 3,000 events): far more than the socket buffers hold
LONG = {"completion_tokens": 400_000, "chunks": 3000}
CHAT = b'{"model": "small", "messages": [{"role": "user", "content": "hi"}]}'


def _config(up: FakeUpstream, **server: object) -> str:
    settings = ", ".join(f"{k}: {v}" for k, v in server.items())
    return "\n".join(
        [
            "store: {backend: none}",
            f"server: {{{settings}}}",
            "models:",
            model_block("small", "small", up.base_url, max_concurrency=1, max_queue=0),
        ]
    )


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    """One gateway with small limits (LIMITS) and a model with one slot whose upstream streams
    long answers."""
    with (
        FakeUpstream(name="small", **LONG) as up,
        GatewayProcess(_config(up, **LIMITS), tmp_path_factory.mktemp("gw")) as g,
    ):
        yield g


def _answer(sock: socket.socket, timeout: float = 5.0) -> bytes:
    """Everything the gateway sends until it closes the connection (or `timeout` passes)."""
    sock.settimeout(timeout)
    data = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            break
        except ConnectionResetError:
            break
        if not chunk:
            break
        data += chunk
    return data


def _exchange(port: int, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(request)
        return _answer(sock)


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


# -- 1. the request head ------------------------------------------------------------------------


def test_a_request_head_over_max_header_bytes_gets_431_and_is_not_read_further(
    gw: GatewayProcess,
) -> None:
    with socket.create_connection(("127.0.0.1", gw.port)) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\n")
        sent = 0
        try:  # up to 16 MiB of one header: the gateway stops taking it long before
            sock.sendall(b"X-Big: ")
            while sent < 16 << 20:
                sock.settimeout(2)
                sock.sendall(b"a" * 65536)
                sent += 65536
        except OSError:  # closed by the gateway (reset or broken pipe) or no longer read
            pass
        data = _answer(sock)
    assert sent < 16 << 20, "the gateway took a 16 MiB request head"
    assert data.startswith(b"HTTP/1.1 431 "), data[:200]
    assert b"connection: close" in data and b"server.max_header_bytes" in data
    # the gateway is fine for everyone else
    assert httpx.get(f"{gw.url}/healthz", timeout=5).status_code == 200


def test_a_url_over_max_header_bytes_gets_414(gw: GatewayProcess) -> None:
    data = _exchange(gw.port, b"GET /" + b"u" * 20_000 + b" HTTP/1.1\r\nHost: t\r\n\r\n")
    assert data.startswith(b"HTTP/1.1 414 "), data[:200]
    assert b"connection: close" in data


def test_a_404_does_not_echo_a_long_path_whole(gw: GatewayProcess) -> None:
    r = httpx.get(f"{gw.url}/" + "p" * 6000, timeout=5)
    assert r.status_code == 404
    message = r.json()["error"]["message"]
    assert "/" + "p" * 199 + "..." in message and "p" * 200 not in message
    assert len(r.content) < 1000


# -- 7. framing ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("head", "status"),
    [
        (b"GET /healthz HTTP/1.1\r\n\r\n", b"400"),  # no Host
        (b"GET /healthz HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", b"400"),
        (
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: identity, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
            b"501",
        ),
    ],
    ids=["no-host", "two-hosts", "identity-chunked"],
)
def test_requests_h11_refuses_are_refused(gw: GatewayProcess, head: bytes, status: bytes) -> None:
    data = _exchange(gw.port, head)
    assert data.startswith(b"HTTP/1.1 " + status + b" "), data[:200]
    assert b"connection: close" in data


def test_a_chunked_request_body_is_still_accepted(gw: GatewayProcess) -> None:
    head = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n"
    )
    body = b"%x\r\n%s\r\n0\r\n\r\n" % (len(CHAT), CHAT)
    with socket.create_connection(("127.0.0.1", gw.port)) as sock:
        sock.sendall(head + body)
        sock.settimeout(10)
        assert sock.recv(100).startswith(b"HTTP/1.1 200 ")


def test_trailer_fields_count_against_max_header_bytes(gw: GatewayProcess) -> None:
    """Fields after a chunked body's last chunk are buffered like headers: the same cap."""
    head = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n0\r\nX-Trailer: " % (len(CHAT), CHAT)
    )
    with socket.create_connection(("127.0.0.1", gw.port)) as sock:
        sock.sendall(head)
        sent = 0
        try:
            while sent < 16 << 20:
                sock.settimeout(2)
                sock.sendall(b"a" * 65536)
                sent += 65536
        except OSError:
            pass
        data = _answer(sock)
    assert sent < 16 << 20, "the gateway took 16 MiB of trailer"
    assert data.startswith(b"HTTP/1.1 431 "), data[:200]


# -- 5. slow requests ----------------------------------------------------------------------------


def test_headers_sent_a_byte_at_a_time_get_408_at_the_header_deadline(gw: GatewayProcess) -> None:
    with socket.create_connection(("127.0.0.1", gw.port)) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-Slow: ")
        t0 = time.monotonic()
        try:  # one byte every 50 ms, for 3 s at most (6x the deadline)
            for _ in range(60):
                sock.sendall(b"a")
                time.sleep(0.05)
            sock.sendall(b"\r\n\r\n")  # the request complete: only a gateway without a deadline
        except OSError:
            pass
        data = _answer(sock)
    assert data.startswith(b"HTTP/1.1 408 "), data[:200]
    assert b"server.header_timeout_s" in data
    assert time.monotonic() - t0 < 3


def test_a_body_sent_slowly_gets_408_at_the_body_deadline(gw: GatewayProcess) -> None:
    head = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n" % len(CHAT)
    )
    samples = metric_samples(httpx.get(f"{gw.url}/metrics", timeout=5).text)
    before = metric_total(samples, "tollgate_requests_total")
    timed_out = metric_total(samples, "tollgate_requests_total", status="408")
    answered = metric_total(samples, "tollgate_requests_total", status="200")
    with socket.create_connection(("127.0.0.1", gw.port)) as sock:
        sock.sendall(head)
        try:  # a byte every 50 ms: the whole body would take 3.4 s
            for b in CHAT:
                sock.sendall(bytes([b]))
                time.sleep(0.05)
        except OSError:
            pass
        data = _answer(sock)
    assert data.startswith(b"HTTP/1.1 408 "), data[:200]
    assert b"server.body_timeout_s" in data
    # the gateway counts it as the 408 the client got, not as an answered request
    deadline = time.monotonic() + 5
    while True:
        samples = metric_samples(httpx.get(f"{gw.url}/metrics", timeout=5).text)
        if metric_total(samples, "tollgate_requests_total") >= before + 1:
            break
        assert time.monotonic() < deadline, "the request was never counted"
        time.sleep(0.05)
    assert metric_total(samples, "tollgate_requests_total", status="408") == timed_out + 1
    assert metric_total(samples, "tollgate_requests_total", status="200") == answered


# -- 2. pipelining -------------------------------------------------------------------------------


def test_pipelined_requests_past_the_limit_are_not_taken(gw: GatewayProcess) -> None:
    """A client pipelines 100,000 requests (2.9 MB) in one go and reads nothing for a while:
    the gateway answers max_pipelined_requests of them, the last with `connection: close`, and
    closes; it holds no more of them meanwhile (its memory stays flat)."""
    request = b"GET /v1/models HTTP/1.1\r\nHost: t\r\n\r\n"
    before = _rss_kib(gw.proc.pid)  # type: ignore[union-attr]
    with socket.create_connection(("127.0.0.1", gw.port)) as sock:
        sock.setblocking(False)
        flood = memoryview(request * 100_000)
        deadline = time.monotonic() + 3
        while flood and time.monotonic() < deadline:
            try:
                flood = flood[sock.send(flood) :]
            except BlockingIOError:
                time.sleep(0.01)
            except OSError:
                break
        time.sleep(0.5)  # the gateway had time to take (and hold) whatever it wanted
        grown = _rss_kib(gw.proc.pid) - before  # type: ignore[union-attr]
        sock.setblocking(True)
        data = _answer(sock)
    answers = data.split(b"HTTP/1.1 ")[1:]
    assert len(answers) == LIMITS["max_pipelined_requests"], f"{len(answers)} answers"
    assert all(a.startswith(b"200 ") for a in answers)
    assert b"connection: close" in answers[-1]
    assert grown < 20_000, f"the gateway grew by {grown} KiB"


# -- 6. a client that stops reading ------------------------------------------------------------


def test_a_client_that_stops_reading_a_stream_frees_the_upstream_slot(gw: GatewayProcess) -> None:
    """The model has one slot. Client A starts a long stream and reads nothing; past
    write_timeout_s the gateway drops A, so client B is answered, not turned away with 503."""
    a = socket.socket()
    a.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    a.connect(("127.0.0.1", gw.port))
    try:
        stream = CHAT[:-1] + b', "stream": true}'
        a.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\n"
            b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
            % (len(stream), stream)
        )
        a.settimeout(5)
        assert a.recv(12) == b"HTTP/1.1 200"  # the stream has begun; A reads no more
        client = openai.OpenAI(base_url=gw.base_url, api_key="x", max_retries=0, timeout=30)
        statuses = []
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                client.chat.completions.create(
                    model="small", messages=[{"role": "user", "content": "hi"}]
                )
                statuses.append(200)
                break
            except openai.APIStatusError as e:
                statuses.append(e.status_code)
                time.sleep(0.2)
        assert statuses[-1:] == [200], f"B got {statuses}"
    finally:
        a.close()


# -- 3. open connections -------------------------------------------------------------------------


def test_connections_over_max_connections_are_refused_and_the_rest_served(
    fakes: object, gateway: object, tmp_path: Path
) -> None:
    up = fakes("small")  # type: ignore[operator]
    gw = gateway(_config(up, max_connections=8))  # type: ignore[operator]
    ping = b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n"
    ping_close = b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
    held: list[socket.socket] = []
    try:
        for _ in range(8):  # each answered once, then kept open
            s = socket.create_connection(("127.0.0.1", gw.port))
            held.append(s)
            s.sendall(ping)
            s.settimeout(5)
            assert s.recv(4096).startswith(b"HTTP/1.1 200 ")
        extra = _exchange(gw.port, ping_close)  # the ninth: refused, however its close arrives
        assert extra == b"" or extra.startswith(b"HTTP/1.1 503 "), extra[:200]
        assert b"HTTP/1.1 200 " not in extra
        held[0].sendall(ping)  # the open ones still work
        assert held[0].recv(4096).startswith(b"HTTP/1.1 200 ")
        held.pop().close()  # one leaves: a new one is served again
        deadline = time.monotonic() + 5
        while not _exchange(gw.port, ping_close).startswith(b"HTTP/1.1 200 "):
            assert time.monotonic() < deadline, "no connection served after one closed"
            time.sleep(0.05)
    finally:
        for s in held:
            s.close()


# -- 4. memory of closed connections -------------------------------------------------------------


def test_large_request_heads_are_freed_when_their_connections_close(
    fakes: object, gateway: object
) -> None:
    """Ten connections each send a 4 MiB header (under a 5 MiB max_header_bytes), are answered
    and close; what they held is freed at once, not after a full garbage collection (which the
    gateway makes rare with gc.freeze())."""
    up = fakes("small")  # type: ignore[operator]
    gw = gateway(_config(up, max_header_bytes=5 << 20))  # type: ignore[operator]
    pid = gw.proc.pid
    big = (
        b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\nX-Big: "
        + b"a" * (4 << 20)
        + b"\r\n\r\n"
    )
    assert _exchange(gw.port, big).startswith(b"HTTP/1.1 200 ")  # warm-up: the allocator's peak
    time.sleep(0.2)
    before = _rss_kib(pid)
    for _ in range(10):
        assert _exchange(gw.port, big).startswith(b"HTTP/1.1 200 ")
    time.sleep(0.3)
    grown = _rss_kib(pid) - before
    assert grown < 16_384, f"RSS grew by {grown} KiB after ten 4 MiB heads had closed"
