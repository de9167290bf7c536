"""Output helpers: human-readable sizes and times, JSON, and rich tables.

rich is imported only by :func:`console` and :func:`print_table`, i.e. only by the
commands that draw a table or a progress bar; plain output goes through ``click.echo``.
When stdout is not a terminal, tables are drawn without colour and without wrapping,
so their lines can be parsed.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from rich.console import Console, JustifyMethod

    from nexusfs.metadata.inode import FileMetadata

__all__ = [
    "console",
    "entry_name",
    "format_time",
    "human_size",
    "print_json",
    "print_table",
    "type_label",
]

_UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB")
_WIDE = 4096  # columns of a table written to a pipe: never wrap or truncate


def human_size(n: int) -> str:
    """``1536`` -> ``"1.5 KiB"``; bytes below 1 KiB are exact (``"12 B"``)."""
    if n < 1024:
        return f"{n} B"
    value = float(n)
    for unit in _UNITS[1:]:
        value /= 1024
        if value < 1024 or unit == _UNITS[-1]:
            return f"{value:.1f} {unit}"
    raise AssertionError("unreachable")


def format_time(ts: float | None) -> str:
    """A Unix time as local ``YYYY-MM-DD HH:MM:SS`` (``-`` when unknown)."""
    if not ts:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def type_label(meta: FileMetadata) -> str:
    """``file``, ``dir`` or ``mount``."""
    name = meta.entry_type.name.lower()
    return "dir" if name == "directory" else name


def entry_name(meta: FileMetadata, base: str | None = None) -> str:
    """The name to show for ``meta``: its path relative to ``base`` when given (for
    recursive listings), else its last segment; directories end with ``/``."""
    if base is None:
        name = meta.name or "/"
    elif base == "/":
        name = meta.path[1:] or "/"
    else:
        name = meta.path[len(base) + 1 :] or meta.name
    return f"{name}/" if meta.is_dir and not name.endswith("/") else name


def print_json(value: Any) -> None:
    """Write ``value`` to stdout as indented JSON."""
    click.echo(json.dumps(value, indent=2, ensure_ascii=False))


def console(*, stderr: bool = False) -> Console:
    """A rich console on stdout (or stderr). Plain and unwrapped when not a terminal."""
    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    tty = stream.isatty()
    return Console(
        file=stream,
        stderr=stderr,
        width=None if tty else _WIDE,
        no_color=not tty,
        highlight=False,
        soft_wrap=not tty,
    )


def print_table(
    columns: Sequence[tuple[str, JustifyMethod]],
    rows: Iterable[Sequence[str]],
    *,
    title: str | None = None,
) -> None:
    """Draw a table on stdout. ``columns`` are ``(header, justify)`` pairs."""
    from rich import box
    from rich.table import Table

    table = Table(box=box.SIMPLE_HEAD, title=title, pad_edge=False, show_edge=False)
    for header, justify in columns:
        table.add_column(header, justify=justify, no_wrap=header != "NAME")
    for row in rows:
        table.add_row(*row)
    console().print(table)
