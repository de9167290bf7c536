"""Fixtures: the rebac plugin registered with a real pluggy ``PluginManager`` carrying
the kernel's ``ServiceSpec``, started on a real record store: a SQLite file in
``tmp_path`` and a fresh database on a real PostgreSQL server (``nexusfs.testing.
postgres``: ``NEXUS_TEST_POSTGRES_URL`` or a private cluster; skipped when neither
exists, an error when ``NEXUS_TEST_REQUIRE_SERVERS=1``). Service tests run on both.
``ctx.kernel`` is a real embedded kernel (its namespace feeds ``list_objects``); the
``redis`` fixture is a private ``redis-server``."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from rebac_service_kit import Starter, Worker, start_service

import nexusfs
from nexusfs.api import FileSystem
from nexusfs.drivers.recordstore import SQLAlchemyRecordStore
from nexusfs.testing.recordstore import temporary_record_store_url
from nexusfs.testing.redis import RedisServer, private_redis_server


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
def kernel(tmp_path: Path) -> Iterator[FileSystem]:
    """A real embedded kernel: the namespace ``list_objects`` walks."""
    with nexusfs.connect(data_dir=tmp_path / "kernel") as fs:
        yield fs


@pytest.fixture
def service(store: SQLAlchemyRecordStore, kernel: FileSystem, tmp_path: Path) -> Iterator[Worker]:
    svc = start_service(store, tmp_path / "state", kernel=kernel)
    yield svc
    svc.stop()


@pytest.fixture
def redis() -> Iterator[RedisServer]:
    with private_redis_server() as srv:
        yield srv


@pytest.fixture
def workers(store: SQLAlchemyRecordStore, tmp_path: Path) -> Iterator[Starter]:
    """``start(name, **kwargs)``: start a worker on ``store`` (``start_service``
    keywords); every worker started is stopped after the test, even a failed one."""
    started: list[Worker] = []

    def start(name: str, **kwargs: Any) -> Worker:
        w = start_service(store, tmp_path / name, **kwargs)
        started.append(w)
        return w

    yield start
    for w in started:
        w.stop()
