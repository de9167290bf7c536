"""Distros: manifests that compose the kernel, its drivers and services into a product.

A distro is a TOML manifest (format in ``distros/README.md``): a mode (``embedded``:
the kernel in-process, no services; ``daemon``: a kernel process plus supervised
service workers), defaults for the settings of :mod:`nexusfs.config`, the services to
run and the packages that provide them, and what an offline bundle includes. Three
ship with nexusfs: ``nexus-embedded``, ``nexus-server`` and ``nexus-cloud``.

* :func:`load_distro` finds (by name or path), reads and validates a manifest;
  :func:`list_distros` lists those on the distro path;
* :func:`explain` / :func:`explain_text` say what a distro runs (``nexus distro show``);
* :func:`build_bundle` writes an offline-installable bundle (``nexus distro build``).

Every failure is a :class:`DistroError`, a :class:`~nexusfs.errors.ConfigError`.
Importing this package is cheap: the bundle builder loads only when used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from nexusfs.distro.catalog import (
    BUILTIN_DIR,
    DistroEntry,
    distro_path,
    find_distro,
    is_manifest_path,
    list_distros,
    load_distro,
)
from nexusfs.distro.explain import explain, explain_text
from nexusfs.distro.manifest import Distro, DistroError, ServiceSpec, parse_manifest, read_manifest

if TYPE_CHECKING:
    from nexusfs.distro.bundle import BundleResult, build_bundle

__all__ = [
    "BUILTIN_DIR",
    "BundleResult",
    "Distro",
    "DistroEntry",
    "DistroError",
    "ServiceSpec",
    "build_bundle",
    "distro_path",
    "explain",
    "explain_text",
    "find_distro",
    "is_manifest_path",
    "list_distros",
    "load_distro",
    "parse_manifest",
    "read_manifest",
]


def __getattr__(name: str) -> Any:
    if name in ("build_bundle", "BundleResult"):
        from nexusfs.distro import bundle

        return getattr(bundle, name)
    raise AttributeError(f"module 'nexusfs.distro' has no attribute {name!r}")
