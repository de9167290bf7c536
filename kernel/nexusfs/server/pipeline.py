"""The syscall pipeline of the kernel process: pre-hooks -> operation -> post-hooks.

Path normalisation and routing happen inside the kernel call itself; this layer adds
what installed services contribute. For each syscall:

1. If no service hooks the operation, the call runs directly: the fast path costs two
   set lookups.
2. Otherwise a :class:`~nexusfs.hookspecs.SyscallEvent` is built (with a kernel-wide,
   increasing ``seq``), pre-hooks run (a veto raises ``PermissionDenied``; a failing or
   silent hook service raises ``ServiceUnavailable`` - the syscall never runs
   unchecked), then the operation, then post-hooks are *queued* (the caller never waits
   for them) with the outcome, success or typed error.
3. When no pre-hook applies, the syscall runs synchronously (:meth:`Pipeline.run_now`:
   the bus answers it without a task). When only post-hooks apply (no watcher either:
   the common case of an audit service), the syscall is *captured*: one tuple of what
   the caller gave, the clock reading and the result's metadata, appended to the host's
   journal - the caller's whole cost. Normalising, summarising, building the wire form,
   fan-out and delivery happen later, batched, off the caller's path (see
   :mod:`nexusfs.services.capture`).

Sequence numbers are microsecond timestamps made strictly increasing, so they stay
unique across restarts of the kernel process (as long as the clock does not go back by
more than the restart takes).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from time import time_ns
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import anyio

from nexusfs import paths
from nexusfs.errors import NexusError
from nexusfs.hookspecs import SyscallEvent, SyscallOutcome
from nexusfs.metadata.inode import FileMetadata
from nexusfs.services.capture import outcome_wire

if TYPE_CHECKING:
    from nexusfs.server.gate import PermissionGate

__all__ = ["HookHost", "Pipeline"]

T = TypeVar("T")


class HookHost(Protocol):
    """What the pipeline needs from the service host."""

    def has_pre_hooks(self, op: str) -> bool: ...
    def has_post_hooks(self, op: str) -> bool: ...
    async def pre_syscall(self, event: SyscallEvent) -> None: ...
    def post_syscall(self, event: SyscallEvent, outcome: SyscallOutcome) -> None: ...
    def kick(self) -> None: ...

    #: Post-hook captures waiting for delivery (see :mod:`nexusfs.services.capture`):
    #: appended to by the pipeline; whoever makes it non-empty calls :meth:`kick`.
    journal: list[tuple[Any, ...]]


class Pipeline:
    """Runs syscalls for sessions; one per kernel process."""

    def __init__(self, host: HookHost | None = None) -> None:
        self.host = host
        #: The permission gate (set by the daemon when the rebac service is configured).
        self.gate: PermissionGate | None = None
        self._last_seq = 0
        self._watchers: dict[int, tuple[str, Callable[[dict[str, Any]], None]]] = {}
        self._watch_ids = 0

    # -- watchers (nx.watch) -----------------------------------------------------------

    def watch(self, prefix: str, deliver: Callable[[dict[str, Any]], None]) -> int:
        """Call ``deliver(event_dict)`` for every finished syscall on ``prefix`` or below
        (and every service-emitted event about such a path) until :meth:`unwatch`.
        ``deliver`` must not block."""
        prefix = paths.normalize(prefix)
        self._watch_ids += 1
        self._watchers[self._watch_ids] = (prefix, deliver)
        return self._watch_ids

    def unwatch(self, watch_id: int) -> None:
        self._watchers.pop(watch_id, None)

    def publish(
        self, kind: str, path: str | None, data: dict[str, Any], dst: str | None = None
    ) -> None:
        """Deliver an event once to each watcher whose prefix covers ``path`` or
        ``dst`` (the destination of a rename or copy)."""
        if not self._watchers:
            return
        event = {"kind": kind, "path": path, "dst": dst, **data}
        for prefix, deliver in list(self._watchers.values()):
            if (path is not None and paths.is_within(path, prefix)) or (
                dst is not None and paths.is_within(dst, prefix)
            ):
                deliver(event)

    def next_seq(self) -> int:
        """The next event sequence number (see the module docstring)."""
        return self._stamp()[1]

    def _stamp(self) -> tuple[float, int]:
        """One clock reading as an event's ``(time, seq)``: the wall-clock time and the
        next sequence number (that time in microseconds, bumped past the last one)."""
        now = time.time_ns()
        seq = now // 1000
        if seq <= self._last_seq:
            seq = self._last_seq + 1
        self._last_seq = seq
        return now / 1e9, seq

    def hooked(self, op: str) -> bool:
        host = self.host
        if self._watchers:
            return True
        return host is not None and (host.has_pre_hooks(op) or host.has_post_hooks(op))

    async def run(
        self,
        op: str,
        path: str,
        fn: Callable[[], T],
        *,
        subject: str | None = None,
        dst: str | None = None,
        args: dict[str, Any] | None = None,
        threaded: bool = False,
    ) -> T:
        """Run ``fn`` as syscall ``op`` on ``path`` through the hooks."""
        if not threaded and self.runs_now(op):
            return self.run_now(op, path, fn, subject=subject, dst=dst, args=args)
        host = self.host
        if not self._watchers and (host is None or not host.has_pre_hooks(op)):
            if host is None or not host.has_post_hooks(op):
                return await anyio.to_thread.run_sync(fn)
            head = self._capture_head(op, path, subject, dst, args)
            try:
                result = await anyio.to_thread.run_sync(fn)
            except BaseException as exc:
                self._post_failure(host, head, exc)
                raise
            self._capture(host, head, result if result.__class__ is FileMetadata else None)
            return result
        event = self.event(op, path, subject=subject, dst=dst, args=args)
        await self._pre_hooks(event)
        try:
            result = await anyio.to_thread.run_sync(fn) if threaded else fn()
        except NexusError as exc:
            self.finish(event, SyscallOutcome(False, exc.code, str(exc)))
            raise
        except Exception as exc:
            self.finish(event, SyscallOutcome(False, "internal", str(exc)))
            raise
        self.finish(event, outcome_of(result))
        return result

    def runs_now(self, op: str) -> bool:
        """Whether :meth:`run_now` may run ``op``: no pre-hook applies to it (pre-hooks
        are remote calls, which must be awaited)."""
        host = self.host
        return host is None or not host.has_pre_hooks(op)

    def run_now(
        self,
        op: str,
        path: str,
        fn: Callable[[], T],
        *,
        subject: str | None = None,
        dst: str | None = None,
        args: dict[str, Any] | None = None,
    ) -> T:
        """:meth:`run` done synchronously, for a syscall no pre-hook applies to
        (:meth:`runs_now`; the caller checks): ``fn()`` on this thread, then the
        post-hooks are queued and watchers told. The bus answers such a call inline,
        without a task."""
        host = self.host
        if self._watchers:
            event = self.event(op, path, subject=subject, dst=dst, args=args)
            try:
                result = fn()
            except NexusError as exc:
                self.finish(event, SyscallOutcome(False, exc.code, str(exc)))
                raise
            except Exception as exc:
                self.finish(event, SyscallOutcome(False, "internal", str(exc)))
                raise
            self.finish(event, outcome_of(result))
            return result
        if host is None or not host.has_post_hooks(op):
            return fn()
        # Post-hooks only (the audit case): captured as it came, with the clock read
        # once; everything else waits for the delivery (nexusfs.services.capture).
        # (_stamp and _capture inlined: this is every audited syscall's own path.)
        now = time_ns()
        seq = now // 1000
        if seq <= self._last_seq:
            seq = self._last_seq + 1
        self._last_seq = seq
        try:
            result = fn()
        except BaseException as exc:
            self._post_failure(host, (op, path, subject, dst, args, now / 1e9, seq), exc)
            raise
        journal = host.journal
        if not journal:
            host.kick()
        journal.append((op, path, subject, dst, args, now / 1e9, seq,
                        result if result.__class__ is FileMetadata else None))
        return result

    def _capture_head(self, op: str, path: str, subject: str | None, dst: str | None,
                      args: dict[str, Any] | None) -> tuple[Any, ...]:
        """The capture fields of a syscall's event (all but its outcome), stamped now."""
        now, seq = self._stamp()
        return (op, path, subject, dst, args, now, seq)

    @staticmethod
    def _capture(host: HookHost, head: tuple[Any, ...], outcome: Any) -> None:
        """Append a capture: ``head`` (see :meth:`_capture_head`) and its outcome (see
        :mod:`nexusfs.services.capture`: never a mutable result)."""
        journal = host.journal
        if not journal:
            host.kick()
        journal.append((*head, outcome))

    def _post_head(self, op: str, path: str, subject: str | None, dst: str | None,
                   args: dict[str, Any] | None) -> tuple[Any, ...]:
        """The fields of a ``SyscallEvent``, paths normalised and stamped now."""
        try:
            path = paths.normalize(path)
            dst = None if dst is None else paths.normalize(dst)
        except NexusError:
            pass  # the syscall itself reports the invalid path
        now, seq = self._stamp()
        return (op, path, subject, dst, args or {}, now, seq)

    @classmethod
    def _post_failure(cls, host: HookHost, head: tuple[Any, ...], exc: BaseException) -> None:
        """Capture a failed syscall (``head``: its capture fields but the outcome)."""
        if isinstance(exc, NexusError):
            cls._capture(host, head, (False, exc.code, str(exc), None, {}))
        elif isinstance(exc, Exception):
            cls._capture(host, head, (False, "internal", str(exc), None, {}))

    async def pre(self, op: str, path: str, **kw: Any) -> SyscallEvent | None:
        """Run the pre-hooks of a syscall that completes later (streaming handles);
        returns the event to pass to :meth:`finish`, or ``None`` if nothing hooks it."""
        if not self.hooked(op):
            return None
        event = self.event(op, path, **kw)
        await self._pre_hooks(event)
        return event

    async def _pre_hooks(self, event: SyscallEvent) -> None:
        """Run the pre-hooks; a refused syscall (veto or hook failure) is still reported
        to the post-hooks, so the audit log shows denied attempts too."""
        host = self.host
        if host is None or not host.has_pre_hooks(event.op):
            return
        try:
            await host.pre_syscall(event)
        except NexusError as exc:
            self.finish(event, SyscallOutcome(False, exc.code, str(exc)))
            raise

    def finish(self, event: SyscallEvent | None, outcome: SyscallOutcome) -> None:
        """Queue the post-hooks of ``event`` and tell watchers (no-op for ``None``)."""
        if event is None:
            return
        host = self.host
        if host is not None and host.has_post_hooks(event.op):
            host.post_syscall(event, outcome)
        if self._watchers:
            data = {
                "op": event.op, "subject": event.subject, "time": event.time,
                "seq": event.seq, "ok": outcome.ok, "error_code": outcome.error_code,
                "revision": outcome.revision,
            }  # fmt: skip
            self.publish("syscall", event.path, data, event.dst)

    def event(
        self,
        op: str,
        path: str,
        *,
        subject: str | None = None,
        dst: str | None = None,
        args: dict[str, Any] | None = None,
    ) -> SyscallEvent:
        return SyscallEvent(*self._post_head(op, path, subject, dst, args))


def outcome_of(result: Any) -> SyscallOutcome:
    """A small summary of a successful syscall's result (see
    :func:`~nexusfs.services.capture.outcome_wire`)."""
    return SyscallOutcome(*outcome_wire(result))
