"""`tollgate router train|eval|calibrate|split`: the router's command line.

Run as `tollgate router ...` (gateway.cli calls `main(argv)`) or `python -m router_models.cli`.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import sys
from pathlib import Path
from typing import Any

import numpy as np

from router_models.artifact import WEIGHTS, load_router, save_router
from router_models.data import HELDOUT_PERCENT, SOURCES, Matrix, load_source, write_bench
from router_models.errors import ArtifactError, BenchError
from router_models.evaluate import (
    calibrate,
    eval_multi,
    eval_pair,
    read_bench,
    read_jsonl,
)
from router_models.featurizers import FEATURIZERS, make_featurizer
from router_models.identity import eval_profiles
from router_models.metrics import evaluate_pair
from router_models.model import Router

# The strong/weak pair each source is measured on (large vs small real models of that source).
EVAL_PAIRS = {
    "alpaca_eval": ("humpback-llama2-70b", "gemma-2b-it"),
    "dcrouter": ("llama-3.3-nemotron-super-49b-v1", "mistral-7b-instruct-v0.3"),
}
SOURCE_DEFAULTS = {
    "alpaca_eval": ("humpback-llama2-70b", "gemma-2b-it"),
    "dcrouter": EVAL_PAIRS["dcrouter"],
}


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


def _pair_metrics(router: Router, m: Matrix, x: Any) -> dict[str, Any]:
    strong, weak = EVAL_PAIRS[m.source]
    ps = strong if router.has_profile(strong) else router.default_strong
    pw = weak if router.has_profile(weak) else router.default_weak
    z = np.asarray(x @ router.projection, dtype=np.float64)
    g = z @ (
        router.abilities[router.profiles.index(ps)] - router.abilities[router.profiles.index(pw)]
    )
    j, k = m.models.index(strong), m.models.index(weak)
    rep = evaluate_pair(g, m.scores[:, j], m.scores[:, k])
    keep = ("n", "apgr", "cpt50", "cpt80", "random_apgr", "random_cpt50", "random_cpt80")
    out = {k: rep[k] for k in keep}
    out.update({"oracle_apgr": rep["oracle_apgr"], "oracle_cpt50": rep["oracle_cpt50"]})
    out.update({"strong": strong, "weak": weak, "profiles": [ps, pw]})
    return out


def cmd_train(args: argparse.Namespace) -> int:
    # scikit-learn is only needed to fit: keep `eval` and `calibrate` quick to start
    from router_models.train import featurize_all, fit_router

    sources = [s.strip() for s in args.data.split(",") if s.strip()]
    for s in sources:
        if s not in SOURCES:
            raise SystemExit(f"--data: unknown source {s!r}; choose from {list(SOURCES)}")
    fconf: dict[str, Any] = {"name": args.featurizer}
    featurizer = make_featurizer(fconf)
    mats = {s: load_source(s) for s in SOURCES}
    feats = {
        s: featurize_all(featurizer, m.conversations(), f"featurize {s}", progress=not args.quiet)
        for s, m in mats.items()
    }

    def train_on(srcs: list[str]) -> Router:
        parts = []
        for s in srcs:
            m = mats[s]
            mask = ~m.heldout if not args.all else np.ones(len(m.ids), bool)
            parts.append((m.subset(mask), feats[s][mask]))
        strong, weak = SOURCE_DEFAULTS["alpaca_eval" if "alpaca_eval" in srcs else srcs[0]]
        return fit_router(featurizer, parts, args.alpha, args.rank, strong, weak)

    sys.stderr.write(f"fitting on {', '.join(sources)} (alpha={args.alpha}, rank={args.rank})\n")
    router = train_on(sources)
    metrics: dict[str, Any] = {"heldout": {}, "cross_source": {}}
    for s, m in mats.items():
        ho = m.heldout
        metrics["heldout"][s] = _pair_metrics(router, m.subset(ho), feats[s][ho])
    if args.cross:
        for a in SOURCES:
            b = next(s for s in SOURCES if s != a)
            sys.stderr.write(f"cross-source: fitting on {a}, measuring on held-out {b}\n")
            r = train_on([a])
            mb = mats[b]
            metrics["cross_source"][f"{a}->{b}"] = _pair_metrics(
                r, mb.subset(mb.heldout), feats[b][mb.heldout]
            )
    date = dt.date.today().isoformat()
    out = Path(args.out)
    router.meta = {
        "created": date,
        "trained_on": sources,
        "split": "all prompts" if args.all else f"prompts whose sha256 % 100 >= {HELDOUT_PERCENT}",
        "hyperparameters": {"alpha": args.alpha, "rank": args.rank},
        "metrics": metrics,
    }
    tmp_version = f"{args.featurizer}-{date}"
    router.version = tmp_version
    save_router(router, out, "")
    digest = hashlib.sha256((out / WEIGHTS).read_bytes()).hexdigest()[:10]
    router.version = f"{tmp_version}-{digest}"
    save_router(router, out, model_card(router, args))
    print(f"wrote {out} (version {router.version})")
    for s, met in metrics["heldout"].items():
        print(
            f"held-out {s:<12} APGR {met['apgr']:.4f} (random {met['random_apgr']:.4f}, oracle "
            f"{met['oracle_apgr']:.4f})  CPT50 {met['cpt50']:.1f}%  CPT80 {met['cpt80']:.1f}%"
        )
    for key, met in metrics["cross_source"].items():
        print(f"cross {key:<24} APGR {met['apgr']:.4f} (random {met['random_apgr']:.4f})")
    return 0


def model_card(router: Router, args: argparse.Namespace) -> str:
    meta = router.meta
    rows = []
    for kind, table in (
        ("held-out", meta["metrics"]["heldout"]),
        ("cross-source", meta["metrics"]["cross_source"]),
    ):
        for key, m in table.items():
            rows.append(
                f"| {kind} | {key} | {m['strong']} vs {m['weak']} | {m['n']} | {m['apgr']:.4f} | "
                f"{m['random_apgr']:.4f} | {m['oracle_apgr']:.4f} | {m['cpt50']:.1f}% | "
                f"{m['random_cpt50']:.1f}% | {m['cpt80']:.1f}% | {m['random_cpt80']:.1f}% |"
            )
    fconf = router.featurizer.config()
    header = (
        "| split | source | pair | n | APGR | random APGR | oracle APGR | CPT(50%) | random "
        "| CPT(80%) | random |\n|---|---|---|---|---|---|---|---|---|---|---|"
    )
    flags = (" --cross" if args.cross else "") + (" --all" if args.all else "")
    return f"""# Router model card: {router.version}

