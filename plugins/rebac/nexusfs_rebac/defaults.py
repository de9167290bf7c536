"""The default file model shipped with the package (``default.fga``).

``folder`` and ``file`` types with ``viewer`` / ``editor`` / ``owner`` relations (owner
implies editor implies viewer) and ``read`` / ``write`` / ``list`` permissions, all
inherited along the path hierarchy through the kernel-computed ``parent`` relation
(:mod:`nexusfs_rebac.hierarchy`), plus ``user`` and nestable ``group`` types.
"""

from __future__ import annotations

from functools import cache
from importlib.resources import files

from nexusfs_rebac.dsl import parse_model
from nexusfs_rebac.model import AuthorizationModel

__all__ = ["DEFAULT_MODEL_RESOURCE", "default_model", "default_model_text"]

DEFAULT_MODEL_RESOURCE = "default.fga"


def default_model_text() -> str:
    """The DSL source of the default model."""
    return files("nexusfs_rebac").joinpath(DEFAULT_MODEL_RESOURCE).read_text(encoding="utf-8")


@cache
def default_model() -> AuthorizationModel:
    """The parsed default model (parsed once per process)."""
    return parse_model(default_model_text())
