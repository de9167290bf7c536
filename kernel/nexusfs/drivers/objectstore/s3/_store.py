"""The S3 object store: blobs as immutable objects of one bucket, keyed by content id.

See the package doc (:mod:`nexusfs.drivers.objectstore.s3`) for the URI, the key
layout and the failure semantics. Invariants: a store owns one boto3 client and, once
a blob larger than one part is written, one thread pool (both released by
:meth:`S3ObjectStore.close`); every content id is validated before a key is built from
it, so no request ever names a key outside ``PREFIX/objects/`` or ``PREFIX/tmp/``; the
public methods raise only the kernel's typed errors (boto errors are translated by
:func:`~nexusfs.drivers.objectstore.s3._errors.translate`), while the private request
helpers that :class:`~nexusfs.drivers.objectstore.s3.S3BlobWriter` shares raise raw
boto errors for their caller to translate. Open writers are tracked (weakly) so that
``close()`` can abort them and ``cleanup_temp`` never removes a live writer's upload.
"""

from __future__ import annotations

import contextlib
import math
import re
import secrets
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import boto3
import botocore.exceptions as bexc
from botocore.config import Config

from nexusfs.abc import BlobInfo, Durability, ObjectStoreABC
from nexusfs.drivers.objectstore.local import validate_content_id
from nexusfs.drivers.objectstore.s3._common import (
    DEFAULT_COPY_PART_SIZE,
    DEFAULT_TEMP_GRACE,
    MAX_PART_SIZE,
    MAX_PARTS,
    MIN_PART_SIZE,
    WORKERS,
    bytes_like,
)
from nexusfs.drivers.objectstore.s3._errors import (
    NETWORK_ERRORS,
    bucket_error,
    error_code,
    is_invalid_range,
    is_missing,
    translate,
)
from nexusfs.drivers.objectstore.s3._uri import S3Location, parse_s3_uri
from nexusfs.drivers.objectstore.s3._writer import S3BlobWriter
from nexusfs.errors import MountError, NotFound, StoreClosed

if TYPE_CHECKING:
    from mypy_boto3_s3.client import S3Client
    from mypy_boto3_s3.type_defs import CompletedPartTypeDef, CopySourceTypeDef

__all__ = ["S3ObjectStore", "open_s3"]

_BLOB_KEY_RE = re.compile(r"([0-9a-f]{2})/([0-9a-f]{64})")
_TEMP_KEY_RE = re.compile(r"(\d{13})-[0-9a-f]{16}")

T = TypeVar("T")


