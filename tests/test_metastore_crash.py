"""Crash tests of the redb metastore: real SIGKILLs, torn and stale write-ahead logs.

A child process writes through ``RedbMetastore`` and prints each acknowledged operation
(after the call returned) to stdout; the parent kills it with SIGKILL at a random moment,
reopens the store and checks that it equals the model after every acknowledged operation,
possibly plus the one operation in flight, applied entirely (never partially).
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import nexusfs
from nexusfs.drivers.metastore.redb import RedbMetastore

pytestmark = pytest.mark.slow

_KERNEL_DIR = str(Path(nexusfs.__file__).resolve().parent.parent)

# Operation ``i`` is a deterministic atomic batch: put two fresh keys (same value, so a
# partial batch is detectable); every third op also deletes the keys of op ``i - 2``.
_OPS = textwrap.dedent(
    """
    def op(i):
        value = (b"%d:" % i) * (1 + i % 13)
        puts = [(b"k%06da" % i, value), (b"k%06db" % i, value)]
        deletes = [b"k%06da" % (i - 2), b"k%06db" % (i - 2)] if i % 3 == 0 and i >= 2 else []
        return puts, deletes
    """
)

_CHILD = _OPS + textwrap.dedent(
    """
    import os, sys
    from nexusfs.drivers.metastore.redb import RedbMetastore
    path, durability, interval = sys.argv[1], sys.argv[2], int(sys.argv[3])
    spill = int(sys.argv[5]) if len(sys.argv) > 5 else 0
    if spill:
        # A tiny overlay: commits are spilled into redb (non-durably) all the time.
        from nexusfs import _native
        store = _native.Metastore(path, durability, interval, spill_entries=spill)
    else:
        store = RedbMetastore(path, durability, flush_interval_ms=interval)
    start = int(sys.argv[4])
    out = sys.stdout
    out.write("ready\\n"); out.flush()
    i = start
    while True:
        puts, deletes = op(i)
        if i % 2:
            store.batch(puts=puts, deletes=deletes)
        else:
            store.batch(puts=puts, deletes=deletes, checks=[(puts[0][0], None)])
        # A cas that changes nothing logs nothing; one that fails must not either.
        assert store.cas(b"absent", None, None)
        assert not store.cas(puts[0][0], b"wrong", None)
        out.write("%d\\n" % i); out.flush()
        i += 1
    """
)

_ns: dict[str, object] = {}
exec(_OPS, _ns)
_op = _ns["op"]


def _model(upto: int) -> dict[bytes, bytes]:
    """The store content after ops ``0..upto`` (inclusive)."""
    model: dict[bytes, bytes] = {}
    for i in range(upto + 1):
        puts, deletes = _op(i)  # type: ignore[operator]
        for k in deletes:
            model.pop(k, None)
        model.update(puts)
    return model


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [_KERNEL_DIR, env.get("PYTHONPATH")]))
    return env


def _run_and_kill(
    path: Path, durability: str, interval: int, delay: float, spill_entries: int = 0
) -> int:
    """Run the writer child, SIGKILL it after ``delay`` s; return the last acked op (-1).

    Acks go to a file, not a pipe, so the child never blocks on a full pipe."""
    ack_path = Path(str(path) + ".acks")
    with ack_path.open("wb") as acks:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-c",
                _CHILD,
                str(path),
                durability,
                str(interval),
                "0",
                str(spill_entries),
            ],
            stdout=acks,
            stderr=subprocess.PIPE,
            env=_env(),
        )
    deadline = time.monotonic() + 30
    while not ack_path.read_bytes().startswith(b"ready\n"):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(proc.communicate()[1].decode())
        time.sleep(0.005)
    time.sleep(delay)
    os.kill(proc.pid, signal.SIGKILL)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL, err.decode()
    lines = ack_path.read_bytes().split(b"\n")[1:-1]  # drop "ready" and a partial last line
    acked = [int(x) for x in lines]
    assert acked == list(range(len(acked)))
    return len(acked) - 1


@pytest.mark.parametrize("durability", ["deferred", "immediate"])
def test_sigkill_keeps_every_acknowledged_write(tmp_path: Path, durability: str) -> None:
    rng = random.Random(f"crash-{durability}")
    iterations = 12
    for it in range(iterations):
        path = tmp_path / f"{durability}-{it}.redb"
        interval = rng.choice([15, 100, 1000])
        last = _run_and_kill(path, durability, interval, rng.uniform(0.05, 0.6))
        assert last >= 0, "child acknowledged nothing before the kill"
        with RedbMetastore(path, durability, create=False) as store:
            got = dict(store.scan())
            stats = store.stats()
            ok = got == _model(last) or got == _model(last + 1)
            assert ok, (
                f"iteration {it}: store does not match ops 0..{last} (or one more); "
                f"{len(got)} keys vs {len(_model(last))}; stats {stats}"
            )
            # The store stays writable and consistent after recovery.
            store.put(b"after-crash", b"1")
        with RedbMetastore(path, durability, create=False) as store:
            assert store.get(b"after-crash") == b"1"
            assert store.stats()["replayed_records"] == 0


@pytest.mark.parametrize("durability", ["deferred", "immediate"])
def test_sigkill_during_overlay_spills(tmp_path: Path, durability: str) -> None:
    """With a tiny overlay the child spills into redb constantly (non-durable commits)
    between rare checkpoints; a SIGKILL at any point must still recover every
    acknowledged batch from the log, entirely or not at all."""
    rng = random.Random(f"spill-crash-{durability}")
    for it in range(8):
        path = tmp_path / f"spill-{durability}-{it}.redb"
        interval = rng.choice([0, 50, 1000])
        last = _run_and_kill(path, durability, interval, rng.uniform(0.1, 0.6), spill_entries=8)
        assert last >= 0, "child acknowledged nothing before the kill"
        with RedbMetastore(path, durability, create=False) as store:
            got = dict(store.scan())
            ok = got == _model(last) or got == _model(last + 1)
            assert ok, f"iteration {it}: {len(got)} keys vs {len(_model(last))}"


def _write_without_close(
    path: Path,
    durability: str,
    items: list[tuple[bytes, bytes]],
    flush_first: list[tuple[bytes, bytes]] | None = None,
) -> None:
    """Write ``items`` (one put each) in a child that then dies without checkpointing."""
    script = textwrap.dedent(
        """
        import os, sys, json
        from nexusfs.drivers.metastore.redb import RedbMetastore
        path, durability = sys.argv[1], sys.argv[2]
        first, items = json.loads(sys.stdin.read())
        store = RedbMetastore(path, durability, flush_interval_ms=0)
        for k, v in first:
            store.put(bytes.fromhex(k), bytes.fromhex(v))
        store.flush()
        for k, v in items:
            store.put(bytes.fromhex(k), bytes.fromhex(v))
        os._exit(0)
        """
    )
    import json

    payload = json.dumps(
        [
            [[k.hex(), v.hex()] for k, v in (flush_first or [])],
            [[k.hex(), v.hex()] for k, v in items],
        ]
    )
    subprocess.run(
        [sys.executable, "-c", script, str(path), durability],
        input=payload.encode(),
        check=True,
        env=_env(),
        timeout=60,
    )


def _record_size(key: bytes, value: bytes) -> int:
    return 16 + 1 + 4 + len(key) + 4 + len(value)


@pytest.mark.parametrize("damage", ["cut-1", "cut-half", "flip-last", "zero-last", "garbage-after"])
def test_torn_wal_tail(tmp_path: Path, damage: str) -> None:
    path = tmp_path / "torn.redb"
    wal = Path(str(path) + ".wal")
    items = [(b"key%03d" % i, b"value-%03d" % i) for i in range(20)]
    _write_without_close(path, "deferred", items)
    data = bytearray(wal.read_bytes())
    assert len(data) == sum(_record_size(k, v) for k, v in items)
    last = _record_size(*items[-1])
    if damage == "cut-1":
        data = data[:-1]
    elif damage == "cut-half":
        data = data[: -last // 2]
    elif damage == "flip-last":
        data[-3] ^= 0x40
    elif damage == "zero-last":
        data[-last:] = bytes(last)
    else:
        data += os.urandom(100)
    wal.write_bytes(bytes(data))
    with RedbMetastore(path, create=False) as store:
        expected = dict(items if damage == "garbage-after" else items[:-1])
        assert dict(store.scan()) == expected
        assert store.stats()["replayed_records"] == len(expected)
    assert wal.stat().st_size == 0


def test_corrupt_record_in_the_middle_stops_replay(tmp_path: Path) -> None:
    path = tmp_path / "mid.redb"
    wal = Path(str(path) + ".wal")
    items = [(b"key%03d" % i, b"v%03d" % i) for i in range(10)]
    _write_without_close(path, "deferred", items)
    data = bytearray(wal.read_bytes())
    data[_record_size(*items[0]) * 4 + 20] ^= 0xFF  # inside record 4
    wal.write_bytes(bytes(data))
    with RedbMetastore(path, create=False) as store:
        assert dict(store.scan()) == dict(items[:4])


def test_replay_is_idempotent(tmp_path: Path) -> None:
    """A crash after the replay's durable commit but before the log was emptied."""
    path = tmp_path / "idem.redb"
    wal = Path(str(path) + ".wal")
    items = [(b"k%02d" % i, b"v%02d" % i) for i in range(10)] + [(b"k00", b"again")]
    _write_without_close(path, "deferred", items)
    saved = wal.read_bytes()
    with RedbMetastore(path, create=False) as store:
        assert store.stats()["replayed_records"] == 11
        store.delete(b"k05")  # a later change that a naive re-replay would not undo...
        store.put(b"k01", b"new")
    wal.write_bytes(saved)  # ...but stale records are skipped by sequence number
    with RedbMetastore(path, create=False) as store:
        stats = store.stats()
        assert stats["replayed_records"] == 0
        assert stats["replay_skipped"] == 11
        assert store.get(b"k00") == b"again"
        assert store.get(b"k01") == b"new"
        assert store.get(b"k05") is None


def test_immediate_log_reuse_ignores_stale_records(tmp_path: Path) -> None:
    """Immediate mode reuses the preallocated log from offset 0 after a checkpoint; the
    older records left behind the new ones must not be replayed."""
    path = tmp_path / "reuse.redb"
    wal = Path(str(path) + ".wal")
    first = [(b"k%02d" % i, b"old%02d" % i) for i in range(30)]
    second = [(b"k%02d" % i, b"new%02d" % i) for i in range(5)]
    _write_without_close(path, "immediate", second, flush_first=first)
    assert wal.stat().st_size >= 4 << 20  # preallocated
    with RedbMetastore(path, "immediate", create=False) as store:
        assert store.stats()["replayed_records"] == 5
        got = dict(store.scan())
    assert got == {**dict(first), **dict(second)}


def test_deferred_data_survives_crash_without_flush(tmp_path: Path) -> None:
    path = tmp_path / "noflush.redb"
    items = [(b"a", b"1"), (b"b", b"2"), (b"a", b"3")]
    _write_without_close(path, "deferred", items)
    with RedbMetastore(path, create=False) as store:
        assert dict(store.scan()) == {b"a": b"3", b"b": b"2"}
