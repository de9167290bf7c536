"""One client connection to the kernel process: the syscall handlers it can call.

Each accepted bus connection gets a :class:`Session` whose ``handlers()`` map the wire
method names (``fs.write``, ``fs.stat``, ...) to the embedded kernel's syscalls. Quick
metadata calls run on the event loop; calls that move file bytes or fsync run in a
worker thread so one large transfer never stalls other clients.

Open files are per session: ``fs.open`` returns a handle id; the handle is closed by
``fs.fclose`` (commit) / ``fs.fdiscard``, and every handle still open when the connection
ends is discarded (writers) or released (readers), so a crashed client never commits a
half-written file and never pins a blob forever.

**Permissions.** When the kernel runs the rebac service (``pipeline.gate`` is set),
``handlers()`` puts every call of a subject that is not an admin through the
:class:`~nexusfs.server.gate.PermissionGate` (what each syscall needs is listed there):

* every ``fs.*`` syscall: ``write``, ``read``, ``stat``, ``exists``, ``readdir``
  (filtered; a page is filled up to ``limit`` and its cursor names a visible entry),
  ``mkdir``, ``rmdir``, ``unlink``, ``rename`` / ``copy`` (source and
  destination), ``open``; ``mount``, ``unmount``, ``zone_create``, ``gc``, ``flush`` and
  ``watch`` are admin-only (a watch would deliver events of paths the subject cannot
  read);
* open handles are checked again at each ``fread`` / ``fwrite`` and at the commit of
  ``fclose``: a revoke stops an open handle at its next call with ``PermissionDenied``
  (the handle itself stays open so ``fdiscard`` / ``fclose`` release it; a writer whose
  commit is refused is discarded, never committed). ``fseek`` and ``fdiscard`` move no
  data and are not checked;
* ``rebac.*``: ``write`` / ``write_model`` and the methods that reveal other subjects'
  grants (``expand``, ``list_users``, ``read``, ``read_changes``) are admin-only;
  ``check`` / ``batch_check`` / ``check_paths`` / ``list_objects`` only about the
  subject itself; ``revision``, ``wait_revision``, ``read_model`` for everyone;
* every other service's methods, ``services.*`` / ``plugins.*`` (but ``services.list``
  and ``plugins.list``), ``kernel.shutdown`` and ``kernel.emit`` are admin-only;
* not checked: ``kernel.ping`` / ``status`` / ``hello`` / ``gate_stats``, ``fs.revision``,
  ``fs.unwatch``, and ``fs.mounts`` / ``fs.zones`` (the kernel facts ``/__sys__`` offers
  every subject anyway).

A denied call raises ``PermissionDenied`` naming the subject, the permission, the object
and the path, an invisible path ``NotFound``; with the rebac service down, checked calls
fail with ``ServiceUnavailable``. ``kernel.hello`` accepts only ``type:id`` subjects
(``InvalidSubject``). The rebac worker's own session feeds the gate: its
``rebac.revision`` events clear the decision cache (other writers' revoke), and the end
of its connection clears it too (no decision outlives the worker).
"""

from __future__ import annotations

import inspect
import itertools
import logging
import sys
import time
from collections.abc import Awaitable, Callable
from typing import IO, TYPE_CHECKING, Any, Protocol

import anyio

from nexusfs.errors import IsADirectory, NexusError, NotFound, PermissionDenied
from nexusfs.hookspecs import SyscallEvent, SyscallOutcome
from nexusfs.metadata.inode import FileMetadata
from nexusfs.server import wire
from nexusfs.server.gate import (
    MUTATING_METHODS,
    REVISION_EVENT,
    PermissionGate,
    check_subject,
)
from nexusfs.server.gate import SERVICE as GATE_SERVICE
from nexusfs.server.pipeline import Pipeline, outcome_of
from nexusfs.vfs.listing import DirListing

if TYPE_CHECKING:
    from nexusfs.kernel import NexusFS

__all__ = ["READ_CHUNK", "Session"]

log = logging.getLogger("nexusfs.server")

#: Largest payload a single read or write call carries; larger transfers use handles.
READ_CHUNK = 8 << 20
#: Deadline of a call routed to a service when the client gave none.
CALL_TIMEOUT = 30.0


