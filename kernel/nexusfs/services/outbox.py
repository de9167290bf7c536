"""Per-service ordered queue of post-hook events (at-least-once delivery).

Invariants:

* Every appended item gets the next outbox sequence number ``oseq`` (1, 2, ...);
  items are delivered in ``oseq`` order, one batch in flight at a time, so a service
  sees events in the kernel's order.
* An item leaves the queue only when a worker acknowledged it (``hook.post`` answers the
  highest ``oseq`` it processed) or when it is dropped because the queue is full.
  A batch whose delivery failed (worker lost, deadline) is sent again, with the same
  ``oseq`` and the same event (same ``event.seq``), to whichever worker is current next
  - so the successor of a crashed worker gets exactly the unacknowledged events.
* Bounded: beyond ``capacity`` items the *oldest* is dropped and ``dropped`` counts it
  (reported by ``ServiceHost.services()``); :meth:`append` never blocks or raises.
* Batched: :meth:`append` only queues (and wakes the sender when it sleeps). Before
  each delivery that is not a full batch the sender waits ``linger`` seconds, so a
  stream of syscalls costs one delivery per ``linger`` (on the kernel's event loop and
  in the worker) instead of one per syscall. The price is up to ``linger`` of extra
  delivery delay.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

import anyio

from nexusfs.bus import DeadlineExceeded
from nexusfs.errors import NexusError

__all__ = ["Outbox"]

log = logging.getLogger("nexusfs.services")

#: ``send(batch) -> highest acknowledged oseq``; raises on failure.
Sender = Callable[[list[list[Any]]], Awaitable[int]]


class Outbox:
    """See the module docstring. ``run(send)`` is the sender task. ``ValueError`` for a
    ``capacity`` or ``batch`` below 1 or a negative ``linger``/``retry_delay``."""

    def __init__(self, name: str, *, capacity: int = 100_000, batch: int = 512,
                 retry_delay: float = 0.05, linger: float = 0.005) -> None:
        if capacity < 1 or batch < 1:
            raise ValueError(f"outbox {name}: capacity and batch must be at least 1")
        if linger < 0 or retry_delay < 0:
            raise ValueError(f"outbox {name}: linger and retry_delay must not be negative")
        self.name = name
        self.capacity = capacity
        self.batch = batch
        self.retry_delay = retry_delay
        self.linger = linger
        self.batches = 0
        self._items: deque[list[Any]] = deque()
        self._next = 1
        self.dropped = 0
        self.delivered = 0
        self.acked = 0
        self._wake = anyio.Event()
        self._sleeping = False

    def __len__(self) -> int:
        return len(self._items)

    def append(self, event: Any, outcome: Any) -> int:
        """Queue one event (in the host's wire form, opaque here); returns its ``oseq``.
        Never blocks."""
        oseq = self._next
        self._next += 1
        items = self._items
        if len(items) >= self.capacity:
            items.popleft()
            self.dropped += 1
        items.append([oseq, event, outcome])
        if self._sleeping:  # wake the sender only when it waits for items
            self._sleeping = False
            self._wake.set()
        return oseq

    def clear(self) -> None:
        """Forget every pending item (the service was stopped)."""
        self._items.clear()

    def ack(self, upto: int) -> None:
        """Drop every item with ``oseq <= upto``."""
        items = self._items
        n = 0
        while items and items[0][0] <= upto:
            items.popleft()
            n += 1
        self.delivered += n
        self.acked = max(self.acked, upto)

    async def wait_empty(self, timeout: float) -> bool:
        """Wait until nothing is pending (for tests and graceful stop)."""
        with anyio.move_on_after(timeout):
            while self._items:
                await anyio.sleep(0.01)
            return True
        return False

    async def run(self, send: Sender) -> None:
        """Deliver forever (until cancelled): wait for items (and ``linger`` for more),
        take up to ``batch`` items from the head, ``send`` them, drop what was
        acknowledged. A failure is retried after ``retry_delay`` (``send`` itself waits
        for a ready worker)."""
        while True:
            if not self._items:
                self._wake = anyio.Event()
                self._sleeping = True
                try:
                    await self._wake.wait()
                finally:
                    self._sleeping = False
                continue
            if self.linger > 0 and len(self._items) < self.batch:
                await anyio.sleep(self.linger)  # let more events share this delivery
            batch = [self._items[i] for i in range(min(self.batch, len(self._items)))]
            self.batches += 1
            try:
                upto = await send(batch)
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
