"""Schema migrations of service tables (``RecordStoreABC.migrate``) on SQLite and a real
PostgreSQL server: package upgrades, the hooks service's own revisions and the adoption
of databases created before migrations existed, locking, and typed errors for bad input.

The generic guarantees (upgrade keeps data, a failing revision rolls back, concurrent
migrators apply once) are in the RecordStore contract suite (``test_recordstore.py``).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from nexusfs_hooks import EventLog, upgrade_schema
from nexusfs_hooks.models import (
    EVENT_SEQ,
    INITIAL_REVISION,
    MIGRATIONS,
    RULES_VERSION,
    TABLES,
    VERSION_TABLE,
    Base,
    Counter,
)
from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection

from nexusfs.drivers.recordstore import (
    MigrationError,
    MigrationLockTimeout,
    MigrationScriptError,
    SQLAlchemyRecordStore,
    current_revisions,
    default_record_store_url,
)
from nexusfs.drivers.recordstore.migrations import (
    ENV_DIR,
    migration_lock_key,
    resolve_script_location,
)
from nexusfs.errors import NexusError
from nexusfs.testing.postgres import require_postgres, temporary_database
from nexusfs.testing.recordstore import assert_migrations_match

PLUGINS = Path(__file__).resolve().parent / "migration_plugins"
V1 = "nxmig_v1:migrations"
V2 = "nxmig_v2:migrations"
VT = "nxmig_version"


@pytest.fixture(autouse=True)
def _plugins_on_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(PLUGINS))


@pytest.fixture(params=["sqlite", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SQLAlchemyRecordStore]:
    """An empty record store: a SQLite file, or a fresh PostgreSQL database."""
    if request.param == "sqlite":
        with SQLAlchemyRecordStore(default_record_store_url(tmp_path / "data")) as s:
            yield s
        return
    with temporary_database(require_postgres()) as url, SQLAlchemyRecordStore(url) as s:
        yield s


def _revisions(store: SQLAlchemyRecordStore, version_table: str = VT) -> tuple[str, ...]:
    with store.engine.connect() as conn:
        return current_revisions(conn, version_table)


def _tables(store: SQLAlchemyRecordStore) -> set[str]:
    with store.engine.connect() as conn:
        return set(inspect(conn).get_table_names())


# ------------------------------------------------------------- package upgrades


def test_package_upgrade_upgrades_tables_and_keeps_data(store: SQLAlchemyRecordStore) -> None:
    assert store.migrate(V1, version_table=VT) == ("0001",)
    with store.engine.begin() as conn:
        conn.execute(text("INSERT INTO nxmig_notes (id, body) VALUES (1, 'one'), (2, 'two')"))
    # Release 2.0 of the package is installed and the service restarts.
    assert store.migrate(V2, version_table=VT) == ("0002",)
    assert _revisions(store) == ("0002",)
    with store.engine.connect() as conn:
        rows = conn.execute(text("SELECT id, body, tag FROM nxmig_notes ORDER BY id")).all()
        indexes = {ix["name"] for ix in inspect(conn).get_indexes("nxmig_notes")}
    assert [tuple(r) for r in rows] == [(1, "one", "untagged"), (2, "two", "untagged")]
    assert "ix_nxmig_notes_tag" in indexes
    assert store.migrate(V2, version_table=VT) == ()  # every later start: nothing to do


def test_fresh_install_of_newer_package_runs_every_revision(
    store: SQLAlchemyRecordStore,
) -> None:
    assert store.migrate(V2, version_table=VT) == ("0001", "0002")
    assert _revisions(store) == ("0002",)


def test_target_revision(store: SQLAlchemyRecordStore) -> None:
    assert store.migrate(V2, version_table=VT, target="0001") == ("0001",)
    assert _revisions(store) == ("0001",)
    assert store.migrate(V2, version_table=VT, target="head") == ("0002",)


def test_older_package_on_newer_database_is_refused(store: SQLAlchemyRecordStore) -> None:
    store.migrate(V2, version_table=VT)
    with pytest.raises(MigrationError, match="newer version") as info:
        store.migrate(V1, version_table=VT)  # a downgraded package
    assert info.value.revisions == ("0002",)
    assert info.value.version_table == VT
    assert _revisions(store) == ("0002",)


def test_version_tables_are_per_service(store: SQLAlchemyRecordStore) -> None:
    store.migrate(V2, version_table=VT)
    upgrade_schema(store)  # the hooks service in the same database
    assert _revisions(store) == ("0002",)
    assert _revisions(store, VERSION_TABLE) == (INITIAL_REVISION,)
    assert _revisions(store, "nobody_version") == ()
    assert {VT, VERSION_TABLE, "nxmig_notes", *TABLES} <= _tables(store)


def test_script_location_forms(tmp_path: Path) -> None:
    assert resolve_script_location(V1) == (PLUGINS / "nxmig_v1" / "migrations").resolve()
    assert resolve_script_location(str(PLUGINS / "nxmig_v2" / "migrations")) == (
        PLUGINS / "nxmig_v2" / "migrations"
    ).resolve()
    assert resolve_script_location("nxmig_v1:") == (PLUGINS / "nxmig_v1").resolve()


# ------------------------------------------------------------------ bad input


@pytest.mark.parametrize("version_table", ["", "bad-name", "x" * 64, "a;drop", "1abc", None])
def test_bad_version_table_is_value_error(
    store: SQLAlchemyRecordStore, version_table: object
) -> None:
    with pytest.raises(ValueError, match="version_table"):
        store.migrate(V1, version_table=version_table)  # type: ignore[arg-type]
    assert "nxmig_notes" not in _tables(store)


@pytest.mark.parametrize("lock_timeout", [0, -1.0, float("nan"), float("inf"), True, "5"])
def test_bad_lock_timeout_is_value_error(
    store: SQLAlchemyRecordStore, lock_timeout: object
) -> None:
    with pytest.raises(ValueError, match="lock_timeout"):
        store.migrate(V1, version_table=VT, lock_timeout=lock_timeout)  # type: ignore[arg-type]


def test_bad_adoption_arguments_are_value_errors(store: SQLAlchemyRecordStore) -> None:
    with pytest.raises(ValueError, match="together"):
        store.migrate(V1, version_table=VT, adopt_revision="0001")
    with pytest.raises(ValueError, match="together"):
        store.migrate(V1, version_table=VT, adopt_tables=["nxmig_notes"])
    with pytest.raises(ValueError, match="not a string"):
        store.migrate(V1, version_table=VT, adopt_revision="0001", adopt_tables="nxmig_notes")
    with pytest.raises(ValueError, match="target"):
        store.migrate(V1, version_table=VT, target="")
    assert _tables(store) == set()


@pytest.mark.parametrize(
    "location",
    ["", "   ", "no_such_package_xyz:migrations", "nxmig_v1:nope", "/nonexistent/migrations",
     "nxmig_v1/__init__.py:x"],
)  # fmt: skip
def test_missing_scripts_are_script_errors(store: SQLAlchemyRecordStore, location: str) -> None:
    with pytest.raises(MigrationScriptError):
        store.migrate(location, version_table=VT)
    assert _tables(store) == set()


def test_script_file_is_not_a_directory(store: SQLAlchemyRecordStore) -> None:
    with pytest.raises(MigrationScriptError, match="not a directory"):
        store.migrate(str(PLUGINS / "nxmig_v1" / "__init__.py"), version_table=VT)


def test_unknown_target_is_script_error(store: SQLAlchemyRecordStore) -> None:
    with pytest.raises(MigrationScriptError, match="9999"):
        store.migrate(V2, version_table=VT, target="9999")
    assert _tables(store) == set()


def test_broken_revision_file_is_script_error(
    store: SQLAlchemyRecordStore, tmp_path: Path
) -> None:
    (tmp_path / "r1.py").write_text('revision = "r1"\ndown_revision = None\ndef upgrade(:\n')
    with pytest.raises(MigrationScriptError) as info:
        store.migrate(str(tmp_path), version_table=VT)
    assert isinstance(info.value, ValueError) and isinstance(info.value, NexusError)
    assert _tables(store) == set()


@pytest.mark.filterwarnings("ignore:Revision missing referenced:UserWarning")
def test_broken_revision_graph_is_script_error(
    store: SQLAlchemyRecordStore, tmp_path: Path
) -> None:
    (tmp_path / "r2.py").write_text(
        'revision = "r2"\ndown_revision = "missing"\n\ndef upgrade():\n    pass\n'
    )
    with pytest.raises(MigrationScriptError):
        store.migrate(str(tmp_path), version_table=VT)


def test_empty_script_directory_applies_nothing(
    store: SQLAlchemyRecordStore, tmp_path: Path
) -> None:
    assert store.migrate(str(tmp_path), version_table=VT) == ()


def test_migrate_after_close_is_store_closed(tmp_path: Path) -> None:
    from nexusfs.errors import StoreClosed

    store = SQLAlchemyRecordStore(default_record_store_url(tmp_path))
    store.close()
    with pytest.raises(StoreClosed):
        store.migrate(V1, version_table=VT)


def test_env_refuses_to_run_outside_migrate() -> None:
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(ENV_DIR))
    cfg.set_main_option("path_separator", "os")
    cfg.set_main_option("version_locations", str(PLUGINS / "nxmig_v1" / "migrations"))
    with pytest.raises(RuntimeError, match=r"RecordStoreABC\.migrate"):
        command.upgrade(cfg, "heads")


# -------------------------------------------------------------------- locking


def _hold_migration_lock(store: SQLAlchemyRecordStore, conn: Connection) -> None:
    """Take the lock a migration of ``VT`` needs, as another migrating process would."""
    if store.is_sqlite:
        conn.begin()  # the store's BEGIN IMMEDIATE: SQLite's write lock
    else:
        conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": migration_lock_key(VT)})


def test_lock_held_elsewhere_times_out_and_changes_nothing(
    store: SQLAlchemyRecordStore,
) -> None:
    with store.engine.connect() as holder:
        _hold_migration_lock(store, holder)
        with pytest.raises(MigrationLockTimeout) as info:
            store.migrate(V1, version_table=VT, lock_timeout=0.3)
        assert isinstance(info.value, TimeoutError) and isinstance(info.value, MigrationError)
        holder.rollback()
    assert "nxmig_notes" not in _tables(store)
    assert store.migrate(V1, version_table=VT) == ("0001",)


def test_second_migrator_waits_for_the_lock(store: SQLAlchemyRecordStore) -> None:
    """A migrator that finds the lock taken waits (it does not fail or skip), then
    migrates once the holder is done."""
    results: list[tuple[str, ...]] = []
    errors: list[BaseException] = []

    def migrate() -> None:
        try:
            results.append(store.migrate(V2, version_table=VT, lock_timeout=60))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    with store.engine.connect() as holder:
        _hold_migration_lock(store, holder)
        thread = threading.Thread(target=migrate)
        thread.start()
        thread.join(0.5)
        assert thread.is_alive()  # blocked on the lock
        assert not inspect(holder).has_table("nxmig_notes")
        holder.rollback()  # the lock holder finishes
    thread.join(120)
    assert errors == []
    assert results == [("0001", "0002")]


# ------------------------------------------------------- the hooks service itself


def test_hooks_revisions_match_the_models(store: SQLAlchemyRecordStore) -> None:
    """The revisions build exactly the models (a fresh install is made from the models)."""
    assert_migrations_match(store, MIGRATIONS, Base.metadata, version_table=VERSION_TABLE)


def test_hooks_fresh_install_is_built_from_the_models(store: SQLAlchemyRecordStore) -> None:
    assert upgrade_schema(store) == (INITIAL_REVISION,)
    assert _revisions(store, VERSION_TABLE) == (INITIAL_REVISION,)
    with store.engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE})
        assert compare_metadata(context, Base.metadata) == []
        counters = dict(conn.execute(text("SELECT name, value FROM nexus_hooks_counters")).all())
    assert counters == {EVENT_SEQ: 0, RULES_VERSION: 0}
    assert upgrade_schema(store) == ()
    log = EventLog(store.session_factory)
    assert log.last_seq() == 0
    assert log.append({"op": "write", "path": "/a", "ok": True, "time": 1.0}) == 1


def _legacy_schema(store: SQLAlchemyRecordStore, *, counters: bool = True) -> None:
    """What nexusfs-hooks 0.1 did at start: ``create_all`` plus the counter rows."""
    Base.metadata.create_all(store.engine)
    if counters:
        with store.session_factory.begin() as session:
            session.add_all([Counter(name=EVENT_SEQ, value=0),
                             Counter(name=RULES_VERSION, value=0)])  # fmt: skip


def test_hooks_adopts_a_database_created_before_migrations(
    store: SQLAlchemyRecordStore,
) -> None:
    _legacy_schema(store)
    log = EventLog(store.session_factory)
    assert log.append_many([{"op": "write", "path": f"/old/{i}", "kernel_seq": i}
                            for i in range(1, 4)]) == [1, 2, 3]  # fmt: skip
    assert upgrade_schema(store) == ()  # stamped, nothing run: the tables already exist
    assert _revisions(store, VERSION_TABLE) == (INITIAL_REVISION,)
    assert [e["path"] for e in log.tail(10)] == ["/old/1", "/old/2", "/old/3"]
    assert log.append({"op": "write", "path": "/new", "kernel_seq": 4}) == 4  # gapless
    assert log.append({"op": "write", "path": "/old/1", "kernel_seq": 1}) == 1  # dedup
    assert upgrade_schema(store) == ()


def test_hooks_adoption_restores_missing_counter_rows(store: SQLAlchemyRecordStore) -> None:
    _legacy_schema(store, counters=False)  # 0.1 crashed between create_all and counters
    upgrade_schema(store)
    assert EventLog(store.session_factory).append({"op": "read", "path": "/a"}) == 1


def test_hooks_partial_legacy_schema_is_refused(store: SQLAlchemyRecordStore) -> None:
    Base.metadata.tables["nexus_hooks_events"].create(store.engine)
    with pytest.raises(MigrationError, match="cannot adopt"):
        upgrade_schema(store)
    assert VERSION_TABLE not in _tables(store)


def test_a_current_schema_is_checked_without_alembic(tmp_path: Path) -> None:
    """Starting a service whose tables are already current costs one query: no Alembic
    import, no lock (it is on the path of every worker start)."""
    import subprocess
    import sys
    import textwrap

    url = f"sqlite:///{tmp_path / 'r.db'}"
    script = textwrap.dedent(
        f"""
        import sys
        from nexusfs.drivers.recordstore import SQLAlchemyRecordStore
        with SQLAlchemyRecordStore({url!r}) as store:
            applied = store.migrate("nexusfs_hooks:migrations", version_table="hv")
        print(list(applied), "alembic" in sys.modules)
        """
    )
    first = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert first.stdout.split() == ["['0001']", "True"], first.stderr  # runs the revision
    again = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert again.stdout.split() == ["[]", "False"], again.stderr


def test_a_fresh_install_is_built_without_alembic(tmp_path: Path) -> None:
    """A service's first start on an empty database (``nexus up`` on a new data
    directory) creates its tables from the models: no Alembic import."""
    import subprocess
    import sys
    import textwrap

    url = f"sqlite:///{tmp_path / 'r.db'}"
    script = textwrap.dedent(
        f"""
        import sys
        from nexusfs.drivers.recordstore import SQLAlchemyRecordStore
        from nexusfs_hooks import upgrade_schema
        with SQLAlchemyRecordStore({url!r}) as store:
            applied = upgrade_schema(store)
        print(list(applied), "alembic" in sys.modules)
        """
    )
    first = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert first.stdout.split() == ["['0001']", "False"], first.stderr
    again = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert again.stdout.split() == ["[]", "False"], again.stderr


def test_static_revision_graph_without_alembic(tmp_path: Path) -> None:
    """The fresh-install and already-current fast paths read revision ids without
    Alembic; anything that is not a plain literal chain falls back to Alembic."""
    from nexusfs.drivers.recordstore.migrations import _static_chain, _static_heads

    def revs(name: str, **files: tuple[str, str | None]) -> Path:
        d = tmp_path / name
        d.mkdir()
        for fname, (rev, down) in files.items():
            (d / f"{fname}.py").write_text(f"revision = {rev!r}\ndown_revision = {down!r}\n")
        return d

    linear = revs("linear", a=("r1", None), b=("r2", "r1"), c=("r3", "r2"))
    assert _static_chain(linear) == ("r1", "r2", "r3")
    assert _static_heads(linear) == frozenset({"r3"})
    branched = revs("branched", a=("r1", None), b=("r2", "r1"), c=("r3", "r1"))
    assert _static_chain(branched) is None
    assert _static_heads(branched) == frozenset({"r2", "r3"})
    repeated = revs("repeated", a=("r1", None), b=("r1", None))
    assert _static_chain(repeated) is None and _static_heads(repeated) is None
    merge = tmp_path / "merge"
    merge.mkdir()
    (merge / "m.py").write_text("revision = 'r3'\ndown_revision = ('r1', 'r2')\n")
    assert _static_chain(merge) is None and _static_heads(merge) is None
    assert _static_chain(tmp_path / "linear" / "..") is None  # no revision files
