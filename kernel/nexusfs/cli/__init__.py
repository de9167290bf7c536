"""The ``nexus`` command-line interface.

``main`` is the console-script entry point (``nexus = "nexusfs.cli:main"``). Importing
this package is cheap: click and the command modules load when ``main`` runs, and the
kernel, the native metastore and rich load only inside the commands that need them, so
``nexus --help`` starts fast.

Modules: :mod:`~nexusfs.cli.app` (the command group, global options, ``run``),
:mod:`~nexusfs.cli.runtime` (opening the kernel, error reporting),
:mod:`~nexusfs.cli.output` (formatting), :mod:`~nexusfs.cli.fileops`,
:mod:`~nexusfs.cli.listing`, :mod:`~nexusfs.cli.transfer` and :mod:`~nexusfs.cli.admin`
(the commands).
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> None:
    """Run the ``nexus`` CLI on ``argv`` (default: ``sys.argv[1:]``); exits the process."""
    from nexusfs.cli.app import run

    run(argv)
