"""How kernel values travel over the bus (msgpack-friendly forms and back).

``FileMetadata`` travels as a list of its fields (entry type as an int), listings as
``{"entries": [...], "cursor": ...}``, mounts, zones and GC reports as dicts. Every
``to_wire``/``from_wire`` pair round-trips exactly; a malformed value raises
``ProtocolError`` on the receiving side rather than producing a wrong object.
"""

from __future__ import annotations

from typing import Any

from nexusfs.abc import MountInfo
from nexusfs.bus.protocol import ProtocolError
from nexusfs.metadata.inode import EntryType, FileMetadata
from nexusfs.syscalls.admin import GCReport, ZoneInfo
from nexusfs.vfs.listing import DirListing

#: Largest payload a single read or write call carries; larger transfers use handles.
READ_CHUNK = 8 << 20

__all__ = [
    "READ_CHUNK",
    "gc_from_wire",
    "gc_to_wire",
    "listing_from_wire",
    "listing_to_wire",
    "meta_from_wire",
    "meta_to_wire",
    "mount_from_wire",
    "mount_to_wire",
    "zone_from_wire",
    "zone_to_wire",
]

_TYPES = {t.value: t for t in EntryType}


def meta_to_wire(meta: FileMetadata) -> list[Any]:
    return [meta[0], int(meta[1]), *meta[2:]]


def meta_from_wire(raw: Any) -> FileMetadata:
    try:
        return FileMetadata(raw[0], _TYPES[raw[1]], *raw[2:])
    except (KeyError, TypeError, IndexError) as exc:
        raise ProtocolError(f"malformed file metadata on the wire: {exc}") from exc


def listing_to_wire(listing: DirListing) -> dict[str, Any]:
    return {"entries": [meta_to_wire(m) for m in listing], "cursor": listing.cursor}


def listing_from_wire(raw: Any) -> DirListing:
    try:
        return DirListing([meta_from_wire(m) for m in raw["entries"]], raw["cursor"])
    except (KeyError, TypeError) as exc:
        raise ProtocolError(f"malformed listing on the wire: {exc}") from exc


def mount_to_wire(info: MountInfo) -> dict[str, Any]:
    return {"path": info.path, "uri": info.uri, "kind": info.kind, "created_at": info.created_at}


def mount_from_wire(raw: Any) -> MountInfo:
    try:
        return MountInfo(**raw)
    except TypeError as exc:
        raise ProtocolError(f"malformed mount on the wire: {exc}") from exc


def zone_to_wire(info: ZoneInfo) -> dict[str, Any]:
    return info.to_dict()


def zone_from_wire(raw: Any) -> ZoneInfo:
    try:
        return ZoneInfo(**raw)
    except TypeError as exc:
        raise ProtocolError(f"malformed zone on the wire: {exc}") from exc


def gc_to_wire(report: GCReport) -> dict[str, Any]:
    return {
        "scanned": report.scanned,
        "reclaimed": report.reclaimed,
        "bytes_reclaimed": report.bytes_reclaimed,
        "kept_referenced": report.kept_referenced,
        "kept_young": report.kept_young,
    }


def gc_from_wire(raw: Any) -> GCReport:
    try:
        return GCReport(**raw)
    except TypeError as exc:
        raise ProtocolError(f"malformed gc report on the wire: {exc}") from exc
