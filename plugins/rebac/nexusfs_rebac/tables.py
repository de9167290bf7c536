"""ORM models of the rebac service's tables (SQLAlchemy 2 typed declarative).

Tables (all prefixed ``nexus_rebac_``):

* ``meta``: named integer values updated in the same transaction as the rows they
  describe: ``revision`` (the store's revision: every write that changes something
  takes the row ``FOR UPDATE`` and advances it by exactly one, so revisions are gapless
  and writes are serialised) and ``store_id`` (a random number drawn once, carried in
  consistency tokens so a token from another store is recognised).
* ``models``: every authorization model ever made current, keyed by the revision that
  made it current (the latest row is the current model). The same ``model_id`` may
  appear more than once (a model written again after another one).
* ``tuples``: the stored relationship tuples. ``key_hash`` (SHA-256 of the tuple's
  string form) is unique: ids may be up to 8 KiB, too long for a PostgreSQL B-tree
  entry, so uniqueness is enforced on the hash; ``id`` orders pages of ``read``.
* ``changes``: the change log, one row per tuple written or deleted, with the revision
  of the write. Writers are serialised by the ``revision`` row, so ``id`` increases with
  revision and a row with a smaller ``id`` is always committed before one with a larger.

The models describe the newest schema. The Alembic revisions in
:mod:`nexusfs_rebac.migrations` upgrade existing databases; a fresh one is built from the
models and stamped at the newest revision (:func:`upgrade_schema`). A test checks that the
revisions build exactly the models, on SQLite and PostgreSQL.
"""

from __future__ import annotations

import secrets

from sqlalchemy import BigInteger, Double, Integer, String, Text, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from nexusfs.abc import RecordStoreABC

__all__ = [
    "MIGRATIONS",
    "REVISION",
    "STORE_ID",
    "TABLES",
    "VERSION_TABLE",
    "Base",
    "Change",
    "Meta",
    "StoredModel",
    "StoredTuple",
    "upgrade_schema",
]

#: Where the Alembic revisions of these tables live (``store.migrate`` script location).
MIGRATIONS = "nexusfs_rebac:migrations"
#: The rebac service's own Alembic version table.
VERSION_TABLE = "nexusfs_rebac_version"
#: The service's tables.
TABLES = (
    "nexus_rebac_meta",
    "nexus_rebac_models",
    "nexus_rebac_tuples",
    "nexus_rebac_changes",
)
#: ``meta`` row names.
REVISION = "revision"
STORE_ID = "store_id"

#: 64-bit integers, but SQLite's rowid alias (INTEGER) for autoincrementing keys.
IdType = BigInteger().with_variant(Integer(), "sqlite")


class Base(DeclarativeBase):
    """Declarative base of the rebac service's tables."""


class Meta(Base):
    """A named integer (``revision``, ``store_id``)."""

    __tablename__ = "nexus_rebac_meta"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[int] = mapped_column(BigInteger)


class StoredModel(Base):
    """An authorization model, current from ``revision`` until a later row."""

    __tablename__ = "nexus_rebac_models"

    revision: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    model_id: Mapped[str] = mapped_column(String(64), index=True)
    dsl: Mapped[str] = mapped_column(Text)
    json: Mapped[str] = mapped_column(Text)
    created_at: Mapped[float] = mapped_column(Double)


class StoredTuple(Base):
    """One relationship tuple ``object#relation@user``."""

    __tablename__ = "nexus_rebac_tuples"

    id: Mapped[int] = mapped_column(IdType, primary_key=True, autoincrement=True)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    object: Mapped[str] = mapped_column(Text)
    relation: Mapped[str] = mapped_column(String(64))
    user: Mapped[str] = mapped_column(Text)
    revision: Mapped[int] = mapped_column(BigInteger)


class Change(Base):
    """One tuple written (``operation`` = ``write``) or deleted (``delete``) at
    ``revision``."""

    __tablename__ = "nexus_rebac_changes"

    id: Mapped[int] = mapped_column(IdType, primary_key=True, autoincrement=True)
    revision: Mapped[int] = mapped_column(BigInteger, index=True)
    operation: Mapped[str] = mapped_column(String(8))
    object: Mapped[str] = mapped_column(Text)
    relation: Mapped[str] = mapped_column(String(64))
    user: Mapped[str] = mapped_column(Text)
    time: Mapped[float] = mapped_column(Double)


def upgrade_schema(store: RecordStoreABC, *, lock_timeout: float = 300.0) -> tuple[str, ...]:
    """Create or upgrade the tables to this package's newest revision and return the
    revisions applied (empty if already current), then make the ``meta`` rows exist.

    Runs the Alembic revisions in :mod:`nexusfs_rebac.migrations` through
    ``store.migrate`` (version table :data:`VERSION_TABLE`); a fresh database is built
    from :data:`Base`'s metadata and stamped at the newest revision instead. Safe when
    several processes start at once: migrations are serialised (one applies them) and a
    race on the ``meta`` rows is settled by their primary key (the loser keeps the
    winner's rows).

    Failure semantics: everything or nothing (see ``RecordStoreABC.migrate``); raises
    ``MigrationError`` (or a subclass) if the schema cannot be upgraded, and the
    ``sqlalchemy.exc`` error if the ``meta`` rows cannot be written.
    """
    applied = store.migrate(MIGRATIONS, version_table=VERSION_TABLE, lock_timeout=lock_timeout,
                            metadata=Base.metadata)
    try:
        with store.session_factory.begin() as session:
            present = set(session.scalars(select(Meta.name)))
            if REVISION not in present:
                session.add(Meta(name=REVISION, value=0))
            if STORE_ID not in present:
                session.add(Meta(name=STORE_ID, value=secrets.randbits(40)))
    except IntegrityError:
        pass  # another process inserted them (in one transaction) first
    return applied
