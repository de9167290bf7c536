"""Path rules of the NexusFS namespace, and the one function that enforces them.

A valid path is absolute, ``/``-separated and NFC-normalised. ``normalize`` collapses
repeated slashes, drops ``.`` segments and a trailing slash, and rejects (with
:class:`~nexusfs.errors.InvalidPath`, never silently) NUL and other control characters,
``..`` segments, names longer than 255 UTF-8 bytes, paths longer than 4096 UTF-8 bytes,
lone surrogates, and non-``str`` input. The result is canonical: ``normalize`` is
idempotent and two spellings of one path normalise to the same string, so the
normalised string is the key the metadata layer stores.

Invariant: every syscall normalises its path arguments before anything else happens.
"""

from __future__ import annotations

import re
import unicodedata

from nexusfs.errors import InvalidPath

__all__ = [
    "MAX_NAME_BYTES",
    "MAX_PATH_BYTES",
    "SYS_ROOT",
    "basename",
    "is_reserved",
    "is_within",
    "join",
    "normalize",
    "parent",
    "split",
]

MAX_NAME_BYTES = 255
MAX_PATH_BYTES = 4096
SYS_ROOT = "/__sys__"

# C0 controls, DEL and C1 controls. Other Unicode is allowed.
_FORBIDDEN = re.compile(r"[\x00-\x1f\x7f-\x9f]")
# Fast path: already-canonical ASCII paths need no splitting.
_SIMPLE = re.compile(r"(?:/[A-Za-z0-9_\-+=,@~][A-Za-z0-9_\-+=,@~.]{0,254})*/?\Z")
_cache: dict[str, str] = {}
_CACHE_MAX = 65536


def normalize(path: object) -> str:
    """Return the canonical form of ``path`` or raise ``InvalidPath`` saying why."""
    if type(path) is str:
        hit = _cache.get(path)
        if hit is not None:
            return hit
    elif isinstance(path, str):
        path = str(path)
    else:
        raise InvalidPath(f"path must be a str, not {type(path).__name__}")
    assert isinstance(path, str)
    result = _normalize(path)
    if len(_cache) >= _CACHE_MAX:
        _cache.clear()
    _cache[path] = result
    return result


def _normalize(path: str) -> str:
    if not path:
        raise InvalidPath("path is empty")
    if path[0] != "/":
        raise InvalidPath("path must be absolute (start with '/')", path=path)
    if len(path) <= MAX_PATH_BYTES and _SIMPLE.match(path):
        # ASCII segments that cannot be "", "." or ".." and are at most 255 bytes.
        return path[:-1] if len(path) > 1 and path[-1] == "/" else path
    bad = _FORBIDDEN.search(path)
    if bad is not None:
        raise InvalidPath(
            f"path contains control character {bad.group()!r} at index {bad.start()}",
            path=repr(path),
        )
    try:
        path.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidPath("path is not valid Unicode (lone surrogate)", path=repr(path)) from exc
    path = unicodedata.normalize("NFC", path)
    parts: list[str] = []
    for segment in path.split("/"):
        if segment in ("", "."):
            continue
        if segment == "..":
            raise InvalidPath("'..' segments are not allowed", path=path)
        if len(segment.encode("utf-8")) > MAX_NAME_BYTES:
            raise InvalidPath(f"a name is longer than {MAX_NAME_BYTES} bytes", path=path[:80])
        parts.append(segment)
    out = "/" + "/".join(parts)
    if len(out.encode("utf-8")) > MAX_PATH_BYTES:
        raise InvalidPath(f"path is longer than {MAX_PATH_BYTES} bytes", path=out[:80] + "...")
    return out


def split(path: str) -> tuple[str, str]:
    """Split a normalised path into (parent, name); the root gives ("/", "")."""
    if path == "/":
        return "/", ""
    i = path.rfind("/")
    return (path[:i] or "/"), path[i + 1 :]


def parent(path: str) -> str:
    """Parent of a normalised path (the root is its own parent)."""
    return split(path)[0]


def basename(path: str) -> str:
    """Last segment of a normalised path ("" for the root)."""
    return split(path)[1]


def join(base: str, name: str) -> str:
    """Join a normalised directory path and a single name."""
    return f"/{name}" if base == "/" else f"{base}/{name}"


def is_within(path: str, root: str) -> bool:
    """Whether normalised ``path`` equals ``root`` or lies beneath it."""
    if root == "/":
        return True
    return path == root or path.startswith(root + "/")


def is_reserved(path: str) -> bool:
    """Whether ``path`` is in the kernel's reserved ``/__sys__`` namespace."""
    return is_within(path, SYS_ROOT)
