"""Fitting a Router from score matrices (scikit-learn Ridge to fit, numpy to serve)."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import scipy.sparse as sp
from sklearn.linear_model import Ridge

from router_models.data import Matrix
from router_models.featurizers import Featurizer
from router_models.model import Router

DEFAULT_STRONG = "humpback-llama2-70b"
DEFAULT_WEAK = "gemma-2b-it"


class Progress:
    """A tiny progress bar on stderr."""

    def __init__(self, total: int, label: str, width: int = 30, enabled: bool = True) -> None:
        self.total = max(total, 1)
        self.label = label
        self.width = width
        self.done = 0
        self.enabled = enabled
        self._last = 0.0
        self._start = time.monotonic()

    def update(self, n: int = 1) -> None:
        self.done += n
        now = time.monotonic()
        if self.enabled and (now - self._last > 0.1 or self.done >= self.total):
            self._last = now
            frac = min(self.done / self.total, 1.0)
            bar = "#" * int(frac * self.width)
            sys.stderr.write(
                f"\r{self.label} [{bar:<{self.width}}] {self.done}/{self.total} "
                f"{now - self._start:5.1f}s"
            )
            if self.done >= self.total:
                sys.stderr.write("\n")
            sys.stderr.flush()


def featurize_all(
    featurizer: Featurizer,
    conversations: list[list[dict[str, Any]]],
    label: str = "featurize",
    progress: bool = True,
) -> sp.csr_matrix:
    bar = Progress(len(conversations), label, enabled=progress)
    indptr = [0]
    idx_parts: list[np.ndarray] = []
    val_parts: list[np.ndarray] = []
    for conv in conversations:
        i, v = featurizer.transform(conv)
        idx_parts.append(i)
        val_parts.append(v)
        indptr.append(indptr[-1] + len(i))
        bar.update()
    idx = np.concatenate(idx_parts) if idx_parts else np.zeros(0, np.intp)
    val = np.concatenate(val_parts) if val_parts else np.zeros(0, np.float32)
    return sp.csr_matrix(
        (val.astype(np.float64), idx, np.asarray(indptr)),
        shape=(len(conversations), featurizer.dim),
    )


def alpaca_label(scores: np.ndarray) -> np.ndarray:
    """AlpacaEval label: P(the model's answer beats the field's median answer on that prompt).

    Every model was judged against the same reference, so by Bradley-Terry the logit of
    beating the median model is logit(p_m) - median_k logit(p_k), with p clipped to
    [0.01, 0.99]. This removes prompt difficulty (how good the reference answer was) and keeps
    the relative strength the router needs; strong models sit above 0.5, weak ones below.
    """
    p = np.clip(scores, 0.01, 0.99)
    lg = np.log(p / (1 - p))
    med = np.nanmedian(lg, axis=1, keepdims=True)
    return 1.0 / (1.0 + np.exp(-(lg - med)))


LABELS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "alpaca_eval": alpaca_label,
    "dcrouter": lambda s: s,
}


def fit_heads(x: sp.csr_matrix, y: np.ndarray, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """One ridge regression per model column (NaN cells filled with the column mean)."""
    y = y.copy()
    col_mean = np.nanmean(y, axis=0)
    nan = np.isnan(y)
    y[nan] = np.take(col_mean, np.nonzero(nan)[1])
    ridge = Ridge(alpha=alpha, fit_intercept=True, solver="sparse_cg", tol=1e-5, max_iter=2000)
    ridge.fit(x, y)
    return np.asarray(ridge.coef_).T, np.asarray(ridge.intercept_)


def fit_router(
    featurizer: Featurizer,
    parts: list[tuple[Matrix, sp.csr_matrix]],
    alpha: float = 1.0,
    rank: int = 32,
    default_strong: str = DEFAULT_STRONG,
    default_weak: str = DEFAULT_WEAK,
    version: str = "dev",
    meta: dict[str, Any] | None = None,
) -> Router:
    """Fit heads on every source, then factor them to rank `rank` (W = U S, abilities = V)."""
    coefs, biases, profiles = [], [], []
    for matrix, x in parts:
        y = LABELS.get(matrix.source, lambda s: s)(matrix.scores)
        c, b = fit_heads(x, y, alpha)
        coefs.append(c)
        biases.append(b)
        profiles.extend(matrix.models)
    if len(set(profiles)) != len(profiles):
        raise ValueError("a model name appears in two sources; rename one")
    big = np.hstack(coefs)  # [dim, n_profiles]
    u, s, vt = np.linalg.svd(big, full_matrices=False)
    k = min(rank, len(s))
    projection = (u[:, :k] * s[:k]).astype(np.float32)
    abilities = vt[:k].T
    for name in (default_strong, default_weak):
        if name not in profiles:
            raise ValueError(f"default profile {name!r} is not among the trained models")
    return Router(
        featurizer,
        projection,
        abilities,
        np.concatenate(biases),
        profiles,
        default_strong,
        default_weak,
        version,
        meta,
    )
