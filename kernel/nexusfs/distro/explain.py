"""What a distro runs, in words and as data: the model behind ``nexus distro show``.

:func:`explain` resolves a :class:`~nexusfs.distro.manifest.Distro` for one data
directory exactly as the kernel would (through :func:`nexusfs.config.load_settings`,
with the distro as the only layer: no ``nexus.toml`` and no ``NEXUS_<SETTING>``
overrides, while ``${VAR}`` placeholders do read the environment), and reports every
setting (as written, effective, and which driver opens it), every service (package,
installed or not) and what a bundle would contain. :func:`explain_text` renders that
as plain text.

Invariants: explaining opens nothing (no store, no socket) and never imports driver or
plugin code. A placeholder without default whose variable is unset is reported in
``needs_env``, not raised, so a distro can be explained before it is configured.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from nexusfs.distro.manifest import CONFIG_KEYS, DRIVER_EXTRAS, SERVICE_ONLY, Distro
from nexusfs.errors import ConfigError

__all__ = ["explain", "explain_text"]

_KINDS = {
    "metastore": "metastore",
    "record_store": "recordstore",
    "cache_store": "cachestore",
    "object_store": "objectstore",
}
_RUNS = {
    "embedded": "the kernel inside the calling Python process (nexusfs.connect(data_dir=...)); "
    "no daemon, no services",
    "daemon": "a kernel process ('nexus up') serving the data directory on a Unix socket, "
    "and one supervised worker process per service",
}


def explain(
    distro: Distro, data_dir: str | os.PathLike[str], env: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """A JSON-able description of what ``distro`` runs on ``data_dir`` (see the module
    doc). Raises ``ConfigError`` only for a value that is invalid once expanded."""
    environ = os.environ if env is None else env
    settings, needs = _effective(distro, Path(data_dir), environ)
    rows = []
    for key in CONFIG_KEYS:
        written = distro.settings.get(key)
        effective = None if settings is None else _value(getattr(settings, key))
        row: dict[str, Any] = {
            "setting": key,
            "written": written,
            "effective": effective,
            "source": "distro" if key in distro.settings else "built-in default",
            "used": distro.mode == "daemon" or key not in SERVICE_ONLY,
        }
        if key in _KINDS:
            row["driver"] = _driver(_KINDS[key], effective)
        rows.append(row)
    kernel = "nexusfs" + (f"[{','.join(distro.extras)}]" if distro.extras else "")
    return {
        "name": distro.name,
        "summary": distro.summary,
        "description": distro.description,
        "mode": distro.mode,
        "runs": _RUNS[distro.mode],
        "source": str(distro.source),
        "data_dir": str(Path(data_dir).expanduser().absolute()),
        "settings": rows,
        "services": [s.to_dict() for s in distro.services],
        "needs_env": sorted(set(distro.needs_env) | set(needs)),
        "bundle": {"requirements": [kernel, *distro.packages], "extras": list(distro.extras)},
    }


def explain_text(info: Mapping[str, Any]) -> str:
    """Plain-text rendering of :func:`explain`'s result."""
    lines = [
        f"{info['name']}: {info['summary']}",
        f"  manifest  {info['source']}",
        f"  mode      {info['mode']}: {info['runs']}",
    ]
    if info["description"]:
        lines.append(f"  about     {info['description']}")
    lines += ["", f"settings (for data directory {info['data_dir']}):"]
    for row in info["settings"]:
        if info["needs_env"]:  # not resolvable yet: show what the manifest says
            value = "(default)" if row["written"] is None else str(row["written"])
        else:
            value = "none" if row["effective"] is None else str(row["effective"])
        line = f"  {row['setting']:<15}{value}"
        if not row["used"]:
            lines.append(line + "   (not used: no services run)")
            continue
        if row["source"] != "distro":
            line += "   (built-in default)"
        elif row["written"] != row["effective"] and "${" in str(row["written"]):
            line += f"   (from {row['written']})"
        lines.append(line)
        driver = row.get("driver")
        if driver:
            lines.append(f"  {'':<15}  driver {driver['name']}: {driver['detail']}")
    lines += ["", "services:"]
    if not info["services"]:
        lines.append("  (none)")
    for svc in info["services"]:
        state = f"installed {svc['installed']}" if svc["installed"] else "not installed here"
        lines.append(f"  {svc['name']:<15}package {svc['package'] or '?'} ({state})")
    if info["needs_env"]:
        lines += ["", "needs environment: " + ", ".join(f"${v}" for v in info["needs_env"])]
    bundle = info["bundle"]
    lines += ["", "bundle ('nexus distro build'): " + ", ".join(bundle["requirements"])]
    lines.append("  plus every dependency, as wheels for this Python and platform")
    return "\n".join(lines)


def _effective(
    distro: Distro, data_dir: Path, environ: Mapping[str, str]
) -> tuple[Any | None, list[str]]:
    """The settings the distro alone gives ``data_dir`` (``None`` and the missing
    variables when a placeholder cannot be expanded yet)."""
    if distro.needs_env:
        return None, list(distro.needs_env)
    from nexusfs.config import KEYS, load_settings

    overridden = {k.env for k in KEYS.values()} | {"NEXUS_CONFIG", "NEXUS_DATA_DIR"}
    env = {k: v for k, v in environ.items() if k not in overridden}
    settings = load_settings(
        data_dir,
        overrides={"distro": str(distro.source)},
        override_source="distro",
        config_file=os.devnull,  # the distro alone: no nexus.toml
        env=env,
    )
    return settings, []


def _value(value: Any) -> Any:
    if value is None or isinstance(value, str | int | float | bool):
        return value
    if isinstance(value, tuple):
        return list(value)
    return str(getattr(value, "value", value))


def _driver(kind: str, value: Any) -> dict[str, Any] | None:
    if value is None:
        if kind == "cachestore":
            return {
                "name": "none",
                "detail": "no cache server; services degrade gracefully",
                "extra": None,
            }
        return None
    from nexusfs.drivers import registry

    text = str(value)
    if kind == "objectstore" and text.startswith("local:") and not text.startswith("local://"):
        text = "local:///" + text[len("local:") :]
    try:
        scheme = registry.scheme_of(kind, text)
    except ConfigError:
        return None
    name = f"{kind}.{scheme}"
    target = registry.available(kind).get(scheme)
    extra = DRIVER_EXTRAS.get(name)
    detail = target or "not installed"
    if extra:
        detail += f" (needs nexusfs[{extra}])"
    return {"name": name, "detail": detail, "extra": extra}
