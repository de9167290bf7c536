"""LocalObjectStore specifics: on-disk layout, temp cleanup, durability ordering, injected
faults, crash safety under SIGKILL and bounded memory."""

from __future__ import annotations

import errno
import os
import random
import re
import signal
import stat
import subprocess
import sys
import textwrap
import time
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path

import blake3
import pytest

import nexusfs
from nexusfs.abc import Durability
from nexusfs.drivers.objectstore.local import LocalObjectStore
from nexusfs.errors import InvalidPath, NotFound

KERNEL_DIR = str(Path(nexusfs.__file__).resolve().parent.parent)
HEX64 = re.compile(r"[0-9a-f]{64}")


def bid(data: bytes) -> str:
    return blake3.blake3(data).hexdigest()


def tmp_files(root: Path) -> list[str]:
    return sorted(p.name for p in (root / "tmp").iterdir())


def object_files(root: Path) -> list[Path]:
    return sorted(p for p in (root / "objects").rglob("*") if p.is_file())


@pytest.fixture(params=["deferred", "immediate"])
def durability(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def store(tmp_path: Path, durability: str) -> Iterator[LocalObjectStore]:
    s = LocalObjectStore(tmp_path / "store", durability)
    yield s
    s.close()


# ------------------------------------------------------------------------------ layout


def test_layout_on_disk(store: LocalObjectStore) -> None:
    root = Path(store.root)
    data = os.urandom(12345)
    cid = store.put(data).content_id
    blob = root / "objects" / cid[:2] / cid[2:]
    assert blob.is_file()
    assert blob.read_bytes() == data
    assert store.path_of(cid) == blob
    assert object_files(root) == [blob]
    assert not stat.S_IMODE(blob.stat().st_mode) & 0o222, "blobs are read-only"
    assert tmp_files(root) == []
    assert store.uri == f"local://{store.root}"


def test_root_created_with_parents(tmp_path: Path) -> None:
    s = LocalObjectStore(tmp_path / "a" / "b", "immediate")
    assert (tmp_path / "a" / "b" / "objects").is_dir()
    assert (tmp_path / "a" / "b" / "tmp").is_dir()
    s.close()


def test_dedup_keeps_original_file(store: LocalObjectStore) -> None:
    data = os.urandom(4 << 20)
    first = store.put(data)
    inode = store.path_of(first.content_id).stat().st_ino
    time.sleep(0.01)
    second = store.put(data)
    assert second.content_id == first.content_id
    assert store.path_of(first.content_id).stat().st_ino == inode
    assert second.created_at == pytest.approx(first.created_at, abs=0.01)
    assert tmp_files(Path(store.root)) == []


def test_torn_existing_blob_is_replaced(store: LocalObjectStore) -> None:
    """A wrong-size file under an id (e.g. deferred blob torn by power loss) is
    replaced by the next commit of that content instead of being deduplicated onto."""
    data = os.urandom(100_000)
    cid = store.put(data).content_id
    path = store.path_of(cid)
    path.chmod(0o644)
    path.write_bytes(data[:500])
    assert not store.verify(cid)
    store.put(data)
    assert store.verify(cid)
    assert store.read(cid) == data


def test_list_ignores_junk(store: LocalObjectStore) -> None:
    root = Path(store.root)
    cid = store.put(b"real").content_id
    junk = [
        root / "objects" / "zz" / ("0" * 62),
        root / "objects" / "ab" / "short",
        root / "objects" / "ab" / ("0" * 62 + ".tmp"),
        root / "objects" / "AB" / ("0" * 62),
        root / "objects" / ("0" * 64),
        root / "tmp" / ("1" * 64),
    ]
    for p in junk:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"junk")
    (root / "objects" / "cd" / ("c" * 62)).mkdir(parents=True)
    assert list(store.list()) == [cid]


