"""Exploration: send a share of routed requests to another candidate near the decision.

`router train --from-store` learns a model's profile only from the requests that model
answered. Without exploration those are exactly the prompts the router already sent it, so
it never learns that a cheaper model would have done on the prompts it sends elsewhere.

The exploring policy, for one routed request with share `s`:

- the deterministic policy picks `c0` (cheapest_above, max_utility or threshold);
- the eligible alternatives `E` are the other candidates that can serve now, whose
  estimated cost fits the client's ceiling (`x-tollgate-max-cost-usd`, when sent), and
  whose value is within `margin` of `c0`'s: predicted quality, or for max_utility the
  utility (quality - cost_weight x estimated USD) that policy maximises. Cheaper and
  dearer candidates both qualify;
- with `k = |E| > 0`: with probability `s` one member of `E`, uniformly at random, else
  `c0`. So P(c0) = 1 - s and P(e) = s / k for each e in E (0 for every other candidate);
  with `k = 0` the request is not explored and P(c0) = 1.

The record keeps P(the model that served), its propensity, and whether it was explored;
training weights each (prompt vector, score) pair by 1 / propensity (gateway/accounting/
learn.py). The random draw is a hash of the request id (unguessable, 64 random bits), so it
needs no shared random state and a test can recompute every request's draw.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

from gateway.routing.policies import Candidate, Decision, MaxUtility, Policy

_TWO_64 = float(1 << 64)


def draws(request_id: str) -> tuple[float, float]:
    """Two independent uniform numbers in [0, 1) from the request id: whether to explore,
    and which eligible candidate."""
    d = hashlib.blake2b(request_id.encode(), digest_size=16, person=b"tollgate-explore").digest()
    return int.from_bytes(d[:8], "big") / _TWO_64, int.from_bytes(d[8:], "big") / _TWO_64


@dataclass(slots=True)
class Exploration:
    model: str  # the model the request goes to first
    explored: bool  # it differs from the deterministic choice
    propensity: float  # P(the exploring policy picks `model`)
    probabilities: dict[str, float]  # P(pick) of every candidate with P > 0


def eligible(
    policy: Policy,
    decision: Decision,
    candidates: Sequence[Candidate],
    margin: float,
    max_cost: float | None = None,
) -> list[str]:
    """The alternatives to `decision.order[0]` an exploring request may go to, by name."""
    chosen = decision.order[0]
    q = decision.quality
    w = policy.cost_weight if isinstance(policy, MaxUtility) else 0.0
    cost = decision.cost
    v0 = q[chosen] - w * cost[chosen]
    out: list[str] = []
    for c in candidates:
        if c.name == chosen or not c.available:
            continue
        if max_cost is not None and c.est_cost_usd > max_cost:
            continue
        if abs(q[c.name] - w * c.est_cost_usd - v0) <= margin:
            out.append(c.name)
    out.sort()  # the draw maps onto names, never onto the candidates' config order
    return out


def explore(
    policy: Policy,
    decision: Decision,
    candidates: Sequence[Candidate],
    share: float,
    margin: float,
    request_id: str,
    max_cost: float | None = None,
) -> Exploration:
    chosen = decision.order[0]
    alts = eligible(policy, decision, candidates, margin, max_cost)
    if not alts or share <= 0.0:
        return Exploration(chosen, False, 1.0, {chosen: 1.0})
    k = len(alts)
    each = share / k
    probs = {chosen: 1.0 - share}
    for n in alts:
        probs[n] = each
    u, v = draws(request_id)
    if u < share:
        return Exploration(alts[min(k - 1, int(v * k))], True, each, probs)
    return Exploration(chosen, False, 1.0 - share, probs)
