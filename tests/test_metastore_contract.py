"""Run the metastore contract suite on every bundled driver."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from nexusfs.abc import Durability, MetastoreABC
from nexusfs.drivers.metastore.memory import MemoryMetastore
from nexusfs.drivers.metastore.redb import RedbMetastore
from nexusfs.testing.metastore import MetastoreContract, Reopen


class TestMemoryMetastore(MetastoreContract):
    @pytest.fixture
    def metastore(self) -> Iterator[MetastoreABC]:
        with MemoryMetastore() as store:
            yield store


class _RedbContract(MetastoreContract):
    durability: Durability

    @pytest.fixture
    def metastore(self, tmp_path: Path) -> Iterator[MetastoreABC]:
        with RedbMetastore(tmp_path / "meta.redb", self.durability) as store:
            yield store

    @pytest.fixture
    def reopen(self, tmp_path: Path) -> Reopen:
        def _reopen(old: MetastoreABC) -> MetastoreABC:
            old.close()
            return RedbMetastore(tmp_path / "meta.redb", self.durability, create=False)

        return _reopen


class TestRedbMetastoreDeferred(_RedbContract):
    durability = Durability.DEFERRED


class TestRedbMetastoreImmediate(_RedbContract):
    durability = Durability.IMMEDIATE
