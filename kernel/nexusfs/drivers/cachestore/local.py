"""In-process publish/subscribe and argument checks shared by every cache store driver.

:class:`LocalHub` fans a message out to the :class:`LocalSubscription` objects of one
store, in this process, without any backend: the whole of pub/sub for
``NullCacheStore``, and the local half of ``RedisCacheStore`` (which delivers its own
messages in-process and relays only other processes' messages from Redis, so local
delivery survives the loss of Redis).

Invariants: a message is appended to each subscription's queue at most once; a closed
subscription receives nothing and its ``get`` returns ``None`` at once; a full queue
drops its *oldest* message and counts a gap. ``publish`` never blocks on a slow
consumer. The ``check_*`` functions are the one definition of valid keys, channels,
values, TTLs and timeouts, so every driver rejects the same inputs with the same errors
(``TypeError`` for a wrong type, ``ValueError`` for a bad value).
"""

from __future__ import annotations

import math
import re
import threading
import time
from collections import deque
from collections.abc import Callable

from nexusfs.abc import Subscription

__all__ = [
    "DEFAULT_QUEUE_SIZE",
    "MAX_NAME_BYTES",
    "MAX_VALUE_BYTES",
    "LocalHub",
    "LocalSubscription",
    "check_name",
    "check_timeout",
    "check_ttl_ms",
    "check_value",
    "redact_url",
]

#: Longest key or channel name, in UTF-8 bytes.
MAX_NAME_BYTES = 4096
#: Largest value or message (Redis's default ``proto-max-bulk-len``).
MAX_VALUE_BYTES = 512 << 20
#: Messages a subscription holds before it drops the oldest.
DEFAULT_QUEUE_SIZE = 10_000


def redact_url(url: str) -> str:
    """``url`` with any password replaced by ``***`` (for messages and logs)."""
    return re.sub(r"(//[^/:@]*:)[^@/]*@", r"\1***@", url)


def check_name(kind: str, name: object) -> bytes:
    """Validate a key or channel name (``kind`` says which, for the message) and return
    its UTF-8 encoding. ``TypeError`` if not a ``str``; ``ValueError`` if empty, not
    encodable (lone surrogates) or longer than :data:`MAX_NAME_BYTES`."""
    if not isinstance(name, str):
        raise TypeError(f"cache store {kind} must be a str, not {type(name).__name__}")
    if not name:
        raise ValueError(f"cache store {kind} must not be empty")
    try:
        raw = name.encode()
    except UnicodeEncodeError as exc:
        raise ValueError(f"cache store {kind} {name!r} is not valid text: {exc.reason}") from None
    if len(raw) > MAX_NAME_BYTES:
        raise ValueError(
            f"cache store {kind} is {len(raw)} bytes long; the limit is {MAX_NAME_BYTES}"
        )
    return raw


def check_value(kind: str, value: object) -> bytes:
    """Validate a value or message and return it as ``bytes``. ``TypeError`` unless it is
    bytes-like (``bytes``, ``bytearray``, ``memoryview``; a ``str`` must be encoded by
    the caller); ``ValueError`` if larger than :data:`MAX_VALUE_BYTES`."""
    if not isinstance(value, bytes | bytearray | memoryview):
        raise TypeError(
            f"cache store {kind} must be bytes, bytearray or memoryview, "
            f"not {type(value).__name__}"
        )
    data = value if type(value) is bytes else bytes(value)
    if len(data) > MAX_VALUE_BYTES:
        raise ValueError(
            f"cache store {kind} is {len(data)} bytes; the limit is {MAX_VALUE_BYTES}"
        )
    return data


def check_ttl_ms(ttl: object) -> int | None:
    """Validate a TTL in seconds and return it in whole milliseconds (rounded up, at
    least 1), or ``None`` for no expiry. ``TypeError`` unless ``None``, ``int`` or
    ``float`` (``bool`` is refused); ``ValueError`` if not positive and finite."""
    if ttl is None:
        return None
    if isinstance(ttl, bool) or not isinstance(ttl, int | float):
        raise TypeError(f"cache store ttl must be a number of seconds, not {type(ttl).__name__}")
    if not math.isfinite(ttl) or ttl <= 0:
        raise ValueError(f"cache store ttl must be a positive finite number of seconds, not {ttl}")
    return max(1, math.ceil(ttl * 1000))


def check_timeout(timeout: object) -> float | None:
    """Validate a wait timeout in seconds (``None``: wait forever). ``TypeError`` for a
    non-number; ``ValueError`` if negative, NaN or infinite."""
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, int | float):
        raise TypeError(
            f"timeout must be a number of seconds or None, not {type(timeout).__name__}"
        )
    if not math.isfinite(timeout) or timeout < 0:
        raise ValueError(f"timeout must be a finite number of seconds >= 0, not {timeout}")
    return float(timeout)


