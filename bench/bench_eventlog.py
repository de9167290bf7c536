"""Benchmark of the audit log: event append throughput of the nexusfs-hooks service.

    python bench/bench_eventlog.py [--quick]

The subject is the real service: a ``HooksPlugin`` registered with pluggy and started on
a ``SQLAlchemyRecordStore`` (schema by its migrations), fed post-hook delivery batches
through ``nexus_post_syscall_batch`` exactly as a worker does (``SyscallEvent`` /
``SyscallOutcome`` pairs with unique kernel seqs). Each batch is one transaction: the
gapless ``seq`` counter locked and advanced, redeliveries looked up by ``kernel_seq``,
the rows inserted.

Baselines, measured in the same run on the same server and database, into a table of
the same shape (same columns, primary key, unique ``kernel_seq``, four indexes), one
transaction per batch, doing none of the log's work:

* PostgreSQL: raw psycopg 3 ``executemany`` and ``COPY ... FROM STDIN``;
* SQLite (reference): raw ``sqlite3.executemany`` with the store's settings (WAL,
  ``synchronous=FULL``, ``BEGIN IMMEDIATE``).

Subject and baseline alternate round by round (``paired_per_op``) so both see the same
background load; the ratio is time per event, subject / baseline. Target: >= 5,000
events/s on PostgreSQL at the host's delivery batch size (512). PostgreSQL is the
server of ``NEXUS_TEST_POSTGRES_URL`` or, if unset, a private cluster with PostgreSQL's
durable defaults (``fsync=on``, ``synchronous_commit=on``); without one the PostgreSQL
part is skipped (an error when ``NEXUS_TEST_REQUIRE_SERVERS=1``). Exits 1 only then.
"""

from __future__ import annotations

import argparse
import logging
import os
import sqlite3
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "kernel"))
sys.path.insert(0, str(ROOT / "plugins" / "hooks"))
sys.path.insert(0, str(ROOT / "bench"))

import pluggy  # noqa: E402
from nexusfs_hooks.plugin import HooksPlugin  # noqa: E402

from _common import Row, machine_line, paired_per_op, print_table  # noqa: E402
from nexusfs.drivers.recordstore import SQLAlchemyRecordStore, default_record_store_url  # noqa: E402
from nexusfs.hookspecs import (  # noqa: E402
    PROJECT,
    ServiceContext,
    ServiceSpec,
    SyscallEvent,
    SyscallOutcome,
)
from nexusfs.testing.postgres import (  # noqa: E402
    URL_ENV,
    PostgresCluster,
    PostgresUnavailable,
    create_database,
    drop_database,
    servers_required,
)

TARGET_EVENTS_S = 5_000.0
#: The service host's post-hook delivery batch (``Outbox(batch=512)``): the target's.
HOST_BATCH = 512

_COLUMNS = ("seq", "kernel_seq", "time", "subject", "op", "path", "dst", "ok",
            "error_code", "message", "revision")  # fmt: skip

_PG_SCHEMA = """
CREATE TABLE raw_events (
    seq BIGINT PRIMARY KEY, kernel_seq BIGINT UNIQUE, time DOUBLE PRECISION NOT NULL,
    subject VARCHAR(512), op VARCHAR(64) NOT NULL, path VARCHAR(4096) COLLATE "C" NOT NULL,
    dst VARCHAR(4096) COLLATE "C", ok BOOLEAN NOT NULL, error_code VARCHAR(64),
    message TEXT, revision BIGINT);
CREATE INDEX ix_raw_path ON raw_events (path);
CREATE INDEX ix_raw_dst ON raw_events (dst);
CREATE INDEX ix_raw_subject ON raw_events (subject);
CREATE INDEX ix_raw_time ON raw_events (time);
"""

_SQLITE_SCHEMA = """
CREATE TABLE raw_events (
    seq INTEGER PRIMARY KEY, kernel_seq BIGINT UNIQUE, time FLOAT NOT NULL,
    subject VARCHAR(512), op VARCHAR(64) NOT NULL, path VARCHAR(4096) NOT NULL,
    dst VARCHAR(4096), ok BOOLEAN NOT NULL, error_code VARCHAR(64), message TEXT,
    revision BIGINT);
CREATE INDEX ix_raw_path ON raw_events (path);
CREATE INDEX ix_raw_dst ON raw_events (dst);
CREATE INDEX ix_raw_subject ON raw_events (subject);
CREATE INDEX ix_raw_time ON raw_events (time);
"""


