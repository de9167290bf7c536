"""An in-memory metastore: the reference model of the metastore contract.

``MemoryMetastore`` keeps a ``dict`` plus a sorted list of keys (``bisect``) under one
lock. It implements every semantic of :class:`~nexusfs.abc.MetastoreABC` exactly like the
redb driver (bytewise key order, ``Conflict`` on a failed batch check with nothing
written, ``StoreClosed`` after ``close()``) but nothing is durable: a crash loses
everything, and ``flush()`` is a no-op. Use it for tests and ephemeral kernels.

Concurrency: every call holds the lock for its whole duration, so each read is a
consistent snapshot and mutations are serialised. Keys are copied to ``bytes`` on entry, so
callers may pass ``bytearray``/``memoryview``.
"""

from __future__ import annotations

import threading
from bisect import bisect_left, bisect_right, insort
from collections.abc import Sequence

from nexusfs.abc import Durability, MetastoreABC
from nexusfs.errors import Conflict, StoreClosed

__all__ = ["MemoryMetastore"]


def _prefix_successor(prefix: bytes) -> bytes | None:
    """The smallest key greater than every key starting with ``prefix`` (``None``: none)."""
    stripped = prefix.rstrip(b"\xff")
    if not stripped:
        return None
    return stripped[:-1] + bytes([stripped[-1] + 1])


class MemoryMetastore(MetastoreABC):
    """A thread-safe, sorted, in-memory metastore. Nothing survives the process.

    ``durability`` is reported as ``DEFERRED`` (the closest level; nothing is ever written
    to stable storage).
    """

    def __init__(self, durability: Durability | str = Durability.DEFERRED) -> None:
        self.durability = Durability(durability)
        self._data: dict[bytes, bytes] = {}
        self._keys: list[bytes] = []
        self._lock = threading.RLock()
        self._closed = False

    @property
    def closed(self) -> bool:
        """Whether ``close()`` was called."""
        return self._closed

    def _check(self) -> None:
        if self._closed:
            raise StoreClosed("metastore is closed")

    # ------------------------------------------------------------------ reads

    def get(self, key: bytes) -> bytes | None:
        with self._lock:
            self._check()
            return self._data.get(bytes(key))

    def get_many(self, keys: Sequence[bytes]) -> list[bytes | None]:
        with self._lock:
            self._check()
            data = self._data
            return [data.get(bytes(k)) for k in keys]

    def scan(
        self,
        prefix: bytes = b"",
        *,
        start: bytes | None = None,
        end: bytes | None = None,
        after: bytes | None = None,
        limit: int | None = None,
        keys_only: bool = False,
    ) -> list[tuple[bytes, bytes]]:
        if limit is not None and limit < 0:
            raise ValueError("limit must be >= 0")
        prefix = bytes(prefix)
        with self._lock:
            self._check()
            keys = self._keys
            lo = bisect_left(keys, prefix)
            if start is not None:
                lo = max(lo, bisect_left(keys, bytes(start)))
            if after is not None:
                lo = max(lo, bisect_right(keys, bytes(after)))
            hi = len(keys)
            succ = _prefix_successor(prefix) if prefix else None
            if succ is not None:
                hi = min(hi, bisect_left(keys, succ))
            if end is not None:
                hi = min(hi, bisect_left(keys, bytes(end)))
            if limit is not None:
                hi = min(hi, lo + limit)
            if lo >= hi:
                return []
            selected = keys[lo:hi]
            if keys_only:
                return [(k, b"") for k in selected]
            data = self._data
            return [(k, data[k]) for k in selected]

    # ----------------------------------------------------------------- writes

    def _put(self, key: bytes, value: bytes) -> None:
        if key not in self._data:
            insort(self._keys, key)
        self._data[key] = value

    def _delete(self, key: bytes) -> bool:
        if key not in self._data:
            return False
        del self._data[key]
        i = bisect_left(self._keys, key)
        del self._keys[i]
        return True

    def put(self, key: bytes, value: bytes) -> None:
        key, value = bytes(key), bytes(value)
        with self._lock:
            self._check()
            self._put(key, value)

    def delete(self, key: bytes) -> bool:
        with self._lock:
            self._check()
            return self._delete(bytes(key))

    def cas(self, key: bytes, expected: bytes | None, new: bytes | None) -> bool:
        key = bytes(key)
        with self._lock:
            self._check()
            if self._data.get(key) != (None if expected is None else bytes(expected)):
                return False
            if new is None:
                self._delete(key)
            else:
                self._put(key, bytes(new))
            return True

    def batch(
        self,
        puts: Sequence[tuple[bytes, bytes]] = (),
        deletes: Sequence[bytes] = (),
        checks: Sequence[tuple[bytes, bytes | None]] = (),
    ) -> None:
        # Copy first: a bad argument raises before anything is written.
        puts_ = [(bytes(k), bytes(v)) for k, v in puts]
        deletes_ = [bytes(k) for k in deletes]
        checks_ = [(bytes(k), None if e is None else bytes(e)) for k, e in checks]
        with self._lock:
            self._check()
            for key, expected in checks_:
                if self._data.get(key) != expected:
                    raise Conflict(f"batch check failed for key {key!r}")
            for key in deletes_:
                self._delete(key)
            for key, value in puts_:
                self._put(key, value)

    def flush(self) -> None:
        """No-op (nothing is durable); raises ``StoreClosed`` after ``close()``."""
        with self._lock:
            self._check()

    def close(self) -> None:
        """Mark the store closed and drop its data. Idempotent."""
        with self._lock:
            self._closed = True
            self._data = {}
            self._keys = []

    def __enter__(self) -> MemoryMetastore:
        return self

    def __repr__(self) -> str:
        state = " closed" if self._closed else ""
        return f"<MemoryMetastore {len(self._data)} keys{state}>"
