"""``nexus config show``: the effective settings and where each value came from.

The settings are loaded exactly as the kernel loads them (:mod:`nexusfs.config`), so
what this prints is what ``nexus up`` and ``nexusfs.connect()`` would use. Passwords in
URLs are shown as ``***``.
"""

from __future__ import annotations

import click

from nexusfs.cli.output import print_json, print_table
from nexusfs.cli.runtime import settings

__all__ = ["COMMANDS"]


@click.group("config")
def config_group() -> None:
    """Inspect the settings (nexus.toml, NEXUS_* variables, the distro)."""


@config_group.command("show")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def config_show(as_json: bool) -> None:
    """Print the effective settings and the source of each value.

    Precedence, highest first: command-line flags, NEXUS_* environment variables, the
    config file (NEXUS_CONFIG or DATA_DIR/nexus.toml), the distro's [config], defaults.
    """
    from nexusfs.config import load_settings

    cfg = settings()
    effective = load_settings(
        cfg.data_dir, overrides={"durability": cfg.durability}, override_source="flag"
    )
    if as_json:
        print_json(
            {
                "config_file": str(effective.config_file) if effective.config_file else None,
                "settings": effective.as_dict(),
            }
        )
        return
    print_table(
        [("setting", "left"), ("value", "left"), ("source", "left")],
        [list(row) for row in effective.rows()],
    )
    if effective.config_file is None:
        click.echo(f"(no config file; 'nexus init --distro NAME' writes {cfg.data_dir}/nexus.toml)")


COMMANDS = (config_group,)
