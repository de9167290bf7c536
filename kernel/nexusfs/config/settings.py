"""The settings model: which drivers and services a NexusFS deployment uses.

One :class:`Settings` value says everything a kernel needs to start. It is built by
:func:`load_settings` from layers, each overriding the one before:

1. built-in defaults (redb in the data directory, SQLite records, no cache, a local
   object store, every installed service);
2. the distro manifest named by the ``distro`` setting (its ``[config]`` table);
3. the config file: ``--config`` / ``$NEXUS_CONFIG``, else ``<data_dir>/nexus.toml``;
4. environment variables (``NEXUS_DURABILITY``, ``NEXUS_RECORD_STORE``, ...): env wins
   over files;
5. explicit arguments (command-line flags, ``connect(durability=...)``).

Every value remembers where it came from (``Settings.sources``), which
``nexus config show`` prints. String values in files and manifests may use
``${VAR}`` or ``${VAR:-default}`` to read the environment.

Invariants: a :class:`Settings` is immutable and fully validated; loading opens nothing
(no database, no socket), so it is cheap and safe at CLI start-up. Failure semantics:
any problem (an unreadable or malformed file, an unknown key, a bad value, a URL whose
scheme no installed driver handles, an unset ``${VAR}``) raises
:class:`~nexusfs.errors.ConfigError` whose message names the setting, the layer it came
from and what is allowed.
"""

from __future__ import annotations

import json
import os
import re
import tomllib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from nexusfs.abc import Durability
from nexusfs.errors import ConfigError

__all__ = [
    "CONFIG_FILE",
    "DEFAULT_DATA_DIR",
    "KEYS",
    "Settings",
    "load_settings",
    "redact",
    "validate_values",
    "write_config",
]

#: The config file inside a data directory.
CONFIG_FILE = "nexus.toml"
DEFAULT_DATA_DIR = "nexus-data"
METASTORE_FILE = "metastore.redb"
RECORD_STORE_FILE = "records.db"
DEFAULT_OBJECT_STORE = "local:objects"


@dataclass(frozen=True)
class _Key:
    name: str
    env: str
    help: str


#: The settings a config file, a distro manifest or the environment may set.
KEYS: dict[str, _Key] = {
    k.name: k
    for k in (
        _Key("distro", "NEXUS_DISTRO", "distro manifest whose [config] gives the defaults"),
        _Key("durability", "NEXUS_DURABILITY", "immediate | deferred"),
        _Key("flush_interval", "NEXUS_FLUSH_INTERVAL", "seconds between deferred flushes"),
        _Key("metastore", "NEXUS_METASTORE", "redb file path, or memory:"),
        _Key("record_store", "NEXUS_RECORD_STORE", "SQLAlchemy URL, or sqlite (default)"),
        _Key("cache_store", "NEXUS_CACHE_STORE", "redis://host:port/db, or none"),
        _Key("object_store", "NEXUS_OBJECT_STORE", "store URI mounted at / on creation"),
        _Key("services", "NEXUS_SERVICES", "service names to start, or all"),
        _Key("admins", "NEXUS_ADMINS", "subjects the permission gate never checks"),
    )
}

_NAME = re.compile(r"^[a-z0-9][a-z0-9_.\-]*$")
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


@dataclass(frozen=True)
class Settings:
    """The effective, validated configuration of one data directory.

    ``metastore`` is an absolute redb path (or ``memory:``); ``record_store`` a
    SQLAlchemy URL; ``cache_store`` a URL or ``None`` (no cache: services degrade);
    ``object_store`` the URI mounted at ``/`` when the directory is first opened;
    ``services`` the names to start, or ``None`` for every installed service.
    ``sources`` maps each field to where its value came from.
    """

    data_dir: Path
    distro: str | None = None
    durability: Durability = Durability.DEFERRED
    flush_interval: float = 1.0
    metastore: str = ""
    record_store: str = ""
    cache_store: str | None = None
    object_store: str = DEFAULT_OBJECT_STORE
    services: tuple[str, ...] | None = None
    admins: tuple[str, ...] = ()
    config_file: Path | None = None
    sources: Mapping[str, str] = field(default_factory=dict)

    def rows(self) -> Iterator[tuple[str, str, str]]:
        """``(key, value, source)`` per setting, passwords redacted (for display)."""
        yield "data_dir", str(self.data_dir), self.sources.get("data_dir", "default")
        for key in KEYS:
            value = getattr(self, key)
            if value is None:
                text = "all" if key == "services" else "none"
            elif key in ("services", "admins"):
                text = ",".join(value) if value else "(none)"
            else:
                text = redact(str(value))
            yield key, text, self.sources.get(key, "default")

    def as_dict(self) -> dict[str, Any]:
        """The settings as JSON-able values (passwords redacted) with their sources."""
        return {key: {"value": value, "source": src} for key, value, src in self.rows()}


