"""The record store conformance suite: every :class:`~nexusfs.abc.RecordStoreABC` driver
must pass it.

Usage: subclass :class:`RecordStoreContract` in a test module and provide a
``record_store`` fixture that yields an open store (and closes it afterwards)::

    import pytest
    from nexusfs.testing.recordstore import RecordStoreContract

    class TestMyRecordStore(RecordStoreContract):
        @pytest.fixture
        def record_store(self, tmp_path):
            with MyRecordStore(f"sqlite:///{tmp_path}/records.db") as store:
                yield store

The suite opens further stores on the same database with ``open_same`` (default:
``type(store)(store.url)``; override the fixture if your constructor differs) and, when
``multiprocess`` is true (the default unless the URL is an in-memory database), from
child processes started with the ``spawn`` method. It creates the table
``nexus_contract_items`` / ``nexus_contract_counters`` and drops them afterwards, so a
shared PostgreSQL database is left clean.

Covered: ORM create/read through ``session_factory``, rollback on exception, visibility
of commits between two stores on one URL, concurrent inserts from threads and processes
without lost rows, serialised read-modify-write with ``with_for_update`` (no lost
updates), objects readable after commit, idempotent ``close()``, and ``migrate``: an
upgrade to a newer set of revisions keeps the data, a failing revision leaves the schema
at the previous revision with a :class:`~nexusfs.drivers.recordstore.MigrationError`,
two processes migrating at once both succeed with the revisions applied once, and a
fresh install built from ``metadata=`` is stamped at the head (Alembic takes over for
the next release) while an existing schema ignores it. The
migration tests write their revision files to ``tmp_path`` and use the tables
``nexus_contract_mig*`` and the version table ``nexus_contract_version``.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import textwrap
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import (
    Column,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    func,
    inspect,
    select,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from nexusfs.abc import RecordStoreABC
from nexusfs.drivers.recordstore.migrations import MigrationError, current_revisions

__all__ = [
    "HEAD_METADATA",
    "MIGRATION_TABLES",
    "MIGRATION_VERSION_TABLE",
    "ContractBase",
    "ContractCounter",
    "ContractItem",
    "OpenSame",
    "RecordStoreContract",
    "assert_migrations_match",
    "temporary_record_store_url",
    "write_revisions",
]

OpenSame = Callable[[], RecordStoreABC]


class ContractBase(DeclarativeBase):
    """Declarative base of the suite's own tables."""


class ContractItem(ContractBase):
    """A row written by the suite."""

    __tablename__ = "nexus_contract_items"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    writer: Mapped[str] = mapped_column(String(100), default="main")


class ContractCounter(ContractBase):
    """A single-row counter for the lost-update test."""

    __tablename__ = "nexus_contract_counters"

    name: Mapped[str] = mapped_column(String(50), primary_key=True)
    value: Mapped[int] = mapped_column(default=0)


def _insert_items(store: RecordStoreABC, writer: str, count: int) -> None:
    """Insert ``count`` rows, one transaction each."""
    for i in range(count):
        with store.session_factory.begin() as session:
            session.add(ContractItem(name=f"{writer}-{i}", writer=writer))


def _increment(store: RecordStoreABC, count: int) -> None:
    """Read-modify-write the counter ``count`` times, one transaction each."""
    for _ in range(count):
        with store.session_factory.begin() as session:
            row = session.get(ContractCounter, "c", with_for_update=True)
            assert row is not None
            row.value += 1


def _child_writer(
    store_type: type[RecordStoreABC], url: str, writer: str, count: int, increments: int
) -> None:
    """Entry point of a child process: open its own store, write, close."""
    store = store_type(url)  # type: ignore[call-arg]
    try:
        _insert_items(store, writer, count)
        _increment(store, increments)
    finally:
        store.close()


