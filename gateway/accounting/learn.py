"""`tollgate router train --from-store`: refit model profiles on the operator's own traffic.

Each routed (or judged) request's record keeps the router's 32-number prompt vector, never
the text. Requests that later got a quality score (user feedback wins over the judge) are
the training data: for every model with enough scores, a new profile (ability vector and
bias) is fitted by ridge regression shrunk towards its current profile. One request in five
(by a hash of its id) is held out, and the held-out error of the current and the new
profile is printed side by side. A new artifact is written only with `--out`.
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
from gateway.config import DEFAULT_CONFIG_PATH, ConfigError, load_config


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


def fit_from_records(
    router: Any,
    records: list[RequestRecord],
    profile_of: dict[str, str],
    min_scores: int = 20,
    alpha: float = 1.0,
) -> list[ProfileFit]:
    """One fit per model with at least `min_scores` scored training records."""
    by_model: dict[str, list[tuple[np.ndarray, float, bool]]] = {}
    for r in records:
        y = _score(r)
        if y is None or r.router_features is None or r.model is None or r.status != 200:
            continue
        z = np.asarray(r.router_features, dtype=np.float64)
        by_model.setdefault(r.model, []).append((z, float(y), _heldout(r.request_id)))
    fits = []
    for model, rows in sorted(by_model.items()):
        train = [(z, y) for z, y, h in rows if not h]
        test = [(z, y) for z, y, h in rows if h]
        if len(train) < min_scores:
            continue
        profile = profile_of.get(model, model)
        known = router.has_profile(profile)
        prior = router.profile_vector(profile) if known else None
        zt = np.stack([z for z, _ in train])
        yt = np.array([y for _, y in train])
        v, b = router.fit_profile(zt, yt, alpha=alpha, prior=prior)
        mse_cur = mse_new = None
        if test:
            zs = np.stack([z for z, _ in test])
            ys = np.array([y for _, y in test])
            mse_new = float(np.mean((np.clip(zs @ v + b, 0, 1) - ys) ** 2))
            if prior is not None:
                pv, pb = prior
                mse_cur = float(np.mean((np.clip(zs @ pv + pb, 0, 1) - ys) ** 2))
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
        default=str(DEFAULT_CONFIG_PATH),
        help="routing file: its store, its models' profiles, its router.artifact "
        "(default: config/routing.yaml)",
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
    p.add_argument("--out", help="write the refitted artifact here (nothing is written without)")
    args = p.parse_args(argv)
    try:
        cfg = load_config(args.config)
        from router_models import load_router, save_router

        print(f"{p.prog}: {describe_sources(args.config, cfg.store)}", file=sys.stderr)
        router = load_router(cfg.router.artifact)
        records = asyncio.run(_records(args.config, parse_time(args.since)))
    except (ConfigError, RuntimeError, ValueError) as e:
        print(f"tollgate router train --from-store: {e}", file=sys.stderr)
        return 1
    profile_of = {m.name: m.profile or m.name for m in cfg.models}
    scored = sum(1 for r in records if _score(r) is not None and r.router_features is not None)
    print(f"{len(records)} records since {args.since}; {scored} with a score and a prompt vector")
    fits = fit_from_records(router, records, profile_of, args.min_scores, args.alpha)
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
        f"`{args.config}` (records since {args.since}; feedback over judge).",
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
