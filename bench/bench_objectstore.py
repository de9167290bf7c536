"""Benchmark of the local object store against raw BLAKE3 and raw file I/O.

Usage: ``python bench/bench_objectstore.py [--quick] [--dir DIR] [--strict]``

Prints one table: BLAKE3 hash throughput (the baseline), streaming write throughput of
``LocalObjectStore`` (pipelined and sequential) and its ratio to the hash, raw
``os.write`` of the same bytes, read throughput (``read`` and ``iter_chunks``) and its
ratio to a raw ``os.pread`` loop over a same-size file, and peak memory while streaming a
large blob in and out (measured in a fresh child process, so ``ru_maxrss`` is not
inflated by the throughput phase). Sizes: 256 MiB throughput and 1 GiB memory runs, or
32 MiB / 64 MiB with ``--quick``. Targets (kernel benchmark): write >= 60% of hash,
read >= 1 GB/s, peak memory < 64 MiB. Exits 0 unless ``--strict`` and a target is missed.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import blake3

KERNEL_DIR = Path(__file__).resolve().parent.parent / "kernel"
MiB = 1 << 20
CHUNK = MiB


def _store_cls() -> Any:
    try:
        from nexusfs.drivers.objectstore.local import LocalObjectStore
    except ImportError:
        sys.path.insert(0, str(KERNEL_DIR))
        from nexusfs.drivers.objectstore.local import LocalObjectStore
    return LocalObjectStore


def best_of(reps: int, fn: Callable[[], None]) -> float:
    """Fastest wall time of ``reps`` runs (seconds)."""
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def throughput(workdir: Path, size: int, reps: int) -> list[tuple[str, float, str]]:
    store_cls = _store_cls()
    data = os.urandom(size)
    view = memoryview(data)
    rows: list[tuple[str, float, str]] = []

    def hash_all() -> None:
        blake3.blake3(view).hexdigest()

    def hash_chunked() -> None:
        h = blake3.blake3()
        for i in range(0, size, CHUNK):
            h.update(view[i : i + CHUNK])
        h.hexdigest()

    def hash_threads() -> None:
        blake3.blake3(view, max_threads=blake3.blake3.AUTO).hexdigest()

    hash_gbps = size / best_of(reps, hash_all) / 1e9
    rows.append(("blake3 hash, 1 thread (baseline)", hash_gbps, ""))
    rows.append(("blake3 hash, 1 MiB updates", size / best_of(reps, hash_chunked) / 1e9, ""))
    rows.append(("blake3 hash, max_threads=AUTO", size / best_of(reps, hash_threads) / 1e9, ""))

    raw_path = workdir / "raw.bin"

    def raw_write() -> None:
        fd = os.open(raw_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            for i in range(0, size, CHUNK):
                os.write(fd, view[i : i + CHUNK])
        finally:
            os.close(fd)

    rows.append(("raw os.write, 1 MiB chunks", size / best_of(reps, raw_write) / 1e9, ""))

    write_gbps = 0.0
    for pipeline in (True, False):
        store = store_cls(workdir / f"store-{pipeline}", "deferred", pipeline=pipeline)
        ids: list[str] = []

        def stream_in(store: Any = store, ids: list[str] = ids) -> None:
            with store.open_writer() as writer:
                for i in range(0, size, CHUNK):
                    writer.write(view[i : i + CHUNK])
                ids.append(writer.commit().content_id)
            store.delete(ids[-1])  # next rep must not deduplicate

        gbps = size / best_of(reps, stream_in) / 1e9
        label = "pipelined" if pipeline else "sequential"
        rows.append(
            (f"store write ({label}), 1 MiB writes", gbps, f"{gbps / hash_gbps:.0%} of hash")
        )
        if pipeline:
            write_gbps = gbps
        store.close()

    store = store_cls(workdir / "store-read", "deferred")
    cid = store.put(data).content_id

    def raw_read_whole() -> None:
        fd = os.open(raw_path, os.O_RDONLY)
        try:
            os.pread(fd, size, 0)
        finally:
            os.close(fd)

    def raw_read_loop() -> None:
        fd = os.open(raw_path, os.O_RDONLY)
        try:
            pos = 0
            while chunk := os.pread(fd, CHUNK, pos):
                pos += len(chunk)
        finally:
            os.close(fd)

    def read_whole() -> None:
        store.read(cid)

    def read_chunks() -> None:
        for _ in store.iter_chunks(cid):
            pass

    # A whole-blob read() must fault in a fresh result buffer of `size` bytes; compare it
    # with a raw single pread that pays the same cost, and iter_chunks with a raw loop.
    for raw_label, raw_fn, label, fn in (
        ("raw os.pread, whole file", raw_read_whole, "store read(), whole blob", read_whole),
        ("raw os.pread loop, 1 MiB chunks", raw_read_loop, "store iter_chunks()", read_chunks),
    ):
        raw_gbps = size / best_of(reps, raw_fn) / 1e9
        rows.append((raw_label, raw_gbps, ""))
        gbps = size / best_of(reps, fn) / 1e9
        rows.append((label, gbps, f"{gbps / raw_gbps:.0%} of raw read"))
    store.close()
    rows.append(("_write_ratio", write_gbps / hash_gbps, ""))
    return rows


def memory_child(root: str, size: int) -> None:
    """Stream ``size`` bytes in (reused 1 MiB buffer) and out; print peaks as JSON."""
    store_cls = _store_cls()
    store = store_cls(root, "deferred")
    buf = bytearray(os.urandom(CHUNK))

    def run() -> None:
        with store.open_writer() as writer:
            for i in range(size // CHUNK):
                buf[:8] = i.to_bytes(8, "little")
                writer.write(buf)
            cid = writer.commit().content_id
        h = blake3.blake3()
        for chunk in store.iter_chunks(cid):
            h.update(chunk)
        assert h.hexdigest() == cid
        store.delete(cid)

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    run()
    elapsed = time.perf_counter() - t0
    rss_delta = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024
    tracemalloc.start()
    run()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    store.close()
    print(json.dumps({"rss_delta": rss_delta, "traced_peak": peak, "seconds": elapsed}))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="32 MiB / 64 MiB sizes")
    parser.add_argument("--dir", default=None, help="scratch directory (default: $TMPDIR)")
    parser.add_argument("--strict", action="store_true", help="exit 1 if a target is missed")
    parser.add_argument("--memory-child", nargs=2, metavar=("ROOT", "SIZE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        memory_child(args.memory_child[0], int(args.memory_child[1]))
        return 0

    size, mem_size, reps = (32 * MiB, 64 * MiB, 3) if args.quick else (256 * MiB, 1024 * MiB, 3)
    workdir = Path(tempfile.mkdtemp(prefix="nexusfs-bench-", dir=args.dir))
    try:
        rows = throughput(workdir, size, reps)
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(KERNEL_DIR), os.environ.get("PYTHONPATH", "")]),
        }
        out = subprocess.run(
            [sys.executable, __file__, "--memory-child", str(workdir / "mem"), str(mem_size)],
            check=True,
            capture_output=True,
            text=True,
            env=env,
        ).stdout
        mem = json.loads(out.strip().splitlines()[-1])
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    write_ratio = next(v for k, v, _ in rows if k == "_write_ratio")
    read_gbps = next(v for k, v, _ in rows if k == "store read(), whole blob")
    chunks_gbps = next(v for k, v, _ in rows if k == "store iter_chunks()")
    print(
        f"NexusFS LocalObjectStore benchmark: {size // MiB} MiB blob, best of {reps}, "
        f"{os.cpu_count()} CPUs, python {sys.version.split()[0]}"
    )
    print(f"{'measurement':<42} {'GB/s':>7}  note")
    print("-" * 72)
    for label, gbps, note in rows:
        if not label.startswith("_"):
            print(f"{label:<42} {gbps:>7.2f}  {note}")
    print("-" * 72)
    mem_label = f"{mem_size // MiB} MiB in+out"
    print(
        f"peak memory, {mem_label:<29} tracemalloc {mem['traced_peak'] / MiB:6.1f} MiB, "
        f"ru_maxrss delta {mem['rss_delta'] / MiB:6.1f} MiB "
        f"({2 * mem_size / mem['seconds'] / 1e9:.2f} GB/s)"
    )
    checks = [
        ("write >= 60% of blake3 hash", write_ratio >= 0.60, f"{write_ratio:.0%}"),
        (
            "read >= 1 GB/s",
            min(read_gbps, chunks_gbps) >= 1.0,
            f"{min(read_gbps, chunks_gbps):.2f} GB/s",
        ),
        (
            "peak memory < 64 MiB",
            max(mem["traced_peak"], mem["rss_delta"]) < 64 * MiB,
            f"{max(mem['traced_peak'], mem['rss_delta']) / MiB:.1f} MiB",
        ),
    ]
    print("-" * 72)
    for name, ok, value in checks:
        print(f"{'PASS' if ok else 'MISS'}  {name:<36} {value}")
    return 1 if args.strict and not all(ok for _, ok, _ in checks) else 0


if __name__ == "__main__":
    sys.exit(main())