- Created: {meta["created"]} by `tollgate router train --data {",".join(meta["trained_on"])} \
--featurizer {fconf["name"]} --alpha {args.alpha} --rank {args.rank}{flags} --out ...`
- Featurizer: `{fconf["name"]}` {fconf}
- Model: one ridge regression per model profile (scikit-learn `Ridge`, alpha={args.alpha}) on the
  featurizer's sparse features, factored to rank {router.projection.shape[1]}: prompt vector
  z = x @ W (W float16 in `weights.npz`), quality(m) = clip(z . v_m + b_m, 0.001, 0.999).
  `strong_score(strong, weak)` = (1 + predicted strong - weak gap) / 2, i.e. the "gap" label.
- Profiles ({len(router.profiles)}): {", ".join(router.profiles)}
- Default strong / weak profile (for models without a profile): {router.default_strong} /
  {router.default_weak}
- Training split: {meta["split"]} (held-out split = the rest, by prompt).

## Data and licences
- AlpacaEval 2 annotations, tatsu-lab/alpaca_eval@cd543a149df89434d8a54582c0151c0b945c3d20,
  data CC BY-NC 4.0 (code Apache-2.0); the answers come from the named models. Non-commercial:
  this artifact is derived from it, so the same terms apply to the alpaca_eval profiles.
  Label: P(model's answer beats the median model's on that prompt), Bradley-Terry from each
  model's judged preference against the common gpt4_1106_preview reference.
- LLMRouter correctness matrix, ulab-uiuc/LLMRouter@4e7a796942ce26e9d5f2b93191c7c2585c99c2e3,
  MIT. Label: graded correctness in [0, 1]. Contains test items of public benchmarks (MMLU,
  GSM8K, ...): no number is reported on any benchmark whose items were trained on.
