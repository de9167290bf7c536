"""Distro manifests: the model (:class:`Distro`), the TOML reader and its validation.

A distro manifest composes the kernel, its drivers and its services into a deployable
product. The format is documented in ``distros/README.md``; in short::

    [distro]    format = 1, name, summary, mode = "embedded" | "daemon", description?
    [config]    defaults for the settings of nexusfs.config (durability, flush_interval,
                metastore, record_store, cache_store, object_store); ${VAR:-default}
                placeholders read the environment when the kernel starts
    [services]  enable = ["hooks", ...]; [services.packages] service = "distribution"
    [bundle]    extras = ["postgres", ...]   (extras of nexusfs an offline bundle includes)

Invariants of a :class:`Distro` (all checked by :func:`parse_manifest`):

* every table and key is known and well-typed; ``mode`` is ``embedded`` or ``daemon``;
* ``[config]`` passes :func:`nexusfs.config.validate_values` (known keys, valid values,
  driver schemes an installed driver handles), except values whose ``${VAR}`` has no
  default and is unset: those are checked when the kernel starts and listed in
  :attr:`Distro.needs_env`;
* an embedded distro enables no services and sets no service-only store;
* every enabled service is installed (an entry point of ``nexusfs.services``) or
  provided by a distribution named in ``[services.packages]``; an installed
  distribution that is named there really provides the service;
* ``[bundle] extras`` are extras of ``nexusfs`` and include those the chosen drivers
  need (``postgres`` for a PostgreSQL record store, ``redis`` for a Redis cache).

The checks against what is installed (the last two bullets' "installed" parts) scan
every distribution's metadata, which costs tens of milliseconds; a caller that only
needs the settings layer (CLI start-up) passes ``check_installed=False`` and gets a
:class:`Distro` with :attr:`Distro.checked_installed` false, every other check done.

Reading a manifest reads package *metadata* only: it never imports plugin or driver
code and opens no store, so it is cheap and safe at CLI start-up. Failure semantics:
every problem raises :class:`DistroError` (a :class:`~nexusfs.errors.ConfigError`, so a
``ValueError``) naming the manifest, the TOML key and what is allowed; nothing is cached.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal, cast

from nexusfs.errors import ConfigError

__all__ = [
    "CONFIG_KEYS",
    "DRIVER_EXTRAS",
    "FORMAT",
    "MODES",
    "SERVICE_ONLY",
    "Distro",
    "DistroError",
    "ServiceSpec",
    "expand",
    "parse_manifest",
    "read_manifest",
]

#: The manifest format this code reads (``[distro] format``).
FORMAT = 1
MODES = ("embedded", "daemon")
Mode = Literal["embedded", "daemon"]

#: Settings a manifest's ``[config]`` may set (``services`` go in ``[services]``).
CONFIG_KEYS = (
    "durability",
    "flush_interval",
    "metastore",
    "record_store",
    "cache_store",
    "object_store",
)
#: Settings that only services use: meaningless in an embedded distro.
SERVICE_ONLY = ("record_store", "cache_store")

#: ``kind.scheme`` of a driver -> the ``nexusfs`` extra that installs its client library.
DRIVER_EXTRAS: Mapping[str, str] = MappingProxyType(
    {
        "recordstore.postgresql": "postgres",
        "cachestore.redis": "redis",
        "cachestore.rediss": "redis",
        "objectstore.s3": "s3",
    }
)

_TABLES: Mapping[str, Mapping[str, str]] = MappingProxyType(
    {
        "distro": {
            "format": "an integer (the manifest format, 1)",
            "name": "a string",
            "summary": "a string",
            "mode": "one of: embedded, daemon",
            "description": "a string",
        },
        "config": dict.fromkeys(CONFIG_KEYS, "a setting"),
        "services": {
            "enable": "a list of service names",
            "packages": "a table: service name = distribution name",
        },
        "bundle": {"extras": "a list of nexusfs extras"},
    }
)
_REQUIRED = ("name", "summary", "mode")

_DISTRO_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
_SERVICE_NAME = re.compile(r"^[a-z0-9][a-z0-9_.\-]*$")
_DIST_NAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?$")
_EXTRA_NAME = re.compile(r"^[a-z0-9]([a-z0-9._-]*[a-z0-9])?$")
#: ``${VAR}`` / ``${VAR:-default}``, the placeholder syntax of nexusfs.config.
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class DistroError(ConfigError):
    """A distro manifest is missing, unreadable or invalid.

    ``file`` is the manifest (``None`` when the problem is finding one) and ``key`` the
    dotted TOML key at fault (``services.enable``), when there is one. The message
    names both and says what is allowed.
    """

    def __init__(self, message: str, *, file: Path | None = None, key: str | None = None):
        where = [str(file)] if file is not None else []
        if key is not None:
            where.append(key)
        super().__init__(": ".join([*where, message]))
        self.file = file
        self.key = key


@dataclass(frozen=True, slots=True)
class ServiceSpec:
    """One enabled service.

    ``package``: the distribution that provides it, from ``[services.packages]`` or
    else from the installed entry point (``None`` if neither says). ``installed``: the
    version of the installed distribution that provides it, or ``None`` when the
    service is not installed here (it is then installed from ``package``) or when
    the manifest was read without ``check_installed``.
    """

    name: str
    package: str | None
    installed: str | None

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "package": self.package, "installed": self.installed}


@dataclass(frozen=True)
class Distro:
    """A validated distro manifest (see the module doc for the invariants)."""

    name: str
    summary: str
    mode: Mode
    source: Path
    settings: Mapping[str, Any]
    services: tuple[ServiceSpec, ...]
    extras: tuple[str, ...]
    description: str = ""
    needs_env: tuple[str, ...] = field(default=())
    checked_installed: bool = True

    @property
    def config(self) -> dict[str, Any]:
        """The settings layer this distro contributes to :func:`nexusfs.config.
        load_settings`: ``[config]`` as written (placeholders unexpanded) plus
        ``services``, the enabled service names (``[]`` for an embedded distro)."""
        return {**self.settings, "services": list(self.service_names)}

    @property
    def service_names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.services)

    @property
    def packages(self) -> tuple[str, ...]:
        """The distributions that provide the services, without duplicates."""
        return tuple(dict.fromkeys(s.package for s in self.services if s.package))

    def resolved_settings(self, env: Mapping[str, str] | None = None) -> dict[str, Any]:
        """``[config]`` with placeholders expanded from ``env`` (default ``os.environ``).
        Raises :class:`DistroError` for a ``${VAR}`` with no default that is unset."""
        environ = os.environ if env is None else env
        return {
            key: expand(value, environ, file=self.source, key=f"config.{key}")
            for key, value in self.settings.items()
        }

    def to_dict(self) -> dict[str, Any]:
        """The manifest as JSON-able data (``config`` as written)."""
        return {
            "name": self.name,
            "summary": self.summary,
            "description": self.description,
            "mode": self.mode,
            "source": str(self.source),
            "config": dict(self.settings),
            "services": [s.to_dict() for s in self.services],
            "extras": list(self.extras),
            "needs_env": list(self.needs_env),
            "checked_installed": self.checked_installed,
        }


def expand(value: Any, env: Mapping[str, str], *, file: Path, key: str) -> Any:
    """``value`` with every ``${VAR}`` / ``${VAR:-default}`` replaced from ``env`` (an
    empty variable counts as unset, as in nexusfs.config). Non-strings pass through.
    Raises :class:`DistroError` naming the variable when one without default is unset."""
    if not isinstance(value, str) or "${" not in value:
        return value

    def sub(match: re.Match[str]) -> str:
        var, default = match.group(1), match.group(2)
        if env.get(var):
            return env[var]
        if default is not None:
            return default
        raise DistroError(f"uses ${{{var}}}, which is not set", file=file, key=key)

    return _VAR.sub(sub, value)


def read_manifest(
    path: Path,
    *,
    env: Mapping[str, str] | None = None,
    installed: Mapping[str, tuple[str, str]] | None = None,
    check_installed: bool = True,
) -> Distro:
    """Read and validate the manifest file ``path`` (see :func:`parse_manifest`).

    Raises :class:`DistroError` if the file cannot be read or is not valid TOML.
    """
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise DistroError("no such distro manifest", file=path) from None
    except IsADirectoryError:
        raise DistroError("is a directory, not a distro manifest", file=path) from None
    except OSError as exc:
        raise DistroError(f"cannot be read: {exc.strerror}", file=path) from exc
    except tomllib.TOMLDecodeError as exc:
        raise DistroError(f"not valid TOML: {exc}", file=path) from exc
    return parse_manifest(
        data, source=path, env=env, installed=installed, check_installed=check_installed
    )


def parse_manifest(
    data: Mapping[str, Any],
    *,
    source: Path,
    env: Mapping[str, str] | None = None,
    installed: Mapping[str, tuple[str, str]] | None = None,
    check_installed: bool = True,
) -> Distro:
    """Validate a parsed manifest and build its :class:`Distro`.

    ``env`` (default ``os.environ``) expands placeholders for validation; ``installed``
    maps each installed service to ``(distribution, version)`` (default: the
    ``nexusfs.services`` entry points). ``check_installed=False`` skips the checks
    against installed packages (see the module doc). Raises :class:`DistroError` for
    the first problem found, checking the shape, then ``[distro]``, ``[config]``,
    ``[services]`` and ``[bundle]``.
    """
    environ = os.environ if env is None else env
    _check_shape(data, source)
    meta = cast(Mapping[str, Any], data.get("distro", {}))
    fmt = meta.get("format", FORMAT)
    if type(fmt) is not int or fmt != FORMAT:
        raise DistroError(
            f"format {fmt!r} is not supported; this nexusfs reads format {FORMAT}",
            file=source,
            key="distro.format",
        )
    for key in _REQUIRED:
        if key not in meta:
            raise DistroError(
                f"missing; set {_TABLES['distro'][key]}", file=source, key=f"distro.{key}"
            )
    name = _string(meta, "name", source, "distro")
    if not _DISTRO_NAME.match(name):
        raise DistroError(
            f"{name!r} is not a distro name (1-64 of a-z 0-9 . _ -, starting with a letter "
            "or digit)",
            file=source,
            key="distro.name",
        )
    summary = _string(meta, "summary", source, "distro")
    description = _string(meta, "description", source, "distro") if "description" in meta else ""
    mode = _string(meta, "mode", source, "distro")
    if mode not in MODES:
        raise DistroError(
            f"unknown mode {mode!r}; allowed: embedded (in-process kernel, no services), "
            "daemon (kernel process + services)",
            file=source,
            key="distro.mode",
        )
    settings = dict(cast(Mapping[str, Any], data.get("config", {})))
    needs_env = _check_config(settings, mode, source, environ)
    services_table = cast(Mapping[str, Any], data.get("services", {}))
    services = _check_services(services_table, mode, source, installed, check_installed)
    bundle = cast(Mapping[str, Any], data.get("bundle", {}))
    extras = _check_extras(bundle, settings, source, environ, check_installed)
    return Distro(
        name=name,
        summary=summary,
        mode=cast(Mode, mode),
        source=source,
        settings=MappingProxyType(settings),
        services=services,
        extras=extras,
        description=description,
        needs_env=needs_env,
        checked_installed=check_installed,
    )


# ---------------------------------------------------------------------- the checks


def _check_shape(data: Mapping[str, Any], source: Path) -> None:
    """Known tables with known keys only (``services.packages`` is free-form)."""
    for table, value in data.items():
        if table not in _TABLES:
            raise DistroError(
                f"unknown table [{table}]{_did_you_mean(table, _TABLES)}; allowed: "
                + ", ".join(f"[{t}]" for t in _TABLES),
                file=source,
                key=table,
            )
        if not isinstance(value, dict):
            raise DistroError(
                f"must be a table ([{table}]), got {_type(value)}", file=source, key=table
            )
        allowed = _TABLES[table]
        for key in value:
            if key in allowed:
                continue
            hint = _did_you_mean(key, allowed)
            if table == "config" and key in ("services", "distro"):
                hint = (
                    " (services are enabled in [services] enable)"
                    if key == "services"
                    else " (a manifest is the distro; name it in [distro] name)"
                )
            raise DistroError(
                f"unknown key{hint}; allowed in [{table}]: {', '.join(allowed)}",
                file=source,
                key=f"{table}.{key}",
            )
    if "distro" not in data:
        raise DistroError("missing table [distro] (name, summary, mode)", file=source)


def _check_config(
    settings: Mapping[str, Any], mode: str, source: Path, env: Mapping[str, str]
) -> tuple[str, ...]:
    """Validate ``[config]`` through nexusfs.config; return the unset ``${VAR}`` names
    whose values are checked at start-up instead."""
    if mode == "embedded":
        for key in SERVICE_ONLY:
            if key in settings:
                raise DistroError(
                    "only services use it, and an embedded distro runs none; remove it "
                    'or use mode = "daemon"',
                    file=source,
                    key=f"config.{key}",
                )
    needs: list[str] = []
    for key, value in settings.items():
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise DistroError(
                f"expected a string or a number, got {_type(value)}",
                file=source,
                key=f"config.{key}",
            )
        unset = _unset_vars(value, env)
        if unset:
            needs.extend(v for v in unset if v not in needs)
            continue
        _validate_setting(key, value, source, env)
    return tuple(needs)


def _validate_setting(key: str, value: Any, source: Path, env: Mapping[str, str]) -> None:
    """The single point where a ``[config]`` value meets the settings rules."""
    from nexusfs.config import validate_values

    try:
        validate_values({key: value}, f"distro manifest {source}", env=env)
    except DistroError:
        raise
    except ConfigError as exc:
        # validate_values prefixes "<key> (<where>): "; keep only what is wrong.
        text = str(exc)
        prefix = f"{key} (distro manifest {source}): "
        if text.startswith(prefix):
            text = text[len(prefix) :]
        raise DistroError(text, file=source, key=f"config.{key}") from None


def _unset_vars(value: Any, env: Mapping[str, str]) -> list[str]:
    if not isinstance(value, str):
        return []
    return [
        m.group(1) for m in _VAR.finditer(value) if m.group(2) is None and not env.get(m.group(1))
    ]


def _check_services(
    table: Mapping[str, Any],
    mode: str,
    source: Path,
    installed: Mapping[str, tuple[str, str]] | None,
    check_installed: bool,
) -> tuple[ServiceSpec, ...]:
    enable = table.get("enable", [])
    if isinstance(enable, str):
        raise DistroError(
            f"expected a list of service names, got the string {enable!r} (a distro names "
            "its services; 'all' belongs in nexus.toml or NEXUS_SERVICES)",
            file=source,
            key="services.enable",
        )
    names = _string_list(enable, source, "services.enable")
    packages = table.get("packages", {})
    if not isinstance(packages, dict):
        raise DistroError(
            f"expected a table of service = distribution, got {_type(packages)}",
            file=source,
            key="services.packages",
        )
    if mode == "embedded" and (names or packages):
        raise DistroError(
            f"an embedded distro runs no services (found {', '.join(names or packages)}); "
            'remove them or use mode = "daemon"',
            file=source,
            key="services.enable" if names else "services.packages",
        )
    for name in names:
        if not _SERVICE_NAME.match(name):
            raise DistroError(
                f"{name!r} is not a service name (a-z 0-9 _ . -)",
                file=source,
                key="services.enable",
            )
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise DistroError(f"{', '.join(dup)} listed twice", file=source, key="services.enable")
    for service, dist in packages.items():
        key = f"services.packages.{service}"
        if service not in names:
            raise DistroError(
                f"names a package for {service!r}, which is not in services.enable "
                f"({', '.join(names) or 'empty'})",
                file=source,
                key=key,
            )
        if not isinstance(dist, str) or not _DIST_NAME.match(dist):
            raise DistroError(
                f'expected a distribution name (e.g. "nexusfs-{service}"), got {dist!r}',
                file=source,
                key=key,
            )
    if not check_installed:
        return tuple(ServiceSpec(name, packages.get(name), None) for name in names)
    have = _installed_services() if installed is None else installed
    specs = []
    for name in names:
        specs.append(_service_spec(name, packages.get(name), have, source))
    return tuple(specs)


def _service_spec(
    name: str, package: str | None, have: Mapping[str, tuple[str, str]], source: Path
) -> ServiceSpec:
    key = "services.enable"
    found = have.get(name)
    if found is not None:
        dist, version = found
        if package is not None and _norm(package) != _norm(dist):
            raise DistroError(
                f"service {name!r} is provided by the installed {dist} {version}, not by {package}",
                file=source,
                key=f"services.packages.{name}",
            )
        return ServiceSpec(name, package or dist, version)
    if package is None:
        known = ", ".join(sorted(have)) or "none"
        raise DistroError(
            f"unknown service {name!r}{_did_you_mean(name, have)}: it is not installed and "
            f"no package is named for it in [services.packages]; installed services: {known}",
            file=source,
            key=key,
        )
    provided = _provided_by(package)
    if provided is not None:  # the package is installed, yet does not declare the service
        raise DistroError(
            f"service {name!r}: the installed {package} provides no such service "
            f"(it provides: {', '.join(provided) or 'none'})",
            file=source,
            key=f"services.packages.{name}",
        )
    return ServiceSpec(name, package, None)


def _check_extras(
    table: Mapping[str, Any],
    settings: Mapping[str, Any],
    source: Path,
    env: Mapping[str, str],
    check_installed: bool,
) -> tuple[str, ...]:
    extras = _string_list(table.get("extras", []), source, "bundle.extras")
    known = _nexusfs_extras() if check_installed else None
    for extra in extras:
        if not _EXTRA_NAME.match(extra) or (known is not None and extra not in known):
            allowed = ", ".join(sorted(known)) if known is not None else "extras of nexusfs"
            raise DistroError(
                f"unknown extra {extra!r}; allowed: {allowed}", file=source, key="bundle.extras"
            )
    stores = (("record_store", "recordstore"), ("cache_store", "cachestore"),
              ("object_store", "objectstore"))  # fmt: skip
    for key, kind in stores:
        if key not in settings or _unset_vars(settings[key], env):
            continue
        value = expand(settings[key], env, file=source, key=f"config.{key}")
        driver = _driver_of(kind, value)
        needed = DRIVER_EXTRAS.get(driver or "")
        if needed is not None and known is not None and needed not in known:
            continue  # this nexusfs does not declare that extra (yet): nothing to add
        if needed is not None and needed not in extras:
            raise DistroError(
                f"config.{key} uses the {driver} driver, which needs the {needed!r} extra; "
                f"add it to [bundle] extras",
                file=source,
                key="bundle.extras",
            )
    return tuple(extras)


# ---------------------------------------------------------------------- helpers


def _driver_of(kind: str, url: str) -> str | None:
    """``kind.scheme`` of a (valid) store URL, ``None`` for the built-in shorthands."""
    if url.strip().lower() in ("", "none", "null", "off", "sqlite", "default"):
        return None
    from nexusfs.drivers import registry

    try:
        return f"{kind}.{registry.scheme_of(kind, url)}"
    except ConfigError:
        return None


def _installed_services() -> dict[str, tuple[str, str]]:
    from nexusfs.services.registry import installed_services

    return {
        name: (entry.dist_name or "?", entry.dist_version or "?")
        for name, entry in installed_services().items()
    }


def _provided_by(package: str) -> list[str] | None:
    """Services the installed ``package`` declares, or ``None`` if it is not installed."""
    from importlib.metadata import PackageNotFoundError, distribution

    try:
        dist = distribution(package)
    except PackageNotFoundError:
        return None
    return sorted(ep.name for ep in dist.entry_points if ep.group == "nexusfs.services")


def _nexusfs_extras() -> set[str] | None:
    from importlib.metadata import PackageNotFoundError, metadata

    try:
        return set(metadata("nexusfs").get_all("Provides-Extra") or ())
    except PackageNotFoundError:  # running from a source tree that was never installed
        return None


def _string(table: Mapping[str, Any], key: str, source: Path, section: str) -> str:
    value = table[key]
    if not isinstance(value, str) or not value.strip():
        raise DistroError(
            f"expected a non-empty string, got {_type(value)}",
            file=source,
            key=f"{section}.{key}",
        )
    return value.strip()


def _string_list(value: Any, source: Path, key: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise DistroError(f"expected a list of strings, got {_type(value)}", file=source, key=key)
    return [v.strip() for v in value]


def _type(value: Any) -> str:
    names = {dict: "a table", list: "a list", str: "a string", bool: "a boolean"}
    for cls, label in names.items():
        if type(value) is cls:
            return f"{label} ({value!r})" if cls in (str, bool) else label
    return f"{type(value).__name__} {value!r}"


def _did_you_mean(word: str, choices: Iterable[str]) -> str:
    import difflib  # only on the error path: keeps CLI start-up lean

    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.7)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _norm(dist: str) -> str:
    return re.sub(r"[-_.]+", "-", dist).lower()
