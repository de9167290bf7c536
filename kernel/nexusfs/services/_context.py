"""Worker-side pieces of a :class:`~nexusfs.hookspecs.ServiceContext`.

* :class:`KernelClient` - the ``ctx.kernel`` of a service: the full
  :class:`~nexusfs.client.RemoteNexusFS` API, but every call goes back to the kernel over
  the worker's *own* bus connection (the host serves the kernel's ``fs.*`` handlers on
  it), from any thread except the worker's event-loop thread. Async service code uses
  :meth:`KernelClient.acall`.
* :class:`SQLRecordStore` - a minimal RecordStore (SQLAlchemy engine +
  ``session_factory``) opened from the ``record_store_url`` the kernel hands out in the
  handshake; it is used until ``nexusfs.drivers.recordstore`` provides the real driver.
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
from nexusfs.errors import ServiceUnavailable, StoreClosed

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine
    from sqlalchemy.orm import Session, sessionmaker

    from nexusfs.bus import Connection

__all__ = ["JsonLogFormatter", "KernelClient", "SQLRecordStore", "open_record_store"]


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


class SQLRecordStore:
    """Minimal RecordStore: SQLAlchemy engine + ``session_factory`` for one URL."""

    def __init__(self, url: str) -> None:
        from sqlalchemy import create_engine, event
        from sqlalchemy.orm import sessionmaker

        self.url = url
        try:
            self._engine = create_engine(url, pool_pre_ping=True)
            if url.startswith("sqlite"):

                @event.listens_for(self._engine, "connect")
                def _pragmas(dbapi_conn: Any, _rec: Any) -> None:
                    cur = dbapi_conn.cursor()
                    cur.execute("PRAGMA journal_mode=WAL")
                    cur.execute("PRAGMA synchronous=FULL")
                    cur.execute("PRAGMA busy_timeout=5000")
                    cur.close()

            with self._engine.connect():
                pass
        except Exception as exc:
            raise ServiceUnavailable(f"record store {url!r} unreachable: {exc}") from exc
        self._sessions = sessionmaker(bind=self._engine)

    @property
    def engine(self) -> Engine:
        return self._engine

    @property
    def session_factory(self) -> sessionmaker[Session]:
        return self._sessions

    def close(self) -> None:
        self._engine.dispose()


def open_record_store(url: str) -> Any:
    """The real RecordStore driver when it exists, else :class:`SQLRecordStore`."""
    try:
        import importlib

        recordstore = importlib.import_module("nexusfs.drivers.recordstore")
        opener = getattr(recordstore, "open_record_store", None)
        if callable(opener):
            return opener(url)
    except ImportError:
        pass
    return SQLRecordStore(url)


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
