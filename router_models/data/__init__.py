"""Training data: the copied score matrices and the loaders that turn them into one table.

`build_from_shared()` (run once by a developer) extracts from ../shared/data only what training
needs into `alpaca_eval.json.gz` and `dcrouter.json.gz` beside this file; `load_source()` reads
them back. See README.md here for provenance and licences.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

DATA_DIR = Path(__file__).resolve().parent
SOURCES = ("alpaca_eval", "dcrouter", "zeroeval_crux", "zeroeval_math", "mmlu_pro")
HELDOUT_PERCENT = 20  # share of prompts (by hash of the prompt text) held out for measurement

ALPACA_COMMIT = "cd543a149df89434d8a54582c0151c0b945c3d20"
DCROUTER_COMMIT = "4e7a796942ce26e9d5f2b93191c7c2585c99c2e3"
ZEROEVAL_COMMIT = "570c6269a2e4930ee06a17e713fece1ba52cf1dd"
MMLU_PRO_COMMIT = "f418b116db00b065c2aea046518d8fcf74d39872"
WILDBENCH_COMMIT = "d6b8dcaf377d173d031980f97c16e1a82618c03d"


@dataclass
class Matrix:
    """One source as a prompt x model score matrix; NaN where a model has no score."""

    source: str
    ids: list[str]
    prompts: list[str]
    models: list[str]
    scores: np.ndarray  # float64 [n_prompts, n_models] in [0, 1]
    heldout: np.ndarray  # bool [n_prompts]
    # characters of each model's answer where the source records them (NaN elsewhere)
    output_chars: np.ndarray | None = None
    # data names merged into each canonical model (names.json)
    data_names: dict[str, list[str]] | None = None

    def conversations(self) -> list[list[dict[str, Any]]]:
        return [[{"role": "user", "content": p}] for p in self.prompts]

    def subset(self, mask: np.ndarray) -> Matrix:
        idx = np.flatnonzero(mask)
        return Matrix(
            self.source,
            [self.ids[i] for i in idx],
            [self.prompts[i] for i in idx],
            list(self.models),
            self.scores[idx],
            self.heldout[idx],
            None if self.output_chars is None else self.output_chars[idx],
            self.data_names,
        )

    def table(self) -> list[tuple[list[dict[str, Any]], str, float]]:
        """The long form: one (conversation, model, score) row per known score."""
        rows = []
        for i, conv in enumerate(self.conversations()):
            for j, m in enumerate(self.models):
                s = self.scores[i, j]
                if not math.isnan(s):
                    rows.append((conv, m, float(s)))
        return rows


def is_heldout(prompt: str) -> bool:
    digest = hashlib.sha256(prompt.encode("utf-8")).digest()
    return int.from_bytes(digest[:4], "big") % 100 < HELDOUT_PERCENT


def _prompt_id(source: str, prompt: str) -> str:
    return f"{source}-{hashlib.sha256(prompt.encode('utf-8')).hexdigest()[:12]}"


def load_source(source: str, path: Path | None = None, canonical: bool = True) -> Matrix:
    """Read one copied source (one of SOURCES) as a Matrix.

    With `canonical` (the default) models carry their canonical identity (names.json); data
    names that map to the same identity in one source (the same model from two providers)
    are merged by averaging their scores.
    """
    if source not in SOURCES and path is None:
        raise ValueError(f"unknown data source {source!r}; choose one of {list(SOURCES)}")
    from router_models.data.names import canonical as canon

    p = path or DATA_DIR / f"{source}.json.gz"
    with gzip.open(p, "rt", encoding="utf-8") as f:
        doc = json.load(f)
    raw_models: list[str] = doc["models"]
    src = doc["source"]
    groups: dict[str, list[str]] = {}
    for m in raw_models:
        groups.setdefault(canon(m, src) if canonical else m, []).append(m)
    models = list(groups)
    items = doc["items"]
    scores = np.full((len(items), len(models)), np.nan)
    chars = np.full((len(items), len(models)), np.nan)
    has_chars = False
    for i, it in enumerate(items):
        sc = it["scores"]
        oc = it.get("output_chars") or {}
        has_chars = has_chars or bool(oc)
        for j, names in enumerate(groups.values()):
            vs = [float(sc[n]) for n in names if sc.get(n) is not None]
            if vs:
                scores[i, j] = sum(vs) / len(vs)
            cs = [float(oc[n]) for n in names if oc.get(n) is not None]
            if cs:
                chars[i, j] = sum(cs) / len(cs)
    prompts = [it["prompt"] for it in items]
    return Matrix(
        source=src,
        ids=[it["id"] for it in items],
        prompts=prompts,
        models=models,
        scores=scores,
        heldout=np.array([is_heldout(p) for p in prompts], dtype=bool),
        output_chars=chars if has_chars else None,
        data_names=groups,
    )


def load_table(sources: list[str] | None = None) -> list[tuple[list[dict[str, Any]], str, float]]:
    """All copied sources as one (conversation, model, score in [0, 1]) table."""
    rows: list[tuple[list[dict[str, Any]], str, float]] = []
    for s in sources or list(SOURCES):
        rows.extend(load_source(s).table())
    return rows


def write_bench(matrix: Matrix, path: Path) -> int:
    """Write a Matrix as a `router eval` benchmark file (one JSON object per line)."""
    n = 0
    with open(path, "w", encoding="utf-8") as f:
        for i, pid in enumerate(matrix.ids):
            sc = {
                m: round(float(matrix.scores[i, j]), 6)
                for j, m in enumerate(matrix.models)
                if not math.isnan(matrix.scores[i, j])
            }
            f.write(json.dumps({"id": pid, "prompt": matrix.prompts[i], "scores": sc}) + "\n")
            n += 1
    return n
