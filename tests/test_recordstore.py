"""The SQLAlchemy record store: the conformance suite on SQLite and on a real PostgreSQL
server (a fresh database per test, from ``nexusfs.testing.postgres``: skipped only when
no server exists and ``NEXUS_TEST_REQUIRE_SERVERS`` is not ``1``), plus driver-specific
behaviour and the test-server helpers themselves."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text

from nexusfs.abc import RecordStoreABC
from nexusfs.drivers.recordstore import (
    SQLAlchemyRecordStore,
    default_record_store_url,
    is_sqlite_url,
    open_record_store,
)
from nexusfs.errors import ServiceUnavailable, StoreClosed
from nexusfs.testing.postgres import require_postgres, temporary_database
from nexusfs.testing.recordstore import RecordStoreContract


@pytest.fixture(params=["sqlite", "postgres"])
def record_store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield default_record_store_url(tmp_path / "data")
        return
    with temporary_database(require_postgres()) as url:
        yield url


class TestSQLAlchemyRecordStore(RecordStoreContract):
    @pytest.fixture
    def record_store(self, record_store_url: str) -> Iterator[RecordStoreABC]:
        with SQLAlchemyRecordStore(record_store_url) as store:
            yield store


# ----------------------------------------------------------------- SQLite specifics


def _pragma(store: SQLAlchemyRecordStore, name: str) -> object:
    with store.engine.connect() as conn:
        return conn.exec_driver_sql(f"PRAGMA {name}").scalar()


def test_sqlite_pragmas(tmp_path: Path) -> None:
    with SQLAlchemyRecordStore(f"sqlite:///{tmp_path}/r.db", busy_timeout=7.5) as store:
        assert store.is_sqlite
        assert _pragma(store, "journal_mode") == "wal"
        assert _pragma(store, "synchronous") == 2  # FULL
        assert _pragma(store, "busy_timeout") == 7500
        assert _pragma(store, "foreign_keys") == 1


def test_creates_parent_directory(tmp_path: Path) -> None:
    db = tmp_path / "a" / "b" / "records.db"
    with SQLAlchemyRecordStore(f"sqlite:///{db}"):
        assert db.exists()


def test_relative_sqlite_url_is_relative_to_cwd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with SQLAlchemyRecordStore("sqlite:///rel/records.db") as store:
        assert store.url == "sqlite:///rel/records.db"
    assert (tmp_path / "rel" / "records.db").exists()


def test_default_url_and_open(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    url = default_record_store_url("data")
    assert url == f"sqlite:///{tmp_path}/data/records.db"
    assert is_sqlite_url(url)
    assert not is_sqlite_url("postgresql://localhost/x")
    with open_record_store(url) as store:
        assert isinstance(store, RecordStoreABC)
    assert (tmp_path / "data" / "records.db").exists()


def test_in_memory_sqlite(tmp_path: Path) -> None:
    with SQLAlchemyRecordStore("sqlite://") as store, store.session_factory() as session:
        assert session.execute(text("SELECT 1")).scalar() == 1


@pytest.mark.parametrize(
    "url",
    ["not a url", "://nothing", "nosuchdialect://host/db", "sqlite+nosuchdriver:///x.db"],
)
def test_malformed_url_is_service_unavailable(url: str) -> None:
    with pytest.raises(ServiceUnavailable):
        SQLAlchemyRecordStore(url)


def test_uncreatable_directory_is_service_unavailable(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ServiceUnavailable):
        SQLAlchemyRecordStore(f"sqlite:///{blocker}/sub/records.db")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.parametrize("driver", ["postgresql+psycopg", "postgresql"])
def test_unreachable_postgres_is_service_unavailable(driver: str) -> None:
    # Nothing listens on the port: connection refused (or, without the DB-API driver
    # installed, a missing driver) -- either way a typed, immediate ServiceUnavailable.
    url = f"{driver}://nexus:secret@127.0.0.1:{_free_port()}/nexus"
    with pytest.raises(ServiceUnavailable) as info:
        SQLAlchemyRecordStore(url)
    assert "secret" not in str(info.value)


def test_use_after_close_raises_store_closed(tmp_path: Path) -> None:
    store = SQLAlchemyRecordStore(f"sqlite:///{tmp_path}/r.db")
    store.close()
    with pytest.raises(StoreClosed):
        _ = store.engine
    with pytest.raises(StoreClosed):
        _ = store.session_factory
    store.close()
    assert "closed" in repr(store)