class LocalSubscription(Subscription):
    """A subscription fed in-process by a :class:`LocalHub` (see :class:`Subscription`).

    ``on_close`` runs once, on the first :meth:`close`, so that the owning store can
    unsubscribe (and, for a networked store, tell its backend). ``dropped`` counts the
    messages lost to queue overflow.
    """

    def __init__(
        self,
        channel: str,
        on_close: Callable[[LocalSubscription], object],
        max_queue: int = DEFAULT_QUEUE_SIZE,
    ) -> None:
        self.channel = channel
        self._on_close = on_close
        self._max_queue = max_queue
        self._queue: deque[bytes] = deque()
        self._cond = threading.Condition(threading.Lock())
        self._closed = False
        self._gaps = 0
        self.dropped = 0

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def gaps(self) -> int:
        return self._gaps

    def deliver(self, message: bytes) -> bool:
        """Queue ``message``; ``False`` if the subscription is closed. Never blocks on
        the consumer: a full queue drops its oldest message (counted in ``dropped`` and
        ``gaps``)."""
        with self._cond:
            if self._closed:
                return False
            if len(self._queue) >= self._max_queue:
                self._queue.popleft()
                self.dropped += 1
                self._gaps += 1
            self._queue.append(message)
            self._cond.notify()
        return True

    def mark_gap(self) -> None:
        """Record that messages may have been missed (the backend was lost or regained)."""
        with self._cond:
            self._gaps += 1

    def get(self, timeout: float | None = None) -> bytes | None:
        wait = check_timeout(timeout)
        with self._cond:
            if not self._queue and not self._closed and wait != 0:
                if wait is None:
                    while not self._queue and not self._closed:
                        self._cond.wait()
                else:
                    deadline = time.monotonic() + wait
                    while not self._queue and not self._closed:
                        left = deadline - time.monotonic()
                        if left <= 0:
                            break
                        self._cond.wait(left)
            if self._closed or not self._queue:
                return None
            return self._queue.popleft()

    def detach(self) -> bool:
        """Mark closed, drop the queue and wake readers, without calling ``on_close``;
        ``True`` if it was open. Used by stores that close all their subscriptions."""
        with self._cond:
            if self._closed:
                return False
            self._closed = True
            self._queue.clear()
            self._cond.notify_all()
        return True

    def close(self) -> None:
        if self.detach():
            self._on_close(self)

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"{len(self._queue)} queued"
        return f"<{type(self).__name__} {self.channel!r} {state}, gaps={self._gaps}>"


class LocalHub:
    """The subscriptions of one store, by channel. Thread-safe; :meth:`publish` takes no
    lock (it reads an immutable tuple per channel), membership changes take one."""

    def __init__(self, max_queue: int = DEFAULT_QUEUE_SIZE) -> None:
        if isinstance(max_queue, bool) or not isinstance(max_queue, int) or max_queue < 1:
            raise ValueError(f"queue size must be a positive int, not {max_queue!r}")
        self.max_queue = max_queue
        self._lock = threading.Lock()
        self._subs: dict[str, tuple[LocalSubscription, ...]] = {}

    def subscribe(
        self, channel: str, on_close: Callable[[LocalSubscription], object]
    ) -> tuple[LocalSubscription, bool]:
        """A new subscription to ``channel``, and whether it is the channel's first."""
        sub = LocalSubscription(channel, on_close, self.max_queue)
        with self._lock:
            current = self._subs.get(channel, ())
            self._subs[channel] = (*current, sub)
        return sub, not current

    def unsubscribe(self, sub: LocalSubscription) -> bool:
        """Remove ``sub``; whether its channel now has no subscription left (``False``
        if ``sub`` was not registered)."""
        with self._lock:
            current = self._subs.get(sub.channel, ())
            if sub not in current:
                return False
            rest = tuple(s for s in current if s is not sub)
            if rest:
                self._subs[sub.channel] = rest
                return False
            del self._subs[sub.channel]
            return True

    def publish(self, channel: str, message: bytes) -> int:
        """Queue ``message`` on every open subscription of ``channel``; how many took it."""
        return sum(1 for sub in self._subs.get(channel, ()) if sub.deliver(message))

    def channels(self) -> list[str]:
        """Channels with at least one subscription."""
        with self._lock:
            return list(self._subs)

    def subscriber_count(self, channel: str) -> int:
        """Open subscriptions of ``channel``."""
        return len(self._subs.get(channel, ()))

    def mark_gaps(self) -> None:
        """Record a possible gap on every subscription (backend lost or regained)."""
        with self._lock:
            subs = [s for group in self._subs.values() for s in group]
        for sub in subs:
            sub.mark_gap()

    def close_all(self) -> None:
        """Close every subscription (their ``get`` returns ``None``); forget them all."""
        with self._lock:
            subs = [s for group in self._subs.values() for s in group]
            self._subs.clear()
        for sub in subs:
            sub.detach()