def _count(store: RecordStoreABC, writer: str | None = None) -> int:
    with store.session_factory() as session:
        stmt = select(func.count()).select_from(ContractItem)
        if writer is not None:
            stmt = stmt.where(ContractItem.writer == writer)
        return int(session.scalar(stmt) or 0)

#: The version table and tables the migration tests create (and drop).
MIGRATION_VERSION_TABLE = "nexus_contract_version"
MIGRATION_TABLES = (
    "nexus_contract_mig_notes",
    "nexus_contract_mig_log",
    "nexus_contract_mig_extra",
)

# Revision bodies: c1 creates a notes table and an application log; c2 (a later release)
# adds a column and an index; c3 makes a table and a column, then fails. Every upgrade()
# records itself in the log, so a revision applied twice shows up.
_REVISIONS = {
    "c1": (None, """
        op.create_table(
            "nexus_contract_mig_notes",
            sa.Column("id", sa.Integer, primary_key=True),
            sa.Column("body", sa.String(200), nullable=False),
        )
        op.create_table("nexus_contract_mig_log", sa.Column("revision", sa.String(32)))
        op.execute("INSERT INTO nexus_contract_mig_log (revision) VALUES ('c1')")
    """),
    "c2": ("c1", """
        import time
        time.sleep(SLEEP)  # widen the window in which a concurrent migrator must wait
        op.add_column("nexus_contract_mig_notes", sa.Column("tag", sa.String(50)))
        op.create_index("ix_nexus_contract_mig_notes_tag", "nexus_contract_mig_notes", ["tag"])
        op.execute("INSERT INTO nexus_contract_mig_log (revision) VALUES ('c2')")
    """),
    "c4": ("c2", """
        op.create_table("nexus_contract_mig_extra", sa.Column("id", sa.Integer))
        op.execute("INSERT INTO nexus_contract_mig_log (revision) VALUES ('c4')")
    """),
    "c3": ("c2", """
        op.create_table("nexus_contract_mig_extra", sa.Column("id", sa.Integer))
        op.add_column("nexus_contract_mig_notes", sa.Column("doomed", sa.Integer))
        op.execute("INSERT INTO nexus_contract_mig_log (revision) VALUES ('c3')")
        op.execute("INSERT INTO nexus_contract_mig_no_such_table VALUES (1)")
    """),
}


#: The tables as revisions c1 + c2 leave them (the fresh-install path of ``migrate``).
HEAD_METADATA = MetaData()
Table(
    "nexus_contract_mig_notes", HEAD_METADATA,
    Column("id", Integer, primary_key=True),
    Column("body", String(200), nullable=False),
    Column("tag", String(50)),
    Index("ix_nexus_contract_mig_notes_tag", "tag"),
)  # fmt: skip
Table("nexus_contract_mig_log", HEAD_METADATA, Column("revision", String(32)))


@contextlib.contextmanager
def temporary_record_store_url(kind: str, directory: Path) -> Iterator[str]:
    """The URL of an empty record store for the block: ``"sqlite"`` a file in
    ``directory``, ``"postgres"`` a fresh database on the test PostgreSQL server
    (:func:`nexusfs.testing.postgres.require_postgres`), dropped afterwards.
    ``ValueError`` for another ``kind``."""
    if kind == "sqlite":
        from nexusfs.drivers.recordstore import default_record_store_url

        yield default_record_store_url(directory)
    elif kind == "postgres":
        from nexusfs.testing.postgres import temporary_database

        with temporary_database() as url:
            yield url
    else:
        raise ValueError(f"kind must be 'sqlite' or 'postgres', not {kind!r}")


