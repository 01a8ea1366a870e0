"""`tollgate router train --from-store`: refit model profiles on the operator's own traffic.

Each routed (or judged) request's record keeps the router's 32-number prompt vector, never
the text. Requests that later got a quality score (user feedback wins over the judge) are
the training data: for every model with enough scores, a new profile (ability vector and
bias) is fitted by ridge regression shrunk towards its current profile. One request in five
(by a hash of its id) is held out, and the held-out error of the current and the new
profile is printed side by side. A new artifact is written only with `--out`.

Inverse propensity weighting: a model's scored records are the prompts the router sent it,
not a sample of all prompts, so a plain fit learns the model only where the router already
trusts it. With exploration on (`router.explore`, gateway/routing/explore.py) each record
keeps its propensity p, the probability that the routing policy picked the model that
served; each (prompt vector, score) pair is weighted by 1 / p, which makes the weighted
sample of a model's prompts stand for every prompt it had a chance of getting (explored
records, p = share / k, count for the many prompts like them that went elsewhere). Weights
are clipped at `--max-weight` (20 by default: a propensity under 0.05 counts as 0.05),
trading a little bias for a bounded variance, and normalised to mean 1 within each model so
the ridge strength means what it did. Records with no propensity (written before schema 4,
not routed, or served by a fallback) weigh 1, which is the fit without exploration. The
held-out errors are weighted the same way.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from gateway.accounting.records import RequestRecord
from gateway.accounting.store import describe_sources, make_store, missing_store
from gateway.accounting.usage import parse_time
from gateway.config import ConfigError, find_config, load_config


@dataclass
class ProfileFit:
    model: str
    profile: str
    n_train: int
    n_test: int
    mse_current: float | None
    mse_new: float | None
    vector: np.ndarray
    bias: float
    new_profile: bool


def _score(r: RequestRecord) -> float | None:
    return r.quality_feedback if r.quality_feedback is not None else r.quality_judge


def _heldout(request_id: str) -> bool:
    return hashlib.sha256(request_id.encode()).digest()[0] % 5 == 0


MAX_WEIGHT = 20.0  # 1 / propensity is clipped here (a propensity under 0.05 counts as 0.05)


def weight(r: RequestRecord, max_weight: float = MAX_WEIGHT) -> float:
    """A scored record's training weight: 1 / propensity, clipped at `max_weight`."""
    p = r.propensity
    if p is None or p <= 0.0 or p >= 1.0:
        return 1.0
    return min(1.0 / p, max_weight)


def weighted_fit(
    router: Any,
    z: np.ndarray,
    y: np.ndarray,
    w: np.ndarray,
    alpha: float = 1.0,
    prior: tuple[np.ndarray, float] | None = None,
) -> tuple[np.ndarray, float]:
    """`router.fit_profile` with a weight per pair: weighted ridge shrunk towards `prior`.

    Equal weights give exactly `router.fit_profile`'s answer (and call it)."""
    if len(w) != len(y) or np.any(w <= 0) or not np.all(np.isfinite(w)):
        raise ValueError("weights must be positive numbers, one per scored prompt")
    if np.all(w == w[0]):
        fitted: tuple[np.ndarray, float] = router.fit_profile(z, y, alpha=alpha, prior=prior)
        return fitted
    if np.any((y < 0) | (y > 1)) or not np.all(np.isfinite(y)):
        raise ValueError("scores must be numbers in [0, 1]")
    if getattr(router, "link", "identity") == "logistic":  # fit_profile's logit-space ridge
        yc = np.clip(np.asarray(y, dtype=np.float64), 0.05, 0.95)
        y = np.log(yc / (1.0 - yc))
    if prior is None:  # what fit_profile shrinks towards: the average trained profile
        prior = (np.asarray(router.abilities).mean(axis=0), float(np.mean(router.biases)))
    v0, b0 = prior
    wn = w / w.mean()
    resid = y - (z @ v0 + b0)
    zbar = (wn @ z) / wn.sum()
    rbar = float(wn @ resid) / float(wn.sum())
    zc = z - zbar
    zw = zc.T * wn
    delta = np.linalg.solve(zw @ zc + alpha * np.eye(z.shape[1]), zw @ (resid - rbar))
    return v0 + delta, float(b0) + rbar - float(zbar @ delta)


