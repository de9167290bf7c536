"""Inodes and the directory index over one zone's metastore (``FileMetadataProtocol``).

Key layout inside a zone's metastore (all keys are bytes, ordered bytewise)::

    b"I" + parent + b"\\0" + name   -> encoded inode    (parent is b"" for the zone root)
    b"D" + parent + b"\\0" + name   -> inline file content (small files)
    b"R" + store + b"\\0" + cid     -> u64 reference count of a blob in object store ``store``
    b"/__sys__/..."                -> kernel records (revision, mounts, zones, settings)

Because the name follows its parent and a NUL (which no path contains), the direct
children of a directory are exactly the keys with prefix ``b"I" + dir + b"\\0"``: a
listing is one ordered range scan, never a filter over a subtree. The zone root itself
has no inode; it always exists.

Paths given to this layer are *zone paths* (``/`` is the zone root). Inodes come back
with ``path`` set to the VFS path, i.e. prefixed by the mount point of the zone.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

from nexusfs.abc import MetastoreABC
from nexusfs.metadata.inode import EntryType, FileMetadata, decode, encode

__all__ = [
    "REVISION_KEY",
    "FileMetadataStore",
    "children_prefix",
    "data_key",
    "inode_key",
    "path_from_key",
    "ref_key",
]

REVISION_KEY = b"/__sys__/revision"
_U64 = struct.Struct("<Q")


def inode_key(zpath: str) -> bytes:
    """Metastore key of the inode at zone path ``zpath`` (not the root)."""
    i = zpath.rfind("/")
    return b"I" + zpath[:i].encode() + b"\x00" + zpath[i + 1 :].encode()


def data_key(zpath: str) -> bytes:
    """Metastore key of the inline content of the file at ``zpath``."""
    i = zpath.rfind("/")
    return b"D" + zpath[:i].encode() + b"\x00" + zpath[i + 1 :].encode()


def children_prefix(zdir: str, kind: bytes = b"I") -> bytes:
    """Key prefix shared by every direct child of directory ``zdir``."""
    return kind + (b"" if zdir == "/" else zdir.encode()) + b"\x00"


def path_from_key(key: bytes) -> str:
    """Zone path of an ``I``/``D`` key."""
    body = key[1:]
    i = body.index(b"\x00")
    parent = body[:i].decode()
    return f"{parent}/{body[i + 1 :].decode()}"


def ref_key(store: str, content_id: str) -> bytes:
    """Metastore key of the reference count of blob ``content_id`` in ``store``."""
    return b"R" + store.encode() + b"\x00" + bytes.fromhex(content_id)


def pack_u64(n: int) -> bytes:
    return _U64.pack(n)


def unpack_u64(raw: bytes | None) -> int:
    return 0 if raw is None else int(_U64.unpack(raw)[0])


class FileMetadataStore:
    """Typed inode CRUD for one zone. Implements ``FileMetadataProtocol``.

    Every method is a single metastore call, hence atomic; it raises what the metastore
    raises (``StoreClosed``, ``OSError``) and ``CorruptStore`` for an undecodable inode.
    """

    __slots__ = ("metastore", "prefix", "zone")

    def __init__(self, metastore: MetastoreABC, zone: str = "root", prefix: str = "/") -> None:
        self.metastore = metastore
        self.zone = zone
        self.prefix = prefix

    def vpath(self, zpath: str) -> str:
        """VFS path of zone path ``zpath``."""
        if self.prefix == "/":
            return zpath
        return self.prefix if zpath == "/" else self.prefix + zpath

    def root(self) -> FileMetadata:
        """The zone root: a directory that always exists."""
        etype = EntryType.DIRECTORY if self.prefix == "/" else EntryType.MOUNT
        return FileMetadata(self.prefix, etype, zone=self.zone)

    def get(self, path: str) -> FileMetadata | None:
        if path == "/":
            return self.root()
        raw = self.metastore.get(inode_key(path))
        return None if raw is None else decode(raw, self.vpath(path), self.zone)

    def get_with_data(self, path: str) -> tuple[FileMetadata | None, bytes | None]:
        """The inode at ``path`` and its inline content, from one snapshot."""
        raw, data = self.metastore.get_many([inode_key(path), data_key(path)])
        return (None if raw is None else decode(raw, self.vpath(path), self.zone)), data

    def get_many(self, paths: Sequence[str]) -> list[FileMetadata | None]:
        raws = self.metastore.get_many([inode_key(p) if p != "/" else b"I" for p in paths])
        out: list[FileMetadata | None] = []
        for p, raw in zip(paths, raws, strict=True):
            if p == "/":
                out.append(self.root())
            else:
                out.append(None if raw is None else decode(raw, self.vpath(p), self.zone))
        return out

    def put(self, meta: FileMetadata) -> None:
        """Store ``meta`` under its path, which must be a path *inside this zone*."""
        self.metastore.put(inode_key(self.zpath(meta.path)), encode(meta))

    def zpath(self, vpath: str) -> str:
        """Zone path of a VFS path inside this zone."""
        if self.prefix == "/":
            return vpath
        return vpath[len(self.prefix) :] or "/"

    def delete(self, path: str) -> bool:
        return self.metastore.delete(inode_key(path))

    def list_children(
        self, path: str, *, limit: int | None = None, after: str | None = None
    ) -> list[FileMetadata]:
        prefix = children_prefix(path)
        cursor = None if after is None else prefix + after.encode()
        rows = self.metastore.scan(prefix, after=cursor, limit=limit)
        base = self.vpath(path)
        base = "" if base == "/" else base
        zone = self.zone
        n = len(prefix)
        return [decode(v, f"{base}/{k[n:].decode()}", zone) for k, v in rows]

    def has_children(self, path: str) -> bool:
        return bool(self.metastore.scan(children_prefix(path), limit=1, keys_only=True))

    def subtree(self, path: str) -> list[tuple[str, bytes]]:
        """Every descendant of directory ``path`` as (zone path, encoded inode), parents
        before children, found by one ordered scan per directory."""
        out: list[tuple[str, bytes]] = []
        stack = [path]
        while stack:
            d = stack.pop()
            prefix = children_prefix(d)
            n = len(prefix)
            base = "" if d == "/" else d
            for k, v in self.metastore.scan(prefix):
                child = f"{base}/{k[n:].decode()}"
                out.append((child, v))
                if v[1] != EntryType.FILE:
                    stack.append(child)
        return out

    def revision(self) -> int:
        """The zone's last committed revision."""
        return unpack_u64(self.metastore.get(REVISION_KEY))
