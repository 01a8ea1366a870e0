"""The router model: whole-conversation features, N-profile quality, profile fitting, data."""

from __future__ import annotations

import numpy as np
import pytest

from router_models import load_router
from router_models.data import SOURCES, load_source
from router_models.lexical import STRUCT_NAMES, LexicalFeaturizer


@pytest.fixture(scope="module")
def router():  # type: ignore[no-untyped-def]
    return load_router()


def test_featurizer_reads_every_turn_system_prompt_tools_and_parts() -> None:
    f = LexicalFeaturizer()
    single = [{"role": "user", "content": "What is the capital of France?"}]
    multi = [
        {"role": "system", "content": "You are a careful assistant."},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Write a SQL query"},
                {"type": "image_url", "image_url": {"url": "x"}},
            ],
        },
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "1", "type": "function", "function": {"name": "run_sql", "arguments": "{}"}}
            ],
        },
        {"role": "tool", "tool_call_id": "1", "content": "error: no table"},
        {"role": "user", "content": "What is the capital of France?"},
    ]
    tools = [
        {
            "type": "function",
            "function": {
                "name": "run_sql",
                "description": "Run SQL",
                "parameters": {"properties": {"query": {}}},
            },
        }
    ]
    i1, v1 = f.transform(single)
    i2, v2 = f.transform(multi, tools)
    s1 = dict(zip(i1.tolist(), v1.tolist(), strict=True))
    s2 = dict(zip(i2.tolist(), v2.tolist(), strict=True))
    base = f.n_hash
    struct = {n: s2[base + k] for k, n in enumerate(STRUCT_NAMES)}
    assert struct["n_user_turns"] > 0.1 and struct["n_assistant_turns"] > 0
    assert struct["has_system"] == 1.0 and struct["n_tools"] > 0
    assert struct["n_tool_messages"] > 0 and struct["n_images"] > 0
    assert s1[base] < s2[base]  # more characters
    # earlier turns contribute n-grams the last message does not have
    assert len(set(i2.tolist()) - set(i1.tolist())) > 20
    # deterministic across calls (no per-process hash seed)
    i3, v3 = f.transform(multi, tools)
    assert np.array_equal(i2, i3) and np.array_equal(v2, v3)
    # empty and odd content does not crash
    f.transform([{"role": "user", "content": None}])
    f.transform([{"role": "user", "content": ""}])
    f.transform([{"role": "user", "content": "日本語のテキスト 😀" * 3000}])


def test_router_quality_for_many_profiles(router) -> None:  # type: ignore[no-untyped-def]
    z = router.featurize(
        [{"role": "user", "content": "Write a Python function to merge intervals."}]
    )
    names = router.profiles
    q = router.quality(z, names)
    assert len(q) == len(names) and all(0.0 < v < 1.0 for v in q)
    with pytest.raises(KeyError, match="no-such-model"):
        router.quality(z, ["no-such-model"])
    s = router.strong_score(z, "humpback-llama2-70b", "gemma-2b-it")
    assert s == pytest.approx(1.0 - router.strong_score(z, "gemma-2b-it", "humpback-llama2-70b"))


def test_add_profile_fits_a_new_model_from_scored_prompts(router) -> None:  # type: ignore[no-untyped-def]
    m = load_source("dcrouter")
    j = m.models.index("llama-3.1-8b-instruct")
    rng = np.random.default_rng(0)
    pick = rng.choice(np.flatnonzero(~m.heldout), 300, replace=False)
    scored = [([{"role": "user", "content": m.prompts[i]}], float(m.scores[i, j])) for i in pick]
    router.add_profile("my-new-model", scored)
    assert router.has_profile("my-new-model")
    test = np.flatnonzero(m.heldout)[:400]
    pred = np.array(
        [
            router.quality(
                router.featurize([{"role": "user", "content": m.prompts[i]}]), ["my-new-model"]
            )[0]
            for i in test
        ]
    )
    truth = m.scores[test, j]
    assert np.corrcoef(pred, truth)[0, 1] > 0.2  # learned something about this model
    assert abs(pred.mean() - truth.mean()) < 0.15
    with pytest.raises(ValueError):
        router.add_profile("bad", [([{"role": "user", "content": "x"}], 2.0)])


def test_data_table_and_heldout_split_by_prompt() -> None:
    for s in SOURCES:
        m = load_source(s)
        assert 0.1 < m.heldout.mean() < 0.3
        assert not set(m.subset(m.heldout).prompts) & set(m.subset(~m.heldout).prompts)
        finite = m.scores[np.isfinite(m.scores)]
        assert finite.min() >= 0.0 and finite.max() <= 1.0
    table = load_source("dcrouter").table()
    conv, model, score = table[0]
    assert conv[0]["role"] == "user" and isinstance(model, str) and 0.0 <= score <= 1.0