#: Handlers the permission gate checks: wire name -> (syscall, path arg, dst arg).
_GATED: dict[str, tuple[str, str | None, str | None]] = {
    "fs.write": ("write", "path", None),
    "fs.read": ("read", "path", None),
    "fs.stat": ("stat", "path", None),
    "fs.mkdir": ("mkdir", "path", None),
    "fs.rmdir": ("rmdir", "path", None),
    "fs.unlink": ("unlink", "path", None),
    "fs.rename": ("rename", "src", "dst"),
    "fs.copy": ("copy", "src", "dst"),
    "fs.mount": ("mount", "path", None),
    "fs.unmount": ("unmount", "path", None),
    "fs.zone_create": ("zone_create", None, None),
    "fs.gc": ("gc", None, None),
    "fs.flush": ("flush", None, None),
}


class BadHandle(NexusError, ValueError):
    """The file handle is unknown (never opened, already closed, or another session's)."""

    code = "bad_handle"


class ServiceRouter(Protocol):
    """What a session needs to reach installed services (the service host)."""

    async def call(
        self, service: str, method: str, args: dict[str, Any], *, deadline: float | None
    ) -> Any: ...


#: Admin-table calls every subject may make while permissions apply (read-only facts).
_PUBLIC_ADMIN_CALLS = frozenset({"services.list", "plugins.list"})
#: Admin calls that stop or replace a service's worker (``name=`` the service).
_SERVICE_CONTROL = frozenset({"services.stop", "services.restart", "plugins.uninstall"})
#: rebac methods every subject may call: they reveal no grant.
_REBAC_PUBLIC = frozenset({"revision", "wait_revision", "read_model"})


def _rebac_policy(subject: str, method: str, args: dict[str, Any]) -> None:
    """Raise ``PermissionDenied`` unless the non-admin ``subject`` may make
    ``rebac.<method>(**args)`` (see the module docstring)."""
    if method in _REBAC_PUBLIC:
        return
    about: list[object] = []
    if method in ("check", "list_objects"):
        about = [args.get("user")]
    elif method in ("batch_check", "check_paths"):
        items = args.get("checks")
        if isinstance(items, list | tuple):
            for item in items:
                if method == "batch_check" and isinstance(item, dict):
                    about.append(item.get("user"))
                elif isinstance(item, list | tuple) and item:
                    about.append(item[0])
                else:
                    about.append(None)
        else:
            about = [None]
    else:
        why = ("changes permissions" if method in MUTATING_METHODS
               else "reveals other subjects' grants")  # fmt: skip
        raise PermissionDenied(
            f"{subject} may not call rebac.{method}: it {why}, which is for admin subjects"
        )
    if not about or any(u != subject for u in about):
        raise PermissionDenied(
            f"{subject} may call rebac.{method} only about itself (user {subject!r})"
        )


class _Handlers(dict[str, Callable[..., Any]]):
    """The session's handler table; names outside it that look like
    ``service.method`` route to the service host. With a permission gate, calls to
    services and to the admin tables the daemon adds later (``services.*``,
    ``plugins.*``) follow the session's policy for its subject at call time (see the
    module docstring)."""

    def __init__(
        self,
        table: dict[str, Callable[..., Any]],
        router: ServiceRouter | None,
        gate: PermissionGate | None = None,
        subject: Callable[[], str | None] = lambda: None,
    ):
        super().__init__(table)
        self._router = router
        self._gate = gate
        self._subject = subject

    def get(self, name: str, default: Any = None) -> Any:
        fn = dict.get(self, name)
        gate = self._gate
        if fn is not None:
            if gate is not None and name.startswith(("services.", "plugins.")) and (
                name not in _PUBLIC_ADMIN_CALLS
            ):
                if name in _SERVICE_CONTROL:
                    fn = _forget_after(gate, fn)
                return _admin_only(gate, self._subject, fn, name)
            return fn
        if self._router is None:
            return default
        service, dot, method = name.partition(".")
        if not dot or not method or service in ("fs", "kernel"):
            return default
        router = self._router

        async def route(**args: Any) -> Any:
            return await router.call(service, method, args, deadline=time.time() + CALL_TIMEOUT)

        if gate is None:
            return route
        if service != GATE_SERVICE:
            return _admin_only(gate, self._subject, route, name)
        subject_of = self._subject

        async def rebac_route(**args: Any) -> Any:
            subject = subject_of()
            if not gate.is_admin(subject):
                assert subject is not None
                _rebac_policy(subject, method, args)
            if method not in MUTATING_METHODS:
                return await route(**args)
            # The caller gets the answer only after the gate forgot its decisions, so
            # a revoke is enforced on the very next call of any client.
            try:
                return await route(**args)
            finally:
                await gate.after_write()

        return rebac_route


