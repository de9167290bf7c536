"""A content-addressed object store in a local directory.

Layout under ``root``::

    root/objects/<2 hex>/<62 hex>    one immutable file per blob, named by its BLAKE3 id
    root/tmp/<random>.tmp            in-progress writes (same filesystem as objects/)

Invariants:

* A file under ``objects/`` is only ever created by ``rename(2)`` of a complete temp
  file, so it is complete and its bytes hash to its name. Nothing else writes there.
* Blobs are created read-only (mode 0444) and never modified; identical content is
  stored once (a commit whose id already exists discards its temp file).
* Content ids are validated (exactly 64 lowercase hex digits) before any path is built,
  so no crafted id can name a path outside ``root``.

Crash semantics:

* Process crash (SIGKILL) at any moment: every blob whose ``commit()`` returned is
  present and complete; a blob being committed is either absent or complete; a stray
  temp file may remain under ``tmp/`` and is removed by the next open (when older than
  ``temp_grace``) or by :meth:`LocalObjectStore.cleanup_temp`.
* Power loss: with ``Durability.IMMEDIATE`` a committed blob was fsynced, renamed into
  place and its directory fsynced before ``commit()`` returned, so it survives. With
  ``DEFERRED`` the rename happens without fsync; :meth:`LocalObjectStore.flush` (called
  by the kernel's background flusher and by ``close()``) fsyncs every blob committed
  since the last flush, then its directory. A deferred blob that was not yet flushed may
  be lost, or (on filesystems that do not order data before renames) be present with
  wrong bytes; :meth:`LocalObjectStore.verify` detects that, and a later commit of the
  same content whose size differs replaces it.

Write path (measured; see ``bench/bench_objectstore.py``): hashing and writing are both
about 2.3 GB/s on one core and both release the GIL, so each chunk (2 MiB) is handed to a
worker thread for ``os.write`` while the calling thread feeds the same memory to BLAKE3;
``write()`` returns only when both are done. That overlaps the two (about 80-90% of raw
hash throughput versus about 50% when done one after the other), never copies large
writes and never keeps a reference to the caller's buffer after ``write()`` returns, so
reused ``bytearray`` buffers are safe. Small writes are coalesced in a 2 MiB buffer;
pieces under 256 KiB are hashed and written inline. BLAKE3's own multithreading was not
used: with two cores it competes with the writer thread and measured no faster.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import stat
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from urllib.parse import quote

import blake3

from nexusfs.abc import BlobInfo, BlobWriter, Durability, ObjectStoreABC
from nexusfs.errors import InvalidPath, NotFound, StoreClosed

__all__ = ["LocalBlobWriter", "LocalObjectStore", "validate_content_id"]

#: Size of the writer's coalescing buffer and of each hash/write pipeline step.
PIPE_CHUNK = 2 << 20
#: Pieces smaller than this are hashed and written inline (thread hand-off not worth it).
PARALLEL_MIN = 256 << 10
#: Default age (seconds) after which a temp file is presumed abandoned.
DEFAULT_TEMP_GRACE = 3600.0

_CID_RE = re.compile(r"[0-9a-f]{64}")
_SHARD_RE = re.compile(r"[0-9a-f]{2}")
_REST_RE = re.compile(r"[0-9a-f]{62}")
_TEMP_SUFFIX = ".tmp"
_BLOB_MODE = 0o444


def validate_content_id(content_id: object) -> str:
    """Return ``content_id`` if it is 64 lowercase hex digits; raise ``InvalidPath``."""
    if not isinstance(content_id, str) or _CID_RE.fullmatch(content_id) is None:
        raise InvalidPath(
            f"invalid content id {content_id!r}: expected 64 lowercase hex digits "
            "(a BLAKE3 hex digest)"
        )
    return content_id


def _check_range(offset: int, size: int | None) -> None:
    if offset < 0:
        raise ValueError(f"offset must be >= 0, got {offset}")
    if size is not None and size < 0:
        raise ValueError(f"size must be >= 0 or None, got {size}")


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_file(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_all(fd: int, data: memoryview) -> None:
    """``os.write`` until every byte of ``data`` is written (handles short writes)."""
    while data:
        n = os.write(fd, data)
        data = data[n:]


class _WriteJob:
    """One chunk handed to a pool thread. The worker drops ``data`` before the caller is
    woken, so no reference to the caller's buffer outlives ``write()``."""

    __slots__ = ("data", "fd")

    def __init__(self, fd: int, data: memoryview | None) -> None:
        self.fd = fd
        self.data = data


