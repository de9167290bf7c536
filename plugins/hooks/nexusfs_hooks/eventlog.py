"""The audit log: every syscall, in order, append-only, on the RecordStore.

Sequence numbers (``seq``) start at 1 and increase by exactly one per stored event, with
no gaps, across every process appending to the same database: a batch takes the
``event_seq`` counter row ``FOR UPDATE`` (on SQLite the store's ``BEGIN IMMEDIATE``
holds the write lock), assigns ``counter + 1 ...``, inserts the rows and advances the
counter in the *same* transaction. A rolled-back batch therefore consumes no numbers.

Idempotence: an event carrying a kernel sequence number (``kernel_seq``) already in the
log is not stored again; ``append`` returns the ``seq`` it got the first time.

Throughput: a batch costs a fixed number of statements, whatever its size: the counter
``SELECT ... FOR UPDATE``, one lookup of already-logged kernel seqs (an index range scan
for the usual contiguous batch), one ``INSERT`` of all new rows (on PostgreSQL a single
``INSERT ... SELECT FROM unnest(<one array per column>)``; elsewhere an
``executemany``), the counter ``UPDATE``, and the commit.
"""

from __future__ import annotations

import functools
import math
import operator
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, cast

from sqlalchemy import (
    BigInteger,
    Boolean,
    ColumnElement,
    Double,
    String,
    Table,
    Text,
    and_,
    bindparam,
    func,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.engine import Connection, Dialect
from sqlalchemy.orm import Session, sessionmaker

from nexusfs.errors import InvalidPath
from nexusfs_hooks.models import EVENT_SEQ, AuditEvent, Counter

__all__ = ["MAX_QUERY_LIMIT", "EventLog", "event_to_dict"]

#: Largest page ``query`` / ``tail`` return.
MAX_QUERY_LIMIT = 10_000
#: Kernel seqs looked up per ``IN`` clause (well below every driver's parameter limit).
_IN_CHUNK = 500
#: A batch whose kernel seqs span less than ``slack * (count + 1)`` is looked up with
#: one range scan (``BETWEEN``) instead of ``IN`` lists.
_RANGE_SLACK = 4
_TABLE = cast(Table, AuditEvent.__table__)
#: PostgreSQL column types of the batch INSERT's array parameters.
_PG_ARRAY_TYPES: dict[str, Any] = {
    "seq": BigInteger(), "kernel_seq": BigInteger(), "time": Double(), "subject": String(),
    "op": String(), "path": String(), "dst": String(), "ok": Boolean(),
    "error_code": String(), "message": Text(), "revision": BigInteger(),
}  # fmt: skip
_COLUMNS = tuple(_PG_ARRAY_TYPES)


@functools.cache
def _pg_batch_insert() -> Any:
    """``INSERT INTO events (...) SELECT * FROM unnest(:seq::BIGINT[], ...)``: a whole
    batch in one statement with one array parameter per column (a fixed statement, so
    it is compiled and planned once, whatever the batch size)."""
    from sqlalchemy.dialects import postgresql  # only PostgreSQL stores pay the import

    arrays = [bindparam(c, type_=postgresql.ARRAY(t)) for c, t in _PG_ARRAY_TYPES.items()]
    src = func.unnest(*arrays).table_valued(*_COLUMNS, name="batch").render_derived()
    return insert(_TABLE).from_select(list(_COLUMNS), select(*(src.c[c] for c in _COLUMNS)))


def _insert_rows(conn: Connection, rows: list[dict[str, Any]]) -> None:
    """Insert the rows (with their ``seq``) in the connection's transaction: one
    statement on PostgreSQL (arrays through ``unnest``), an ``executemany`` elsewhere
    (SQLite runs it in-process)."""
    dialect = conn.dialect
    if dialect.name == "postgresql":
        conn.execute(_pg_batch_insert(), {c: [row[c] for row in rows] for c in _COLUMNS})
        return
    positional = _positional_insert(dialect)
    if positional is None:
        conn.execute(_INSERT, rows)
        return
    sql, row_values = positional
    conn.exec_driver_sql(sql, [row_values(row) for row in rows])


@functools.cache
def _positional_insert(dialect: Dialect) -> tuple[str, Callable[[Mapping[str, Any]], Any]] | None:
    """The batch ``INSERT`` compiled by ``dialect`` and the function that turns a row
    into its parameters (the columns in the statement's order, each through its type's
    bind processor for this dialect, as SQLAlchemy would), when the dialect binds
    positionally (SQLite: qmark) - else ``None``.

    SQLAlchemy's ``executemany`` of dict rows spends about 6 us per row rebuilding each
    row's parameters (``construct_params``); executing the statement it compiled with
    the rows already in positional form skips that and sends the driver the same SQL
    and values."""
    compiled = insert(_TABLE).values({c: bindparam(c) for c in _COLUMNS}).compile(
        dialect=dialect)
    order = compiled.positiontup
    if not compiled.positional or not order or sorted(order) != sorted(_COLUMNS):
        return None
    getter = operator.itemgetter(*order)
    processors = [(i, proc) for i, c in enumerate(order)
                  if (proc := _TABLE.c[c].type.dialect_impl(dialect).bind_processor(dialect))
                  is not None]  # fmt: skip
    if not processors:
        return compiled.string, getter

    def row_values(row: Mapping[str, Any]) -> tuple[Any, ...]:
        values = list(getter(row))
        for i, proc in processors:
            value = values[i]
            if value is not None:
                values[i] = proc(value)
        return tuple(values)

    return compiled.string, row_values


#: The statements of :meth:`EventLog.record_rows`, built once.
_INSERT = insert(_TABLE)
_LOCK_EVENT_SEQ = select(Counter.value).where(Counter.name == EVENT_SEQ).with_for_update()
_SET_EVENT_SEQ = (
    update(Counter).where(Counter.name == EVENT_SEQ).values(value=bindparam("value"))
)
_KNOWN_IN_RANGE = select(AuditEvent.kernel_seq, AuditEvent.seq).where(
    AuditEvent.kernel_seq.between(bindparam("lo"), bindparam("hi"))
)
_KNOWN_IN_LIST = select(AuditEvent.kernel_seq, AuditEvent.seq).where(
    AuditEvent.kernel_seq.in_(bindparam("seqs", expanding=True))
)

_FIELDS = ("kernel_seq", "time", "subject", "op", "path", "dst", "ok", "error_code",
           "message", "revision")  # fmt: skip


def event_to_dict(row: AuditEvent) -> dict[str, Any]:
    """A stored event as plain data (msgpack-able)."""
    return {
        "seq": row.seq,
        "kernel_seq": row.kernel_seq,
        "time": row.time,
        "subject": row.subject,
        "op": row.op,
        "path": row.path,
        "dst": row.dst,
        "ok": row.ok,
        "error_code": row.error_code,
        "message": row.message,
        "revision": row.revision,
    }


def _opt_str(event: Mapping[str, Any], key: str) -> str | None:
    value = event.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError(f"event field {key!r} must be a string or None, not {value!r}")
    return value


def _opt_int(event: Mapping[str, Any], key: str) -> int | None:
    value = event.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"event field {key!r} must be an integer or None, not {value!r}")
    return value


