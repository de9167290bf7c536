"""Kernel-side handle of one worker process, and the supervision policy.

Invariants:

* A :class:`WorkerHandle` is created with a fresh random ``token`` before its process
  is told to start; the host accepts a ``host.hello`` only with a token it issued and has
  not yet consumed, so each bus connection binds to exactly one handle.
* ``ready`` is set once, after ``host.ready``; ``exited`` once, when the process has
  been reaped (``exit_code`` then holds its code, negative for a signal).
* ``inflight`` counts kernel->worker calls currently outstanding on the handle (client
  calls, hook calls, post-hook batches); ``drained`` is set whenever a *retired* handle
  reaches zero, which is what a hot restart waits for before stopping it.
* ``kill()`` SIGKILLs the worker's whole process group (it runs in its own session), is
  idempotent and never raises.
* :class:`PopenProcess` makes a worker started with ``subprocess.Popen`` (prestarted by
  the daemon, :mod:`nexusfs.services._spawn`) look like the ``anyio`` processes the
  supervisor starts itself.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import anyio.to_thread

from nexusfs.bus import Connection

__all__ = ["Policy", "PopenProcess", "WorkerHandle", "close_proc", "describe_exit", "first_of",
           "log_tail"]


@dataclass(slots=True)
class Policy:
    """Supervision knobs (all seconds unless named otherwise); ``from_config`` reads
    ``config["supervisor"]``. ``post_linger``: how long post-hook events wait for more
    to share their delivery batch; ``post_max_linger``: how long at most under load
    (:class:`~nexusfs.services.outbox.Outbox`)."""

    heartbeat_interval: float = 0.5
    heartbeat_timeout: float = 1.0
    heartbeat_misses: int = 3
    handshake_timeout: float = 10.0
    start_timeout: float = 30.0
    backoff_base: float = 0.05
    backoff_cap: float = 5.0
    max_restarts: int = 5
    restart_window: float = 30.0
    stable_after: float = 1.0
    drain_timeout: float = 10.0
    stop_timeout: float = 5.0
    post_timeout: float = 30.0
    post_linger: float = 0.005
    post_max_linger: float = 0.05
    warm_spare: bool = True
    #: After a service's first start, its warm spare waits this long, so that it does not
    #: compete for the CPU with the kernel's own start-up.
    first_spare_delay: float = 1.0
    log_max_bytes: int = 1 << 20

    @classmethod
    def from_config(cls, cfg: dict[str, Any] | None) -> Policy:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in (cfg or {}).items() if k in known})


class WorkerHandle:
    """One worker process as the kernel sees it (see the module docstring)."""

    def __init__(self, token: str, log_path: Path) -> None:
        self.token = token
        self.log_path = log_path
        self.proc: anyio.abc.Process | None = None
        self.pid: int | None = None
        self.conn: Connection | None = None
        self.hello: dict[str, Any] = {}
        self.methods: frozenset[str] = frozenset()
        self.idempotent: frozenset[str] = frozenset()
        self.hello_event = anyio.Event()
        self.ready = anyio.Event()
        self.exited = anyio.Event()
        self.exit_code: int | None = None
        self.inflight = 0
        self.drained = anyio.Event()
        self.retired = False
        self.installed = False
        self.lost = False
        self.lost_reason = ""
        self.started_at = time.monotonic()
        self.ready_at = 0.0
        try:
            self.log_offset = log_path.stat().st_size
        except OSError:
            self.log_offset = 0

    @property
    def version(self) -> str:
        return str(self.hello.get("version", ""))

    def done_call(self) -> None:
        self.inflight -= 1
        if self.retired and self.inflight <= 0:
            self.drained.set()

    def kill(self) -> None:
        if self.pid is None or self.exited.is_set():
            return
        with contextlib.suppress(OSError):
            os.killpg(self.pid, signal.SIGKILL)
        with contextlib.suppress(OSError):
            os.kill(self.pid, signal.SIGKILL)

    def tail(self, limit: int = 4000) -> str:
        return log_tail(self.log_path, self.log_offset, limit)


class PopenProcess(anyio.abc.Process):
    """A :class:`subprocess.Popen` child seen through ``anyio.abc.Process`` (no pipes)."""

    def __init__(self, popen: subprocess.Popen[bytes]) -> None:
        self._popen = popen

    async def wait(self) -> int:
        """The exit code once the process has exited (a pidfd when the OS has them, so
        only this child is reaped; else a worker thread)."""
        if self._popen.returncode is not None:
            return self._popen.returncode
        fd = -1
        with contextlib.suppress(OSError, AttributeError):
            fd = os.pidfd_open(self._popen.pid)
        if fd < 0:
            return await anyio.to_thread.run_sync(self._popen.wait, abandon_on_cancel=True)
        try:
            await anyio.wait_readable(fd)  # readable once the process has exited
        finally:
            os.close(fd)
        return self._popen.wait()

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def send_signal(self, signal: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            self._popen.send_signal(signal)

    @property
    def pid(self) -> int:
        return self._popen.pid

    @property
    def returncode(self) -> int | None:
        return self._popen.poll()

    @property
    def stdin(self) -> None:
        return None

    @property
    def stdout(self) -> None:
        return None

    @property
    def stderr(self) -> None:
        return None

    async def aclose(self) -> None:
        await self.wait()


def log_tail(path: Path, offset: int = 0, limit: int = 4000) -> str:
    """The last ``limit`` characters written to ``path`` after byte ``offset`` (the whole
    file when it was rotated since)."""
    try:
        with open(path, "rb") as f:
            size = f.seek(0, os.SEEK_END)
            if size < offset:
                offset = 0
            f.seek(max(offset, size - limit))
            return f.read().decode(errors="replace").strip()
    except OSError:
        return ""


def describe_exit(code: int | None) -> str:
    if code is None:
        return "still running"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited with code {code}"


async def first_of(a: anyio.Event, b: anyio.Event, timeout: float) -> bool:
    """Wait until ``a`` or ``b`` is set; False on timeout."""
    with anyio.move_on_after(timeout):
        while not (a.is_set() or b.is_set()):
            async with anyio.create_task_group() as tg:

                async def wait(e: anyio.Event) -> None:
                    await e.wait()
                    tg.cancel_scope.cancel()

                tg.start_soon(wait, a)
                tg.start_soon(wait, b)
        return True
    return False


async def close_proc(proc: anyio.abc.Process) -> None:
    with anyio.CancelScope(shield=True):
        with contextlib.suppress(Exception):
            if proc.stdin is not None:
                await proc.stdin.aclose()
        with anyio.move_on_after(2.0):
            await proc.wait()
        if proc.returncode is None:
            with contextlib.suppress(OSError):
                proc.kill()
            with anyio.move_on_after(2.0):
                await proc.wait()
