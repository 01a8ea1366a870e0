"""Rebuild `gateway/demo/replay/data/` from the AlpacaEval annotation files (run once, offline).

    python -m gateway.demo.replay.build_data ../shared/data/alpaca_eval/full

Keeps, per model, only what the replay needs: the instruction, the model's answer
(`output_2`) and the GPT-4-Turbo judge's preference (`preference`, 1..2) against the
reference answer of gpt4_1106_preview. See data/PROVENANCE.md.
"""

from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path

from gateway.demo.replay.dataset import DATA_DIR, REPLAY_MODELS


def build(src: Path, dst: Path = DATA_DIR) -> None:
    dst.mkdir(parents=True, exist_ok=True)
    for model in REPLAY_MODELS:
        with gzip.open(src / f"{model}.json.gz", "rt", encoding="utf-8") as f:
            rows = json.load(f)
        slim = []
        for r in rows:
            if r["generator_2"] != model:
                raise ValueError(f"{model}: a row answered by {r['generator_2']!r}")
            pref = float(r["preference"])
            if not 1.0 <= pref <= 2.0:
                raise ValueError(f"{model}: preference {pref} outside [1, 2]")
            slim.append(
                {"instruction": r["instruction"], "output": r["output_2"], "preference": pref}
            )
        text = json.dumps(slim, ensure_ascii=False, separators=(",", ":"))
        # mtime=0: the same input gives byte-identical files.
        with (
            open(dst / f"{model}.json.gz", "wb") as raw,
            gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=9, mtime=0) as gz,
        ):
            gz.write(text.encode("utf-8"))
        print(f"{model}: {len(slim)} rows")


if __name__ == "__main__":
    build(Path(sys.argv[1] if len(sys.argv) > 1 else "../shared/data/alpaca_eval/full"))
