"""The inode: :class:`FileMetadata`, its entry types and its compact binary encoding.

An inode describes one entry of the namespace. Its encoding (``encode``/``decode``) is
a fixed little-endian header followed by optional fields, so decoding a ``stat`` costs
one ``struct.unpack``. The path is *not* part of the encoded value: it is the key the
inode is stored under (see :mod:`nexusfs.metadata.store`), so moving an entry rewrites
only keys. ``zone`` is likewise implied by the metastore the inode lives in.

Encoding, format 1::

    <B format><B entry_type><B flags><x pad><q size><q version><d created><d modified>
    [32 bytes content id, if FLAG_CONTENT]
    [<H len> owner utf-8, if FLAG_OWNER] [<H len> mime utf-8, if FLAG_MIME]
    [<H len> mount target utf-8, if FLAG_TARGET] [<H len> store id, if FLAG_STORE]

Invariant: ``decode(encode(m), m.path, m.zone) == m`` for every valid ``m``; a value that
does not parse raises :class:`~nexusfs.errors.CorruptStore` (never a wrong inode).
"""

from __future__ import annotations

import enum
import struct
from typing import Any, NamedTuple

from nexusfs.errors import CorruptStore

__all__ = ["EntryType", "FileMetadata", "decode", "encode"]


class EntryType(enum.IntEnum):
    """What an inode is. ``MOUNT`` is a directory whose subtree lives in another zone or
    object store (``DT_MOUNT``); it lists like a directory."""

    FILE = 1
    DIRECTORY = 2
    MOUNT = 3

    @property
    def is_dir(self) -> bool:
        return self is not EntryType.FILE


_FORMAT = 1
_HEADER = struct.Struct("<BBBxqqdd")
_HLEN = _HEADER.size
_U16 = struct.Struct("<H")

FLAG_CONTENT = 1
FLAG_OWNER = 2
FLAG_MIME = 4
FLAG_TARGET = 8
FLAG_INLINE = 16
FLAG_STORE = 32
_TEXT_FLAGS = (FLAG_OWNER, FLAG_MIME, FLAG_TARGET, FLAG_STORE)
_ANY_TEXT = FLAG_OWNER | FLAG_MIME | FLAG_TARGET | FLAG_STORE

_TYPES = {t.value: t for t in EntryType}


class FileMetadata(NamedTuple):
    """The metadata of one file, directory or mount point.

    ``version`` increases every time the entry at this path changes (it is the zone's
    commit revision of the last change, so it never repeats for a path, even across
    delete and re-create). Times are Unix seconds. ``content_id`` is the BLAKE3 hex of
    the bytes (``None`` for directories). ``inline`` tells that small content is kept in
    the metastore; otherwise ``store`` names the object store that holds the blob (the
    store mounted where the file was written; a rename keeps it). ``target`` is what a
    mount point mounts.

    It is an immutable named tuple (like ``os.stat_result``): cheap to build, compare
    and hash.
    """

    path: str
    entry_type: EntryType
    size: int = 0
    content_id: str | None = None
    version: int = 0
    created_at: float = 0.0
    modified_at: float = 0.0
    zone: str = "root"
    owner: str | None = None
    mime_type: str | None = None
    inline: bool = False
    target: str | None = None
    store: str | None = None

    @property
    def name(self) -> str:
        """The last path segment ("" for the root)."""
        return self.path.rsplit("/", 1)[-1]

    @property
    def is_dir(self) -> bool:
        """Directories and mount points."""
        return self.entry_type is not EntryType.FILE

    @property
    def is_file(self) -> bool:
        return self.entry_type is EntryType.FILE

    def evolve(self, **changes: Any) -> FileMetadata:
        """A copy with ``changes`` applied."""
        return self._replace(**changes)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly dict (entry type by name)."""
        return {
            "path": self.path,
            "type": self.entry_type.name.lower(),
            "size": self.size,
            "content_id": self.content_id,
            "version": self.version,
            "created_at": self.created_at,
            "modified_at": self.modified_at,
            "zone": self.zone,
            "owner": self.owner,
            "mime_type": self.mime_type,
            "target": self.target,
            "store": self.store,
        }


def encode(meta: FileMetadata) -> bytes:
    """Encode an inode (without its path and zone)."""
    flags = 0
    tail: list[bytes] = []
    if meta.content_id is not None:
        flags |= FLAG_CONTENT
        tail.append(bytes.fromhex(meta.content_id))
    for flag, text in zip(
        _TEXT_FLAGS, (meta.owner, meta.mime_type, meta.target, meta.store), strict=True
    ):
        if text is not None:
            flags |= flag
            raw = text.encode("utf-8")
            tail.append(_U16.pack(len(raw)))
            tail.append(raw)
    if meta.inline:
        flags |= FLAG_INLINE
    head = _HEADER.pack(
        _FORMAT,
        meta.entry_type.value,
        flags,
        meta.size,
        meta.version,
        meta.created_at,
        meta.modified_at,
    )
    return head + b"".join(tail) if tail else head


def decode(raw: bytes, path: str, zone: str = "root") -> FileMetadata:
    """Decode an inode stored under ``path`` in ``zone``; ``CorruptStore`` if malformed."""
    try:
        fmt, etype, flags, size, version, created, modified = _unpack_header(raw)
        if fmt != _FORMAT:
            raise CorruptStore(f"unknown inode format {fmt}", path=path)
        if not flags:
            return _new(
                FileMetadata,
                (
                    path,
                    _TYPES[etype],
                    size,
                    None,
                    version,
                    created,
                    modified,
                    zone,
                    None,
                    None,
                    False,
                    None,
                    None,
                ),
            )
        pos = _HLEN
        cid = None
        if flags & FLAG_CONTENT:
            cid = raw[pos : pos + 32].hex()
            pos += 32
        texts: list[str | None] = [None, None, None, None]
        if flags & _ANY_TEXT:
            for i, flag in enumerate(_TEXT_FLAGS):
                if flags & flag:
                    n = raw[pos] | (raw[pos + 1] << 8)
                    pos += 2
                    texts[i] = raw[pos : pos + n].decode("utf-8")
                    pos += n
        if pos > len(raw):
            raise CorruptStore("truncated inode", path=path)
        return _new(
            FileMetadata,
            (
                path,
                _TYPES[etype],
                size,
                cid,
                version,
                created,
                modified,
                zone,
                texts[0],
                texts[1],
                bool(flags & FLAG_INLINE),
                texts[2],
                texts[3],
            ),
        )
    except CorruptStore:
        raise
    except (struct.error, KeyError, ValueError, IndexError, UnicodeDecodeError) as exc:
        raise CorruptStore(f"malformed inode ({exc})", path=path) from exc


_unpack_header = _HEADER.unpack_from
_new = tuple.__new__