def assert_migrations_match(
    store: RecordStoreABC, script_location: str, metadata: MetaData, *, version_table: str
) -> None:
    """Run every revision of ``script_location`` on ``store`` (an empty database), then
    check that the schema they built is what ``metadata`` describes (Alembic's
    ``compare_metadata``: tables, columns, types, nullability, indexes, unique
    constraints). A service that passes ``metadata=`` to ``migrate`` (fresh installs are
    built from it) must keep this true; ``AssertionError`` lists the differences."""
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    store.migrate(script_location, version_table=version_table)
    with store.engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"version_table": version_table})
        diff = compare_metadata(context, metadata)
    assert diff == [], f"the revisions in {script_location!r} do not build the metadata: {diff}"


def write_revisions(directory: Path, revisions: list[str], *, sleep: float = 0.0) -> str:
    """Write the contract's revision files ``revisions`` (of ``c1``, ``c2``, ``c3``,
    ``c4``) into
    ``directory`` (a release of a test service) and return it as a script location."""
    directory.mkdir(parents=True, exist_ok=True)
    for rev in revisions:
        down, body = _REVISIONS[rev]
        source = (
            "import sqlalchemy as sa\n"
            "from alembic import op\n\n"
            f"revision = {rev!r}\n"
            f"down_revision = {down!r}\n"
            "branch_labels = None\n"
            "depends_on = None\n"
            f"SLEEP = {sleep!r}\n\n\n"
            "def upgrade() -> None:\n"
            + textwrap.indent(textwrap.dedent(body).strip("\n"), "    ")
            + "\n"
        )
        (directory / f"{rev}_contract.py").write_text(source)
    return str(directory)


def _child_migrate(
    store_type: type[RecordStoreABC], url: str, location: str, barrier: Any, results: Any
) -> None:
    """Entry point of a child process: open a store, wait for the others, migrate."""
    store = store_type(url)  # type: ignore[call-arg]
    try:
        barrier.wait(60)
        results.put(store.migrate(location, version_table=MIGRATION_VERSION_TABLE))
    finally:
        store.close()


def _drop_migration_tables(store: RecordStoreABC) -> None:
    with store.engine.begin() as conn:
        for table in (*MIGRATION_TABLES, MIGRATION_VERSION_TABLE):
            conn.execute(text(f"DROP TABLE IF EXISTS {table}"))


def _revision(store: RecordStoreABC) -> tuple[str, ...]:
    with store.engine.connect() as conn:
        return current_revisions(conn, MIGRATION_VERSION_TABLE)


def _log(store: RecordStoreABC) -> list[str]:
    with store.engine.connect() as conn:
        rows = conn.execute(text("SELECT revision FROM nexus_contract_mig_log"))
        return sorted(str(r[0]) for r in rows)


