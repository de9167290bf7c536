"""NexusFS ``hooks`` service: an append-only audit log of every syscall and user hook
rules (deny a syscall, or emit an event after one), stored in the RecordStore.

Install with ``pip install -e plugins/hooks`` (or from a wheel); the kernel finds it
through the ``nexusfs.services`` entry point ``hooks = "nexusfs_hooks.plugin:plugin"``
and runs it in its own worker process. The classes are usable directly too::

    from nexusfs.drivers.recordstore import open_record_store
    from nexusfs_hooks import EventLog, upgrade_schema

    store = open_record_store("sqlite:///records.db")
    upgrade_schema(store)          # Alembic revisions in nexusfs_hooks/migrations
    log = EventLog(store.session_factory)
    log.append({"op": "write", "path": "/a.txt", "subject": "alice"})
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from nexusfs_hooks.eventlog import EventLog
from nexusfs_hooks.models import create_schema, upgrade_schema
from nexusfs_hooks.rules import HookEngine, compile_glob

try:
    __version__ = version("nexusfs-hooks")
except PackageNotFoundError:  # running from a source tree without installing
    __version__ = "0.1.0"

__all__ = [
    "EventLog",
    "HookEngine",
    "__version__",
    "compile_glob",
    "create_schema",
    "upgrade_schema",
]