def _wmse(router: Any, raw: np.ndarray, y: np.ndarray, w: np.ndarray) -> float:
    """Weighted squared error of the predicted quality (the router's link of the raw score)."""
    if getattr(router, "link", "identity") == "logistic":
        pred = 1.0 / (1.0 + np.exp(-raw))
    else:
        pred = np.clip(raw, 0, 1)
    return float(np.average((pred - y) ** 2, weights=w))


def fit_from_records(
    router: Any,
    records: list[RequestRecord],
    profile_of: dict[str, str],
    min_scores: int = 20,
    alpha: float = 1.0,
    max_weight: float = MAX_WEIGHT,
) -> list[ProfileFit]:
    """One fit per model with at least `min_scores` scored training records, each pair
    weighted by 1 / propensity (clipped at `max_weight`; see the module docstring)."""
    by_model: dict[str, list[tuple[np.ndarray, float, float, bool]]] = {}
    for r in records:
        y = _score(r)
        if y is None or r.router_features is None or r.model is None or r.status != 200:
            continue
        z = np.asarray(r.router_features, dtype=np.float64)
        w = weight(r, max_weight)
        by_model.setdefault(r.model, []).append((z, float(y), w, _heldout(r.request_id)))
    fits = []
    for model, rows in sorted(by_model.items()):
        train = [(z, y, w) for z, y, w, h in rows if not h]
        test = [(z, y, w) for z, y, w, h in rows if h]
        if len(train) < min_scores:
            continue
        profile = profile_of.get(model, model)
        known = router.has_profile(profile)
        prior = router.profile_vector(profile) if known else None
        zt = np.stack([z for z, _, _ in train])
        yt = np.array([y for _, y, _ in train])
        wt = np.array([w for _, _, w in train])
        v, b = weighted_fit(router, zt, yt, wt, alpha=alpha, prior=prior)
        mse_cur = mse_new = None
        if test:
            zs = np.stack([z for z, _, _ in test])
            ys = np.array([y for _, y, _ in test])
            ws = np.array([w for _, _, w in test])
            mse_new = _wmse(router, zs @ v + b, ys, ws)
            if prior is not None:
                pv, pb = prior
                mse_cur = _wmse(router, zs @ pv + pb, ys, ws)
        fits.append(
            ProfileFit(model, profile, len(train), len(test), mse_cur, mse_new, v, b, not known)
        )
    return fits


