"""Cost of the kernel permission gate (issue 5), through real kernel processes.

Two kernel processes run side by side on separate data directories with the same files:

* ``plain``: no services (``NEXUS_SERVICES=""``) - the baseline;
* ``gated``: the ``rebac`` service, so every syscall of a non-admin subject is checked
  (``nexusfs.server.gate``), with tuples over a folder tree of depth 8 and a reader
  granted ``viewer`` near the top (inherited by everything below).

Measured, alternating between the two kernels so noise hits both alike:

* ``stat`` of a file 8 folders deep with a warm decision cache: target <= 1.3x plain;
* ``readdir`` of a 1,000-entry folder filtered by permission (warm): target <= 3x the
  unfiltered ``readdir`` of the same folder on the plain kernel;
* the first (uncached) gated ``stat`` of each file, informational.

    python bench/bench_rebac_gate.py [--quick]      # quick: fewer tuples and rounds
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import nexusfs
from _common import Row, fmt_time, machine_line, print_table
from nexusfs.server import daemon
from nexusfs.services.registry import installed_services

READER = "user:reader"
DEPTH = 8


def start(data: Path, services: str) -> None:
    os.environ["NEXUS_SERVICES"] = services
    try:
        daemon.start(data, timeout=60)
    finally:
        del os.environ["NEXUS_SERVICES"]


def populate(data: Path, files_per_folder: int, wide: int) -> list[str]:
    """Folders /d0/d1/.../d7 with files in each, and /wide with ``wide`` files."""
    deep: list[str] = []
    with nexusfs.connect(data_dir=data) as fs:
        folder = ""
        for level in range(DEPTH):
            folder += f"/d{level}"
            fs.mkdir(folder, parents=True, exist_ok=True)
            for i in range(files_per_folder):
                fs.write(f"{folder}/f{i}.txt", b"x")
        deep = [f"{folder}/f{i}.txt" for i in range(files_per_folder)]
        fs.mkdir("/wide", exist_ok=True)
        for i in range(wide):
            fs.write(f"/wide/e{i:04}.txt", b"y")
    return deep


def grant(data: Path, n_tuples: int) -> None:
    """The reader views /d0 (inherited all the way down) and /wide; ``n_tuples`` other
    grants to other users fill the store."""
    with nexusfs.connect(data_dir=data) as fs:
        fs.call("rebac.write", writes=[f"folder:/d0#viewer@{READER}",
                                       f"folder:/wide#viewer@{READER}"])  # fmt: skip
        filler = [f"file:/d0/f{i % 50}.txt#viewer@user:u{i}" for i in range(n_tuples)]
        for i in range(0, len(filler), 10_000):
            fs.call("rebac.write", writes=filler[i : i + 10_000], ignore_duplicates=True)


def timed(fn: object, reps: int) -> float:
    samples = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()  # type: ignore[operator]
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    print(machine_line())
    if "rebac" not in installed_services():
        print("SKIP: nexusfs-rebac is not installed")
        return 0
    n_tuples = 2_000 if args.quick else 100_000
    rounds = 5 if args.quick else 15
    base = Path(tempfile.mkdtemp(prefix="nxbench-gate-"))
    plain, gated = base / "plain", base / "gated"
    try:
        start(plain, "")
        start(gated, "rebac")
        deep = populate(plain, 5, 1000)
        populate(gated, 5, 1000)
        t0 = time.perf_counter()
        grant(gated, n_tuples)
        print(f"{n_tuples:,} tuples written in {time.perf_counter() - t0:.1f} s")
        with (
            nexusfs.connect(data_dir=plain, subject=READER) as p,
            nexusfs.connect(data_dir=gated, subject=READER) as g,
        ):
            t0 = time.perf_counter()
            for path in deep:
                g.stat(path)
            cold = (time.perf_counter() - t0) / len(deep)
            stat_p: list[float] = []
            stat_g: list[float] = []
            ls_p: list[float] = []
            ls_g: list[float] = []
            assert len(g.readdir("/wide")) == 1000  # warms the cache, checks the filter
            for r in range(rounds):
                pairs = ((p, stat_p, ls_p), (g, stat_g, ls_g))
                for fs, st, ls in pairs if r % 2 == 0 else pairs[::-1]:
                    st.append(timed(lambda fs=fs: [fs.stat(x) for x in deep], 20) / len(deep))
                    ls.append(timed(lambda fs=fs: fs.readdir("/wide"), 3))
        sp, sg = statistics.median(stat_p), statistics.median(stat_g)
        lp, lg = statistics.median(ls_p), statistics.median(ls_g)
        rows = [
            Row("gated stat, warm cache (depth 9)", fmt_time(sg), "stat, no rebac",
                fmt_time(sp), sg / sp, 1.3),
            Row("filtered readdir, 1,000 entries", fmt_time(lg), "unfiltered readdir",
                fmt_time(lp), lg / lp, 3.0),
            Row("gated stat, first check (uncached)", fmt_time(cold), "stat, no rebac",
                fmt_time(sp), cold / sp),
        ]  # fmt: skip
        misses = print_table(f"Permission gate ({n_tuples:,} tuples)", rows)
        return 1 if misses and not args.quick else 0
    finally:
        for d in (plain, gated):
            daemon.stop(d)
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
