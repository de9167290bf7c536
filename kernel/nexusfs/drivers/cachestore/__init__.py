"""Cache store drivers: ephemeral KV with TTL and pub/sub for services, chosen by URL.

``open_cache_store(url)`` (``NEXUS_CACHE_STORE``) returns:

* :class:`NullCacheStore` for ``None``, ``""``, ``"none"``, ``"null"``, ``"off"`` or
  ``null://`` (no cache: reads miss, writes are no-ops, pub/sub is in-process);
* :class:`RedisCacheStore` for ``redis://``, ``rediss://`` and ``unix://`` URLs.

Either way the caller gets a working store and never ``None``, so services need no
"is there a cache?" branches: they look at ``store.shared`` when they must know whether
other processes see what they publish. :func:`follow` packages the usual consumer: tail
a system of record (the RecordStore) woken by pub/sub signals, polling whenever the
store is null or degraded (e.g. ``nexus events tail -f``).

Failure semantics: a malformed URL, an unknown scheme or an unknown URL option raises
:class:`~nexusfs.errors.ConfigError` naming the URL (password masked) and the accepted
forms; an unreachable Redis server does *not* raise: the store starts degraded and
connects when the server appears (see :mod:`~nexusfs.drivers.cachestore.resilient`).
"""

from __future__ import annotations

from typing import Any

from nexusfs.abc import CacheState, CacheStoreABC, Subscription
from nexusfs.drivers.cachestore.follow import follow
from nexusfs.drivers.cachestore.local import redact_url
from nexusfs.drivers.cachestore.null import NullCacheStore
from nexusfs.errors import ConfigError

__all__ = [
    "NULL_SPELLINGS",
    "CacheState",
    "CacheStoreABC",
    "NullCacheStore",
    "RedisCacheStore",
    "Subscription",
    "follow",
    "open_cache_store",
]

#: Values of ``NEXUS_CACHE_STORE`` that mean "no cache store" (case-insensitive).
NULL_SPELLINGS = frozenset({"", "none", "null", "off", "null://"})


def open_cache_store(url: str | None, **options: Any) -> CacheStoreABC:
    """Open the cache store named by ``url`` (see the module docstring).

    ``options`` go to the driver's constructor (e.g. ``namespace=``, ``socket_timeout=``
    for Redis; ``queue_size=`` for both; the null store ignores the others, so one call
    serves every configuration). Raises :class:`~nexusfs.errors.ConfigError` for a URL
    that names no cache store driver or is malformed, and for a Redis URL when redis-py
    is not installed; ``TypeError`` for an option the Redis driver does not take.
    """
    if url is None or (isinstance(url, str) and url.strip().lower() in NULL_SPELLINGS):
        null_options = {k: v for k, v in options.items() if k == "queue_size"}
        return NullCacheStore(**null_options)
    if not isinstance(url, str):
        raise ConfigError(f"NEXUS_CACHE_STORE must be a URL string, not {type(url).__name__}")
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    shown = redact_url(url)
    if scheme not in ("redis", "rediss", "unix"):
        raise ConfigError(
            f"NEXUS_CACHE_STORE {shown!r} names no cache store driver: use "
            "redis://host:port/db, rediss://host:port/db, unix:///path/redis.sock, or "
            "none for no cache store"
        )
    try:
        from nexusfs.drivers.cachestore.redis import RedisCacheStore
    except ImportError as exc:
        raise ConfigError(
            f"the cache store {shown!r} needs redis-py, which is not installed "
            f"(pip install 'nexusfs[redis]'): {exc}"
        ) from exc
    return RedisCacheStore(url, **options)


def __getattr__(name: str) -> Any:
    # RedisCacheStore is imported lazily: importing redis-py costs ~40 ms, and a process
    # that has no cache store configured should not pay it.
    if name == "RedisCacheStore":
        from nexusfs.drivers.cachestore.redis import RedisCacheStore

        return RedisCacheStore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
