"""Losing Redis at run time: a real redis-server is killed (``SIGKILL``) or hung
(``SIGSTOP``) while a store is in use, with a subscriber here and a publisher in another
process; then it comes back on the same port.

What must hold: every call keeps returning promptly (well under 1 s) without raising,
reads miss, writes are skipped, in-process pub/sub keeps delivering, each transition is
logged once (not per call); when the server returns the store recovers by itself
(``CONNECTED`` again, KV works, values whose writes were skipped are not served stale,
and the *same* subscription receives the other process's messages again). Each test
starts its own private server, since it stops it.
"""

from __future__ import annotations

import logging
import multiprocessing
import threading
import time
from collections.abc import Callable, Iterator
from multiprocessing.synchronize import Event as EventType
from typing import Any

import pytest

from nexusfs.abc import CacheState, CacheStoreABC
from nexusfs.drivers.cachestore import open_cache_store
from nexusfs.testing.redis import RedisServer, private_redis_server

#: Short timeouts on purpose: an outage should cost one of these at most.
OPTIONS: dict[str, Any] = {
    "socket_timeout": 0.25,
    "retry_min": 0.05,
    "retry_max": 0.5,
    "ping_interval": 0.25,
}
#: The bound every call must meet during the outage (the contract says "promptly").
PROMPT = 1.0
PATIENCE = 20.0


@pytest.fixture
def server() -> Iterator[RedisServer]:
    with private_redis_server() as srv:
        yield srv


def _wait_until(predicate: Callable[[], bool], timeout: float = PATIENCE) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


def _child_publisher(url: str, channel: str, stop: EventType) -> None:
    """Another process: publish a numbered message and set a key every 20 ms, through
    its own store, across the outage. Any exception fails it (exit code 1)."""
    store = open_cache_store(url, **OPTIONS)
    seq = 0
    try:
        while not stop.is_set():
            store.publish(channel, b"%d" % seq)
            store.set("child-last", b"%d" % seq, ttl=60)
            seq += 1
            time.sleep(0.02)
    finally:
        store.close()


