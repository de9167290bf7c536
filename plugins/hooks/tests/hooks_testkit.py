"""Helpers shared by the hooks plugin tests (imported as ``hooks_testkit``; fixtures live
in ``conftest.py``, which a plain ``from conftest import`` could confuse with another
test tree's)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pluggy

from nexusfs.abc import CacheStoreABC
from nexusfs.drivers.cachestore import NullCacheStore
from nexusfs.drivers.recordstore import SQLAlchemyRecordStore
from nexusfs.hookspecs import PROJECT, ServiceContext, ServiceSpec, SyscallEvent, SyscallOutcome
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
    store: SQLAlchemyRecordStore,
    state_dir: Path,
    *,
    refresh_ms: float = 0,
    cache_store: CacheStoreABC | None = None,
) -> Service:
    """Register a fresh :class:`HooksPlugin` (as a worker would) and start it. A worker
    always passes a cache store (a ``NullCacheStore`` when none is configured)."""
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
        cache_store=cache_store if cache_store is not None else NullCacheStore(),
        config={"rules_refresh_ms": refresh_ms},
        emit=emitted,
    )
    pm.hook.nexus_service_start(ctx=ctx)
    merged: dict[str, Callable[..., Any]] = {}
    for methods in pm.hook.nexus_service_methods(ctx=ctx):
        merged.update(methods)
    return Service(pm, plugin, ctx, emitted, merged)


def ev(op: str, path: str, seq: int, **kw: Any) -> SyscallEvent:
    """A syscall event with a deterministic time (= seq)."""
    kw.setdefault("time", float(seq))
    return SyscallEvent(op=op, path=path, seq=seq, **kw)
