"""The featurizer interface and registry: a conversation -> sparse (indices, values) features."""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

from router_models.lexical import LexicalFeaturizer


class Featurizer(Protocol):
    name: str
    dim: int

    def config(self) -> dict[str, Any]: ...

    def transform(
        self, messages: list[dict[str, Any]], tools: list[Any] | None = None
    ) -> tuple[np.ndarray, np.ndarray]: ...


FEATURIZERS = ("lexical", "semantic")


def make_featurizer(config: dict[str, Any]) -> Featurizer:
    """Build a featurizer from its saved config (`{"name": ..., ...}`)."""
    name = config.get("name")
    if name == "lexical":
        return LexicalFeaturizer(bits=int(config.get("bits", 15)))
    if name == "semantic":
        from router_models.semantic import SemanticFeaturizer

        return SemanticFeaturizer(max_tokens=int(config.get("max_tokens", 128)))
    raise ValueError(f"unknown featurizer {name!r}; choose one of {list(FEATURIZERS)}")
