"""Helpers shared by the rebac service tests (imported as ``rebac_service_kit``; the
fixtures live in ``conftest.py``).

:func:`start_service` does what a worker does: registers a fresh
:class:`~nexusfs_rebac.plugin.RebacPlugin` with a real pluggy ``PluginManager`` carrying
the kernel's ``ServiceSpec``, builds the ``ServiceContext`` (record store, cache store,
``kernel``) and starts it; two of them on one record store stand for two workers (of a
hot restart, or of two kernels sharing PostgreSQL).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pluggy

from nexusfs.abc import CacheStoreABC
from nexusfs.drivers.cachestore import NullCacheStore
from nexusfs.drivers.recordstore import SQLAlchemyRecordStore
from nexusfs.hookspecs import PROJECT, ServiceContext, ServiceSpec
from nexusfs_rebac.plugin import RebacPlugin
from nexusfs_rebac.service import RebacService

DOCS_MODEL = """
model
  schema 1.1

type user

type group
  relations
    define member: [user, group#member]

type document
  relations
    define owner: [user]
    define editor: [user, group#member] or owner
    define viewer: [user, user:*, group#member] or editor
    define blocked: [user]
    define can_read: viewer but not blocked
"""


@dataclass
class Worker:
    """A started plugin instance and the pluggy manager that drives it."""

    pm: pluggy.PluginManager
    plugin: RebacPlugin
    ctx: ServiceContext
    methods: dict[str, Callable[..., Any]]

    @property
    def service(self) -> RebacService:
        assert self.plugin.service is not None
        return self.plugin.service

    def call(self, method: str, **kwargs: Any) -> Any:
        return self.methods[method](**kwargs)

    def stop(self) -> None:
        self.pm.hook.nexus_service_stop(ctx=self.ctx)


#: The ``workers`` fixture: ``start(name, **start_service_keywords) -> Worker``.
Starter = Callable[..., Worker]


def start_service(
    store: SQLAlchemyRecordStore | None,
    state_dir: Path,
    *,
    kernel: Any = None,
    cache_store: CacheStoreABC | None = None,
    config: dict[str, Any] | None = None,
) -> Worker:
    """Register a fresh plugin (as a worker would) and start it. A worker always passes
    a cache store (a ``NullCacheStore`` when none is configured)."""
    pm = pluggy.PluginManager(PROJECT)
    pm.add_hookspecs(ServiceSpec)
    plugin = RebacPlugin()
    pm.register(plugin, name="rebac")
    ctx = ServiceContext(
        name="rebac",
        state_dir=state_dir,
        log=logging.getLogger("nexusfs.services.rebac"),
        kernel=kernel,
        record_store=store,
        cache_store=cache_store if cache_store is not None else NullCacheStore(),
        config=dict(config or {}),
    )
    pm.hook.nexus_service_start(ctx=ctx)
    merged: dict[str, Callable[..., Any]] = {}
    for methods in pm.hook.nexus_service_methods(ctx=ctx):
        merged.update(methods)
    return Worker(pm, plugin, ctx, merged)


def wait_until(predicate: Callable[[], object], timeout: float = 10.0, what: str = "") -> float:
    """Poll ``predicate`` until true; return the seconds it took (AssertionError after
    ``timeout``)."""
    t0 = time.monotonic()
    while not predicate():
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"not reached in {timeout} s: {what}")
        time.sleep(0.01)
    return time.monotonic() - t0
