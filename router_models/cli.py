"""`tollgate router train|eval|calibrate|split`: the router's command line.

Run as `tollgate router ...` (gateway.cli calls `main(argv)`) or `python -m router_models.cli`.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from router_models.artifact import WEIGHTS, load_router, save_router
from router_models.data import HELDOUT_PERCENT, SOURCES, load_source, write_bench
from router_models.errors import ArtifactError, BenchError
from router_models.evaluate import (
    calibrate,
    eval_multi,
    eval_pair,
    read_bench,
    read_jsonl,
)
from router_models.identity import eval_profiles
from router_models.model import Router


def _kv(items: list[str] | None, what: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for raw in items or []:
        for part in raw.split(","):
            if not part.strip():
                continue
            if "=" not in part:
                raise SystemExit(f"{what}: {part!r} is not NAME=VALUE")
            k, v = part.split("=", 1)
            out[k.strip()] = v.strip()
    return out


def _joint_config(args: argparse.Namespace) -> Any:
    from router_models.joint import JointConfig

    return JointConfig(
        rank=args.rank,
        ridge_alpha=args.ridge_alpha,
        lam_u=args.lam_u,
        lam_g=args.lam_g,
        lam_c=args.lam_c,
        struct_scale=args.struct_scale,
        max_iter=args.max_iter,
        pairwise_reference=args.pairwise_reference,
        length_control=args.length_control,
    )


def cmd_train(args: argparse.Namespace) -> int:
    # scipy/the fitting code are only needed to fit: keep `eval` and `calibrate` quick to start
    import time

    from router_models import loso
    from router_models.card import model_card, router_from_fit

    t0 = time.monotonic()
    sources = [s.strip() for s in args.data.split(",") if s.strip()]
    for s in sources:
        if s not in SOURCES:
            raise SystemExit(f"--data: unknown source {s!r}; choose from {list(SOURCES)}")
    cfg = _joint_config(args)
    sys.stderr.write("featurizing every source\n")
    data = loso.load_all()
    sys.stderr.write(f"fitting on the training splits of {', '.join(sources)}\n")
    fitted = loso.fit(data, sources, cfg)
    metrics: dict[str, Any] = {}
    log = None if args.quiet else (lambda line: sys.stderr.write(line + "\n"))
    if not args.no_eval:
        sys.stderr.write("measuring on every source's held-out split\n")
        metrics["heldout"] = loso.evaluate(data, cfg, "heldout", args.boot, sources, log, fitted)
        if args.loso:
            sys.stderr.write("leave-one-source-out: 5 more fits\n")
            metrics["loso"] = loso.evaluate(data, cfg, "loso", args.boot, sources, log)
    date = dt.date.today().isoformat()
    router = router_from_fit(fitted, data, sources, cfg)
    router.meta.update(
        {
            "created": date,
            "trained_on": sources,
            "split": f"prompts whose sha256 % 100 >= {HELDOUT_PERCENT} (every source)",
            "hyperparameters": {k: v for k, v in vars(cfg).items() if k != "source_weight"},
            "train_seconds": round(time.monotonic() - t0, 1),
        }
    )
    out = Path(args.out)
    router.version = f"joint-{date}"
    save_router(router, out, "")
    digest = hashlib.sha256((out / WEIGHTS).read_bytes()).hexdigest()[:10]
    router.version = f"joint-{date}-{digest}"
    save_router(router, out, model_card(router, metrics, args))
    if metrics:
        (out / "metrics.json").write_text(json.dumps(metrics, indent=1) + "\n")
    print(f"wrote {out} (version {router.version}) in {time.monotonic() - t0:.0f} s")
    return 0


def cmd_loso(args: argparse.Namespace) -> int:
    from router_models import loso

    cfg = _joint_config(args)
    data = loso.load_all()
    sources = [s.strip() for s in args.sources.split(",") if s.strip()] or None
    res = loso.evaluate(data, cfg, args.mode, args.boot, sources, print)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    loso.write_report(res, out)
    print(f"wrote {out}")
    return 0


def _router_or_exit(spec: str | None) -> Router:
    try:
        return load_router(spec or "default")
    except ArtifactError as e:
        raise SystemExit(f"error: {e}") from None


def cmd_eval(args: argparse.Namespace) -> int:
    router = _router_or_exit(args.router)
    items = read_bench(args.bench)
    explicit = _kv(args.profile, "--profile")
    out_dir = Path(args.out)
    print(f"router {router.version} on {args.bench} ({len(items)} lines)")
    if args.models:
        models = [m.strip() for m in args.models.split(",") if m.strip()]
        _match_score_names(items, models)
        costs = {k: float(v) for k, v in _kv(args.costs, "--costs").items()}
        missing = [m for m in models if m not in costs]
        if missing:
            raise SystemExit(f"--costs: no cost for {missing}; give --costs A=0.1,B=1.0,...")
        mapping = eval_profiles(router, models, explicit, {}, args.strict, sys.stdout)
        write_chart(eval_multi(router, items, models, costs, mapping, out_dir, sys.stdout), out_dir)
        return 0
    if not (args.strong and args.weak):
        raise SystemExit("router eval needs --strong A --weak B, or --models A,B,C --costs ...")
    _match_score_names(items, [args.strong, args.weak])
    roles = {args.strong: "strong", args.weak: "weak"}
    mapping = eval_profiles(
        router, [args.strong, args.weak], explicit, roles, args.strict, sys.stdout
    )
    write_chart(
        eval_pair(router, items, args.strong, args.weak, mapping, out_dir, sys.stdout), out_dir
    )
    return 0


def _match_score_names(items: list[Any], models: list[str]) -> None:
    """A model asked for under another spelling than the benchmark's (`llama3.1:8b` for
    `Meta-Llama-3.1-8B-Instruct`) reads the score of the same canonical identity."""
    from router_models.identity import canonical

    want = {canonical(m): m for m in models}
    seen: dict[str, str | None] = {}
    for it in items:
        for key in list(it.scores):
            if key in models:
                continue
            if key not in seen:
                seen[key] = want.get(canonical(key))
            m = seen[key]
            if m is not None and m not in it.scores:
                it.scores[m] = it.scores[key]


def write_chart(report: dict[str, Any], out_dir: Path) -> Path:
    """Draw `router eval`'s chart from its report.json numbers: curves.png (two models) or
    quality_cost.png (N models).

    The charts live in gateway.views.plot and need matplotlib (the `plot` extra); both are
    imported here only, so router_models loads without them, and without matplotlib the
    command says how to get it (report.json is written by then).
    """
    from gateway.views.plot import PlotUnavailable, router_curve_chart, two_model_chart

    try:
        if "single_models" in report:
            singles = report["single_models"]
            path = out_dir / "quality_cost.png"
            router_curve_chart(
                path,
                title=f"Routing by {report['policy']} vs single models (n={report['n']})",
                curve=[(p["cost"], p["quality"]) for p in report["curve"]],
                singles=[(m, s["cost"], s["quality"]) for m, s in singles.items()],
                x_label="mean cost per call (in the units of --costs)",
                y_label="quality (mean benchmark score, 0-1)",
                curve_label="routed (one point per quality target)",
            )
        else:
            path = out_dir / "curves.png"
            curve, oracle = report["curve"], report["oracle_curve"]
            two_model_chart(
                path,
                title=f"Routing {report['strong']} vs {report['weak']} (n={report['n']})",
                curve=list(zip(curve["share"], curve["quality"], strict=True)),
                strong=(report["strong"], report["strong_quality"]),
                weak=(report["weak"], report["weak_quality"]),
                oracle=list(zip(oracle["share"], oracle["quality"], strict=True)),
            )
    except PlotUnavailable as e:
        raise SystemExit(f"error: no chart: {e}") from None
    print(f"wrote {path}")
    return path


def cmd_calibrate(args: argparse.Namespace) -> int:
    if not 0.0 <= args.target_share <= 1.0:
        raise SystemExit("--target-share must be in [0, 1]")
    router = _router_or_exit(args.router)
    items = read_bench(args.prompts, need_scores=False)
    strong = args.strong_profile or router.default_strong
    weak = args.weak_profile or router.default_weak
    for p in (strong, weak):
        if not router.has_profile(p):
            raise SystemExit(f"no profile {p!r}; known: {', '.join(router.profiles)}")
    thr = calibrate(router, items, args.target_share, strong, weak)
    print(
        f"threshold {thr:.5f} sends {args.target_share:.0%} of {len(items)} prompts to the strong "
        f"tier (profiles {strong} vs {weak}); use it as router-threshold-{thr:.5f}"
    )
    return 0


def cmd_split(args: argparse.Namespace) -> int:
    m = load_source(args.source)
    part = m.subset(m.heldout if args.part == "heldout" else ~m.heldout)
    n = write_bench(part, Path(args.out))
    print(f"wrote {n} {args.part} prompts of {args.source} to {args.out}")
    return 0


def read_scored_prompts(path: str, key: str) -> list[tuple[list[dict[str, Any]], float]]:
    """(conversation, score) pairs: lines with "score", or benchmark lines scored for `key`."""
    from router_models.messages import parse_bench_messages

    def parse(_lineno: int, obj: dict[str, Any]) -> tuple[list[dict[str, Any]], float]:
        score = obj.get("score")
        if score is None:
            score = (obj.get("scores") or {}).get(key)
        if score is None:
            raise ValueError(f'needs "score" or "scores": {{"{key}": ...}}')
        fv = float(score)
        if not 0.0 <= fv <= 1.0:
            raise ValueError(f"score {score!r} must be in [0, 1]")
        return parse_bench_messages(obj), fv

    out = read_jsonl(path, parse)
    if not out:
        raise BenchError(f"{path}: no scored prompts")
    return out


def cmd_profile(args: argparse.Namespace) -> int:
    router = load_router(args.router)
    pairs = read_scored_prompts(args.scores, args.key or args.name)
    existed = router.has_profile(args.name)
    router.add_profile(args.name, pairs, alpha=args.alpha)
    router.version = f"{router.version}+{args.name}"
    card = (
        f"# Router artifact {router.version}\n\n"
        f"`{args.router}` with the profile `{args.name}` "
        f"{'refitted' if existed else 'added'} from {len(pairs)} scored prompts in "
        f"`{args.scores}` (ridge, alpha {args.alpha}, shrunk towards the average profile).\n"
    )
    out = save_router(router, Path(args.out), card)
    mean = float(np.mean([s for _, s in pairs]))
    print(
        f"profile {args.name!r} {'refitted' if existed else 'added'} from {len(pairs)} prompts "
        f"(mean score {mean:.3f}); wrote {out}. Use it: router.artifact: {out} and "
        f"profile: {args.name} on the model in the routing file"
    )
    return 0


USER_HELP = """\
The learned router: for each request to model="auto", it predicts how well every model
in the routing file would answer and picks the cheapest good one. A router is a
directory (an "artifact"); the routing file's router.artifact names the one the gateway
loads (default: the shipped one). These commands make, measure and extend artifacts."""

USER_EPILOG = """\
To refit the profiles of the routing file's models on the quality scores your gateway
recorded (feedback and judge): tollgate router train --from-store (see its --help).
Run tollgate router COMMAND --help for a command's options."""

