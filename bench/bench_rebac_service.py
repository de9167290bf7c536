"""ReBAC service benchmark: ``check`` through the service object, in process, on
~100,000 tuples over a folder tree of depth 8 stored in a real record store.

The dataset is the engine benchmark's (``bench_rebac_engine.build``: 14,400 files at
depth 9, 5,000 users in 500 nested groups, the default file model, parents computed from
paths). Its tuples are written through the service's storage layer into a record store
(SQLite in a temporary directory by default; ``--postgres`` for a private PostgreSQL
cluster or ``$NEXUS_TEST_POSTGRES_URL``), then a :class:`RebacService` starts on it (the
start loads the mirror from the store) and answers:

* ``check`` uncached (every (user, file) pair asked once: each call misses the decision
  cache and evaluates; split by whether the user was met before at this revision, whose
  group memberships the service then remembers), target p50 <= 100 us, next to two
  baselines measured in the same run: the engine alone on as many other pairs drawn
  alike (the service's own overhead: locking, cache bookkeeping, freshness check) and
  one indexed SQLite ``SELECT`` of the direct tuple (the cheapest question a
  database-backed check would ask; a real one needs several);
* ``check`` cached (the same pairs again), target p50 <= 10 us, next to a raw dict
  lookup of the same key through a function call;
* for context: a cached check with a consistency token, a one-tuple ``write`` (commit +
  in-memory apply), ``batch_check`` of a 1,000-entry folder, and the mirror's load time
  (what a restarted worker pays).

Wall-clock figures on a shared machine include time stolen by other processes, so the
load average is printed. Targets are reported as PASS / MISS, never asserted.

    python bench/bench_rebac_service.py            # full run (~1-2 minutes)
    python bench/bench_rebac_service.py --quick    # CI smoke run (a few seconds)
"""

from __future__ import annotations

import argparse
import os
import random
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from nexusfs_rebac import Engine, TupleKey, default_model, default_model_text
from nexusfs_rebac.service import RebacService
from nexusfs_rebac.store import TupleStore, tuple_hash
from nexusfs_rebac.tables import upgrade_schema

from bench_rebac_engine import Dataset, build
from nexusfs.drivers.cachestore import NullCacheStore
from nexusfs.drivers.recordstore import SQLAlchemyRecordStore

UNCACHED_TARGET_US = 100.0
CACHED_TARGET_US = 10.0


def p50(xs: list[float]) -> float:
    return statistics.median(xs)


def pct(xs: list[float], p: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(p * len(s)))]


def timed(fn: Callable[[str, str], object], pairs: list[tuple[str, str]]) -> list[float]:
    """Per-call wall-clock latencies in microseconds of ``fn(user, object)``."""
    out: list[float] = []
    clock = time.perf_counter_ns
    for user, obj in pairs:
        t = clock()
        fn(user, obj)
        out.append((clock() - t) / 1e3)
    return out


def interleaved(
    fa: Callable[[str, str], object],
    pa: list[tuple[str, str]],
    fb: Callable[[str, str], object],
    pb: list[tuple[str, str]],
) -> tuple[list[float], list[float]]:
    """``timed(fa, pa)`` and ``timed(fb, pb)``, one call of each in turn."""
    la: list[float] = []
    lb: list[float] = []
    clock = time.perf_counter_ns
    for (ua, oa), (ub, ob) in zip(pa, pb, strict=True):
        t = clock()
        fa(ua, oa)
        t2 = clock()
        fb(ub, ob)
        t3 = clock()
        la.append((t2 - t) / 1e3)
        lb.append((t3 - t2) / 1e3)
    return la, lb


def verdict(value: float, target: float) -> str:
    return "PASS" if value <= target else "MISS"


