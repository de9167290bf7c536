"""Tests of the local bus (nexusfs.bus): framing, async Connection (both engines),
serve_unix hardening, BlockingClient. Timing bounds are generous (seconds)."""

from __future__ import annotations

import asyncio
import functools
import importlib.util
import logging
import os
import socket
import stat
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
    BlockingClient,
    Connection,
    DeadlineExceeded,
    FrameTooLarge,
    InternalError,
    UnknownMethod,
    connect_unix,
    serve_unix,
)
from nexusfs.bus.protocol import FrameDecoder, ProtocolError, encode_frame
from nexusfs.errors import Conflict, NexusError, NotFound, ServiceUnavailable

LOOPS = [pytest.param("asyncio", id="asyncio")]
if importlib.util.find_spec("uvloop") is not None:  # the kernel's and workers' loop
    LOOPS.append(pytest.param(("asyncio", {"use_uvloop": True}), id="uvloop"))


@pytest.fixture(params=LOOPS)
def anyio_backend(request: pytest.FixtureRequest) -> Any:
    return request.param


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


@asynccontextmanager
async def served(tmp_path: Path, portable: bool = False, **kw: Any) -> AsyncIterator[
        tuple[Path, list[Service]]]:
    path = tmp_path / "run" / "bus.sock"
    services: list[Service] = []

    def factory(conn: Connection) -> Service:
        s = Service(conn)
        services.append(s)
        return s

    async with anyio.create_task_group() as tg:
        await tg.start(partial(serve_unix, path, factory, portable=portable, **kw))
        yield path, services
        tg.cancel_scope.cancel()


@contextmanager
def served_in_thread(tmp_path: Path, **kw: Any) -> Iterator[tuple[Path, list[Service]]]:
    path = tmp_path / "run" / "bus.sock"
    services: list[Service] = []

    def factory(conn: Connection) -> Service:
        s = Service(conn)
        services.append(s)
        return s

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


# -- framing ----------------------------------------------------------------------------


def test_decoder_splits_and_buffers() -> None:
    f1 = encode_frame({"t": "cancel", "id": 1})
    f2 = encode_frame({"t": "res", "id": 2, "r": [1, b"b"]})
    dec = FrameDecoder()
    data = f1 + f2
    out = []
    for i in range(len(data)):  # byte by byte
        out += dec.feed(data[i : i + 1])
    assert [m["id"] for m in out] == [1, 2]
    assert out[1]["r"] == [1, b"b"] and dec.pending == 0


@pytest.mark.parametrize(
    "body",
    [b"\xc1", msgpack.packb([1, 2]), msgpack.packb({"t": "req", "id": 1}),
     msgpack.packb({"t": "zzz", "id": 1}), msgpack.packb({"t": "res", "id": "x", "r": 1}),
     msgpack.packb({"t": "cancel", "id": 1}) + b"\x00"],
)
def test_decoder_rejects_bad_bodies(body: bytes) -> None:
    with pytest.raises(ProtocolError):
        FrameDecoder().feed(struct.pack(">I", len(body)) + body)


def test_oversize_both_sides_of_codec() -> None:
    with pytest.raises(FrameTooLarge):
        encode_frame({"t": "note", "m": "x", "a": {"b": b"x" * 2000}}, 1024)
    with pytest.raises(FrameTooLarge):
        FrameDecoder(1024).feed(struct.pack(">I", 1025))  # body never needed
    assert issubclass(FrameTooLarge, NexusError) and FrameTooLarge.code == "frame_too_large"


# -- async Connection ---------------------------------------------------------------------


@pytest.mark.anyio
async def test_connect_waits_for_a_starting_server(tmp_path: Path) -> None:
    path = tmp_path / "run" / "bus.sock"
    with pytest.raises(ServiceUnavailable, match="cannot connect"):
        async with connect_unix(path):
            pass  # nothing listens and no connect_timeout: fails at once
    t0 = time.monotonic()
    with pytest.raises(ServiceUnavailable, match="cannot connect"):
        async with connect_unix(path, connect_timeout=0.3):
            pass
    assert time.monotonic() - t0 >= 0.3
    path.parent.mkdir(parents=True)
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))  # a socket file nobody listens on: refused, retried
    stale.close()

    async def late_server(task_status: anyio.abc.TaskStatus[None]) -> None:
        task_status.started()
        await anyio.sleep(0.3)
        await serve_unix(path, Service)

    async with anyio.create_task_group() as tg:
        await tg.start(late_server)
        async with connect_unix(path, connect_timeout=10.0) as conn:
            assert await conn.call("echo", x=1) == 1
        tg.cancel_scope.cancel()



