"""Benchmark the redb metastore against baselines measured in the same run.

Usage: ``python bench/bench_metastore.py [--quick]``. ``--quick`` (CI smoke) shrinks every
workload so the run takes a few seconds; its figures are noisy. Prints one table: each row
has the NexusFS figure, a baseline, their ratio and the target. Always exits 0 unless the
store itself fails.

Baselines: a Python ``dict`` and, if the ``lmdb`` package is installed, py-lmdb (one read
transaction per get) for point reads; ``sqlite3`` ``executemany`` in one transaction for
bulk puts; ``sqlite3`` in WAL mode with ``synchronous=FULL`` (and ``NORMAL``) committing
each single put, and each 3-key batch in one transaction.
"""

from __future__ import annotations

import argparse
import random
import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from nexusfs.abc import Durability
from nexusfs.drivers.metastore.redb import RedbMetastore

Row = tuple[str, str, float, str, float | None, str]


def _keys(n: int) -> list[bytes]:
    return [b"/zone/dir%03d/file%07d" % (i % 997, i) for i in range(n)]


def _per_op_us(fn: Callable[[bytes], Any], keys: list[bytes], repeat: int = 3) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        for k in keys:
            fn(k)
        best = min(best, (time.perf_counter() - t0) / len(keys) * 1e6)
    return best


def bench_get(tmp: Path, n_keys: int, n_ops: int) -> list[Row]:
    keys = _keys(n_keys)
    value = b"m" * 100
    probe = random.Random(1).choices(keys, k=n_ops)
    rows: list[Row] = []
    with RedbMetastore(tmp / "get.redb") as store:
        store.batch(puts=[(k, value) for k in keys])
        store.flush()
        ours = _per_op_us(store.get, probe)
    model = dict.fromkeys(keys, value)
    rows.append(("get (µs/op)", "redb", ours, "dict.get", _per_op_us(model.get, probe), "≤ 2"))
    try:
        import lmdb  # type: ignore[import-not-found, unused-ignore]
    except ImportError:
        rows.append(("get (µs/op)", "redb", ours, "py-lmdb", None, "lmdb not installed"))
        return rows
    env = lmdb.open(str(tmp / "lmdb"), map_size=1 << 30, sync=False)
    with env.begin(write=True) as txn:
        for k in keys:
            txn.put(k, value)

    def lmdb_get(k: bytes) -> Any:
        with env.begin() as txn:
            return txn.get(k)

    rows.append(("get (µs/op)", "redb", ours, "py-lmdb", _per_op_us(lmdb_get, probe), "≤ 2"))
    env.close()
    return rows


