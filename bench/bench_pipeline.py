"""Cost of a remote post-hook on a syscall, through the kernel process.

Two kernel processes run side by side on separate data directories: one with no
services (``NEXUS_SERVICES=""``) and one with the ``hooks`` service, which without deny
rules only post-hooks (every syscall is queued to its worker and written to the audit
log). The same client calls alternate between the two in rounds, so machine noise hits
both alike; the figure is the ratio of median latencies (target: at most 1.2x).

    python bench/bench_pipeline.py [--quick]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import nexusfs
from nexusfs.server import daemon
from nexusfs.services.registry import installed_services


def start(data: Path, services: str) -> None:
    os.environ["NEXUS_SERVICES"] = services
    try:
        daemon.start(data)
    finally:
        del os.environ["NEXUS_SERVICES"]


def timed(fn: Callable[[int], object], n: int) -> list[float]:
    out = []
    for i in range(n):
        t = time.perf_counter()
        fn(i)
        out.append(time.perf_counter() - t)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    if "hooks" not in installed_services():
        print("bench_pipeline: nexusfs-hooks is not installed; skipped")
        return 0
    rounds, per_round = (4, 100) if args.quick else (10, 400)
    base = Path(tempfile.mkdtemp(prefix="nexus-bench-pipeline-"))
    plain, hooked = base / "plain", base / "hooked"
    t0 = time.perf_counter()
    start(plain, "")
    start(hooked, "hooks")
    payload = os.urandom(4096)
    results: dict[tuple[str, str], list[float]] = {}
    try:
        with nexusfs.connect(data_dir=plain) as a, nexusfs.connect(data_dir=hooked) as b:
            for fs in (a, b):
                for i in range(50):
                    fs.write(f"/bench/f{i}", payload)
            for _ in range(rounds):
                for name, fs in (("none", a), ("post-hook", b)):
                    results.setdefault(("stat", name), []).extend(
                        timed(lambda i, fs=fs: fs.stat(f"/bench/f{i % 50}"), per_round)
                    )
                    results.setdefault(("write 4 KiB", name), []).extend(
                        timed(lambda i, fs=fs: fs.write(f"/bench/f{i % 50}", payload), per_round)
                    )
            time.sleep(0.5)
            logged = b.call("hooks.last_seq")
    finally:
        daemon.stop(plain)
        daemon.stop(hooked)
        shutil.rmtree(base, ignore_errors=True)
    print(f"python {sys.version.split()[0]}; {rounds} rounds x {per_round} calls, alternating")
    print(f"{'syscall':<14}{'no services':>14}{'1 post-hook':>14}{'ratio':>8}  target")
    misses = 0
    for op in ("stat", "write 4 KiB"):
        plain_us = statistics.median(results[(op, "none")]) * 1e6
        hooked_us = statistics.median(results[(op, "post-hook")]) * 1e6
        ratio = hooked_us / plain_us
        ok = ratio <= 1.2
        misses += not ok
        print(f"{op:<14}{plain_us:>11.0f} us{hooked_us:>11.0f} us{ratio:>7.2f}x  <= 1.2x "
              f"{'PASS' if ok else 'MISS'}")  # fmt: skip
    print(f"audit log entries written by the hooks service: {logged}")
    print(f"{2 - misses}/2 targets met; total {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
