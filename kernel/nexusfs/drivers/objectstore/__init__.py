"""Object store drivers: immutable, content-addressed blob storage.

``open_object_store(uri, durability)`` maps a store URI to a driver:

* ``local:///abs/path`` and ``file:///abs/path`` -> :class:`LocalObjectStore`
* ``memory://name`` -> a new, empty :class:`MemoryObjectStore`

Anything else raises :class:`~nexusfs.errors.MountError`.
"""

from __future__ import annotations

from urllib.parse import unquote, urlsplit

from nexusfs.abc import Durability, ObjectStoreABC
from nexusfs.drivers.objectstore.local import LocalObjectStore, validate_content_id
from nexusfs.drivers.objectstore.memory import MemoryObjectStore
from nexusfs.errors import MountError

__all__ = [
    "LocalObjectStore",
    "MemoryObjectStore",
    "open_object_store",
    "validate_content_id",
]

_SCHEMES = "local:///abs/path, file:///abs/path, memory://name"


def open_object_store(
    uri: str, durability: Durability | str = Durability.DEFERRED
) -> ObjectStoreABC:
    """Open the object store named by ``uri`` with the given durability.

    Raises ``MountError`` for an unknown scheme or a local path that is not absolute
    (e.g. ``local://relative/dir``); ``OSError`` if a local root cannot be created.
    """
    parts = urlsplit(uri)
    scheme = parts.scheme.lower()
    if scheme in ("local", "file"):
        if parts.netloc not in ("", "localhost") or not parts.path.startswith("/"):
            raise MountError(
                f"object store URI {uri!r} must name an absolute path, e.g. {scheme}:///srv/blobs"
            )
        if parts.query or parts.fragment:
            raise MountError(f"object store URI {uri!r} must not have a query or fragment")
        return LocalObjectStore(unquote(parts.path), durability)
    if scheme == "memory":
        return MemoryObjectStore(unquote(parts.netloc + parts.path), durability)
    raise MountError(
        f"unknown object store URI scheme {parts.scheme!r} in {uri!r}; supported: {_SCHEMES}"
    )
