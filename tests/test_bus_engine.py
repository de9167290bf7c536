"""Tests of the bus's fast asyncio engine and its parts: handler kinds and inline
serving, deadlines at scale, the deadline queue, the frame packer and decoder, and the
choice of event loop. Timing bounds are generous (seconds)."""

from __future__ import annotations

import asyncio
import functools
import importlib.util
import os
import socket
import struct
import threading
import time
from pathlib import Path
from typing import Any

import anyio
import pytest

from bus_testkit import (
    ENGINES,
    LOOPS,
    Service,
    frame,
    raw_connect,
    read_frame,
    served,
    served_in_thread,
)
from nexusfs.bus import (
    DeadlineExceeded,
    FrameTooLarge,
    connect_unix,
)
from nexusfs.bus._asyncio_engine import _CHUNK_FRAMES
from nexusfs.bus.protocol import FrameDecoder, encode_frame
from nexusfs.errors import NotFound


@pytest.fixture(params=LOOPS)
def anyio_backend(request: pytest.FixtureRequest) -> Any:
    return request.param


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


def test_inline_runner_runs_coroutines_that_cannot_suspend() -> None:
    """``inline_runner`` returns each coroutine's result, any value at all, many times
    over; an exception reaches the caller with its traceback and spends the runner (a
    fresh one works); the coroutines are finished, none left pending."""
    from nexusfs.bus._serve import inline_runner

    async def value(x: Any) -> Any:
        return x

    async def fails(msg: str) -> None:
        raise NotFound(msg, path="/x")

    run = inline_runner()
    values = [None, 0, "s", b"b", [1, (2,)], {"k": None}, StopIteration]
    coros = [value(v) for v in values * 100]
    assert [run(c) for c in coros] == values * 100
    assert all(c.cr_frame is None for c in coros)  # (returned, not suspended)
    with pytest.raises(NotFound, match="boom") as info:
        run(fails("boom"))
    assert info.value.path == "/x" and info.traceback[-1].name == "fails"
    unrun = value(1)
    with pytest.raises(StopIteration):
        run(unrun)  # spent
    unrun.close()
    assert inline_runner()(value("again")) == "again"


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


# -- bursts leave in chunks (the two processes work at once) -----------------------------


def frames_waiting(s: socket.socket) -> int:
    """How many whole frames the peer has written to ``s`` (a socket with a timeout, so
    already non-blocking underneath) and ``s`` has not read. Safe while another thread
    reads ``s``: it peeks through a descriptor of its own."""
    with socket.socket(fileno=os.dup(s.fileno())) as view:
        view.settimeout(0.0)
        try:
            data = view.recv(1 << 20, socket.MSG_PEEK)
        except BlockingIOError:
            return 0
    pos = count = 0
    while len(data) - pos >= 4:
        (size,) = struct.unpack_from(">I", data, pos)
        if len(data) - pos - 4 < size:
            break
        pos += 4 + size
        count += 1
    return count


@pytest.mark.anyio
async def test_a_burst_of_calls_leaves_in_chunks(tmp_path: Path) -> None:
    """64 calls issued in one pass of the loop: while the 41st is being issued, the
    first chunks are on the socket already (the peer can start on them), not held back
    until the whole burst is queued; every call still gets its own answer."""
    path = tmp_path / "peer.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen()
    peeked = threading.Event()

    def answer(peer: socket.socket) -> None:
        for n in (1, 64):  # a first call, then the burst once it has been looked at
            for _ in range(n):
                msg = read_frame(peer)
                peer.sendall(frame({"t": "res", "id": msg["id"], "r": msg["a"]["x"]}))
            peeked.wait(10)

    async with connect_unix(path) as conn:
        peer, _ = listener.accept()
        peer.settimeout(10)
        answerer = threading.Thread(target=answer, args=(peer,))
        answerer.start()
        assert await conn.call("echo", x=-1, timeout=10) == -1  # (the engine is up)
        waiting: list[int] = []
        got: list[int] = []

        async def one(i: int) -> None:
            if i == 40:
                waiting.append(frames_waiting(peer))
                peeked.set()
            got.append(await conn.call("echo", x=i, timeout=10))

        try:
            async with anyio.create_task_group() as tg:
                for i in range(64):
                    tg.start_soon(one, i)
        finally:
            peeked.set()
            answerer.join(10)
            peer.close()
            listener.close()
    assert len(waiting) == 1 and waiting[0] >= 40 // _CHUNK_FRAMES * _CHUNK_FRAMES
    assert sorted(got) == list(range(64))


def test_answers_to_a_long_burst_leave_in_chunks(tmp_path: Path) -> None:
    """64 requests arrive in one read: while the server answers the later ones, the
    answers to the first chunks have reached the client already. Each answer reports
    how many answers the client could read when its request was served."""
    client: list[socket.socket] = []
    served_all = threading.Event()

    def probe(i: int) -> int:
        waiting = frames_waiting(client[0])
        if i == 63:
            served_all.set()
        return waiting

    with served_in_thread(tmp_path, lambda conn: {"probe": probe}) as (path, _):
        s = raw_connect(path)
        client.append(s)
        s.sendall(b"".join(
            frame({"t": "req", "id": i, "m": "probe", "a": {"i": i}, "d": None})
            for i in range(64)))
        assert served_all.wait(10)  # (the client reads nothing before)
        seen = {m["id"]: m["r"] for m in (read_frame(s) for _ in range(64))}
        s.close()
    assert sorted(seen) == list(range(64))
    assert seen[0] == 0
    for i in range(64):  # (more if the requests came in more than one read)
        assert seen[i] >= i // _CHUNK_FRAMES * _CHUNK_FRAMES, seen


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
