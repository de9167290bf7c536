"""How :class:`~nexusfs.bus._asyncio_engine.AsyncioEngine` sits on an asyncio event loop.

* :class:`LoopWork` (one per loop, :func:`work_of`): what is in progress on the bus on
  that loop. An engine busy-polls only while the loop has nothing else to do, since
  polling blocks it.
* :class:`EngineProtocol`: the transport's view of an engine. The loop's transport
  reads straight into the engine's receive buffer and reports each read, the end of
  the stream and flow control to it; it holds no state of its own.
"""

from __future__ import annotations

import asyncio
import weakref
from typing import TYPE_CHECKING, cast

if TYPE_CHECKING:
    from nexusfs.bus._asyncio_engine import AsyncioEngine

__all__ = ["EngineProtocol", "LoopWork", "work_of"]


class LoopWork:
    """What is in progress on the bus on one event loop: calls awaiting an answer and
    requests served in tasks of their own (all of the loop's connections). Busy-polling
    blocks the loop, so an engine polls only while nothing else is in progress (an
    approximation: other loop work, such as timers, is not counted and waits at most
    one busy-poll window)."""

    __slots__ = ("calls", "tasks")

    def __init__(self) -> None:
        self.calls = 0
        self.tasks = 0

    def idle(self, calls: int) -> bool:
        return self.calls == calls and self.tasks == 0

    def task_done(self, task: asyncio.Task[None]) -> None:
        self.tasks -= 1


_loop_work: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, LoopWork] = (
    weakref.WeakKeyDictionary())


def work_of(loop: asyncio.AbstractEventLoop) -> LoopWork:
    """The loop's one :class:`LoopWork` (made on first use, gone with the loop)."""
    work = _loop_work.get(loop)
    if work is None:
        work = _loop_work[loop] = LoopWork()
    return work


class EngineProtocol(asyncio.BufferedProtocol):
    """The transport's view of an :class:`AsyncioEngine`: data into its buffer, end of
    stream and flow control to it."""

    __slots__ = ("_engine",)

    def __init__(self, engine: AsyncioEngine) -> None:
        self._engine = engine

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # (uvloop's transports are not asyncio.Transport subclasses, but the same API.)
        self._engine._attach(cast(asyncio.Transport, transport))

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._engine._rview

    def buffer_updated(self, nbytes: int) -> None:
        self._engine._received(nbytes)

    def eof_received(self) -> bool:
        self._engine._eof()
        return False  # the transport closes itself

    def connection_lost(self, exc: Exception | None) -> None:
        if exc is not None:
            self._engine._finish(f"read failed: {exc!r}")
        else:
            self._engine._eof()

    def pause_writing(self) -> None:
        self._engine._pause_writing()

    def resume_writing(self) -> None:
        self._engine._resume_writing()
