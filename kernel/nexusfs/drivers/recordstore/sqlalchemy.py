"""The SQLAlchemy record store: relational storage for services (SQLite or PostgreSQL).

:class:`SQLAlchemyRecordStore` wraps one SQLAlchemy engine and a ``sessionmaker`` with
``expire_on_commit=False`` (objects stay readable after commit, so plain data can be
returned over the bus). Services use the ORM through ``session_factory`` only.

SQLite specifics (set on every new DB-API connection by a ``connect`` listener):

* ``journal_mode=WAL`` and ``synchronous=FULL``: a committed transaction survives power
  loss; readers never block the writer.
* ``busy_timeout`` (10 s by default): a writer waits for another process's write lock
  instead of failing at once with ``database is locked``.
* ``foreign_keys=ON``.
* Transactions start with ``BEGIN IMMEDIATE`` (the DB-API's implicit transaction
  handling is switched off). Every ORM transaction therefore holds SQLite's single write
  lock from its first statement, so a read-modify-write (``with_for_update`` on
  PostgreSQL) is serialised across threads *and processes* and can never fail half-way
  with ``SQLITE_BUSY_SNAPSHOT``. Cost: transactions on one SQLite file run one at a time
  (they are short; readers that only need a snapshot still see committed data).

Service tables are created and upgraded with :meth:`SQLAlchemyRecordStore.migrate`
(Alembic revisions, serialised across processes; see
:mod:`nexusfs.drivers.recordstore.migrations`).

Connections must not cross ``fork()``: open the store in the process that uses it
(workers open their own; ``multiprocessing`` should use the ``spawn`` start method).
"""

from __future__ import annotations

import re
import threading
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from sqlalchemy import MetaData, create_engine, event
from sqlalchemy.engine import URL, Connection, Engine, make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import ConnectionPoolEntry

from nexusfs.abc import RecordStoreABC
from nexusfs.drivers.recordstore.migrations import DEFAULT_LOCK_TIMEOUT, run_migrations
from nexusfs.errors import ServiceUnavailable, StoreClosed

__all__ = ["DEFAULT_BUSY_TIMEOUT", "SQLAlchemyRecordStore", "is_sqlite_url"]

#: Seconds a SQLite writer waits for the write lock before failing.
DEFAULT_BUSY_TIMEOUT = 10.0
#: Seconds a PostgreSQL connection attempt may take before the store is unavailable.
DEFAULT_CONNECT_TIMEOUT = 10


