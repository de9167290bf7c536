"""Symmetric async bus peer over an anyio byte stream.

Both ends of a :class:`Connection` are equal: each can ``await conn.call(...)`` and each
serves the peer's requests from its handler registry, so kernel->service and
service->kernel calls share one socket.

Invariants and failure semantics:

* Pipelining: any number of calls may be outstanding; responses are matched by id and
  may arrive in any order. The reader never awaits a handler: a handler that cannot
  suspend (a plain function, or an ``async def`` without ``await``) is run to completion
  as its request is read; any other runs in a task of its own, so a slow handler never
  holds up the others. Such inline handlers must therefore not block (a plain handler
  that does blocks the whole connection) and must not rely on running in a task of
  their own (``asyncio.current_task()``).
* Deadlines: a call's deadline (absolute ``time.time()`` seconds) travels in the frame.
  When it passes the caller raises :class:`DeadlineExceeded` and sends a ``cancel``; the
  serving side cancels the handler when the cancel arrives *or* its own copy of the
  deadline passes (whichever is first). A handler cancelled by a cancel frame is not
  answered; one cancelled by its deadline is answered with ``deadline_exceeded``.
* Connection loss (EOF, reset, a protocol error, ``aclose()``) fails every pending call
  at once with :class:`~nexusfs.errors.ServiceUnavailable`, cancels running handlers,
  and makes later calls fail immediately with the same error.
* A frame is written whole or the connection is closed: a write interrupted half-way
  (cancellation, error) would desynchronise the stream, so it closes the connection.
* Malformed input (bad msgpack, truncated frame, oversized frame, bad fields) closes the
  connection with a logged reason; it never raises out of :meth:`Connection.run`.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import math
import time
from collections.abc import Callable, Coroutine, Mapping
from types import TracebackType
from typing import Any, Self

import anyio
import anyio.abc
from anyio.abc import SocketAttribute

from nexusfs.bus._asyncio_engine import AsyncioEngine
from nexusfs.bus._serve import AnyioEngine, handler_kind
from nexusfs.bus.protocol import (
    DEFAULT_MAX_FRAME_SIZE,
    DeadlineExceeded,
    FrameTooLarge,
    ProtocolError,
    encode_frame,
    error_from_wire,
    error_message,
    resolve_deadline,
)
from nexusfs.errors import NexusError, ServiceUnavailable

__all__ = ["Connection", "Handlers"]

log = logging.getLogger("nexusfs.bus")

#: A handler registry: a mapping ``name -> callable`` or any object whose public
#: (not ``_``-prefixed) methods are the handlers. Handlers take the request's args as
#: keyword arguments and may be ``async`` (preferred) or plain functions.
Handlers = Mapping[str, Callable[..., Any]] | object | None

_CANCEL_SEND_TIMEOUT = 1.0

Engine = AnyioEngine | AsyncioEngine


class _Waiter:
    __slots__ = ("done", "error", "event", "result")

    def __init__(self) -> None:
        self.event = anyio.Event()
        self.done = False
        self.result: Any = None
        self.error: BaseException | None = None


class Connection:
    """One bus connection; see the module docstring for the semantics.

    Use ``async with Connection(stream, handlers) as conn:`` (runs the connection in a
    background task until the block exits) or ``await conn.run()`` (serves until the
    connection closes). ``default_timeout`` (seconds) applies to calls that give neither
    ``deadline`` nor ``timeout``. ``portable=True`` forces the backend-neutral engine
    (the asyncio fast path is otherwise used when the stream wraps a socket).
    ``busy_poll`` (seconds, default 0: off; asyncio fast path only) makes the connection
    poll for the peer's next request for up to that long after it wrote answers, instead
    of returning to the event loop at once: lower latency for a peer that calls in a
    tight loop, at the price of blocking the loop (adaptively, and at most 1 ms per read)
    and of CPU time. For connections that have their event loop to themselves, such as
    a service worker's connection to the kernel (see :mod:`~nexusfs.bus._busy_poll`).
    """

    def __init__(
        self,
        stream: anyio.abc.ByteStream,
        handlers: Handlers = None,
        *,
        max_frame_size: int = DEFAULT_MAX_FRAME_SIZE,
        default_timeout: float | None = None,
        name: str = "bus",
        portable: bool = False,
        busy_poll: float = 0.0,
    ) -> None:
        self._stream = stream
        self._handlers: Handlers = handlers
        self._resolved: dict[str, tuple[Callable[..., Any] | None, int]] = {}
        self.max_frame_size = max_frame_size
        self.busy_poll = busy_poll
        self.default_timeout = default_timeout
        self.name = name
        self._ids = itertools.count(1)
        self._pending: dict[int, _Waiter] = {}
        self._ready = anyio.Event()
        self._raw = stream.extra(SocketAttribute.raw_socket, None)
        self._portable = portable
        self._closed = False
        self._close_reason = ""
        self._closed_event = anyio.Event()
        self._engine: Engine | None = None
        self._outer_tg: anyio.abc.TaskGroup | None = None

    # -- public API ---------------------------------------------------------------------

    @property
    def handlers(self) -> Handlers:
        return self._handlers

    @handlers.setter
    def handlers(self, handlers: Handlers) -> None:
        self._handlers = handlers
        self._resolved.clear()

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def close_reason(self) -> str:
        """Why the connection closed (empty while open)."""
        return self._close_reason

    async def wait_closed(self) -> None:
        await self._closed_event.wait()

    async def call(
        self,
        method: str,
        /,
        *,
        deadline: float | None = None,
        timeout: float | None = None,
        **args: Any,
    ) -> Any:
        """Call ``method(**args)`` on the peer and return its result.

        ``deadline`` is absolute (``time.time()`` seconds), ``timeout`` relative; the
        earliest of them (and ``default_timeout``) wins. Raises the handler's typed error,
        :class:`UnknownMethod`, :class:`DeadlineExceeded`, :class:`ServiceUnavailable` if
        the connection is or becomes closed, :class:`FrameTooLarge` if the request is too
        big (nothing sent). Use :meth:`request` for args named ``deadline``/``timeout``.
        """
        return await self.request(method, args, deadline=deadline, timeout=timeout)

    def request(
        self,
        method: str,
        args: Mapping[str, Any] | None = None,
        *,
        deadline: float | None = None,
        timeout: float | None = None,
    ) -> Coroutine[Any, Any, Any]:
        """Like :meth:`call` with the arguments as a mapping (a coroutine to await)."""
        engine = self._engine
        d = resolve_deadline(deadline, timeout, self.default_timeout)
        if type(engine) is AsyncioEngine:
            return engine.call(method, args, d)  # the hot path: one coroutine, not two
        return self._request(method, args, d)

    async def _request(self, method: str, args: Mapping[str, Any] | None,
                       d: float | None) -> Any:
        engine = self._engine
        if self._closed:
            raise ServiceUnavailable(f"bus connection closed: {self._close_reason}")
        if engine is None:  # run() has not created the engine yet
            with anyio.move_on_after(math.inf if d is None else d - time.time()):
                await self._ready.wait()
            engine = self._engine
            if type(engine) is AsyncioEngine:
                return await engine.call(method, args, d)
            if engine is None and not self._closed:
                raise DeadlineExceeded(f"{method}: deadline exceeded")
            if self._closed:
                raise ServiceUnavailable(f"bus connection closed: {self._close_reason}")
        rid = next(self._ids)
        frame = encode_frame(
            {"t": "req", "id": rid, "m": method, "a": dict(args) if args else {}, "d": d},
            self.max_frame_size,
        )
        w = _Waiter()
        self._pending[rid] = w
        sent = False
        try:
            if d is None:
                await self._send(frame)
                sent = True
                await w.event.wait()
            else:
                remaining = d - time.time()
                if remaining <= 0:
                    raise DeadlineExceeded(f"{method}: deadline already passed")
                with anyio.move_on_after(remaining):
                    await self._send(frame)
                    sent = True
                    await w.event.wait()
                if not w.done:
                    raise DeadlineExceeded(f"{method}: deadline exceeded")
        finally:
            if not w.done:
                self._pending.pop(rid, None)
                if sent and not self._closed:
                    await self._send_cancel(rid)
        if w.error is not None:
            raise w.error
        return w.result

    async def notify(self, method: str, /, **args: Any) -> None:
        """Send a one-way notification; the peer's handler result and errors are not
        reported back. Raises :class:`ServiceUnavailable` if closed."""
        await self._send(encode_frame({"t": "note", "m": method, "a": args}, self.max_frame_size))

    async def run(self) -> None:
        """Serve the connection until it closes (EOF, error, or :meth:`aclose`).

        Never raises for peer misbehaviour: the reason is logged and kept in
        :attr:`close_reason`. Running handlers are cancelled and the stream is closed
        before it returns.
        """
        reason = "closed"
        try:
            async with anyio.create_task_group() as tg:
                engine = self._make_engine(tg)
                if type(engine) is AsyncioEngine:
                    try:
                        await engine.open()
                    except OSError as exc:  # the loop cannot take the socket: portable
                        log.debug("%s: asyncio transport unavailable (%r)", self.name, exc)
                        engine = AnyioEngine(self, tg)
                self._engine = engine
                self._ready.set()
                try:
                    reason = self._close_reason if self._closed else await engine.read()
                except (FrameTooLarge, ProtocolError) as exc:
                    reason = f"{type(exc).__name__}: {exc}"
                    log.warning("%s: closing connection: %s", self.name, reason)
                finally:
                    self._shutdown(reason)
        finally:
            with anyio.CancelScope(shield=True), contextlib.suppress(Exception):
                await self._stream.aclose()
            self._closed_event.set()

    def _make_engine(self, tg: anyio.abc.TaskGroup) -> Engine:
        if self._raw is not None and not self._portable:
            try:
                asyncio.get_running_loop()
            except RuntimeError:
                pass  # not on the asyncio backend
            else:
                return AsyncioEngine(self, self._raw)
        return AnyioEngine(self, tg)

    async def aclose(self) -> None:
        """Close the connection: pending calls fail with ServiceUnavailable, running
        handlers are cancelled. Idempotent."""
        self._shutdown("closed locally")
        if self._engine is None:
            with anyio.CancelScope(shield=True):
                await self._stream.aclose()
            self._closed_event.set()

    async def __aenter__(self) -> Self:
        self._outer_tg = anyio.create_task_group()
        await self._outer_tg.__aenter__()
        self._outer_tg.start_soon(self.run)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        self._shutdown("closed locally")
        assert self._outer_tg is not None
        return await self._outer_tg.__aexit__(exc_type, exc, tb)

    # -- internals ----------------------------------------------------------------------

    def _shutdown(self, reason: str) -> None:
        if self._closed:
            return
        self._closed = True
        self._close_reason = reason
        log.debug("%s: connection closed: %s", self.name, reason)
        pending, self._pending = self._pending, {}
        for w in pending.values():
            w.error = ServiceUnavailable(f"bus connection lost: {reason}")
            w.done = True
            w.event.set()
        if self._engine is not None:
            self._engine.shutdown()
        self._ready.set()

    async def _send(self, frame: bytes) -> None:
        """Queue/write one whole frame through the engine; ServiceUnavailable if closed."""
        if self._closed:
            raise ServiceUnavailable(f"bus connection closed: {self._close_reason}")
        engine = self._engine
        if engine is None:  # run() has not created the engine yet
            await self._ready.wait()
            engine = self._engine
            if engine is None or self._closed:
                raise ServiceUnavailable(f"bus connection closed: {self._close_reason}")
        await engine.send(frame)

    async def _send_cancel(self, rid: int) -> None:
        with (
            anyio.CancelScope(shield=True),
            anyio.move_on_after(_CANCEL_SEND_TIMEOUT),
            contextlib.suppress(NexusError),
        ):
            await self._send(encode_frame({"t": "cancel", "id": rid}))

    def _dispatch(self, msg: dict[str, Any]) -> None:
        t = msg["t"]
        if t == "res" or t == "err":
            w = self._pending.pop(msg["id"], None)
            if w is None:
                return  # late answer to a call that gave up
            if t == "res":
                w.result = msg["r"]
            else:
                x = msg.get("x")
                w.error = error_from_wire(
                    msg["c"], msg["msg"], msg.get("p"), x if isinstance(x, dict) else None
                )
            w.done = True
            w.event.set()
            return
        engine = self._engine
        if engine is None or self._closed:
            return
        if t == "req":
            engine.spawn_request(msg["id"], msg["m"], msg["a"], msg["d"])
        elif t == "cancel":
            engine.cancel_request(msg["id"])
        else:  # note
            engine.spawn_note(msg["m"], msg["a"])

    def _resolve(self, name: str) -> Callable[..., Any] | None:
        return self._handler(name)[0]

    def _handler(self, name: str) -> tuple[Callable[..., Any] | None, int]:
        """The handler of ``name`` (``None`` if there is none) and its kind
        (:func:`~nexusfs.bus._serve.handler_kind`), cached per name."""
        try:
            return self._resolved[name]
        except KeyError:
            pass
        h = self._handlers
        fn: Any = None
        if isinstance(h, Mapping):
            fn = h.get(name)
        elif h is not None and not name.startswith("_"):
            fn = getattr(h, name, None)
        if not callable(fn):
            fn = None
        entry = (fn, handler_kind(fn) if fn is not None else 0)
        if len(self._resolved) < 4096:
            self._resolved[name] = entry
        return entry

    async def _reply(self, rid: int, reply: dict[str, Any]) -> None:
        """Send a handler's answer; an unencodable or oversized result becomes an error
        answer. A lost connection is ignored (the caller already saw it)."""
        with contextlib.suppress(NexusError):
            await self._send(self._encode_reply(rid, reply))

    def _encode_reply(self, rid: int, reply: dict[str, Any]) -> bytes:
        try:
            return encode_frame(reply, self.max_frame_size)
        except FrameTooLarge as exc:
            return encode_frame(error_message(rid, exc))
        except Exception as exc:
            return encode_frame(error_message(rid, TypeError(f"unencodable result: {exc}")))
