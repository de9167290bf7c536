"""Object store drivers: immutable, content-addressed blob storage.

``open_object_store(uri, durability)`` maps a store URI to a driver:

* ``local:///abs/path`` and ``file:///abs/path`` -> :class:`LocalObjectStore`
* ``memory://name`` -> a new, empty :class:`MemoryObjectStore`

Any other scheme is looked up among installed drivers (``objectstore.<scheme>`` entries
of the ``nexusfs.drivers`` entry-point group, see :mod:`nexusfs.drivers.registry`);
a scheme nobody provides raises :class:`~nexusfs.errors.MountError`.
"""

from __future__ import annotations

from urllib.parse import unquote, urlsplit

from nexusfs.abc import Durability, ObjectStoreABC
from nexusfs.drivers.objectstore.local import LocalObjectStore, validate_content_id
from nexusfs.drivers.objectstore.memory import MemoryObjectStore
from nexusfs.errors import ConfigError, MountError

__all__ = [
    "LocalObjectStore",
    "MemoryObjectStore",
    "open_object_store",
    "validate_content_id",
]

_SCHEMES = "local:///abs/path, file:///abs/path, memory://name"
_BUILTIN_SCHEMES = frozenset({"local", "file", "memory"})


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
    from nexusfs.drivers import registry

    installed = registry.available("objectstore")
    target = installed.get(scheme)
    if target is None:
        others = ", ".join(f"{s}://" for s in sorted(installed) if s not in _BUILTIN_SCHEMES)
        raise MountError(
            f"unknown object store URI scheme {parts.scheme!r} in {uri!r}; supported: "
            f"{_SCHEMES}{', installed: ' + others if others else ''}"
        )
    try:
        opener = registry.resolve("objectstore", uri)
    except ConfigError as exc:
        raise MountError(str(exc)) from exc
    store = opener(uri, durability=Durability(durability))
    if not isinstance(store, ObjectStoreABC):
        raise MountError(f"the objectstore.{scheme} driver did not return an ObjectStoreABC")
    return store