def test_crafted_ids_never_escape_root(store: LocalObjectStore, tmp_path: Path) -> None:
    outside = tmp_path / "secret"
    outside.write_bytes(b"secret")
    for bad in ["../../secret", "../" * 21 + "x", "/" + "0" * 63, "0" * 62 + "/."]:
        with pytest.raises(InvalidPath):
            store.read(bad)
        with pytest.raises(InvalidPath):
            store.delete(bad)
        with pytest.raises(InvalidPath):
            store.path_of(bad)
    assert outside.read_bytes() == b"secret"


def test_read_while_deleted(store: LocalObjectStore) -> None:
    data = os.urandom(3 << 20)
    cid = store.put(data).content_id
    it = store.iter_chunks(cid, chunk_size=1 << 20)
    first = next(it)
    assert store.delete(cid)
    assert first + b"".join(it) == data
    with pytest.raises(NotFound):
        next(store.iter_chunks(cid))


# ------------------------------------------------------------------------ temp cleanup


def test_stale_temps_removed_on_open(tmp_path: Path) -> None:
    root = tmp_path / "s"
    LocalObjectStore(root).close()
    stale, fresh = root / "tmp" / "stale.tmp", root / "tmp" / "fresh.tmp"
    stale.write_bytes(b"partial")
    fresh.write_bytes(b"partial")
    old = time.time() - 7200
    os.utime(stale, (old, old))
    s = LocalObjectStore(root, temp_grace=3600)
    assert tmp_files(root) == ["fresh.tmp"]
    assert s.cleanup_temp() == 0  # default age is the grace given at open
    assert s.cleanup_temp(max_age=0) == 1
    assert tmp_files(root) == []
    s.close()


def test_cleanup_spares_live_writers(store: LocalObjectStore) -> None:
    root = Path(store.root)
    (root / "tmp" / "orphan.tmp").write_bytes(b"x")
    with store.open_writer() as writer:
        writer.write(b"in progress" * 1000)
        assert store.cleanup_temp(max_age=0) == 1
        assert len(tmp_files(root)) == 1  # the live writer's temp
        writer.write(b"more")
        info = writer.commit()
    assert store.read(info.content_id) == b"in progress" * 1000 + b"more"
    assert tmp_files(root) == []


# -------------------------------------------------------------------- durability order


