"""The kernel process: a daemon that owns a data directory and serves the NexusFS API to
local clients over the bus (``nexus up`` / ``down`` / ``status``)."""

from nexusfs.server.daemon import kernel_state, serve_forever, socket_path_for, start, stop

__all__ = ["kernel_state", "serve_forever", "socket_path_for", "start", "stop"]
