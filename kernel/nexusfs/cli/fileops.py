"""Commands that change or print files inside NexusFS: ``write``, ``cat``, ``mkdir``,
``rm``, ``rmdir``, ``mv`` and ``cp``.

Commands that take several paths (``mkdir``, ``rm``, ``rmdir``) go on after a failure,
print one line per failed path and exit 1 at the end, like their POSIX namesakes.
``mv`` and ``cp`` move/copy *into* an existing destination directory (``-T`` turns that
off), as POSIX ``mv``/``cp`` do.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

import click

from nexusfs.cli.runtime import EXIT_ERROR, binary_stdout, report, with_fs
from nexusfs.errors import AlreadyExists, InvalidPath, IsADirectory, NexusError, NotFound

if TYPE_CHECKING:
    from nexusfs.api import FileSystem as NexusFS

__all__ = ["COMMANDS"]

CHUNK = 1 << 20


def into_dir(fs: NexusFS, src: str, dst: str) -> str:
    """Where ``src`` lands for ``mv``/``cp`` to ``dst``: inside ``dst`` when ``dst`` is an
    existing directory (and not ``src`` itself), else ``dst``. Returned normalised."""
    from nexusfs import paths

    s, d = paths.normalize(src), paths.normalize(dst)
    return d if s == d else target_in(fs, d, paths.basename(s))


def target_in(fs: NexusFS, dst: str, name: str) -> str:
    """``dst/name`` if ``dst`` is an existing directory, else ``dst`` (normalised)."""
    from nexusfs import paths

    d = paths.normalize(dst)
    try:
        meta = fs.stat(d)
    except (NotFound, NotADirectoryError):
        return d
    return paths.join(d, name) if meta.is_dir else d


def each(
    items: Iterable[str], action: Callable[[str], object], *, ignore_missing: bool = False
) -> None:
    """Run ``action`` on every item; report each failure and exit 1 if any failed."""
    failed = False
    for item in items:
        try:
            action(item)
        except (NexusError, OSError, ValueError) as exc:
            if ignore_missing and isinstance(exc, NotFound):
                continue
            failed = True
            report(exc)
    if failed:
        raise click.exceptions.Exit(EXIT_ERROR)


@click.command("write")
@click.argument("path")
@click.argument(
    "source",
    metavar="[FILE|-]",
    default="-",
    type=click.Path(exists=True, dir_okay=False, allow_dash=True),
)
@click.option(
    "--if-version",
    type=click.IntRange(min=0),
    default=None,
    metavar="N",
    help="Commit only if the file's current version is N (0: it must not exist).",
)
@click.option("--exclusive", "-x", is_flag=True, help="Fail if PATH already exists.")
@with_fs
def write_cmd(fs: NexusFS, path: str, source: str, if_version: int | None, exclusive: bool) -> None:
    """Write PATH from FILE, or from stdin (default, or '-').

    The new content is streamed in 1 MiB chunks and becomes visible atomically when it
    is complete; missing parent directories are created.
    """
    from nexusfs import paths

    p = paths.normalize(path)
    if exclusive and fs.exists(p):  # fail before reading a large stdin
        raise AlreadyExists("file exists", path=p)
    with (
        click.open_file(source, "rb") as src,
        fs.open(p, "wb", if_version=if_version, exclusive=exclusive) as out,
    ):
        while chunk := src.read(CHUNK):
            out.write(chunk)


@click.command("cat")
@click.argument("paths", metavar="PATH...", nargs=-1, required=True)
@with_fs
def cat_cmd(fs: NexusFS, paths: tuple[str, ...]) -> None:
    """Write the content of each PATH to stdout (binary-safe, streamed)."""
    out = binary_stdout()
    for path in paths:
        for chunk in fs.iter_read(path, chunk_size=CHUNK):
            out.write(chunk)
    out.flush()


@click.command("mkdir")
@click.argument("paths", metavar="PATH...", nargs=-1, required=True)
@click.option(
    "-p",
    "--parents",
    is_flag=True,
    help="Create missing parents; no error if the directory exists.",
)
@with_fs
def mkdir_cmd(fs: NexusFS, paths: tuple[str, ...], parents: bool) -> None:
    """Create directories."""
    each(paths, lambda p: fs.mkdir(p, parents=parents, exist_ok=parents))


@click.command("rm")
@click.argument("paths", metavar="PATH...", nargs=-1, required=True)
@click.option(
    "-r", "-R", "--recursive", is_flag=True, help="Remove directories and everything below them."
)
@click.option("-f", "--force", is_flag=True, help="Ignore paths that do not exist.")
@with_fs
def rm_cmd(fs: NexusFS, paths: tuple[str, ...], recursive: bool, force: bool) -> None:
    """Remove files (and, with -r, directories)."""

    def remove(path: str) -> None:
        meta = fs.stat(path)
        if not meta.is_dir:
            fs.unlink(path)
        elif recursive:
            fs.rmdir(path, recursive=True)
        else:
            raise IsADirectory("is a directory (use rm -r)", path=meta.path)

    each(paths, remove, ignore_missing=force)


@click.command("rmdir")
@click.argument("paths", metavar="PATH...", nargs=-1, required=True)
@with_fs
def rmdir_cmd(fs: NexusFS, paths: tuple[str, ...]) -> None:
    """Remove empty directories."""
    each(paths, lambda p: fs.rmdir(p))


_NO_TARGET_DIR = click.option(
    "-T",
    "--no-target-directory",
    "exact",
    is_flag=True,
    help="Treat DST as the destination itself, even if it is a directory.",
)


@click.command("mv")
@click.argument("src")
@click.argument("dst")
@_NO_TARGET_DIR
@with_fs
def mv_cmd(fs: NexusFS, src: str, dst: str, exact: bool) -> None:
    """Move or rename SRC to DST.

    Atomic within a zone. If DST is an existing directory, SRC is moved into it.
    """
    fs.rename(src, dst if exact else into_dir(fs, src, dst))


@click.command("cp")
@click.argument("src")
@click.argument("dst")
@click.option("-r", "-R", "--recursive", is_flag=True, help="Copy a directory tree.")
@_NO_TARGET_DIR
@with_fs
def cp_cmd(fs: NexusFS, src: str, dst: str, recursive: bool, exact: bool) -> None:
    """Copy SRC to DST.

    If DST is an existing directory, SRC is copied into it. Copies share content: no
    bytes are copied unless DST is in another object store.
    """
    from nexusfs import paths
    from nexusfs.cli.listing import iter_entries

    target = dst if exact else into_dir(fs, src, dst)
    meta = fs.stat(src)
    if not meta.is_dir:
        fs.copy(src, target)
        return
    if not recursive:
        raise IsADirectory("is a directory (use cp -r)", path=meta.path)
    s, d = meta.path, paths.normalize(target)
    if paths.is_within(d, s):
        raise InvalidPath("cannot copy a directory into itself", path=d)
    fs.mkdir(d, exist_ok=True)
    for entry in iter_entries(fs, s, recursive=True):
        to = d + entry.path[len(s) :]
        if entry.is_dir:
            fs.mkdir(to, exist_ok=True)
        else:
            fs.copy(entry.path, to)


COMMANDS = (write_cmd, cat_cmd, mkdir_cmd, rm_cmd, rmdir_cmd, mv_cmd, cp_cmd)
