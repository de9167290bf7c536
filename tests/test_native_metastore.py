"""Tests specific to the native redb metastore: open errors, typing, GIL, log, stats."""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import nexusfs
from nexusfs import _native
from nexusfs.abc import Durability, MetastoreABC
from nexusfs.drivers.metastore.redb import RedbMetastore
from nexusfs.errors import Conflict, CorruptStore, NotFound, StoreClosed, StoreLocked

_KERNEL_DIR = str(Path(nexusfs.__file__).resolve().parent.parent)


def test_is_native_subclass_with_native_dispatch(tmp_path: Path) -> None:
    with RedbMetastore(tmp_path / "db") as store:
        assert isinstance(store, MetastoreABC)
        assert isinstance(store, _native.Metastore)
        # Methods resolve to the Rust implementation, not a Python wrapper.
        for name in ("get", "get_many", "put", "delete", "cas", "scan", "batch", "flush"):
            assert type(getattr(RedbMetastore, name)).__name__ == "method_descriptor", name


def test_path_and_durability_types(tmp_path: Path) -> None:
    with RedbMetastore(tmp_path / "a") as store:
        assert store.durability is Durability.DEFERRED
        assert store.path == str(tmp_path / "a")
    with RedbMetastore(str(tmp_path / "b"), "immediate") as store:
        assert store.durability is Durability.IMMEDIATE
    raw = _native.Metastore(str(tmp_path / "c"), Durability.IMMEDIATE)
    assert raw.durability == "immediate"
    raw.close()
    with pytest.raises(ValueError):
        RedbMetastore(tmp_path / "d", "sometimes")
    with pytest.raises(ValueError):
        _native.Metastore(str(tmp_path / "d"), "sometimes")


def test_missing_directory_raises_not_found(tmp_path: Path) -> None:
    with pytest.raises(NotFound) as info:
        RedbMetastore(tmp_path / "no" / "such" / "dir" / "db")
    assert isinstance(info.value, FileNotFoundError)
    assert not (tmp_path / "no").exists()


def test_missing_file_without_create_raises_not_found(tmp_path: Path) -> None:
    with pytest.raises(NotFound):
        RedbMetastore(tmp_path / "db", create=False)
    assert not (tmp_path / "db").exists()


