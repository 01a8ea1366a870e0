"""Which router profile scores each configured model, and where that profile came from.

A model's `profile:` is optional. Without it the model is known by the name its upstream
serves (`endpoints[].model`, e.g. `gpt-4o-mini-2024-07-18`, `meta-llama/Llama-3.1-8B-Instruct`,
`llama3.1:8b`), else by its public name, through `router_models.identity`: a profile fitted on
data for that model, its named default snapshot, the nearest snapshot of its family, or a
prior placed from its leaderboard rating. A model the router is told to choose among
(`router.candidates`) that nothing is known about gets a prior placed from its tier and price;
the config is refused only where not even that can be placed.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from gateway.accounting import pricing
from gateway.config import ConfigError, ModelConfig, RoutingConfig, close_names

# the routing file's tiers as the identity catalog's size classes ("external" says nothing)
_TIER_HINT = {"small": "small", "medium": "medium", "large": "large"}


@dataclass(frozen=True, slots=True)
class ModelProfile:
    """How the router scores one configured model."""

    model: str  # the public model name
    resolved_from: str  # the name that was looked up: profile:, an upstream model, the name
    profile: str  # the router profile it is scored with
    source: str  # data | snapshot | nearest-snapshot | prior | default
    detail: str  # one line: how that profile was found

    def as_dict(self) -> dict[str, str]:
        return {
            "profile": self.profile,
            "source": self.source,
            "resolved_from": self.resolved_from,
            "detail": self.detail,
        }


def routable(m: ModelConfig) -> bool:
    """Whether the router may send a conversation to `m` (a chat model, or an
    Anthropic-style messages model)."""
    return "chat" in m.kinds or "messages" in m.kinds


def _lookup_names(m: ModelConfig) -> list[str]:
    names: list[str] = []
    for n in [*(ep.model for ep in m.endpoints if ep.model), m.name]:
        if n and n not in names:
            names.append(n)
    return names


def _hints(m: ModelConfig) -> dict[str, Any]:
    """Tier and list price per million tokens, for placing a prior nothing else can place."""
    out: dict[str, Any] = {"tier": _TIER_HINT.get(m.tier)}
    p = pricing.resolve_pricing(m)
    if p is not None:
        r = pricing.rates(p)
        if r.input > 0 or r.output > 0:
            out["price_in"], out["price_out"] = r.input * 1e6, r.output * 1e6
    return out


def known_models(cfg: RoutingConfig) -> int:
    """How many chat models the identity catalog knows by name (no router needed)."""
    from router_models.identity import identify

    return sum(
        1
        for m in cfg.models
        if routable(m) and any(identify(n).entry is not None for n in _lookup_names(m))
    )


def wants_router(cfg: RoutingConfig) -> bool:
    """Whether the config routes: a model names a profile, `router.candidates` is set, or two
    chat models are models the catalog knows (so `auto` has something to choose between)."""
    if any(m.profile for m in cfg.models) or cfg.router.candidates:
        return True
    return known_models(cfg) >= 2


def resolve_profiles(
    cfg: RoutingConfig, router: Any, source: str = "the routing file"
) -> dict[str, ModelProfile]:
    """The profile of every chat model that has one (installing placed priors into `router`).

    Raises ConfigError, naming the field and the fix, for a `profile:` the router cannot place
    and for a `router.candidates` model that no prior can be placed for.
    """
    from router_models.identity import identify, resolve, resolve_hinted

    listed = set(cfg.router.candidates or ())
    out: dict[str, ModelProfile] = {}
    problems: list[str] = []
    for i, m in enumerate(cfg.models):
        if not routable(m):
            continue
        if m.profile:
            # a named profile must be one the artifact has, or a model the catalog knows: a
            # prior placed from nothing but the spelling (a typo's "70b") would hide the typo
            res = resolve(m.profile, router)
            if res.source == "default" or (
                res.source == "prior" and identify(m.profile).entry is None
            ):
                problems.append(_unknown_profile(i, m.profile, router, cfg.router.artifact))
                continue
            out[m.name] = _install(m.name, m.profile, res, router)
            continue
        found = None
        for name in _lookup_names(m):
            res = resolve(name, router)
            if res.source != "default":
                found = (name, res)
                break
        if found is None and m.name in listed:
            name = _lookup_names(m)[0]
            res = resolve_hinted(name, router, **_hints(m))
            if res.source == "default":
                problems.append(
                    f"models[{i}] ({m.name!r}) is a router candidate, but nothing is known "
                    f"about {name!r}: no profile, rating, tier or price; set "
                    f"models[{i}].profile to the model it resembles (`tollgate router eval` "
                    "lists profiles), give it a pricing block, or leave it out of "
                    "router.candidates"
                )
                continue
            found = (name, res)
        if found is not None:
            out[m.name] = _install(m.name, found[0], found[1], router)
    if problems:
        raise ConfigError(source, problems)
    return out


def _install(model: str, asked: str, res: Any, router: Any) -> ModelProfile:
    return ModelProfile(model, asked, res.install(router), res.source, res.detail)


def _unknown_profile(i: int, profile: str, router: Any, artifact: str) -> str:
    known: Iterable[str] = router.profiles
    close = close_names(profile, list(known))
    hint = (
        "did you mean " + " or ".join(repr(c) for c in close) + "?"
        if close
        else "check its spelling, or remove `profile:` to let Tollgate find the model by "
        "its upstream name"
    )
    return (
        f"models[{i}].profile: {profile!r} is not a profile of the router artifact "
        f"{artifact!r} ({len(router.profiles)} profiles), nor a model it can place a prior "
        f"for; {hint} (for a model the artifact does not know, fit one with "
        "`tollgate router profile`)"
    )
