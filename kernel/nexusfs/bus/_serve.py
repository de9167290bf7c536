"""Read loops and request execution for :class:`~nexusfs.bus.connection.Connection`.

Two interchangeable strategies with the same contract:

* :class:`AnyioEngine` - portable (any anyio backend, any byte stream): a reader task
  awaits ``stream.receive()``; each request runs in the connection's task group under
  its own ``CancelScope`` (deadline = the frame's deadline).
* :class:`AsyncioEngine` - used on the asyncio backend when the stream wraps a real
  socket: a persistent ``loop.add_reader`` callback reads and dispatches frames without
  an extra task wake-up, and requests run as plain asyncio tasks (anyio's ``start_soon``
  costs several times more per request). Deadlines use ``loop.call_later`` and
  cancellation uses ``Task.cancel()``; handlers may still use anyio freely.

Contract (both): ``spawn_request`` starts a handler and answers it through
``Connection._reply``; a request cancelled by a ``cancel`` frame (``cancel_request``) is
not answered; one whose deadline passes is answered with ``deadline_exceeded``;
``shutdown()`` cancels every running handler; ``read()`` returns the close reason and
raises only :class:`FrameTooLarge`/:class:`ProtocolError` for bad input.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import socket
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import anyio
import anyio.abc

from nexusfs.bus._gate import WriteGate
from nexusfs.bus.protocol import (
    DeadlineExceeded,
    FrameDecoder,
    FrameTooLarge,
    ProtocolError,
    UnknownMethod,
    error_message,
)
from nexusfs.errors import ServiceUnavailable

if TYPE_CHECKING:
    from nexusfs.bus.connection import Connection

log = logging.getLogger("nexusfs.bus")

_RECV_SIZE = 262144
_HIGH_WATER = 4 * 1024 * 1024  # queued output bytes before senders wait


def _eof_reason(decoder: FrameDecoder, name: str) -> str:
    if decoder.pending:
        reason = f"truncated frame: peer closed with {decoder.pending} bytes of a frame"
        log.warning("%s: closing connection: %s", name, reason)
        return reason
    return "peer closed the connection"


async def _invoke(conn: Connection, method: str, args: dict[str, Any]) -> Any:
    fn = conn._resolve(method)
    if fn is None:
        raise UnknownMethod(f"unknown method {method!r}")
    result = fn(**args)
    if inspect.isawaitable(result):
        result = await result
    return result


async def run_note(conn: Connection, method: str, args: dict[str, Any]) -> None:
    """Run a notification handler; failures are logged, never reported."""
    if conn._resolve(method) is None:
        log.debug("%s: notification for unknown method %r dropped", conn.name, method)
        return
    try:
        await _invoke(conn, method, args)
    except Exception:
        log.exception("%s: notification handler %r failed", conn.name, method)


class AnyioEngine:
    """Portable engine (see module docstring)."""

    def __init__(self, conn: Connection, tg: anyio.abc.TaskGroup) -> None:
        self._conn = conn
        self._tg = tg
        self._serving: dict[int, anyio.CancelScope] = {}
        self._gate = WriteGate()

    async def send(self, frame: bytes) -> None:
        conn = self._conn
        async with self._gate:
            if conn._closed:
                raise ServiceUnavailable(f"bus connection closed: {conn._close_reason}")
            try:
                await conn._stream.send(frame)
            except BaseException as exc:
                # A partial frame may be on the wire: the stream cannot be used any more.
                conn._shutdown(f"write failed: {type(exc).__name__}: {exc}")
                if isinstance(exc, (OSError, anyio.BrokenResourceError, anyio.ClosedResourceError)):
                    raise ServiceUnavailable(f"bus connection lost: {exc!r}") from exc
                raise

    async def read(self) -> str:
        conn = self._conn
        decoder = FrameDecoder(conn.max_frame_size)
        while True:
            try:
                data = await conn._stream.receive(_RECV_SIZE)
            except anyio.EndOfStream:
                return _eof_reason(decoder, conn.name)
            except (OSError, anyio.BrokenResourceError, anyio.ClosedResourceError) as exc:
                return f"read failed: {exc!r}"
            for msg in decoder.feed(data):
                conn._dispatch(msg)

    def spawn_request(self, rid: int, method: str, args: dict[str, Any], d: float | None) -> None:
        if rid in self._serving:
            raise ProtocolError(f"duplicate request id {rid}")
        scope = anyio.CancelScope()
        if d is not None:
            scope.deadline = anyio.current_time() + (d - time.time())
        self._serving[rid] = scope
        self._tg.start_soon(self._serve, rid, method, args, scope)

    def cancel_request(self, rid: int) -> None:
        scope = self._serving.pop(rid, None)
        if scope is not None:
            scope.cancel()

    def spawn_note(self, method: str, args: dict[str, Any]) -> None:
        self._tg.start_soon(run_note, self._conn, method, args)

    def shutdown(self) -> None:
        self._tg.cancel_scope.cancel()

    async def _serve(
        self, rid: int, method: str, args: dict[str, Any], scope: anyio.CancelScope
    ) -> None:
        reply: dict[str, Any]
        try:
            with scope:
                result = await _invoke(self._conn, method, args)
            if scope.cancelled_caught:
                reply = error_message(rid, DeadlineExceeded(f"{method}: deadline exceeded"))
            else:
                reply = {"t": "res", "id": rid, "r": result}
        except Exception as exc:
            reply = error_message(rid, exc)
        if self._serving.pop(rid, None) is not None:  # else cancelled by the peer
            await self._conn._reply(rid, reply)


class AsyncioEngine:
    """asyncio fast path (see module docstring)."""

    def __init__(self, conn: Connection, sock: socket.socket) -> None:
        self._conn = conn
        self._sock = sock
        self._loop = asyncio.get_running_loop()
        self._decoder = FrameDecoder(conn.max_frame_size)
        self._serving: dict[int, asyncio.Task[None]] = {}
        self._expired: set[int] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._done: asyncio.Future[str] = self._loop.create_future()
        self._fd = sock.fileno()
        self._shut = False
        self._out: list[bytes] = []
        self._out_size = 0
        self._flush_scheduled = False
        self._writer_on = False
        self._in_dispatch = False
        self._drained: anyio.Event | None = None

    async def read(self) -> str:
        self._loop.add_reader(self._fd, self._on_readable)
        try:
            return await self._done
        finally:
            self._loop.remove_reader(self._fd)
            await self._drain_tasks()

    def _finish(self, reason: str | BaseException) -> None:
        self._loop.remove_reader(self._fd)
        if not self._done.done():
            if isinstance(reason, BaseException):
                self._done.set_exception(reason)
            else:
                self._done.set_result(reason)

    def _on_readable(self) -> None:
        try:
            data = self._sock.recv(_RECV_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._finish(f"read failed: {exc!r}")
            return
        if not data:
            self._finish(_eof_reason(self._decoder, self._conn.name))
            return
        self._in_dispatch = True
        try:
            for msg in self._decoder.feed(data):
                self._conn._dispatch(msg)
        except (FrameTooLarge, ProtocolError) as exc:
            self._finish(exc)
        except Exception as exc:  # a bug, not the peer's fault: close, never crash
            log.exception("%s: internal error while dispatching", self._conn.name)
            self._finish(f"internal error: {exc!r}")
        finally:
            self._in_dispatch = False
        if self._out and not self._flush_scheduled:
            self._flush()  # answers of inline handlers leave in one write

    def _spawn(self, coro: Any) -> asyncio.Task[None]:
        task: asyncio.Task[None] = self._loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def spawn_request(self, rid: int, method: str, args: dict[str, Any], d: float | None) -> None:
        if rid in self._serving:
            raise ProtocolError(f"duplicate request id {rid}")
        fn = self._conn._resolve(method)
        if fn is not None and not inspect.iscoroutinefunction(fn):
            # Plain function: run it inline on the reader (no task, no timer).
            reply: dict[str, Any]
            try:
                result = fn(**args)
            except Exception as exc:
                reply = error_message(rid, exc)
            else:
                if inspect.isawaitable(result):
                    self._serving[rid] = self._spawn(self._serve(rid, method, result, d))
                    return
                reply = {"t": "res", "id": rid, "r": result}
            self._reply_nowait(rid, reply)
            return
        self._serving[rid] = self._spawn(self._serve(rid, method, args, d))

    def _reply_nowait(self, rid: int, reply: dict[str, Any]) -> None:
        if self._serving.get(rid) is None:
            self.write(self._conn._encode_reply(rid, reply))

    def cancel_request(self, rid: int) -> None:
        task = self._serving.pop(rid, None)
        if task is not None:
            task.cancel()

    # -- output: frames are queued whole and flushed once per loop iteration ------------

    async def send(self, frame: bytes) -> None:
        while self._out_size > _HIGH_WATER and not self._shut:
            if self._drained is None:
                self._drained = anyio.Event()
            await self._drained.wait()
        if self._shut:
            raise ServiceUnavailable(f"bus connection closed: {self._conn._close_reason}")
        self.write(frame)

    def write(self, frame: bytes) -> None:
        if self._shut:
            return
        self._out.append(frame)
        self._out_size += len(frame)
        if not (self._flush_scheduled or self._writer_on or self._in_dispatch):
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        if self._writer_on or not self._out or self._shut:
            return
        out = self._out
        data = out[0] if len(out) == 1 else b"".join(out)
        out.clear()
        try:
            n = self._sock.send(data)
        except (BlockingIOError, InterruptedError):
            n = 0
        except OSError as exc:
            self._out_size = 0
            self._conn._shutdown(f"write failed: {exc!r}")
            return
        self._out_size = len(data) - n
        if n < len(data):
            out.append(data[n:])
            self._writer_on = True
            self._loop.add_writer(self._fd, self._on_writable)
        if self._drained is not None and self._out_size <= _HIGH_WATER:
            self._drained.set()
            self._drained = None

    def _on_writable(self) -> None:
        self._writer_on = False
        self._loop.remove_writer(self._fd)
        self._flush()

    def spawn_note(self, method: str, args: dict[str, Any]) -> None:
        self._spawn(run_note(self._conn, method, args))

    def shutdown(self) -> None:
        if self._out and not self._writer_on and not self._shut:
            with contextlib.suppress(OSError):  # best effort: queued answers
                self._sock.send(b"".join(self._out))
        self._shut = True
        if self._writer_on:
            self._loop.remove_writer(self._fd)
        if self._drained is not None:
            self._drained.set()
        self._finish("closed")
        for task in list(self._tasks):
            task.cancel()

    async def _drain_tasks(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    def _expire(self, rid: int) -> None:
        task = self._serving.get(rid)
        if task is not None:
            self._expired.add(rid)
            task.cancel()

    async def _serve(
        self, rid: int, method: str, args: dict[str, Any] | Awaitable[Any], d: float | None
    ) -> None:
        timer: asyncio.TimerHandle | None = None
        if d is not None:
            timer = self._loop.call_later(max(d - time.time(), 0.0), self._expire, rid)
        reply: dict[str, Any]
        try:
            if isinstance(args, dict):
                result = await _invoke(self._conn, method, args)
            else:  # the awaitable returned by a plain-function handler
                result = await args
            reply = {"t": "res", "id": rid, "r": result}
        except asyncio.CancelledError:
            if self._shut or rid not in self._expired:
                self._serving.pop(rid, None)
                if self._shut:
                    raise
                return  # cancelled by the peer: nobody waits for an answer
            reply = error_message(rid, DeadlineExceeded(f"{method}: deadline exceeded"))
        except Exception as exc:
            reply = error_message(rid, exc)
        finally:
            if timer is not None:
                timer.cancel()
        self._expired.discard(rid)
        if self._serving.pop(rid, None) is not None:
            if not self._serving and self._out_size <= _HIGH_WATER and not self._shut:
                # Nothing else in flight, nothing to coalesce with: answer right now.
                self.write(self._conn._encode_reply(rid, reply))
                if not self._writer_on:
                    self._flush()
                return
            try:
                await self._conn._reply(rid, reply)
            except asyncio.CancelledError:
                if self._shut:
                    raise


Engine = AnyioEngine | AsyncioEngine
EngineFactory = Callable[[], Engine]
