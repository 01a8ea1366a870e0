"""Joint training on every source: a supervised projection, then a shared item-response model.

Stage 1 (the prompt vector). Per source, one ridge regression per model column of the source's
labels on the featurizer's sparse features (solved in the dual: n_prompts is small), the
coefficient blocks of all sources stacked, each block scaled to the same Frobenius norm, and
factored by SVD to rank k: W = U_k, z = x @ W, each z column scaled to unit variance on the
training prompts. The projection keeps the directions of feature space along which the scores
of many models vary, whatever the source.

Stage 2 (the profiles). A two-parameter item-response (logistic) model over every
(prompt, model) score of every source at once, profiles keyed by canonical model identity so
the same model from different sources shares one profile:

    logit P(model m answers prompt i well) = b_m + z_i . a + b_m * (z_i . g) + z_i . u_m

b_m is the model's overall strength, z . a the prompt's difficulty, (1 + z . g) how much
strength matters on the prompt (its discrimination) and u_m the model's own prompt-type
profile, shrunk hard towards zero: a model seen only on chat prompts still gets a sensible
answer on maths from its strength and the maths prompts' discrimination. Labels are 0/1
correctness (soft labels in the same cross-entropy where scores are averaged). AlpacaEval's
labels are judged win probabilities against one reference answer (gpt4_1106_preview's). By
default they are fitted as absolute scores (the reference a flat 0.5). With
`pairwise_reference` (`--pairwise-reference`) they are Bradley-Terry comparisons instead,
logit = logit(model) - logit(reference) [+ beta x tanh(answer-length difference / its
spread) with `length_control`, `--length-control`]: prompt difficulty and the source offset
cancel, the reference gets a prompt profile from every other model's comparisons, and the
judge's taste for long answers is carried by beta (AlpacaEval's length control), which
inference leaves out, instead of becoming a "chat prompts" profile. Measured, not shipped:
see the model card's configurations compared.
Per-source offsets c_s are fitted and left out at inference. Sources are weighted so each
carries the same total weight whatever its number of scores.

In the artifact this is the existing shape: projection W, and per profile
abilities = a + b_m g + u_m, bias = b_m; Router.quality applies the logistic link.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.optimize as opt
import scipy.sparse as sp

from router_models.data import Matrix


@dataclass
class JointConfig:
    rank: int = 48
    ridge_alpha: float = 3.0  # stage 1
    struct_scale: float = 10.0  # weight of the 16 structure features in stage 1
    lam_u: float = 3000.0  # shrinkage of each model's own profile u_m
    lam_a: float = 1.0  # prompt difficulty direction
    lam_g: float = 3.0  # discrimination direction
    lam_b: float = 0.01  # strengths
    # per-source offsets: held at ~0, so z . a carries the level of each kind of prompt
    lam_c: float = 1e7
    max_iter: int = 200
    source_weight: dict[str, float] = field(default_factory=dict)
    # AlpacaEval's labels are win probabilities against one reference answer: fit them as
    # Bradley-Terry comparisons with the reference's own profile (True) or as absolute scores
    # (False, the shipped artifact: see the model card's configurations compared)
    pairwise_reference: bool = False
    # a length covariate on those comparisons (AlpacaEval's length control), dropped at
    # inference, so a judge's taste for long answers does not become a prompt-type profile
    length_control: bool = False
    lam_len: float = 0.01


# sources whose labels are P(model beats a reference model's answer), and that reference
PAIRWISE_REFERENCE = {"alpaca_eval": "gpt-4-1106-preview"}


def _logit(p: np.ndarray, eps: float = 0.02) -> np.ndarray:
    q = np.clip(p, eps, 1 - eps)
    return np.asarray(np.log(q / (1 - q)))


def stage1_label(m: Matrix) -> np.ndarray:
    """Per-column regression target: scores in logit units (clipped), NaN cells imputed with the
    column mean, then columns centred."""
    y = _logit(m.scores, 0.05 if m.source == "alpaca_eval" else 0.1)
    y = np.where(np.isnan(m.scores), np.nan, y)
    col = np.nanmean(y, axis=0)
    y = np.where(np.isnan(y), col[None, :], y)
    return np.asarray(y - y.mean(axis=0, keepdims=True))


def fit_projection(
    parts: list[tuple[Matrix, sp.csr_matrix]], rank: int, alpha: float
) -> np.ndarray:
    """Stage 1: W [dim, rank] from per-source dual ridge heads, SVD of the stacked blocks."""
    blocks = []
    for m, x in parts:
        y = stage1_label(m)
        k = (x @ x.T).toarray()
        k[np.diag_indices_from(k)] += alpha
        dual = np.linalg.solve(k, y)
        w = np.asarray(x.T @ dual)  # [dim, n_models]
        norm = float(np.linalg.norm(w)) or 1.0
        blocks.append(w / norm)
    big = np.hstack(blocks)
    u, s, _ = np.linalg.svd(big, full_matrices=False)
    r = min(rank, len(s))
    return np.asarray(u[:, :r] * s[:r])


@dataclass
class Cells:
    """Long-form training scores: prompt row (into Z), model index, source index, label, weight."""

    rows: np.ndarray
    models: np.ndarray
    sources: np.ndarray
    y: np.ndarray
    w: np.ndarray
    # the model a comparison cell is against (-1: an absolute score), its length covariate
    opp: np.ndarray | None = None
    length: np.ndarray | None = None


def _length_covariate(m: Matrix, ii: np.ndarray, jj: np.ndarray, ref: int) -> np.ndarray:
    """tanh of the answer-length difference to the reference, in units of its spread
    (AlpacaEval's length-controlled win rate); 0 where a length is unknown."""
    if m.output_chars is None:
        return np.zeros(len(ii))
    d = m.output_chars[ii, jj] - m.output_chars[ii, ref]
    ok = ~np.isnan(d)
    sd = float(np.std(d[ok])) if ok.any() else 1.0
    return np.where(ok, np.tanh(np.nan_to_num(d) / (sd or 1.0)), 0.0)


def build_cells(
    mats: list[Matrix],
    model_index: dict[str, int],
    weights: dict[str, float],
    pairwise: bool = False,
    length_control: bool = False,
) -> tuple[Cells, np.ndarray]:
    rows, mods, srcs, ys, ws, opps, lens = [], [], [], [], [], [], []
    offset = 0
    for s, m in enumerate(mats):
        known = ~np.isnan(m.scores)
        ref_name = PAIRWISE_REFERENCE.get(m.source) if pairwise else None
        ref = m.models.index(ref_name) if ref_name in m.models else -1
        if ref >= 0:
            known[:, ref] = False  # the reference against itself says nothing
        ii, jj = np.nonzero(known)
        n = len(ii)
        rows.append(ii + offset)
        mods.append(np.array([model_index[m.models[j]] for j in jj], dtype=np.intp))
        srcs.append(np.full(n, s, dtype=np.intp))
        ys.append(m.scores[ii, jj])
        opps.append(np.full(n, model_index[m.models[ref]] if ref >= 0 else -1, dtype=np.intp))
        lens.append(
            _length_covariate(m, ii, jj, ref) if ref >= 0 and length_control else np.zeros(n)
        )
        # each source the same total weight (times its configured factor), mean cell weight 1
        ws.append(np.full(n, weights.get(m.source, 1.0) / max(n, 1)))
        offset += len(m.ids)
    w = np.concatenate(ws)
    w *= len(w) / w.sum()
    return (
        Cells(
            np.concatenate(rows),
            np.concatenate(mods),
            np.concatenate(srcs),
            np.concatenate(ys),
            w,
            np.concatenate(opps),
            np.concatenate(lens),
        ),
        np.array([len(m.ids) for m in mats]),
    )


@dataclass
class IRT:
    models: list[str]
    b: np.ndarray  # [M]
    a: np.ndarray  # [k]
    g: np.ndarray  # [k]
    u: np.ndarray  # [M, k]
    c: np.ndarray  # [S]
    sources: list[str]
    n_scores: dict[str, dict[str, int]]  # model -> source -> scored prompts

    def abilities(self) -> np.ndarray:
        return np.asarray(self.a[None, :] + self.b[:, None] * self.g[None, :] + self.u)

    def raw(self, z: np.ndarray) -> np.ndarray:
        """[n, M] logits (no source offset)."""
        return np.asarray(z @ self.abilities().T + self.b[None, :])


def fit_irt(z: np.ndarray, mats: list[Matrix], cfg: JointConfig, init: IRT | None = None) -> IRT:
    """Stage 2: the joint logistic item-response model by L-BFGS on dense prompt vectors."""
    models = sorted({m for mat in mats for m in mat.models})
    index = {m: i for i, m in enumerate(models)}
    cells, _ = build_cells(
        mats, index, cfg.source_weight, cfg.pairwise_reference, cfg.length_control
    )
    n_m, k, n_s = len(models), z.shape[1], len(mats)
    zr = z[cells.rows]  # [C, k]
    n_cells = len(cells.y)
    assert cells.opp is not None and cells.length is not None
    pair = (cells.opp >= 0).astype(np.float64)  # 1: a comparison with cells.opp
    opp = np.where(cells.opp >= 0, cells.opp, 0)
    absolute = 1.0 - pair
    lcov = cells.length

    def onehot_of(idx: np.ndarray, weight: np.ndarray) -> sp.csr_matrix:
        return sp.csr_matrix((weight, (np.arange(n_cells), idx)), shape=(n_cells, n_m)).T.tocsr()

    onehot = onehot_of(cells.models, np.ones(n_cells))
    onehot_opp = onehot_of(opp, pair)
    sizes = [n_m, k, k, n_m * k, n_s, 1]

    def unpack(theta: np.ndarray) -> tuple[np.ndarray, ...]:
        out, o = [], 0
        for sz in sizes:
            out.append(theta[o : o + sz])
            o += sz
        b, a, g, u, c, beta = out
        return b, a, g, u.reshape(n_m, k), c, beta

    def f(theta: np.ndarray) -> tuple[float, np.ndarray]:
        b, a, g, u, c, beta = unpack(theta)
        # a comparison cell's logit is the difference of the two models' logits (prompt
        # difficulty and source offset cancel), plus the length covariate
        bm = b[cells.models] - pair * b[opp]
        za = zr @ a
        zg = zr @ g
        zu = np.einsum("ij,ij->i", zr, u[cells.models]) - pair * np.einsum("ij,ij->i", zr, u[opp])
        logit = bm * (1.0 + zg) + zu + absolute * (c[cells.sources] + za) + beta[0] * lcov
        # soft-label cross-entropy, numerically stable
        loss_c = np.logaddexp(0.0, logit) - cells.y * logit
        p = 0.5 * (1.0 + np.tanh(0.5 * logit))
        r = cells.w * (p - cells.y) / n_cells  # dL/dlogit
        loss = float(np.dot(cells.w, loss_c)) / n_cells
        rg = r * (1.0 + zg)
        gb = np.bincount(cells.models, rg, minlength=n_m) - np.bincount(
            opp, rg * pair, minlength=n_m
        )
        ga = zr.T @ (r * absolute)
        gg = zr.T @ (r * bm)
        zrr = zr * r[:, None]
        gu = np.asarray(onehot @ zrr) - np.asarray(onehot_opp @ zrr)
        gc = np.bincount(cells.sources, r * absolute, minlength=n_s)
        gbeta = np.array([float(np.dot(r, lcov))])
        reg = (
            cfg.lam_b * b @ b
            + cfg.lam_a * a @ a
            + cfg.lam_g * g @ g
            + cfg.lam_u * np.sum(u * u)
            + cfg.lam_c * c @ c
            + cfg.lam_len * beta @ beta
        ) / n_cells
        loss += float(reg)
        grad = np.concatenate(
            [
                gb + 2 * cfg.lam_b * b / n_cells,
                ga + 2 * cfg.lam_a * a / n_cells,
                gg + 2 * cfg.lam_g * g / n_cells,
                (gu + 2 * cfg.lam_u * u / n_cells).ravel(),
                gc + 2 * cfg.lam_c * c / n_cells,
                gbeta + 2 * cfg.lam_len * beta / n_cells,
            ]
        )
        return loss, grad

    theta0 = np.zeros(sum(sizes))
    # start strengths at each model's mean logit score
    for i in range(n_m):
        sel = cells.models == i
        theta0[i] = float(np.mean(_logit(cells.y[sel]))) * 0.5 if sel.any() else 0.0
    res = opt.minimize(
        f, theta0, jac=True, method="L-BFGS-B", options={"maxiter": cfg.max_iter, "gtol": 1e-7}
    )
    b, a, g, u, c, _beta = unpack(res.x)
    counts: dict[str, dict[str, int]] = {m: {} for m in models}
    for mat in mats:
        known = (~np.isnan(mat.scores)).sum(axis=0)
        for j, m in enumerate(mat.models):
            counts[m][mat.source] = counts[m].get(mat.source, 0) + int(known[j])
    return IRT(
        models, b.copy(), a.copy(), g.copy(), u.copy(), c.copy(), [m.source for m in mats], counts
    )


def elo_prior(irt: IRT, elo: dict[str, float]) -> tuple[float, float, float]:
    """(slope, intercept, mean b) of strength b_m on Elo over the fitted models with an Elo:
    the cold-start strength of a model known only by its leaderboard Elo."""
    xs = [(elo[m], irt.b[i]) for i, m in enumerate(irt.models) if m in elo]
    mean_b = float(np.mean(irt.b))
    if len(xs) < 3:
        return 0.0, mean_b, mean_b
    e = np.array([x for x, _ in xs])
    bb = np.array([y for _, y in xs])
    slope, icpt = np.polyfit(e, bb, 1)
    return float(slope), float(icpt), mean_b


def cold_profile(irt: IRT, name: str, elo: dict[str, float]) -> tuple[np.ndarray, float, str]:
    """A profile for a model without scores: strength from its Elo (linear fit over the fitted
    models), else the mean strength; no own prompt-type profile (u = 0)."""
    slope, icpt, mean_b = elo_prior(irt, elo)
    if name in elo and slope != 0.0:
        b = slope * elo[name] + icpt
        how = f"Elo {elo[name]:.0f}"
    else:
        b, how = mean_b, "mean strength (no Elo)"
    return np.asarray(irt.a + b * irt.g), float(b), how


def summary(irt: IRT) -> dict[str, Any]:
    return {
        "strength_sd": float(np.std(irt.b)),
        "source_offsets": dict(zip(irt.sources, map(float, irt.c), strict=True)),
    }
