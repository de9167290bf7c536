"""Mounts, zones and garbage collection.

The mount table persists in the root metastore under ``/__sys__/mounts/``; zones are
registered under ``/__sys__/zones/`` and each is its own metastore (a redb file). A mount
point is a ``MOUNT`` inode in the zone that contains it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from nexusfs import paths
from nexusfs.abc import MountInfo
from nexusfs.errors import (
    AlreadyExists,
    DirectoryNotEmpty,
    InvalidPath,
    MountError,
    NotFound,
)
from nexusfs.metadata.inode import EntryType, FileMetadata, encode
from nexusfs.metadata.store import (
    inode_key,
)
from nexusfs.vfs.router import ROOT_ZONE

__all__ = ["AdminOps", "GCReport", "ZoneInfo"]


from nexusfs.syscalls.core import MOUNT_PREFIX, ZONE_PREFIX, KernelCore

_ZONE_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-_")


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


class AdminOps(KernelCore):
    """Admin syscalls."""

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
                    with self._pin_lock:
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

    def watch(self, path: str = "/", *, timeout: float | None = None) -> Iterator[dict[str, Any]]:
        """Stream events under ``path``. Events come from the kernel process's syscall
        pipeline, so embedded mode raises ``ServiceUnavailable`` (run ``nexus up``)."""
        from nexusfs.errors import ServiceUnavailable

        raise ServiceUnavailable("watch needs the kernel process (nexus up)")

    def call(self, method: str, /, **kwargs: Any) -> Any:
        """Call an installed service. No service host runs in embedded mode yet, so
        every call raises ``ServiceUnavailable``."""
        from nexusfs.errors import ServiceUnavailable

        raise ServiceUnavailable(f"no service provides {method!r} (no services installed)")
