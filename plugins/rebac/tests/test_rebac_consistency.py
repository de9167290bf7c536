"""Consistency across workers: tokens, the change-log catch-up, the cache store channel,
and atomicity of writes in memory.

Two plugin instances on one record store stand for two workers (a hot restart) or two
kernels sharing PostgreSQL. Every test runs on SQLite and PostgreSQL (``store``); the
Redis tests use a private ``redis-server``, stopped and restarted to prove that a lost
cache store only slows catching up, never breaks it.
"""

from __future__ import annotations

import multiprocessing
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from _rebac_workers import child_writes
from rebac_service_kit import DOCS_MODEL, Starter, Worker, wait_until

from nexusfs.abc import CacheStoreABC
from nexusfs.api import FileSystem
from nexusfs.drivers.cachestore import NullCacheStore, open_cache_store
from nexusfs.testing.redis import RedisServer

#: A worker that would never look at the store by itself within a test.
LAZY = {"poll_ms": 600_000, "shared_poll_ms": 600_000, "stale_ms": 600_000}

ANNE = {"user": "user:anne", "relation": "can_read", "object": "document:1"}


@pytest.fixture
def caches(redis: RedisServer) -> Iterator[tuple[CacheStoreABC, CacheStoreABC]]:
    """Two cache stores on the private Redis (one per worker), closed after the test."""
    a, b = open_cache_store(redis.url), open_cache_store(redis.url)
    yield a, b
    a.close()
    b.close()


def pair(workers: Starter, *, b_config: dict[str, Any], cache_a: Any = None,
         cache_b: Any = None) -> tuple[Worker, Worker]:  # fmt: skip
    """Worker A (with the documents model) and worker B on the same store."""
    a = workers("a", cache_store=cache_a, config=LAZY)
    a.call("write_model", dsl=DOCS_MODEL)
    b = workers("b", cache_store=cache_b, config=b_config)
    return a, b


def test_a_token_from_worker_a_is_honoured_by_worker_b(workers: Starter) -> None:
    """No new enemy: B (which never polls here) answers with A's revoke token only after
    replaying the revoke; without the token it may answer from its older state."""
    a, b = pair(workers, b_config=LAZY)
    grant = a.call("write", writes=["document:1#viewer@user:anne"])
    assert not b.call("check", **ANNE)  # B does not know yet, and was not asked to
    assert b.call("check", consistency=grant, **ANNE)
    revoke = a.call("write", writes=["document:1#blocked@user:anne"])
    assert b.call("check", **ANNE)  # stale: B was not told
    assert not b.call("check", consistency=revoke, **ANNE)
    assert b.call("batch_check", checks=[ANNE], consistency=revoke) == [False]
    assert b.call("list_objects", user="user:anne", relation="can_read",
                  type="document", consistency=revoke) == []  # fmt: skip
    # B's own write after A's: both are applied, in revision order.
    mine = b.call("write", deletes=["document:1#blocked@user:anne"])
    assert b.call("check", **ANNE)
    assert a.call("check", consistency=mine, **ANNE)


def test_without_a_shared_cache_other_workers_poll(workers: Starter) -> None:
    a, b = pair(workers, b_config={"poll_ms": 50}, cache_b=NullCacheStore())
    a.call("write", writes=["document:1#viewer@user:anne"])
    took = wait_until(lambda: b.call("check", **ANNE), what="B polls A's write")
    assert took < 5.0


def test_a_stale_follower_is_caught_up_by_the_request_path(workers: Starter) -> None:
    """If the follower has not confirmed freshness for ``stale_ms``, a request syncs."""
    a, b = pair(workers, b_config={**LAZY, "stale_ms": 1})
    a.call("write", writes=["document:1#viewer@user:anne"])
    time.sleep(0.01)
    assert b.call("check", **ANNE)


def test_a_shared_cache_pushes_revisions_to_other_workers(
    workers: Starter, caches: tuple[CacheStoreABC, CacheStoreABC]
) -> None:
    cache_a, cache_b = caches
    a, b = pair(workers, b_config=LAZY, cache_a=cache_a, cache_b=cache_b)
    assert cache_b.shared
    a.call("write", writes=["document:1#viewer@user:anne"])
    took = wait_until(lambda: b.call("check", **ANNE), what="B hears A's write")
    assert took < 3.0  # B polls every 10 minutes: this was the channel
    a.call("write", writes=["document:1#blocked@user:anne"])
    wait_until(lambda: not b.call("check", **ANNE), what="B hears the revoke")


def test_losing_redis_degrades_to_polling_and_recovers(
    workers: Starter, redis: RedisServer, caches: tuple[CacheStoreABC, CacheStoreABC]
) -> None:
    cache_a, cache_b = caches
    # Polls every 100 ms while the cache is not shared, never while it is.
    b_config = {"poll_ms": 100, "shared_poll_ms": 600_000, "stale_ms": 600_000}
    a, b = pair(workers, b_config=b_config, cache_a=cache_a, cache_b=cache_b)
    redis.kill()
    a.call("write", writes=["document:1#viewer@user:anne"])  # needs no Redis
    wait_until(lambda: b.call("check", **ANNE), timeout=20, what="B polls during outage")
    redis.restart()
    wait_until(lambda: cache_a.shared and cache_b.shared, timeout=20, what="recovery")
    time.sleep(0.3)  # B's follower is back to waiting on the channel
    a.call("write", writes=["document:1#blocked@user:anne"])
    took = wait_until(lambda: not b.call("check", **ANNE), timeout=20, what="push again")
    assert took < 5.0


