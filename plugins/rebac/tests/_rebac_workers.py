"""Child-process entry points for the multi-process tests (importable by ``spawn``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rebac_service_kit import start_service

from nexusfs.drivers.recordstore import SQLAlchemyRecordStore


def child_writes(url: str, state: str, k: int, n: int, barrier: Any) -> None:
    """Start a rebac service on ``url`` (a worker of its own) and, together with the
    other children, write ``n`` tuples ``document:k-i#viewer@user:pk``, one per write."""
    with SQLAlchemyRecordStore(url) as store:
        worker = start_service(store, Path(state))
        try:
            barrier.wait(60)
            for i in range(n):
                worker.call("write", writes=[f"document:{k}-{i}#viewer@user:p{k}"])
        finally:
            worker.stop()
