"""A loaded config at run time: models, their live upstreams, routes, router policies.

A `Runtime` is immutable once built. Hot reload builds a new one and swaps the
reference; a request keeps the `Runtime` it started with until it ends.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from gateway.accounting import pricing
from gateway.config import (
    FACE_KINDS,
    TIER_ORDER,
    BudgetSoftConfig,
    ModelConfig,
    Pricing,
    RoutingConfig,
    close_names,
    serves,
)
from gateway.errors import InvalidRequest, ModelNotFound
from gateway.routing.explore import Exploration, explore
from gateway.routing.policies import Candidate
from gateway.routing.profiles import ModelProfile, resolve_profiles
from gateway.upstreams.pool import Upstream, UpstreamKey

if TYPE_CHECKING:
    from gateway.routing.policies import Decision, Policy

_can_serve = Upstream.can_serve


def _has_free_slot(up: Upstream) -> bool:
    """A request sent now would start at once (router.policies.<name>.idle_local_free)."""
    return up.outstanding < up.limiter.cap and up.circuit.available()


log = logging.getLogger("tollgate.runtime")

# the kinds `auto` and router-<policy>-<x> route: chat and the API faces (gateway/api/face.py)
ROUTED_KINDS = frozenset({"chat", *FACE_KINDS})
DEFAULT_COMPLETION_ESTIMATE = 256  # tokens assumed for a cost estimate when max_tokens is unset


@dataclass(slots=True)
class Plan:
    """What to try, in order, for one request."""

    models: list[str]
    route: str
    policy: str | None = None
    decision: Decision | None = None
    baseline_model: str | None = None
    decision_s: float = 0.0
    features: list[float] | None = None  # the router's prompt vector, when it ran
    # when exploration is on for the request (gateway/routing/explore.py): the model it goes
    # to first (models[0]), whether that is an alternative, its propensity, every candidate's
    # P(pick). None: exploration off, the router's choice has propensity 1.
    exploration: Exploration | None = None


class UpstreamPool:
    """Keeps `Upstream`s alive across reloads when their settings are unchanged."""

    def __init__(self, on_circuit: Callable[[Upstream, int], None] | None = None) -> None:
        self._live: dict[UpstreamKey, Upstream] = {}
        self._retired: list[Upstream] = []
        self.on_circuit = on_circuit

    def build(self, cfg: RoutingConfig) -> dict[str, list[Upstream]]:
        used: dict[UpstreamKey, Upstream] = {}
        out: dict[str, list[Upstream]] = {}
        for m in cfg.models:
            ups = []
            for i, ep in enumerate(m.endpoints):
                key = Upstream.key(m, ep, cfg.circuit_breaker)
                up = used.get(key) or self._live.get(key)
                if up is None:
                    up = Upstream(m, ep, i, cfg.circuit_breaker, self.on_circuit)
                used[key] = up
                ups.append(up)
            out[m.name] = ups
        self._retired.extend(u for k, u in self._live.items() if k not in used)
        self._live = used
        return out

    async def reap(self) -> None:
        """Close retired upstreams once their last request has finished."""
        keep = []
        for up in self._retired:
            if up.outstanding == 0:
                await up.aclose()
            else:
                keep.append(up)
        self._retired = keep

    async def aclose(self) -> None:
        for up in [*self._live.values(), *self._retired]:
            await up.aclose()
        self._live.clear()
        self._retired.clear()

    def all(self) -> list[Upstream]:
        return list(self._live.values())


class Runtime:
    def __init__(
        self,
        cfg: RoutingConfig,
        pool: UpstreamPool,
        router: Any | None,
        source: str = "the routing file",
    ) -> None:
        self.config = cfg
        self.router = router
        self.models: dict[str, ModelConfig] = {m.name: m for m in cfg.models}
        self.upstreams = pool.build(cfg)
        self.routes = {r.name: r for r in cfg.routes}
        self.pricing: dict[str, Pricing | None] = {}
        for m in cfg.models:
            p = m.pricing
            if p is None:
                p = pricing.default_pricing(m.endpoints[0].model or m.name)
            self.pricing[m.name] = p
        # per-token rates, so that a routing decision's cost estimates are two multiplications
        self.rates = {n: pricing.rates(p) for n, p in self.pricing.items()}
        self.tier_rank = {m.name: TIER_ORDER[m.tier] for m in cfg.models}
        # policies with idle_local_free, and the locally priced models they apply to
        self.idle_free = {n for n, pc in cfg.router.policies.items() if pc.idle_local_free}
        self.local_models = frozenset(
            n
            for n, p in self.pricing.items()
            if p is not None and p.hardware_usd_per_hour is not None
        )
        self.policies: dict[str, Policy] = {}
        if router is not None:
            from gateway.routing.policies import make_policy

            self.policies = {n: make_policy(n, pc) for n, pc in cfg.router.policies.items()}
        # which router profile scores each chat model, and where it came from (priors placed
        # for models without data are installed into the router here)
        self.profiles: dict[str, ModelProfile] = {}
        if router is not None:
            self.profiles = resolve_profiles(cfg, router, source)
        names = cfg.router.candidates or [m.name for m in cfg.models if m.name in self.profiles]
        self.candidates = sorted(names, key=lambda n: (self.tier_rank[n], n))
        # what a routing decision needs of each candidate, looked up once per config
        rows = [
            (
                n,
                self.models[n].tier,
                self.tier_rank[n],
                self.profiles[n].profile if n in self.profiles else "",
                self.rates[n],
                self.upstreams[n],
            )
            for n in self.candidates
        ]
        # per kind the router routes, the candidates that serve it (natively or translated)
        # and, when that is not all of them, their names (fallback stays among them)
        self._rows_by_kind = {
            k: [r for r in rows if serves(self.models[r[0]], k)] for k in ROUTED_KINDS
        }
        self._only = {
            k: None if len(v) == len(rows) else {r[0] for r in v}
            for k, v in self._rows_by_kind.items()
        }
        # router.fallback next_tier_up: from each candidate, the more capable ones in
        # ascending order (tier, then price), then the less capable ones, nearest first
        self.next_tier_up = cfg.router.fallback == "next_tier_up"
        ladder = sorted(self.candidates, key=lambda n: (self.tier_rank[n], self._unit_price(n), n))
        self._climb = {
            n: [n, *ladder[i + 1 :], *reversed(ladder[:i])] for i, n in enumerate(ladder)
        }
        ex = cfg.router.explore
        self.explore_share = ex.share
        self.explore_margin = ex.margin
        self.explore_routes = dict(ex.routes)
        self.explore_keys = {
            k.id: k.explore_share for k in cfg.auth.keys if k.explore_share is not None
        }
        # one comparison per routed request when no share is set anywhere
        self.explores = (
            ex.share > 0
            or any(v > 0 for v in ex.routes.values())
            or any(v > 0 for v in self.explore_keys.values())
        )
        self.auto_baseline = self.most_expensive(self.candidates) if self.candidates else None
        self.route_baseline = {
            r.name: r.reference or self.most_expensive(r.models) for r in cfg.routes
        }

    # -- model lookup -------------------------------------------------------------------
    def public_names(self) -> list[str]:
        names = [*self.models, *self.routes]
        if self.router is not None and self.candidates:
            names.append("auto")
        return names

    def most_expensive(self, names: list[str]) -> str:
        return max(names, key=lambda n: (self.tier_rank[n], self._unit_price(n)))

    def _unit_price(self, name: str) -> float:
        return pricing.cost_at(self.rates[name], 1000, 1000)

    def explore_share_for(self, route: str, key_id: str | None) -> float:
        """The key's share if its entry sets one, else the route's, else router.explore's."""
        if key_id is not None:
            share = self.explore_keys.get(key_id)
            if share is not None:
                return share
        return self.explore_routes.get(route, self.explore_share)

    def resolve(
        self,
        name: str,
        kind: str,
        body: dict[str, Any],
        request_id: str = "",
        key_id: str | None = None,
        max_cost: float | None = None,
        thrifty: BudgetSoftConfig | None = None,
    ) -> Plan:
        """The plan for model `name`. For routed names, `max_cost` (the client's ceiling,
        estimated USD) removes every candidate estimated above it, `request_id` and
        `key_id` decide exploration, and `thrifty` (a key past its budget's soft share)
        leaves out the most expensive tiers and may switch the policy."""
        m = self.models.get(name)
        if m is not None:
            if kind not in m.kinds and not serves(m, kind):
                raise InvalidRequest(
                    f"model {name!r} does not serve /v1/{_path(kind)}; it serves "
                    f"{', '.join(_path(k) for k in m.kinds)}",
                    param="model",
                )
            return Plan([name], name, baseline_model=name)
        r = self.routes.get(name)
        if r is not None:
            return Plan(list(r.models), name, baseline_model=self.route_baseline[name])
        if kind in ROUTED_KINDS and self.router is not None and self._rows_by_kind[kind]:
            routed = self._routed_policy(name)
            if routed is not None:
                pname, pol = routed
                if thrifty is not None and thrifty.policy is not None:
                    pname, pol = thrifty.policy, self.policies[thrifty.policy]
                return self._route(
                    name, pname, pol, body, request_id, key_id, max_cost, thrifty, kind
                )
        # a client may send any name, 1 MB long: the answer quotes it cut short, and only a
        # name of a plausible length is compared with the known ones
        close = close_names(name, self.public_names(), 2) if len(name) <= 200 else []
        hint = ("did you mean " + " or ".join(repr(c) for c in close) + "? ") if close else ""
        shown = name if len(name) <= 80 else f"{name[:77]}..."
        raise ModelNotFound(
            f"the model {shown!r} does not exist on this gateway; {hint}use one of "
            f"{', '.join(self.public_names())} (GET /v1/models lists them), or "
            "router-<policy>-<threshold> such as router-cheapest_above-0.7",
            param="model",
        )

    def _routed_policy(self, name: str) -> tuple[str, Policy] | None:
        """The policy name and policy a routed model name asks for: `auto` the default
        policy, router-<policy>-<value> its own; None for any other name."""
        if name == "auto":
            pname = self.config.router.default_policy
            return pname, self.policies[pname]
        from gateway.routing.policies import parse_virtual_model, policy_from_virtual

        virtual = parse_virtual_model(name)
        if virtual is None:
            return None
        try:
            return name, policy_from_virtual(virtual[0], virtual[1], None, None)
        except ValueError as e:
            raise ModelNotFound(f"{name!r}: {e}", param="model") from None

    def _route(
        self,
        name: str,
        pname: str,
        policy: Policy,
        body: dict[str, Any],
        request_id: str = "",
        key_id: str | None = None,
        max_cost: float | None = None,
        thrifty: BudgetSoftConfig | None = None,
        kind: str = "chat",
    ) -> Plan:
        t0 = time.perf_counter()
        router = self.router
        assert router is not None  # resolve() routes only when a router is loaded
        messages = body.get("messages") or []
        scored = router.score(messages, body.get("tools"))
        prompt_tokens = pricing.estimate_prompt_tokens(messages)
        out_tokens = body.get("max_completion_tokens") or body.get("max_tokens")
        if not isinstance(out_tokens, int):
            out_tokens = DEFAULT_COMPLETION_ESTIMATE
        out_tokens = max(0, out_tokens)
        cands = []
        down: set[str] = set()
        idle_free = pname in self.idle_free
        for n, tier, rank, profile, r, ups in self._rows_by_kind[kind]:
            # est. cost == pricing.cost_usd(self.pricing[n], prompt, out), inlined
            cost = prompt_tokens * r.input + out_tokens * r.output
            if idle_free and n in self.local_models and any(map(_has_free_slot, ups)):
                cost = 0.0  # idle local hardware: paid for whether it serves or not
            up = any(map(_can_serve, ups))
            if not up:
                down.add(n)
            cands.append(Candidate(n, tier, rank, profile, cost, up))
        allowed = self._only[kind]
        if thrifty is not None and thrifty.drop_top_tiers:
            cands = self._without_top_tiers(cands, thrifty.drop_top_tiers)
            allowed = {c.name for c in cands}
        if max_cost is not None:
            cands = self._under_ceiling(cands, max_cost, prompt_tokens, out_tokens)
            allowed = {c.name for c in cands}
        decision = policy.decide(router, scored, cands)
        if self.next_tier_up:
            self._fall_back_up(decision, down, allowed)
        if self.explores:
            share = self.explore_share_for(name, key_id)
            if share > 0.0:
                ex = explore(
                    policy, decision, cands, share, self.explore_margin, request_id, max_cost
                )
                order = decision.order
                if ex.explored:
                    order = [ex.model, *(m for m in order if m != ex.model)]
                return Plan(
                    list(order),
                    name,
                    pname,
                    decision,
                    self.auto_baseline,
                    time.perf_counter() - t0,
                    scored.values,
                    ex,
                )
        return Plan(
            list(decision.order),
            name,
            policy=pname,
            decision=decision,
            baseline_model=self.auto_baseline,
            decision_s=time.perf_counter() - t0,
            features=scored.values,
        )

    def _fall_back_up(
        self, decision: Decision, down: set[str], allowed: set[str] | None = None
    ) -> None:
        """router.fallback next_tier_up: after the policy's pick, the next more capable
        candidate first (then the next one up, ...; then the ones below it, nearest first),
        instead of the policy's own preference order; candidates that cannot serve now
        (open circuit, full queue) still go last."""
        climb = self._climb.get(decision.preferred)
        if climb is None:
            return
        if allowed is not None:  # the client's cost ceiling left these candidates
            climb = [n for n in climb if n in allowed]
        if down:
            order = [n for n in climb if n not in down]
            order += [n for n in climb if n in down]
        else:
            order = list(climb)
        decision.order = order
        decision.chosen = order[0]

    @staticmethod
    def _without_top_tiers(cands: list[Candidate], n: int) -> list[Candidate]:
        """The candidates without the `n` highest tiers among them (the lowest tier stays)."""
        ranks = sorted({c.tier_rank for c in cands})
        keep = ranks[: max(1, len(ranks) - n)]
        return [c for c in cands if c.tier_rank <= keep[-1]]

    @staticmethod
    def _under_ceiling(
        cands: list[Candidate], max_cost: float, prompt_tokens: int, out_tokens: int
    ) -> list[Candidate]:
        fit = [c for c in cands if c.est_cost_usd <= max_cost]
        if not fit:
            cheapest = min(cands, key=lambda c: (c.est_cost_usd, c.tier_rank, c.name))
            raise InvalidRequest(
                f"no model fits x-tollgate-max-cost-usd={max_cost:g}: the cheapest, "
                f"{cheapest.name!r}, is estimated at ${cheapest.est_cost_usd:.8f} for this "
                f"request (~{prompt_tokens} prompt tokens + {out_tokens} completion tokens); "
                "raise the ceiling or lower max_tokens",
                code="cost_ceiling",
            )
        return fit

    def models_listing(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for m in self.config.models:
            out.append(
                {
                    "id": m.name,
                    "object": "model",
                    "created": 0,
                    "owned_by": "tollgate",
                    "tier": m.tier,
                    "kind": "model",
                    **(
                        {"router_profile": self.profiles[m.name].as_dict()}
                        if m.name in self.profiles
                        else {}
                    ),
                }
            )
        for r in self.config.routes:
            out.append(
                {
                    "id": r.name,
                    "object": "model",
                    "created": 0,
                    "owned_by": "tollgate",
                    "kind": "route",
                    "models": list(r.models),
                }
            )
        if "auto" in self.public_names():
            out.append(
                {
                    "id": "auto",
                    "object": "model",
                    "created": 0,
                    "owned_by": "tollgate",
                    "kind": "router",
                    "policy": self.config.router.default_policy,
                    "models": list(self.candidates),
                }
            )
        return out


def _path(kind: str) -> str:
    return {"chat": "chat/completions", "completions": "completions"}.get(kind, kind)
