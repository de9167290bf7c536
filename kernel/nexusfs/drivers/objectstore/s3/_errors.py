"""How failed S3 requests become the kernel's typed errors.

botocore reports failures as ``ClientError`` (an answer with an S3 error code and an
HTTP status) or one of its ``BotoCoreError`` subclasses (no usable answer: network,
credentials, a malformed response). This module classifies them. Invariants: the
mapping is total and pure (no I/O, no state): a missing object is
:class:`~nexusfs.errors.NotFound`, a refusal :class:`~nexusfs.errors.PermissionDenied`,
a network failure or 5xx / throttling answer :class:`~nexusfs.errors.ServiceUnavailable`,
a bucket gone or unusable at open :class:`~nexusfs.errors.MountError`, anything else
from boto :class:`S3Error`; an exception not raised by boto is returned unchanged.
"""

from __future__ import annotations

import botocore.exceptions as bexc

from nexusfs.errors import (
    MountError,
    NexusError,
    NotFound,
    PermissionDenied,
    ServiceUnavailable,
)

__all__ = [
    "CREDENTIAL_ERRORS",
    "DENIED",
    "NETWORK_ERRORS",
    "TRANSIENT",
    "S3Error",
    "bucket_error",
    "error_code",
    "is_invalid_range",
    "is_missing",
    "translate",
]

#: Error codes of answers worth retrying later (the server is overloaded or restarting).
TRANSIENT = frozenset(
    {"InternalError", "ServiceUnavailable", "SlowDown", "RequestTimeout", "Throttling",
     "ThrottlingException", "RequestLimitExceeded", "BandwidthLimitExceeded",
     "OperationAborted", "PriorRequestNotComplete"}
)  # fmt: skip
#: Error codes of refusals (bad, expired or unauthorised credentials).
DENIED = frozenset(
    {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken",
     "InvalidToken", "AllAccessDisabled", "AccountProblem"}
)  # fmt: skip
#: botocore errors meaning "no usable credentials" (all are ``BotoCoreError``).
CREDENTIAL_ERRORS = (
    bexc.NoCredentialsError,
    bexc.PartialCredentialsError,
    bexc.CredentialRetrievalError,
    bexc.ProfileNotFound,
)
#: botocore errors meaning the connection failed or was cut (all are ``BotoCoreError``).
NETWORK_ERRORS = (bexc.ConnectionError, bexc.HTTPClientError, bexc.IncompleteReadError)


class S3Error(NexusError, OSError):
    """An S3 request failed for a reason that is neither a missing blob, a refusal nor
    a transient failure (the message carries S3's error code and text)."""

    code = "s3_error"


def error_code(exc: bexc.ClientError) -> tuple[str, int]:
    """``(S3 error code, HTTP status)`` of an answer; ``""`` / ``0`` where absent."""
    error = exc.response.get("Error", {})
    meta = exc.response.get("ResponseMetadata", {})
    return str(error.get("Code", "")), int(meta.get("HTTPStatusCode", 0) or 0)


def is_missing(exc: BaseException) -> bool:
    """Whether ``exc`` says the object (not the bucket) does not exist."""
    if not isinstance(exc, bexc.ClientError):
        return False
    code, status = error_code(exc)
    return code in ("NoSuchKey", "NotFound", "404") or (status == 404 and code != "NoSuchBucket")


def is_invalid_range(exc: BaseException) -> bool:
    """Whether ``exc`` is a 416: a ranged GET starting at or past the object's end."""
    return isinstance(exc, bexc.ClientError) and (
        error_code(exc)[0] == "InvalidRange" or error_code(exc)[1] == 416
    )


def translate(exc: BaseException, *, uri: str, bucket: str, action: str) -> BaseException:
    """The typed error for a failed request of the store at ``uri`` doing ``action``
    (``exc`` itself if it is not from boto); see the module doc for the mapping."""
    what = f"{uri}: cannot {action}"
    if isinstance(exc, bexc.ClientError):
        code, status = error_code(exc)
        message = exc.response.get("Error", {}).get("Message", "")
        if code == "NoSuchBucket":
            return MountError(f"{what}: bucket {bucket!r} no longer exists")
        if is_missing(exc):
            return NotFound(f"{what}: not found")
        if status in (401, 403) or code in DENIED:
            return PermissionDenied(f"{what}: {code or status} {message}".rstrip())
        if status >= 500 or code in TRANSIENT:
            return ServiceUnavailable(f"{what}: {code or status} {message}".rstrip())
        return S3Error(f"{what}: {code or status} {message}".rstrip())
    if isinstance(exc, NETWORK_ERRORS):
        return ServiceUnavailable(f"{what}: {exc}")
    if isinstance(exc, CREDENTIAL_ERRORS):
        return PermissionDenied(f"{what}: {exc}")
    if isinstance(exc, bexc.BotoCoreError):
        return S3Error(f"{what}: {exc}")
    return exc


def bucket_error(
    exc: bexc.ClientError | bexc.BotoCoreError, *, uri: str, bucket: str, where: str
) -> MountError:
    """The ``MountError`` for a failed HeadBucket at open, saying what to fix: a bucket
    missing at ``where`` (the endpoint), refused credentials, the wrong region, no
    credentials at all, or an unreachable server."""
    if isinstance(exc, bexc.ClientError):
        code, status = error_code(exc)
        if status == 404 or code in ("NoSuchBucket", "NotFound"):
            why = f"bucket {bucket!r} does not exist at {where}"
        elif status in (401, 403) or code in DENIED:
            why = (f"access to bucket {bucket!r} denied: check the credentials "
                   "(AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE) and the "
                   "bucket policy")  # fmt: skip
        elif status == 301 or code == "PermanentRedirect":
            headers = exc.response.get("ResponseMetadata", {}).get("HTTPHeaders", {})
            region = headers.get("x-amz-bucket-region", "another region")
            why = f"bucket {bucket!r} is in {region}: add ?region={region}"
        else:
            why = f"HeadBucket failed: {code or status}: {exc}"
        return MountError(f"cannot open {uri}: {why}")
    if isinstance(exc, CREDENTIAL_ERRORS):
        return MountError(
            f"cannot open {uri}: no usable AWS credentials ({exc}); set "
            "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, AWS_PROFILE, or ?profile="
        )
    return MountError(f"cannot open {uri}: cannot reach {where}: {exc}")
