"""Import-time marker shared by the test plugins: records which pid imported them."""

from __future__ import annotations

import os
from pathlib import Path


def mark(module: str) -> None:
    d = os.environ.get("NXTEST_MARKER_DIR")
    if d:
        Path(d).mkdir(parents=True, exist_ok=True)
        (Path(d) / f"{module}-{os.getpid()}").write_text(str(os.getpid()))