class RecordStoreContract:
    """Conformance tests for a :class:`~nexusfs.abc.RecordStoreABC` driver."""

    #: Rows per writer in the concurrency tests.
    rows_per_writer = 25
    #: Threads in the thread-concurrency tests.
    threads = 4

    @pytest.fixture
    def open_same(self, record_store: RecordStoreABC) -> Iterator[OpenSame]:
        """Opens another store on the same database; everything it opened is closed."""
        opened: list[RecordStoreABC] = []

        def _open() -> RecordStoreABC:
            store = type(record_store)(record_store.url)  # type: ignore[call-arg]
            opened.append(store)
            return store

        yield _open
        for store in opened:
            store.close()

    @pytest.fixture
    def multiprocess(self, record_store: RecordStoreABC) -> bool:
        """Whether other processes can open the same database (not in-memory)."""
        return ":memory:" not in record_store.url and "mode=memory" not in record_store.url

    @pytest.fixture
    def store(self, record_store: RecordStoreABC) -> Iterator[RecordStoreABC]:
        """``record_store`` with the suite's tables created empty (dropped afterwards)."""
        ContractBase.metadata.drop_all(record_store.engine)
        ContractBase.metadata.create_all(record_store.engine)
        with record_store.session_factory.begin() as session:
            session.add(ContractCounter(name="c", value=0))
        yield record_store
        ContractBase.metadata.drop_all(record_store.engine)

    # ------------------------------------------------------------------ basics

    def test_is_record_store(self, record_store: RecordStoreABC) -> None:
        assert isinstance(record_store, RecordStoreABC)
        assert isinstance(record_store.url, str)
        assert record_store.engine is not None
        assert callable(record_store.session_factory)

    def test_orm_create_and_read(self, store: RecordStoreABC) -> None:
        with store.session_factory.begin() as session:
            session.add_all([ContractItem(name="a"), ContractItem(name="b")])
        with store.session_factory() as session:
            names = session.scalars(select(ContractItem.name).order_by(ContractItem.name))
            assert list(names) == ["a", "b"]

    def test_objects_readable_after_commit(self, store: RecordStoreABC) -> None:
        with store.session_factory() as session:
            item = ContractItem(name="kept")
            session.add(item)
            session.commit()
        # The session is closed: attributes must not need a refresh from the database.
        assert item.name == "kept"
        assert isinstance(item.id, int)

    def test_rollback_on_exception_leaves_nothing(self, store: RecordStoreABC) -> None:
        class Boom(Exception):
            pass

        with pytest.raises(Boom), store.session_factory.begin() as session:
            session.add(ContractItem(name="ghost"))
            session.flush()  # the row reached the database inside the transaction
            raise Boom
        assert _count(store) == 0

    def test_uncommitted_session_close_leaves_nothing(self, store: RecordStoreABC) -> None:
        session = store.session_factory()
        session.add(ContractItem(name="ghost"))
        session.flush()
        session.close()
        assert _count(store) == 0

    def test_two_stores_see_each_others_commits(
        self, store: RecordStoreABC, open_same: OpenSame
    ) -> None:
        other = open_same()
        with store.session_factory.begin() as session:
            session.add(ContractItem(name="from-first", writer="first"))
        assert _count(other, "first") == 1
        with other.session_factory.begin() as session:
            session.add(ContractItem(name="from-second", writer="second"))
        assert _count(store, "second") == 1
        assert _count(store) == _count(other) == 2

    # ------------------------------------------------------------- concurrency

    def test_concurrent_thread_writers_lose_no_rows(self, store: RecordStoreABC) -> None:
        errors: list[BaseException] = []

        def run(writer: str) -> None:
            try:
                _insert_items(store, writer, self.rows_per_writer)
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)

        workers = [threading.Thread(target=run, args=(f"t{i}",)) for i in range(self.threads)]
        for t in workers:
            t.start()
        for t in workers:
            t.join()
        assert errors == []
        assert _count(store) == self.threads * self.rows_per_writer
        with store.session_factory() as session:
            ids = list(session.scalars(select(ContractItem.id)))
        assert len(set(ids)) == len(ids)

    def test_concurrent_read_modify_write_is_serialised(self, store: RecordStoreABC) -> None:
        errors: list[BaseException] = []

        def run() -> None:
            try:
                _increment(store, self.rows_per_writer)
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)

        workers = [threading.Thread(target=run) for _ in range(self.threads)]
        for t in workers:
            t.start()
        for t in workers:
            t.join()
        assert errors == []
        with store.session_factory() as session:
            row = session.get(ContractCounter, "c")
            assert row is not None
            assert row.value == self.threads * self.rows_per_writer

    def test_concurrent_process_writers_lose_no_rows(
        self, store: RecordStoreABC, multiprocess: bool
    ) -> None:
        if not multiprocess:
            pytest.skip("the database cannot be shared between processes")
        ctx = multiprocessing.get_context("spawn")
        procs = [
            ctx.Process(
                target=_child_writer,
                args=(type(store), store.url, f"p{i}", self.rows_per_writer,
                      self.rows_per_writer),
            )
            for i in range(2)
        ]  # fmt: skip
        for p in procs:
            p.start()
        # The parent writes at the same time, through its own store.
        _insert_items(store, "parent", self.rows_per_writer)
        for p in procs:
            p.join(120)
            assert p.exitcode == 0, f"child writer failed with exit code {p.exitcode}"
        assert _count(store) == 3 * self.rows_per_writer
        for writer in ("p0", "p1", "parent"):
            assert _count(store, writer) == self.rows_per_writer
        with store.session_factory() as session:
            row = session.get(ContractCounter, "c")
            assert row is not None
            assert row.value == 2 * self.rows_per_writer

    # ------------------------------------------------------------------- close

    def test_close_is_idempotent(self, open_same: OpenSame) -> None:
        other = open_same()
        other.close()
        other.close()

    def test_close_after_use(self, store: RecordStoreABC, open_same: OpenSame) -> None:
        other = open_same()
        with other.session_factory.begin() as session:
            session.add(ContractItem(name="x"))
        other.close()
        other.close()
        assert _count(store) == 1

    # --------------------------------------------------------------- migrations

    @pytest.fixture
    def migrating_store(self, record_store: RecordStoreABC) -> Iterator[RecordStoreABC]:
        """``record_store`` without the migration tests' tables (dropped afterwards)."""
        _drop_migration_tables(record_store)
        yield record_store
        _drop_migration_tables(record_store)

    def test_migrate_upgrade_keeps_data(
        self, migrating_store: RecordStoreABC, tmp_path: Path
    ) -> None:
        store = migrating_store
        release1 = write_revisions(tmp_path / "release1", ["c1"])
        assert store.migrate(release1, version_table=MIGRATION_VERSION_TABLE) == ("c1",)
        assert _revision(store) == ("c1",)
        with store.engine.begin() as conn:
            conn.execute(text("INSERT INTO nexus_contract_mig_notes (id, body) "
                              "VALUES (1, 'kept'), (2, 'also kept')"))  # fmt: skip
        # The next release of the package ships c1 again plus c2.
        release2 = write_revisions(tmp_path / "release2", ["c1", "c2"])
        assert store.migrate(release2, version_table=MIGRATION_VERSION_TABLE) == ("c2",)
        assert store.migrate(release2, version_table=MIGRATION_VERSION_TABLE) == ()
        assert _revision(store) == ("c2",)
        with store.engine.begin() as conn:
            conn.execute(text("UPDATE nexus_contract_mig_notes SET tag = 'new' WHERE id = 2"))
            rows = conn.execute(text("SELECT id, body, tag FROM nexus_contract_mig_notes "
                                     "ORDER BY id")).all()  # fmt: skip
        assert [tuple(r) for r in rows] == [(1, "kept", None), (2, "also kept", "new")]
        with store.engine.connect() as conn:
            indexes = {ix["name"] for ix in inspect(conn).get_indexes("nexus_contract_mig_notes")}
        assert "ix_nexus_contract_mig_notes_tag" in indexes
        assert _log(store) == ["c1", "c2"]

    def test_migrate_failure_leaves_previous_revision(
        self, migrating_store: RecordStoreABC, tmp_path: Path
    ) -> None:
        store = migrating_store
        release1 = write_revisions(tmp_path / "release1", ["c1"])
        store.migrate(release1, version_table=MIGRATION_VERSION_TABLE)
        with store.engine.begin() as conn:
            conn.execute(text("INSERT INTO nexus_contract_mig_notes (id, body) VALUES (1, 'x')"))
        broken = write_revisions(tmp_path / "broken", ["c1", "c2", "c3"])
        with pytest.raises(MigrationError) as info:
            store.migrate(broken, version_table=MIGRATION_VERSION_TABLE)
        assert "c3" in str(info.value)
        assert info.value.revisions == ("c1",)
        # All of it rolled back: c2's column and c3's table and column are not there.
        assert _revision(store) == ("c1",)
        with store.engine.connect() as conn:
            insp = inspect(conn)
            columns = {c["name"] for c in insp.get_columns("nexus_contract_mig_notes")}
            assert columns == {"id", "body"}
            assert not insp.has_table("nexus_contract_mig_extra")
        assert _log(store) == ["c1"]
        # The fixed release upgrades normally afterwards, with the data intact.
        release2 = write_revisions(tmp_path / "release2", ["c1", "c2"])
        assert store.migrate(release2, version_table=MIGRATION_VERSION_TABLE) == ("c2",)
        with store.engine.connect() as conn:
            body = conn.execute(text("SELECT body FROM nexus_contract_mig_notes")).scalar()
        assert body == "x"

    def test_migrate_fresh_install_from_metadata(
        self, migrating_store: RecordStoreABC, tmp_path: Path
    ) -> None:
        store = migrating_store
        release2 = write_revisions(tmp_path / "release2", ["c1", "c2"])
        assert_migrations_match(store, release2, HEAD_METADATA,
                                version_table=MIGRATION_VERSION_TABLE)  # fmt: skip
        _drop_migration_tables(store)
        applied = store.migrate(release2, version_table=MIGRATION_VERSION_TABLE,
                                metadata=HEAD_METADATA)  # fmt: skip
        assert applied == ("c1", "c2")
        assert _revision(store) == ("c2",)
        assert _log(store) == []  # built from the metadata: no revision ran
        with store.engine.connect() as conn:
            insp = inspect(conn)
            columns = {c["name"] for c in insp.get_columns("nexus_contract_mig_notes")}
            indexes = {ix["name"] for ix in insp.get_indexes("nexus_contract_mig_notes")}
        assert columns == {"id", "body", "tag"}
        assert "ix_nexus_contract_mig_notes_tag" in indexes
        assert store.migrate(release2, version_table=MIGRATION_VERSION_TABLE,
                             metadata=HEAD_METADATA) == ()  # fmt: skip
        # Alembic takes over from the stamp: the next release runs only its revision.
        release3 = write_revisions(tmp_path / "release3", ["c1", "c2", "c4"])
        assert store.migrate(release3, version_table=MIGRATION_VERSION_TABLE) == ("c4",)
        assert _revision(store) == ("c4",)
        assert _log(store) == ["c4"]

    def test_migrate_metadata_is_ignored_on_an_existing_schema(
        self, migrating_store: RecordStoreABC, tmp_path: Path
    ) -> None:
        store = migrating_store
        release1 = write_revisions(tmp_path / "release1", ["c1"])
        store.migrate(release1, version_table=MIGRATION_VERSION_TABLE)
        release2 = write_revisions(tmp_path / "release2", ["c1", "c2"])
        applied = store.migrate(release2, version_table=MIGRATION_VERSION_TABLE,
                                metadata=HEAD_METADATA)  # fmt: skip
        assert applied == ("c2",)  # an upgrade runs its revisions
        assert _log(store) == ["c1", "c2"]

    def test_concurrent_migrations_apply_once(
        self, migrating_store: RecordStoreABC, multiprocess: bool, tmp_path: Path
    ) -> None:
        if not multiprocess:
            pytest.skip("the database cannot be shared between processes")
        store = migrating_store
        location = write_revisions(tmp_path / "release", ["c1", "c2"], sleep=0.3)
        ctx = multiprocessing.get_context("spawn")
        barrier = ctx.Barrier(2)
        results = ctx.Queue()
        procs = [
            ctx.Process(target=_child_migrate,
                        args=(type(store), store.url, location, barrier, results))
            for _ in range(2)
        ]  # fmt: skip
        for p in procs:
            p.start()
        for p in procs:
            p.join(120)
            assert p.exitcode == 0, f"migrating child failed with exit code {p.exitcode}"
        outcomes = [results.get(timeout=10) for _ in procs]
        assert sorted(outcomes) == [(), ("c1", "c2")]
        assert _revision(store) == ("c2",)
        assert _log(store) == ["c1", "c2"]
