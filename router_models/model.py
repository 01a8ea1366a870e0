"""The learned router: a prompt vector times a per-model ability vector, for N model profiles.

raw(prompt, m) = z . v_m + b_m, with z = x @ W the prompt vector (x the featurizer's sparse
features) and (v_m, b_m) profile m's ability; quality(prompt, m) = link(raw). The link is
"logistic" (raw is a logit, quality its sigmoid: the joint item-response model of
router_models/joint.py) or "identity" (quality = clip(raw): format-1 artifacts, one ridge
regression per profile). A new profile is fitted on z from a small set of scored prompts.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from router_models.featurizers import Featurizer

_EPS = 1e-3
_ONE_EPS = 1.0 - _EPS
LINKS = ("identity", "logistic")
_exp = math.exp


def _logistic(v: float) -> float:
    """1 / (1 + e^-v); beyond |v| = 30 it is 0 or 1 to double precision, and NaN gives 0."""
    return 1.0 / (1.0 + _exp(-v)) if -30.0 < v < 30.0 else float(v > 0)


class Scored:
    """A conversation's prompt vector and every profile's raw score (`Router.score`).

    `values` is the prompt vector as plain floats (what a request record keeps); `z` the same
    as a float64 array, built on first use: the gateway's hot path never needs it, and a
    numpy call or two costs more than the whole C pass that computed the numbers.
    """

    __slots__ = ("_z", "raw", "values")

    def __init__(self, z: np.ndarray | list[float], raw: list[float]) -> None:
        if isinstance(z, list):
            self.values = z
            self._z: np.ndarray | None = None
        else:
            self._z = np.asarray(z, dtype=np.float64)
            self.values = self._z.tolist()
        self.raw = raw

    @property
    def z(self) -> np.ndarray:
        if self._z is None:
            self._z = np.array(self.values, dtype=np.float64)
        return self._z


class Router:
    """Scores a conversation for every trained model profile; pure numpy at inference."""

    def __init__(
        self,
        featurizer: Featurizer,
        projection: np.ndarray,
        abilities: np.ndarray,
        biases: np.ndarray,
        profiles: list[str],
        default_strong: str,
        default_weak: str,
        version: str,
        meta: dict[str, Any] | None = None,
    ) -> None:
        if projection.shape[0] != featurizer.dim:
            raise ValueError(
                f"projection has {projection.shape[0]} rows, featurizer dim is {featurizer.dim}"
            )
        if abilities.shape != (len(profiles), projection.shape[1]) or biases.shape != (
            len(profiles),
        ):
            raise ValueError("abilities/biases do not match the profiles and projection rank")
        self.featurizer = featurizer
        self.projection = np.ascontiguousarray(projection, dtype=np.float32)
        self.abilities = np.ascontiguousarray(abilities, dtype=np.float64)
        self.biases = np.asarray(biases, dtype=np.float64)
        self.profiles = list(profiles)
        self._index = {p: i for i, p in enumerate(self.profiles)}
        self.default_strong = default_strong
        self.default_weak = default_weak
        self.version = version
        self.meta = dict(meta or {})
        self.link = str(self.meta.get("link", "identity"))
        if self.link not in LINKS:
            raise ValueError(f"unknown link {self.link!r}; one of {LINKS}")

    # -- features -------------------------------------------------------------------------
    def featurize(
        self, messages: list[dict[str, Any]], tools: list[Any] | None = None
    ) -> np.ndarray:
        """The prompt vector z of a whole conversation (all turns, system prompt, tools)."""
        return self.score(messages, tools).z

    def score(self, messages: list[dict[str, Any]], tools: list[Any] | None = None) -> Scored:
        """The prompt vector and every profile's raw score, in one pass where the featurizer
        can (the lexical one's native path: the C pass computes both at once)."""
        project = getattr(self.featurizer, "project", None)
        raw: list[float] | None = None
        z: np.ndarray | list[float]
        if project is not None:
            z, raw = project(messages, tools, self.projection, self.abilities, self.biases)
        else:
            idx, val = self.featurizer.transform(messages, tools)
            z = np.asarray(val @ self.projection[idx], dtype=np.float64)
        if raw is None:
            raw = self._raw(np.asarray(z, dtype=np.float64))
        return Scored(z, raw)

    # -- profiles -------------------------------------------------------------------------
    def has_profile(self, name: str) -> bool:
        return name in self._index

    def _row(self, name: str) -> int:
        try:
            return self._index[name]
        except KeyError:
            raise KeyError(
                f"router profile {name!r} is not in artifact {self.version}; known profiles: "
                f"{', '.join(self.profiles)} (or fit one with add_profile)"
            ) from None

    def _raw(self, features: np.ndarray | Scored) -> list[float]:
        """Unclipped z . v_m + b_m of every profile, as plain floats (the gateway asks for a
        handful of profiles, where numpy's fancy indexing and clip cost more than the
        arithmetic); already there when `features` comes from `score`."""
        if isinstance(features, Scored):
            return features.raw
        out: list[float] = (self.abilities @ features + self.biases).tolist()
        return out

    def quality(self, features: np.ndarray | Scored, profiles: list[str]) -> list[float]:
        """Predicted probability of an acceptable answer (expected score) per profile."""
        raw = self._raw(features)
        index = self._index
        out: list[float] = []
        if self.link == "logistic":
            try:
                for p in profiles:
                    v = raw[index[p]]
                    # _logistic inlined (a call per candidate costs more than the arithmetic)
                    out.append(1.0 / (1.0 + _exp(-v)) if -30.0 < v < 30.0 else float(v > 0))
            except KeyError:
                for p in profiles:
                    self._row(p)
                raise
            return out
        try:
            # clipped to [_EPS, _ONE_EPS] with comparisons: min()/max() calls cost ~4x more,
            # and this runs per candidate on every routed request
            for p in profiles:
                v = raw[index[p]]
                out.append(_EPS if v < _EPS else _ONE_EPS if v > _ONE_EPS else v)
        except KeyError:
            for p in profiles:
                self._row(p)  # raises the KeyError that names the missing profile
            raise
        return out

    def gap(self, features: np.ndarray | Scored, strong: str, weak: str) -> float:
        """Predicted quality of `strong` minus that of `weak` (identity link: unclipped raw)."""
        index = self._index
        s, w = index.get(strong), index.get(weak)
        if s is None or w is None:
            s, w = self._row(strong), self._row(weak)  # raises, naming the profile
        raw = self._raw(features)
        if self.link == "logistic":
            return _logistic(raw[s]) - _logistic(raw[w])
        return raw[s] - raw[w]

    def strong_score(self, features: np.ndarray | Scored, strong: str, weak: str) -> float:
        """Need for the strong model in [0, 1]: (1 + predicted strong - weak score gap) / 2."""
        v = 0.5 + 0.5 * self.gap(features, strong, weak)
        if not v >= 0.0:  # below 0, or NaN (as max(0.0, nan) gives 0.0)
            return 0.0
        return 1.0 if v > 1.0 else v

    def add_profile(
        self,
        name: str,
        scored_prompts: list[tuple[list[dict[str, Any]], float]],
        alpha: float = 1.0,
    ) -> None:
        """Fit a profile for a model the router has never seen from (conversation, score) pairs.

        Ridge on the prompt vectors, shrunk towards the average trained profile, so a handful of
        prompts moves it only as far as they justify.
        """
        if not scored_prompts:
            raise ValueError(f"add_profile({name!r}) needs at least one scored prompt")
        z = np.stack([self.featurize(m) for m, _ in scored_prompts])
        y = np.array([float(s) for _, s in scored_prompts])
        v, b = self.fit_profile(z, y, alpha=alpha)
        self.set_profile(name, v, b)

    def fit_profile(
        self,
        z: np.ndarray,
        y: np.ndarray,
        alpha: float = 1.0,
        prior: tuple[np.ndarray, float] | None = None,
    ) -> tuple[np.ndarray, float]:
        """(ability, bias) fitting scores `y` on prompt vectors `z`: ridge shrunk to `prior`.

        The prior defaults to the average trained profile, so a handful of prompts moves the
        profile only as far as they justify. With the logistic link the ridge runs on the
        scores' logits (scores clipped to [0.05, 0.95]).
        """
        if len(y) == 0:
            raise ValueError("fitting a profile needs at least one scored prompt")
        if np.any((y < 0) | (y > 1)) or not np.all(np.isfinite(y)):
            raise ValueError("scores must be numbers in [0, 1]")
        if self.link == "logistic":
            yc = np.clip(np.asarray(y, dtype=np.float64), 0.05, 0.95)
            y = np.log(yc / (1.0 - yc))
        v0, b0 = prior if prior is not None else (self.abilities.mean(axis=0), self.biases.mean())
        resid = y - (z @ v0 + b0)
        zc = z - z.mean(axis=0)
        k = z.shape[1]
        delta = np.linalg.solve(zc.T @ zc + alpha * np.eye(k), zc.T @ (resid - resid.mean()))
        return v0 + delta, float(b0) + float(resid.mean() - z.mean(axis=0) @ delta)

    def profile_vector(self, name: str) -> tuple[np.ndarray, float]:
        i = self._row(name)
        return self.abilities[i].copy(), float(self.biases[i])

    def set_profile(self, name: str, v: np.ndarray, b: float) -> None:
        """Replace a profile's (ability, bias), or add a new profile."""
        if name in self._index:
            i = self._index[name]
            self.abilities[i] = v
            self.biases[i] = b
        else:
            self.abilities = np.vstack([self.abilities, v])
            self.biases = np.append(self.biases, b)
            self._index[name] = len(self.profiles)
            self.profiles.append(name)
