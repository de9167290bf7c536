"""Metastore drivers: the kernel's ordered key-value stores.

* ``redb`` (default): :class:`~nexusfs.drivers.metastore.redb.RedbMetastore`, a redb file
  behind a write-ahead log (native, durable).
* ``memory``: :class:`~nexusfs.drivers.metastore.memory.MemoryMetastore`, for tests and
  throw-away kernels; nothing survives the process.

The openers below are the ``metastore.*`` entries of the ``nexusfs.drivers`` registry
(:mod:`nexusfs.drivers.registry`). Classes are imported lazily so that choosing the
memory driver never loads the native extension.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from nexusfs.abc import Durability

if TYPE_CHECKING:
    from nexusfs.abc import MetastoreABC

__all__ = ["open_memory", "open_redb", "redb_path"]


def redb_path(location: str | os.PathLike[str]) -> str:
    """The file of a redb location: a plain path, ``redb:/abs/path`` or
    ``redb:///abs/path``."""
    text = os.fspath(location)
    if text.startswith("redb://"):
        return text[len("redb://") :]
    if text.startswith("redb:"):
        return text[len("redb:") :]
    return text


def open_redb(
    location: str | os.PathLike[str],
    *,
    durability: Durability | str = Durability.DEFERRED,
    flush_interval_ms: int = 0,
) -> MetastoreABC:
    """Open (creating if missing) the redb metastore at ``location``. Raises what
    :class:`RedbMetastore` raises: ``NotFound`` (missing parent directory),
    ``StoreLocked``, ``CorruptStore``, ``OSError``."""
    from nexusfs.drivers.metastore.redb import RedbMetastore

    return RedbMetastore(
        redb_path(location), durability=durability, flush_interval_ms=flush_interval_ms
    )


def open_memory(
    location: str | os.PathLike[str] = "memory:",
    *,
    durability: Durability | str = Durability.DEFERRED,
    flush_interval_ms: int = 0,
) -> MetastoreABC:
    """A new, empty in-memory metastore (``location`` is ignored)."""
    del location, flush_interval_ms
    from nexusfs.drivers.metastore.memory import MemoryMetastore

    return MemoryMetastore(durability)
