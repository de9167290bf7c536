"""The worker process of one service: imports the plugin and serves it on the bus.

    python -m nexusfs.services.worker --name NAME --socket PATH --state-dir DIR
        [--token TOKEN | env NEXUSFS_SERVICE_TOKEN | --standby]

With ``--standby`` the process imports everything it needs *except the plugin*, then
blocks on stdin until the supervisor writes the handshake token (one line); EOF makes it
exit 0. The supervisor keeps one such warm spare per service so that a crashed worker is
replaced without paying interpreter start-up (~250 ms here). The plugin is imported only
after the token arrives, so the spare always runs the code currently on disk.

Sequence: load entry point ``NAME`` -> pluggy ``PluginManager("nexusfs")`` with
:class:`~nexusfs.hookspecs.ServiceSpec` -> ``nexus_service_info()`` -> connect ->
``host.hello`` (answers config) -> build ctx -> ``nexus_service_start(ctx)`` ->
``nexus_service_methods(ctx)`` -> ``host.ready(methods)`` -> serve until ``service.stop``
or until the kernel connection is lost -> ``nexus_service_stop(ctx)``.

Handlers served to the kernel: every RPC method under its bare name, ``service.ping``,
``service.stop``, ``hook.pre`` (event dict -> ``{"veto": reason}`` or ``None``) and
``hook.post`` (``first=oseq, batch=[item, ...]``, the items' oseqs being ``first``,
``first + 1``, ... -> the highest ``oseq`` processed; an item is the fields of
``SyscallEvent`` then those of ``SyscallOutcome``, in declaration order, as one list:
``nexusfs.services.host.POST_FIELDS``).

Exit codes (the supervisor's contract): 0 = stopped cleanly (or the kernel went away);
1 = runtime failure (``nexus_service_start`` raised, ...) -> restart with backoff;
3 = the plugin cannot be loaded (import error, no such entry point, no
``nexus_service_info``, handshake refused) -> ``failed``, no automatic retry. The
traceback is printed to stderr in every failure case.

Threading: sync RPC methods and all pluggy hooks run in the worker's thread pool
(:class:`~nexusfs.services._context.ThreadRunner`, up to 32 threads), so they may block
on the RecordStore or on ``ctx.kernel``; ``async def`` methods run on the event loop (one
without ``await`` in its body is run to completion as its request is read, see
:mod:`nexusfs.bus.connection`). The loop is uvloop's when it is installed
(:mod:`nexusfs.bus.runner`, ``NEXUS_EVENT_LOOP``); a warm spare imports it before it
waits, so activation does not pay for it. A post-hook delivery batch costs one thread hop
per batch, not per event.
An exception in ``nexus_post_syscall`` is logged and the event counts as delivered (per
the hookspec); one in ``nexus_pre_syscall`` is returned to the kernel as an error, which
fails the syscall with ``ServiceUnavailable``.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import gc
import inspect
import logging
import os
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import pluggy

from nexusfs.bus import Connection, connect_unix
from nexusfs.bus._busy_poll import busy_poll_limit
from nexusfs.bus.runner import preload as preload_loop
from nexusfs.bus.runner import run as run_loop
from nexusfs.drivers.cachestore import open_cache_store
from nexusfs.errors import ConfigError, NexusError
from nexusfs.hookspecs import (
    PROJECT,
    ServiceContext,
    ServiceInfo,
    ServiceSpec,
    SyscallEvent,
    SyscallOutcome,
    Veto,
)
from nexusfs.services._context import (
    JsonLogFormatter,
    KernelClient,
    ThreadRunner,
    open_record_store,
)
from nexusfs.services.registry import find_entry_point

__all__ = ["EXIT_FAILURE", "EXIT_LOAD_FAILED", "EXIT_OK", "PROTOCOL", "main"]

PROTOCOL = 3  # = nexusfs.services.host.PROTOCOL (not imported: keeps the worker light)
EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_LOAD_FAILED = 3
TOKEN_ENV = "NEXUSFS_SERVICE_TOKEN"
#: Seconds a worker waits for the service socket to accept (the host may still start).
CONNECT_TIMEOUT = 10.0

log = logging.getLogger("nexusfs.worker")


class LoadFailed(Exception):
    """The plugin cannot be loaded; the worker exits with code 3."""


def load_plugin(name: str) -> tuple[pluggy.PluginManager, ServiceInfo]:
    """Import the entry point ``name`` and register it; :class:`LoadFailed` if that is
    impossible (the cause is chained)."""
    ep = find_entry_point(name)
    if ep is None:
        raise LoadFailed(f"no entry point {name!r} in group 'nexusfs.services'")
    try:
        plugin = ep.load()
    except BaseException as exc:
        raise LoadFailed(f"importing {ep.value!r} failed") from exc
    pm = pluggy.PluginManager(PROJECT)
    pm.add_hookspecs(ServiceSpec)
    try:
        pm.register(plugin, name=name)
        info = pm.hook.nexus_service_info()
    except BaseException as exc:
        raise LoadFailed(f"registering {ep.value!r} failed") from exc
    if not isinstance(info, ServiceInfo):
        raise LoadFailed(f"{ep.value!r}: nexus_service_info() returned {info!r}")
    return pm, info


class Worker:
    """One running service inside this process (see the module docstring)."""

    def __init__(self, name: str, pm: pluggy.PluginManager, info: ServiceInfo,
                 state_dir: Path) -> None:
        self.name = name
        self.pm = pm
        self.info = info
        self.state_dir = state_dir
        self.stop_requested = anyio.Event()
        self.ctx: ServiceContext | None = None
        self.handlers: dict[str, Callable[..., Any]] = {}
        self.threads: ThreadRunner | None = None

    async def run(self, socket_path: str, token: str) -> int:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.threads = ThreadRunner(32, name=f"{self.name}-thread")
        base = {"service.ping": self._ping, "service.stop": self._stop}
        # A worker the daemon prestarted may be up before the host listens: wait for it.
        # The kernel is the only peer of this loop: poll for its next call after answering.
        async with connect_unix(socket_path, base, connect_timeout=CONNECT_TIMEOUT,
                                busy_poll=busy_poll_limit()) as conn:
            info = self.info
            try:
                config = await conn.call(
                    "host.hello", protocol=PROTOCOL, token=token, name=self.name,
                    version=info.version, description=info.description,
                    pre_hooks=list(info.pre_hooks), post_hooks=list(info.post_hooks),
                    needs=list(info.needs), idempotent=list(info.idempotent),
                    pid=os.getpid(), timeout=30.0,
                )
            except NexusError as exc:
                print(f"handshake refused by the kernel: {exc}", file=sys.stderr, flush=True)
                return EXIT_LOAD_FAILED
            try:
                ctx = self._context(conn, config if isinstance(config, dict) else {})
            except ConfigError as exc:  # e.g. a malformed cache_url: restarting cannot help
                print(f"bad service configuration: {exc}", file=sys.stderr, flush=True)
                return EXIT_LOAD_FAILED
            self.ctx = ctx
            try:
                await self._in_thread(functools.partial(self.pm.hook.nexus_service_start,
                                                        ctx=ctx))
                methods = self._methods(ctx)
            except Exception:
                log.exception("nexus_service_start failed")
                return EXIT_FAILURE
            conn.handlers = {**methods, **base, "hook.pre": self._pre, "hook.post": self._post}
            await conn.call("host.ready", methods=sorted(methods), timeout=30.0)
            log.info("service %s %s ready (pid %d)", self.name, info.version, os.getpid())
            # The plugin and everything loaded so far live as long as the worker: out
            # of the collector's way (each post-hook batch ages hundreds of objects
            # through the generations; full collections would walk all of this too).
            gc.freeze()
            async with anyio.create_task_group() as tg:

                async def closed() -> None:
                    await conn.wait_closed()
                    self.stop_requested.set()

                tg.start_soon(closed)
                await self.stop_requested.wait()
                tg.cancel_scope.cancel()
            lost = conn.closed
            with anyio.move_on_after(10.0, shield=True):
                try:
                    await self._in_thread(functools.partial(self.pm.hook.nexus_service_stop,
                                                            ctx=ctx))
                except Exception:
                    log.exception("nexus_service_stop failed")
            if ctx.record_store is not None and hasattr(ctx.record_store, "close"):
                ctx.record_store.close()
            if ctx.cache_store is not None:
                ctx.cache_store.close()
            log.info("service %s stopped%s", self.name, " (kernel gone)" if lost else "")
        return EXIT_OK

    def _context(self, conn: Connection, config: dict[str, Any]) -> ServiceContext:
        # ctx.cache_store is never None: the configured store (NEXUS_CACHE_STORE) for a
        # service that declared "cache_store", else a NullCacheStore. An unreachable Redis
        # does not fail the start (the store runs degraded); a malformed URL raises
        # ConfigError.
        cache_url = config.get("cache_url") if "cache_store" in self.info.needs else None
        cache_store = open_cache_store(str(cache_url) if cache_url else None)
        record_store = None
        url = config.get("record_store_url")
        if "record_store" in self.info.needs and url:
            try:
                record_store = open_record_store(str(url))
            except BaseException:
                cache_store.close()
                raise

        kernel = KernelClient(conn)

        def emit(event: str, data: dict[str, Any]) -> None:
            # To the kernel's watchers (nx.watch); logged here too for the record.
            log.info("emit %s %s", event, data)
            try:
                kernel._call("kernel.emit", name=event, data=data)
            except NexusError as exc:
                log.warning("emit %s not delivered: %s", event, exc)

        def set_hooks(pre: list[str] | None = None, post: list[str] | None = None) -> None:
            kernel._call("host.hooks", pre=pre, post=post)

        return ServiceContext(
            name=self.name, state_dir=self.state_dir,
            log=logging.getLogger(f"nexusfs.service.{self.name}"),
            kernel=kernel, record_store=record_store, cache_store=cache_store,
            config=config, emit=emit, set_hooks=set_hooks,
        )

    def _methods(self, ctx: ServiceContext) -> dict[str, Callable[..., Any]]:
        out: dict[str, Callable[..., Any]] = {}
        for table in self.pm.hook.nexus_service_methods(ctx=ctx):
            for mname, fn in (table or {}).items():
                if mname.startswith(("service.", "hook.", "_")) or "." in mname:
                    log.warning("ignoring reserved or dotted method name %r", mname)
                    continue
                out[mname] = fn if inspect.iscoroutinefunction(fn) else self._threaded(fn)
        return out

    def _threaded(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        async def run(**kwargs: Any) -> Any:
            return await self._in_thread(functools.partial(fn, **kwargs))

        return run

    async def _in_thread(self, fn: Callable[[], Any]) -> Any:
        assert self.threads is not None, "Worker.run() is not running"
        return await self.threads.run(fn)

    @staticmethod
    def _ping() -> str:
        return "pong"

    def _stop(self) -> str:
        self.stop_requested.set()
        return "stopping"

    async def _pre(self, event: dict[str, Any]) -> dict[str, Any] | None:
        ev = SyscallEvent(**event)
        res = await self._in_thread(
            functools.partial(self.pm.hook.nexus_pre_syscall, ctx=self.ctx, event=ev))
        if isinstance(res, Veto):
            return {"veto": res.reason}
        return None

    async def _post(self, first: int, batch: list[list[Any]]) -> int:
        return int(await self._in_thread(functools.partial(self._post_sync, first, batch)))

    def _post_sync(self, first: int, batch: list[list[Any]]) -> int:
        """Run the post-hooks on ``batch`` (oseqs ``first``, ``first + 1``, ...); the
        highest oseq processed."""
        last = first + len(batch) - 1
        if batch and self.pm.hook.nexus_post_syscall_batch.get_hookimpls():
            items = [_from_wire(e) for e in batch]
            # Raising here leaves the batch unacknowledged: the host delivers it again.
            if self.pm.hook.nexus_post_syscall_batch(ctx=self.ctx, batch=items):
                return last
        hook = self.pm.hook.nexus_post_syscall
        for e in batch:
            event, outcome = _from_wire(e)
            try:
                hook(ctx=self.ctx, event=event, outcome=outcome)
            except Exception:
                log.exception("nexus_post_syscall failed for event seq %s", event.seq)
        return last


def _field_setters(cls: type) -> tuple[Callable[[Any, Any], None], ...]:
    """The slot setters of a frozen, slotted dataclass's fields, in declaration order."""
    return tuple(vars(cls)[f.name].__set__ for f in dataclasses.fields(cls))


