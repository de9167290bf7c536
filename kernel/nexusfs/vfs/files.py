"""Streaming file objects returned by ``NexusFS.open``.

* ``"rb"``: a seekable, buffered reader of the version current at open time. The blob
  is pinned while the file is open, so an overwrite or unlink meanwhile cannot reclaim
  it; reads never see a mix of versions.
* ``"wb"`` / ``"ab"``: a writer that keeps small content in memory and streams large
  content into the object store as it is written (bounded memory). Nothing is visible
  until ``close()``, which commits the new version atomically; leaving a ``with`` block
  by an exception (or calling ``discard()``) throws the content away and changes
  nothing. ``"ab"`` starts from a copy of the existing content (blobs are immutable, so
  an append writes a new blob).
"""

from __future__ import annotations

import io
from typing import IO, TYPE_CHECKING, Any, cast

import blake3

from nexusfs.abc import BlobWriter
from nexusfs.errors import IsADirectory, StoreClosed

if TYPE_CHECKING:
    from nexusfs.metadata.inode import FileMetadata
    from nexusfs.syscalls.core import _Pin
    from nexusfs.syscalls.files import FileOps as NexusFS

__all__ = ["open_file"]

_BUFFER = 1 << 20


def open_file(fs: NexusFS, path: str, mode: str = "rb", **kwargs: Any) -> IO[bytes]:
    """Open ``path`` in ``mode`` (``rb``, ``wb`` or ``ab``; ``r``/``w``/``a`` alike)."""
    m = mode.replace("b", "")
    if m == "r":
        if kwargs:
            raise TypeError(f"unexpected arguments for mode 'rb': {sorted(kwargs)}")
        return _open_reader(fs, path)
    if m in ("w", "a"):
        return cast("IO[bytes]", _Writer(fs, path, append=(m == "a"), **kwargs))
    raise ValueError(f"invalid mode {mode!r}: use 'rb', 'wb' or 'ab'")


def _open_reader(fs: NexusFS, path: str) -> IO[bytes]:
    meta, data, pin = fs._stable_content(path)
    if pin is None:
        bio = io.BytesIO(data or b"")
        bio.name = meta.path
        return bio
    raw = _BlobReader(fs, meta, pin)
    return io.BufferedReader(raw, buffer_size=_BUFFER)


class _BlobReader(io.RawIOBase):
    def __init__(self, fs: NexusFS, meta: FileMetadata, pin: _Pin) -> None:
        super().__init__()
        assert meta.store is not None and meta.content_id is not None
        self.name = meta.path
        self.meta = meta
        self._pin: _Pin | None = pin
        self._store = fs._stores[meta.store]
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self.closed:
            raise ValueError("I/O operation on closed file")
        view = memoryview(buffer).cast("B")
        n = len(view)
        if n == 0 or self._pos >= self.meta.size:
            return 0
        assert self.meta.content_id is not None
        data = self._store.read(self.meta.content_id, self._pos, n)
        view[: len(data)] = data
        self._pos += len(data)
        return len(data)

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_SET:
            pos = offset
        elif whence == io.SEEK_CUR:
            pos = self._pos + offset
        elif whence == io.SEEK_END:
            pos = self.meta.size + offset
        else:
            raise ValueError(f"invalid whence {whence}")
        if pos < 0:
            raise ValueError("negative seek position")
        self._pos = pos
        return pos

    def tell(self) -> int:
        return self._pos

    def close(self) -> None:
        if self._pin is not None:
            self._pin.release()
            self._pin = None
        super().close()


class _Writer(io.RawIOBase):
    def __init__(
        self,
        fs: NexusFS,
        path: str,
        *,
        append: bool = False,
        if_version: int | None = None,
        exclusive: bool = False,
        owner: str | None = None,
        mime_type: str | None = None,
    ) -> None:
        super().__init__()
        p, route, zone = fs._resolve(path)
        fs._writable(p)
        self.name = p
        self._fs, self._route, self._zone = fs, route, zone
        self._opts = (if_version, exclusive, owner, mime_type)
        self._buf = bytearray()
        self._blob: BlobWriter | None = None
        self._store_id: str | None = None
        self._size = 0
        self.result: FileMetadata | None = None
        if append:
            self._copy_existing(path)

    def _copy_existing(self, path: str) -> None:
        try:
            meta = self._fs.stat(path)
        except FileNotFoundError:
            return
        if meta.is_dir:
            raise IsADirectory("is a directory", path=meta.path)
        if self._opts[0] is None and meta.version:
            # Appends are read-modify-write: commit only over the version we copied.
            self._opts = (meta.version, *self._opts[1:])
        for chunk in self._fs.iter_read(meta.path):
            self.write(chunk)

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        if self.closed:
            raise ValueError("I/O operation on closed file")
        view = memoryview(data).cast("B")
        n = len(view)
        if self._blob is None:
            self._buf += view
            if len(self._buf) > self._fs.inline_max:
                self._store_id = self._fs._store_for(self._route, self.name)
                self._blob = self._fs._stores[self._store_id].open_writer()
                self._blob.write(self._buf)
                self._buf = bytearray()
        else:
            self._blob.write(view)
        self._size += n
        return n

    def discard(self) -> None:
        """Throw away everything written; the file is left unchanged."""
        if self._blob is not None:
            self._blob.abort()
            self._blob = None
        self._buf = bytearray()
        super().close()

    def close(self) -> None:
        """Commit the content as the file's new version (once)."""
        if self.closed:
            return
        try:
            if self._fs._closed:
                raise StoreClosed("the kernel is closed")
            if_version, exclusive, owner, mime = self._opts
            if self._blob is None:
                data = bytes(self._buf)
                cid = blake3.blake3(data).hexdigest()
                self.result = self._fs._commit_file(
                    self.name,
                    self._route,
                    self._zone,
                    cid,
                    len(data),
                    data,
                    None,
                    if_version,
                    exclusive,
                    owner,
                    mime,
                )
            else:
                info = self._blob.commit()
                self._blob = None
                self.result = self._fs._commit_file(
                    self.name,
                    self._route,
                    self._zone,
                    info.content_id,
                    info.size,
                    None,
                    self._store_id,
                    if_version,
                    exclusive,
                    owner,
                    mime,
                )
        finally:
            if self._blob is not None:
                self._blob.abort()
            super().close()

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is not None:
            self.discard()
        else:
            self.close()
