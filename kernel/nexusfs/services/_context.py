"""Worker-side pieces of a :class:`~nexusfs.hookspecs.ServiceContext`.

* :class:`KernelClient` - the ``ctx.kernel`` of a service: the full
  :class:`~nexusfs.client.RemoteNexusFS` API, but every call goes back to the kernel over
  the worker's *own* bus connection (the host serves the kernel's ``fs.*`` handlers on
  it), from any thread except the worker's event-loop thread. Async service code uses
  :meth:`KernelClient.acall`.
* :func:`open_record_store` - opens the record store driver
  (:func:`nexusfs.drivers.recordstore.open_record_store`) from the ``record_store_url``
  the kernel hands out in the handshake; imported on first use, so workers of services
  that need no record store never load SQLAlchemy.
* :class:`JsonLogFormatter` - one JSON object per line on stderr, which the host keeps
  per service.

Invariants / failure semantics: a ``KernelClient`` call raises the kernel's typed error,
``ServiceUnavailable`` when the connection to the kernel is gone, and ``RuntimeError``
when made from the event-loop thread (it would deadlock: that thread is the one that
must read the answer). Nothing here retries.
"""

from __future__ import annotations

import json
import logging
import time
from typing import TYPE_CHECKING, Any

import anyio.from_thread

from nexusfs.client import RemoteNexusFS
from nexusfs.errors import StoreClosed

if TYPE_CHECKING:
    from nexusfs.bus import Connection
    from nexusfs.drivers.recordstore import SQLAlchemyRecordStore

__all__ = ["JsonLogFormatter", "KernelClient", "open_record_store"]


class KernelClient(RemoteNexusFS):
    """``ctx.kernel``: the FileSystem API over the worker's bus connection."""

    def __init__(self, conn: Connection, *, timeout: float = 60.0) -> None:
        # Deliberately not calling RemoteNexusFS.__init__: no socket of our own.
        self.socket_path = ""
        self._conn = conn
        self._timeout = timeout
        self._closed = False

    def _call(self, method: str, /, **args: Any) -> Any:
        if self._closed:
            raise StoreClosed("the kernel client is closed")
        try:
            return anyio.from_thread.run(self._request, method, args)
        except RuntimeError as exc:
            if "event loop thread" in str(exc) or "worker thread" in str(exc):
                raise RuntimeError(
                    "ctx.kernel is blocking: call it from a sync service method (they run "
                    "in threads) or use `await ctx.kernel.acall(...)` in async code"
                ) from exc
            raise

    async def _request(self, method: str, args: dict[str, Any]) -> Any:
        return await self._conn.request(method, args, timeout=self._timeout)

    async def acall(self, method: str, /, **args: Any) -> Any:
        """Async call of a kernel handler (``"fs.stat"``, ...) for async service code."""
        if self._closed:
            raise StoreClosed("the kernel client is closed")
        return await self._request(method, args)

    def close(self) -> None:
        self._closed = True


def open_record_store(url: str) -> SQLAlchemyRecordStore:
    """Open the record store at ``url`` (:func:`nexusfs.drivers.recordstore.
    open_record_store`): ``ServiceUnavailable`` for a malformed URL, a missing driver or
    an unreachable database, with nothing left open."""
    from nexusfs.drivers.recordstore import open_record_store as open_driver

    return open_driver(url)


class JsonLogFormatter(logging.Formatter):
    """One JSON object per line: ts, level, service, logger, msg (+ exc)."""

    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        obj: dict[str, Any] = {
            "ts": round(record.created if record.created else time.time(), 6),
            "level": record.levelname.lower(),
            "service": self.service,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            obj["exc"] = self.formatException(record.exc_info)
        return json.dumps(obj, default=str)