def _forget_after(gate: PermissionGate, fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` (a service-control call), after which the gate forgets its decisions
    when it stopped or replaced the rebac worker: no cached decision outlives it, so
    checked calls fail closed at once once the service is stopped."""

    async def handler(*args: Any, **kw: Any) -> Any:
        try:
            result = fn(*args, **kw)
            return await result if inspect.isawaitable(result) else result
        finally:
            if kw.get("name", args[0] if args else None) == GATE_SERVICE:
                gate.lost()

    return handler


def _admin_only(gate: PermissionGate, subject_of: Callable[[], str | None],
                fn: Callable[..., Any], name: str) -> Callable[..., Any]:  # fmt: skip
    """``fn`` for admin subjects; ``PermissionDenied`` for the others."""

    def handler(*args: Any, **kw: Any) -> Any:
        subject = subject_of()
        if not gate.is_admin(subject):
            raise PermissionDenied(
                f"{subject} may not call {name}: it is for admin subjects only (the "
                "kernel's user, service:*, NEXUS_ADMINS) while permissions apply"
            )
        return fn(*args, **kw)

    return handler


class Session:
    """The handlers of one client connection (see the module docstring)."""

    def __init__(
        self,
        fs: NexusFS,
        on_shutdown: Callable[[], None],
        info: dict[str, Any],
        *,
        pipeline: Pipeline | None = None,
        services: ServiceRouter | None = None,
        subject: str | None = None,
        events: Pipeline | None = None,
        notify: Callable[[str, dict[str, Any]], None] | None = None,
    ) -> None:
        self.fs = fs
        self.pipeline = pipeline or Pipeline()
        # Where watch subscriptions and service-emitted events go (the kernel's
        # pipeline, also for service sessions whose own syscalls are not hooked).
        self.events = events or self.pipeline
        self._notify = notify
        self._watches: set[int] = set()
        self.services = services
        self.subject = subject
        self._on_shutdown = on_shutdown
        self._info = info
        self._handles: dict[int, IO[bytes]] = {}
        #: What each handle was opened on: ``(path, is_writer)`` (for the gate).
        self._opened: dict[int, tuple[str, bool]] = {}
        self._events: dict[int, SyscallEvent | None] = {}
        self._ids = itertools.count(1)

    def handlers(self) -> dict[str, Callable[..., Any]]:
        fs = self.fs
        run = self._run
        table: dict[str, Callable[..., Any]] = {
            "kernel.ping": lambda: "pong",
            "kernel.status": self.status,
            "kernel.shutdown": self.shutdown,
            "kernel.hello": self.hello,
            "kernel.emit": self.emit,
            "fs.watch": self.watch,
            "fs.unwatch": self.unwatch,
            "fs.write": self.write,
            "fs.read": self.read,
            "fs.stat": lambda path: run("stat", path, lambda: wire.meta_to_wire(fs.stat(path))),
            "fs.exists": fs.exists,
            "fs.readdir": lambda path, **kw: run(
                "readdir", path, lambda: wire.listing_to_wire(fs.readdir(path, **kw))
            ),
            # Mutations hand their FileMetadata to the pipeline (the post-hooks see its
            # revision and summary) and only then take their wire form.
            "fs.mkdir": lambda path, **kw: _meta_answer(
                run("mkdir", path, lambda: fs.mkdir(path, **kw), args=kw)),
            "fs.rmdir": lambda path, recursive=False: run(
                "rmdir", path, lambda: fs.rmdir(path, recursive=recursive),
                args={"recursive": recursive}, threaded=True,
            ),
            "fs.unlink": lambda path: run("unlink", path, lambda: fs.unlink(path)),
            "fs.rename": lambda src, dst: _meta_answer(
                run("rename", src, lambda: fs.rename(src, dst), dst=dst)),
            "fs.copy": lambda src, dst, overwrite=True: _meta_answer(run(
                "copy", src, lambda: fs.copy(src, dst, overwrite=overwrite),
                dst=dst, threaded=True)),
            "fs.mount": lambda path, uri: run(
                "mount", path, lambda: wire.mount_to_wire(fs.mount(path, uri)), args={"uri": uri}
            ),
            "fs.unmount": lambda path: run("unmount", path, lambda: fs.unmount(path)),
            "fs.mounts": lambda: [wire.mount_to_wire(m) for m in fs.mounts()],
            "fs.zone_create": lambda name: wire.zone_to_wire(fs.zone_create(name)),
            "fs.zones": lambda: [wire.zone_to_wire(z) for z in fs.zones()],
            "fs.gc": self.gc,
            "fs.flush": lambda: anyio.to_thread.run_sync(fs.flush),
            "fs.revision": fs.revision,
            "fs.open": self.open,
            "fs.fread": self.fread,
            "fs.fwrite": self.fwrite,
            "fs.fseek": self.fseek,
            "fs.fclose": self.fclose,
            "fs.fdiscard": self.fdiscard,
        }  # fmt: skip
        gate = self.pipeline.gate
        if gate is not None:
            self._gate_table(table, gate)
        return _Handlers(table, self.services, gate, lambda: self.subject)

    # -- the permission gate ------------------------------------------------------------

    def _gate_table(self, table: dict[str, Callable[..., Any]], gate: PermissionGate) -> None:
        """Check every syscall handler with the permission gate (nexusfs.server.gate)
        for a subject that is not an admin; admins call the handlers unchanged."""
        for name, (op, src, dst) in _GATED.items():
            table[name] = self._gated(gate, table[name], op, src, dst)
        table["fs.exists"] = self._gated_exists(gate, table["fs.exists"])
        table["fs.readdir"] = self._gated_readdir(gate)
        table["fs.open"] = self._gated_open(gate, table["fs.open"])
        table["fs.fread"] = self._gated_handle(gate, table["fs.fread"], "fread")
        table["fs.fwrite"] = self._gated_handle(gate, table["fs.fwrite"], "fwrite")
        table["fs.fclose"] = self._gated_handle(gate, table["fs.fclose"], "fclose")
        table["fs.watch"] = self._gated(gate, table["fs.watch"], "watch", "path", None)
        subject = lambda: self.subject  # noqa: E731
        for name in ("kernel.shutdown", "kernel.emit"):
            table[name] = _admin_only(gate, subject, table[name], name)
        table["kernel.gate_stats"] = gate.stats

    def _gated(self, gate: PermissionGate, fn: Callable[..., Any], op: str,
               src: str | None, dst: str | None) -> Callable[..., Any]:
        def handler(*args: Any, **kw: Any) -> Any:
            path = kw.get(src, "/") if src else "/"
            target = kw.get(dst) if dst else None
            if gate.authorize_cached(self.subject, op, path, target):
                return fn(*args, **kw)  # decided from the cache: answered inline
            return self._checked(gate, op, path, target, fn, args, kw)

        return handler

    async def _checked(self, gate: PermissionGate, op: str, path: str, dst: str | None,
                       fn: Callable[..., Any], args: Any, kw: Any) -> Any:
        await gate.authorize(self.subject, op, path, dst)
        result = fn(*args, **kw)
        return await result if inspect.isawaitable(result) else result

    def _gated_exists(self, gate: PermissionGate, fn: Callable[..., Any]) -> Callable[..., Any]:
        async def exists(path: str) -> bool:
            try:
                await gate.authorize(self.subject, "exists", path)
            except NotFound:
                return False
            return bool(fn(path))

        def handler(path: str) -> Any:
            try:
                if gate.authorize_cached(self.subject, "exists", path):
                    return fn(path)
            except NotFound:
                return False
            return exists(path)

        return handler

    def _gated_readdir(self, gate: PermissionGate) -> Callable[..., Any]:
        """``readdir`` showing only the entries the subject may read. A filtered page
        is filled from the following pages up to ``limit`` entries, and its cursor is
        the last *visible* entry (the kernel's cursor is the last entry scanned, which
        may be invisible: it would disclose a name)."""
        fs = self.fs

        async def readdir(path: str, **kw: Any) -> dict[str, Any]:
            subject = self.subject
            admin = gate.is_admin(subject)
            if not admin:
                await gate.authorize(subject, "readdir", path)
            listing = self._run("readdir", path, lambda: fs.readdir(path, **kw))
            if inspect.isawaitable(listing):
                listing = await listing
            if admin:
                return wire.listing_to_wire(listing)
            limit = kw.get("limit")
            shown: list[FileMetadata] = []
            while True:
                visible = await gate.visible_names(
                    subject, path, [(m.path, m.is_dir) for m in listing]
                )
                shown.extend(m for m in listing if m.path in visible)
                more = listing.cursor is not None
                if not more or (limit is not None and len(shown) >= limit):
                    break
                kw = {**kw, "cursor": listing.cursor}
                listing = fs.readdir(path, **kw)  # hooks ran for the call already
            if limit is not None and len(shown) > limit:
                shown, more = shown[:limit], True
            cursor = shown[-1].path if more and shown else None
            return wire.listing_to_wire(DirListing(shown, cursor))

        return readdir

    def _gated_open(self, gate: PermissionGate, fn: Callable[..., Any]) -> Callable[..., Any]:
        async def open_(path: str, mode: str = "rb", **opts: Any) -> int:
            if not gate.is_admin(self.subject):
                op = "open_read" if mode.startswith("r") else "open_write"
                await gate.authorize(self.subject, op, path)
            return int(await fn(path, mode, **opts))

        return open_

    def _gated_handle(self, gate: PermissionGate, fn: Callable[..., Any],
                      op: str) -> Callable[..., Any]:  # fmt: skip
        """``fread`` / ``fwrite`` / ``fclose`` checked again for the file the handle
        was opened on (readers: ``fread``; writers: ``fwrite`` and the commit of
        ``fclose``, which discards the handle when refused)."""

        async def handler(**kw: Any) -> Any:
            subject = self.subject
            opened = self._opened.get(kw.get("handle"))  # type: ignore[arg-type]
            if opened is not None and not gate.is_admin(subject):
                path, writer = opened
                if writer == (op != "fread"):
                    try:
                        if not gate.authorize_cached(subject, op, path):
                            await gate.authorize(subject, op, path)
                    except NotFound as exc:  # opened, so its existence is no secret
                        raise PermissionDenied(f"{subject} may no longer {op} {path}",
                                               path=path) from exc  # fmt: skip
                    except NexusError:
                        if op == "fclose":
                            self.fdiscard(kw["handle"])  # refused: never committed
                        raise
            result = fn(**kw)
            return await result if inspect.isawaitable(result) else result

        return handler

    def _run(self, op: str, path: str, fn: Callable[[], Any], *, threaded: bool = False,
             **kw: Any) -> Any:
        """The syscall's result when no pre-hook applies (computed now: the bus answers
        it inline, without a task), else a coroutine to await (the bus runs it in a
        task)."""
        pipe = self.pipeline
        if not threaded and pipe.runs_now(op):
            return pipe.run_now(op, path, fn, subject=self.subject, **kw)
        return pipe.run(op, path, fn, subject=self.subject, threaded=threaded, **kw)

    def hello(self, subject: str | None = None) -> dict[str, Any]:
        """A client introduces itself (trusted local mode: the subject it acts as).
        ``InvalidSubject`` unless ``subject`` is ``type:id`` (or ``None``); the session
        keeps its previous subject then."""
        self.subject = check_subject(subject)
        return {"version": self._info.get("version"), "protocol": 1}

    # -- events ------------------------------------------------------------------------

    def watch(self, path: str) -> int:
        """Stream events on ``path`` and below to this connection as ``watch.event``
        notifications (one-way frames; a slow client may miss some: at most once).
        Returns the watch id for ``fs.unwatch``."""
        if self._notify is None:
            from nexusfs.errors import ServiceUnavailable

            raise ServiceUnavailable("this connection cannot receive notifications")
        deliver = _WatchDelivery(self._notify)
        deliver.watch_id = self.events.watch(path, deliver)
        self._watches.add(deliver.watch_id)
        return deliver.watch_id

    def unwatch(self, watch: int) -> bool:
        if watch not in self._watches:
            return False
        self._watches.discard(watch)
        self.events.unwatch(watch)
        return True

    def emit(self, name: str, data: dict[str, Any]) -> None:
        """A service emits a named event (e.g. a hook rule's ``emit`` action); watchers
        of its ``path`` receive it. ``rebac.revision`` from the rebac worker itself
        (``{"revision": int}``: it answers at a new revision) goes to the permission
        gate instead, which forgets the decisions of older revisions."""
        if name == REVISION_EVENT and self.subject == f"service:{GATE_SERVICE}":
            gate = self.events.gate
            if gate is not None:
                gate.on_revision(data.get("revision") if isinstance(data, dict) else None)
            return
        self.events.publish("emit", data.get("path"), {"name": name, "data": data})

    # -- kernel ------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """Kernel facts, including ``plugin_modules_loaded``: plugin packages imported
        into the kernel process (always empty: plugins load only in workers)."""
        from nexusfs.services.registry import installed_services

        roots = {e.value.split(":")[0].split(".")[0] for e in installed_services().values()}
        return {
            **self._info,
            "revision": self.fs.revision(),
            "mounts": len(self.fs.mounts()),
            "plugin_modules_loaded": sorted(r for r in roots if r in sys.modules),
        }

    def shutdown(self) -> str:
        self._on_shutdown()
        return "stopping"

    # -- whole-file calls --------------------------------------------------------------

    def write(self, path: str, data: bytes, **opts: Any) -> Any:
        """The new inode (a coroutine for it when pre-hooks apply or ``data`` is over
        1 MiB, which is written in a thread)."""
        return _meta_answer(self._run(
            "write", path, lambda: self.fs.write(path, data, **opts),
            args={"size": len(data)}, threaded=len(data) > (1 << 20),
        ))  # fmt: skip

    def read(self, path: str, offset: int = 0, size: int | None = None) -> Any:
        """Small ranges come back whole; a range over ``READ_CHUNK`` comes back as its
        first chunk plus a handle pinned to that version, to read the rest from. A
        coroutine when a pre-hook applies or a range is that large (the answer is then
        awaited in a task), else the answer itself."""
        pipe = self.pipeline
        if not pipe.runs_now("read"):
            return self._read_hooked(path, offset, size)
        event = pipe.event("read", path, subject=self.subject) if pipe.hooked("read") else None
        return self._read(event, path, offset, size)

    async def _read_hooked(self, path: str, offset: int, size: int | None) -> dict[str, Any]:
        event = await self.pipeline.pre("read", path, subject=self.subject)
        res = self._read(event, path, offset, size)
        return res if isinstance(res, dict) else await res

    def _read(self, event: SyscallEvent | None, path: str, offset: int,
              size: int | None) -> Any:
        try:
            meta = self.fs.stat(path)
            if meta.is_dir:
                raise IsADirectory("is a directory", path=meta.path)
            avail = max(0, meta.size - offset)
            want = avail if size is None else min(size, avail)
            if want <= READ_CHUNK:
                data = self.fs.read(path, offset=offset, size=size)
                self.pipeline.finish(event, outcome_of(meta))
                return {"data": data}
        except NexusError as exc:
            self.pipeline.finish(event, SyscallOutcome(False, exc.code, str(exc)))
            raise
        self.pipeline.finish(event, outcome_of(meta))
        handle = self._open_now(path, "rb", {})
        f = self._handles[handle]
        f.seek(offset)
        return self._first_chunk(f, handle, want)

    @staticmethod
    async def _first_chunk(f: IO[bytes], handle: int, want: int) -> dict[str, Any]:
        data = await anyio.to_thread.run_sync(f.read, READ_CHUNK)
        return {"data": data, "handle": handle, "total": want}

    async def gc(self, grace: float = 300.0, dry_run: bool = False) -> dict[str, Any]:
        report = await anyio.to_thread.run_sync(lambda: self.fs.gc(grace=grace, dry_run=dry_run))
        return wire.gc_to_wire(report)

    # -- handles -----------------------------------------------------------------------

    async def open(self, path: str, mode: str = "rb", **opts: Any) -> int:
        """Open a handle. Readers run the ``read`` hooks now; writers run the ``write``
        pre-hooks now and the post-hooks when ``fclose`` commits."""
        op = "read" if mode.startswith("r") else "write"
        event = await self.pipeline.pre(op, path, subject=self.subject)
        try:
            handle = self._open_now(path, mode, opts)
        except NexusError as exc:
            self.pipeline.finish(event, SyscallOutcome(False, exc.code, str(exc)))
            raise
        if op == "read":
            self.pipeline.finish(event, SyscallOutcome(True))
        else:
            self._events[handle] = event
        return handle

    def _open_now(self, path: str, mode: str, opts: dict[str, Any]) -> int:
        f = self.fs.open(path, mode, **opts)
        handle = next(self._ids)
        self._handles[handle] = f
        self._opened[handle] = (path, not mode.startswith("r"))
        return handle

    def _get(self, handle: int) -> IO[bytes]:
        try:
            return self._handles[handle]
        except KeyError:
            raise BadHandle(f"no open file with handle {handle}") from None

    async def fread(self, handle: int, size: int = READ_CHUNK) -> bytes:
        f = self._get(handle)
        return await anyio.to_thread.run_sync(f.read, min(size, READ_CHUNK))

    async def fwrite(self, handle: int, data: bytes) -> int:
        f = self._get(handle)
        return await anyio.to_thread.run_sync(f.write, data)

    def fseek(self, handle: int, offset: int, whence: int = 0) -> int:
        return self._get(handle).seek(offset, whence)

    async def fclose(self, handle: int) -> list[Any] | None:
        """Close a handle; for a writer this commits and returns the new inode."""
        f = self._handles.pop(handle, None)
        if f is None:
            raise BadHandle(f"no open file with handle {handle}")
        self._opened.pop(handle, None)
        event = self._events.pop(handle, None)
        try:
            await anyio.to_thread.run_sync(f.close)
        except NexusError as exc:
            self.pipeline.finish(event, SyscallOutcome(False, exc.code, str(exc)))
            raise
        result = getattr(f, "result", None)
        self.pipeline.finish(event, outcome_of(result))
        return None if result is None else wire.meta_to_wire(result)

    def fdiscard(self, handle: int) -> None:
        """Close a handle without committing what was written."""
        f = self._handles.pop(handle, None)
        if f is None:
            raise BadHandle(f"no open file with handle {handle}")
        self._opened.pop(handle, None)
        self._events.pop(handle, None)
        _discard(f)

    def close(self) -> None:
        """The connection ended: drop every handle without committing, end watches.
        The end of the rebac worker's own connection clears the permission gate's
        decisions (fail closed until a worker answers again)."""
        if self.subject == f"service:{GATE_SERVICE}" and self.events.gate is not None:
            self.events.gate.lost()
        for wid in list(self._watches):
            self.events.unwatch(wid)
        self._watches.clear()
        handles, self._handles = self._handles, {}
        self._opened.clear()
        for f in handles.values():
            try:
                _discard(f)
            except Exception:
                log.exception("discarding a handle of a closed session failed")


async def _then(awaitable: Awaitable[Any], convert: Callable[[Any], Any]) -> Any:
    return convert(await awaitable)


def _meta_answer(res: Any) -> Any:
    """The wire form of a syscall's ``FileMetadata`` result, or a coroutine for it when
    the syscall runs in a task (``Session._run``)."""
    if isinstance(res, FileMetadata):
        return wire.meta_to_wire(res)
    return _then(res, wire.meta_to_wire)


class _WatchDelivery:
    """Sends one watch's events to its client as ``watch.event`` notifications."""

    def __init__(self, notify: Callable[[str, dict[str, Any]], None]) -> None:
        self.notify = notify
        self.watch_id = 0

    def __call__(self, event: dict[str, Any]) -> None:
        self.notify("watch.event", {"watch": self.watch_id, "event": event})


def _discard(f: IO[bytes]) -> None:
    discard = getattr(f, "discard", None)
    if discard is not None:
        discard()
    else:
        f.close()
