"""An in-memory object store for tests and ephemeral kernels.

Blobs live in a dict keyed by content id (BLAKE3 hex) and vanish with the process; the
``durability`` argument is accepted for interface compatibility and ignored. Semantics
match :class:`~nexusfs.drivers.objectstore.local.LocalObjectStore`: a blob becomes
visible only when its writer commits, identical content is stored once, malformed ids
raise ``InvalidPath`` and missing blobs ``NotFound``. Thread-safe.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import blake3

from nexusfs.abc import BlobInfo, BlobWriter, Durability, ObjectStoreABC
from nexusfs.drivers.objectstore.local import validate_content_id
from nexusfs.errors import NotFound, StoreClosed

__all__ = ["MemoryBlobWriter", "MemoryObjectStore"]


class MemoryBlobWriter(BlobWriter):
    """Accumulates one blob in memory; publishes it in ``commit()``. The caller's buffer
    is copied in ``write()``, so it may be reused at once."""

    def __init__(self, store: MemoryObjectStore) -> None:
        self._store = store
        self._hasher = blake3.blake3()
        self._buf: bytearray | None = bytearray()
        self._done = False

    def write(self, data: bytes | bytearray | memoryview) -> int:
        """Append ``data``; ``ValueError`` after ``commit()``/``abort()``."""
        if self._done or self._buf is None:
            raise ValueError("blob writer is already committed or aborted")
        with memoryview(data) as raw:
            view = raw if raw.format == "B" and raw.ndim == 1 else raw.cast("B")
            self._hasher.update(view)
            self._buf += view
            return len(view)

    def commit(self) -> BlobInfo:
        """Publish the blob (deduplicated) and return its info. ``StoreClosed`` (and
        the writer aborted) if the store was closed."""
        if self._done or self._buf is None:
            raise ValueError("blob writer is already committed or aborted")
        try:
            info = self._store._publish(self._hasher.hexdigest(), bytes(self._buf))
        except BaseException:
            self.abort()
            raise
        self._done = True
        self._buf = None
        return info

    def abort(self) -> None:
        """Discard the buffered bytes. Idempotent; a no-op after ``commit()``."""
        self._done = True
        self._buf = None


class MemoryObjectStore(ObjectStoreABC):
    """Dict-backed content-addressed store (see the module docstring)."""

    def __init__(self, name: str = "", durability: Durability | str = Durability.DEFERRED) -> None:
        self.durability = Durability(durability)
        self.name = name
        self.uri = f"memory://{name}"
        self._lock = threading.Lock()
        self._blobs: dict[str, tuple[bytes, float]] = {}
        self._closed = False

    def __repr__(self) -> str:
        return f"MemoryObjectStore({self.name!r})"

    def _check_open(self) -> None:
        if self._closed:
            raise StoreClosed(f"object store {self.uri} is closed")

    def _publish(self, content_id: str, data: bytes) -> BlobInfo:
        with self._lock:
            self._check_open()
            stored = self._blobs.setdefault(content_id, (data, time.time()))
        return BlobInfo(content_id, len(stored[0]), stored[1])

    def _get(self, content_id: str) -> bytes:
        validate_content_id(content_id)
        with self._lock:
            self._check_open()
            entry = self._blobs.get(content_id)
        if entry is None:
            raise NotFound(f"blob {content_id} not found in {self.uri}")
        return entry[0]

    def open_writer(self) -> MemoryBlobWriter:
        """Start a streaming write; ``StoreClosed`` after ``close()``."""
        self._check_open()
        return MemoryBlobWriter(self)

    def read(self, content_id: str, offset: int = 0, size: int | None = None) -> bytes:
        """Bytes ``[offset, offset+size)`` (clamped to the blob); ``NotFound`` if absent."""
        _check_range(offset, size)
        data = self._get(content_id)
        end = len(data) if size is None else offset + size
        return data[offset:end]

    def iter_chunks(
        self,
        content_id: str,
        offset: int = 0,
        size: int | None = None,
        chunk_size: int = 1 << 20,
    ) -> Iterator[bytes]:
        """Stream a range in chunks of at most ``chunk_size``; the id and range are
        checked now, ``NotFound`` is raised on the first ``next()``."""
        validate_content_id(content_id)
        _check_range(offset, size)
        if chunk_size <= 0:
            raise ValueError(f"chunk_size must be > 0, got {chunk_size}")
        return self._iter_chunks(content_id, offset, size, chunk_size)

    def _iter_chunks(
        self, content_id: str, offset: int, size: int | None, chunk_size: int
    ) -> Iterator[bytes]:
        data = self._get(content_id)
        end = len(data) if size is None else min(len(data), offset + size)
        with memoryview(data) as view:
            for pos in range(offset, end, chunk_size):
                yield bytes(view[pos : min(pos + chunk_size, end)])

    def info(self, content_id: str) -> BlobInfo:
        """Size and creation time; ``NotFound`` if absent."""
        validate_content_id(content_id)
        with self._lock:
            self._check_open()
            entry = self._blobs.get(content_id)
        if entry is None:
            raise NotFound(f"blob {content_id} not found in {self.uri}")
        return BlobInfo(content_id, len(entry[0]), entry[1])

    def exists(self, content_id: str) -> bool:
        """Whether the blob is present."""
        validate_content_id(content_id)
        with self._lock:
            self._check_open()
            return content_id in self._blobs

    def delete(self, content_id: str) -> bool:
        """Remove a blob; ``False`` if absent."""
        validate_content_id(content_id)
        with self._lock:
            self._check_open()
            return self._blobs.pop(content_id, None) is not None

    def list(self) -> Iterator[str]:
        """Yield the ids present when the call was made."""
        with self._lock:
            self._check_open()
            ids = list(self._blobs)
        return iter(ids)

    def flush(self) -> None:
        """Nothing to do: memory is as durable as it gets."""

    def close(self) -> None:
        """Drop every blob and mark the store closed. Idempotent."""
        with self._lock:
            self._closed = True
            self._blobs.clear()


def _check_range(offset: int, size: int | None) -> None:
    if offset < 0:
        raise ValueError(f"offset must be >= 0, got {offset}")
    if size is not None and size < 0:
        raise ValueError(f"size must be >= 0 or None, got {size}")
