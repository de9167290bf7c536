"""Busy-polling: wait for a quick answer without going to sleep.

On a blocking ``recv`` or an idle event loop, the waiting thread sleeps and the kernel
wakes it when data arrives; on a virtual machine each sleep and wake-up costs several
microseconds (the idle vCPU halts and must be woken by an interrupt), which is most of a
local bus round trip. Polling the socket without blocking for a short window avoids
both when the peer answers quickly, at the price of the CPU time spent polling.

:class:`BusyPoll` is the adaptive policy (like an adaptive mutex's spin): poll only while
the running average of recent waits is below the window, so a peer that usually takes
longer is waited for by sleeping at once, and no wait polls longer than the window.
:func:`busy_poll_limit` reads the window from ``$NEXUS_BUS_BUSY_POLL_US``.

Inside the system it is on by default: the kernel's connections to its service workers
(:class:`~nexusfs.bus.connection.Connection` with ``busy_poll``) poll for a worker's
answer, and a worker polls for the kernel's next call after answering, both only while
nothing else is in progress on that event loop. Client processes (the SDK, the CLI) never
poll unless asked (:class:`~nexusfs.bus.client.BlockingClient` ``busy_poll=``): a
library should not spin its caller's CPU, and a client's waits are whole syscalls, which
sit around the window, where polling would make some calls fast and others not.
"""

from __future__ import annotations

import os
from typing import Final

from nexusfs.errors import ConfigError

__all__ = ["BUSY_POLL_ENV", "DEFAULT_BUSY_POLL", "BusyPoll", "busy_poll_limit"]

BUSY_POLL_ENV: Final = "NEXUS_BUS_BUSY_POLL_US"
DEFAULT_BUSY_POLL: Final = 50e-6


def busy_poll_limit() -> float:
    """The busy-poll window in seconds from ``$NEXUS_BUS_BUSY_POLL_US`` (microseconds;
    unset or empty: 50 us; 0 disables). ``ConfigError`` if it is not a number >= 0."""
    raw = os.environ.get(BUSY_POLL_ENV, "").strip()
    if not raw:
        return DEFAULT_BUSY_POLL
    try:
        us = float(raw)
    except ValueError:
        us = -1.0
    if not (0 <= us < 1e6):
        raise ConfigError(
            f"{BUSY_POLL_ENV}={raw!r}: expected microseconds, a number from 0 to 999999")
    return us * 1e-6


class BusyPoll:
    """The adaptive policy of one waiter (not thread-safe: one per waiter, such as a
    client's reading thread or a connection's read callback).

    Call :meth:`should_poll` once per wait, and :meth:`observe` with the wait's length
    when (and only when) it polled. A wait polls for at most ``limit`` seconds while
    :attr:`average` (an EWMA, weight 1/8, of polled waits, each counted as at most
    ``2 * limit`` so that one long idle gap does not outweigh many quick answers) is
    below ``limit``: about four slow waits in a row turn polling off. Waits that sleep
    are not observed: they include the wake-up cost polling avoids, so they would keep
    the policy from ever polling again. Instead, while polling is off, one wait in
    ``PROBE_EVERY`` polls anyway, and a probe answered within the window turns polling
    back on at once; this costs at most ``limit / PROBE_EVERY`` per wait while the peer
    stays slow. ``limit`` 0 disables polling.
    """

    PROBE_EVERY: Final = 16

    __slots__ = ("_probing", "_skipped", "average", "limit")

    def __init__(self, limit: float) -> None:
        self.limit = limit
        self.average = 0.0
        self._skipped = 0
        self._probing = False

    @property
    def active(self) -> bool:
        """Whether recent polled waits were quick (the next wait polls)."""
        return self.limit > 0 and self.average < self.limit

    def should_poll(self) -> bool:
        """Whether this wait polls (always while :attr:`active`, else as a probe)."""
        if self.average < self.limit:
            return True
        if self.limit <= 0:
            return False
        self._skipped += 1
        if self._skipped < self.PROBE_EVERY:
            return False
        self._skipped = 0
        self._probing = True
        return True

    def observe(self, waited: float) -> None:
        """Record how long a wait that polled took (seconds), to its end."""
        limit = self.limit
        if self._probing:
            self._probing = False
            if waited < limit:  # the peer is quick again
                self.average = waited
                return
        self.average += (min(waited, 2 * limit) - self.average) * 0.125
