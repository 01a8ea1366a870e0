"""Canonical model identities, and which router profile stands for a model (`resolve`).

The router's artifact holds one profile (an ability vector and a bias) per model it was fitted
on, under whatever names its training data used (`gpt4_1106_preview`, `llama-3.1-8b-instruct`,
`Meta-Llama-3_1-8B-Instruct`, ...). Operators name models the way their provider does
(`openai/gpt-4o-mini`, `meta-llama/Llama-3.1-8B-Instruct`, `llama3.1:8b`, `claude-3.5-sonnet`).
This module matches the two by canonical identity, never by a list of the artifact's profiles.

Public API (what the gateway uses)
----------------------------------
``resolve(name: str, router: Router, catalog: Catalog | None = None) -> Resolution``
    Which profile of `router` stands for the model `name`. Never raises for an unknown name.
    The result depends only on `name`, the router's data-backed profiles and the catalog:
    never on the order models are listed, nor on priors installed earlier.

``Resolution`` (frozen dataclass)
    ``requested``  the name as given;
    ``canonical``  its canonical identity (lowercase, no provider prefix, dots in versions, the
                   dated snapshot where one is named), e.g. ``gpt-4o-2024-08-06``;
    ``profile``    the router profile to score it with: an artifact profile, or for a prior
                   ``prior:<canonical id>`` (call ``install`` before scoring with it);
    ``source``     one of ``SOURCES``:
        ``data``              a profile fitted on scored data for this very model (exact name,
                              or the same canonical identity under another spelling);
        ``snapshot``          an undated alias (``gpt-4o``) whose named default snapshot
                              (``gpt-4o-2024-08-06``) has a profile;
        ``nearest-snapshot``  a dated model without data, scored with the profile of the
                              nearest dated snapshot of its family that has data;
        ``prior``             no data anywhere: a profile placed from what is known of the
                              model (leaderboard rating, else size/tier, else price) by a
                              weighted local-linear fit of the data-backed profiles on that
                              quantity (see ``place_prior``); a real profile, flagged as a prior;
        ``default``           nothing known: the artifact's default weak profile. NOT a profile
                              of this model; every such model scores the same.
    ``detail``     one line saying how (for logs, `check-config`, the explain header);
    ``real``       False only for ``default``; ``data_backed`` True for ``data``/``snapshot``;
    ``vector``, ``bias``  the placed (ability, bias) of a prior, else None.

``Resolution.install(router) -> str`` / ``install(router, resolution) -> str``
    Put a prior's profile into a loaded router (``Router.set_profile``) so it is scored like any
    other profile; returns the profile name to score with (for every source). Idempotent.

``resolve_all(names, router) -> dict[str, Resolution]``   each name resolved independently.
``identify(name) -> Identity`` / ``canonical(name) -> str``   the identity alone, no router
    (``Identity``: ``name``, ``id``, ``family``, ``date``, ``how``, the catalog ``entry``).
``load_catalog(path=None) -> Catalog``   the shipped catalog (``model_catalog.json``).
``eval_profiles(router, names, explicit, roles, strict, out) -> dict[str, str]``   what
    `tollgate router eval` prints and uses (``--strict`` refuses all but ``DATA_BACKED``).

Gateway integration (to do, outside this module): at config load, for each candidate model
``res = resolve(model.profile or model.name, router)``; ``prof = res.install(router)``; score
with ``prof``. `check-config` and /v1/models can show ``res.source`` and ``res.detail``; the
explain header ``res.source``; a strict mode refuses ``not res.data_backed``; a ``default``
deserves a warning (that model scores like every other unknown one). Install priors into the
router object the gateway scores with; resolve again after an artifact reload.

How a prior is placed (``place_prior``): tried in order, the model's own leaderboard rating
(Arena Elo hard-en, WB_Elo, AlpacaEval 2 LC; a rating on a scale the fitted profiles are not
rated on is read on one they are by a least-squares line over the catalog models rated on
both), the rating of the nearest rated snapshot of its family (the prior is then that
snapshot's, shared), its parameter count, its tier, its list price. On the chosen quantity the
data-backed profiles that have it are the anchors (at least ``MIN_ANCHORS``; the scale and
dataset group with the most anchors win): their (ability, bias) rows get a Gaussian-weighted
local-linear fit on it, read at the model's value (beyond the anchors' range: the edge's line,
log-compressed, so order is kept and extrapolation stays short). Leave-one-out on the shipped
artifact (``scripts/check_priors.py``): for the 40 AlpacaEval profiles placed as priors the
mean |predicted quality - fitted profile's| on held-out prompts is 0.016, against 0.040 for
the default weak profile and 0.035 for the average profile; for the 9 LLMRouter profiles it
is 0.23 against 0.21 for the default: their label (graded correctness) is on another scale
than the AlpacaEval profiles every leaderboard-rated anchor comes from, so a prior is only as
comparable with them as the artifact's labels are.

Determinism: a prior is a pure function of its model's catalog facts and the router's
data-backed profiles (sorted by name); its bias carries a tie-breaker of at most 5e-10 derived
from the canonical id, so two different models never get bit-identical raw predictions (the
link in ``Router.quality`` can still make them equal on a prompt where both saturate: the
identity link's clipping at 0.001/0.999, a logistic link beyond |raw| = 30).

Artifact profile metadata (optional): ``router.meta["profile_meta"][profile]`` (also read:
``profiles_meta``) may hold ``datasets`` (list of dataset names the profile was fitted on) and
``n_prompts`` (scored prompts); resolve() quotes them in ``detail``. Without it, the sources
in the artifact's ``trained_on`` whose copied data (router_models/data/<source>.json.gz) lists
the profile's model (by identity) stand in. For an artifact of per-profile regressions
(``link`` "identity", the default) a prior is fitted only on profiles sharing the same
datasets, so label scales of different datasets are never mixed; for a joint model
(``meta["link"]`` "logistic": one scale, per-source offsets left out) on all profiles.
"""

