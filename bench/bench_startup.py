"""Benchmark of start-up: a distro's kernel to its first syscall, and the CLI.

    python bench/bench_startup.py [--quick]

Measures, in one run, with the real ``nexus`` console script next to this Python:
  (a) ``nexus up --distro nexus-server`` on a fresh data directory until the first
      successful syscall (a hooked, audited ``write`` over the bus from this process):
      the kernel daemon, its metastore, the service host and the ``hooks`` worker all
      start inside the measured time. Target: <= 1.5 s. Baselines in the same run:
      ``python -c pass`` start-up, and a raw Unix-socket server process started until
      it answers a ping (the floor for "start a process that serves a socket");
  (b) ``nexus ls /`` wall time on a data directory initialised with that distro,
      embedded (no daemon) and through a running kernel. Target: <= 300 ms each.
      Baseline: ``python -c 'import click'``.
Subject and baseline runs alternate so machine noise hits both alike; figures are
medians. Always exits 0; prints PASS/MISS per target.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from _common import Row, ensure_kernel_importable, fmt_time, machine_line, print_table  # noqa: E402

ensure_kernel_importable()

from nexusfs.client import RemoteNexusFS  # noqa: E402
from nexusfs.server import daemon  # noqa: E402

TARGET_UP_S = 1.5
TARGET_LS_S = 0.300
DISTRO = "nexus-server"

RAW_SERVER = """
import socket, sys
srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
srv.bind(sys.argv[1]); srv.listen()
conn, _ = srv.accept()
conn.sendall(conn.recv(4))
"""


def nexus_command() -> list[str]:
    """The ``nexus`` console script of this Python's environment (else ``-m``)."""
    script = Path(sys.executable).parent / "nexus"
    return [str(script)] if script.exists() else [sys.executable, "-m", "nexusfs.cli"]


def clean_env() -> dict[str, str]:
    """This environment without NEXUS_* settings (the distro must decide) and without
    PYTHONDONTWRITEBYTECODE: an installed nexusfs runs from cached bytecode (pip
    compiles it at install), so start-up is measured with ``.pyc`` files allowed."""
    return {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("NEXUS_") and k != "PYTHONDONTWRITEBYTECODE"
    }


def run(cmd: list[str], env: dict[str, str]) -> float:
    """Wall seconds of one command; raises if it fails."""
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {proc.stderr.strip()}")
    return elapsed


def up_to_first_syscall(base: Path, rep: int, env: dict[str, str]) -> float:
    """``nexus up --distro`` on a fresh data directory, then one write over the bus."""
    data = base / f"up-{rep}"
    t0 = time.perf_counter()
    run([*nexus_command(), "--data-dir", str(data), "up", "--distro", DISTRO], env)
    state = daemon.kernel_state(data, check=False)
    assert state is not None, "nexus up returned without a kernel.json"
    with RemoteNexusFS(state["socket"]) as fs:
        fs.write("/first.txt", b"first syscall")
        elapsed = time.perf_counter() - t0
        services = {s["name"]: s["state"] for s in fs.call("services.list")}
    daemon.stop(data)
    shutil.rmtree(data, ignore_errors=True)
    if services.get("hooks") != "running":
        raise RuntimeError(f"the hooks service did not run: {services}")
    return elapsed


def raw_server_start(base: Path, rep: int) -> float:
    """Start a Python process serving a Unix socket, until it answers a ping."""
    import socket

    path = base / f"raw-{rep}.sock"
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", RAW_SERVER, str(path)])
    try:
        while True:
            try:
                with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                    s.connect(str(path))
                    s.sendall(b"ping")
                    if s.recv(4) == b"ping":
                        break
            except (FileNotFoundError, ConnectionRefusedError):
                time.sleep(0.001)
        return time.perf_counter() - t0
    finally:
        proc.wait(timeout=10)
        path.unlink(missing_ok=True)


def interleaved(fns: dict[str, Callable[[int], float]], reps: int) -> dict[str, list[float]]:
    """Run each function ``reps`` times, rotating the order every round."""
    names = list(fns)
    out: dict[str, list[float]] = {n: [] for n in names}
    for rep in range(reps):
        order = names[rep % len(names) :] + names[: rep % len(names)]
        for name in order:
            out[name].append(fns[name](rep))
    return out


def bench(quick: bool) -> list[Row]:
    env = clean_env()
    nexus = nexus_command()
    base = Path(tempfile.mkdtemp(prefix="nxbench-startup-"))
    try:
        py = [sys.executable]
        # warm-up: page cache, .pyc files, the first fork of everything
        run([*py, "-c", "pass"], env)
        up_to_first_syscall(base, -1, env)

        reps_up = 3 if quick else 10
        a = interleaved(
            {
                "up": lambda r: up_to_first_syscall(base, r, env),
                "pass": lambda _r: run([*py, "-c", "pass"], env),
                "raw": lambda r: raw_server_start(base, r),
            },
            reps_up,
        )

        data = base / "ls-data"
        run([*nexus, "--data-dir", str(data), "init", "--distro", DISTRO], env)
        data_env = {**env, "NEXUS_DATA_DIR": str(data)}
        ls = [*nexus, "ls", "/"]
        reps_ls = 5 if quick else 20
        run(ls, data_env)  # warm-up
        b = interleaved(
            {
                "ls": lambda _r: run(ls, data_env),
                "click": lambda _r: run([*py, "-c", "import click"], env),
            },
            reps_ls,
        )
        run([*nexus, "--data-dir", str(data), "up"], env)
        try:
            run(ls, data_env)  # warm-up
            c = interleaved({"ls": lambda _r: run(ls, data_env)}, reps_ls)
        finally:
            run([*nexus, "--data-dir", str(data), "down"], env)
    finally:
        shutil.rmtree(base, ignore_errors=True)

    up, py_pass, raw = (statistics.median(a[k]) for k in ("up", "pass", "raw"))
    ls_embedded, click = statistics.median(b["ls"]), statistics.median(b["click"])
    ls_remote = statistics.median(c["ls"])
    return [
        Row(f"up --distro {DISTRO} -> first syscall", fmt_time(up), "python -c pass",
            fmt_time(py_pass), up / py_pass, TARGET_UP_S, target_unit=" s", measured=up),
        Row(f"up --distro {DISTRO} -> first syscall", fmt_time(up), "raw unix server start",
            fmt_time(raw), up / raw),
        Row("nexus ls / (embedded)", fmt_time(ls_embedded), "python -c 'import click'",
            fmt_time(click), ls_embedded / click, TARGET_LS_S, target_unit=" s",
            measured=ls_embedded),
        Row("nexus ls / (kernel process)", fmt_time(ls_remote), "python -c 'import click'",
            fmt_time(click), ls_remote / click, TARGET_LS_S, target_unit=" s",
            measured=ls_remote),
    ]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions (seconds)")
    args = parser.parse_args()
    print(machine_line())
    print(f"nexus: {' '.join(nexus_command())}")
    rows = bench(args.quick)
    print_table("Start-up (medians; targets are absolute wall times)", rows)


if __name__ == "__main__":
    main()
