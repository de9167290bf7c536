"""The service host (kernel side): one supervised worker process per service.

``ServiceHost`` listens on ``run_dir/services.sock`` (bus, 0600, peer uid checked) for
its workers, starts the configured services (``config["services"]``: names, ``None`` =
every installed one), routes client calls and syscall hooks to them, and stops them
gracefully when cancelled. It never imports plugin code (see
:mod:`nexusfs.services.registry`).

Handshake (worker -> host over the worker's connection): ``host.hello(protocol=3,
token, name, version, description, pre_hooks, post_hooks, needs, idempotent, pid)``
answers the service config (``record_store_url``, ``cache_url``, ``data_dir``,
``state_dir`` + ``config["service_config"][name]``); after its ``nexus_service_start``
the worker calls ``host.ready(methods)``; only then is it routable. Once hello is
accepted the connection also serves ``kernel_handlers(name, conn)`` (the kernel's
``fs.*`` handlers acting as the service), so ``ctx.kernel`` works over the same socket.

Failure semantics (also in each method's docstring):

* :meth:`call` - unknown service: :class:`UnknownService`; service (re)starting: waits
  for it until the deadline, then ``ServiceUnavailable``; stopped/failed: at once
  ``ServiceUnavailable``; the worker's connection drops mid-call: retried on the next
  worker if the method is declared idempotent and the deadline allows, else
  ``ServiceUnavailable``. Typed errors raised by the method arrive with their class.
* :meth:`pre_syscall` - fails closed: a veto raises ``PermissionDenied``; an error,
  a timeout or a hooking service that is not ready in time raises ``ServiceUnavailable``.
  A syscall is never silently allowed because a hook could not run.
* :meth:`post_syscall` (and the pipeline's captures) - never block or raise: the caller's whole
  cost is an in-memory enqueue; at-least-once, ordered, batched delivery via each
  interested service's :class:`~nexusfs.services.outbox.Outbox` (which waits
  ``supervisor.post_linger`` seconds, under load up to ``supervisor.post_max_linger``,
  so that a stream of syscalls shares deliveries).
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import fields
from pathlib import Path
from typing import Any

import anyio
import anyio.abc

from nexusfs.bus import Connection, UnknownMethod, serve_unix
from nexusfs.bus._busy_poll import busy_poll_limit
from nexusfs.errors import InvalidPath, NexusError, PermissionDenied, ServiceUnavailable
from nexusfs.hookspecs import HOOKABLE, SyscallEvent, SyscallOutcome
from nexusfs.services._spawn import PrestartedWorker, services_socket_path
from nexusfs.services._worker_handle import Policy, WorkerHandle
from nexusfs.services.capture import wire_items
from nexusfs.services.registry import ServiceEntry, installed_services
from nexusfs.services.supervisor import STATES, Supervisor

__all__ = ["EVENT_FIELDS", "OUTCOME_FIELDS", "POST_FIELDS", "PROTOCOL", "STATES", "ServiceHost",
           "UnknownService"]

log = logging.getLogger("nexusfs.services")

#: 3: ``hook.post(first, batch=[item, ...])``, an item being the ``POST_FIELDS`` of one
#: event and the oseqs implicit (2: ``[oseq, event, outcome]`` items; 1: events and
#: outcomes as maps, not lists of their fields).
PROTOCOL = 3
#: The wire form of a post-hook event: the fields of ``SyscallEvent`` then those of
#: ``SyscallOutcome``, in declaration order, in one list (a tuple in the kernel).
EVENT_FIELDS = ("op", "path", "subject", "dst", "args", "time", "seq")
OUTCOME_FIELDS = ("ok", "error_code", "message", "revision", "result")
POST_FIELDS = EVENT_FIELDS + OUTCOME_FIELDS
if tuple(f.name for f in fields(SyscallEvent)) != EVENT_FIELDS or tuple(
        f.name for f in fields(SyscallOutcome)) != OUTCOME_FIELDS:  # pragma: no cover
    raise ImportError("nexusfs.hookspecs changed SyscallEvent/SyscallOutcome: update "
                      "EVENT_FIELDS/OUTCOME_FIELDS and bump PROTOCOL")
KernelHandlers = Callable[[str, Connection], Mapping[str, Callable[..., Any]]]


class UnknownService(NexusError, LookupError):
    """No installed service has this name."""

    code = "unknown_service"


class ServiceHost:
    """See the module docstring. Construct, then ``await tg.start(host.run)``."""

    def __init__(self, data_dir: Path, run_dir: Path, kernel_handlers: KernelHandlers,
                 config: dict[str, Any] | None = None, *,
                 prestarted: Mapping[str, PrestartedWorker] | None = None,
                 entries: Mapping[str, ServiceEntry] | None = None) -> None:
        """``prestarted``: workers the daemon already started (adopted by the first
        start of their service; killed if not configured). ``entries``: the installed
        services, when the caller has just read them (else read at :meth:`run`)."""
        self.data_dir = Path(data_dir)
        self.run_dir = Path(run_dir)
        self.kernel_handlers = kernel_handlers
        self.config = dict(config or {})
        self.policy = Policy.from_config(self.config.get("supervisor"))
        self.default_timeout = float(self.config.get("call_timeout", 30.0))
        self.hook_timeout = float(self.config.get("pre_hook_timeout", 5.0))
        self.socket_path = services_socket_path(self.run_dir)
        self._tokens: dict[str, WorkerHandle] = {}
        self._sups: dict[str, Supervisor] = {}
        self._entries: dict[str, ServiceEntry] = dict(entries or {})
        self._given_entries = entries is not None
        self._prestarted = dict(prestarted or {})
        self._pre: dict[str, tuple[Supervisor, ...]] = {}
        self._post: dict[str, tuple[Supervisor, ...]] = {}
        self._pre_all: tuple[Supervisor, ...] = ()
        self._post_all: tuple[Supervisor, ...] = ()
        #: Post-hook events captured since the outboxes last pulled, in the capture form
        #: (:mod:`nexusfs.services.capture`); the pipeline appends to it directly.
        self.journal: list[tuple[Any, ...]] = []
        self._event_seq = 0
        self._tg: anyio.abc.TaskGroup | None = None
        self._core_scope: anyio.CancelScope | None = None

    # -- lifecycle ---------------------------------------------------------------------

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
                  ) -> None:
        """Listen, start the configured services, serve until cancelled; then stop
        every worker gracefully (shielded) before returning."""
        try:
            async with anyio.create_task_group() as tg:
                await tg.start(self._core)
                task_status.started()
                try:
                    await anyio.sleep_forever()
                finally:
                    with anyio.CancelScope(shield=True):
                        with anyio.move_on_after(self.policy.drain_timeout
                                                 + self.policy.stop_timeout + 2):
                            async with anyio.create_task_group() as stop_tg:
                                for sup in list(self._sups.values()):
                                    stop_tg.start_soon(sup.stop)
                        if self._core_scope is not None:
                            self._core_scope.cancel()
        finally:
            for pre in self._prestarted.values():  # never adopted
                pre.discard()
            self._prestarted.clear()

    async def _core(self, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        # Shielded: when run() is cancelled, the listener and the supervisors must keep
        # working until every worker has been stopped gracefully.
        with anyio.CancelScope(shield=True) as scope:
            self._core_scope = scope
            self.run_dir.mkdir(parents=True, exist_ok=True)
            if not self._given_entries:
                self._entries = installed_services()
            wanted = self.config.get("services")
            names = list(self._entries) if wanted is None else list(wanted)
            for name in set(self._prestarted) - set(names):
                self._prestarted.pop(name).discard()
            async with anyio.create_task_group() as tg:
                self._tg = tg
                # Supervisors first: a prestarted worker says hello as soon as the
                # socket accepts, and its supervisor must know its token by then.
                # (Workers wait for the socket to accept.)
                for name in names:
                    if name not in self._entries:
                        log.error("service %s is configured but not installed", name)
                        pre = self._prestarted.pop(name, None)
                        if pre is not None:
                            pre.discard()
                        continue
                    await self._supervisor(name)
                    self._sups[name].start()
                # Workers are this kernel's peers for hooks and service calls: poll
                # for their quick answers (see nexusfs.bus._busy_poll).
                await tg.start(functools.partial(serve_unix, self.socket_path, self._factory,
                                                 busy_poll=busy_poll_limit()))
                task_status.started()
                await anyio.sleep_forever()

    async def _supervisor(self, name: str) -> Supervisor:
        sup = self._sups.get(name)
        if sup is not None:
            return sup
        entry = self._entries.get(name)
        if entry is None:
            self._entries = installed_services()
            entry = self._entries.get(name)
            if entry is None:
                raise UnknownService(f"no installed service named {name!r}")
        sup = Supervisor(
            entry, socket_path=self.socket_path, run_dir=self.run_dir,
            data_dir=self.data_dir, policy=self.policy, tokens=self._tokens,
            on_change=self._reindex, env=self.config.get("env"),
            outbox_capacity=int(self.config.get("outbox_capacity", 100_000)),
            prestarted=self._prestarted.pop(name, None),
        )
        sup.outbox.pull = self._pull_posts
        self._sups[name] = sup
        assert self._tg is not None, "ServiceHost.run() is not running"
        await self._tg.start(sup.run)
        return sup

    def _get(self, name: str) -> Supervisor:
        sup = self._sups.get(name)
        if sup is None:
            raise UnknownService(f"no such service: {name!r}")
        return sup

    async def start_service(self, name: str, *, timeout: float | None = None) -> None:
        """Start ``name`` (also clears ``failed``) and wait until it is ready (up to
        ``timeout``; default: handshake + start timeouts). ``UnknownService`` if it is
        not installed; ``ServiceUnavailable`` if it does not come up in time."""
        sup = await self._supervisor(name)
        sup.start()
        t = timeout if timeout is not None else (self.policy.handshake_timeout
                                                 + self.policy.start_timeout)
        await sup.wait_ready(time.time() + t)

    async def stop_service(self, name: str) -> None:
        """Stop ``name`` gracefully (drain, ``service.stop``, kill on timeout); its hooks
        stop applying and its pending post-hook events are discarded."""
        await self._get(name).stop()

    async def restart_service(self, name: str) -> None:
        """Hot restart (new worker with the code now on disk; zero failed calls). A
        stopped/failed service is started. ``ServiceUnavailable`` if the new worker
        cannot come up (the old one, if any, keeps serving)."""
        sup = self._sups.get(name) or await self._supervisor(name)
        await sup.restart()

    # -- status ------------------------------------------------------------------------

    def services(self) -> list[dict[str, Any]]:
        """One dict per known service (see ``STATES`` for ``state``). The ``post_*``
        figures describe its post-hook outbox: events waiting (``post_queue``),
        delivered and acknowledged (``post_delivered``), deliveries made
        (``post_batches``) and events dropped because the queue was full
        (``post_dropped``)."""
        out: list[dict[str, Any]] = []
        self._pull_posts()  # (so that post_queue counts every captured event)
        for name in sorted(set(self._entries) | set(self._sups)):
            sup = self._sups.get(name)
            entry = self._entries.get(name)
            if sup is None:
                out.append({"name": name, "version": entry.dist_version if entry else None,
                            "state": "stopped", "pid": None, "restarts": 0,
                            "last_exit": None, "last_error": None, "methods": [],
                            "pre_hooks": [], "post_hooks": [], "post_queue": 0,
                            "post_dropped": 0, "post_batches": 0, "post_delivered": 0})
                continue
            w = sup.current
            hello = w.hello if w is not None else {}
            out.append({
                "name": name,
                "version": hello.get("version") or (entry.dist_version if entry else None),
                "state": sup.state,
                "pid": w.pid if w is not None else None,
                "restarts": sup.restarts,
                "last_exit": sup.last_exit,
                "last_error": sup.last_error,
                "methods": sorted(w.methods) if w is not None else [],
                "pre_hooks": list(hello.get("pre_hooks", [])),
                "post_hooks": list(hello.get("post_hooks", [])),
                "post_queue": len(sup.outbox),
                "post_dropped": sup.outbox.dropped,
                "post_batches": sup.outbox.batches,
                "post_delivered": sup.outbox.delivered,
            })
        return out

    def logs(self, name: str, lines: int = 100) -> str:
        """The last ``lines`` lines of the service's worker output (stdout + stderr,
        JSON lines and tracebacks), kept in ``run_dir/services/NAME.log``."""
        if name not in self._sups and name not in self._entries:
            raise UnknownService(f"no such service: {name!r}")
        sup = self._sups.get(name)
        if sup is not None:
            return sup.logs(lines)
        path = self.run_dir / "services" / f"{name}.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) \
            if path.exists() else ""

    # -- routing -----------------------------------------------------------------------

    async def call(self, service: str, method: str, args: Mapping[str, Any] | None = None,
                   *, deadline: float | None = None) -> Any:
        """Call ``service.method(**args)`` (see the module docstring for failures);
        ``deadline`` is absolute ``time.time()`` (default: now + ``call_timeout``)."""
        sup = self._sups.get(service)
        if sup is None:
            raise UnknownService(f"no such service: {service!r}")
        if method.startswith(("service.", "hook.")):
            raise UnknownMethod(f"{service}: {method} is internal")
        if deadline is None:
            deadline = time.time() + self.default_timeout
        while True:
            w = sup.current
            if w is None:
                w = await sup.wait_ready(deadline)
            conn = w.conn
            assert conn is not None
            w.inflight += 1
            try:
                return await conn.request(method, args, deadline=deadline)
            except ServiceUnavailable:
                if not conn.closed:
                    raise  # deadline, or the service's own ServiceUnavailable
                sup.lost(w, "bus connection lost")
                if method not in w.idempotent or time.time() >= deadline:
                    raise ServiceUnavailable(
                        f"service {service}: worker lost during {method}"
                        + ("" if method in w.idempotent else " (not idempotent, not retried)")
                    ) from None
            finally:
                w.done_call()

    def has_pre_hooks(self, op: str) -> bool:
        """Whether any service pre-hooks ``op`` (O(1))."""
        return bool(self._pre_all) or op in self._pre

    def has_post_hooks(self, op: str) -> bool:
        """Whether any service post-hooks ``op`` (O(1))."""
        return bool(self._post_all) or op in self._post

    async def pre_syscall(self, event: SyscallEvent, *, deadline: float | None = None) -> None:
        """Run the pre-hooks of ``event.op`` on every hooking service, concurrently.
        ``PermissionDenied(f"{service}: {reason}")`` on a veto; ``ServiceUnavailable``
        when a hook fails, times out, or its service is not ready before ``deadline``
        (default now + ``pre_hook_timeout``)."""
        sups = self._pre.get(event.op, ()) + self._pre_all
        if not sups:
            return
        if deadline is None:
            deadline = time.time() + self.hook_timeout
        ev = _event_dict(event)
        if len(sups) == 1:
            await self._pre_one(sups[0], ev, deadline)
            return
        errors: list[NexusError] = []

        async def one(sup: Supervisor) -> None:
            try:
                await self._pre_one(sup, ev, deadline)
            except NexusError as exc:
                errors.append(exc)

        async with anyio.create_task_group() as tg:
            for sup in sups:
                tg.start_soon(one, sup)
        for exc in errors:  # a veto wins over an outage
            if isinstance(exc, PermissionDenied):
                raise exc
        if errors:
            raise errors[0]

    async def _pre_one(self, sup: Supervisor, ev: dict[str, Any], deadline: float) -> None:
        while True:
            w = sup.current or await sup.wait_ready(deadline)
            conn = w.conn
            assert conn is not None
            w.inflight += 1
            try:
                res = await conn.request("hook.pre", {"event": ev}, deadline=deadline)
                break
            except ServiceUnavailable as exc:
                if conn.closed and time.time() < deadline:
                    sup.lost(w, "bus connection lost")
                    continue  # hooks are side-effect free checks: ask the successor
                raise ServiceUnavailable(f"{sup.name}: pre-hook failed: {exc}") from None
            except NexusError as exc:
                raise ServiceUnavailable(f"{sup.name}: pre-hook failed: {exc}") from None
            finally:
                w.done_call()
        if isinstance(res, dict) and res.get("veto") is not None:
            raise PermissionDenied(f"{sup.name}: {res['veto']}", path=ev.get("path"))

    def post_syscall(self, event: SyscallEvent, outcome: SyscallOutcome) -> None:
        """Queue ``(event, outcome)`` for every service post-hooking ``event.op``.
        Never blocks, never raises. ``event.seq == 0`` gets a host sequence number.
        (Syscalls that only post-hooks apply to skip this: the pipeline appends their
        capture to :attr:`journal` itself.)"""
        if not self._post_all and event.op not in self._post:
            return
        seq = event.seq
        if not seq:
            self._event_seq += 1
            seq = self._event_seq
        elif seq > self._event_seq:
            self._event_seq = seq
        journal = self.journal
        if not journal:
            self.kick()
        journal.append((event.op, event.path, event.subject, event.dst, event.args,
                        event.time or time.time(), seq,
                        (outcome.ok, outcome.error_code, outcome.message, outcome.revision,
                         outcome.result)))

    def kick(self) -> None:
        """Wake the outbox senders that sleep for want of events: whoever appends the
        first capture to an empty :attr:`journal` calls this (see ``Pipeline``)."""
        for sup in self._sups.values():
            sup.outbox.kick()

    def _pull_posts(self) -> None:
        """Move the captured post-hook events into the outboxes of the services that
        post-hook them, in capture order (who hooks what is looked up now, not at
        capture), turned into their wire form (see :mod:`nexusfs.services.capture`).
        Run by an outbox's sender before it builds a batch: the fan-out of a whole
        batch at once, off the syscalls' path; when every post-hooking service hooks
        ``*`` (the usual audit case) it is one list copy per service."""
        captured = self.journal
        if not captured:
            return
        self.journal = []
        journal = wire_items(captured)
        if not self._post:
            for sup in self._post_all:
                sup.outbox.extend(journal)
            return
        post_get, post_all = self._post.get, self._post_all
        per_sup: dict[Supervisor, list[tuple[Any, ...]]] = {}
        for item in journal:
            post = post_get(item[0])
            for sup in post_all if post is None else post + post_all:
                got = per_sup.get(sup)
                if got is None:
                    per_sup[sup] = [item]
                else:
                    got.append(item)
        for sup, items in per_sup.items():
            sup.outbox.extend(items)

    # -- bus side ----------------------------------------------------------------------

    def _factory(self, conn: Connection) -> dict[str, Callable[..., Any]]:
        async def hello(protocol: int, token: str, name: str, version: str,
                        pid: int | None = None, **info: Any) -> dict[str, Any]:
            w = self._tokens.get(token)
            if w is None or w.hello_event.is_set():
                raise PermissionDenied("unknown or already used service token")
            if protocol != PROTOCOL:
                raise PermissionDenied(f"unsupported service protocol {protocol}")
            sup = self._sups.get(name)
            if sup is None or w.log_path != sup.log_path:
                raise PermissionDenied(f"token does not belong to service {name!r}")
            w.conn = conn
            w.hello = {"version": version, "pid": pid, **info}
            w.idempotent = frozenset(info.get("idempotent") or ())
            handlers = dict(self.kernel_handlers(name, conn))
            handlers["host.ready"] = ready
            handlers["host.hooks"] = hooks
            conn.handlers = handlers
            w.hello_event.set()
            return self._service_config(sup)

        async def ready(methods: list[str]) -> bool:
            for w in list(self._tokens.values()):
                if w.conn is conn:
                    w.methods = frozenset(methods)
                    w.ready.set()
                    return True
            raise PermissionDenied("no handshake in progress on this connection")

        async def hooks(pre: list[str] | None = None, post: list[str] | None = None) -> bool:
            """A worker changes which syscalls it hooks (``ServiceContext.set_hooks``)."""
            for lst in (pre, post):
                bad = sorted(set(lst or ()) - HOOKABLE - {"*"})
                if bad:
                    raise InvalidPath(f"not hookable syscalls: {bad}")
            for sup in self._sups.values():
                for w in (sup.current, *self._tokens.values()):
                    if w is not None and w.conn is conn:
                        if pre is not None:
                            w.hello["pre_hooks"] = list(pre)
                        if post is not None:
                            w.hello["post_hooks"] = list(post)
                        self._reindex(sup)
                        return True
            raise PermissionDenied("no service worker on this connection")

        return {"host.hello": hello}

    def _service_config(self, sup: Supervisor) -> dict[str, Any]:
        cfg: dict[str, Any] = {
            "data_dir": str(self.data_dir),
            "state_dir": str(sup.state_dir),
            "record_store_url": self.config.get("record_store_url")
            or _default_record_store_url(self.data_dir),
            "cache_url": self.config.get("cache_url"),
        }
        cfg.update((self.config.get("service_config") or {}).get(sup.name, {}))
        return cfg

    def _reindex(self, _changed: Supervisor) -> None:
        pre: dict[str, list[Supervisor]] = {}
        post: dict[str, list[Supervisor]] = {}
        for sup in self._sups.values():
            if not sup.wanted:
                continue
            w = sup.current
            if w is not None:
                sup.hooks = (tuple(w.hello.get("pre_hooks") or ()),
                             tuple(w.hello.get("post_hooks") or ()))
            hooks = sup.hooks
            for op in hooks[0]:
                pre.setdefault(op, []).append(sup)
            for op in hooks[1]:
                post.setdefault(op, []).append(sup)
        self._pre_all = tuple(pre.pop("*", ()))
        self._post_all = tuple(post.pop("*", ()))
        self._pre = {k: tuple(v) for k, v in pre.items()}
        self._post = {k: tuple(v) for k, v in post.items()}


def _event_dict(e: SyscallEvent) -> dict[str, Any]:
    return {"op": e.op, "path": e.path, "subject": e.subject, "dst": e.dst,
            "args": e.args, "time": e.time or time.time(), "seq": e.seq}


def _default_record_store_url(data_dir: Path) -> str:
    try:  # the RecordStore driver's default, when that driver is installed
        from nexusfs.drivers.recordstore import default_record_store_url

        return default_record_store_url(data_dir)
    except ImportError:
        return f"sqlite:///{data_dir / 'records.db'}"

