"""The event loop that bus processes (the kernel process, service workers) run on.

:func:`run` is ``anyio.run`` on the asyncio backend, with uvloop's loop when uvloop is
installed: a bus round trip is mostly event-loop overhead, and uvloop's is a fraction of
the pure-Python selector loop's (see ``bench/bench_bus.py``). ``NEXUS_EVENT_LOOP``
chooses explicitly: ``asyncio`` (the standard loop), ``uvloop`` (required: an error if
it is not installed) or ``auto`` (the default: uvloop if installed).

Invariants: the choice is made once per :func:`run` call, from the environment at that
moment; a bad ``NEXUS_EVENT_LOOP`` value or a required but missing uvloop raises
:class:`~nexusfs.errors.ConfigError` before anything runs. Everything in NexusFS works
on both loops (the bus's fast engine only needs ``add_reader``/``add_writer``).
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Awaitable, Callable
from typing import Any, Final, TypeVar

import anyio

from nexusfs.errors import ConfigError

__all__ = ["ENV", "event_loop_name", "preload", "run"]

ENV: Final = "NEXUS_EVENT_LOOP"
_CHOICES: Final = ("auto", "asyncio", "uvloop")

T = TypeVar("T")


def event_loop_name(value: str | None = None) -> str:
    """``"uvloop"`` or ``"asyncio"``: the loop :func:`run` would use for ``value``
    (default: ``$NEXUS_EVENT_LOOP``). ``ConfigError`` for an unknown value, or for
    ``uvloop`` when it is not installed."""
    choice = (os.environ.get(ENV, "auto") if value is None else value).strip().lower() or "auto"
    if choice not in _CHOICES:
        raise ConfigError(f"{ENV}={choice!r}: expected one of {', '.join(_CHOICES)}")
    have_uvloop = importlib.util.find_spec("uvloop") is not None
    if choice == "uvloop" and not have_uvloop:
        raise ConfigError(f"{ENV}=uvloop but uvloop is not installed (pip install uvloop)")
    if choice == "asyncio" or not have_uvloop:
        return "asyncio"
    return "uvloop"


def preload(loop: str | None = None) -> str:
    """Import the chosen loop's module now (a warm spare worker does this before it
    waits for activation, so a restart does not pay the import); returns its name.
    ``ConfigError`` as for :func:`event_loop_name`."""
    name = event_loop_name(loop)
    if name == "uvloop":
        importlib.import_module("uvloop")
    return name


def run(func: Callable[..., Awaitable[T]], *args: Any, loop: str | None = None) -> T:
    """``anyio.run(func, *args)`` on the loop :func:`event_loop_name` picks for ``loop``
    (default ``$NEXUS_EVENT_LOOP``). Raises what ``func`` raises, ``ConfigError`` for a
    bad choice."""
    name = event_loop_name(loop)
    return anyio.run(func, *args, backend="asyncio",
                     backend_options={"use_uvloop": name == "uvloop"})
