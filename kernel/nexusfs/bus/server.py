"""Unix-socket listener and async connector for the bus.

Invariants:

* The socket's parent directory is created with mode 0700 if missing (an existing
  directory is left as it is); the socket file is created with mode 0600.
* A stale socket file (nobody accepting on it) is removed before binding; a *live* one
  (a server answers) makes :func:`serve_unix` raise ``OSError(EADDRINUSE)`` instead of
  stealing the path; a non-socket file at the path raises ``FileExistsError``.
* Every accepted peer is checked with ``SO_PEERCRED``: only the server's own uid and
  root (or the uids given in ``allowed_uids``) are served; others are logged and closed
  before a single byte is read.
* A failing connection (bad frames, a handler factory error, anything) is logged and
  closed; the accept loop keeps serving. On exit the socket file is removed if it is
  still the one this server created.
"""

from __future__ import annotations

import contextlib
import errno
import inspect
import logging
import os
import socket
import stat
import struct
import time
from collections.abc import AsyncIterator, Callable, Collection
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
from anyio.abc import SocketAttribute

from nexusfs.bus.connection import Connection, Handlers
from nexusfs.bus.protocol import DEFAULT_MAX_FRAME_SIZE
from nexusfs.errors import ServiceUnavailable

__all__ = ["HandlerFactory", "connect_unix", "peer_credentials", "serve_unix"]

log = logging.getLogger("nexusfs.bus")

#: Called once per accepted connection with the new :class:`Connection` (so handlers can
#: call back through it); returns the connection's handler registry (may be async).
HandlerFactory = Callable[[Connection], Any]

_UCRED = struct.Struct("3i")


def peer_credentials(sock: socket.socket) -> tuple[int, int, int]:
    """``(pid, uid, gid)`` of the process at the other end of a Unix socket."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    pid, uid, gid = _UCRED.unpack(raw)
    return pid, uid, gid


def _prepare_path(path: Path) -> None:
    parent = path.parent
    if not parent.exists():
        parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(parent, 0o700)  # mkdir's mode is filtered by the umask
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise FileExistsError(errno.EEXIST, "exists and is not a socket", str(path))
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(1.0)
        probe.connect(str(path))
    except OSError:
        os.unlink(path)  # stale: nobody is listening
        return
    finally:
        probe.close()
    raise OSError(errno.EADDRINUSE, "a bus server is already listening", str(path))


async def serve_unix(
    path: str | os.PathLike[str],
    handler_factory: HandlerFactory,
    *,
    max_frame_size: int = DEFAULT_MAX_FRAME_SIZE,
    default_timeout: float | None = None,
    allowed_uids: Collection[int] | None = None,
    portable: bool = False,
    busy_poll: float = 0.0,
    task_status: anyio.abc.TaskStatus[Path] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Listen on ``path`` and run a :class:`Connection` per accepted peer until
    cancelled. Use ``await tg.start(serve_unix, path, factory)`` to wait until it
    listens (``start`` returns the socket path).

    ``allowed_uids`` defaults to ``{os.getuid(), 0}``; ``busy_poll``: see
    :class:`Connection` (each connection polls on its own). Raises ``OSError`` if the
    path is held by a live server or cannot be bound; never raises because of a client.
    """
    sock_path = Path(path)
    _prepare_path(sock_path)
    allowed = frozenset(allowed_uids) if allowed_uids is not None else frozenset({os.getuid(), 0})
    listener = await anyio.create_unix_listener(sock_path, mode=0o600)
    ident = os.stat(sock_path)
    try:
        async with listener, anyio.create_task_group() as tg:
            task_status.started(sock_path)
            while True:
                try:
                    stream = await listener.accept()
                except (OSError, anyio.BrokenResourceError) as exc:
                    log.warning("bus %s: accept failed: %r", sock_path, exc)
                    await anyio.sleep(0.05)
                    continue
                tg.start_soon(
                    _serve_connection,
                    stream,
                    handler_factory,
                    allowed,
                    max_frame_size,
                    default_timeout,
                    str(sock_path),
                    portable,
                    busy_poll,
                )
    finally:
        with contextlib.suppress(OSError):
            st = os.stat(sock_path)
            if (st.st_ino, st.st_dev) == (ident.st_ino, ident.st_dev):
                os.unlink(sock_path)


async def _serve_connection(
    stream: anyio.abc.SocketStream,
    handler_factory: HandlerFactory,
    allowed: frozenset[int],
    max_frame_size: int,
    default_timeout: float | None,
    name: str,
    portable: bool,
    busy_poll: float,
) -> None:
    try:
        raw = stream.extra(SocketAttribute.raw_socket)
        pid, uid, _gid = peer_credentials(raw)
        if uid not in allowed:
            log.warning("bus %s: rejected peer pid=%d uid=%d (not allowed)", name, pid, uid)
            await stream.aclose()
            return
        conn = Connection(
            stream,
            None,
            max_frame_size=max_frame_size,
            default_timeout=default_timeout,
            name=f"{name}[pid {pid}]",
            portable=portable,
            busy_poll=busy_poll,
        )
        try:
            handlers = handler_factory(conn)
            if inspect.isawaitable(handlers):
                handlers = await handlers
        except Exception:
            log.exception("bus %s: handler factory failed; closing connection", name)
            await stream.aclose()
            return
        conn.handlers = handlers
        await conn.run()
    except Exception:
        log.exception("bus %s: connection failed", name)
        with anyio.CancelScope(shield=True), contextlib.suppress(Exception):
            await stream.aclose()


@contextlib.asynccontextmanager
async def connect_unix(
    path: str | os.PathLike[str],
    handlers: Handlers = None,
    *,
    max_frame_size: int = DEFAULT_MAX_FRAME_SIZE,
    default_timeout: float | None = None,
    portable: bool = False,
    connect_timeout: float = 0.0,
    busy_poll: float = 0.0,
) -> AsyncIterator[Connection]:
    """``async with connect_unix(path, handlers) as conn:`` - an async bus client whose
    ``handlers`` serve the server's calls back. Raises :class:`ServiceUnavailable` if
    nothing listens at ``path`` (after ``connect_timeout`` seconds of retrying while the
    socket is missing or refuses: a server that is still starting); the connection is
    closed when the block exits. ``busy_poll``: see :class:`Connection`."""
    deadline = time.monotonic() + connect_timeout
    while True:
        try:
            stream = await anyio.connect_unix(os.fspath(path))
            break
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            if time.monotonic() >= deadline:
                raise ServiceUnavailable(f"cannot connect to bus at {path}: {exc}") from exc
            await anyio.sleep(0.005)
        except OSError as exc:
            raise ServiceUnavailable(f"cannot connect to bus at {path}: {exc}") from exc
    async with Connection(
        stream,
        handlers,
        max_frame_size=max_frame_size,
        default_timeout=default_timeout,
        name=f"client {path}",
        portable=portable,
        busy_poll=busy_poll,
    ) as conn:
        yield conn
