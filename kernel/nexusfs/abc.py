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
    from sqlalchemy import MetaData
    from sqlalchemy.engine import Engine
    from sqlalchemy.orm import Session, sessionmaker

    from nexusfs.metadata.inode import FileMetadata

__all__ = [
    "BlobInfo",
    "BlobWriter",
    "CacheState",
    "CacheStoreABC",
    "Durability",
    "FileMetadataProtocol",
    "MetastoreABC",
    "MountInfo",
    "ObjectStoreABC",
    "RecordStoreABC",
    "Route",
    "Subscription",
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


class CacheState(enum.StrEnum):
    """What a cache store can do right now (``CacheStoreABC.state``).

    ``CONNECTED``: a shared backend (Redis) is reachable; values and messages reach every
    process using it. ``LOCAL``: no backend by design (``NullCacheStore``): every read
    misses, writes are no-ops, messages reach this store's own subscribers only.
    ``DEGRADED``: a backend is configured but unreachable; the store behaves as ``LOCAL``
    while it retries the backend with backoff, and returns to ``CONNECTED`` by itself.
    ``CLOSED``: ``close()`` was called.
    """

    CONNECTED = "connected"
    LOCAL = "local"
    DEGRADED = "degraded"
    CLOSED = "closed"


class Subscription(ABC):
    """A live subscription to one channel of a cache store (``CacheStoreABC.subscribe``).

    Messages published on ``channel`` after ``subscribe()`` returned are queued here in
    publish order (per publisher) and handed out by :meth:`get` or by iteration, each at
    most once. The queue is bounded: when it is full the oldest message is dropped.

    Loss: delivery is at most once and best effort. Messages are missed when the queue
    overflows and while the store's backend is unreachable (remote publishers' messages
    are not replayed); each such event increments :attr:`gaps`, so a consumer that needs
    completeness (e.g. an event tail) re-reads its system of record when ``gaps``
    changes. Messages published through the same store object are never lost to backend
    loss: they are delivered in-process.

    Cancellation: interrupting a blocked :meth:`get` (``KeyboardInterrupt``) loses no
    message. :meth:`close` may be called from any thread: it wakes a blocked ``get``
    (which returns ``None``) and ends iteration; queued messages are discarded.

    Thread-safety: every method may be called from any thread; messages taken by several
    concurrent readers of one subscription are split between them (each goes to one).
    Crash: a subscription lives and dies with its process; nothing is persisted.
    """

    channel: str

    @abstractmethod
    def get(self, timeout: float | None = None) -> bytes | None:
        """The next message, waiting up to ``timeout`` seconds (``None``: until one
        arrives or the subscription is closed; ``0``: do not wait). Returns ``None`` on
        timeout and once closed (check :attr:`closed` to tell which). A negative, NaN or
        infinite ``timeout`` raises ``ValueError``."""

    @abstractmethod
    def close(self) -> None:
        """Stop receiving: unsubscribe, discard queued messages, wake a blocked
        :meth:`get`. Idempotent; never raises for an unreachable backend."""

    @property
    @abstractmethod
    def closed(self) -> bool:
        """Whether :meth:`close` was called (directly or by closing the store)."""

    @property
    @abstractmethod
    def gaps(self) -> int:
        """How many times messages may have been missed (queue overflow, backend lost or
        regained). Monotonic; starts at 0."""

    def __iter__(self) -> Iterator[bytes]:
        """Yield messages as they arrive until the subscription is closed."""
        while (message := self.get()) is not None:
            yield message

    def __enter__(self) -> Subscription:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class CacheStoreABC(ABC):
    """Ephemeral key-value storage with TTL and publish/subscribe, for services.

    Nothing in a cache store is durable: a crash (of the process or of the backend) may
    lose any entry, and callers must treat a miss as normal. Keys and channels are
    non-empty ``str`` (at most 4096 UTF-8 bytes); values and messages are bytes-like.

    Graceful degradation: losing the backend never raises out of ``get``, ``set``,
    ``delete``, ``publish`` or ``subscribe``, and no call blocks much longer than the
    driver's socket timeout: reads miss, writes are skipped, publishing delivers to this
    store's own subscribers only, and subscriptions stay open and resume receiving
    remote messages once the backend is back (:attr:`state` tells which mode is on).
    Only bad arguments raise (``TypeError`` for a wrong type, ``ValueError`` for a bad
    value), and any use after :meth:`close` raises
    :class:`~nexusfs.errors.StoreClosed`.

    Cancellation: an interrupted ``set``/``delete`` may or may not have been applied;
    the store stays usable. Thread-safety: one store may be shared by every thread of a
    process. Stores are not fork-safe: open one in the process that uses it.
    """

    @property
    @abstractmethod
    def state(self) -> CacheState:
        """The current mode (see :class:`CacheState`); changes by itself when a backend
        is lost or returns."""

    @property
    def healthy(self) -> bool:
        """Whether the store works as configured: ``CONNECTED``, or ``LOCAL`` (a null
        store by design); false when ``DEGRADED`` or ``CLOSED``."""
        return self.state in (CacheState.CONNECTED, CacheState.LOCAL)

    @property
    def shared(self) -> bool:
        """Whether values and messages currently reach other processes (``CONNECTED``).
        When false, a consumer that needs other processes' events polls its system of
        record instead of relying on :meth:`subscribe`."""
        return self.state is CacheState.CONNECTED

    @abstractmethod
    def get(self, key: str) -> bytes | None:
        """The value, or ``None`` on a miss, on expiry and when the backend is
        unreachable."""

    @abstractmethod
    def set(self, key: str, value: bytes | bytearray | memoryview,
            ttl: float | None = None) -> None:
        """Store ``value`` under ``key``, replacing any value and TTL, expiring after
        ``ttl`` seconds if given (a positive finite number; millisecond resolution).
        Skipped when the backend is unreachable (drivers then forget ``key`` on the
        backend once it returns, so a skipped write cannot leave a stale value behind).
        """

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove ``key`` if present (skipped like :meth:`set` when unreachable)."""

    @abstractmethod
    def publish(self, channel: str, message: bytes | bytearray | memoryview) -> int:
        """Deliver ``message`` to the subscribers of ``channel``: this store's own
        subscriptions at once, in-process, and other processes' through the backend when
        it is reachable. Returns how many received it: local subscriptions plus remote
        subscriber connections (one per remote store), a best-effort count; 0 means
        nobody was listening. Delivery is at most once."""

    @abstractmethod
    def subscribe(self, channel: str) -> Subscription:
        """Start receiving the messages published on ``channel`` after this call returns
        (see :class:`Subscription`). With a reachable backend, remote publishers' messages
        are included once the call returns; while it is unreachable, local ones only."""

    @abstractmethod
    def close(self) -> None:
        """Close every subscription, stop background threads and release connections.
        Idempotent; never raises for an unreachable backend."""

    def __enter__(self) -> CacheStoreABC:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


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
        """The SQLAlchemy engine (Core statements, inspection; tables come from
        :meth:`migrate`)."""

    @property
    @abstractmethod
    def session_factory(self) -> sessionmaker[Session]:
        """Makes ORM sessions bound to this store."""

    @abstractmethod
    def migrate(
        self,
        script_location: str,
        *,
        version_table: str,
        target: str = "heads",
        adopt_revision: str | None = None,
        adopt_tables: Sequence[str] = (),
        lock_timeout: float = 300.0,
        metadata: MetaData | None = None,
    ) -> tuple[str, ...]:
        """Upgrade one service's tables with its Alembic revision files; return the
        revisions applied, oldest first (empty if the schema was already at ``target``).

        ``script_location``: the service's directory of revision files, as
        ``"package:subdir"`` (e.g. ``"nexusfs_hooks:migrations"``) or a path; no
        ``env.py`` needed. ``version_table``: the service's own revision table (e.g.
        ``"nexusfs_hooks_version"``), so services never clash. ``adopt_revision`` /
        ``adopt_tables``: a database created before the service used migrations (all of
        ``adopt_tables`` exist, no version table) is stamped at ``adopt_revision``
        without running it, then upgraded. ``metadata``: the tables as they are at the
        head; on a fresh database (none of them, no version table) they are created
        from it and stamped at the head instead of running every revision (see
        :func:`~nexusfs.drivers.recordstore.migrations.run_migrations`).

        Concurrency: processes migrating the same service are serialised (PostgreSQL
        advisory lock, SQLite write lock); the later one applies nothing. Call it when a
        service starts, before using its tables; revisions should stay compatible with
        the previous release's code, which may still run during a hot restart.

        Failure semantics: all revisions of a call run in one transaction (transactional
        DDL), so any failure, including a crash or cancellation mid-way, leaves the
        schema and version table exactly as before the call. Raises ``ValueError`` for
        malformed arguments, ``MigrationScriptError`` for scripts that cannot be loaded
        or an unknown target (before touching the database), ``MigrationLockTimeout``
        when the lock is not obtained within ``lock_timeout`` seconds, and
        ``MigrationError`` (the base of both, in
        :mod:`nexusfs.drivers.recordstore.migrations`) when a revision fails, the
        database is at a revision the scripts do not know (a newer release migrated
        it), or adoption finds only some of ``adopt_tables``. ``StoreClosed`` after
        :meth:`close`.
        """

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
