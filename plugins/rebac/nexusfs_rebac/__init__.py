"""NexusFS ReBAC: relationship-based access control in the Zanzibar model.

This package is the ``rebac`` service (:mod:`nexusfs_rebac.plugin`, entry point
``rebac`` in ``nexusfs.services``: storage in the RecordStore, consistency tokens, the
RPC methods; see :mod:`nexusfs_rebac.service`) and the engine it runs: OpenFGA's
modeling language (schema 1.1), a typed immutable model with a content-hash
``model_id``, tuple validation, and evaluation (``check``, ``batch_check``, ``expand``,
``list_objects``, ``list_users``) over any :class:`TupleSource`, with the kernel's path
hierarchy as a computed ``parent`` relation::

    from nexusfs_rebac import Engine, MemoryTupleSource, PathTree, default_model

    tree = PathTree()
    tree.add_file("/docs/plan.md")
    tuples = MemoryTupleSource(["folder:/docs#viewer@user:anne"])
    engine = Engine(default_model(), tuples,
                    computed=tree.hierarchy().computed_relations())
    engine.check("user:anne", "read", "file:/docs/plan.md")        # True
    engine.list_objects("user:anne", "read", "file")               # ["file:/docs/plan.md"]

Errors: :class:`ModelError` (bad model, with line and column), :class:`InvalidRequest`
and :class:`InvalidTuple` (bad input), :class:`ResolutionTooComplex` (depth limit), and
from the service :class:`DuplicateTuple`, :class:`MissingTuple`, :class:`InvalidToken`,
:class:`FutureToken`, :class:`ModelNotFound`; all are ``nexusfs.errors.NexusError``
subclasses with their own wire codes.

Importing this package imports neither SQLAlchemy nor the service: the engine stays
usable without a record store.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from nexusfs_rebac.defaults import default_model, default_model_text
from nexusfs_rebac.dsl import load_model, parse_model
from nexusfs_rebac.engine import DEFAULT_MAX_DEPTH, Engine, compile_model
from nexusfs_rebac.errors import (
    DuplicateTuple,
    FutureToken,
    InvalidRequest,
    InvalidToken,
    InvalidTuple,
    MissingTuple,
    ModelError,
    ModelNotFound,
    ResolutionTooComplex,
)
from nexusfs_rebac.hierarchy import PathHierarchy, PathTree, decode_id, encode_id, path_object
from nexusfs_rebac.listing import UserList
from nexusfs_rebac.model import (
    AuthorizationModel,
    ComputedUserset,
    Direct,
    Exclusion,
    Intersection,
    RelationDef,
    Restriction,
    TupleToUserset,
    TypeDef,
    Union,
)
from nexusfs_rebac.source import (
    ComputedRelation,
    MemoryTupleSource,
    OverlaySource,
    TupleSource,
)
from nexusfs_rebac.tuples import TupleKey, parse_object, parse_user, validate_tuple

try:
    __version__ = version("nexusfs-rebac")
except PackageNotFoundError:  # running from a source tree without installing
    __version__ = "0.1.0"

__all__ = [
    "DEFAULT_MAX_DEPTH",
    "AuthorizationModel",
    "ComputedRelation",
    "ComputedUserset",
    "Direct",
    "DuplicateTuple",
    "Engine",
    "Exclusion",
    "FutureToken",
    "Intersection",
    "InvalidRequest",
    "InvalidToken",
    "InvalidTuple",
    "MemoryTupleSource",
    "MissingTuple",
    "ModelError",
    "ModelNotFound",
    "OverlaySource",
    "PathHierarchy",
    "PathTree",
    "RelationDef",
    "ResolutionTooComplex",
    "Restriction",
    "TupleKey",
    "TupleSource",
    "TupleToUserset",
    "TypeDef",
    "Union",
    "UserList",
    "__version__",
    "compile_model",
    "decode_id",
    "default_model",
    "default_model_text",
    "encode_id",
    "load_model",
    "parse_model",
    "parse_object",
    "parse_user",
    "path_object",
    "validate_tuple",
]
