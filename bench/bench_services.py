"""Benchmark of the service host: kernel -> worker calls, pipelining, crash recovery.

    python bench/bench_services.py [--quick]

Measures, in one run, with a real worker process of the ``echo`` test service
(``tests/service_plugins``):
  (a) raw blocking Unix-socket ping-pong (8-byte echo to a child process) p50 - baseline;
  (b) ``ServiceHost.call`` round trip kernel -> worker -> kernel p50 (async method);
  (c) pipelined ``ServiceHost.call`` throughput with 64 concurrent callers;
  (d) crash -> first successful call: SIGKILL the worker, then time a call issued at
      once (it waits for the replacement worker) - p50 over several crashes.
Latency rounds alternate raw/host so that machine noise hits both alike; p50 is the
median of per-round p50s. Always exits 0; prints PASS/MISS per target.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import anyio

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "kernel"))
sys.path.insert(0, str(ROOT / "bench"))
PLUGINS = ROOT / "tests" / "service_plugins"
sys.path.insert(0, str(PLUGINS))
os.environ["PYTHONPATH"] = os.pathsep.join(
    p for p in (str(PLUGINS), str(ROOT / "kernel"), os.environ.get("PYTHONPATH")) if p)

from _common import Row, machine_line, print_table  # noqa: E402
from nexusfs.services.host import ServiceHost  # noqa: E402

TARGET_P50_US = 40.0
TARGET_RATIO = 4.0
TARGET_CALLS_S = 50_000.0
TARGET_RECOVERY_MS = 150.0

RAW_SERVER = """
import socket, sys
srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
srv.bind(sys.argv[1]); srv.listen(); print("ready", flush=True)
conn, _ = srv.accept()
while True:
    data = conn.recv(8)
    if not data:
        break
    conn.sendall(data)
"""


def p50(samples: list[float]) -> float:
    return statistics.median(samples)


async def bench(quick: bool) -> list[Row]:
    tmp = Path(tempfile.mkdtemp(prefix="nxbench-"))
    raw_path = str(tmp / "raw.sock")
    raw_proc = subprocess.Popen([sys.executable, "-c", RAW_SERVER, raw_path],
                                stdout=subprocess.PIPE, text=True)
    assert raw_proc.stdout is not None
    raw_proc.stdout.readline()
    raw = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    raw.connect(raw_path)

    def raw_round(n: int) -> list[float]:
        out = []
        pc = time.perf_counter
        for _ in range(n):
            t = pc()
            raw.sendall(b"12345678")
            raw.recv(8)
            out.append(pc() - t)
        return out

    host = ServiceHost(tmp / "data", tmp / "run", lambda n, c: {},
                       {"services": ["echo"], "supervisor": {"max_restarts": 1000}})
    rows: list[Row] = []
    async with anyio.create_task_group() as tg:
        await tg.start(host.run)
        call = host.call
        await call("echo", "echo", {}, deadline=time.time() + 30)

        async def host_round(n: int) -> list[float]:
            out = []
            pc = time.perf_counter
            d = time.time() + 60
            for _ in range(n):
                t = pc()
                await call("echo", "echo", {}, deadline=d)
                out.append(pc() - t)
            return out

        async def bus_round(n: int) -> list[float]:
            # the same worker connection without the host's routing layer
            w = host._sups["echo"].current
            assert w is not None and w.conn is not None
            req = w.conn.request
            out = []
            pc = time.perf_counter
            d = time.time() + 60
            for _ in range(n):
                t = pc()
                await req("echo", None, deadline=d)
                out.append(pc() - t)
            return out

        n, rounds = (1000, 5) if quick else (3000, 15)
        await host_round(500)
        raw_round(500)
        raw_p50s, host_p50s, bus_p50s = [], [], []
        for _ in range(rounds):
            raw_p50s.append(p50(raw_round(n)))
            host_p50s.append(p50(await host_round(n)))
            bus_p50s.append(p50(await bus_round(n)))
        raw_us = statistics.median(raw_p50s) * 1e6
        host_us = statistics.median(host_p50s) * 1e6
        bus_us = statistics.median(bus_p50s) * 1e6
        rows.append(Row("host routing overhead", f"{host_us:.1f} us", "bare Connection.request",
                        f"{bus_us:.1f} us", host_us / bus_us))
        rows.append(Row("call round trip p50", f"{host_us:.1f} us", "raw socket ping-pong",
                        f"{raw_us:.1f} us", host_us / raw_us, TARGET_RATIO))
        rows.append(Row("call round trip p50 (abs)", f"{host_us:.1f} us", "target", "40 us",
                        host_us / TARGET_P50_US, TARGET_P50_US, target_unit=" us",
                        measured=host_us))

        # pipelined
        duration = 1.0 if quick else 3.0
        count = [0]
        stop_at = time.perf_counter() + duration

        async def worker() -> None:
            d = time.time() + 60
            c = 0
            while time.perf_counter() < stop_at:
                await call("echo", "echo", {}, deadline=d)
                c += 1
            count[0] += c

        t = time.perf_counter()
        async with anyio.create_task_group() as g:
            for _ in range(64):
                g.start_soon(worker)
        rate = count[0] / (time.perf_counter() - t)
        rows.append(Row("pipelined calls/s (64 callers)", f"{rate:,.0f}/s", "target",
                        "50,000/s", rate / TARGET_CALLS_S, TARGET_CALLS_S,
                        lower_is_better=False, target_unit="/s", measured=rate))

        # crash -> first successful call
        crashes = 5 if quick else 15
        rec = []
        for _ in range(crashes):
            await anyio.sleep(1.2)  # let the warm spare finish importing
            pid = await call("echo", "pid", {}, deadline=time.time() + 30)
            os.kill(pid, signal.SIGKILL)
            t = time.perf_counter()
            new = await call("echo", "pid", {}, deadline=time.time() + 30)
            rec.append(time.perf_counter() - t)
            assert new != pid
        rec_ms = p50(rec) * 1e3
        rows.append(Row("crash -> first call p50", f"{rec_ms:.0f} ms", "target", "150 ms",
                        rec_ms / TARGET_RECOVERY_MS, TARGET_RECOVERY_MS, target_unit=" ms",
                        measured=rec_ms))
        tg.cancel_scope.cancel()
    raw.close()
    raw_proc.kill()
    raw_proc.wait()
    return rows


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    a = ap.parse_args()
    t = time.monotonic()
    rows = anyio.run(bench, a.quick)
    print(machine_line())
    print_table(f"service host ({'quick' if a.quick else 'full'}, "
                f"{time.monotonic() - t:.1f}s)", rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