def load_settings(
    data_dir: str | os.PathLike[str] | None = None,
    *,
    overrides: Mapping[str, Any] | None = None,
    override_source: str = "argument",
    config_file: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
) -> Settings:
    """Build the effective settings (see the module doc for the layers).

    ``data_dir``: the argument, else ``$NEXUS_DATA_DIR``, else ``./nexus-data`` (it need
    not exist). ``overrides``: the top layer (keys of :data:`KEYS`; ``None`` values are
    ignored), recorded as ``override_source``. ``config_file``: read instead of
    ``$NEXUS_CONFIG`` / ``<data_dir>/nexus.toml``; a file named explicitly must exist.
    ``env`` replaces ``os.environ`` (tests). Raises ``ConfigError``.
    """
    environ = os.environ if env is None else env
    if data_dir is not None:
        ddir, ddir_src = Path(data_dir), override_source
    elif environ.get("NEXUS_DATA_DIR"):
        ddir, ddir_src = Path(environ["NEXUS_DATA_DIR"]), "env NEXUS_DATA_DIR"
    else:
        ddir, ddir_src = Path(DEFAULT_DATA_DIR), "default"
    ddir = ddir.expanduser().absolute()

    raw: dict[str, Any] = {}
    sources: dict[str, str] = {"data_dir": ddir_src}
    layers: list[tuple[dict[str, Any], str]] = []

    path, explicit = _config_path(ddir, config_file, environ)
    file_values: dict[str, Any] = {}
    if path is not None:
        file_values = _read_toml(path, explicit)
        validate_values(file_values, f"config file {path}", env=environ)
    env_values = {key.name: environ[key.env] for key in KEYS.values() if key.env in environ}
    if not env_values.get("distro"):
        env_values.pop("distro", None)  # NEXUS_DISTRO="" names no distro
    top = {k: v for k, v in (overrides or {}).items() if v is not None}
    unknown = sorted(set(top) - set(KEYS))
    if unknown:
        raise ConfigError(f"unknown setting(s) {', '.join(unknown)}; known: {', '.join(KEYS)}")

    # The distro is itself a setting: the highest layer that names one wins.
    distro_name, distro_src = None, "default"
    for values, src in (
        (file_values, f"file {path}"),
        (env_values, "env NEXUS_DISTRO"),
        (top, override_source),
    ):
        if values.get("distro"):
            distro_name, distro_src = str(values["distro"]), src
    if distro_name is not None:
        layers.append((_distro_config(distro_name, environ), f"distro {distro_name}"))
    layers += [
        (file_values, f"file {path}"),
        (env_values, "env"),
        (top, override_source),
    ]
    for values, src in layers:
        for key, value in values.items():
            if key == "distro":
                continue
            raw[key] = value
            sources[key] = f"env {KEYS[key].env}" if src == "env" else src
    if distro_name is not None:
        raw["distro"], sources["distro"] = distro_name, distro_src
    return _build(ddir, raw, sources, path, environ)


def validate_values(
    values: Mapping[str, Any], where: str, *, env: Mapping[str, str] | None = None
) -> None:
    """Check a partial settings table (a config file, a distro's ``[config]``): known
    keys, well-typed values, driver schemes that an installed driver handles. ``where``
    names the source in error messages. Raises ``ConfigError``."""
    environ = os.environ if env is None else env
    unknown = sorted(set(values) - set(KEYS))
    if unknown:
        raise ConfigError(
            f"{where}: unknown setting(s) {', '.join(unknown)}; known: {', '.join(KEYS)}"
        )
    probe = Path("/nonexistent-nexus-data-dir")
    for key, value in values.items():
        _PARSERS[key](_expand(value, key, where, environ), probe, f"{key} ({where})")


