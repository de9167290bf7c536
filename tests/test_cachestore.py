"""Cache stores: the conformance suite on ``NullCacheStore`` and on ``RedisCacheStore``
against a real redis-server (``NEXUS_TEST_REDIS_URL`` or a private one), plus
driver-specific behaviour: URL handling and typed errors, namespaces, TTLs on the
server, the pub/sub envelope, bounded queues, server-side errors, start-up without a
server, and the service worker's wiring. Backend loss at run time:
``test_cachestore_degradation.py``."""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from nexusfs.abc import CacheState, CacheStoreABC
from nexusfs.drivers.cachestore import NullCacheStore, follow, open_cache_store
from nexusfs.drivers.cachestore.local import LocalHub
from nexusfs.drivers.cachestore.redis import ENVELOPE, RedisCacheStore
from nexusfs.drivers.cachestore.resilient import BackendHealth, Backoff
from nexusfs.errors import ConfigError, NexusError, error_from_code
from nexusfs.testing.cachestore import PATIENCE, CacheStoreContract, OpenSame
from nexusfs.testing.redis import free_port, redis_url_or_skip

#: Generous socket timeout for the contract run: a loaded CI machine must not look like
#: an outage (the degradation tests use short ones on purpose).
TIMEOUT = 2.0


@pytest.fixture
def redis_url() -> str:
    return redis_url_or_skip()


@pytest.fixture
def namespace(redis_url: str) -> Iterator[str]:
    """A fresh key/channel namespace; its keys are deleted afterwards (the server may be
    shared, e.g. CI's)."""
    ns = f"nexus-test-{uuid.uuid4().hex[:10]}:"
    yield ns
    raw = redis.Redis.from_url(redis_url)
    try:
        keys = list(raw.scan_iter(match=ns + "*", count=1000))
        if keys:
            raw.delete(*keys)
    finally:
        raw.close()


@pytest.fixture
def raw(redis_url: str) -> Iterator[redis.Redis]:
    """A plain redis-py client on the same server (the baseline, and a foreign client)."""
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


class TestNullCacheStore(CacheStoreContract):
    stores_values = False
    shared = False
    expected_state = CacheState.LOCAL

    @pytest.fixture
    def open_same(self) -> OpenSame:
        return NullCacheStore

    @pytest.fixture
    def cache_store(self, open_same: OpenSame) -> Iterator[CacheStoreABC]:
        with open_same() as store:
            yield store


class TestRedisCacheStore(CacheStoreContract):
    @pytest.fixture
    def open_same(self, redis_url: str, namespace: str) -> OpenSame:
        return functools.partial(
            open_cache_store, redis_url, namespace=namespace, socket_timeout=TIMEOUT
        )

    @pytest.fixture
    def cache_store(self, open_same: OpenSame) -> Iterator[CacheStoreABC]:
        with open_same() as store:
            yield store


# ------------------------------------------------------------------ open_cache_store


@pytest.mark.parametrize("url", [None, "", "none", "NULL", " off ", "null://", "None"])
def test_open_null(url: str | None) -> None:
    with open_cache_store(url) as store:
        assert isinstance(store, NullCacheStore)
        assert store.state is CacheState.LOCAL


@pytest.mark.parametrize(
    "url",
    [
        "memcached://127.0.0.1:11211",
        "redis",
        "localhost:6379",
        "http://127.0.0.1:6379/0",
        "redis://127.0.0.1:notaport/0",
        "redis://127.0.0.1:99999/0",
        "redis://127.0.0.1:6379/abc",
        "unix://",
        "redis://127.0.0.1:6379/0?no_such_option=1",
        "redis://127.0.0.1:6379/0?socket_timeout=abc",
        "redis://127.0.0.1:6379/0?decode_responses=true",
    ],
)
def test_bad_url_raises_config_error(url: str) -> None:
    with pytest.raises(ConfigError) as info:
        open_cache_store(url)
    assert isinstance(info.value, ValueError)
    assert isinstance(info.value, NexusError)
    assert info.value.code == "config_error"
    assert error_from_code("config_error", "x").__class__ is ConfigError


def test_bad_url_type_raises_config_error() -> None:
    with pytest.raises(ConfigError):
        open_cache_store(6379)  # type: ignore[arg-type]


