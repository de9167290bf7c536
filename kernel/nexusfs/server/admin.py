"""Service administration over the bus: what ``nexus plugins`` and ``nexus service``
call in the kernel process.

``plugin_install`` runs ``pip install`` in the *kernel's* environment (like an OS
package manager installs into the system) and starts the services the new package
provides; ``plugin_uninstall`` stops them and removes the package. pip runs in a worker
thread, so the kernel keeps serving meanwhile. A failed install raises
``ServiceUnavailable`` carrying pip's last lines and changes nothing that pip did not.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import anyio

from nexusfs.errors import ServiceUnavailable
from nexusfs.services.registry import installed_services

if TYPE_CHECKING:
    from nexusfs.services.host import ServiceHost

__all__ = ["admin_handlers"]


def admin_handlers(host: ServiceHost) -> dict[str, Callable[..., Any]]:
    """The ``services.*`` handlers for a client session."""

    async def start(name: str) -> None:
        await host.start_service(name)

    async def stop(name: str) -> None:
        await host.stop_service(name)

    async def restart(name: str) -> None:
        await host.restart_service(name)

    async def install(spec: str) -> list[str]:
        before = set(installed_services())
        await anyio.to_thread.run_sync(_pip, ["install", "--quiet", spec])
        new = sorted(set(installed_services()) - before)
        for name in new:
            await host.start_service(name)
        return new

    async def uninstall(name: str) -> str:
        entry = installed_services().get(name)
        if entry is None:
            from nexusfs.services.host import UnknownService

            raise UnknownService(f"no installed service named {name!r}")
        if any(s["name"] == name and s["state"] != "stopped" for s in host.services()):
            await host.stop_service(name)
        dist = entry.dist_name
        if dist is None:
            raise ServiceUnavailable(f"service {name!r} is not from an installed package")
        await anyio.to_thread.run_sync(_pip, ["uninstall", "--yes", dist])
        return dist

    def installed() -> list[dict[str, Any]]:
        states = {s["name"]: s for s in host.services()}
        out = []
        for name, entry in sorted(installed_services().items()):
            st = states.get(name, {})
            out.append({
                "name": name, "package": entry.dist_name, "version": entry.dist_version,
                "state": st.get("state", "stopped"), "pid": st.get("pid"),
                "entry_point": entry.value,
            })  # fmt: skip
        return out

    return {
        "services.list": host.services,
        "services.logs": lambda name, lines=100: host.logs(name, lines),
        "services.start": start,
        "services.stop": stop,
        "services.restart": restart,
        "plugins.list": installed,
        "plugins.install": install,
        "plugins.uninstall": uninstall,
    }


def _pip(args: list[str]) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "pip", *args, "--disable-pip-version-check"],
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        raise ServiceUnavailable(f"pip {args[0]} failed: {' | '.join(tail)}")
