"""Helpers shared by the kernel tests (imported as ``kernel_testkit``; the fixtures that
use them live in ``conftest.py``). A separate module because several test trees have
a ``conftest.py``, and a plain ``from conftest import ...`` would pick the wrong one."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import pytest

BACKENDS = ("memory", "redb")


def native_available() -> bool:
    try:
        return importlib.util.find_spec("nexusfs._native") is not None
    except ModuleNotFoundError:
        return False


def make_fs(backend: str, base: Path, **kwargs: Any) -> Any:
    """A new NexusFS on ``base`` for ``backend`` ("memory" or "redb"). ``kwargs`` go to
    the constructor (memory) or to ``nexusfs.connect`` (redb), e.g. ``durability``."""
    if backend == "memory":
        from nexusfs.drivers.metastore.memory import MemoryMetastore
        from nexusfs.kernel import NexusFS

        base.mkdir(parents=True, exist_ok=True)
        fs = NexusFS(
            MemoryMetastore(),
            data_dir=base,
            zone_opener=lambda _name: MemoryMetastore(),
            **kwargs,
        )
        try:
            fs.mount("/", "local:objects")
        except BaseException:
            fs.close()
            raise
        return fs
    if backend == "redb":
        if not native_available():
            pytest.skip("nexusfs._native is not built (run scripts/setup.sh)")
        import nexusfs

        return nexusfs.connect(data_dir=base / "data", **kwargs)
    raise ValueError(f"unknown backend {backend!r}")