def test_bad_url_never_shows_the_password() -> None:
    for url in ("redis://user:s3cret@127.0.0.1:bad/0", "memcached://user:s3cret@host/0"):
        with pytest.raises(ConfigError) as info:
            open_cache_store(url)
        assert "s3cret" not in str(info.value)
        assert "***" in str(info.value)


@pytest.mark.parametrize(
    ("options", "error"),
    [
        ({"socket_timeout": 0}, ValueError),
        ({"socket_timeout": -1.0}, ValueError),
        ({"retry_min": 0}, ValueError),
        ({"ping_interval": "1"}, ValueError),
        ({"namespace": 1}, ValueError),
        ({"queue_size": 0}, ValueError),
        ({"max_forgotten_keys": -1}, ValueError),
        ({"no_such_option": 1}, TypeError),
    ],
)
def test_bad_redis_options(options: dict[str, Any], error: type[Exception]) -> None:
    with pytest.raises(error):
        open_cache_store("redis://127.0.0.1:1/0", **options)


def test_null_bad_queue_size() -> None:
    with pytest.raises(ValueError):
        NullCacheStore(queue_size=0)


def test_redis_store_class_is_exported_lazily() -> None:
    import nexusfs.drivers.cachestore as package

    assert package.RedisCacheStore is RedisCacheStore
    with pytest.raises(AttributeError):
        _ = package.NoSuchThing


# ------------------------------------------------------------- start without a server


def test_unreachable_at_start_runs_degraded(caplog: pytest.LogCaptureFixture) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    caplog.set_level(logging.WARNING, logger="nexusfs.cachestore")
    started = time.monotonic()
    store = open_cache_store(url, socket_timeout=0.2, retry_max=0.2)
    try:
        assert time.monotonic() - started < 5
        assert store.state is CacheState.DEGRADED
        assert not store.healthy and not store.shared
        with store.subscribe("c") as sub:
            for i in range(50):
                assert store.get("k") is None
                store.set("k", b"v", ttl=1)
                store.delete("k")
                assert store.publish("c", b"%d" % i) == 1  # in-process delivery
            assert [sub.get(0) for _ in range(50)] == [b"%d" % i for i in range(50)]
        time.sleep(0.5)  # several background reconnect attempts fail meanwhile
        warnings = [r for r in caplog.records if r.name == "nexusfs.cachestore"]
        assert len(warnings) == 1, [r.getMessage() for r in warnings]
        assert "unreachable at start" in warnings[0].getMessage()
    finally:
        store.close()
    assert store.state.value == "closed"


def test_unix_socket_url_to_missing_socket_runs_degraded(tmp_path: Path) -> None:
    with open_cache_store(f"unix://{tmp_path}/none.sock", socket_timeout=0.2) as store:
        assert store.state is CacheState.DEGRADED
        assert store.get("k") is None


# ------------------------------------------------------------------- Redis specifics


def test_namespaces_isolate_keys_and_channels(redis_url: str, raw: redis.Redis) -> None:
    ns = f"nexus-test-{uuid.uuid4().hex[:10]}"
    with open_cache_store(redis_url, namespace=ns + "a:", socket_timeout=TIMEOUT) as a, \
            open_cache_store(redis_url, namespace=ns + "b:", socket_timeout=TIMEOUT) as b:
        a.set("k", b"from-a")
        assert b.get("k") is None
        assert raw.get(ns + "a:k") == b"from-a"
        with b.subscribe("c") as sub_b:
            assert a.publish("c", b"m") == 0
            assert sub_b.get(0.2) is None
    raw.delete(ns + "a:k")


def test_ttl_is_set_on_the_server_in_milliseconds(
    redis_url: str, namespace: str, raw: redis.Redis
) -> None:
    with open_cache_store(redis_url, namespace=namespace, socket_timeout=TIMEOUT) as store:
        store.set("k", b"v", ttl=10)
        assert 0 < int(raw.pttl(namespace + "k")) <= 10_000
        store.set("k", b"v", ttl=0.0015)  # 1.5 ms rounds up to 2 ms, never to 0
        store.set("forever", b"v")
        assert raw.pttl(namespace + "forever") == -1


