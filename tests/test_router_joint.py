"""Joint training and honest measurement on small real data: names, the item-response fit,
the cost frontier, the leave-one-source-out pieces."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from router_models.data import SOURCES, load_source
from router_models.data.names import canonical, canonical_rule
from router_models.joint import (
    JointConfig,
    _length_covariate,
    cold_profile,
    fit_irt,
    fit_projection,
)
from router_models.lexical import LexicalFeaturizer
from router_models.loso import hull_cost, load_prices, many_model, pairs_for, sigmoid
from router_models.train import featurize_all


def test_canonical_identities_merge_sources_and_keep_base_models_apart() -> None:
    names = ("Meta-Llama-3.1-8B-Instruct", "Meta-Llama-3_1-8B-Instruct", "llama-3.1-8b-instruct")
    for name in names:
        assert canonical(name) == "llama-3.1-8b-instruct"
    assert canonical("Meta-Llama-3_1-8B") == "llama-3.1-8b"  # the base model stays separate
    assert canonical("gpt4_1106_preview") == "gpt-4-1106-preview"
    assert canonical("Mixtral-8x7B-Instruct-v0.1") == "mixtral-8x7b-instruct-v0.1"
    assert canonical("gemma-2-27b-it@together") == "gemma-2-27b-it"
    assert canonical_rule("Llama-2-70b-chat-hf") == "llama-2-70b-chat"
    # the concise Mixtral stands in for Mixtral in AlpacaEval only
    assert canonical("Mixtral-8x7B-Instruct-v0.1_concise", "alpaca_eval") == (
        "mixtral-8x7b-instruct-v0.1"
    )
    assert canonical("Mixtral-8x7B-Instruct-v0.1_concise") != "mixtral-8x7b-instruct-v0.1"


def test_sources_load_with_canonical_names_and_the_reference_profile() -> None:
    models = {s: set(load_source(s).models) for s in SOURCES}
    assert (
        "llama-3.1-8b-instruct" in models["dcrouter"] & models["zeroeval_crux"] & models["mmlu_pro"]
    )
    assert "mixtral-8x7b-instruct-v0.1" in models["alpaca_eval"] & models["mmlu_pro"]
    crux = load_source("zeroeval_crux")
    # three providers of Llama 3.1 405B are one identity, their scores averaged
    assert crux.data_names is not None and len(crux.data_names["llama-3.1-405b-instruct"]) == 3
    assert crux.output_chars is not None and np.nanmin(crux.output_chars) >= 0
    a = load_source("alpaca_eval")
    ref = a.scores[:, a.models.index("gpt-4-1106-preview")]
    assert np.all(ref == 0.5)
    for demo in ("gemma-2b-it", "vicuna-13b-v1.5", "humpback-llama2-70b", "gpt-3.5-turbo-1106"):
        assert demo in a.models


@pytest.fixture(scope="module")
def small() -> tuple[list, list]:  # type: ignore[type-arg]
    """200 training prompts each of crux and mmlu_pro, 6 shared or single models."""
    f = LexicalFeaturizer()
    keep = ["llama-3.1-8b-instruct", "llama-3.1-70b-instruct", "mixtral-8x7b-instruct-v0.1"]
    mats, xs = [], []
    for s, extra in (("zeroeval_crux", "gpt-4o-2024-08-06"), ("mmlu_pro", "llama-2-7b")):
        m = load_source(s)
        cols = [m.models.index(x) for x in [*keep, extra]]
        m.models = [m.models[j] for j in cols]
        m.scores = m.scores[:, cols]
        m.output_chars = None
        sub = m.subset(np.flatnonzero(~m.heldout)[:200])
        mats.append(sub)
        xs.append(featurize_all(f, sub.conversations(), s, progress=False))
    return mats, xs


def test_item_response_fit_shares_profiles_and_orders_strengths(small) -> None:  # type: ignore[no-untyped-def]
    mats, xs = small
    w = fit_projection(list(zip(mats, xs, strict=True)), rank=8, alpha=3.0)
    z = np.concatenate([np.asarray(x @ w) for x in xs])
    z /= z.std(axis=0)
    irt = fit_irt(z, mats, JointConfig(rank=8, max_iter=200))
    # one profile per canonical model, fitted on both sources where it has scores in both
    assert irt.models.count("llama-3.1-8b-instruct") == 1
    assert set(irt.n_scores["llama-3.1-8b-instruct"]) == {"zeroeval_crux", "mmlu_pro"}
    assert set(irt.n_scores["gpt-4o-2024-08-06"]) == {"zeroeval_crux"}
    b = dict(zip(irt.models, irt.b, strict=True))
    assert b["gpt-4o-2024-08-06"] > b["llama-3.1-70b-instruct"] > b["llama-3.1-8b-instruct"]
    assert b["llama-2-7b"] < b["llama-3.1-8b-instruct"]
    # predicted probabilities follow each model's accuracy on its own training prompts
    raw = irt.raw(z[: len(mats[0].ids)])
    j = irt.models.index("gpt-4o-2024-08-06")
    acc = np.nanmean(mats[0].scores[:, mats[0].models.index("gpt-4o-2024-08-06")])
    assert abs(sigmoid(raw[:, j] + irt.c[0]).mean() - acc) < 0.05
    # a model without scores: strength from its Elo, between the fitted ones
    v, b_cold, _how = cold_profile(irt, "some-new-model", {"some-new-model": 1200.0})
    assert v.shape == (8,) and np.isfinite(b_cold)


def test_item_response_gradient_matches_finite_differences(small) -> None:  # type: ignore[no-untyped-def]
    import router_models.joint as joint

    mats, _ = small
    rng = np.random.default_rng(0)
    z = rng.normal(size=(sum(len(m.ids) for m in mats), 3))
    captured = {}
    real = joint.opt.minimize

    def spy(f, x0, **kw):  # type: ignore[no-untyped-def]
        captured["f"] = f
        return real(f, x0, **kw)

    joint.opt.minimize = spy
    try:
        fit_irt(z, mats, JointConfig(rank=3, max_iter=1, lam_u=5.0))
    finally:
        joint.opt.minimize = real
    f = captured["f"]
    size = _n_params(mats, 3)
    theta = rng.normal(scale=0.3, size=size)
    _loss, grad = f(theta)
    for i in rng.choice(size, 12, replace=False):
        e = np.zeros(size)
        e[i] = 1e-6
        num = (f(theta + e)[0] - f(theta - e)[0]) / 2e-6
        assert num == pytest.approx(grad[i], rel=1e-3, abs=1e-8)


def _n_params(mats, k: int) -> int:  # type: ignore[no-untyped-def]
    n_m = len({x for m in mats for x in m.models})
    return n_m + 2 * k + n_m * k + len(mats) + 1  # + the length covariate


def test_hull_cost_is_the_cheapest_random_mix() -> None:
    cost = np.array([1.0, 10.0, 4.0])
    qual = np.array([0.5, 1.0, 0.6])
    # 0.9 by mixing (1, 0.5) with (10, 1.0): t = 0.8 -> 8.2;
    # by mixing (4, 0.6) with (10, 1.0): t = 0.75 -> 8.5
    assert hull_cost(cost, qual, 0.9) == pytest.approx(8.2)
    assert hull_cost(cost, qual, 0.5) == pytest.approx(1.0)
    assert hull_cost(cost, qual, 1.01) == np.inf


def test_many_model_router_beats_the_frontier_only_with_information() -> None:
    m = load_source("zeroeval_crux")
    prices = load_prices()
    models = ["gpt-4o-2024-08-06", "gpt-4o-mini-2024-07-18", "llama-3.1-8b-instruct"]
    truth = m.scores[:, [m.models.index(x) for x in models]]
    oracle = many_model(m, truth.copy(), models, prices, m, boot=20)
    assert oracle["ratio"]["97"]["value"] < 0.5  # knowing the answers saves most of the cost
    flat = many_model(m, np.tile(truth.mean(axis=0), (len(m.ids), 1)), models, prices, m, boot=20)
    # no information per prompt: no better than mixing single models at random
    assert flat["ratio"]["97"]["value"] == pytest.approx(1.0, abs=0.02)
    lo, hi = flat["frontier"]["97"]["ci90"]
    assert lo <= flat["frontier"]["97"]["cost_share"] <= hi


def test_pairs_include_named_and_transfer_pairs() -> None:
    m = load_source("zeroeval_crux")
    pairs = pairs_for(m, {"gpt-4o-2024-08-06", "gpt-4o-mini-2024-07-18", "gemma-2-2b-it"})
    labels = {(s, w) for s, w, _ in pairs}
    assert ("gpt-4o-2024-08-06", "gpt-4o-mini-2024-07-18") in labels
    assert ("claude-3-5-sonnet-20240620", "claude-3-haiku-20240307") in labels
    assert any(label == "best vs median" for _, _, label in pairs)


def test_projection_is_supervised_low_rank(small) -> None:  # type: ignore[no-untyped-def]
    mats, xs = small
    w = fit_projection(list(zip(mats, xs, strict=True)), rank=4, alpha=3.0)
    assert w.shape == (xs[0].shape[1], 4)
    assert sp.issparse(xs[0]) and np.all(np.isfinite(w))


def test_shipped_card_is_what_training_writes_from_its_metrics() -> None:
    """MODEL_CARD.md is generated (router_models/card.py) from the metrics `router train`
    measured (metrics.json beside it), not edited by hand; its acceptance summary is there."""
    import argparse
    import json

    from router_models import load_router
    from router_models.artifact import DEFAULT_DIR
    from router_models.card import model_card

    metrics = json.loads((DEFAULT_DIR / "metrics.json").read_text())
    args = argparse.Namespace(boot=200, out="router_models/artifacts/default")
    card = model_card(load_router(), metrics, args)
    assert card == (DEFAULT_DIR / "MODEL_CARD.md").read_text()
    assert "### Leave-one-source-out" in card and "### In-source held-out split" in card
    assert "CC BY-NC 4.0" in card and "not for commercial use" in card


def _reference_source(seed: int) -> tuple[np.ndarray, list]:  # type: ignore[type-arg]
    """A synthetic AlpacaEval-like source (win probabilities against gpt-4-1106-preview's
    answer) beside a 0/1 source: the reference is strong on prompts with a large z[:, 1], and
    x1's answers are long exactly where z[:, 0] > 0, which the judge rewards."""
    from router_models.data import Matrix

    rng = np.random.default_rng(seed)
    n = 600
    z = rng.standard_normal((2 * n, 2))
    za, zb = z[:n], z[n:]
    theta = {"x1": 0.3, "x2": -0.5}
    ref_theta = 0.5 + 1.2 * za[:, 1]
    chars = np.where(za[:, 0] > 0, 3000.0, 600.0)
    ref_chars = np.full(n, 1500.0)
    lengths = np.column_stack([ref_chars, chars, np.full(n, 1500.0)])
    # the judge's length effect, with the covariate's own definition (AlpacaEval's)
    ii, jj = np.nonzero(np.ones((n, 3), bool)[:, 1:])
    cov = _length_covariate(
        Matrix("alpaca_eval", [], [], [], np.zeros((n, 3)), np.zeros(n, bool), lengths),
        ii,
        jj + 1,
        0,
    ).reshape(n, 2)
    scores = [
        1 / (1 + np.exp(-(theta[name] - ref_theta + 1.5 * cov[:, j])))
        for j, name in enumerate(("x1", "x2"))
    ]
    alpaca = Matrix(
        "alpaca_eval",
        [f"a{i}" for i in range(n)],
        ["p"] * n,
        ["gpt-4-1106-preview", "x1", "x2"],
        np.column_stack([np.full(n, 0.5), *scores]),
        np.zeros(n, bool),
        lengths,
    )
    p_b = 1 / (1 + np.exp(-(np.array([theta["x1"], theta["x2"]])[None, :] + 0 * zb[:, :1])))
    other = Matrix(
        "dcrouter",
        [f"b{i}" for i in range(n)],
        ["q"] * n,
        ["x1", "x2"],
        (rng.random((n, 2)) < p_b).astype(float),
        np.zeros(n, bool),
    )
    return z, [alpaca, other]


