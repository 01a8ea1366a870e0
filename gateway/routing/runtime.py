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
    KINDS,
    NATIVE,
    TIER_ORDER,
    TRANSLATED,
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
from gateway.routing.sticky import KEPT, STAYED, SWITCHED, Turn, cache_value, switch_gain
from gateway.upstreams.pool import Upstream, UpstreamKey

if TYPE_CHECKING:
    from gateway.routing.policies import Decision, Policy

_can_serve = Upstream.can_serve


def _has_free_slot(up: Upstream) -> bool:
    """A request sent now would start at once (router.policies.<name>.idle_local_free)."""
    return up.outstanding < up.limiter.cap and up.circuit.available()


log = logging.getLogger("tollgate.runtime")

# the kinds the router routes: `auto`, `auto:<policy>`, a policy's name, router-<kind>-<value>
# (chat, completions and the API faces' kinds, gateway/api/face.py; not embeddings)
ROUTED_KINDS: tuple[str, ...] = ("chat", "completions", *sorted(FACE_KINDS))


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
    # conversation stickiness (gateway/routing/sticky.py): the outcome for a routed request of
    # a known conversation (stayed, kept, switched), and the endpoint of models[0] that served
    # the previous turn, to be tried first
    sticky: str | None = None
    endpoint: int | None = None
    # when a switch was weighed: (previous model, the switch's expected saving, the cached
    # prefix's value it would lose), both USD
    sticky_weighed: tuple[str, float, float] | None = None


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
        # which kinds each model serves, and how (NATIVE or TRANSLATED)
        self.support: dict[str, dict[str, str]] = {
            m.name: {k: how for k in KINDS if (how := serves(m, k)) is not None} for m in cfg.models
        }
        # per kind: the candidates that serve it, and each route's members that serve it (in
        # the route's order), so that a request never goes to a model that cannot answer it
        self.kind_candidates = {
            k: [n for n in self.candidates if k in self.support[n]] for k in ROUTED_KINDS
        }
        self.route_members = {
            k: {r.name: [n for n in r.models if k in self.support[n]] for r in cfg.routes}
            for k in KINDS
        }
        # every model name that routes: `auto` (the default policy), `auto:<policy>` and each
        # router.policies entry by its own name (a model or route of that name wins)
        self.routed_names: dict[str, str] = {}
        if router is not None and self.candidates:
            self.routed_names["auto"] = cfg.router.default_policy
            for pn in cfg.router.policies:
                self.routed_names[f"auto:{pn}"] = pn
                if pn not in self.models and pn not in self.routes:
                    self.routed_names[pn] = pn
        # the names whose requests look up their conversation's previous turn: the routed
        # ones (its model, then its endpoint), and models and routes with a model of several
        # endpoints (its endpoint); router-<kind>-<value> names are checked by prefix
        multi = {m.name for m in cfg.models if len(m.endpoints) > 1}
        self.sticky_names = frozenset(
            [*self.routed_names, *multi, *(r.name for r in cfg.routes if multi & set(r.models))]
        )
        # what a routing decision needs of each candidate, looked up once per config
        rows = {
            n: (
                n,
                self.models[n].tier,
                self.tier_rank[n],
                self.profiles[n].profile if n in self.profiles else "",
                self.rates[n],
                self.upstreams[n],
            )
            for n in self.candidates
        }
        self._kind_rows = {k: [rows[n] for n in ns] for k, ns in self.kind_candidates.items()}
        # the candidates a kind leaves, when that is not all of them (next_tier_up's climb
        # then skips the others)
        self._kind_allowed = {
            k: (None if len(ns) == len(self.candidates) else set(ns))
            for k, ns in self.kind_candidates.items()
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
        self.kind_baseline = {
            k: (self.most_expensive(ns) if ns else None) for k, ns in self.kind_candidates.items()
        }
        self.route_baseline = {
            r.name: r.reference or self.most_expensive(r.models) for r in cfg.routes
        }

    # -- model lookup -------------------------------------------------------------------
    def public_names(self, kind: str | None = None) -> list[str]:
        """The model names a client may send: all of them, or those that would work for a
        request of `kind` (a model that serves it, a route with a member that does, and the
        routed names when the router has a candidate that does)."""
        if kind is None:
            return [*self.models, *self.routes, *self.routed_names]
        names = [n for n in self.models if kind in self.support[n]]
        names += [r for r, ms in self.route_members[kind].items() if ms]
        if self.kind_candidates.get(kind):
            names += list(self.routed_names)
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
        min_quality: float | None = None,
        turn: Turn | None = None,
    ) -> Plan:
        """The plan for model `name`. `max_cost` (the client's ceiling, estimated USD)
        removes every model estimated above it (a model, a route's members, the router's
        candidates); for routed names `min_quality` (the client's floor) removes every
        candidate the router predicts below it, `request_id` and `key_id` decide
        exploration, and `thrifty` (a key past its budget's soft share) leaves out the most
        expensive tiers and may switch the policy. `turn`: what served the conversation's
        previous turn (stickiness: its model for a routed name, its endpoint for any)."""
        m = self.models.get(name)
        if m is not None:
            if kind not in self.support[name]:
                raise InvalidRequest(
                    f"model {name!r} does not serve /v1/{_path(kind)} (it serves "
                    f"{', '.join('/v1/' + _path(k) for k in self.support[name])}); "
                    f"{self._names_hint(kind)}",
                    param="model",
                )
            if max_cost is not None:
                self._fixed_under_ceiling([name], kind, body, max_cost)
            plan = Plan([name], name, baseline_model=name)
            if turn is not None and turn.model == name:
                plan.endpoint = turn.endpoint
            return plan
        if name in self.routes:
            members = self.route_members[kind][name]
            if not members:
                raise InvalidRequest(
                    f"route {name!r} has no model that serves /v1/{_path(kind)} (its models: "
                    f"{', '.join(self.routes[name].models)}; a model serves a kind listed in "
                    f"its `kinds:`); {self._names_hint(kind)}",
                    param="model",
                )
            if max_cost is not None:
                members = self._fixed_under_ceiling(members, kind, body, max_cost)
            plan = Plan(list(members), name, baseline_model=self.route_baseline[name])
            if turn is not None and turn.model == members[0]:
                plan.endpoint = turn.endpoint
            return plan
        routed = self._routed_policy(name)
        if routed is not None:
            if not self.kind_candidates.get(kind):
                raise InvalidRequest(
                    f"{name!r} routes among the router's candidates, and none of them serves "
                    f"/v1/{_path(kind)}; {self._names_hint(kind)}",
                    param="model",
                )
            pname, pol = routed
            if thrifty is not None and thrifty.policy is not None:
                pname, pol = thrifty.policy, self.policies[thrifty.policy]
            return self._route(
                name,
                kind,
                pname,
                pol,
                body,
                request_id,
                key_id,
                max_cost,
                thrifty,
                min_quality,
                turn,
            )
        # a client may send any name, 1 MB long: the answer quotes it cut short, and only a
        # name of a plausible length is compared with the known ones
        names = self.public_names(kind)
        close = close_names(name, names, 2) if len(name) <= 200 else []
        hint = ("did you mean " + " or ".join(repr(c) for c in close) + "? ") if close else ""
        shown = name if len(name) <= 80 else f"{name[:77]}..."
        raise ModelNotFound(
            f"the model {shown!r} does not exist on this gateway; {hint}{self._names_hint(kind)}",
            param="model",
        )

    def _names_hint(self, kind: str) -> str:
        """`use one of ...`: only the names that would work for a request of `kind`."""
        names = self.public_names(kind)
        if not names:
            return (
                f"no configured model serves /v1/{_path(kind)} (see `kinds:` in the routing file)"
            )
        out = f"use one of {', '.join(names)} for /v1/{_path(kind)} (GET /v1/models lists them)"
        if self.routed_names and self.kind_candidates.get(kind):
            from gateway.routing.policies import POLICIES

            out += (
                ", or router-<policy kind>-<value> such as router-cheapest_above-0.7 "
                f"(policy kinds: {', '.join(POLICIES)})"
            )
        return out

    def _routed_policy(self, name: str) -> tuple[str, Policy] | None:
        """The policy name and policy a routed model name asks for: `auto` the default
        policy, `auto:<policy>` and a policy's own name that router.policies entry,
        router-<policy kind>-<value> a policy of that kind with that value; None for any
        other name (and for all of them when no router is loaded)."""
        pname = self.routed_names.get(name)
        if pname is not None:
            return pname, self.policies[pname]
        if self.router is None or not self.candidates:
            return None
        from gateway.routing.policies import parse_virtual_model, policy_from_virtual

        virtual = parse_virtual_model(name)
        if virtual is None:
            if name.startswith("auto:"):
                raise ModelNotFound(
                    f"{name[:80]!r}: there is no router policy {name[5:80]!r}; the policies "
                    f"are {', '.join(self.policies)} (router.policies in the routing file)",
                    param="model",
                )
            return None
        try:
            return name, policy_from_virtual(virtual[0], virtual[1], None, None)
        except ValueError as e:
            raise ModelNotFound(f"{name!r}: {e}", param="model") from None

    def _route(
        self,
        name: str,
        kind: str,
        pname: str,
        policy: Policy,
        body: dict[str, Any],
        request_id: str = "",
        key_id: str | None = None,
        max_cost: float | None = None,
        thrifty: BudgetSoftConfig | None = None,
        min_quality: float | None = None,
        turn: Turn | None = None,
    ) -> Plan:
        t0 = time.perf_counter()
        router = self.router
        assert router is not None  # resolve() routes only when a router is loaded
        messages = conversation(kind, body)
        scored = router.score(messages, body.get("tools"))
        prompt_tokens = pricing.estimate_prompt_tokens(messages)
        out_tokens = self._out_tokens(kind, body)
        cands = []
        down: set[str] = set()
        idle_free = pname in self.idle_free
        for n, tier, rank, profile, r, ups in self._kind_rows[kind]:
            # est. cost == pricing.cost_usd(self.pricing[n], prompt, out), inlined
            cost = prompt_tokens * r.input + out_tokens * r.output
            if idle_free and n in self.local_models and any(map(_has_free_slot, ups)):
                cost = 0.0  # idle local hardware: paid for whether it serves or not
            up = any(map(_can_serve, ups))
            if not up:
                down.add(n)
            cands.append(Candidate(n, tier, rank, profile, cost, up))
        allowed = self._kind_allowed[kind]
        if thrifty is not None and thrifty.drop_top_tiers:
            cands = self._without_top_tiers(cands, thrifty.drop_top_tiers)
            allowed = {c.name for c in cands}
        if max_cost is not None:
            cands = self._under_ceiling(cands, max_cost, prompt_tokens, out_tokens)
            allowed = {c.name for c in cands}
        decision = policy.decide(router, scored, cands)
        if self.next_tier_up:
            self._fall_back_up(decision, down, allowed)
        if min_quality is not None:
            cands = self._above_floor(decision, cands, min_quality)
        sticky = weighed = None
        if turn is not None:
            sticky, weighed = self._stick(policy, decision, down, turn, prompt_tokens)
        if self.explores and sticky != KEPT:
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
                    self.kind_baseline[kind],
                    time.perf_counter() - t0,
                    scored.values,
                    ex,
                    sticky,
                    _endpoint(turn, order[0]),
                    weighed,
                )
        return Plan(
            list(decision.order),
            name,
            policy=pname,
            decision=decision,
            baseline_model=self.kind_baseline[kind],
            decision_s=time.perf_counter() - t0,
            features=scored.values,
            sticky=sticky,
            endpoint=_endpoint(turn, decision.order[0]),
            sticky_weighed=weighed,
        )

    def _stick(
        self, policy: Policy, decision: Decision, down: set[str], turn: Turn, prompt_tokens: int
    ) -> tuple[str, tuple[str, float, float] | None]:
        """Keep the conversation on the previous turn's model (put it first: KEPT) unless
        the router's choice is that model anyway (STAYED), it cannot serve this request now
        (not a candidate for it, over the client's limits, circuit open), or the switch's
        expected saving is more than the cached prefix it loses (SWITCHED); with what was
        weighed, when it was."""
        new = decision.order[0]
        old = turn.model
        if old == new:
            return STAYED, None
        if old not in decision.order or old in down:
            return SWITCHED, None
        lost = cache_value(
            self.rates[old],
            min(turn.prefix_tokens, prompt_tokens),
            time.time() - turn.at,
            self.models[old].prompt_cache_ttl_s,
        )
        gain = switch_gain(policy, decision, old, new)
        if gain > lost:
            return SWITCHED, (old, gain, lost)
        decision.order = [old, *(n for n in decision.order if n != old)]
        decision.chosen = old
        return KEPT, (old, gain, lost)

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

    def _out_tokens(self, kind: str, body: dict[str, Any]) -> int:
        """The completion tokens a cost estimate assumes: the request's own limit
        (max_tokens, max_completion_tokens; the faces' own limits, such as the Responses
        API's max_output_tokens, arrive translated to max_tokens), else
        limits.default_completion_tokens; none for embeddings."""
        if kind == "embeddings":
            return 0
        out = body.get("max_completion_tokens") or body.get("max_tokens")
        if not isinstance(out, int):
            out = self.config.limits.default_completion_tokens
        return max(0, out)

    def _fixed_under_ceiling(
        self, names: list[str], kind: str, body: dict[str, Any], max_cost: float
    ) -> list[str]:
        """The models of a model name or route whose estimated cost fits the client's
        ceiling (400 naming the cheapest estimate when none does)."""
        msgs = conversation(kind, body)
        if kind == "embeddings":
            inp = body.get("input")
            prompt = pricing.estimate_tokens(inp if isinstance(inp, str) else str(inp))
        else:
            prompt = pricing.estimate_prompt_tokens(msgs)
        out = self._out_tokens(kind, body)
        cands = [
            Candidate(
                n,
                self.models[n].tier,
                self.tier_rank[n],
                "",
                prompt * self.rates[n].input + out * self.rates[n].output,
            )
            for n in names
        ]
        return [c.name for c in self._under_ceiling(cands, max_cost, prompt, out)]

    @staticmethod
    def _above_floor(decision: Decision, cands: list[Candidate], floor: float) -> list[Candidate]:
        """x-tollgate-min-quality: the decision's order without the candidates the router
        predicts below `floor` (400 naming the best prediction when none reaches it); the
        candidates left, for exploration."""
        q = decision.quality
        order = [n for n in decision.order if q.get(n, 0.0) >= floor]
        if not order:
            best = max(cands, key=lambda c: (q.get(c.name, 0.0), -c.est_cost_usd))
            raise InvalidRequest(
                f"no model reaches x-tollgate-min-quality={floor:g}: the best predicted for "
                f"this request is {best.name!r} at {q.get(best.name, 0.0):.4f} (the router's "
                "predicted chance of an acceptable answer, 0-1; see x-tollgate-explain: 1); "
                "lower the floor",
                code="quality_floor",
            )
        decision.order = order
        decision.chosen = order[0]
        return [c for c in cands if q.get(c.name, 0.0) >= floor]

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
        """GET /v1/models: every name a client may send, with the kinds it serves (each
        `native` or `translated`: answered through chat by the gateway's translation)."""
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
                    "kinds": dict(self.support[m.name]),
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
                    "kinds": self._kinds_of(r.models),
                }
            )
        for name, pname in self.routed_names.items():
            out.append(
                {
                    "id": name,
                    "object": "model",
                    "created": 0,
                    "owned_by": "tollgate",
                    "kind": "router",
                    "policy": pname,
                    "models": list(self.candidates),
                    "kinds": {
                        k: how
                        for k, how in self._kinds_of(self.candidates).items()
                        if k in ROUTED_KINDS
                    },
                }
            )
        return out

    def _kinds_of(self, names: list[str]) -> dict[str, str]:
        """The kinds some of `names` serve: NATIVE when one of them serves it natively."""
        out: dict[str, str] = {}
        for k in KINDS:
            hows = {self.support[n].get(k) for n in names}
            if NATIVE in hows:
                out[k] = NATIVE
            elif TRANSLATED in hows:
                out[k] = TRANSLATED
        return out


def _endpoint(turn: Turn | None, model: str) -> int | None:
    """The endpoint to try first for `model`: the previous turn's, when it was this model."""
    return turn.endpoint if turn is not None and turn.model == model else None


def _path(kind: str) -> str:
    return "chat/completions" if kind == "chat" else kind


def conversation(kind: str, body: dict[str, Any]) -> list[Any]:
    """What the router reads of a request, as chat messages: a completions `prompt`, else
    the chat body's `messages` (the API faces' requests, /v1/responses and /v1/messages,
    reach the runtime translated to chat: gateway/api/face.py)."""
    if kind == "completions":
        p = body.get("prompt")
        if isinstance(p, list):
            p = "\n".join(x for x in p if isinstance(x, str))
        return [{"role": "user", "content": p}] if isinstance(p, str) else []
    return body.get("messages") or []