class Feed:
    """Unique kernel seqs for both sides, so every event is a new one."""

    def __init__(self) -> None:
        self.next = 1

    def take(self, count: int) -> range:
        start = self.next
        self.next += count
        return range(start, start + count)


def syscall_batch(seqs: range) -> list[tuple[SyscallEvent, SyscallOutcome]]:
    """A post-hook delivery batch: ``write`` events with realistic paths."""
    return [
        (SyscallEvent(op="write", path=f"/data/dir{ks % 100}/file{ks}.txt", seq=ks,
                      subject=f"agent-{ks % 16}", time=1.7e9 + ks),
         SyscallOutcome(ok=True, revision=ks))
        for ks in seqs
    ]  # fmt: skip


def raw_rows(seqs: range) -> list[tuple[Any, ...]]:
    """The same events as rows of the baseline table (``seq`` = kernel seq)."""
    return [
        (ks, ks, 1.7e9 + ks, f"agent-{ks % 16}", "write", f"/data/dir{ks % 100}/file{ks}.txt",
         None, True, None, None, ks)
        for ks in seqs
    ]  # fmt: skip


@contextmanager
def hooks_service(url: str) -> Iterator[Callable[[list[Any]], object]]:
    """The hooks service started on ``url``; yields its batch post-hook."""
    with SQLAlchemyRecordStore(url) as store, tempfile.TemporaryDirectory() as state:
        pm = pluggy.PluginManager(PROJECT)
        pm.add_hookspecs(ServiceSpec)
        pm.register(HooksPlugin(), name="hooks")
        ctx = ServiceContext(name="hooks", state_dir=Path(state),
                             log=logging.getLogger("bench.hooks"), record_store=store)  # fmt: skip
        pm.hook.nexus_service_start(ctx=ctx)
        try:
            yield lambda batch: pm.hook.nexus_post_syscall_batch(ctx=ctx, batch=batch)
        finally:
            pm.hook.nexus_service_stop(ctx=ctx)


def measure(
    feed: Feed,
    subject_batch: Callable[[range], object],
    baseline_batch: Callable[[range], object],
    batch: int,
    batches_per_round: int,
    rounds: int,
) -> tuple[float, float, float]:
    """(subject events/s, baseline events/s, time-per-event ratio subject/baseline).
    ``feed`` hands out kernel seqs never used before in this database."""

    def run(fn: Callable[[range], object]) -> Callable[[int], int]:
        def one_round(_rep: int) -> int:
            for _ in range(batches_per_round):
                fn(feed.take(batch))
            return batch * batches_per_round

        return one_round

    s, b, ratio = paired_per_op(run(subject_batch), run(baseline_batch), rounds)
    return 1 / s, 1 / b, ratio


def rate_row(name: str, rate: float, base_name: str, base_rate: float, ratio: float,
             target: float | None) -> Row:  # fmt: skip
    return Row(name, f"{rate:,.0f} ev/s", base_name, f"{base_rate:,.0f} ev/s", ratio,
               target=target, lower_is_better=False, target_unit=" ev/s",
               measured=rate)  # fmt: skip


