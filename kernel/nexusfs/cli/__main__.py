"""``python -m nexusfs.cli``: the same as the ``nexus`` console script."""

from __future__ import annotations

from nexusfs.cli import main

if __name__ == "__main__":
    main()