def test_concurrent_writers_converge_on_gapless_revisions(workers: Starter) -> None:
    a, b = pair(workers, b_config={"poll_ms": 20})
    errors: list[BaseException] = []

    def writer(w: Worker, name: str) -> None:
        try:
            for i in range(40):
                w.call("write", writes=[f"document:{name}{i}#viewer@user:{name}"])
                if i % 3 == 0:
                    w.call("write", deletes=[f"document:{name}{i}#viewer@user:{name}"])
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(w, n)) for w, n in ((a, "a"), (b, "b"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors[:3]
    head = a.service.store.head()
    revisions = sorted({c["revision"] for c in a.call("read_changes", limit=1000)["changes"]})
    assert revisions == list(range(revisions[0], head + 1))  # one per write, no gaps
    assert len(revisions) == 2 * (40 + 14)
    for w in (a, b):
        w.call("check", consistency=a.service.token(head), **ANNE)
        assert w.service.mirror.revision == head
        mirror = {str(t) for t in w.service.mirror.index}
        db = {f"{t['object']}#{t['relation']}@{t['user']}"
              for t in w.call("read", limit=1000)["tuples"]}  # fmt: skip
        assert mirror == db and len(db) == 2 * (40 - 14)


def test_checks_never_see_half_of_a_write(workers: Starter) -> None:
    """Anne is either viewer *and* blocked, or neither: ``can_read`` is always false.
    A check that saw half of a write (viewer without blocked) would say true."""
    a, b = pair(workers, b_config={"poll_ms": 5})
    both = ["document:1#viewer@user:anne", "document:1#blocked@user:anne"]
    stop = threading.Event()
    seen: list[bool] = []

    # Contextual tuples bypass the decision cache: these evaluate the live index.
    extra = ["document:99#viewer@user:zed"]

    def checker(w: Worker) -> None:
        while not stop.is_set():
            seen.append(w.call("check", **ANNE))
            seen.append(w.call("check", contextual_tuples=extra, **ANNE))
            seen.extend(w.call("batch_check", checks=[ANNE, ANNE], contextual_tuples=extra))
            seen.append(bool(w.call("list_objects", user="user:anne", relation="can_read",
                                    type="document")))  # fmt: skip

    checkers = [threading.Thread(target=checker, args=(w,)) for w in (a, a, b, b)]
    for t in checkers:
        t.start()
    try:
        deadline = time.monotonic() + 2.0
        writes = 0
        while time.monotonic() < deadline or writes < 20:
            a.call("write", writes=both)
            a.call("write", deletes=both)
            writes += 2
    finally:
        stop.set()
        for t in checkers:
            t.join(30)
    assert len(seen) > 100 and not any(seen)


def test_list_objects_restarts_when_the_mirror_moves_during_a_kernel_listing(
    workers: Starter, kernel: FileSystem
) -> None:
    """The read lock is released around kernel calls; a write landing meanwhile makes
    the request start over (with the listings it already has), so the answer is the
    state of one revision: here the newer one, including the grant written mid-way."""
    for p in ("/a/1.txt", "/b/2.txt"):
        kernel.write(p, b"x")

    class WritingKernel:
        """The real kernel, plus a write through the service on the first listing."""

        def __init__(self) -> None:
            self.svc: Worker | None = None
            self.fired = False

        def readdir(self, path: str, **kw: Any) -> Any:
            if not self.fired and self.svc is not None:
                self.fired = True
                self.svc.call("write", writes=["folder:/b#viewer@user:anne"])
            return kernel.readdir(path, **kw)

    fault = WritingKernel()
    w = workers("w", kernel=fault)
    w.call("write", writes=["folder:/a#viewer@user:anne"])
    fault.svc = w
    got = w.call("list_objects", user="user:anne", relation="read", type="file")
    assert fault.fired
    assert got == ["file:/a/1.txt", "file:/b/2.txt"]
    assert w.service.namespace.fetches == 2  # /a once (kept across the restart), /b


def test_writers_in_several_processes_get_gapless_revisions(
    store_url: str, workers: Starter, tmp_path: Path
) -> None:
    """Separate processes (spawned, each with its own record store and service)
    write concurrently; every write gets its own revision, with no gap, and a worker
    started afterwards loads exactly the stored tuples."""
    first = workers("first")
    first.call("write_model", dsl=DOCS_MODEL)
    first.stop()
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(3)
    procs = [ctx.Process(target=child_writes, args=(store_url, str(tmp_path / f"p{k}"), k, 25,
                                                      barrier)) for k in range(3)]  # fmt: skip
    for p in procs:
        p.start()
    for p in procs:
        p.join(180)
    assert [p.exitcode for p in procs] == [0, 0, 0]
    fresh = workers("fresh")
    changes = fresh.call("read_changes", limit=1000)["changes"]
    revisions = [c["revision"] for c in changes]
    assert revisions == sorted(revisions) and len(set(revisions)) == 75
    assert sorted(set(revisions)) == list(range(revisions[0], revisions[0] + 75))
    assert len(fresh.service.mirror.index) == 75
    assert fresh.call("check", user="user:p2", relation="viewer", object="document:2-24")
