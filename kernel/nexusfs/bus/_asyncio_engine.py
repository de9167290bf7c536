"""The asyncio fast path of :class:`~nexusfs.bus.connection.Connection`.

Used on the asyncio backend when the stream wraps a real socket. Every microsecond of a
local call is loop overhead, so this engine keeps the number of loop iterations and
objects per call at the minimum:

* Reading: the loop's own transport reads (in C, on uvloop) straight into one buffer
  the engine allocated once (``asyncio.BufferedProtocol``), and the protocol callback
  dispatches every complete frame (no reader task to wake). The transport owns a
  duplicate of the connection's socket descriptor; both are closed at shutdown.
* Serving: ``PLAIN`` handlers and ``INLINE`` coroutines (no ``await`` in their body, see
  :func:`~nexusfs.bus._serve.handler_kind`) run right in the read callback and their
  answers leave in the one write that ends it; a plain handler that returns a coroutine
  without ``await`` is finished the same way (by the engine's
  :func:`~nexusfs.bus._serve.inline_runner`). A read holding exactly one whole request
  (the common case of a lone caller) skips the generic dispatch: it is decoded, run and
  its answer handed to the transport at once (``_serve_read``). Other coroutines run as
  plain asyncio tasks (anyio's ``start_soon`` costs several times more); they may use
  anyio freely.
* Calling (:meth:`AsyncioEngine.call`): the caller waits on a bare loop future (no anyio
  event, no cancel scope); the answer is delivered by the read callback.
* Deadlines of calls and of served requests are kept in two
  :class:`~nexusfs.bus._deadlines.DeadlineQueue` (one loop timer each, not one per
  call); cancellation uses ``Task.cancel()``.
* Busy-polling (only on a connection created with ``busy_poll``, and only while no
  other call or served task is in progress on the event loop, see
  :class:`~nexusfs.bus._asyncio_loop.LoopWork`):
  after a read callback wrote answers, the engine polls its socket for the peer's next
  request for up to that window before it returns to the loop, and serves it on the
  spot; a call polls for its answer before it awaits it. Either skips the loop's sleep
  and wake-up (see :mod:`~nexusfs.bus._busy_poll`; adaptive, and never more than
  ``_POLL_BUDGET`` of serving per callback). Bookkeeping that the peer need not wait
  for (the policy's observations) is done after the answer or the next call left.
* Writing: frames are queued whole and handed to the transport once per loop iteration
  or read callback (pipelined calls and answers coalesce), a long burst in chunks of
  ``_CHUNK_FRAMES`` frames so that the peer works on one chunk while this side builds
  the next; a call or answer with nothing else in flight is written at once, saving a
  loop iteration. The transport writes what the socket
  takes and buffers the rest; above 4 MiB (queued here or buffered there) senders wait
  (backpressure).

Semantics are those of the :mod:`~nexusfs.bus.connection` docstring: a call whose
deadline passes raises :class:`DeadlineExceeded` and sends a ``cancel``; so does a call
cancelled from outside (anyio/asyncio cancellation); a served request cancelled by the
peer is not answered, one whose deadline passes is answered ``deadline_exceeded``;
connection loss fails every pending call with ``ServiceUnavailable`` and cancels every
running handler.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import socket
import time
import types
from collections.abc import Awaitable, Callable, Mapping
from socket import MSG_DONTWAIT
from time import perf_counter
from typing import TYPE_CHECKING, Any, Final

from msgpack import unpackb as _unpackb

from nexusfs.bus._asyncio_loop import EngineProtocol, work_of
from nexusfs.bus._busy_poll import BusyPoll
from nexusfs.bus._deadlines import DeadlineQueue
from nexusfs.bus._serve import (
    INLINE,
    TASK,
    eof_reason,
    inline_runner,
    never_suspends,
    run_inline,
)
from nexusfs.bus.protocol import (
    HEADER,
    DeadlineExceeded,
    FrameDecoder,
    FramePacker,
    FrameTooLarge,
    ProtocolError,
    UnknownMethod,
    check_message,
    error_from_wire,
    error_message,
)
from nexusfs.errors import ServiceUnavailable

if TYPE_CHECKING:
    from nexusfs.bus.connection import Connection

__all__ = ["AsyncioEngine"]

log = logging.getLogger("nexusfs.bus")

_unpack_header = HEADER.unpack_from
_RECV_SIZE: Final = 262144
#: Longest a read callback keeps serving requests caught by busy-polling before it
#: returns to the event loop (so other connections, timers and tasks wait at most this).
_POLL_BUDGET: Final = 0.001
_HIGH_WATER: Final = 4 * 1024 * 1024  # queued output bytes before senders wait
#: Bursts of frames (pipelined calls issued in one pass of the loop, the answers to one
#: read) leave in chunks of this many frames or bytes, not in one write at the end: the
#: peer starts on the first chunk while this side builds the next, so on two cores the
#: two processes work at once instead of taking turns (see ``bench_services``).
_CHUNK_FRAMES: Final = 16
_CHUNK_BYTES: Final = 65536
#: Result types that are certainly not awaitable (skips ``inspect.isawaitable``).
_WIRE_TYPES: Final = frozenset({dict, list, str, bytes, int, float, bool, type(None)})


#: ``AsyncioEngine._poll_answer``: the answer did not come while polling.
_NO_ANSWER: Final = object()


class _CallExpired(DeadlineExceeded):
    """Set on a call's future when its deadline passes (re-raised with the method)."""


