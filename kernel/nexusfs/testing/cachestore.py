"""The cache store conformance suite: every :class:`~nexusfs.abc.CacheStoreABC` driver
must pass it.

Usage: subclass :class:`CacheStoreContract` in a test module and provide two fixtures:
``cache_store``, an open store (closed afterwards), and ``open_same``, a *picklable*
zero-argument callable that opens another store on the same backend (it is called in
this process and in child processes started with ``spawn``)::

    import functools, pytest
    from nexusfs.testing.cachestore import CacheStoreContract

    class TestMyCacheStore(CacheStoreContract):
        @pytest.fixture
        def open_same(self):
            return functools.partial(MyCacheStore, "my://server")

        @pytest.fixture
        def cache_store(self, open_same):
            with open_same() as store:
                yield store

Class attributes state what the driver legitimately does not provide, and the suite
then checks the documented null behaviour instead of skipping (so those tests can still
fail): ``stores_values = False`` (every ``get`` misses, as ``NullCacheStore``),
``shared = False`` (values and messages never reach another store object or process).
``expected_state`` is the state of a healthy open store.

Covered: get/set/delete round trips of binary values (empty, NUL bytes, 1 MiB, bytearray
and memoryview), TTL expiry and its reset by a plain ``set``, typed errors for every bad
argument, pub/sub delivery, fan-out to several subscribers in publish order, channel
isolation, no delivery of earlier messages, per-publisher order under concurrent
publishers, ``get`` timeouts, iteration, closing a subscription (from another thread,
by ``with``, idempotently), visibility between stores and across processes, and close
semantics of the store (subscriptions closed, blocked readers woken, ``StoreClosed``
afterwards). Backend loss and recovery are driver-specific: see
``tests/test_cachestore_degradation.py`` for Redis.
"""

from __future__ import annotations

import math
import multiprocessing
import threading
import time
import uuid
from collections.abc import Callable, Iterator

import pytest

from nexusfs.abc import CacheState, CacheStoreABC, Subscription
from nexusfs.errors import StoreClosed

__all__ = ["BAD_NAMES", "BAD_TTLS", "BAD_VALUES", "CacheStoreContract", "OpenSame"]

OpenSame = Callable[[], CacheStoreABC]

#: Key / channel arguments every driver must refuse, with the error type.
BAD_NAMES: list[tuple[object, type[Exception]]] = [
    (None, TypeError),
    (1, TypeError),
    (b"key", TypeError),
    ("", ValueError),
    ("x" * 4097, ValueError),
    ("\ud800", ValueError),
]
#: Values / messages every driver must refuse.
BAD_VALUES: list[tuple[object, type[Exception]]] = [
    ("text", TypeError),
    (None, TypeError),
    (123, TypeError),
    ([b"a"], TypeError),
]
#: TTLs every driver must refuse.
BAD_TTLS: list[tuple[object, type[Exception]]] = [
    (0, ValueError),
    (-1, ValueError),
    (math.nan, ValueError),
    (math.inf, ValueError),
    (True, TypeError),
    ("1", TypeError),
]

#: Generous bound for anything that should happen "promptly" on a loaded machine.
PATIENCE = 10.0


def _unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def _wait_until(predicate: Callable[[], bool], timeout: float = PATIENCE) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


def _drain(sub: Subscription, count: int, timeout: float = PATIENCE) -> list[bytes]:
    """Up to ``count`` messages, waiting at most ``timeout`` in total."""
    out: list[bytes] = []
    deadline = time.monotonic() + timeout
    while len(out) < count:
        message = sub.get(max(0.0, deadline - time.monotonic()))
        if message is None:
            break
        out.append(message)
    return out


def _child_publisher(open_store: OpenSame, channel: str, count: int, key: str) -> None:
    """Entry point of a child process: set ``key``, publish ``count`` messages, close."""
    store = open_store()
    try:
        store.set(key, b"from-child")
        for i in range(count):
            store.publish(channel, b"child-%d" % i)
    finally:
        store.close()


