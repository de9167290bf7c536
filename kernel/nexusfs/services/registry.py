"""Which services are installed: entry points of the ``nexusfs.services`` group.

Invariants:

* Reads distribution *metadata* only (``entry_points.txt``); it never imports, loads or
  executes plugin code, so a broken plugin cannot harm the kernel process. The worker
  process (:mod:`nexusfs.services.worker`) is the only place plugin code is imported.
* Entry-point names are service names. When two distributions declare the same name,
  the first one on ``sys.path`` wins (``importlib.metadata`` order) and the duplicate
  is ignored, exactly as the worker's own lookup resolves it.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points

__all__ = ["GROUP", "ServiceEntry", "find_entry_point", "installed_services"]

GROUP = "nexusfs.services"


@dataclass(frozen=True, slots=True)
class ServiceEntry:
    """One installed service: its name, the ``"module:attr"`` of its plugin object and
    the distribution that provides it (``None`` when unknown)."""

    name: str
    value: str
    dist_name: str | None
    dist_version: str | None


def installed_services() -> dict[str, ServiceEntry]:
    """Every installed service by name (metadata only; see the module docstring)."""
    out: dict[str, ServiceEntry] = {}
    for ep in entry_points(group=GROUP):
        if ep.name in out:
            continue
        dist = ep.dist
        out[ep.name] = ServiceEntry(
            name=ep.name,
            value=ep.value,
            dist_name=dist.metadata["Name"] if dist is not None else None,
            dist_version=dist.version if dist is not None else None,
        )
    return out


def find_entry_point(name: str) -> EntryPoint | None:
    """The entry point of service ``name`` (first on ``sys.path``), or ``None``."""
    for ep in entry_points(group=GROUP, name=name):
        return ep
    return None
