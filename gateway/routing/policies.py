"""Routing policies for model="auto" and router-<policy>-<threshold>: named, pure strategies.

A policy gets the router, a conversation's features and the candidate models, and returns a
Decision: the full preference order (chosen first, then the fallbacks), the router score and
every candidate's predicted quality and estimated cost. No I/O here; the gateway supplies
which candidates can serve now (`available`), and an unavailable one is never chosen while an
available one exists.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

from gateway.config import PolicyConfig


@dataclass(slots=True)
class Candidate:
    name: str
    tier: str
    tier_rank: int
    profile: str
    est_cost_usd: float
    available: bool = True


@dataclass(slots=True)
class Decision:
    order: list[str]
    chosen: str
    score: float
    quality: dict[str, float] = field(default_factory=dict)
    cost: dict[str, float] = field(default_factory=dict)
    policy: str = ""
    # the policy's own pick before availability was considered (`chosen` is the first
    # candidate of `order` that can serve now); router.fallback next_tier_up climbs from it
    preferred: str = ""


class Policy(Protocol):
    name: str

    def decide(self, router: Any, features: Any, candidates: list[Candidate]) -> Decision: ...


# (estimated cost, tier rank, name): cheapest first, ties broken by tier then name. A C-level
# key (no Python frame per candidate): a routing decision runs on every model="auto" request.
_cheap_key = operator.attrgetter("est_cost_usd", "tier_rank", "name")


def _extremes(candidates: Sequence[Candidate]) -> tuple[Candidate, Candidate]:
    """(most expensive, cheapest) candidate; ties broken by tier rank then name (what max()
    and min() with `_cheap_key` give, in one pass and without their per-item key calls)."""
    it = iter(candidates)
    hi = lo = next(it)
    hk = lk = (hi.est_cost_usd, hi.tier_rank, hi.name)
    for c in it:
        k = (c.est_cost_usd, c.tier_rank, c.name)
        if k > hk:
            hi, hk = c, k
        elif k < lk:
            lo, lk = c, k
    return hi, lo


# A routing decision runs on every model="auto" request, so the helpers below are plain loops:
# in CPython 3.11 each comprehension is a function call of its own.


def _finish(
    policy: str,
    preferred: list[Candidate],
    score: float,
    quality: dict[str, float],
    candidates: Sequence[Candidate],
) -> Decision:
    order: list[str] = []
    down: list[str] = []  # candidates that cannot serve now go last, in preference order
    for c in preferred:
        (order if c.available else down).append(c.name)
    order += down
    cost: dict[str, float] = {}
    for c in candidates:
        cost[c.name] = c.est_cost_usd
    return Decision(order, order[0], score, quality, cost, policy, preferred[0].name)


def _assess(
    router: Any, features: Any, candidates: Sequence[Candidate]
) -> tuple[dict[str, float], float]:
    if not candidates:
        raise ValueError("a routing policy needs at least one candidate model")
    profiles: list[str] = []
    for c in candidates:
        profiles.append(c.profile)
    qs = router.quality(features, profiles)
    if len(qs) != len(candidates):
        raise ValueError(f"the router scored {len(qs)} of {len(candidates)} candidates")
    quality: dict[str, float] = {}
    for c, q in zip(candidates, qs, strict=False):  # same length: checked above
        quality[c.name] = q if type(q) is float else float(q)
    strong, weak = _extremes(candidates)
    return quality, float(router.strong_score(features, strong.profile, weak.profile))


class CheapestAbove:
    """The cheapest candidate whose predicted quality reaches `target`; else the best one."""

    kind: ClassVar[str] = "cheapest_above"

    def __init__(self, name: str, target: float) -> None:
        self.name = name
        self.target = target

    def decide(self, router: Any, features: Any, candidates: list[Candidate]) -> Decision:
        quality, score = _assess(router, features, candidates)
        target = self.target
        good: list[Candidate] = []
        short: list[tuple[float, float, int, str, Candidate]] = []
        for c in candidates:
            q = quality[c.name]
            if q >= target:
                good.append(c)
            else:
                short.append((-q, c.est_cost_usd, c.tier_rank, c.name, c))
        good.sort(key=_cheap_key)
        # below the target: best predicted quality first, then cheapest (names are unique,
        # so c is never compared)
        short.sort()
        for t in short:
            good.append(t[-1])
        return _finish(self.name, good, score, quality, candidates)


class MaxUtility:
    """The candidate with the largest predicted quality - cost_weight x estimated cost (USD)."""

    kind: ClassVar[str] = "max_utility"

    def __init__(self, name: str, cost_weight: float) -> None:
        self.name = name
        self.cost_weight = cost_weight

    def decide(self, router: Any, features: Any, candidates: list[Candidate]) -> Decision:
        quality, score = _assess(router, features, candidates)
        w = self.cost_weight
        ranked = [
            t[-1]
            for t in sorted(
                (-(quality[c.name] - w * c.est_cost_usd), c.est_cost_usd, c.tier_rank, c.name, c)
                for c in candidates
            )
        ]  # largest utility first, then cheapest (names are unique: c is never compared)
        return _finish(self.name, ranked, score, quality, candidates)


class Threshold:
    """RouteLLM's two-tier rule: strong if the router score >= threshold, else weak.

    `strong`/`weak` name a candidate (by model name or tier); unset, they are the most
    expensive and the cheapest candidate. The score reported is the one compared with the
    threshold (strong vs weak profile).
    """

    kind: ClassVar[str] = "threshold"

    def __init__(
        self, name: str, threshold: float, strong: str | None = None, weak: str | None = None
    ) -> None:
        self.name = name
        self.threshold = threshold
        self.strong = strong
        self.weak = weak

    @staticmethod
    def _pick(candidates: Sequence[Candidate], key: str | None, default: Candidate) -> Candidate:
        if key is None:
            return default
        for c in candidates:
            if c.name == key:
                return c
        for c in sorted(candidates, key=_cheap_key):
            if c.tier == key:
                return c
        return default

    def decide(self, router: Any, features: Any, candidates: list[Candidate]) -> Decision:
        quality, _ = _assess(router, features, candidates)
        hi, lo = _extremes(candidates)
        strong = self._pick(candidates, self.strong, hi)
        weak = self._pick(candidates, self.weak, lo)
        score = float(router.strong_score(features, strong.profile, weak.profile))
        others = [c for c in candidates if c.name not in (strong.name, weak.name)]
        if score >= self.threshold:
            head = [strong] + ([weak] if weak.name != strong.name else [])
            # if the strong model cannot serve, the next best is the next most capable
            rest = sorted(others, key=lambda c: (-quality[c.name], *_cheap_key(c)))
            preferred = [head[0], *rest, *head[1:]]
        else:
            head = [weak] + ([strong] if weak.name != strong.name else [])
            rest = sorted(others, key=_cheap_key)
            preferred = [head[0], *rest, *head[1:]]
        return _finish(self.name, preferred, score, quality, candidates)


POLICIES: dict[str, type] = {
    "cheapest_above": CheapestAbove,
    "max_utility": MaxUtility,
    "threshold": Threshold,
}


def make_policy(name: str, cfg: PolicyConfig) -> Policy:
    """The policy a `router.policies.<name>` entry describes."""
    if cfg.kind == "cheapest_above":
        return CheapestAbove(name, 0.6 if cfg.target is None else cfg.target)
    if cfg.kind == "max_utility":
        return MaxUtility(name, 0.0 if cfg.cost_weight is None else cfg.cost_weight)
    if cfg.kind == "threshold":
        return Threshold(
            name, 0.5 if cfg.threshold is None else cfg.threshold, cfg.strong, cfg.weak
        )
    raise ValueError(f"unknown policy kind {cfg.kind!r}; choose one of {sorted(POLICIES)}")


_VIRTUAL_RE = re.compile(
    r"^router-(" + "|".join(POLICIES) + r")-([0-9]+(?:\.[0-9]+)?(?:[eE][-+]?[0-9]+)?)$"
)


def parse_virtual_model(model: str) -> tuple[str, float] | None:
    """`router-<policy>-<threshold>` -> (policy kind, threshold); None for any other name."""
    m = _VIRTUAL_RE.match(model)
    if not m:
        return None
    return m.group(1), float(m.group(2))


def policy_from_virtual(
    kind: str,
    value: float,
    default_strong: str | None,
    default_weak: str | None,
    candidates: Sequence[Candidate] | None = None,
) -> Policy:
    """The policy a virtual model name asks for; `value` replaces target/cost_weight/threshold."""
    name = f"router-{kind}-{value:g}"
    if kind == "cheapest_above":
        return CheapestAbove(name, value)
    if kind == "max_utility":
        return MaxUtility(name, value)
    if kind == "threshold":
        known = {c.name for c in candidates or []} | {c.tier for c in candidates or []}
        strong = default_strong if not candidates or default_strong in known else None
        weak = default_weak if not candidates or default_weak in known else None
        return Threshold(name, value, strong, weak)
    raise ValueError(f"unknown policy kind {kind!r}; choose one of {sorted(POLICIES)}")