@pytest.mark.anyio
@pytest.mark.parametrize("portable", ENGINES)
async def test_round_trip_and_typed_errors(tmp_path: Path, portable: bool) -> None:
    async with served(tmp_path, portable) as (path, _), connect_unix(
        path, portable=portable
    ) as conn:
        assert await conn.call("echo", x={"a": [1, 2], "b": b"\x00"}) == {
            "a": [1, 2], "b": b"\x00"}
        assert await conn.call("secho", x="sync") == "sync"
        assert await conn.request("add", {"a": 2, "b": 3}) == 5
        with pytest.raises(NotFound) as ei:
            await conn.call("missing", path="/a/b")
        assert ei.value.path == "/a/b" and isinstance(ei.value, FileNotFoundError)
        with pytest.raises(Conflict) as ci:
            await conn.call("conflict")
        assert (ci.value.expected, ci.value.actual) == (3, 4)
        with pytest.raises(InternalError) as ii:
            await conn.call("boom")
        assert ii.value.code == "internal" and "ValueError: kaboom" in str(ii.value)
        assert isinstance(ii.value, NexusError)
        with pytest.raises(UnknownMethod):
            await conn.call("no_such_method")
        with pytest.raises(UnknownMethod):
            await conn.call("_private")
        with pytest.raises(InternalError):  # bad arguments: TypeError in the handler call
            await conn.call("add", a=1)


@pytest.mark.anyio
@pytest.mark.parametrize("portable", ENGINES)
async def test_1000_pipelined_calls_out_of_order(tmp_path: Path, portable: bool) -> None:
    async with served(tmp_path, portable) as (path, services), connect_unix(
        path, portable=portable
    ) as conn:
        results: dict[int, int] = {}

        async def one(i: int) -> None:
            results[i] = await conn.call("delayed", i=i, delay=((1000 - i) % 7) * 0.002)

        async with anyio.create_task_group() as tg:
            for i in range(1000):
                tg.start_soon(one, i)
        assert results == {i: i for i in range(1000)}
        order = services[0].order
        assert sorted(order) == list(range(1000)) and order != sorted(order)


@pytest.mark.anyio
@pytest.mark.parametrize("portable", ENGINES)
async def test_calls_in_both_directions(tmp_path: Path, portable: bool) -> None:
    async def client_double(x: int) -> int:
        return 2 * x

    async with served(tmp_path, portable) as (path, _), connect_unix(
        path, {"client_double": client_double}, portable=portable
    ) as conn:
        async with anyio.create_task_group() as tg:
            out: list[int] = []

            async def go(i: int) -> None:
                out.append(await conn.call("ask_back", x=i))

            for i in range(50):
                tg.start_soon(go, i)
        assert sorted(out) == sorted(2 * i + 1 for i in range(50))


@pytest.mark.anyio
@pytest.mark.parametrize("portable", ENGINES)
async def test_deadline_cancels_handler(tmp_path: Path, portable: bool) -> None:
    async with served(tmp_path, portable) as (path, services), connect_unix(
        path, portable=portable
    ) as conn:
        t0 = time.monotonic()
        with pytest.raises(DeadlineExceeded) as ei:
            await conn.call("hang", timeout=0.3)
        assert time.monotonic() - t0 < 5
        assert isinstance(ei.value, TimeoutError) and isinstance(ei.value, ServiceUnavailable)
        with anyio.fail_after(5):
            while not services[0].cancelled.is_set():
                await anyio.sleep(0.01)
        assert await conn.call("echo", x=1) == 1  # connection still healthy
        with pytest.raises(DeadlineExceeded):
            await conn.call("echo", x=1, deadline=time.time() - 1)


@pytest.mark.anyio
@pytest.mark.parametrize("portable", ENGINES)
async def test_outer_cancellation_sends_cancel_frame(tmp_path: Path, portable: bool) -> None:
    async with served(tmp_path, portable) as (path, services), connect_unix(
        path, portable=portable
    ) as conn:
        with anyio.move_on_after(0.3):
            await conn.call("hang")  # no deadline at all: only the cancel frame stops it
        with anyio.fail_after(5):
            while not services[0].cancelled.is_set():
                await anyio.sleep(0.01)


