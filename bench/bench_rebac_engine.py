"""ReBAC engine benchmark: the default file model on ~100,000 tuples over a folder tree
of depth 8, in process, with the path hierarchy computed (no parent tuples).

Measures, against the issue's targets:

* ``check`` latency (each call is uncached: a fresh resolver, no decision and no group
  membership kept between calls, only the engine's caches of pure functions of strings:
  parsed arguments, path -> parent) on files at depth 9 (8 folders above them, 5,000
  users, 500 nested groups): p50 / p90 / p99, allowed and denied apart (target: p50 <=
  100 us);
* a raw baseline in the same run: one dict lookup per level of the path (a hand-written
  ACL walk that knows nothing of groups or relations), to show the engine's cost as a
  ratio;
* ``batch_check`` of a 1,000-entry folder (the kernel's filtered readdir);
* ``list_objects`` for a user who can read ~11,000 files (target: <= 200 ms).

Wall-clock figures on a shared machine include time stolen by other processes, so the
load average is printed, and the CPU time per check (process time / checks) is given
beside the wall-clock percentiles.

    python bench/bench_rebac_engine.py            # full run
    python bench/bench_rebac_engine.py --quick    # a few seconds (CI smoke run)
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

from nexusfs_rebac import Engine, MemoryTupleSource, PathTree, default_model

BRANCHING = (10, 3, 3, 2, 2, 2, 2, 2)  # 8 folder levels: 5,710 folders
FILES_PER_LEAF = 5  # 14,400 files at depth 9
CHECK_P50_TARGET_US = 100.0
LIST_OBJECTS_TARGET_MS = 200.0


@dataclass
class Dataset:
    tree: PathTree
    tuples: MemoryTupleSource
    users: list[str]
    files: list[str]
    big_folder: list[str]


def build(seed: int, n_users: int = 5_000, n_groups: int = 500, total: int = 100_000) -> Dataset:
    """The folder tree, ~``total`` tuples, and the reader of ~11,000 files."""
    rng = random.Random(seed)
    tree = PathTree()
    level = ["/"]
    folders: list[str] = []
    for b in BRANCHING:
        nxt = []
        for parent in level:
            for i in range(b):
                p = f"{parent.rstrip('/')}/d{len(folders)}_{i}"
                tree.add_folder(p)
                folders.append(p)
                nxt.append(p)
        level = nxt
    files = [f"{leaf}/f{i}.txt" for leaf in level for i in range(FILES_PER_LEAF)]
    big = [f"/big/e{i:04d}.txt" for i in range(1000)]
    for f in files + big:
        tree.add_file(f)
    users = [f"user:u{i}" for i in range(n_users)]
    groups = [f"group:g{i}" for i in range(n_groups)]
    src = MemoryTupleSource()
    for u in users:  # 4 groups each
        for g in rng.sample(groups, 4):
            src.add((g, "member", u))
    for _ in range(n_groups // 5):  # some nesting
        outer, inner = rng.sample(groups, 2)
        src.add((outer, "member", f"{inner}#member"))
    rels = ("viewer", "viewer", "viewer", "editor", "owner")
    upper = [f for f in folders if f.count("/") <= 3]  # sparse grants near the root
    lower = [f for f in folders if f.count("/") > 3]
    for f in upper:
        if rng.random() < 0.3:
            src.add((f"folder:{f}", rng.choice(rels), f"{rng.choice(groups)}#member"))
    while len(src) < total * 0.55:
        src.add((f"folder:{rng.choice(lower)}", rng.choice(rels), rng.choice(users)))
    while len(src) < total * 0.65:
        src.add((f"folder:{rng.choice(lower)}", rng.choice(rels), f"{rng.choice(groups)}#member"))
    while len(src) < total:
        src.add((f"file:{rng.choice(files)}", rng.choice(rels), rng.choice(users)))
    tops = [f for f in folders if f.count("/") == 1]
    for f in [*tops[:7], "/big"]:  # the list_objects subject: ~11,000 readable files
        src.add((f"folder:{f}", "viewer", "user:reader"))
    return Dataset(tree, src, users, files, big)


def pct(xs: list[float], p: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(p * len(s)))]


def check_latencies(
    engine: Engine, relation: str, pairs: list[tuple[str, str]]
) -> tuple[dict[bool, list[float]], float]:
    """Per-call wall-clock latencies (us) by answer, and the CPU time per call (us)."""
    lat: dict[bool, list[float]] = {True: [], False: []}
    cpu0 = time.process_time()
    for user, obj in pairs:
        t = time.perf_counter_ns()
        ok = engine.check(user, relation, obj)
        lat[ok].append((time.perf_counter_ns() - t) / 1e3)
    return lat, (time.process_time() - cpu0) / len(pairs) * 1e6


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="smaller run for CI")
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()
    n_checks = 2_000 if args.quick else 20_000
    print(f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    t0 = time.perf_counter()
    ds = build(args.seed)
    hierarchy = ds.tree.hierarchy()
    engine = Engine(default_model(), ds.tuples, computed=hierarchy.computed_relations())
    print(
        f"dataset: {len(ds.tuples):,} tuples, {len(ds.files):,} files at depth 9, "
        f"built in {time.perf_counter() - t0:.1f} s"
    )

    rng = random.Random(args.seed + 1)
    pairs = [(rng.choice(ds.users), "file:" + rng.choice(ds.files)) for _ in range(n_checks)]
    check_latencies(engine, "read", pairs[:500])  # warm the interpreter (no engine cache)
    lat, cpu = check_latencies(engine, "read", pairs)
    every = lat[True] + lat[False]
    p50 = statistics.median(every)
    print(
        f"check read, uncached, n={len(every):,}: p50 {p50:.1f} us, p90 {pct(every, 0.9):.1f} "
        f"us, p99 {pct(every, 0.99):.1f} us; CPU {cpu:.1f} us per check"
    )
    for answer in (True, False):
        xs = lat[answer]
        if xs:
            what = "allowed" if answer else "denied "
            print(f"  {what} n={len(xs):>6,}: p50 {statistics.median(xs):.1f} us")
    wlat, _ = check_latencies(engine, "write", pairs[:5000])
    print(f"check write, uncached: p50 {statistics.median(wlat[True] + wlat[False]):.1f} us")

    # Baseline: one dict lookup per path level (knows nothing of groups or relations).
    acl = {(t.object, t.user) for t in ds.tuples}
    base: list[float] = []
    for user, obj in pairs[:5000]:
        t = time.perf_counter_ns()
        path = obj[5:]
        key = obj
        while (key, user) not in acl and path != "/":
            path = path[: path.rfind("/")] or "/"
            key = "folder:" + path
        base.append((time.perf_counter_ns() - t) / 1e3)
    b50 = statistics.median(base)
    print(f"baseline dict walk: p50 {b50:.2f} us (engine / baseline = {p50 / b50:.0f}x)")

    items = [("user:reader", "read", "file:" + f) for f in ds.big_folder]
    reps = 3 if args.quick else 10
    best = min(timed_ms(lambda: engine.batch_check(items)) for _ in range(reps))
    print(f"batch_check of a 1,000-entry folder: {best:.2f} ms ({best:.2f} us per entry)")

    runs = [timed_ms(lambda: engine.list_objects("user:reader", "read", "file"))
            for _ in range(3 if args.quick else 7)]  # fmt: skip
    n = len(engine.list_objects("user:reader", "read", "file"))
    lo = statistics.median(runs)
    print(f"list_objects read file for a reader of {n:,} files: median {lo:.0f} ms, "
          f"best {min(runs):.0f} ms")  # fmt: skip
    some = []
    for user in ds.users[:20]:
        t = time.perf_counter_ns()
        engine.list_objects(user, "read", "file")
        some.append((time.perf_counter_ns() - t) / 1e6)
    print(f"list_objects read file for random users: median {statistics.median(some):.1f} ms")
    print(
        f"targets: check p50 <= {CHECK_P50_TARGET_US:.0f} us: "
        f"{'met' if p50 <= CHECK_P50_TARGET_US else 'MISSED'} ({p50:.0f}); list_objects <= "
        f"{LIST_OBJECTS_TARGET_MS:.0f} ms: {'met' if lo <= LIST_OBJECTS_TARGET_MS else 'MISSED'}"
        f" ({lo:.0f})"
    )


def timed_ms(fn: Callable[[], object]) -> float:
    t = time.perf_counter_ns()
    fn()
    return (time.perf_counter_ns() - t) / 1e6


if __name__ == "__main__":
    main()
