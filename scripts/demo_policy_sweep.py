"""Which routing policy setting the shipped routing file should use for `auto`, chosen on the
AlpacaEval prompts the router was trained on, never on the demo's held-out ones.

    .venv/bin/python scripts/demo_policy_sweep.py [--config FILE] [--heldout]

Replays the gateway's own routing decision (`Runtime.resolve("auto", ...)`, the shipped router
and the routing file's models and prices) for every replayed instruction, takes the replayed
answer of the tier it picked, and prints quality and cost as shares of always-large for each
setting of the default policy's knob (max_utility: cost_weight; cheapest_above: target). The
setting is picked on the training prompts; `--heldout` also prints the held-out prompts'
numbers, to be read once the setting is fixed (what `tollgate demo --heldout-only` reports).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gateway.accounting import pricing
from gateway.config import DEFAULT_CONFIG_PATH, PolicyConfig, load_config
from gateway.demo.replay import dataset
from gateway.routing.policies import make_policy
from gateway.routing.runtime import Runtime, UpstreamPool
from router_models import load_router
from router_models.data import is_heldout

KNOBS = {
    "max_utility": ("cost_weight", [0, 25, 50, 100, 150, 200, 300, 400, 600, 800, 1200, 2000]),
    "cheapest_above": ("target", [0.02, 0.04, 0.06, 0.08, 0.1, 0.12, 0.15, 0.2, 0.3, 0.5, 0.7]),
}


def shares(rt: Runtime, prompts: list[str], models: dict[str, dataset.ReplayModel]) -> tuple:
    by_tier = {tier: m for m, (tier, _s) in dataset.REPLAY_MODELS.items()}
    prices = {n: pricing.resolve_pricing(rt.models[n]) for n in rt.models}
    tier_of = {n: m.tier for n, m in rt.models.items()}
    large_name = next(n for n, t in tier_of.items() if t == "large")
    q = c = lq = lc = 0.0
    mix: dict[str, int] = {}
    for p in prompts:
        plan = rt.resolve("auto", "chat", {"messages": [{"role": "user", "content": p}]})
        name = plan.models[0]
        tier = tier_of[name]
        mix[tier] = mix.get(tier, 0) + 1
        a = models[by_tier[tier]].get(p)
        b = models[by_tier["large"]].get(p)
        assert a is not None and b is not None
        tok = dataset.prompt_tokens(p)
        q += a.quality
        c += pricing.cost_usd(prices[name], tok, a.completion_tokens)
        lq += b.quality
        lc += pricing.cost_usd(prices[large_name], tok, b.completion_tokens)
    n = max(1, len(prompts))
    return q / lq, c / lc, {t: round(100 * k / n) for t, k in sorted(mix.items())}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default=str(DEFAULT_CONFIG_PATH))
    ap.add_argument("--heldout", action="store_true", help="also print the held-out prompts")
    args = ap.parse_args()
    cfg = load_config(args.config)
    router = load_router(cfg.router.artifact)
    rt = Runtime(cfg, UpstreamPool(), router)
    models = dataset.load_all()
    everything = dataset.instructions()
    train = [p for p in everything if not is_heldout(p)]
    held = [p for p in everything if is_heldout(p)]
    print(f"{len(train)} training prompts, {len(held)} held out; shares of always-large")
    for kind, (knob, values) in KNOBS.items():
        for v in values:
            pol = make_policy("sweep", PolicyConfig(kind=kind, **{knob: v}))  # type: ignore[arg-type]
            rt.policies[cfg.router.default_policy] = pol
            tq, tc, tmix = shares(rt, train, models)
            line = f"{kind:15} {knob}={v:<6g} train: quality {tq:6.1%} cost {tc:6.1%} {tmix}"
            if args.heldout:
                hq, hc, _ = shares(rt, held, models)
                line += f" | held out: quality {hq:6.1%} cost {hc:6.1%}"
            print(line, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
