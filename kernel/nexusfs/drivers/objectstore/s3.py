"""A content-addressed object store in an S3 bucket (AWS S3 or any S3-compatible server).

URI: ``s3://BUCKET[/PREFIX][?OPTION=VALUE&...]``. Options (all optional):

* ``endpoint``: ``http(s)://host[:port]`` of an S3-compatible server (MinIO, Ceph, moto)
* ``region``: signing region (e.g. ``us-east-1``)
* ``profile``: a profile of the shared AWS config/credentials files
* ``addressing``: ``path`` | ``virtual`` | ``auto`` (default ``path`` with an
  ``endpoint``, else ``auto``)
* ``part_size``: multipart part size in bytes, or with a ``KiB``/``MiB``/``GiB`` suffix
  (5 MiB to 5 GiB; default 8 MiB)
* ``max_attempts``: total attempts per request, botocore "standard" retries (default 5)
* ``connect_timeout`` / ``read_timeout``: seconds (defaults 10 and 60)

Everything else comes from the standard AWS chain, which the URI options override:
credentials from ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``/``AWS_SESSION_TOKEN``,
``AWS_PROFILE``, ``~/.aws/credentials`` and ``~/.aws/config``, SSO or an instance role;
region from ``AWS_REGION``/``AWS_DEFAULT_REGION``; endpoint from ``AWS_ENDPOINT_URL_S3``
or ``AWS_ENDPOINT_URL``. Credentials never go in the URI (a mount's URI is persisted in
the metastore and shown by ``nexus mounts``): ``s3://key:secret@bucket`` is refused.

Layout under ``PREFIX/``::

    objects/<id[:2]>/<id>      one immutable object per blob, keyed by its BLAKE3 id
    tmp/<ms>-<random>          multipart uploads in progress (<ms>: start, Unix ms)

Invariants:

* Content ids are the BLAKE3 hex digests that :class:`LocalObjectStore` computes (the
  same bytes get the same id in every store) and are validated before any key is built.
* An object under ``objects/`` is only ever written whole, by one PutObject, one
  CopyObject or one completed multipart copy, with bytes that hash to its key; S3
  makes each of these atomic, so a blob is complete or absent. Identical content is
  stored once: a commit whose key already holds an object of the same size stores
  nothing more (concurrent writers of the same bytes may both write it: harmless).
* Write path: a blob of at most one part is buffered, hashed and sent by one
  conditional PutObject (``If-None-Match: *``) straight to its content key. A larger
  one is streamed as a multipart upload to a temporary key while it is hashed (at most
  two parts in memory: one being filled, one uploading in a pool thread); ``commit()``
  completes it, copies it server-side to its content key (CopyObject up to 5 GiB,
  parallel UploadPartCopy beyond) and deletes the temporary object, or, if the content
  key already exists, aborts the upload.
* Durability: S3 acknowledges a PUT/copy only once the object is stored redundantly, so
  a committed blob survives power loss with either durability mode; ``flush()`` has
  nothing to do.

Failure semantics: ``abort()``, an exception inside a ``with`` block, a failed
``write()``/``commit()`` and :meth:`S3ObjectStore.close` abort the multipart upload
(AbortMultipartUpload) and delete any temporary object, leaving nothing visible. A
process crash can leave an incomplete multipart upload (invisible, but stored) or a
temporary object under ``tmp/``: :meth:`S3ObjectStore.cleanup_temp` removes them once
older than ``temp_grace`` (run at open and by ``nexus gc``); a bucket lifecycle rule
``AbortIncompleteMultipartUpload`` is a good backstop. Errors: a malformed URI or option,
a bucket that does not exist, is unreachable or refuses the credentials raise
:class:`~nexusfs.errors.MountError` at open; afterwards a missing blob raises
:class:`~nexusfs.errors.NotFound`, a refused request :class:`~nexusfs.errors.
PermissionDenied`, a network failure or 5xx answer that outlived the retries
:class:`~nexusfs.errors.ServiceUnavailable`, anything else :class:`S3Error` (an
``OSError``). Thread-safe; not fork-safe (open the store in the process that uses it).
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
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, NoReturn, TypeVar, cast
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit

import blake3

try:
    import boto3
    import botocore.exceptions as bexc
    from botocore.config import Config
except ImportError as exc:  # surfaced by the driver registry as a ConfigError
    raise ImportError(
        f"the s3:// object store needs boto3 (pip install 'nexusfs[s3]'): {exc}"
    ) from exc

from nexusfs.abc import BlobInfo, BlobWriter, Durability, ObjectStoreABC
from nexusfs.drivers.objectstore.local import validate_content_id
from nexusfs.errors import (
    MountError,
    NexusError,
    NotFound,
    PermissionDenied,
    ServiceUnavailable,
    StoreClosed,
)

if TYPE_CHECKING:
    from mypy_boto3_s3.client import S3Client
    from mypy_boto3_s3.type_defs import CompletedPartTypeDef, CopySourceTypeDef

__all__ = [
    "DEFAULT_PART_SIZE",
    "MAX_PART_SIZE",
    "MIN_PART_SIZE",
    "S3BlobWriter",
    "S3Error",
    "S3Location",
    "S3ObjectStore",
    "open_s3",
    "parse_s3_uri",
]

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30
#: S3's smallest part (all but the last) and largest part / single CopyObject.
MIN_PART_SIZE = 5 * MiB
MAX_PART_SIZE = 5 * GiB
DEFAULT_PART_SIZE = 8 * MiB
#: Parts per multipart upload allowed by S3; the part size doubles every 1000 parts so
#: that a blob up to S3's 5 TiB object limit fits.
MAX_PARTS = 10_000
DEFAULT_COPY_PART_SIZE = 512 * MiB
DEFAULT_MAX_ATTEMPTS = 5
DEFAULT_TEMP_GRACE = 3600.0
_WORKERS = 8

_BUCKET_RE = re.compile(r"[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]")
_REGION_RE = re.compile(r"[a-z0-9][a-z0-9\-]{0,62}")
_PROFILE_RE = re.compile(r"[A-Za-z0-9_.\-]{1,128}")
_SIZE_RE = re.compile(r"(\d+)(KiB|MiB|GiB)?")
_BLOB_KEY_RE = re.compile(r"([0-9a-f]{2})/([0-9a-f]{64})")
_TEMP_KEY_RE = re.compile(r"(\d{13})-[0-9a-f]{16}")
_OPTIONS = frozenset(
    {"endpoint", "region", "profile", "addressing", "part_size", "max_attempts",
     "connect_timeout", "read_timeout"}
)  # fmt: skip
_TRANSIENT = frozenset(
    {"InternalError", "ServiceUnavailable", "SlowDown", "RequestTimeout", "Throttling",
     "ThrottlingException", "RequestLimitExceeded", "BandwidthLimitExceeded",
     "OperationAborted", "PriorRequestNotComplete"}
)  # fmt: skip
_DENIED = frozenset(
    {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken",
     "InvalidToken", "AllAccessDisabled", "AccountProblem"}
)  # fmt: skip
_CREDENTIAL_ERRORS = (
    bexc.NoCredentialsError,
    bexc.PartialCredentialsError,
    bexc.CredentialRetrievalError,
    bexc.ProfileNotFound,
)
_NETWORK_ERRORS = (bexc.ConnectionError, bexc.HTTPClientError, bexc.IncompleteReadError)

T = TypeVar("T")


class S3Error(NexusError, OSError):
    """An S3 request failed for a reason that is neither a missing blob, a refusal nor
    a transient failure (the message carries S3's error code and text)."""

    code = "s3_error"


# ----------------------------------------------------------------------------- URIs


@dataclass(frozen=True)
class S3Location:
    """A parsed ``s3://`` URI: bucket, key prefix (no leading/trailing ``/``) and the
    client options. :attr:`uri` is the canonical form (options sorted)."""

    bucket: str
    prefix: str = ""
    endpoint: str | None = None
    region: str | None = None
    profile: str | None = None
    addressing: Literal["path", "virtual", "auto"] | None = None
    part_size: int = DEFAULT_PART_SIZE
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    connect_timeout: float = 10.0
    read_timeout: float = 60.0
    options: dict[str, str] = field(default_factory=dict, compare=False)

    @property
    def uri(self) -> str:
        path = "/" + quote(self.prefix) if self.prefix else ""
        query = "?" + urlencode(sorted(self.options.items())) if self.options else ""
        return f"s3://{self.bucket}{path}{query}"


def _bad(uri: str, why: str) -> NoReturn:
    raise MountError(f"invalid S3 URI {uri!r}: {why}")


def _number(uri: str, name: str, text: str, low: float, high: float) -> float:
    try:
        value = float(text)
    except ValueError:
        _bad(uri, f"{name} must be a number of seconds, got {text!r}")
    if not low < value <= high:  # also rejects NaN
        _bad(uri, f"{name} must be > {low:g} and <= {high:g}, got {text!r}")
    return value


def _part_size(uri: str, text: str) -> int:
    match = _SIZE_RE.fullmatch(text)
    if match is None:
        _bad(uri, f"part_size must be a byte count like 8388608 or 8MiB, got {text!r}")
    value = int(match.group(1)) * {None: 1, "KiB": KiB, "MiB": MiB, "GiB": GiB}[match.group(2)]
    if not MIN_PART_SIZE <= value <= MAX_PART_SIZE:
        _bad(uri, f"part_size must be between 5MiB and 5GiB (S3's limits), got {text!r}")
    return value


def parse_s3_uri(uri: str) -> S3Location:
    """Parse and validate ``s3://bucket[/prefix][?options]`` (see the module doc).

    Raises ``MountError`` naming the problem: not ``s3://``, credentials or a port in
    the authority, a missing or malformed bucket name (S3 rules: 3-63 characters of
    ``a-z0-9.-``), an empty, ``.`` or ``..`` prefix segment, a fragment, an unknown,
    repeated or out-of-range option."""
    if not isinstance(uri, str):
        raise MountError(f"S3 URI must be a string, got {type(uri).__name__}")
    parts = urlsplit(uri)
    if parts.scheme.lower() != "s3":
        _bad(uri, "the scheme must be s3://")
    if "@" in parts.netloc:
        _bad(uri, "credentials do not belong in the URI (it is stored with the mount); "
                  "use AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE or ?profile=")
    bucket = parts.netloc
    if not bucket:
        _bad(uri, "no bucket (expected s3://bucket/prefix)")
    if _BUCKET_RE.fullmatch(bucket) is None or ".." in bucket:
        _bad(uri, f"{bucket!r} is not a valid bucket name (3-63 of a-z 0-9 . -)")
    if parts.fragment:
        _bad(uri, "a fragment (#...) is not allowed")
    prefix = unquote(parts.path).strip("/")
    if prefix and any(seg in ("", ".", "..") for seg in prefix.split("/")):
        _bad(uri, f"prefix {prefix!r} has an empty, '.' or '..' segment")
    if len(prefix.encode()) > 512:
        _bad(uri, "prefix is longer than 512 bytes")
    try:
        pairs = parse_qsl(parts.query, keep_blank_values=True, strict_parsing=bool(parts.query))
    except ValueError:
        _bad(uri, f"malformed query {parts.query!r} (expected option=value&...)")
    options: dict[str, str] = {}
    for name, value in pairs:
        if name not in _OPTIONS:
            _bad(uri, f"unknown option {name!r} (known: {', '.join(sorted(_OPTIONS))})")
        if name in options:
            _bad(uri, f"option {name!r} is given twice")
        options[name] = value
    kw: dict[str, Any] = {}
    if "endpoint" in options:
        ep = urlsplit(options["endpoint"])
        if ep.scheme not in ("http", "https") or not ep.hostname or ep.query or ep.fragment:
            _bad(uri, f"endpoint must be http(s)://host[:port], got {options['endpoint']!r}")
        try:
            ep.port  # noqa: B018 - validates the port
        except ValueError:
            _bad(uri, f"endpoint has an invalid port: {options['endpoint']!r}")
        kw["endpoint"] = options["endpoint"].rstrip("/")
    if "region" in options:
        if _REGION_RE.fullmatch(options["region"]) is None:
            _bad(uri, f"region {options['region']!r} is not a region name like us-east-1")
        kw["region"] = options["region"]
    if "profile" in options:
        if _PROFILE_RE.fullmatch(options["profile"]) is None:
            _bad(uri, f"profile {options['profile']!r} is not a valid profile name")
        kw["profile"] = options["profile"]
    if "addressing" in options:
        if options["addressing"] not in ("path", "virtual", "auto"):
            _bad(uri, f"addressing must be path, virtual or auto, got {options['addressing']!r}")
        kw["addressing"] = options["addressing"]
    if "part_size" in options:
        kw["part_size"] = _part_size(uri, options["part_size"])
    if "max_attempts" in options:
        text = options["max_attempts"]
        if not text.isdigit() or not 1 <= int(text) <= 20:
            _bad(uri, f"max_attempts must be an integer from 1 to 20, got {text!r}")
        kw["max_attempts"] = int(text)
    for name in ("connect_timeout", "read_timeout"):
        if name in options:
            kw[name] = _number(uri, name, options[name], 0.0, 3600.0)
    return S3Location(bucket, prefix, options=options, **kw)


# --------------------------------------------------------------------------- errors


def _error_code(exc: bexc.ClientError) -> tuple[str, int]:
    error = exc.response.get("Error", {})
    meta = exc.response.get("ResponseMetadata", {})
    return str(error.get("Code", "")), int(meta.get("HTTPStatusCode", 0) or 0)


def _is_missing(exc: BaseException) -> bool:
    if not isinstance(exc, bexc.ClientError):
        return False
    code, status = _error_code(exc)
    return code in ("NoSuchKey", "NotFound", "404") or (status == 404 and code != "NoSuchBucket")


def _is_invalid_range(exc: BaseException) -> bool:
    return isinstance(exc, bexc.ClientError) and (
        _error_code(exc)[0] == "InvalidRange" or _error_code(exc)[1] == 416
    )


# -------------------------------------------------------------------------- writer


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
                                "Body": _bytes_like(self._buf),
                                "ContentType": "application/octet-stream"}  # fmt: skip
        try:
            store._client.put_object(IfNoneMatch="*", **args)
        except bexc.ClientError as exc:
            if _error_code(exc)[1] not in (409, 412):
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