def is_sqlite_url(url: str | URL) -> bool:
    """Whether ``url`` names a SQLite database (any driver)."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        return False
    return parsed.get_backend_name() == "sqlite"


def _sqlite_file(parsed: URL) -> Path | None:
    """The database file of a SQLite URL, or ``None`` for an in-memory / URI database."""
    database = parsed.database
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    if parsed.query.get("uri") in ("true", "1"):
        return None
    return Path(database)


class SQLAlchemyRecordStore(RecordStoreABC):
    """A :class:`~nexusfs.abc.RecordStoreABC` over any SQLAlchemy URL.

    ``url`` is used as given: ``sqlite:///relative/path.db`` is relative to the current
    directory, ``sqlite:////abs/path.db`` absolute; the parent directory of a SQLite file
    is created if missing. PostgreSQL: ``postgresql+psycopg://user@host/db`` (or any
    installed dialect).

    The constructor opens one connection to prove the database is reachable. Failure
    semantics: a malformed URL, an unknown or uninstalled dialect/driver, a directory that
    cannot be created and an unreachable or refusing server all raise
    :class:`~nexusfs.errors.ServiceUnavailable` (with the cause chained), and then no
    engine is left open. After :meth:`close`, ``engine`` and ``session_factory`` raise
    :class:`~nexusfs.errors.StoreClosed`.

    Thread-safe: share one store per process; each thread makes its own sessions.
    """

    def __init__(
        self,
        url: str,
        *,
        busy_timeout: float = DEFAULT_BUSY_TIMEOUT,
        connect_timeout: int = DEFAULT_CONNECT_TIMEOUT,
        echo: bool = False,
        engine_options: dict[str, Any] | None = None,
    ) -> None:
        self.url = url
        self._closed = False
        self._lock = threading.Lock()
        try:
            parsed = make_url(url)
        except (ArgumentError, ValueError) as exc:
            masked = re.sub(r"://([^:/@]*):[^@]*@", r"://\1:***@", url)
            raise ServiceUnavailable(f"malformed record store URL {masked!r}: {exc}") from exc
        shown = parsed.render_as_string(hide_password=True)  # never echo a password
        self._sqlite = parsed.get_backend_name() == "sqlite"
        options: dict[str, Any] = {"echo": echo, "pool_pre_ping": not self._sqlite}
        if self._sqlite:
            db_file = _sqlite_file(parsed)
            if db_file is not None:
                try:
                    db_file.parent.mkdir(parents=True, exist_ok=True)
                except OSError as exc:
                    raise ServiceUnavailable(
                        f"cannot create the directory of record store {shown!r}: {exc}"
                    ) from exc
        elif parsed.get_backend_name() == "postgresql":
            options["connect_args"] = {"connect_timeout": connect_timeout}
        options.update(engine_options or {})
        try:
            engine = create_engine(parsed, **options)
        except (ArgumentError, NoSuchModuleError, ImportError, TypeError) as exc:
            raise ServiceUnavailable(
                f"cannot use record store URL {shown!r} (unknown dialect or driver not "
                f"installed): {exc}"
            ) from exc
        if self._sqlite:
            _install_sqlite_listeners(engine, busy_timeout)
        try:
            with engine.connect():
                pass
        except (SQLAlchemyError, OSError) as exc:
            engine.dispose()
            raise ServiceUnavailable(
                f"record store {parsed.render_as_string(hide_password=True)!r} is "
                f"unreachable: {exc}"
            ) from exc
        self._engine = engine
        self._session_factory: sessionmaker[Session] = sessionmaker(
            bind=engine, expire_on_commit=False
        )

    @property
    def is_sqlite(self) -> bool:
        """Whether the database is SQLite (single writer at a time)."""
        return self._sqlite

    @property
    def engine(self) -> Engine:
        """The SQLAlchemy engine. ``StoreClosed`` after :meth:`close`."""
        if self._closed:
            raise StoreClosed(f"record store {self.url!r} is closed")
        return self._engine

    @property
    def session_factory(self) -> sessionmaker[Session]:
        """Makes ORM sessions (``expire_on_commit=False``). ``StoreClosed`` after close."""
        if self._closed:
            raise StoreClosed(f"record store {self.url!r} is closed")
        return self._session_factory

    def migrate(
        self,
        script_location: str,
        *,
        version_table: str,
        target: str = "heads",
        adopt_revision: str | None = None,
        adopt_tables: Sequence[str] = (),
        lock_timeout: float = DEFAULT_LOCK_TIMEOUT,
        metadata: MetaData | None = None,
    ) -> tuple[str, ...]:
        """Upgrade a service's tables (see :meth:`nexusfs.abc.RecordStoreABC.migrate`
        and :func:`~nexusfs.drivers.recordstore.migrations.run_migrations` for the
        failure semantics). ``StoreClosed`` after :meth:`close`."""
        return run_migrations(
            self.engine,
            script_location,
            version_table=version_table,
            target=target,
            adopt_revision=adopt_revision,
            adopt_tables=adopt_tables,
            lock_timeout=lock_timeout,
            metadata=metadata,
        )

    def close(self) -> None:
        """Dispose of the connection pool. Idempotent. Sessions still open keep their
        checked-out connection until they are closed; nothing uncommitted is kept."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._engine.dispose()

    def __enter__(self) -> SQLAlchemyRecordStore:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        shown = make_url(self.url).render_as_string(hide_password=True)
        state = "closed" if self._closed else "open"
        return f"<SQLAlchemyRecordStore {shown!r} {state}>"


def _install_sqlite_listeners(engine: Engine, busy_timeout: float) -> None:
    """Pragmas on every new connection and ``BEGIN IMMEDIATE`` for every transaction
    (the SQLAlchemy-documented recipe for serialisable SQLite transactions)."""
    timeout_ms = max(0, int(busy_timeout * 1000))

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: ConnectionPoolEntry) -> None:
        # Take transaction control away from the sqlite3 module: it would otherwise
        # BEGIN lazily (deferred) only before DML, so reads ran outside transactions.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout = {timeout_ms}")
            cursor.execute("PRAGMA journal_mode = WAL")
            cursor.execute("PRAGMA synchronous = FULL")
            cursor.execute("PRAGMA foreign_keys = ON")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")
