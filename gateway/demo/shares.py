"""The routed mix against one tier, per prompt: quality and cost shares with bootstrap intervals.

Every demo answer is a replayed, judged answer, so the routed run's quality and cost on a
prompt are those of the tier that answered it, and "always <tier>" is the same prompt's
answer from that tier. Resampling prompts gives the 90% intervals the point estimates need
(162 held-out prompts move a share by several points).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Share:
    """A ratio of sums (routed / reference) with its bootstrap interval."""

    point: float
    low: float
    high: float

    def pct(self) -> str:
        return f"{100 * self.point:.1f}% [{100 * self.low:.1f}, {100 * self.high:.1f}]"


@dataclass(frozen=True)
class Shares:
    n: int
    quality: Share
    cost: Share


def _ratio(num: Sequence[float], den: Sequence[float], idx: Sequence[int]) -> float:
    d = sum(den[i] for i in idx)
    return sum(num[i] for i in idx) / d if d > 0 else float("nan")


def shares(
    routed_quality: Sequence[float],
    routed_cost: Sequence[float],
    ref_quality: Sequence[float],
    ref_cost: Sequence[float],
    *,
    resamples: int = 2000,
    level: float = 0.90,
    seed: int = 0,
) -> Shares:
    """Routed quality and cost as shares of the reference tier's, over the same prompts.

    The point estimate is the ratio of sums over all prompts; the interval is the percentile
    bootstrap over prompts (resampled with replacement, `resamples` times, seeded).
    """
    n = len(routed_quality)
    if not n or not (len(routed_cost) == len(ref_quality) == len(ref_cost) == n):
        raise ValueError("shares() needs the same non-zero number of prompts in every series")
    everything = range(n)
    rng = random.Random(seed)
    qs: list[float] = []
    cs: list[float] = []
    for _ in range(resamples):
        idx = [rng.randrange(n) for _ in everything]
        qs.append(_ratio(routed_quality, ref_quality, idx))
        cs.append(_ratio(routed_cost, ref_cost, idx))

    def interval(values: list[float], point: float) -> Share:
        vals = sorted(v for v in values if v == v)
        if not vals:
            return Share(point, point, point)
        lo = vals[int((1 - level) / 2 * (len(vals) - 1))]
        hi = vals[int((1 + level) / 2 * (len(vals) - 1))]
        return Share(point, lo, hi)

    return Shares(
        n,
        interval(qs, _ratio(routed_quality, ref_quality, everything)),
        interval(cs, _ratio(routed_cost, ref_cost, everything)),
    )
