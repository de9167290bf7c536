"""Plumbing shared by the commands: settings, opening the kernel, reporting errors.

* :class:`Settings` carries the global options (``--data-dir``, ``--durability``) on the
  click context.
* :func:`with_fs` is the decorator for a command that needs the kernel: it opens it
  (lazily importing the kernel and its native metastore), passes it as the first
  argument and always closes it, so deferred writes are flushed before the process
  exits.
* :func:`describe_error` turns a ``NexusError`` / ``OSError`` / ``ValueError`` into the
  one line the CLI prints (``nexus: not found: /a/b``); :class:`CLIError` is the click
  exception that prints it and exits 1.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Concatenate, ParamSpec, TypeVar

import click

from nexusfs.errors import NexusError, NotFound

if TYPE_CHECKING:
    from nexusfs.api import FileSystem as NexusFS

__all__ = [
    "EXIT_ERROR",
    "EXIT_INTERRUPTED",
    "CLIError",
    "Settings",
    "describe_error",
    "open_fs",
    "report",
    "settings",
    "with_fs",
]

P = ParamSpec("P")
R = TypeVar("R")

EXIT_ERROR = 1
EXIT_INTERRUPTED = 130
DEFAULT_DATA_DIR = "nexus-data"
METASTORE_FILE = "metastore.redb"

# Messages that only restate the error class; the label alone says it.
_GENERIC = frozenset(
    {
        "no such file or directory",
        "file exists",
        "is a directory",
        "not a directory",
        "directory not empty",
    }
)


@dataclass(frozen=True, slots=True)
class Settings:
    """The global options."""

    data_dir: Path
    durability: str | None = None

    @property
    def metastore_path(self) -> Path:
        """Where ``connect`` keeps the root metastore of this data directory."""
        override = os.environ.get("NEXUS_METASTORE")
        return Path(override) if override else self.data_dir / METASTORE_FILE


def settings() -> Settings:
    """The :class:`Settings` of the running command."""
    obj = click.get_current_context().find_object(Settings)
    if obj is None:  # a command invoked outside the ``nexus`` group (tests)
        return Settings(Path(os.environ.get("NEXUS_DATA_DIR") or DEFAULT_DATA_DIR))
    return obj


@contextmanager
def open_fs(cfg: Settings, *, create: bool = False) -> Iterator[NexusFS]:
    """Open the kernel on ``cfg.data_dir`` and close (flush) it on the way out.

    Without ``create`` a missing data directory is an error that says to run
    ``nexus init``. No background flusher runs: a command is short and ``close()``
    flushes everything it wrote.
    """
    import nexusfs

    if not create and not cfg.data_dir.is_dir():
        raise NotFound(
            "no NexusFS data directory here (run 'nexus init' or pass --data-dir)",
            path=str(cfg.data_dir),
        )
    fs = nexusfs.connect(
        data_dir=cfg.data_dir, durability=cfg.durability, flush_interval=0, create=create
    )
    with fs:
        yield fs


def with_fs(func: Callable[Concatenate[NexusFS, P], R]) -> Callable[P, R]:
    """Decorate a click command callback that takes the kernel as its first argument."""

    @functools.wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        with open_fs(settings()) as fs:
            return func(fs, *args, **kwargs)

    return wrapper


def describe_error(exc: BaseException) -> str:
    """One line that says what went wrong, without the ``nexus:`` prefix."""
    if isinstance(exc, NexusError):
        label = exc.code.replace("_", " ")
        message = exc.message.strip()
        for prefix in (label, *(g for g in _GENERIC if message.lower().startswith(g))):
            if message.lower().startswith(prefix):
                message = message[len(prefix) :].lstrip(" :")
                break
        if exc.path is None:
            return f"{label}: {message}" if message else label
        if not message:
            return f"{label}: {exc.path}"
        sep = " " if message.startswith("(") else ": "
        return f"{label}: {exc.path}{sep}{message}"
    if isinstance(exc, OSError) and exc.strerror:
        where = exc.filename if exc.filename is not None else None
        text = exc.strerror
        if where is not None:
            text = f"{os.fsdecode(where)}: {text}"
        if exc.filename2 is not None:
            text = f"{text} -> {os.fsdecode(exc.filename2)}"
        return text
    text = str(exc).strip() or type(exc).__name__
    return " ".join(text.split())  # one line, whatever the message holds


class CLIError(click.ClickException):
    """An operation failed: print ``nexus: <message>`` to stderr and exit 1."""

    exit_code = EXIT_ERROR

    def show(self, file: IO[Any] | None = None) -> None:
        click.echo(f"nexus: {self.format_message()}", file=file or sys.stderr)


def report(exc: BaseException) -> None:
    """Print the one-line message of ``exc`` to stderr (for commands that go on after
    a failure, like ``rm a b c``)."""
    CLIError(describe_error(exc)).show()


def binary_stdout() -> IO[bytes]:
    """The binary stdout stream (looked up at call time, so CliRunner captures it)."""
    return sys.stdout.buffer
