"""Per-service ordered queue of post-hook events (at-least-once delivery).

Invariants:

* Every queued item gets the next outbox sequence number ``oseq`` (1, 2, ...);
  items are delivered in ``oseq`` order, one batch in flight at a time, so a service
  sees events in the kernel's order. Oseqs are implicit: the queue keeps the oseq of
  its head, and a batch travels as its first oseq plus its items.
* An item leaves the queue only when a worker acknowledged it (``hook.post`` answers the
  highest ``oseq`` it processed) or when it is dropped because the queue is full.
  A batch whose delivery failed (worker lost, deadline) is sent again, with the same
  ``oseq`` and the same event (same ``event.seq``), to whichever worker is current next
  - so the successor of a crashed worker gets exactly the unacknowledged events.
* Bounded: beyond ``capacity`` items the *oldest* are dropped and ``dropped`` counts
  them (reported by ``ServiceHost.services()``); :meth:`append` / :meth:`extend` never
  block or raise.
* Batched: queueing only queues (and wakes the sender when it sleeps). Before each
  delivery that is not a full batch the sender waits ``linger`` seconds, so a stream of
  syscalls costs one delivery per ``linger`` (on the kernel's event loop and in the
  worker) instead of one per syscall. Under load (events arriving at ``batch // 32``
  or more per ``linger``) it keeps lingering, up to ``max_linger`` in all, until about
  half a batch is queued (its next wait is as long as that takes at the rate seen, not
  another ``linger``): a delivery costs the kernel a fixed few hundred microseconds
  (its wake-ups and round trip), which only large batches make small per event. The
  price is extra delivery delay: ``linger`` when events are sparse, up to
  ``max_linger`` under load.
* Cheap per event: items are opaque and queued, sliced into batches and acknowledged
  as whole runs (list operations in C), never one by one in Python.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import anyio

from nexusfs.bus import DeadlineExceeded
from nexusfs.errors import NexusError

__all__ = ["Outbox"]

log = logging.getLogger("nexusfs.services")

#: ``send(first_oseq, items) -> highest acknowledged oseq``; raises on failure.
Sender = Callable[[int, list[Any]], Awaitable[int]]


class Outbox:
    """See the module docstring. ``run(send)`` is the sender task. ``ValueError`` for a
    ``capacity`` or ``batch`` below 1 or a negative ``linger``/``retry_delay``."""

    def __init__(self, name: str, *, capacity: int = 100_000, batch: int = 512,
                 retry_delay: float = 0.05, linger: float = 0.005,
                 max_linger: float = 0.05) -> None:
        if capacity < 1 or batch < 1:
            raise ValueError(f"outbox {name}: capacity and batch must be at least 1")
        if linger < 0 or retry_delay < 0:
            raise ValueError(f"outbox {name}: linger and retry_delay must not be negative")
        self.name = name
        self.capacity = capacity
        self.batch = batch
        self.retry_delay = retry_delay
        self.linger = linger
        self.max_linger = max(linger, max_linger)
        self.batches = 0
        self._items: list[Any] = []
        self._first = 1  # the oseq of _items[0]
        self.dropped = 0
        self.delivered = 0
        self.acked = 0
        self._wake = anyio.Event()
        self._sleeping = False
        #: Called by the sender before it looks at its queue (and again after lingering):
        #: the host moves events captured since into the outboxes (see ``ServiceHost``).
        self.pull: Callable[[], None] | None = None

    def __len__(self) -> int:
        return len(self._items)

    def append(self, item: Any) -> int:
        """Queue one event (in the host's wire form, opaque here); returns its
        ``oseq``. Never blocks."""
        self.extend([item])
        return self._first + len(self._items) - 1

    def extend(self, items: list[Any]) -> None:
        """Queue ``items`` (opaque, one event each) in order. Never blocks; beyond
        ``capacity`` the oldest items are dropped."""
        queue = self._items
        queue.extend(items)
        overflow = len(queue) - self.capacity
        if overflow > 0:
            del queue[:overflow]
            self._first += overflow
            self.dropped += overflow
        if self._sleeping:  # wake the sender only when it waits for items
            self._sleeping = False
            self._wake.set()

    def kick(self) -> None:
        """Wake the sender if it sleeps for want of items (it then pulls)."""
        if self._sleeping:
            self._sleeping = False
            self._wake.set()

    def clear(self) -> None:
        """Forget every pending item (the service was stopped)."""
        self._first += len(self._items)
        self._items.clear()

    def ack(self, upto: int) -> None:
        """Drop every item with ``oseq <= upto``."""
        n = min(upto - self._first + 1, len(self._items))
        if n > 0:
            del self._items[:n]
            self._first += n
            self.delivered += n
        self.acked = max(self.acked, upto)

    async def _linger(self) -> None:
        """Wait ``linger``; while events keep coming fast, longer (see the module
        docstring). Under load the next wait is as long as half a batch takes to arrive
        at the rate just seen (within ``max_linger`` in all), so a busy stream costs
        the event loop a wake-up or two per delivery rather than one per ``linger``."""
        waited = 0.0
        step = self.linger
        busy = max(1, self.batch // 32) / self.linger  # events/s that count as load
        half = self.batch // 2
        # Enough: a wait aimed at half a batch that falls a little short (the rate is
        # only estimated) is not worth another wake-up.
        enough = half - half // 8
        while True:
            before = len(self._items)
            await anyio.sleep(step)
            waited += step
            if self.pull is not None:
                self.pull()
            queued = len(self._items)
            rate = (queued - before) / step
            left = self.max_linger - waited
            if rate < busy or queued >= enough or left < self.linger:
                return
            step = min(max(self.linger, (half - queued) / rate), left)

    async def wait_empty(self, timeout: float) -> bool:
        """Wait until nothing is pending (for tests and graceful stop)."""
        with anyio.move_on_after(timeout):
            while self._items:
                await anyio.sleep(0.01)
            return True
        return False

    async def run(self, send: Sender) -> None:
        """Deliver forever (until cancelled): wait for items (and ``linger`` for more),
        take up to ``batch`` items from the head, ``send`` them with the head's oseq,
        drop what was acknowledged. A failure is retried after ``retry_delay`` (``send``
        itself waits for a ready worker)."""
        while True:
            if self.pull is not None:
                self.pull()
            if not self._items:
                self._wake = anyio.Event()
                self._sleeping = True
                try:
                    await self._wake.wait()
                finally:
                    self._sleeping = False
                continue
            if self.linger > 0 and len(self._items) < self.batch:
                await self._linger()  # let more events share this delivery
            if not self._items:
                continue  # (cleared while lingering)
            batch = self._items[: self.batch]
            self.batches += 1
            try:
                upto = await send(self._first, batch)
            except DeadlineExceeded:
                log.warning("service %s: post-hook batch timed out; redelivering", self.name)
                await anyio.sleep(self.retry_delay)
                continue
            except NexusError as exc:
                log.debug("service %s: post-hook delivery failed (%s); retrying",
                          self.name, exc)
                await anyio.sleep(self.retry_delay)
                continue
            self.ack(int(upto))
