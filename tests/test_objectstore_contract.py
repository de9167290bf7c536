"""Run the object store conformance suite on every built-in driver."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from nexusfs.abc import Durability, ObjectStoreABC
from nexusfs.drivers.objectstore import (
    LocalObjectStore,
    MemoryObjectStore,
    open_object_store,
)
from nexusfs.errors import MountError, StoreClosed
from nexusfs.testing.objectstore import ObjectStoreContract


class TestLocalDeferred(ObjectStoreContract):
    @pytest.fixture
    def object_store(self, tmp_path: Path) -> Iterator[ObjectStoreABC]:
        store = LocalObjectStore(tmp_path / "blobs", Durability.DEFERRED)
        yield store
        store.close()
        assert list((tmp_path / "blobs" / "tmp").iterdir()) == []


class TestLocalImmediate(ObjectStoreContract):
    @pytest.fixture
    def object_store(self, tmp_path: Path) -> Iterator[ObjectStoreABC]:
        store = LocalObjectStore(tmp_path / "blobs", "immediate")
        yield store
        store.close()
        assert list((tmp_path / "blobs" / "tmp").iterdir()) == []


class TestLocalSequential(ObjectStoreContract):
    """The non-pipelined write path (hash and write in the calling thread)."""

    @pytest.fixture
    def object_store(self, tmp_path: Path) -> Iterator[ObjectStoreABC]:
        store = LocalObjectStore(tmp_path / "blobs", pipeline=False)
        yield store
        store.close()


class TestMemory(ObjectStoreContract):
    @pytest.fixture
    def object_store(self) -> Iterator[ObjectStoreABC]:
        store = MemoryObjectStore("contract")
        yield store
        store.close()


# ------------------------------------------------------------------ open_object_store


def test_open_local_and_file_uris(tmp_path: Path) -> None:
    for scheme in ("local", "file"):
        root = tmp_path / scheme
        store = open_object_store(f"{scheme}://{root}", "immediate")
        assert isinstance(store, LocalObjectStore)
        assert store.durability is Durability.IMMEDIATE
        assert store.root == str(root)
        assert (root / "objects").is_dir()
        cid = store.put(b"x").content_id
        store.close()
        reopened = open_object_store(store.uri)
        assert reopened.read(cid) == b"x"
        assert reopened.durability is Durability.DEFERRED
        reopened.close()


def test_open_local_uri_with_space(tmp_path: Path) -> None:
    root = tmp_path / "a dir"
    store = open_object_store(f"local://{root}".replace(" ", "%20"))
    assert isinstance(store, LocalObjectStore)
    assert store.root == str(root)
    assert open_object_store(store.uri).put(b"y").size == 1


def test_open_memory_uri() -> None:
    store = open_object_store("memory://scratch", Durability.IMMEDIATE)
    assert isinstance(store, MemoryObjectStore)
    assert store.uri == "memory://scratch"
    assert list(store.list()) == []


@pytest.mark.parametrize(
    "uri",
    ["ftp://bucket/x", "blobs", "/abs/path", "local://relative/dir", "file:relative", ""],
)
def test_open_bad_uri_raises_mount_error(uri: str) -> None:
    with pytest.raises(MountError) as exc_info:
        open_object_store(uri)
    assert uri in str(exc_info.value) or "scheme" in str(exc_info.value)


def test_bad_durability_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        LocalObjectStore(tmp_path, "sometimes")


@pytest.mark.parametrize("kind", ["local", "memory"])
def test_use_after_close(tmp_path: Path, kind: str) -> None:
    store: ObjectStoreABC = (
        LocalObjectStore(tmp_path / "s") if kind == "local" else MemoryObjectStore()
    )
    cid = store.put(b"data").content_id
    writer = store.open_writer()
    writer.write(b"late")
    store.close()
    store.close()  # idempotent
    with pytest.raises(StoreClosed):
        store.read(cid)
    with pytest.raises(StoreClosed):
        store.open_writer()
    with pytest.raises(StoreClosed):
        writer.commit()
    if kind == "local":
        assert list((tmp_path / "s" / "tmp").iterdir()) == []
