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
* :class:`ThreadRunner` - where the worker runs blocking code (sync RPC methods, pluggy
  hooks): a small pool of daemon threads fed straight from the event loop, about three
  times cheaper per call here than ``anyio.to_thread`` (no capacity limiter, cancel
  scope or per-call queue objects). Its threads count as AnyIO worker threads, so
  ``anyio.from_thread`` keeps working in service code.

Invariants / failure semantics: a ``KernelClient`` call raises the kernel's typed error,
``ServiceUnavailable`` when the connection to the kernel is gone (or the worker's event
loop has stopped), and ``RuntimeError`` when made from the event-loop thread (it would
deadlock: that thread is the one that must read the answer); it works from any other
thread. ``ThreadRunner.run`` returns the callable's result or raises its exception;
every submitted job gets a thread of its own while fewer than ``max_threads`` are busy
(more wait, in order); cancelling the awaiting coroutine does not stop the job, whose
result is then dropped. Nothing here retries.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import contextvars
import json
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import anyio.lowlevel

from nexusfs.client import RemoteNexusFS
from nexusfs.errors import ServiceUnavailable, StoreClosed

if TYPE_CHECKING:
    from nexusfs.bus import Connection
    from nexusfs.drivers.recordstore import SQLAlchemyRecordStore

__all__ = ["JsonLogFormatter", "KernelClient", "ThreadRunner", "open_record_store"]

T = TypeVar("T")
#: Extra time a blocking kernel call waits past its own timeout for the event loop to
#: answer at all (a stopped loop never does).
_LOOP_GRACE = 10.0


class KernelClient(RemoteNexusFS):
    """``ctx.kernel``: the FileSystem API over the worker's bus connection."""

    def __init__(self, conn: Connection, *, timeout: float = 60.0) -> None:
        """Must be constructed on the worker's event loop (whose thread it then refuses
        to block)."""
        # Deliberately not calling RemoteNexusFS.__init__: no socket of our own.
        self.socket_path = ""
        self._conn = conn
        self._timeout = timeout
        self._closed = False
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()

    def _call(self, method: str, /, **args: Any) -> Any:
        if self._closed:
            raise StoreClosed("the kernel client is closed")
        if threading.get_ident() == self._loop_thread:
            raise RuntimeError(
                "ctx.kernel is blocking: call it from a sync service method (they run "
                "in threads) or use `await ctx.kernel.acall(...)` in async code"
            )
        coro = self._request(method, args)
        try:
            fut = asyncio.run_coroutine_threadsafe(coro, self._loop)
        except RuntimeError as exc:  # the loop is closed
            coro.close()
            raise ServiceUnavailable(f"the worker's event loop is gone: {exc}") from None
        try:
            return fut.result(self._timeout + _LOOP_GRACE)
        except concurrent.futures.TimeoutError:
            fut.cancel()
            raise ServiceUnavailable(
                f"{method}: no answer from the worker's event loop") from None

    async def _request(self, method: str, args: dict[str, Any]) -> Any:
        return await self._conn.request(method, args, timeout=self._timeout)

    async def acall(self, method: str, /, **args: Any) -> Any:
        """Async call of a kernel handler (``"fs.stat"``, ...) for async service code."""
        if self._closed:
            raise StoreClosed("the kernel client is closed")
        return await self._request(method, args)

    def close(self) -> None:
        self._closed = True


class ThreadRunner:
    """Runs blocking callables for the worker's event loop on up to ``max_threads``
    daemon threads (see the module docstring). Threads start on demand and exit after
    ``idle_timeout`` seconds without work. Construct and use on the event loop."""

    def __init__(self, max_threads: int = 32, *, idle_timeout: float = 10.0,
                 name: str = "worker") -> None:
        if max_threads < 1:
            raise ValueError(f"max_threads must be at least 1, not {max_threads}")
        self.max_threads = max_threads
        self.idle_timeout = idle_timeout
        self.name = name
        self._loop = asyncio.get_running_loop()
        self._token = anyio.lowlevel.current_token()
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._jobs: deque[tuple[contextvars.Context, Callable[[], Any],
                                asyncio.Future[Any]]] = deque()
        self._idle = 0
        self._threads = 0

    @property
    def threads(self) -> int:
        """Threads currently alive (busy or idle)."""
        return self._threads

    async def run(self, fn: Callable[[], T]) -> T:
        """``fn()`` in a pool thread (with a copy of the caller's context variables);
        its result, or its exception raised here."""
        fut: asyncio.Future[T] = self._loop.create_future()
        ctx = contextvars.copy_context()
        with self._lock:
            self._jobs.append((ctx, fn, fut))
            if self._idle >= len(self._jobs):
                self._cond.notify()
            elif self._threads < self.max_threads:
                self._threads += 1
                threading.Thread(target=self._work, name=f"{self.name}-{self._threads}",
                                 daemon=True).start()
        return await fut

    def _work(self) -> None:
        _claim_anyio_thread(self._token)
        lock, jobs = self._lock, self._jobs
        lock.acquire()
        try:
            while True:
                while not jobs:
                    self._idle += 1
                    woken = self._cond.wait(self.idle_timeout)
                    self._idle -= 1
                    if not woken and not jobs:
                        self._threads -= 1
                        return
                ctx, fn, fut = jobs.popleft()
                lock.release()
                try:
                    try:
                        result, error = ctx.run(fn), None
                    except BaseException as exc:
                        result, error = None, exc
                    with contextlib.suppress(RuntimeError):  # a closed loop: nobody waits
                        self._loop.call_soon_threadsafe(_deliver, fut, result, error)
                finally:
                    lock.acquire()
        finally:
            lock.release()


def _deliver(fut: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if fut.done():
        return  # the caller was cancelled: the result is dropped
    if error is None:
        fut.set_result(result)
    else:
        fut.set_exception(error)


def _claim_anyio_thread(token: anyio.lowlevel.EventLoopToken) -> None:
    """Make ``anyio.from_thread.run`` work without a token in this thread, as in an
    AnyIO worker thread (best effort: a private AnyIO detail)."""
    try:
        from anyio._core._eventloop import threadlocals
    except ImportError:  # pragma: no cover - a future AnyIO layout
        return
    threadlocals.current_token = token


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