from __future__ import annotations

import datetime as dt
import gzip
import hashlib
import json
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from router_models.model import Router

CATALOG_PATH = Path(__file__).resolve().parent / "model_catalog.json"
PRIOR_PREFIX = "prior:"
SOURCES = ("data", "snapshot", "nearest-snapshot", "prior", "default")
DATA_BACKED = frozenset({"data", "snapshot"})
# Leaderboard scales, in order of preference when two have equally many anchors.
LEADERBOARD_SCALES = ("arena_elo_hard_en", "wb_elo", "ae2_lc")
TIERS = {"small": 1.0, "medium": 2.0, "large": 3.0, "frontier": 4.0}
MIN_ANCHORS = 3
_TIE_BREAK = 1e-9

# -- names ------------------------------------------------------------------------------------

_BEDROCK_VERSION = re.compile(r"-v\d+(?::\d+)?$")
_BEDROCK_VENDOR = re.compile(r"^(?:anthropic|meta|mistral|cohere|amazon|ai21|google|openai)\.")
_OLLAMA_QUANT = re.compile(r"-(?:q\d\w*|iq\d\w*|fp16|fp32|f16|bf16|int4|int8)$")
_OLLAMA_KIND = re.compile(r"-(?:instruct|chat|it)$")
_SERVING_SUFFIX = re.compile(r"-(?:hf|gguf|awq|gptq)$")
_DATES = (
    re.compile(r"^(?P<base>.+?)-(?P<y>20\d\d)-(?P<m>[01]\d)-(?P<d>[0-3]\d)$"),
    re.compile(r"^(?P<base>.+?)-(?P<y>20\d\d)(?P<m>[01]\d)(?P<d>[0-3]\d)$"),
)
_PARAMS_MOE = re.compile(r"(?<![\w.])(\d+)x(\d+(?:\.\d+)?)b(?![a-z])")
_PARAMS = re.compile(r"(?<![\w.])(\d+(?:\.\d+)?)b(?![a-z])")
_PARAMS_M = re.compile(r"(?<![\w.])(\d+(?:\.\d+)?)m(?![a-z])")


def display_form(name: str) -> str:
    """A name without provider prefix, serving suffix or quantization, lowercase, `_` as `-`.

    `meta-llama/Meta-Llama-3.1-8B-Instruct` and `Meta-Llama-3_1-8B-Instruct` ->
    `llama-3.1-8b-instruct`;
    `llama3.1:8b-instruct-q4_K_M` -> `llama3.1:8b` (Ollama tags keep their colon: `llama3.1:8b`
    names the instruct model, `llama-3.1-8b` the base model; `llama3.1:latest` -> `llama3.1:`);
    `anthropic.claude-3-haiku-20240307-v1:0` -> `claude-3-haiku-20240307`;
    `dbrx-instruct@together` -> `dbrx-instruct`.
    """
    s = name.strip().lower().replace(" ", "-")
    s = _BEDROCK_VERSION.sub("", s) if _BEDROCK_VENDOR.match(s.rsplit("/", 1)[-1]) else s
    s = s.rsplit("/", 1)[-1]
    s = s.split("@", 1)[0]
    s = _BEDROCK_VENDOR.sub("", s)
    if ":" in s:
        base, tag = s.split(":", 1)
        tag = _OLLAMA_KIND.sub("", _OLLAMA_QUANT.sub("", tag)).replace("_", "-")
        s = f"{base}:" if tag in ("", "latest") else f"{base}:{tag}"
    s = re.sub(r"(?<=\d)_(?=\d)", ".", s).replace("_", "-")
    s = _SERVING_SUFFIX.sub("", s)
    if s.startswith("meta-llama-"):
        s = s[len("meta-") :]
    return s


