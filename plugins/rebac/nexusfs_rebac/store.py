"""The rebac service's system of record: models, tuples and the change log in the
RecordStore (SQLAlchemy ORM; SQLite and PostgreSQL alike).

Every mutation runs in one transaction that first takes the ``revision`` row of
``nexus_rebac_meta`` ``FOR UPDATE`` (on SQLite the store's ``BEGIN IMMEDIATE`` already
holds the write lock), so writers are serialised across threads, workers and kernels
sharing the database, and each mutation that changes something gets the next revision:
gapless, monotonic, committed in revision order. Hence:

* a reader that sees ``revision = N`` (one primary-key lookup, :meth:`TupleStore.head`)
  can then read every change with ``revision <= N``: all of them are committed;
* change-log ids grow with revision, so paging by id never skips a row committed late;
* duplicate and missing tuples are decided against the committed state, under the lock.

Failure semantics: each method is one transaction; an exception (a typed error for bad
input, a ``sqlalchemy.exc`` error for the database) leaves the store unchanged. Typed
errors: :class:`~nexusfs_rebac.errors.DuplicateTuple`,
:class:`~nexusfs_rebac.errors.MissingTuple`, :class:`~nexusfs_rebac.errors.InvalidTuple`
(raised by the validator the caller passes) and
:class:`~nexusfs_rebac.errors.InvalidRequest`. Thread-safe; the store keeps no state
besides the session factory and the (immutable) store id.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, and_, delete, func, insert, select, update
from sqlalchemy.orm import Session, sessionmaker

from nexusfs_rebac.errors import DuplicateTuple, InvalidRequest, MissingTuple
from nexusfs_rebac.model import AuthorizationModel
from nexusfs_rebac.tables import REVISION, STORE_ID, Change, Meta, StoredModel, StoredTuple
from nexusfs_rebac.tuples import TupleKey

__all__ = [
    "ChangeRow",
    "ModelRow",
    "TupleStore",
    "Validator",
    "WriteResult",
    "tuple_hash",
]

#: Key hashes looked up per ``IN`` clause (well below every driver's parameter limit).
_IN_CHUNK = 500
#: How many offending tuples an error message lists.
_SHOW = 5

#: ``validator(model_id, load_json)`` returns the check of one tuple to be written
#: against the current model (raising ``InvalidTuple``); ``load_json()`` gives the
#: model's JSON if the validator does not know the model yet.
Validator = Callable[[str, Callable[[], str]], Callable[[TupleKey], object]]


def tuple_hash(t: TupleKey) -> str:
    """The unique key of a stored tuple: SHA-256 (hex) of its string form."""
    return hashlib.sha256(str(t).encode("utf-8", "surrogatepass")).hexdigest()


@dataclass(frozen=True, slots=True)
class ModelRow:
    """A stored model version: current from ``revision`` on (until a later one)."""

    revision: int
    model_id: str
    dsl: str
    json: str
    created_at: float

    def to_dict(self) -> dict[str, Any]:
        """Plain data: ``model_id``, ``revision``, ``created_at``, ``dsl``, ``json``
        (the OpenFGA JSON form as a mapping)."""
        return {
            "model_id": self.model_id,
            "revision": self.revision,
            "created_at": self.created_at,
            "dsl": self.dsl,
            "json": json.loads(self.json),
        }


@dataclass(frozen=True, slots=True)
class ChangeRow:
    """One change-log row."""

    id: int
    revision: int
    operation: str
    object: str
    relation: str
    user: str
    time: float


@dataclass(frozen=True, slots=True)
class WriteResult:
    """What a write did: the store's ``revision`` after it (unchanged when nothing was
    written or deleted) and the tuples actually written and deleted."""

    revision: int
    written: tuple[TupleKey, ...]
    deleted: tuple[TupleKey, ...]

    @property
    def changed(self) -> bool:
        return bool(self.written or self.deleted)


def _model_row(m: StoredModel) -> ModelRow:
    return ModelRow(m.revision, m.model_id, m.dsl, m.json, m.created_at)


def _prefix(column: Any, prefix: str) -> ColumnElement[bool]:
    """``column`` starts with ``prefix``, case-sensitively on every database (``LIKE``
    is case-insensitive on SQLite)."""
    return func.substr(column, 1, len(prefix)) == prefix


def _show(tuples: Sequence[TupleKey]) -> str:
    shown = ", ".join(repr(str(t)) for t in tuples[:_SHOW])
    more = f" and {len(tuples) - _SHOW} more" if len(tuples) > _SHOW else ""
    return shown + more


class TupleStore:
    """Models, tuples and the change log of one database (see the module docstring).
    ``session_factory`` comes from a :class:`~nexusfs.abc.RecordStoreABC` whose schema
    is current (:func:`nexusfs_rebac.tables.upgrade_schema`)."""

    def __init__(self, session_factory: sessionmaker[Session]) -> None:
        self._sessions = session_factory
        with session_factory() as session:
            store_id = session.get(Meta, STORE_ID)
            if store_id is None:
                raise RuntimeError("rebac schema missing: call upgrade_schema() first")
            self.store_id: int = store_id.value

    # ------------------------------------------------------------------ revision

    def head(self) -> int:
        """The store's current revision (0 before the first write): one primary-key
        lookup."""
        with self._sessions() as session:
            value = session.scalar(select(Meta.value).where(Meta.name == REVISION))
        return int(value or 0)

    @staticmethod
    def _lock_revision(session: Session) -> int:
        value = session.scalar(select(Meta.value).where(Meta.name == REVISION).with_for_update())
        if value is None:
            raise RuntimeError("rebac schema missing: call upgrade_schema() first")
        return int(value)

    @staticmethod
    def _advance(session: Session, revision: int) -> None:
        session.execute(update(Meta).where(Meta.name == REVISION).values(value=revision))

    # -------------------------------------------------------------------- models

    def write_model(self, model: AuthorizationModel, dsl: str, *, only_if_none: bool = False
                    ) -> tuple[int, bool]:  # fmt: skip
        """Make ``model`` (with its DSL source ``dsl``) the current model and return
        ``(revision, written)``. Writing the model that is already current changes
        nothing (``written`` false, the current revision). With ``only_if_none`` the
        model is written only into a store that has none yet (seeding a default)."""
        with self._sessions.begin() as session:
            revision = self._lock_revision(session)
            current = session.scalar(
                select(StoredModel.model_id).order_by(StoredModel.revision.desc()).limit(1)
            )
            if current == model.model_id or (only_if_none and current is not None):
                return revision, False
            revision += 1
            session.add(
                StoredModel(
                    revision=revision,
                    model_id=model.model_id,
                    dsl=dsl,
                    json=json.dumps(model.to_json(), separators=(",", ":")),
                    created_at=time.time(),
                )
            )
            self._advance(session, revision)
        return revision, True

    def read_model(self, model_id: str | None = None) -> ModelRow | None:
        """The current model (``model_id`` ``None``), or the latest version with that
        id; ``None`` if there is none."""
        stmt = select(StoredModel).order_by(StoredModel.revision.desc()).limit(1)
        if model_id is not None:
            stmt = stmt.where(StoredModel.model_id == model_id)
        with self._sessions() as session:
            row = session.scalar(stmt)
            return _model_row(row) if row is not None else None

    def model_since(self, after: int, upto: int) -> ModelRow | None:
        """The newest model made current in ``(after, upto]``, or ``None``."""
        stmt = (
            select(StoredModel)
            .where(StoredModel.revision > after, StoredModel.revision <= upto)
            .order_by(StoredModel.revision.desc())
            .limit(1)
        )
        with self._sessions() as session:
            row = session.scalar(stmt)
            return _model_row(row) if row is not None else None

    # -------------------------------------------------------------------- tuples

    def write(
        self,
        writes: Sequence[TupleKey],
        deletes: Sequence[TupleKey],
        validator: Validator,
        *,
        ignore_duplicates: bool = False,
        ignore_missing: bool = False,
    ) -> WriteResult:
        """Write and delete tuples atomically, as one revision.

        ``writes`` are checked against the current model by ``validator`` (deletes are
        not: a tuple a newer model forbids can always be deleted). A tuple in ``writes``
        that is already stored raises :class:`DuplicateTuple`, one in ``deletes`` that
        is not stored :class:`MissingTuple`, unless ``ignore_duplicates`` /
        ``ignore_missing``; then it is skipped. A tuple both written and deleted raises
        :class:`InvalidRequest`, so does one listed twice (unless the matching
        ``ignore_*`` flag is set: then it counts once). If nothing is left to change, no
        revision is made. Nothing is applied unless everything is.
        """
        keyed_w = {tuple_hash(t): t for t in writes}
        keyed_d = {tuple_hash(t): t for t in deletes}
        if (len(keyed_w) != len(writes) and not ignore_duplicates) or (
            len(keyed_d) != len(deletes) and not ignore_missing
        ):
            raise InvalidRequest("a tuple is listed twice in one write")
        both = keyed_w.keys() & keyed_d.keys()
        if both:
            raise InvalidRequest(
                f"tuples both written and deleted in one write: {_show([keyed_w[h] for h in both])}"
            )
        with self._sessions.begin() as session:
            revision = self._lock_revision(session)
            if writes:
                current = session.execute(
                    select(StoredModel.revision, StoredModel.model_id)
                    .order_by(StoredModel.revision.desc())
                    .limit(1)
                ).first()
                if current is None:
                    raise InvalidRequest("no authorization model has been written yet")
                model_rev = current[0]

                def load_json() -> str:
                    return str(
                        session.scalar(
                            select(StoredModel.json).where(StoredModel.revision == model_rev)
                        )
                    )

                check = validator(current[1], load_json)
                for t in writes:
                    check(t)
            stored = self._existing(session, [*keyed_w, *keyed_d])
            dups = [t for h, t in keyed_w.items() if h in stored]
            missing = [t for h, t in keyed_d.items() if h not in stored]
            if dups and not ignore_duplicates:
                raise DuplicateTuple(f"tuples already stored: {_show(dups)}")
            if missing and not ignore_missing:
                raise MissingTuple(f"tuples not stored: {_show(missing)}")
            written = [(h, t) for h, t in keyed_w.items() if h not in stored]
            deleted = [(h, t) for h, t in keyed_d.items() if h in stored]
            if not written and not deleted:
                return WriteResult(revision, (), ())
            revision += 1
            now = time.time()
            if written:
                session.execute(
                    insert(StoredTuple),
                    [{"key_hash": h, "object": t.object, "relation": t.relation,
                      "user": t.user, "revision": revision} for h, t in written],
                )  # fmt: skip
            hashes = [h for h, _ in deleted]
            for i in range(0, len(hashes), _IN_CHUNK):
                session.execute(
                    delete(StoredTuple).where(StoredTuple.key_hash.in_(hashes[i : i + _IN_CHUNK]))
                )
            session.execute(
                insert(Change),
                [{"revision": revision, "operation": op, "object": t.object,
                  "relation": t.relation, "user": t.user, "time": now}
                 for op, pairs in (("write", written), ("delete", deleted)) for _, t in pairs],
            )  # fmt: skip
            self._advance(session, revision)
        return WriteResult(revision, tuple(t for _, t in written), tuple(t for _, t in deleted))

    @staticmethod
    def _existing(session: Session, hashes: Sequence[str]) -> set[str]:
        found: set[str] = set()
        for i in range(0, len(hashes), _IN_CHUNK):
            chunk = hashes[i : i + _IN_CHUNK]
            found.update(
                session.scalars(select(StoredTuple.key_hash).where(StoredTuple.key_hash.in_(chunk)))
            )
        return found

    def load(self) -> tuple[int, list[tuple[str, str, str]]]:
        """``(revision, tuples)``: every stored tuple as ``(object, relation, user)``,
        read after ``revision`` (so they reflect at least that revision, possibly a few
        later writes; replaying the change log after ``revision`` over them converges
        on the state of the revision replayed to)."""
        with self._sessions() as session:
            revision = session.scalar(select(Meta.value).where(Meta.name == REVISION))
            rows = session.execute(
                select(StoredTuple.object, StoredTuple.relation, StoredTuple.user)
            ).all()
        return int(revision or 0), [(o, r, u) for o, r, u in rows]

    def read(
        self,
        *,
        object: str | None = None,
        relation: str | None = None,
        user: str | None = None,
        after_id: int = 0,
        limit: int = 100,
    ) -> list[tuple[int, TupleKey]]:
        """Stored tuples whose object, relation and user start with the given prefixes
        (case-sensitive), in storage order after row ``after_id``, at most ``limit``:
        ``(row id, tuple)`` pairs (the last id continues the page)."""
        conds: list[ColumnElement[bool]] = [StoredTuple.id > after_id]
        for column, prefix in ((StoredTuple.object, object), (StoredTuple.relation, relation),
                               (StoredTuple.user, user)):  # fmt: skip
            if prefix:
                conds.append(_prefix(column, prefix))
        stmt = (
            select(StoredTuple.id, StoredTuple.object, StoredTuple.relation, StoredTuple.user)
            .where(and_(*conds))
            .order_by(StoredTuple.id)
            .limit(limit)
        )
        with self._sessions() as session:
            return [(i, TupleKey(o, r, u)) for i, o, r, u in session.execute(stmt)]

    # --------------------------------------------------------------- change log

    def changes(
        self,
        *,
        after_revision: int = 0,
        after_id: int | None = None,
        upto_revision: int | None = None,
        limit: int | None = None,
    ) -> list[ChangeRow]:
        """Change-log rows in order: after revision ``after_revision`` (or, when given,
        after row ``after_id``), up to ``upto_revision`` inclusive, at most ``limit``."""
        stmt = select(Change)
        if after_id is not None:
            stmt = stmt.where(Change.id > after_id)
        else:
            stmt = stmt.where(Change.revision > after_revision)
        if upto_revision is not None:
            stmt = stmt.where(Change.revision <= upto_revision)
        stmt = stmt.order_by(Change.id)
        if limit is not None:
            stmt = stmt.limit(limit)
        with self._sessions() as session:
            return [
                ChangeRow(c.id, c.revision, c.operation, c.object, c.relation, c.user, c.time)
                for c in session.scalars(stmt)
            ]

    def bulk_write(self, tuples: Iterable[TupleKey], validator: Validator, *,
                   batch: int = 5_000) -> int:  # fmt: skip
        """Write many tuples, ``batch`` per revision, skipping stored ones (benchmarks
        and imports); returns the last revision."""
        revision = self.head()
        chunk: list[TupleKey] = []
        for t in tuples:
            chunk.append(t)
            if len(chunk) >= batch:
                revision = self.write(chunk, (), validator, ignore_duplicates=True).revision
                chunk = []
        if chunk:
            revision = self.write(chunk, (), validator, ignore_duplicates=True).revision
        return revision
