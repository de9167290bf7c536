"""Tests of busy-polling on the bus (nexusfs.bus._busy_poll): the adaptive policy, its
setting, the BlockingClient's polling for answers (its read paths are also covered by
the BlockingClient tests, parametrised over both), a polling connection's serving of
requests that arrive while it polls (partial, pipelined and bad frames, end of stream,
fairness towards other connections, giving up on slow peers), and a polling async
caller (answers, errors, calls back from the peer, deadlines, the peer leaving).
Timing bounds are generous."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest

from bus_testkit import (
    assert_closed_by_peer,
    frame,
    raw_connect,
    read_frame,
    served_in_thread,
)
from nexusfs.bus import (
    BlockingClient,
    Connection,
    DeadlineExceeded,
    InternalError,
    connect_unix,
)
from nexusfs.bus import _asyncio_engine as engine_module
from nexusfs.bus._busy_poll import BusyPoll, busy_poll_limit
from nexusfs.errors import ConfigError, NotFound, ServiceUnavailable

KERNEL = Path(__file__).resolve().parent.parent / "kernel"


def req(rid: int, method: str = "echo", **args: object) -> bytes:
    return frame({"t": "req", "id": rid, "m": method, "a": args, "d": None})


# -- the policy and its setting ---------------------------------------------------------


def test_policy_follows_recent_polled_waits() -> None:
    poll = BusyPoll(50e-6)
    assert poll.should_poll()
    for _ in range(20):
        poll.observe(20e-6)
    assert poll.active and poll.should_poll()  # quick answers: every wait polls
    poll.observe(2.0)  # one long idle gap does not turn polling off
    assert poll.active
    slow = 0
    while poll.active:
        poll.observe(400e-6)
        slow += 1
    assert slow <= 5  # a few slow waits in a row do
    polled = [poll.should_poll() for _ in range(4 * BusyPoll.PROBE_EVERY)]
    assert sum(polled) == 4  # from then on only one wait in 16 polls (a probe)
    for _ in range(BusyPoll.PROBE_EVERY - 1):
        assert not poll.should_poll()
    assert poll.should_poll()
    poll.observe(400e-6)  # a slow probe changes nothing
    assert not poll.active
    while not poll.should_poll():
        pass
    poll.observe(20e-6)  # a quick one turns polling back on at once
    assert poll.active
    assert not BusyPoll(0.0).should_poll() and not BusyPoll(0.0).active


def test_window_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NEXUS_BUS_BUSY_POLL_US", raising=False)
    assert busy_poll_limit() == pytest.approx(50e-6)
    monkeypatch.setenv("NEXUS_BUS_BUSY_POLL_US", "0")
    assert busy_poll_limit() == 0.0
    monkeypatch.setenv("NEXUS_BUS_BUSY_POLL_US", "120")
    assert busy_poll_limit() == pytest.approx(120e-6)
    for bad in ("fast", "-1", "nan", "1e9"):
        monkeypatch.setenv("NEXUS_BUS_BUSY_POLL_US", bad)
        with pytest.raises(ConfigError, match="NEXUS_BUS_BUSY_POLL_US"):
            busy_poll_limit()


def test_worker_with_a_bad_window_fails_to_load(tmp_path: Path) -> None:
    """A service worker checks the setting before anything else and reports it as a
    load failure (exit 3, one clear line), not a crash."""
    env = {**os.environ, "NEXUS_BUS_BUSY_POLL_US": "soon", "PYTHONPATH": str(KERNEL)}
    proc = subprocess.run(
        [sys.executable, "-m", "nexusfs.services.worker", "--name", "hooks",
         "--socket", str(tmp_path / "none.sock"), "--state-dir", str(tmp_path / "state"),
         "--token", "t"],
        env=env, capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 3, proc.stderr
    assert "NEXUS_BUS_BUSY_POLL_US='soon'" in proc.stderr


# -- the client ------------------------------------------------------------------------


def test_slow_answers_stop_the_client_polling(tmp_path: Path) -> None:
    """A client whose calls take longer than its window soon sleeps at once instead of
    burning CPU polling for every call."""
    with served_in_thread(tmp_path) as (path, _), BlockingClient(path, busy_poll=0.005) as c:
        cpu0 = time.thread_time()
        for i in range(40):
            assert c.call("delayed", i=i, delay=0.02) == i
        spent = time.thread_time() - cpu0
    # Polling every call for its whole 5 ms window would cost 200 ms of CPU.
    assert spent < 0.1, f"{spent * 1e3:.0f} ms of CPU for 40 slow calls"


# -- a polling connection --------------------------------------------------------------


def test_polling_server_serves_what_arrives_while_it_polls(tmp_path: Path) -> None:
    """Within the window (here 200 ms) every byte after an answer is read by the polling
    loop: a frame in pieces, a pipelined burst, a notification, then garbage."""
    with served_in_thread(tmp_path, busy_poll=0.2) as (path, services):
        s = raw_connect(path)
        s.sendall(req(1, x=1))
        assert read_frame(s) == {"t": "res", "id": 1, "r": 1}
        whole = req(2, x="a" * 1000)
        s.sendall(whole[:3])  # not even a whole header
        time.sleep(0.01)
        s.sendall(whole[3:500])
        time.sleep(0.01)
        s.sendall(whole[500:])
        assert read_frame(s) == {"t": "res", "id": 2, "r": "a" * 1000}
        s.sendall(b"".join(req(100 + i, "add", a=i, b=1) for i in range(200)))
        got = [read_frame(s) for _ in range(200)]
        assert sorted(m["r"] for m in got) == [i + 1 for i in range(200)]
        big = "z" * (1 << 20)  # larger than one read: the rest comes in later reads
        s.sendall(req(3, x=big))
        assert read_frame(s) == {"t": "res", "id": 3, "r": big}
        s.sendall(frame({"t": "note", "m": "note_plain", "a": {"v": 7}}))
        s.sendall(req(4, x=4))
        assert read_frame(s) == {"t": "res", "id": 4, "r": 4}
        assert 1007 in services[0].order
        s.sendall(b"\x00\x00\x00\x02\xc1\xc1")  # a frame of invalid msgpack
        assert_closed_by_peer(s)
        s.close()
        with BlockingClient(path) as c:  # the server is unharmed
            assert c.call("echo", x="still here") == "still here"


def test_polling_server_answers_every_kind_of_request_it_catches(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each request below arrives alone, as one whole frame, while the server polls
    (window 10 s): the case the polling loop serves on its own, with no queueing. Every
    kind of handler and failure is answered exactly as through the event loop: async
    and plain handlers, a plain handler's coroutine (without and with ``await``), a
    handler that runs in a task, one that queues a frame of its own first, errors, an
    unknown method, an oversized result; a notification and a cancel for nothing in
    between get no answer and change nothing. A request reusing the id of one still
    running is a protocol error that closes the connection, and the server is
    unharmed."""
    caught: list[int] = []
    poll_read = engine_module.AsyncioEngine._poll_read

    def counting(self: engine_module.AsyncioEngine, until: float) -> int:
        n = poll_read(self, until)
        if n > 0:
            caught.append(n)
        return n

    monkeypatch.setattr(engine_module.AsyncioEngine, "_poll_read", counting)
    monkeypatch.setattr(engine_module, "_POLL_BUDGET", 60.0)  # (polls between our sends)
    with served_in_thread(tmp_path, busy_poll=10.0, max_frame_size=4096) as (path, services):
        s = raw_connect(path)
        s.sendall(req(1, x="first"))  # (read by the loop: polling starts after it)
        assert read_frame(s) == {"t": "res", "id": 1, "r": "first"}
        expected: list[tuple[bytes, Any]] = [
            (req(2, x=[1, "two"]), {"t": "res", "id": 2, "r": [1, "two"]}),
            (req(3, "secho", x=3), {"t": "res", "id": 3, "r": 3}),
            (req(4, "soon", x=4), {"t": "res", "id": 4, "r": 5}),
            (req(5, "later", x=5, delay=0.01), {"t": "res", "id": 5, "r": 5}),
            (req(6, "delayed", i=6, delay=0.01), {"t": "res", "id": 6, "r": 6}),
            (req(7, "current_task_name"), {"t": "res", "id": 7, "r": None}),
            (req(8, "note_first", x=8), {"t": "res", "id": 8, "r": 8}),
            (req(9, "missing", path="/gone"),
             {"t": "err", "id": 9, "c": "not_found", "msg": "no such file", "p": "/gone"}),
            (req(10, "no_such_method"), None),
            (req(11, "boom"), None),
            (req(12, "big", n=8192), None),
            (req(13, "conflict"), None),
        ]
        for rid, (request, answer) in enumerate(expected, start=2):
            s.sendall(request)
            if rid == 8:  # (the handler's own frame comes first)
                assert read_frame(s) == {"t": "note", "m": "hello", "a": {"x": 8}}
            got = read_frame(s)
            if answer is not None:
                assert got == answer
            else:
                assert got["t"] == "err" and got["id"] == rid, got
                assert got["c"] == {10: "unknown_method", 11: "internal",
                                    12: "frame_too_large", 13: "conflict"}[rid], got
            if rid == 6:
                assert services[0].order == [6]
        s.sendall(frame({"t": "note", "m": "note_plain", "a": {"v": 1}}))
        time.sleep(0.05)
        s.sendall(frame({"t": "cancel", "id": 999}))
        time.sleep(0.05)
        s.sendall(req(14, x="after"))
        assert read_frame(s) == {"t": "res", "id": 14, "r": "after"}
        assert services[0].order == [6, 1001]
        s.sendall(req(15, "hang"))
        assert services[0].started.wait(10)
        s.sendall(req(15, x="same id"))
        assert_closed_by_peer(s)
        assert services[0].cancelled.wait(10)  # (the running handler is cancelled)
        s.close()
        with BlockingClient(path) as c:
            assert c.call("echo", x="still here") == "still here"
    # Polling stops when a read writes no answer (a request answered by a task, the
    # notification) and resumes after the next answer: 2-5, 8-13, the notification and
    # 15 were read by the polling loop.
    assert len(caught) == 12, caught