def _normalise_event(event: Mapping[str, Any]) -> dict[str, Any]:
    """Validate one event dict into column values (without ``seq``). ``ValueError`` on a
    missing ``op``/``path`` or a field of the wrong type."""
    if not isinstance(event, Mapping):
        raise ValueError(f"an event must be a mapping, not {type(event).__name__}")
    unknown = set(event) - set(_FIELDS) - {"seq"}
    if unknown:
        raise ValueError(f"unknown event fields: {sorted(unknown)}")
    op = event.get("op")
    path = event.get("path")
    if not isinstance(op, str) or not op:
        raise ValueError(f"event 'op' must be a non-empty string, not {op!r}")
    if not isinstance(path, str) or not path:
        raise ValueError(f"event 'path' must be a non-empty string, not {path!r}")
    when = event.get("time", 0.0)
    if isinstance(when, bool) or not isinstance(when, int | float) or not math.isfinite(when):
        raise ValueError(f"event 'time' must be a finite number, not {when!r}")
    kernel_seq = _opt_int(event, "kernel_seq")
    if kernel_seq is not None and kernel_seq <= 0:
        kernel_seq = None  # 0 = "the kernel gave no sequence number": never deduplicated
    return {
        "kernel_seq": kernel_seq,
        "time": float(when),
        "subject": _opt_str(event, "subject"),
        "op": op,
        "path": path,
        "dst": _opt_str(event, "dst"),
        "ok": bool(event.get("ok", True)),
        "error_code": _opt_str(event, "error_code"),
        "message": _opt_str(event, "message"),
        "revision": _opt_int(event, "revision"),
    }


