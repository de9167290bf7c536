"""Crash safety of the kernel under SIGKILL, for both durabilities.

A child process (``sys.executable`` running ``CHILD`` below) opens
``nexusfs.connect(data_dir, durability=...)`` and loops over random operations on a small
pool of paths: whole-file writes and streaming writes (``open("wb")``) of random sizes
on both sides of the 16 KiB inline limit (some over 2 MiB, the object store's pipeline
chunk), appends (``open("ab")``), overwrites, unlinks, file renames, and the multi-key
commits: directory renames and recursive ``rmdir``. Before each operation it prints
``BEGIN`` with everything needed to replay it, and after it returns one ``ACK`` line:
the path and BLAKE3 hex of the new content, ``deleted PATH``, ``renamed`` or the error
class (which the parent's model must predict). The parent SIGKILLs the child at a random
moment (sometimes during start-up, i.e. during recovery), 32 times in all across
``immediate`` and ``deferred``.

After every kill the parent reopens the data directory and checks against its model:
every acknowledged write is readable with its exact bytes unless a later acknowledged
operation replaced or deleted it, and the directories are exactly the model's; the one
operation in flight at the kill (``BEGIN`` without ``ACK``) is entirely applied or
entirely absent; every file's ``content_id`` is the BLAKE3 of its bytes; every
blob-backed inode's blob exists; the metastore's blob reference counts equal the inodes
that point at each blob. At the end ``gc(grace=0)`` must reclaim every unreferenced blob
(crash orphans, blobs whose deferred reclaim died with the child, and orphans planted
directly in the store) and every temp file, keep every referenced one, and every file
must still read back.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import blake3
import pytest

import nexusfs
from kernel_testkit import native_available

# The inline limit of the spec (16 KiB): files up to it live in the metastore, larger
# ones in the object store. Each kernel made here is checked to use it.
INLINE_MAX = 16 * 1024
pytestmark = pytest.mark.skipif(not native_available(), reason="nexusfs._native is not built")

KERNEL_DIR = str(Path(nexusfs.__file__).resolve().parent.parent)
PATHS = [f"/d{d}/f{f}" for d in range(4) for f in range(4)]
SIZES = [0, 7, 1000, INLINE_MAX, INLINE_MAX + 1, 40_000, 200_000, (2 << 20) + 12345]
KILLS_PER_DURABILITY = 16


def gen(seed: int, size: int) -> bytes:
    """Deterministic content; the child script defines the same function."""
    return random.Random(seed).randbytes(size)


def b3(data: bytes) -> str:
    return blake3.blake3(data).hexdigest()


CHILD = r'''
import random, sys
import blake3
import nexusfs

def gen(seed, size):
    return random.Random(seed).randbytes(size)

def out(line):
    sys.stdout.write(line + "\n")
    sys.stdout.flush()

data_dir, durability, seed = sys.argv[1], sys.argv[2], int(sys.argv[3])
paths = sys.argv[4].split(",")
sizes = [int(s) for s in sys.argv[5].split(",")]
dirs = sorted({p.rsplit("/", 1)[0] for p in paths})
rnd = random.Random(seed)
fs = nexusfs.connect(data_dir=data_dir, durability=durability, flush_interval=0.05)
out("READY")
for n in range(100000):
    r = rnd.random()
    p = rnd.choice(paths)
    s = rnd.choice(sizes) if rnd.random() < 0.8 else rnd.randrange(0, 100000)
    cseed = rnd.randrange(1 << 30)
    try:
        if r < 0.40:
            out(f"BEGIN {n} write {p} {cseed} {s}")
            data = gen(cseed, s)
            fs.write(p, data)
            out(f"ACK {n} {p} {blake3.blake3(data).hexdigest()}")
        elif r < 0.52:
            out(f"BEGIN {n} write {p} {cseed} {s}")
            data = gen(cseed, s)
            with fs.open(p, "wb") as f:
                for i in range(0, len(data), 65536):
                    f.write(data[i:i + 65536])
            out(f"ACK {n} {p} {blake3.blake3(data).hexdigest()}")
        elif r < 0.62:
            s = s % 30000
            out(f"BEGIN {n} append {p} {cseed} {s}")
            with fs.open(p, "ab") as f:
                f.write(gen(cseed, s))
            out(f"ACK {n} {p} {blake3.blake3(fs.read(p)).hexdigest()}")
        elif r < 0.74:
            out(f"BEGIN {n} unlink {p}")
            fs.unlink(p)
            out(f"ACK {n} deleted {p}")
        elif r < 0.86:
            q = rnd.choice(paths)
            out(f"BEGIN {n} rename {p} {q}")
            fs.rename(p, q)
            out(f"ACK {n} renamed {p} {q}")
        elif r < 0.94:
            d, e = rnd.choice(dirs), rnd.choice(dirs)
            out(f"BEGIN {n} rename_dir {d} {e}")
            fs.rename(d, e)
            out(f"ACK {n} renamed {d} {e}")
        else:
            d = rnd.choice(dirs)
            out(f"BEGIN {n} rmtree {d}")
            fs.rmdir(d, recursive=True)
            out(f"ACK {n} deleted {d}")
    except nexusfs.NexusError as exc:
        out(f"ACK {n} error {type(exc).__name__}")
out("DONE")
'''


# The model's state: path -> file bytes, or None for a directory.
State = dict[str, bytes | None]


def _parent(path: str) -> str:
    return path.rsplit("/", 1)[0] or "/"


def _under(path: str, root: str) -> bool:
    return path == root or path.startswith(root + "/")


def apply(state: State, op: list[str]) -> tuple[State, str | None]:
    """The model: the state after ``op`` (BEGIN fields after the number) and the error
    class name it must raise, if any (then the state is unchanged)."""
    new = dict(state)
    kind, args = op[0], op[1:]
    if kind in ("write", "append"):
        p, data = args[0], gen(int(args[1]), int(args[2]))
        new.setdefault(_parent(p), None)  # NexusFS creates missing parents
        if kind == "append":
            data = (state.get(p) or b"") + data
        new[p] = data
    elif kind == "unlink":
        if state.get(args[0]) is None:
            return state, "NotFound"
        del new[args[0]]
    elif kind == "rename":
        src, dst = args
        if src not in state:
            return state, "NotFound"
        if src != dst:
            if _parent(dst) not in state:
                return state, "NotFound"
            new[dst] = new.pop(src)
    elif kind == "rename_dir":
        src, dst = args
        if src not in state:
            return state, "NotFound"
        if src != dst:
            if any(_under(p, dst) and p != dst for p in state):
                return state, "DirectoryNotEmpty"
            new.pop(dst, None)
            for p in [p for p in state if _under(p, src)]:
                new[dst + p[len(src) :]] = new.pop(p)
    elif kind == "rmtree":
        if args[0] not in state:
            return state, "NotFound"
        for p in [p for p in state if _under(p, args[0])]:
            del new[p]
    else:
        raise AssertionError(f"unknown op {op}")
    return new, None


def run_child(
    data_dir: Path, durability: str, seed: int, delay: float, script: Path
) -> list[str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = KERNEL_DIR + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.Popen(
        [sys.executable, str(script), str(data_dir), durability, str(seed), ",".join(PATHS),
         ",".join(map(str, SIZES))],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True,
    )
    timer = threading.Timer(delay, lambda: proc.send_signal(signal.SIGKILL))
    timer.start()
    try:
        assert proc.stdout is not None and proc.stderr is not None
        lines = proc.stdout.read().splitlines()
        err = proc.stderr.read()
        proc.wait(timeout=30)
    finally:
        timer.cancel()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL, f"child exited {proc.returncode}: {err[-3000:]}"
    return lines


def read_state(fs: Any) -> State:
    """Every directory and every file's bytes, checking each inode on the way."""
    out: State = {}
    refs: Counter[tuple[str, str]] = Counter()
    for m in fs.readdir("/", recursive=True):
        assert fs.stat(m.path) == m
        if m.is_dir:
            out[m.path] = None
            continue
        data = fs.read(m.path)
        assert len(data) == m.size, m
        assert b3(data) == m.content_id, m
        assert m.inline == (m.size <= INLINE_MAX), m
        if not m.inline:
            assert fs._stores[m.store].exists(m.content_id), f"missing blob of {m}"
            refs[(m.store, m.content_id)] += 1
        out[m.path] = data
    stored: Counter[tuple[str, str]] = Counter()
    for key, raw in fs._root.metastore.scan(b"R"):
        stored[(key[1:-33].decode(), key[-32:].hex())] = int.from_bytes(raw, "little")
    assert stored == refs, "blob reference counts disagree with the inodes"
    return out


