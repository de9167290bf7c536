"""Where the engine reads relationship tuples: the :class:`TupleSource` protocol, an
in-memory indexed implementation, and the two wrappers the engine puts around a source
(contextual tuples, kernel-computed relations).

The engine asks a source only four questions, all answerable from three indexes:

* ``read(object, relation, kinds)`` - the users of ``object#relation``, grouped by kind
  (``user``, ``user:*``, ``group#member``); index ``(object, relation, kind)``;
* ``read_subjects(object)`` - every tuple of ``object`` at once, as kind -> subject ->
  the relations holding that user (the check's positive walk tests several relations
  per object: a few lookups per object instead of several per relation); index
  ``(object, kind, subject)``;
* ``read_many(objects, relation, kinds)`` - the same for many objects at once (one query
  per breadth-first level in ``list_users`` / ``expand``);
* ``reverse(relation, object_type, kind, subjects)`` - the objects of ``object_type``
  whose ``relation`` holds any of ``subjects`` (of one ``kind``), for ``list_objects``;
  index ``(kind, subject, relation, object_type)``.

A *subject* is a user's object part: ``user:anne`` for ``user:anne``, ``user:*`` for the
wildcard, ``group:eng`` for ``group:eng#member`` (whose kind is ``group#member``).

Contract for implementations: answers reflect one consistent state for the duration of
a request (the engine may call many times per check); a source may return more kinds
than asked for (the engine looks up only the kinds the model allows, which is how tuples
that a newer model forbids are ignored); returned collections must not be mutated by
the caller and support fast ``in`` (the relation sets of ``read_subjects`` are sets:
the engine calls ``isdisjoint`` on them). A storage-backed source should serve ``read``
and ``read_subjects`` from an in-memory index or a per-request cache: a check makes one
``read_subjects`` per object and one ``read`` per other relation it visits.

Thread safety: :class:`MemoryTupleSource` is not synchronised; do not write to it while
another thread evaluates against it.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Iterator, Mapping, Set
from typing import Protocol, runtime_checkable

from nexusfs_rebac.errors import InvalidTuple
from nexusfs_rebac.tuples import TupleKey, parse_user

__all__ = [
    "BySubject",
    "ComputedRelation",
    "ComputedSource",
    "MemoryTupleSource",
    "OverlaySource",
    "TupleSource",
]

Kinds = Mapping[str, Collection[str]]
#: One object's tuples: kind -> subject -> the relations holding that user.
BySubject = Mapping[str, Mapping[str, Set[str]]]
_EMPTY_KINDS: Kinds = {}
_EMPTY_SUBJECTS: BySubject = {}
_EMPTY: frozenset[str] = frozenset()


@runtime_checkable
class TupleSource(Protocol):
    """Read access to stored relationship tuples (see the module docstring)."""

    def read(self, object: str, relation: str, kinds: Collection[str]) -> Kinds:
        """Users of ``object#relation`` grouped by kind; must contain every kind in
        ``kinds`` that has users, may contain others. Empty mapping if none."""
        ...

    def read_subjects(self, object: str) -> BySubject:
        """Every tuple of ``object``: kind -> subject -> relations (a set) holding the
        user of that kind and subject. Kinds and subjects without tuples may be absent;
        empty mapping if none."""
        ...

    def read_many(
        self, objects: Collection[str], relation: str, kinds: Collection[str]
    ) -> Mapping[str, Kinds]:
        """``read`` for each of ``objects``; objects without users may be absent."""
        ...

    def reverse(
        self, relation: str, object_type: str, kind: str, subjects: Collection[str]
    ) -> Collection[str]:
        """Objects of ``object_type`` with a tuple ``object#relation@...`` whose user has
        ``kind`` and whose subject is one of ``subjects``."""
        ...


@runtime_checkable
class ComputedRelation(Protocol):
    """A relation whose tuples are computed, not stored (the kernel's ``parent``)."""

    def read(self, object: str) -> Kinds:
        """The relation's users of ``object`` grouped by kind (``{"folder": {...}}``)."""
        ...

    def reverse(self, object_type: str, kind: str, subjects: Collection[str]) -> Collection[str]:
        """Objects of ``object_type`` whose relation holds one of ``subjects``."""
        ...


def _split(t: TupleKey) -> tuple[str, str, str, str, str]:
    s = parse_user(t.user)
    return t.object, t.relation, t.object.partition(":")[0], s.kind, s.subject


def _split_trusted(obj: str, rel: str, user: str) -> tuple[str, str, str, str, str]:
    """:func:`_split` by string slicing only (the tuple is known to be well-formed)."""
    head, hash_, urel = user.partition("#")
    utype, _, uid = head.partition(":")
    kind = f"{utype}#{urel}" if hash_ else f"{utype}:*" if uid == "*" else utype
    return obj, rel, obj.partition(":")[0], kind, head


class MemoryTupleSource:
    """Tuples in three dictionary indexes: forward ``(object, relation) -> kind ->
    subjects``, by subject ``object -> kind -> subject -> relations`` and reverse
    ``(relation, object_type, kind) -> subject -> objects``. Strings are shared between
    the indexes, and the relation sets are interned (one frozenset per distinct set of
    relation names), so there is no per-tuple object. Empty entries are removed.

    ``add`` / ``remove`` check only the syntax of a tuple (the model is the engine's
    business: tuples it does not allow are simply ignored by evaluation)."""

    def __init__(self, tuples: Iterable[TupleKey | str | tuple[str, str, str]] = ()) -> None:
        self._fwd: dict[tuple[str, str], dict[str, set[str]]] = {}
        self._rev: dict[tuple[str, str, str], dict[str, set[str]]] = {}
        self._subj: dict[str, dict[str, dict[str, frozenset[str]]]] = {}
        self._relsets: dict[frozenset[str], frozenset[str]] = {}
        self._n = 0
        for t in tuples:
            self.add(t)

    def add(self, t: TupleKey | str | tuple[str, str, str]) -> bool:
        """Store a tuple; ``False`` if it was already there. Raises ``InvalidTuple`` for
        a malformed tuple (nothing stored)."""
        return self._add(*_split(TupleKey.coerce(t)))

    def add_trusted(self, object: str, relation: str, user: str) -> bool:
        """:meth:`add` for a tuple already known to be well-formed (read back from
        storage that validated it): no syntax check, about 5x faster. A malformed tuple
        here is a caller bug and indexes garbage."""
        return self._add(*_split_trusted(object, relation, user))

    def remove_trusted(self, object: str, relation: str, user: str) -> bool:
        """:meth:`remove` for a well-formed tuple (see :meth:`add_trusted`)."""
        return self._remove(*_split_trusted(object, relation, user))

    def _add(self, obj: str, rel: str, otype: str, kind: str, subj: str) -> bool:
        subjects = self._fwd.setdefault((obj, rel), {}).setdefault(kind, set())
        if subj in subjects:
            return False
        subjects.add(subj)
        self._rev.setdefault((rel, otype, kind), {}).setdefault(subj, set()).add(obj)
        by_subject = self._subj.setdefault(obj, {}).setdefault(kind, {})
        rels = by_subject.get(subj)
        by_subject[subj] = self._relset(rels | {rel} if rels is not None else {rel})
        self._n += 1
        return True

    def remove(self, t: TupleKey | str | tuple[str, str, str]) -> bool:
        """Delete a tuple; ``False`` if it was not there. Raises ``InvalidTuple`` for a
        malformed tuple."""
        return self._remove(*_split(TupleKey.coerce(t)))

    def _remove(self, obj: str, rel: str, otype: str, kind: str, subj: str) -> bool:
        by_kind = self._fwd.get((obj, rel))
        subjects = by_kind.get(kind) if by_kind else None
        if subjects is None or subj not in subjects:
            return False
        subjects.discard(subj)
        if not subjects:
            del by_kind[kind]  # type: ignore[union-attr]
            if not by_kind:
                del self._fwd[(obj, rel)]
        of_object = self._subj[obj]
        by_subject = of_object[kind]
        rels = by_subject[subj] - {rel}
        if rels:
            by_subject[subj] = self._relset(rels)
        else:
            del by_subject[subj]
            if not by_subject:
                del of_object[kind]
                if not of_object:
                    del self._subj[obj]
        rev = self._rev[(rel, otype, kind)]
        objs = rev[subj]
        objs.discard(obj)
        if not objs:
            del rev[subj]
            if not rev:
                del self._rev[(rel, otype, kind)]
        self._n -= 1
        return True

    def _relset(self, rels: Iterable[str]) -> frozenset[str]:
        """The interned frozenset of ``rels``."""
        fs = frozenset(rels)
        return self._relsets.setdefault(fs, fs)

    def __len__(self) -> int:
        return self._n

    def __contains__(self, t: object) -> bool:
        if not isinstance(t, TupleKey | str | tuple):
            return False
        try:
            obj, rel, _, kind, subj = _split(TupleKey.coerce(t))
        except InvalidTuple:
            return False
        return subj in self._fwd.get((obj, rel), _EMPTY_KINDS).get(kind, _EMPTY)

    def __iter__(self) -> Iterator[TupleKey]:
        for (obj, rel), by_kind in self._fwd.items():
            for kind, subjects in by_kind.items():
                _, hash_, userset_rel = kind.partition("#")
                for s in subjects:
                    yield TupleKey(obj, rel, f"{s}#{userset_rel}" if hash_ else s)

    # ------------------------------------------------------------- TupleSource

    def read(self, object: str, relation: str, kinds: Collection[str] = ()) -> Kinds:
        return self._fwd.get((object, relation), _EMPTY_KINDS)

    def read_subjects(self, object: str) -> BySubject:
        return self._subj.get(object, _EMPTY_SUBJECTS)

    def read_many(
        self, objects: Collection[str], relation: str, kinds: Collection[str] = ()
    ) -> Mapping[str, Kinds]:
        fwd = self._fwd
        out: dict[str, Kinds] = {}
        for o in objects:
            d = fwd.get((o, relation))
            if d:
                out[o] = d
        return out

    def reverse(
        self, relation: str, object_type: str, kind: str, subjects: Collection[str]
    ) -> Collection[str]:
        by_subject = self._rev.get((relation, object_type, kind))
        if not by_subject:
            return _EMPTY
        if len(subjects) == 1:
            for s in subjects:
                return by_subject.get(s, _EMPTY)
        out: set[str] = set()
        for s in subjects:
            objs = by_subject.get(s)
            if objs:
                out |= objs
        return out


def _merge(a: Kinds, b: Kinds) -> Kinds:
    if not a:
        return b
    if not b:
        return a
    out: dict[str, Collection[str]] = dict(a)
    for k, v in b.items():
        out[k] = set(out[k]) | set(v) if k in out else v
    return out


def _merge_subjects(a: BySubject, b: BySubject) -> BySubject:
    if not a:
        return b
    if not b:
        return a
    out = {k: dict(v) for k, v in a.items()}
    for kind, by_subject in b.items():
        mine = out.setdefault(kind, {})
        for subject, rels in by_subject.items():
            got = mine.get(subject)
            mine[subject] = rels if got is None else got | rels
    return out


class OverlaySource:
    """``base`` plus a few extra tuples (a request's contextual tuples), read as one."""

    def __init__(self, base: TupleSource, extra: MemoryTupleSource) -> None:
        self.base = base
        self.extra = extra

    def read(self, object: str, relation: str, kinds: Collection[str]) -> Kinds:
        e = self.extra.read(object, relation, kinds)
        b = self.base.read(object, relation, kinds)
        return _merge(b, e) if e else b

    def read_subjects(self, object: str) -> BySubject:
        e = self.extra.read_subjects(object)
        b = self.base.read_subjects(object)
        return _merge_subjects(b, e) if e else b

    def read_many(
        self, objects: Collection[str], relation: str, kinds: Collection[str]
    ) -> Mapping[str, Kinds]:
        b = self.base.read_many(objects, relation, kinds)
        e = self.extra.read_many(objects, relation, kinds)
        if not e:
            return b
        out = dict(b)
        for o, d in e.items():
            out[o] = _merge(out.get(o, _EMPTY_KINDS), d)
        return out

    def reverse(
        self, relation: str, object_type: str, kind: str, subjects: Collection[str]
    ) -> Collection[str]:
        b = self.base.reverse(relation, object_type, kind, subjects)
        e = self.extra.reverse(relation, object_type, kind, subjects)
        return set(b) | set(e) if e else b


class ComputedSource:
    """Routes ``type#relation`` pairs to :class:`ComputedRelation` resolvers; everything
    else goes to ``base``. Stored tuples of a computed relation are never read."""

    def __init__(
        self, base: TupleSource, computed: Mapping[tuple[str, str], ComputedRelation]
    ) -> None:
        self.base = base
        self._by = dict(computed)
        self._names = frozenset(r for _, r in computed)
        self._by_type: dict[str, dict[str, ComputedRelation]] = {}
        for (t, r), cr in self._by.items():
            self._by_type.setdefault(t, {})[r] = cr

    def _route(self, object: str, relation: str) -> ComputedRelation | None:
        if relation not in self._names:
            return None
        return self._by.get((object[: object.find(":")], relation))

    def read(self, object: str, relation: str, kinds: Collection[str]) -> Kinds:
        cr = self._route(object, relation)
        return cr.read(object) if cr is not None else self.base.read(object, relation, kinds)

    def read_subjects(self, object: str) -> BySubject:
        b = self.base.read_subjects(object)
        routed = self._by_type.get(object.partition(":")[0])
        if not routed:
            return b
        # Stored tuples of the computed relations are not read; computed ones are added.
        names = frozenset(routed)
        out: dict[str, dict[str, Set[str]]] = {}
        for kind, by_subject in b.items():
            for subject, rels in by_subject.items():
                if kept := rels - names:
                    out.setdefault(kind, {})[subject] = kept
        for rel, cr in routed.items():
            for kind, subjects in cr.read(object).items():
                mine = out.setdefault(kind, {})
                for subject in subjects:
                    got = mine.get(subject)
                    mine[subject] = frozenset((rel,)) if got is None else got | {rel}
        return out

    def read_many(
        self, objects: Collection[str], relation: str, kinds: Collection[str]
    ) -> Mapping[str, Kinds]:
        if relation not in self._names:
            return self.base.read_many(objects, relation, kinds)
        out: dict[str, Kinds] = {}
        rest: list[str] = []
        for o in objects:
            cr = self._route(o, relation)
            if cr is None:
                rest.append(o)
            elif d := cr.read(o):
                out[o] = d
        if rest:
            out.update(self.base.read_many(rest, relation, kinds))
        return out

    def reverse(
        self, relation: str, object_type: str, kind: str, subjects: Collection[str]
    ) -> Collection[str]:
        cr = self._by.get((object_type, relation))
        if cr is not None:
            return cr.reverse(object_type, kind, subjects)
        return self.base.reverse(relation, object_type, kind, subjects)