def _subtree(column: Any, prefix: str) -> ColumnElement[bool]:
    """``column`` is ``prefix`` or lies below it. Bytewise range, so ``/ab`` is not under
    ``/a`` ('/' is 0x2F, '0' is 0x30: every ``prefix + '/...'`` sorts in between)."""
    return or_(column == prefix, and_(column >= prefix + "/", column < prefix + "0"))


def _clamp_limit(limit: int) -> int:
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
        raise ValueError(f"limit must be a non-negative integer, not {limit!r}")
    return min(limit, MAX_QUERY_LIMIT)


class EventLog:
    """The audit log (implements :class:`nexusfs.services.protocols.EventLogProtocol`).

    ``session_factory`` comes from a :class:`~nexusfs.abc.RecordStoreABC` whose schema
    is current (:func:`nexusfs_hooks.models.upgrade_schema`). Every method runs in one
    transaction: an exception (database error, bad argument) leaves the log as it was.
    Safe to use from several threads and processes at once.
    """

    def __init__(self, session_factory: sessionmaker[Session]) -> None:
        self._sessions = session_factory

    # ------------------------------------------------------------------ writing

    def append(self, event: dict[str, Any]) -> int:
        """Store one event and return its ``seq``.

        ``event`` holds ``op`` and ``path`` (required) and optionally ``kernel_seq``,
        ``time``, ``subject``, ``dst``, ``ok`` (default true), ``error_code``,
        ``message``, ``revision`` (a ``seq`` key is ignored: the log assigns it). If
        ``kernel_seq`` is already in the log nothing is
        stored and the existing ``seq`` is returned. ``ValueError`` for a malformed
        event; database errors propagate with nothing stored.
        """
        return self.append_many([event])[0]

    def append_many(self, events: Iterable[Mapping[str, Any]]) -> list[int]:
        """Store several events in one transaction (all or none) and return their
        ``seq`` numbers in input order; duplicates (by ``kernel_seq``, in the log or
        within the batch) get the ``seq`` of their first occurrence."""
        return [seq for seq, _new in self.record_many(events)]

    def record_many(self, events: Iterable[Mapping[str, Any]]) -> list[tuple[int, bool]]:
        """Like :meth:`append_many`, also telling for each event whether it was newly
        stored (``False``: a redelivery of a ``kernel_seq`` already logged)."""
        return self.record_rows([_normalise_event(e) for e in events])

    def record_rows(self, rows: list[dict[str, Any]]) -> list[tuple[int, bool]]:
        """:meth:`record_many` for rows already in column form, as the service builds
        them from the kernel's own events: exactly the keys ``kernel_seq`` (``None`` or
        > 0), ``time`` (float), ``subject``, ``op``, ``path``, ``dst``, ``ok``,
        ``error_code``, ``message``, ``revision``, of the column types. They are not
        validated (the database still enforces types and ``NOT NULL``) and are
        modified (their ``seq`` is set). Same transaction and failure semantics."""
        if not rows:
            return []
        with self._sessions.begin() as session:
            # Core statements on the session's connection: the ORM adds nothing here.
            conn = session.connection()
            # Lock the counter row first: on PostgreSQL this serialises appenders (on
            # SQLite the store's BEGIN IMMEDIATE already holds the write lock).
            current = conn.execute(_LOCK_EVENT_SEQ).scalar()
            if current is None:
                raise RuntimeError("hooks schema missing: call upgrade_schema() first")
            known = self._known_kernel_seqs(conn, rows)
            result: list[tuple[int, bool]] = []
            new_rows: list[dict[str, Any]] = []
            next_seq = current
            for row in rows:
                ks = row["kernel_seq"]
                if ks is not None and ks in known:
                    result.append((known[ks], False))
                    continue
                next_seq += 1
                row["seq"] = next_seq
                new_rows.append(row)
                if ks is not None:
                    known[ks] = next_seq
                result.append((next_seq, True))
            if new_rows:
                _insert_rows(conn, new_rows)
                conn.execute(_SET_EVENT_SEQ, {"value": next_seq})
        return result

    @staticmethod
    def _known_kernel_seqs(conn: Connection, rows: Sequence[dict[str, Any]]) -> dict[int, int]:
        """``kernel_seq -> seq`` of the batch's kernel seqs already in the log. A batch's
        kernel seqs are normally (nearly) contiguous: one index range scan then, an
        ``IN`` list otherwise."""
        wanted = sorted({r["kernel_seq"] for r in rows if r["kernel_seq"] is not None})
        if not wanted:
            return {}
        known: dict[int, int] = {}
        lo, hi = wanted[0], wanted[-1]
        if hi - lo < _RANGE_SLACK * len(wanted) + _RANGE_SLACK:
            wanted_set = set(wanted)
            for ks, seq in conn.execute(_KNOWN_IN_RANGE, {"lo": lo, "hi": hi}):
                if ks is not None and ks in wanted_set:
                    known[ks] = seq
            return known
        for i in range(0, len(wanted), _IN_CHUNK):
            chunk = wanted[i : i + _IN_CHUNK]
            for ks, seq in conn.execute(_KNOWN_IN_LIST, {"seqs": chunk}):
                if ks is not None:
                    known[ks] = seq
        return known

    def contains_kernel_seq(self, kernel_seq: int) -> bool:
        """Whether an event with this kernel sequence number is already logged."""
        with self._sessions() as session:
            stmt = select(AuditEvent.seq).where(AuditEvent.kernel_seq == kernel_seq)
            return session.scalar(stmt) is not None

    # ------------------------------------------------------------------ reading

    def query(
        self,
        *,
        path_prefix: str | None = None,
        subject: str | None = None,
        op: str | None = None,
        since: float | None = None,
        until: float | None = None,
        after_seq: int | None = None,
        limit: int = 100,
    ) -> list[dict[str, Any]]:
        """Events matching every given filter, ordered by ``seq``, at most ``limit``
        (capped at :data:`MAX_QUERY_LIMIT`).

        ``path_prefix``: the event's ``path`` *or* ``dst`` (rename/copy target) is the
        prefix itself or lies in its subtree (``/a`` matches ``/a`` and ``/a/b``, not
        ``/ab``; ``/`` matches everything). ``since <= time < until``. ``after_seq``:
        only ``seq > after_seq`` (page with the last ``seq`` seen). ``InvalidPath`` for
        a relative prefix; ``ValueError`` for a negative limit.
        """
        limit = _clamp_limit(limit)
        stmt = select(AuditEvent)
        if path_prefix is not None:
            if not isinstance(path_prefix, str) or not path_prefix.startswith("/"):
                raise InvalidPath("path_prefix must be an absolute path", path=str(path_prefix))
            prefix = path_prefix.rstrip("/")
            if prefix:
                stmt = stmt.where(
                    or_(_subtree(AuditEvent.path, prefix), _subtree(AuditEvent.dst, prefix))
                )
        if subject is not None:
            stmt = stmt.where(AuditEvent.subject == subject)
        if op is not None:
            stmt = stmt.where(AuditEvent.op == op)
        if since is not None:
            stmt = stmt.where(AuditEvent.time >= since)
        if until is not None:
            stmt = stmt.where(AuditEvent.time < until)
        if after_seq is not None:
            stmt = stmt.where(AuditEvent.seq > after_seq)
        stmt = stmt.order_by(AuditEvent.seq).limit(limit)
        with self._sessions() as session:
            return [event_to_dict(row) for row in session.scalars(stmt)]

    def tail(self, n: int = 20) -> list[dict[str, Any]]:
        """The last ``n`` events (capped at :data:`MAX_QUERY_LIMIT`), oldest first."""
        n = _clamp_limit(n)
        stmt = select(AuditEvent).order_by(AuditEvent.seq.desc()).limit(n)
        with self._sessions() as session:
            rows = [event_to_dict(row) for row in session.scalars(stmt)]
        rows.reverse()
        return rows

    def last_seq(self) -> int:
        """The ``seq`` of the newest event; 0 for an empty log."""
        with self._sessions() as session:
            counter = session.get(Counter, EVENT_SEQ)
            return counter.value if counter is not None else 0