class SyscallLog:
    """Records fsync/rename calls by path (fds resolved through /proc/self/fd)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.events: list[tuple[str, str]] = []
        real_fsync, real_rename = os.fsync, os.rename

        def fsync(fd: int) -> None:
            self.events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
            real_fsync(fd)

        def rename(src: str, dst: str) -> None:
            self.events.append(("rename", str(dst)))
            real_rename(src, dst)

        monkeypatch.setattr(os, "fsync", fsync)
        monkeypatch.setattr(os, "rename", rename)


def test_immediate_fsyncs_file_then_renames_then_fsyncs_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    s = LocalObjectStore(tmp_path / "s", "immediate")
    log = SyscallLog(monkeypatch)
    cid = s.put(os.urandom(3 << 20)).content_id
    final = str(s.path_of(cid))
    shard = os.path.dirname(final)
    kinds = [(k, p) for k, p in log.events]
    assert kinds[-2] == ("rename", final)
    assert kinds[-1] == ("fsync", shard)
    temp_prefix = str(tmp_path / "s" / "tmp") + os.sep
    file_syncs = [i for i, (k, p) in enumerate(kinds) if k == "fsync" and p.startswith(temp_prefix)]
    assert file_syncs and file_syncs[0] < len(kinds) - 2, "temp fsynced before rename"
    assert ("fsync", str(tmp_path / "s" / "objects")) in kinds, "new shard made durable"
    log.events.clear()
    s.flush()
    assert log.events == []
    s.close()


def test_deferred_defers_fsync_to_flush(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    s = LocalObjectStore(tmp_path / "s", "deferred")
    log = SyscallLog(monkeypatch)
    ids = [s.put(os.urandom(n)).content_id for n in (10, 100_000, 3 << 20)]
    assert [k for k, _ in log.events] == ["rename"] * 3
    log.events.clear()
    s.flush()
    synced = {p for k, p in log.events if k == "fsync"}
    for cid in ids:
        assert str(s.path_of(cid)) in synced
        assert os.path.dirname(s.path_of(cid)) in synced
    assert str(tmp_path / "s" / "objects") in synced
    log.events.clear()
    s.flush()
    assert log.events == [], "nothing left to sync"
    s.put(b"late")
    s.close()  # close flushes
    assert any(k == "fsync" for k, _ in log.events)


def test_immediate_dedup_onto_unsynced_blob_syncs_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "s"
    deferred = LocalObjectStore(root, "deferred")
    data = os.urandom(50_000)
    cid = deferred.put(data).content_id
    immediate = LocalObjectStore(root, "immediate")
    log = SyscallLog(monkeypatch)
    immediate.put(data)
    assert ("fsync", str(immediate.path_of(cid))) in log.events


# ----------------------------------------------------------------------- fault inject


def _fail(name: str) -> Callable[..., None]:
    def fail(*args: object, **kwargs: object) -> None:
        raise OSError(errno.EIO, f"injected {name} failure")

    return fail


@pytest.mark.parametrize("size", [0, 1000, 5 << 20])
def test_rename_failure_leaves_nothing(
    store: LocalObjectStore, monkeypatch: pytest.MonkeyPatch, size: int
) -> None:
    data = os.urandom(size)
    monkeypatch.setattr(os, "rename", _fail("rename"))
    with pytest.raises(OSError, match="injected rename"):
        store.put(data)
    monkeypatch.undo()
    assert not store.exists(bid(data))
    assert list(store.list()) == []
    assert tmp_files(Path(store.root)) == []
    assert store.put(data).content_id == bid(data)  # store still usable


def test_fsync_failure_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    s = LocalObjectStore(tmp_path / "s", "immediate")
    data = os.urandom(3 << 20)
    monkeypatch.setattr(os, "fsync", _fail("fsync"))
    with s.open_writer() as writer:
        writer.write(data)
        with pytest.raises(OSError, match="injected fsync"):
            writer.commit()
    monkeypatch.undo()
    assert not s.exists(bid(data))
    assert list(s.list()) == []
    assert tmp_files(tmp_path / "s") == []
    s.close()


def test_deferred_flush_failure_keeps_blobs_pending(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    s = LocalObjectStore(tmp_path / "s", "deferred")
    cid = s.put(os.urandom(1000)).content_id
    monkeypatch.setattr(os, "fsync", _fail("fsync"))
    with pytest.raises(OSError):
        s.flush()
    monkeypatch.undo()
    log = SyscallLog(monkeypatch)
    s.flush()
    assert ("fsync", str(s.path_of(cid))) in log.events
    s.close()


@pytest.mark.parametrize("fail_at", [1, 3])
def test_write_failure_mid_stream(
    store: LocalObjectStore, monkeypatch: pytest.MonkeyPatch, fail_at: int
) -> None:
    """ENOSPC from os.write (in the pipeline thread for big chunks) aborts the writer."""
    real_write = os.write
    calls = 0

    def write(fd: int, data: bytes | memoryview) -> int:
        nonlocal calls
        calls += 1
        if calls == fail_at:
            raise OSError(errno.ENOSPC, "injected: no space left")
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", write)
    writer = store.open_writer()
    with pytest.raises(OSError, match="no space"):
        for _ in range(6):
            writer.write(os.urandom(2 << 20))
    with pytest.raises(ValueError):
        writer.write(b"x")
    monkeypatch.undo()
    assert list(store.list()) == []
    assert tmp_files(Path(store.root)) == []


def test_short_writes_are_completed(
    store: LocalObjectStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_write = os.write

    def short_write(fd: int, data: bytes | memoryview) -> int:
        return real_write(fd, memoryview(data)[: max(1, len(data) // 3)])

    monkeypatch.setattr(os, "write", short_write)
    data = os.urandom((5 << 20) + 3)
    info = store.put(data)
    monkeypatch.undo()
    assert store.read(info.content_id) == data


# ------------------------------------------------------------------------ crash safety

CHILD = textwrap.dedent(
    """
    import os, random, sys, time
    from nexusfs.drivers.objectstore.local import LocalObjectStore

    root, seed, durability = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    rng = random.Random(seed)
    store = LocalObjectStore(root, durability, temp_grace=1e9)
    previous = b""
    sys.stdout.write("ready\\n")
    sys.stdout.flush()
    while True:
        if previous and rng.random() < 0.15:
            data = previous  # duplicate content: exercises the dedup path
        else:
            size = rng.choice([0, 1, 999, 70_000, 1 << 20, (2 << 20) + 5, 3 << 20])
            data = os.urandom(size)
        step = rng.choice([4096, 65_536, 1 << 20, 3 << 20])
        with store.open_writer() as writer:
            for i in range(0, len(data), step):
                writer.write(data[i : i + step])
            info = writer.commit()
        sys.stdout.write(f"{info.content_id} {info.size}\\n")
        sys.stdout.flush()
        previous = data
        if rng.random() < 0.3:
            store.flush()
        time.sleep(rng.random() * 0.004)
    """
)


def test_crash_safety_sigkill(tmp_path: Path) -> None:
    root = tmp_path / "crash"
    env = {**os.environ, "PYTHONPATH": KERNEL_DIR}
    rng = random.Random(1234)
    acked: dict[str, int] = {}
    verified: set[str] = set()
    kills = 0
    strays_seen = 0
    for run in range(12):
        durability = "immediate" if run % 2 else "deferred"
        proc = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(root), str(run), durability],
            stdout=subprocess.PIPE,
            env=env,
        )
        assert proc.stdout is not None
        assert proc.stdout.readline() == b"ready\n"
        time.sleep(rng.uniform(0.02, 0.35))
        proc.send_signal(signal.SIGKILL)
        out = proc.stdout.read()
        proc.wait()
        assert proc.returncode == -signal.SIGKILL
        kills += 1
        for line in out.split(b"\n")[:-1]:  # the last element is an unterminated rest
            acked_id, acked_size = line.decode().split()
            assert HEX64.fullmatch(acked_id)
            acked[acked_id] = int(acked_size)

        # every file under objects/ is a complete blob named by its hash
        for path in object_files(root):
            cid = path.parent.name + path.name
            assert HEX64.fullmatch(cid), f"stray name under objects/: {path}"
            if cid not in verified:
                assert bid(path.read_bytes()) == cid, f"torn or partial blob {path}"
                verified.add(cid)
        # every acknowledged blob is present with the acknowledged size
        store = LocalObjectStore(root, temp_grace=1e9)
        present = set(store.list())
        for acked_id, expected_size in acked.items():
            assert acked_id in present, f"acknowledged blob {acked_id} lost"
            assert store.info(acked_id).size == expected_size
        strays_seen += len(tmp_files(root))
        store.cleanup_temp(max_age=0)
        assert tmp_files(root) == []
        store.close()
    assert kills >= 10
    assert len(acked) > 20, "child made too little progress to test anything"
    # final full re-verification through the public API
    store = LocalObjectStore(root)
    for cid in acked:
        assert store.verify(cid)
    store.close()
    print(f"crash test: {kills} kills, {len(acked)} acked blobs, {strays_seen} stray temps")


# ---------------------------------------------------------------------- memory bounds


def test_streaming_memory_bounded(tmp_path: Path) -> None:
    """64 MiB in (reused 1 MiB buffer) and out (iter_chunks): Python heap stays small."""
    s = LocalObjectStore(tmp_path / "s", Durability.DEFERRED)
    chunk = bytearray(os.urandom(1 << 20))
    hasher = blake3.blake3()
    tracemalloc.start()
    try:
        with s.open_writer() as writer:
            for i in range(64):
                chunk[:8] = i.to_bytes(8, "little")
                hasher.update(chunk)
                writer.write(chunk)
            info = writer.commit()
        check = blake3.blake3()
        for piece in s.iter_chunks(info.content_id):
            check.update(piece)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert info.content_id == hasher.hexdigest() == check.hexdigest()
    assert info.size == 64 << 20
    assert peak < 12 << 20, f"peak traced memory {peak / 2**20:.1f} MiB"
    s.close()
