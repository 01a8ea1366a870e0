"""Latency of one routing decision (featurize + predict + policy) at 200, 2,000 and 20,000 chars.

    OMP_NUM_THREADS=1 taskset -c 0 .venv/bin/python bench/router_speed.py [--router DIR] [--n 2000]
        [--cold]

Conversations are multi-turn, built from real prompts of the copied training data. Prints
p50/p99 per size and the artifact load time; timings are wall-clock on one core, GC paused.
With --cold every decision runs after 64 MiB of other memory has been written, so nothing of
the router (its 4 MiB projection, its code) is left in the CPU caches: a gateway under
moderate load (scenario (b)) sees something between the two.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np

from gateway.config import PolicyConfig
from gateway.routing.policies import Candidate, make_policy
from router_models import load_router
from router_models.data import load_source

SIZES = (200, 2_000, 20_000)


def conversation(prompts: list[str], chars: int, offset: int) -> list[dict[str, str]]:
    msgs: list[dict[str, str]] = [{"role": "system", "content": "You are a helpful assistant."}]
    total, i = 0, offset
    while total < chars:
        role = "user" if len(msgs) % 2 else "assistant"
        text = prompts[i % len(prompts)][: chars - total]
        msgs.append({"role": role, "content": text})
        total += len(text)
        i += 1
    if msgs[-1]["role"] != "user":
        msgs.append({"role": "user", "content": "Go on."})
    return msgs


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--router", default="default")
    ap.add_argument("--n", type=int, default=2000, help="decisions per size")
    ap.add_argument("--cold", action="store_true", help="evict the CPU caches before each")
    args = ap.parse_args()
    t0 = time.perf_counter()
    router = load_router(args.router)
    load_ms = (time.perf_counter() - t0) * 1e3
    prompts = load_source("dcrouter").prompts + load_source("alpaca_eval").prompts
    cands = [
        Candidate("small", "small", 0, router.default_weak, 0.0002),
        Candidate("large", "large", 2, router.default_strong, 0.005),
    ]
    extra = [p for p in ("vicuna-13b-v1.5", "gpt-3.5-turbo-1106") if router.has_profile(p)]
    for k, p in enumerate(extra):
        cands.append(
            Candidate(p, "medium" if k == 0 else "external", 1 + 2 * k, p, 0.001 * (k + 1))
        )
    policy = make_policy("balanced", PolicyConfig(kind="cheapest_above", target=0.55))
    print(
        f"router {router.version}: load {load_ms:.0f} ms, {len(cands)} candidates, "
        "policy cheapest_above"
    )
    evict = np.zeros(64 << 20 if args.cold else 0, dtype=np.uint8)
    print(f"{'chars':>7} {'p50 ms':>8} {'p99 ms':>8} {'p99/p50':>8}")
    for size in SIZES:
        convs = [conversation(prompts, size, 37 * j) for j in range(50)]
        for c in convs[:10]:  # warm-up
            policy.decide(router, router.featurize(c), cands)
        n = args.n if size < 20_000 else max(args.n // 4, 200)
        if args.cold:
            n = min(n, 500)
        times = np.empty(n)
        gc.disable()
        for j in range(n):
            c = convs[j % len(convs)]
            if args.cold:
                evict[::64] += 1  # one write per cache line
            t = time.perf_counter()
            policy.decide(router, router.featurize(c), cands)
            times[j] = time.perf_counter() - t
        gc.enable()
        p50, p99 = np.percentile(times, 50) * 1e3, np.percentile(times, 99) * 1e3
        print(f"{size:>7} {p50:8.3f} {p99:8.3f} {p99 / p50:8.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
