"""ORM models of the hooks service (SQLAlchemy 2 typed declarative).

Tables (all prefixed ``nexus_hooks_``):

* ``events``: the append-only audit log, one row per syscall. ``seq`` is the log's own
  gapless sequence number; ``kernel_seq`` the kernel's event number (``UNIQUE``, so a
  redelivered event is stored once; ``NULL`` when the kernel gave none).
* ``counters``: named single-row counters updated in the same transaction as the rows
  they count: ``event_seq`` (last assigned ``seq``) and ``rules_version`` (bumped by
  every rule change, so workers know when to reload their compiled rules).
* ``rules``: user hook rules.

The models describe the newest schema. The Alembic revisions in
:mod:`nexusfs_hooks.migrations` upgrade existing databases; a fresh one is built from the
models and stamped at the newest revision (:func:`upgrade_schema`, which skips importing
Alembic on a first start). A test checks that the revisions build exactly the models, on
SQLite and PostgreSQL.

Paths are compared bytewise (``COLLATE "C"`` on PostgreSQL, SQLite's default ``BINARY``)
so prefix queries can use index range scans.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Boolean, Double, Index, Integer, String, Text, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from nexusfs.abc import RecordStoreABC

__all__ = [
    "EVENT_SEQ",
    "INITIAL_REVISION",
    "MIGRATIONS",
    "RULES_VERSION",
    "TABLES",
    "VERSION_TABLE",
    "AuditEvent",
    "Base",
    "Counter",
    "HookRule",
    "create_schema",
    "upgrade_schema",
]

EVENT_SEQ = "event_seq"
RULES_VERSION = "rules_version"
#: Where the Alembic revisions of these tables live (``store.migrate`` script location).
MIGRATIONS = "nexusfs_hooks:migrations"
#: The hooks service's own Alembic version table.
VERSION_TABLE = "nexusfs_hooks_version"
#: The revision that creates the tables below (what ``create_all`` used to make).
INITIAL_REVISION = "0001"
#: The service's tables.
TABLES = ("nexus_hooks_events", "nexus_hooks_counters", "nexus_hooks_rules")

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


def upgrade_schema(store: RecordStoreABC, *, lock_timeout: float = 300.0) -> tuple[str, ...]:
    """Create or upgrade the tables to this package's newest revision and return the
    revisions applied (empty if already current).

    Runs the Alembic revisions in :mod:`nexusfs_hooks.migrations` through
    ``store.migrate`` (version table :data:`VERSION_TABLE`); a fresh database is built
    from :data:`Base`'s metadata and stamped instead. A database whose tables
    were made by ``create_all`` before the service used migrations is adopted: stamped
    at the initial revision :data:`INITIAL_REVISION`, then upgraded. Safe when several
    processes start at once (they are serialised; one applies the revisions). Then the
    counter rows are made to exist (an adopted database may lack them).

    Failure semantics: everything or nothing (see ``RecordStoreABC.migrate``); raises
    ``MigrationError`` (or a subclass) if the schema cannot be upgraded, and the last
    ``sqlalchemy.exc`` error if the counter rows cannot be written.
    """
    applied = store.migrate(
        MIGRATIONS,
        version_table=VERSION_TABLE,
        adopt_revision=INITIAL_REVISION,
        adopt_tables=TABLES,
        lock_timeout=lock_timeout,
        metadata=Base.metadata,
    )
    try:
        with store.session_factory.begin() as session:
            present = set(session.scalars(select(Counter.name)))
            for name in (EVENT_SEQ, RULES_VERSION):
                if name not in present:
                    session.add(Counter(name=name, value=0))
    except IntegrityError:
        pass  # another process inserted them (both rows, in one transaction) first
    return applied


#: The name this function had before the service used migrations.
create_schema = upgrade_schema
