"""Tests of the bus's synchronous client (nexusfs.bus.BlockingClient) against a real
server, and of typed errors crossing the wire. Timing bounds are generous (seconds)."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path
from typing import Any

import anyio
import pytest

from bus_testkit import (
    ENGINES,
    LOOPS,
    served,
    served_in_thread,
)
from nexusfs.bus import (
    BlockingClient,
    DeadlineExceeded,
    FrameTooLarge,
    InternalError,
    UnknownMethod,
    connect_unix,
)
from nexusfs.errors import NexusError, NotFound, ServiceUnavailable


@pytest.fixture(params=LOOPS)
def anyio_backend(request: pytest.FixtureRequest) -> Any:
    return request.param


# -- BlockingClient -----------------------------------------------------------------------


#: The client's two read paths: sleeping in ``recv`` at once, and busy-polling (a window
#: of a whole second, so every quick answer below is taken by the polling loop).
BUSY_POLLS = [pytest.param(0.0, id="blocking-recv"), pytest.param(1.0, id="busy-poll")]


@pytest.mark.parametrize("busy_poll", BUSY_POLLS)
def test_blocking_client_basics(tmp_path: Path, busy_poll: float) -> None:
    with served_in_thread(tmp_path) as (path, services), BlockingClient(
        path, busy_poll=busy_poll
    ) as c:
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


@pytest.mark.parametrize("busy_poll", BUSY_POLLS)
def test_blocking_client_8_threads(tmp_path: Path, busy_poll: float) -> None:
    with served_in_thread(tmp_path) as (path, _), BlockingClient(path, busy_poll=busy_poll) as c:
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


@pytest.mark.parametrize("busy_poll", BUSY_POLLS)
def test_blocking_client_connection_loss(tmp_path: Path, busy_poll: float) -> None:
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    path = str(tmp_path / "dead.sock")
    listener.bind(path)
    listener.listen()
    c = BlockingClient(path, timeout=30, busy_poll=busy_poll)
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
    from nexusfs.errors import register_error

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

