"""Blocking, thread-safe bus client for synchronous callers.

Design ("leader/follower", no dedicated reader thread): a calling thread writes its
request under the send lock, then tries to take the read lock. The thread holding it (the
*leader*) reads frames straight into a preallocated buffer and completes the waiting
slots of whichever calls they answer; other threads (*followers*) sleep on a condition
until their slot is done or the leader steps down, and then one of them leads. A single
thread therefore pays one ``sendall`` + one blocking ``recv_into`` per call and no thread
hand-off, which keeps latency close to a raw socket ping-pong; many threads still
pipeline over the one socket.

Invariants and failure semantics:

* Frames are written whole under the send lock; a failed or timed-out (``SO_SNDTIMEO``)
  write closes the client, since the stream would be desynchronised.
* Deadlines are absolute ``time.time()`` seconds sent in the frame; a call that passes
  its deadline raises :class:`DeadlineExceeded` and sends a ``cancel`` frame.
* EOF, a read error, an oversized or malformed frame closes the client; every pending
  call fails at once with :class:`ServiceUnavailable`, later calls fail immediately.
* Notifications from the server go to ``on_notify(method, args)`` on a dedicated
  dispatcher thread, in arrival order. While no call is in flight a watcher thread
  (only started when ``on_notify`` is given) picks them up; the callback may call the
  client. Server->client *requests* are answered with ``unknown_method``.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import queue
import socket
import threading
from collections.abc import Callable, Iterable, Mapping
from types import TracebackType
from typing import Any, Self

import msgpack

from nexusfs.bus._busy_poll import BusyPoll
from nexusfs.bus._client_core import BUF_SIZE, SLICE, ClientCore, Slot, timeval
from nexusfs.bus.protocol import (
    DEFAULT_MAX_FRAME_SIZE,
    HEADER,
    DeadlineExceeded,
    FrameTooLarge,
    resolve_deadline,
)
from nexusfs.errors import NexusError, ServiceUnavailable

__all__ = ["BlockingClient"]

log = logging.getLogger("nexusfs.bus")

_BATCH_BYTES = 256 * 1024


class BlockingClient(ClientCore):
    """Connect to the bus server at ``path``.

    ``timeout`` (seconds) is the default per-call timeout and the write timeout;
    ``on_notify(method, args)`` receives server notifications; ``busy_poll`` (seconds,
    default 0: off) is the longest a caller polls for a quick answer before it sleeps
    (see :mod:`~nexusfs.bus._busy_poll`). Raises :class:`ServiceUnavailable` if the
    server cannot be reached.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        timeout: float | None = 30.0,
        max_frame_size: int = DEFAULT_MAX_FRAME_SIZE,
        on_notify: Callable[[str, dict[str, Any]], None] | None = None,
        busy_poll: float = 0.0,
    ) -> None:
        self.path = os.fspath(path)
        self._busy_poll = BusyPoll(busy_poll)
        self.timeout = timeout
        self.max_frame_size = max_frame_size
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(timeout if timeout is not None else 30.0)
            sock.connect(self.path)
            sock.settimeout(None)
            if timeout is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, timeval(timeout))
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, timeval(SLICE))
        except OSError as exc:
            sock.close()
            raise ServiceUnavailable(f"cannot connect to bus at {self.path}: {exc}") from exc
        self._sock = sock
        self._rcvtimeo = SLICE
        self._packer = msgpack.Packer(use_bin_type=True)
        self._ids = itertools.count(1)
        self._pending: dict[int, Slot] = {}
        self._send_lock = threading.Lock()
        self._read_lock = threading.Lock()
        self._cond = threading.Condition(threading.Lock())
        self._waiters = 0
        self._closed = False
        self._close_reason = ""
        self._buf = bytearray(BUF_SIZE)
        self._view = memoryview(self._buf)
        self._start = 0
        self._end = 0
        self._on_notify = on_notify
        self._notes: queue.SimpleQueue[tuple[str, dict[str, Any]] | None] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        if on_notify is not None:
            for target, tname in ((self._dispatch_notes, "notify"), (self._watch, "watch")):
                t = threading.Thread(target=target, name=f"bus-{tname}", daemon=True)
                t.start()
                self._threads.append(t)

    # -- public API ---------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._closed

    def call(
        self,
        method: str,
        /,
        *,
        timeout: float | None = None,
        deadline: float | None = None,
        **args: Any,
    ) -> Any:
        """Call ``method(**args)`` on the server and return its result.

        ``timeout`` is relative (default: the client's), ``deadline`` absolute
        (``time.time()``); the earliest wins. Raises the handler's typed error,
        :class:`UnknownMethod`, :class:`DeadlineExceeded`, :class:`ServiceUnavailable`, or
        :class:`FrameTooLarge` (nothing sent). Use :meth:`request` for args that are
        named ``timeout`` or ``deadline``.
        """
        return self.request(method, args, timeout=timeout, deadline=deadline)

    def request(
        self,
        method: str,
        args: Mapping[str, Any] | None = None,
        *,
        timeout: float | None = None,
        deadline: float | None = None,
    ) -> Any:
        """Like :meth:`call` with the arguments as a mapping."""
        d = self._deadline(timeout, deadline)
        slot = Slot()
        rid = next(self._ids)
        self._pending[rid] = slot
        try:
            self._send_msg(
                {"t": "req", "id": rid, "m": method, "a": args if args is not None else {}, "d": d}
            )
        except BaseException:
            self._pending.pop(rid, None)
            raise
        try:
            self._wait(slot, d)
        except DeadlineExceeded:
            self._abandon([rid])
            raise DeadlineExceeded(f"{method}: deadline exceeded") from None
        if slot.error is not None:
            raise slot.error
        return slot.result

    def call_many(
        self,
        calls: Iterable[tuple[str, Mapping[str, Any]]],
        *,
        timeout: float | None = None,
        deadline: float | None = None,
        return_exceptions: bool = False,
    ) -> list[Any]:
        """Pipeline a batch of ``(method, args)`` calls; results in input order.

        With ``return_exceptions`` failed calls give their exception object in the list;
        otherwise the first failure (in input order) is raised after all calls finished.
        One deadline covers the whole batch (:class:`DeadlineExceeded` cancels the rest).
        """
        d = self._deadline(timeout, deadline)
        rids: list[int] = []
        slots: list[Slot] = []
        chunk = bytearray()
        try:
            for method, args in calls:
                rid = next(self._ids)
                with self._send_lock:
                    body = self._packer.pack(
                        {"t": "req", "id": rid, "m": method, "a": dict(args), "d": d}
                    )
                self._check_size(len(body))
                slot = Slot()
                self._pending[rid] = slot
                rids.append(rid)
                slots.append(slot)
                chunk += HEADER.pack(len(body))
                chunk += body
                if len(chunk) >= _BATCH_BYTES:
                    self._send_raw(chunk)
                    chunk.clear()
                    self._drain_nowait()
            if chunk:
                self._send_raw(chunk)
            for slot in slots:
                self._wait(slot, d)
        except DeadlineExceeded:
            self._abandon(rids)
            raise
        except BaseException:
            self._abandon(rids)
            raise
        out: list[Any] = []
        for slot in slots:
            if slot.error is not None:
                if not return_exceptions:
                    raise slot.error
                out.append(slot.error)
            else:
                out.append(slot.result)
        return out

    def notify(self, method: str, /, **args: Any) -> None:
        """Send a one-way notification to the server."""
        self._send_msg({"t": "note", "m": method, "a": args})

    def close(self) -> None:
        """Close the socket; pending calls fail with ServiceUnavailable. Idempotent."""
        self._fail("closed locally")
        for t in self._threads:
            if t is not threading.current_thread():
                t.join(timeout=2.0)
        # Wait for a leader still inside recv (woken by the shutdown) before closing.
        got = self._read_lock.acquire(timeout=2.0)
        try:
            self._sock.close()
        finally:
            if got:
                self._read_lock.release()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- sending ------------------------------------------------------------------------

    def _deadline(self, timeout: float | None, deadline: float | None) -> float | None:
        return resolve_deadline(deadline, timeout, self.timeout)

    def _check_size(self, n: int) -> None:
        if n > self.max_frame_size:
            raise FrameTooLarge(
                f"frame of {n} bytes exceeds the limit of {self.max_frame_size} bytes"
            )

    def _send_msg(self, msg: dict[str, Any]) -> None:
        with self._send_lock:
            if self._closed:
                raise ServiceUnavailable(f"bus connection closed: {self._close_reason}")
            body = self._packer.pack(msg)
            n = len(body)
            if n > self.max_frame_size:
                raise FrameTooLarge(
                    f"frame of {n} bytes exceeds the limit of {self.max_frame_size} bytes"
                )
            try:
                if n < 65536:
                    self._sock.sendall(HEADER.pack(n) + body)
                else:
                    self._sock.sendall(HEADER.pack(n))
                    self._sock.sendall(body)
            except OSError as exc:
                self._fail(f"write failed: {exc!r}")
                raise ServiceUnavailable(f"bus connection lost: {exc!r}") from exc

    def _send_raw(self, data: bytes | bytearray) -> None:
        with self._send_lock:
            if self._closed:
                raise ServiceUnavailable(f"bus connection closed: {self._close_reason}")
            try:
                self._sock.sendall(data)
            except OSError as exc:
                self._fail(f"write failed: {exc!r}")
                raise ServiceUnavailable(f"bus connection lost: {exc!r}") from exc

    def _abandon(self, rids: list[int]) -> None:
        """Forget unanswered calls and tell the server to cancel them (best effort)."""
        data = bytearray()
        for rid in rids:
            slot = self._pending.pop(rid, None)
            if slot is not None and not slot.done:
                body = msgpack.packb({"t": "cancel", "id": rid})
                data += HEADER.pack(len(body)) + body
        if data and not self._closed:
            with contextlib.suppress(NexusError):
                self._send_raw(data)