def _run_write_job(job: _WriteJob) -> BaseException | None:
    """Pool-thread body: write the chunk; return (not raise) an error, stripped of its
    traceback, whose frames would otherwise keep the caller's buffer alive."""
    try:
        assert job.data is not None
        _write_all(job.fd, job.data)
        return None
    except BaseException as exc:  # re-raised in the calling thread
        return exc.with_traceback(None)
    finally:
        job.data = None


def _pread_all(fd: int, size: int, offset: int) -> bytes:
    """Read up to ``size`` bytes at ``offset``; fewer only at end of file."""
    first = os.pread(fd, size, offset)
    if len(first) == size or not first:
        return first
    parts = [first]
    got = len(first)
    while got < size:
        part = os.pread(fd, size - got, offset + got)
        if not part:
            break
        parts.append(part)
        got += len(part)
    return b"".join(parts)


# One process-wide pool of writer threads; each open writer uses at most one at a time.
_pool_lock = threading.Lock()
_pool: ThreadPoolExecutor | None = None


def _executor() -> ThreadPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(
                max_workers=max(4, 2 * (os.cpu_count() or 1)),
                thread_name_prefix="nexusfs-blobwrite",
            )
        return _pool


def _reset_after_fork() -> None:  # the parent's threads do not exist in a forked child
    global _pool, _pool_lock
    _pool = None
    _pool_lock = threading.Lock()


os.register_at_fork(after_in_child=_reset_after_fork)


class LocalBlobWriter(BlobWriter):
    """Streams one blob into a temp file under ``root/tmp``, hashing as it goes.

    Failure semantics: an ``OSError`` from ``write()`` or ``commit()`` removes the temp
    file and leaves the writer aborted (later calls raise ``ValueError``); nothing
    becomes visible. ``abort()`` and leaving a ``with`` block by an exception remove the
    temp file. Not thread-safe: one writer is used by one thread at a time.
    """

    def __init__(self, store: LocalObjectStore, *, pipeline: bool) -> None:
        self._store = store
        self._pipeline = pipeline
        self._hasher = blake3.blake3()
        self._size = 0
        self._buf = bytearray()  # coalescing buffer; bytes [0, _fill) are pending
        self._fill = 0
        self._pending: Future[BaseException | None] | None = None
        self._done = False
        self._tmp_name = secrets.token_hex(16) + _TEMP_SUFFIX
        self._tmp_path = os.path.join(store._tmp_dir, self._tmp_name)
        store._register_temp(self._tmp_name)
        try:
            self._fd: int | None = os.open(
                self._tmp_path,
                os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC,
                _BLOB_MODE,
            )
        except BaseException:
            store._unregister_temp(self._tmp_name)
            raise

    # -- data path ---------------------------------------------------------------------

    def _process(self, chunk: memoryview) -> None:
        """Hash ``chunk`` and append it to the temp file; return when both are done."""
        fd = self._fd
        assert fd is not None
        if not self._pipeline or len(chunk) < PARALLEL_MIN:
            self._hasher.update(chunk)
            _write_all(fd, chunk)
            return
        self._pending = _executor().submit(_run_write_job, _WriteJob(fd, chunk))
        self._hasher.update(chunk)  # releases the GIL while the worker writes
        pending, self._pending = self._pending, None
        error = pending.result()
        if error is not None:
            raise error

    def _flush_buf(self) -> None:
        if self._fill:
            with memoryview(self._buf) as view:
                self._process(view[: self._fill])
            self._fill = 0

    def _append(self, piece: memoryview) -> None:
        """Copy a small piece into the coalescing buffer (which has room for it). The
        buffer grows by doubling up to ``PIPE_CHUNK`` and is never shrunk or freed while
        the writer lives: re-faulting fresh pages for every chunk costs more than the
        copy itself."""
        end = self._fill + len(piece)
        if end > len(self._buf):
            grow = min(PIPE_CHUNK, max(end, 2 * len(self._buf), 64 << 10)) - len(self._buf)
            self._buf += bytes(grow)
        self._buf[self._fill : end] = piece
        self._fill = end

    def write(self, data: bytes | bytearray | memoryview) -> int:
        """Append ``data``; return ``len(data)`` in bytes. ``data`` may be reused by the
        caller as soon as this returns. Raises ``OSError`` (writer aborted) on I/O
        failure and ``ValueError`` after ``commit()``/``abort()``.

        Pieces of at least ``PARALLEL_MIN`` bytes go straight to the pipeline (no copy)
        in steps of at most ``PIPE_CHUNK``; smaller ones are coalesced first."""
        self._check_writable()
        with memoryview(data) as raw:
            view = raw if raw.format == "B" and raw.ndim == 1 else raw.cast("B")
            n = len(view)
            try:
                pos = 0
                if self._fill and n < PARALLEL_MIN:
                    pos = min(n, PIPE_CHUNK - self._fill)
                    self._append(view[:pos])
                    if self._fill == PIPE_CHUNK:
                        self._flush_buf()
                elif self._fill:
                    self._flush_buf()  # keep byte order: buffered bytes go first
                while n - pos >= PARALLEL_MIN:
                    step = min(PIPE_CHUNK, n - pos)
                    self._process(view[pos : pos + step])
                    pos += step
                if pos < n:
                    self._append(view[pos:])
            except BaseException:
                self.abort()
                raise
        self._size += n
        return n

    # -- completion --------------------------------------------------------------------

    def commit(self) -> BlobInfo:
        """Publish the blob under its BLAKE3 id and return its info.

        Immediate durability: fsync the temp file, rename it into place, fsync the shard
        directory. Deferred: rename only; the next ``flush()`` fsyncs. If the id already
        exists with the same size the temp file is discarded (dedup). On any error the
        temp file is removed, nothing new is visible, and the error propagates.
        """
        self._check_writable()
        store = self._store
        try:
            store._check_open()
            self._flush_buf()
            content_id = self._hasher.hexdigest()
            final = store._blob_path(content_id)
            immediate = store.durability is Durability.IMMEDIATE
            existing = _stat_or_none(final)
            if existing is not None and existing.st_size == self._size:
                self._close_fd()
                os.unlink(self._tmp_path)
                if immediate:
                    store._sync_blob_now(final)
                created = existing.st_mtime
            else:
                fd = self._fd
                assert fd is not None
                if immediate:
                    os.fsync(fd)
                created = os.fstat(fd).st_mtime  # what info() will report
                self._close_fd()
                shard = store._ensure_shard(content_id)
                os.rename(self._tmp_path, final)
                if immediate:
                    _fsync_dir(shard)
                else:
                    store._mark_unsynced(final)
        except BaseException:
            self.abort()
            raise
        self._done = True
        store._unregister_temp(self._tmp_name)
        return BlobInfo(content_id=content_id, size=self._size, created_at=created)

    def abort(self) -> None:
        """Discard the partial blob (close and unlink the temp file). Idempotent; a no-op
        after a successful ``commit()``. Never raises ``OSError``."""
        if self._done:
            return
        self._done = True
        pending, self._pending = self._pending, None
        if pending is not None:  # interrupted mid-chunk: let the worker finish with fd
            with contextlib.suppress(BaseException):
                pending.result()
        self._close_fd()
        with contextlib.suppress(OSError):
            os.unlink(self._tmp_path)
        self._buf = bytearray()
        self._fill = 0
        self._store._unregister_temp(self._tmp_name)

    def _close_fd(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)

    def _check_writable(self) -> None:
        if self._done:
            raise ValueError("blob writer is already committed or aborted")

    def __del__(self) -> None:
        # Last resort for a writer dropped without commit/abort (never in normal use).
        if not getattr(self, "_done", True):
            self.abort()


