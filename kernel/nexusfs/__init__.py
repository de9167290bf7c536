"""NexusFS: a microkernel filesystem for multi-agent systems.

The public facade. ``nexusfs.connect()`` opens a kernel (embedded by default) and returns
a :class:`~nexusfs.kernel.NexusFS` with the calls of ARCHITECTURE §5; errors are the typed
classes of :mod:`nexusfs.errors`. Heavy modules are imported lazily so that ``import
nexusfs`` (and the CLI) start fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from nexusfs.errors import (
    AlreadyExists,
    Conflict,
    CorruptStore,
    DirectoryNotEmpty,
    InvalidPath,
    IsADirectory,
    MountError,
    NexusError,
    NotADirectory,
    NotFound,
    PermissionDenied,
    ServiceUnavailable,
    StoreClosed,
    StoreLocked,
)

if TYPE_CHECKING:
    from nexusfs.abc import Durability
    from nexusfs.kernel import NexusFS, connect
    from nexusfs.metadata.inode import EntryType, FileMetadata

__version__ = "0.1.0"

__all__ = [
    "AlreadyExists",
    "Conflict",
    "CorruptStore",
    "DirectoryNotEmpty",
    "Durability",
    "EntryType",
    "FileMetadata",
    "InvalidPath",
    "IsADirectory",
    "MountError",
    "NexusError",
    "NexusFS",
    "NotADirectory",
    "NotFound",
    "PermissionDenied",
    "ServiceUnavailable",
    "StoreClosed",
    "StoreLocked",
    "__version__",
    "connect",
]

_LAZY = {
    "connect": "nexusfs.kernel",
    "NexusFS": "nexusfs.kernel",
    "FileMetadata": "nexusfs.metadata.inode",
    "EntryType": "nexusfs.metadata.inode",
    "Durability": "nexusfs.abc",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'nexusfs' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
