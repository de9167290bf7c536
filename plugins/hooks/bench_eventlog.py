"""Audit-log append throughput: ``EventLog.append_many`` on SQLite versus a raw
``sqlite3`` ``executemany`` baseline measured in the same run, on the same disk, with
the same durability (WAL, ``synchronous=FULL``, one commit per batch).

The baseline writes the same columns to an equivalent table with the same indexes but
does none of the log's work (gapless counter row under the write lock, kernel-seq
deduplication lookup, ORM statement compilation), so the ratio is the cost of that work.

    python plugins/hooks/bench_eventlog.py            # full run
    python plugins/hooks/bench_eventlog.py --quick    # a few seconds (CI smoke run)
"""

from __future__ import annotations

import argparse
import sqlite3
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from nexusfs.drivers.recordstore import SQLAlchemyRecordStore
from nexusfs_hooks.eventlog import EventLog
from nexusfs_hooks.models import create_schema

_RAW_SCHEMA = """
CREATE TABLE events (
    seq INTEGER PRIMARY KEY, kernel_seq BIGINT UNIQUE, time FLOAT, subject VARCHAR(512),
    op VARCHAR(64), path VARCHAR(4096), dst VARCHAR(4096), ok BOOLEAN,
    error_code VARCHAR(64), message TEXT, revision BIGINT);
CREATE INDEX ix_path ON events (path);
CREATE INDEX ix_dst ON events (dst);
CREATE INDEX ix_subject ON events (subject);
CREATE INDEX ix_time ON events (time);
"""


def make_events(first: int, count: int) -> list[dict[str, Any]]:
    """``count`` synthetic events with kernel seqs from ``first``."""
    return [
        {"kernel_seq": ks, "time": 1.7e9 + ks, "subject": f"agent-{ks % 16}", "op": "write",
         "path": f"/data/dir{ks % 100}/file{ks}.txt", "dst": None, "ok": True,
         "error_code": None, "message": None, "revision": ks}
        for ks in range(first, first + count)
    ]  # fmt: skip


def bench_eventlog(db: Path, events: list[dict[str, Any]], batch: int) -> float:
    """Seconds to append ``events`` in batches through :class:`EventLog`."""
    with SQLAlchemyRecordStore(f"sqlite:///{db}") as store:
        create_schema(store)
        log = EventLog(store.session_factory)
        log.append_many(make_events(10**9, 1))  # warm up (connection, statement cache)
        t0 = time.perf_counter()
        for i in range(0, len(events), batch):
            log.append_many(events[i : i + batch])
        elapsed = time.perf_counter() - t0
        assert log.last_seq() == len(events) + 1
    return elapsed


def bench_raw(db: Path, events: list[dict[str, Any]], batch: int) -> float:
    """Seconds to insert ``events`` in batches with raw ``sqlite3.executemany``."""
    conn = sqlite3.connect(db, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = FULL")
        conn.executescript(_RAW_SCHEMA)
        cols = ("kernel_seq", "time", "subject", "op", "path", "dst", "ok", "error_code",
                "message", "revision")  # fmt: skip
        sql = f"INSERT INTO events ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})"
        rows = [tuple(e[c] for c in cols) for e in events]
        t0 = time.perf_counter()
        for i in range(0, len(rows), batch):
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany(sql, rows[i : i + batch])
            conn.execute("COMMIT")
        return time.perf_counter() - t0
    finally:
        conn.close()


def best_of(repeats: int, fn: Callable[[Path], float], tmp: Path, name: str) -> float:
    """The fastest of ``repeats`` runs, each on a fresh database file."""
    times = []
    for r in range(repeats):
        times.append(fn(tmp / f"{name}-{r}.db"))
    return min(times)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, one repeat")
    parser.add_argument("--events", type=int, default=None, help="events per batched run")
    parser.add_argument("--repeats", type=int, default=None)
    args = parser.parse_args(argv)
    n = args.events or (2_000 if args.quick else 50_000)
    n_single = 50 if args.quick else 500
    repeats = args.repeats or (1 if args.quick else 3)
    print(f"EventLog.append_many vs raw sqlite3.executemany (WAL, synchronous=FULL), "
          f"best of {repeats}")  # fmt: skip
    print(f"{'batch':>6} {'events':>8} {'eventlog ev/s':>14} {'raw ev/s':>12} {'raw/eventlog':>13}")
    with tempfile.TemporaryDirectory(prefix="nexus-bench-") as d:
        tmp = Path(d)
        for batch, count in ((1, n_single), (100, n), (1000, n)):
            events = make_events(1, count)
            t_log = best_of(repeats, partial(bench_eventlog, events=events, batch=batch),
                            tmp, f"log{batch}")  # fmt: skip
            t_raw = best_of(repeats, partial(bench_raw, events=events, batch=batch),
                            tmp, f"raw{batch}")  # fmt: skip
            print(f"{batch:>6} {count:>8} {count / t_log:>14,.0f} {count / t_raw:>12,.0f} "
                  f"{t_log / t_raw:>12.2f}x")  # fmt: skip


if __name__ == "__main__":
    main()
