"""NexusFS configuration: one settings model for every deployment.

``load_settings()`` layers built-in defaults, the distro manifest, ``nexus.toml`` and
``NEXUS_*`` environment variables (env wins over files; explicit arguments win over
everything) into one validated, immutable :class:`Settings`, recording where each value
came from. See :mod:`nexusfs.config.settings` for the keys and the rules.
"""

from nexusfs.config.settings import (
    CONFIG_FILE,
    DEFAULT_DATA_DIR,
    KEYS,
    Settings,
    load_settings,
    redact,
    validate_values,
    write_config,
)
from nexusfs.errors import ConfigError

__all__ = [
    "CONFIG_FILE",
    "DEFAULT_DATA_DIR",
    "KEYS",
    "ConfigError",
    "Settings",
    "load_settings",
    "redact",
    "validate_values",
    "write_config",
]
