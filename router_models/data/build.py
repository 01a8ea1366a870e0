"""One-off extraction of the training data from ../shared/data into this folder.

Run by a developer: `python -m router_models.data.build [SHARED_DATA_DIR]`.
"""

from __future__ import annotations

import gzip
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from router_models.data import ALPACA_COMMIT, DATA_DIR, DCROUTER_COMMIT, _prompt_id

# Rows the shared README says are not real models.
_ALPACA_DROP = {"example", "gpt4_gamed", "gpt4_1106_preview"}


def _alpaca_from_shared(shared: Path) -> dict[str, Any]:
    rows = []
    with gzip.open(shared / "alpaca_eval" / "annotations_slim.jsonl.gz", "rt") as f:
        for line in f:
            rows.append(json.loads(line))
    # Keep one canonical annotation file per model: results/<model>/<annotator>/annotations.json.
    by_key: dict[tuple[str, str], float] = {}
    for r in rows:
        model = r["generator_2"]
        if model in _ALPACA_DROP or model.endswith(("_concise", "_verbose")):
            continue
        if model.startswith("FuseChat"):
            continue  # the shared README flags these rows as anomalous
        if r["source_path"].count("/") != 3 or r["preference"] is None:
            continue  # the duplicated vicuna files live one directory deeper
        pref = float(r["preference"])
        if not math.isfinite(pref):
            continue
        by_key[(r["instruction"], model)] = min(1.0, max(0.0, pref - 1.0))
    prompts = sorted({k[0] for k in by_key})
    models = sorted({k[1] for k in by_key})
    items = [
        {
            "id": _prompt_id("alpaca_eval", p),
            "prompt": p,
            "scores": {m: round(by_key[(p, m)], 5) for m in models if (p, m) in by_key},
        }
        for p in prompts
    ]
    return {
        "source": "alpaca_eval",
        "origin": f"tatsu-lab/alpaca_eval@{ALPACA_COMMIT} "
        "results/*/weighted_alpaca_eval_gpt4_turbo",
        "licence": "CC BY-NC 4.0 (data); answers by the named models",
        "score": "preference - 1: probability that the model's answer beats gpt4_1106_preview's "
        "(GPT-4-Turbo judge)",
        "models": models,
        "items": items,
    }


def _dcrouter_from_shared(shared: Path) -> dict[str, Any]:
    merged: dict[str, dict[str, list[float]]] = {}
    for name in ("train.json.gz", "test.json.gz"):
        with gzip.open(shared / "dcrouter" / name, "rt") as f:
            for r in json.load(f):
                slot = merged.setdefault(r["question"], {})
                for m, v in r["scores"].items():
                    slot.setdefault(m, []).append(float(v))
    models = sorted({m for s in merged.values() for m in s})
    items = [
        {
            "id": _prompt_id("dcrouter", q),
            "prompt": q,
            "scores": {m: round(float(np.mean(v)), 5) for m, v in s.items()},
        }
        for q, s in sorted(merged.items())
    ]
    return {
        "source": "dcrouter",
        "origin": f"ulab-uiuc/LLMRouter@{DCROUTER_COMMIT} train.json + test.json (merged, "
        "questions deduplicated, repeated scores averaged)",
        "licence": "MIT (see LICENSE.dcrouter)",
        "score": "graded correctness in [0, 1]",
        "models": models,
        "items": items,
    }


def build_from_shared(shared: Path, out_dir: Path = DATA_DIR) -> list[Path]:
    written = []
    for name, doc in (
        ("alpaca_eval", _alpaca_from_shared(shared)),
        ("dcrouter", _dcrouter_from_shared(shared)),
    ):
        path = out_dir / f"{name}.json.gz"
        raw = json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        with open(path, "wb") as f:
            # mtime=0 keeps the file byte-identical across rebuilds
            f.write(gzip.compress(raw, compresslevel=9, mtime=0))
        written.append(path)
    return written


if __name__ == "__main__":
    import sys

    shared_dir = Path(sys.argv[1]) if len(sys.argv) > 1 else DATA_DIR.parents[2] / "shared" / "data"
    for p in build_from_shared(shared_dir):
        print(f"wrote {p} ({p.stat().st_size} bytes)")
