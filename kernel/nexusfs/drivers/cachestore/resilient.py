"""The degradation layer of networked cache stores: backend health and retry backoff.

:class:`BackendHealth` is the one up/down flag of a backend, shared by every thread of a
driver. Any thread that sees the backend fail calls :meth:`~BackendHealth.mark_down`;
the driver's background thread probes with :class:`Backoff` delays and calls
:meth:`~BackendHealth.mark_up` once a probe succeeds. While down, data calls do not
touch the network at all (they miss / skip / deliver locally at once), which is what
keeps every call prompt during an outage: only the calls already in flight when the
backend vanished pay a socket timeout.

Invariants: a transition is logged exactly once (a warning when the backend is lost,
an info line when it returns, with the outage length and the number of probes), never
once per call; callbacks run on every transition, outside the lock, in the thread that
caused it; after :meth:`~BackendHealth.close` the state never changes again. Reading
:attr:`~BackendHealth.up` takes no lock (it is on every call's path).
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable

__all__ = ["BackendHealth", "Backoff"]


class Backoff:
    """Exponential backoff with jitter: ``initial``, doubling up to ``maximum`` seconds,
    each delay reduced by a random fraction of up to ``jitter`` (so that many processes
    that lost the same server do not reconnect in lock-step). ``ValueError`` for a
    non-positive ``initial``, ``maximum < initial`` or ``jitter`` outside ``[0, 1)``."""

    def __init__(
        self,
        initial: float,
        maximum: float,
        *,
        factor: float = 2.0,
        jitter: float = 0.2,
        rng: random.Random | None = None,
    ) -> None:
        if not initial > 0 or not maximum >= initial:
            raise ValueError(f"need 0 < initial <= maximum, got {initial}, {maximum}")
        if not 0 <= jitter < 1 or not factor >= 1:
            raise ValueError(f"need 0 <= jitter < 1 and factor >= 1, got {jitter}, {factor}")
        self.initial = initial
        self.maximum = maximum
        self.factor = factor
        self.jitter = jitter
        self._rng = rng or random.Random()
        self._current = initial

    def next(self) -> float:
        """The next delay in seconds (and advance the schedule)."""
        delay = self._current
        self._current = min(self.maximum, self._current * self.factor)
        return delay * (1.0 - self.jitter * self._rng.random())

    def reset(self) -> None:
        """Start again from ``initial`` (after a success)."""
        self._current = self.initial


class BackendHealth:
    """Whether one backend (``name``, shown in log lines; never contains a password) is
    reachable. Starts down and quiet: the driver's first connection attempt reports the
    initial state with :meth:`mark_up` or :meth:`mark_down` (``initial=True`` words the
    warning as a start-up failure).

    ``on_change(up)`` callbacks run after each transition (not while holding the lock);
    an exception in one is logged and does not stop the others.
    """

    def __init__(self, name: str, log: logging.Logger) -> None:
        self.name = name
        self.log = log
        self.up = False
        self.closed = False
        self.outages = 0
        self.last_error: str | None = None
        self._down_since: float | None = time.monotonic()
        self._probes = 0
        self._started = False
        self._lock = threading.Lock()
        self._callbacks: list[Callable[[bool], None]] = []

    def on_change(self, callback: Callable[[bool], None]) -> None:
        """Call ``callback(up)`` after every transition."""
        self._callbacks.append(callback)

    def _notify(self, up: bool) -> None:
        for callback in list(self._callbacks):
            try:
                callback(up)
            except Exception:
                self.log.exception("cache store %s: state callback failed", self.name)

    def mark_down(self, error: BaseException | str) -> bool:
        """Record a failure; ``True`` if this flipped the state from up (or from the
        unreported initial state) to down, which is logged once."""
        text = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
        with self._lock:
            self.last_error = text
            if self.closed or (not self.up and self._started):
                self._probes += 1
                return False
            initial = not self._started
            self._started = True
            self.up = False
            self.outages += 0 if initial else 1
            self._down_since = time.monotonic()
            self._probes = 1
        if initial:
            self.log.warning(
                "cache store %s is unreachable at start (%s): running degraded (reads miss, "
                "writes are skipped, pub/sub is in-process) and retrying in the background",
                self.name, text,
            )  # fmt: skip
        else:
            self.log.warning(
                "cache store %s lost (%s): degraded (reads miss, writes are skipped, pub/sub "
                "is in-process) until it returns; retrying with backoff",
                self.name, text,
            )  # fmt: skip
        self._notify(False)
        return True

    def mark_up(self, detail: str = "") -> bool:
        """Record a successful probe; ``True`` if this flipped the state to up (logged
        once, with the outage length; the first success at start is logged at debug)."""
        with self._lock:
            if self.closed or self.up:
                return False
            initial = not self._started
            self._started = True
            self.up = True
            since, probes = self._down_since, self._probes
            self._down_since = None
        suffix = f"; {detail}" if detail else ""
        if initial:
            self.log.debug("cache store %s connected%s", self.name, suffix)
        else:
            outage = time.monotonic() - since if since is not None else 0.0
            self.log.info(
                "cache store %s is back after %.1f s (%d failed attempts): connected%s",
                self.name, outage, probes, suffix,
            )  # fmt: skip
        self._notify(True)
        return True

    @property
    def down_for(self) -> float:
        """Seconds since the backend was lost (0 while up)."""
        since = self._down_since
        return 0.0 if self.up or since is None else time.monotonic() - since

    def close(self) -> None:
        """Freeze the state as down; later marks are ignored. Idempotent."""
        with self._lock:
            self.closed = True
            self.up = False