class CacheStoreContract:
    """Conformance tests for a :class:`~nexusfs.abc.CacheStoreABC` driver."""

    #: Whether ``get`` returns what ``set`` stored (``False``: the null store).
    stores_values = True
    #: Whether values and messages reach other store objects and processes.
    shared = True
    #: The state of a healthy open store.
    expected_state = CacheState.CONNECTED

    @pytest.fixture
    def open_same(self) -> OpenSame:
        raise NotImplementedError("subclasses must provide an `open_same` fixture")

    @pytest.fixture
    def cache_store(self) -> Iterator[CacheStoreABC]:
        raise NotImplementedError("subclasses must provide a `cache_store` fixture")

    @pytest.fixture
    def other_store(self, open_same: OpenSame) -> Iterator[CacheStoreABC]:
        """A second store on the same backend, closed afterwards."""
        store = open_same()
        yield store
        store.close()

    # ------------------------------------------------------------------ state

    def test_is_cache_store_in_expected_state(self, cache_store: CacheStoreABC) -> None:
        assert isinstance(cache_store, CacheStoreABC)
        assert cache_store.state is self.expected_state
        assert cache_store.healthy
        assert cache_store.shared is self.shared

    # ------------------------------------------------------------- key/value

    def test_get_missing_is_none(self, cache_store: CacheStoreABC) -> None:
        assert cache_store.get(_unique("missing")) is None

    @pytest.mark.parametrize(
        "value", [b"v", b"", b"\x00\xff\x00", bytes(range(256)) * 4096], ids=["small", "empty",
                                                                             "nul", "1MiB"]
    )  # fmt: skip
    def test_set_then_get(self, cache_store: CacheStoreABC, value: bytes) -> None:
        key = _unique("k")
        cache_store.set(key, value)
        got = cache_store.get(key)
        if self.stores_values:
            assert got == value
            assert type(got) is bytes
        else:
            assert got is None

    def test_set_accepts_bytearray_and_memoryview(self, cache_store: CacheStoreABC) -> None:
        k1, k2 = _unique("ba"), _unique("mv")
        cache_store.set(k1, bytearray(b"abc"))
        cache_store.set(k2, memoryview(b"xyz123")[1:4])
        if self.stores_values:
            assert cache_store.get(k1) == b"abc"
            assert cache_store.get(k2) == b"yz1"
        else:
            assert cache_store.get(k1) is None and cache_store.get(k2) is None

    def test_overwrite_replaces(self, cache_store: CacheStoreABC) -> None:
        key = _unique("k")
        cache_store.set(key, b"one")
        cache_store.set(key, b"two")
        assert cache_store.get(key) == (b"two" if self.stores_values else None)

    def test_delete(self, cache_store: CacheStoreABC) -> None:
        key = _unique("k")
        cache_store.set(key, b"v")
        cache_store.delete(key)
        assert cache_store.get(key) is None
        cache_store.delete(key)  # deleting a missing key is not an error
        cache_store.delete(_unique("never-set"))

    def test_keys_are_distinct(self, cache_store: CacheStoreABC) -> None:
        base = _unique("k")
        keys = [base, base + ":a", base + " b", base + "/ключ", base.upper()]
        for i, key in enumerate(keys):
            cache_store.set(key, b"%d" % i)
        for i, key in enumerate(keys):
            assert cache_store.get(key) == (b"%d" % i if self.stores_values else None)

    def test_ttl_expires(self, cache_store: CacheStoreABC) -> None:
        short, long_ = _unique("short"), _unique("long")
        cache_store.set(long_, b"stays", ttl=600)
        cache_store.set(short, b"goes", ttl=0.2)
        assert _wait_until(lambda: cache_store.get(short) is None)
        assert cache_store.get(long_) == (b"stays" if self.stores_values else None)

    def test_plain_set_clears_ttl(self, cache_store: CacheStoreABC) -> None:
        key, probe = _unique("k"), _unique("probe")
        cache_store.set(key, b"first", ttl=0.2)
        cache_store.set(key, b"second")  # no ttl: lives until deleted
        cache_store.set(probe, b"p", ttl=0.2)  # expires no earlier than key's old TTL
        assert _wait_until(lambda: cache_store.get(probe) is None)
        assert cache_store.get(key) == (b"second" if self.stores_values else None)

    def test_tiny_and_fractional_ttls_are_accepted(self, cache_store: CacheStoreABC) -> None:
        key = _unique("k")
        cache_store.set(key, b"v", ttl=1e-6)  # rounds up to the resolution, never "no TTL"
        assert _wait_until(lambda: cache_store.get(key) is None)
        cache_store.set(key, b"v", ttl=2.5)
        cache_store.set(key, b"v", ttl=3)

    def test_concurrent_writers(self, cache_store: CacheStoreABC) -> None:
        errors: list[BaseException] = []
        prefix = _unique("t")

        def run(n: int) -> None:
            try:
                for i in range(50):
                    key = f"{prefix}-{n}-{i}"
                    cache_store.set(key, b"%d:%d" % (n, i))
                    got = cache_store.get(key)
                    assert got == (b"%d:%d" % (n, i) if self.stores_values else None)
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)

        threads = [threading.Thread(target=run, args=(n,)) for n in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []

    # ------------------------------------------------------------ bad input

    @pytest.mark.parametrize(("key", "error"), BAD_NAMES)
    def test_bad_key(self, cache_store: CacheStoreABC, key: object, error: type[Exception]
                     ) -> None:  # fmt: skip
        with pytest.raises(error):
            cache_store.get(key)  # type: ignore[arg-type]
        with pytest.raises(error):
            cache_store.set(key, b"v")  # type: ignore[arg-type]
        with pytest.raises(error):
            cache_store.delete(key)  # type: ignore[arg-type]

    @pytest.mark.parametrize(("channel", "error"), BAD_NAMES)
    def test_bad_channel(
        self, cache_store: CacheStoreABC, channel: object, error: type[Exception]
    ) -> None:
        with pytest.raises(error):
            cache_store.publish(channel, b"m")  # type: ignore[arg-type]
        with pytest.raises(error):
            cache_store.subscribe(channel)  # type: ignore[arg-type]

    @pytest.mark.parametrize(("value", "error"), BAD_VALUES)
    def test_bad_value_and_message(
        self, cache_store: CacheStoreABC, value: object, error: type[Exception]
    ) -> None:
        key = _unique("k")
        with pytest.raises(error):
            cache_store.set(key, value)  # type: ignore[arg-type]
        assert cache_store.get(key) is None  # nothing was stored
        with pytest.raises(error):
            cache_store.publish(_unique("c"), value)  # type: ignore[arg-type]

    @pytest.mark.parametrize(("ttl", "error"), BAD_TTLS)
    def test_bad_ttl(self, cache_store: CacheStoreABC, ttl: object, error: type[Exception]
                     ) -> None:  # fmt: skip
        key = _unique("k")
        with pytest.raises(error):
            cache_store.set(key, b"v", ttl=ttl)  # type: ignore[arg-type]
        assert cache_store.get(key) is None

    @pytest.mark.parametrize(
        ("timeout", "error"),
        [(-1, ValueError), (math.nan, ValueError), (math.inf, ValueError), ("1", TypeError)],
    )
    def test_bad_get_timeout(
        self, cache_store: CacheStoreABC, timeout: object, error: type[Exception]
    ) -> None:
        with cache_store.subscribe(_unique("c")) as sub, pytest.raises(error):
            sub.get(timeout)  # type: ignore[arg-type]

    # --------------------------------------------------------------- pub/sub

    def test_publish_then_receive(self, cache_store: CacheStoreABC) -> None:
        channel = _unique("c")
        with cache_store.subscribe(channel) as sub:
            assert sub.channel == channel
            assert not sub.closed
            assert cache_store.publish(channel, b"hello") >= 1
            assert sub.get(PATIENCE) == b"hello"
            assert sub.get(0) is None

    def test_binary_messages(self, cache_store: CacheStoreABC) -> None:
        channel = _unique("c")
        messages: list[bytes | bytearray | memoryview] = [
            b"", b"\x00", b"\x00nxc1", b"\x00nxc1" + b"\x00" * 20, bytes(range(256)),
            bytearray(b"ba"), memoryview(b"mv"),
        ]  # fmt: skip
        with cache_store.subscribe(channel) as sub:
            for m in messages:
                cache_store.publish(channel, m)
            got = _drain(sub, len(messages))
        assert got == [bytes(m) for m in messages]
        assert all(type(m) is bytes for m in got)

    def test_earlier_messages_are_not_delivered(self, cache_store: CacheStoreABC) -> None:
        channel = _unique("c")
        assert cache_store.publish(channel, b"before") == 0
        with cache_store.subscribe(channel) as sub:
            cache_store.publish(channel, b"after")
            assert _drain(sub, 1) == [b"after"]
            assert sub.get(0.05) is None

    def test_fan_out_in_order(self, cache_store: CacheStoreABC) -> None:
        channel = _unique("c")
        subs = [cache_store.subscribe(channel) for _ in range(3)]
        try:
            sent = [b"m%d" % i for i in range(20)]
            for m in sent:
                assert cache_store.publish(channel, m) >= 3
            for sub in subs:
                assert _drain(sub, len(sent)) == sent
        finally:
            for sub in subs:
                sub.close()

    def test_channels_are_isolated(self, cache_store: CacheStoreABC) -> None:
        a, b = _unique("a"), _unique("b")
        with cache_store.subscribe(a) as sub_a, cache_store.subscribe(b) as sub_b:
            cache_store.publish(a, b"for-a")
            cache_store.publish(b, b"for-b")
            assert _drain(sub_a, 1) == [b"for-a"]
            assert _drain(sub_b, 1) == [b"for-b"]
            assert sub_a.get(0.05) is None and sub_b.get(0) is None

    def test_get_timeouts(self, cache_store: CacheStoreABC) -> None:
        with cache_store.subscribe(_unique("c")) as sub:
            assert sub.get(0) is None
            assert sub.get(0.05) is None
            assert not sub.closed

    def test_concurrent_publishers_keep_per_publisher_order(
        self, cache_store: CacheStoreABC
    ) -> None:
        channel, per_thread, threads = _unique("c"), 200, 4
        with cache_store.subscribe(channel) as sub:

            def publish(n: int) -> None:
                for i in range(per_thread):
                    cache_store.publish(channel, b"%d:%d" % (n, i))

            workers = [threading.Thread(target=publish, args=(n,)) for n in range(threads)]
            for t in workers:
                t.start()
            for t in workers:
                t.join()
            got = _drain(sub, per_thread * threads)
        assert len(got) == per_thread * threads
        for n in range(threads):
            mine = [int(m.split(b":")[1]) for m in got if m.startswith(b"%d:" % n)]
            assert mine == list(range(per_thread))

    def test_iteration_ends_when_closed(self, cache_store: CacheStoreABC) -> None:
        channel = _unique("c")
        sub = cache_store.subscribe(channel)
        seen: list[bytes] = []
        reader = threading.Thread(target=lambda: seen.extend(sub))
        reader.start()
        for i in range(3):
            cache_store.publish(channel, b"%d" % i)
        assert _wait_until(lambda: len(seen) == 3)
        sub.close()
        reader.join(PATIENCE)
        assert not reader.is_alive()
        assert seen == [b"0", b"1", b"2"]

    def test_close_wakes_a_blocked_get(self, cache_store: CacheStoreABC) -> None:
        sub = cache_store.subscribe(_unique("c"))
        result: list[bytes | None] = []
        reader = threading.Thread(target=lambda: result.append(sub.get()))
        reader.start()
        time.sleep(0.05)  # let it block (the test passes either way)
        sub.close()
        reader.join(PATIENCE)
        assert not reader.is_alive()
        assert result == [None]
        assert sub.closed

    def test_closed_subscription_receives_nothing(self, cache_store: CacheStoreABC) -> None:
        channel = _unique("c")
        keep = cache_store.subscribe(channel)
        with cache_store.subscribe(channel) as gone:
            pass
        assert gone.closed
        assert cache_store.publish(channel, b"m") >= 1
        assert gone.get(0) is None
        assert _drain(keep, 1) == [b"m"]
        gone.close()  # idempotent
        keep.close()
        keep.close()
        assert keep.get(0) is None

    def test_gaps_start_at_zero(self, cache_store: CacheStoreABC) -> None:
        with cache_store.subscribe(_unique("c")) as sub:
            assert sub.gaps == 0

    # --------------------------------------------------- between stores/processes

    def test_values_between_stores(
        self, cache_store: CacheStoreABC, other_store: CacheStoreABC
    ) -> None:
        key = _unique("k")
        cache_store.set(key, b"shared?")
        expected = b"shared?" if self.shared and self.stores_values else None
        assert other_store.get(key) == expected
        other_store.delete(key)
        assert cache_store.get(key) is None

    def test_messages_between_stores(
        self, cache_store: CacheStoreABC, other_store: CacheStoreABC
    ) -> None:
        channel = _unique("c")
        with other_store.subscribe(channel) as remote, cache_store.subscribe(channel) as local:
            count = cache_store.publish(channel, b"hi")
            assert _drain(local, 1) == [b"hi"]
            if self.shared:
                assert count == 2
                assert _drain(remote, 1) == [b"hi"]
            else:
                assert count == 1
                assert remote.get(0.2) is None

    def test_messages_across_processes(
        self, cache_store: CacheStoreABC, open_same: OpenSame
    ) -> None:
        channel, key, count = _unique("c"), _unique("k"), 20
        with cache_store.subscribe(channel) as sub:
            ctx = multiprocessing.get_context("spawn")
            child = ctx.Process(target=_child_publisher, args=(open_same, channel, count, key))
            child.start()
            child.join(120)
            assert child.exitcode == 0, f"child publisher failed with exit code {child.exitcode}"
            if self.shared:
                assert _drain(sub, count) == [b"child-%d" % i for i in range(count)]
                assert cache_store.get(key) == (b"from-child" if self.stores_values else None)
            else:
                assert sub.get(0.2) is None
                assert cache_store.get(key) is None

    # ------------------------------------------------------------------ close

    def test_close_semantics(self, open_same: OpenSame) -> None:
        store = open_same()
        sub = store.subscribe(_unique("c"))
        result: list[bytes | None] = []
        reader = threading.Thread(target=lambda: result.append(sub.get()))
        reader.start()
        store.close()
        reader.join(PATIENCE)
        assert not reader.is_alive() and result == [None]
        assert sub.closed
        assert store.state is CacheState.CLOSED
        assert not store.healthy and not store.shared
        store.close()  # idempotent
        sub.close()
        with pytest.raises(StoreClosed):
            store.get("k")
        with pytest.raises(StoreClosed):
            store.set("k", b"v")
        with pytest.raises(StoreClosed):
            store.delete("k")
        with pytest.raises(StoreClosed):
            store.publish("c", b"m")
        with pytest.raises(StoreClosed):
            store.subscribe("c")

    def test_context_manager_closes(self, open_same: OpenSame) -> None:
        with open_same() as store:
            assert store.healthy
        assert store.state is CacheState.CLOSED
