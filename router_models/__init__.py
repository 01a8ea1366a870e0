"""Tollgate's learned router: featurizers, the N-model quality model, artifacts and evaluation.

Public API: `load_router(spec)` -> `Router`, and `ArtifactError`.
"""

from router_models.artifact import load_router, save_router
from router_models.errors import ArtifactError
from router_models.model import Router

__all__ = ["ArtifactError", "Router", "load_router", "save_router"]
