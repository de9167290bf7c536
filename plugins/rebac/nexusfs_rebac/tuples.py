"""Relationship tuples in OpenFGA's string forms, and their validation against a model.

* object: ``type:id`` (``document:1``, ``file:/a/b.txt``);
* user: a concrete user ``type:id`` (``user:anne``), the wildcard ``type:*`` (every user
  of that type), or a userset ``type:id#relation`` (``group:eng#member``: everyone in
  relation ``member`` of ``group:eng``);
* a tuple ``object#relation@user`` (``document:1#viewer@group:eng#member``).

Rules: types and relations are identifiers (see :mod:`nexusfs_rebac.model`); an id is 1 to
8192 characters without ``#`` and control characters, and is not ``*`` (the wildcard);
ids may contain ``:``, ``/``, ``@`` and spaces. Object ids that are file paths must
escape ``#`` and ``%`` (:func:`nexusfs_rebac.hierarchy.encode_id`).

Every user string has a *kind*, the type restriction that admits it (``user``,
``user:*`` or ``group#member``), and a *subject*, the object part (``user:anne``,
``user:*``, ``group:eng``). Tuple sources index tuples by kind, so filtering by a
model's type restrictions is a dictionary lookup, not a scan.

Parsing raises :class:`~nexusfs_rebac.errors.InvalidRequest` (bad strings in a query) or
:class:`~nexusfs_rebac.errors.InvalidTuple` (bad tuples); validation against a model raises
``InvalidTuple`` naming what the relation allows.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from nexusfs_rebac.errors import InvalidRequest, InvalidTuple
from nexusfs_rebac.model import IDENTIFIER, AuthorizationModel

__all__ = [
    "MAX_ID",
    "Subject",
    "TupleKey",
    "parse_object",
    "parse_user",
    "validate_tuple",
]

MAX_ID = 8192
_BAD_ID = re.compile(r"[#\x00-\x1f\x7f]")


@dataclass(frozen=True, slots=True)
class Subject:
    """A parsed user string. ``kind`` is the restriction key that admits it, ``subject``
    its object part; ``relation`` is set for usersets, ``wildcard`` for ``type:*``."""

    user: str
    type: str
    id: str
    relation: str | None
    kind: str
    subject: str

    @property
    def wildcard(self) -> bool:
        return self.id == "*"


@dataclass(frozen=True, slots=True)
class TupleKey:
    """One relationship tuple: ``user`` is in ``relation`` of ``object``."""

    object: str
    relation: str
    user: str

    @classmethod
    def parse(cls, text: str) -> TupleKey:
        """Parse ``object#relation@user`` (split at the first ``#`` and the first ``@``
        after it, so user ids may contain ``@``). Raises :class:`InvalidTuple`."""
        if not isinstance(text, str):
            raise InvalidTuple(f"a tuple must be a string, not {type(text).__name__}")
        obj, hash_, rest = text.partition("#")
        rel, at, user = rest.partition("@")
        if not hash_ or not at:
            raise InvalidTuple(f"tuple {text!r} is not of the form 'type:id#relation@user'")
        t = cls(obj, rel, user)
        t.check_syntax()
        return t

    @classmethod
    def coerce(cls, value: TupleKey | str | tuple[str, str, str] | list[str]) -> TupleKey:
        """A :class:`TupleKey` from itself, its string form or an
        ``(object, relation, user)`` triple. Raises :class:`InvalidTuple`."""
        if isinstance(value, TupleKey):
            value.check_syntax()
            return value
        if isinstance(value, str):
            return cls.parse(value)
        if isinstance(value, tuple | list) and len(value) == 3:
            t = cls(*value)
            t.check_syntax()
            return t
        raise InvalidTuple(
            f"expected a tuple 'type:id#relation@user' or (object, relation, user), got {value!r}"
        )

    def check_syntax(self) -> None:
        """Raise :class:`InvalidTuple` if any part is malformed (no model needed)."""
        try:
            parse_object(self.object)
            _check_relation(self.relation)
            parse_user(self.user)
        except InvalidTuple:
            raise
        except InvalidRequest as e:
            raise InvalidTuple(f"tuple {str(self)!r}: {e.message}") from None

    def __str__(self) -> str:
        return f"{self.object}#{self.relation}@{self.user}"


def _check_type(name: str, text: str) -> None:
    if not IDENTIFIER.fullmatch(name) or len(name) > 254:
        raise InvalidRequest(f"{text!r}: type {name!r} is not a valid type name")


def _check_relation(name: str) -> None:
    if not isinstance(name, str) or not IDENTIFIER.fullmatch(name) or len(name) > 50:
        raise InvalidRequest(f"relation {name!r} is not a valid relation name")


def _check_id(oid: str, text: str) -> None:
    if not oid:
        raise InvalidRequest(f"{text!r}: the id after ':' is empty")
    if len(oid) > MAX_ID:
        raise InvalidRequest(f"{text[:40]!r}...: id longer than {MAX_ID} characters")
    bad = _BAD_ID.search(oid)
    if bad:
        raise InvalidRequest(
            f"{text!r}: ids may not contain {bad.group()!r} ('#' and control characters "
            "are reserved; escape paths with encode_id)"
        )


def parse_object(text: str) -> tuple[str, str]:
    """Split an object ``type:id`` into ``(type, id)``. Raises :class:`InvalidRequest`
    for anything else, including the wildcard ``type:*``."""
    if not isinstance(text, str):
        raise InvalidRequest(f"an object must be a string 'type:id', not {type(text).__name__}")
    t, colon, oid = text.partition(":")
    if not colon:
        raise InvalidRequest(f"object {text!r} is not of the form 'type:id'")
    _check_type(t, text)
    if oid == "*":
        raise InvalidRequest(f"object {text!r}: the wildcard '*' names users, not objects")
    _check_id(oid, text)
    return t, oid


def parse_user(text: str) -> Subject:
    """Parse a user string (``type:id``, ``type:*`` or ``type:id#relation``). Raises
    :class:`InvalidRequest`."""
    if not isinstance(text, str):
        raise InvalidRequest(f"a user must be a string like 'user:anne', not {type(text).__name__}")
    obj, hash_, rel = text.partition("#")
    t, colon, oid = obj.partition(":")
    if not colon:
        raise InvalidRequest(
            f"user {text!r} is not of the form 'type:id', 'type:*' or 'type:id#relation'"
        )
    _check_type(t, text)
    if hash_:
        _check_relation(rel)
        if oid == "*":
            raise InvalidRequest(f"user {text!r}: a wildcard cannot have a relation")
        _check_id(oid, text)
        return Subject(text, t, oid, rel, f"{t}#{rel}", obj)
    if oid == "*":
        return Subject(text, t, "*", None, f"{t}:*", text)
    _check_id(oid, text)
    return Subject(text, t, oid, None, t, text)


def validate_tuple(model: AuthorizationModel, tuple_key: TupleKey) -> Subject:
    """Check ``tuple_key`` against ``model``'s type restrictions and return its parsed
    user. Raises :class:`InvalidTuple` naming what the relation allows."""
    tuple_key.check_syntax()
    otype, _ = parse_object(tuple_key.object)
    td = model.type(otype)
    if td is None:
        raise InvalidTuple(f"tuple {str(tuple_key)!r}: type '{otype}' is not in the model")
    rd = td.relation(tuple_key.relation)
    if rd is None:
        raise InvalidTuple(
            f"tuple {str(tuple_key)!r}: type '{otype}' has no relation '{tuple_key.relation}'"
        )
    allowed = rd.restriction_keys
    if not allowed:
        raise InvalidTuple(
            f"tuple {str(tuple_key)!r}: relation '{otype}#{rd.name}' is computed from other "
            "relations; tuples cannot be written for it"
        )
    subj = parse_user(tuple_key.user)
    if subj.kind not in allowed:
        raise InvalidTuple(
            f"tuple {str(tuple_key)!r}: '{otype}#{rd.name}' allows users of kind "
            f"{', '.join(sorted(allowed))}, not '{subj.kind}'"
        )
    return subj
