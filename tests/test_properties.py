"""Hypothesis property tests on the parsers a client or an upstream feeds:

* the SSE framing (gateway/api/face.py SSEFramer): any events, LF or CRLF framed, cut into
  any pieces, come out whole and in order; an event over the bound raises EventTooLarge;
* the routing-file loader (gateway/config.py parse_config): any YAML text gives a config or
  a ConfigError, never another exception;
* the upstream response parser (gateway/http/h1.py H1Pool over a real loopback socket):
  any well-formed response (Content-Length, chunked in any chunk sizes, or to EOF) gives
  exactly its status and body; any bytes at all give a response or an H1Error, never
  another exception and never a hang;
* the request parser (gateway/http/server.py, in a real gateway): a request head that h11
  (the reference HTTP/1.1 implementation) refuses is never answered 2xx, and none gets a
  5xx.

Budget: at most 60 examples per property (40 for the two that use sockets), no deadline.
"""

from __future__ import annotations

import asyncio
import itertools
import socket
from collections.abc import Iterator
from pathlib import Path

import h11
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.api.face import EventTooLarge, SSEFramer
from gateway.config import ConfigError, RoutingConfig, parse_config
from gateway.http.h1 import H1Error, H1Pool
from tests.support import GatewayProcess
from tests.test_h1 import Conn, RawServer

FEW = settings(
    max_examples=60, deadline=None, database=None, suppress_health_check=list(HealthCheck)
)
SOCKETS = settings(
    max_examples=40, deadline=None, database=None, suppress_health_check=list(HealthCheck)
)

# -- SSE framing -----------------------------------------------------------------------------

# an event's text: lines with no CR or LF, as JSON data lines are
_line = st.text(st.characters(blacklist_characters="\r\n", codec="utf-8"), max_size=40)
_event = st.lists(_line.map(lambda s: "data: " + s), min_size=1, max_size=3)


def _cuts(data: bytes, points: list[int]) -> list[bytes]:
    at = sorted({min(p, len(data)) for p in points})
    edges = [0, *at, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(edges)]


@FEW
@given(
    events=st.lists(_event, min_size=1, max_size=8),
    crlf=st.booleans(),
    points=st.lists(st.integers(min_value=0, max_value=2000), max_size=30),
)
def test_sse_events_cut_anywhere_come_out_whole(
    events: list[list[str]], crlf: bool, points: list[int]
) -> None:
    nl = b"\r\n" if crlf else b"\n"
    wire = b"".join(nl.join(x.encode() for x in ev) + nl + nl for ev in events)
    framer = SSEFramer(max_event=1 << 20)
    out: list[bytes] = []
    for piece in _cuts(wire, points):
        out += framer.feed(piece)
    want = [b"\n".join(x.encode() for x in ev) for ev in events]
    assert [o.strip(b"\n") for o in out] == want


@FEW
@given(size=st.integers(min_value=1025, max_value=5000), step=st.integers(1, 700))
def test_sse_event_over_the_bound_is_refused(size: int, step: int) -> None:
    framer = SSEFramer(max_event=1024)
    wire = b"data: " + b"x" * size  # never ends: the framer must not keep it all
    with pytest.raises(EventTooLarge):
        for i in range(0, len(wire), step):
            framer.feed(wire[i : i + step])
        framer.feed(b"\n\n" + b"y" * 2000)


# -- the routing-file loader -----------------------------------------------------------------

_scalar = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**40), 2**40), st.floats(), st.text(max_size=12)
)
_value = st.recursive(
    _scalar,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)
_section = st.sampled_from(
    ["server", "store", "router", "auth", "limits", "cache", "responses", "models", "routes", "x"]
)
_MODEL = {"name": "m", "tier": "small", "endpoints": [{"base_url": "http://127.0.0.1:9/v1"}]}


@FEW
@given(
    doc=st.dictionaries(_section, _value, max_size=4),
    with_model=st.booleans(),
    junk=st.text(max_size=30),
)
def test_any_routing_file_loads_or_says_what_is_wrong(
    doc: dict[str, object], with_model: bool, junk: str
) -> None:
    if with_model:
        doc.setdefault("models", [_MODEL])
    texts = [yaml.safe_dump(doc), junk, yaml.safe_dump(doc) + junk]
    for text in texts:
        try:
            got = parse_config(text, "routing.yaml")
        except ConfigError as e:
            assert str(e).startswith("routing.yaml: invalid routing config")
            assert e.public.startswith("routing.yaml: invalid routing config")
        else:
            assert isinstance(got, RoutingConfig)


# -- the upstream response parser ------------------------------------------------------------


def _chunked(body: bytes, sizes: list[int]) -> bytes:
    out, at = [], 0
    for n in [*sizes, len(body)]:
        part = body[at : at + max(1, n)]
        if not part:
            break
        out.append(b"%x\r\n%s\r\n" % (len(part), part))
        at += len(part)
    return b"".join(out) + b"0\r\n\r\n"


async def _exchange(answer: bytes) -> tuple[int, bytes] | H1Error:
    async def handler(c: Conn) -> None:
        if await c.read_request() is not None:
            await c.send(answer)

    async with RawServer(handler) as srv, H1Pool(srv.url, read_timeout=5) as pool:
        try:
            r = await pool.request("POST", "/chat/completions", b"{}", timeout=10)
        except H1Error as e:
            return e
        return r.status, r.content


