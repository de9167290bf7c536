"""``python -m nexusfs.server --data-dir DIR``: run the kernel process in the foreground."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from nexusfs.errors import NexusError
from nexusfs.server.daemon import serve_forever


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="nexusfs.server", description=__doc__)
    parser.add_argument("--data-dir", required=True, type=Path)
    parser.add_argument("--durability", choices=["immediate", "deferred"], default=None)
    parser.add_argument("--distro", default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        serve_forever(args.data_dir, durability=args.durability, distro=args.distro)
    except NexusError as exc:
        print(f"nexusfs.server: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
