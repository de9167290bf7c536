"""Shared fixtures.

``fs``: a fresh :class:`~nexusfs.kernel.NexusFS` per test, parametrised over the two
metastore backends, always closed afterwards:

* ``memory``: ``NexusFS(MemoryMetastore(), data_dir=tmp_path, zone_opener=...)`` with
  ``/`` mounted to the local object store ``local:objects`` (under ``tmp_path``);
* ``redb``: ``nexusfs.connect(data_dir=tmp_path / "data")`` (redb metastore + local
  object store; skipped if the native extension is not built).

``make_fs(backend, base)`` builds the same kernels outside a fixture (for hypothesis
state machines, which need a fresh kernel per example); ``fs_factory`` is a fixture that
does so and closes everything it made at teardown.
"""

from __future__ import annotations

import contextlib
import importlib.util
from collections.abc import Callable, Iterator
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
            MemoryMetastore(), data_dir=base, zone_opener=lambda _name: MemoryMetastore(),
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


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    """The metastore backend under test: "memory" or "redb"."""
    return str(request.param)


@pytest.fixture
def fs(backend: str, tmp_path: Path) -> Iterator[Any]:
    """A fresh NexusFS on ``tmp_path`` for each backend; closed after the test."""
    kernel = make_fs(backend, tmp_path)
    try:
        yield kernel
    finally:
        kernel.close()


@pytest.fixture
def fs_factory(tmp_path: Path) -> Iterator[Callable[..., Any]]:
    """``fs_factory(backend, name="fs", **kwargs)``: a new NexusFS under
    ``tmp_path / name``; every kernel made is closed at teardown."""
    made: list[Any] = []

    def factory(backend: str, name: str = "fs", **kwargs: Any) -> Any:
        kernel = make_fs(backend, tmp_path / name, **kwargs)
        made.append(kernel)
        return kernel

    yield factory
    for kernel in made:
        with contextlib.suppress(Exception):
            kernel.close()