@pytest.mark.parametrize("portable", ENGINES)
def test_frame_deadline_and_cancel_frame_on_server(tmp_path: Path, portable: bool) -> None:
    with served_in_thread(tmp_path, portable=portable) as (path, services):
        s = raw_connect(path)
        s.sendall(frame({"t": "req", "id": 7, "m": "hang", "a": {}, "d": time.time() + 0.3}))
        reply = read_frame(s)  # the server's own deadline fires; the caller never cancels
        assert reply["t"] == "err" and reply["id"] == 7 and reply["c"] == "deadline_exceeded"
        assert services[0].cancelled.wait(5)
        s.close()
        s = raw_connect(path)
        s.sendall(frame({"t": "req", "id": 1, "m": "hang", "a": {}, "d": None}))
        wait_until(lambda: len(services) == 2)
        assert services[1].started.wait(5)
        s.sendall(frame({"t": "cancel", "id": 1}))
        assert services[1].cancelled.wait(5)
        s.sendall(frame({"t": "req", "id": 2, "m": "echo", "a": {"x": 5}, "d": None}))
        assert read_frame(s) == {"t": "res", "id": 2, "r": 5}  # no answer for id 1
        s.close()


@pytest.mark.anyio
@pytest.mark.parametrize("portable", ENGINES)
async def test_connection_loss_fails_pending_calls(tmp_path: Path, portable: bool) -> None:
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    path = str(tmp_path / "dead.sock")
    listener.bind(path)
    listener.listen()
    async with connect_unix(path, portable=portable) as conn:
        peer, _ = listener.accept()
        errors: list[BaseException] = []

        async def one() -> None:
            try:
                await conn.call("anything")
            except BaseException as exc:
                errors.append(exc)

        async with anyio.create_task_group() as tg:
            for _ in range(5):
                tg.start_soon(one)
            await anyio.sleep(0.2)
            t0 = time.monotonic()
            peer.close()
        assert time.monotonic() - t0 < 5
        assert len(errors) == 5 and all(type(e) is ServiceUnavailable for e in errors)
        with pytest.raises(ServiceUnavailable):
            await conn.call("anything")
    listener.close()


@pytest.mark.anyio
async def test_oversized_frames_both_directions(tmp_path: Path) -> None:
    async with served(tmp_path, max_frame_size=4096) as (path, _):
        async with connect_unix(path, max_frame_size=4096) as conn:
            with pytest.raises(FrameTooLarge):
                await conn.call("echo", x=b"x" * 5000)  # refused before sending
            with pytest.raises(FrameTooLarge):
                await conn.call("big", n=5000)  # the server refuses to send its result
            assert await conn.call("echo", x=1) == 1
        async with connect_unix(path, max_frame_size=1 << 20) as conn:
            with pytest.raises(ServiceUnavailable):  # server closes on the header alone
                await conn.call("echo", x=b"x" * 5000)


def test_bad_clients_do_not_hurt_server(tmp_path: Path, caplog: pytest.LogCaptureFixture
                                        ) -> None:
    caplog.set_level(logging.WARNING, logger="nexusfs.bus")
    bad = [
        struct.pack(">I", 1 << 30),  # oversized announcement
        struct.pack(">I", 100) + b"0123456789",  # truncated (we close mid-frame)
        struct.pack(">I", 1) + b"\xc1",  # garbage msgpack
        frame([1, 2, 3]),  # non-dict body
        frame({"t": "req", "id": 1, "m": "echo"}),  # missing fields
        frame({"t": "req", "id": 1, "m": "hang", "a": {}, "d": None})
        + frame({"t": "req", "id": 1, "m": "hang", "a": {}, "d": None}),  # duplicate id
    ]
    with served_in_thread(tmp_path) as (path, _):
        for payload in bad:
            s = raw_connect(path)
            s.sendall(payload)
            if payload.startswith(struct.pack(">I", 100)):
                s.shutdown(socket.SHUT_WR)
            assert_closed_by_peer(s)
            s.close()
        with BlockingClient(path, timeout=10) as c:
            assert c.call("echo", x="still alive") == "still alive"
    text = caplog.text
    for needle in ("FrameTooLarge", "truncated frame", "undecodable", "not a map",
                   "without an 'a' map", "duplicate request id"):
        assert needle in text