def loose_key(name: str) -> str:
    """The matching key: the display form with every separator removed (`claude-3.5-sonnet`,
    `claude-3-5-sonnet` and `Claude_3_5_Sonnet` are one key); an Ollama tag keeps its colon."""
    return re.sub(r"[^a-z0-9:]", "", display_form(name))


def split_date(display: str) -> tuple[str, str] | None:
    """(family base, ISO date) of a dated snapshot name (`-2024-08-06` or `-20240620`)."""
    for rx in _DATES:
        m = rx.match(display)
        if m:
            y, mo, d = int(m["y"]), int(m["m"]), int(m["d"])
            if 1 <= mo <= 12 and 1 <= d <= 31:
                return m["base"], f"{y:04d}-{mo:02d}-{d:02d}"
    return None


def params_from_name(display: str) -> float | None:
    """Parameter count in billions named in a model name (`-70b`, `8x7b`, `-270m`), else None."""
    m = _PARAMS_MOE.search(display)
    if m:
        return float(m[1]) * float(m[2])
    text = display.split(":", 1)[-1] if ":" in display else display
    m = _PARAMS.search(text)
    if m:
        return float(m[1])
    m = _PARAMS_M.search(text)  # `-270m`: millions, when no billions are named
    return float(m[1]) / 1000.0 if m else None


# -- the catalog --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Entry:
    """One model of the catalog (see model_catalog.json's "provenance")."""

    id: str
    family: str | None = None
    date: str | None = None
    aliases: tuple[str, ...] = ()
    ratings: tuple[tuple[str, float], ...] = ()
    params_b: float | None = None
    tier: str | None = None
    price_in: float | None = None
    price_out: float | None = None

    def rating(self, scale: str) -> float | None:
        return dict(self.ratings).get(scale)


@dataclass(frozen=True)
class Family:
    name: str
    default: str | None
    aliases: tuple[str, ...] = ()
    note: str = ""


@dataclass(frozen=True)
class Identity:
    """What a name means, without looking at any router."""

    name: str  # as requested
    id: str  # canonical id
    family: str | None  # family base (catalog family, or the name without its date)
    date: str | None  # ISO date of a dated snapshot
    how: str  # "catalog" | "alias" | "family-alias" | "dated" | "name"
    entry: Entry | None = field(default=None, compare=False, repr=False)
    undated_alias: str | None = None  # the family alias that named the default snapshot


class Catalog:
    """Families and models of model_catalog.json, indexed by `loose_key`."""

    def __init__(self, doc: dict[str, Any], path: str = "<memory>") -> None:
        if doc.get("format") != "tollgate-model-catalog":
            raise ValueError(f"{path}: not a tollgate-model-catalog file")
        self.path = path
        self.models: dict[str, Entry] = {}
        for mid, m in sorted(doc.get("models", {}).items()):
            price = m.get("price_per_mtok") or {}
            self.models[mid] = Entry(
                id=mid,
                family=m.get("family"),
                date=m.get("date"),
                aliases=tuple(m.get("aliases", ())),
                ratings=tuple(sorted((k, float(v)) for k, v in m.get("ratings", {}).items())),
                params_b=m.get("params_b"),
                tier=m.get("tier"),
                price_in=price.get("input"),
                price_out=price.get("output"),
            )
        self.families: dict[str, Family] = {
            name: Family(name, f.get("default"), tuple(f.get("aliases", ())), f.get("note", ""))
            for name, f in sorted(doc.get("families", {}).items())
        }
        self._models: dict[str, str] = {}
        self._families: dict[str, str] = {}
        for mid, e in self.models.items():  # sorted: a clash resolves the same way every time
            for n in (mid, *e.aliases):
                self._models.setdefault(loose_key(n), mid)
        for name, fam in self.families.items():
            for n in (name, *fam.aliases):
                k = loose_key(n)
                if k not in self._models:
                    self._families.setdefault(k, name)

    def identify(self, name: str) -> Identity:
        """The canonical identity of `name` (never raises)."""
        disp = display_form(name)
        key = loose_key(name)
        mid = self._models.get(key)
        if mid is not None:
            e = self.models[mid]
            how = "catalog" if loose_key(mid) == key else "alias"
            return Identity(name, mid, self._family_of(e), e.date, how, e)
        fname = self._families.get(key)
        if fname is not None:
            fam = self.families[fname]
            if fam.default is not None and fam.default in self.models:
                e = self.models[fam.default]
                return Identity(name, e.id, fname, e.date, "family-alias", e, undated_alias=fname)
        dated = split_date(disp)
        if dated is not None:
            base, date = dated
            fname = self._families.get(loose_key(base))
            return Identity(name, disp, fname or base, date, "dated")
        return Identity(name, disp, None, None, "name")

    def _family_of(self, e: Entry) -> str | None:
        if e.family:
            return e.family
        dated = split_date(e.id)
        return dated[0] if dated else None

    def members(self, family: str) -> list[Entry]:
        return [e for e in self.models.values() if self._family_of(e) == family]


