"""RouteLLM's routing metrics, computed exactly as RouteLLM's evaluation code defines them.

A router gives every prompt a score (higher = more need for the strong model). RouteLLM cuts
the scores at the 11 edges of 10 equal-count bins (`pd.qcut(scores, 10)`, linear-interpolated
quantiles 0, 0.1, ..., 1); at each cut the prompts with score >= cut go to the strong model
(at the last, > cut). Quality is the mean score in percent, strong share the % of calls to
the strong model. Then, over the points sorted by strong share:

- AUC = trapz(quality, share / 100)
- APGR = (AUC - weak * span) / (strong * span - weak * span), span = trapz(1, share / 100)
- CPT(p) = np.interp(weak + p * (strong - weak), quality, share)  (share in %)

where `weak` and `strong` are each model's mean score in percent. The random router averages
the points of 10 seeded runs grouped by share; the oracle is RouteLLM's optimal curve (the
first k% of calls go to the prompts with the largest positive strong - weak gain) at 0, 10,
..., 100% of strong calls.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Curve:
    share: list[float]  # % of calls to the strong model, ascending
    quality: list[float]  # mean score in percent
    cutoffs: list[float] = field(default_factory=list)


@dataclass
class CurveMetrics:
    apgr: float
    cpt20: float
    cpt50: float
    cpt80: float
    auc: float


def router_curve(
    scores: np.ndarray, strong: np.ndarray, weak: np.ndarray, num_results: int = 10
) -> Curve:
    """The (strong share, quality) points RouteLLM's benchmark loop yields for these scores."""
    scores = np.asarray(scores, dtype=float)
    cutoffs = np.quantile(scores, np.linspace(0.0, 1.0, num_results + 1))
    pts = []
    for i, cut in enumerate(cutoffs):
        sel = scores >= cut if i != len(cutoffs) - 1 else scores > cut
        res = np.where(sel, strong, weak)
        pts.append((float(sel.mean() * 100.0), float(res.sum() / len(res) * 100.0), float(cut)))
    pts.sort(key=lambda p: p[0])  # RouteLLM: sort_values(by="strong_percentage")
    return Curve([p[0] for p in pts], [p[1] for p in pts], [p[2] for p in pts])


def curve_metrics(curve: Curve, weak_acc: float, strong_acc: float) -> CurveMetrics:
    x = np.asarray(curve.share, dtype=float) / 100.0
    y = np.asarray(curve.quality, dtype=float)
    auc = float(np.trapezoid(y, x))
    weak_auc = float(np.trapezoid(np.full(len(x), weak_acc), x))
    strong_auc = float(np.trapezoid(np.full(len(x), strong_acc), x))
    denom = strong_auc - weak_auc
    apgr = (auc - weak_auc) / denom if denom != 0 else float("nan")
    cpts = [
        float(np.interp(p * (strong_acc - weak_acc) + weak_acc, y, np.asarray(curve.share)))
        for p in (0.2, 0.5, 0.8)
    ]
    return CurveMetrics(apgr=apgr, cpt20=cpts[0], cpt50=cpts[1], cpt80=cpts[2], auc=auc)


def random_curve(
    strong: np.ndarray, weak: np.ndarray, seeds: int = 10, num_results: int = 10
) -> Curve:
    """RouteLLM's random router: uniform scores, points of all seeds averaged by share."""
    by_share: dict[float, list[float]] = {}
    for seed in range(seeds):
        rng = np.random.default_rng(seed)
        c = router_curve(rng.uniform(size=len(strong)), strong, weak, num_results)
        for s, q in zip(c.share, c.quality, strict=True):
            by_share.setdefault(s, []).append(q)
    shares = sorted(by_share)
    return Curve(shares, [float(np.mean(by_share[s])) for s in shares])


def oracle_curve(strong: np.ndarray, weak: np.ndarray, step: int = 10) -> Curve:
    """RouteLLM's optimal accuracy at 0, step, ..., 100 % strong calls (fractional calls kept)."""
    strong = np.asarray(strong, dtype=float)
    weak = np.asarray(weak, dtype=float)
    n = len(strong)
    gains = np.sort(np.clip(strong - weak, 0.0, None))[::-1]
    gains = gains[gains > 0]
    cum = np.concatenate(([0.0], np.cumsum(gains)))
    shares, quals = [], []
    for pct in range(0, 101, step):
        calls = min(n * pct / 100.0, float(len(gains)))
        k = int(np.floor(calls))
        bonus = cum[k] + ((calls - k) * gains[k] if k < len(gains) else 0.0)
        shares.append(float(pct))
        quals.append(float((weak.sum() + bonus) / n * 100.0))
    return Curve(shares, quals)


def evaluate_pair(scores: np.ndarray, strong: np.ndarray, weak: np.ndarray) -> dict[str, object]:
    """Router, random and oracle metrics for one strong/weak pair, as report.json keeps them."""
    strong = np.asarray(strong, dtype=float)
    weak = np.asarray(weak, dtype=float)
    strong_acc = float(strong.sum() / len(strong) * 100.0)
    weak_acc = float(weak.sum() / len(weak) * 100.0)
    out: dict[str, object] = {
        "n": len(strong),
        "strong_quality": strong_acc,
        "weak_quality": weak_acc,
    }
    for name, curve in (
        ("router", router_curve(scores, strong, weak)),
        ("random", random_curve(strong, weak)),
        ("oracle", oracle_curve(strong, weak)),
    ):
        m = curve_metrics(curve, weak_acc, strong_acc)
        prefix = "" if name == "router" else f"{name}_"
        out[f"{prefix}apgr"] = m.apgr
        out[f"{prefix}cpt20"] = m.cpt20
        out[f"{prefix}cpt50"] = m.cpt50
        out[f"{prefix}cpt80"] = m.cpt80
        out[f"{prefix}curve"] = {"share": curve.share, "quality": curve.quality}
    return out
