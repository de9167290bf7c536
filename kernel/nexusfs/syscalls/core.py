"""Kernel core: state, lifecycle, path resolution and the one commit path.

:class:`KernelCore` holds what every syscall shares: the zones (one metastore each), the
mounted object stores, the mount router, the write lock, blob pins and the reclaim
queue. Syscalls live in mixins beside this module (``files``, ``namespace``, ``admin``)
and are composed into :class:`nexusfs.kernel.NexusFS`.

Invariants: every mutation runs under ``_lock`` and ends in exactly one call of
:meth:`KernelCore._commit` (one atomic metastore batch per zone, which also bumps the
zone revision and applies blob reference-count deltas). A blob is deleted only by
``_reclaim_now`` once no zone references it, no reader pins it and the commit that
dropped its last reference is durable.
"""

from __future__ import annotations

import json
import os
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Self

from nexusfs import paths
from nexusfs.abc import Durability, MetastoreABC, MountInfo, ObjectStoreABC, Route
from nexusfs.errors import (
    Conflict,
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
    inode_key,
    pack_u64,
    ref_key,
    unpack_u64,
)
from nexusfs.vfs import sysfs
from nexusfs.vfs.router import ROOT_ZONE, MountRouter

if TYPE_CHECKING:
    from nexusfs.syscalls.admin import ZoneInfo

__all__ = ["KernelCore", "StoreOpener", "ZoneOpener"]

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


ZoneOpener = Callable[[str], MetastoreABC]
StoreOpener = Callable[[str], ObjectStoreABC]


class KernelCore:
    """Shared kernel state and helpers; see the module docstring."""

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
        # Guards _pins; a reclaim holds it from its pin check to the blob's deletion, so
        # a reader that pins and then re-validates its inode never loses its blob.
        self._pin_lock = threading.Lock()
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

    def __enter__(self) -> Self:
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

    def revision(self, zone: str = ROOT_ZONE) -> int:
        """The last committed revision of a zone."""
        return self._zones[zone].revision

    if TYPE_CHECKING:  # provided by AdminOps; read by the /__sys__ tree

        def mounts(self) -> list[MountInfo]: ...
        def zones(self) -> list[ZoneInfo]: ...

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
            with self._pin_lock:
                if self._pins[(store, cid)]:
                    self._reclaim.append((store, cid))
                elif not self._referenced(store, cid) and store in self._stores:
                    self._stores[store].delete(cid)

    def _stable_content(self, path: str) -> tuple[FileMetadata, bytes | None, _Pin | None]:
        """The file at ``path`` with its content made stable for reading: inline bytes
        taken from the same snapshot as the inode, or the blob pinned and the inode
        re-checked after pinning (so no reclaim can remove it). Raises ``NotFound``,
        ``NotADirectory``, ``IsADirectory``; ``Conflict`` if the file keeps changing
        faster than it can be pinned (100 attempts)."""
        p, route, zone = self._resolve(path)
        if paths.is_reserved(p):
            smeta = sysfs.stat(self, p)
            if smeta is None:
                raise NotFound("no such file or directory", path=p)
            if smeta.is_dir:
                raise IsADirectory("is a directory", path=p)
            return smeta, sysfs.read(self, p), None
        zp = route.zone_path
        if zp == "/":
            raise IsADirectory("is a directory", path=p)
        meta, data = zone.meta.get_with_data(zp)
        for _ in range(100):
            if meta is None:
                raise self._missing(p, route, zone)
            if meta.is_dir:
                raise IsADirectory("is a directory", path=p)
            if meta.inline:
                if data is not None:
                    return meta, data, None
                meta, data = zone.meta.get_with_data(zp)  # changed under us: look again
                continue
            assert meta.store is not None and meta.content_id is not None
            pin = _Pin(self, (meta.store, meta.content_id))
            again = zone.meta.get(zp)
            if again is not None and again.content_id == meta.content_id and (
                again.store == meta.store
            ):
                return again, None, pin
            pin.release()
            meta, data = zone.meta.get_with_data(zp)
        raise Conflict("the file changes too fast to be read consistently", path=p)

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


class _Reclaimed(Conflict):
    """The blob a commit was about to reference was reclaimed by ``gc`` in between
    (a deduplicated write of an orphan). ``write`` retries; streams surface it."""


class _Pin:
    __slots__ = ("_fs", "_key")

    def __init__(self, fs: KernelCore, key: tuple[str, str]) -> None:
        self._fs: KernelCore | None = fs
        self._key = key
        with fs._pin_lock:
            fs._pins[key] += 1

    def release(self) -> None:
        """Let the blob be reclaimed again. Idempotent."""
        fs, self._fs = self._fs, None
        if fs is None:
            return
        with fs._pin_lock:
            fs._pins[self._key] -= 1
            if fs._pins[self._key] <= 0:
                del fs._pins[self._key]

    def __enter__(self) -> _Pin:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