def _stat_or_none(path: str) -> os.stat_result | None:
    try:
        return os.stat(path)
    except FileNotFoundError:
        return None


class LocalObjectStore(ObjectStoreABC):
    """Blobs as files in a local directory (see the module docstring for the layout).

    ``root`` is created if missing. ``durability`` is ``"immediate"`` or ``"deferred"``
    (see :class:`~nexusfs.abc.Durability`). On open, temp files older than
    ``temp_grace`` seconds are removed. ``pipeline=False`` disables the threaded
    hash/write overlap (for benchmarks).

    Thread-safe: any number of threads may write, read and delete concurrently. Methods
    raise ``InvalidPath`` for a malformed content id, ``NotFound`` for a missing blob,
    ``StoreClosed`` after ``close()``, and propagate other ``OSError``.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        durability: Durability | str = Durability.DEFERRED,
        *,
        temp_grace: float = DEFAULT_TEMP_GRACE,
        pipeline: bool = True,
    ) -> None:
        self.durability = Durability(durability)
        self.root = os.path.abspath(os.fspath(root))
        self.uri = "local://" + quote(self.root)
        self._objects_dir = os.path.join(self.root, "objects")
        self._tmp_dir = os.path.join(self.root, "tmp")
        self._pipeline = pipeline
        self._temp_grace = temp_grace
        self._lock = threading.Lock()
        self._closed = False
        self._known_shards: set[str] = set()
        self._unsynced_blobs: set[str] = set()
        self._unsynced_dirs: set[str] = set()
        self._active_temps: set[str] = set()
        self._makedirs()
        self.cleanup_temp(max_age=temp_grace)

    def _makedirs(self) -> None:
        if not os.path.isdir(self.root):
            os.makedirs(os.path.dirname(self.root), exist_ok=True)
        for path in (self.root, self._objects_dir, self._tmp_dir):
            try:
                os.mkdir(path)
            except FileExistsError:
                continue
            parent = os.path.dirname(path)
            if self.durability is Durability.IMMEDIATE:
                _fsync_dir(parent)
            else:
                self._unsynced_dirs.add(parent)

    def __repr__(self) -> str:
        return f"LocalObjectStore({self.root!r}, durability={self.durability.value!r})"

    # -- internal helpers --------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise StoreClosed(f"object store {self.uri} is closed")

    def _blob_path(self, content_id: str) -> str:
        cid = validate_content_id(content_id)
        return os.path.join(self._objects_dir, cid[:2], cid[2:])

    def _ensure_shard(self, content_id: str) -> str:
        shard = os.path.join(self._objects_dir, content_id[:2])
        if shard in self._known_shards:
            return shard
        try:
            os.mkdir(shard)
        except FileExistsError:
            pass
        else:
            if self.durability is Durability.IMMEDIATE:
                _fsync_dir(self._objects_dir)
            else:
                with self._lock:
                    self._unsynced_dirs.add(self._objects_dir)
        with self._lock:
            self._known_shards.add(shard)
        return shard

    def _mark_unsynced(self, path: str) -> None:
        with self._lock:
            self._unsynced_blobs.add(path)

    def _sync_blob_now(self, path: str) -> None:
        """Make an existing blob durable now (an immediate commit deduplicated onto it)."""
        with self._lock:
            self._unsynced_blobs.discard(path)
        _fsync_file(path)
        _fsync_dir(os.path.dirname(path))

    def _register_temp(self, name: str) -> None:
        with self._lock:
            self._active_temps.add(name)

    def _unregister_temp(self, name: str) -> None:
        with self._lock:
            self._active_temps.discard(name)

    def _open_blob(self, content_id: str) -> int:
        path = self._blob_path(content_id)
        self._check_open()
        try:
            return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise NotFound(f"blob {content_id} not found in {self.uri}") from None

    # -- ObjectStoreABC ----------------------------------------------------------------

    def open_writer(self) -> LocalBlobWriter:
        """Start a streaming write. Raises ``StoreClosed`` after ``close()``."""
        self._check_open()
        return LocalBlobWriter(self, pipeline=self._pipeline)

    def read(self, content_id: str, offset: int = 0, size: int | None = None) -> bytes:
        """Return up to ``size`` bytes from ``offset`` (``os.pread``); past the end gives
        fewer bytes or ``b""``. ``NotFound`` if absent."""
        _check_range(offset, size)
        fd = self._open_blob(content_id)
        try:
            remaining = max(0, os.fstat(fd).st_size - offset)
            want = remaining if size is None else min(size, remaining)
            return _pread_all(fd, want, offset) if want else b""
        finally:
            os.close(fd)

    def iter_chunks(
        self,
        content_id: str,
        offset: int = 0,
        size: int | None = None,
        chunk_size: int = 1 << 20,
    ) -> Iterator[bytes]:
        """Stream a range in chunks of at most ``chunk_size`` bytes, one in memory at a
        time. The id and range are validated now (``InvalidPath``/``ValueError``); the
        blob is opened on the first ``next()`` (``NotFound`` then if absent)."""
        validate_content_id(content_id)
        _check_range(offset, size)
        if chunk_size <= 0:
            raise ValueError(f"chunk_size must be > 0, got {chunk_size}")
        return self._iter_chunks(content_id, offset, size, chunk_size)

    def _iter_chunks(
        self, content_id: str, offset: int, size: int | None, chunk_size: int
    ) -> Iterator[bytes]:
        fd = self._open_blob(content_id)
        try:
            end = os.fstat(fd).st_size
            if size is not None:
                end = min(end, offset + size)
            if end > offset and hasattr(os, "posix_fadvise"):
                os.posix_fadvise(fd, offset, end - offset, os.POSIX_FADV_SEQUENTIAL)
            pos = offset
            while pos < end:
                chunk = os.pread(fd, min(chunk_size, end - pos), pos)
                if not chunk:
                    break
                pos += len(chunk)
                yield chunk
        finally:
            os.close(fd)

    def info(self, content_id: str) -> BlobInfo:
        """Size and creation time (file mtime) of a blob; ``NotFound`` if absent."""
        path = self._blob_path(content_id)
        self._check_open()
        try:
            st = os.stat(path)
        except FileNotFoundError:
            raise NotFound(f"blob {content_id} not found in {self.uri}") from None
        return BlobInfo(content_id=content_id, size=st.st_size, created_at=st.st_mtime)

    def exists(self, content_id: str) -> bool:
        """Whether the blob is present (``InvalidPath`` for a malformed id)."""
        path = self._blob_path(content_id)
        self._check_open()
        return os.path.isfile(path)

    def delete(self, content_id: str) -> bool:
        """Unlink a blob; ``False`` if it was absent (or deleted concurrently). With
        immediate durability the removal is fsynced before returning."""
        path = self._blob_path(content_id)
        self._check_open()
        try:
            os.unlink(path)
        except FileNotFoundError:
            return False
        shard = os.path.dirname(path)
        with self._lock:
            self._unsynced_blobs.discard(path)
        if self.durability is Durability.IMMEDIATE:
            _fsync_dir(shard)
        else:
            with self._lock:
                self._unsynced_dirs.add(shard)
        return True

    def list(self) -> Iterator[str]:
        """Yield every committed blob id by walking the shard directories. Ignores
        ``tmp/`` and any name that is not a well-formed id. Blobs committed or deleted
        during the walk may or may not appear."""
        self._check_open()
        try:
            shards = sorted(
                e.name
                for e in os.scandir(self._objects_dir)
                if _SHARD_RE.fullmatch(e.name) and e.is_dir(follow_symlinks=False)
            )
        except FileNotFoundError:
            return
        for shard in shards:
            try:
                entries = list(os.scandir(os.path.join(self._objects_dir, shard)))
            except FileNotFoundError:
                continue
            for entry in entries:
                if _REST_RE.fullmatch(entry.name) and entry.is_file(follow_symlinks=False):
                    yield shard + entry.name

    def flush(self) -> None:
        """fsync every blob committed (deferred) since the last flush, then the
        directories involved. On ``OSError`` the blobs not yet synced stay pending and
        the error propagates. Blobs deleted meanwhile are skipped."""
        with self._lock:
            blobs, self._unsynced_blobs = self._unsynced_blobs, set()
            dirs, self._unsynced_dirs = self._unsynced_dirs, set()
        pending = sorted(blobs)
        try:
            while pending:
                path = pending[-1]
                try:
                    _fsync_file(path)
                except FileNotFoundError:
                    pass
                else:
                    dirs.add(os.path.dirname(path))
                pending.pop()
            # deepest first, so a new shard is synced before objects/ names it
            for d in sorted(dirs, key=len, reverse=True):
                with contextlib.suppress(FileNotFoundError):
                    _fsync_dir(d)
            dirs.clear()
        except BaseException:
            with self._lock:
                self._unsynced_blobs.update(pending)
                self._unsynced_dirs.update(dirs)
            raise

    def close(self) -> None:
        """Flush and mark the store closed. Idempotent; later calls raise
        ``StoreClosed``."""
        if self._closed:
            return
        self.flush()
        self._closed = True

    # -- local extras ------------------------------------------------------------------

    def cleanup_temp(self, max_age: float | None = None) -> int:
        """Remove temp files under ``tmp/`` whose mtime is older than ``max_age`` seconds
        (default: the ``temp_grace`` given at open; ``0`` removes every one not owned by
        a live writer of this store). Returns how many were removed. Safe to call while
        writers are active in this process; a writer in another process that has not
        written for ``max_age`` seconds loses its temp file (its commit then fails)."""
        age = self._temp_grace if max_age is None else max_age
        cutoff = time.time() - age
        removed = 0
        try:
            entries = list(os.scandir(self._tmp_dir))
        except FileNotFoundError:
            return 0
        for entry in entries:
            with self._lock:
                if entry.name in self._active_temps:
                    continue
            try:
                st = entry.stat(follow_symlinks=False)
                if not stat.S_ISREG(st.st_mode) or (age > 0 and st.st_mtime >= cutoff):
                    continue
                os.unlink(entry.path)
            except FileNotFoundError:
                continue
            removed += 1
        return removed

    def verify(self, content_id: str) -> bool:
        """Re-hash a blob and return whether its bytes match its id (``NotFound`` if
        absent). Streams with bounded memory."""
        hasher = blake3.blake3()
        for chunk in self.iter_chunks(content_id):
            hasher.update(chunk)
        return hasher.hexdigest() == content_id

    def path_of(self, content_id: str) -> Path:
        """The on-disk path of a blob (whether or not it exists)."""
        return Path(self._blob_path(content_id))
