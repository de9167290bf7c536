"""Kernel interfaces: the contracts between the VFS and its drivers.

The kernel owns these interfaces; drivers (``nexusfs.drivers``) implement them and are
chosen at start-up. Each method states what a caller can rely on after a crash (the
process dies with SIGKILL or the machine loses power), after cancellation (the calling
thread is interrupted, e.g. by ``KeyboardInterrupt``) and after a partial failure (an
I/O error half-way). Third-party drivers prove conformance by running the suites in
:mod:`nexusfs.testing`.

Invariants shared by every driver:

* Keys and values of a metastore are ``bytes``; ordering is bytewise (memcmp).
* A metastore mutation is atomic: after any crash, a ``put``/``delete``/``cas``/``batch``
  is either entirely visible or entirely absent.
* Blobs in an object store are immutable and named by the BLAKE3 hash of their bytes
  (64 lowercase hex digits); a blob is visible under its id only once complete.
"""

from __future__ import annotations

import enum
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, BinaryIO, NamedTuple, Protocol, runtime_checkable

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine
    from sqlalchemy.orm import Session, sessionmaker

    from nexusfs.metadata.inode import FileMetadata

__all__ = [
    "BlobInfo",
    "BlobWriter",
    "CacheStoreABC",
    "Durability",
    "FileMetadataProtocol",
    "MetastoreABC",
    "MountInfo",
    "ObjectStoreABC",
    "RecordStoreABC",
    "Route",
    "VFSRouterProtocol",
]


class Durability(enum.StrEnum):
    """How far a write has travelled when the call that made it returns.

    ``IMMEDIATE``: on stable storage (fsync); survives power loss.
    ``DEFERRED``: handed to the operating system; survives a crash of the process, and is
    made durable by ``flush()``, by ``close()`` and by the kernel's background flusher
    within a bounded interval (``flush_interval``, 1 s by default).
    """

    IMMEDIATE = "immediate"
    DEFERRED = "deferred"


# --------------------------------------------------------------------------- metastore


class MetastoreABC(ABC):
    """An ordered key-value store: the only storage the kernel needs to start.

    Crash: every mutating call is atomic. With ``Durability.IMMEDIATE`` a call that
    returned survives power loss; with ``DEFERRED`` it survives a process crash and
    becomes power-loss safe after the next ``flush()``.

    Concurrency: any number of threads may read while one writes; readers see a
    consistent snapshot as of the start of each call. Mutations are serialised.

    Errors: a missing directory, a corrupt file and a file locked by another process
    raise :class:`~nexusfs.errors.NotFound`, :class:`~nexusfs.errors.CorruptStore` and
    :class:`~nexusfs.errors.StoreLocked` from the constructor; use after ``close()``
    raises :class:`~nexusfs.errors.StoreClosed`.
    """

    durability: Durability

    @abstractmethod
    def get(self, key: bytes) -> bytes | None:
        """Return the value of ``key``, or ``None`` if absent. Never mutates."""

    def get_many(self, keys: Sequence[bytes]) -> list[bytes | None]:
        """Return the values of ``keys`` (``None`` where absent), from one snapshot."""
        return [self.get(k) for k in keys]

    @abstractmethod
    def put(self, key: bytes, value: bytes) -> None:
        """Set ``key`` to ``value``. Atomic; on failure nothing changed."""

    @abstractmethod
    def delete(self, key: bytes) -> bool:
        """Remove ``key``; return whether it existed. Atomic."""

    @abstractmethod
    def cas(self, key: bytes, expected: bytes | None, new: bytes | None) -> bool:
        """Compare-and-swap: if the current value equals ``expected`` (``None`` = absent),
        set it to ``new`` (``None`` = delete) and return ``True``; otherwise change
        nothing and return ``False``. Atomic with respect to every other mutation."""

    @abstractmethod
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
        """Return ``(key, value)`` pairs in ascending key order, from one snapshot.

        Keys returned start with ``prefix``, are ``>= start`` (inclusive), ``< end``
        (exclusive) and ``> after`` (the cursor: pass the last key of the previous page).
        At most ``limit`` pairs. With ``keys_only`` the values are ``b""``.
        """

    @abstractmethod
    def batch(
        self,
        puts: Sequence[tuple[bytes, bytes]] = (),
        deletes: Sequence[bytes] = (),
        checks: Sequence[tuple[bytes, bytes | None]] = (),
    ) -> None:
        """Apply ``deletes`` then ``puts`` in one atomic commit, provided that every
        ``(key, expected)`` in ``checks`` holds (``expected=None``: key absent).

        Raises :class:`~nexusfs.errors.Conflict` naming the first failed check, and then
        nothing was written. A crash leaves all of the batch or none of it.
        """

    @abstractmethod
    def flush(self) -> None:
        """Make every mutation that has returned durable on stable storage."""

    @abstractmethod
    def close(self) -> None:
        """Flush and release the store. Idempotent."""

    def __enter__(self) -> MetastoreABC:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


