"""The read-only ``/__sys__`` tree: the kernel's own records seen as files.

::

    /__sys__/                 directory
    /__sys__/mounts           file: the mount table as JSON
    /__sys__/zones/           directory: one file per zone
    /__sys__/zones/NAME       file: JSON (name, mounted_at, created_at)
    /__sys__/revision         file: the root zone's revision, as text

Entries are generated on each call from the kernel's state, so they are always current.
Every write below ``/__sys__`` is refused by the kernel with ``PermissionDenied``; the
tree is hidden from listings of ``/`` and reached by its path.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Protocol

from nexusfs.metadata.inode import EntryType, FileMetadata

if TYPE_CHECKING:
    from nexusfs.abc import MountInfo
    from nexusfs.syscalls.admin import ZoneInfo


class NexusFS(Protocol):
    """What this module reads from the kernel."""

    def mounts(self) -> list[MountInfo]: ...
    def zones(self) -> list[ZoneInfo]: ...
    def revision(self, zone: str = ...) -> int: ...


__all__ = ["read", "readdir", "stat"]

_ROOT = "/__sys__"


def _content(fs: NexusFS, path: str) -> bytes | None:
    if path == f"{_ROOT}/mounts":
        table = [
            {"path": m.path, "uri": m.uri, "kind": m.kind, "created_at": m.created_at}
            for m in fs.mounts()
        ]
        return json.dumps(table, indent=2).encode() + b"\n"
    if path == f"{_ROOT}/revision":
        return f"{fs.revision()}\n".encode()
    if path.startswith(f"{_ROOT}/zones/"):
        name = path[len(f"{_ROOT}/zones/") :]
        for zone in fs.zones():
            if zone.name == name:
                return json.dumps(zone.to_dict(), indent=2).encode() + b"\n"
    return None


def stat(fs: NexusFS, path: str) -> FileMetadata | None:
    """The inode of a ``/__sys__`` path, or ``None`` if there is no such entry."""
    if path in (_ROOT, f"{_ROOT}/zones"):
        return FileMetadata(path, EntryType.DIRECTORY, zone="root", owner="system")
    data = _content(fs, path)
    if data is None:
        return None
    return FileMetadata(
        path,
        EntryType.FILE,
        len(data),
        zone="root",
        owner="system",
        mime_type="application/json" if path != f"{_ROOT}/revision" else "text/plain",
    )


def read(fs: NexusFS, path: str) -> bytes:
    """The bytes of a ``/__sys__`` file (the caller checked that it exists)."""
    return _content(fs, path) or b""


def readdir(fs: NexusFS, path: str) -> list[FileMetadata]:
    """Children of a ``/__sys__`` directory, in name order."""
    if path == _ROOT:
        names = [f"{_ROOT}/mounts", f"{_ROOT}/revision", f"{_ROOT}/zones"]
    elif path == f"{_ROOT}/zones":
        names = [f"{_ROOT}/zones/{z.name}" for z in fs.zones()]
    else:
        return []
    return [m for p in sorted(names) if (m := stat(fs, p)) is not None]