def test_socket_permissions_stale_and_live(tmp_path: Path) -> None:
    path = tmp_path / "run" / "bus.sock"
    path.parent.mkdir(mode=0o755)
    path.parent.chmod(0o755)
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))
    stale.close()  # leaves a stale socket file behind
    with served_in_thread(tmp_path) as (p, _):
        assert p == path
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        with pytest.raises(OSError), served_in_thread(tmp_path):
            pass  # a live server keeps its path
    fresh = tmp_path / "fresh" / "deeper" / "bus.sock"
    with served_in_thread(tmp_path / "fresh" / "x"):
        pass
    with anyio.from_thread.start_blocking_portal() as portal:
        fut, _ = portal.start_task(partial(serve_unix, fresh, Service))
        assert stat.S_IMODE(os.stat(fresh.parent).st_mode) == 0o700
        assert stat.S_IMODE(os.stat(fresh).st_mode) == 0o600
        fut.cancel()
    assert not fresh.exists()  # removed on shutdown


def test_peer_credentials_rejected(tmp_path: Path) -> None:
    with served_in_thread(tmp_path, allowed_uids={os.getuid() + 4242}) as (path, services):
        with pytest.raises(ServiceUnavailable), BlockingClient(path, timeout=5) as c:
            c.call("echo", x=1)
        assert services == []  # no Connection/handlers were ever built


# -- BlockingClient -----------------------------------------------------------------------


def test_blocking_client_basics(tmp_path: Path) -> None:
    with served_in_thread(tmp_path) as (path, services), BlockingClient(path) as c:
        assert c.call("echo", x=[1, "a", b"b", None]) == [1, "a", b"b", None]
        assert c.request("add", {"a": 1, "b": 2}) == 3
        with pytest.raises(NotFound):
            c.call("missing", path="/x")
        with pytest.raises(UnknownMethod):
            c.call("nope")
        with pytest.raises(FrameTooLarge):
            BlockingClient(path, max_frame_size=100).call("echo", x=b"y" * 200)
        t0 = time.monotonic()
        with pytest.raises(DeadlineExceeded):
            c.call("hang", timeout=0.3)
        assert time.monotonic() - t0 < 5
        assert services[0].cancelled.wait(5)
        big = b"z" * (3 << 20)  # larger than the client's receive buffer
        assert c.call("echo", x=big) == big
        res = c.call_many([("add", {"a": i, "b": 1}) for i in range(3000)])
        assert res == [i + 1 for i in range(3000)]
        mixed = c.call_many([("echo", {"x": 1}), ("boom", {})], return_exceptions=True)
        assert mixed[0] == 1 and isinstance(mixed[1], InternalError)
        with pytest.raises(InternalError):
            c.call_many([("echo", {"x": 1}), ("boom", {})])
    with pytest.raises(ServiceUnavailable):
        c.call("echo", x=1)


def test_blocking_client_8_threads(tmp_path: Path) -> None:
    with served_in_thread(tmp_path) as (path, _), BlockingClient(path) as c:
        errors: list[BaseException] = []

        def worker(t: int) -> None:
            try:
                for i in range(200):
                    delay = 0.001 if i % 10 == 0 else 0.0
                    assert c.call("delayed", i=t * 1000 + i, delay=delay) == t * 1000 + i
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)

        threads = [threading.Thread(target=worker, args=(t,)) for t in range(8)]
        for th in threads:
            th.start()
        for th in threads:
            th.join(60)
        assert not errors and not any(th.is_alive() for th in threads)


def test_blocking_client_connection_loss(tmp_path: Path) -> None:
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    path = str(tmp_path / "dead.sock")
    listener.bind(path)
    listener.listen()
    c = BlockingClient(path, timeout=30)
    peer, _ = listener.accept()
    errors: list[BaseException] = []

    def one() -> None:
        try:
            c.call("x")
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=one) for _ in range(4)]
    for th in threads:
        th.start()
    time.sleep(0.2)
    t0 = time.monotonic()
    peer.close()
    for th in threads:
        th.join(10)
    assert time.monotonic() - t0 < 5
    assert len(errors) == 4 and all(isinstance(e, ServiceUnavailable) for e in errors)
    c.close()
    listener.close()


def test_blocking_client_notifications(tmp_path: Path) -> None:
    got: list[tuple[str, int]] = []
    done = threading.Event()

    def on_notify(method: str, args: dict[str, Any]) -> None:
        got.append((method, args["i"]))
        if len(got) == 8:
            done.set()

    with served_in_thread(tmp_path) as (path, _), BlockingClient(
        path, on_notify=on_notify
    ) as c:
        assert c.call("subscribe", n=3) == "ok"  # arrive while the call is in flight
        assert c.call("later_notes", n=5) == "ok"  # arrive while the client is idle
        assert done.wait(10)
    assert got == [("event", i) for i in range(3)] + [("event", i) for i in range(5)]


