"""Fixtures: the hooks plugin registered with a real pluggy ``PluginManager`` carrying
the kernel's ``ServiceSpec``, started on a real SQLite record store in ``tmp_path``."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pluggy
import pytest

from nexusfs.drivers.recordstore import SQLAlchemyRecordStore, default_record_store_url
from nexusfs.hookspecs import PROJECT, ServiceContext, ServiceSpec, SyscallEvent, SyscallOutcome
from nexusfs_hooks.models import Base
from nexusfs_hooks.plugin import HooksPlugin


@dataclass
class Emitted:
    """Records ``ctx.emit`` calls."""

    calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    def __call__(self, name: str, payload: dict[str, Any]) -> None:
        self.calls.append((name, payload))


@dataclass
class Service:
    """A started plugin instance and the pluggy manager that drives it."""

    pm: pluggy.PluginManager
    plugin: HooksPlugin
    ctx: ServiceContext
    emitted: Emitted
    methods: dict[str, Callable[..., Any]]

    def pre(self, event: SyscallEvent) -> Any:
        return self.pm.hook.nexus_pre_syscall(ctx=self.ctx, event=event)

    def post(self, event: SyscallEvent, outcome: SyscallOutcome | None = None) -> None:
        self.pm.hook.nexus_post_syscall(
            ctx=self.ctx, event=event, outcome=outcome or SyscallOutcome(ok=True)
        )

    def call(self, method: str, **kwargs: Any) -> Any:
        return self.methods[method](**kwargs)

    def stop(self) -> None:
        self.pm.hook.nexus_service_stop(ctx=self.ctx)


def start_service(
    store: SQLAlchemyRecordStore, state_dir: Path, *, refresh_ms: float = 0
) -> Service:
    """Register a fresh :class:`HooksPlugin` (as a worker would) and start it."""
    pm = pluggy.PluginManager(PROJECT)
    pm.add_hookspecs(ServiceSpec)
    plugin = HooksPlugin()
    pm.register(plugin, name="hooks")
    emitted = Emitted()
    ctx = ServiceContext(
        name="hooks",
        state_dir=state_dir,
        log=logging.getLogger("nexusfs.services.hooks"),
        record_store=store,
        config={"rules_refresh_ms": refresh_ms},
        emit=emitted,
    )
    pm.hook.nexus_service_start(ctx=ctx)
    merged: dict[str, Callable[..., Any]] = {}
    for methods in pm.hook.nexus_service_methods(ctx=ctx):
        merged.update(methods)
    return Service(pm, plugin, ctx, emitted, merged)


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


def ev(op: str, path: str, seq: int, **kw: Any) -> SyscallEvent:
    """A syscall event with a deterministic time (= seq)."""
    kw.setdefault("time", float(seq))
    return SyscallEvent(op=op, path=path, seq=seq, **kw)
