"""Pieces shared by the test-server launchers (``postgres``, ``redis``, ``s3``).

* :func:`servers_required`: ``NEXUS_TEST_REQUIRE_SERVERS=1`` makes a missing server an
  error instead of a skip (CI sets it).
* :func:`free_port`: a loopback TCP port that was free a moment ago.
* :func:`death_signal_setter`: a ``preexec_fn`` that makes Linux signal a server when
  the test process that started it dies, even by ``SIGKILL``, so no server outlives
  its test run. ``None`` where that is not available (then only ``atexit`` cleans up).
* :class:`SharedServer`: the process-wide server of one kind that tests use unless an
  environment variable names one; started on first use, restarted if a test stopped
  it, and a start failure remembered and reported (skip, or fail when required).
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import sys
import threading
from collections.abc import Callable
from typing import Generic, Protocol, Self, TypeVar

__all__ = [
    "REQUIRE_SERVERS_ENV",
    "SharedServer",
    "death_signal_setter",
    "free_port",
    "servers_required",
]

#: When ``1``, a missing test server is an error rather than a skip.
REQUIRE_SERVERS_ENV = "NEXUS_TEST_REQUIRE_SERVERS"
_PR_SET_PDEATHSIG = 1


def servers_required() -> bool:
    """Whether ``NEXUS_TEST_REQUIRE_SERVERS=1``: missing servers fail instead of skip."""
    return os.environ.get(REQUIRE_SERVERS_ENV, "").strip() == "1"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (bind to port 0 and close)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def death_signal_setter(sig: signal.Signals) -> Callable[[], None] | None:
    """A ``preexec_fn`` asking Linux to send ``sig`` to the child when its parent dies;
    ``None`` off Linux or without ``prctl``."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong,
                      ctypes.c_ulong]  # fmt: skip
    prctl.restype = ctypes.c_int

    def preexec() -> None:  # runs in the child between fork and exec
        prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)

    return preexec


class _Server(Protocol):
    @property
    def url(self) -> str: ...
    @property
    def running(self) -> bool: ...
    def start(self) -> Self: ...
    def close(self) -> None: ...


S = TypeVar("S", bound=_Server)


class SharedServer(Generic[S]):
    """The process-wide test server of one kind (see the module docstring).

    ``make()`` builds an unstarted server whose ``start()`` raises ``unavailable`` when
    it cannot run; ``env`` names the variable that points tests at an existing server
    instead (its value, passed through ``normalize``, is the URL); ``what`` and
    ``install`` word the messages (``no Redis server: set ... or install
    redis-server``). Thread-safe."""

    def __init__(self, make: Callable[[], S], unavailable: type[Exception], *, env: str,
                 what: str, install: str,
                 normalize: Callable[[str], str] = lambda url: url) -> None:  # fmt: skip
        self._make = make
        self._unavailable = unavailable
        self._env = env
        self._what = what
        self._install = install
        self._normalize = normalize
        self._lock = threading.Lock()
        self._server: S | None = None
        self.error: str | None = None

    def server(self) -> S | None:
        """The shared server (started on first use; restarted on the same port if a
        test stopped it), or ``None`` when ``env`` is set or no server could be started
        (the reason is kept in :attr:`error`)."""
        if os.environ.get(self._env, "").strip():
            return None
        with self._lock:
            if self._server is None and self.error is None:
                server = self._make()
                try:
                    self._server = server.start()
                except self._unavailable as exc:
                    server.close()
                    self.error = str(exc)
            if self._server is not None and not self._server.running:
                self._server.start()
            return self._server

    def url(self) -> str | None:
        """The URL of ``env`` or of the shared server; ``None`` when there is neither,
        except that ``unavailable`` is raised when servers are required."""
        env = os.environ.get(self._env, "").strip()
        if env:
            return self._normalize(env)
        server = self.server()
        if server is not None:
            return server.url
        if servers_required():
            raise self._unavailable(f"{REQUIRE_SERVERS_ENV}=1 but {self._missing()}")
        return None

    def url_or_skip(self) -> str:
        """:meth:`url` for tests: skips the test when there is no server, or fails it
        when servers are required. Needs ``pytest``."""
        import pytest

        try:
            url = self.url()
        except self._unavailable as exc:
            pytest.fail(str(exc))
        if url is None:
            pytest.skip(self._missing())
        return url

    def _missing(self) -> str:
        return (f"no {self._what} server: set {self._env} or install {self._install} "
                f"({self.error})")  # fmt: skip
