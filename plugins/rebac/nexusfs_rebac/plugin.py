"""The ``rebac`` service plugin: relationship-based access control as a NexusFS service.

The worker registers :data:`plugin` with a pluggy ``PluginManager("nexusfs")``:

* ``nexus_service_start``: creates or upgrades the tables on ``ctx.record_store``
  (required) with the package's Alembic revisions, writes the default file model
  (``default.fga``) into a store that has no model yet, loads every tuple into memory,
  starts following other writers through ``ctx.cache_store`` and reports each new
  revision to the kernel with ``ctx.emit("rebac.revision", {"revision": n})`` (the
  kernel's permission gate then forgets older decisions; see
  :mod:`nexusfs_rebac.service`).
* ``nexus_service_methods``: ``write_model``, ``read_model``, ``write``, ``check``,
  ``batch_check``, ``check_paths``, ``expand``, ``list_objects``, ``list_users``,
  ``read``, ``read_changes``, ``revision``, ``wait_revision``
  (``nx.call("rebac.check", user=..., relation=..., object=...)``). The read-only ones
  are declared idempotent, so the kernel retries them on a new worker across a hot
  restart; ``write`` and ``write_model`` are not retried.
* ``nexus_service_stop``: stops the follower thread.

The service hooks no syscalls: the kernel permission gate asks it questions
(``batch_check``) and learns about changes from the ``rebac.revision`` events, with
``revision`` as its safety net; other workers and kernels learn through the cache store
channel :data:`~nexusfs_rebac.service.REVISION_CHANNEL`.

Config (``ctx.config``, optional): ``poll_ms`` (200), ``shared_poll_ms`` (2000),
``stale_ms`` (5000), ``token_wait_ms`` (2000), ``max_depth`` (25); see
:class:`~nexusfs_rebac.service.ServiceConfig`.

Failure semantics: without a record store the start fails (``ServiceUnavailable``), as
does a failed migration (``MigrationError``: the schema stays at its previous revision)
or an unreachable database; the supervisor then restarts the worker with backoff. All
state is in the RecordStore: a restarted worker reloads it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from nexusfs.errors import ServiceUnavailable
from nexusfs.hookspecs import ServiceContext, ServiceInfo, hookimpl
from nexusfs_rebac import __version__
from nexusfs_rebac.service import REVISION_EVENT, RebacService, ServiceConfig
from nexusfs_rebac.store import TupleStore
from nexusfs_rebac.tables import upgrade_schema

__all__ = ["READ_ONLY_METHODS", "SERVICE_NAME", "RebacPlugin", "plugin"]

SERVICE_NAME = "rebac"
#: Methods without side effects: safe for the kernel to retry on a new worker.
READ_ONLY_METHODS = (
    "read_model", "check", "batch_check", "check_paths", "expand", "list_objects",
    "list_users", "read", "read_changes", "revision", "wait_revision",
)  # fmt: skip


class RebacPlugin:
    """The rebac service. One instance per worker; all state is in the RecordStore."""

    def __init__(self) -> None:
        self.service: RebacService | None = None

    @hookimpl
    def nexus_service_info(self) -> ServiceInfo:
        """Who we are: methods only, no syscall hooks (yet)."""
        return ServiceInfo(
            name=SERVICE_NAME,
            version=__version__,
            description="Relationship-based access control (Zanzibar, OpenFGA models).",
            needs=("record_store", "cache_store"),
            idempotent=READ_ONLY_METHODS,
        )

    @hookimpl
    def nexus_service_start(self, ctx: ServiceContext) -> None:
        """Upgrade the schema, seed the default model, load the mirror, follow other
        writers. ``ServiceUnavailable`` without a record store; ``MigrationError``,
        ``InvalidRequest`` (bad config) and database errors propagate (start fails)."""
        store = ctx.record_store
        if store is None:
            raise ServiceUnavailable("the rebac service needs a record store")
        config = ServiceConfig.from_mapping(ctx.config)
        applied = upgrade_schema(store)
        if applied:
            ctx.log.info("rebac schema upgraded: %s", ", ".join(applied))
        emit = ctx.emit
        service = RebacService(
            TupleStore(store.session_factory),
            kernel=ctx.kernel,
            cache=ctx.cache_store,
            config=config,
            log=ctx.log,
            on_revision=(
                None if emit is None else lambda rev: emit(REVISION_EVENT, {"revision": rev})
            ),
        )
        service.start()
        mirror = service.mirror
        ctx.log.info("rebac: %d tuples loaded at revision %d", len(mirror.index), mirror.revision)
        self.service = service

    @hookimpl
    def nexus_service_methods(self, ctx: ServiceContext) -> dict[str, Callable[..., Any]]:
        """The RPC methods (bound to the started service)."""
        if self.service is None:
            raise ServiceUnavailable("the rebac service has not been started")
        return self.service.methods()

    @hookimpl
    def nexus_service_stop(self, ctx: ServiceContext) -> None:
        """Stop following other writers; the stores belong to the host."""
        if self.service is not None:
            self.service.stop()
            self.service = None


#: The object named by the ``nexusfs.services`` entry point ``rebac``.
plugin = RebacPlugin()
