"""``follow``: tail a system of record, woken by cache store pub/sub (``tail -f``).

The pattern for consumers that must see *every* item (an audit-event tail, a work
queue): the record (e.g. the RecordStore table) is the truth and the cache store only
cuts latency. Writers commit an item, then ``store.publish(channel, ...)`` (any payload:
a wake-up signal). The reader runs ``follow(store, channel, fetch)`` where ``fetch()``
returns the items after its own cursor.

Invariants: nothing is missed and nothing depends on the cache store. The subscription
starts *before* the first fetch, so an item committed in between is fetched by the
first or the next round; signals are coalesced (a burst causes one fetch); a gap in the
subscription (:attr:`~nexusfs.abc.Subscription.gaps`) triggers a fetch; while the store
is not ``shared`` (``NullCacheStore``, or Redis degraded) other processes' signals cannot
arrive, so ``fetch`` runs every ``poll_interval`` seconds; while shared, every
``safety_interval`` seconds as a safety net. Order is whatever ``fetch`` returns.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Generator, Iterable
from typing import TypeVar

from nexusfs.abc import CacheStoreABC

__all__ = ["follow"]

T = TypeVar("T")


def follow(
    store: CacheStoreABC,
    channel: str,
    fetch: Callable[[], Iterable[T]],
    *,
    poll_interval: float = 1.0,
    safety_interval: float = 30.0,
    stop: threading.Event | None = None,
) -> Generator[T, None, None]:
    """Yield what ``fetch()`` returns: once at once (the backlog), then on every signal
    published on ``channel``, on every subscription gap, every ``poll_interval`` seconds
    while ``store`` is not shared and every ``safety_interval`` seconds while it is.

    ``fetch`` must return only items newer than those it returned before (it keeps its
    own cursor). Ends when ``stop`` is set (noticed within ``poll_interval``), when the
    store is closed, or when the caller closes the generator; the subscription is closed
    in every case. An exception from ``fetch`` ends the iteration and propagates.
    ``ValueError`` for a non-positive interval; errors of ``subscribe`` propagate.
    """
    for name, value in (("poll_interval", poll_interval), ("safety_interval", safety_interval)):
        if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
            raise ValueError(f"{name} must be a positive number of seconds, not {value!r}")
    with store.subscribe(channel) as sub:
        gaps = sub.gaps
        yield from fetch()
        last = time.monotonic()
        while stop is None or not stop.is_set():
            interval = safety_interval if store.shared else poll_interval
            wait = min(poll_interval, max(0.0, last + interval - time.monotonic()))
            signal = sub.get(wait)
            if sub.closed:
                return
            if signal is None and sub.gaps == gaps and time.monotonic() - last < interval:
                continue
            while sub.get(0) is not None:  # coalesce a burst of signals into one fetch
                pass
            gaps = sub.gaps
            yield from fetch()
            last = time.monotonic()
