"""Receive side of :class:`~nexusfs.bus.client.BlockingClient` (leader/follower reader).

Invariants: only the thread holding ``_read_lock`` touches the socket's read side and
the receive buffer; a completed call is marked ``slot.done`` under the GIL and followers
are woken through ``_cond`` (only when some are waiting, so a lone caller never pays
for it). Frames are parsed in place from a preallocated buffer (grown only for frames
larger than it, and shrunk back afterwards). ``_fail`` is the single place that closes
the client: it marks every pending slot failed and wakes everyone.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import select
import socket
import struct
import threading
import time
from collections.abc import Callable
from socket import MSG_DONTWAIT
from time import perf_counter
from typing import Any, NoReturn

import msgpack
from msgpack import unpackb

from nexusfs.bus._busy_poll import BusyPoll
from nexusfs.bus.protocol import (
    HEADER,
    DeadlineExceeded,
    FrameTooLarge,
    ProtocolError,
    UnknownMethod,
    check_message,
    error_from_wire,
    error_message,
)
from nexusfs.errors import NexusError, ServiceUnavailable

log = logging.getLogger("nexusfs.bus")

BUF_SIZE = 256 * 1024
SLICE = 0.25  # SO_RCVTIMEO granularity while waiting for far deadlines
_WATCH_POLL_MS = 200


class Slot:
    """The outcome of one call, filled by whichever thread reads its answer."""

    __slots__ = ("done", "error", "result")

    def __init__(self) -> None:
        self.done = False
        self.result: Any = None
        self.error: BaseException | None = None


def timeval(seconds: float) -> bytes:
    sec = int(seconds)
    return struct.pack("ll", sec, max(int((seconds - sec) * 1e6), 1 if sec == 0 else 0))


class ClientCore:
    """State and receive machinery shared with :class:`BlockingClient`."""

    path: str
    max_frame_size: int
    _sock: socket.socket
    _rcvtimeo: float
    _packer: msgpack.Packer
    _pending: dict[int, Slot]
    _send_lock: threading.Lock
    _read_lock: threading.Lock
    _cond: threading.Condition
    _waiters: int
    _closed: bool
    _close_reason: str
    _buf: bytearray
    _view: memoryview
    _start: int
    _end: int
    _on_notify: Callable[[str, dict[str, Any]], None] | None
    _notes: queue.SimpleQueue[tuple[str, dict[str, Any]] | None]
    _busy_poll: BusyPoll

    def _send_msg(self, msg: dict[str, Any]) -> None:
        raise NotImplementedError

    # -- receiving ----------------------------------------------------------------------

    def _wait(self, slot: Slot, deadline: float | None) -> None:
        while not slot.done:
            if self._read_lock.acquire(blocking=False):
                try:
                    self._lead(slot, deadline)
                finally:
                    self._read_lock.release()
                    if self._waiters:
                        with self._cond:
                            self._cond.notify_all()
            else:
                with self._cond:
                    self._waiters += 1
                    try:
                        while not slot.done and self._read_lock.locked():
                            wait = None if deadline is None else deadline - time.time()
                            if wait is not None and wait <= 0:
                                raise DeadlineExceeded("deadline exceeded")
                            self._cond.wait(wait)
                    finally:
                        self._waiters -= 1

    def _lead(self, slot: Slot, deadline: float | None) -> None:
        """Leader only: read and dispatch until ``slot`` is done (the blocking path of
        :meth:`_read_once`, in one loop: this is every call's hot path).

        When recent answers came within the busy-poll window (see
        :class:`~nexusfs.bus._busy_poll.BusyPoll`), the socket is first polled without
        blocking for up to that window: an answer that lands while this thread still
        runs skips the sleep and wake-up."""
        sock = self._sock
        poll = self._busy_poll
        polled = poll.should_poll()
        if polled:
            t0 = perf_counter()
            until = t0 + poll.limit
            if deadline is not None:
                until = min(until, t0 + (deadline - time.time()))
            view = self._view
            while not slot.done:
                end = self._end
                if end == len(self._buf):
                    self._make_room()
                    end = self._end
                    view = self._view
                try:
                    n = sock.recv_into(view[end:], 0, MSG_DONTWAIT)
                except (BlockingIOError, InterruptedError):
                    if perf_counter() >= until:
                        break
                    continue
                except OSError as exc:
                    self._fail(f"read failed: {exc!r}")
                    raise ServiceUnavailable(f"bus connection lost: {exc!r}") from exc
                self._received(n)
        while not slot.done:
            if self._closed:
                raise ServiceUnavailable(f"bus connection closed: {self._close_reason}")
            end = self._end
            if end == len(self._buf):
                self._make_room()
                end = self._end
            want = SLICE
            if deadline is not None:
                remaining = deadline - time.time()
                if remaining <= 0:
                    raise DeadlineExceeded("deadline exceeded")
                if remaining < SLICE:
                    want = remaining
            if want != self._rcvtimeo:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, timeval(want))
                self._rcvtimeo = want
            try:
                n = sock.recv_into(self._view[end:])
            except (BlockingIOError, InterruptedError):
                continue  # SO_RCVTIMEO slice elapsed: check the deadline again
            except OSError as exc:
                self._fail(f"read failed: {exc!r}")
                raise ServiceUnavailable(f"bus connection lost: {exc!r}") from exc
            self._received(n)
        if polled:
            poll.observe(perf_counter() - t0)

    def _received(self, n: int) -> None:
        """``n`` bytes were read at ``_end``: parse and dispatch every whole frame."""
        if n == 0:
            self._closed_by_peer()
        self._end += n
        try:
            self._parse()
        except (FrameTooLarge, ProtocolError) as exc:
            self._fail(f"{type(exc).__name__}: {exc}")
            raise ServiceUnavailable(f"bus connection lost: {exc}") from exc
        if self._waiters:  # wake followers whose answers this read delivered
            with self._cond:
                self._cond.notify_all()

    def _closed_by_peer(self) -> NoReturn:
        reason = (
            "truncated frame: server closed mid-frame"
            if self._end > self._start
            else "server closed the connection"
        )
        self._fail(reason)
        raise ServiceUnavailable(f"bus connection lost: {reason}")

    def _drain_nowait(self) -> None:
        if self._read_lock.acquire(blocking=False):
            try:
                while self._read_once(None, block=False):
                    pass
            finally:
                self._read_lock.release()
                if self._waiters:
                    with self._cond:
                        self._cond.notify_all()

    def _read_once(self, deadline: float | None, *, block: bool) -> bool:
        """Leader only: one recv + dispatch of every complete frame. Returns False if
        nothing was available (non-blocking) ; raises DeadlineExceeded / ServiceUnavailable.
        """
        if self._closed:
            raise ServiceUnavailable(f"bus connection closed: {self._close_reason}")
        if self._end == len(self._buf):
            self._make_room()
        if block:
            want = SLICE
            if deadline is not None:
                remaining = deadline - time.time()
                if remaining <= 0:
                    raise DeadlineExceeded("deadline exceeded")
                if remaining < SLICE:
                    want = remaining
            if want != self._rcvtimeo:
                self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, timeval(want))
                self._rcvtimeo = want
        try:
            n = self._sock.recv_into(
                self._view[self._end :], 0, 0 if block else socket.MSG_DONTWAIT
            )
        except (BlockingIOError, InterruptedError):
            return False
        except OSError as exc:
            self._fail(f"read failed: {exc!r}")
            raise ServiceUnavailable(f"bus connection lost: {exc!r}") from exc
        self._received(n)
        return True

    def _make_room(self) -> None:
        start, end, buf = self._start, self._end, self._buf
        live = end - start
        need = live + 4096
        if live >= 4:
            need = max(need, HEADER.unpack_from(buf, start)[0] + 4)
        if start > 0 and need <= len(buf):
            buf[0:live] = buf[start:end]
        else:
            new = bytearray(max(need, len(buf) * 2))
            new[0:live] = buf[start:end]
            self._view.release()
            self._buf = new
            self._view = memoryview(new)
        self._start, self._end = 0, live

    def _parse(self) -> None:
        buf, view, pending = self._buf, self._view, self._pending
        start, end = self._start, self._end
        limit = self.max_frame_size
        while end - start >= 4:
            (size,) = HEADER.unpack_from(buf, start)
            if size > limit:
                raise FrameTooLarge(
                    f"server announced a frame of {size} bytes; the limit is {limit}"
                )
            stop = start + 4 + size
            if stop > end:
                break
            try:
                msg = unpackb(view[start + 4 : stop], raw=False, strict_map_key=False)
            except Exception as exc:
                raise ProtocolError(
                    f"undecodable frame body: {type(exc).__name__}: {exc}") from None
            start = stop
            if (type(msg) is dict and msg.get("t") == "res"
                    and type(rid := msg.get("id")) is int and "r" in msg):
                slot = pending.pop(rid, None)  # the answer of a call: the hot path
                if slot is not None:
                    slot.result = msg["r"]
                    slot.done = True
            else:
                self._dispatch(check_message(msg))
        if start == end:
            start = end = 0
            if len(buf) > BUF_SIZE:  # drop a buffer grown for one big frame
                self._view.release()
                self._buf = bytearray(BUF_SIZE)
                self._view = memoryview(self._buf)
        self._start, self._end = start, end

    def _dispatch(self, msg: dict[str, Any]) -> None:
        t = msg["t"]
        if t == "res" or t == "err":
            slot = self._pending.pop(msg["id"], None)
            if slot is None:
                return
            if t == "res":
                slot.result = msg["r"]
            else:
                x = msg.get("x")
                slot.error = error_from_wire(
                    msg["c"], msg["msg"], msg.get("p"), x if isinstance(x, dict) else None
                )
            slot.done = True
        elif t == "note":
            if self._on_notify is not None:
                self._notes.put((msg["m"], msg["a"]))
        elif t == "req":
            err = error_message(
                msg["id"],
                UnknownMethod(f"unknown method {msg['m']!r}: BlockingClient serves no requests"),
            )
            with contextlib.suppress(NexusError):
                self._send_msg(err)

    def _fail(self, reason: str) -> None:
        with self._cond:
            if self._closed:
                return
            self._closed = True
            self._close_reason = reason
            pending, self._pending = self._pending, {}
            for slot in pending.values():
                slot.error = ServiceUnavailable(f"bus connection lost: {reason}")
                slot.done = True
            self._cond.notify_all()
        if reason != "closed locally":
            log.warning("bus client %s: connection closed: %s", self.path, reason)
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        self._notes.put(None)

    # -- notification threads -----------------------------------------------------------

    def _dispatch_notes(self) -> None:
        assert self._on_notify is not None
        while True:
            item = self._notes.get()
            if item is None:
                return
            try:
                self._on_notify(item[0], item[1])
            except Exception:
                log.exception("bus client %s: on_notify(%r) failed", self.path, item[0])

    def _watch(self) -> None:
        poller = select.poll()
        poller.register(self._sock.fileno(), select.POLLIN)
        while not self._closed:
            if not poller.poll(_WATCH_POLL_MS) or self._closed:
                continue
            if self._read_lock.acquire(blocking=False):
                try:
                    while self._read_once(None, block=False):
                        pass
                except NexusError:
                    return
                finally:
                    self._read_lock.release()
                    if self._waiters:
                        with self._cond:
                            self._cond.notify_all()
            else:
                with self._cond:  # a caller is reading: wait until it steps down
                    self._waiters += 1
                    try:
                        while self._read_lock.locked() and not self._closed:
                            self._cond.wait(0.05)
                    finally:
                        self._waiters -= 1
