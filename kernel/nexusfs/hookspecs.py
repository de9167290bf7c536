"""The service plugin contract: the pluggy hooks a NexusFS service implements.

A *service* is a pip-installable package that names a plugin object in the
``nexusfs.services`` entry-point group::

    [project.entry-points."nexusfs.services"]
    hooks = "nexusfs_hooks.plugin:plugin"

The kernel never imports that object. It reads the entry point's *metadata* to learn
that the service exists, then starts a worker process (``python -m
nexusfs.services.worker NAME``) which imports the plugin, registers it with a pluggy
``PluginManager("nexusfs")`` carrying these specs, and talks to the kernel over the bus.
A plugin that fails to import therefore fails only its own worker, which the kernel
reports as ``failed``.

Hook call order inside the worker:

1. ``nexus_service_info()`` - once, before the handshake: who the service is and what it
   offers (methods, hooked syscalls, storage it needs).
2. ``nexus_service_start(ctx)`` - once, after the handshake; ``ctx`` holds the storage
   pillars and a client for calls back into the kernel.
3. ``nexus_service_methods(ctx)`` - once: the RPC methods, reachable by clients as
   ``nx.call("<service>.<method>", **kwargs)``.
4. ``nexus_pre_syscall`` / ``nexus_post_syscall`` - for every hooked syscall.
5. ``nexus_service_stop(ctx)`` - once, when the worker is drained and stopping.

Failure semantics: an exception in a hook other than ``nexus_pre_syscall`` is logged
and, for ``start``, makes the worker exit (the supervisor restarts it with backoff). An
exception in ``nexus_pre_syscall`` fails the syscall with ``ServiceUnavailable`` (never
silently allows it). Services keep their state in the RecordStore / CacheStore, never
only in worker memory, because a worker may be restarted at any time.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    import logging
    from pathlib import Path

    from nexusfs.abc import CacheStoreABC
    from nexusfs.api import FileSystem

__all__ = [
    "PROJECT",
    "ServiceContext",
    "ServiceInfo",
    "ServiceSpec",
    "SyscallEvent",
    "SyscallOutcome",
    "Veto",
    "hookimpl",
    "hookspec",
]

PROJECT = "nexusfs"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)

#: Syscalls a service may hook. ``"*"`` in a hook list means all of them.
HOOKABLE = frozenset(
    {"write", "read", "stat", "readdir", "mkdir", "rmdir", "unlink", "rename", "copy",
     "mount", "unmount"}
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class ServiceInfo:
    """What a service declares about itself (sent in the handshake).

    ``pre_hooks`` / ``post_hooks`` name the syscalls the service hooks (see
    ``HOOKABLE``; ``"*"`` = all). ``needs`` lists the storage pillars it uses
    (``"record_store"``, ``"cache_store"``). ``idempotent`` names the RPC methods that
    the kernel may safely retry on a new worker after a crash.
    """

    name: str
    version: str
    description: str = ""
    pre_hooks: tuple[str, ...] = ()
    post_hooks: tuple[str, ...] = ()
    needs: tuple[str, ...] = ()
    idempotent: tuple[str, ...] = ()


@dataclass(slots=True)
class ServiceContext:
    """Everything a running service gets from its host.

    ``record_store`` is a :class:`~nexusfs.abc.RecordStoreABC` (SQLAlchemy
    ``session_factory``) when the service declared ``"record_store"``; ``cache_store``
    is always a :class:`~nexusfs.abc.CacheStoreABC`: the configured one
    (``NEXUS_CACHE_STORE``) when the service declared ``"cache_store"``, else a
    ``NullCacheStore`` (check ``cache_store.shared``; it never raises for a lost
    backend, it degrades: reads miss, writes are skipped, pub/sub stays in-process). ``kernel``
    calls syscalls on the kernel (as the service's own subject). ``state_dir`` is a
    private directory that survives restarts.

    ``set_hooks(pre=[...], post=[...])`` narrows or widens, at run time, the syscalls
    this worker hooks (``None`` leaves a list unchanged), e.g. pre-hooks only while
    deny rules exist, so unhooked syscalls pay nothing. It returns once the kernel
    applies it (the next syscall sees it); call it from sync code (hooks and sync
    methods run in threads).
    """

    name: str
    state_dir: Path
    log: logging.Logger
    kernel: FileSystem | None = None
    record_store: Any = None
    cache_store: CacheStoreABC | None = None
    config: dict[str, Any] = field(default_factory=dict)
    emit: Callable[[str, dict[str, Any]], None] | None = None
    set_hooks: Callable[..., None] | None = None


@dataclass(frozen=True, slots=True)
class SyscallEvent:
    """One syscall as hooks see it: the operation, its path (``dst`` for rename/copy),
    the acting subject, small arguments (never file bytes) and the wall-clock time.
    ``seq`` is the kernel's event sequence number (increasing; post-hook deliveries
    that are retried carry the same ``seq``, so services can deduplicate)."""

    op: str
    path: str
    subject: str | None = None
    dst: str | None = None
    args: dict[str, Any] = field(default_factory=dict)
    time: float = 0.0
    seq: int = 0


@dataclass(frozen=True, slots=True)
class SyscallOutcome:
    """How a syscall ended: ``ok``, else the typed error's ``error_code`` and
    ``message``; ``revision`` of the commit for mutations; a small ``result`` summary."""

    ok: bool
    error_code: str | None = None
    message: str | None = None
    revision: int | None = None
    result: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Veto:
    """Returned by a pre-hook to refuse a syscall: it fails with ``PermissionDenied``
    carrying ``reason`` (and the vetoing service's name)."""

    reason: str


class ServiceSpec:
    """The hook specifications (pluggy). Implement any subset with ``@hookimpl``."""

    @hookspec(firstresult=True)
    def nexus_service_info(self) -> ServiceInfo:  # type: ignore[empty-body]
        """Describe the service. Required; called before anything else, in the worker."""

    @hookspec
    def nexus_service_start(self, ctx: ServiceContext) -> None:
        """Open connections, create tables, warm caches. Raising fails the start."""

    @hookspec
    def nexus_service_methods(self, ctx: ServiceContext) -> dict[str, Callable[..., Any]]:  # type: ignore[empty-body]
        """RPC methods by name (sync or async callables taking keyword arguments and
        returning msgpack-able values). Raise ``nexusfs.errors`` types for typed errors."""

    @hookspec(firstresult=True)
    def nexus_pre_syscall(self, ctx: ServiceContext, event: SyscallEvent) -> Veto | None:
        """Called before a hooked syscall runs; return a :class:`Veto` to refuse it.
        Must be fast: the caller waits (up to its deadline)."""

    @hookspec
    def nexus_post_syscall(
        self, ctx: ServiceContext, event: SyscallEvent, outcome: SyscallOutcome
    ) -> None:
        """Called after a hooked syscall finished (successfully or not). Runs
        asynchronously: the caller never waits for it. Delivery is in order and at least
        once while the kernel process lives: events a crashed worker did not
        acknowledge are delivered again to its successor (same ``event.seq``)."""

    @hookspec(firstresult=True)
    def nexus_post_syscall_batch(
        self, ctx: ServiceContext, batch: list[tuple[SyscallEvent, SyscallOutcome]]
    ) -> bool | None:
        """Optional batched form of ``nexus_post_syscall``: handle a whole delivery
        batch at once (e.g. one database transaction) and return ``True``. If it raises,
        the batch is not acknowledged and is delivered again (same ``seq`` numbers), so
        it must be idempotent per ``event.seq``. Return ``None`` to fall back to
        ``nexus_post_syscall`` per event."""

    @hookspec
    def nexus_service_stop(self, ctx: ServiceContext) -> None:
        """Release resources; the worker exits afterwards."""