def test_reference_comparisons_give_the_reference_a_profile_and_length_is_controlled() -> None:
    z, mats = _reference_source(0)
    on = {"pairwise_reference": True, "length_control": True}
    irt = fit_irt(z, mats, JointConfig(rank=2, lam_u=1.0, lam_c=1.0, max_iter=300, **on))
    ab = dict(zip(irt.models, irt.abilities(), strict=True))
    # the reference's strength rises with z[:, 1] (learned from the others' comparisons)
    assert ab["gpt-4-1106-preview"][1] - ab["x2"][1] > 0.6

    # x1's long answers where z[:, 0] > 0 are a length effect, not a prompt-type profile:
    # x1's own profile (u) along z[:, 0] picks it up only without the length covariate
    def own_z0(fit):  # type: ignore[no-untyped-def]
        i = {m: j for j, m in enumerate(fit.models)}
        return float(fit.u[i["x1"], 0] - fit.u[i["x2"], 0])

    off = fit_irt(
        z, mats, JointConfig(rank=2, lam_u=1.0, lam_c=1.0, max_iter=300, pairwise_reference=True)
    )
    assert own_z0(off) > 0.2
    assert abs(own_z0(irt)) < own_z0(off) / 2
    # scored as absolute labels (0.5 on every prompt) the reference learns much less of it:
    # the others' comparisons are read as prompt difficulty instead
    flat = fit_irt(
        z, mats, JointConfig(rank=2, lam_u=1.0, lam_c=1.0, max_iter=300, pairwise_reference=False)
    )
    ab_flat = dict(zip(flat.models, flat.abilities(), strict=True))
    gained = ab["gpt-4-1106-preview"][1] - ab["x2"][1]
    assert ab_flat["gpt-4-1106-preview"][1] - ab_flat["x2"][1] < gained / 2