def summary(state: State) -> dict[str, str]:
    return {
        p: "dir" if d is None else f"{len(d)}:{b3(d)[:12]}" for p, d in sorted(state.items())
    }


def replay(state: State, lines: list[str]) -> tuple[State, int, list[str] | None]:
    """Apply the acknowledged operations of one child run to ``state``; return the new
    state, the number of ACKs and the operation left in flight (or ``None``)."""
    pending: list[str] | None = None
    acks = 0
    for line in lines:
        parts = line.split()
        if not parts or parts[0] in ("READY", "DONE"):
            continue
        if parts[0] == "BEGIN":
            assert pending is None, f"BEGIN without ACK before {line!r}"
            pending = parts[1:]
            continue
        assert parts[0] == "ACK" and pending is not None and parts[1] == pending[0], line
        new, error = apply(state, pending[1:])
        if parts[2] == "error":
            assert parts[3] == error, f"{pending}: child got {parts[3]}, model expects {error}"
        else:
            assert error is None, f"{pending}: child succeeded, model expects {error}"
            if parts[2] not in ("deleted", "renamed"):
                data = new[parts[2]]
                assert data is not None and parts[3] == b3(data), f"{pending}: hash differs"
        state, pending = new, None
        acks += 1
    return state, acks, pending


def store_files(data_dir: Path) -> tuple[set[str], list[str]]:
    objects = data_dir / "objects" / "objects"
    blobs = {p.parent.name + p.name for p in objects.glob("*/*") if p.is_file()}
    tmp = data_dir / "objects" / "tmp"
    temps = sorted(p.name for p in tmp.iterdir()) if tmp.exists() else []
    return blobs, temps


