"""Real Redis servers for tests and benchmarks: no mocks, a ``redis-server`` process.

:func:`redis_url` answers the URL of a Redis server to test against:

1. ``$NEXUS_TEST_REDIS_URL`` if set (CI points it at the server ``.ci/run`` started);
2. otherwise a private ``redis-server`` that this module starts on ``127.0.0.1`` on a
   free port (no persistence, its own temporary directory), one per process, stopped
   when the process exits;
3. otherwise ``None`` (no ``redis-server`` binary, or it failed to start). With
   ``NEXUS_TEST_REQUIRE_SERVERS=1`` that is an error instead: :class:`RedisUnavailable`.

Tests call :func:`redis_url_or_skip` (skip, or fail when servers are required).
:class:`RedisServer` is also usable on its own: the degradation tests start a private
one and stop, kill, pause (``SIGSTOP``) and restart it on the same port.

Invariants: a server started here listens on loopback only, never writes an RDB or AOF
file, and does not outlive the process that started it (``atexit``, plus
``PR_SET_PDEATHSIG`` on Linux so that even a ``SIGKILL`` of the test process stops it;
the death signal fires when the *thread* that started the server exits, so start
servers from a long-lived thread, as tests do); the temporary directory of a server
whose owner was killed is removed by the next :class:`RedisServer`. Only the standard
library is used here, so benchmarks can import it without ``pytest`` or ``redis``.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType

from nexusfs.testing._servers import (
    REQUIRE_SERVERS_ENV,
    SharedServer,
    death_signal_setter,
    free_port,
    servers_required,
)

__all__ = [
    "REDIS_URL_ENV",
    "REQUIRE_SERVERS_ENV",
    "RedisServer",
    "RedisUnavailable",
    "free_port",
    "private_redis_server",
    "redis_server_binary",
    "redis_url",
    "redis_url_or_skip",
    "servers_required",
    "shared_redis_server",
]

#: Environment variable naming an existing Redis server to test against.
REDIS_URL_ENV = "NEXUS_TEST_REDIS_URL"

_DIR_PREFIX = "nexus-redis-"
_OWNER_FILE = "owner.pid"


class RedisUnavailable(RuntimeError):
    """No Redis server could be found or started (the message says why)."""


def redis_server_binary() -> str | None:
    """Path of the ``redis-server`` executable (``$PATH``, then ``/usr/bin`` and
    ``/usr/sbin``), or ``None``."""
    found = shutil.which("redis-server")
    if found:
        return found
    for candidate in ("/usr/bin/redis-server", "/usr/sbin/redis-server"):
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def _reap_leftovers() -> None:
    """Remove the directories of servers whose owning process died without cleaning up
    (``SIGKILL``: the server itself died with it through the death signal)."""
    for path in Path(tempfile.gettempdir()).glob(_DIR_PREFIX + "*"):
        try:
            pid = int((path / _OWNER_FILE).read_text())
            os.kill(pid, 0)
        except ProcessLookupError:
            shutil.rmtree(path, ignore_errors=True)
        except (OSError, ValueError):
            continue  # not ours to judge (no owner file yet, or another user's)


def _ping(host: str, port: int, timeout: float) -> bool:
    """Whether a Redis server answers ``PING`` on ``host:port`` within ``timeout``."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as s:
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """One private ``redis-server`` on ``127.0.0.1:port`` (a free port if ``None``).

    The server keeps no data on disk (``save ""``, ``appendonly no``), writes its log to
    ``log_path`` in its own temporary directory (removed by :meth:`close`), also listens
    on the Unix socket ``unix_path`` (:attr:`unix_url`), and is stopped at interpreter
    exit. The port is kept across :meth:`stop` / :meth:`start`,
    so clients configured with :attr:`url` reach the restarted server.

    Failure semantics: :meth:`start` raises :class:`RedisUnavailable` when there is no
    ``redis-server`` binary or the server does not answer ``PING`` within ``timeout``
    (then the process is killed and the log tail is in the message). The other methods
    do not raise when the server is already in the requested state.
    """

    host = "127.0.0.1"

    def __init__(self, port: int | None = None, *, binary: str | None = None) -> None:
        self.binary = binary or redis_server_binary()
        self._fixed_port = port is not None
        self.port = port if port is not None else free_port()
        _reap_leftovers()
        self._dir = Path(tempfile.mkdtemp(prefix=_DIR_PREFIX))
        (self._dir / _OWNER_FILE).write_text(str(os.getpid()))
        self.log_path = self._dir / "redis.log"
        #: The server also listens on this Unix socket (``unix_url``).
        self.unix_path = self._dir / "redis.sock"
        self._proc: subprocess.Popen[bytes] | None = None
        self._paused = False
        self._lock = threading.Lock()
        atexit.register(self.close)

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:PORT/0``."""
        return f"redis://{self.host}:{self.port}/0"

    @property
    def unix_url(self) -> str:
        """``unix:///.../redis.sock?db=0``: the same server through its Unix socket."""
        return f"unix://{self.unix_path}?db=0"

    @property
    def pid(self) -> int | None:
        """Process id of the running server, or ``None``."""
        return self._proc.pid if self.running and self._proc is not None else None

    @property
    def running(self) -> bool:
        """Whether the server process is alive (a paused server counts as running)."""
        return self._proc is not None and self._proc.poll() is None

    def _command(self) -> list[str]:
        assert self.binary is not None
        unix = ["--unixsocket", str(self.unix_path), "--unixsocketperm", "700"]
        if len(str(self.unix_path).encode()) >= 100:  # sun_path holds 108 bytes
            unix = []
        return [
            self.binary,
            "--port", str(self.port),
            "--bind", self.host,
            "--protected-mode", "yes",
            "--save", "",
            "--appendonly", "no",
            "--daemonize", "no",
            "--dir", str(self._dir),
            *unix,
            "--logfile", str(self.log_path),
        ]  # fmt: skip

    def log_tail(self, lines: int = 20) -> str:
        """The last ``lines`` lines of the server log (empty if none)."""
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def start(self, timeout: float = 10.0) -> RedisServer:
        """Start the server (no-op if running) and wait until it answers ``PING``."""
        with self._lock:
            if self.running:
                return self
            if self.binary is None:
                raise RedisUnavailable("redis-server is not installed (apt-get install "
                                       "redis-server)")  # fmt: skip
            attempts = 1 if self._fixed_port else 3
            for attempt in range(attempts):
                if attempt:
                    self.port = free_port()  # the free port was taken meanwhile
                self._proc = subprocess.Popen(
                    self._command(),
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    preexec_fn=death_signal_setter(signal.SIGTERM),
                )
                self._paused = False
                deadline = time.monotonic() + timeout
                while time.monotonic() < deadline and self._proc.poll() is None:
                    if _ping(self.host, self.port, 0.5):
                        return self
                    time.sleep(0.02)
                self._terminate(signal.SIGKILL)
            raise RedisUnavailable(
                f"redis-server on {self.host}:{self.port} did not start within "
                f"{timeout:g} s; log:\n{self.log_tail()}"
            )

    def _terminate(self, sig: signal.Signals, timeout: float = 10.0) -> None:
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            if self._paused:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGCONT)
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(sig)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._proc = None
        self._paused = False

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the server gracefully (``SIGTERM``; ``SIGKILL`` after ``timeout``) and
        wait for it to exit. Clients see their connections closed. Idempotent."""
        with self._lock:
            self._terminate(signal.SIGTERM, timeout)

    def kill(self) -> None:
        """Kill the server with ``SIGKILL`` (a crash) and reap it. Idempotent."""
        with self._lock:
            self._terminate(signal.SIGKILL)

    def pause(self) -> None:
        """Freeze the server with ``SIGSTOP``: connections stay open, nothing answers
        (a hung server, or a network partition). Requires a running server."""
        with self._lock:
            if self._proc is None or self._proc.poll() is not None:
                raise RedisUnavailable("cannot pause: the server is not running")
            self._proc.send_signal(signal.SIGSTOP)
            self._paused = True

    def resume(self) -> None:
        """Undo :meth:`pause` (``SIGCONT``). No-op if not paused."""
        with self._lock:
            if self._proc is not None and self._paused:
                with contextlib.suppress(ProcessLookupError):
                    self._proc.send_signal(signal.SIGCONT)
            self._paused = False

    def restart(self, timeout: float = 10.0) -> RedisServer:
        """Stop the server if it runs and start it again on the same port (empty)."""
        self.stop()
        return self.start(timeout)

    def close(self) -> None:
        """Stop the server and remove its directory. Idempotent."""
        self.stop()
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"RedisServer({self.host}:{self.port}, {state})"


_SHARED = SharedServer(RedisServer, RedisUnavailable, env=REDIS_URL_ENV, what="Redis",
                       install="redis-server")  # fmt: skip


def shared_redis_server() -> RedisServer | None:
    """The process-wide private server behind :func:`redis_url` (started on first use),
    or ``None`` when ``$NEXUS_TEST_REDIS_URL`` is set or no server could be started
    (the reason is remembered and reported by :func:`redis_url`). Tests that stop or
    pause a server should start their own :class:`RedisServer` instead."""
    return _SHARED.server()


def redis_url() -> str | None:
    """The URL of a Redis server to test against (see the module docstring), or
    ``None``. Raises :class:`RedisUnavailable` instead of answering ``None`` when
    ``NEXUS_TEST_REQUIRE_SERVERS=1``."""
    return _SHARED.url()


def redis_url_or_skip() -> str:
    """:func:`redis_url` for tests: skips the test when there is no server, or fails
    it when servers are required. Needs ``pytest``."""
    return _SHARED.url_or_skip()


@contextlib.contextmanager
def private_redis_server() -> Iterator[RedisServer]:
    """A started :class:`RedisServer` of the caller's own (to stop, pause or kill), closed
    after the block. In a test, no ``redis-server`` skips the test, or fails it when
    servers are required. Needs ``pytest``."""
    import pytest

    srv = RedisServer()
    try:
        srv.start()
    except RedisUnavailable as exc:
        srv.close()
        if servers_required():
            pytest.fail(str(exc))
        pytest.skip(str(exc))
    try:
        yield srv
    finally:
        srv.close()