def write_config(data_dir: str | os.PathLike[str], values: Mapping[str, Any]) -> Path:
    """Write ``values`` (validated first) as ``<data_dir>/nexus.toml``, atomically
    (temp file + rename). Returns the path. Raises ``ConfigError`` for bad values,
    ``OSError`` if the directory cannot be written."""
    validate_values(values, "new config")
    path = Path(data_dir) / CONFIG_FILE
    lines = [
        "# NexusFS settings for this data directory. Environment variables (NEXUS_*) win",
        "# over this file; see `nexus config show` for the effective values.",
    ]
    for key, value in values.items():
        lines.append(f"{key} = {_toml_value(value)}")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".toml.tmp")
    tmp.write_text("\n".join(lines) + "\n")
    os.replace(tmp, path)
    return path


def redact(url: str) -> str:
    """``url`` with any password replaced by ``***``."""
    return re.sub(r"(//[^/:@]*:)[^@/]*@", r"\1***@", url)


# ---------------------------------------------------------------------- internals


def _config_path(
    ddir: Path, config_file: str | os.PathLike[str] | None, environ: Mapping[str, str]
) -> tuple[Path | None, bool]:
    if config_file is not None:
        return Path(config_file), True
    if environ.get("NEXUS_CONFIG"):
        return Path(environ["NEXUS_CONFIG"]), True
    default = ddir / CONFIG_FILE
    return (default, False) if default.is_file() else (None, False)


