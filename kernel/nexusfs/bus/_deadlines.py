"""Many wall-clock deadlines on one event-loop timer (asyncio engine of the bus).

A bus connection tracks a deadline per call it makes and per request it serves. One
``loop.call_at`` timer per deadline costs a timer handle, a heap push and a cancel per
call; almost all of them are cancelled unused, because calls finish in microseconds and
deadlines are seconds away. :class:`DeadlineQueue` keeps the deadlines in its own heap
and arms a single loop timer for the earliest one.

Invariants:

* ``on_due(key, token)`` is called once for every entry whose deadline (``time.time()``
  seconds) has passed *and* that is still live (``live(key, token)`` is true at that
  moment); entries that died meanwhile are dropped silently. It is never called early:
  a timer that fires early re-arms itself.
* The heap never holds more than about twice the live entries (plus a constant): dead
  entries are compacted away in amortised O(1) per :meth:`add`.
* After :meth:`close` nothing fires and :meth:`add` is a no-op.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import math
import time
from collections.abc import Callable

__all__ = ["DeadlineQueue"]

_MIN_COMPACT = 1024


class DeadlineQueue:
    """See the module docstring. ``on_due`` must not raise (it runs in a loop callback);
    ``live`` must be cheap (it is called for every entry when compacting)."""

    __slots__ = ("_armed_at", "_closed", "_compact_at", "_heap", "_live", "_loop",
                 "_on_due", "_seq", "_timer")

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        on_due: Callable[[int, object], None],
        live: Callable[[int, object], bool],
    ) -> None:
        self._loop = loop
        self._on_due = on_due
        self._live = live
        self._heap: list[tuple[float, int, int, object]] = []
        self._seq = itertools.count()
        self._timer: asyncio.TimerHandle | None = None
        self._armed_at = math.inf
        self._compact_at = _MIN_COMPACT
        self._closed = False

    def __len__(self) -> int:
        return len(self._heap)

    def add(self, when: float, key: int, token: object) -> None:
        """Track the deadline ``when`` (absolute ``time.time()``) of ``(key, token)``."""
        if self._closed:
            return
        heap = self._heap
        heapq.heappush(heap, (when, next(self._seq), key, token))
        if when < self._armed_at:
            self._arm(when)
        elif len(heap) > self._compact_at:
            self._compact()

    def close(self) -> None:
        """Forget every entry and disarm the timer."""
        self._closed = True
        self._heap.clear()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _arm(self, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._armed_at = when
        delay = max(0.0, when - time.time())
        self._timer = self._loop.call_at(self._loop.time() + delay, self._fire)

    def _fire(self) -> None:
        self._timer = None
        self._armed_at = math.inf
        heap = self._heap
        now = time.time()
        while heap and heap[0][0] <= now:
            _when, _seq, key, token = heapq.heappop(heap)
            if self._live(key, token):
                self._on_due(key, token)
        if heap and not self._closed:
            self._arm(heap[0][0])

    def _compact(self) -> None:
        live = self._live
        kept = [e for e in self._heap if live(e[2], e[3])]
        heapq.heapify(kept)
        self._heap = kept
        self._compact_at = max(_MIN_COMPACT, 2 * len(kept))
        # The armed timer may now be earlier than the new head: it then fires, finds
        # nothing due and re-arms, which is harmless.