def test_envelope_on_the_wire(redis_url: str, namespace: str, raw: redis.Redis) -> None:
    with open_cache_store(redis_url, namespace=namespace, socket_timeout=TIMEOUT) as store:
        watcher = raw.pubsub(ignore_subscribe_messages=True)  # type: ignore[no-untyped-call]
        watcher.subscribe(namespace + "c")
        try:
            with store.subscribe("c") as sub:
                # A plain client's message arrives unchanged.
                raw.publish(namespace + "c", b"plain")
                assert sub.get(10) == b"plain"
                # Another store's envelope is stripped; our own (already delivered
                # in-process) is dropped.
                raw.publish(namespace + "c", ENVELOPE + b"\x01" * 8 + b"foreign")
                assert sub.get(10) == b"foreign"
                raw.publish(namespace + "c", ENVELOPE + store._origin + b"echo")  # type: ignore[attr-defined]
                store.publish("c", b"mine")
                assert sub.get(10) == b"mine"
                assert sub.get(0.2) is None  # neither the echo nor a duplicate of "mine"
            seen: list[bytes] = []
            deadline = time.monotonic() + 10
            while len(seen) < 4 and time.monotonic() < deadline:
                msg = watcher.get_message(timeout=1)
                if msg is not None:
                    seen.append(msg["data"])
            assert seen[-1] == ENVELOPE + store._origin + b"mine"  # type: ignore[attr-defined]
        finally:
            watcher.close()


def test_publish_count_excludes_own_relay(redis_url: str, namespace: str) -> None:
    with open_cache_store(redis_url, namespace=namespace, socket_timeout=TIMEOUT) as store:
        assert store.publish("c", b"m") == 0
        with store.subscribe("c"), store.subscribe("c"):
            assert store.publish("c", b"m") == 2
        assert store.publish("c", b"m") == 0


def test_server_side_error_is_a_miss_logged_once(
    redis_url: str, namespace: str, raw: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="nexusfs.cachestore")
    raw.hset(namespace + "h", "field", "value")  # GET on a hash: WRONGTYPE
    with open_cache_store(redis_url, namespace=namespace, socket_timeout=TIMEOUT) as store:
        for _ in range(5):
            assert store.get("h") is None
        assert store.state is CacheState.CONNECTED
        store.set("h", b"now a string")  # SET replaces any type
        assert store.get("h") == b"now a string"
    records = [r.getMessage() for r in caplog.records if r.name == "nexusfs.cachestore"]
    assert len(records) == 1 and "WRONGTYPE" in records[0]


@pytest.mark.parametrize("kind", ["null", "redis"])
def test_full_queue_drops_oldest_and_counts_gaps(kind: str, request: pytest.FixtureRequest
                                                 ) -> None:  # fmt: skip
    if kind == "null":
        store: CacheStoreABC = NullCacheStore(queue_size=3)
    else:
        url = request.getfixturevalue("redis_url")
        ns = request.getfixturevalue("namespace")
        store = open_cache_store(url, namespace=ns, queue_size=3, socket_timeout=TIMEOUT)
    with store, store.subscribe("c") as sub:
        for i in range(5):
            store.publish("c", b"%d" % i)
        assert [sub.get(0), sub.get(0), sub.get(0), sub.get(0)] == [b"2", b"3", b"4", None]
        assert sub.gaps == 2
        assert sub.dropped == 2  # type: ignore[attr-defined]


def test_two_stores_in_one_process_exchange_messages_once(redis_url: str, namespace: str
                                                          ) -> None:  # fmt: skip
    open_ = functools.partial(open_cache_store, redis_url, namespace=namespace,
                              socket_timeout=TIMEOUT)  # fmt: skip
    with open_() as a, open_() as b, a.subscribe("c") as sub_a, b.subscribe("c") as sub_b:
        for i in range(10):
            a.publish("c", b"a%d" % i)
            b.publish("c", b"b%d" % i)
        got_a = sorted(m for m in iter(lambda: sub_a.get(2), None))
        got_b = sorted(m for m in iter(lambda: sub_b.get(2), None))
    expected = sorted([b"a%d" % i for i in range(10)] + [b"b%d" % i for i in range(10)])
    assert got_a == expected
    assert got_b == expected