def bench_postgres(url: str, sizes: list[tuple[int, int]], rounds: int) -> list[Row]:
    import psycopg
    from sqlalchemy.engine import make_url

    db_url = create_database(url, prefix="nexus_bench")
    try:
        dsn = make_url(db_url).set(drivername="postgresql").render_as_string(
            hide_password=False)  # fmt: skip
        rows: list[Row] = []
        with hooks_service(db_url) as post, psycopg.connect(dsn) as raw:
            with raw.transaction():
                raw.execute(_PG_SCHEMA)
            cols = ", ".join(_COLUMNS)
            insert = f"INSERT INTO raw_events ({cols}) VALUES ({', '.join(['%s'] * 11)})"
            feed = Feed()

            def executemany(seqs: range) -> None:
                with raw.transaction(), raw.cursor() as cur:
                    cur.executemany(insert, raw_rows(seqs))

            def copy(seqs: range) -> None:
                shifted = range(seqs.start + 10**12, seqs.stop + 10**12)  # own key space
                sql = f"COPY raw_events ({cols}) FROM STDIN"
                with raw.transaction(), raw.cursor() as cur, cur.copy(sql) as cp:
                    for row in raw_rows(shifted):
                        cp.write_row(row)

            def subject(seqs: range) -> None:
                post(syscall_batch(seqs))

            for batch, per_round in sizes:
                rate, base, ratio = measure(feed, subject, executemany, batch, per_round,
                                            rounds)  # fmt: skip
                target = TARGET_EVENTS_S if batch == HOST_BATCH else None
                rows.append(rate_row(f"PG EventLog batch={batch}", rate,
                                     "psycopg executemany", base, ratio, target))  # fmt: skip
                rate, base, ratio = measure(feed, subject, copy, batch, per_round, rounds)
                rows.append(rate_row(f"PG EventLog batch={batch}", rate, "psycopg COPY",
                                     base, ratio, None))  # fmt: skip
        return rows
    finally:
        drop_database(db_url)


def bench_sqlite(tmp: Path, sizes: list[tuple[int, int]], rounds: int) -> list[Row]:
    rows: list[Row] = []
    raw = sqlite3.connect(tmp / "raw.db", isolation_level=None)
    try:
        raw.execute("PRAGMA journal_mode = WAL")
        raw.execute("PRAGMA synchronous = FULL")
        raw.executescript(_SQLITE_SCHEMA)
        insert = f"INSERT INTO raw_events ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' * 11)})"

        def executemany(seqs: range) -> None:
            raw.execute("BEGIN IMMEDIATE")
            raw.executemany(insert, raw_rows(seqs))
            raw.execute("COMMIT")

        feed = Feed()
        with hooks_service(default_record_store_url(tmp / "data")) as post:

            def subject(seqs: range) -> None:
                post(syscall_batch(seqs))

            for batch, per_round in sizes:
                rate, base, ratio = measure(feed, subject, executemany, batch, per_round,
                                            rounds)  # fmt: skip
                rows.append(rate_row(f"SQLite EventLog batch={batch}", rate,
                                     "sqlite3 executemany", base, ratio, None))  # fmt: skip
    finally:
        raw.close()
    return rows


@contextmanager
def postgres_server(stack: ExitStack) -> Iterator[str | None]:
    """The benchmark's PostgreSQL base URL, or ``None`` (with a message) if there is none."""
    configured = os.environ.get(URL_ENV, "").strip()
    if configured:
        yield configured
        return
    cluster = PostgresCluster(fsync=True)
    try:
        url = cluster.start()
    except PostgresUnavailable as exc:
        if servers_required():
            raise
        print(f"PostgreSQL: skipped (no server: {exc})".splitlines()[0])
        yield None
        return
    stack.callback(cluster.stop)
    yield url


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="CI smoke run: a few seconds")
    parser.add_argument("--rounds", type=int, default=None, help="paired rounds per figure")
    args = parser.parse_args(argv)
    rounds = args.rounds or (3 if args.quick else 9)
    # (events per batch, batches per round)
    sizes = [(32, 4), (HOST_BATCH, 2)] if args.quick else [(1, 100), (32, 30), (HOST_BATCH, 8)]
    print(machine_line())
    print(f"audit-log append through HooksPlugin.nexus_post_syscall_batch; {rounds} paired "
          "rounds per figure; ratio = time per event, EventLog / baseline")  # fmt: skip
    rows: list[Row] = []
    with ExitStack() as stack, tempfile.TemporaryDirectory(prefix="nxbench-") as tmp:
        try:
            with postgres_server(stack) as url:
                if url is not None:
                    where = "NEXUS_TEST_POSTGRES_URL" if os.environ.get(URL_ENV) else (
                        "private cluster, fsync=on")  # fmt: skip
                    print(f"PostgreSQL: {where}")
                    rows += bench_postgres(url, sizes, rounds)
        except PostgresUnavailable as exc:
            print(f"PostgreSQL required (NEXUS_TEST_REQUIRE_SERVERS=1) but unavailable: {exc}")
            return 1
        rows += bench_sqlite(Path(tmp), sizes, rounds)
    print()
    print_table("Event log append throughput", rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
