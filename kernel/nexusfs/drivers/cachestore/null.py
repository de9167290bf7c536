"""``NullCacheStore``: the cache store used when none is configured.

Every ``get`` misses, ``set`` and ``delete`` are no-ops, and pub/sub delivers in-process
to this store's own subscribers (so one process's components can still signal each
other). Its :attr:`state` is ``LOCAL`` (``healthy`` but not ``shared``): consumers that
need other processes' events poll their system of record instead.

Invariants: never touches the network or the disk; arguments are validated exactly as
by every other driver (so code developed against the null store does not break on
Redis); use after ``close()`` raises :class:`~nexusfs.errors.StoreClosed`.
"""

from __future__ import annotations

from nexusfs.abc import CacheState, CacheStoreABC, Subscription
from nexusfs.drivers.cachestore.local import (
    DEFAULT_QUEUE_SIZE,
    LocalHub,
    check_name,
    check_ttl_ms,
    check_value,
)
from nexusfs.errors import StoreClosed

__all__ = ["NullCacheStore"]


class NullCacheStore(CacheStoreABC):
    """No backend: misses, no-op writes, in-process pub/sub (see the module docstring).

    ``queue_size`` bounds each subscription's queue. Thread-safe.
    """

    url = "null://"

    def __init__(self, *, queue_size: int = DEFAULT_QUEUE_SIZE) -> None:
        self._hub = LocalHub(queue_size)
        self._closed = False

    @property
    def state(self) -> CacheState:
        return CacheState.CLOSED if self._closed else CacheState.LOCAL

    def _check_open(self) -> None:
        if self._closed:
            raise StoreClosed("the cache store is closed")

    def get(self, key: str) -> bytes | None:
        check_name("key", key)
        self._check_open()
        return None

    def set(self, key: str, value: bytes | bytearray | memoryview,
            ttl: float | None = None) -> None:
        check_name("key", key)
        check_value("value", value)
        check_ttl_ms(ttl)
        self._check_open()

    def delete(self, key: str) -> None:
        check_name("key", key)
        self._check_open()

    def publish(self, channel: str, message: bytes | bytearray | memoryview) -> int:
        check_name("channel", channel)
        data = check_value("message", message)
        self._check_open()
        return self._hub.publish(channel, data)

    def subscribe(self, channel: str) -> Subscription:
        check_name("channel", channel)
        self._check_open()
        sub, _first = self._hub.subscribe(channel, self._hub.unsubscribe)
        if self._closed:  # closed concurrently: do not hand out a live subscription
            sub.close()
        return sub

    def close(self) -> None:
        self._closed = True
        self._hub.close_all()

    def __repr__(self) -> str:
        return f"NullCacheStore({self.state.value})"