# ------------------------------------------------------------------------ internals


def test_backoff_grows_to_its_maximum_with_jitter() -> None:
    import random

    backoff = Backoff(0.1, 1.0, jitter=0.2, rng=random.Random(7))
    delays = [backoff.next() for _ in range(8)]
    assert 0.08 <= delays[0] <= 0.1
    assert all(0.8 <= d <= 1.0 for d in delays[4:])
    backoff.reset()
    assert backoff.next() <= 0.1
    with pytest.raises(ValueError):
        Backoff(0, 1)
    with pytest.raises(ValueError):
        Backoff(1, 0.5)
    with pytest.raises(ValueError):
        Backoff(0.1, 1, jitter=1.0)


def test_health_logs_once_per_transition(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="test.health")
    health = BackendHealth("redis://h:1/0", logging.getLogger("test.health"))
    changes: list[bool] = []
    health.on_change(changes.append)
    assert health.mark_up()  # initial: debug only
    assert not health.mark_up()
    assert health.mark_down(ConnectionError("boom"))
    for _ in range(10):
        assert not health.mark_down(ConnectionError("still"))
    assert health.down_for >= 0
    assert health.mark_up()
    health.close()
    assert not health.mark_down("after close") and not health.up
    levels = [(r.levelname, r.getMessage().split(" (")[0]) for r in caplog.records]
    assert [lvl for lvl, _ in levels] == ["DEBUG", "WARNING", "INFO"]
    assert changes == [True, False, True]
    assert health.outages == 1 and health.last_error == "after close"


def test_hub_membership() -> None:
    hub = LocalHub()
    a, first_a = hub.subscribe("c", hub.unsubscribe)
    b, first_b = hub.subscribe("c", hub.unsubscribe)
    assert first_a and not first_b
    assert hub.subscriber_count("c") == 2
    a.close()
    assert hub.channels() == ["c"]
    assert not hub.unsubscribe(a)  # already gone
    b.close()
    assert hub.channels() == []
    assert hub.publish("c", b"m") == 0


# -------------------------------------------------------------------- worker wiring


def _worker_context(needs: tuple[str, ...], config: dict[str, Any], tmp_path: Path) -> Any:
    from nexusfs.hookspecs import ServiceInfo
    from nexusfs.services.worker import Worker

    info = ServiceInfo(name="svc", version="1", needs=needs)
    worker = Worker("svc", None, info, tmp_path)  # type: ignore[arg-type]

    async def on_a_loop() -> Any:  # ctx.kernel binds to the worker's event loop
        return worker._context(None, config)  # type: ignore[arg-type]

    return asyncio.run(on_a_loop())


def test_worker_gives_a_null_store_without_configuration(tmp_path: Path) -> None:
    ctx = _worker_context(("cache_store",), {"cache_url": None}, tmp_path)
    assert isinstance(ctx.cache_store, NullCacheStore)
    ctx.cache_store.close()
    ctx = _worker_context((), {"cache_url": "redis://127.0.0.1:1/0"}, tmp_path)
    assert isinstance(ctx.cache_store, NullCacheStore)  # the service did not ask for one
    ctx.cache_store.close()


def test_worker_opens_the_configured_redis(tmp_path: Path, redis_url: str) -> None:
    ctx = _worker_context(("cache_store",), {"cache_url": redis_url}, tmp_path)
    try:
        assert isinstance(ctx.cache_store, RedisCacheStore)
        assert ctx.cache_store.state is CacheState.CONNECTED
    finally:
        ctx.cache_store.close()