class AsyncioEngine:
    """asyncio fast path (see the module docstring)."""

    def __init__(self, conn: Connection, sock: socket.socket) -> None:
        self._conn = conn
        self._sock = sock
        self._loop = asyncio.get_running_loop()
        self._work = work_of(self._loop)
        self._decoder = FrameDecoder(conn.max_frame_size)
        self._packer = FramePacker(conn.max_frame_size)
        self._max_frame = conn.max_frame_size
        self._calls: dict[int, asyncio.Future[Any]] = {}
        self._serving: dict[int, asyncio.Task[None]] = {}
        self._expired: set[asyncio.Task[None]] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._call_deadlines = DeadlineQueue(self._loop, self._call_due, self._call_live)
        self._serve_deadlines = DeadlineQueue(self._loop, self._serve_due, self._serve_live)
        self._done: asyncio.Future[str] = self._loop.create_future()
        self._rbuf = bytearray(_RECV_SIZE)
        self._rview = memoryview(self._rbuf)
        self._transport: asyncio.Transport | None = None
        self._shut = False
        self._out: list[bytes] = []
        self._out_size = 0
        self._flush_scheduled = False
        self._writes = 0  # writes handed to the transport so far
        self._paused = False  # the transport's buffer is above its high-water mark
        self._in_dispatch = False
        self._drained: asyncio.Event | None = None
        self._busy_poll = BusyPoll(conn.busy_poll)  # for the peer's next request
        self._answer_poll = BusyPoll(conn.busy_poll)  # for the answer to our own call
        self._answered_at = 0.0  # start of a poll that timed out, 0: none
        self._unobserved = 0.0  # a polled answer's wait, not yet observed
        self._run_inline = inline_runner()  # for handlers that cannot suspend

    async def open(self) -> None:
        """Attach the loop's transport to (a duplicate of) the socket. Must complete
        before the engine is used; ``OSError`` if the loop cannot take the socket."""
        dup = self._sock.dup()
        try:
            transport, _ = await self._loop.connect_accepted_socket(
                lambda: EngineProtocol(self), sock=dup)
        except BaseException:
            dup.close()
            raise
        self._transport = transport  # (connection_made set it already)

    # -- reading ------------------------------------------------------------------------

    async def read(self) -> str:
        try:
            return await self._done
        finally:
            await self._drain_tasks()

    def _attach(self, transport: asyncio.Transport) -> None:
        """The loop's transport for this engine's socket (before anything arrives:
        answers written while dispatching need it)."""
        transport.set_write_buffer_limits(high=_HIGH_WATER)
        self._transport = transport

    def _eof(self) -> None:
        """The peer closed the connection (a frame cut short is reported)."""
        self._finish(eof_reason(self._decoder, self._conn.name))

    def _finish(self, reason: str | BaseException) -> None:
        if not self._done.done():
            if isinstance(reason, BaseException):
                self._done.set_exception(reason)
            else:
                self._done.set_result(reason)

    def _received(self, n: int) -> None:
        """``n`` bytes arrived in the receive buffer (``EngineProtocol.buffer_updated``)."""
        answered = self._answered_at
        if answered:  # the first frame after a poll that timed out: the whole wait
            self._answered_at = 0.0
            self._busy_poll.observe(perf_counter() - answered)
        if self._serve_read(n) and self._busy_poll.limit and self._work.idle(0) and (
                self._busy_poll.should_poll()):
            self._poll_next()

    def _poll_read(self, until: float) -> int:
        """Poll the engine's own descriptor of the socket (``recv`` without blocking)
        into the receive buffer until data arrives or ``perf_counter()`` reaches
        ``until``. Returns the number of bytes read, 0 if none came in time, or -1 if
        the connection ended (end of stream or a read error: the engine is finished).
        The transport never sees these bytes: the caller consumes them in full."""
        sock, view = self._sock, self._rview
        while True:
            try:
                n = sock.recv_into(view, 0, MSG_DONTWAIT)
            except (BlockingIOError, InterruptedError):
                if perf_counter() < until:
                    continue
                return 0
            except OSError as exc:
                self._finish(f"read failed: {exc!r}")
                return -1
            if n == 0:
                self._eof()
                return -1
            return n

    def _poll_next(self) -> None:
        """Answers just left: poll the socket for the peer's next frame for up to the
        busy-poll window (see :mod:`~nexusfs.bus._busy_poll`), and serve what arrives
        right here, as long as that writes answers again, for at most ``_POLL_BUDGET``
        in all (then the loop runs other work)."""
        poll = self._busy_poll
        answered = perf_counter()
        budget_end = answered + _POLL_BUDGET
        while True:
            n = self._poll_read(answered + poll.limit)
            if n == 0:
                self._answered_at = answered  # the next read observes the whole gap
                return
            now = perf_counter()
            if n < 0:
                return
            wrote = self._serve_read(n)
            poll.observe(now - answered)  # (after the answer left: the peer waits for it)
            if not wrote or self._done.done():
                return  # (no answer written: the peer is not waiting for us)
            if now >= budget_end or not self._work.idle(0) or not poll.should_poll():
                return
            answered = perf_counter()

    def _on_data(self, n: int) -> bool:
        """Serve the ``n`` bytes at the start of the receive buffer; whether answers (or
        other frames) were written at once."""
        if self._shut or self._done.done():  # closing (e.g. after a protocol error)
            return False
        return self._guarded(self._feed, n)

    def _feed(self, n: int) -> None:
        decoder = self._decoder
        if decoder.pending:  # the rest of a frame begun in an earlier read
            for msg in decoder.feed(self._rbuf[:n]):
                if self._shut:
                    break
                self._dispatch(msg)
        else:
            self._dispatch_frames(self._rbuf, n)

    def _guarded(self, serve: Callable[[Any], None], arg: Any) -> bool:
        """Run ``serve(arg)`` as a read callback's dispatch: answers it produces are
        queued and leave in one write at the end; a bad frame (:class:`FrameTooLarge`,
        :class:`ProtocolError`) or an internal error finishes the engine, never the
        process. Whether anything was written."""
        writes = self._writes
        self._in_dispatch = True
        try:
            serve(arg)
        except (FrameTooLarge, ProtocolError) as exc:
            self._finish(exc)
        except Exception as exc:
            self._internal_error(exc)
        finally:
            self._in_dispatch = False
        if self._out and not self._flush_scheduled:
            self._write_out()  # every answer of this read leaves in one write
            return True
        return self._writes != writes

    def _serve_read(self, n: int) -> bool:
        """Serve the ``n`` bytes a read put at the start of the receive buffer (by the
        transport or by busy-polling); whether answers were written. The common case, a
        read holding exactly one whole request, is decoded here and its answer handed to
        the transport as soon as the handler returns (nothing else is queued then);
        every other read goes through ``_on_data``. (Each step between the read and the
        answer's write delays the peer, which waits.)"""
        rbuf = self._rbuf
        if n <= 4 or self._out or self._shut or self._decoder.pending or self._done.done():
            return self._on_data(n)
        (size,) = _unpack_header(rbuf, 0)
        if size + 4 != n or size > self._max_frame:
            return self._on_data(n)
        try:
            msg = _unpackb(rbuf[4:n], raw=False, strict_map_key=False)
        except Exception:
            return self._on_data(n)  # (reports the undecodable frame)
        if type(msg) is dict and msg.get("t") == "req":  # (check_message, inlined)
            rid, m, a, d = msg.get("id"), msg.get("m"), msg.get("a"), msg.get("d", 0)
            if (type(rid) is int and type(m) is str and type(a) is dict
                    and (d is None or type(d) is float or type(d) is int)
                    and "d" in msg and rid not in self._serving):
                try:
                    frame = self._answer_now(rid, m, a, d)
                except Exception as exc:
                    self._internal_error(exc)
                    return False
                if self._out:  # frames the handler queued: they leave first
                    if frame is not None:
                        self._out.append(frame)
                    self._write_out()
                    return True
                if frame is None or self._shut:
                    return False  # (a task answers; or the handler closed the connection)
                transport = self._transport
                assert transport is not None, "AsyncioEngine.open() was not awaited"
                transport.write(frame)
                self._writes += 1
                return True
        return self._guarded(self._dispatch_one, msg)

    def _dispatch_one(self, msg: Any) -> None:
        self._dispatch(check_message(msg))

    def _internal_error(self, exc: Exception) -> None:
        """A bug while dispatching, not the peer's fault: close, never crash."""
        log.exception("%s: internal error while dispatching", self._conn.name)
        self._finish(f"internal error: {exc!r}")

    def _dispatch_frames(self, rbuf: bytearray, n: int) -> None:
        """Split, decode and dispatch the whole frames in ``rbuf[:n]`` (the hot path:
        :class:`FrameDecoder` and :func:`check_message` inlined for requests and
        answers); a trailing partial frame goes to the decoder, which also raises
        :class:`FrameTooLarge` for an oversized header."""
        pos = 0
        limit = self._max_frame
        calls = self._calls
        while n - pos >= 4:
            (size,) = _unpack_header(rbuf, pos)
            stop = pos + 4 + size
            if stop > n or size > limit:
                break
            try:
                msg = _unpackb(rbuf[pos + 4 : stop], raw=False, strict_map_key=False)
            except Exception as exc:
                raise ProtocolError(
                    f"undecodable frame body: {type(exc).__name__}: {exc}") from None
            pos = stop
            if self._shut:
                return
            if type(msg) is dict:
                t = msg.get("t")
                if t == "res":
                    rid = msg.get("id")
                    if type(rid) is int and "r" in msg:
                        fut = calls.pop(rid, None)
                        if fut is not None and not fut.done():
                            fut.set_result(msg["r"])
                        continue
                elif t == "req":
                    rid, m, a, d = msg.get("id"), msg.get("m"), msg.get("a"), msg.get("d", 0)
                    if (type(rid) is int and type(m) is str and type(a) is dict
                            and (d is None or type(d) is float or type(d) is int)
                            and "d" in msg):
                        self.spawn_request(rid, m, a, d)
                        continue
            self._dispatch(check_message(msg))
        if pos < n:
            self._decoder.feed(rbuf[pos:n])  # an incomplete frame: nothing to return yet

    def _dispatch(self, msg: dict[str, Any]) -> None:
        t = msg["t"]
        if t == "res" or t == "err":
            self._answer(msg)
        elif t == "req":
            self.spawn_request(msg["id"], msg["m"], msg["a"], msg["d"])
        elif t == "cancel":
            self.cancel_request(msg["id"])
        else:  # note
            self.spawn_note(msg["m"], msg["a"])

    # -- calling ------------------------------------------------------------------------

    async def call(self, method: str, args: Mapping[str, Any] | None, d: float | None) -> Any:
        """One call to the peer (``Connection.request`` semantics; ``d`` is the resolved
        absolute deadline or ``None``)."""
        if self._shut:
            raise ServiceUnavailable(f"bus connection closed: {self._conn._close_reason}")
        rid = next(self._conn._ids)
        a = {} if not args else args if type(args) is dict else dict(args)
        frame = self._packer.frame({"t": "req", "id": rid, "m": method, "a": a, "d": d})
        if d is not None and d <= time.time():
            raise DeadlineExceeded(f"{method}: deadline already passed")
        if self._paused or self._out_size > _HIGH_WATER:
            await self._wait_drained()
        calls = self._calls
        work = self._work
        work.calls += 1
        try:
            t0 = 0.0
            if not calls and not self._out and not self._in_dispatch:
                self._send_now(frame)  # the only call in flight: nothing to coalesce with
                poll = self._answer_poll
                if self._unobserved:  # (now, while the peer works: see below)
                    poll.observe(self._unobserved)
                    self._unobserved = 0.0
                if (poll.limit and work.calls == 1 and work.tasks <= 1
                        and poll.should_poll()):
                    t0 = perf_counter()
                    result = self._poll_answer(rid, t0, d)  # (never past the deadline)
                    if result is not _NO_ANSWER:
                        # Observed after the next call's send: the caller waits for
                        # this result, the peer is idle until that next call.
                        self._unobserved = perf_counter() - t0
                        return result
                fut = calls.get(rid)  # (made if polling dispatched other frames)
                if fut is None:
                    fut = calls[rid] = self._loop.create_future()
                if d is not None:
                    self._call_deadlines.add(d, rid, fut)
            else:  # pipelined: one write per loop iteration (the write() path, inlined)
                fut = calls[rid] = self._loop.create_future()
                if d is not None:
                    self._call_deadlines.add(d, rid, fut)
                out = self._out
                out.append(frame)
                self._out_size += len(frame)
                if len(out) >= _CHUNK_FRAMES or self._out_size >= _CHUNK_BYTES:
                    self._write_out()  # (also mid-dispatch: a chunk, see _CHUNK_FRAMES)
                elif not (self._flush_scheduled or self._in_dispatch):
                    self._flush_scheduled = True
                    self._loop.call_soon(self._flush)
            result = await fut
            if t0:
                self._answer_poll.observe(perf_counter() - t0)
            return result
        except _CallExpired:
            raise DeadlineExceeded(f"{method}: deadline exceeded") from None
        finally:
            work.calls -= 1
            if calls.pop(rid, None) is not None:  # given up (cancelled): tell the peer
                self._send_cancel(rid)

    def _poll_answer(self, rid: int, t0: float, d: float | None) -> Any:
        """The only call in flight (``rid``, already sent) and no other work in progress
        on this loop: poll the socket for its answer for up to the busy-poll window (or
        the call's deadline ``d``, if sooner) before the caller awaits it. Returns the
        answer's result, or ``_NO_ANSWER`` if it did not come in time (the caller then
        awaits ``self._calls[rid]``, made here if other frames arrived); raises the
        call's error if an error answer came.

        The common case, a read holding exactly this call's ``res`` frame, is decoded
        here and needs no future; any other read is dispatched as the transport would
        (``_on_data``), with the call's future registered first so that an answer among
        the frames reaches it."""
        until = t0 + self._answer_poll.limit
        if d is not None:
            until = min(until, t0 + (d - time.time()))
        rbuf, calls = self._rbuf, self._calls
        while True:
            n = self._poll_read(until)
            if n <= 0:
                return _NO_ANSWER
            if n > 4 and not self._decoder.pending:
                (size,) = _unpack_header(rbuf, 0)
                if size + 4 == n and size <= self._max_frame:
                    try:
                        msg = _unpackb(rbuf[4:n], raw=False, strict_map_key=False)
                    except Exception:
                        msg = None  # (undecodable: _on_data reports it)
                    if (type(msg) is dict and msg.get("t") == "res" and "r" in msg
                            and type(msg.get("id")) is int and msg["id"] == rid):
                        calls.pop(rid, None)  # (a future made by an earlier read)
                        return msg["r"]
            fut = calls.get(rid)
            if fut is None:
                fut = calls[rid] = self._loop.create_future()
            self._on_data(n)
            if fut.done():  # (popped from the calls by _answer)
                return fut.result()
            if self._done.done():
                return _NO_ANSWER

    def _answer(self, msg: dict[str, Any]) -> None:
        fut = self._calls.pop(msg["id"], None)
        if fut is None or fut.done():
            return  # late answer to a call that gave up
        if msg["t"] == "res":
            fut.set_result(msg["r"])
        else:
            x = msg.get("x")
            fut.set_exception(error_from_wire(
                msg["c"], msg["msg"], msg.get("p"), x if isinstance(x, dict) else None))

    def _call_live(self, rid: int, fut: object) -> bool:
        return self._calls.get(rid) is fut

    def _call_due(self, rid: int, fut: object) -> None:
        del self._calls[rid]
        assert isinstance(fut, asyncio.Future)
        if not fut.done():
            fut.set_exception(_CallExpired("deadline exceeded"))
        self._send_cancel(rid)

    def _send_cancel(self, rid: int) -> None:
        if not self._shut:
            self.write(self._packer.frame({"t": "cancel", "id": rid}))

    # -- serving ------------------------------------------------------------------------

    def spawn_request(self, rid: int, method: str, args: dict[str, Any], d: float | None) -> None:
        if rid in self._serving:
            raise ProtocolError(f"duplicate request id {rid}")
        frame = self._answer_now(rid, method, args, d)
        if frame is None:
            return
        if self._in_dispatch:  # the common case: written at the end of the read callback
            out = self._out
            out.append(frame)
            self._out_size += len(frame)
            if len(out) >= _CHUNK_FRAMES or self._out_size >= _CHUNK_BYTES:
                self._write_out()  # a chunk of a long burst leaves now
        else:
            self.write(frame)

    def _answer_now(self, rid: int, method: str, args: dict[str, Any],
                    d: float | None) -> bytes | None:
        """Run the handler of request ``rid`` if it cannot suspend (``PLAIN``,
        ``INLINE``) and return its answer frame (a handler's exception becomes an error
        answer); start a task for it otherwise (``TASK``, or a plain handler's awaitable
        that may suspend) and return ``None``: the task answers."""
        conn = self._conn
        fn, kind = conn._resolved.get(method) or conn._handler(method)
        reply: dict[str, Any]
        if fn is None:
            reply = error_message(rid, UnknownMethod(f"unknown method {method!r}"))
        elif kind == TASK:
            self._start(rid, method, fn, args, None, d)
            return None
        else:
            try:
                result = fn(**args)
                if kind == INLINE:
                    result = self._run_inline(result)
                elif type(result) not in _WIRE_TYPES and inspect.isawaitable(result):
                    if type(result) is types.CoroutineType and never_suspends(result.cr_code):
                        result = self._run_inline(result)
                    else:
                        self._start(rid, method, None, None, result, d)
                        return None
            except Exception as exc:
                self._run_inline = inline_runner()  # (an exception from it spends it)
                reply = error_message(rid, exc)
            except BaseException:
                self._run_inline = inline_runner()
                raise
            else:
                reply = {"t": "res", "id": rid, "r": result}
        return self._encode_reply(rid, reply)

    def _start(self, rid: int, method: str, fn: Callable[..., Any] | None,
               args: dict[str, Any] | None, work: Awaitable[Any] | None,
               d: float | None) -> None:
        task = self._loop.create_task(self._serve(rid, method, fn, args, work))
        self._serving[rid] = task
        self._tasks.add(task)
        self._work.tasks += 1
        task.add_done_callback(self._work.task_done)  # (also when cancelled before it ran)
        if d is not None:
            self._serve_deadlines.add(d, rid, task)

    def cancel_request(self, rid: int) -> None:
        task = self._serving.pop(rid, None)
        if task is not None:
            task.cancel()

    def _serve_live(self, rid: int, task: object) -> bool:
        return self._serving.get(rid) is task

    def _serve_due(self, rid: int, task: object) -> None:
        assert isinstance(task, asyncio.Task)
        self._expired.add(task)
        task.cancel()

    async def _serve(self, rid: int, method: str, fn: Callable[..., Any] | None,
                     args: dict[str, Any] | None, work: Awaitable[Any] | None) -> None:
        me = asyncio.current_task()
        assert me is not None
        try:
            reply: dict[str, Any]
            try:
                if work is None:
                    assert fn is not None and args is not None
                    work = fn(**args)
                result = await work
                reply = {"t": "res", "id": rid, "r": result}
            except asyncio.CancelledError:
                if self._shut or me not in self._expired:
                    if self._serving.get(rid) is me:
                        del self._serving[rid]
                    if self._shut:
                        raise
                    return  # cancelled by the peer: nobody waits for an answer
                reply = error_message(rid, DeadlineExceeded(f"{method}: deadline exceeded"))
            except Exception as exc:
                reply = error_message(rid, exc)
            if self._serving.get(rid) is not me:
                return  # cancelled by the peer meanwhile
            del self._serving[rid]
            frame = self._encode_reply(rid, reply)
            if self._out_size > _HIGH_WATER:
                try:
                    await self._wait_drained()
                except ServiceUnavailable:
                    return
            # Nothing else in flight: nothing to coalesce with, write right now.
            self.write(frame, urgent=not self._serving)
        finally:
            self._expired.discard(me)
            self._tasks.discard(me)

    def spawn_note(self, method: str, args: dict[str, Any]) -> None:
        """Run a notification handler (inline when it cannot suspend, else in a task);
        failures are logged, never reported."""
        fn, kind = self._conn._handler(method)
        if fn is None:
            log.debug("%s: notification for unknown method %r dropped", self._conn.name, method)
            return
        work: Any = None
        try:
            if kind == TASK:
                work = fn(**args)
            else:
                result = fn(**args)
                if kind == INLINE:
                    run_inline(result)
                elif type(result) not in _WIRE_TYPES and inspect.isawaitable(result):
                    work = result
        except Exception:
            log.exception("%s: notification handler %r failed", self._conn.name, method)
            return
        if work is not None:
            task = self._loop.create_task(self._note(method, work))
            self._tasks.add(task)

    async def _note(self, method: str, work: Awaitable[Any]) -> None:
        try:
            await work
        except Exception:
            log.exception("%s: notification handler %r failed", self._conn.name, method)
        finally:
            task = asyncio.current_task()
            if task is not None:
                self._tasks.discard(task)

    def _encode_reply(self, rid: int, reply: dict[str, Any]) -> bytes:
        """The answer frame; an unencodable or oversized result becomes an error."""
        try:
            return self._packer.frame(reply)
        except FrameTooLarge as exc:
            return self._packer.frame(error_message(rid, exc))
        except Exception as exc:
            return self._packer.frame(error_message(rid, TypeError(f"unencodable result: {exc}")))

    # -- output: frames are queued whole and flushed once per loop iteration ------------

    async def send(self, frame: bytes) -> None:
        """Queue one whole frame, waiting while too much output is queued;
        ServiceUnavailable once the connection is closed."""
        if self._paused or self._out_size > _HIGH_WATER:
            await self._wait_drained()
        if self._shut:
            raise ServiceUnavailable(f"bus connection closed: {self._conn._close_reason}")
        self.write(frame)

    async def _wait_drained(self) -> None:
        while (self._paused or self._out_size > _HIGH_WATER) and not self._shut:
            if self._drained is None:
                self._drained = asyncio.Event()
            await self._drained.wait()
        if self._shut:
            raise ServiceUnavailable(f"bus connection closed: {self._conn._close_reason}")

    def _wake_senders(self) -> None:
        if self._drained is not None and not self._paused and self._out_size <= _HIGH_WATER:
            self._drained.set()
            self._drained = None

    def write(self, frame: bytes, *, urgent: bool = False) -> None:
        """Queue ``frame``; written at the end of the current read callback, at once when
        ``urgent`` or when a chunk is full, else on the next loop iteration."""
        if self._shut:
            return
        out = self._out
        out.append(frame)
        self._out_size += len(frame)
        if len(out) >= _CHUNK_FRAMES or self._out_size >= _CHUNK_BYTES:
            self._write_out()
        elif self._in_dispatch:
            return
        elif urgent:
            self._flush()
        elif not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    def _send_now(self, frame: bytes) -> None:
        """Hand ``frame`` to the transport at once (nothing may be queued here)."""
        transport = self._transport
        assert transport is not None, "AsyncioEngine.open() was not awaited"
        transport.write(frame)

    def _flush(self) -> None:
        self._flush_scheduled = False
        self._write_out()

    def _write_out(self) -> None:
        """Hand everything queued to the transport in one write."""
        if not self._out or self._shut:
            return
        out = self._out
        data = out[0] if len(out) == 1 else b"".join(out)
        out.clear()
        self._out_size = 0
        transport = self._transport
        assert transport is not None, "AsyncioEngine.open() was not awaited"
        transport.write(data)
        self._writes += 1
        if self._drained is not None:
            self._wake_senders()

    def _pause_writing(self) -> None:
        self._paused = True

    def _resume_writing(self) -> None:
        self._paused = False
        self._wake_senders()

    # -- shutdown -----------------------------------------------------------------------

    def shutdown(self) -> None:
        transport = self._transport
        if self._out and not self._shut and transport is not None:
            with contextlib.suppress(Exception):  # best effort: queued answers
                transport.write(b"".join(self._out))
        self._shut = True
        self._out.clear()
        self._out_size = 0
        if transport is not None:
            transport.abort()  # (what the socket did not take is discarded)
        if self._drained is not None:
            self._drained.set()
        self._finish("closed")
        self._call_deadlines.close()
        self._serve_deadlines.close()
        calls = list(self._calls.values())
        self._calls.clear()
        for fut in calls:
            if not fut.done():
                fut.set_exception(
                    ServiceUnavailable(f"bus connection lost: {self._conn._close_reason}"))
        for task in list(self._tasks):
            task.cancel()

    async def _drain_tasks(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
