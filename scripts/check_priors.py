"""Leave-one-out check of `router_models.identity` priors on an artifact.

    .venv/bin/python scripts/check_priors.py [ARTIFACT_DIR]

For each profile of the artifact: drop it, resolve its name against the rest (so it gets a
nearest-snapshot, a prior or the default), and compare that profile's predicted quality with
the dropped fitted profile's on the held-out prompts of the copied source it was fitted on
(router_models/data). Prints the mean absolute difference per source and resolution, next to
what the artifact's default weak profile and the average profile would have given.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from router_models.artifact import load_router  # noqa: E402
from router_models.data import SOURCES, load_source  # noqa: E402
from router_models.identity import resolve  # noqa: E402
from router_models.model import Router  # noqa: E402

LINK = "identity"


def _q(z: np.ndarray, v: np.ndarray, b: float) -> np.ndarray:
    raw = z @ v + b
    if LINK == "logistic":  # a joint artifact: raw is a logit
        return np.asarray(1.0 / (1.0 + np.exp(-np.clip(raw, -30, 30))))
    return np.clip(raw, 1e-3, 1 - 1e-3)


def main(argv: list[str]) -> int:
    global LINK
    base = load_router(argv[0] if argv else "default")
    LINK = str(base.meta.get("link", "identity"))
    held: dict[str, tuple[set[str], np.ndarray]] = {}
    for s in SOURCES:
        m = load_source(s)
        convs = [c for c, h in zip(m.conversations(), m.heldout, strict=True) if h]
        held[s] = (set(m.models), np.stack([base.featurize(c) for c in convs]))
    rows: list[tuple[str, str, str, float, float, float]] = []
    for i, p in enumerate(base.profiles):
        src = next((s for s, (ms, _) in held.items() if p in ms), None)  # today's names
        if src is None:
            continue
        z = held[src][1]
        keep = [j for j in range(len(base.profiles)) if j != i]
        names = [base.profiles[j] for j in keep]
        weak = base.default_weak if base.default_weak != p else names[0]
        strong = base.default_strong if base.default_strong != p else names[-1]
        r = Router(
            base.featurizer,
            base.projection,
            base.abilities[keep],
            base.biases[keep],
            names,
            strong,
            weak,
            base.version,
            base.meta,
        )
        res = resolve(p, r)
        truth = _q(z, *base.profile_vector(p))
        if res.source == "prior":
            assert res.vector is not None and res.bias is not None
            got = _q(z, np.array(res.vector), res.bias)
        else:
            got = _q(z, *r.profile_vector(res.profile))
        default = _q(z, *r.profile_vector(weak))
        mean = _q(z, r.abilities.mean(axis=0), float(r.biases.mean()))
        rows.append(
            (
                p,
                src,
                res.source,
                float(np.abs(truth - got).mean()),
                float(np.abs(truth - default).mean()),
                float(np.abs(truth - mean).mean()),
            )
        )
    print(f"artifact {base.version}: leave-one-out, mean |predicted quality - fitted profile's|")
    print(f"{'source':<12} {'resolved as':<17} {'n':>3} {'resolved':>9} {'default':>8} {'mean':>7}")
    for src in SOURCES:
        for how in sorted({r[2] for r in rows if r[1] == src}):
            sel = [r for r in rows if r[1] == src and r[2] == how]
            print(
                f"{src:<12} {how:<17} {len(sel):>3} {np.mean([r[3] for r in sel]):>9.4f} "
                f"{np.mean([r[4] for r in sel]):>8.4f} {np.mean([r[5] for r in sel]):>7.4f}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
