"""Directory listings: a page of inodes plus the cursor of the next page."""

from __future__ import annotations

from collections.abc import Iterable

from nexusfs.metadata.inode import FileMetadata

__all__ = ["DirListing"]


class DirListing(list[FileMetadata]):
    """A ``list`` of :class:`FileMetadata` in name order (depth-first pre-order when
    recursive). ``cursor`` is ``None`` on the last page; otherwise pass it back as
    ``readdir(..., cursor=listing.cursor)`` to get the next page. Cursors are opaque
    strings, stable across mutations (a page resumes after the last path returned)."""

    __slots__ = ("cursor",)

    def __init__(self, items: Iterable[FileMetadata] = (), cursor: str | None = None) -> None:
        super().__init__(items)
        self.cursor = cursor

    @property
    def names(self) -> list[str]:
        """Entry names of this page."""
        return [m.name for m in self]