def test_polling_server_sees_the_peer_leave_while_it_polls(tmp_path: Path) -> None:
    with served_in_thread(tmp_path, busy_poll=0.2) as (path, _):
        for i in range(5):
            s = raw_connect(path)
            s.sendall(req(1, x=i))
            assert read_frame(s) == {"t": "res", "id": 1, "r": i}
            s.close()  # EOF arrives during the window
        with BlockingClient(path) as c:
            assert c.call("echo", x="ok") == "ok"


_HAMMER = """
import sys, time
sys.path.insert(0, sys.argv[2])
from nexusfs.bus import BlockingClient
c = BlockingClient(sys.argv[1], busy_poll=0.001)
print("go", flush=True)
end = time.monotonic() + 3.0
while time.monotonic() < end:
    c.call("echo", x=1)
"""


@pytest.mark.parametrize("budget", [pytest.param(None, id="budget"),
                                    pytest.param(60.0, id="no-budget-must-fail")])
def test_polling_server_stays_fair(tmp_path: Path, budget: float | None,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A peer calling in a tight loop keeps its connection polling, but the loop still
    serves another connection within a few milliseconds (``_POLL_BUDGET`` of serving per
    read, then back to the loop). The second case takes the budget away to show that
    the test can fail."""
    if budget is not None:
        monkeypatch.setattr(engine_module, "_POLL_BUDGET", budget)
    with served_in_thread(tmp_path, busy_poll=0.05) as (path, _):
        hammer = subprocess.Popen([sys.executable, "-c", _HAMMER, str(path), str(KERNEL)],
                                  stdout=subprocess.PIPE, text=True)
        try:
            assert hammer.stdout is not None and hammer.stdout.readline().strip() == "go"
            time.sleep(0.3)
            worst = 0.0
            with BlockingClient(path, busy_poll=0) as c:
                for i in range(20):
                    t0 = time.perf_counter()
                    assert c.call("echo", x=i) == i
                    worst = max(worst, time.perf_counter() - t0)
                    time.sleep(0.02)
        finally:
            hammer.kill()
            hammer.wait()
    if budget is None:
        assert worst < 0.5, f"a call waited {worst * 1e3:.0f} ms behind a polling peer"
    else:
        assert worst > 0.5, "without the budget the other connection should starve"


def test_polling_server_stops_polling_for_slow_peers(tmp_path: Path) -> None:
    """A peer whose next call comes later than the window is waited for by the loop
    (asleep), not by polling: 40 calls 20 ms apart cost far less than 40 windows. The
    server keeps measuring, and polls again once the peer calls quickly again."""
    with served_in_thread(tmp_path, busy_poll=0.005) as (path, services), BlockingClient(
        path, busy_poll=0
    ) as c:
        c.call("echo", x=0)
        cpu0 = time.process_time()
        for i in range(40):
            time.sleep(0.02)
            assert c.call("echo", x=i) == i
        spent = time.process_time() - cpu0
        engine = services[0].conn._engine  # type: ignore[union-attr]
        assert isinstance(engine, engine_module.AsyncioEngine)
        assert not engine._busy_poll.active
        for i in range(400):  # the peer speeds up: probes find out, polling resumes
            assert c.call("echo", x=i) == i
        assert engine._busy_poll.active
    assert spent < 0.12, f"{spent * 1e3:.0f} ms of CPU: the server kept polling"


# -- a polling caller (the kernel's connection to its workers) ----------------------------


def _async_client(path: Path, busy_poll: float, body: Any) -> Any:
    """Run ``body(conn)`` on a fresh event loop (this thread) with a polling async
    client connection to ``path``."""

    async def main() -> Any:
        handlers = {"client_double": lambda x: 2 * x}
        async with connect_unix(path, handlers, busy_poll=busy_poll) as conn:
            return await body(conn)

    return anyio.run(main)


def test_polling_caller_gets_answers_errors_and_calls_back(tmp_path: Path) -> None:
    """With a window of a whole second every answer below is taken by the caller's
    polling loop, including a call from the server back to the caller made while the
    caller polls (served on the spot), errors, and pipelined calls (not polled)."""

    async def body(conn: Connection) -> list[Any]:
        out = [await conn.call("echo", x=1), await conn.call("add", a=2, b=3)]
        out.append(await conn.call("ask_back", x=20))  # server -> caller -> server
        with pytest.raises(InternalError):
            await conn.call("boom")
        with pytest.raises(NotFound):
            await conn.call("missing", path="/x")
        async with anyio.create_task_group() as tg:
            got: list[int] = []

            async def one(i: int) -> None:
                got.append(await conn.call("add", a=i, b=1))

            for i in range(50):
                tg.start_soon(one, i)
        out.append(sorted(got) == [i + 1 for i in range(50)])
        out.append(await conn.call("echo", x="z" * (1 << 20)) == "z" * (1 << 20))
        return out

    with served_in_thread(tmp_path) as (path, _):
        assert _async_client(path, 1.0, body) == [1, 5, 41, True, True]


def test_polling_caller_takes_answers_in_any_shape_of_read(tmp_path: Path) -> None:
    """A scripted peer answers each call in a differently shaped write while the caller
    polls (window 1 s): the answer alone (decoded by the polling call itself), after a
    notification in the same write, after a late answer to another call, split into
    two writes with a pause between them, a late answer to another call alone and then
    the answer, a notification alone and then the answer, and an error answer alone.
    Each call gets its own answer, the notifications reach their handler, nothing is
    left pending."""
    path = tmp_path / "scripted.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen()

    def serve() -> None:
        peer, _ = listener.accept()
        with peer:
            shapes = ("alone", "after_note", "after_stray", "split", "stray_first",
                      "note_first", "error")
            for shape in shapes:
                msg = read_frame(peer)
                assert msg is not None and msg["t"] == "req"
                rid = msg["id"]
                answer = frame({"t": "res", "id": rid, "r": [shape, msg["a"]["x"]]})
                if shape == "alone":
                    peer.sendall(answer)
                elif shape == "after_note":
                    peer.sendall(frame({"t": "note", "m": "client_note", "a": {"x": rid}})
                                 + answer)
                elif shape == "after_stray":
                    peer.sendall(frame({"t": "res", "id": rid + 1000, "r": "stray"}) + answer)
                elif shape == "split":
                    peer.sendall(answer[:3])
                    time.sleep(0.02)
                    peer.sendall(answer[3:])
                elif shape in ("stray_first", "note_first"):
                    peer.sendall(frame({"t": "res", "id": rid + 1000, "r": "stray"})
                                 if shape == "stray_first" else
                                 frame({"t": "note", "m": "client_note", "a": {"x": rid}}))
                    time.sleep(0.02)
                    peer.sendall(answer)
                else:
                    peer.sendall(frame({"t": "err", "id": rid, "c": "not_found",
                                        "msg": "no such thing", "p": "/gone"}))
            read_frame(peer)  # until the client leaves

    th = threading.Thread(target=serve)
    th.start()
    notes: list[int] = []

    async def main() -> list[Any]:
        handlers = {"client_note": lambda x: notes.append(x)}
        async with connect_unix(path, handlers, busy_poll=1.0) as conn:
            out = [await conn.call("echo", x=i) for i in range(6)]
            with pytest.raises(NotFound, match="no such thing"):
                await conn.call("echo", x=6)
            engine = conn._engine
            assert isinstance(engine, engine_module.AsyncioEngine)
            out.append(len(engine._calls))
            return out

    try:
        got = anyio.run(main)
    finally:
        th.join(10)
        listener.close()
    assert got == [["alone", 0], ["after_note", 1], ["after_stray", 2], ["split", 3],
                   ["stray_first", 4], ["note_first", 5], 0]
    assert len(notes) == 2


@contextmanager
def peer_that_never_answers(path: Path, *, leaves_after: float | None) -> Iterator[None]:
    """A bus peer at ``path`` that reads the first request and never answers it (not
    even with ``deadline_exceeded``); it closes the connection ``leaves_after`` seconds
    later, or when the block exits."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen()
    done = threading.Event()

    def serve() -> None:
        peer, _ = listener.accept()
        peer.recv(65536)
        done.wait(30 if leaves_after is None else leaves_after)
        peer.close()

    th = threading.Thread(target=serve)
    th.start()
    try:
        yield
    finally:
        done.set()
        th.join(10)
        listener.close()


def _timed_failure(timeout: float, error: type[Exception]) -> Callable[[Connection], Any]:
    async def body(conn: Connection) -> float:
        t0 = time.perf_counter()
        with pytest.raises(error):
            await conn.call("echo", x=1, timeout=timeout)
        return time.perf_counter() - t0

    return body


def test_polling_caller_keeps_its_deadline(tmp_path: Path) -> None:
    """A call polls at most until its deadline, even with a longer window."""
    path = tmp_path / "silent.sock"
    with peer_that_never_answers(path, leaves_after=None):
        took = _async_client(path, 3.0, _timed_failure(0.1, DeadlineExceeded))
    assert took < 1.5, f"the deadline of 0.1 s was kept only after {took:.2f} s"


def test_polling_caller_sees_the_peer_leave(tmp_path: Path) -> None:
    """The server dies while the caller polls for its answer: the call fails at once
    with ServiceUnavailable (the poll reads the end of stream itself)."""
    path = tmp_path / "dying.sock"
    with peer_that_never_answers(path, leaves_after=0.05):
        took = _async_client(path, 5.0, _timed_failure(30.0, ServiceUnavailable))
    assert took < 2.0
