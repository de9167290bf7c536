"""The inode layer: :class:`FileMetadata` and its storage over a zone's metastore."""

from nexusfs.metadata.inode import EntryType, FileMetadata, decode, encode
from nexusfs.metadata.store import FileMetadataStore

__all__ = ["EntryType", "FileMetadata", "FileMetadataStore", "decode", "encode"]
