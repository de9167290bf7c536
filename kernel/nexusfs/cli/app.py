"""The ``nexus`` command group, its global options and the process entry (``run``).

Error policy, enforced by :class:`NexusGroup` for every command:

* a ``NexusError``, ``OSError`` or ``ValueError`` prints one line to stderr
  (``nexus: not found: /a/b``) and exits 1;
* usage errors are click's: a message and exit status 2;
* Ctrl-C exits 130 without a message;
* a closed stdout pipe (``nexus cat f | head``) exits quietly (click's handling).

Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click

from nexusfs import __version__
from nexusfs.cli import (
    admin,
    config,
    daemon,
    distro,
    fileops,
    listing,
    rebac,
    services,
    transfer,
)
from nexusfs.cli.runtime import (
    DEFAULT_DATA_DIR,
    EXIT_INTERRUPTED,
    CLIError,
    Settings,
    describe_error,
)
from nexusfs.errors import NexusError

__all__ = ["cli", "run"]


class NexusGroup(click.Group):
    """A group that turns operation errors into one-line messages (see module doc)."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except BrokenPipeError:
            raise  # click silences it and exits 1
        except KeyboardInterrupt:
            raise click.exceptions.Exit(EXIT_INTERRUPTED) from None
        except (NexusError, OSError, ValueError) as exc:
            raise CLIError(describe_error(exc)) from None


@click.group(cls=NexusGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    envvar="NEXUS_DATA_DIR",
    default=DEFAULT_DATA_DIR,
    show_default="$NEXUS_DATA_DIR or ./nexus-data",
    help="The NexusFS data directory.",
)
@click.option(
    "--durability",
    type=click.Choice(["immediate", "deferred"]),
    envvar="NEXUS_DURABILITY",
    default=None,
    help="immediate: fsync every write; deferred (default): flush when the command ends.",
)
@click.version_option(version=__version__, prog_name="nexus")
@click.pass_context
def cli(ctx: click.Context, data_dir: Path, durability: str | None) -> None:
    """NexusFS: a filesystem for multi-agent systems.

    Paths inside NexusFS are absolute ('/notes/today.md'). Run 'nexus init' once to
    create the data directory, then 'nexus COMMAND --help' for each command.
    """
    ctx.obj = Settings(data_dir, durability)


for _command in (
    *admin.COMMANDS,
    *config.COMMANDS,
    *daemon.COMMANDS,
    *distro.COMMANDS,
    *fileops.COMMANDS,
    *listing.COMMANDS,
    *rebac.COMMANDS,
    *services.COMMANDS,
    *transfer.COMMANDS,
):
    cli.add_command(_command)


def run(argv: Sequence[str] | None = None) -> None:
    """Run the CLI and exit the process with its status."""
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        cli.main(args=args, prog_name="nexus")
    except KeyboardInterrupt:  # outside a command (e.g. while parsing or exiting)
        sys.exit(EXIT_INTERRUPTED)