@lru_cache(maxsize=4)
def _load(path: str) -> Catalog:
    return Catalog(json.loads(Path(path).read_text(encoding="utf-8")), path)


def load_catalog(path: str | Path | None = None) -> Catalog:
    """The shipped catalog (`router_models/model_catalog.json`), or the one at `path`."""
    return _load(str(Path(path) if path is not None else CATALOG_PATH))


def identify(name: str, catalog: Catalog | None = None) -> Identity:
    return (catalog or load_catalog()).identify(name)


def canonical(name: str, catalog: Catalog | None = None) -> str:
    """The canonical id of `name`: `openai/gpt-4o-mini` -> `gpt-4o-mini-2024-07-18`."""
    return identify(name, catalog).id


# -- resolution ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Resolution:
    """Which router profile stands for a model, and why (see the module docstring)."""

    requested: str
    canonical: str
    profile: str
    source: str
    detail: str
    vector: tuple[float, ...] | None = field(default=None, repr=False)
    bias: float | None = field(default=None, repr=False)

    @property
    def real(self) -> bool:
        """A profile of this model (fitted or placed); False for the shared default."""
        return self.source != "default"

    @property
    def data_backed(self) -> bool:
        return self.source in DATA_BACKED

    def install(self, router: Router) -> str:
        return install(router, self)


def install(router: Router, res: Resolution) -> str:
    """Put a prior's placed profile into `router` (replacing one of the same name); returns the
    profile name to score `res.requested` with. A no-op for every other source."""
    if res.source == "prior":
        if res.vector is None or res.bias is None:
            raise ValueError(f"prior resolution of {res.requested!r} carries no vector")
        router.set_profile(res.profile, np.array(res.vector, dtype=np.float64), res.bias)
    return res.profile


@dataclass(frozen=True)
class _Anchor:
    profile: str
    ident: Identity
    group: tuple[str, ...]  # datasets it was fitted on (from the artifact's metadata), or ()


class _Context:
    """A router's data-backed profiles (never the priors installed into it), by identity."""

    def __init__(self, router: Router, cat: Catalog) -> None:
        self.router = router
        self.cat = cat
        self.names = sorted(p for p in router.profiles if not p.startswith(PRIOR_PREFIX))
        idents = {p: cat.identify(p) for p in self.names}
        self.by_key: dict[str, list[str]] = {}
        for p in self.names:
            self.by_key.setdefault(loose_key(idents[p].id), []).append(p)
        self.meta = _profile_meta(router, self)
        # Per-profile regressions (the identity link) keep each dataset's label scale, so a
        # prior is fitted within one dataset group; a joint model (logistic link) puts every
        # profile on one scale (its per-source offsets are left out at inference): no groups.
        self.joint = str(router.meta.get("link", getattr(router, "link", "identity"))) != "identity"
        self.anchors = [
            _Anchor(p, idents[p], () if self.joint else _datasets(self.meta.get(p)))
            for p in self.names
        ]

    def profile_for(self, ident: Identity) -> str | None:
        """The data-backed profile of this identity (same canonical id, compared by loose key):
        the one named exactly as the canonical id, else the first by name."""
        cands = self.by_key.get(loose_key(ident.id))
        if not cands:
            return None
        return ident.id if ident.id in cands else cands[0]

    def fitted(self, profile: str) -> str:
        info = self.meta.get(profile) or {}
        ds = _datasets(info)
        n = info.get("n_prompts", info.get("n_scored", info.get("prompts")))
        parts = []
        if ds:
            parts.append("on " + "+".join(ds))
        if isinstance(n, int | float):
            parts.append(f"{int(n)} scored prompts")
        return f" (fitted {', '.join(parts)})" if parts else ""


