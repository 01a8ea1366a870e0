"""`router eval` and `router calibrate`: benchmark files in, RouteLLM metrics and curves out."""

from __future__ import annotations

import gzip
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO, TypeVar

import numpy as np

from router_models.errors import BenchError
from router_models.messages import parse_bench_messages
from router_models.metrics import evaluate_pair
from router_models.model import Router

T = TypeVar("T")


@dataclass
class BenchItem:
    id: str
    messages: list[dict[str, Any]]
    scores: dict[str, float]


def read_jsonl(path: str | Path, parse: Callable[[int, dict[str, Any]], T]) -> list[T]:
    """`parse(lineno, obj)` for each JSON-object line of a .jsonl (or .jsonl.gz) file.

    A ValueError or TypeError from a line becomes a BenchError naming the file and line.
    """
    p = Path(path)
    opener = gzip.open if p.suffix == ".gz" else open
    out: list[T] = []
    try:
        f = opener(p, "rt", encoding="utf-8")
    except OSError as e:
        raise BenchError(f"{p}: cannot read: {e.strerror or e}") from None
    with f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
                if not isinstance(obj, dict):
                    raise ValueError("each line must be a JSON object")
                out.append(parse(lineno, obj))
            except (ValueError, TypeError) as e:
                raise BenchError(f"{p}:{lineno}: {e}") from None
    return out


def read_bench(path: str | Path, need_scores: bool = True) -> list[BenchItem]:
    """Read a benchmark file: one {"id", "messages"|"prompt", "scores"} JSON object per line."""

    def parse(lineno: int, obj: dict[str, Any]) -> BenchItem:
        msgs = parse_bench_messages(obj)
        scores = obj.get("scores", {})
        if need_scores and not scores:
            raise ValueError('needs "scores": {"model": score in [0, 1], ...}')
        if not isinstance(scores, dict):
            raise ValueError('"scores" must be an object of model -> number')
        clean: dict[str, float] = {}
        for k, v in scores.items():
            if v is None:
                continue
            fv = float(v)
            if not (0.0 <= fv <= 1.0) or math.isnan(fv):
                raise ValueError(f"score of {k!r} is {v!r}; scores must be in [0, 1]")
            clean[str(k)] = fv
        return BenchItem(str(obj.get("id", lineno)), msgs, clean)

    p = Path(path)
    items = read_jsonl(p, parse)
    if not items:
        raise BenchError(f"{p}: no benchmark lines")
    return items


