"""Benchmark of the NexusFS kernel (``nexusfs.connect``: redb metastore + local object
store) against baselines measured in the same run, in the same directory.

Usage: ``python bench/bench_kernel.py [--quick] [--dir DIR] [--strict]``

Targets (each a ratio to its baseline unless stated):

* ``stat`` of a file vs ``os.stat`` of a real file: <= 2x
* 4 KiB write (deferred, no fsync) vs raw ``open/write/close`` of a new file: <= 1.5x
* 4 KiB read vs raw ``open/read/close``: <= 1.5x
* durable 4 KiB write (``immediate``) vs raw durable create (write, fsync the file,
  fsync its directory): <= 1.2x
* ``readdir`` of 10,000 entries vs ``os.listdir`` + ``os.stat`` of each: <= 2x
* streaming a 256 MiB file in (``open("wb")``, 1 MiB chunks) vs BLAKE3 hash throughput
  of the same bytes (one thread): >= 60% (a raw ``os.write`` of the same bytes, no hash,
  is shown too: when the disk is slower than the hash, that is the real bound)
* streaming it out (``iter_read``): >= 1 GB/s (a raw ``os.pread`` loop is shown too)
* peak memory of streaming a 1 GiB file in and out (fresh child process; peak RSS
  (``VmHWM``, i.e. ``ru_maxrss`` of this process image) over the RSS before, and the
  tracemalloc peak): < 64 MiB

Per-operation figures are medians of repeated batches; throughput figures are medians of
repeated runs. ``--quick`` (CI smoke mode, < 20 s) uses fewer repetitions, 32 MiB
streams and a 64 MiB memory run. Exits 0 unless ``--strict`` and a target is missed.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

import blake3

from _common import (
    MiB,
    Row,
    ensure_kernel_importable,
    fmt_bytes,
    fmt_rate,
    fmt_time,
    kernel_env,
    machine_line,
    paired_per_op,
    print_table,
)

ensure_kernel_importable()

import nexusfs  # noqa: E402

SMALL = 4096


def connect(path: Path, durability: str) -> Any:
    return nexusfs.connect(data_dir=path, durability=durability)


def settle(fs: Any) -> Any:
    """Before each timed batch: flush the kernel (so its background flusher has nothing
    left to write during the next batch, whichever side runs) and ``sync`` the
    machine's dirty pages (so no batch pays for the previous batch's write-back)."""

    def run() -> None:
        fs.flush()
        os.sync()

    return run


# ------------------------------------------------------------------------------ stat


def bench_stat(work: Path, n: int, reps: int) -> Row:
    raw_dir = work / "raw-stat" / "dir" / "sub"
    raw_dir.mkdir(parents=True)
    real = str(raw_dir / "file.txt")
    with open(real, "wb") as f:
        f.write(b"x" * 100)
    with connect(work / "nx-stat", "deferred") as fs:
        fs.write("/dir/sub/file.txt", b"x" * 100)
        path = "/dir/sub/file.txt"
        nx_stat, os_stat = fs.stat, os.stat

        def nx(_rep: int) -> int:
            for _ in range(n):
                nx_stat(path)
            return n

        def raw(_rep: int) -> int:
            for _ in range(n):
                os_stat(real)
            return n

        t_nx, t_raw, ratio = paired_per_op(nx, raw, reps, settle(fs))
    return Row("stat", fmt_time(t_nx), "os.stat", fmt_time(t_raw), ratio, 2.0)


# --------------------------------------------------------------------- small writes


def bench_small_io(work: Path, n: int, reps: int) -> list[Row]:
    data = os.urandom(SMALL)
    raw_root = work / "raw-small"
    batches = range(-1, reps)
    raw_paths = {r: [str(raw_root / str(r) / f"f{i}") for i in range(n)] for r in batches}
    nx_paths = {r: [f"/small/{r}/f{i}" for i in range(n)] for r in batches}
    for r in batches:
        (raw_root / str(r)).mkdir(parents=True)
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
    o_open, o_write, o_read, o_close = os.open, os.write, os.read, os.close

    def raw_write(rep: int) -> int:
        for p in raw_paths[rep]:
            fd = o_open(p, flags, 0o644)
            o_write(fd, data)
            o_close(fd)
        return n

    def raw_read(rep: int) -> int:
        for p in raw_paths[rep]:
            fd = o_open(p, os.O_RDONLY)
            o_read(fd, 65536)
            o_close(fd)
        return n

    with connect(work / "nx-small", "deferred") as fs:
        write, read = fs.write, fs.read

        def nx_write(rep: int) -> int:
            for p in nx_paths[rep]:
                write(p, data)
            return n

        def nx_read(rep: int) -> int:
            for p in nx_paths[rep]:
                read(p)
            return n

        tw_nx, tw_raw, w_ratio = paired_per_op(nx_write, raw_write, reps, settle(fs))
        tr_nx, tr_raw, r_ratio = paired_per_op(nx_read, raw_read, reps, settle(fs))
        assert fs.read(nx_paths[0][0]) == data
    return [
        Row("4 KiB write (deferred)", fmt_time(tw_nx), "open/write/close", fmt_time(tw_raw),
            w_ratio, 1.5),
        Row("4 KiB read", fmt_time(tr_nx), "open/read/close", fmt_time(tr_raw), r_ratio, 1.5),
    ]


def bench_durable(work: Path, n: int, reps: int) -> Row:
    data = os.urandom(SMALL)
    raw_dir = work / "raw-durable"
    raw_dir.mkdir()
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
    dfd = os.open(raw_dir, os.O_RDONLY)

    def raw(rep: int) -> int:
        for i in range(n):
            fd = os.open(f"{raw_dir}/{rep}-{i}", flags, 0o644)
            os.write(fd, data)
            os.fsync(fd)
            os.close(fd)
            os.fsync(dfd)
        return n

    try:
        with connect(work / "nx-durable", "immediate") as fs:
            write = fs.write

            def nx(rep: int) -> int:
                for i in range(n):
                    write(f"/durable/{rep}-{i}", data)
                return n

            t_nx, t_raw, ratio = paired_per_op(nx, raw, reps, settle(fs))
    finally:
        os.close(dfd)
    return Row("durable 4 KiB write (immediate)", fmt_time(t_nx),
               "write+fsync file+fsync dir", fmt_time(t_raw), ratio, 1.2)


# --------------------------------------------------------------------------- readdir


def bench_readdir(work: Path, entries: int, reps: int) -> Row:
    raw_dir = work / "raw-readdir"
    raw_dir.mkdir()
    for i in range(entries):
        with open(raw_dir / f"entry-{i:05d}", "wb") as f:
            f.write(b"x" * 10)
    listdir, stat, join = os.listdir, os.stat, os.path.join
    d = str(raw_dir)

    def raw(_rep: int) -> None:
        [stat(join(d, name)) for name in listdir(d)]

    with connect(work / "nx-readdir", "deferred") as fs:
        for i in range(entries):
            fs.write(f"/big/entry-{i:05d}", b"x" * 10)

        def nx(_rep: int) -> None:
            listing = fs.readdir("/big")
            assert len(listing) == entries

        t_nx, t_raw, ratio = paired_per_op(nx, raw, reps, settle(fs))
    return Row(f"readdir, {entries:,} entries", fmt_time(t_nx), "os.listdir + os.stat each",
               fmt_time(t_raw), ratio, 2.0)


# ------------------------------------------------------------------------- streaming


def bench_streaming(work: Path, size: int, reps: int) -> list[Row]:
    """Each run, in turn: BLAKE3 of the buffer, a raw ``os.write`` of it, NexusFS stream
    in, NexusFS ``iter_read`` out, a raw ``os.pread`` loop over the same blob file. Ratios
    are medians of per-run ratios (both sides of a ratio saw the same load)."""
    buf = bytearray(os.urandom(size))
    view = memoryview(buf)
    raw_file = work / "raw-stream.bin"
    t: dict[str, list[float]] = {k: [] for k in ("hash", "raw_in", "in", "out", "raw_out")}

    def timed(key: str, fn: Any) -> Any:
        t0 = time.perf_counter()
        result = fn()
        t[key].append(time.perf_counter() - t0)
        return result

    def raw_write() -> None:
        fd = os.open(raw_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            for i in range(0, size, MiB):
                os.write(fd, view[i : i + MiB])
        finally:
            os.close(fd)

    def raw_read(blob: str) -> None:
        fd = os.open(blob, os.O_RDONLY)
        try:
            pos = 0
            while chunk := os.pread(fd, MiB, pos):
                pos += len(chunk)
        finally:
            os.close(fd)

    with connect(work / "nx-stream", "deferred") as fs:

        def stream_in(path: str) -> None:
            with fs.open(path, "wb") as f:
                for i in range(0, size, MiB):
                    f.write(view[i : i + MiB])

        def stream_out(path: str) -> int:
            return sum(len(chunk) for chunk in fs.iter_read(path))

        for rep in range(reps):
            buf[0] = rep & 0xFF  # new content each run: no deduplication shortcut
            path = f"/stream/{rep}"
            timed("hash", lambda: blake3.blake3(view).hexdigest())
            os.sync()  # each write starts with no dirty pages left by the previous one
            timed("raw_in", raw_write)
            raw_file.unlink()
            os.sync()
            timed("in", lambda path=path: stream_in(path))
            meta = fs.stat(path)
            assert meta.size == size
            assert timed("out", lambda path=path: stream_out(path)) == size
            blob = str(fs._stores[meta.store].path_of(meta.content_id))
            timed("raw_out", lambda blob=blob: raw_read(blob))
            fs.unlink(path)
            fs.flush()  # reclaim this run's blob (disk space)

    def rate(key: str) -> float:
        return size / statistics.median(t[key])

    def ratio(num: str, den: str) -> float:
        # times are inverse rates: rate(num)/rate(den) = t(den)/t(num)
        return statistics.median(d / n for n, d in zip(t[num], t[den], strict=True))

    label = f"{size // MiB} MiB"
    return [
        Row(f"stream in {label} (open wb, 1 MiB)", fmt_rate(rate("in")),
            "blake3 hash, 1 thread", fmt_rate(rate("hash")), ratio("in", "hash"), 0.60,
            lower_is_better=False, target_unit="%", ratio_pct=True),
        Row(f"stream in {label}, vs raw write", fmt_rate(rate("in")),
            "os.write, 1 MiB, no hash", fmt_rate(rate("raw_in")), ratio("in", "raw_in"),
            ratio_pct=True),
        Row(f"stream out {label} (iter_read)", fmt_rate(rate("out")), "os.pread loop, 1 MiB",
            fmt_rate(rate("raw_out")), ratio("out", "raw_out"), 1.0, lower_is_better=False,
            target_unit=" GB/s", measured=rate("out") / 1e9, ratio_pct=True),
    ]


def _rss_now() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _reset_peak_rss() -> None:
    """Reset the peak-RSS counter (Linux >= 4.0), if allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def _peak_rss() -> int:
    """Peak RSS of this process image. ``ru_maxrss`` is not used directly: after
    ``fork``+``exec`` Linux carries the *parent's* RSS into the child's ``ru_maxrss``
    (here that is the benchmark process holding its stream buffer), while ``VmHWM`` is
    the same high-water mark for this image only."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def memory_child(data_dir: str, size: int) -> None:
    """Stream ``size`` bytes in (a reused 1 MiB buffer) and out; print JSON peaks."""
    buf = bytearray(os.urandom(MiB))
    with nexusfs.connect(data_dir=data_dir, durability="deferred") as fs:

        def run(path: str, tag: int, size: int = size) -> None:
            with fs.open(path, "wb") as f:
                for i in range(size // MiB):
                    buf[:8] = (i + tag * (1 << 40)).to_bytes(8, "little")
                    f.write(buf)
            n = 0
            for chunk in fs.iter_read(path):
                n += len(chunk)
            assert n == size
            fs.unlink(path)
            fs.flush()

        run("/warmup", 0, 8 * MiB)  # start the store's threads before measuring
        _reset_peak_rss()
        before = _rss_now()
        t0 = time.perf_counter()
        run("/big", 1)
        elapsed = time.perf_counter() - t0
        rss_delta = _peak_rss() - before
        tracemalloc.start()
        run("/big2", 2)
        _, traced = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    print(json.dumps({"rss_delta": max(rss_delta, 0), "traced_peak": traced,
                      "seconds": elapsed}))


def bench_memory(work: Path, size: int) -> Row:
    out = subprocess.run(
        [sys.executable, __file__, "--memory-child", str(work / "nx-memory"), str(size)],
        check=True, capture_output=True, text=True, env=kernel_env(),
    ).stdout
    mem = json.loads(out.strip().splitlines()[-1])
    peak = max(mem["rss_delta"], mem["traced_peak"])
    label = f"{size // MiB} MiB" if size < 1 << 30 else f"{size >> 30} GiB"
    return Row(
        f"peak memory, stream {label} in+out", fmt_bytes(peak),
        "rss delta / tracemalloc",
        f"{fmt_bytes(mem['rss_delta'])} / {fmt_bytes(mem['traced_peak'])}",
        None, 64.0, target_unit=" MiB", measured=peak / MiB,
    )


# ------------------------------------------------------------------------------ main


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke mode (< 20 s)")
    parser.add_argument("--dir", default=None, help="scratch directory (default: $TMPDIR)")
    parser.add_argument("--strict", action="store_true", help="exit 1 if a target is missed")
    parser.add_argument("--memory-child", nargs=2, metavar=("DIR", "SIZE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        memory_child(args.memory_child[0], int(args.memory_child[1]))
        return 0

    if args.quick:
        cfg = {"stat_n": 5000, "io_n": 500, "durable_n": 20, "entries": 10_000,
               "stream": 32 * MiB, "memory": 64 * MiB, "reps": 3}
    else:
        cfg = {"stat_n": 50_000, "io_n": 2000, "durable_n": 200, "entries": 10_000,
               "stream": 256 * MiB, "memory": 1 << 30, "reps": 7}
    reps = cfg["reps"]
    print(machine_line())
    print(f"mode: {'quick' if args.quick else 'full'}; per-op figures are medians of {reps} "
          f"batches, throughput medians of {min(reps, 5)} runs")
    start = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="nexusfs-bench-kernel-", dir=args.dir))
    rows: list[Row] = []
    try:
        rows.append(bench_stat(work, cfg["stat_n"], reps))
        rows += bench_small_io(work, cfg["io_n"], reps)
        rows.append(bench_durable(work, cfg["durable_n"], max(3, reps // 2)))
        rows.append(bench_readdir(work, cfg["entries"], reps))
        rows += bench_streaming(work, cfg["stream"], min(reps, 5))
        rows.append(bench_memory(work, cfg["memory"]))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print()
    misses = print_table("NexusFS kernel benchmark (connect(): redb metastore + local store)",
                         rows)
    print(f"total {time.perf_counter() - start:.1f} s")
    return 1 if args.strict and misses else 0


if __name__ == "__main__":
    sys.exit(main())