def load_store(ds: Dataset, url: str) -> tuple[SQLAlchemyRecordStore, float]:
    """Create the schema, seed the default model and write every tuple (5,000 per
    revision); returns the store and the tuples written per second."""
    store = SQLAlchemyRecordStore(url)
    upgrade_schema(store)
    ts = TupleStore(store.session_factory)
    ts.write_model(default_model(), default_model_text(), only_if_none=True)
    engine = Engine(default_model(), ds.tuples)  # validation only (no parent tuples here)
    t0 = time.perf_counter()
    ts.bulk_write(iter(ds.tuples), lambda _id, _load: engine.validate_tuple)
    return store, len(ds.tuples) / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="smaller run for CI")
    ap.add_argument("--postgres", action="store_true", help="store the tuples in PostgreSQL")
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()
    n_checks = 2_000 if args.quick else 20_000
    total = 20_000 if args.quick else 100_000
    print(f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    t0 = time.perf_counter()
    ds = build(args.seed, total=total)
    print(f"dataset: {len(ds.tuples):,} tuples, {len(ds.files):,} files at depth 9 "
          f"({time.perf_counter() - t0:.1f} s)")  # fmt: skip

    with tempfile.TemporaryDirectory(prefix="bench-rebac-") as tmp:
        if args.postgres:
            from nexusfs.testing.postgres import create_database, require_postgres

            url = create_database(require_postgres())
        else:
            url = f"sqlite:///{tmp}/records.db"
        store, rate = load_store(ds, url)
        print(f"record store {url.split(':')[0]}: wrote {len(ds.tuples):,} tuples at "
              f"{rate:,.0f} tuples/s (5,000 per revision)")  # fmt: skip
        t0 = time.perf_counter()
        svc = RebacService(TupleStore(store.session_factory), cache=NullCacheStore())
        svc.start()
        print(f"service start (mirror load from the store): {time.perf_counter() - t0:.2f} s, "
              f"{len(svc.mirror.index):,} tuples at revision {svc.mirror.revision}")  # fmt: skip

        # Two disjoint sets of distinct pairs from one distribution: the service and the
        # engine baseline each meet their pairs for the first time (the engine keeps
        # parsed argument strings, which would favour whichever runs second).
        rng = random.Random(args.seed + 1)
        seen: set[tuple[str, str]] = set()
        while len(seen) < 2 * n_checks:
            seen.add((rng.choice(ds.users), "file:" + rng.choice(ds.files)))
        shuffled = sorted(seen, key=lambda _: rng.random())
        pairs, engine_pairs = shuffled[:n_checks], shuffled[n_checks:]
        warm = [(rng.choice(ds.users), "file:" + rng.choice(ds.files)) for _ in range(300)]
        engine = svc.mirror.snapshot.engine

        def engine_check(u: str, o: str) -> bool:
            return engine.check(u, "read", o)

        def service_check(u: str, o: str) -> bool:
            return svc.check(u, "read", o)

        timed(engine_check, warm)
        timed(service_check, warm)  # warm the interpreter; these pairs are not reused
        # Interleaved, so both meet equally warm caches (parsed strings, path parents).
        uncached, base_engine = interleaved(service_check, pairs, engine_check, engine_pairs)
        # Split by whether the service had met the user at this revision before (its
        # group memberships are then remembered: the engine's ``shared``).
        met = {u for u, _ in warm}
        first_time: list[float] = []
        again: list[float] = []
        for (u, _o), lat in zip(pairs, uncached, strict=True):
            (again if u in met else first_time).append(lat)
            met.add(u)
        allowed = sum(svc.check(u, "read", o) for u, o in pairs)

        sqlite_path = Path(tmp) / "baseline.db"
        conn = sqlite3.connect(sqlite_path)
        conn.execute("CREATE TABLE t (key_hash TEXT PRIMARY KEY)")
        conn.executemany("INSERT INTO t VALUES (?)", ((tuple_hash(t),) for t in ds.tuples))
        conn.commit()
        keys = {(u, o): tuple_hash(TupleKey(o, "viewer", u)) for u, o in pairs}

        def sqlite_select(u: str, o: str) -> object:
            return conn.execute("SELECT 1 FROM t WHERE key_hash = ?", (keys[(u, o)],)).fetchone()

        base_sql = timed(sqlite_select, pairs)
        cached = timed(service_check, pairs)
        raw = {(u, "read", o): False for u, o in pairs}

        def dict_lookup(u: str, o: str) -> object:
            return raw.get((u, "read", o))

        base_dict = timed(dict_lookup, pairs)
        token = svc.revision()["token"]

        def token_check(u: str, o: str) -> bool:
            return svc.check(u, "read", o, consistency=token)

        with_token = timed(token_check, pairs)

        writes = []
        for i in range(200 if args.quick else 1000):
            t = time.perf_counter_ns()
            svc.write(writes=[f"folder:/big#viewer@user:bench{i}"])
            writes.append((time.perf_counter_ns() - t) / 1e3)
        items = [["user:reader", "read", "file:" + f] for f in ds.big_folder]
        batch = []
        for _ in range(3 if args.quick else 10):
            svc.mirror.snapshot.decisions.clear()
            t = time.perf_counter_ns()
            svc.batch_check(items)
            batch.append((time.perf_counter_ns() - t) / 1e6)
        svc.stop()
        store.close()
        conn.close()
        if args.postgres:
            from nexusfs.testing.postgres import drop_database

            drop_database(url)

    u50, c50 = p50(uncached), p50(cached)
    e50, s50, d50 = p50(base_engine), p50(base_sql), p50(base_dict)
    print(f"\ncheck read, n={len(pairs):,} distinct pairs ({allowed:,} allowed)")
    print(f"  uncached through the service: p50 {u50:.1f} us, p90 {pct(uncached, 0.9):.1f} us, "
          f"p99 {pct(uncached, 0.99):.1f} us  [target <= {UNCACHED_TARGET_US:.0f} us: "
          f"{verdict(u50, UNCACHED_TARGET_US)}]")  # fmt: skip
    print(f"    first check of a user at this revision (n={len(first_time):,}): p50 "
          f"{p50(first_time):.1f} us; a user met before (n={len(again):,}): p50 "
          f"{p50(again):.1f} us (group memberships remembered)")  # fmt: skip
    print(f"    baseline engine alone (no remembered memberships), like pairs, "
          f"interleaved: p50 {e50:.1f} us "
          f"(service / engine = {u50 / e50:.2f}x)")  # fmt: skip
    print(f"    baseline one indexed SQLite SELECT: p50 {s50:.1f} us "
          f"(service / select = {u50 / s50:.1f}x)")  # fmt: skip
    print(f"  cached through the service:   p50 {c50:.2f} us, p99 {pct(cached, 0.99):.2f} us  "
          f"[target <= {CACHED_TARGET_US:.0f} us: {verdict(c50, CACHED_TARGET_US)}]")  # fmt: skip
    print(f"    baseline raw dict lookup:           p50 {d50:.2f} us "
          f"(service / dict = {c50 / d50:.1f}x)")  # fmt: skip
    print(f"  cached, with a consistency token:     p50 {p50(with_token):.2f} us")
    print(f"write of one tuple (commit + in-memory apply): p50 {p50(writes):.0f} us, "
          f"p99 {pct(writes, 0.99):.0f} us")  # fmt: skip
    print(f"batch_check of a 1,000-entry folder (uncached): best {min(batch):.2f} ms")
    print(f"targets: uncached p50 {verdict(u50, UNCACHED_TARGET_US)} ({u50:.0f} us), "
          f"cached p50 {verdict(c50, CACHED_TARGET_US)} ({c50:.2f} us)")  # fmt: skip


if __name__ == "__main__":
    main()
