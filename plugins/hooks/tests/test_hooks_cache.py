"""The hooks service on the CacheStore pillar: ``wait_events`` long-polls and rule
changes fan out through the cache store, and everything keeps working without one.

Two plugin instances on one RecordStore stand for two workers (or two kernels of a
cloud deployment sharing PostgreSQL and Redis). With a shared cache store (a real
redis-server) a change on one is seen by the other at once; with ``NullCacheStore``, or
with Redis stopped mid-run, the other sees it by polling: later, but nothing is lost
and nothing fails. Every test runs on SQLite and PostgreSQL (the ``store`` fixture).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hooks_testkit import Service, ev, start_service

from nexusfs.drivers.cachestore import NullCacheStore, open_cache_store
from nexusfs.drivers.recordstore import SQLAlchemyRecordStore
from nexusfs.testing.redis import RedisServer, private_redis_server
from nexusfs_hooks.plugin import POLL_INTERVAL


@pytest.fixture
def redis() -> Iterator[RedisServer]:
    with private_redis_server() as srv:
        yield srv


def post_later(service: Service, seq: int, delay: float) -> threading.Thread:
    def run() -> None:
        time.sleep(delay)
        service.post(ev("write", f"/f{seq}", seq))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def timed_wait(service: Service, after_seq: int, timeout: float) -> tuple[list[dict], float]:
    t0 = time.monotonic()
    rows = service.call("wait_events", after_seq=after_seq, timeout=timeout)
    return rows, time.monotonic() - t0


def test_wait_events_returns_at_once_or_times_out(service: Service) -> None:
    service.post(ev("write", "/a", 1))
    rows, took = timed_wait(service, 0, 5.0)
    assert [r["path"] for r in rows] == ["/a"] and took < 1.0
    rows, took = timed_wait(service, rows[-1]["seq"], 0.3)
    assert rows == [] and 0.25 <= took < 2.0
    with pytest.raises(ValueError, match="after_seq"):
        service.call("wait_events", after_seq="1")
    with pytest.raises(ValueError, match="timeout"):
        service.call("wait_events", after_seq=0, timeout=-1)


def test_wait_events_is_woken_in_process_without_a_cache(service: Service) -> None:
    """NullCacheStore: the post-hook's signal is delivered in-process, so a waiter in
    the same worker wakes at once, not at the next poll."""
    last = service.call("last_seq")
    post_later(service, 10, 0.3).join(0)
    rows, took = timed_wait(service, last, 10.0)
    assert [r["path"] for r in rows] == ["/f10"]
    assert took < 0.3 + POLL_INTERVAL + 1.0


def test_without_a_shared_cache_another_worker_polls(
    store: SQLAlchemyRecordStore, tmp_path: Path
) -> None:
    a = start_service(store, tmp_path / "a", cache_store=NullCacheStore())
    b = start_service(store, tmp_path / "b", cache_store=NullCacheStore(), refresh_ms=0)
    try:
        post_later(a, 1, 0.2)
        rows, took = timed_wait(b, 0, 10.0)  # B's in-process signal never comes: polls
        assert [r["path"] for r in rows] == ["/f1"] and took < 5.0
        a.call("add_rule", op="write", glob="/secret/**", action="deny")
        assert b.pre(ev("write", "/secret/x", 2))  # refresh_ms=0: re-checked every time
    finally:
        a.stop()
        b.stop()


def test_shared_cache_wakes_other_workers_and_reloads_their_rules(
    store: SQLAlchemyRecordStore, tmp_path: Path, redis: RedisServer
) -> None:
    cache_a, cache_b = open_cache_store(redis.url), open_cache_store(redis.url)
    # B would only look at the rules table once a minute on its own.
    a = start_service(store, tmp_path / "a", cache_store=cache_a, refresh_ms=60_000)
    b = start_service(store, tmp_path / "b", cache_store=cache_b, refresh_ms=60_000)
    try:
        assert cache_b.shared
        post_later(a, 1, 0.3)
        rows, took = timed_wait(b, 0, 20.0)
        assert [r["path"] for r in rows] == ["/f1"]
        assert took < 3.0  # pushed: a shared store's waiter does not poll at all

        assert not b.pre(ev("write", "/secret/x", 2))
        a.call("add_rule", op="write", glob="/secret/**", action="deny", message="no")
        deadline = time.monotonic() + 5.0
        while not b.pre(ev("write", "/secret/x", 3)):
            assert time.monotonic() < deadline, "B never saw A's rule"
            time.sleep(0.02)
    finally:
        a.stop()
        b.stop()
        cache_a.close()
        cache_b.close()


def test_losing_redis_degrades_to_polling_and_recovers(
    store: SQLAlchemyRecordStore, tmp_path: Path, redis: RedisServer
) -> None:
    cache_a, cache_b = open_cache_store(redis.url), open_cache_store(redis.url)
    a = start_service(store, tmp_path / "a", cache_store=cache_a)
    b = start_service(store, tmp_path / "b", cache_store=cache_b)
    try:
        redis.kill()
        a.post(ev("write", "/during-outage", 1))  # the audit log does not need Redis
        rows, took = timed_wait(b, 0, 10.0)
        assert [r["path"] for r in rows] == ["/during-outage"]
        assert took < 5.0

        redis.restart()
        deadline = time.monotonic() + 15.0
        while not (cache_a.shared and cache_b.shared):
            assert time.monotonic() < deadline, "the cache stores did not recover"
            time.sleep(0.05)
        post_later(a, 2, 0.3)
        rows, took = timed_wait(b, rows[-1]["seq"], 20.0)
        assert [r["path"] for r in rows] == ["/f2"] and took < 3.0
    finally:
        a.stop()
        b.stop()
        cache_a.close()
        cache_b.close()
