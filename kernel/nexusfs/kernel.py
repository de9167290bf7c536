"""The NexusFS kernel: syscalls over zones (metastores) and mounted object stores.

``NexusFS(metastore)`` is the whole kernel in one object; ``connect()`` builds one on a
data directory (redb metastore, local content-addressed store mounted at ``/``).

Syscall pipeline: normalise the path -> route it (zone + store) -> operate. Every
mutation takes the kernel's write lock, reads what it needs, and commits *one* atomic
metastore batch that carries the inodes, inline content, blob reference counts and the
zone revision. Readers take no lock: each metastore call reads a consistent snapshot.

Write protocol: a file's bytes are made durable in the object store (per the durability
setting) *before* the batch that points at them commits, so a crash leaves the old or
the new version, never an inode that points at a missing blob. Small files are kept
inline in the metastore (one commit, no blob). A blob whose reference count drops to
zero is reclaimed only once the commit that dropped it is durable (at once with
``immediate``, after the next flush with ``deferred``) and no open reader pins it;
blobs orphaned by a crash are reclaimed by :meth:`NexusFS.gc`.

Invariant: the kernel process is the only owner of its metastores (redb locks the
files), so the in-memory revision counters and pins are authoritative.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import blake3

from nexusfs import paths
from nexusfs.abc import Durability, MetastoreABC, MountInfo, ObjectStoreABC, Route
from nexusfs.errors import (
    AlreadyExists,
    Conflict,
    DirectoryNotEmpty,
    InvalidPath,
    IsADirectory,
    MountError,
    NexusError,
    NotADirectory,
    NotFound,
    PermissionDenied,
    StoreClosed,
)
from nexusfs.metadata.inode import EntryType, FileMetadata, encode
from nexusfs.metadata.store import (
    REVISION_KEY,
    FileMetadataStore,
    data_key,
    inode_key,
    pack_u64,
    ref_key,
    unpack_u64,
)
from nexusfs.vfs import sysfs
from nexusfs.vfs.files import open_file
from nexusfs.vfs.listing import DirListing
from nexusfs.vfs.router import ROOT_ZONE, MountRouter

__all__ = ["GCReport", "NexusFS", "ZoneInfo", "connect"]

INLINE_MAX = 16 * 1024
MOUNT_PREFIX = b"/__sys__/mounts/"
ZONE_PREFIX = b"/__sys__/zones/"
_ZONE_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-_")


@dataclass(slots=True)
class _Zone:
    name: str
    metastore: MetastoreABC
    meta: FileMetadataStore
    revision: int


@dataclass(frozen=True, slots=True)
class ZoneInfo:
    """A zone: its name, where it is mounted (if it is) and when it was created."""

    name: str
    mounted_at: str | None
    created_at: float

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "mounted_at": self.mounted_at, "created_at": self.created_at}


@dataclass(frozen=True, slots=True)
class GCReport:
    """What a garbage collection found and did."""

    scanned: int
    reclaimed: int
    bytes_reclaimed: int
    kept_referenced: int
    kept_young: int


ZoneOpener = Callable[[str], MetastoreABC]
StoreOpener = Callable[[str], ObjectStoreABC]


class NexusFS:
    """The kernel. Build it with :func:`connect`, or directly from a metastore.

    Thread-safe: any number of threads may call any method. Use as a context manager or
    call :meth:`close` (which flushes) when done.
    """

    def __init__(
        self,
        metastore: MetastoreABC,
        *,
        data_dir: str | os.PathLike[str] | None = None,
        durability: Durability | str | None = None,
        flush_interval: float = 1.0,
        inline_max: int = INLINE_MAX,
        zone_opener: ZoneOpener | None = None,
        store_opener: StoreOpener | None = None,
    ) -> None:
        self.data_dir = Path(data_dir) if data_dir is not None else None
        self.durability = Durability(durability or metastore.durability)
        self.inline_max = inline_max
        self._zone_opener = zone_opener or self._default_zone_opener
        self._store_opener = store_opener or self._default_store_opener
        self._lock = threading.RLock()
        self._closed = False
        self._router = MountRouter()
        self._stores: dict[str, ObjectStoreABC] = {}
        self._pins: Counter[tuple[str, str]] = Counter()
        self._reclaim: list[tuple[str, str]] = []
        root = FileMetadataStore(metastore, ROOT_ZONE, "/")
        self._root = _Zone(ROOT_ZONE, metastore, root, root.revision())
        self._zones: dict[str, _Zone] = {ROOT_ZONE: self._root}
        for key, _raw in metastore.scan(ZONE_PREFIX, keys_only=True):
            self._open_zone(key[len(ZONE_PREFIX) :].decode())
        for _key, raw in metastore.scan(MOUNT_PREFIX):
            self._activate_mount(MountInfo(**json.loads(raw)))
        self._flusher: threading.Thread | None = None
        self._stop = threading.Event()
        if self.durability is Durability.DEFERRED and flush_interval > 0:
            self._flusher = threading.Thread(
                target=self._flush_loop, args=(flush_interval,), name="nexus-flush", daemon=True
            )
            self._flusher.start()

    # ------------------------------------------------------------------ lifecycle

    def __enter__(self) -> NexusFS:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Flush everything and release every store. Idempotent."""
        if self._closed:
            return
        self._stop.set()
        if self._flusher is not None:
            self._flusher.join()
        with self._lock:
            try:
                self._flush_locked()
            finally:
                self._closed = True
                for store in self._stores.values():
                    store.close()
                for zone in self._zones.values():
                    zone.metastore.close()

    def flush(self) -> None:
        """Make every acknowledged write durable (blobs first, then metadata), then
        reclaim blobs whose last reference was dropped by a now-durable commit."""
        with self._lock:
            self._check_open()
            self._flush_locked()

    def _flush_locked(self) -> None:
        for store in self._stores.values():
            store.flush()
        for zone in self._zones.values():
            zone.metastore.flush()
        self._reclaim_now()

    def _flush_loop(self, interval: float) -> None:
        while not self._stop.wait(interval):
            try:
                with self._lock:
                    if not self._closed:
                        self._flush_locked()
            except Exception:  # the next round retries; close() surfaces errors
                continue

    def _check_open(self) -> None:
        if self._closed:
            raise StoreClosed("the kernel is closed")

    # ------------------------------------------------------------------ openers

    def _default_zone_opener(self, name: str) -> MetastoreABC:
        if self.data_dir is None:
            from nexusfs.drivers.metastore.memory import MemoryMetastore

            return MemoryMetastore()
        from nexusfs.drivers.metastore.redb import RedbMetastore

        zdir = self.data_dir / "zones"
        zdir.mkdir(parents=True, exist_ok=True)
        return RedbMetastore(zdir / f"{name}.redb", durability=self.durability, flush_interval_ms=0)

    def _default_store_opener(self, uri: str) -> ObjectStoreABC:
        from nexusfs.drivers.objectstore import open_object_store

        if uri.startswith("local:") and not uri.startswith("local://"):
            if self.data_dir is None:
                raise MountError(f"relative store URI {uri!r} needs a data directory")
            uri = "local://" + str((self.data_dir / uri[len("local:") :]).resolve())
        return open_object_store(uri, self.durability)

    def _open_zone(self, name: str) -> _Zone:
        zone = self._zones.get(name)
        if zone is None:
            store = self._zone_opener(name)
            meta = FileMetadataStore(store, name, "/")
            zone = _Zone(name, store, meta, meta.revision())
            self._zones[name] = zone
        return zone

    def _store(self, uri: str) -> ObjectStoreABC:
        store = self._stores.get(uri)
        if store is None:
            store = self._store_opener(uri)
            self._stores[uri] = store
        return store

    def _activate_mount(self, info: MountInfo) -> None:
        if info.kind == "zone":
            name = info.uri[len("zone://") :]
            self._open_zone(name).meta.prefix = info.path
        else:
            self._store(info.uri)
        self._router.add(info)

    # ------------------------------------------------------------------ resolution

    def _resolve(self, path: object) -> tuple[str, Route, _Zone]:
        p = paths.normalize(path)
        route = self._router.route(p)
        return p, route, self._zones[route.zone]

    def _lookup(self, path: object) -> tuple[str, Route, _Zone, FileMetadata | None]:
        p, route, zone = self._resolve(path)
        if p.startswith(paths.SYS_ROOT) and paths.is_reserved(p):
            return p, route, zone, sysfs.stat(self, p)
        return p, route, zone, zone.meta.get(route.zone_path)

    def _missing(self, p: str, route: Route, zone: _Zone) -> NexusError:
        """The right error for a path that has no inode: NotADirectory if an ancestor
        is a file, else NotFound."""
        zp = route.zone_path
        while zp != "/":
            zp = paths.parent(zp)
            meta = zone.meta.get(zp)
            if meta is not None:
                if not meta.is_dir:
                    return NotADirectory("a parent is not a directory", path=p)
                break
        return NotFound("no such file or directory", path=p)

    def _writable(self, p: str) -> None:
        if paths.is_reserved(p):
            raise PermissionDenied("/__sys__ is read-only", path=p)

    # ------------------------------------------------------------------ commits

    def _commit(
        self,
        zone: _Zone,
        puts: list[tuple[bytes, bytes]],
        deletes: list[bytes],
        refs: Counter[tuple[str, str]] | None = None,
    ) -> int:
        """Commit one batch in ``zone`` with reference-count deltas; return the revision.
        Caller holds the lock."""
        rev = zone.revision + 1
        puts.append((REVISION_KEY, pack_u64(rev)))
        zeroed: list[tuple[str, str]] = []
        if refs:
            store_ms = zone.metastore
            items = [(k, d) for k, d in refs.items() if d]
            currents = store_ms.get_many([ref_key(s, c) for (s, c), _ in items])
            for ((store, cid), delta), raw in zip(items, currents, strict=True):
                count = unpack_u64(raw) + delta
                key = ref_key(store, cid)
                if count > 0:
                    puts.append((key, pack_u64(count)))
                else:
                    deletes.append(key)
                    zeroed.append((store, cid))
        zone.metastore.batch(puts, deletes)
        zone.revision = rev
        if zeroed:
            self._reclaim.extend(zeroed)
            if self.durability is Durability.IMMEDIATE:
                self._reclaim_now()
        return rev

    def _reclaim_now(self) -> None:
        """Delete queued blobs that are still unreferenced in every zone and unpinned.
        Caller holds the lock and has made the dropping commits durable."""
        if not self._reclaim:
            return
        queue, self._reclaim = self._reclaim, []
        for store, cid in dict.fromkeys(queue):
            if self._pins[(store, cid)]:
                self._reclaim.append((store, cid))
            elif not self._referenced(store, cid) and store in self._stores:
                self._stores[store].delete(cid)

    def _referenced(self, store: str, cid: str) -> bool:
        key = ref_key(store, cid)
        return any(z.metastore.get(key) is not None for z in self._zones.values())

    def _ensure_parents(
        self, zone: _Zone, zpath: str, now: float, puts: list[tuple[bytes, bytes]], p: str
    ) -> None:
        """Add inodes for the missing ancestors of ``zpath`` to ``puts``; raise
        NotADirectory if an ancestor is a file."""
        missing: list[str] = []
        zp = paths.parent(zpath)
        while zp != "/":
            meta = zone.meta.get(zp)
            if meta is not None:
                if not meta.is_dir:
                    raise NotADirectory("a parent is not a directory", path=p)
                break
            missing.append(zp)
            zp = paths.parent(zp)
        rev = zone.revision + 1
        for d in missing:
            puts.append(
                (
                    inode_key(d),
                    encode(FileMetadata("", EntryType.DIRECTORY, 0, None, rev, now, now)),
                )
            )

    def _parent_must_exist(self, zone: _Zone, zpath: str, p: str) -> None:
        par = paths.parent(zpath)
        if par == "/":
            return
        meta = zone.meta.get(par)
        if meta is None:
            raise self._missing(paths.parent(p), self._router.route(paths.parent(p)), zone)
        if not meta.is_dir:
            raise NotADirectory("a parent is not a directory", path=p)

    # ------------------------------------------------------------------ files

    def write(
        self,
        path: str,
        data: bytes | bytearray | memoryview,
        *,
        if_version: int | None = None,
        exclusive: bool = False,
        owner: str | None = None,
        mime_type: str | None = None,
    ) -> FileMetadata:
        """Create or replace the file at ``path`` with ``data``, creating missing parent
        directories. Returns the new inode.

        ``exclusive``: fail with ``AlreadyExists`` if the path exists. ``if_version``:
        fail with ``Conflict`` unless the current version equals it (0 = must not
        exist). On any error nothing changed; a blob written before a failed commit is
        left unreferenced and reclaimed by ``gc``.
        """
        p, route, zone = self._resolve(path)
        self._writable(p)
        data = bytes(data)
        if len(data) <= self.inline_max:
            cid = blake3.blake3(data).hexdigest()
            return self._commit_file(
                p, route, zone, cid, len(data), data, None, if_version, exclusive, owner, mime_type
            )
        store_id = self._store_for(route, p)
        for attempt in range(3):
            info = self._stores[store_id].put(data)
            try:
                return self._commit_file(
                    p, route, zone, info.content_id, info.size, None, store_id,
                    if_version, exclusive, owner, mime_type,
                )  # fmt: skip
            except _Reclaimed:
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def _store_for(self, route: Route, p: str) -> str:
        if not route.store_uri:
            raise MountError("no object store is mounted for this path; mount one", path=p)
        return route.store_uri

    def _commit_file(
        self,
        p: str,
        route: Route,
        zone: _Zone,
        cid: str,
        size: int,
        inline: bytes | None,
        store_id: str | None,
        if_version: int | None,
        exclusive: bool,
        owner: str | None,
        mime_type: str | None,
    ) -> FileMetadata:
        zpath = route.zone_path
        with self._lock:
            self._check_open()
            if zpath == "/":
                raise IsADirectory("is a directory", path=p)
            old = zone.meta.get(zpath)
            if old is not None:
                if old.is_dir:
                    raise IsADirectory("is a directory", path=p)
                if exclusive:
                    raise AlreadyExists("file exists", path=p)
            if if_version is not None:
                actual = 0 if old is None else old.version
                if actual != if_version:
                    raise Conflict(
                        f"version is {actual}, expected {if_version}",
                        path=p,
                        expected=if_version,
                        actual=actual,
                    )
            now = time.time()
            puts: list[tuple[bytes, bytes]] = []
            deletes: list[bytes] = []
            if old is None:
                self._ensure_parents(zone, zpath, now, puts, p)
            refs: Counter[tuple[str, str]] = Counter()
            if store_id is not None:
                refs[(store_id, cid)] += 1
                if not self._referenced(store_id, cid) and not self._stores[store_id].exists(cid):
                    # A dedup hit on an orphan that gc removed before this commit.
                    raise _Reclaimed("content was reclaimed concurrently; retry", path=p)
            if old is not None and not old.inline and old.store and old.content_id:
                refs[(old.store, old.content_id)] -= 1
            meta = FileMetadata(
                p,
                EntryType.FILE,
                size,
                cid,
                zone.revision + 1,
                old.created_at if old is not None else now,
                now,
                zone.name,
                owner if owner is not None else (old.owner if old else None),
                mime_type if mime_type is not None else (old.mime_type if old else None),
                inline is not None,
                None,
                store_id,
            )
            puts.append((inode_key(zpath), encode(meta)))
            if inline is not None:
                puts.append((data_key(zpath), inline))
            elif old is not None and old.inline:
                deletes.append(data_key(zpath))
            self._commit(zone, puts, deletes, refs)
            return meta

    def read(self, path: str, *, offset: int = 0, size: int | None = None) -> bytes:
        """Return ``size`` bytes (to the end if ``None``) from ``offset``. Raises
        ``NotFound``, ``IsADirectory``, ``NotADirectory``, ``ValueError`` for a
        negative offset or size."""
        if offset < 0 or (size is not None and size < 0):
            raise ValueError("offset and size must be non-negative")
        p, route, zone, meta = self._lookup(path)
        if meta is None:
            raise self._missing(p, route, zone)
        if meta.is_dir:
            raise IsADirectory("is a directory", path=p)
        if paths.is_reserved(p):
            data = sysfs.read(self, p)
        elif meta.inline:
            data = zone.metastore.get(data_key(route.zone_path)) or b""
        else:
            assert meta.store is not None and meta.content_id is not None
            return self._stores[meta.store].read(meta.content_id, offset, size)
        end = None if size is None else offset + size
        return data[offset:end] if offset or end is not None else data

    def iter_read(
        self, path: str, *, offset: int = 0, size: int | None = None, chunk_size: int = 1 << 20
    ) -> Iterator[bytes]:
        """Stream a file's bytes in chunks with bounded memory; the version read is the
        one current when the call was made (it stays readable while the stream lives)."""
        meta = self.stat(path)
        if meta.is_dir:
            raise IsADirectory("is a directory", path=meta.path)
        if meta.inline or meta.store is None or meta.content_id is None:
            data = self.read(path, offset=offset, size=size)
            for i in range(0, len(data), chunk_size):
                yield data[i : i + chunk_size]
            return
        key = (meta.store, meta.content_id)
        with self.pin(key):
            yield from self._stores[meta.store].iter_chunks(
                meta.content_id, offset, size, chunk_size
            )

    def pin(self, key: tuple[str, str]) -> _Pin:
        """Keep blob ``key`` = (store, content id) from being reclaimed while held."""
        return _Pin(self, key)

    def open(self, path: str, mode: str = "rb", **kwargs: Any) -> IO[bytes]:
        """Open a streaming file object: ``"rb"`` (seekable reader of the version
        current at open), ``"wb"`` (new content, committed atomically on ``close()``;
        discarded if the ``with`` block raises), ``"ab"`` (existing content plus what
        is written, committed on ``close()``)."""
        return open_file(self, path, mode, **kwargs)

    def stat(self, path: str) -> FileMetadata:
        """The inode at ``path``. Raises ``NotFound`` / ``NotADirectory``."""
        p, route, zone, meta = self._lookup(path)
        if meta is None:
            raise self._missing(p, route, zone)
        return meta

    def exists(self, path: str) -> bool:
        """Whether ``path`` exists (invalid paths raise ``InvalidPath``)."""
        return self._lookup(path)[3] is not None

    def unlink(self, path: str) -> None:
        """Remove a file. ``IsADirectory`` for directories, ``NotFound`` if absent."""
        p, route, zone = self._resolve(path)
        self._writable(p)
        zpath = route.zone_path
        with self._lock:
            self._check_open()
            meta = zone.meta.get(zpath) if zpath != "/" else zone.meta.root()
            if meta is None:
                raise self._missing(p, route, zone)
            if meta.is_dir:
                raise IsADirectory("is a directory (use rmdir)", path=p)
            refs: Counter[tuple[str, str]] = Counter()
            deletes = [inode_key(zpath)]
            if meta.inline:
                deletes.append(data_key(zpath))
            elif meta.store and meta.content_id:
                refs[(meta.store, meta.content_id)] -= 1
            self._commit(zone, [], deletes, refs)

    # ------------------------------------------------------------------ directories

    def mkdir(self, path: str, *, parents: bool = False, exist_ok: bool = False) -> FileMetadata:
        """Create a directory. Without ``parents`` the parent must exist (``NotFound``);
        an existing path raises ``AlreadyExists`` unless ``exist_ok`` and it is a
        directory."""
        p, route, zone = self._resolve(path)
        self._writable(p)
        zpath = route.zone_path
        with self._lock:
            self._check_open()
            old = zone.meta.get(zpath)
            if old is not None:
                if exist_ok and old.is_dir:
                    return old
                raise AlreadyExists("file exists", path=p)
            now = time.time()
            puts: list[tuple[bytes, bytes]] = []
            if parents:
                self._ensure_parents(zone, zpath, now, puts, p)
            else:
                self._parent_must_exist(zone, zpath, p)
            meta = FileMetadata(
                p, EntryType.DIRECTORY, 0, None, zone.revision + 1, now, now, zone.name
            )
            puts.append((inode_key(zpath), encode(meta)))
            self._commit(zone, puts, [])
            return meta

    def rmdir(self, path: str, *, recursive: bool = False) -> None:
        """Remove a directory; with ``recursive`` its whole subtree, in one atomic
        commit. ``DirectoryNotEmpty`` if it has children and not ``recursive``;
        ``MountError`` for a mount point or a subtree that contains one."""
        p, route, zone = self._resolve(path)
        self._writable(p)
        zpath = route.zone_path
        with self._lock:
            self._check_open()
            if p == "/" or zpath == "/" or self._router.get(p) is not None:
                raise MountError("cannot remove a mount point or the root; unmount it", path=p)
            meta = zone.meta.get(zpath)
            if meta is None:
                raise self._missing(p, route, zone)
            if not meta.is_dir:
                raise NotADirectory("not a directory", path=p)
            nested = self._router.mounts_within(p)
            if nested:
                raise MountError(f"{nested[0].path} is mounted inside", path=p)
            subtree = zone.meta.subtree(zpath)
            if subtree and not recursive:
                raise DirectoryNotEmpty("directory not empty", path=p)
            deletes = [inode_key(zpath)]
            refs: Counter[tuple[str, str]] = Counter()
            for child, _raw in subtree:
                deletes.append(inode_key(child))
                cmeta = zone.meta.get(child)
                if cmeta is not None and cmeta.is_file:
                    if cmeta.inline:
                        deletes.append(data_key(child))
                    elif cmeta.store and cmeta.content_id:
                        refs[(cmeta.store, cmeta.content_id)] -= 1
            self._commit(zone, [], deletes, refs)

    def readdir(
        self,
        path: str = "/",
        *,
        recursive: bool = False,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> DirListing:
        """List a directory in name order (recursive: depth-first pre-order, crossing
        mounts). At most ``limit`` entries; ``listing.cursor`` resumes the next page.
        ``NotADirectory`` for a file, ``NotFound`` if absent."""
        if limit is not None and limit < 0:
            raise ValueError("limit must be non-negative")
        p, route, zone, meta = self._lookup(path)
        if meta is None:
            raise self._missing(p, route, zone)
        if not meta.is_dir:
            raise NotADirectory("not a directory", path=p)
        if cursor is not None:
            cursor = paths.normalize(cursor)
            if not paths.is_within(cursor, p) or cursor == p:
                raise InvalidPath("cursor does not belong to this listing", path=cursor)
        want = None if limit is None else limit + 1
        if paths.is_reserved(p):
            entries = [e for e in sysfs.readdir(self, p) if cursor is None or e.path > cursor]
        elif not recursive:
            after = None if cursor is None else cursor[len(p) + (p != "/") :]
            if after is not None and "/" in after:
                raise InvalidPath("cursor does not belong to this listing", path=cursor)
            entries = self._list_children(p, after, want)
        else:
            entries = list(self._walk(p, cursor, want))
        if limit is not None and len(entries) > limit:
            entries = entries[:limit]
            return DirListing(entries, entries[-1].path if entries else None)
        return DirListing(entries, None)

    def _list_children(self, p: str, after: str | None, limit: int | None) -> list[FileMetadata]:
        route = self._router.route(p)
        return self._zones[route.zone].meta.list_children(route.zone_path, limit=limit, after=after)

    def _walk(self, p: str, cursor: str | None, limit: int | None) -> Iterator[FileMetadata]:
        """Depth-first pre-order walk below ``p`` (crossing mounts), resuming after
        ``cursor``: first the cursor's own subtree, then the later siblings of the
        cursor and of each of its ancestors up to ``p``."""
        produced = 0

        def visit(d: str, after: str | None) -> Iterator[FileMetadata]:
            nonlocal produced
            while True:
                page = self._list_children(d, after, 256)
                for entry in page:
                    yield entry
                    produced += 1
                    if limit is not None and produced >= limit:
                        return
                    if entry.is_dir:
                        yield from visit(entry.path, None)
                        if limit is not None and produced >= limit:
                            return
                if len(page) < 256:
                    return
                after = page[-1].name

        if cursor is None:
            yield from visit(p, None)
            return
        cmeta = self._lookup(cursor)[3]
        if cmeta is not None and cmeta.is_dir:
            yield from visit(cursor, None)
        node = cursor
        while node != p and (limit is None or produced < limit):
            parent = paths.parent(node)
            yield from visit(parent, paths.basename(node))
            node = parent

    # ------------------------------------------------------------------ rename & copy

    def rename(self, src: str, dst: str) -> FileMetadata:
        """Move a file or a whole directory, atomically (one commit) within a zone.

        POSIX rules: the destination's parent must exist; an existing destination file
        is replaced; a directory may replace only an empty directory
        (``DirectoryNotEmpty``); file over directory is ``IsADirectory``, directory over
        file ``NotADirectory``; moving a directory into itself is ``InvalidPath``.
        Across zones it is ``MountError`` (copy then delete instead). Blobs stay in the
        store that holds them, so renames never copy bytes."""
        s, sroute, szone = self._resolve(src)
        d, droute, dzone = self._resolve(dst)
        self._writable(s)
        self._writable(d)
        with self._lock:
            self._check_open()
            smeta = szone.meta.get(sroute.zone_path) if sroute.zone_path != "/" else None
            if smeta is None:
                if sroute.zone_path == "/" or self._router.get(s) is not None:
                    raise MountError("cannot rename a mount point", path=s)
                raise self._missing(s, sroute, szone)
            if self._router.get(s) is not None or smeta.entry_type is EntryType.MOUNT:
                raise MountError("cannot rename a mount point", path=s)
            if s == d:
                return smeta
            if smeta.is_dir and paths.is_within(d, s):
                raise InvalidPath("cannot move a directory inside itself", path=d)
            if szone is not dzone:
                raise MountError("cannot rename across zones; copy then delete", path=d)
            if droute.zone_path == "/" or self._router.get(d) is not None:
                raise MountError("cannot replace a mount point", path=d)
            if smeta.is_dir and self._router.mounts_within(s):
                raise MountError("a mount point lies inside the directory", path=s)
            self._parent_must_exist(dzone, droute.zone_path, d)
            dmeta = dzone.meta.get(droute.zone_path)
            zone = szone
            deletes: list[bytes] = []
            puts: list[tuple[bytes, bytes]] = []
            refs: Counter[tuple[str, str]] = Counter()
            if dmeta is not None:
                if smeta.is_file and dmeta.is_dir:
                    raise IsADirectory("destination is a directory", path=d)
                if smeta.is_dir and not dmeta.is_dir:
                    raise NotADirectory("destination is not a directory", path=d)
                if dmeta.is_dir and zone.meta.has_children(droute.zone_path):
                    raise DirectoryNotEmpty("destination directory not empty", path=d)
                if dmeta.is_file:
                    if dmeta.inline:
                        deletes.append(data_key(droute.zone_path))
                    elif dmeta.store and dmeta.content_id:
                        refs[(dmeta.store, dmeta.content_id)] -= 1
            rev = zone.revision + 1
            szp, dzp = sroute.zone_path, droute.zone_path
            moves = [(szp, smeta)]
            if smeta.is_dir:
                moves += [
                    (cz, m)
                    for cz, _raw in zone.meta.subtree(szp)
                    if (m := zone.meta.get(cz)) is not None
                ]
            data_keys = [data_key(cz) for cz, m in moves if m.inline]
            inline_data = dict(zip(data_keys, zone.metastore.get_many(data_keys), strict=True))
            for cz, m in moves:
                nz = dzp + cz[len(szp) :]
                deletes.append(inode_key(cz))
                puts.append((inode_key(nz), encode(m._replace(version=rev))))
                if m.inline:
                    deletes.append(data_key(cz))
                    puts.append((data_key(nz), inline_data[data_key(cz)] or b""))
            if dmeta is not None:
                deletes.append(inode_key(dzp))
            # puts override deletes of the same key (deletes are applied first).
            self._commit(zone, puts, deletes, refs)
            return zone.meta.get(dzp) or smeta

    def copy(self, src: str, dst: str, *, overwrite: bool = True) -> FileMetadata:
        """Copy a file (the new file shares the blob: no bytes are copied unless the
        destination routes to another object store). ``IsADirectory`` for a directory
        source; an existing destination file is replaced unless ``overwrite=False``."""
        s, sroute, szone, smeta = self._lookup(src)
        if smeta is None:
            raise self._missing(s, sroute, szone)
        if smeta.is_dir:
            raise IsADirectory("cannot copy a directory", path=s)
        d, droute, dzone = self._resolve(dst)
        self._writable(d)
        if smeta.inline or paths.is_reserved(s):
            return self.write(d, self.read(s), exclusive=not overwrite)
        assert smeta.store is not None and smeta.content_id is not None
        dstore = self._store_for(droute, d)
        key = (smeta.store, smeta.content_id)
        with self.pin(key):
            if dstore != smeta.store:
                info = self._stores[dstore].put(
                    self._stores[smeta.store].iter_chunks(smeta.content_id)
                )
                cid = info.content_id
            else:
                cid = smeta.content_id
            return self._commit_file(
                d,
                droute,
                dzone,
                cid,
                smeta.size,
                None,
                dstore,
                None,
                not overwrite,
                smeta.owner,
                smeta.mime_type,
            )

    # ------------------------------------------------------------------ mounts & zones

    def mount(self, path: str, uri: str) -> MountInfo:
        """Mount an object store (``local:///abs/dir``, ``local:relative/dir``,
        ``memory://name``) or a zone (``zone://NAME``) at ``path``. The mount point must
        not exist or be an empty directory; it is created (with parents). Persisted in
        the root metastore. ``MountError`` for a bad URI, a busy path or a zone that is
        already mounted; ``NotFound`` for an unknown zone."""
        p = paths.normalize(path)
        self._writable(p)
        if not isinstance(uri, str) or ("://" not in uri and not uri.startswith("local:")):
            raise MountError(f"not a mount URI: {uri!r}")
        kind = "zone" if uri.startswith("zone://") else "store"
        with self._lock:
            self._check_open()
            if self._router.get(p) is not None:
                raise MountError("already a mount point; unmount first", path=p)
            if kind == "zone":
                name = uri[len("zone://") :]
                if self._root.metastore.get(ZONE_PREFIX + name.encode()) is None:
                    raise NotFound(f"no zone named {name!r}; create it first", path=p)
                if p == "/":
                    raise MountError("cannot mount a zone at /", path=p)
                if self._router.zone_mount_of(name) is not None:
                    raise MountError(f"zone {name!r} is already mounted", path=p)
            info = MountInfo(p, uri, kind, time.time())
            if kind == "store":
                try:
                    self._store(uri)
                except MountError:
                    raise
                except Exception as exc:
                    raise MountError(f"cannot open store {uri!r}: {exc}", path=p) from exc
            if p != "/":
                route = self._router.route(p)
                zone = self._zones[route.zone]
                zp = route.zone_path
                old = zone.meta.get(zp)
                if old is not None and (not old.is_dir or zone.meta.has_children(zp)):
                    raise MountError("mount point is not an empty directory", path=p)
                now = time.time()
                puts: list[tuple[bytes, bytes]] = []
                self._ensure_parents(zone, zp, now, puts, p)
                mmeta = FileMetadata(
                    p, EntryType.MOUNT, 0, None, zone.revision + 1, now, now, zone.name, target=uri
                )
                puts.append((inode_key(zp), encode(mmeta)))
                self._root.metastore.put(MOUNT_PREFIX + p.encode(), self._mount_json(info))
                self._commit(zone, puts, [])
            else:
                self._root.metastore.put(MOUNT_PREFIX + p.encode(), self._mount_json(info))
            self._activate_mount(info)
            return info

    @staticmethod
    def _mount_json(info: MountInfo) -> bytes:
        return json.dumps(
            {"path": info.path, "uri": info.uri, "kind": info.kind, "created_at": info.created_at}
        ).encode()

    def unmount(self, path: str) -> None:
        """Remove a mount. A zone keeps its data (mount it again to see it); a store
        mount must hold no files (``DirectoryNotEmpty``) and no blob of it may still be
        referenced anywhere. ``MountError`` if ``path`` is not a mount point or has
        mounts inside."""
        p = paths.normalize(path)
        with self._lock:
            self._check_open()
            info = self._router.get(p)
            if info is None:
                raise MountError("not a mount point", path=p)
            if self._router.mounts_within(p):
                raise MountError("unmount the mounts inside it first", path=p)
            if info.kind == "store":
                zone = self._zones[self._router.route(p).zone]
                zp = self._router.route(p).zone_path
                if p != "/" and zone.meta.has_children(zp):
                    raise DirectoryNotEmpty("the mounted store still holds files", path=p)
                prefix = b"R" + info.uri.encode() + b"\x00"
                if any(
                    z.metastore.scan(prefix, limit=1, keys_only=True) for z in self._zones.values()
                ):
                    raise DirectoryNotEmpty("files elsewhere still use this store", path=p)
            if p != "/":
                parent_route = self._router.route(paths.parent(p))
                zone = self._zones[parent_route.zone]
                zp = parent_route.zone_path.rstrip("/") + "/" + paths.basename(p)
                self._commit(zone, [], [inode_key(zp)])
            self._root.metastore.delete(MOUNT_PREFIX + p.encode())
            self._router.remove(p)
            if info.kind == "zone":
                self._zones[info.uri[len("zone://") :]].meta.prefix = "/"
            elif not any(m.uri == info.uri for m in self._router.mounts()):
                self._stores.pop(info.uri).close()

    def mounts(self) -> list[MountInfo]:
        """The mount table, ordered by path."""
        return self._router.mounts()

    def zone_create(self, name: str) -> ZoneInfo:
        """Create a zone: an independent metastore (its own redb file). ``InvalidPath``
        for a bad name (1-64 of ``a-z0-9-_``), ``AlreadyExists`` if it exists."""
        if (
            not isinstance(name, str)
            or not 0 < len(name) <= 64
            or not set(name) <= _ZONE_NAME_CHARS
            or name == ROOT_ZONE
        ):
            raise InvalidPath(f"invalid zone name {name!r}: use 1-64 of a-z 0-9 - _")
        with self._lock:
            self._check_open()
            key = ZONE_PREFIX + name.encode()
            now = time.time()
            if not self._root.metastore.cas(key, None, json.dumps({"created_at": now}).encode()):
                raise AlreadyExists(f"zone {name!r} exists")
            self._open_zone(name)
            return ZoneInfo(name, None, now)

    def zones(self) -> list[ZoneInfo]:
        """Every zone, the root zone first."""
        out = [ZoneInfo(ROOT_ZONE, "/", 0.0)]
        for key, raw in self._root.metastore.scan(ZONE_PREFIX):
            name = key[len(ZONE_PREFIX) :].decode()
            out.append(
                ZoneInfo(name, self._router.zone_mount_of(name), json.loads(raw)["created_at"])
            )
        return out

    # ------------------------------------------------------------------ gc

    def gc(self, *, grace: float = 300.0, dry_run: bool = False) -> GCReport:
        """Reclaim blobs that no inode references: those dropped by overwrites and
        deletes, and those orphaned by a crash between a blob write and its commit.
        Blobs younger than ``grace`` seconds are kept (a write may be about to commit
        them). Flushes first, so it never reclaims a blob a durable inode points at."""
        scanned = reclaimed = nbytes = kept_ref = kept_young = 0
        with self._lock:
            self._check_open()
            self._flush_locked()
            now = time.time()
            for uri, store in list(self._stores.items()):
                cleanup = getattr(store, "cleanup_temp", None)
                if cleanup is not None and not dry_run:
                    cleanup(max_age=grace)
                for cid in list(store.list()):
                    scanned += 1
                    if self._referenced(uri, cid) or self._pins[(uri, cid)]:
                        kept_ref += 1
                        continue
                    try:
                        info = store.info(cid)
                    except NotFound:
                        continue
                    if now - info.created_at < grace:
                        kept_young += 1
                        continue
                    reclaimed += 1
                    nbytes += info.size
                    if not dry_run:
                        store.delete(cid)
        return GCReport(scanned, reclaimed, nbytes, kept_ref, kept_young)

    def revision(self, zone: str = ROOT_ZONE) -> int:
        """The last committed revision of a zone."""
        return self._zones[zone].revision

    def call(self, method: str, /, **kwargs: Any) -> Any:
        """Call an installed service. No service host runs in embedded mode yet, so
        every call raises ``ServiceUnavailable``."""
        from nexusfs.errors import ServiceUnavailable

        raise ServiceUnavailable(f"no service provides {method!r} (no services installed)")


class _Reclaimed(Conflict):
    """The blob a commit was about to reference was reclaimed by ``gc`` in between
    (a deduplicated write of an orphan). ``write`` retries; streams surface it."""


class _Pin:
    __slots__ = ("_fs", "_key")

    def __init__(self, fs: NexusFS, key: tuple[str, str]) -> None:
        self._fs = fs
        self._key = key
        with fs._lock:
            fs._pins[key] += 1

    def release(self) -> None:
        fs = self._fs
        with fs._lock:
            fs._pins[self._key] -= 1
            if fs._pins[self._key] <= 0:
                del fs._pins[self._key]

    def __enter__(self) -> _Pin:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def connect(
    target: str | None = None,
    *,
    data_dir: str | os.PathLike[str] | None = None,
    durability: Durability | str | None = None,
    flush_interval: float = 1.0,
    create: bool = True,
) -> NexusFS:
    """Open NexusFS. With no ``target``, embedded on ``data_dir`` (default:
    ``$NEXUS_DATA_DIR`` or ``./nexus-data``), created if missing; durability from the
    argument, ``$NEXUS_DURABILITY``, or ``deferred``. ``unix://`` and ``grpc://``
    targets belong to the kernel-process and remote modes (not in this release:
    ``ServiceUnavailable``). ``StoreLocked`` if another process has the directory open.
    """
    if target is not None:
        from nexusfs.errors import ServiceUnavailable

        if target.startswith(("unix://", "grpc://")):
            raise ServiceUnavailable(f"{target.split(':')[0]} mode is not available yet")
        data_dir = target[len("file://") :] if target.startswith("file://") else target
    ddir = Path(data_dir or os.environ.get("NEXUS_DATA_DIR") or "nexus-data")
    dur = Durability(durability or os.environ.get("NEXUS_DURABILITY") or "deferred")
    if not ddir.exists():
        if not create:
            raise NotFound("no NexusFS data directory", path=str(ddir))
        ddir.mkdir(parents=True)
    from nexusfs.drivers.metastore.redb import RedbMetastore

    metastore = RedbMetastore(
        os.environ.get("NEXUS_METASTORE") or ddir / "metastore.redb",
        durability=dur,
        flush_interval_ms=0,
    )
    try:
        fs = NexusFS(metastore, data_dir=ddir, durability=dur, flush_interval=flush_interval)
        if fs._router.get("/") is None:
            fs.mount("/", "local:objects")
    except BaseException:
        metastore.close()
        raise
    return fs