class Timed:
    """Calls a store and records how long each call took."""

    def __init__(self) -> None:
        self.durations: list[float] = []

    def __call__(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        started = time.monotonic()
        try:
            return fn(*args, **kwargs)
        finally:
            self.durations.append(time.monotonic() - started)


def _state(store: CacheStoreABC) -> CacheState:
    """The store's state, read through a call (so that type checkers do not narrow it)."""
    return store.state


def _flags(store: CacheStoreABC) -> tuple[bool, bool]:
    """``(healthy, shared)``, read through a call."""
    return store.healthy, store.shared


def _numbers(messages: list[bytes]) -> list[int]:
    return [int(m) for m in messages]


def _take_all(sub: Any, timeout: float = 0.0) -> list[bytes]:
    out: list[bytes] = []
    while (message := sub.get(timeout)) is not None:
        out.append(message)
    return out


@pytest.mark.parametrize("failure", ["kill", "pause"])
def test_outage_and_recovery(
    server: RedisServer, failure: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="nexusfs.cachestore")
    ctx = multiprocessing.get_context("spawn")
    stop = ctx.Event()
    child = ctx.Process(target=_child_publisher, args=(server.url, "events", stop))
    store: CacheStoreABC = open_cache_store(server.url, **OPTIONS)
    try:
        assert _state(store) is CacheState.CONNECTED
        remote = store.subscribe("events")
        local = store.subscribe("local")
        child.start()

        # --- before: KV and cross-process pub/sub work.
        store.set("k", b"before")
        store.set("stale", b"old")
        assert store.get("k") == b"before"
        assert remote.get(PATIENCE) is not None, "no message from the other process"
        gaps_before = remote.gaps

        # --- the outage.
        getattr(server, failure)()
        timed = Timed()
        outage_started = time.monotonic()
        sent_locally = 0
        new_sub = None
        while time.monotonic() - outage_started < 1.5 or _state(store) is not CacheState.DEGRADED:
            assert time.monotonic() - outage_started < PATIENCE, "never noticed the outage"
            timed(store.get, "k")
            timed(store.set, "stale", b"new")  # skipped: must not leave "old" behind
            timed(store.delete, "gone")
            assert timed(store.publish, "local", b"%d" % sent_locally) >= 1
            sent_locally += 1
            if new_sub is None:
                new_sub = timed(store.subscribe, "late")
            timed(remote.get, 0)  # drain what arrived before the outage
            time.sleep(0.01)
        assert _state(store) is CacheState.DEGRADED
        assert _flags(store) == (False, False)  # neither healthy nor shared
        assert store.get("k") is None  # reads miss while down
        assert max(timed.durations) < PROMPT, f"slowest call {max(timed.durations):.3f} s"
        # In-process delivery never stopped, in order, nothing lost.
        assert _numbers(_take_all(local)) == list(range(sent_locally))
        assert remote.gaps > gaps_before  # the consumer can tell it may have missed some
        assert new_sub is not None and not new_sub.closed

        # --- the server returns on the same port.
        if failure == "pause":
            server.resume()
        else:
            server.start()
        assert _wait_until(lambda: _state(store) is CacheState.CONNECTED), "never recovered"
        assert _flags(store) == (True, True)  # healthy and shared

        # KV works again; the write skipped during the outage did not leave "old" behind
        # (after SIGSTOP the server still held it; after SIGKILL it lost everything).
        assert store.get("stale") is None
        store.set("k", b"after")
        assert store.get("k") == b"after"
        # The other process recovered too (its writes land again) ...
        assert _wait_until(lambda: store.get("child-last") is not None)
        # ... and the same subscriptions receive its messages again.
        _take_all(remote)
        resumed = [remote.get(PATIENCE) for _ in range(3)]
        assert None not in resumed, "cross-process pub/sub did not resume"
        assert _numbers([m for m in resumed if m is not None]) == sorted(
            _numbers([m for m in resumed if m is not None])
        )
        assert store.publish("late", b"x") >= 1
        assert new_sub.get(PATIENCE) == b"x"

        # Logged once per transition, not once per call.
        outages = store.health.outages  # type: ignore[attr-defined]
        lost = [r for r in caplog.records if "lost" in r.getMessage()
                and r.name == "nexusfs.cachestore" and r.levelno == logging.WARNING]
        back = [r for r in caplog.records if "is back" in r.getMessage()
                and r.name == "nexusfs.cachestore" and r.levelno == logging.INFO]  # fmt: skip
        assert outages >= 1
        assert len(lost) == outages and len(back) == outages
        assert len(timed.durations) > 10 * outages
    finally:
        stop.set()
        child.join(60)
        if child.is_alive():
            child.kill()
            child.join()
        store.close()
    assert child.exitcode == 0, "the publisher process saw an exception"


def test_close_is_prompt_while_the_server_hangs(server: RedisServer) -> None:
    store = open_cache_store(server.url, **OPTIONS)
    sub = store.subscribe("c")
    server.pause()
    try:
        store.get("k")  # times out once: degraded from here on
        started = time.monotonic()
        store.close()
        assert time.monotonic() - started < 5.0
        assert sub.closed
        assert _state(store) is CacheState.CLOSED
    finally:
        server.resume()


def test_calls_from_many_threads_during_an_outage(server: RedisServer) -> None:
    """Threads that are mid-call when the server hangs pay one socket timeout at most;
    none raises, and none waits for another."""
    store = open_cache_store(server.url, **OPTIONS)
    errors: list[BaseException] = []
    slowest: list[float] = []
    go = threading.Event()

    def worker(n: int) -> None:
        go.wait()
        worst = 0.0
        try:
            for i in range(200):
                started = time.monotonic()
                store.set(f"t{n}", b"%d" % i, ttl=10)
                store.get(f"t{n}")
                store.publish("c", b"m")
                worst = max(worst, time.monotonic() - started)
                time.sleep(0.005)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)
        slowest.append(worst)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    try:
        for t in threads:
            t.start()
        go.set()
        time.sleep(0.1)
        server.pause()
        for t in threads:
            t.join(60)
        assert errors == []
        assert len(slowest) == 4
        # One iteration does three calls; an outage costs one socket timeout at most.
        assert max(slowest) < PROMPT
        assert _state(store) is CacheState.DEGRADED
    finally:
        server.resume()
        store.close()