# ------------------------------------------------------------------------ object store


@dataclass(frozen=True, slots=True)
class BlobInfo:
    """A stored blob: its content id (BLAKE3 hex), size in bytes and the time (Unix
    seconds) it was first written to this store."""

    content_id: str
    size: int
    created_at: float = 0.0


class BlobWriter(ABC):
    """A streaming writer of one blob, hashing as it goes.

    Nothing is visible under any content id until ``commit()`` returns. ``abort()`` (or
    leaving a ``with`` block by an exception, or a crash) discards the partial bytes; a
    crash may leave a temporary file that the store removes on its next open or ``gc``.
    """

    @abstractmethod
    def write(self, data: bytes | bytearray | memoryview) -> int:
        """Append ``data``; return the number of bytes taken (always ``len(data)``)."""

    @abstractmethod
    def commit(self) -> BlobInfo:
        """Finish the blob: hash, make it durable per the store's durability, publish it
        under its content id (deduplicated if already present), and return its info."""

    @abstractmethod
    def abort(self) -> None:
        """Discard everything written. Idempotent; a no-op after ``commit()``."""

    def __enter__(self) -> BlobWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.abort()


class ObjectStoreABC(ABC):
    """Immutable, content-addressed blob storage.

    Crash: a committed blob is complete (never torn) or absent; with ``IMMEDIATE``
    durability a committed blob survives power loss, with ``DEFERRED`` a process crash
    and, after ``flush()``, power loss. Identical content is stored once.

    Errors: reading a missing blob raises :class:`~nexusfs.errors.NotFound`; I/O errors
    propagate as ``OSError`` and leave no partial blob visible.
    """

    durability: Durability
    uri: str

    @abstractmethod
    def open_writer(self) -> BlobWriter:
        """Start a streaming write of a new blob."""

    def put(self, data: bytes | Iterable[bytes] | BinaryIO) -> BlobInfo:
        """Store ``data`` (bytes, an iterable of chunks, or a readable binary file)."""
        with self.open_writer() as writer:
            if isinstance(data, bytes | bytearray | memoryview):
                writer.write(data)
            elif hasattr(data, "read"):
                reader: Callable[[int], bytes] = data.read
                while chunk := reader(1 << 20):
                    writer.write(chunk)
            else:
                for chunk in data:
                    writer.write(chunk)
            return writer.commit()

    @abstractmethod
    def read(self, content_id: str, offset: int = 0, size: int | None = None) -> bytes:
        """Return ``size`` bytes (all remaining if ``None``) starting at ``offset``.
        Reading past the end returns fewer bytes (possibly none)."""

    @abstractmethod
    def iter_chunks(
        self,
        content_id: str,
        offset: int = 0,
        size: int | None = None,
        chunk_size: int = 1 << 20,
    ) -> Iterator[bytes]:
        """Stream a byte range in chunks of at most ``chunk_size`` bytes, holding at most
        one chunk in memory. Raises ``NotFound`` on the first ``next()`` if absent."""

    @abstractmethod
    def info(self, content_id: str) -> BlobInfo:
        """Size and creation time of a blob; ``NotFound`` if absent."""

    @abstractmethod
    def exists(self, content_id: str) -> bool:
        """Whether the blob is present."""

    @abstractmethod
    def delete(self, content_id: str) -> bool:
        """Remove a blob; return whether it existed. Callers (the kernel's reference
        tracking) guarantee that nothing still points at it."""

    @abstractmethod
    def list(self) -> Iterator[str]:
        """Yield the content id of every committed blob (any order)."""

    @abstractmethod
    def flush(self) -> None:
        """Make every committed blob durable on stable storage."""

    @abstractmethod
    def close(self) -> None:
        """Flush and release resources. Idempotent."""


