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
:class:`~nexusfs.errors.NotFound`, a refused request
:class:`~nexusfs.errors.PermissionDenied`, a network failure or 5xx answer that
outlived the retries :class:`~nexusfs.errors.ServiceUnavailable`, anything else
:class:`S3Error` (an ``OSError``). Thread-safe; not fork-safe (open the store in the
process that uses it).

Package layout (the modules behind this facade are private; import from here):
``_uri`` parses URIs into :class:`S3Location`, ``_store`` is :class:`S3ObjectStore`
and :func:`open_s3`, ``_writer`` is :class:`S3BlobWriter`, ``_errors`` maps boto errors
to the typed ones above (:class:`S3Error`), ``_common`` holds S3's limits and the
defaults. The driver entry point is ``nexusfs.drivers.objectstore.s3:open_s3``.
"""

from __future__ import annotations

try:  # the one extra dependency; the driver registry surfaces this as a ConfigError
    import boto3  # noqa: F401
    import botocore.config
    import botocore.exceptions  # noqa: F401
except ImportError as exc:
    raise ImportError(
        f"the s3:// object store needs boto3 (pip install 'nexusfs[s3]'): {exc}"
    ) from exc

from nexusfs.drivers.objectstore.s3._common import (
    DEFAULT_COPY_PART_SIZE,
    DEFAULT_MAX_ATTEMPTS,
    DEFAULT_PART_SIZE,
    DEFAULT_TEMP_GRACE,
    MAX_PART_SIZE,
    MAX_PARTS,
    MIN_PART_SIZE,
)
from nexusfs.drivers.objectstore.s3._errors import S3Error
from nexusfs.drivers.objectstore.s3._store import S3ObjectStore, open_s3
from nexusfs.drivers.objectstore.s3._uri import S3Location, parse_s3_uri
from nexusfs.drivers.objectstore.s3._writer import S3BlobWriter

__all__ = [
    "DEFAULT_COPY_PART_SIZE",
    "DEFAULT_MAX_ATTEMPTS",
    "DEFAULT_PART_SIZE",
    "DEFAULT_TEMP_GRACE",
    "MAX_PARTS",
    "MAX_PART_SIZE",
    "MIN_PART_SIZE",
    "S3BlobWriter",
    "S3Error",
    "S3Location",
    "S3ObjectStore",
    "open_s3",
    "parse_s3_uri",
]
