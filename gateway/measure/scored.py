"""Prompts for `tollgate bench-model`: the shipped AlpacaEval instructions, or scored tasks.

A scored file is a JSON list (or JSON lines) of {"prompt": ..., "answer": ...} objects
("kind" optional). The shipped set, data/exact_tasks.json, is written by
scripts/make_exact_tasks.py: arithmetic, counting and string tasks with one exact answer.

Grading is exact match after normalising both sides: case folded, surrounding whitespace,
quotes, backticks and a final full stop removed, an "Answer:" prefix dropped; the answer is
right when its first non-empty line, so normalised, equals the reference.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gateway.measure.load import Answer, Prompt

BUILTIN_TASKS = Path(__file__).resolve().parent / "data" / "exact_tasks.json"
BUILTIN = "builtin"
MAX_TASKS = 100_000
_PREFIX = re.compile(r"^(the\s+)?(final\s+)?answer\s*(is)?\s*[:=]?\s*", re.IGNORECASE)


class TasksError(ValueError):
    """A scored file that cannot be used; the message says what is wrong and how to fix it."""


def instruction_prompts(n: int) -> list[Prompt]:
    """The first `n` AlpacaEval instructions the demo replays (real prompts, shipped)."""
    from gateway.demo.replay.dataset import instructions

    return [Prompt(text) for text in instructions()[:n]]


def load_tasks(spec: str) -> list[Prompt]:
    """The tasks of a scored file (`builtin`: the shipped exact-answer set)."""
    path = BUILTIN_TASKS if spec == BUILTIN else Path(spec)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise TasksError(f"--scored {spec}: cannot read it ({e.strerror})") from None
    rows: Any
    try:
        rows = json.loads(text)
    except json.JSONDecodeError:
        try:
            rows = [json.loads(line) for line in text.splitlines() if line.strip()]
        except json.JSONDecodeError as e:
            raise TasksError(
                f"--scored {spec}: line {e.lineno}: not JSON; give a JSON list or JSON lines of "
                '{"prompt": "...", "answer": "..."}'
            ) from None
    if not isinstance(rows, list) or not rows:
        raise TasksError(f'--scored {spec}: expected a non-empty list of {{"prompt", "answer"}}')
    if len(rows) > MAX_TASKS:
        raise TasksError(f"--scored {spec}: {len(rows):,} tasks; at most {MAX_TASKS:,}")
    out = []
    for i, r in enumerate(rows):
        ok = isinstance(r, dict) and isinstance(r.get("prompt"), str) and r["prompt"].strip()
        if not ok or not isinstance(r.get("answer"), str | int | float):
            raise TasksError(
                f'--scored {spec}: task {i}: needs a non-empty string "prompt" and an '
                f'"answer" (string or number), got {str(r)[:120]}'
            )
        out.append(Prompt(r["prompt"], str(r["answer"]), str(r.get("kind") or "")))
    return out


def normalise(text: str) -> str:
    line = next((ln for ln in text.strip().splitlines() if ln.strip()), "")
    s = _PREFIX.sub("", line.strip()).strip()
    s = s.strip("`'\"*").strip()
    s = s.removesuffix(".").strip()
    return s.casefold()


def correct(answer: Answer) -> bool | None:
    """Is the answer right? None when its prompt has no reference."""
    if answer.prompt is None or answer.prompt.answer is None:
        return None
    return answer.ok and normalise(answer.text) == normalise(answer.prompt.answer)


def accuracy(answers: Sequence[Answer]) -> tuple[int, int] | None:
    """(right, graded) over the answers whose prompt has a reference; an error counts wrong."""
    graded = [c for a in answers if (c := correct(a)) is not None]
    if not graded:
        return None
    return sum(graded), len(graded)
