"""Limits and defaults of the S3 object store, and the tiny helpers its modules share.

The sizes are S3's documented limits (a part other than the last: 5 MiB to 5 GiB; at
most 10,000 parts per multipart upload; one CopyObject copies at most 5 GiB), so any
value inside them is one every S3-compatible server accepts. Invariants: this module
talks to nobody, holds no state and imports neither boto3 nor a sibling module, so every
other module of the package may import it.
"""

from __future__ import annotations

from typing import cast

__all__ = [
    "DEFAULT_COPY_PART_SIZE",
    "DEFAULT_MAX_ATTEMPTS",
    "DEFAULT_PART_SIZE",
    "DEFAULT_TEMP_GRACE",
    "MAX_PARTS",
    "MAX_PART_SIZE",
    "MIN_PART_SIZE",
    "WORKERS",
    "GiB",
    "KiB",
    "MiB",
    "bytes_like",
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
#: Threads of a store's upload pool (part uploads and parallel UploadPartCopy).
WORKERS = 8


def bytes_like(buf: bytearray) -> bytes:
    """``buf`` as a request body without copying it: botocore sends (and checksums) any
    bytes-like object; its type stubs only name ``bytes``. Never fails."""
    return cast(bytes, buf)
