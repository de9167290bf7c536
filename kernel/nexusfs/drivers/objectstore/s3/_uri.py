"""``s3://`` URIs: parsing and validation of the bucket, key prefix and client options.

The URI grammar and its options are described in the package doc
(:mod:`nexusfs.drivers.objectstore.s3`). Invariants: parsing is pure (no I/O, no boto)
and strict: anything not understood (an unknown or repeated option, credentials in the
authority, a ``.``/``..`` prefix segment, an out-of-range value) raises
:class:`~nexusfs.errors.MountError` naming the problem rather than being ignored, and a
parsed :class:`S3Location` holds only validated values, so the client built from it
never sees a malformed bucket, region or size. :attr:`S3Location.uri` is canonical
(options sorted), because a mount's URI is persisted in the metastore.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Literal, NoReturn
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit

from nexusfs.drivers.objectstore.s3._common import (
    DEFAULT_MAX_ATTEMPTS,
    DEFAULT_PART_SIZE,
    MAX_PART_SIZE,
    MIN_PART_SIZE,
    GiB,
    KiB,
    MiB,
)
from nexusfs.errors import MountError

__all__ = ["S3Location", "parse_s3_uri"]

_BUCKET_RE = re.compile(r"[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]")
_REGION_RE = re.compile(r"[a-z0-9][a-z0-9\-]{0,62}")
_PROFILE_RE = re.compile(r"[A-Za-z0-9_.\-]{1,128}")
_SIZE_RE = re.compile(r"(\d+)(KiB|MiB|GiB)?")
_OPTIONS = frozenset(
    {"endpoint", "region", "profile", "addressing", "part_size", "max_attempts",
     "connect_timeout", "read_timeout"}
)  # fmt: skip


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
    """Parse and validate ``s3://bucket[/prefix][?options]`` (see the package doc).

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
        _bad(
            uri,
            "credentials do not belong in the URI (it is stored with the mount); "
            "use AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE or ?profile=",
        )
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