@pytest.mark.anyio
@pytest.mark.parametrize("portable", ENGINES)
async def test_async_notifications(tmp_path: Path, portable: bool) -> None:
    async with served(tmp_path, portable) as (path, services), connect_unix(
        path, portable=portable
    ) as conn:
        for v in range(5):
            await conn.notify("note_sink", v=v)
        await conn.notify("unknown_note")  # dropped, not an error
        with anyio.fail_after(5):
            while not services or len(services[0].order) < 5:
                await anyio.sleep(0.01)
        assert sorted(services[0].order) == list(range(5))


def test_service_error_codes_survive_the_wire() -> None:
    """An error class a service package defines keeps its code in a process that does
    not know it, and becomes its own class once registered."""
    from nexusfs.bus.protocol import error_from_wire, error_message
    from nexusfs.errors import NexusError, register_error

    class ModelProblem(NexusError, ValueError):
        code = "test_model_problem"

    wire = error_message(7, ModelProblem("bad model at 3:1"))
    unknown = error_from_wire(wire["c"], wire["msg"], wire["p"])
    assert type(unknown) is NexusError and unknown.code == "test_model_problem"
    assert str(unknown) == "bad model at 3:1"
    register_error(ModelProblem)
    known = error_from_wire(wire["c"], wire["msg"], wire["p"])
    assert isinstance(known, ModelProblem) and isinstance(known, ValueError)

    class Impostor(NexusError):
        code = "test_model_problem"

    with pytest.raises(ValueError, match="already belongs to"):
        register_error(Impostor)


# -- handler kinds, inline serving, deadlines at scale (fast engine) ----------------------


def test_handler_kinds() -> None:
    from nexusfs.bus._serve import INLINE, PLAIN, TASK, handler_kind

    svc = Service()

    async def awaits() -> None:
        await anyio.sleep(0)

    async def no_await(x: int) -> int:
        return x

    class CallableObject:
        async def __call__(self) -> None:
            await anyio.sleep(0)

    assert handler_kind(svc.secho) == PLAIN
    assert handler_kind(svc.later) == PLAIN  # returns a coroutine: decided per result
    assert handler_kind(svc.echo) == INLINE and handler_kind(no_await) == INLINE
    assert handler_kind(svc.hang) == TASK and handler_kind(awaits) == TASK
    assert handler_kind(functools.partial(awaits)) == TASK
    assert handler_kind(len) == PLAIN
    assert handler_kind(CallableObject()) == PLAIN  # its awaitable result runs in a task


@pytest.mark.anyio
@pytest.mark.parametrize("portable", ENGINES)
async def test_inline_and_task_handlers(tmp_path: Path, portable: bool) -> None:
    async with served(tmp_path, portable) as (path, _), connect_unix(
        path, portable=portable
    ) as conn:
        assert await conn.call("soon", x=1) == 2
        assert await conn.call("later", x=3, delay=0.01) == 3
        name = await conn.call("current_task_name")
        assert (name is None) == (not portable)  # the fast engine serves it inline
        # A slow handler in its task never holds up inline answers on the same socket.
        async with anyio.create_task_group() as tg:
            done: list[str] = []

            async def slow() -> None:
                await conn.call("later", x=0, delay=0.5)
                done.append("slow")

            tg.start_soon(slow)
            for i in range(20):
                assert await conn.call("echo", x=i) == i
            done.append("inline")
        assert done == ["inline", "slow"]


@pytest.mark.anyio
@pytest.mark.parametrize("portable", ENGINES)
async def test_many_deadlines_each_at_its_time(tmp_path: Path, portable: bool) -> None:
    async with served(tmp_path, portable) as (path, services), connect_unix(
        path, portable=portable
    ) as conn:
        late: list[float] = []

        async def one(i: int) -> None:
            timeout = 0.1 + 0.02 * i
            t0 = time.monotonic()
            with pytest.raises(DeadlineExceeded, match="hang: deadline exceeded"):
                await conn.call("hang", timeout=timeout)
            late.append(time.monotonic() - t0 - timeout)

        async with anyio.create_task_group() as tg:
            for i in range(20):
                tg.start_soon(one, i)
        assert len(late) == 20
        assert min(late) >= -0.005  # never early (5 ms: clock granularity)
        with anyio.fail_after(10):
            while services[0].cancel_count < 20:
                await anyio.sleep(0.01)
        assert await conn.call("echo", x="ok") == "ok"


