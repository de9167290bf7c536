"""The S3 object store's blob writer: one blob streamed to S3 while it is hashed.

A blob of at most one part is buffered and sent by one conditional PutObject straight
to its content key; a larger one becomes a multipart upload to a temporary key under
``tmp/`` that :meth:`S3BlobWriter.commit` completes and copies server-side to its
content key (see the package doc, :mod:`nexusfs.drivers.objectstore.s3`). Invariants:
nothing is ever written under ``objects/`` except whole, by one request, with bytes
that hash to the key; at most two parts are in memory (one filling, one uploading in
the store's pool); once committed or aborted a writer holds no upload, no temporary
object and no buffer, and every later ``write()``/``commit()`` raises ``ValueError``.
The writer drives its :class:`~nexusfs.drivers.objectstore.s3.S3ObjectStore` through
the store's internal request helpers, which raise raw boto errors; the writer
translates them.
"""

from __future__ import annotations

import contextlib
import threading
import time
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any

import blake3
import botocore.exceptions as bexc

from nexusfs.abc import BlobInfo, BlobWriter
from nexusfs.drivers.objectstore.s3._common import MAX_PART_SIZE, MAX_PARTS, bytes_like
from nexusfs.drivers.objectstore.s3._errors import S3Error, error_code
from nexusfs.errors import StoreClosed

if TYPE_CHECKING:
    from mypy_boto3_s3.type_defs import CompletedPartTypeDef

    from nexusfs.drivers.objectstore.s3._store import S3ObjectStore

__all__ = ["S3BlobWriter"]