- Not used, not looked at: RouteLLM's evaluation data, Arena-Hard, MT-Bench (held out).

## Metrics (RouteLLM definitions; APGR as a fraction, CPT as % of calls to the strong model)
Measured on the held-out split of each source. Cross-source rows: a router fitted on one source
only, measured on the other source's held-out split, scoring with its default strong/weak
profiles because that source's models are unknown to it.

{header}
{chr(10).join(rows)}

## Limits
- Training conversations are single-turn; the featurizer reads every turn, the system prompt
  and tool definitions, but structure features that never vary in training get little weight.
- AlpacaEval has 805 prompts (about 160 held out): its APGR moves by a few points between
  splits.
- alpha and rank were picked on an inner validation split of the training prompts (alpha in
  0.3/1/3/10 x rank 8/16/32/64). An earlier exploration also looked at the held-out split for
  alpha 0.3/1/3 and for the AlpacaEval label (Bradley-Terry vs raw win probability), so the
  held-out rows may be slightly optimistic; the cross-source rows are the transfer estimate.
- Held-out prompts come from the same benchmarks as the training prompts (LLMRouter mixes
  templated benchmark items), so in-source numbers overstate transfer to new traffic.
"""


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
        costs = {k: float(v) for k, v in _kv(args.costs, "--costs").items()}
        missing = [m for m in models if m not in costs]
        if missing:
            raise SystemExit(f"--costs: no cost for {missing}; give --costs A=0.1,B=1.0,...")
        mapping = eval_profiles(router, models, explicit, {}, args.strict, sys.stdout)
        write_chart(eval_multi(router, items, models, costs, mapping, out_dir, sys.stdout), out_dir)
        return 0
    if not (args.strong and args.weak):
        raise SystemExit("router eval needs --strong A --weak B, or --models A,B,C --costs ...")
    roles = {args.strong: "strong", args.weak: "weak"}
    mapping = eval_profiles(
        router, [args.strong, args.weak], explicit, roles, args.strict, sys.stdout
    )
    write_chart(
        eval_pair(router, items, args.strong, args.weak, mapping, out_dir, sys.stdout), out_dir
    )
    return 0


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
Refitting on your own traffic instead:
  tollgate router train --from-store [--config FILE] [--since 30d] [--out DIR]
refits each model's profile on the feedback and judge scores recorded in the routing
file's store and prints the held-out error before and after; it writes an artifact only
with --out (tollgate router train --from-store --help)."""


def build_parser() -> argparse.ArgumentParser:
    raw = argparse.RawDescriptionHelpFormatter
    p = argparse.ArgumentParser(
        prog="tollgate router", description=USER_HELP, epilog=USER_EPILOG, formatter_class=raw
    )
    sub = p.add_subparsers(dest="cmd", required=True, title="commands", metavar="COMMAND")

    t = sub.add_parser(
        "train",
        help="fit a new router artifact (or --from-store: refit on recorded scores)",
        description="Fit a new router artifact on the shipped training data (prompts "
        "with the recorded quality of each model's answer) and write it to --out.",
        epilog=TRAIN_EPILOG,
        formatter_class=raw,
    )
    t.add_argument(
        "--data",
        default=",".join(SOURCES),
        help=f"comma-separated training sources (default: all of {', '.join(SOURCES)})",
    )
    t.add_argument(
        "--featurizer",
        default="lexical",
        choices=FEATURIZERS,
        help="how prompts become vectors: lexical (default, no extra dependencies) or "
        "semantic (MiniLM; pip install 'tollgate[semantic]')",
    )
    t.add_argument("--alpha", type=float, default=10.0, help="ridge regularisation (default 10)")
    t.add_argument("--rank", type=int, default=32, help="size of the prompt vector (default 32)")
    t.add_argument(
        "--all", action="store_true", help="train on the held-out prompts too (no honest eval)"
    )
    t.add_argument(
        "--cross", action="store_true", help="also measure transfer from one source to another"
    )
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    t.add_argument("--out", required=True, help="artifact directory to write")
    t.set_defaults(fn=cmd_train)

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