def test_worker_refuses_a_malformed_cache_url(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        _worker_context(("cache_store",), {"cache_url": "memcached://x"}, tmp_path)


# ---------------------------------------------------------------------------- follow


class _Record:
    """A tiny system of record: an append-only list with a per-reader cursor."""

    def __init__(self) -> None:
        self.items: list[int] = []
        self.lock = threading.Lock()

    def append(self, item: int) -> None:
        with self.lock:
            self.items.append(item)

    def reader(self) -> Callable[[], list[int]]:
        cursor = 0

        def fetch() -> list[int]:
            nonlocal cursor
            with self.lock:
                out = self.items[cursor:]
                cursor = len(self.items)
            return out

        return fetch


def _wait(predicate: Callable[[], bool], timeout: float = PATIENCE) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not predicate():
        time.sleep(0.01)
    return predicate()


def _collect(it: Iterator[int], want: int, out: list[int]) -> None:
    for item in it:
        out.append(item)
        if len(out) >= want:
            return


def test_follow_is_woken_by_signals(redis_url: str, namespace: str) -> None:
    """Shared store: a signal wakes the reader at once; with a safety net of an hour, the
    items cannot have come from polling."""
    record = _Record()
    record.append(0)  # backlog
    with open_cache_store(redis_url, namespace=namespace, socket_timeout=TIMEOUT) as reader, \
            open_cache_store(redis_url, namespace=namespace, socket_timeout=TIMEOUT) as writer:
        got: list[int] = []
        it = follow(reader, "events", record.reader(), poll_interval=0.05,
                    safety_interval=3600)  # fmt: skip
        consumer = threading.Thread(target=_collect, args=(it, 51, got))
        consumer.start()
        assert _wait(lambda: got == [0])
        for i in range(1, 51):
            record.append(i)  # commit, then signal
            writer.publish("events", b"")
        consumer.join(PATIENCE)
        assert not consumer.is_alive()
        assert got == list(range(51))
        it.close()  # closes the subscription
        assert reader.publish("events", b"") == 0


def test_follow_polls_when_the_store_is_not_shared() -> None:
    """Null store: another process's writes send no signal here; polling finds them."""
    record = _Record()
    stop = threading.Event()
    with NullCacheStore() as store:
        got: list[int] = []
        it = follow(store, "events", record.reader(), poll_interval=0.02, stop=stop)
        consumer = threading.Thread(target=_collect, args=(it, 20, got))
        consumer.start()
        for i in range(20):
            record.append(i)  # no publish at all
        consumer.join(PATIENCE)
        assert got == list(range(20))
        stop.set()
        assert list(it) == []  # ends once stop is set


def test_follow_ends_when_the_store_closes() -> None:
    store = NullCacheStore()
    it: Iterator[object] = follow(store, "events", list, poll_interval=0.02)  # no items
    result: list[object] = []
    consumer = threading.Thread(target=lambda: result.append(next(it, "ended")))
    consumer.start()
    time.sleep(0.1)  # let it wait (passes either way)
    store.close()
    consumer.join(PATIENCE)
    assert result == ["ended"]


@pytest.mark.parametrize("bad", [0, -1, "1", True])
def test_follow_rejects_bad_intervals(bad: object) -> None:
    with NullCacheStore() as store, pytest.raises(ValueError):
        next(follow(store, "c", list, poll_interval=bad))  # type: ignore[arg-type]


def test_redis_url_without_redis_py_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.delitem(sys.modules, "nexusfs.drivers.cachestore.redis", raising=False)
    monkeypatch.setitem(sys.modules, "redis", None)  # makes "import redis" fail
    with pytest.raises(ConfigError, match="needs redis-py"):
        open_cache_store("redis://user:pw@127.0.0.1:6379/0")
    with open_cache_store(None) as store:  # the null store needs nothing
        assert store.state is CacheState.LOCAL


def test_unix_socket_url(tmp_path: Path) -> None:
    from nexusfs.testing.redis import shared_redis_server

    server = shared_redis_server()
    if server is None:
        pytest.skip("needs a private redis-server (NEXUS_TEST_REDIS_URL is set or none)")
    if not server.unix_path.exists():
        pytest.skip(f"the temporary directory's path is too long for a Unix socket: {server}")
    ns = f"nexus-test-{uuid.uuid4().hex[:10]}:"
    with open_cache_store(server.unix_url, namespace=ns, socket_timeout=TIMEOUT) as unix, \
            open_cache_store(server.url, namespace=ns, socket_timeout=TIMEOUT) as tcp:
        assert unix.state is CacheState.CONNECTED
        unix.set("k", b"over unix", ttl=60)
        assert tcp.get("k") == b"over unix"
        with unix.subscribe("c") as sub:
            tcp.publish("c", b"tcp->unix")
            assert sub.get(PATIENCE) == b"tcp->unix"
        unix.delete("k")