# A frozen dataclass's __init__ sets each field through object.__setattr__, the generic
# (slow) path: 3.7 us for an event and its outcome here, against 1.6 us to decode the
# item. Setting the slots directly builds the same objects in half that.
_E0, _E1, _E2, _E3, _E4, _E5, _E6 = _field_setters(SyscallEvent)
_O0, _O1, _O2, _O3, _O4 = _field_setters(SyscallOutcome)
_new = object.__new__


def _from_wire(e: list[Any]) -> tuple[SyscallEvent, SyscallOutcome]:
    """A post-hook item (``nexusfs.services.host.POST_FIELDS``: the fields of
    ``SyscallEvent`` then those of ``SyscallOutcome``, in declaration order) as its
    event and outcome; equal to building them with their constructors."""
    ev = _new(SyscallEvent)
    _E0(ev, e[0])
    _E1(ev, e[1])
    _E2(ev, e[2])
    _E3(ev, e[3])
    _E4(ev, e[4])
    _E5(ev, e[5])
    _E6(ev, e[6])
    out = _new(SyscallOutcome)
    _O0(out, e[7])
    _O1(out, e[8])
    _O2(out, e[9])
    _O3(out, e[10])
    _O4(out, e[11])
    return ev, out


def _setup_logging(name: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonLogFormatter(name))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(os.environ.get("NEXUSFS_SERVICE_LOG_LEVEL", "INFO"))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="nexusfs.services.worker")
    p.add_argument("--name", required=True)
    p.add_argument("--socket", required=True)
    p.add_argument("--state-dir", required=True)
    p.add_argument("--token", default=None)
    p.add_argument("--standby", action="store_true")
    a = p.parse_args(argv)
    _setup_logging(a.name)
    token = a.token or os.environ.pop(TOKEN_ENV, None)
    try:
        preload_loop()  # before the standby wait: activation must not pay the import
        busy_poll_limit()  # (a bad $NEXUS_BUS_BUSY_POLL_US is a load failure, not a crash)
    except ConfigError as exc:
        print(f"cannot start service {a.name!r}: {exc}", file=sys.stderr, flush=True)
        return EXIT_LOAD_FAILED
    if a.standby:
        line = sys.stdin.readline()
        if not line.strip():
            return EXIT_OK  # the supervisor discarded this spare
        token = line.strip()
    if not token:
        print("no handshake token (--token, $NEXUSFS_SERVICE_TOKEN or --standby)",
              file=sys.stderr, flush=True)
        return EXIT_LOAD_FAILED
    try:
        pm, info = load_plugin(a.name)
    except LoadFailed as exc:
        print(f"cannot load service {a.name!r}: {exc}", file=sys.stderr)
        traceback.print_exception(exc.__cause__ or exc, file=sys.stderr)
        sys.stderr.flush()
        return EXIT_LOAD_FAILED
    worker = Worker(a.name, pm, info, Path(a.state_dir))
    try:
        return run_loop(worker.run, a.socket, token)
    except KeyboardInterrupt:
        return EXIT_OK
    except BaseException:
        traceback.print_exc(file=sys.stderr)
        sys.stderr.flush()
        return EXIT_FAILURE


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
