"""ORM models of the hooks service (SQLAlchemy 2 typed declarative).

Tables (all prefixed ``nexus_hooks_``):

* ``events``: the append-only audit log, one row per syscall. ``seq`` is the log's own
  gapless sequence number; ``kernel_seq`` the kernel's event number (``UNIQUE``, so a
  redelivered event is stored once; ``NULL`` when the kernel gave none).
* ``counters``: named single-row counters updated in the same transaction as the rows
  they count: ``event_seq`` (last assigned ``seq``) and ``rules_version`` (bumped by
  every rule change, so workers know when to reload their compiled rules).
* ``rules``: user hook rules.

Paths are compared bytewise (``COLLATE "C"`` on PostgreSQL, SQLite's default ``BINARY``)
so prefix queries can use index range scans.
"""

from __future__ import annotations

import time

from sqlalchemy import BigInteger, Boolean, Double, Index, Integer, String, Text
from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from nexusfs.abc import RecordStoreABC

__all__ = [
    "EVENT_SEQ",
    "RULES_VERSION",
    "AuditEvent",
    "Base",
    "Counter",
    "HookRule",
    "create_schema",
]

EVENT_SEQ = "event_seq"
RULES_VERSION = "rules_version"

#: 64-bit integers, but SQLite's rowid alias (INTEGER) where it matters.
SeqType = BigInteger().with_variant(Integer(), "sqlite")
#: Bytewise-ordered text for paths.
PathType = String(4096).with_variant(String(4096, collation="C"), "postgresql")


class Base(DeclarativeBase):
    """Declarative base of the hooks service's tables."""


class AuditEvent(Base):
    """One syscall in the audit log."""

    __tablename__ = "nexus_hooks_events"

    seq: Mapped[int] = mapped_column(SeqType, primary_key=True, autoincrement=False)
    kernel_seq: Mapped[int | None] = mapped_column(BigInteger, unique=True)
    time: Mapped[float] = mapped_column(Double)
    subject: Mapped[str | None] = mapped_column(String(512))
    op: Mapped[str] = mapped_column(String(64))
    path: Mapped[str] = mapped_column(PathType)
    dst: Mapped[str | None] = mapped_column(PathType)
    ok: Mapped[bool] = mapped_column(Boolean)
    error_code: Mapped[str | None] = mapped_column(String(64))
    message: Mapped[str | None] = mapped_column(Text)
    revision: Mapped[int | None] = mapped_column(BigInteger)

    __table_args__ = (
        Index("ix_nexus_hooks_events_path", "path"),
        Index("ix_nexus_hooks_events_dst", "dst"),
        Index("ix_nexus_hooks_events_subject", "subject"),
        Index("ix_nexus_hooks_events_time", "time"),
    )


class Counter(Base):
    """A named counter (``event_seq``, ``rules_version``)."""

    __tablename__ = "nexus_hooks_counters"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[int] = mapped_column(BigInteger, default=0)


class HookRule(Base):
    """A user hook rule: ``action`` (``deny``/``emit``) when ``op`` on a path matching
    ``glob`` happens."""

    __tablename__ = "nexus_hooks_rules"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    op: Mapped[str] = mapped_column(String(64))
    glob: Mapped[str] = mapped_column(String(4096))
    action: Mapped[str] = mapped_column(String(16))
    message: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[float] = mapped_column(Double)


def create_schema(store: RecordStoreABC, *, attempts: int = 5) -> None:
    """Create the tables and counter rows if missing. Idempotent and safe when several
    processes start at once (a lost creation race is retried).

    Raises the last ``sqlalchemy.exc`` error if the schema still cannot be created after
    ``attempts`` tries (e.g. the database is read-only).
    """
    for attempt in range(attempts):
        try:
            Base.metadata.create_all(store.engine)
            break
        except (OperationalError, ProgrammingError, IntegrityError):
            # Another process created a table between our check and our CREATE.
            if attempt == attempts - 1:
                raise
            time.sleep(0.05 * (attempt + 1))
    for name in (EVENT_SEQ, RULES_VERSION):
        try:
            with store.session_factory.begin() as session:
                if session.get(Counter, name) is None:
                    session.add(Counter(name=name, value=0))
        except IntegrityError:
            pass  # inserted concurrently by another process
