"""Record store drivers: relational storage for services, chosen by SQLAlchemy URL.

``open_record_store(url)`` returns a :class:`SQLAlchemyRecordStore` for any SQLAlchemy
URL (SQLite by default, PostgreSQL for shared deployments). ``NEXUS_RECORD_STORE``
overrides the default ``default_record_store_url(data_dir)``, which is
``sqlite:///<data_dir>/records.db``.

Services create and upgrade their tables with ``store.migrate(script_location,
version_table=...)`` (Alembic revisions, one version table per service, serialised
across processes, all-or-nothing); the errors it raises are :class:`MigrationError` and
its subclasses :class:`MigrationScriptError` and :class:`MigrationLockTimeout`.
"""

from __future__ import annotations

import os
from pathlib import Path

from nexusfs.drivers.recordstore.migrations import (
    MigrationError,
    MigrationLockTimeout,
    MigrationScriptError,
    current_revisions,
)
from nexusfs.drivers.recordstore.sqlalchemy import SQLAlchemyRecordStore, is_sqlite_url

__all__ = [
    "RECORD_STORE_FILE",
    "MigrationError",
    "MigrationLockTimeout",
    "MigrationScriptError",
    "SQLAlchemyRecordStore",
    "current_revisions",
    "default_record_store_url",
    "is_sqlite_url",
    "open_record_store",
]

#: File name of the default SQLite record store inside a data directory.
RECORD_STORE_FILE = "records.db"


def default_record_store_url(data_dir: str | os.PathLike[str]) -> str:
    """``sqlite:///<data_dir>/records.db`` with ``data_dir`` made absolute (so the URL
    names the same file whatever the current directory of the process that opens it)."""
    path = Path(data_dir).expanduser().absolute() / RECORD_STORE_FILE
    return f"sqlite:///{path.as_posix()}"


def open_record_store(url: str) -> SQLAlchemyRecordStore:
    """Open the record store named by ``url``.

    Raises :class:`~nexusfs.errors.ServiceUnavailable` for a malformed URL, a missing
    driver or an unreachable database (nothing is left open then).
    """
    return SQLAlchemyRecordStore(url)
