"""Routing policies: cheapest_above, max_utility, threshold, availability and virtual names."""

from __future__ import annotations

import pytest

from gateway.config import PolicyConfig
from gateway.routing.policies import (
    POLICIES,
    Candidate,
    make_policy,
    parse_virtual_model,
    policy_from_virtual,
)


class FakeRouter:
    """Quality per profile fixed; strong_score = (1 + q_strong - q_weak) / 2 like the real one."""

    def __init__(self, q: dict[str, float]) -> None:
        self.q = q

    def quality(self, features: object, profiles: list[str]) -> list[float]:
        return [self.q[p] for p in profiles]

    def strong_score(self, features: object, strong: str, weak: str) -> float:
        return 0.5 + 0.5 * (self.q[strong] - self.q[weak])


def cands(available: dict[str, bool] | None = None) -> list[Candidate]:
    av = available or {}
    return [
        Candidate("small", "small", 0, "p-small", 0.001, av.get("small", True)),
        Candidate("medium", "medium", 1, "p-medium", 0.004, av.get("medium", True)),
        Candidate("large", "large", 2, "p-large", 0.02, av.get("large", True)),
        Candidate("gpt", "external", 3, "p-gpt", 0.05, av.get("gpt", True)),
    ]


R = FakeRouter({"p-small": 0.3, "p-medium": 0.62, "p-large": 0.75, "p-gpt": 0.8})


def test_cheapest_above_picks_cheapest_that_reaches_target() -> None:
    pol = make_policy("balanced", PolicyConfig(kind="cheapest_above", target=0.6))
    d = pol.decide(R, None, cands())
    assert d.chosen == "medium" and d.order == ["medium", "large", "gpt", "small"]
    assert d.quality == {"small": 0.3, "medium": 0.62, "large": 0.75, "gpt": 0.8}
    assert d.cost["gpt"] == 0.05 and d.policy == "balanced"
    assert d.score == pytest.approx(0.5 + 0.5 * (0.8 - 0.3))
    # nobody reaches the target -> the best predicted quality
    d = make_policy("q", PolicyConfig(kind="cheapest_above", target=0.95)).decide(R, None, cands())
    assert d.chosen == "gpt"


def test_unavailable_is_never_chosen_and_goes_last() -> None:
    pol = make_policy("balanced", PolicyConfig(kind="cheapest_above", target=0.6))
    d = pol.decide(R, None, cands({"medium": False}))
    assert d.chosen == "large" and d.order[-1] == "medium"
    d = pol.decide(R, None, cands({"small": False, "medium": False, "large": False, "gpt": False}))
    assert d.chosen == "medium"  # nothing can serve: still the policy's first choice


def test_max_utility_trades_quality_for_cost() -> None:
    free = make_policy("u", PolicyConfig(kind="max_utility", cost_weight=0.0))
    assert free.decide(R, None, cands()).chosen == "gpt"
    thrifty = make_policy("u", PolicyConfig(kind="max_utility", cost_weight=20.0))
    # utilities: small 0.28, medium 0.54, large 0.35, gpt -0.2
    d = thrifty.decide(R, None, cands())
    assert d.order == ["medium", "large", "small", "gpt"]


def test_threshold_two_tier() -> None:
    hi = make_policy(
        "t", PolicyConfig(kind="threshold", threshold=0.6, strong="large", weak="small")
    )
    d = hi.decide(R, None, cands())  # score = 0.5 + 0.5 * (0.75 - 0.3) = 0.725 >= 0.6
    assert d.chosen == "large" and d.score == pytest.approx(0.725)
    lo = make_policy(
        "t", PolicyConfig(kind="threshold", threshold=0.8, strong="large", weak="small")
    )
    assert lo.decide(R, None, cands()).chosen == "small"
    # strong down -> the next most capable model, not the weak one
    d = hi.decide(R, None, cands({"large": False}))
    assert d.chosen == "gpt" and d.order[-1] == "large"
    # no strong/weak configured: most expensive vs cheapest
    d = make_policy("t", PolicyConfig(kind="threshold", threshold=0.6)).decide(R, None, cands())
    assert d.chosen == "gpt" and d.score == pytest.approx(0.75)


