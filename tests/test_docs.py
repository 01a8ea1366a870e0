"""BENCHMARKS.md opens with the current result of every benchmark and stays small.

A reader should find today's figures on the first screen, not under 50 KB of dated runs:
one table (scenario, Tollgate, direct, LiteLLM, target, met) within the first 40 lines, and
the whole page under 15 KB so later sections still fit. Earlier runs belong in git history.
"""

from __future__ import annotations

from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1] / "BENCHMARKS.md"
MAX_BYTES = 15_000
FIRST_LINES = 40
COLUMNS = ["scenario", "Tollgate", "direct", "LiteLLM", "target", "met"]
VERDICTS = {"met", "missed", "-"}
# The benchmarks whose current result the table must show (scenario column, by prefix or word).
MUST_COVER = ["(a)", "(b)", "(c)", "(d)", "RSS", "Router decision"]


def cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def results_table(lines: list[str]) -> tuple[int, list[list[str]]]:
    """The header's line number (1-based) and the rows of the results table."""
    for i, line in enumerate(lines):
        if line.lstrip().startswith("|") and cells(line) == COLUMNS:
            rows = []
            for row in lines[i + 2 :]:
                if not row.lstrip().startswith("|"):
                    break
                rows.append(cells(row))
            return i + 1, rows
    raise AssertionError(
        "BENCHMARKS.md has no results table with the columns " + " | ".join(COLUMNS)
    )


def test_benchmarks_page_stays_under_15_kb() -> None:
    size = len(BENCHMARKS.read_bytes())
    assert size <= MAX_BYTES, (
        f"BENCHMARKS.md is {size:,} bytes, over the {MAX_BYTES:,} allowed: keep the current "
        "figures in the results table and leave earlier runs to git history (the bench "
        "scripts write their full tables here unless given --no-write)"
    )


def test_benchmarks_page_opens_with_the_results_table() -> None:
    lines = BENCHMARKS.read_text(encoding="utf-8").splitlines()
    header_at, rows = results_table(lines)
    assert header_at <= FIRST_LINES, (
        f"the results table starts on line {header_at}; it must start within the first "
        f"{FIRST_LINES} lines"
    )
    before = [ln for ln in lines[: header_at - 1] if ln.startswith("#")]
    assert before == ["# Benchmarks"], f"only the title may come before the table, got {before}"
    separator = cells(lines[header_at])
    assert len(separator) == len(COLUMNS) and all(c and set(c) <= set("-:") for c in separator), (
        "the table's header is not followed by a separator row"
    )
    for row in rows:
        assert len(row) == len(COLUMNS), f"row has {len(row)} cells, not {len(COLUMNS)}: {row}"
        assert row[5] in VERDICTS, f"'met' must be one of {sorted(VERDICTS)}, got {row}"
        assert row[1], f"row without a Tollgate figure: {row}"
    scenarios = [row[0] for row in rows]
    missing = [m for m in MUST_COVER if not any(m in s for s in scenarios)]
    assert not missing, f"the results table has no row for {missing}"
