"""Typed errors of the ReBAC engine.

Every error is a :class:`nexusfs.errors.NexusError` and also subclasses the builtin it
means, so ``except ValueError`` keeps working for callers that do not know NexusFS. Each
class has its own wire ``code`` (prefixed ``rebac_``), registered with
:func:`nexusfs.errors.register_error`, so a process that imports this package rebuilds a
service answer as the same class; one that does not still sees the ``code``.

The service (:mod:`nexusfs_rebac.service`) adds the storage-level errors: a write of a
tuple that exists (:class:`DuplicateTuple`) or a delete of one that does not
(:class:`MissingTuple`), both unless asked to ignore them; a malformed consistency
token or one issued by another store (:class:`InvalidToken`); a token naming a revision
this store has not reached even after a short wait (:class:`FutureToken`); an unknown
model id (:class:`ModelNotFound`).

Invariant: the engine never answers a question it could not fully resolve. Bad input
raises :class:`ModelError` / :class:`InvalidRequest` / :class:`InvalidTuple` before any
evaluation; an evaluation that exceeds the resolution depth raises
:class:`ResolutionTooComplex` instead of returning a possibly wrong ``False``.
"""

from __future__ import annotations

from nexusfs.errors import NexusError, register_error

__all__ = [
    "DuplicateTuple",
    "FutureToken",
    "InvalidRequest",
    "InvalidToken",
    "InvalidTuple",
    "MissingTuple",
    "ModelError",
    "ModelNotFound",
    "ResolutionTooComplex",
]


@register_error
class ModelError(NexusError, ValueError):
    """An authorization model is invalid: a syntax error in the modeling language, a
    reference to a type or relation that does not exist, a duplicate definition, a
    relation that can never have a member, or an unsupported feature.

    ``line`` and ``column`` (1-based) locate the problem in the DSL source when the model
    came from text; they are ``None`` for models built from JSON or in code. ``reason`` is
    the message without the position; ``str(err)`` and ``message`` carry both, so the
    position survives a trip over the wire.
    """

    code = "rebac_invalid_model"

    def __init__(
        self,
        message: str = "",
        *,
        path: str | None = None,
        line: int | None = None,
        column: int | None = None,
    ) -> None:
        self.reason = message
        self.line = line
        self.column = column
        if line is not None:
            where = f"line {line}" if column is None else f"line {line}, column {column}"
            message = f"{where}: {message}"
        super().__init__(message, path=path)


@register_error
class InvalidRequest(NexusError, ValueError):
    """A request names something malformed or unknown to the model: a bad object or user
    string, an unknown type or relation, a bad ``max_depth``."""

    code = "rebac_invalid_request"


@register_error
class InvalidTuple(InvalidRequest):
    """A relationship tuple is malformed or not allowed by the model's type restrictions
    (for example ``document:1#viewer@group:eng`` when ``viewer`` only allows ``[user]``).

    Raised for tuples a caller supplies (writes, contextual tuples). Stored tuples that a
    newer model no longer allows are *not* errors: evaluation ignores them.
    """

    code = "rebac_invalid_tuple"


@register_error
class ResolutionTooComplex(NexusError, RuntimeError):
    """Answering needed more nested resolution steps than the configured ``max_depth``
    (default 25, like OpenFGA). Raised instead of an answer that could be wrong; the
    message names the request and the limit."""

    code = "rebac_resolution_too_complex"


@register_error
class DuplicateTuple(InvalidRequest):
    """A write names tuples that are already stored (and ``ignore_duplicates`` was not
    set). Nothing of the write was applied; the message lists the tuples."""

    code = "rebac_duplicate_tuple"


@register_error
class MissingTuple(InvalidRequest):
    """A write deletes tuples that are not stored (and ``ignore_missing`` was not set).
    Nothing of the write was applied; the message lists the tuples."""

    code = "rebac_missing_tuple"


@register_error
class InvalidToken(InvalidRequest):
    """A consistency or continuation token is malformed, or was issued by another store
    (a different database, or one that was wiped and recreated)."""

    code = "rebac_invalid_token"


@register_error
class FutureToken(InvalidToken):
    """A consistency token names a revision the store has not reached, even after a
    short wait: it was not issued by this store's writes (a committed write is visible
    at once), so answering would silently break the caller's consistency."""

    code = "rebac_future_token"


@register_error
class ModelNotFound(NexusError, LookupError):
    """No authorization model with that id was ever written to this store."""

    code = "rebac_model_not_found"
