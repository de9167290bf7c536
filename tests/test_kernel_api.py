"""The public API (ARCHITECTURE §5), behaviour and errors, in every mode: embedded on the
in-memory and the redb metastore, and through a kernel process over ``unix://``."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import blake3
import pytest

import nexusfs
from nexusfs import (
    AlreadyExists,
    Conflict,
    DirectoryNotEmpty,
    EntryType,
    InvalidPath,
    IsADirectory,
    MountError,
    NotADirectory,
    NotFound,
    PermissionDenied,
    StoreClosed,
)
from nexusfs.api import FileSystem
from nexusfs.client import RemoteNexusFS
from nexusfs.drivers.metastore.memory import MemoryMetastore
from nexusfs.drivers.objectstore.local import LocalObjectStore
from nexusfs.kernel import NexusFS
from nexusfs.server import daemon

BIG = 100_000  # over the inline threshold: stored as a blob


def _memory_fs(tmp_path: Path) -> NexusFS:
    fs = NexusFS(MemoryMetastore(), data_dir=tmp_path, zone_opener=lambda n: MemoryMetastore())
    fs.mount("/", "local:objects")
    return fs


OBJECTS: dict[int, Path] = {}


@pytest.fixture(params=["memory", "redb", "unix"])
def nx(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[FileSystem]:
    fs: FileSystem
    if request.param == "memory":
        fs = _memory_fs(tmp_path)
        OBJECTS[id(fs)] = tmp_path / "objects"
    elif request.param == "redb":
        fs = nexusfs.connect(data_dir=tmp_path / "data")
        OBJECTS[id(fs)] = tmp_path / "data" / "objects"
    else:
        daemon.start(tmp_path / "data")
        request.addfinalizer(lambda: daemon.stop(tmp_path / "data"))
        fs = nexusfs.connect(data_dir=tmp_path / "data")
        assert isinstance(fs, RemoteNexusFS)
        OBJECTS[id(fs)] = tmp_path / "data" / "objects"
    with fs:
        yield fs
    OBJECTS.pop(id(fs))


@pytest.fixture
def embedded(nx: FileSystem) -> NexusFS:
    """Tests that reach into kernel internals (fault injection) run embedded only."""
    if not isinstance(nx, NexusFS):
        pytest.skip("needs the embedded kernel's internals")
    return nx


def store_of(fs: FileSystem) -> LocalObjectStore:
    """The default object store of ``fs``, opened on its directory (works in every mode:
    blobs are files on disk)."""
    return LocalObjectStore(OBJECTS[id(fs)])


def blobs(fs: FileSystem) -> set[str]:
    return set(store_of(fs).list())


# ---------------------------------------------------------------------- files


def test_write_read_stat(nx: FileSystem) -> None:
    meta = nx.write("/a/b/c.txt", b"hello", mime_type="text/plain", owner="user:ann")
    assert meta.path == "/a/b/c.txt" and meta.size == 5 and meta.entry_type is EntryType.FILE
    assert meta.content_id == blake3.blake3(b"hello").hexdigest()
    assert nx.read("/a/b/c.txt") == b"hello"
    assert nx.read("/a/b/c.txt", offset=1, size=3) == b"ell"
    assert nx.read("/a/b/c.txt", offset=10) == b""
    assert nx.stat("/a/b/c.txt") == meta
    assert nx.stat("/a/b").entry_type is EntryType.DIRECTORY
    assert nx.exists("/a") and not nx.exists("/zzz")
    assert nx.stat("/a/b/c.txt").mime_type == "text/plain"


def test_big_file_goes_to_object_store(nx: FileSystem) -> None:
    data = os.urandom(BIG)
    meta = nx.write("/big", data)
    assert not meta.inline and meta.store == "local:objects"
    assert nx.read("/big") == data
    assert nx.read("/big", offset=BIG - 10, size=100) == data[-10:]
    assert b"".join(nx.iter_read("/big", chunk_size=4096)) == data
    assert meta.content_id in blobs(nx)


def test_versions_are_monotonic_even_across_recreate(nx: FileSystem) -> None:
    v1 = nx.write("/f", b"1").version
    v2 = nx.write("/f", b"2").version
    nx.unlink("/f")
    v3 = nx.write("/f", b"3").version
    assert v1 < v2 < v3


def test_if_version_and_exclusive(nx: FileSystem) -> None:
    meta = nx.write("/f", b"1", exclusive=True)
    with pytest.raises(AlreadyExists):
        nx.write("/f", b"x", exclusive=True)
    with pytest.raises(Conflict) as err:
        nx.write("/f", b"x", if_version=meta.version + 1)
    assert err.value.actual == meta.version
    assert nx.read("/f") == b"1"
    nx.write("/f", b"2", if_version=meta.version)
    with pytest.raises(Conflict):
        nx.write("/g", b"x", if_version=3)
    nx.write("/g", b"x", if_version=0)
    assert nx.read("/g") == b"x"


def test_typed_errors_subclass_builtins(nx: FileSystem) -> None:
    nx.write("/file", b"x")
    nx.mkdir("/dir")
    with pytest.raises(FileNotFoundError):
        nx.read("/missing")
    with pytest.raises(NotADirectory):
        nx.read("/file/below")
    with pytest.raises(NotADirectory):
        nx.write("/file/below", b"x")
    with pytest.raises(IsADirectoryError):
        nx.read("/dir")
    with pytest.raises(IsADirectory):
        nx.write("/dir", b"x")
    with pytest.raises(IsADirectory):
        nx.unlink("/dir")
    with pytest.raises(NotADirectory):
        nx.rmdir("/file")
    with pytest.raises(NotADirectory):
        nx.readdir("/file")
    for bad in ["", "relative", "/a/../b", "/nul\x00", "/ctl\x07", "/" + "n" * 256, 42]:
        with pytest.raises(InvalidPath):
            nx.write(bad, b"x")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        nx.read("/file", offset=-1)
    assert nx.read("/file") == b"x"  # nothing lost


def test_nfc_paths_are_one_file(nx: FileSystem) -> None:
    nx.write("/cafe\u0301", b"decomposed")
    assert nx.read("/caf\u00e9") == b"decomposed"
    assert nx.readdir("/").names == ["caf\u00e9"]


# ---------------------------------------------------------------------- directories


def test_mkdir_rmdir(nx: FileSystem) -> None:
    with pytest.raises(NotFound):
        nx.mkdir("/x/y")
    nx.mkdir("/x/y", parents=True)
    with pytest.raises(AlreadyExists):
        nx.mkdir("/x/y")
    assert nx.mkdir("/x/y", exist_ok=True).path == "/x/y"
    nx.write("/x/f", b"1")
    with pytest.raises(AlreadyExists):
        nx.mkdir("/x/f", exist_ok=True)
    with pytest.raises(DirectoryNotEmpty):
        nx.rmdir("/x")
    nx.rmdir("/x/y")
    nx.write("/x/deep/er/big", os.urandom(BIG))
    nx.rmdir("/x", recursive=True)
    assert not nx.exists("/x") and not nx.exists("/x/deep/er/big")
    nx.flush()
    assert blobs(nx) == set()
    with pytest.raises(MountError):
        nx.rmdir("/")


def test_readdir_order_pagination_recursive(nx: FileSystem) -> None:
    names = [f"f{i:03d}" for i in range(50)]
    for n in reversed(names):
        nx.write(f"/d/{n}", n.encode())
    nx.write("/d/sub/inner", b"i")
    nx.write("/d0", b"sibling with a shared prefix")
    listing = nx.readdir("/d")
    assert listing.names == [*names, "sub"] and listing.cursor is None
    pages, cursor = [], None
    while True:
        page = nx.readdir("/d", limit=7, cursor=cursor)
        pages.extend(page.names)
        cursor = page.cursor
        if cursor is None:
            break
    assert pages == listing.names
    rec = [m.path for m in nx.readdir("/", recursive=True)]
    assert rec == ["/d", *[f"/d/{n}" for n in names], "/d/sub", "/d/sub/inner", "/d0"]
    got, cursor = [], None
    while True:
        page = nx.readdir("/", recursive=True, limit=5, cursor=cursor)
        got.extend(m.path for m in page)
        if page.cursor is None:
            break
        cursor = page.cursor
    assert got == rec
    with pytest.raises(InvalidPath):
        nx.readdir("/d", cursor="/elsewhere/x")


# ---------------------------------------------------------------------- rename & copy


def test_rename_file_and_directory(nx: FileSystem) -> None:
    data = os.urandom(BIG)
    nx.write("/src/a/big", data)
    nx.write("/src/a/small", b"s")
    nx.rename("/src", "/dst")
    assert not nx.exists("/src")
    assert nx.read("/dst/a/big") == data and nx.read("/dst/a/small") == b"s"
    nx.write("/other", b"o")
    nx.rename("/other", "/dst/a/small")  # replaces a file
    assert nx.read("/dst/a/small") == b"o"
    nx.flush()
    assert len(blobs(nx)) == 1


def test_rename_errors(nx: FileSystem) -> None:
    nx.write("/d/f", b"1")
    nx.mkdir("/e")
    nx.write("/e2/x", b"x")
    nx.write("/g", b"g")
    with pytest.raises(InvalidPath):
        nx.rename("/d", "/d/inside")
    with pytest.raises(IsADirectory):
        nx.rename("/g", "/e")
    with pytest.raises(NotADirectory):
        nx.rename("/d", "/g")
    with pytest.raises(DirectoryNotEmpty):
        nx.rename("/d", "/e2")
    with pytest.raises(NotFound):
        nx.rename("/missing", "/m2")
    with pytest.raises(NotFound):
        nx.rename("/g", "/no/parent/g")
    nx.rename("/d", "/e")  # onto an empty directory
    assert nx.read("/e/f") == b"1"


def test_copy_shares_blob(nx: FileSystem) -> None:
    data = os.urandom(BIG)
    nx.write("/a", data)
    meta = nx.copy("/a", "/b")
    assert meta.content_id == nx.stat("/a").content_id
    nx.unlink("/a")
    nx.flush()
    assert nx.read("/b") == data
    nx.unlink("/b")
    nx.flush()
    assert blobs(nx) == set()
    with pytest.raises(IsADirectory):
        nx.copy("/", "/x")


# ---------------------------------------------------------------------- streaming


def test_open_write_read_append(nx: FileSystem) -> None:
    chunk = os.urandom(64 * 1024)
    with nx.open("/s", "wb") as f:
        for _ in range(8):
            f.write(chunk)
    assert nx.stat("/s").size == 8 * len(chunk)
    with nx.open("/s", "ab") as f:
        f.write(b"tail")
    with nx.open("/s", "rb") as r:
        r.seek(-4, os.SEEK_END)
        assert r.read() == b"tail"
        r.seek(len(chunk))
        assert r.read(len(chunk)) == chunk
    with nx.open("/small", "wb") as f:
        f.write(b"tiny")
    with nx.open("/small", "ab") as f:
        f.write(b"!")
    assert nx.read("/small") == b"tiny!"


def test_open_write_discarded_on_exception(nx: FileSystem) -> None:
    nx.write("/keep", b"old")
    with pytest.raises(RuntimeError), nx.open("/keep", "wb") as f:
        f.write(os.urandom(BIG))
        raise RuntimeError("boom")
    assert nx.read("/keep") == b"old"
    with pytest.raises(ValueError):
        nx.open("/keep", "r+b")


def test_reader_keeps_its_version(nx: FileSystem) -> None:
    old = os.urandom(BIG)
    nx.write("/v", old)
    with nx.open("/v", "rb") as r:
        nx.write("/v", os.urandom(BIG))
        nx.flush()  # would reclaim the old blob if the reader did not pin it
        assert r.read() == old
    nx.flush()
    assert len(blobs(nx)) == 1


# ---------------------------------------------------------------------- reclaim & gc


def test_overwrite_and_unlink_reclaim_blobs(nx: FileSystem) -> None:
    nx.write("/f", os.urandom(BIG))
    nx.write("/f", os.urandom(BIG))
    nx.flush()
    assert blobs(nx) == {nx.stat("/f").content_id}
    nx.unlink("/f")
    nx.flush()
    assert blobs(nx) == set()


def test_identical_content_stored_once(nx: FileSystem) -> None:
    data = os.urandom(BIG)
    for i in range(5):
        nx.write(f"/dup/{i}", data)
    assert len(blobs(nx)) == 1
    for i in range(4):
        nx.unlink(f"/dup/{i}")
    nx.flush()
    assert nx.read("/dup/4") == data


def test_gc_reclaims_orphans_only(nx: FileSystem) -> None:
    nx.write("/live", os.urandom(BIG))
    orphan = store_of(nx).put(os.urandom(BIG)).content_id
    report = nx.gc(grace=3600)
    assert report.reclaimed == 0 and report.kept_young == 1
    report = nx.gc(grace=0, dry_run=True)
    assert report.reclaimed == 1 and orphan in blobs(nx)
    report = nx.gc(grace=0)
    assert report.reclaimed == 1 and report.bytes_reclaimed == BIG
    assert blobs(nx) == {nx.stat("/live").content_id}


# ---------------------------------------------------------------------- mounts, zones, sys


def test_mount_store_and_unmount(nx: FileSystem, tmp_path: Path) -> None:
    uri = f"local://{tmp_path}/second"
    nx.mount("/m", uri)
    meta = nx.write("/m/f", os.urandom(BIG))
    assert meta.store == uri
    assert nx.stat("/m").entry_type is EntryType.MOUNT
    assert [m.path for m in nx.mounts()] == ["/", "/m"]
    with pytest.raises(MountError):
        nx.mount("/m", uri)
    with pytest.raises(MountError):
        nx.rmdir("/m")
    with pytest.raises(DirectoryNotEmpty):
        nx.unmount("/m")
    nx.rename("/m/f", "/moved")  # blob stays in its store, the inode remembers it
    assert nx.stat("/moved").store == uri
    with pytest.raises(DirectoryNotEmpty):
        nx.unmount("/m")  # /moved still uses the store
    nx.unlink("/moved")
    nx.unmount("/m")
    assert not nx.exists("/m")
    with pytest.raises(MountError):
        nx.unmount("/m")
    with pytest.raises(MountError):
        nx.mount("/x", "ftp://nope")
    nx.write("/busy/f", b"1")
    with pytest.raises(MountError):
        nx.mount("/busy", uri)


def test_zones(nx: FileSystem) -> None:
    nx.zone_create("proj")
    with pytest.raises(AlreadyExists):
        nx.zone_create("proj")
    with pytest.raises(InvalidPath):
        nx.zone_create("Bad Name")
    with pytest.raises(NotFound):
        nx.mount("/p", "zone://nope")
    nx.mount("/p", "zone://proj")
    meta = nx.write("/p/doc", b"in zone")
    assert meta.zone == "proj" and meta.path == "/p/doc"
    assert nx.readdir("/p").names == ["doc"]
    with pytest.raises(MountError):
        nx.rename("/p/doc", "/outside")
    with pytest.raises(MountError):
        nx.mount("/q", "zone://proj")
    nx.unmount("/p")
    assert not nx.exists("/p/doc")
    nx.mount("/again", "zone://proj")
    assert nx.read("/again/doc") == b"in zone"
    assert [(z.name, z.mounted_at) for z in nx.zones()] == [("root", "/"), ("proj", "/again")]
    assert nx.readdir("/__sys__/zones").names == ["proj", "root"]


def test_sys_tree_is_read_only(nx: FileSystem) -> None:
    assert b'"uri": "local:objects"' in nx.read("/__sys__/mounts")
    assert "__sys__" not in nx.readdir("/").names
    for op in (
        lambda: nx.write("/__sys__/x", b"1"),
        lambda: nx.mkdir("/__sys__/d"),
        lambda: nx.unlink("/__sys__/mounts"),
        lambda: nx.rename("/__sys__/mounts", "/m"),
    ):
        with pytest.raises(PermissionDenied):
            op()


def test_closed_kernel_raises(tmp_path: Path) -> None:
    fs = _memory_fs(tmp_path)
    fs.close()
    fs.close()  # idempotent
    with pytest.raises(StoreClosed):
        fs.write("/x", b"1")


# ---------------------------------------------------------------------- persistence


def test_everything_persists_across_reopen(tmp_path: Path) -> None:
    data = os.urandom(BIG)
    with nexusfs.connect(data_dir=tmp_path) as nx:
        nx.write("/a/big", data)
        nx.write("/a/small", b"s")
        nx.zone_create("z")
        nx.mount("/z", "zone://z")
        nx.write("/z/in", b"zoned")
        nx.mount("/m", f"local://{tmp_path}/m")
        nx.write("/m/f", data[:50_000])
        rev = nx.revision()
    with nexusfs.connect(data_dir=tmp_path) as nx:
        assert nx.read("/a/big") == data and nx.read("/a/small") == b"s"
        assert nx.read("/z/in") == b"zoned" and nx.read("/m/f") == data[:50_000]
        assert [m.path for m in nx.mounts()] == ["/", "/m", "/z"]
        assert nx.revision() == rev
        assert nx.write("/a/small", b"t").version > rev


def test_second_process_gets_store_locked(tmp_path: Path) -> None:
    import subprocess
    import sys

    with nexusfs.connect(data_dir=tmp_path):
        code = (
            "import nexusfs, sys\n"
            "try:\n"
            f"    nexusfs.connect(data_dir={str(tmp_path)!r})\n"
            "except nexusfs.StoreLocked as e:\n"
            "    print('locked:', e); sys.exit(0)\n"
            "sys.exit(1)\n"
        )
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
        assert "locked" in out.stdout


def test_write_retries_when_gc_reclaims_its_deduplicated_blob(
    embedded: NexusFS, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Fault injection: gc deletes an orphan blob right after a write deduplicated
    onto it and before the write commits. The write must not commit a dangling inode."""
    nx = embedded
    store = nx._stores["local:objects"]
    data = os.urandom(BIG)
    store.put(data)  # an orphan, as a crash would leave it
    real_put = store.put
    calls = []

    def put_then_reclaim(payload: object) -> object:
        info = real_put(payload)  # type: ignore[arg-type]
        calls.append(info.content_id)
        if len(calls) == 1:
            store.delete(info.content_id)  # what gc(grace=0) would do at this moment
        return info

    monkeypatch.setattr(store, "put", put_then_reclaim)
    meta = nx.write("/f", data)
    assert len(calls) == 2
    assert store.exists(meta.content_id or "")
    assert nx.read("/f") == data


def test_kernel_runs_on_a_metastore_alone() -> None:
    """Kernel init takes only a metastore: small files work inline; bytes that need an
    object store fail clearly until one is mounted."""
    fs = NexusFS(MemoryMetastore(), zone_opener=lambda n: MemoryMetastore())
    with fs:
        fs.write("/small", b"inline")
        assert fs.read("/small") == b"inline"
        with pytest.raises(MountError):
            fs.write("/big", os.urandom(BIG))
        fs.mount("/", "memory://blobs")
        fs.write("/big", b"b" * BIG)
        assert fs.read("/big") == b"b" * BIG
