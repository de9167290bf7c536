"""The kernel process: one daemon per data directory, serving syscalls on a Unix socket.

Layout inside the data directory::

    run/                 mode 0700
    run/kernel.sock      the bus socket, mode 0600 (peer uid checked on accept)
    run/kernel.json      {"pid", "socket", "data_dir", "started_at", "version"}
    run/kernel.log       the daemon's stdout/stderr

When the data directory's path is too long for a Unix socket address (108 bytes), the
socket lives in a private 0700 directory under ``$XDG_RUNTIME_DIR`` (or ``/tmp``) and
``kernel.json`` records where.

Invariants: the daemon opens the metastore (taking redb's exclusive file lock) *before*
it listens or starts any service worker, and it writes ``kernel.json`` only once it
answers calls, so a client that finds a live socket always reaches a kernel that owns
the data; a client that finds no live kernel opens the directory embedded, and redb's
lock makes the two exclusive.
``kernel.json`` and the socket are removed on a clean stop; a stale pair left by a crash
is ignored (nobody answers) and replaced by the next ``up``.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nexusfs.errors import ConfigError, NexusError, ServiceUnavailable

if TYPE_CHECKING:
    from nexusfs.config import Settings

__all__ = [
    "KernelState",
    "check_daemon_distro",
    "kernel_state",
    "run_dir",
    "serve_forever",
    "socket_path_for",
    "start",
    "stop",
]

log = logging.getLogger("nexusfs.server")

KernelState = dict[str, Any]
_MAX_SUN_PATH = 100


def run_dir(data_dir: Path) -> Path:
    return data_dir / "run"


def socket_path_for(data_dir: Path) -> Path:
    """Where the kernel of ``data_dir`` listens (short enough for ``AF_UNIX``)."""
    path = run_dir(data_dir).resolve() / "kernel.sock"
    if len(os.fsencode(path)) <= _MAX_SUN_PATH:
        return path
    base = Path(os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir())
    digest = hashlib.sha256(os.fsencode(data_dir.resolve())).hexdigest()[:20]
    return base / f"nexus-{os.getuid()}" / f"{digest}.sock"


def _state_file(data_dir: Path) -> Path:
    return run_dir(data_dir) / "kernel.json"


def kernel_state(data_dir: Path, *, check: bool = True) -> KernelState | None:
    """The running kernel of ``data_dir`` (``kernel.json``), or ``None`` if there is
    none. With ``check``, a kernel that does not answer a ping counts as none."""
    try:
        state: KernelState = json.loads(_state_file(data_dir).read_text())
    except (OSError, ValueError):
        return None
    if check and not _answers(state.get("socket", "")):
        return None
    return state


def _answers(sock: str, timeout: float = 2.0) -> bool:
    from nexusfs.bus.client import BlockingClient

    try:
        with BlockingClient(sock, timeout=timeout) as client:
            return bool(client.call("kernel.ping") == "pong")
    except (NexusError, OSError):
        return False


# ---------------------------------------------------------------------- daemon side


def serve_forever(
    data_dir: Path, *, durability: str | None = None, distro: str | None = None
) -> None:
    """Run the kernel in this process until SIGTERM/SIGINT or ``kernel.shutdown``.

    The drivers and services come from the settings of ``data_dir``
    (:func:`nexusfs.config.load_settings`); ``durability`` and ``distro`` given here win.
    Raises ``ConfigError`` for bad settings (including a distro that runs embedded) and
    ``StoreLocked`` if another process owns the data directory.
    """
    from nexusfs.config import load_settings
    from nexusfs.kernel import open_embedded

    data_dir = data_dir.resolve()
    settings = load_settings(
        data_dir, overrides={"durability": durability, "distro": distro}, override_source="flag"
    )
    # (`start` checked the distro against the installed packages; a service that is not
    # installed is reported by the host.)
    check_daemon_distro(settings, check_installed=False)
    rdir = run_dir(data_dir)
    rdir.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(rdir, 0o700)
    fs = open_embedded(settings)
    prestarted: dict[str, Any] = {}
    try:
        # The workers' imports are the longest part of a start: begin them now, while
        # the kernel sets up (the host adopts them; see nexusfs.services._spawn).
        entries, prestarted = _prestart_services(settings)
        from nexusfs.bus.runner import run as run_loop

        run_loop(_serve, fs, settings, entries, prestarted)
    finally:
        # The host has stopped every worker it ran; one still alive here was never
        # adopted (the loop failed before the host started).
        for pre in prestarted.values():
            if pre.popen.poll() is None:
                pre.discard()
        fs.close()
        with contextlib.suppress(OSError):
            _state_file(data_dir).unlink()


def _prestart_services(settings: Settings) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    """Start the configured services' workers now (before the host exists): returns the
    installed services (``None`` when not read) and the prestarted workers by name."""
    if settings.services == ():
        return None, {}
    from nexusfs.services._spawn import prestart

    entries: dict[str, Any] | None = None
    if settings.services is None:
        from nexusfs.services.registry import installed_services

        entries = dict(installed_services())
        names = list(entries)
    else:
        names = list(settings.services)
    rdir = run_dir(settings.data_dir)
    return entries, prestart(names, run_dir=rdir, data_dir=settings.data_dir)


def check_daemon_distro(settings: Settings, *, check_installed: bool = True) -> None:
    """``ConfigError`` if the settings' distro runs the kernel embedded (no daemon);
    ``DistroError`` if it is invalid (with ``check_installed``, also when a service or
    extra it names is not installed)."""
    if settings.distro is None:
        return
    from nexusfs.distro import load_distro

    distro = load_distro(settings.distro, check_installed=check_installed)
    if distro.mode == "embedded":
        raise ConfigError(
            f"distro {distro.name!r} runs the kernel in-process (mode embedded); it has no "
            "kernel process to start: use the API or CLI directly, or choose nexus-server"
        )


async def _serve(
    fs: Any, settings: Settings, entries: dict[str, Any] | None, prestarted: dict[str, Any]
) -> None:
    import anyio

    from nexusfs.bus import Connection, serve_unix
    from nexusfs.server.pipeline import Pipeline
    from nexusfs.server.session import Session

    data_dir = settings.data_dir
    sock = socket_path_for(data_dir)
    sock.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    stop = anyio.Event()
    info = {
        "pid": os.getpid(),
        "socket": str(sock),
        "data_dir": str(data_dir),
        "started_at": time.time(),
        "version": _version(),
        "durability": str(fs.durability),
        "distro": settings.distro,
    }

    async with anyio.create_task_group() as tg:

        def open_session(conn: Connection, session: Session) -> dict[str, Any]:
            send, recv = anyio.create_memory_object_stream[tuple[str, dict[str, Any]]](10_000)

            def notify(method: str, args: dict[str, Any]) -> None:
                # At most once: a client too slow to take its events misses some.
                with contextlib.suppress(anyio.WouldBlock, anyio.ClosedResourceError):
                    send.send_nowait((method, args))

            async def pump() -> None:
                async with recv:
                    async for method, args in recv:
                        with contextlib.suppress(NexusError):
                            await conn.notify(method, **args)

            async def cleanup() -> None:
                await conn.wait_closed()
                session.close()
                send.close()

            session._notify = notify
            tg.start_soon(pump)
            tg.start_soon(cleanup)
            return session.handlers()

        def service_handlers(name: str, conn: Connection) -> dict[str, Any]:
            # Syscalls made by services are not hooked (no re-entrant hook loops); what
            # they emit goes to the kernel's watchers.
            session = Session(fs, stop.set, info, subject=f"service:{name}", events=pipeline)
            return open_session(conn, session)

        pipeline = Pipeline()
        host = _service_host(settings, service_handlers, entries, prestarted)
        pipeline.host = host
        if host is not None:
            await tg.start(host.run)
            await _services_settled(host)
            pipeline.gate = _permission_gate(fs, host, settings)

        async def factory(conn: Connection) -> dict[str, Any]:
            session = Session(fs, stop.set, info, pipeline=pipeline, services=host)
            handlers = open_session(conn, session)
            if host is not None:
                from nexusfs.server.admin import admin_handlers

                handlers.update(admin_handlers(host))
            return handlers

        await tg.start(serve_unix, sock, factory)
        state = _state_file(data_dir)
        tmp = state.with_suffix(".tmp")
        tmp.write_text(json.dumps(info))
        os.replace(tmp, state)
        log.info("kernel %s serving %s on %s", os.getpid(), data_dir, sock)
        # Everything alive now lives as long as the kernel: out of the collector's
        # way (its full collections would otherwise walk it all, again and again,
        # while a stream of post-hook events ages through the generations).
        gc.freeze()

        async def on_signals() -> None:
            with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                async for _ in signals:
                    stop.set()
                    return

        tg.start_soon(on_signals)
        await stop.wait()
        await anyio.sleep(0.05)  # let the shutdown call's answer go out
        tg.cancel_scope.cancel()


async def _services_settled(host: Any, timeout: float = 20.0) -> None:
    """Wait until no service is still starting (each is running, failed, degraded or
    stopped), so the first syscall a client makes is already hooked and audited."""
    import anyio

    with anyio.move_on_after(timeout):
        while any(s["state"] in ("starting", "restarting") for s in host.services()):
            await anyio.sleep(0.01)


def _permission_gate(fs: Any, host: Any, settings: Settings) -> Any:
    """The permission gate when the rebac service is configured, else ``None``. Admins:
    the user running the kernel, every ``service:*`` subject, and ``settings.admins``."""
    import getpass

    from nexusfs.server.gate import PermissionGate

    gate = PermissionGate(
        host, _kind_of(fs), admins=(f"user:{getpass.getuser()}", *settings.admins)
    )
    return gate if gate.active() else None


def _kind_of(fs: Any) -> Any:
    def kind(path: str) -> bool | None:
        try:
            return bool(fs.stat(path).is_dir)
        except NexusError:
            return None

    return kind


def _service_host(
    settings: Settings,
    handlers: Any,
    entries: dict[str, Any] | None = None,
    prestarted: dict[str, Any] | None = None,
) -> Any:
    """The service host for this kernel, or ``None`` when no service is configured
    (``services = []``, ``NEXUS_SERVICES=""``). ``None`` (``all``) starts every
    installed service. Workers get the RecordStore and CacheStore URLs of the settings;
    ``entries`` / ``prestarted`` come from :func:`_prestart_services`."""
    from nexusfs.services.host import ServiceHost

    if settings.services == ():
        return None
    config: dict[str, Any] = {
        "services": None if settings.services is None else list(settings.services),
        "record_store_url": settings.record_store,
        "cache_url": settings.cache_store,
    }
    return ServiceHost(settings.data_dir, run_dir(settings.data_dir), handlers, config,
                       entries=entries, prestarted=prestarted)  # fmt: skip


def _version() -> str:
    from nexusfs import __version__

    return __version__


# ---------------------------------------------------------------------- control side


def start(
    data_dir: Path,
    *,
    durability: str | None = None,
    distro: str | None = None,
    timeout: float = 15.0,
) -> KernelState:
    """Start the kernel daemon for ``data_dir`` (detached) and wait until it answers.
    Returns its state; if one is already running, returns that one. The settings are
    checked here first, so a bad config fails at once with ``ConfigError``. Raises
    ``ServiceUnavailable`` with the tail of its log if it does not come up in time."""
    from nexusfs.config import load_settings

    data_dir = data_dir.resolve()
    running = kernel_state(data_dir)
    if running is not None:
        return running
    settings = load_settings(
        data_dir, overrides={"durability": durability, "distro": distro}, override_source="flag"
    )
    check_daemon_distro(settings)
    rdir = run_dir(data_dir)
    rdir.mkdir(mode=0o700, parents=True, exist_ok=True)
    logfile = rdir / "kernel.log"
    cmd = [sys.executable, "-m", "nexusfs.server", "--data-dir", str(data_dir)]
    if durability:
        cmd += ["--durability", durability]
    if distro:
        cmd += ["--distro", distro]
    with open(logfile, "ab") as out:
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            close_fds=True,
        )
    from nexusfs.bus.client import BlockingClient  # noqa: F401  (imported while it boots)

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = kernel_state(data_dir, check=False)
        if state is not None and state.get("pid") == proc.pid and _answers(state["socket"]):
            return state
        if proc.poll() is not None:
            break
        time.sleep(0.005)
    if proc.poll() is None:
        proc.kill()
    tail = logfile.read_text(errors="replace")[-2000:].strip()
    raise ServiceUnavailable(f"the kernel did not start: {tail or 'no output'}")


def stop(data_dir: Path, *, timeout: float = 15.0) -> bool:
    """Stop the kernel of ``data_dir`` (flushing everything). Returns ``False`` if none
    was running. Sends ``kernel.shutdown``, then SIGTERM, then SIGKILL as a last resort."""
    from nexusfs.bus import BlockingClient

    data_dir = data_dir.resolve()
    state = kernel_state(data_dir, check=False)
    if state is None:
        return False
    pid = int(state["pid"])
    try:
        with BlockingClient(state["socket"], timeout=5.0) as client:
            client.call("kernel.shutdown")
    except (NexusError, OSError):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _alive(pid):
            return True
        time.sleep(0.02)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    return True


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child of ours counts as gone.
    with contextlib.suppress(ChildProcessError):
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done:
            return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False
