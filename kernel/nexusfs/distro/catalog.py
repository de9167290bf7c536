"""Finding distro manifests: by name on the distro path, or by file path.

The distro path is, in order: the directories in ``$NEXUS_DISTRO_PATH``
(``os.pathsep``-separated; a user's or an organisation's own distros, which may shadow
a built-in name), then the manifests shipped inside the ``nexusfs`` package
(``nexusfs/distro/manifests/``, the canonical copies; the repository's top-level
``distros/*.toml`` are symlinks to them). A manifest ``<name>.toml`` there must declare
``[distro] name = "<name>"``.

``load_distro("nexus-server")`` looks a name up; ``load_distro("./my.toml")`` (anything
with a path separator or ending in ``.toml``) reads that file. Invariants: lookups read
files and package metadata only and cache nothing, so an edited manifest or a newly
installed service is seen by the next call. Failure semantics: :class:`DistroError`
for an unknown name (listing the available ones), a missing file, or an invalid
manifest.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from nexusfs.distro.manifest import Distro, DistroError, read_manifest

__all__ = [
    "BUILTIN_DIR",
    "DistroEntry",
    "distro_path",
    "find_distro",
    "is_manifest_path",
    "list_distros",
    "load_distro",
]

#: The manifests shipped with nexusfs.
BUILTIN_DIR = Path(__file__).resolve().parent / "manifests"
_SUFFIX = ".toml"


@dataclass(frozen=True, slots=True)
class DistroEntry:
    """One manifest on the distro path: loaded (``distro``) or not (``error``)."""

    name: str
    path: Path
    distro: Distro | None
    error: DistroError | None


def distro_path(env: Mapping[str, str] | None = None) -> list[Path]:
    """The directories searched for manifests, highest priority first."""
    environ = os.environ if env is None else env
    extra = [Path(p).expanduser() for p in environ.get("NEXUS_DISTRO_PATH", "").split(os.pathsep)]
    return [*(p for p in extra if str(p) not in ("", ".")), BUILTIN_DIR]


def is_manifest_path(name_or_path: str | os.PathLike[str]) -> bool:
    """Whether ``name_or_path`` names a manifest file rather than a distro: a ``Path``,
    or text with a path separator or ending in ``.toml``."""
    text = os.fspath(name_or_path)
    return isinstance(name_or_path, Path) or os.sep in text or text.endswith(_SUFFIX)


def find_distro(name_or_path: str | os.PathLike[str], env: Mapping[str, str] | None = None) -> Path:
    """The manifest file for a distro name or path (not read). Raises
    :class:`DistroError` if there is none."""
    if is_manifest_path(name_or_path):
        return Path(name_or_path).expanduser().absolute()
    name = os.fspath(name_or_path)
    if not name:
        raise DistroError("empty distro name; see 'nexus distro list'")
    for folder in distro_path(env):
        candidate = folder / f"{name}{_SUFFIX}"
        if candidate.is_file():
            return candidate
    known = ", ".join(sorted(_names(env))) or "none"
    raise DistroError(
        f"unknown distro {name!r}; available: {known} (or give the path of a .toml manifest)"
    )


def load_distro(
    name_or_path: str | os.PathLike[str],
    *,
    env: Mapping[str, str] | None = None,
    check_installed: bool = True,
) -> Distro:
    """Find, read and validate a distro (see the module doc).

    ``env`` (default ``os.environ``) supplies ``$NEXUS_DISTRO_PATH`` and the values of
    ``${VAR}`` placeholders for validation. ``check_installed=False`` skips the checks
    against installed services and extras (tens of milliseconds; for callers that only
    need :attr:`Distro.config`, e.g. at CLI start-up). Raises :class:`DistroError`.
    """
    path = find_distro(name_or_path, env)
    distro = read_manifest(path, env=env, check_installed=check_installed)
    if not is_manifest_path(name_or_path) and distro.name != os.fspath(name_or_path):
        raise DistroError(
            f"declares name {distro.name!r} but is found as {os.fspath(name_or_path)!r}; "
            "the file name must be <name>.toml",
            file=path,
            key="distro.name",
        )
    return distro


def list_distros(env: Mapping[str, str] | None = None) -> list[DistroEntry]:
    """Every distro on the distro path, by name (a shadowed name appears once: the one
    that ``load_distro`` would use). An invalid manifest is listed with its error
    instead of failing the whole listing."""
    out: list[DistroEntry] = []
    for name in sorted(_names(env)):
        path = find_distro(name, env)
        try:
            out.append(DistroEntry(name, path, load_distro(name, env=env), None))
        except DistroError as exc:
            out.append(DistroEntry(name, path, None, exc))
    return out


def _names(env: Mapping[str, str] | None) -> set[str]:
    names: set[str] = set()
    for folder in distro_path(env):
        try:
            names.update(p.stem for p in folder.glob(f"*{_SUFFIX}") if p.is_file())
        except OSError:  # an unreadable NEXUS_DISTRO_PATH entry hides nothing else
            continue
    return names
