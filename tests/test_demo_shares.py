"""`tollgate demo --heldout-only` reports quality and cost shares of always-large with intervals."""

from __future__ import annotations

import io
import re
from pathlib import Path

from gateway.demo import demo
from gateway.demo.shares import shares


def test_shares_are_ratios_of_sums_with_an_interval_around_them() -> None:
    rq = [1.0, 0.0, 1.0, 1.0] * 25
    fq = [1.0, 1.0, 1.0, 1.0] * 25
    rc = [1.0, 1.0, 1.0, 1.0] * 25
    fc = [4.0, 4.0, 4.0, 4.0] * 25
    s = shares(rq, rc, fq, fc, resamples=500)
    assert s.n == 100
    assert s.quality.point == 0.75 and s.cost.point == 0.25
    assert s.quality.low < 0.75 < s.quality.high  # the answers vary, so does the ratio
    assert s.cost.low == s.cost.high == 0.25  # every prompt costs the same share
    assert s.quality.high - s.quality.low < 0.2


def test_heldout_demo_prints_shares_of_large_with_bootstrap_intervals(tmp_path: Path) -> None:
    out = io.StringIO()
    args = ["--heldout-only", "--n", "60", "--speed", "1000", "--no-wait", "--port", "0"]
    rc = demo.main([*args, "--dir", str(tmp_path / "run")], out=out)
    text = out.getvalue()
    assert rc == 0, text
    m = re.search(
        r"per prompt vs always-large \((\d+) prompts, 90% bootstrap intervals\): "
        r"quality ([\d.]+)% \[([\d.]+), ([\d.]+)\], "
        r"cost ([\d.]+)% \[([\d.]+), ([\d.]+)\] of large's",
        text,
    )
    assert m, text
    n = int(m.group(1))
    q, qlo, qhi, c, clo, chi = (float(m.group(i)) for i in range(2, 8))
    assert 50 <= n <= 60  # every answered prompt, all of them held out
    assert qlo <= q <= qhi and clo <= c <= chi
    assert 0 < c < 100 and qhi > qlo
