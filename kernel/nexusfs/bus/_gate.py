"""Write gate for the portable engine.

Invariant: at most one holder at a time; waiters are woken one by one in FIFO order, and
a waiter cancelled after being woken passes the wake-up on, so no wake-up is lost. Unlike
``anyio.Lock`` it is not owned by a task (taken in one context, released in another).
"""

from __future__ import annotations

from collections import deque

import anyio

__all__ = ["WriteGate"]


class WriteGate:
    """A lock not owned by a task: it may be taken in one context (e.g. the reader
    callback) and released in another (the task that finishes the write)."""

    __slots__ = ("_busy", "_waiters")

    def __init__(self) -> None:
        self._busy = False
        self._waiters: deque[anyio.Event] = deque()

    def locked(self) -> bool:
        return self._busy

    def acquire_nowait(self) -> None:
        assert not self._busy, "WriteGate already held"
        self._busy = True

    async def acquire(self) -> None:
        while self._busy:
            ev = anyio.Event()
            self._waiters.append(ev)
            try:
                await ev.wait()
            except BaseException:
                if ev.is_set():
                    self._wake()  # pass the wake-up on
                else:
                    self._waiters.remove(ev)
                raise
        self._busy = True

    def release(self) -> None:
        self._busy = False
        self._wake()

    def _wake(self) -> None:
        if self._waiters and not self._busy:
            self._waiters.popleft().set()

    async def __aenter__(self) -> None:
        await self.acquire()

    async def __aexit__(self, *exc: object) -> None:
        self.release()
