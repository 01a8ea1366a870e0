"""The benchmark harness pools its rounds' latencies into one distribution per target.

BENCHMARKS.md's verdicts rest on these numbers, so the pooling is checked against the plain
definition: the percentile of every request of every round taken together.
"""

from __future__ import annotations

import random
import sys
from collections import Counter
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import overhead as ov


def nearest_rank(xs: list[int], p: float) -> int:
    """wrk's percentile: the smallest value with at least round(p% of n + 0.5) at or below."""
    s = sorted(xs)
    return s[max(0, min(len(s), round(p / 100 * len(s) + 0.5)) - 1)]


def histogram(xs: list[int]) -> list[tuple[int, int]]:
    return sorted(Counter(xs).items())


def wrk_round(xs: list[int]) -> dict[str, object]:
    return {
        "tool": "wrk",
        "hist_us": histogram(xs),
        "requests": len(xs),
        "errors": 0,
        "seconds": 5.0,
        "rps": len(xs) / 5.0,
        "p50_ms": nearest_rank(xs, 50) / 1000,
        "p99_ms": nearest_rank(xs, 99) / 1000,
    }


def test_histogram_percentile_is_wrks_nearest_rank() -> None:
    rng = random.Random(7)
    xs = [int(rng.lognormvariate(10.8, 0.08)) for _ in range(6_001)]
    for p in (50, 90, 99, 99.9):
        assert ov.hist_percentile(histogram(xs), p) == nearest_rank(xs, p)


def test_rounds_pool_into_one_distribution() -> None:
    rng = random.Random(11)
    quiet = [[50_000 + int(rng.expovariate(1 / 1_500)) for _ in range(6_000)] for _ in range(3)]
    # one round with a 2% tail at 80 ms: its p99 is in the tail, the others' are not
    noisy = [50_000 + int(rng.expovariate(1 / 1_500)) for _ in range(5_880)] + [80_000] * 120
    rounds = [wrk_round(xs) for xs in (*quiet, noisy)]
    everything = [x for xs in (*quiet, noisy) for x in xs]

    res = ov.combine_rounds(rounds, cpu_s=2.4)

    assert res["latency_from"] == "pooled"
    assert res["requests"] == 24_000
    assert res["p99_ms"] == nearest_rank(everything, 99) / 1000
    assert res["p50_ms"] == nearest_rank(everything, 50) / 1000
    assert res["mean_ms"] == sum(everything) / len(everything) / 1000
    # the median of the rounds' p99s would hide the noisy round; pooling keeps its tail
    median_round = sorted(r["p99_ms"] for r in rounds)[1:3]  # type: ignore[type-var]
    assert res["p99_ms"] > max(median_round)  # type: ignore[type-var]
    assert [r["p99_ms"] for r in res["per_round"]] == [r["p99_ms"] for r in rounds]
    assert "hist_us" not in res
    assert res["cpu_us_per_req"] == pytest.approx(100.0)


def test_client_rounds_pool_their_samples() -> None:
    rounds = [
        {
            "tool": "asyncio-client",
            "requests": 3,
            "errors": 0,
            "seconds": 1.0,
            "rps": 3.0,
            "p50_ms": 2.0,
            "p99_ms": 3.0,
            "samples_ms": xs,
            "ttfb_samples_ms": [x / 2 for x in xs],
        }
        for xs in ([1.0, 2.0, 3.0], [10.0, 20.0, 30.0])
    ]
    res = ov.combine_rounds(rounds, cpu_s=None)
    assert res["p50_ms"] == 3.0  # the pooled middle (1, 2, 3, 10, 20, 30), not a round's
    assert res["p99_ms"] == 30.0
    assert res["ttfb_p99_ms"] == 15.0
    assert "samples_ms" not in res and "ttfb_samples_ms" not in res


def test_rounds_without_raw_latencies_fall_back_to_the_median_round() -> None:
    rounds = [
        {"tool": "x", "requests": 1, "errors": 0, "seconds": 1.0, "p99_ms": v}
        for v in (1.0, 5.0, 9.0)
    ]
    res = ov.combine_rounds(rounds, cpu_s=None)
    assert res["latency_from"] == "median round"
    assert res["p99_ms"] == 5.0
