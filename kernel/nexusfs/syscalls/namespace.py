"""Directory syscalls: mkdir, rmdir, readdir (paged, recursive), rename.

Listings are ordered scans of direct children (never a filter over a subtree).
Recursive removal and directory renames are one atomic commit each, within a zone.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator

from nexusfs import paths
from nexusfs.errors import (
    AlreadyExists,
    DirectoryNotEmpty,
    InvalidPath,
    IsADirectory,
    MountError,
    NotADirectory,
)
from nexusfs.metadata.inode import EntryType, FileMetadata, encode
from nexusfs.metadata.store import (
    data_key,
    inode_key,
)
from nexusfs.vfs import sysfs
from nexusfs.vfs.listing import DirListing

__all__ = ["NamespaceOps"]


from nexusfs.syscalls.core import KernelCore


class NamespaceOps(KernelCore):
    """Namespace syscalls."""

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
