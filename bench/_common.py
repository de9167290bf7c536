"""Helpers shared by the benchmarks: import path, machine info, timing, tables, targets.

Timing uses medians of repeated runs (``median_per_op``) so one noisy run (a background
flush, a page-cache hiccup) does not move a figure; every target is a ratio to a
baseline measured in the same run on the same machine and directory, and
``paired_per_op`` interleaves the two so that both see the same background load (the
ratio is the median of per-pair ratios).
"""

from __future__ import annotations

import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

KERNEL_DIR = Path(__file__).resolve().parent.parent / "kernel"
KiB = 1 << 10
MiB = 1 << 20
GiB = 1 << 30


def ensure_kernel_importable() -> None:
    """Make ``import nexusfs`` work from a source checkout that is not installed."""
    try:
        import nexusfs  # noqa: F401
    except ImportError:
        sys.path.insert(0, str(KERNEL_DIR))


def kernel_env() -> dict[str, str]:
    """Environment for a child Python process that must import ``nexusfs``."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(KERNEL_DIR), env.get("PYTHONPATH")) if p)
    return env


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` (0 if it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_time(pid: int) -> float:
    """CPU seconds used so far by every thread of process ``pid``, exactly (the
    scheduler's own accounting, ``/proc/PID/task/*/schedstat``; 0 if it is gone)."""
    total = 0
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return 0.0
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            continue  # (a thread that just ended)
    return total / 1e9


def children(pid: int) -> list[int]:
    """Direct children of ``pid`` (e.g. a kernel's service workers and warm spares)."""
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            if ppid == pid:
                out.append(int(entry))
    return out


def settle(expected: dict[int, int], timeout: float = 20.0) -> bool:
    """Wait until each process ``pid`` in ``expected`` has at least ``expected[pid]``
    children (service workers and their warm spares: a spare starts a second after its
    service) and none of those has used CPU for 0.3 s, so that a measurement starts in
    the steady state, not during a spare's interpreter start-up. False on timeout.
    (CPU in clock ticks, :func:`cpu_seconds`: an idle worker's heartbeats, a few
    microseconds, would never let :func:`cpu_time` stand still.)"""
    end = time.monotonic() + timeout
    last = -1.0
    while time.monotonic() < end:
        kids = {pid: children(pid) for pid in expected}
        total = sum(cpu_seconds(p) for ps in kids.values() for p in ps)
        if all(len(kids[pid]) >= n for pid, n in expected.items()) and total == last:
            return True
        last = total
        time.sleep(0.3)
    return False


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_line() -> str:
    """One line: Python version and build, OS, CPU model and count."""
    return (
        f"Python {platform.python_version()} ({platform.python_implementation()}, "
        f"{platform.python_compiler()}) on {platform.system()} {platform.release()}; "
        f"CPU: {cpu_model()} x {os.cpu_count()}"
    )


def median_per_op(fn: Callable[[int], int | None], reps: int, *, warmup: bool = True) -> float:
    """Median seconds per operation. ``fn(rep)`` runs one batch and returns how many
    operations it did (``None`` = 1); it is called ``reps`` times (plus one warm-up)."""
    if warmup:
        fn(-1)
    samples = []
    for rep in range(reps):
        t0 = time.perf_counter()
        n = fn(rep)
        samples.append((time.perf_counter() - t0) / (n or 1))
    return statistics.median(samples)


def paired_per_op(
    subject: Callable[[int], int | None],
    baseline: Callable[[int], int | None],
    reps: int,
    settle: Callable[[], object] | None = None,
) -> tuple[float, float, float]:
    """Run ``subject`` and ``baseline`` batches interleaved (alternating which goes
    first), so both see the same background load (page-cache writeback, a neighbour's
    I/O). Returns (median seconds per op of the subject, of the baseline, median of the
    per-pair ratios subject/baseline). ``fn(rep)`` as for :func:`median_per_op`; one
    warm-up batch of each (``rep=-1``) is not timed. ``settle`` runs (untimed) before
    every batch: e.g. flush the subject and ``os.sync()``, so that no batch pays for
    write-back left behind by the previous one (or by the subject's background
    flusher)."""
    baseline(-1)
    subject(-1)
    s_times: list[float] = []
    b_times: list[float] = []
    for rep in range(reps):
        order = ((baseline, b_times), (subject, s_times))
        for fn, out in order if rep % 2 == 0 else order[::-1]:
            if settle is not None:
                settle()
            t0 = time.perf_counter()
            n = fn(rep)
            out.append((time.perf_counter() - t0) / (n or 1))
    ratios = [s / b for s, b in zip(s_times, b_times, strict=True)]
    return statistics.median(s_times), statistics.median(b_times), statistics.median(ratios)


def fmt_time(seconds: float) -> str:
    if seconds < 1e-3:
        return f"{seconds * 1e6:.2f} us"
    if seconds < 1:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds:.2f} s"


def fmt_rate(bytes_per_s: float) -> str:
    return f"{bytes_per_s / 1e9:.2f} GB/s"


def fmt_bytes(n: float) -> str:
    return f"{n / MiB:.1f} MiB"


@dataclass
class Row:
    """One line of the results table: a NexusFS figure next to its baseline and the
    ratio of the two. ``target`` (``None``: informational) is checked against
    ``measured`` (default: the ratio): ``<= target`` if ``lower_is_better``, else
    ``>= target``; ``target_unit`` says how to print it ("x", "%", " GB/s", " MiB")."""

    name: str
    value: str
    baseline_name: str
    baseline: str
    ratio: float | None
    target: float | None = None
    lower_is_better: bool = True
    target_unit: str = "x"
    measured: float | None = None
    ratio_pct: bool = False

    @property
    def checked(self) -> float | None:
        return self.ratio if self.measured is None else self.measured

    @property
    def ok(self) -> bool | None:
        value = self.checked
        if self.target is None or value is None:
            return None
        return value <= self.target if self.lower_is_better else value >= self.target

    def target_text(self) -> str:
        if self.target is None:
            return ""
        op = "<=" if self.lower_is_better else ">="
        if self.target_unit == "%":
            return f"{op} {self.target:.0%}"
        return f"{op} {self.target:g}{self.target_unit}"

    def ratio_text(self) -> str:
        if self.ratio is None:
            return "-"
        return f"{self.ratio:.0%}" if self.ratio_pct else f"{self.ratio:.2f}x"


def print_table(title: str, rows: list[Row]) -> int:
    """Print the table with PASS/MISS per target; return the number of misses."""
    headers = ("measurement", "NexusFS", "baseline", "baseline value", "ratio", "target", "")
    cells = [
        (r.name, r.value, r.baseline_name, r.baseline, r.ratio_text(), r.target_text(),
         "" if r.ok is None else ("PASS" if r.ok else "MISS"))
        for r in rows
    ]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(headers)]
    line = "  ".join("-" * w for w in widths)
    print(title)
    print("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip())
    print(line)
    for c in cells:
        print("  ".join(v.ljust(w) for v, w in zip(c, widths, strict=True)).rstrip())
    print(line)
    misses = sum(1 for r in rows if r.ok is False)
    checked = sum(1 for r in rows if r.ok is not None)
    print(f"{checked - misses}/{checked} targets met" + (f", {misses} MISS" if misses else ""))
    return misses
