"""Pieces shared by the test-server launchers (``postgres``, ``redis``, ``s3``).

* :func:`servers_required`: ``NEXUS_TEST_REQUIRE_SERVERS=1`` makes a missing server an
  error instead of a skip (CI sets it).
* :func:`free_port`: a loopback TCP port that was free a moment ago.
* :func:`death_signal_setter`: a ``preexec_fn`` that makes Linux signal a server when
  the test process that started it dies, even by ``SIGKILL``, so no server outlives
  its test run. ``None`` where that is not available (then only ``atexit`` cleans up).
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import sys
from collections.abc import Callable

__all__ = ["REQUIRE_SERVERS_ENV", "death_signal_setter", "free_port", "servers_required"]

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