@SOCKETS
@given(
    status=st.sampled_from([200, 201, 400, 404, 429, 500, 502, 503]),
    body=st.binary(max_size=3000),
    framing=st.sampled_from(["length", "chunked", "eof"]),
    sizes=st.lists(st.integers(1, 500), max_size=8),
    headers=st.lists(
        st.tuples(st.from_regex(r"\Ax-[a-z]{1,10}\Z"), st.from_regex(r"\A[ -~]{0,30}\Z")),
        max_size=4,
    ),
)
def test_a_well_formed_upstream_answer_is_read_exactly(
    status: int, body: bytes, framing: str, sizes: list[int], headers: list[tuple[str, str]]
) -> None:
    extra = b"".join(f"{k}: {v.strip()}\r\n".encode() for k, v in headers)
    if framing == "length":
        head, payload = b"Content-Length: %d\r\n" % len(body), body
    elif framing == "chunked":
        head, payload = b"Transfer-Encoding: chunked\r\n", _chunked(body, sizes)
    else:
        head, payload = b"Connection: close\r\n", body
    got = asyncio.run(_exchange(b"HTTP/1.1 %d X\r\n%s%s\r\n%s" % (status, head, extra, payload)))
    assert got == (status, body)


@SOCKETS
@given(
    answer=st.one_of(
        st.binary(max_size=400),
        st.builds(
            lambda a, b: b"HTTP/1.1 200 OK\r\n" + a + b"\r\n\r\n" + b,
            st.binary(max_size=200),
            st.binary(max_size=200),
        ),
        st.builds(
            lambda n, b: b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + n + b,
            st.from_regex(rb"\A[0-9a-fA-Fx; -]{0,12}\r\n", fullmatch=True),
            st.binary(max_size=100),
        ),
    )
)
def test_any_upstream_bytes_give_an_answer_or_an_h1_error(answer: bytes) -> None:
    got = asyncio.run(_exchange(answer))
    assert isinstance(got, H1Error) or (isinstance(got, tuple) and 100 <= got[0] <= 999)


# -- the request parser, against h11 ---------------------------------------------------------


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    tmp: Path = tmp_path_factory.mktemp("props")
    cfg = (
        f'store: {{backend: sqlite, sqlite_path: "{tmp}/r.db"}}\n'
        "models:\n  - {name: m, tier: small, endpoints: [{base_url: 'http://127.0.0.1:9/v1'}]}\n"
    )
    proc = GatewayProcess(cfg, tmp)
    try:
        proc.start(timeout=180)
        yield proc
    finally:
        proc.close()


def h11_accepts(raw: bytes) -> bool:
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(raw)
    try:
        while True:
            ev = conn.next_event()
            if ev is h11.NEED_DATA or isinstance(ev, h11.EndOfMessage):
                return isinstance(ev, h11.EndOfMessage)
            if isinstance(ev, h11.ConnectionClosed):
                return False
    except h11.RemoteProtocolError:
        return False


def _status_of(port: int, raw: bytes) -> int | None:
    """The status the gateway answers `raw` with, None when it closes without one."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(raw)
        s.shutdown(socket.SHUT_WR)
        data = b""
        while b"\r\n" not in data:
            got = s.recv(4096)
            if not got:
                break
            data += got
    if not data.startswith(b"HTTP/1.1 "):
        return None
    return int(data[9:12])


_name = st.one_of(
    st.from_regex(rb"\A[A-Za-z-]{1,12}\Z", fullmatch=True),
    st.binary(min_size=0, max_size=8),  # any bytes: spaces, colons, controls, nothing
)
_val = st.one_of(st.from_regex(rb"\A[ -~]{0,20}\Z", fullmatch=True), st.binary(max_size=10))


@SOCKETS
@given(
    method=st.sampled_from([b"GET", b"get", b"G T", b"", b"GET\x00"]),
    target=st.sampled_from([b"/healthz", b"healthz", b"/healthz?x=1", b"/he lthz", b"*"]),
    version=st.sampled_from([b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2.0", b"HTTP/1", b"http/1.1"]),
    headers=st.lists(st.tuples(_name, _val), max_size=4),
    host=st.booleans(),
    framing=st.sampled_from(
        [
            b"",
            b"Content-Length: 0\r\n",
            b"Content-Length: -1\r\n",
            b"Content-Length: 1\r\nContent-Length: 2\r\n",
            b"Transfer-Encoding: chunked\r\nContent-Length: 3\r\n",
            b"Transfer-Encoding: gzip\r\n",
            b" folded: x\r\n",
        ]
    ),
)
def test_the_gateway_never_accepts_what_h11_refuses(
    gw: GatewayProcess,
    method: bytes,
    target: bytes,
    version: bytes,
    headers: list[tuple[bytes, bytes]],
    host: bool,
    framing: bytes,
) -> None:
    lines = b"".join(n + b": " + v + b"\r\n" for n, v in headers)
    raw = (
        method
        + b" "
        + target
        + b" "
        + version
        + b"\r\n"
        + (b"Host: x\r\n" if host else b"")
        + framing
        + lines
        + b"\r\n"
    )
    if b"chunked" in framing:
        raw += b"0\r\n\r\n"
    status = _status_of(gw.port, raw)
    assert status is None or status < 500 or status == 503, (raw, status)
    if not h11_accepts(raw):
        assert status is None or status >= 400, (raw, status)