async def _records(cfg_path: str, since: float) -> list[RequestRecord]:
    cfg = load_config(cfg_path)
    store = make_store(cfg.store)
    if store is None:
        raise RuntimeError("the config's store is 'none': there is nothing recorded to learn from")
    missing = missing_store(cfg.store, cfg_path)
    if missing:
        raise RuntimeError(missing)
    await store.open()
    try:
        recs = await store.recent(1_000_000)
    finally:
        await store.close()
    return [r for r in recs if r.ts >= since]


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.4f}"


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="tollgate router train --from-store",
        description="Refit model profiles from the feedback and judge scores in the store.",
    )
    p.add_argument(
        "--from-store",
        action="store_true",
        required=True,
        help="learn from the routing file's store (this command)",
    )
    p.add_argument(
        "--config",
        default=None,
        help="routing file: its store, its models' profiles, its router.artifact "
        "(default: $TOLLGATE_CONFIG, else ./tollgate.yaml, else the packaged default)",
    )
    p.add_argument(
        "--since", default="30d", help="records newer than this (default 30d; ISO, unix)"
    )
    p.add_argument(
        "--min-scores",
        type=int,
        default=20,
        help="fit only models with this many scored requests (default 20)",
    )
    p.add_argument("--alpha", type=float, default=1.0, help="ridge strength (default 1)")
    p.add_argument(
        "--max-weight",
        type=float,
        default=MAX_WEIGHT,
        help="clip each record's weight 1/propensity at this (explored records from "
        "router.explore; default %(default)s)",
    )
    p.add_argument("--out", help="write the refitted artifact here (nothing is written without)")
    args = p.parse_args(argv)
    if not args.max_weight >= 1.0:
        p.error("--max-weight must be at least 1 (1 ignores the propensities)")
    config = find_config(args.config)
    print(config, file=sys.stderr)
    args.config = str(config.path)
    try:
        cfg = load_config(args.config)
        from router_models import load_router, save_router

        print(f"{p.prog}: {describe_sources(args.config, cfg.store)}", file=sys.stderr)
        router = load_router(cfg.router.artifact)
        # the profile each model is scored with, as the gateway resolves it (profile:, else
        # its upstream name; placed priors are installed into the router)
        from gateway.routing.profiles import resolve_profiles

        resolved = resolve_profiles(cfg, router, args.config)
        records = asyncio.run(_records(args.config, parse_time(args.since)))
    except (ConfigError, RuntimeError, ValueError) as e:
        print(f"tollgate router train --from-store: {e}", file=sys.stderr)
        return 1
    profile_of = {m.name: m.profile or m.name for m in cfg.models}
    profile_of.update({n: p.profile for n, p in resolved.items()})
    scored = sum(1 for r in records if _score(r) is not None and r.router_features is not None)
    print(f"{len(records)} records since {args.since}; {scored} with a score and a prompt vector")
    usable = [r for r in records if _score(r) is not None and r.router_features is not None]
    explored = sum(1 for r in usable if r.explored)
    weighted = sum(1 for r in usable if weight(r, args.max_weight) != 1.0)
    if weighted:
        print(
            f"{explored} of them explored; {weighted} weighted by 1/propensity "
            f"(clipped at {args.max_weight:g}, --max-weight)"
        )
    fits = fit_from_records(
        router, records, profile_of, args.min_scores, args.alpha, args.max_weight
    )
    if not fits:
        print(f"no model has {args.min_scores} scored requests yet: nothing to fit")
        return 0
    print(f"{'MODEL':<20} {'PROFILE':<24} {'TRAIN':>6} {'HELD':>5} {'MSE NOW':>8} {'MSE NEW':>8}")
    for f in fits:
        label = f.profile + (" (new)" if f.new_profile else "")
        print(
            f"{f.model:<20} {label:<24} {f.n_train:>6} {f.n_test:>5} "
            f"{_fmt(f.mse_current):>8} {_fmt(f.mse_new):>8}"
        )
    if not args.out:
        print("held-out mean squared error of predicted vs recorded quality; pass --out DIR to "
              "write an artifact with the new profiles")  # fmt: skip
        return 0
    for f in fits:
        router.set_profile(f.profile, f.vector, f.bias)
    router.version = f"{router.version}+store-{time.strftime('%Y%m%d')}"
    lines = [
        f"# Router artifact {router.version}",
        "",
        f"The shipped artifact with profiles refitted from production scores in the store of "
        f"`{args.config}` (records since {args.since}; feedback over judge; each record "
        f"weighted by 1/propensity, clipped at {args.max_weight:g}).",
        "",
        "| model | profile | train | held out | MSE before | MSE after |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
        *(
            f"| {f.model} | {f.profile} | {f.n_train} | {f.n_test} | {_fmt(f.mse_current)} | "
            f"{_fmt(f.mse_new)} |"
            for f in fits
        ),
    ]
    out = save_router(router, Path(args.out), "\n".join(lines) + "\n")
    print(f"wrote {out} (set router.artifact to it in the routing file to use it)")
    return 0