def _profile_meta(router: Router, ctx: _Context) -> dict[str, dict[str, Any]]:
    """Per-profile metadata of the artifact; for an artifact without it, which of the copied
    training sources it was trained on (`trained_on`) list each profile's model (by identity)."""
    for key in ("profile_meta", "profiles_meta"):
        m = router.meta.get(key)
        if isinstance(m, dict):
            return {str(k): v for k, v in m.items() if isinstance(v, dict)}
    out: dict[str, dict[str, Any]] = {}
    sources = router.meta.get("trained_on")
    if isinstance(sources, list):
        for src in sorted(str(x) for x in sources):
            for model in _source_models(src):
                prof = ctx.profile_for(ctx.cat.identify(model))
                if prof is not None:
                    ds = out.setdefault(prof, {"datasets": []})["datasets"]
                    if src not in ds:
                        ds.append(src)
    return out


@lru_cache(maxsize=16)
def _source_models(source: str) -> tuple[str, ...]:
    from router_models.data import DATA_DIR  # numpy-only, but not needed unless asked

    path = DATA_DIR / f"{source}.json.gz"
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", source) or not path.is_file():
        return ()
    try:
        with gzip.open(path, "rt", encoding="utf-8") as f:
            models = json.load(f).get("models", [])
    except (OSError, ValueError):
        return ()
    return tuple(str(m) for m in models)


def _datasets(info: dict[str, Any] | None) -> tuple[str, ...]:
    if not info:
        return ()
    ds = info.get("datasets", info.get("trained_on", info.get("sources")))
    if isinstance(ds, str):
        return (ds,)
    if isinstance(ds, list | tuple):
        return tuple(sorted(str(d) for d in ds))
    return ()


def _days(a: str, b: str) -> int:
    return abs((dt.date.fromisoformat(a) - dt.date.fromisoformat(b)).days)


def resolve(name: str, router: Router, catalog: Catalog | None = None) -> Resolution:
    """The profile of `router` that stands for model `name` (see the module docstring)."""
    cat = catalog or load_catalog()
    return _resolve(name, _Context(router, cat))


def resolve_all(
    names: Iterable[str], router: Router, catalog: Catalog | None = None
) -> dict[str, Resolution]:
    """Each name resolved on its own (the result never depends on the order of `names`)."""
    ctx = _Context(router, catalog or load_catalog())
    return {n: _resolve(n, ctx) for n in sorted(set(names))}


def resolve_hinted(
    name: str,
    router: Router,
    *,
    tier: str | None = None,
    price_in: float | None = None,
    price_out: float | None = None,
    catalog: Catalog | None = None,
) -> Resolution:
    """`resolve`, and where that finds nothing (`default`), a prior placed from what the
    caller knows of the model: its tier (small / medium / large / frontier) and its list price
    per million input and output tokens, e.g. from the gateway's routing file."""
    cat = catalog or load_catalog()
    ctx = _Context(router, cat)
    res = _resolve(name, ctx)
    if res.source != "default" or (tier not in TIERS and (price_in is None or price_out is None)):
        return res
    ident = cat.identify(name)
    base = _entry(ident, cat)
    hinted = Entry(
        **{
            **base.__dict__,
            "tier": base.tier or (tier if tier in TIERS else None),
            "price_in": base.price_in if base.price_in is not None else price_in,
            "price_out": base.price_out if base.price_out is not None else price_out,
        }
    )
    placed = place_prior(replace(ident, entry=hinted), ctx)
    if placed is None:
        return res
    target, v, b, how = placed
    return Resolution(
        name,
        ident.id,
        PRIOR_PREFIX + target,
        "prior",
        f"PRIOR, no scored data: {how}",
        tuple(float(x) for x in v),
        b,
    )


