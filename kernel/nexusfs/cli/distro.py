"""``nexus distro list | show | build``: the distros and what they run.

``list`` shows every manifest on the distro path (the built-ins and
``$NEXUS_DISTRO_PATH``), an invalid one with its error; ``show NAME`` explains one for
the current data directory (mode, settings and the driver behind each, services and
their packages, what a bundle holds); ``build NAME -o DIR`` writes an offline bundle.
NAME is a distro name or the path of a ``.toml`` manifest. Errors are the one-line
``nexus: ...`` messages of :class:`~nexusfs.cli.app.NexusGroup` (a bad manifest is a
``DistroError``, a failed build a ``BundleError``).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import click

from nexusfs.cli.output import print_json, print_table
from nexusfs.cli.runtime import settings

__all__ = ["COMMANDS"]


@click.group("distro")
def distro_group() -> None:
    """Distros: manifests that compose the kernel, drivers and services."""


@distro_group.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def distro_list(as_json: bool) -> None:
    """Show the available distros: name, mode, summary (or why one is invalid)."""
    from nexusfs.distro import list_distros

    entries = list_distros()
    if as_json:
        print_json(
            [
                {
                    "name": e.name,
                    "path": str(e.path),
                    "mode": e.distro.mode if e.distro else None,
                    "summary": e.distro.summary if e.distro else None,
                    "services": list(e.distro.service_names) if e.distro else [],
                    "error": str(e.error) if e.error else None,
                }
                for e in entries
            ]
        )
        return
    print_table(
        [("NAME", "left"), ("MODE", "left"), ("SERVICES", "left"), ("SUMMARY", "left")],
        [
            [e.name, e.distro.mode, ",".join(e.distro.service_names) or "-", e.distro.summary]
            if e.distro
            else [e.name, "invalid", "-", str(e.error)]
            for e in entries
        ],
    )


@distro_group.command("show")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def distro_show(name: str, as_json: bool) -> None:
    """Explain distro NAME (or a manifest path): what it runs and with which drivers.

    Settings are shown as this distro gives them to the data directory (--data-dir);
    nexus.toml and NEXUS_* variables may override them ('nexus config show').
    """
    from nexusfs.distro import explain, explain_text, load_distro

    info = explain(load_distro(name), settings().data_dir)
    if as_json:
        print_json(info)
    else:
        click.echo(explain_text(info))


@distro_group.command("build")
@click.argument("name")
@click.option(
    "-o",
    "--output",
    "output",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="The bundle directory to write (absent or empty; see --force).",
)
@click.option(
    "--wheel-cache",
    type=click.Path(file_okay=False, path_type=Path),
    envvar="NEXUS_WHEEL_CACHE",
    help="Keep built wheels (and the Rust build) here for the next build [$NEXUS_WHEEL_CACHE].",
)
@click.option(
    "--kernel-wheel",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="Use this nexusfs wheel instead of building one from the source tree.",
)
@click.option(
    "--source",
    "source_root",
    type=click.Path(file_okay=False, exists=True, path_type=Path),
    help="The nexusfs source tree (default: the one this nexus runs from).",
)
@click.option("--force", is_flag=True, help="Replace a previous bundle in the output directory.")
def distro_build(
    name: str,
    output: Path,
    wheel_cache: Path | None,
    kernel_wheel: Path | None,
    source_root: Path | None,
    force: bool,
) -> None:
    """Build an offline-installable bundle of distro NAME in DIR.

    The bundle holds wheels of the kernel, the distro's services and all their
    dependencies for this Python and platform, a hash-pinned requirements.lock, the
    manifest, and install.sh / bin/nexus-up. It installs with no package index.
    """
    from nexusfs.distro import build_bundle

    started = time.monotonic()

    def log(line: str) -> None:
        click.echo(f"[{time.monotonic() - started:5.1f}s] {line}", file=sys.stderr)

    result = build_bundle(
        name,
        output,
        wheel_cache=wheel_cache,
        kernel_wheel=kernel_wheel,
        source_root=source_root,
        force=force,
        log=log,
    )
    click.echo(
        f"{result.path}: {result.distro} bundle, {len(result.wheels)} wheels, built in "
        f"{result.seconds:.1f}s; install with {result.install_script}"
    )


COMMANDS = (distro_group,)