@pytest.mark.parametrize(
    "content",
    [b"this is not a redb file at all" * 100, os.urandom(1 << 16), b"\x00" * 8192, b"x"],
    ids=["text", "random", "zeros", "one-byte"],
)
def test_garbage_file_raises_corrupt_store(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "db"
    path.write_bytes(content)
    with pytest.raises(CorruptStore):
        RedbMetastore(path)
    assert path.read_bytes() == content  # nothing changed on disk


def test_open_twice_in_process_raises_store_locked(tmp_path: Path) -> None:
    with RedbMetastore(tmp_path / "db") as store:
        store.put(b"k", b"v")
        with pytest.raises(StoreLocked):
            RedbMetastore(tmp_path / "db")
        assert store.get(b"k") == b"v"  # the first handle is unaffected
    with RedbMetastore(tmp_path / "db") as again:  # lock released by close()
        assert again.get(b"k") == b"v"


def test_other_process_raises_store_locked(tmp_path: Path) -> None:
    path = tmp_path / "db"
    script = (
        "import sys, time\n"
        "from nexusfs.drivers.metastore.redb import RedbMetastore\n"
        "s = RedbMetastore(sys.argv[1])\n"
        "print('open', flush=True)\n"
        "sys.stdin.read()\n"
        "s.close()\n"
    )
    env = dict(os.environ, PYTHONPATH=_KERNEL_DIR + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen(
        [sys.executable, "-c", script, str(path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=env,
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline() == b"open\n"
        with pytest.raises(StoreLocked):
            RedbMetastore(path)
    finally:
        proc.communicate(b"", timeout=30)
    assert proc.returncode == 0
    RedbMetastore(path).close()


def test_dropped_handle_releases_lock(tmp_path: Path) -> None:
    store = RedbMetastore(tmp_path / "db")
    store.put(b"k", b"v")
    del store
    gc.collect()
    with RedbMetastore(tmp_path / "db") as store:
        assert store.get(b"k") == b"v"


def test_closed_store_raises_store_closed(tmp_path: Path) -> None:
    store = RedbMetastore(tmp_path / "db")
    store.close()
    assert store.closed
    with pytest.raises(StoreClosed):
        store.get(b"k")
    with pytest.raises(StoreClosed):
        store.put(b"k", b"v")
    store.close()


def test_conflict_names_the_key(tmp_path: Path) -> None:
    with RedbMetastore(tmp_path / "db") as store:
        with pytest.raises(Conflict, match=r"b'\\x00key\\xff'"):
            store.batch(puts=[(b"a", b"1")], checks=[(b"\x00key\xff", b"x")])
        assert store.get(b"a") is None
        assert store.stats()["commits"] == 0


def test_flush_checkpoints_and_empties_log(tmp_path: Path) -> None:
    wal = Path(str(tmp_path / "db") + ".wal")
    with RedbMetastore(tmp_path / "db", flush_interval_ms=0) as store:
        for i in range(10):
            store.put(b"k%d" % i, b"v")
        stats = store.stats()
        assert stats["commits"] == 10 and stats["checkpoints"] == 0
        assert stats["wal_bytes"] == wal.stat().st_size > 0
        store.flush()
        stats = store.stats()
        assert stats["checkpoints"] == 1 and stats["wal_bytes"] == 0
        assert stats["durable_seq"] == stats["seq"] == 10
        assert wal.stat().st_size == 0
        store.flush()  # nothing new: no extra checkpoint
        assert store.stats()["checkpoints"] == 1


def test_background_flusher_checkpoints(tmp_path: Path) -> None:
    with RedbMetastore(tmp_path / "db", flush_interval_ms=20) as store:
        store.put(b"k", b"v")
        deadline = time.monotonic() + 5
        while store.stats()["checkpoints"] == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        stats = store.stats()
        assert stats["checkpoints"] >= 1
        assert stats["wal_bytes"] == 0
        assert stats["last_error"] is None


def test_no_op_mutations_do_not_commit(tmp_path: Path) -> None:
    with RedbMetastore(tmp_path / "db") as store:
        assert store.delete(b"missing") is False
        assert store.cas(b"missing", None, None) is True
        assert store.cas(b"missing", b"x", b"y") is False
        store.batch()
        assert store.stats()["commits"] == 0


def test_immediate_mode_syncs_each_commit(tmp_path: Path) -> None:
    with RedbMetastore(tmp_path / "db", Durability.IMMEDIATE, flush_interval_ms=0) as store:
        before = store.stats()["wal_fsyncs"]
        for i in range(5):
            store.put(b"k%d" % i, b"v")
        assert store.stats()["wal_fsyncs"] - before >= 5


def test_large_log_triggers_checkpoint(tmp_path: Path) -> None:
    value = b"x" * (1 << 20)
    with RedbMetastore(tmp_path / "db", flush_interval_ms=0) as store:
        for i in range(70):
            store.put(b"k%d" % i, value)
        stats = store.stats()
        assert stats["checkpoints"] >= 1
        assert stats["wal_bytes"] < 64 << 20
    with RedbMetastore(tmp_path / "db") as store:
        assert len(store.scan(keys_only=True)) == 70
        assert store.get(b"k69") == value


def test_gil_released_during_commit(tmp_path: Path) -> None:
    """Python threads keep running (and reading) while a big batch commits in Rust."""
    with RedbMetastore(tmp_path / "db") as store:
        store.put(b"probe", b"1")
        puts = [(b"k%07d" % i, b"v" * 16) for i in range(300_000)]
        done = threading.Event()

        def write() -> None:
            store.batch(puts=puts)
            done.set()

        t = threading.Thread(target=write)
        t.start()
        reads_during = 0
        saw_partial = False
        while not done.is_set():
            assert store.get(b"probe") == b"1"
            n = len(store.scan(b"k", keys_only=True, limit=10))
            saw_partial |= n not in (0, 10)
            reads_during += 1
        t.join()
        assert reads_during > 5
        assert not saw_partial
        assert store.get(b"k0299999") == b"v" * 16


def test_stats_and_repr(tmp_path: Path) -> None:
    with RedbMetastore(tmp_path / "db") as store:
        stats = store.stats()
        for key in ("wal_bytes", "commits", "checkpoints", "replayed_records", "seq"):
            assert isinstance(stats[key], int), key
        assert "RedbMetastore" in repr(store)


def test_orphan_log_is_not_replayed_into_a_new_store(tmp_path: Path) -> None:
    path = tmp_path / "db"
    wal = Path(str(path) + ".wal")
    with RedbMetastore(path, flush_interval_ms=0) as store:
        store.put(b"k", b"v")
        store.flush()
        store.put(b"k2", b"v2")
        saved = wal.read_bytes()
    assert saved
    path.unlink()
    wal.write_bytes(saved)  # the database file was deleted, its log left behind
    with RedbMetastore(path) as store:
        assert store.scan() == []
        assert store.stats()["replayed_records"] == 0