def _resolve(name: str, ctx: _Context) -> Resolution:
    router, cat = ctx.router, ctx.cat
    if name in ctx.names:
        canon = cat.identify(name).id
        return Resolution(name, canon, name, "data", f"profile {name!r}{ctx.fitted(name)}")
    ident = cat.identify(name)
    prof = ctx.profile_for(ident)
    if prof is not None:
        if ident.how == "family-alias":
            return Resolution(
                name,
                ident.id,
                prof,
                "snapshot",
                f"undated {ident.undated_alias!r} names the snapshot {ident.id}; its profile "
                f"{prof!r}{ctx.fitted(prof)}",
            )
        return Resolution(
            name,
            ident.id,
            prof,
            "data",
            f"{name!r} is {ident.id}; profile {prof!r}{ctx.fitted(prof)}",
        )
    near = _nearest_snapshot(ident, ctx)
    if near is not None:
        prof, date = near
        what = (
            f"undated {ident.undated_alias!r} names {ident.id}, which has no data"
            if ident.how == "family-alias"
            else f"{ident.id} has no data"
        )
        return Resolution(
            name,
            ident.id,
            prof,
            "nearest-snapshot",
            f"{what}; scored with the nearest dated snapshot of {ident.family} that has data, "
            f"{prof!r} ({date}, {_days(date, ident.date or date)} days away){ctx.fitted(prof)}",
        )
    placed = place_prior(ident, ctx)
    if placed is not None:
        target, v, b, how = placed
        vec = tuple(float(x) for x in v)
        return Resolution(
            name, ident.id, PRIOR_PREFIX + target, "prior", f"PRIOR, no scored data: {how}", vec, b
        )
    return Resolution(
        name,
        ident.id,
        router.default_weak,
        "default",
        f"DEFAULT: nothing known about {ident.id!r} (no profile, no rating, size, tier or price); "
        f"the artifact's default weak profile {router.default_weak!r}, not a profile of this model",
    )


def _nearest_snapshot(ident: Identity, ctx: _Context) -> tuple[str, str] | None:
    """(profile, date) of the family's dated snapshot with data nearest to `ident.date`; a tie
    goes to the older snapshot, then to the profile name."""
    if ident.family is None or ident.date is None:
        return None
    best: tuple[int, str, str] | None = None
    for a in ctx.anchors:
        if a.ident.family == ident.family and a.ident.date is not None:
            cand = (_days(a.ident.date, ident.date), a.ident.date, a.profile)
            if best is None or cand < best:
                best = cand
    return (best[2], best[1]) if best is not None else None


# -- priors ---------------------------------------------------------------------------------------


def _entry(ident: Identity, cat: Catalog) -> Entry:
    """The catalog entry, or what the name itself tells (its parameter count)."""
    if ident.entry is not None:
        e = ident.entry
        if e.params_b is None:
            e = Entry(**{**e.__dict__, "params_b": params_from_name(e.id)})
        return e
    return Entry(
        id=ident.id, family=ident.family, date=ident.date, params_b=params_from_name(ident.id)
    )


def _scale_value(e: Entry, scale: str) -> float | None:
    if scale in LEADERBOARD_SCALES:
        return e.rating(scale)
    if scale == "log_params_b":
        return math.log(e.params_b) if e.params_b and e.params_b > 0 else None
    if scale == "tier":
        return TIERS.get(e.tier or "")
    if scale == "log_price":
        if e.price_in is None or e.price_out is None:
            return None
        blended = (3.0 * float(e.price_in) + float(e.price_out)) / 4.0
        return math.log(blended) if blended > 0 else None
    raise ValueError(scale)


_SCALE_WORDS = {
    "arena_elo_hard_en": "Arena Elo (hard-en)",
    "wb_elo": "WB_Elo",
    "ae2_lc": "AlpacaEval 2 LC win rate",
    "log_params_b": "log parameter count",
    "tier": "tier",
    "log_price": "log list price",
}


def _best_fit(
    value_of: dict[str, float], scales: tuple[str, ...], ctx: _Context
) -> tuple[str, tuple[str, ...], list[tuple[str, float]]] | None:
    """(scale, dataset group, anchors) with the most data-backed anchors on one of `scales`."""
    best: tuple[int, int, tuple[str, ...]] | None = None
    found: tuple[str, tuple[str, ...], list[tuple[str, float]]] | None = None
    for si, scale in enumerate(scales):
        if scale not in value_of:
            continue
        groups: dict[tuple[str, ...], list[tuple[str, float]]] = {}
        for a in ctx.anchors:
            x = _scale_value(_entry(a.ident, ctx.cat), scale)
            if x is not None:
                groups.setdefault(a.group, []).append((a.profile, x))
        for g in sorted(groups):
            pts = groups[g]
            if len({x for _, x in pts}) < 2 or len(pts) < MIN_ANCHORS:
                continue
            rank = (-len(pts), si, g)
            if best is None or rank < best:
                best, found = rank, (scale, g, pts)
    return found


