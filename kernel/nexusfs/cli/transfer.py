"""Copying between the local disk and NexusFS: ``put`` and ``get``.

Both stream in 1 MiB chunks (``NexusFS.open("wb")`` / ``iter_read``), so memory stays
bounded whatever the file size. A rich progress bar is drawn on stderr for files over
8 MiB, and only when stderr is a terminal. ``put`` commits each file atomically (an
interrupted upload leaves the old version); ``get`` writes a hidden temporary file next
to the destination and renames it into place, so an interrupted download never leaves
a truncated file under the destination name.
"""

from __future__ import annotations

import errno
import os
import sys
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import IO, TYPE_CHECKING

import click

from nexusfs.cli.fileops import CHUNK, target_in
from nexusfs.cli.runtime import binary_stdout, with_fs
from nexusfs.errors import IsADirectory, NotFound

if TYPE_CHECKING:
    from nexusfs.api import FileSystem as NexusFS

__all__ = ["COMMANDS", "PROGRESS_MIN", "progress"]

PROGRESS_MIN = 8 << 20  # files larger than this get a progress bar (on a terminal)


@contextmanager
def progress(label: str, total: int, *, enabled: bool = True) -> Iterator[Callable[[int], None]]:
    """Yield ``advance(nbytes)``; draws a bar on stderr only for a large ``total`` when
    stderr is a terminal (never when it is a pipe or a file)."""
    if not enabled or total <= PROGRESS_MIN or not sys.stderr.isatty():
        yield lambda _n: None
        return
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    from nexusfs.cli.output import console

    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(binary_units=True),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=console(stderr=True),
    ) as bar:
        task = bar.add_task(label, total=total)
        yield lambda n: bar.advance(task, n)


def _copy(chunks: Iterable[bytes], out: IO[bytes], advance: Callable[[int], None]) -> None:
    for chunk in chunks:
        out.write(chunk)
        advance(len(chunk))


def _read_chunks(src: IO[bytes]) -> Iterator[bytes]:
    while chunk := src.read(CHUNK):
        yield chunk


def upload(fs: NexusFS, local: Path, remote: str, *, show_progress: bool) -> None:
    """Stream one local file into NexusFS at ``remote`` (committed atomically)."""
    size = local.stat().st_size
    with (
        open(local, "rb") as src,
        progress(local.name, size, enabled=show_progress) as advance,
        fs.open(remote, "wb") as out,
    ):
        _copy(_read_chunks(src), out, advance)


def download(fs: NexusFS, remote: str, local: Path, *, show_progress: bool) -> None:
    """Stream one NexusFS file to ``local`` through a temporary file renamed into place."""
    meta = fs.stat(remote)
    if meta.is_dir:
        raise IsADirectory("is a directory (use get -r)", path=meta.path)
    if not local.parent.is_dir():
        raise FileNotFoundError(errno.ENOENT, "No such directory", str(local.parent))
    import tempfile

    fd, tmp = tempfile.mkstemp(dir=local.parent, prefix=f".{local.name}.", suffix=".part")
    try:
        with (
            os.fdopen(fd, "wb") as out,
            progress(meta.name, meta.size, enabled=show_progress) as advance,
        ):
            _copy(fs.iter_read(meta.path, chunk_size=CHUNK), out, advance)
        os.chmod(tmp, _new_file_mode(local))
        os.replace(tmp, local)
    except BaseException:
        with suppress(OSError):
            os.unlink(tmp)
        raise


def _new_file_mode(path: Path) -> int:
    try:
        return path.stat().st_mode & 0o7777
    except FileNotFoundError:
        mask = os.umask(0)
        os.umask(mask)
        return 0o666 & ~mask


_PROGRESS_OPTION = click.option(
    "--progress/--no-progress",
    "show_progress",
    default=True,
    help="Show a progress bar for large files when stderr is a terminal (default).",
)


@click.command("put")
@click.argument("local", type=click.Path(exists=True, path_type=Path))
@click.argument("remote")
@click.option("-r", "-R", "--recursive", is_flag=True, help="Upload a directory tree.")
@_PROGRESS_OPTION
@with_fs
def put_cmd(fs: NexusFS, local: Path, remote: str, recursive: bool, show_progress: bool) -> None:
    """Upload a local file (or tree, with -r) to REMOTE.

    If REMOTE is an existing directory or ends with '/', LOCAL is put inside it. Each
    file is committed atomically when it is complete.
    """
    from nexusfs import paths

    if local.is_dir():
        if not recursive:
            raise IsADirectoryError(errno.EISDIR, "is a directory (use put -r)", str(local))
        root = target_in(fs, remote, local.resolve().name)
        fs.mkdir(root, parents=True, exist_ok=True)
        for dirpath, dirnames, filenames in os.walk(local):
            dirnames.sort()
            rel = Path(dirpath).relative_to(local).as_posix()
            base = root if rel == "." else paths.normalize(f"{root}/{rel}")
            for name in dirnames:
                fs.mkdir(paths.join(base, name), exist_ok=True)
            for name in sorted(filenames):
                upload(fs, Path(dirpath, name), paths.join(base, name), show_progress=show_progress)
        return
    if remote.endswith("/"):
        target = paths.join(paths.normalize(remote), local.name)
    else:
        target = target_in(fs, remote, local.name)
    upload(fs, local, target, show_progress=show_progress)


@click.command("get")
@click.argument("remote")
@click.argument("local", type=click.Path(path_type=Path, allow_dash=True))
@click.option("-r", "-R", "--recursive", is_flag=True, help="Download a directory tree.")
@_PROGRESS_OPTION
@with_fs
def get_cmd(fs: NexusFS, remote: str, local: Path, recursive: bool, show_progress: bool) -> None:
    """Download REMOTE to a local file (or tree, with -r).

    If LOCAL is an existing directory, REMOTE is saved inside it; '-' writes to stdout.
    """
    meta = fs.stat(remote)
    if str(local) == "-":
        if meta.is_dir:
            raise IsADirectory("is a directory", path=meta.path)
        out = binary_stdout()
        _copy(fs.iter_read(meta.path, chunk_size=CHUNK), out, lambda _n: None)
        out.flush()
        return
    name = meta.name or "nexus-root"
    if local.is_dir():
        local = local / name
    if not meta.is_dir:
        download(fs, meta.path, local, show_progress=show_progress)
        return
    if not recursive:
        raise IsADirectory("is a directory (use get -r)", path=meta.path)
    from nexusfs.cli.listing import iter_entries

    local.mkdir(exist_ok=True)
    base = meta.path.rstrip("/")
    for entry in iter_entries(fs, meta.path, recursive=True):
        dest = local.joinpath(*entry.path[len(base) + 1 :].split("/"))
        if entry.is_dir:
            dest.mkdir(exist_ok=True)
        else:
            try:
                download(fs, entry.path, dest, show_progress=show_progress)
            except NotFound:  # removed while we were copying
                continue


COMMANDS = (put_cmd, get_cmd)
