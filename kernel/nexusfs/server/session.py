"""One client connection to the kernel process: the syscall handlers it can call.

Each accepted bus connection gets a :class:`Session` whose ``handlers()`` map the wire
method names (``fs.write``, ``fs.stat``, ...) to the embedded kernel's syscalls. Quick
metadata calls run on the event loop; calls that move file bytes or fsync run in a
worker thread so one large transfer never stalls other clients.

Open files are per session: ``fs.open`` returns a handle id; the handle is closed by
``fs.fclose`` (commit) / ``fs.fdiscard``, and every handle still open when the connection
ends is discarded (writers) or released (readers), so a crashed client never commits a
half-written file and never pins a blob forever.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable
from typing import IO, TYPE_CHECKING, Any

import anyio

from nexusfs.errors import IsADirectory, NexusError
from nexusfs.server import wire

if TYPE_CHECKING:
    from nexusfs.kernel import NexusFS

__all__ = ["READ_CHUNK", "Session"]

log = logging.getLogger("nexusfs.server")

#: Largest payload a single read or write call carries; larger transfers use handles.
READ_CHUNK = 8 << 20


class BadHandle(NexusError, ValueError):
    """The file handle is unknown (never opened, already closed, or another session's)."""

    code = "bad_handle"


class Session:
    """The handlers of one client connection (see the module docstring)."""

    def __init__(self, fs: NexusFS, on_shutdown: Callable[[], None], info: dict[str, Any]):
        self.fs = fs
        self._on_shutdown = on_shutdown
        self._info = info
        self._handles: dict[int, IO[bytes]] = {}
        self._ids = itertools.count(1)

    def handlers(self) -> dict[str, Callable[..., Any]]:
        fs = self.fs
        return {
            "kernel.ping": lambda: "pong",
            "kernel.status": self.status,
            "kernel.shutdown": self.shutdown,
            "fs.write": self.write,
            "fs.read": self.read,
            "fs.stat": lambda path: wire.meta_to_wire(fs.stat(path)),
            "fs.exists": fs.exists,
            "fs.readdir": lambda path, **kw: wire.listing_to_wire(fs.readdir(path, **kw)),
            "fs.mkdir": lambda path, **kw: wire.meta_to_wire(fs.mkdir(path, **kw)),
            "fs.rmdir": self._threaded(fs.rmdir),
            "fs.unlink": fs.unlink,
            "fs.rename": lambda src, dst: wire.meta_to_wire(fs.rename(src, dst)),
            "fs.copy": self.copy,
            "fs.mount": lambda path, uri: wire.mount_to_wire(fs.mount(path, uri)),
            "fs.unmount": fs.unmount,
            "fs.mounts": lambda: [wire.mount_to_wire(m) for m in fs.mounts()],
            "fs.zone_create": lambda name: wire.zone_to_wire(fs.zone_create(name)),
            "fs.zones": lambda: [wire.zone_to_wire(z) for z in fs.zones()],
            "fs.gc": self.gc,
            "fs.flush": self._threaded(fs.flush),
            "fs.revision": fs.revision,
            "fs.open": self.open,
            "fs.fread": self.fread,
            "fs.fwrite": self.fwrite,
            "fs.fseek": self.fseek,
            "fs.fclose": self.fclose,
            "fs.fdiscard": self.fdiscard,
        }

    @staticmethod
    def _threaded(fn: Callable[..., Any]) -> Callable[..., Any]:
        async def run(**kwargs: Any) -> Any:
            return await anyio.to_thread.run_sync(lambda: fn(**kwargs))

        return run

    # -- kernel ------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        return {**self._info, "revision": self.fs.revision(), "mounts": len(self.fs.mounts())}

    def shutdown(self) -> str:
        self._on_shutdown()
        return "stopping"

    # -- whole-file calls --------------------------------------------------------------

    async def write(self, path: str, data: bytes, **opts: Any) -> list[Any]:
        if len(data) > (1 << 20):
            meta = await anyio.to_thread.run_sync(lambda: self.fs.write(path, data, **opts))
        else:
            meta = self.fs.write(path, data, **opts)
        return wire.meta_to_wire(meta)

    async def read(self, path: str, offset: int = 0, size: int | None = None) -> dict[str, Any]:
        """Small ranges come back whole; a range over ``READ_CHUNK`` comes back as its
        first chunk plus a handle pinned to that version, to read the rest from."""
        meta = self.fs.stat(path)
        if meta.is_dir:
            raise IsADirectory("is a directory", path=meta.path)
        avail = max(0, meta.size - offset)
        want = avail if size is None else min(size, avail)
        if want <= READ_CHUNK:
            return {"data": self.fs.read(path, offset=offset, size=size)}
        handle = self.open(path, "rb")
        f = self._handles[handle]
        f.seek(offset)
        data = await anyio.to_thread.run_sync(f.read, READ_CHUNK)
        return {"data": data, "handle": handle, "total": want}

    async def copy(self, src: str, dst: str, overwrite: bool = True) -> list[Any]:
        meta = await anyio.to_thread.run_sync(lambda: self.fs.copy(src, dst, overwrite=overwrite))
        return wire.meta_to_wire(meta)

    async def gc(self, grace: float = 300.0, dry_run: bool = False) -> dict[str, Any]:
        report = await anyio.to_thread.run_sync(
            lambda: self.fs.gc(grace=grace, dry_run=dry_run)
        )
        return wire.gc_to_wire(report)

    # -- handles -----------------------------------------------------------------------

    def open(self, path: str, mode: str = "rb", **opts: Any) -> int:
        f = self.fs.open(path, mode, **opts)
        handle = next(self._ids)
        self._handles[handle] = f
        return handle

    def _get(self, handle: int) -> IO[bytes]:
        try:
            return self._handles[handle]
        except KeyError:
            raise BadHandle(f"no open file with handle {handle}") from None

    async def fread(self, handle: int, size: int = READ_CHUNK) -> bytes:
        f = self._get(handle)
        return await anyio.to_thread.run_sync(f.read, min(size, READ_CHUNK))

    async def fwrite(self, handle: int, data: bytes) -> int:
        f = self._get(handle)
        return await anyio.to_thread.run_sync(f.write, data)

    def fseek(self, handle: int, offset: int, whence: int = 0) -> int:
        return self._get(handle).seek(offset, whence)

    async def fclose(self, handle: int) -> list[Any] | None:
        """Close a handle; for a writer this commits and returns the new inode."""
        f = self._handles.pop(handle, None)
        if f is None:
            raise BadHandle(f"no open file with handle {handle}")
        await anyio.to_thread.run_sync(f.close)
        result = getattr(f, "result", None)
        return None if result is None else wire.meta_to_wire(result)

    def fdiscard(self, handle: int) -> None:
        """Close a handle without committing what was written."""
        f = self._handles.pop(handle, None)
        if f is None:
            raise BadHandle(f"no open file with handle {handle}")
        _discard(f)

    def close(self) -> None:
        """The connection ended: drop every handle without committing."""
        handles, self._handles = self._handles, {}
        for f in handles.values():
            try:
                _discard(f)
            except Exception:
                log.exception("discarding a handle of a closed session failed")


def _discard(f: IO[bytes]) -> None:
    discard = getattr(f, "discard", None)
    if discard is not None:
        discard()
    else:
        f.close()
