"""The API face hook (gateway/api/face.py): how a face's stream is cut into events."""

from __future__ import annotations

import pytest

from gateway.api.face import EventTooLarge, SSEFramer, sse_data


def test_framer_yields_each_complete_event_once_whatever_the_reads() -> None:
    stream = b'event: a\ndata: {"x": 1}\n\nevent: b\r\ndata: {"y": 2}\r\n\r\ndata: [DONE]\n\n'
    for cut in range(1, len(stream)):  # every split of the stream into two reads
        f = SSEFramer(1000)
        events = f.feed(stream[:cut]) + f.feed(stream[cut:])
        assert events == [b'event: a\ndata: {"x": 1}', b'event: b\ndata: {"y": 2}', b"data: [DONE]"]
    assert [sse_data(e) for e in events] == [b'{"x": 1}', b'{"y": 2}', b"[DONE]"]


def test_framer_refuses_an_event_over_its_bound() -> None:
    f = SSEFramer(64)
    f.feed(b"data: " + b"x" * 40)
    with pytest.raises(EventTooLarge):
        f.feed(b"x" * 40)