def _local_linear(xs: np.ndarray, ys: np.ndarray, x0: float) -> tuple[np.ndarray, float]:
    """Gaussian-weighted local-linear fit of the rows `ys` on `xs` (bandwidth: the anchors'
    standard deviation), read at `x0`; beyond the anchors' range `x0` is read log-compressed,
    edge + c * log1p(excess / c) with c a quarter of the range, on the line fitted at the edge,
    so the order of two models beyond the edge is kept while the extrapolation stays short."""
    lo, hi = float(xs.min()), float(xs.max())
    c = 0.25 * (hi - lo) or 1.0
    x = x0
    if x0 > hi:
        x = hi + c * math.log1p((x0 - hi) / c)
    elif x0 < lo:
        x = lo - c * math.log1p((lo - x0) / c)
    centre = min(max(x, lo), hi)  # beyond the range: the line fitted at the edge, extended
    bw = float(xs.std()) or 1.0
    w = np.exp(-0.5 * ((xs - centre) / bw) ** 2)
    d = np.stack([np.ones_like(xs), xs - centre], axis=1)
    a = d.T @ (w[:, None] * d) + 1e-9 * np.eye(2)
    coef = np.linalg.solve(a, d.T @ (w[:, None] * ys))
    return coef[0] + coef[1] * (x - centre), x


def place_prior(ident: Identity, ctx: _Context) -> tuple[str, np.ndarray, float, str] | None:
    """(identity the prior is placed for, ability, bias, one-line how) or None.

    Tried in order: the model's own leaderboard rating; the rating of the nearest rated
    snapshot of its family (the prior then is that snapshot's, shared); its parameter count,
    tier, list price. On each quantity the data-backed profiles that have it are the anchors
    (those of one dataset group when the artifact says which datasets each was fitted on; the
    scale and group with the most anchors win, at least MIN_ANCHORS): their (ability, bias) rows
    are fitted on it by `_local_linear` and read at the model's value.
    """
    cat = ctx.cat
    own = _entry(ident, cat)
    targets: list[tuple[Entry, tuple[str, ...], str]] = [(own, LEADERBOARD_SCALES, "")]
    if ident.family is not None and not any(own.rating(s) is not None for s in LEADERBOARD_SCALES):
        sibs = [
            e
            for e in cat.members(ident.family)
            if e.id != own.id and any(e.rating(s) is not None for s in LEADERBOARD_SCALES)
        ]
        ref = own.date or "9999-12-31"
        sibs.sort(key=lambda e: (_days(e.date, ref) if e.date else 10**6, e.date or "", e.id))
        for e in sibs:
            targets.append((e, LEADERBOARD_SCALES, f"{ident.id} has no rating; its family's "))
    targets.append((own, ("log_params_b",), ""))
    targets.append((own, ("tier",), ""))
    targets.append((own, ("log_price",), ""))
    for e, scales, lead in targets:
        values = {s: x for s in scales if (x := _scale_value(e, s)) is not None}
        if not values:
            continue
        bridges = _bridges(values, scales, cat) if scales == LEADERBOARD_SCALES else {}
        fit = _best_fit({**{s: x for s, (x, _) in bridges.items()}, **values}, scales, ctx)
        if fit is None:
            continue
        scale, group, pts = fit
        bridge = ""
        if scale not in values:
            x, bridge = bridges[scale]
            values = {**values, scale: x}
        rows = []
        for p, _ in pts:
            v, b = ctx.router.profile_vector(p)
            rows.append(np.append(v, b))
        xs = np.array([x for _, x in pts], dtype=np.float64)
        vb, x_used = _local_linear(xs, np.array(rows), values[scale])
        v, b = vb[:-1], float(vb[-1]) + _tie_break(e.id)
        shown = _show(scale, values[scale])
        clamp = (
            ""
            if x_used == values[scale]
            else f" (beyond the anchors: read at {_show(scale, x_used)})"
        )
        near = sorted(pts, key=lambda t: (abs(t[1] - values[scale]), t[0]))[:3]
        subject = f"nearest rated snapshot {e.id}" if lead else e.id
        how = (
            f"{lead}{subject}: {bridge}{_SCALE_WORDS[scale]} {shown}{clamp}, placed among "
            f"{len(pts)} profiles{' fitted on ' + '+'.join(group) if group else ''} by their "
            f"{_SCALE_WORDS[scale]} (nearest: "
            f"{', '.join(f'{p} {_show(scale, x)}' for p, x in near)})"
        )
        return e.id, v, b, how
    return None


