"""Honest measurement: leave-one-source-out (LOSO) and in-source held-out evaluation.

LOSO: train on four sources (their training splits), test on every prompt of the fifth. A model
of the fifth source that has scores in another source keeps its jointly fitted profile (prompt
transfer); one that does not gets a cold-start profile from its leaderboard Elo (WildBench
WB_Elo, `joint.cold_profile`), else the mean strength. Pairs are reported by kind: both models
transferred, one side cold, both cold.

Two-model APGR (RouteLLM's metric, `metrics.evaluate_pair`) for the named pairs where a source
has both (gpt-4o vs gpt-4o-mini, claude-3.5-sonnet vs claude-3-haiku, llama-3.1-70b vs 8b,
gemini-1.5-pro vs flash, gpt-4-1106-preview vs mixtral-8x7b), each source's best vs median
model, and the best vs median of the source's transferable models.

Many-model: over the source's priced models (data/prices.json), cost per call = input price x
prompt chars / 4 + output price x the answer's chars / 4 where the source records answer
lengths (zeroeval_*, alpaca_eval), else OUTPUT_CHARS_DEFAULT. The router picks, per prompt,
argmax_m predicted quality - lambda x predicted cost (predicted cost: the model's mean answer
length on the training prompts of that source, else the default), swept over lambda; its
operating points and the single models may be mixed at random, so its cost at a quality
target is that of the lower convex hull of both. The random-mix frontier is the same hull of
the single models alone. Reported: cost at 95/97/99% of the best single model's quality, as a
share of the best single model's cost, with 90% bootstrap intervals over prompts.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from router_models.data import DATA_DIR, SOURCES, Matrix, load_source
from router_models.joint import IRT, JointConfig, cold_profile, fit_irt, fit_projection
from router_models.lexical import STRUCT_NAMES, LexicalFeaturizer

OUTPUT_CHARS_DEFAULT = 1000.0  # answer length assumed where a source does not record it
TARGETS = (0.95, 0.97, 0.99)
NAMED_PAIRS = (
    ("gpt-4o-2024-08-06", "gpt-4o-mini-2024-07-18"),
    ("claude-3-5-sonnet-20240620", "claude-3-haiku-20240307"),
    ("llama-3.1-70b-instruct", "llama-3.1-8b-instruct"),
    ("gemini-1.5-pro", "gemini-1.5-flash"),
    ("gemini-1.5-pro-002", "gemini-1.5-flash-002"),
    ("gpt-4-1106-preview", "mixtral-8x7b-instruct-v0.1"),
)


def sigmoid(x: np.ndarray) -> np.ndarray:
    return np.asarray(0.5 * (1.0 + np.tanh(0.5 * x)))


def load_prices() -> dict[str, tuple[float, float]]:
    doc = json.loads((DATA_DIR / "prices.json").read_text())
    return {k: (float(v[0]), float(v[1])) for k, v in doc["prices"].items()}


def load_elo() -> dict[str, float]:
    doc = json.loads((DATA_DIR / "elo.json").read_text())
    return {k: float(v) for k, v in doc["elo"].items()}


@dataclass
class Data:
    mats: dict[str, Matrix]
    feats: dict[str, sp.csr_matrix]


def load_all(featurizer: LexicalFeaturizer | None = None) -> Data:
    from router_models.train import featurize_all

    f = featurizer or LexicalFeaturizer()
    mats = {s: load_source(s) for s in SOURCES}
    feats = {s: featurize_all(f, m.conversations(), s, progress=False) for s, m in mats.items()}
    return Data(mats, feats)


@dataclass
class Fitted:
    projection: np.ndarray  # [dim, k] (z scaled to unit variance on the training prompts)
    irt: IRT

    def z(self, x: sp.csr_matrix) -> np.ndarray:
        return np.asarray(x @ self.projection)


_PROJ_CACHE: dict[tuple[Any, ...], np.ndarray] = {}


def fit(data: Data, sources: list[str], cfg: JointConfig, split: str = "train") -> Fitted:
    """Stage 1 + stage 2 on the `split` ("train": sha256 split; "all") of `sources`."""
    parts = []
    for s in sources:
        m = data.mats[s]
        mask = ~m.heldout if split == "train" else np.ones(len(m.ids), bool)
        parts.append((m.subset(mask), data.feats[s][mask]))
    key = (tuple(sources), split, cfg.rank, cfg.ridge_alpha, cfg.struct_scale)
    if key not in _PROJ_CACHE:
        dim = parts[0][1].shape[1]
        scale = np.ones(dim)
        scale[dim - len(STRUCT_NAMES) :] = cfg.struct_scale
        d = sp.diags(scale)
        scaled = [(m, sp.csr_matrix(x @ d)) for m, x in parts]
        w0 = fit_projection(scaled, cfg.rank, cfg.ridge_alpha)
        _PROJ_CACHE[key] = scale[:, None] * w0  # the scaling folded into the rows
    w = _PROJ_CACHE[key]
    zs = [np.asarray(x @ w) for _, x in parts]
    sd = np.concatenate(zs).std(axis=0)
    sd[sd == 0] = 1.0
    w = w / sd[None, :]
    z = np.concatenate(zs) / sd[None, :]
    irt = fit_irt(z, [m for m, _ in parts], cfg)
    return Fitted(w, irt)


def profile_table(
    fitted: Fitted, names: list[str], elo: dict[str, float]
) -> tuple[np.ndarray, np.ndarray, dict[str, str]]:
    """(abilities [n, k], biases [n], how) for `names`: fitted where known, else cold start."""
    irt = fitted.irt
    idx = {m: i for i, m in enumerate(irt.models)}
    ab = irt.abilities()
    vs, bs, how = [], [], {}
    for n in names:
        if n in idx:
            vs.append(ab[idx[n]])
            bs.append(irt.b[idx[n]])
            how[n] = "transfer"
        else:
            v, b, h = cold_profile(irt, n, elo)
            vs.append(v)
            bs.append(b)
            how[n] = f"cold ({h})"
    return np.array(vs), np.array(bs), how


def pairs_for(m: Matrix, transferable: set[str] | None = None) -> list[tuple[str, str, str]]:
    """(strong, weak, label) pairs measured on a source."""
    out = []
    have = set(m.models)
    for s, w in NAMED_PAIRS:
        if s in have and w in have:
            out.append((s, w, "named"))
    mean = np.nanmean(m.scores, axis=0)
    order = [m.models[i] for i in np.argsort(-mean)]
    out.append((order[0], order[len(order) // 2], "best vs median"))
    if transferable is not None:
        tr = [x for x in order if x in transferable]
        if len(tr) >= 2:
            pair = (tr[0], tr[len(tr) // 2] if len(tr) > 2 else tr[1], "best vs median (transfer)")
            if (pair[0], pair[1]) not in {(a, b) for a, b, _ in out}:
                out.append(pair)
    return out


def apgr_rows(
    m: Matrix, z: np.ndarray, fitted: Fitted, elo: dict[str, float], transferable: set[str]
) -> list[dict[str, Any]]:
    from router_models.metrics import evaluate_pair

    rows = []
    for s, w, label in pairs_for(m, transferable):
        ab, b, how = profile_table(fitted, [s, w], elo)
        raw = z @ ab.T + b[None, :]
        score = sigmoid(raw[:, 0]) - sigmoid(raw[:, 1])
        j, k = m.models.index(s), m.models.index(w)
        ok = ~np.isnan(m.scores[:, j]) & ~np.isnan(m.scores[:, k])
        rep = evaluate_pair(score[ok], m.scores[ok, j], m.scores[ok, k])
        alt = {
            "logit_gap": raw[:, 0] - raw[:, 1],
            "difficulty": -(z @ fitted.irt.a),
            "discrimination": z @ fitted.irt.g,
        }
        extra = {
            f"apgr_{name}": float(evaluate_pair(v[ok], m.scores[ok, j], m.scores[ok, k])["apgr"])  # type: ignore[arg-type]
            for name, v in alt.items()
        }
        cold = [x for x in (s, w) if how[x] != "transfer"]
        kind = "transfer" if not cold else ("cold" if len(cold) == 2 else "one cold")
        rows.append(
            {
                "source": m.source,
                "strong": s,
                "weak": w,
                "pair": label,
                "kind": kind,
                "n": int(ok.sum()),
                "apgr": float(rep["apgr"]),  # type: ignore[arg-type]
                "random_apgr": float(rep["random_apgr"]),  # type: ignore[arg-type]
                "strong_quality": float(rep["strong_quality"]),  # type: ignore[arg-type]
                "weak_quality": float(rep["weak_quality"]),  # type: ignore[arg-type]
                "profiles": how,
                **extra,
            }
        )
    return rows


# -- many-model cost curves ----------------------------------------------------------------
def call_costs(m: Matrix, models: list[str], prices: dict[str, tuple[float, float]]) -> np.ndarray:
    """[n, M] USD per call: prompt chars/4 input tokens, answer chars/4 output tokens."""
    plen = np.array([len(p) for p in m.prompts], dtype=float) / 4.0
    out = np.empty((len(m.ids), len(models)))
    for j, name in enumerate(models):
        pin, pout = prices[name]
        oc = np.full(len(m.ids), OUTPUT_CHARS_DEFAULT)
        if m.output_chars is not None:
            col = m.output_chars[:, m.models.index(name)]
            oc = np.where(np.isnan(col), OUTPUT_CHARS_DEFAULT, col)
        out[:, j] = (pin * plen + pout * oc / 4.0) / 1e6
    return out


def expected_costs(
    m: Matrix, train: Matrix | None, models: list[str], prices: dict[str, tuple[float, float]]
) -> np.ndarray:
    """[n, M] the cost a router can know before the call: the answer length is each model's mean
    on `train` (the source's training prompts) when known, else the default."""
    plen = np.array([len(p) for p in m.prompts], dtype=float) / 4.0
    out = np.empty((len(m.ids), len(models)))
    for j, name in enumerate(models):
        pin, pout = prices[name]
        oc = OUTPUT_CHARS_DEFAULT
        if train is not None and train.output_chars is not None and name in train.models:
            col = train.output_chars[:, train.models.index(name)]
            if np.any(~np.isnan(col)):
                oc = float(np.nanmean(col))
        out[:, j] = (pin * plen + pout * oc / 4.0) / 1e6
    return out


def hull_cost(cost: np.ndarray, qual: np.ndarray, target: float) -> float:
    """Cheapest mean cost at which a random mix of the points reaches mean quality `target`."""
    best = math.inf
    for i in range(len(cost)):
        if qual[i] >= target:
            best = min(best, float(cost[i]))
            continue
        hi = qual > target
        if not hi.any():
            continue
        t = (target - qual[i]) / (qual[hi] - qual[i])
        best = min(best, float(np.min(cost[i] + t * (cost[hi] - cost[i]))))
    return best


POLICIES = ("both", "utility", "anchored")
# The policy family the acceptance numbers use. LOSO could not tell utility from anchored
# (both at the frontier), an inner validation split of the training prompts tied them
# (sum of cost ratios at 97% 3.47 each, winning on different sources): so both.
POLICY = "both"
LAMBDAS = np.concatenate(([0.0], np.geomspace(1e-2, 1e6, 90)))


DELTAS = np.concatenate(([-1.0, 0.0], np.geomspace(1e-3, 1.0, 60)))


def route_choices(q_hat: np.ndarray, c_hat: np.ndarray, policy: str = "utility") -> np.ndarray:
    """[L, n] the model each operating point picks per prompt.

    "utility": argmax q - lambda * cost over a sweep of lambda (cost scaled to its median so
    the lambdas are unit-free). "anchored": the model with the highest mean predicted quality
    (the anchor), unless a cheaper one is predicted within delta of it on this prompt, then
    the cheapest such; swept over delta (the many-model form of the two-model threshold).
    "both": the operating points of the two, one policy family with two knobs.
    """
    if policy == "both":
        return np.concatenate(
            [route_choices(q_hat, c_hat, "utility"), route_choices(q_hat, c_hat, "anchored")]
        )
    if policy == "utility":
        scale = float(np.median(c_hat)) or 1.0
        return np.stack([np.argmax(q_hat - lam * c_hat / scale, axis=1) for lam in LAMBDAS])
    anchor = int(np.argmax(q_hat.mean(axis=0)))
    order = np.argsort(c_hat.mean(axis=0), kind="stable")  # cheapest first
    out = []
    for d in DELTAS:
        ok = q_hat[:, order] >= q_hat[:, [anchor]] - d
        first = order[np.argmax(ok, axis=1)]
        out.append(np.where(ok.any(axis=1), first, anchor))
    return np.stack(out)


def many_model(
    m: Matrix,
    q_hat: np.ndarray,
    models: list[str],
    prices: dict[str, tuple[float, float]],
    train: Matrix | None,
    boot: int = 200,
    seed: int = 0,
    policy: str = POLICY,
) -> dict[str, Any]:
    """Router vs random-mix frontier cost at TARGETS of the best single model's quality."""
    cols = [m.models.index(x) for x in models]
    y = m.scores[:, cols]
    keep = ~np.isnan(y).any(axis=1)
    y = y[keep]
    qh = q_hat[keep]
    cost = call_costs(m, models, prices)[keep]
    chat = expected_costs(m, train, models, prices)[keep]
    choice = route_choices(qh, chat, policy)  # [L, n]
    point, draws = _target_costs(y, cost, choice, boot, seed)
    res: dict[str, Any] = {"source": m.source, "n": len(y), "models": models}
    sq, sc = y.mean(axis=0), cost.mean(axis=0)
    res["single"] = {
        x: {"quality": float(sq[j]), "cost": float(sc[j])} for j, x in enumerate(models)
    }
    res.update(_intervals(point, draws))
    ratio = np.array([[d["router"][i] / d["frontier"][i] for i in range(3)] for d in draws])
    res["ratio"] = {
        f"{int(t * 100)}": {
            "value": point["router"][i] / point["frontier"][i],
            "ci90": [float(np.quantile(ratio[:, i], 0.05)), float(np.quantile(ratio[:, i], 0.95))],
        }
        for i, t in enumerate(TARGETS)
    }
    return res


def _target_costs(
    y: np.ndarray, cost: np.ndarray, choice: np.ndarray, boot: int, seed: int
) -> tuple[dict[str, list[float]], list[dict[str, list[float]]]]:
    """For each of TARGETS, the cost (as a share of the best single model's) at which the
    routed operating points `choice` [L, n] mixed with the single models, and the single
    models alone (the random-mix frontier), reach that share of the best model's quality:
    on all prompts, and on `boot` bootstrap resamples of them. `y`, `cost`: [n, k]."""
    n = len(y)
    ar = np.arange(n)
    rq, rc = y[ar[None, :], choice], cost[ar[None, :], choice]  # [L, n]

    def measure(idx: np.ndarray) -> dict[str, list[float]]:
        sq, sc = y[idx].mean(axis=0), cost[idx].mean(axis=0)
        pq, pc = rq[:, idx].mean(axis=1), rc[:, idx].mean(axis=1)
        best = int(np.argmax(sq))
        out: dict[str, list[float]] = {"router": [], "frontier": []}
        for t in TARGETS:
            goal = t * sq[best]
            out["frontier"].append(hull_cost(sc, sq, goal) / sc[best])
            out["router"].append(
                hull_cost(np.concatenate([sc, pc]), np.concatenate([sq, pq]), goal) / sc[best]
            )
        return out

    rng = np.random.default_rng(seed)
    return measure(ar), [measure(np.asarray(rng.integers(0, n, size=n))) for _ in range(boot)]


def _intervals(
    point: dict[str, list[float]], draws: list[dict[str, list[float]]]
) -> dict[str, Any]:
    """{"router"|"frontier": {"95": {"cost_share", "ci90"}, ...}} from `_target_costs`."""
    res: dict[str, Any] = {}
    for key in ("router", "frontier"):
        arr = np.array([d[key] for d in draws])
        res[key] = {
            f"{int(t * 100)}": {
                "cost_share": point[key][i],
                "ci90": [float(np.quantile(arr[:, i], 0.05)), float(np.quantile(arr[:, i], 0.95))],
            }
            for i, t in enumerate(TARGETS)
        }
    return res


def cost_at_targets(
    y: np.ndarray, q_hat: np.ndarray, cost: np.ndarray, boot: int = 200, seed: int = 0
) -> dict[str, Any]:
    """`router eval`'s many-model numbers: true scores `y` [n, k], predictions `q_hat`
    [n, k], each model's cost per call `cost` [k]; see `_target_costs`."""
    c = np.broadcast_to(np.asarray(cost, dtype=np.float64), y.shape)
    point, draws = _target_costs(
        y, np.asarray(c), route_choices(q_hat, np.asarray(c), POLICY), boot, seed
    )
    return {"policy": POLICY, "boot": boot, **_intervals(point, draws)}


def priced(m: Matrix, prices: dict[str, tuple[float, float]]) -> list[str]:
    return [x for x in m.models if x in prices]


def evaluate(
    data: Data,
    cfg: JointConfig,
    mode: str = "loso",
    boot: int = 200,
    sources: list[str] | None = None,
    log: Any = None,
    fitted_all: Fitted | None = None,
) -> dict[str, Any]:
    """mode "loso": train on the other sources, test on all of each source's prompts;
    mode "heldout": train on the training split of every source in `sources` (or use
    `fitted_all`, fitted so), test on each held-out split. Only `sources` are ever used."""
    elo, prices = load_elo(), load_prices()
    srcs = sources or list(SOURCES)
    out: dict[str, Any] = {"mode": mode, "apgr": [], "many_model": []}
    shared = None
    if mode == "heldout":
        shared = fitted_all or fit(data, srcs, cfg)
    for s in srcs:
        m = data.mats[s]
        if mode == "loso":
            others = [x for x in srcs if x != s]
            fitted = fit(data, others, cfg)
            test, x = m, data.feats[s]
            train_m = None  # no answer lengths of this source are known to the router
        else:
            assert shared is not None
            fitted = shared
            test, x = m.subset(m.heldout), data.feats[s][m.heldout]
            train_m = m.subset(~m.heldout)
        z = fitted.z(x)
        transferable = set(fitted.irt.models)
        rows = apgr_rows(test, z, fitted, elo, transferable)
        out["apgr"].extend(rows)
        models = priced(test, prices)
        if len(models) >= 2:
            ab, b, how = profile_table(fitted, models, elo)
            q_hat = sigmoid(z @ ab.T + b[None, :])
            for pol in POLICIES:
                mm = many_model(test, q_hat, models, prices, train_m, boot=boot, policy=pol)
                mm["profiles"] = how
                mm["policy"] = pol
                out["many_model"].append(mm)
        if log is not None:
            for r in rows:
                log(
                    f"{s:<14} {r['kind']:<9} {r['strong']} vs {r['weak']} ({r['pair']}): "
                    f"APGR {r['apgr']:.3f} (random {r['random_apgr']:.3f}, n={r['n']}) "
                    + " ".join(f"{k[5:]} {v:.3f}" for k, v in r.items() if k.startswith("apgr_"))
                )
            for mm in out["many_model"]:
                if mm["source"] == s:
                    log(format_many(mm))
    return out


def format_many(mm: dict[str, Any]) -> str:
    parts = [
        f"{mm['source']:<14} many-model, {mm.get('policy', POLICY)} policy "
        f"({len(mm['models'])} priced, n={mm['n']}):"
    ]
    for t in ("95", "97", "99"):
        r, f, q = mm["router"][t], mm["frontier"][t], mm["ratio"][t]
        parts.append(
            f" @{t}% router {r['cost_share']:.3f} [{r['ci90'][0]:.3f},{r['ci90'][1]:.3f}]"
            f" frontier {f['cost_share']:.3f} [{f['ci90'][0]:.3f},{f['ci90'][1]:.3f}]"
            f" ratio {q['value']:.2f} [{q['ci90'][0]:.2f},{q['ci90'][1]:.2f}]"
        )
    return "\n  ".join(parts)


def write_report(res: dict[str, Any], path: Path) -> None:
    path.write_text(json.dumps(res, indent=1) + "\n")
