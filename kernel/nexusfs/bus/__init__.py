"""NexusFS local bus: length-prefixed msgpack RPC over Unix domain sockets.

* :class:`Connection` - symmetric async peer (anyio): calls in both directions,
  pipelining, deadlines carried in the frame, cancellation, notifications.
* :func:`serve_unix` / :func:`connect_unix` - listener (0700 dir, 0600 socket,
  SO_PEERCRED check) and async connector.
* :class:`BlockingClient` - thread-safe blocking client for synchronous callers.
* :mod:`nexusfs.bus.runner` - ``run(main)``: the event loop bus processes run on (uvloop
  when installed, ``NEXUS_EVENT_LOOP`` to choose).
* Errors: :class:`FrameTooLarge`, :class:`ProtocolError`, :class:`UnknownMethod`,
  :class:`DeadlineExceeded` (a ServiceUnavailable and a TimeoutError),
  :class:`InternalError` (non-Nexus handler exceptions, code ``internal``); any
  :class:`~nexusfs.errors.NexusError` raised by a handler arrives with its own class.

Wire format and invariants: :mod:`nexusfs.bus.protocol`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from nexusfs.bus.client import BlockingClient
    from nexusfs.bus.connection import Connection, Handlers
    from nexusfs.bus.protocol import (
        DEFAULT_MAX_FRAME_SIZE,
        DeadlineExceeded,
        FrameTooLarge,
        InternalError,
        ProtocolError,
        UnknownMethod,
        error_from_wire,
    )
    from nexusfs.bus.server import HandlerFactory, connect_unix, peer_credentials, serve_unix

# Names are imported on first use (PEP 562), so a synchronous client (the CLI) that only
# needs BlockingClient does not pay for asyncio and anyio.
_HOME = {
    "BlockingClient": "client",
    "Connection": "connection",
    "Handlers": "connection",
    "DEFAULT_MAX_FRAME_SIZE": "protocol",
    "DeadlineExceeded": "protocol",
    "FrameTooLarge": "protocol",
    "InternalError": "protocol",
    "ProtocolError": "protocol",
    "UnknownMethod": "protocol",
    "error_from_wire": "protocol",
    "HandlerFactory": "server",
    "connect_unix": "server",
    "peer_credentials": "server",
    "serve_unix": "server",
}

__all__ = [
    "DEFAULT_MAX_FRAME_SIZE",
    "BlockingClient",
    "Connection",
    "DeadlineExceeded",
    "FrameTooLarge",
    "HandlerFactory",
    "Handlers",
    "InternalError",
    "ProtocolError",
    "UnknownMethod",
    "connect_unix",
    "error_from_wire",
    "peer_credentials",
    "serve_unix",
]


def __getattr__(name: str) -> Any:
    home = _HOME.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{home}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
