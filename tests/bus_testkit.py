"""Shared pieces of the bus tests (``test_bus*.py``): the event loops and engines they
run on, a test service with every kind of handler, servers on a real Unix socket (in this
loop or in a background thread), and raw-socket helpers for speaking frames by hand."""

from __future__ import annotations

import asyncio
import importlib.util
import socket
import struct
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import msgpack
import pytest

from nexusfs.bus import (
    Connection,
    serve_unix,
)
from nexusfs.errors import Conflict, NotFound

LOOPS = [pytest.param("asyncio", id="asyncio")]
if importlib.util.find_spec("uvloop") is not None:  # the kernel's and workers' loop
    LOOPS.append(pytest.param(("asyncio", {"use_uvloop": True}), id="uvloop"))


ENGINES = [pytest.param(False, id="fast"), pytest.param(True, id="portable")]


class Service:
    """Server-side handlers; ``conn`` is the server end (for calls back)."""

    def __init__(self, conn: Connection | None = None) -> None:
        self.conn = conn
        self.cancelled = threading.Event()
        self.cancel_count = 0
        self.started = threading.Event()
        self.order: list[int] = []

    async def echo(self, x: Any) -> Any:
        return x

    def secho(self, x: Any) -> Any:
        return x

    async def add(self, a: int, b: int) -> int:
        return a + b

    async def delayed(self, i: int, delay: float) -> int:
        await anyio.sleep(delay)
        self.order.append(i)
        return i

    async def missing(self, path: str) -> None:
        raise NotFound("no such file", path=path)

    async def conflict(self) -> None:
        raise Conflict("version mismatch", path="/f", expected=3, actual=4)

    async def boom(self) -> None:
        raise ValueError("kaboom")

    async def hang(self) -> None:
        self.started.set()
        try:
            await anyio.sleep(60)
        except anyio.get_cancelled_exc_class():
            self.cancel_count += 1
            self.cancelled.set()
            raise

    def later(self, x: int, delay: float) -> Any:
        """A plain handler returning a coroutine that awaits (the kernel sessions'
        pattern): answered from a task."""
        return self._later(x, delay)

    async def _later(self, x: int, delay: float) -> int:
        await anyio.sleep(delay)
        return x

    def soon(self, x: int) -> Any:
        """A plain handler returning a coroutine without await: answered inline."""
        return self._soon(x)

    async def _soon(self, x: int) -> int:
        return x + 1

    def note_first(self, x: int) -> int:
        """A plain handler that queues a frame of its own on the fast engine before it
        returns (as the engine queues its own ``cancel`` frames): the peer must get it
        before the answer."""
        assert self.conn is not None
        self.conn._engine.write(frame({"t": "note", "m": "hello", "a": {"x": x}}))  # type: ignore[union-attr]
        return x

    async def current_task_name(self) -> str | None:
        task = asyncio.current_task()  # no await: served inline, outside any task
        return None if task is None else task.get_name()

    async def big(self, n: int) -> bytes:
        return b"x" * n

    async def ask_back(self, x: int) -> int:
        assert self.conn is not None
        return int(await self.conn.call("client_double", x=x)) + 1

    async def subscribe(self, n: int) -> str:
        assert self.conn is not None
        for i in range(n):
            await self.conn.notify("event", i=i)
        return "ok"

    async def later_notes(self, n: int) -> str:
        assert self.conn is not None
        conn = self.conn

        async def push() -> None:
            await anyio.sleep(0.2)
            for i in range(n):
                await conn.notify("event", i=i)

        _background.append(push)  # run by served_in_thread's pusher task
        return "ok"

    async def note_sink(self, v: int) -> None:
        self.order.append(v)

    def note_plain(self, v: int) -> None:
        self.order.append(1000 + v)

    async def note_awaits(self, v: int) -> None:
        await anyio.sleep(0)
        self.order.append(2000 + v)


_background: list[Callable[[], Any]] = []


def _recording_factory() -> tuple[list[Service], Callable[[Connection], Service]]:
    """A handler factory making one :class:`Service` per connection, and the list it
    appends them to (in connection order)."""
    services: list[Service] = []

    def factory(conn: Connection) -> Service:
        s = Service(conn)
        services.append(s)
        return s

    return services, factory


@asynccontextmanager
async def served(tmp_path: Path, portable: bool = False, **kw: Any) -> AsyncIterator[
        tuple[Path, list[Service]]]:
    path = tmp_path / "run" / "bus.sock"
    services, factory = _recording_factory()

    async with anyio.create_task_group() as tg:
        await tg.start(partial(serve_unix, path, factory, portable=portable, **kw))
        yield path, services
        tg.cancel_scope.cancel()


@contextmanager
def served_in_thread(tmp_path: Path, factory: Callable[[Connection], Any] | None = None,
                     **kw: Any) -> Iterator[tuple[Path, list[Service]]]:
    """A bus server on another thread's event loop, serving a :class:`Service` per
    connection (or what ``factory`` makes: the list of services then stays empty)."""
    path = tmp_path / "run" / "bus.sock"
    services, recording = _recording_factory()
    factory = factory or recording

    async def pusher() -> None:  # runs queued background notifications
        while True:
            while _background:
                await _background.pop()()
            await anyio.sleep(0.02)

    with anyio.from_thread.start_blocking_portal() as portal:
        fut, _ = portal.start_task(partial(serve_unix, path, factory, **kw))
        pfut = portal.start_task_soon(pusher)
        try:
            yield path, services
        finally:
            fut.cancel()
            pfut.cancel()


def raw_connect(path: Path) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(10)
    s.connect(str(path))
    return s


def frame(obj: Any) -> bytes:
    body = msgpack.packb(obj)
    return struct.pack(">I", len(body)) + body


def read_frame(s: socket.socket) -> Any:
    hdr = b""
    while len(hdr) < 4:
        chunk = s.recv(4 - len(hdr))
        if not chunk:
            return None
        hdr += chunk
    (n,) = struct.unpack(">I", hdr)
    body = b""
    while len(body) < n:
        body += s.recv(n - len(body))
    return msgpack.unpackb(body)


def wait_until(cond: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.005)


def assert_closed_by_peer(s: socket.socket) -> None:
    s.settimeout(10)
    while True:
        data = s.recv(65536)
        if not data:
            return
