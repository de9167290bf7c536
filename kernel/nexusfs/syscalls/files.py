"""File syscalls: write, read, streaming open, stat, exists, unlink, copy.

Write protocol: bytes go to the object store (durable per the durability setting)
before the commit that points at them; small files (``inline_max``) are kept inline in
the metastore in the same commit. ``if_version`` / ``exclusive`` are checked under the
write lock, so they are exact.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from typing import IO, Any

import blake3

from nexusfs.abc import Route
from nexusfs.errors import (
    AlreadyExists,
    Conflict,
    IsADirectory,
    MountError,
)
from nexusfs.metadata.inode import EntryType, FileMetadata, encode
from nexusfs.metadata.store import (
    data_key,
    inode_key,
)

__all__ = ["FileOps"]


from nexusfs.syscalls.core import KernelCore, _Reclaimed, _Zone
from nexusfs.vfs.files import open_file


class FileOps(KernelCore):
    """File syscalls."""

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
                if exclusive:
                    raise AlreadyExists("file exists", path=p)
                if old.is_dir:
                    raise IsADirectory("is a directory", path=p)
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
        """Return ``size`` bytes (to the end if ``None``) from ``offset`` of one version
        of the file, even while it is being overwritten. Raises ``NotFound``,
        ``IsADirectory``, ``NotADirectory``, ``ValueError`` for a negative offset or
        size."""
        if offset < 0 or (size is not None and size < 0):
            raise ValueError("offset and size must be non-negative")
        meta, data, pin = self._stable_content(path)
        if pin is not None:
            assert meta.store is not None and meta.content_id is not None
            try:
                return self._stores[meta.store].read(meta.content_id, offset, size)
            finally:
                pin.release()
        assert data is not None
        end = None if size is None else offset + size
        return data[offset:end] if offset or end is not None else data

    def iter_read(
        self, path: str, *, offset: int = 0, size: int | None = None, chunk_size: int = 1 << 20
    ) -> Iterator[bytes]:
        """Stream a file's bytes in chunks with bounded memory; the version read is the
        one current when the call was made (it stays readable while the stream lives)."""
        meta, data, pin = self._stable_content(path)
        if pin is None:
            assert data is not None
            end = len(data) if size is None else min(len(data), offset + size)
            for i in range(offset, end, chunk_size):
                yield data[i : min(i + chunk_size, end)]
            return
        assert meta.store is not None and meta.content_id is not None
        try:
            yield from self._stores[meta.store].iter_chunks(
                meta.content_id, offset, size, chunk_size
            )
        finally:
            pin.release()

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

    def copy(self, src: str, dst: str, *, overwrite: bool = True) -> FileMetadata:
        """Copy a file (the new file shares the blob: no bytes are copied unless the
        destination routes to another object store). ``IsADirectory`` for a directory
        source; an existing destination file is replaced unless ``overwrite=False``
        (then ``AlreadyExists``). Copies one version even while the source changes."""
        smeta, data, pin = self._stable_content(src)
        try:
            d, droute, dzone = self._resolve(dst)
            self._writable(d)
            if pin is None:
                assert data is not None
                return self.write(d, data, exclusive=not overwrite,
                                  owner=smeta.owner, mime_type=smeta.mime_type)  # fmt: skip
            assert smeta.store is not None and smeta.content_id is not None
            dstore = self._store_for(droute, d)
            cid = smeta.content_id
            if dstore != smeta.store:
                source = self._stores[smeta.store].iter_chunks(smeta.content_id)
                cid = self._stores[dstore].put(source).content_id
            return self._commit_file(
                d, droute, dzone, cid, smeta.size, None, dstore, None, not overwrite,
                smeta.owner, smeta.mime_type,
            )  # fmt: skip
        finally:
            if pin is not None:
                pin.release()
