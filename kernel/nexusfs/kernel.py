"""The NexusFS kernel: syscalls over zones (metastores) and mounted object stores.

``NexusFS(metastore)`` is the whole kernel in one object; ``connect()`` builds one on a
data directory (redb metastore, local content-addressed store mounted at ``/``).

Syscall pipeline: normalise the path -> route it (zone + store) -> operate. Every
mutation takes the kernel's write lock, reads what it needs, and commits *one* atomic
metastore batch that carries the inodes, inline content, blob reference counts and the
zone revision. Readers take no lock: each metastore call reads a consistent snapshot.

Write protocol: a file's bytes are made durable in the object store (per the durability
setting) *before* the batch that points at them commits, so a crash leaves the old or
the new version, never an inode that points at a missing blob. Small files are kept
inline in the metastore (one commit, no blob). A blob whose reference count drops to
zero is reclaimed only once the commit that dropped it is durable (at once with
``immediate``, after the next flush with ``deferred``) and no open reader pins it;
blobs orphaned by a crash are reclaimed by :meth:`NexusFS.gc`.

Invariant: the kernel process is the only owner of its metastores (redb locks the
files), so the in-memory revision counters and pins are authoritative.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from nexusfs.abc import Durability
from nexusfs.api import FileSystem
from nexusfs.errors import NotFound
from nexusfs.syscalls.admin import AdminOps, GCReport, ZoneInfo
from nexusfs.syscalls.files import FileOps
from nexusfs.syscalls.namespace import NamespaceOps

if TYPE_CHECKING:
    from nexusfs.config import Settings

__all__ = ["GCReport", "NexusFS", "ZoneInfo", "connect", "open_embedded"]


class NexusFS(FileOps, NamespaceOps, AdminOps):
    """The kernel. Build it with :func:`connect`, or directly from a metastore:
    ``NexusFS(metastore, data_dir=..., durability=...)`` then ``mount("/", uri)``.

    Thread-safe: any number of threads may call any method. Use as a context manager or
    call :meth:`close` (which flushes) when done.
    """


def connect(
    target: str | None = None,
    *,
    data_dir: str | os.PathLike[str] | None = None,
    durability: Durability | str | None = None,
    flush_interval: float | None = None,
    create: bool = True,
    subject: str | None = None,
    _embedded: bool = False,
) -> FileSystem:
    """Open NexusFS and return its API.

    * ``connect()`` / ``connect(data_dir=D)``: the data directory ``D`` (default
      ``$NEXUS_DATA_DIR`` or ``./nexus-data``). If a kernel process (``nexus up``) owns
      it, the result talks to that process; otherwise the kernel runs embedded in this
      process (never both: the kernel process holds the metastore's lock).
    * ``connect("unix:///path/kernel.sock")``: a kernel process at that socket.

    Embedded, the drivers come from the settings (:func:`nexusfs.config.load_settings`:
    ``nexus.toml`` in the data directory, ``NEXUS_*`` variables, the distro);
    ``durability`` and ``flush_interval`` given here win over them. The directory is
    created if missing (``NotFound`` if not and ``create=False``), and the configured
    object store is mounted at ``/`` the first time. ``ConfigError`` for bad settings,
    ``StoreLocked`` if another process has the directory open, ``ServiceUnavailable``
    if a socket does not answer; ``grpc://`` is not available yet. ``subject`` names
    who acts in a kernel process (trusted local mode; default ``user:<login name>``);
    embedded mode has no services, so it has no use there.
    """
    if target is not None:
        from nexusfs.errors import ServiceUnavailable

        if target.startswith("unix://"):
            from nexusfs.client import RemoteNexusFS

            return RemoteNexusFS(target[len("unix://") :], subject=subject)
        if target.startswith("grpc://"):
            raise ServiceUnavailable("grpc:// remote mode is not available yet")
        data_dir = target[len("file://") :] if target.startswith("file://") else target
    ddir = Path(data_dir or os.environ.get("NEXUS_DATA_DIR") or "nexus-data")
    if not _embedded:
        remote = _kernel_process(ddir, subject)
        if remote is not None:
            return remote
    from nexusfs.config import load_settings

    settings = load_settings(
        ddir, overrides={"durability": durability, "flush_interval": flush_interval}
    )
    return open_embedded(settings, create=create)


def _kernel_process(ddir: Path, subject: str | None) -> FileSystem | None:
    """A client of the kernel process that owns ``ddir``, or ``None`` if none answers
    (no ``run/kernel.json``, or a stale one left by a crash: nobody listens). Connecting
    is the liveness check: one connection and one ``kernel.hello``, nothing else."""
    import json

    try:
        state = json.loads((ddir / "run" / "kernel.json").read_text())
        socket_path = state["socket"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    from nexusfs.client import RemoteNexusFS
    from nexusfs.errors import ServiceUnavailable

    try:
        return RemoteNexusFS(socket_path, subject=subject)
    except ServiceUnavailable:
        return None


def open_embedded(settings: Settings, *, create: bool = True) -> NexusFS:
    """The kernel on ``settings`` in this process (what :func:`connect` does when no
    kernel process owns the data directory). Raises as :func:`connect` does."""
    from nexusfs.drivers import registry

    ddir = settings.data_dir
    if not ddir.exists():
        if not create:
            raise NotFound("no NexusFS data directory", path=str(ddir))
        ddir.mkdir(parents=True)
    opener = registry.resolve("metastore", settings.metastore)
    metastore = opener(settings.metastore, durability=settings.durability, flush_interval_ms=0)
    try:
        fs = NexusFS(
            metastore,
            data_dir=ddir,
            durability=settings.durability,
            flush_interval=settings.flush_interval,
        )
        if fs._router.get("/") is None:
            fs.mount("/", settings.object_store)
    except BaseException:
        metastore.close()
        raise
    return fs