def eval_pair(
    router: Router,
    items: list[BenchItem],
    strong: str,
    weak: str,
    mapping: dict[str, str],
    out_dir: Path,
    out: TextIO,
) -> dict[str, Any]:
    usable = [it for it in items if strong in it.scores and weak in it.scores]
    if not usable:
        raise BenchError(f"no benchmark line has scores for both {strong!r} and {weak!r}")
    skipped = len(items) - len(usable)
    ps, pw = mapping[strong], mapping[weak]
    scores = np.array([router.strong_score(router.featurize(it.messages), ps, pw) for it in usable])
    s_arr = np.array([it.scores[strong] for it in usable])
    w_arr = np.array([it.scores[weak] for it in usable])
    rep = evaluate_pair(scores, s_arr, w_arr)
    report: dict[str, Any] = {
        "router": router.version,
        "strong": strong,
        "weak": weak,
        "profiles": {strong: ps, weak: pw},
        "skipped_lines": skipped,
        **rep,
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    with open(out_dir / "scores.jsonl", "w", encoding="utf-8") as f:
        for it, sc in zip(usable, scores, strict=True):
            f.write(json.dumps({"id": it.id, "score": float(sc)}) + "\n")
    out.write(
        f"n={rep['n']} (skipped {skipped})  strong {strong}: {rep['strong_quality']:.2f}  "
        f"weak {weak}: {rep['weak_quality']:.2f}\n"
    )
    out.write(f"{'method':<8} {'APGR':>7} {'CPT(50%)':>9} {'CPT(80%)':>9}\n")
    for label, prefix in (("router", ""), ("random", "random_"), ("oracle", "oracle_")):
        out.write(
            f"{label:<8} {rep[prefix + 'apgr']:7.4f} {rep[prefix + 'cpt50']:8.2f}% "
            f"{rep[prefix + 'cpt80']:8.2f}%\n"
        )
    out.write(f"wrote {out_dir / 'report.json'}, scores.jsonl\n")
    return report


def eval_multi(
    router: Router,
    items: list[BenchItem],
    models: list[str],
    costs: dict[str, float],
    mapping: dict[str, str],
    out_dir: Path,
    out: TextIO,
) -> dict[str, Any]:
    """Quality-cost curve of cheapest_above over its target, for N models."""
    usable = [it for it in items if all(m in it.scores for m in models)]
    if not usable:
        raise BenchError(f"no benchmark line has scores for all of {models}")
    q = np.array(
        [
            router.quality(router.featurize(it.messages), [mapping[m] for m in models])
            for it in usable
        ]
    )
    actual = np.array([[it.scores[m] for m in models] for it in usable])
    cost = np.array([costs[m] for m in models])
    order = np.argsort(cost, kind="stable")
    singles = {
        m: {"quality": float(actual[:, j].mean()), "cost": float(cost[j])}
        for j, m in enumerate(models)
    }
    points = []
    for t in np.linspace(0.0, 1.0, 101):
        ok = q[:, order] >= t
        first = np.where(ok.any(axis=1), order[np.argmax(ok, axis=1)], np.argmax(q, axis=1))
        points.append(
            {
                "target": float(t),
                "cost": float(cost[first].mean()),
                "quality": float(actual[np.arange(len(usable)), first].mean()),
            }
        )
    pts = sorted(points, key=lambda p: (p["cost"], p["quality"]))
    lo, hi = float(cost.min()), float(cost.max())
    xs = [(p["cost"] - lo) / ((hi - lo) or 1.0) for p in pts]
    area = float(np.trapezoid([p["quality"] for p in pts], xs)) if len(pts) > 1 else 0.0
    best = max(singles.values(), key=lambda s: s["quality"])
    goal = 0.95 * best["quality"]
    reaching = [p for p in pts if p["quality"] >= goal]
    cheapest = min(reaching, key=lambda p: p["cost"]) if reaching else None
    from router_models.loso import cost_at_targets

    targets = cost_at_targets(actual, q, cost)
    report = {
        "router": router.version,
        "policy": "cheapest_above",
        "cost_at_targets": targets,
        "n": len(usable),
        "models": models,
        "profiles": {m: mapping[m] for m in models},
        "single_models": singles,
        "curve": points,
        "area": area,
        "best_single_quality": best["quality"],
        "cheapest_at_95pct_of_best": cheapest,
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    with open(out_dir / "predictions.jsonl", "w", encoding="utf-8") as f:
        for it, row in zip(usable, q, strict=True):
            pred = {m: round(float(v), 6) for m, v in zip(models, row, strict=True)}
            f.write(json.dumps({"id": it.id, "quality": pred}) + "\n")
    out.write(f"n={len(usable)}\n")
    for m, s in singles.items():
        out.write(f"  single {m:<32} quality {s['quality']:.4f}  cost {s['cost']:g}\n")
    out.write(f"area under quality-cost curve (cost normalised to [0, 1]): {area:.4f}\n")
    if cheapest:
        out.write(
            f"cheapest point with >= 95% of the best single model's quality: target "
            f"{cheapest['target']:.2f}, quality {cheapest['quality']:.4f}, "
            f"cost {cheapest['cost']:g}\n"
        )
    else:
        out.write("no threshold reaches 95% of the best single model's quality\n")
    out.write(
        "cost, as a share of the best single model's, to reach a share of its quality "
        f"(routed: the {targets['policy']} policy family mixed with single models; 90% "
        "bootstrap intervals):\n"
    )
    for t in ("95", "97", "99"):
        r, fr = targets["router"][t], targets["frontier"][t]
        out.write(
            f"  {t}%: routed {r['cost_share']:.3f} [{r['ci90'][0]:.3f}, {r['ci90'][1]:.3f}]"
            f"  random mix of single models {fr['cost_share']:.3f} "
            f"[{fr['ci90'][0]:.3f}, {fr['ci90'][1]:.3f}]\n"
        )
    out.write(f"wrote {out_dir / 'report.json'} and predictions.jsonl\n")
    return report


def calibrate(
    router: Router, items: list[BenchItem], share: float, strong: str, weak: str
) -> float:
    """RouteLLM's calibration: the score threshold that sends `share` of prompts to strong."""
    scores = np.array(
        [router.strong_score(router.featurize(it.messages), strong, weak) for it in items]
    )
    return float(np.percentile(scores, 100 * (1 - share)))
