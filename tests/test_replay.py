"""The replay backend: recorded answers of real models, labelled, never invented."""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator

import httpx
import pytest

from gateway.accounting.quality import parse_score, rubric_messages
from gateway.demo.replay import REPLAY_MODELS, ReplayServer, dataset
from gateway.demo.replay.server import Judgments


@pytest.fixture(scope="module")
def replay() -> Iterator[ReplayServer]:
    with ReplayServer([0, 0], speed=1000) as rs:
        yield rs


def chat(rs: ReplayServer, model: str, prompt: str, **extra: object) -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": prompt}], **extra}
    return httpx.post(f"{rs.url(0)}/chat/completions", json=body, timeout=30)


def test_shipped_data_is_the_four_models_with_instruction_answer_preference() -> None:
    assert set(REPLAY_MODELS) == {
        "gemma-2b-it", "vicuna-13b-v1.5", "humpback-llama2-70b", "gpt-3.5-turbo-1106",
    }  # fmt: skip
    files = sorted(p.name for p in dataset.DATA_DIR.glob("*.json.gz"))
    assert files == sorted(f"{m}.json.gz" for m in REPLAY_MODELS)
    assert (dataset.DATA_DIR / "PROVENANCE.md").exists()
    for m in REPLAY_MODELS:
        with gzip.open(dataset.DATA_DIR / f"{m}.json.gz", "rt") as f:
            rows = json.load(f)
        assert len(rows) == 805
        assert all(set(r) == {"instruction", "output", "preference"} for r in rows)
        assert all(1.0 <= r["preference"] <= 2.0 for r in rows)
    assert len(dataset.instructions()) == 805


def test_answers_are_the_recorded_ones_with_usage_and_label(replay: ReplayServer) -> None:
    prompt = dataset.instructions()[7]
    for model in REPLAY_MODELS:
        r = chat(replay, model, prompt)
        assert r.status_code == 200
        assert r.headers["x-replay"] == "true"
        body = r.json()
        assert body["replay"] is True
        recorded = dataset.load_model(model).get(prompt)
        assert recorded is not None
        assert body["choices"][0]["message"]["content"] == recorded.text
        assert body["usage"]["completion_tokens"] == (len(recorded.text) + 3) // 4
        assert body["usage"]["prompt_tokens"] == dataset.prompt_tokens(prompt)


def test_prompt_outside_the_set_gets_a_labelled_error_not_an_answer(replay: ReplayServer) -> None:
    r = chat(replay, "gemma-2b-it", "What is the capital of Atlantis? (not in AlpacaEval)")
    assert r.status_code == 400  # not 404: the gateway counts upstream 404s against circuits
    err = r.json()["error"]
    assert err["code"] == "replay_no_answer"
    assert "no recorded answer" in err["message"]
    assert "choices" not in r.json()


def test_unknown_model_is_refused(replay: ReplayServer) -> None:
    r = chat(replay, "gpt-4o", dataset.instructions()[0])
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "model_not_found"


def test_stream_with_usage(replay: ReplayServer) -> None:
    prompt = dataset.instructions()[11]
    body = {
        "model": "humpback-llama2-70b",
        "messages": [{"role": "user", "content": prompt}],
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    events = []
    with httpx.stream("POST", f"{replay.url(1)}/chat/completions", json=body, timeout=30) as r:
        assert r.headers["x-replay"] == "true"
        for line in r.iter_lines():
            if line.startswith("data: "):
                events.append(line[6:])
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert all(c["replay"] is True for c in chunks)
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    recorded = dataset.load_model("humpback-llama2-70b").get(prompt)
    assert recorded is not None and text == recorded.text
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"]["completion_tokens"] == recorded.completion_tokens


def test_judge_returns_the_recorded_judgment_in_the_gateway_rubric_format(
    replay: ReplayServer,
) -> None:
    prompt = dataset.instructions()[3]
    for model in REPLAY_MODELS:
        recorded = dataset.load_model(model).get(prompt)
        assert recorded is not None
        messages = rubric_messages(None, [{"role": "user", "content": prompt}], recorded.text)
        r = httpx.post(
            f"{replay.url(0)}/chat/completions",
            json={"model": "judge", "messages": messages},
            timeout=30,
        )
        assert r.status_code == 200
        text = r.json()["choices"][0]["message"]["content"]
        score = parse_score(text)
        assert score == pytest.approx(recorded.quality, abs=1e-9)
    # an answer that was never recorded has no judgment
    messages = rubric_messages(None, [{"role": "user", "content": prompt}], "an invented answer")
    r = httpx.post(
        f"{replay.url(0)}/chat/completions", json={"model": "judge", "messages": messages}
    )
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "replay_no_judgment"


def test_judgments_parse_multiline_instruction() -> None:
    m = rubric_messages(None, [{"role": "user", "content": "line one\nline two"}], "ans\nwer")
    assert Judgments.parse(m[1]["content"]) == ("line one\nline two", "ans\nwer")


def test_model_cards_say_replay(replay: ReplayServer) -> None:
    cards = httpx.get(f"{replay.url(0)}/models").json()["data"]
    assert {c["id"] for c in cards} == {*REPLAY_MODELS, "judge"}
    assert all(c["replay"] is True and "REPLAYED" in c["description"] for c in cards)


def test_latency_is_simulated_from_length_and_scaled_by_speed() -> None:
    slow = dataset.simulated_latency_s("humpback-llama2-70b", 300, speed=1)
    assert slow == pytest.approx(0.6 + 300 / 30)
    assert dataset.simulated_latency_s("humpback-llama2-70b", 300, speed=100) == pytest.approx(
        slow / 100
    )
    assert dataset.simulated_latency_s("gemma-2b-it", 300) < slow