# ------------------------------------------------------------------------- cache store


class CacheStoreABC(ABC):
    """Ephemeral key-value storage with TTL and publish/subscribe, for services.

    Nothing in a cache store is durable: a crash may lose any entry, and callers must
    treat a miss as normal. Implementations never raise for an unreachable backend on
    reads (they return a miss); writes may raise ``ServiceUnavailable``.
    """

    @abstractmethod
    def get(self, key: str) -> bytes | None:
        """The value, or ``None`` on a miss or expiry."""

    @abstractmethod
    def set(self, key: str, value: bytes, ttl: float | None = None) -> None:
        """Store ``value``, expiring after ``ttl`` seconds if given."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove the key if present."""

    @abstractmethod
    def publish(self, channel: str, message: bytes) -> int:
        """Deliver ``message`` to current subscribers; return how many received it.
        Delivery is at most once."""

    @abstractmethod
    def subscribe(self, channel: str) -> Iterator[bytes]:
        """Yield messages published on ``channel`` after this call."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections. Idempotent."""


# ------------------------------------------------------------------------ record store


class RecordStoreABC(ABC):
    """Relational storage for services: a SQLAlchemy engine and ``session_factory``.

    Services use the ORM through ``session_factory`` only (never raw driver access), so
    SQLite and PostgreSQL are interchangeable by URL. Crash: a committed transaction
    survives per the database's own durability (SQLite in WAL mode with
    ``synchronous=FULL``; PostgreSQL defaults); an uncommitted one leaves nothing.
    Concurrency: several worker processes may open the same store at once.
    ``ServiceUnavailable`` if the database cannot be reached at start-up.
    """

    url: str

    @property
    @abstractmethod
    def engine(self) -> Engine:
        """The SQLAlchemy engine (for ``metadata.create_all`` and migrations)."""

    @property
    @abstractmethod
    def session_factory(self) -> sessionmaker[Session]:
        """Makes ORM sessions bound to this store."""

    @abstractmethod
    def close(self) -> None:
        """Dispose of the connection pool. Idempotent."""


# --------------------------------------------------------------------- metadata & vfs


@runtime_checkable
class FileMetadataProtocol(Protocol):
    """Typed inode CRUD over one metastore (one zone): the inode layer.

    Paths here are zone-relative absolute paths (``/`` is the zone root). Listing returns
    direct children in name order by an ordered scan, never by filtering a subtree.
    Every mutation is one atomic metastore commit.
    """

    def get(self, path: str) -> FileMetadata | None:
        """The inode at ``path`` or ``None``."""
        ...

    def get_many(self, paths: Sequence[str]) -> list[FileMetadata | None]:
        """Inodes of several paths from one snapshot."""
        ...

    def put(self, meta: FileMetadata) -> None:
        """Create or replace the inode at ``meta.path``."""
        ...

    def delete(self, path: str) -> bool:
        """Remove the inode at ``path``; return whether it existed."""
        ...

    def list_children(
        self, path: str, *, limit: int | None = None, after: str | None = None
    ) -> list[FileMetadata]:
        """Direct children of directory ``path`` ordered by name, after name ``after``."""
        ...

    def has_children(self, path: str) -> bool:
        """Whether directory ``path`` has at least one child."""
        ...


@dataclass(frozen=True, slots=True)
class MountInfo:
    """One entry of the mount table: a mount point, what is mounted there (an object
    store URI such as ``local:///srv/blobs`` or a zone ``zone://NAME``) and its kind."""

    path: str
    uri: str
    kind: str  # "store" or "zone"
    created_at: float = 0.0


class Route(NamedTuple):
    """Where a path lives: the zone whose metastore holds its inode (``zone``, and
    ``zone_path``, the path inside that zone) and the object store for new bytes
    (``store_uri``, empty when no store is mounted there). A named tuple: routing is on
    every syscall's path, so it must be cheap to build."""

    path: str
    zone: str
    zone_path: str
    zone_mount: str
    store_uri: str
    store_mount: str


@runtime_checkable
class VFSRouterProtocol(Protocol):
    """Longest-prefix mount routing. ``route`` is pure and fast (no I/O)."""

    def route(self, path: str) -> Route:
        """Resolve a normalised absolute path to its zone and object store."""
        ...

    def mounts(self) -> list[MountInfo]:
        """The mount table, ordered by path."""
        ...
