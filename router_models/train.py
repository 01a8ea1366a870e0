"""Training helpers: featurizing conversations into one sparse matrix, a progress bar.

The router itself is fitted by router_models/joint.py (`tollgate router train`)."""

from __future__ import annotations

import sys
import time
from typing import Any

import numpy as np
import scipy.sparse as sp

from router_models.featurizers import Featurizer


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