def _sqlite(path: Path, synchronous: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(f"PRAGMA synchronous={synchronous}")
    conn.execute("CREATE TABLE kv (k BLOB PRIMARY KEY, v BLOB NOT NULL) WITHOUT ROWID")
    return conn


def bench_batch(tmp: Path, n: int) -> list[Row]:
    items = [(k, b"v" * 64) for k in _keys(n)]
    with RedbMetastore(tmp / "batch.redb") as store:
        t0 = time.perf_counter()
        store.batch(puts=items)
        ours = n / (time.perf_counter() - t0)
    conn = _sqlite(tmp / "batch.sqlite", "NORMAL")
    t0 = time.perf_counter()
    conn.execute("BEGIN")
    conn.executemany("INSERT OR REPLACE INTO kv VALUES (?, ?)", items)
    conn.execute("COMMIT")
    base = n / (time.perf_counter() - t0)
    conn.close()
    label = f"batch put {n // 1000}k (keys/s)"
    return [(label, "redb", ours, "sqlite executemany", base, "≥ 300k")]


def bench_single_put(tmp: Path, n_deferred: int, n_immediate: int) -> list[Row]:
    """Latency of small commits: one put, and a 3-key batch (the shape of a kernel file
    write: inode + dirent + parent), in both durability modes."""
    rows: list[Row] = []
    sqlite_us: dict[tuple[str, int, int], float] = {}

    def sqlite_put(sync: str, n: int, width: int) -> float:
        if (sync, n, width) not in sqlite_us:
            conn = _sqlite(tmp / f"single-{sync}-{n}-{width}.sqlite", sync)
            keys = _keys(n * width)
            t0 = time.perf_counter()
            for i in range(n):
                conn.execute("BEGIN")
                for k in keys[i * width : (i + 1) * width]:
                    conn.execute("INSERT OR REPLACE INTO kv VALUES (?, ?)", (k, b"v" * 64))
                conn.execute("COMMIT")
            sqlite_us[sync, n, width] = (time.perf_counter() - t0) / n * 1e6
            conn.close()
        return sqlite_us[sync, n, width]

    for mode, n in ((Durability.DEFERRED, n_deferred), (Durability.IMMEDIATE, n_immediate)):
        for width in (1, 3):
            with RedbMetastore(tmp / f"single-{mode.value}-{width}.redb", mode) as store:
                keys = _keys(n * width)
                value = b"v" * 64
                if width == 1:
                    t0 = time.perf_counter()
                    for k in keys:
                        store.put(k, value)
                else:
                    groups = [
                        [(k, value) for k in keys[i * width : (i + 1) * width]] for i in range(n)
                    ]
                    t0 = time.perf_counter()
                    for g in groups:
                        store.batch(puts=g)
                ours = (time.perf_counter() - t0) / n * 1e6
            what = "put" if width == 1 else f"batch {width} keys"
            label = f"{what} {mode.value} (µs/op)"
            target = "≤ 10" if mode is Durability.DEFERRED else "-"
            full = sqlite_put("FULL", n, width)
            rows.append((label, "redb", ours, "sqlite WAL sync=FULL", full, target))
            if mode is Durability.DEFERRED:
                normal = sqlite_put("NORMAL", n, width)
                rows.append((label, "redb", ours, "sqlite WAL sync=NORMAL", normal, target))
    return rows


def bench_get_unflushed(tmp: Path, n_keys: int, n_ops: int) -> list[Row]:
    """Point reads while recent commits are still in the in-memory overlay (no flush)."""
    keys = _keys(n_keys)
    value = b"m" * 100
    probe = random.Random(2).choices(keys, k=n_ops)
    with RedbMetastore(tmp / "get-unflushed.redb", flush_interval_ms=0) as store:
        store.batch(puts=[(k, value) for k in keys])
        store.flush()
        # Overwrite 1 key in 16 with single commits: they stay in the overlay.
        for k in keys[::16]:
            store.put(k, value)
        ours = _per_op_us(store.get, probe)
    model = dict.fromkeys(keys, value)
    base = _per_op_us(model.get, probe)
    return [("get, unflushed (µs/op)", "redb", ours, "dict.get", base, "≤ 2")]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="tiny workloads (CI smoke)")
    args = parser.parse_args(argv)
    if args.quick:
        sizes = {"keys": 20_000, "gets": 20_000, "batch": 20_000, "put_d": 500, "put_i": 50}
    else:
        sizes = {"keys": 200_000, "gets": 300_000, "batch": 100_000, "put_d": 5_000, "put_i": 500}
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="nexusfs-bench-") as d:
        tmp = Path(d)
        rows += bench_get(tmp, sizes["keys"], sizes["gets"])
        rows += bench_get_unflushed(tmp, sizes["keys"], sizes["gets"])
        rows += bench_batch(tmp, sizes["batch"])
        rows += bench_single_put(tmp, sizes["put_d"], sizes["put_i"])
    header = ("metric", "nexusfs", "baseline", "value", "ratio", "target")
    table = [header]
    for metric, _, ours, base_name, base, target in rows:
        higher_is_better = "keys/s" in metric
        if base is None:
            table.append((metric, f"{ours:,.2f}", base_name, "n/a", "n/a", target))
            continue
        ratio = ours / base
        note = "x (higher better)" if higher_is_better else "x (lower better)"
        table.append(
            (metric, f"{ours:,.2f}", base_name, f"{base:,.2f}", f"{ratio:.2f}{note}", target)
        )
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    for i, r in enumerate(table):
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)))
        if i == 0:
            print("  ".join("-" * w for w in widths))
    print(f"\npython {sys.version.split()[0]}; quick={args.quick}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