def _read_toml(path: Path, explicit: bool) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError as exc:
        if not explicit:
            return {}
        raise ConfigError(f"config file {path} does not exist") from exc
    except OSError as exc:
        raise ConfigError(f"config file {path} cannot be read: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from exc
    nested = sorted(k for k, v in data.items() if isinstance(v, dict))
    if nested:
        raise ConfigError(
            f"config file {path}: settings are top-level keys, not tables "
            f"(found [{'], ['.join(nested)}]); known keys: {', '.join(KEYS)}"
        )
    return data


def _distro_config(name: str, environ: Mapping[str, str]) -> dict[str, Any]:
    # The manifest is checked, but not against the installed packages (that scan costs
    # CLI start-up time); the kernel process checks those when it boots a distro.
    try:
        from nexusfs.distro import load_distro
    except ImportError as exc:  # pragma: no cover - the distro package ships with nexusfs
        raise ConfigError(f"distro {name!r}: distro support is not installed") from exc
    return dict(load_distro(name, env=environ, check_installed=False).config)


def _build(
    ddir: Path,
    raw: Mapping[str, Any],
    sources: dict[str, str],
    config_file: Path | None,
    environ: Mapping[str, str],
) -> Settings:
    values: dict[str, Any] = {}
    for key in KEYS:
        if key == "distro" or key not in raw:
            continue
        where = f"{key} ({sources[key]})"
        values[key] = _PARSERS[key](_expand(raw[key], key, sources[key], environ), ddir, where)
    settings = Settings(
        data_dir=ddir,
        distro=raw.get("distro"),
        config_file=config_file,
        sources=sources,
        metastore=str(ddir / METASTORE_FILE),
        record_store=_sqlite_default(ddir),
    )
    return replace(settings, **values)


def _expand(value: Any, key: str, where: str, environ: Mapping[str, str]) -> Any:
    if not isinstance(value, str) or "${" not in value:
        return value

    def sub(match: re.Match[str]) -> str:
        var, default = match.group(1), match.group(2)
        if var in environ and environ[var] != "":
            return environ[var]
        if default is not None:
            return default
        raise ConfigError(f"{key} ({where}) uses ${{{var}}}, which is not set")

    return _VAR.sub(sub, value)


def _sqlite_default(ddir: Path) -> str:
    return f"sqlite:///{(ddir / RECORD_STORE_FILE).as_posix()}"


def _want_str(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"{where}: expected a string, got {type(value).__name__} {value!r}")
    return value.strip()


def _parse_durability(value: Any, _ddir: Path, where: str) -> Durability:
    text = _want_str(value, where).lower()
    try:
        return Durability(text)
    except ValueError:
        raise ConfigError(
            f"{where}: {value!r} is not a durability; use immediate or deferred"
        ) from None


def _parse_flush_interval(value: Any, _ddir: Path, where: str) -> float:
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: {value!r} is not a number of seconds") from None
    if not 0 <= seconds <= 3600:
        raise ConfigError(f"{where}: {seconds} is out of range (0 to 3600 seconds)")
    return seconds


def _parse_metastore(value: Any, ddir: Path, where: str) -> str:
    text = _want_str(value, where)
    if not text:
        raise ConfigError(f"{where}: empty metastore location")
    _check_driver("metastore", text, where)
    from nexusfs.drivers import registry

    if registry.scheme_of("metastore", text) != "redb":
        return text
    from nexusfs.drivers.metastore import redb_path

    path = Path(redb_path(text)).expanduser()
    return str(path if path.is_absolute() else ddir / path)


def _parse_record_store(value: Any, ddir: Path, where: str) -> str:
    text = _want_str(value, where)
    if text.lower() in ("", "sqlite", "default"):
        return _sqlite_default(ddir)
    if "://" not in text:
        raise ConfigError(
            f"{where}: {redact(text)!r} is not a SQLAlchemy URL (e.g. sqlite:////abs/records.db "
            "or postgresql+psycopg://user@host/db)"
        )
    _check_driver("recordstore", text, where)
    return text


def _parse_cache_store(value: Any, _ddir: Path, where: str) -> str | None:
    text = _want_str(value, where)
    if text.lower() in ("", "none", "null", "off"):
        return None
    if "://" not in text:
        raise ConfigError(f"{where}: {redact(text)!r} is not a URL (e.g. redis://127.0.0.1:6379/0)")
    _check_driver("cachestore", text, where)
    return text


def _parse_object_store(value: Any, _ddir: Path, where: str) -> str:
    text = _want_str(value, where)
    if text.startswith("local:") and not text.startswith("local://"):
        if not text[len("local:") :]:
            raise ConfigError(f"{where}: local: needs a directory (e.g. local:objects)")
        return text
    if "://" not in text:
        raise ConfigError(
            f"{where}: {text!r} is not a store URI (e.g. local:objects, local:///srv/blobs)"
        )
    _check_driver("objectstore", text, where)
    return text


def _parse_services(value: Any, _ddir: Path, where: str) -> tuple[str, ...] | None:
    if isinstance(value, str):
        if value.strip().lower() == "all":
            return None
        names = [n.strip() for n in value.split(",") if n.strip()]
    elif isinstance(value, list | tuple):
        names = []
        for item in value:
            if not isinstance(item, str):
                raise ConfigError(f"{where}: service names are strings, got {item!r}")
            names.append(item.strip())
    else:
        raise ConfigError(f"{where}: expected a list of service names or 'all', got {value!r}")
    for name in names:
        if not _NAME.match(name):
            raise ConfigError(f"{where}: {name!r} is not a valid service name")
    return tuple(dict.fromkeys(names))


_SUBJECT = re.compile(r"^[a-z][a-z0-9_-]*:[^\s#]+$")


def _parse_admins(value: Any, _ddir: Path, where: str) -> tuple[str, ...]:
    if isinstance(value, str):
        subjects = [n.strip() for n in value.split(",") if n.strip()]
    elif isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
        subjects = [v.strip() for v in value]
    else:
        raise ConfigError(f"{where}: expected a list of subjects like user:alice, got {value!r}")
    for subject in subjects:
        if not _SUBJECT.match(subject):
            raise ConfigError(f"{where}: {subject!r} is not a subject (type:id, e.g. user:alice)")
    return tuple(dict.fromkeys(subjects))


def _check_driver(kind: str, url: str, where: str) -> None:
    from nexusfs.drivers import registry

    try:
        scheme = registry.scheme_of(kind, url)
        if f"{kind}.{scheme}" in registry.BUILTIN:
            return
        if scheme not in registry.available(kind):
            registry.resolve(kind, url)  # raises with the list of available drivers
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, Durability):
        return json.dumps(value.value)
    return json.dumps(str(value))  # JSON string escapes are valid TOML basic strings


_PARSERS: dict[str, Callable[[Any, Path, str], Any]] = {
    "distro": lambda v, _d, w: _want_str(v, w),
    "durability": _parse_durability,
    "flush_interval": _parse_flush_interval,
    "metastore": _parse_metastore,
    "record_store": _parse_record_store,
    "cache_store": _parse_cache_store,
    "object_store": _parse_object_store,
    "services": _parse_services,
    "admins": _parse_admins,
}
