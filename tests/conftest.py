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
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from kernel_testkit import BACKENDS, make_fs, native_available

__all__ = ["BACKENDS", "make_fs", "native_available"]


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
