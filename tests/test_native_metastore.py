"""Tests specific to the native redb metastore: open errors, typing, GIL, log, stats."""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

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
        for key in (
            "wal_bytes",
            "commits",
            "checkpoints",
            "spills",
            "overlay_entries",
            "replayed_records",
            "seq",
        ):
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


# ------------------------------------------------------------ in-memory overlay (memtable)

_KEYS = st.lists(st.sampled_from([b"", b"\x00", b"a", b"b", b"\xff"]), max_size=3).map(b"".join)
_VALUES = st.binary(max_size=4)
_OPTIONAL_KEY = st.none() | _KEYS
_OP = st.one_of(
    st.tuples(st.just("put"), _KEYS, _VALUES),
    st.tuples(st.just("delete"), _KEYS),
    st.tuples(
        st.just("batch"),
        st.lists(st.tuples(_KEYS, _VALUES), max_size=4),
        st.lists(_KEYS, max_size=3),
    ),
    st.tuples(st.just("cas"), _KEYS, st.none() | _VALUES, st.none() | _VALUES, st.booleans()),
    st.tuples(st.just("flush")),
    st.tuples(
        st.just("scan"),
        st.sampled_from([b"", b"a", b"\xff", b"b\x00"]),
        _OPTIONAL_KEY,
        _OPTIONAL_KEY,
        _OPTIONAL_KEY,
        st.none() | st.integers(0, 6),
        st.booleans(),
    ),
    st.tuples(st.just("get_many"), st.lists(_KEYS, max_size=5)),
)


def _model_scan(
    model: dict[bytes, bytes],
    prefix: bytes,
    start: bytes | None,
    end: bytes | None,
    after: bytes | None,
    limit: int | None,
    keys_only: bool,
) -> list[tuple[bytes, bytes]]:
    rows = [
        (k, b"" if keys_only else v)
        for k, v in sorted(model.items())
        if k.startswith(prefix)
        and (start is None or k >= start)
        and (end is None or k < end)
        and (after is None or k > after)
    ]
    return rows if limit is None else rows[:limit]


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(ops=st.lists(_OP, max_size=60), spill_entries=st.sampled_from([1, 3, 8, 1 << 16]))
def test_overlay_merge_matches_dict_model(
    tmp_path: Path, ops: list[tuple], spill_entries: int
) -> None:
    """Reads merge the overlay (puts, overwrites, tombstones) over redb correctly, whatever
    has been spilled or checkpointed when: random flush points, and spills (background
    and inline) triggered by a tiny overlay limit."""
    d = Path(tempfile.mkdtemp(dir=tmp_path))
    path = str(d / "db")
    model: dict[bytes, bytes] = {}
    store = _native.Metastore(path, "deferred", 0, spill_entries=spill_entries)
    try:
        for op in ops:
            kind = op[0]
            if kind == "put":
                store.put(op[1], op[2])
                model[op[1]] = op[2]
            elif kind == "delete":
                assert store.delete(op[1]) == (op[1] in model)
                model.pop(op[1], None)
            elif kind == "batch":
                store.batch(puts=op[1], deletes=op[2])
                for k in op[2]:
                    model.pop(k, None)
                model.update(op[1])
            elif kind == "cas":
                _, key, expected, new, use_current = op
                if use_current:  # a cas that succeeds (otherwise it almost never would)
                    expected = model.get(key)
                ok = model.get(key) == expected
                assert store.cas(key, expected, new) == ok
                if ok:
                    if new is None:
                        model.pop(key, None)
                    else:
                        model[key] = new
            elif kind == "flush":
                store.flush()
            elif kind == "scan":
                _, prefix, start, end, after, limit, keys_only = op
                got = store.scan(
                    prefix, start=start, end=end, after=after, limit=limit, keys_only=keys_only
                )
                assert got == _model_scan(model, prefix, start, end, after, limit, keys_only)
            else:
                assert store.get_many(op[1]) == [model.get(k) for k in op[1]]
        assert store.scan() == sorted(model.items())
        for k in list(model)[:5]:
            assert store.get(k) == model[k]
    finally:
        store.close()
    # Everything (overlay, spilled layers, log) reaches the file on close.
    with RedbMetastore(path, create=False) as again:
        assert again.scan() == sorted(model.items())
        assert again.stats()["replayed_records"] == 0


