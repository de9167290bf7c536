"""The mount table and longest-prefix routing (``VFSRouterProtocol``).

A mount binds a normalised path to either an object store (``kind="store"``: new file
bytes under that path go to that store) or a zone (``kind="zone"``: the subtree's
inodes live in that zone's own metastore). The root ``/`` is always in the root zone;
until a store is mounted at ``/`` (``connect()`` mounts the data directory's local store
there) paths outside store mounts have no object store and only small, inline files can
be written. ``route`` walks the ancestors of a path from the deepest and picks the
nearest zone mount and the nearest store mount independently; it does no I/O and costs
one dict lookup per path segment (none when only ``/`` is mounted).

Invariant: the router is an in-memory view; the kernel persists every change to the
mount table in the root metastore before it calls ``add``/``remove`` here.
"""

from __future__ import annotations

from nexusfs.abc import MountInfo, Route

__all__ = ["ROOT_ZONE", "MountRouter"]

ROOT_ZONE = "root"
_CACHE_MAX = 65536
_new_route = tuple.__new__


class MountRouter:
    """Longest-prefix routing over the mount table. Thread-safe for readers: the table
    is replaced, never mutated in place."""

    def __init__(self) -> None:
        self._mounts: dict[str, MountInfo] = {}
        self._cache: dict[str, Route] = {}
        self._root_only: str | None = None

    def _changed(self, table: dict[str, MountInfo]) -> None:
        self._mounts = table
        self._cache = {}
        root = table.get("/")
        self._root_only = root.uri if len(table) == 1 and root is not None else None

    def add(self, info: MountInfo) -> None:
        table = dict(self._mounts)
        table[info.path] = info
        self._changed(table)

    def remove(self, path: str) -> MountInfo | None:
        table = dict(self._mounts)
        info = table.pop(path, None)
        self._changed(table)
        return info

    def get(self, path: str) -> MountInfo | None:
        """The mount at exactly ``path``, if any."""
        return self._mounts.get(path)

    def mounts(self) -> list[MountInfo]:
        return [self._mounts[p] for p in sorted(self._mounts)]

    def mounts_within(self, path: str) -> list[MountInfo]:
        """Mounts strictly below ``path``."""
        prefix = "/" if path == "/" else path + "/"
        return [m for p, m in sorted(self._mounts.items()) if p.startswith(prefix)]

    def zone_mount_of(self, zone: str) -> str | None:
        """Where zone ``zone`` is mounted, if it is."""
        if zone == ROOT_ZONE:
            return "/"
        for info in self._mounts.values():
            if info.kind == "zone" and info.uri == f"zone://{zone}":
                return info.path
        return None

    def route(self, path: str) -> Route:
        hit = self._cache.get(path)
        if hit is not None:
            return hit
        mounts = self._mounts
        if self._root_only is not None:
            # Only "/" is mounted: every path routes the same way, no walk needed.
            return _new_route(Route, (path, ROOT_ZONE, path, "/", self._root_only, "/"))
        zone_mount: MountInfo | None = None
        store_mount: MountInfo | None = None
        if mounts:
            probe = path
            while True:
                info = mounts.get(probe)
                if info is not None:
                    if info.kind == "zone":
                        if zone_mount is None:
                            zone_mount = info
                    elif store_mount is None:
                        store_mount = info
                    if zone_mount is not None and store_mount is not None:
                        break
                if probe == "/":
                    break
                probe = probe[: probe.rfind("/")] or "/"
        if zone_mount is None:
            zone, zmount, zpath = ROOT_ZONE, "/", path
        else:
            zone = zone_mount.uri[len("zone://") :]
            zmount = zone_mount.path
            zpath = path[len(zmount) :] or "/"
        if store_mount is None:
            store, smount = "", "/"  # no object store: only inline files can be written
        else:
            store, smount = store_mount.uri, store_mount.path
        route = Route(path, zone, zpath, zmount, store, smount)
        if len(self._cache) > _CACHE_MAX:
            self._cache = {}
        self._cache[path] = route
        return route
