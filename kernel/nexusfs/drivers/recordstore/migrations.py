"""Schema migrations for services' tables: Alembic, serialised across processes.

A service ships a directory of Alembic revision files (``revision``, ``down_revision``,
``upgrade()``; no ``env.py`` and no ``alembic.ini`` needed) and, when it starts, calls
``record_store.migrate("my_service:migrations", version_table="my_service_version")``.
:func:`run_migrations` implements that for any SQLAlchemy engine:

* **Per-service version table.** Each service records its revision in its own table, so
  services never see each other's revisions and revision ids only need to be unique
  within one service.
* **Serialised.** Two processes migrating the same service at once (a hot restart starts
  the new worker while the old one still runs) take turns: on PostgreSQL a transaction
  advisory lock keyed by the version table (``pg_advisory_xact_lock``); on SQLite the
  store's ``BEGIN IMMEDIATE`` write lock. The second one then finds the schema current
  and applies nothing. Waiting is bounded by ``lock_timeout`` (PostgreSQL's
  ``lock_timeout`` also bounds every DDL lock the migration waits for).
* **All or nothing.** Every revision of one call runs in a single transaction with the
  version-table update (PostgreSQL and SQLite both have transactional DDL): if any
  revision fails, everything rolls back and the schema stays at the revision it had
  before the call. (Statements that cannot run in a transaction, such as PostgreSQL's
  ``CREATE INDEX CONCURRENTLY`` or SQLite's ``VACUUM``, must not be used in revisions.
  On SQLite foreign keys are enforced and ``PRAGMA foreign_keys`` cannot change inside
  a transaction, so ``op.batch_alter_table``, which recreates a table, must not be used
  on a table that other tables reference with ``ON DELETE`` actions.)
* **Adoption.** A database whose tables were created before the service used
  migrations (``metadata.create_all``) has the tables but no version table. With
  ``adopt_revision`` / ``adopt_tables`` it is stamped at ``adopt_revision`` (nothing is
  run for it) when every table in ``adopt_tables`` exists, then upgraded from there.
  Only some of them existing is an error: the schema is in an unknown state.

Hot restarts run old and new code against one schema, so revisions should be additive
(new nullable columns, new tables and indexes) until no older worker can be running.

Failures raise :class:`MigrationError` (or a subclass) with the cause chained, and the
database is left as it was: :class:`MigrationScriptError` for scripts that cannot be
found or loaded or an unknown target (raised before the database is touched),
:class:`MigrationLockTimeout` when another migration held the lock too long.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import importlib.util
import math
import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Column, MetaData, PrimaryKeyConstraint, String, Table, inspect, text
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import OperationalError

from nexusfs.errors import NexusError

if TYPE_CHECKING:  # Alembic is imported on first use: opening a store does not need it
    from alembic.config import Config
    from alembic.runtime.migration import MigrationInfo
    from alembic.script import ScriptDirectory

__all__ = [
    "DEFAULT_LOCK_TIMEOUT",
    "ENV_DIR",
    "MigrationError",
    "MigrationLockTimeout",
    "MigrationScriptError",
    "current_revisions",
    "migration_lock_key",
    "resolve_script_location",
    "run_migrations",
]

#: Seconds :func:`run_migrations` waits for another process's migration by default.
DEFAULT_LOCK_TIMEOUT = 300.0
#: The Alembic environment (``env.py``) shared by every service's revisions.
ENV_DIR = Path(__file__).resolve().parent / "alembic_env"

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")


class MigrationError(NexusError):
    """A schema migration failed; the database was rolled back to the revision it had
    before (``revisions``: the version table's revisions then, empty for none)."""

    code = "migration_failed"

    def __init__(
        self, message: str, *, version_table: str = "", revisions: Sequence[str] = ()
    ) -> None:
        super().__init__(message)
        self.version_table = version_table
        self.revisions = tuple(revisions)


class MigrationScriptError(MigrationError, ValueError):
    """The revision scripts cannot be used: the location does not exist, a script does
    not load, the revision graph is broken, or the target revision is unknown. Raised
    before the database is touched."""

    code = "migration_script_error"


class MigrationLockTimeout(MigrationError, TimeoutError):
    """Another process held the migration lock (or a lock a DDL statement needed)
    longer than ``lock_timeout``; nothing was changed."""

    code = "migration_lock_timeout"


def resolve_script_location(script_location: str) -> Path:
    """The directory of revision files named by ``script_location``: ``"package:subdir"``
    (a directory inside an importable package, e.g. ``"nexusfs_hooks:migrations"``) or
    a filesystem path. :class:`MigrationScriptError` if it does not name a directory."""
    if not isinstance(script_location, str) or not script_location.strip():
        raise MigrationScriptError(
            f"script_location must be a non-empty string, not {script_location!r}"
        )
    package, sep, subdir = script_location.partition(":")
    if sep and re.fullmatch(r"[A-Za-z_][\w.]*", package):
        try:
            spec = importlib.util.find_spec(package)
        except (ImportError, ValueError) as exc:
            raise MigrationScriptError(
                f"cannot import package {package!r} of script location {script_location!r}:"
                f" {exc}"
            ) from exc
        if spec is None or not spec.submodule_search_locations:
            raise MigrationScriptError(
                f"{package!r} (from script location {script_location!r}) is not an "
                "importable package"
            )
        base = Path(next(iter(spec.submodule_search_locations)))
        path = base / subdir if subdir else base
    else:
        path = Path(script_location)
    if not path.is_dir():
        raise MigrationScriptError(
            f"migration script location {script_location!r} is not a directory ({path})"
        )
    return path.resolve()


def _escape(value: str) -> str:
    """Alembic's config values go through ConfigParser interpolation: escape ``%``."""
    return value.replace("%", "%%")


def _config(versions: Path, attributes: dict[str, Any]) -> Config:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", _escape(str(ENV_DIR)))
    cfg.set_main_option("path_separator", "os")
    cfg.set_main_option("version_locations", _escape(str(versions)))
    cfg.attributes.update(attributes)
    return cfg


def _load_scripts(cfg: Config, script_location: str, target: str) -> ScriptDirectory:
    """Load and check every revision file and the target; MigrationScriptError if not."""
    from alembic.script import ScriptDirectory

    try:
        scripts = ScriptDirectory.from_config(cfg)
        list(scripts.walk_revisions())  # loads every file and checks the graph
        if target not in ("head", "heads"):
            scripts.get_revisions(target)
    except Exception as exc:  # any error from loading user scripts: SyntaxError, ...
        raise MigrationScriptError(
            f"cannot load migration scripts from {script_location!r} "
            f"(target {target!r}): {type(exc).__name__}: {exc}"
        ) from exc
    return scripts


_REVISION_LINE = re.compile(
    r"^(revision|down_revision)\s*(?::[^=]+)?=\s*(.+?)\s*(?:#.*)?$", re.MULTILINE
)
_ID = re.compile(r"""^(?:None|(['"])([\w.-]+)\1)$""")


def _static_graph(versions: Path) -> dict[str, str | None] | None:
    """``revision -> down_revision`` of a directory of plain revision files, read from
    their literal ``revision = "..."`` / ``down_revision = "..."`` lines without
    importing Alembic; ``None`` when it is empty or any file is not that simple (merges,
    expressions, a repeated id): then the caller takes the full Alembic path, which is
    always right."""
    parent_of: dict[str, str | None] = {}
    for path in versions.glob("*.py"):
        if path.name == "__init__.py":
            continue
        try:
            source = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            return None
        found: dict[str, str] = {m.group(1): m.group(2) for m in _REVISION_LINE.finditer(source)}
        if set(found) != {"revision", "down_revision"}:
            return None
        rev, down = (_ID.match(found[k]) for k in ("revision", "down_revision"))
        if rev is None or rev.group(2) is None or down is None or rev.group(2) in parent_of:
            return None  # not literals: tuples (merges), expressions, ...; or a repeat
        parent_of[rev.group(2)] = down.group(2)
    return parent_of or None


def _static_heads(versions: Path) -> frozenset[str] | None:
    """The head revisions of a plain linear-or-branched revision directory
    (:func:`_static_graph`), or ``None``."""
    graph = _static_graph(versions)
    if graph is None:
        return None
    return frozenset(set(graph) - {p for p in graph.values() if p is not None})


def _static_chain(versions: Path) -> tuple[str, ...] | None:
    """The revisions of a plain *linear* revision directory (:func:`_static_graph`),
    oldest first; ``None`` when the graph is not one simple chain."""
    graph = _static_graph(versions)
    if graph is None:
        return None
    child_of: dict[str | None, str] = {}
    for rev_id, parent in graph.items():
        if parent in child_of:
            return None  # a branch
        child_of[parent] = rev_id
    chain: list[str] = []
    cursor: str | None = None
    while cursor in child_of:
        cursor = child_of[cursor]
        chain.append(cursor)
    return tuple(chain) if len(chain) == len(graph) else None


def _create_fresh(
    engine: Engine,
    metadata: MetaData,
    version_table: str,
    head: str,
    lock_timeout: float,
) -> bool:
    """On a database without any of ``metadata``'s tables and without ``version_table``:
    ``create_all`` and stamp ``head``, in one locked transaction (Alembic's "build from
    scratch, then stamp" recipe, without importing Alembic). Returns whether it did;
    ``False`` (nothing touched) when any of those tables exists."""
    conn = _begin_locked(engine, version_table, lock_timeout)
    try:
        inspector = inspect(conn)
        if inspector.has_table(version_table) or any(
            inspector.has_table(t.name, schema=t.schema) for t in metadata.sorted_tables
        ):
            _rollback_quietly(conn)
            return False
        metadata.create_all(conn)
        # The version table exactly as Alembic makes it (so Alembic takes over later).
        versions = Table(
            version_table,
            MetaData(),
            Column("version_num", String(32), nullable=False),
            PrimaryKeyConstraint("version_num", name=f"{version_table}_pkc"),
        )
        versions.create(conn)
        conn.execute(versions.insert().values(version_num=head))
        conn.commit()
        return True
    except MigrationError:
        _rollback_quietly(conn)
        raise
    except Exception as exc:
        _rollback_quietly(conn)
        raise _failure_class(exc)(
            f"creating the schema of {version_table!r} from its metadata failed; rolled "
            f"back, nothing changed: {type(exc).__name__}: {exc}",
            version_table=version_table,
        ) from exc
    finally:
        conn.close()


def _already_current(engine: Engine, versions: Path, version_table: str) -> bool:
    """Whether the database already records exactly the scripts' heads: one plain query,
    no Alembic import and no lock (a schema at its heads stays there: only an upgrade
    to newer scripts changes it, and that is not this call). Any doubt answers ``False``
    and the full, locked path decides."""
    heads = _static_heads(versions)
    if heads is None:
        return False
    try:
        with engine.connect() as conn:
            if not inspect(conn).has_table(version_table):
                return False
            rows = conn.execute(text(f"SELECT version_num FROM {version_table}")).all()
            conn.rollback()
    except Exception:
        return False
    return frozenset(str(r[0]) for r in rows) == heads


def migration_lock_key(version_table: str) -> int:
    """A signed 64-bit advisory-lock key for one version table."""
    digest = hashlib.blake2b(f"nexusfs.migrate:{version_table}".encode(), digest_size=8)
    return int.from_bytes(digest.digest(), "big", signed=True)


def _is_lock_error(exc: BaseException) -> bool:
    text_ = str(exc).lower()
    return "database is locked" in text_ or "lock timeout" in text_ or "lock_timeout" in text_


def _failure_class(exc: BaseException) -> type[MigrationError]:
    """The error a failed migration raises for its cause ``exc``: a lock wait that
    timed out (PostgreSQL ``lock_not_available``, SQLite "database is locked") is
    :class:`MigrationLockTimeout`, anything else :class:`MigrationError`."""
    if isinstance(exc, OperationalError) and (
        getattr(exc.orig, "sqlstate", None) == "55P03" or _is_lock_error(exc)
    ):
        return MigrationLockTimeout
    return MigrationError


def _begin_locked(engine: Engine, version_table: str, lock_timeout: float) -> Connection:
    """A connection inside a transaction holding the migration lock of ``version_table``.
    :class:`MigrationLockTimeout` if it is not obtained within ``lock_timeout``."""
    backend = engine.dialect.name
    deadline = time.monotonic() + lock_timeout
    while True:
        conn = engine.connect()
        try:
            if backend == "sqlite":
                _begin_sqlite(conn, deadline)
            else:
                conn.begin()
            if backend == "postgresql":
                ms = max(1, int(lock_timeout * 1000))
                conn.exec_driver_sql(f"SET LOCAL lock_timeout = {ms}")
                conn.execute(text("SELECT pg_advisory_xact_lock(:key)"),
                             {"key": migration_lock_key(version_table)})  # fmt: skip
            return conn
        except OperationalError as exc:
            conn.close()
            locked = _is_lock_error(exc) or getattr(exc.orig, "sqlstate", None) == "55P03"
            if not locked:
                raise
            if backend == "postgresql" or time.monotonic() >= deadline:
                raise MigrationLockTimeout(
                    f"timed out after {lock_timeout:g} s waiting for the migration lock of "
                    f"{version_table!r} (another process is migrating): {exc}",
                    version_table=version_table,
                ) from exc
            time.sleep(0.05)  # SQLite: busy_timeout expired; keep waiting until deadline
        except BaseException:
            conn.close()
            raise


def _begin_sqlite(conn: Connection, deadline: float) -> None:
    """``conn.begin()`` (the store's ``BEGIN IMMEDIATE``) waiting for the write lock at
    most until ``deadline`` (instead of the connection's ``busy_timeout``), which is
    restored afterwards."""
    raw = conn.connection.dbapi_connection  # no autobegin: PRAGMAs run outside a txn
    if raw is None:  # pragma: no cover - a checked-out connection always has one
        conn.begin()
        return
    cursor = raw.cursor()
    try:
        cursor.execute("PRAGMA busy_timeout")
        row = cursor.fetchone()
        original = int(row[0]) if row else 0
        wait_ms = max(1, int((deadline - time.monotonic()) * 1000))
        cursor.execute(f"PRAGMA busy_timeout = {wait_ms}")
        try:
            conn.begin()
        finally:
            cursor.execute(f"PRAGMA busy_timeout = {original}")
    finally:
        cursor.close()


def current_revisions(conn: Connection, version_table: str) -> tuple[str, ...]:
    """The revisions recorded in ``version_table`` (empty if it is missing or empty)."""
    from alembic.runtime.migration import MigrationContext

    context = MigrationContext.configure(conn, opts={"version_table": version_table})
    return tuple(sorted(context.get_current_heads()))


def _adopt(
    conn: Connection,
    cfg: Config,
    version_table: str,
    adopt_revision: str | None,
    adopt_tables: Sequence[str],
) -> bool:
    """Stamp a pre-migrations database at ``adopt_revision``; whether it did."""
    from alembic import command

    if adopt_revision is None:
        return False
    inspector = inspect(conn)
    if inspector.has_table(version_table):
        return False
    present = [t for t in adopt_tables if inspector.has_table(t)]
    if not present:
        return False
    if len(present) != len(adopt_tables):
        missing = sorted(set(adopt_tables) - set(present))
        raise MigrationError(
            f"cannot adopt the existing schema of {version_table!r}: tables {sorted(present)}"
            f" exist but {missing} do not (created by an unknown version?)",
            version_table=version_table,
        )
    command.stamp(cfg, adopt_revision)
    return True


def _plan(scripts: ScriptDirectory, target: str, before: tuple[str, ...]) -> list[str]:
    """The revisions an upgrade from ``before`` to ``target`` runs, oldest first (best
    effort, for error messages)."""
    try:
        lower: str | tuple[str, ...] | None = before if before else None
        upper = "heads" if target in ("head", "heads") else target
        return [s.revision for s in reversed(list(scripts.iterate_revisions(upper, lower)))]
    except Exception:
        return []


def _rollback_quietly(conn: Connection) -> None:
    """Roll back; if even that fails (connection lost), closing discards the
    transaction, so the original error is the one to report."""
    with contextlib.suppress(Exception):
        conn.rollback()


def run_migrations(
    engine: Engine,
    script_location: str,
    *,
    version_table: str,
    target: str = "heads",
    adopt_revision: str | None = None,
    adopt_tables: Sequence[str] = (),
    lock_timeout: float = DEFAULT_LOCK_TIMEOUT,
    metadata: MetaData | None = None,
) -> tuple[str, ...]:
    """Upgrade the tables of one service to ``target`` and return the revisions applied,
    oldest first (empty when the schema was already current).

    ``metadata``: the service's tables as they are at the scripts' head. When it is given,
    ``target`` is the head, the scripts form one linear chain and the database has none
    of those tables and no version table (a fresh install), the schema is made with
    ``metadata.create_all`` and stamped at the head in one transaction instead of running
    every revision (Alembic's recommended way to build a new database; it also skips
    importing Alembic, a large part of a service's first start). Every revision is then
    reported as applied. The caller vouches that ``metadata`` equals what the revisions
    build (test it: see :func:`nexusfs.testing.recordstore.assert_migrations_match`)
    and must itself write any rows its revisions insert.

    ``engine`` must be a :class:`~nexusfs.drivers.recordstore.SQLAlchemyRecordStore`'s
    (on SQLite its transactions begin with ``BEGIN IMMEDIATE``, which is the lock).
    ``ValueError`` for a malformed ``version_table`` (an SQL identifier of at most 63
    characters), ``lock_timeout`` or adoption arguments; :class:`MigrationScriptError`
    for unusable scripts or target; :class:`MigrationLockTimeout`;
    :class:`MigrationError` when a revision fails, the database records a revision the
    scripts do not know (a newer version of the service migrated it), or adoption finds
    a partial schema. After any error the database is unchanged.
    """
    if not isinstance(version_table, str) or not _IDENTIFIER.fullmatch(version_table):
        raise ValueError(
            f"version_table must be an SQL identifier of at most 63 characters "
            f"(letters, digits, '_'), not {version_table!r}"
        )
    if (
        isinstance(lock_timeout, bool)
        or not isinstance(lock_timeout, int | float)
        or not math.isfinite(lock_timeout)
        or lock_timeout <= 0
    ):
        raise ValueError(f"lock_timeout must be a positive number of seconds, not {lock_timeout!r}")
    if not isinstance(target, str) or not target:
        raise ValueError(f"target must be a revision id or 'heads', not {target!r}")
    if isinstance(adopt_tables, str):
        raise ValueError("adopt_tables must be a sequence of table names, not a string")
    if (adopt_revision is None) != (not adopt_tables):
        raise ValueError("adopt_revision and adopt_tables must be given together")
    versions = resolve_script_location(script_location)
    if target in ("head", "heads") and _already_current(engine, versions, version_table):
        return ()
    if metadata is not None and target in ("head", "heads"):
        chain = _static_chain(versions)
        if chain is not None and _create_fresh(
            engine, metadata, version_table, chain[-1], lock_timeout
        ):
            return chain
    applied: list[str] = []

    def on_version_apply(*, step: MigrationInfo, **_kw: Any) -> None:
        if step.is_upgrade and not step.is_stamp and step.up_revision_id is not None:
            applied.append(step.up_revision_id)

    attributes: dict[str, Any] = {"version_table": version_table,
                                  "on_version_apply": on_version_apply}  # fmt: skip
    from alembic import command

    cfg = _config(versions, attributes)
    scripts = _load_scripts(cfg, script_location, target)
    conn = _begin_locked(engine, version_table, lock_timeout)
    before: tuple[str, ...] = ()
    try:
        cfg.attributes["connection"] = conn
        _adopt(conn, cfg, version_table, adopt_revision, adopt_tables)
        before = current_revisions(conn, version_table)
        for revision in before:
            try:
                scripts.get_revision(revision)
            except Exception as exc:
                raise MigrationError(
                    f"the database records revision {revision!r} of {version_table!r}, "
                    f"which the scripts in {script_location!r} do not know: was it "
                    "migrated by a newer version of the service?",
                    version_table=version_table, revisions=before,
                ) from exc  # fmt: skip
        command.upgrade(cfg, target)
        conn.commit()
    except MigrationError:
        _rollback_quietly(conn)
        raise
    except Exception as exc:
        _rollback_quietly(conn)
        failed = next((r for r in _plan(scripts, target, before) if r not in applied), None)
        where = f" in revision {failed!r}" if failed else ""
        raise _failure_class(exc)(
            f"migrating {version_table!r} from {list(before) or 'an empty schema'} to "
            f"{target!r} failed{where}; rolled back, nothing changed: "
            f"{type(exc).__name__}: {exc}",
            version_table=version_table, revisions=before,
        ) from exc  # fmt: skip
    finally:
        conn.close()
    return tuple(applied)