MIN_BRIDGE = 8


def _bridges(
    values: dict[str, float], scales: tuple[str, ...], cat: Catalog
) -> dict[str, tuple[float, str]]:
    """For each leaderboard scale the model is not rated on: its rating there, read off a
    least-squares line over the catalog models rated on both that scale and one the model is
    rated on (the one with the most such models, at least MIN_BRIDGE), and how."""
    out: dict[str, tuple[float, str]] = {}
    for to in scales:
        if to in values:
            continue
        best: tuple[int, int, str, np.ndarray, np.ndarray] | None = None
        for si, frm in enumerate(scales):
            if frm not in values:
                continue
            pairs = [
                (a, b)
                for e in cat.models.values()
                if (a := e.rating(frm)) is not None and (b := e.rating(to)) is not None
            ]
            if len(pairs) >= MIN_BRIDGE and (best is None or (-len(pairs), si) < best[:2]):
                arr = np.array(pairs, dtype=np.float64)
                best = (-len(pairs), si, frm, arr[:, 0], arr[:, 1])
        if best is None:
            continue
        _, _, frm, xa, xb = best
        slope, icpt = np.polyfit(xa, xb, 1)
        r = float(np.corrcoef(xa, xb)[0, 1])
        x = float(icpt + slope * values[frm])
        out[to] = (
            x,
            f"{_SCALE_WORDS[frm]} {_show(frm, values[frm])} read as {_SCALE_WORDS[to]} "
            f"(linear over {len(xa)} catalog models rated on both, r={r:.2f}) = ",
        )
    return out


def _show(scale: str, x: float) -> str:
    if scale == "log_params_b":
        return f"{math.exp(x):.3g}B"
    if scale == "log_price":
        return f"${math.exp(x):.3g}/Mtok"
    if scale == "tier":
        name = next((k for k, v in TIERS.items() if v == x), None)
        return name or f"{x:.2f} (1 small .. 4 frontier)"
    return f"{x:.4g}"


def _tie_break(canonical_id: str) -> float:
    """A bias offset in [-5e-10, 5e-10), a function of the canonical id alone: two different
    priors placed at the same point never give bit-identical predictions."""
    h = int.from_bytes(hashlib.sha256(canonical_id.encode("utf-8")).digest()[:4], "big")
    return _TIE_BREAK * (h / 2**32 - 0.5)


# -- `tollgate router eval` -----------------------------------------------------------------------


def eval_profiles(
    router: Router,
    names: list[str],
    explicit: dict[str, str],
    roles: dict[str, str],
    strict: bool,
    out: TextIO,
) -> dict[str, str]:
    """Model name -> profile for `router eval`: --profile first, else `resolve`; prints each
    model's profile and source, installs priors, and with `strict` refuses (SystemExit) any model
    whose profile is not data-backed. A `default` falls back to the router's default profile
    of the model's role (strong/weak), as eval always did."""
    mapping: dict[str, str] = {}
    refused: list[str] = []
    ctx = _Context(router, load_catalog())
    for name in names:
        if name in explicit:
            prof = explicit[name]
            if not router.has_profile(prof):
                raise KeyError(
                    f"--profile {name}={prof}: no such profile; known: {', '.join(router.profiles)}"
                )
            mapping[name] = prof
            out.write(f"profile: {name} -> {prof} (from --profile)\n")
            continue
        res = _resolve(name, ctx)
        if strict and not res.data_backed:
            refused.append(f"  {name}: {res.source} ({res.detail})")
            continue
        prof = install(router, res)
        if res.source == "default":
            role = roles.get(name, "weak")
            prof = router.default_strong if role == "strong" else router.default_weak
            out.write(
                f"profile: {name} -> {prof} (source default: NO PROFILE for {name!r}: nothing "
                f"known about it; falling back to the router's default {role} profile)\n"
            )
        else:
            out.write(f"profile: {name} -> {prof} (source {res.source}: {res.detail})\n")
        mapping[name] = prof
    if refused:
        raise SystemExit(
            "--strict: these models have no profile fitted on scored data (source data or "
            "snapshot); give --profile MODEL=PROFILE or drop --strict:\n" + "\n".join(refused)
        )
    return mapping