@pytest.mark.timeout(300)
def test_sigkill_during_writes(tmp_path: Path) -> None:
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    # Fixed seed for CI; NEXUSFS_CRASH_SEED explores other schedules.
    rnd = random.Random(int(os.environ.get("NEXUSFS_CRASH_SEED", "20240601")))
    t0 = time.monotonic()
    total_acks = in_flight_applied = in_flight_dropped = 0
    for durability in ("immediate", "deferred"):
        data_dir = tmp_path / f"data-{durability}"
        state: State = {}
        for kill in range(KILLS_PER_DURABILITY):
            # Mostly mid-run; every fourth kill lands early, often during start-up or
            # recovery of the previous crash.
            delay = rnd.uniform(0.02, 0.4) if kill % 4 == 3 else rnd.uniform(0.4, 1.4)
            rnd_seed = rnd.randrange(1 << 30)
            lines = run_child(data_dir, durability, rnd_seed, delay, script)
            acked, acks, pending = replay(state, lines)
            total_acks += acks
            if not (data_dir / "metastore.redb").exists():
                assert acks == 0 and not state
                continue
            with nexusfs.connect(data_dir=data_dir, durability=durability) as fs:
                assert fs.inline_max == INLINE_MAX
                actual = read_state(fs)
            if summary(actual) == summary(acked):
                state = acked
                in_flight_dropped += pending is not None
                continue
            assert pending is not None, (
                f"{durability} kill {kill}: state differs from the acknowledged writes\n"
                f"expected {summary(acked)}\nactual   {summary(actual)}"
            )
            applied, _error = apply(acked, pending[1:])
            assert summary(actual) == summary(applied), (
                f"{durability} kill {kill}: in-flight op {pending} is partly applied, or an "
                f"acknowledged write is lost\nacked   {summary(acked)}\n"
                f"+op     {summary(applied)}\nactual  {summary(actual)}"
            )
            state = applied
            in_flight_applied += 1

        # Final: reclaim everything unreferenced, including a planted orphan.
        with nexusfs.connect(data_dir=data_dir, durability=durability) as fs:
            assert summary(read_state(fs)) == summary(state)
            store = fs._stores["local:objects"]
            orphan = store.put(os.urandom(INLINE_MAX * 2)).content_id
            # A second orphan planted at the file level, as a crash between the blob's
            # rename into objects/ and the commit would leave it.
            raw = os.urandom(INLINE_MAX * 3)
            raw_id = b3(raw)
            shard = data_dir / "objects" / "objects" / raw_id[:2]
            shard.mkdir(exist_ok=True)
            (shard / raw_id[2:]).write_bytes(raw)
            assert store.exists(raw_id)
            referenced = {
                m.content_id for m in fs.readdir("/", recursive=True)
                if m.is_file and not m.inline
            }
            blobs_before, _temps = store_files(data_dir)
            assert {orphan, raw_id} <= blobs_before
            assert not {orphan, raw_id} & referenced
            assert referenced <= blobs_before
            report = fs.gc(grace=0)
            blobs_after, temps_after = store_files(data_dir)
            assert blobs_after == referenced, "gc left unreferenced blobs or lost referenced ones"
            assert temps_after == [], f"gc left temp files: {temps_after}"
            assert report.reclaimed == len(blobs_before) - len(blobs_after)
            assert summary(read_state(fs)) == summary(state)
        with nexusfs.connect(data_dir=data_dir, durability=durability) as fs:
            assert summary(read_state(fs)) == summary(state)
    elapsed = time.monotonic() - t0
    print(f"acks={total_acks} in-flight applied={in_flight_applied} "
          f"dropped={in_flight_dropped} elapsed={elapsed:.1f}s")
    assert total_acks >= 100, "the children acknowledged too few operations to mean much"
