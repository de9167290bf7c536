"""Fixtures: the hooks plugin registered with a real pluggy ``PluginManager`` carrying
the kernel's ``ServiceSpec``, started on a real SQLite record store in ``tmp_path``."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from hooks_testkit import Emitted, Service, ev, start_service

from nexusfs.drivers.recordstore import SQLAlchemyRecordStore, default_record_store_url
from nexusfs_hooks.models import Base

__all__ = ["Emitted", "Service", "ev", "start_service"]


POSTGRES_URL = os.environ.get("NEXUS_TEST_POSTGRES_URL")


@pytest.fixture(
    params=[
        pytest.param("sqlite", id="sqlite"),
        pytest.param(
            "postgres",
            id="postgres",
            marks=pytest.mark.skipif(not POSTGRES_URL, reason="NEXUS_TEST_POSTGRES_URL not set"),
        ),
    ]
)
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A SQLite file in ``tmp_path``, or (when ``NEXUS_TEST_POSTGRES_URL`` is set) the
    PostgreSQL database with the hooks tables dropped first."""
    if request.param == "sqlite":
        return default_record_store_url(tmp_path / "data")
    assert POSTGRES_URL is not None
    with SQLAlchemyRecordStore(POSTGRES_URL) as store:
        Base.metadata.drop_all(store.engine)
    return POSTGRES_URL


@pytest.fixture
def store(store_url: str) -> Iterator[SQLAlchemyRecordStore]:
    with SQLAlchemyRecordStore(store_url) as s:
        yield s


@pytest.fixture
def service(store: SQLAlchemyRecordStore, tmp_path: Path) -> Iterator[Service]:
    svc = start_service(store, tmp_path / "state")
    yield svc
    svc.stop()