TRAIN_EPILOG = """\
What the shipped artifact is: tollgate router train --loso --out router_models/artifacts/default
(make router-artifact; ~5 min on 2 cores, deterministic).

Refitting on your own traffic instead:
  tollgate router train --from-store [--config FILE] [--since 30d] [--out DIR]
refits each model's profile on the feedback and judge scores recorded in the routing
file's store and prints the held-out error before and after; it writes an artifact only
with --out (tollgate router train --from-store --help)."""


def _joint_args(p: argparse.ArgumentParser) -> None:
    from router_models.joint import JointConfig

    d = JointConfig()
    p.add_argument("--rank", type=int, default=d.rank, help="rank of the prompt vector")
    p.add_argument("--ridge-alpha", type=float, default=d.ridge_alpha, help="stage-1 ridge")
    p.add_argument("--lam-u", type=float, default=d.lam_u, help="shrinkage of own profiles")
    p.add_argument("--lam-g", type=float, default=d.lam_g, help="shrinkage of discrimination")
    p.add_argument("--lam-c", type=float, default=d.lam_c, help="shrinkage of source offsets")
    p.add_argument(
        "--struct-scale", type=float, default=d.struct_scale, help="structure feature weight"
    )
    p.add_argument("--max-iter", type=int, default=d.max_iter, help="L-BFGS iterations")
    p.add_argument(
        "--pairwise-reference",
        action="store_true",
        default=d.pairwise_reference,
        help="fit AlpacaEval as comparisons with its reference model (Bradley-Terry)",
    )
    p.add_argument(
        "--length-control",
        action="store_true",
        default=d.length_control,
        help="with --pairwise-reference: a length covariate, left out at inference",
    )


