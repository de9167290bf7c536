"""Fixtures: the hooks plugin registered with a real pluggy ``PluginManager`` carrying
the kernel's ``ServiceSpec``, started on a real record store: a SQLite file in
``tmp_path`` and a fresh database on a real PostgreSQL server (``nexusfs.testing.
postgres``: ``NEXUS_TEST_POSTGRES_URL`` or a private cluster; skipped when neither
exists, an error when ``NEXUS_TEST_REQUIRE_SERVERS=1``). Every test runs on both."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from hooks_testkit import Emitted, Service, ev, start_service

from nexusfs.drivers.recordstore import SQLAlchemyRecordStore
from nexusfs.testing.recordstore import temporary_record_store_url

__all__ = ["Emitted", "Service", "ev", "start_service"]


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A SQLite file in ``tmp_path``, or a fresh PostgreSQL database (dropped after the
    test)."""
    with temporary_record_store_url(request.param, tmp_path / "data") as url:
        yield url


@pytest.fixture
def store(store_url: str) -> Iterator[SQLAlchemyRecordStore]:
    with SQLAlchemyRecordStore(store_url) as s:
        yield s


@pytest.fixture
def service(store: SQLAlchemyRecordStore, tmp_path: Path) -> Iterator[Service]:
    svc = start_service(store, tmp_path / "state")
    yield svc
    svc.stop()