class S3BlobWriter(BlobWriter):
    """Streams one blob to S3, hashing as it goes (see the module doc for the path).

    Memory: at most two parts (one filling, one uploading). The caller's buffer is
    copied in ``write()``, so it may be reused as soon as that returns.

    Failure semantics: a failed ``write()`` or ``commit()`` aborts the writer (the
    multipart upload is aborted, any temporary object deleted; later calls raise
    ``ValueError``) and raises ``ServiceUnavailable`` / ``PermissionDenied`` /
    ``S3Error``; ``StoreClosed`` if the store was closed. ``abort()`` never raises for
    a failed S3 request (an upload it could not abort is removed by ``cleanup_temp``).
    Used by one thread at a time; the store may abort it from another (``close()``).
    """

    def __init__(self, store: S3ObjectStore) -> None:
        self._store = store
        self._hasher = blake3.blake3()
        self._size = 0
        self._buf = bytearray()
        self._target = store.part_size
        self._temp_key = store._new_temp_key()
        self._upload_id: str | None = None
        self._parts: list[CompletedPartTypeDef] = []
        self._pending: Future[CompletedPartTypeDef] | None = None
        self._temp_object = False
        self._done = False
        self._lock = threading.RLock()
        store._register(self)

    # -- data path ---------------------------------------------------------------------

    def write(self, data: bytes | bytearray | memoryview) -> int:
        """Append ``data``; return ``len(data)`` in bytes. Hashes at once; uploads a part
        (in a pool thread) each time a part fills up."""
        with self._lock:
            self._check_writable()
            with memoryview(data) as raw:
                view = raw if raw.format == "B" and raw.ndim == 1 else raw.cast("B")
                n = len(view)
                try:
                    self._hasher.update(view)
                    pos = 0
                    while pos < n:
                        if len(self._buf) >= self._target:
                            self._ship_part()
                        take = min(n - pos, self._target - len(self._buf))
                        self._buf += view[pos : pos + take]
                        pos += take
                except BaseException as exc:
                    self._abort_locked()
                    self._store._raise_translated(exc, "upload a part of a blob")
            self._size += n
            return n

    def _ship_part(self) -> None:
        """Upload the full buffer as the next part (waiting for the previous one)."""
        store = self._store
        self._wait_pending()
        if self._upload_id is None:
            self._upload_id = store._create_upload(self._temp_key)
        number = len(self._parts) + 1
        if number > MAX_PARTS:
            raise S3Error(f"blob too large for one S3 multipart upload ({self._size} bytes)")
        body, self._buf = self._buf, bytearray()
        self._pending = store._pool().submit(
            store._upload_part, self._temp_key, self._upload_id, number, body
        )
        self._target = min(MAX_PART_SIZE, store.part_size << (number // 1000))

    def _wait_pending(self) -> None:
        pending, self._pending = self._pending, None
        if pending is not None:
            self._parts.append(pending.result())

    # -- completion --------------------------------------------------------------------

    def commit(self) -> BlobInfo:
        """Publish the blob under its BLAKE3 id (deduplicated) and return its info.
        ``created_at`` is the existing object's LastModified when deduplicated, else
        this machine's clock at commit."""
        with self._lock:
            self._check_writable()
            store = self._store
            try:
                small = self._upload_id is None
                info = self._commit_small() if small else self._commit_multipart()
            except BaseException as exc:
                self._abort_locked()
                store._raise_translated(exc, "commit a blob")
            self._done = True
            store._unregister(self)
            return info

    def _commit_small(self) -> BlobInfo:
        """One conditional PutObject (``If-None-Match: *``): new content costs one round
        trip. If the key exists (412, or 409 for a concurrent conditional write) a
        HeadObject compares sizes: equal is a dedup, different (a damaged blob) is
        replaced. A server that ignores the condition overwrites with identical bytes."""
        store = self._store
        content_id = self._hasher.hexdigest()
        key = store._blob_key(content_id)
        args: dict[str, Any] = {"Bucket": store.bucket, "Key": key,
                                "Body": bytes_like(self._buf),
                                "ContentType": "application/octet-stream"}  # fmt: skip
        try:
            store._client.put_object(IfNoneMatch="*", **args)
        except bexc.ClientError as exc:
            if error_code(exc)[1] not in (409, 412):
                raise
            existing = store._head(key)
            if existing is not None and existing[0] == self._size:
                self._buf = bytearray()
                return BlobInfo(content_id, self._size, existing[1])
            store._client.put_object(**args)
        self._buf = bytearray()
        return BlobInfo(content_id, self._size, time.time())

    def _commit_multipart(self) -> BlobInfo:
        store = self._store
        if self._buf:
            self._ship_part()
        self._wait_pending()
        assert self._upload_id is not None
        content_id = self._hasher.hexdigest()
        key = store._blob_key(content_id)
        existing = store._head(key)
        if existing is not None and existing[0] == self._size:
            store._abort_upload(self._temp_key, self._upload_id)
            self._upload_id = None
            return BlobInfo(content_id, self._size, existing[1])
        store._client.complete_multipart_upload(
            Bucket=store.bucket,
            Key=self._temp_key,
            UploadId=self._upload_id,
            MultipartUpload={"Parts": self._parts},
        )
        self._upload_id = None
        self._temp_object = True
        store._copy(self._temp_key, key, self._size)
        self._temp_object = False  # published: a failed delete must not fail the commit
        with contextlib.suppress(bexc.ClientError, bexc.BotoCoreError):  # cleanup_temp
            store._client.delete_object(Bucket=store.bucket, Key=self._temp_key)
        return BlobInfo(content_id, self._size, time.time())

    def abort(self) -> None:
        """Discard the blob: abort the multipart upload, delete a temporary object.
        Idempotent; a no-op after a successful ``commit()``."""
        with self._lock:
            self._abort_locked()

    def _abort_locked(self) -> None:
        if self._done:
            return
        self._done = True
        store = self._store
        pending, self._pending = self._pending, None
        if pending is not None:  # let the part upload finish before aborting the upload
            with contextlib.suppress(BaseException):
                pending.result()
        upload_id, self._upload_id = self._upload_id, None
        if upload_id is not None:
            with contextlib.suppress(Exception):
                store._abort_upload(self._temp_key, upload_id)
        if self._temp_object:
            with contextlib.suppress(Exception):
                store._client.delete_object(Bucket=store.bucket, Key=self._temp_key)
            self._temp_object = False
        self._buf = bytearray()
        store._unregister(self)

    def _check_writable(self) -> None:
        if self._store._closed:
            self._abort_locked()
            raise StoreClosed(f"object store {self._store.uri} is closed")
        if self._done:
            raise ValueError("blob writer is already committed or aborted")

    def __del__(self) -> None:
        # Last resort for a writer dropped without commit/abort (never in normal use).
        if not getattr(self, "_done", True):
            with contextlib.suppress(Exception):
                self._abort_locked()
