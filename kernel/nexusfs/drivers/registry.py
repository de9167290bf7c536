"""The driver registry: which code opens a store named by a URL.

Drivers are found through the ``nexusfs.drivers`` entry-point group. An entry is named
``<kind>.<scheme>`` (kinds: ``metastore``, ``objectstore``, ``recordstore``,
``cachestore``) and points at an *opener*, a callable that takes the URL (plus keyword
options the kind defines) and returns the store::

    [project.entry-points."nexusfs.drivers"]
    "objectstore.s3" = "nexusfs_s3:open_store"      # open_store(uri, durability=...)

The kernel's own drivers are declared the same way in its ``pyproject.toml`` and are
also listed in :data:`BUILTIN` so that resolving a built-in scheme never has to scan the
installed distributions (that scan costs milliseconds of CLI start-up). A third-party
package cannot replace a built-in scheme; it can add any other.

Openers per kind:

* metastore ``(location: str, *, durability: Durability, flush_interval_ms: int)``
* objectstore ``(uri: str, *, durability: Durability)``
* recordstore ``(url: str)``
* cachestore ``(url: str)``

Failure semantics: :func:`resolve` raises :class:`~nexusfs.errors.ConfigError` naming
the kind, the scheme and the schemes that are available; a driver whose module fails to
import raises ``ConfigError`` with the import error chained. Nothing is cached on
failure, so installing the missing package and retrying works.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable
from typing import Any

from nexusfs.errors import ConfigError

__all__ = [
    "BUILTIN",
    "ENTRY_POINT_GROUP",
    "KINDS",
    "available",
    "resolve",
    "scheme_of",
]

ENTRY_POINT_GROUP = "nexusfs.drivers"
KINDS = ("metastore", "objectstore", "recordstore", "cachestore")

#: ``kind.scheme`` -> ``module:attribute`` of the kernel's own drivers.
BUILTIN: dict[str, str] = {
    "metastore.redb": "nexusfs.drivers.metastore:open_redb",
    "metastore.memory": "nexusfs.drivers.metastore:open_memory",
    "objectstore.local": "nexusfs.drivers.objectstore:open_object_store",
    "objectstore.file": "nexusfs.drivers.objectstore:open_object_store",
    "objectstore.memory": "nexusfs.drivers.objectstore:open_object_store",
    "objectstore.s3": "nexusfs.drivers.objectstore.s3:open_s3",
    "recordstore.sqlite": "nexusfs.drivers.recordstore:open_record_store",
    "recordstore.postgresql": "nexusfs.drivers.recordstore:open_record_store",
    "cachestore.redis": "nexusfs.drivers.cachestore:open_cache_store",
    "cachestore.rediss": "nexusfs.drivers.cachestore:open_cache_store",
    "cachestore.unix": "nexusfs.drivers.cachestore:open_cache_store",
    "cachestore.null": "nexusfs.drivers.cachestore:open_cache_store",
}

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*):")
_loaded: dict[str, Callable[..., Any]] = {}


def scheme_of(kind: str, url: str) -> str:
    """The driver scheme of ``url`` for ``kind`` (lower case).

    Record store URLs are SQLAlchemy URLs: ``postgresql+psycopg://...`` has scheme
    ``postgresql`` (the dialect; the ``+driver`` part chooses the DB-API module). A
    metastore location without a scheme is a redb file path. Raises ``ConfigError`` for
    a URL with no scheme where one is required.
    """
    _check_kind(kind)
    match = _SCHEME.match(url)
    if kind == "metastore":
        if match is None or len(match.group(1)) == 1:  # a path (or a Windows drive)
            return "redb"
        return match.group(1).lower()
    if match is None or (kind != "objectstore" and "://" not in url):
        raise ConfigError(
            f"{kind} URL {_redact(url)!r} has no scheme (expected e.g. {_example(kind)})"
        )
    scheme = match.group(1).lower()
    if kind == "recordstore":
        scheme = scheme.split("+", 1)[0]
    return scheme


def available(kind: str, *, include_installed: bool = True) -> dict[str, str]:
    """Scheme -> ``module:attribute`` of every driver of ``kind``: the built-ins, plus
    (``include_installed``) those that installed packages declare."""
    _check_kind(kind)
    found = {
        name.split(".", 1)[1]: target
        for name, target in BUILTIN.items()
        if name.startswith(kind + ".")
    }
    if include_installed:
        from importlib.metadata import entry_points

        for ep in entry_points(group=ENTRY_POINT_GROUP):
            ep_kind, _, scheme = ep.name.partition(".")
            if ep_kind == kind and scheme and scheme.lower() not in found:
                found[scheme.lower()] = ep.value
    return found


def resolve(kind: str, url: str) -> Callable[..., Any]:
    """The opener for ``url`` of ``kind``. Raises ``ConfigError`` if no installed driver
    handles its scheme or the driver cannot be imported."""
    scheme = scheme_of(kind, url)
    key = f"{kind}.{scheme}"
    if key in _loaded:
        return _loaded[key]
    target = BUILTIN.get(key)
    if target is None:
        target = available(kind).get(scheme)
    if target is None:
        known = ", ".join(sorted(available(kind)))
        raise ConfigError(
            f"no {kind} driver for scheme {scheme!r} (in {_redact(url)!r}); "
            f"available: {known}. Third-party drivers install as packages that declare "
            f"a '{key}' entry point in the '{ENTRY_POINT_GROUP}' group"
        )
    opener = _load(key, target)
    _loaded[key] = opener
    return opener


def _load(key: str, target: str) -> Callable[..., Any]:
    module_name, _, attr = target.partition(":")
    try:
        module = importlib.import_module(module_name)
        obj = module
        for part in attr.split(".") if attr else ():
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"the {key} driver ({target}) cannot be loaded: {exc}") from exc
    if not callable(obj):
        raise ConfigError(f"the {key} driver ({target}) is not callable")
    return obj


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ConfigError(f"unknown driver kind {kind!r}; kinds: {', '.join(KINDS)}")


def _example(kind: str) -> str:
    return {
        "objectstore": "local:///srv/blobs",
        "recordstore": "sqlite:////srv/nexus/records.db",
        "cachestore": "redis://127.0.0.1:6379/0",
    }.get(kind, "redb:///srv/nexus/metastore.redb")


def _redact(url: str) -> str:
    """``url`` with any password replaced by ``***``."""
    return re.sub(r"(//[^/:@]*:)[^@/]*@", r"\1***@", url)
