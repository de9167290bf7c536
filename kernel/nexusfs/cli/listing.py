"""Commands that describe the namespace: ``ls`` and ``stat``.

``ls`` pages through ``readdir`` (1000 entries per call), so plain and JSON listings of
huge directories use bounded kernel calls; ``--limit`` and ``--cursor`` expose the
kernel's paging. Plain ``ls`` never imports rich; ``ls -l`` draws a rich table.
"""

from __future__ import annotations

import shlex
from collections.abc import Iterator
from typing import TYPE_CHECKING

import click

from nexusfs.cli.output import (
    entry_name,
    format_time,
    human_size,
    print_json,
    print_table,
    type_label,
)
from nexusfs.cli.runtime import with_fs

if TYPE_CHECKING:
    from rich.console import JustifyMethod

    from nexusfs.api import FileSystem as NexusFS
    from nexusfs.metadata.inode import FileMetadata

__all__ = ["COMMANDS", "Pager", "iter_entries"]

PAGE = 1000


class Pager:
    """Iterate a directory listing page by page. After iteration, ``cursor`` resumes
    the listing (``None`` when everything was listed)."""

    def __init__(
        self,
        fs: NexusFS,
        path: str,
        *,
        recursive: bool = False,
        limit: int | None = None,
        cursor: str | None = None,
        page: int = PAGE,
    ) -> None:
        self.fs, self.path, self.recursive = fs, path, recursive
        self.limit, self.start, self.page = limit, cursor, page
        self.cursor: str | None = None

    def __iter__(self) -> Iterator[FileMetadata]:
        remaining, cursor = self.limit, self.start
        while remaining is None or remaining > 0:
            n = self.page if remaining is None else min(self.page, remaining)
            listing = self.fs.readdir(self.path, recursive=self.recursive, limit=n, cursor=cursor)
            yield from listing
            if listing.cursor is None:
                return
            cursor = listing.cursor
            if remaining is not None:
                remaining -= len(listing)
                if remaining <= 0:
                    self.cursor = cursor
                    return


def iter_entries(fs: NexusFS, path: str, *, recursive: bool = False) -> Iterator[FileMetadata]:
    """Every entry below directory ``path`` (depth-first pre-order when recursive)."""
    return iter(Pager(fs, path, recursive=recursive))


def _long_row(meta: FileMetadata, name: str) -> list[str]:
    if meta.target:
        name = f"{name} -> {meta.target}"
    size = human_size(meta.size) if meta.is_file else "-"
    return [type_label(meta), size, str(meta.version), format_time(meta.modified_at), name]


_LONG_COLUMNS: tuple[tuple[str, JustifyMethod], ...] = (
    ("TYPE", "left"),
    ("SIZE", "right"),
    ("VERSION", "right"),
    ("MODIFIED", "left"),
    ("NAME", "left"),
)


@click.command("ls")
@click.argument("path", default="/")
@click.option("-l", "long", is_flag=True, help="Long listing: type, size, version, time.")
@click.option("-R", "--recursive", is_flag=True, help="List the whole subtree.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array of entries.")
@click.option(
    "--limit",
    type=click.IntRange(min=0),
    default=None,
    metavar="N",
    help="List at most N entries (then print how to continue).",
)
@click.option("--cursor", default=None, metavar="CURSOR", help="Continue a listing cut by --limit.")
@with_fs
def ls_cmd(
    fs: NexusFS,
    path: str,
    long: bool,
    recursive: bool,
    as_json: bool,
    limit: int | None,
    cursor: str | None,
) -> None:
    """List a directory (default /).

    Directories are shown with a trailing '/'; with -R, entries are shown relative to
    PATH.
    """
    meta = fs.stat(path)
    pager: Pager | None = None
    base: str | None = None
    entries: Iterator[FileMetadata]
    if meta.is_dir:
        pager = Pager(fs, meta.path, recursive=recursive, limit=limit, cursor=cursor)
        entries = iter(pager)
        base = meta.path if recursive else None
    else:
        entries = iter([meta])
    if as_json:
        print_json([e.to_dict() for e in entries])
    elif long:
        rows = [_long_row(e, e.path if pager is None else entry_name(e, base)) for e in entries]
        if rows:
            print_table(_LONG_COLUMNS, rows)
    else:
        for e in entries:
            click.echo(e.path if pager is None else entry_name(e, base))
    if pager is not None and pager.cursor is not None:
        click.echo(
            f"nexus: more entries; continue with --cursor {shlex.quote(pager.cursor)}", err=True
        )


def _stat_lines(meta: FileMetadata) -> list[tuple[str, str]]:
    lines = [("path", meta.path), ("type", type_label(meta))]
    if meta.is_file:
        size = f"{meta.size}" if meta.size < 1024 else f"{meta.size} ({human_size(meta.size)})"
        lines.append(("size", size))
        lines.append(("content_id", meta.content_id or "-"))
        where = "inline" if meta.inline else (meta.store or "-")
        lines.append(("stored", where))
    lines += [
        ("version", str(meta.version)),
        ("created", format_time(meta.created_at)),
        ("modified", format_time(meta.modified_at)),
        ("zone", meta.zone),
    ]
    if meta.target:
        lines.append(("target", meta.target))
    if meta.owner:
        lines.append(("owner", meta.owner))
    if meta.mime_type:
        lines.append(("mime_type", meta.mime_type))
    return lines


@click.command("stat")
@click.argument("path")
@click.option("--json", "as_json", is_flag=True, help="Print the inode as JSON.")
@with_fs
def stat_cmd(fs: NexusFS, path: str, as_json: bool) -> None:
    """Show the metadata of PATH."""
    meta = fs.stat(path)
    if as_json:
        print_json(meta.to_dict())
        return
    lines = _stat_lines(meta)
    width = max(len(k) for k, _ in lines)
    for key, value in lines:
        click.echo(f"{key + ':':<{width + 1}} {value}")


COMMANDS = (ls_cmd, stat_cmd)