def build_parser() -> argparse.ArgumentParser:
    raw = argparse.RawDescriptionHelpFormatter
    p = argparse.ArgumentParser(
        prog="tollgate router", description=USER_HELP, epilog=USER_EPILOG, formatter_class=raw
    )
    sub = p.add_subparsers(dest="cmd", required=True, title="commands", metavar="COMMAND")

    t = sub.add_parser(
        "train",
        help="fit a new router artifact (or --from-store: refit on recorded scores)",
        description="Fit a new router artifact on the shipped training data (prompts with "
        "the recorded quality of each model's answer, five sources) and write it to --out: a "
        "joint item-response model over every source (router_models/joint.py).",
        epilog=TRAIN_EPILOG,
        formatter_class=raw,
    )
    t.add_argument(
        "--data",
        default=",".join(SOURCES),
        help=f"comma-separated training sources (default: all of {', '.join(SOURCES)})",
    )
    _joint_args(t)
    t.add_argument("--loso", action="store_true", help="also measure leave-one-source-out")
    t.add_argument("--no-eval", action="store_true", help="fit only, measure nothing")
    t.add_argument("--boot", type=int, default=200, help="bootstrap draws for intervals")
    t.add_argument("--quiet", action="store_true", help="no per-source lines on stderr")
    t.add_argument("--out", required=True, help="artifact directory to write")
    t.set_defaults(fn=cmd_train)

    lo = sub.add_parser(
        "loso",
        help="measure transfer: leave-one-source-out (or the held-out split)",
        description="Train on four sources, test on the fifth, for each source (or, with "
        "--mode heldout, on each source's held-out prompts): two-model APGR and the "
        "many-model cost at 95/97/99%% of the best model's quality against the random-mix "
        "frontier, with bootstrap intervals.",
    )
    lo.add_argument("--mode", default="loso", choices=("loso", "heldout"))
    lo.add_argument("--sources", default="", help="comma-separated sources to test (all)")
    _joint_args(lo)
    lo.add_argument("--boot", type=int, default=200, help="bootstrap draws for intervals")
    lo.add_argument("--out", default="router-loso/report.json", help="report file")
    lo.set_defaults(fn=cmd_loso)

    e = sub.add_parser(
        "eval",
        help="measure a router on scored prompts",
        description="Measure a router on a benchmark file. With --strong and --weak: "
        "RouteLLM's metrics for routing between two models (APGR, CPT50, CPT80). With "
        "--models and --costs: the quality-cost curve over N models.",
    )
    e.add_argument(
        "--bench",
        required=True,
        help='JSONL, one prompt per line: {"id", "messages" or "prompt", "scores": {model: score}}',
    )
    e.add_argument("--strong", help="two-model mode: the strong (expensive) model's name")
    e.add_argument("--weak", help="two-model mode: the weak (cheap) model's name")
    e.add_argument("--models", help="N-model mode: comma-separated model names")
    e.add_argument(
        "--costs", action="append", help="N-model mode: each model's cost, as A=1.0,B=0.2"
    )
    e.add_argument("--router", default="default", help="artifact dir (default: the shipped one)")
    e.add_argument(
        "--profile",
        action="append",
        help="MODEL=PROFILE: which router profile predicts MODEL (repeatable)",
    )
    e.add_argument(
        "--strict",
        action="store_true",
        help="refuse any model whose profile is not fitted on scored data (no priors)",
    )
    e.add_argument("--out", default="router-eval", help="output directory (default router-eval)")
    e.set_defaults(fn=cmd_eval)

    c = sub.add_parser(
        "calibrate",
        help="find the threshold that sends a given share of prompts to the strong model",
        description="Find the threshold T at which router-threshold-T sends --target-share "
        "of your prompts to the strong model.",
    )
    c.add_argument(
        "--target-share",
        type=float,
        required=True,
        help="share of prompts for the strong model, 0 to 1",
    )
    c.add_argument(
        "--prompts", required=True, help='JSONL, one prompt per line: "messages" or "prompt"'
    )
    c.add_argument("--router", default="default", help="artifact dir (default: the shipped one)")
    c.add_argument("--strong-profile", help="the strong model's profile (default: the router's)")
    c.add_argument("--weak-profile", help="the weak model's profile (default: the router's)")
    c.set_defaults(fn=cmd_calibrate)

    pr = sub.add_parser(
        "profile",
        help="add a model the router has never seen, from scored prompts",
        description="Fit a router profile for a new model from prompts whose answers you "
        "scored, and write an artifact that has it.",
    )
    pr.add_argument("--name", required=True, help="profile name to add (or refit)")
    pr.add_argument("--scores", required=True, help='JSONL: {"messages"|"prompt", "score"}')
    pr.add_argument("--key", help='model name to read from "scores" (default: --name)')
    pr.add_argument("--router", default="default", help="artifact to start from")
    pr.add_argument("--alpha", type=float, default=1.0, help="ridge strength")
    pr.add_argument("--out", required=True, help="artifact directory to write")
    pr.set_defaults(fn=cmd_profile)

    s = sub.add_parser(
        "split",
        help="write the shipped data's held-out prompts as a benchmark file",
        description="Write the held-out (or training) prompts of a shipped source as a "
        "benchmark file for tollgate router eval.",
    )
    s.add_argument("--source", required=True, choices=SOURCES, help="which shipped source")
    s.add_argument(
        "--part",
        default="heldout",
        choices=("heldout", "train"),
        help="the held-out prompts (default) or the training ones",
    )
    s.add_argument("--out", required=True, help="JSONL file to write")
    s.set_defaults(fn=cmd_split)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.fn(args))
    except (BenchError, ArtifactError, KeyError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
