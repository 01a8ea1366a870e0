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

from router_models.data import (
    ALPACA_COMMIT,
    DATA_DIR,
    DCROUTER_COMMIT,
    MMLU_PRO_COMMIT,
    WILDBENCH_COMMIT,
    ZEROEVAL_COMMIT,
    _prompt_id,
)
from router_models.data.names import build_table

# Rows the shared README says are not real models.
_ALPACA_DROP = {"example", "gpt4_gamed", "gpt4_1106_preview"}
# Kept although a *_concise variant: the only AlpacaEval judgment of Mixtral (names.json
# `variants`: it stands in for mixtral-8x7b-instruct-v0.1 in this source only).
_ALPACA_KEEP = {"Mixtral-8x7B-Instruct-v0.1_concise"}
REFERENCE = "gpt4_1106_preview"


def _alpaca_from_shared(shared: Path) -> dict[str, Any]:
    rows = []
    with gzip.open(shared / "alpaca_eval" / "annotations_slim.jsonl.gz", "rt") as f:
        for line in f:
            rows.append(json.loads(line))
    # Keep one canonical annotation file per model: results/<model>/<annotator>/annotations.json.
    by_key: dict[tuple[str, str], float] = {}
    chars: dict[tuple[str, str], int] = {}
    for r in rows:
        model = r["generator_2"]
        if model in _ALPACA_DROP or (
            model.endswith(("_concise", "_verbose")) and model not in _ALPACA_KEEP
        ):
            continue
        if model.startswith("FuseChat"):
            continue  # the shared README flags these rows as anomalous
        if r["source_path"].count("/") != 3 or r["preference"] is None:
            continue  # the duplicated vicuna files live one directory deeper
        pref = float(r["preference"])
        if not math.isfinite(pref):
            continue
        by_key[(r["instruction"], model)] = min(1.0, max(0.0, pref - 1.0))
        chars[(r["instruction"], model)] = int(r["output_2_chars"])
        chars[(r["instruction"], REFERENCE)] = int(r["output_1_chars"])
    prompts = sorted({k[0] for k in by_key})
    # The reference against which every model was judged: by construction it ties itself,
    # P(reference beats reference) = 0.5 on every prompt (a data-backed gpt-4-1106 profile).
    for p in prompts:
        by_key[(p, REFERENCE)] = 0.5
    models = sorted({k[1] for k in by_key})
    items = [
        {
            "id": _prompt_id("alpaca_eval", p),
            "prompt": p,
            "scores": {m: round(by_key[(p, m)], 5) for m in models if (p, m) in by_key},
            "output_chars": {m: chars[(p, m)] for m in models if (p, m) in chars},
        }
        for p in prompts
    ]
    return {
        "source": "alpaca_eval",
        "origin": f"tatsu-lab/alpaca_eval@{ALPACA_COMMIT} "
        "results/*/weighted_alpaca_eval_gpt4_turbo",
        "licence": "CC BY-NC 4.0 (data); answers by the named models",
        "score": "preference - 1: probability that the model's answer beats gpt4_1106_preview's "
        "(GPT-4-Turbo judge); gpt4_1106_preview itself = 0.5 (it ties itself)",
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


def _jsonl(path: Path) -> list[dict[str, Any]]:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _zeroeval_from_shared(shared: Path, source: str) -> dict[str, Any]:
    sub, fname, what = {
        "zeroeval_crux": ("zeroeval_crux", "crux.jsonl.gz", "CRUXEval-O, result_dirs/crux"),
        "zeroeval_math": ("zeroeval_math", "math_l5_half.jsonl.gz", "MATH level 5 (half)"),
    }[source]
    rows = _jsonl(shared / sub / fname)
    models = sorted({m for r in rows for m in r["scores"]})
    items = []
    for r in rows:
        prompt = r["messages"][0]["content"]
        items.append(
            {
                "id": f"{source}-{r['id']}",
                "prompt": prompt,
                "scores": {m: float(v) for m, v in sorted(r["scores"].items()) if v is not None},
                "output_chars": {m: int(v) for m, v in sorted(r["output_chars"].items())},
            }
        )
    return {
        "source": source,
        "origin": f"yuchenlin/ZeroEval@{ZEROEVAL_COMMIT} {what} (the project's shared extract)",
        "licence": "Apache-2.0 (see LICENSE.zeroeval)",
        "score": "graded correctness 0/1 (ZeroEval's rule)",
        "models": models,
        "items": items,
    }


def _mmlu_from_shared(shared: Path) -> dict[str, Any]:
    rows = _jsonl(shared / "mmlu_pro" / "mmlu_pro_nonmmlu.jsonl.gz")
    models = sorted({m for r in rows for m in r["scores"]})
    items = [
        {
            "id": f"mmlu_pro-{r['id']}",
            "prompt": r["messages"][0]["content"],
            "category": r["category"],
            "scores": {m: float(v) for m, v in sorted(r["scores"].items()) if v is not None},
        }
        for r in rows
    ]
    return {
        "source": "mmlu_pro",
        "origin": f"TIGER-AI-Lab/MMLU-Pro@{MMLU_PRO_COMMIT} eval_results (non-MMLU questions, "
        "the project's shared extract)",
        "licence": "Apache-2.0 (see LICENSE.mmlu_pro)",
        "score": "1 when the model's 5-shot CoT prediction equals the answer key, else 0",
        "models": models,
        "items": items,
    }


def _write(doc: Any, path: Path) -> Path:
    raw = json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    with open(path, "wb") as f:
        # mtime=0 keeps the file byte-identical across rebuilds
        f.write(gzip.compress(raw, compresslevel=9, mtime=0))
    return path


def _side_tables(shared: Path, docs: dict[str, dict[str, Any]], out_dir: Path) -> list[Path]:
    """names.json (data name -> canonical), elo.json (WildBench WB_Elo by canonical name)."""
    stats = json.loads((shared / "leaderboard" / "wildbench_stats.json").read_text())
    arena = json.loads((shared / "prices" / "routerarena_cost.json").read_text())
    names = {s: list(d["models"]) for s, d in docs.items()}
    names["wildbench"] = sorted(stats)
    names["routerarena"] = sorted(arena)
    table = build_table(names)
    (out_dir / "names.json").write_text(json.dumps(table, indent=1) + "\n")
    elo = {
        "origin": f"allenai/WildBench@{WILDBENCH_COMMIT} leaderboard/data_dir/"
        "all_stat_wildbench.-1.json, field WB_Elo (Apache-2.0)",
        "elo": {
            table["aliases"][m]: round(float(v["WB_Elo"]), 1)
            for m, v in sorted(stats.items())
            if "WB_Elo" in v
        },
    }
    (out_dir / "elo.json").write_text(json.dumps(elo, indent=1) + "\n")
    return [out_dir / "names.json", out_dir / "elo.json"]


def build_from_shared(shared: Path, out_dir: Path = DATA_DIR) -> list[Path]:
    written = []
    docs = {
        "alpaca_eval": _alpaca_from_shared(shared),
        "dcrouter": _dcrouter_from_shared(shared),
        "zeroeval_crux": _zeroeval_from_shared(shared, "zeroeval_crux"),
        "zeroeval_math": _zeroeval_from_shared(shared, "zeroeval_math"),
        "mmlu_pro": _mmlu_from_shared(shared),
    }
    written.extend(_side_tables(shared, docs, out_dir))
    for name, doc in docs.items():
        written.append(_write(doc, out_dir / f"{name}.json.gz"))
    for sub in ("zeroeval_crux", "mmlu_pro", "leaderboard"):
        lic = (shared / sub / "LICENSE").read_text()
        tag = {"zeroeval_crux": "zeroeval", "leaderboard": "wildbench"}.get(sub, sub)
        (out_dir / f"LICENSE.{tag}").write_text(lic)
        written.append(out_dir / f"LICENSE.{tag}")
    return written


if __name__ == "__main__":
    import sys

    shared_dir = Path(sys.argv[1]) if len(sys.argv) > 1 else DATA_DIR.parents[2] / "shared" / "data"
    for p in build_from_shared(shared_dir):
        print(f"wrote {p} ({p.stat().st_size} bytes)")
