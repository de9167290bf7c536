"""Tests of the local bus (nexusfs.bus): framing, the async Connection (both engines) and
serve_unix hardening. BlockingClient: ``test_bus_blocking.py``; the fast engine's
internals: ``test_bus_engine.py``. Timing bounds are generous (seconds)."""

from __future__ import annotations

import logging
import os
import socket
import stat
import struct
import time
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import msgpack
import pytest

from bus_testkit import (
    ENGINES,
    LOOPS,
    Service,
    assert_closed_by_peer,
    frame,
    raw_connect,
    read_frame,
    served,
    served_in_thread,
    wait_until,
)
from nexusfs.bus import (
    BlockingClient,
    DeadlineExceeded,
    FrameTooLarge,
    InternalError,
    UnknownMethod,
    connect_unix,
    serve_unix,
)
from nexusfs.bus.protocol import FrameDecoder, ProtocolError, encode_frame
from nexusfs.errors import Conflict, NexusError, NotFound, ServiceUnavailable


@pytest.fixture(params=LOOPS)
def anyio_backend(request: pytest.FixtureRequest) -> Any:
    return request.param


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