def test_virtual_model_names() -> None:
    assert parse_virtual_model("router-cheapest_above-0.7") == ("cheapest_above", 0.7)
    assert parse_virtual_model("router-max_utility-20000") == ("max_utility", 20000.0)
    assert parse_virtual_model("router-threshold-0.35") == ("threshold", 0.35)
    for bad in ("auto", "router-foo-0.5", "router-threshold-", "router-threshold-abc", "gpt-4"):
        assert parse_virtual_model(bad) is None
    assert set(POLICIES) == {"cheapest_above", "max_utility", "threshold"}
    pol = policy_from_virtual("threshold", 0.6, "large", "small", cands())
    assert pol.decide(R, None, cands()).chosen == "large"
    pol = policy_from_virtual("cheapest_above", 0.7, None, None, cands())
    assert pol.decide(R, None, cands()).chosen == "large"
    pol = policy_from_virtual("max_utility", 20.0, None, None, cands())
    assert pol.decide(R, None, cands()).chosen == "medium"


def test_policies_run_on_the_real_router() -> None:
    from router_models import load_router

    router = load_router()
    real = [
        Candidate("small", "small", 0, "gemma-2b-it", 0.0002),
        Candidate("medium", "medium", 1, "vicuna-13b-v1.5", 0.001),
        Candidate("large", "large", 2, "humpback-llama2-70b", 0.005),
        Candidate("gpt", "external", 3, "gpt-3.5-turbo-1106", 0.002),
    ]
    z = router.featurize([{"role": "user", "content": "Explain quantum entanglement to a child."}])
    for kind, cfg in (
        ("cheapest_above", PolicyConfig(kind="cheapest_above", target=0.55)),
        ("max_utility", PolicyConfig(kind="max_utility", cost_weight=20000)),
        ("threshold", PolicyConfig(kind="threshold", threshold=0.5, strong="large", weak="small")),
    ):
        d = make_policy(kind, cfg).decide(router, z, real)
        assert d.chosen in {c.name for c in real} and sorted(d.order) == sorted(
            c.name for c in real
        )
        assert 0.0 <= d.score <= 1.0 and set(d.quality) == {c.name for c in real}


def test_one_pass_extremes_equal_max_and_min() -> None:
    """_extremes (one loop, no key calls) picks what max()/min() by (cost, tier rank, name)
    pick, ties in cost and in rank included, in every candidate order."""
    import itertools
    import random

    from gateway.routing.policies import _cheap_key, _extremes

    rng = random.Random(7)
    for n in range(1, 7):
        for _ in range(200):
            cs = [
                Candidate(f"m{i}", "t", rng.choice([0, 1, 2]), "p", rng.choice([0.0, 1e-6, 2e-6]))
                for i in range(n)
            ]
            for order in itertools.islice(itertools.permutations(cs), 6):
                assert _extremes(order) == (max(order, key=_cheap_key), min(order, key=_cheap_key))


def test_real_router_clips_and_scores_like_min_max() -> None:
    """Router.quality and strong_score: the shipped artifact's logistic link, and the identity
    link of format-1 artifacts clipped with comparisons (the same values as min()/max()); NaN
    included."""
    import math

    from router_models.artifact import load_router
    from router_models.model import _EPS, _ONE_EPS, Router, Scored

    router = load_router("default")
    assert isinstance(router, Router) and router.link == "logistic"
    identity = Router(
        router.featurizer,
        router.projection,
        router.abilities,
        router.biases,
        router.profiles,
        router.default_strong,
        router.default_weak,
        "identity-copy",
        {"link": "identity"},
    )

    def logistic(v: float) -> float:
        if math.isnan(v):
            return 0.0
        return 1.0 / (1.0 + math.exp(-v)) if abs(v) < 30 else float(v > 0)

    names = router.profiles[:6]
    raws = [-40.0, -3.0, 0.0, 0.0005, 0.5, 0.9995, 7.0, 40.0, math.nan]
    for r0 in raws:
        for r1 in raws:
            raw = [0.0] * len(router.profiles)
            raw[router._index[names[0]]] = r0
            raw[router._index[names[1]]] = r1
            s = Scored(None, raw)  # type: ignore[arg-type]
            got = identity.quality(s, names[:2])
            want = [min(max(v, _EPS), _ONE_EPS) for v in (r0, r1)]
            assert [repr(x) for x in got] == [repr(x) for x in want]
            gap = 0.5 + 0.5 * (r0 - r1)
            assert repr(identity.strong_score(s, names[0], names[1])) == repr(
                min(1.0, max(0.0, gap))
            )
            q = router.quality(s, names[:2])
            assert q == [logistic(r0), logistic(r1)]
            want_s = 0.5 + 0.5 * (logistic(r0) - logistic(r1))
            assert router.strong_score(s, names[0], names[1]) == want_s
            assert 0.0 <= want_s <= 1.0
