"""The lexical featurizer's C pass (router_models/_lexical.c) against its numpy path.

The gateway routes with the C pass; training, evaluation and any install without a compiler
use the numpy path. They must give the same features, or the router serves a model it was not
trained as.
"""

from __future__ import annotations

import random

import numpy as np
import pytest

import router_models.lexical as lexical
from router_models import load_router
from router_models.data import load_source
from router_models.lexical import LexicalFeaturizer
from router_models.messages import Conversation


def _texts() -> list[bytes]:
    """Real prompts from both training sources, plus the edge cases of the byte loops."""
    out: list[bytes] = []
    for name in ("alpaca_eval", "dcrouter"):
        prompts = load_source(name).prompts
        out += [
            p.lower().encode("utf-8", "replace") for p in prompts[:: max(1, len(prompts) // 150)]
        ]
    out += [b"", b"a", b"ab", b"abc", b"abcd", b"abcde", b" ", b"__", b"!!! ??? ..."]
    out += ["naïve café 日本語のテキスト 😀 x".encode(), bytes(range(256)) * 4]
    out += [b"x" * 65536, b"word " * 13000]  # the longest text transform passes on
    rng = random.Random(7)
    alphabet = b"abc def_09\n?!$\\=^+{};" + "é語".encode()
    out += [bytes(rng.choice(alphabet) for _ in range(rng.randint(1, 5000))) for _ in range(60)]
    return out


def test_the_native_module_is_built() -> None:
    # the install compiles it (pyproject.toml ext-modules); without it every routing decision
    # costs ~100 us more, so a missing build is a failure here, not a silent fallback
    assert lexical.NATIVE, (
        "router_models/_lexical.c was not built: run `pip install -e .` on a machine with a C "
        "compiler (gcc) and the Python headers"
    )


def test_native_hashing_equals_the_numpy_path() -> None:
    f = LexicalFeaturizer()
    for text in _texts():
        ni, nv = f.hashed(text, native=True)
        pi, pv = f.hashed(text, native=False)
        assert ni.dtype == pi.dtype == np.intp and nv.dtype == pv.dtype == np.float32
        assert np.array_equal(ni, pi), text[:60]
        # same log1p counts; the L2 norm is summed in another order: float32 rounding only
        np.testing.assert_allclose(nv, pv, rtol=2e-6, atol=1e-7, err_msg=repr(text[:60]))


def test_native_structure_features_equal_the_python_ones() -> None:
    f = LexicalFeaturizer()
    extra = ["``````", "\\\\frac $x$", "def def ", "a" * 9000 + "```" + "b" * 9000, "?" * 20]
    # overlapping and nested markers: each counted as bytes.count counts it
    extra += ["```````", "def def def", "\\\\\\frac", "$$$", "==>=>", "sqrtsqrt sqrt(",
              "import imports importimport ", "#include#include", "{\n;\n{\n", "x" * 4094 + "```"
              + "y" * 8000 + "``" + "`" * 4097]  # fmt: skip
    texts = [t.decode("utf-8", "replace") for t in _texts()] + extra
    convs: list[list[dict[str, object]]] = [[{"role": "user", "content": t}] for t in texts]
    convs += [
        [{"role": "system", "content": ""}, {"role": "user", "content": "x"}],
        [{"role": "system", "content": ""}, {"role": "system", "content": ""}],
        [
            {"role": "developer", "content": "Be brief."},
            {"role": "user", "content": [{"type": "text", "text": "2+2?"}, {"type": "image_url"}]},
            {"role": "assistant", "content": None, "tool_calls": [{"function": {"name": "f"}}]},
            {"role": "tool", "content": "4"},
        ],
    ]
    for conv in convs:
        c, raw = f._text(conv, [{"type": "function", "function": {"name": "calc"}}])  # type: ignore[arg-type]
        got = f._struct_values(c, raw, native=True)
        want = f._struct_values(c, raw, native=False)
        assert got == want, conv  # the same doubles, not merely close ones


def test_other_hash_sizes_agree_too() -> None:
    for bits in (8, 12, 18):
        f = LexicalFeaturizer(bits=bits)
        for text in [b"write one short sentence about toll roads", bytes(range(256)) * 8]:
            ni, nv = f.hashed(text, native=True)
            pi, pv = f.hashed(text, native=False)
            assert np.array_equal(ni, pi) and ni.max() < (1 << bits)
            np.testing.assert_allclose(nv, pv, rtol=2e-6, atol=1e-7)


def test_router_scores_equal_with_and_without_the_native_pass(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    router = load_router()
    convs: list[list[dict[str, object]]] = [
        [{"role": "user", "content": t.decode("utf-8", "replace")}] for t in _texts()[::3]
    ]
    convs.append(
        [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "Solve x^2 = 4, then write def f(): return 1"},
            {"role": "assistant", "content": "x = 2 or -2"},
            {"role": "user", "content": "Why? 12 + 30 = 42?"},
        ]
    )
    native = [router.score(c) for c in convs]
    monkeypatch.setattr(lexical, "_native", None)
    for conv, got in zip(convs, native, strict=True):
        want = router.score(conv)
        assert got.z.dtype == want.z.dtype == np.float64 and got.z.shape == want.z.shape
        np.testing.assert_allclose(got.z, want.z, rtol=1e-4, atol=2e-6)
        np.testing.assert_allclose(got.raw, want.raw, rtol=1e-4, atol=2e-6)
        # the raw scores are those of the prompt vector it returned, to float64 rounding
        np.testing.assert_allclose(
            got.raw, router.abilities @ got.z + router.biases, rtol=1e-12, atol=1e-12
        )
        profiles = router.profiles
        assert router.quality(got, profiles) == pytest.approx(
            router.quality(want, profiles), abs=1e-5
        )


def test_native_errors_are_python_exceptions() -> None:
    native = lexical._native
    assert native is not None
    router = load_router()
    f = router.featurizer
    with pytest.raises(ValueError, match="bits"):
        native.hash_counts(b"abc", 40)
    marks = (lexical._CODE_MARKERS, lexical._MATH_MARKERS)
    counts = (3, 3, 1, 0, 0, 0, 0, 0)
    proj, ab, bs = router.projection, router.abilities, router.biases
    with pytest.raises(ValueError, match="bits"):
        native.route(b"abc", 40, *marks, *counts, proj, ab, bs)
    with pytest.raises(ValueError, match="projection"):
        native.route(b"abc", 15, *marks, *counts, np.zeros((10, 3), np.float32), ab, bs)
    with pytest.raises(ValueError, match="C-contiguous"):  # numpy refuses a strided view
        native.route(b"abc", 15, *marks, *counts, proj, ab[:, :3], bs)
    with pytest.raises(ValueError, match="abilities"):
        native.route(b"abc", 15, *marks, *counts, proj, np.ascontiguousarray(ab[:, :3]), bs)
    with pytest.raises(TypeError, match="markers"):
        native.route(b"abc", 15, ("x",), marks[1], *counts, proj, ab, bs)
    # and nothing is left behind in the scratch tables: the next calls are still exact
    text = b"after the errors"
    ni, nv = f.hashed(text, native=True)  # type: ignore[attr-defined]
    pi, pv = f.hashed(text, native=False)  # type: ignore[attr-defined]
    assert np.array_equal(ni, pi)
    np.testing.assert_allclose(nv, pv, rtol=2e-6)
    z, _ = native.route(text, 15, *marks, 16, 16, 1, 0, 0, 0, 0, 0, proj, ab, bs)
    assert len(z) == proj.shape[1]


def _route_args(f: LexicalFeaturizer, conv: list[dict[str, object]]) -> tuple[bytes, tuple]:
    c, raw = f._text(conv, None)  # type: ignore[arg-type]
    return raw, lexical._counts(c)


def test_route_is_collapse_structure_hash_and_projection() -> None:
    """`route` (what the gateway calls) gives the prompt vector of the parts it replaces,
    computed here one by one: whitespace collapsed in Python, the C hashing and structure
    features (each checked against numpy and Python above), the projection in float64.
    Long texts (sampled markers) and every kind of ASCII whitespace included."""
    native = lexical._native
    assert native is not None
    router = load_router()
    f = router.featurizer
    proj = router.projection
    n_hash = 1 << f.bits
    texts = [t.decode("utf-8", "replace") for t in _texts()]
    texts += ["  lead and trail  ", "\t\x0b\x0cx\r\n y \x1c z", "```" + "a b " * 5000 + "$x$"]
    for text in texts:
        raw, counts = _route_args(f, [{"role": "user", "content": text}])
        sample = raw if len(raw) <= 8192 else raw[:4096] + raw[-4096:]
        st = native.structure(raw, sample, lexical._CODE_MARKERS, lexical._MATH_MARKERS, *counts)
        idx, val = f.hashed(b" ".join(raw.split()), native=True)  # type: ignore[attr-defined]
        want = val.astype(np.float64) @ proj[idx].astype(np.float64)
        want += np.asarray(st, dtype=np.float32).astype(np.float64) @ proj[n_hash:].astype(
            np.float64
        )
        z, scores = native.route(
            raw, f.bits, lexical._CODE_MARKERS, lexical._MATH_MARKERS, *counts,
            proj, router.abilities, router.biases,
        )  # fmt: skip
        assert type(z) is list and len(z) == proj.shape[1]
        # float32 sums in another order: rounding only, relative to the size of the terms summed
        # (a coordinate near zero can be the difference of terms of order 1)
        terms = np.abs(val.astype(np.float64)) @ np.abs(proj[idx].astype(np.float64))
        terms += np.abs(np.asarray(st, dtype=np.float64)) @ np.abs(proj[n_hash:].astype(np.float64))
        assert np.all(np.abs(np.asarray(z) - want) <= 1e-6 * (1.0 + terms)), repr(text[:60])
        # the scores are those of the vector it returned, to float64 rounding
        np.testing.assert_allclose(
            scores, router.abilities @ np.asarray(z) + router.biases, rtol=1e-12, atol=1e-12
        )
    # what Router.score hands the gateway: the list, and the same numbers as an array
    scored = router.score([{"role": "user", "content": "Prove that sqrt(2) is irrational."}])
    assert type(scored.values) is list
    assert scored.z.dtype == np.float64 and scored.z.tolist() == scored.values


def _conversations() -> list[tuple[object, object]]:
    """(messages, tools): plain ASCII ones the C reader takes, and each kind it hands back."""
    plain: list[list[dict[str, object]]] = [
        [],
        [{"role": "user", "content": "Hello THERE, World!"}],
        [{"content": "no role: a user turn"}],
        [{"role": "user"}, {"role": "user", "content": None}],
        [
            {"role": "system", "content": "Be BRIEF."},
            {"role": "developer", "content": "Use SI units."},
            {"role": "user", "content": "How far is 1 AU?\n\tIn km."},
            {"role": "assistant", "content": "About 1.5e8 km.", "tool_calls": []},
            {"role": "tool", "content": '{"x": 1}'},
            {"role": "function", "content": ""},
            {"role": "user", "content": "And in MILES?", "name": "bob"},
        ],
        [{"role": "system", "content": ""}, {"role": "system", "content": ""}],
        [{"role": "user", "content": "A" * 70000}],  # past _MAX_BYTES: cut after reading
    ]
    out: list[tuple[object, object]] = [(m, None) for m in plain]
    out += [(plain[1], []), (plain[4], ())]
    handed_back: list[tuple[object, object]] = [
        ([{"role": "user", "content": "naïve"}], None),
        ([{"role": "user", "content": [{"type": "text", "text": "parts"}]}], None),
        ([{"role": "user", "content": "x"}], [{"type": "function", "function": {"name": "f"}}]),
        ([{"role": "assistant", "content": None, "tool_calls": [{"function": {"name": "f"}}]}],
         None),
        ([{"role": None, "content": "x"}], None),
        ([{"role": 7, "content": "x"}], None),
        ([{"role": "user", "content": 7}], None),
        (({"role": "user", "content": "a tuple of turns"},), None),
        ([["role", "user"]], None),
    ]  # fmt: skip
    return out + handed_back


def test_native_conversation_reader_equals_the_python_one() -> None:
    native = lexical._native
    assert native is not None
    taken = 0
    for messages, tools in _conversations():
        got = native.conversation(messages, tools)
        if got is None:
            continue
        taken += 1
        conv = Conversation(messages, tools)  # type: ignore[arg-type]
        want_raw = conv.text.lower().encode("utf-8", "replace")  # before the _MAX_BYTES cut
        assert got == (want_raw, lexical._counts(conv)), messages
    assert taken == 9, "every plain ASCII conversation is read in C"
    for messages, tools in _conversations()[9:]:
        assert native.conversation(messages, tools) is None, messages


def test_router_scores_are_the_same_with_and_without_the_c_reader(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    router = load_router()
    convs = [  # what request validation lets through: a list of message objects
        (m, t)
        for m, t in _conversations()
        if isinstance(m, list) and all(isinstance(x, dict) for x in m)
    ]
    fast = [router.score(m, t) for m, t in convs]  # type: ignore[arg-type]
    assert lexical._native is not None
    monkeypatch.setattr(lexical._native, "conversation", lambda messages, tools: None)
    for (m, t), got in zip(convs, fast, strict=True):
        want = router.score(m, t)  # type: ignore[arg-type]
        assert got.values == want.values and got.raw == want.raw, m
