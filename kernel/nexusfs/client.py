"""``RemoteNexusFS``: the NexusFS API over the bus to a local kernel process.

Every call of :class:`~nexusfs.kernel.NexusFS` exists here with the same signature,
result types and typed errors (the bus carries error classes across). Whole-file calls
take one round trip; payloads over 8 MiB move in chunks through server-side file
handles, so memory stays bounded and a large read sees one version throughout.

Failure semantics: if the kernel process goes away, calls raise ``ServiceUnavailable``
(nothing is retried: a write may or may not have committed, exactly as with a crash of
an embedded process). A writer opened with ``open("wb")`` commits only on ``close()``;
if this client dies first, the kernel discards it when the connection drops.
"""

from __future__ import annotations

import getpass
import io
import os
from collections.abc import Iterator
from types import TracebackType
from typing import IO, Any, Self, cast

from nexusfs.abc import MountInfo
from nexusfs.errors import StoreClosed
from nexusfs.metadata.inode import FileMetadata
from nexusfs.server import wire
from nexusfs.server.wire import READ_CHUNK
from nexusfs.syscalls.admin import GCReport, ZoneInfo
from nexusfs.vfs.listing import DirListing

__all__ = ["RemoteNexusFS"]


class RemoteNexusFS:
    """A client of the kernel process listening at ``socket_path``. Thread-safe."""

    def __init__(
        self,
        socket_path: str | os.PathLike[str],
        *,
        timeout: float = 60.0,
        subject: str | None = None,
    ) -> None:
        from nexusfs.bus import BlockingClient

        self.socket_path = os.fspath(socket_path)
        self._client = BlockingClient(self.socket_path, timeout=timeout)
        self._closed = False
        # Trusted local mode: the kernel checked our uid on accept; we name our subject.
        self.subject = subject or f"user:{getpass.getuser()}"
        self._call("kernel.hello", subject=self.subject)

    # -- plumbing ----------------------------------------------------------------------

    def _call(self, method: str, /, **args: Any) -> Any:
        if self._closed:
            raise StoreClosed("the client is closed")
        return self._client.request(method, args)

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
        """Close the connection (the kernel keeps running). Idempotent."""
        if not self._closed:
            self._closed = True
            self._client.close()

    def status(self) -> dict[str, Any]:
        """The kernel process's pid, data directory, version, revision, mounts."""
        return cast("dict[str, Any]", self._call("kernel.status"))

    # -- files -------------------------------------------------------------------------

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
        opts = {"if_version": if_version, "exclusive": exclusive, "owner": owner,
                "mime_type": mime_type}  # fmt: skip
        data = bytes(data)
        if len(data) <= READ_CHUNK:
            return wire.meta_from_wire(self._call("fs.write", path=path, data=data, **opts))
        with self.open(path, "wb", **opts) as f:
            view = memoryview(data)
            for i in range(0, len(data), READ_CHUNK):
                f.write(view[i : i + READ_CHUNK])
        result = cast("_RemoteWriter", f).result
        assert result is not None
        return result

    def read(self, path: str, *, offset: int = 0, size: int | None = None) -> bytes:
        if offset < 0 or (size is not None and size < 0):
            raise ValueError("offset and size must be non-negative")
        return b"".join(self._read_chunks(path, offset, size))

    def _read_chunks(self, path: str, offset: int, size: int | None) -> Iterator[bytes]:
        first = self._call("fs.read", path=path, offset=offset, size=size)
        yield first["data"]
        handle = first.get("handle")
        if handle is None:
            return
        remaining = int(first["total"]) - len(first["data"])
        try:
            while remaining > 0:
                chunk = self._call("fs.fread", handle=handle, size=min(remaining, READ_CHUNK))
                if not chunk:
                    break
                remaining -= len(chunk)
                yield chunk
        finally:
            if not self._closed:
                self._call("fs.fclose", handle=handle)

    def iter_read(
        self, path: str, *, offset: int = 0, size: int | None = None, chunk_size: int = 1 << 20
    ) -> Iterator[bytes]:
        for block in self._read_chunks(path, offset, size):
            for i in range(0, len(block), chunk_size):
                yield block[i : i + chunk_size]

    def open(self, path: str, mode: str = "rb", **kwargs: Any) -> IO[bytes]:
        m = mode.replace("b", "")
        if m not in ("r", "w", "a"):
            raise ValueError(f"invalid mode {mode!r}: use 'rb', 'wb' or 'ab'")
        opts = {k: v for k, v in kwargs.items() if v is not None and v is not False}
        handle = int(self._call("fs.open", path=path, mode=m + "b", **opts))
        if m == "r":
            return io.BufferedReader(_RemoteReader(self, handle, path), buffer_size=1 << 20)
        return cast("IO[bytes]", _RemoteWriter(self, handle, path))

    def stat(self, path: str) -> FileMetadata:
        return wire.meta_from_wire(self._call("fs.stat", path=path))

    def exists(self, path: str) -> bool:
        return bool(self._call("fs.exists", path=path))

    def unlink(self, path: str) -> None:
        self._call("fs.unlink", path=path)

    def copy(self, src: str, dst: str, *, overwrite: bool = True) -> FileMetadata:
        return wire.meta_from_wire(self._call("fs.copy", src=src, dst=dst, overwrite=overwrite))

    # -- directories -------------------------------------------------------------------

    def mkdir(self, path: str, *, parents: bool = False, exist_ok: bool = False) -> FileMetadata:
        return wire.meta_from_wire(
            self._call("fs.mkdir", path=path, parents=parents, exist_ok=exist_ok)
        )

    def rmdir(self, path: str, *, recursive: bool = False) -> None:
        self._call("fs.rmdir", path=path, recursive=recursive)

    def readdir(
        self,
        path: str = "/",
        *,
        recursive: bool = False,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> DirListing:
        return wire.listing_from_wire(
            self._call("fs.readdir", path=path, recursive=recursive, limit=limit, cursor=cursor)
        )

    def rename(self, src: str, dst: str) -> FileMetadata:
        return wire.meta_from_wire(self._call("fs.rename", src=src, dst=dst))

    # -- mounts, zones, maintenance ----------------------------------------------------

    def mount(self, path: str, uri: str) -> MountInfo:
        return wire.mount_from_wire(self._call("fs.mount", path=path, uri=uri))

    def unmount(self, path: str) -> None:
        self._call("fs.unmount", path=path)

    def mounts(self) -> list[MountInfo]:
        return [wire.mount_from_wire(m) for m in self._call("fs.mounts")]

    def zone_create(self, name: str) -> ZoneInfo:
        return wire.zone_from_wire(self._call("fs.zone_create", name=name))

    def zones(self) -> list[ZoneInfo]:
        return [wire.zone_from_wire(z) for z in self._call("fs.zones")]

    def gc(self, *, grace: float = 300.0, dry_run: bool = False) -> GCReport:
        return wire.gc_from_wire(self._call("fs.gc", grace=grace, dry_run=dry_run))

    def flush(self) -> None:
        self._call("fs.flush")

    def revision(self, zone: str = "root") -> int:
        return int(self._call("fs.revision", zone=zone))

    def call(self, method: str, /, **kwargs: Any) -> Any:
        """Call an installed service through the kernel."""
        return self._call(method, **kwargs)

    def watch(self, path: str = "/", *, timeout: float | None = None) -> Iterator[dict[str, Any]]:
        """Yield events on ``path`` and below as they happen: every finished syscall
        (``kind="syscall"``: op, path, dst, subject, ok, error_code, revision, seq) and
        every event a service emits about such a path (``kind="emit"``). Uses its own
        connection; ends when the generator is closed, or after ``timeout`` seconds
        without an event. Delivery is at most once (a consumer that falls far behind
        misses events; use the audit log for a complete history)."""
        import queue

        from nexusfs.bus import BlockingClient

        events: queue.SimpleQueue[dict[str, Any]] = queue.SimpleQueue()

        def on_notify(method: str, args: dict[str, Any]) -> None:
            if method == "watch.event":
                events.put(args["event"])

        client = BlockingClient(self.socket_path, timeout=60.0, on_notify=on_notify)
        try:
            client.request("kernel.hello", {"subject": self.subject})
            client.request("fs.watch", {"path": path})
            while True:
                try:
                    yield events.get(timeout=timeout)
                except queue.Empty:
                    return
        finally:
            client.close()


class _RemoteReader(io.RawIOBase):
    def __init__(self, fs: RemoteNexusFS, handle: int, path: str) -> None:
        super().__init__()
        self._fs, self._handle, self.name = fs, handle, path

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        data: bytes = self._fs._call("fs.fread", handle=self._handle, size=len(view))
        view[: len(data)] = data
        return len(data)

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        return int(self._fs._call("fs.fseek", handle=self._handle, offset=offset, whence=whence))

    def tell(self) -> int:
        return self.seek(0, io.SEEK_CUR)

    def close(self) -> None:
        if not self.closed:
            try:
                if not self._fs._closed:
                    self._fs._call("fs.fclose", handle=self._handle)
            finally:
                super().close()


class _RemoteWriter(io.RawIOBase):
    def __init__(self, fs: RemoteNexusFS, handle: int, path: str) -> None:
        super().__init__()
        self._fs, self._handle, self.name = fs, handle, path
        self.result: FileMetadata | None = None

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        for i in range(0, len(view), READ_CHUNK):
            self._fs._call("fs.fwrite", handle=self._handle, data=bytes(view[i : i + READ_CHUNK]))
        return len(view)

    def discard(self) -> None:
        """Throw away everything written; the file is left unchanged."""
        if not self.closed:
            try:
                self._fs._call("fs.fdiscard", handle=self._handle)
            finally:
                super().close()

    def close(self) -> None:
        """Commit the content as the file's new version (once)."""
        if not self.closed:
            try:
                raw = self._fs._call("fs.fclose", handle=self._handle)
                self.result = None if raw is None else wire.meta_from_wire(raw)
            finally:
                super().close()

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is not None:
            self.discard()
        else:
            self.close()
