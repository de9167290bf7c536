"""Commands that run the kernel as a process: ``up``, ``down``, ``status``.

``nexus up`` starts a kernel daemon that owns the data directory and serves it on a
Unix socket; every other command (and ``nexusfs.connect()``) then talks to it instead
of opening the directory itself. ``nexus down`` stops it after flushing everything.
"""

from __future__ import annotations

import json
import time

import click

from nexusfs.cli.runtime import settings
from nexusfs.errors import NexusError

__all__ = ["COMMANDS"]


@click.command("up")
@click.option("--foreground", is_flag=True, help="Run in this process until Ctrl-C.")
@click.option(
    "--distro",
    default=None,
    help="Boot this distro's composition (drivers, services) instead of the one in "
    "nexus.toml; see 'nexus distro list'.",
)
def up_cmd(foreground: bool, distro: str | None) -> None:
    """Start the kernel process for the data directory (no-op if it runs).

    The drivers and services come from the settings ('nexus config show'); a data
    directory without a nexus.toml gets one for --distro, as 'nexus init --distro' does.
    """
    from nexusfs.server import daemon

    cfg = settings()
    cfg.data_dir.mkdir(parents=True, exist_ok=True)
    if distro is not None:
        from nexusfs.config import CONFIG_FILE, load_settings, write_config

        chosen = load_settings(cfg.data_dir, overrides={"distro": distro})
        daemon.check_daemon_distro(chosen)  # before writing anything
        if not (cfg.data_dir / CONFIG_FILE).exists():
            from nexusfs.distro import is_manifest_path, load_distro

            name = str(load_distro(distro).source) if is_manifest_path(distro) else distro
            write_config(cfg.data_dir, {"distro": name})
    if foreground:
        daemon.serve_forever(cfg.data_dir, durability=cfg.durability, distro=distro)
        return
    state = daemon.start(cfg.data_dir, durability=cfg.durability, distro=distro)
    click.echo(f"kernel {state['pid']} serving {state['data_dir']} on unix://{state['socket']}")


@click.command("down")
def down_cmd() -> None:
    """Stop the kernel process (flushing everything first)."""
    from nexusfs.server import daemon

    if not daemon.stop(settings().data_dir):
        click.echo("no kernel process is running", err=True)


@click.command("status")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def status_cmd(as_json: bool) -> None:
    """Show whether a kernel process serves the data directory, and its state."""
    from nexusfs.client import RemoteNexusFS
    from nexusfs.server import daemon

    state = daemon.kernel_state(settings().data_dir)
    if state is None:
        if as_json:
            click.echo(json.dumps({"running": False}))
        else:
            click.echo("no kernel process (commands open the data directory embedded)")
        raise click.exceptions.Exit(3)
    with RemoteNexusFS(state["socket"]) as fs:
        info = {"running": True, **fs.status()}
        try:
            info["services"] = fs.call("services.list")
        except NexusError:  # services switched off (NEXUS_SERVICES="")
            info["services"] = []
    if as_json:
        click.echo(json.dumps(info))
        return
    uptime = time.time() - float(info["started_at"])
    click.echo(
        f"kernel {info['pid']} up {uptime:.0f}s, version {info['version']}, "
        f"durability {info['durability']}\n"
        f"  data dir  {info['data_dir']}\n  socket    unix://{info['socket']}\n"
        f"  revision  {info['revision']}, mounts {info['mounts']}"
    )
    for svc in info["services"]:
        line = f"  service   {svc['name']} {svc['version'] or ''}: {svc['state']}"
        if svc.get("pid"):
            line += f" (pid {svc['pid']}, {svc['restarts']} restarts)"
        click.echo(line)
        if svc.get("last_error"):
            click.echo("    last crash:")
            for text in str(svc["last_error"]).rstrip().splitlines()[-12:]:
                click.echo(f"      {text}")


COMMANDS = (up_cmd, down_cmd, status_cmd)