@pytest.mark.anyio
async def test_notifications_of_every_kind(tmp_path: Path) -> None:
    async with served(tmp_path) as (path, services), connect_unix(path) as conn:
        for v in range(3):
            await conn.notify("note_sink", v=v)
            await conn.notify("note_plain", v=v)
            await conn.notify("note_awaits", v=v)
        with anyio.fail_after(5):
            while not services or len(services[0].order) < 9:
                await anyio.sleep(0.01)
        assert sorted(services[0].order) == [0, 1, 2, 1000, 1001, 1002, 2000, 2001, 2002]


def test_deadline_queue() -> None:
    from nexusfs.bus._deadlines import DeadlineQueue

    async def main() -> None:
        loop = asyncio.get_running_loop()
        fired: list[tuple[int, float]] = []
        live = {1, 2, 3}
        q = DeadlineQueue(loop, lambda k, _t: fired.append((k, time.time())),
                          lambda k, _t: k in live)
        now = time.time()
        when = {1: now + 0.15, 2: now + 0.05, 3: now + 0.10, 4: now + 0.02}
        for k, w in when.items():
            q.add(w, k, None)
        live.discard(3)  # finished meanwhile: must not fire
        await asyncio.sleep(0.3)
        assert [k for k, _ in fired] == [2, 1]
        assert all(t >= when[k] for k, t in fired)  # never early
        # Entries that die unfired (the common case) are compacted away as they pile up.
        for i in range(10, 5000):
            q.add(time.time() + 60, i, None)  # none of them live
        assert len(q) <= 2100
        q.close()
        q.add(time.time(), 1, None)
        await asyncio.sleep(0.05)
        assert len(fired) == 2  # closed: nothing fires any more

    asyncio.run(main())


def test_frame_packer_matches_encode_frame_and_recovers() -> None:
    from nexusfs.bus.protocol import FramePacker

    msg = {"t": "res", "id": 9, "r": {"a": [1, b"x", None]}}
    packer = FramePacker(1024)
    assert packer.frame(msg) == encode_frame(msg, 1024)
    with pytest.raises(FrameTooLarge):
        packer.frame({"t": "res", "id": 1, "r": b"x" * 2000})
    with pytest.raises(TypeError):
        packer.frame({"t": "res", "id": 1, "r": {"nested": object()}})
    assert packer.frame(msg) == encode_frame(msg, 1024)  # usable after a failure


def test_decoder_large_frames_in_pieces() -> None:
    big = {"t": "res", "id": 1, "r": b"z" * 100_000}  # above the copy threshold
    data = bytearray(encode_frame(big) + encode_frame({"t": "cancel", "id": 2}))
    dec = FrameDecoder()
    out = []
    for i in range(0, len(data), 30_000):
        out += dec.feed(data[i : i + 30_000])
    assert [m["id"] for m in out] == [1, 2] and out[0]["r"] == big["r"]
    assert dec.pending == 0


def test_event_loop_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    from nexusfs.bus import runner
    from nexusfs.errors import ConfigError

    async def loop_module() -> str:
        return type(asyncio.get_running_loop()).__module__

    monkeypatch.setenv(runner.ENV, "asyncio")
    assert runner.event_loop_name() == "asyncio"
    assert runner.run(loop_module).startswith("asyncio")
    monkeypatch.setenv(runner.ENV, "tokio")
    with pytest.raises(ConfigError, match="NEXUS_EVENT_LOOP='tokio'"):
        runner.event_loop_name()
    with pytest.raises(ConfigError):
        runner.run(loop_module)
    monkeypatch.setenv(runner.ENV, "uvloop")
    if importlib.util.find_spec("uvloop") is not None:
        assert runner.event_loop_name() == "uvloop" == runner.preload()
        assert runner.run(loop_module).startswith("uvloop")
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "uvloop" else real_find_spec(name, *a))
    with pytest.raises(ConfigError, match="not installed"):
        runner.event_loop_name()
    monkeypatch.setenv(runner.ENV, "auto")
    assert runner.event_loop_name() == "asyncio"  # auto falls back without uvloop
