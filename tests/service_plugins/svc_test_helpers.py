"""Shared helpers of the service-host tests (not a plugin): plugin path, a running host,
polling."""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest

from nexusfs.services.host import ServiceHost

PLUGINS = Path(__file__).resolve().parent

FAST = {
    "heartbeat_interval": 0.2,
    "heartbeat_timeout": 0.5,
    "heartbeat_misses": 3,
    "handshake_timeout": 3.0,
    "start_timeout": 10.0,
    "backoff_base": 0.02,
    "backoff_cap": 0.5,
    "max_restarts": 3,
    "restart_window": 30.0,
    "stop_timeout": 3.0,
    "drain_timeout": 5.0,
}


def use_plugins(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, *extra: Path) -> Path:
    """Put the fake installed distributions on sys.path and PYTHONPATH; returns the
    marker directory the plugins record their importing pids in."""
    for p in (PLUGINS, *extra):
        monkeypatch.syspath_prepend(str(p))
    paths = [str(p) for p in (*extra, PLUGINS)]
    if os.environ.get("PYTHONPATH"):
        paths.append(os.environ["PYTHONPATH"])
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(paths))
    markers = tmp_path / "markers"
    monkeypatch.setenv("NXTEST_MARKER_DIR", str(markers))
    return markers


def dummy_kernel_handlers(name: str, conn: Any) -> dict[str, Callable[..., Any]]:
    return {"kernel.ping": lambda: "pong", "fs.exists": lambda path: path == "/yes"}


@asynccontextmanager
async def running_host(tmp_path: Path, services: list[str] | None,
                       **overrides: Any) -> AsyncIterator[ServiceHost]:
    """A service host over ``tmp_path`` running ``services`` (``None``: all installed).
    ``prestarted``: workers started beforehand (:func:`nexusfs.services._spawn.prestart`)
    for the host to adopt."""
    sup = {**FAST, **overrides.pop("supervisor", {})}
    prestarted = overrides.pop("prestarted", None)
    config = {"services": services, "supervisor": sup, **overrides}
    host = ServiceHost(tmp_path / "data", tmp_path / "run", dummy_kernel_handlers, config,
                       prestarted=prestarted)  # fmt: skip
    async with anyio.create_task_group() as tg:
        await tg.start(host.run)
        try:
            yield host
        finally:
            tg.cancel_scope.cancel()


def info(host: ServiceHost, name: str) -> dict[str, Any]:
    return next(s for s in host.services() if s["name"] == name)


async def wait_for(cond: Callable[[], Any], timeout: float = 30.0, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or cond}")
        await anyio.sleep(0.02)


async def wait_state(host: ServiceHost, name: str, *states: str,
                     timeout: float = 30.0) -> dict[str, Any]:
    await wait_for(lambda: info(host, name)["state"] in states, timeout,
                   f"{name} in {states} (now {info(host, name)})")
    return info(host, name)


def deadline(seconds: float = 20.0) -> float:
    return time.time() + seconds