class S3ObjectStore(ObjectStoreABC):
    """Blobs as objects in an S3 bucket (see the package doc).

    Build it from a URI with :func:`open_s3` / :meth:`from_uri`, or from a parsed
    :class:`S3Location`. Opening checks the bucket (HeadBucket) and removes temporary
    uploads older than ``temp_grace`` seconds. ``session`` replaces the default boto3
    session (the AWS env/config chain). ``copy_part_size`` and ``single_copy_max`` tune
    the server-side copy of large blobs (UploadPartCopy parts; the largest size copied
    by one CopyObject, 5 GiB).

    Raises ``MountError`` at open (see the package doc); ``ValueError`` for a bad
    durability. Thread-safe. Methods raise ``InvalidPath`` for a malformed content id,
    ``NotFound`` for a missing blob, ``StoreClosed`` after ``close()``.
    """

    def __init__(
        self,
        location: S3Location,
        durability: Durability | str = Durability.DEFERRED,
        *,
        session: boto3.session.Session | None = None,
        temp_grace: float = DEFAULT_TEMP_GRACE,
        copy_part_size: int = DEFAULT_COPY_PART_SIZE,
        single_copy_max: int = MAX_PART_SIZE,
    ) -> None:
        self.durability = Durability(durability)
        self.location = location
        self.uri = location.uri
        self.bucket = location.bucket
        self.part_size = location.part_size
        if not MIN_PART_SIZE <= self.part_size <= MAX_PART_SIZE:
            raise MountError(f"part_size must be between 5 MiB and 5 GiB, got {self.part_size}")
        if not MIN_PART_SIZE <= copy_part_size <= MAX_PART_SIZE:
            raise MountError(f"copy_part_size must be between 5 MiB and 5 GiB: {copy_part_size}")
        if not 0 <= single_copy_max <= MAX_PART_SIZE:
            raise MountError(f"single_copy_max must be between 0 and 5 GiB: {single_copy_max}")
        self._copy_part_size = copy_part_size
        self._single_copy_max = single_copy_max
        self._temp_grace = temp_grace
        base = location.prefix + "/" if location.prefix else ""
        self._objects = base + "objects/"
        self._tmp = base + "tmp/"
        self._lock = threading.Lock()
        self._writers: weakref.WeakValueDictionary[int, S3BlobWriter] = (
            weakref.WeakValueDictionary()
        )
        self._executor: ThreadPoolExecutor | None = None
        self._closed = False
        self._client = self._make_client(session)
        try:
            self._check_bucket()
        except BaseException:
            self._client.close()
            raise
        with contextlib.suppress(Exception):  # best effort: may lack ListMultipartUploads
            self.cleanup_temp(temp_grace)

    @classmethod
    def from_uri(
        cls, uri: str, durability: Durability | str = Durability.DEFERRED, **kwargs: Any
    ) -> S3ObjectStore:
        """Parse ``uri`` (:func:`parse_s3_uri`) and open the store."""
        return cls(parse_s3_uri(uri), durability, **kwargs)

    def __repr__(self) -> str:
        return f"S3ObjectStore({self.uri!r})"

    # -- opening -----------------------------------------------------------------------

    def _make_client(self, session: boto3.session.Session | None) -> S3Client:
        loc = self.location
        addressing = loc.addressing or ("path" if loc.endpoint else "auto")
        config = Config(
            retries={"total_max_attempts": loc.max_attempts, "mode": "standard"},
            connect_timeout=loc.connect_timeout,
            read_timeout=loc.read_timeout,
            max_pool_connections=2 * WORKERS,
            s3={"addressing_style": addressing},
        )
        try:
            if session is None:
                session = boto3.session.Session(profile_name=loc.profile)
            return session.client(
                "s3", endpoint_url=loc.endpoint, region_name=loc.region, config=config
            )
        except bexc.ProfileNotFound as exc:
            raise MountError(f"cannot open {self.uri}: AWS profile not found: {exc}") from exc
        except (bexc.BotoCoreError, ValueError) as exc:
            raise MountError(f"cannot open {self.uri}: {exc}") from exc

    def _check_bucket(self) -> None:
        """HeadBucket; ``MountError`` saying what to fix if the bucket is unusable."""
        try:
            self._client.head_bucket(Bucket=self.bucket)
        except (bexc.ClientError, bexc.BotoCoreError) as exc:
            where = self.location.endpoint or "AWS S3"
            raise bucket_error(exc, uri=self.uri, bucket=self.bucket, where=where) from exc

    # -- helpers -----------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise StoreClosed(f"object store {self.uri} is closed")

    def _blob_key(self, content_id: str) -> str:
        cid = validate_content_id(content_id)
        return f"{self._objects}{cid[:2]}/{cid}"

    def _new_temp_key(self) -> str:
        return f"{self._tmp}{int(time.time() * 1000):013d}-{secrets.token_hex(8)}"

    def _register(self, writer: S3BlobWriter) -> None:
        with self._lock:
            self._check_open()
            self._writers[id(writer)] = writer

    def _unregister(self, writer: S3BlobWriter) -> None:
        with self._lock:
            self._writers.pop(id(writer), None)

    def _pool(self) -> ThreadPoolExecutor:
        with self._lock:
            self._check_open()
            if self._executor is None:
                self._executor = ThreadPoolExecutor(WORKERS, thread_name_prefix="nexusfs-s3")
            return self._executor

    def _translate(self, exc: BaseException, action: str) -> BaseException:
        """The typed error for a failed S3 request (``exc`` itself if not from boto)."""
        return translate(exc, uri=self.uri, bucket=self.bucket, action=action)

    def _raise_translated(self, exc: BaseException, action: str) -> NoReturn:
        typed = self._translate(exc, action)
        if typed is exc:
            raise exc
        raise typed from exc

    def _call(self, action: str, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` on an open store, boto errors translated (:meth:`_translate`)."""
        self._check_open()
        try:
            return fn(*args)
        except (bexc.ClientError, bexc.BotoCoreError) as exc:
            self._raise_translated(exc, action)

    def _head(self, key: str) -> tuple[int, float] | None:
        """``(size, LastModified)`` of an object, or ``None`` if absent. Raw boto errors."""
        try:
            head = self._client.head_object(Bucket=self.bucket, Key=key)
        except bexc.ClientError as exc:
            if is_missing(exc):
                return None
            raise
        return int(head["ContentLength"]), head["LastModified"].timestamp()

    def _checksum_args(self) -> dict[str, Any]:
        """Explicit CRC32 checksums when botocore computes them by default (as s3transfer
        does): parts carry them, so CompleteMultipartUpload lists them, and a copy gets
        a fresh full-object CRC32 (which GetObject then verifies) rather than inheriting
        the temporary object's composite one."""
        if getattr(self._client.meta.config, "request_checksum_calculation", None) == (
            "when_supported"
        ):
            return {"ChecksumAlgorithm": "CRC32"}
        return {}

    def _create_upload(self, key: str) -> str:
        return self._client.create_multipart_upload(
            Bucket=self.bucket, Key=key, ContentType="application/octet-stream",
            **self._checksum_args(),
        )["UploadId"]  # fmt: skip

    def _upload_part(
        self, key: str, upload_id: str, number: int, body: bytearray
    ) -> CompletedPartTypeDef:
        """Pool-thread body: upload one part; raw boto errors propagate."""
        response = self._client.upload_part(
            Bucket=self.bucket, Key=key, UploadId=upload_id, PartNumber=number,
            Body=bytes_like(body), **self._checksum_args(),
        )  # fmt: skip
        part: CompletedPartTypeDef = {"PartNumber": number, "ETag": response["ETag"]}
        if "ChecksumCRC32" in response:
            part["ChecksumCRC32"] = response["ChecksumCRC32"]
        return part

    def _abort_upload(self, key: str, upload_id: str) -> None:
        try:
            self._client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
        except bexc.ClientError as exc:
            if error_code(exc)[0] != "NoSuchUpload":
                raise

    def _copy(self, src: str, dst: str, size: int) -> None:
        """Server-side copy ``src`` -> ``dst`` (one CopyObject, or UploadPartCopy ranges
        in parallel for objects above ``single_copy_max``). Raw boto errors."""
        source: CopySourceTypeDef = {"Bucket": self.bucket, "Key": src}
        if size <= self._single_copy_max:
            self._client.copy_object(
                Bucket=self.bucket, Key=dst, CopySource=source, **self._checksum_args()
            )
            return
        step = min(MAX_PART_SIZE, max(self._copy_part_size, math.ceil(size / MAX_PARTS)))
        upload_id = self._create_upload(dst)
        try:
            futures = [
                self._pool().submit(
                    self._client.upload_part_copy,
                    Bucket=self.bucket,
                    Key=dst,
                    UploadId=upload_id,
                    PartNumber=n + 1,
                    CopySource=source,
                    CopySourceRange=f"bytes={a}-{min(a + step, size) - 1}",
                )
                for n, a in enumerate(range(0, size, step))
            ]
            parts: list[CompletedPartTypeDef] = []
            for n, fut in enumerate(futures):
                result = fut.result()["CopyPartResult"]
                part: CompletedPartTypeDef = {"PartNumber": n + 1, "ETag": result["ETag"]}
                if "ChecksumCRC32" in result:
                    part["ChecksumCRC32"] = result["ChecksumCRC32"]
                parts.append(part)
            self._client.complete_multipart_upload(
                Bucket=self.bucket, Key=dst, UploadId=upload_id,
                MultipartUpload={"Parts": parts},
            )  # fmt: skip
        except BaseException:
            with contextlib.suppress(Exception):
                self._abort_upload(dst, upload_id)
            raise

    # -- the interface -----------------------------------------------------------------

    def open_writer(self) -> S3BlobWriter:
        """Start a streaming write; ``StoreClosed`` after ``close()``."""
        self._check_open()
        return S3BlobWriter(self)

    def _get_body(self, key: str, offset: int, end: int | None) -> Any | None:
        """GetObject of ``[offset, end)``; ``None`` if ``offset`` is at or past the end
        of an existing object. Raw boto errors."""
        kwargs: dict[str, Any] = {}
        if offset or end is not None:
            last = "" if end is None else str(end - 1)
            kwargs["Range"] = f"bytes={offset}-{last}"
        try:
            return self._client.get_object(Bucket=self.bucket, Key=key, **kwargs)["Body"]
        except bexc.ClientError as exc:
            if is_invalid_range(exc):
                return None
            raise

    def read(self, content_id: str, offset: int = 0, size: int | None = None) -> bytes:
        """Bytes ``[offset, offset+size)`` (clamped to the blob) by one ranged GetObject;
        ``NotFound`` if absent. A transfer cut mid-body is retried up to
        ``max_attempts`` times, then raises ``ServiceUnavailable``."""
        key = self._blob_key(content_id)
        _check_range(offset, size)
        if size == 0:
            self.info(content_id)
            return b""
        end = None if size is None else offset + size
        for attempt in range(1, self.location.max_attempts + 1):
            body = self._call("read a blob", self._get_body, key, offset, end)
            if body is None:
                return b""
            try:
                with contextlib.closing(body):
                    data: bytes = body.read()
                    return data
            except NETWORK_ERRORS as exc:
                if attempt >= self.location.max_attempts:
                    self._raise_translated(exc, "read a blob")
        raise AssertionError("unreachable")  # pragma: no cover

    def iter_chunks(
        self,
        content_id: str,
        offset: int = 0,
        size: int | None = None,
        chunk_size: int = 1 << 20,
    ) -> Iterator[bytes]:
        """Stream a range from one GetObject in chunks of at most ``chunk_size``; the id
        and range are checked now, ``NotFound`` is raised on the first ``next()``. A
        transfer cut mid-body resumes from the last byte delivered (ranged GET), up to
        ``max_attempts`` times in a row, then ``ServiceUnavailable``."""
        key = self._blob_key(content_id)
        _check_range(offset, size)
        if chunk_size <= 0:
            raise ValueError(f"chunk_size must be > 0, got {chunk_size}")
        return self._iter_chunks(key, offset, size, chunk_size)

    def _iter_chunks(
        self, key: str, offset: int, size: int | None, chunk_size: int
    ) -> Iterator[bytes]:
        end = None if size is None else offset + size
        pos = offset
        failures = 0
        if size == 0:
            if self._call("read a blob", self._head, key) is None:
                raise NotFound(f"{self.uri}: cannot read a blob: not found")
            return
        while end is None or pos < end:
            body = self._call("read a blob", self._get_body, key, pos, end)
            if body is None:
                return
            try:
                with contextlib.closing(body):
                    while chunk := body.read(chunk_size):
                        pos += len(chunk)
                        failures = 0
                        yield chunk
                return
            except NETWORK_ERRORS as exc:
                failures += 1
                if failures >= self.location.max_attempts:
                    self._raise_translated(exc, "read a blob")

    def info(self, content_id: str) -> BlobInfo:
        """Size and LastModified (the time S3 stored it) of a blob; ``NotFound``."""
        key = self._blob_key(content_id)
        head = self._call("stat a blob", self._head, key)
        if head is None:
            raise NotFound(f"blob {content_id} not found in {self.uri}")
        return BlobInfo(content_id, head[0], head[1])

    def exists(self, content_id: str) -> bool:
        """Whether the blob is present (one HeadObject)."""
        key = self._blob_key(content_id)
        return self._call("stat a blob", self._head, key) is not None

    def delete(self, content_id: str) -> bool:
        """Delete a blob; ``False`` if it was absent (HeadObject, then DeleteObject: a
        concurrent delete of the same blob may make both callers answer ``True``)."""
        key = self._blob_key(content_id)

        def run() -> bool:
            if self._head(key) is None:
                return False
            self._client.delete_object(Bucket=self.bucket, Key=key)
            return True

        return self._call("delete a blob", run)

    def list(self) -> Iterator[str]:
        """Yield every committed blob id (ListObjectsV2 under ``objects/``, in key order;
        temporary uploads and foreign keys are skipped). Blobs committed or deleted
        during the listing may or may not appear."""
        self._check_open()
        return self._list()

    def _list(self) -> Iterator[str]:
        pages = self._client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=self._objects
        )
        n = len(self._objects)
        try:
            for page in pages:
                for obj in page.get("Contents", []):
                    match = _BLOB_KEY_RE.fullmatch(obj["Key"][n:])
                    if match and match.group(2).startswith(match.group(1)):
                        yield match.group(2)
        except (bexc.ClientError, bexc.BotoCoreError) as exc:
            self._raise_translated(exc, "list blobs")

    def flush(self) -> None:
        """Nothing to do: every committed blob is already durable (S3 acknowledged it)."""

    def close(self) -> None:
        """Abort the uploads of writers still open (their later calls raise
        ``StoreClosed``), stop the upload threads and release the connections.
        Idempotent; never raises for a failed S3 request."""
        with self._lock:
            if self._closed:
                return
            writers = list(self._writers.values())
        for writer in writers:
            with contextlib.suppress(Exception):
                writer.abort()
        with self._lock:
            self._closed = True
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=True)
        with contextlib.suppress(Exception):
            self._client.close()

    # -- S3 extras ---------------------------------------------------------------------

    def cleanup_temp(self, max_age: float | None = None) -> int:
        """Abort multipart uploads and delete temporary objects under ``tmp/`` idle for
        more than ``max_age`` seconds (default: ``temp_grace``; ``0``: every one not
        owned by a live writer of this store): started that long ago (the time in the
        key, immune to servers' odd ``Initiated`` dates) and with no part or object
        written since. Returns how many were removed. Raises like the other methods; a
        writer in another process idle for ``max_age`` loses its upload (its commit
        then fails), as with the local store."""
        age = self._temp_grace if max_age is None else max_age
        cutoff = time.time() - age
        with self._lock:
            self._check_open()
            live = {w._temp_key for w in list(self._writers.values())}
        n = len(self._tmp)

        def stale(key: str, *modified: float) -> bool:
            match = _TEMP_KEY_RE.fullmatch(key[n:])
            return (match is not None and key not in live
                    and max((int(match.group(1)) / 1000, *modified)) <= cutoff)  # fmt: skip

        def run() -> int:
            removed = 0
            uploads = self._client.get_paginator("list_multipart_uploads")
            for upage in uploads.paginate(Bucket=self.bucket, Prefix=self._tmp):
                for up in upage.get("Uploads", []):
                    key, upload_id = up["Key"], up["UploadId"]
                    if not stale(key):
                        continue
                    parts = self._client.get_paginator("list_parts").paginate(
                        Bucket=self.bucket, Key=key, UploadId=upload_id
                    )
                    written = [p["LastModified"].timestamp() for page in parts
                               for p in page.get("Parts", [])]  # fmt: skip
                    if stale(key, *written):
                        self._abort_upload(key, upload_id)
                        removed += 1
            objects = self._client.get_paginator("list_objects_v2")
            for opage in objects.paginate(Bucket=self.bucket, Prefix=self._tmp):
                for obj in opage.get("Contents", []):
                    if stale(obj["Key"], obj["LastModified"].timestamp()):
                        self._client.delete_object(Bucket=self.bucket, Key=obj["Key"])
                        removed += 1
            return removed

        return self._call("clean up temporary uploads", run)

    def key_of(self, content_id: str) -> str:
        """The object key of a blob (whether or not it exists)."""
        return self._blob_key(content_id)


def _check_range(offset: int, size: int | None) -> None:
    """``ValueError`` for a negative offset or size (``None``: to the end)."""
    if offset < 0:
        raise ValueError(f"offset must be >= 0, got {offset}")
    if size is not None and size < 0:
        raise ValueError(f"size must be >= 0 or None, got {size}")


def open_s3(uri: str, *, durability: Durability | str = Durability.DEFERRED) -> S3ObjectStore:
    """The ``objectstore.s3`` driver opener: :meth:`S3ObjectStore.from_uri`. Raises
    ``MountError`` for a bad URI or an unusable bucket (see the package doc)."""
    return S3ObjectStore.from_uri(uri, durability)
