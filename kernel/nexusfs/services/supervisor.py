"""One supervisor per service: spawn, handshake, watch, restart, hot restart.

States (``Supervisor.state``): ``starting`` (wanted, never ready since the last explicit
start), ``running``, ``restarting`` (a worker was lost and a new one is on its way, or a
hot restart is in progress while the old worker still serves), ``degraded`` (more than
``max_restarts`` restarts within ``restart_window``: it keeps retrying at
``backoff_cap`` intervals and says so - never a silent give-up), ``failed`` (the plugin
cannot be loaded: exit code 3; no retry until an explicit start/restart), ``stopped``.

Invariants and failure semantics:

* At most one worker is *current* (routable) at a time, and only after it completed the
  handshake (``host.hello``) and start (``host.ready``). Routing switches atomically
  (one assignment on the event loop).
* Loss of the current worker is detected at once when the process exits (reaper task),
  and by heartbeat when it hangs (``service.ping`` every ``heartbeat_interval``,
  ``heartbeat_misses`` consecutive misses -> SIGKILL). A closed bus connection also
  counts as loss (the process is then killed). A lost worker is replaced after a
  backoff delay drawn with full jitter from ``[0, min(cap, base * 2**n)]``, ``n`` being
  the consecutive failures (reset once a worker stayed up ``stable_after`` seconds).
* A worker that does not say hello within ``handshake_timeout`` (or is not ready within
  ``start_timeout``) is killed and counts as a failed restart, with ``last_error``
  saying so and carrying its output tail.
* Hot restart starts the new worker *while the old one serves*, switches routing when
  the new one is ready, waits (``drain_timeout``) for calls in flight on the old one,
  asks it to ``service.stop`` and kills it if it has not exited ``stop_timeout`` later.
  If the new worker fails to come up, the old one keeps serving and the error is raised.
* A warm spare (an interpreter that imported everything but the plugin, blocked on
  stdin) is kept per service when ``warm_spare``; crash restarts use it, hot restarts
  start a fresh process. Either way the plugin is imported only on activation, so a
  worker always runs the plugin code that is on disk at that moment. After the first
  start the spare waits ``first_spare_delay`` (the kernel is still starting up).
* The first worker may be one the daemon started before the host existed
  (:class:`~nexusfs.services._spawn.PrestartedWorker`): it is adopted by the first
  start exactly as if spawned there (same handshake, timeouts and failure handling),
  and killed if a hot restart or a stop comes first.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import secrets
import shutil
import subprocess
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import anyio.abc

from nexusfs.errors import NexusError, ServiceUnavailable
from nexusfs.services._spawn import PrestartedWorker, worker_command, worker_env
from nexusfs.services._worker_handle import (
    Policy,
    PopenProcess,
    WorkerHandle,
    close_proc,
    describe_exit,
    first_of,
    log_tail,
)
from nexusfs.services.outbox import Outbox
from nexusfs.services.registry import ServiceEntry

__all__ = ["STATES", "Supervisor"]

log = logging.getLogger("nexusfs.services")

STATES = ("starting", "running", "restarting", "degraded", "failed", "stopped")
EXIT_LOAD_FAILED = 3  # worker.EXIT_LOAD_FAILED (not imported: keeps the kernel light)


class _StartFailed(Exception):
    """The worker did not come up (retried with backoff)."""


class _LoadFailed(Exception):
    """The plugin cannot be loaded (exit code 3): ``failed``."""


class Supervisor:
    """Supervises the workers of one service (see the module docstring).

    ``tokens`` is the host's table of issued handshake tokens; ``on_change(sup)`` is
    called whenever the current worker or the wanted state changes (the host re-indexes
    hooks there)."""

    def __init__(self, entry: ServiceEntry, *, socket_path: Path, run_dir: Path,
                 data_dir: Path, policy: Policy, tokens: dict[str, WorkerHandle],
                 on_change: Callable[[Supervisor], None],
                 env: dict[str, str] | None = None, outbox_capacity: int = 100_000,
                 prestarted: PrestartedWorker | None = None) -> None:
        self.name = entry.name
        self.entry = entry
        self.socket_path = socket_path
        self.policy = policy
        self.tokens = tokens
        self.on_change = on_change
        self.log_path = run_dir / "services" / f"{self.name}.log"
        self.state_dir = data_dir / "services" / self.name
        self.env = env or {}
        self.outbox = Outbox(self.name, capacity=outbox_capacity, linger=policy.post_linger,
                             max_linger=policy.post_max_linger)
        self.current: WorkerHandle | None = None
        self.wanted = False
        self.failed = False
        self.hot_restarting = False
        #: (pre_hooks, post_hooks) of the last worker that said hello (kept across crashes)
        self.hooks: tuple[tuple[str, ...], tuple[str, ...]] = ((), ())
        self.restarts = 0
        self._restart_times: deque[float] = deque()
        self._consecutive = 0
        self._immediate = True
        self._ever_ready = False
        self.last_exit: str | None = None
        self.last_error: str | None = None
        self._changed = anyio.Event()
        self._wake = anyio.Event()
        self._spare: anyio.abc.Process | None = None
        self._prestarted = prestarted
        if prestarted is not None:  # its hello may come before the first start runs
            pre_handle = WorkerHandle(prestarted.token, self.log_path)
            pre_handle.log_offset = prestarted.log_offset
            tokens[prestarted.token] = pre_handle
        self._restart_lock = anyio.Lock()
        self._tg: anyio.abc.TaskGroup | None = None

    # -- status ------------------------------------------------------------------------

    @property
    def degraded(self) -> bool:
        now = time.monotonic()
        times = self._restart_times
        while times and now - times[0] > self.policy.restart_window:
            times.popleft()
        return len(times) > self.policy.max_restarts

    @property
    def state(self) -> str:
        if self.failed:
            return "failed"
        if not self.wanted:
            return "stopped"
        if self.degraded:
            return "degraded"
        if self.current is None:
            return "restarting" if self._ever_ready else "starting"
        return "restarting" if self.hot_restarting else "running"

    def _pulse(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()
        self.on_change(self)

    def _wakeup(self) -> None:
        self._wake.set()

    # -- routing -----------------------------------------------------------------------

    async def wait_ready(self, deadline: float | None) -> WorkerHandle:
        """The current ready worker; waits for one (a start or restart in progress)
        until ``deadline`` (absolute ``time.time()``; ``None`` = forever). Raises
        ``ServiceUnavailable`` at the deadline, or at once when the service is stopped
        or failed."""
        while True:
            w = self.current
            if w is not None:
                return w
            if not self.wanted:
                raise ServiceUnavailable(
                    f"service {self.name} is {self.state}"
                    + (f": {self.last_error}" if self.last_error else ""))
            changed = self._changed
            if deadline is None:
                await changed.wait()
                continue
            remaining = deadline - time.time()
            if remaining <= 0:
                raise ServiceUnavailable(
                    f"service {self.name} not ready before the deadline (state {self.state}"
                    + (f"; last error: {self.last_error[-300:]}" if self.last_error else "")
                    + ")")
            with anyio.move_on_after(remaining):
                await changed.wait()

    def lost(self, w: WorkerHandle, reason: str) -> None:
        """Worker ``w`` is gone or unusable (called by the reaper, the heartbeat, or a
        caller that saw its connection drop). Idempotent per worker."""
        if w.lost:
            return
        w.lost = True
        w.lost_reason = w.lost_reason or reason
        w.kill()
        if w is not self.current:
            return
        self.current = None
        ran = time.monotonic() - w.ready_at
        if ran >= self.policy.stable_after:
            self._consecutive = 0
        self._note_failure(f"worker pid {w.pid} lost: {w.lost_reason}", w)
        self._pulse()
        self._wakeup()

    def _note_failure(self, error: str, w: WorkerHandle | None) -> None:
        self.restarts += 1
        self._restart_times.append(time.monotonic())
        self._consecutive += 1
        tail = w.tail() if w is not None else ""
        self.last_error = f"{error}\n{tail}".strip() if tail else error
        log.warning("service %s: %s", self.name, error)

    # -- control -----------------------------------------------------------------------

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
                  ) -> None:
        """The supervision loop; runs until cancelled (the host stops it first)."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        async with anyio.create_task_group() as tg:
            self._tg = tg
            tg.start_soon(self.outbox.run, self._send_post)
            task_status.started()
            while True:
                if not self.wanted or self.current is not None or self.hot_restarting:
                    self._wake = anyio.Event()
                    await self._wake.wait()
                    continue
                if not self._immediate:
                    delay = self._backoff()
                    self._wake = anyio.Event()
                    with anyio.move_on_after(delay):
                        await self._wake.wait()
                    if not self.wanted or self.current is not None or self.hot_restarting:
                        continue
                self._immediate = False
                try:
                    w = await self._spawn_ready(fresh=False)
                except _LoadFailed as exc:
                    self.failed = True
                    self.wanted = False
                    self.last_error = str(exc)
                    log.error("service %s failed: %s", self.name, exc)
                    self._pulse()
                    continue
                except _StartFailed as exc:
                    self._note_failure(str(exc), None)
                    self._pulse()
                    continue
                if self.wanted and self.current is None and not self.hot_restarting:
                    self._install(w)
                else:
                    tg.start_soon(self._retire, w)

    def _backoff(self) -> float:
        p = self.policy
        if self.degraded:
            return p.backoff_cap
        n = max(0, self._consecutive - 1)
        return random.uniform(0.0, min(p.backoff_cap, p.backoff_base * (2 ** min(n, 30))))

    def start(self) -> None:
        """Want the service running (clears ``failed``; restarts immediately)."""
        if self.wanted and not self.failed:
            return
        self.wanted = True
        self.failed = False
        self._immediate = True
        self._ever_ready = False
        self._consecutive = 0
        self._pulse()
        self._wakeup()

    async def stop(self) -> None:
        """Stop gracefully: no new routing, drain, ``service.stop``, kill on timeout.
        Pending post-hook events are discarded."""
        self.wanted = False
        w, self.current = self.current, None
        self.outbox.clear()
        self._discard_spare()
        self._discard_prestarted()
        self._pulse()
        self._wakeup()
        if w is not None:
            await self._retire(w)

    async def restart(self) -> None:
        """Hot restart (see the module docstring). On a service that is not running this
        is a start that waits for the worker (up to ``start_timeout``). Raises
        ``ServiceUnavailable`` when the new worker cannot come up."""
        async with self._restart_lock:
            old = self.current
            if old is None:
                self.wanted = True
                self.failed = False
                self._immediate = True
                self._consecutive = 0
                self._pulse()
                self._wakeup()
                await self.wait_ready(time.time() + self.policy.start_timeout
                                      + self.policy.handshake_timeout)
                return
            self.hot_restarting = True
            self._discard_spare()
            self._discard_prestarted()
            self._pulse()
            try:
                new = await self._spawn_ready(fresh=True)
            except (_LoadFailed, _StartFailed) as exc:
                self.last_error = f"hot restart failed, old worker keeps serving: {exc}"
                raise ServiceUnavailable(f"service {self.name}: {self.last_error}") from None
            finally:
                self.hot_restarting = False
                self._wakeup()
            if self.current is not old or not self.wanted:
                # The old worker died meanwhile (or a stop came): plain replacement.
                if self.wanted and self.current is None:
                    self._install(new)
                else:
                    await self._retire(new)
                return
            old.retired = True
            self._install(new)
            await self._retire(old)

    # -- internals ---------------------------------------------------------------------

    def _install(self, w: WorkerHandle) -> None:
        w.installed = True
        w.ready_at = time.monotonic()
        first = not self._ever_ready
        self.current = w
        self._ever_ready = True
        self._pulse()
        assert self._tg is not None
        self._tg.start_soon(self._heartbeat, w)
        if self.policy.warm_spare and self._spare is None:
            self._tg.start_soon(self._make_spare,
                                self.policy.first_spare_delay if first else 0.0)  # fmt: skip

    async def _retire(self, w: WorkerHandle) -> None:
        """Drain ``w`` (calls in flight), stop it gracefully, kill it on timeout."""
        p = self.policy
        w.retired = True
        if w.inflight > 0:
            with anyio.move_on_after(p.drain_timeout, shield=True):
                await w.drained.wait()
        with anyio.CancelScope(shield=True):
            if w.conn is not None and not w.conn.closed and not w.exited.is_set():
                with contextlib.suppress(NexusError):
                    await w.conn.call("service.stop", timeout=p.stop_timeout)
            with anyio.move_on_after(p.stop_timeout):
                await w.exited.wait()
            if not w.exited.is_set():
                log.warning("service %s: worker pid %s did not stop in time; killing",
                            self.name, w.pid)
                w.kill()
                with anyio.move_on_after(2.0):
                    await w.exited.wait()

    async def _open(self) -> anyio.abc.Process:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as logf:
            return await anyio.open_process(
                worker_command(self.name, self.socket_path, self.state_dir),
                stdin=subprocess.PIPE, stdout=logf, stderr=logf, env=worker_env(self.env),
                start_new_session=True,
            )  # fmt: skip

    async def _make_spare(self, delay: float = 0.0) -> None:
        if delay > 0:
            await anyio.sleep(delay)
            if self._spare is not None or not self.wanted:
                return
        try:
            proc = await self._open()
        except OSError as exc:
            log.warning("service %s: cannot start a warm spare: %s", self.name, exc)
            return
        if self._spare is not None or not self.wanted:
            await close_proc(proc)
            return
        self._spare = proc

    def _discard_prestarted(self) -> None:
        pre, self._prestarted = self._prestarted, None
        if pre is not None:
            self.tokens.pop(pre.token, None)
            pre.discard()

    def _discard_spare(self) -> None:
        spare, self._spare = self._spare, None
        if spare is None:
            return
        try:
            assert self._tg is not None
            self._tg.start_soon(close_proc, spare)
        except (RuntimeError, AssertionError):
            with contextlib.suppress(OSError):
                spare.kill()

    async def _spawn_ready(self, *, fresh: bool) -> WorkerHandle:
        """Start a worker and wait until it is ready. :class:`_LoadFailed` for exit code
        3, :class:`_StartFailed` for anything else (process killed first)."""
        p = self.policy
        self._rotate_log()  # (the worker creates its state_dir itself)
        pre = self._prestarted
        proc: anyio.abc.Process | None = None
        if pre is not None and not fresh and pre.token in self.tokens:
            # Started by the daemon with its token (registered at construction).
            self._prestarted = None
            w = self.tokens[pre.token]
            proc = PopenProcess(pre.popen)
        else:
            self._discard_prestarted()
            w = WorkerHandle(secrets.token_urlsafe(18), self.log_path)
            if not fresh and self._spare is not None and self._spare.returncode is None:
                proc, self._spare = self._spare, None
        if proc is None:
            proc = await self._open()
        w.proc, w.pid = proc, proc.pid
        self.tokens[w.token] = w
        assert self._tg is not None
        self._tg.start_soon(self._reap, w)
        try:
            try:
                if proc.stdin is not None:  # (a prestarted worker has its token)
                    await proc.stdin.send(w.token.encode() + b"\n")
                    await proc.stdin.aclose()
            except (OSError, anyio.BrokenResourceError, anyio.ClosedResourceError):
                pass  # it died; the reaper reports it below
            if not await first_of(w.hello_event, w.exited, p.handshake_timeout):
                w.kill()
                raise _StartFailed(f"handshake timeout: worker pid {w.pid} did not say "
                                   f"hello within {p.handshake_timeout:g}s; killed")
            if not w.exited.is_set() and not await first_of(w.ready, w.exited, p.start_timeout):
                w.kill()
                raise _StartFailed(f"start timeout: worker pid {w.pid} not ready within "
                                   f"{p.start_timeout:g}s; killed")
            if w.exited.is_set() or w.lost:
                await w.exited.wait()
                what = describe_exit(w.exit_code)
                self.last_exit = what
                tail = w.tail()
                if w.exit_code == EXIT_LOAD_FAILED:
                    raise _LoadFailed(f"plugin cannot be loaded (worker {what}):\n{tail}")
                raise _StartFailed(f"worker pid {w.pid} {what} before it was ready\n{tail}")
            return w
        except BaseException:
            w.kill()
            raise
        finally:
            self.tokens.pop(w.token, None)

    async def _reap(self, w: WorkerHandle) -> None:
        assert w.proc is not None
        with anyio.CancelScope(shield=True):
            code = await w.proc.wait()
        w.exit_code = code
        w.exited.set()
        if w.conn is not None:
            await w.conn.aclose()
        if w.installed:
            self.last_exit = describe_exit(code)
            self.lost(w, describe_exit(code))
        if w.retired:
            w.drained.set()

    async def _heartbeat(self, w: WorkerHandle) -> None:
        p = self.policy
        misses = 0
        while not w.lost and not w.retired:
            await anyio.sleep(p.heartbeat_interval)
            if w.lost or w.retired:
                return
            conn = w.conn
            if conn is None or conn.closed:
                self.lost(w, "bus connection lost")
                return
            try:
                await conn.call("service.ping", timeout=p.heartbeat_timeout)
                misses = 0
            except NexusError:
                misses += 1
                if misses >= p.heartbeat_misses and not w.retired:
                    self.lost(w, f"hung: {misses} heartbeats missed "
                                 f"({p.heartbeat_timeout:g}s each); killed")
                    return
            self._rotate_log()

    def _rotate_log(self) -> None:
        try:
            if self.log_path.stat().st_size <= self.policy.log_max_bytes:
                return
            shutil.copyfile(self.log_path, self.log_path.with_suffix(".log.1"))
            os.truncate(self.log_path, 0)
        except OSError:
            pass

    async def _send_post(self, first: int, batch: list[Any]) -> int:
        w = await self.wait_ready(None)
        w.inflight += 1
        try:
            assert w.conn is not None
            return int(await w.conn.request("hook.post", {"first": first, "batch": batch},
                                            timeout=self.policy.post_timeout))
        finally:
            w.done_call()

    def logs(self, lines: int = 100) -> str:
        text = log_tail(self.log_path, 0, max(4096, lines * 400))
        return "\n".join(text.splitlines()[-lines:])

