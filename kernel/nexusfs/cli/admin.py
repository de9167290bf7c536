"""Administrative commands: ``init``, ``mount``, ``unmount``, ``mounts``, ``zone``,
``gc`` and ``flush``.

``init`` is the only command that creates a data directory; every other command refuses
to run on a missing one (so a mistyped ``--data-dir`` is an error, not a new empty
filesystem).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from nexusfs.cli.output import format_time, human_size, print_json, print_table
from nexusfs.cli.runtime import open_fs, settings, with_fs

if TYPE_CHECKING:
    from nexusfs.api import FileSystem as NexusFS

__all__ = ["COMMANDS"]


@click.command("init")
@click.option(
    "--distro",
    default=None,
    help="Write a nexus.toml for this distro (nexus-embedded, nexus-server, nexus-cloud, "
    "or a manifest file); see 'nexus distro list'.",
)
def init_cmd(distro: str | None) -> None:
    """Create the data directory and its metastore (safe to run again).

    With --distro, also write DATA_DIR/nexus.toml naming that distro, so 'nexus up'
    boots its composition (drivers and services). An existing nexus.toml for another
    distro is an error: edit it, or use a new data directory.
    """
    from nexusfs.config import CONFIG_FILE, ConfigError, load_settings, write_config

    cfg = settings()
    existed = cfg.data_dir.is_dir() and (
        cfg.metastore_path.exists() or (cfg.data_dir / CONFIG_FILE).exists()
    )
    if distro is not None:
        from nexusfs.distro import is_manifest_path, load_distro

        chosen = load_distro(distro)
        current = load_settings(cfg.data_dir)
        if (cfg.data_dir / CONFIG_FILE).exists() and current.distro not in (None, chosen.name):
            raise ConfigError(
                f"{cfg.data_dir / CONFIG_FILE} already names distro {current.distro!r}; "
                "edit it or use a new data directory"
            )
        name = str(chosen.source) if is_manifest_path(distro) else chosen.name
        write_config(cfg.data_dir, {"distro": name})
    with open_fs(cfg, create=True):
        pass
    where = cfg.data_dir.resolve()
    suffix = f" (distro {distro})" if distro else ""
    if existed:
        click.echo(f"NexusFS already initialized in {where}{suffix}")
    else:
        click.echo(f"Initialized NexusFS in {where}{suffix}")


@click.command("mount")
@click.argument("path")
@click.argument("uri")
@with_fs
def mount_cmd(fs: NexusFS, path: str, uri: str) -> None:
    """Mount an object store or a zone at PATH.

    URI is local:///abs/dir, local:dir (relative to the data directory), memory://name
    or zone://NAME (create the zone first with 'nexus zone create').
    """
    fs.mount(path, uri)


@click.command("unmount")
@click.argument("path")
@with_fs
def unmount_cmd(fs: NexusFS, path: str) -> None:
    """Remove the mount at PATH.

    An unmounted zone keeps its data (mount it again to see it); a store can be
    unmounted only when no file uses it.
    """
    fs.unmount(path)


@click.command("mounts")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array.")
@with_fs
def mounts_cmd(fs: NexusFS, as_json: bool) -> None:
    """Show the mount table."""
    table = fs.mounts()
    if as_json:
        print_json(
            [
                {"path": m.path, "uri": m.uri, "kind": m.kind, "created_at": m.created_at}
                for m in table
            ]
        )
        return
    print_table(
        (("PATH", "left"), ("KIND", "left"), ("URI", "left"), ("CREATED", "left")),
        ([m.path, m.kind, m.uri, format_time(m.created_at)] for m in table),
    )


@click.group("zone")
def zone_group() -> None:
    """Create and list zones.

    A zone is an independent metastore; mount it with 'nexus mount PATH zone://NAME'.
    """


@zone_group.command("create")
@click.argument("name")
@with_fs
def zone_create_cmd(fs: NexusFS, name: str) -> None:
    """Create the zone NAME (1-64 of a-z 0-9 - _)."""
    fs.zone_create(name)


@zone_group.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array.")
@with_fs
def zone_list_cmd(fs: NexusFS, as_json: bool) -> None:
    """List zones, the root zone first."""
    zones = fs.zones()
    if as_json:
        print_json([z.to_dict() for z in zones])
        return
    print_table(
        (("NAME", "left"), ("MOUNTED AT", "left"), ("CREATED", "left")),
        ([z.name, z.mounted_at or "-", format_time(z.created_at)] for z in zones),
    )


@click.command("gc")
@click.option(
    "--grace",
    type=click.FloatRange(min=0),
    default=300.0,
    show_default=True,
    metavar="SECONDS",
    help="Keep unreferenced blobs younger than this.",
)
@click.option("--dry-run", is_flag=True, help="Report what would be reclaimed; delete nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@with_fs
def gc_cmd(fs: NexusFS, grace: float, dry_run: bool, as_json: bool) -> None:
    """Reclaim blobs that no file references."""
    report = fs.gc(grace=grace, dry_run=dry_run)
    if as_json:
        print_json(
            {
                "scanned": report.scanned,
                "reclaimed": report.reclaimed,
                "bytes_reclaimed": report.bytes_reclaimed,
                "kept_referenced": report.kept_referenced,
                "kept_young": report.kept_young,
                "dry_run": dry_run,
            }
        )
        return
    verb = "would reclaim" if dry_run else "reclaimed"
    click.echo(
        f"scanned {report.scanned} blobs; {verb} {report.reclaimed} "
        f"({human_size(report.bytes_reclaimed)}); kept {report.kept_referenced} referenced, "
        f"{report.kept_young} younger than {grace:g}s"
    )


@click.command("flush")
@with_fs
def flush_cmd(fs: NexusFS) -> None:
    """Make every acknowledged write durable now."""
    fs.flush()


COMMANDS = (init_cmd, mount_cmd, unmount_cmd, mounts_cmd, zone_group, gc_cmd, flush_cmd)