def test_get_many_and_scan_never_see_a_half_applied_batch(tmp_path: Path) -> None:
    """A writer thread flips 8 keys together (all put with one value, or all deleted) while
    spills and checkpoints run; every get_many and scan sees all or none of each batch."""
    keys = [b"g/%d" % i for i in range(8)]
    store = _native.Metastore(str(tmp_path / "db"), "deferred", 5, spill_entries=16)
    stop = threading.Event()
    errors: list[BaseException] = []

    def writer() -> None:
        try:
            n = 0
            while not stop.is_set():
                n += 1
                if n % 5 == 0:
                    store.batch(deletes=keys)
                else:
                    store.batch(puts=[(k, b"%d" % n) for k in keys])
                    store.put(b"noise/%d" % (n % 50), b"x" * (n % 7))
                if n % 97 == 0:
                    store.flush()
        except BaseException as e:
            errors.append(e)

    t = threading.Thread(target=writer)
    t.start()
    try:
        deadline = time.monotonic() + 3
        reads = 0
        while time.monotonic() < deadline:
            values = store.get_many(keys)
            assert len(set(values)) == 1, values
            rows = store.scan(b"g/")
            assert len(rows) in (0, 8), rows
            assert len({v for _, v in rows}) <= 1, rows
            reads += 1
    finally:
        stop.set()
        t.join()
    assert not errors, errors
    assert reads > 50
    stats = store.stats()
    assert stats["spills"] > 0 and stats["checkpoints"] > 0, stats
    store.close()


def test_overlay_spills_to_redb_while_writes_continue(tmp_path: Path) -> None:
    """Past its limit the overlay is written into redb in the background; commits keep
    landing (and overwriting spilled keys) meanwhile, and nothing is lost or stale."""
    path = str(tmp_path / "db")
    store = _native.Metastore(path, "deferred", 0, spill_entries=500)
    model: dict[bytes, bytes] = {}
    for rnd in range(4):
        for i in range(3000):
            key = b"s/%05d" % ((i * 7 + rnd) % 5000)
            if i % 11 == 5:
                store.delete(key)
                model.pop(key, None)
            else:
                value = b"%d:%d" % (rnd, i)
                store.put(key, value)
                model[key] = value
    deadline = time.monotonic() + 10
    while store.stats()["overlay_entries"] > 2000 and time.monotonic() < deadline:
        time.sleep(0.01)
    stats = store.stats()
    assert stats["spills"] >= 5, stats
    assert stats["checkpoints"] == 0, stats  # spills are not checkpoints
    assert stats["overlay_entries"] <= 2000, stats
    assert stats["durable_seq"] == 0 and stats["wal_bytes"] > 0, stats
    assert store.scan(b"s/") == sorted(model.items())
    keys = [*sorted(model)[::37], b"s/missing"]
    assert store.get_many(keys) == [model.get(k) for k in keys]
    store.close()
    with RedbMetastore(path, create=False) as again:
        assert again.scan(b"s/") == sorted(model.items())


def test_large_batch_spills_inline_and_stays_readable(tmp_path: Path) -> None:
    """A batch far past the overlay limit is spilled by the committing thread (back-
    pressure), then reads merge it with later overwrites and deletes."""
    with RedbMetastore(tmp_path / "db", flush_interval_ms=0) as store:
        puts = [(b"b%06d" % i, b"v") for i in range(300_000)]
        store.batch(puts=puts)
        assert store.stats()["spills"] >= 1
        assert store.stats()["overlay_entries"] < 300_000
        store.put(b"b000010", b"new")
        store.delete(b"b000011")
        assert store.scan(b"b00001", limit=3) == [
            (b"b000010", b"new"),
            (b"b000012", b"v"),
            (b"b000013", b"v"),
        ]
        assert len(store.scan(keys_only=True)) == 299_999
