"""Child-process entry points for the multi-process tests (importable by ``spawn``)."""

from __future__ import annotations

from typing import Any

from nexusfs.drivers.recordstore import SQLAlchemyRecordStore
from nexusfs_hooks.eventlog import EventLog
from nexusfs_hooks.models import upgrade_schema


def append_range(
    url: str, first_kernel_seq: int, count: int, batch: int, barrier: Any = None
) -> None:
    """Append events with kernel seqs ``first .. first+count-1`` in batches, starting
    together with the other children at ``barrier``."""
    with SQLAlchemyRecordStore(url) as store:
        upgrade_schema(store)  # concurrent migration must be harmless
        if barrier is not None:
            barrier.wait(60)
        log = EventLog(store.session_factory)
        for start in range(first_kernel_seq, first_kernel_seq + count, batch):
            stop = min(start + batch, first_kernel_seq + count)
            log.append_many(
                [{"op": "write", "path": f"/p/{ks}", "kernel_seq": ks, "time": float(ks)}
                 for ks in range(start, stop)]
            )  # fmt: skip