# --------------------------------------------------------------------------- store


class S3ObjectStore(ObjectStoreABC):
    """Blobs as objects in an S3 bucket (see the module docstring).

    Build it from a URI with :func:`open_s3` / :meth:`from_uri`, or from a parsed
    :class:`S3Location`. Opening checks the bucket (HeadBucket) and removes temporary
    uploads older than ``temp_grace`` seconds. ``session`` replaces the default boto3
    session (the AWS env/config chain). ``copy_part_size`` and ``single_copy_max`` tune
    the server-side copy of large blobs (UploadPartCopy parts; the largest size copied
    by one CopyObject, 5 GiB).

    Raises ``MountError`` at open (see the module doc); ``ValueError`` for a bad
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
            max_pool_connections=2 * _WORKERS,
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
        where = self.location.endpoint or "AWS S3"
        try:
            self._client.head_bucket(Bucket=self.bucket)
        except bexc.ClientError as exc:
            code, status = _error_code(exc)
            if status == 404 or code in ("NoSuchBucket", "NotFound"):
                why = f"bucket {self.bucket!r} does not exist at {where}"
            elif status in (401, 403) or code in _DENIED:
                why = (f"access to bucket {self.bucket!r} denied: check the credentials "
                       "(AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE) and the "
                       "bucket policy")  # fmt: skip
            elif status == 301 or code == "PermanentRedirect":
                headers = exc.response.get("ResponseMetadata", {}).get("HTTPHeaders", {})
                region = headers.get("x-amz-bucket-region", "another region")
                why = f"bucket {self.bucket!r} is in {region}: add ?region={region}"
            else:
                why = f"HeadBucket failed: {code or status}: {exc}"
            raise MountError(f"cannot open {self.uri}: {why}") from exc
        except _CREDENTIAL_ERRORS as exc:
            raise MountError(
                f"cannot open {self.uri}: no usable AWS credentials ({exc}); set "
                "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, AWS_PROFILE, or ?profile="
            ) from exc
        except bexc.BotoCoreError as exc:
            raise MountError(f"cannot open {self.uri}: cannot reach {where}: {exc}") from exc

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
                self._executor = ThreadPoolExecutor(_WORKERS, thread_name_prefix="nexusfs-s3")
            return self._executor

    def _translate(self, exc: BaseException, action: str) -> BaseException:
        """The typed error for a failed S3 request (``exc`` itself if not from boto)."""
        what = f"{self.uri}: cannot {action}"
        if isinstance(exc, bexc.ClientError):
            code, status = _error_code(exc)
            message = exc.response.get("Error", {}).get("Message", "")
            if code == "NoSuchBucket":
                return MountError(f"{what}: bucket {self.bucket!r} no longer exists")
            if _is_missing(exc):
                return NotFound(f"{what}: not found")
            if status in (401, 403) or code in _DENIED:
                return PermissionDenied(f"{what}: {code or status} {message}".rstrip())
            if status >= 500 or code in _TRANSIENT:
                return ServiceUnavailable(f"{what}: {code or status} {message}".rstrip())
            return S3Error(f"{what}: {code or status} {message}".rstrip())
        if isinstance(exc, _NETWORK_ERRORS):
            return ServiceUnavailable(f"{what}: {exc}")
        if isinstance(exc, _CREDENTIAL_ERRORS):
            return PermissionDenied(f"{what}: {exc}")
        if isinstance(exc, bexc.BotoCoreError):
            return S3Error(f"{what}: {exc}")
        return exc

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
            if _is_missing(exc):
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
            Body=_bytes_like(body), **self._checksum_args(),
        )  # fmt: skip
        part: CompletedPartTypeDef = {"PartNumber": number, "ETag": response["ETag"]}
        if "ChecksumCRC32" in response:
            part["ChecksumCRC32"] = response["ChecksumCRC32"]
        return part

    def _abort_upload(self, key: str, upload_id: str) -> None:
        try:
            self._client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
        except bexc.ClientError as exc:
            if _error_code(exc)[0] != "NoSuchUpload":
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
                    Bucket=self.bucket, Key=dst, UploadId=upload_id, PartNumber=n + 1,
                    CopySource=source, CopySourceRange=f"bytes={a}-{min(a + step, size) - 1}",
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
            if _is_invalid_range(exc):
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
            except _NETWORK_ERRORS as exc:
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
            except _NETWORK_ERRORS as exc:
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


def _bytes_like(buf: bytearray) -> bytes:
    """``buf`` as a request body without copying it: botocore sends (and checksums) any
    bytes-like object; its type stubs only name ``bytes``."""
    return cast(bytes, buf)


def _check_range(offset: int, size: int | None) -> None:
    if offset < 0:
        raise ValueError(f"offset must be >= 0, got {offset}")
    if size is not None and size < 0:
        raise ValueError(f"size must be >= 0 or None, got {size}")


def open_s3(uri: str, *, durability: Durability | str = Durability.DEFERRED) -> S3ObjectStore:
    """The ``objectstore.s3`` driver opener: :meth:`S3ObjectStore.from_uri`. Raises
    ``MountError`` for a bad URI or an unusable bucket (see the module doc)."""
    return S3ObjectStore.from_uri(uri, durability)
