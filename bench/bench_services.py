"""Benchmark of the service host: kernel -> worker calls, pipelining, crash recovery.

    python bench/bench_services.py [--quick]

Measures, in one run, with a real worker process of the ``echo`` test service
(``tests/service_plugins``):
  (a) raw blocking Unix-socket ping-pong (8-byte echo to a child process) p50 - baseline;
  (a') the asyncio floor: a minimal asyncio ``Protocol`` echo server (child process) and
       a minimal ``Protocol`` client on this process's event loop, 8 bytes, no framing,
       no encoding - the least any asyncio kernel <-> worker round trip can cost here;
  (b) ``ServiceHost.call`` round trip kernel -> worker -> kernel p50 (``echo``, an
      ``async def`` without await: served inline by the worker), its ratio to (a) and to
      (a'), and the same over the bare ``Connection.request`` (routing overhead);
  (b') the same for a plain (sync) method (``add``), which the worker runs in a thread;
  (c) pipelined ``ServiceHost.call`` throughput with 64 concurrent callers;
  (d) crash -> first successful call: SIGKILL the worker, then time a call issued at
      once (it waits for the replacement worker) - p50 over several crashes.
Kernel and worker busy-poll as configured (``NEXUS_BUS_BUSY_POLL_US``, default 50 us;
set it to 0 to see the round trip without; see ``nexusfs.bus._busy_poll``).
Measuring starts once the worker and its warm spare have started and gone idle.
Latency rounds interleave raw/floor/host so that machine noise hits all alike; p50 is
the median of per-round p50s. The event loop (this process = the kernel, the worker and
the floor server) is ``nexusfs.bus.runner``'s choice (``NEXUS_EVENT_LOOP``). Always
exits 0; prints PASS/MISS per target.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import cast

import anyio

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "kernel"))
sys.path.insert(0, str(ROOT / "bench"))
PLUGINS = ROOT / "tests" / "service_plugins"
sys.path.insert(0, str(PLUGINS))
os.environ["PYTHONPATH"] = os.pathsep.join(
    p for p in (str(PLUGINS), str(ROOT / "kernel"), os.environ.get("PYTHONPATH")) if p)

from _common import Row, machine_line, print_table, settle  # noqa: E402
from nexusfs.bus.runner import event_loop_name  # noqa: E402
from nexusfs.bus.runner import run as run_loop  # noqa: E402
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


FLOOR_SERVER = """
import asyncio, sys
if sys.argv[2] == "uvloop":
    import uvloop
    uvloop.install()
class Echo(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport
    def data_received(self, data):
        self.transport.write(data)
async def main():
    loop = asyncio.get_running_loop()
    await loop.create_unix_server(Echo, sys.argv[1])
    print("ready", flush=True)
    await asyncio.Event().wait()
asyncio.run(main())
"""


def p50(samples: list[float]) -> float:
    return statistics.median(samples)


def spawn(code: str, path: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-c", code, path, event_loop_name()],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    if proc.stdout.readline().strip() != "ready":
        raise RuntimeError("baseline server failed to start")
    return proc


class _FloorClient(asyncio.Protocol):
    """Minimal asyncio ping-pong client: one 8-byte write, wait for the echo."""

    def __init__(self) -> None:
        self.transport: asyncio.WriteTransport | None = None
        self.waiter: asyncio.Future[None] | None = None
        self.got = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.WriteTransport, transport)  # uvloop's: no subclass

    def data_received(self, data: bytes) -> None:
        self.got += len(data)
        if self.got >= 8 and self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    async def round(self, n: int) -> list[float]:
        loop = asyncio.get_running_loop()
        assert self.transport is not None
        out = []
        pc = time.perf_counter
        for _ in range(n):
            t = pc()
            self.got = 0
            self.waiter = loop.create_future()
            self.transport.write(b"12345678")
            await self.waiter
            out.append(pc() - t)
        return out


async def bench(quick: bool) -> list[Row]:
    tmp = Path(tempfile.mkdtemp(prefix="nxbench-"))
    raw_path, floor_path = str(tmp / "raw.sock"), str(tmp / "floor.sock")
    raw_proc = spawn(RAW_SERVER, raw_path)
    floor_proc = spawn(FLOOR_SERVER, floor_path)
    raw = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    raw.connect(raw_path)
    loop = asyncio.get_running_loop()
    floor_transport, floor = await loop.create_unix_connection(_FloorClient, floor_path)

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
        # The worker's warm spare starts a second after it: measure once it is idle.
        # (This process also has the two baseline servers as children.)
        if not await anyio.to_thread.run_sync(settle, {os.getpid(): 4}):
            print("bench_services: the service did not settle; measuring anyway")

        async def host_round(n: int, method: str = "echo",
                             args: dict[str, int] | None = None) -> list[float]:
            out = []
            pc = time.perf_counter
            d = time.time() + 60
            a = args or {}
            for _ in range(n):
                t = pc()
                await call("echo", method, a, deadline=d)
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
        add = {"a": 1, "b": 2}
        await host_round(500)
        await host_round(200, "add", add)
        await floor.round(500)
        raw_round(500)
        p50s: dict[str, list[float]] = {k: [] for k in ("raw", "floor", "host", "bus", "sync")}
        for _ in range(rounds):
            p50s["raw"].append(p50(raw_round(n)))
            p50s["floor"].append(p50(await floor.round(n)))
            p50s["host"].append(p50(await host_round(n)))
            p50s["bus"].append(p50(await bus_round(n)))
            p50s["sync"].append(p50(await host_round(n // 4, "add", add)))
        raw_us, floor_us, host_us, bus_us, sync_us = (
            statistics.median(p50s[k]) * 1e6 for k in ("raw", "floor", "host", "bus", "sync"))
        rows.append(Row("asyncio floor p50 (8-byte echo)", f"{floor_us:.1f} us",
                        "raw socket ping-pong", f"{raw_us:.1f} us", floor_us / raw_us))
        rows.append(Row("host routing overhead", f"{host_us:.1f} us", "bare Connection.request",
                        f"{bus_us:.1f} us", host_us / bus_us))
        rows.append(Row("call round trip p50 vs floor", f"{host_us:.1f} us", "asyncio floor",
                        f"{floor_us:.1f} us", host_us / floor_us))
        rows.append(Row("call round trip p50", f"{host_us:.1f} us", "raw socket ping-pong",
                        f"{raw_us:.1f} us", host_us / raw_us, TARGET_RATIO))
        rows.append(Row("call round trip p50 (abs)", f"{host_us:.1f} us", "target", "40 us",
                        host_us / TARGET_P50_US, TARGET_P50_US, target_unit=" us",
                        measured=host_us))
        rows.append(Row("sync method p50 (thread)", f"{sync_us:.1f} us", "raw socket ping-pong",
                        f"{raw_us:.1f} us", sync_us / raw_us))

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
    floor_transport.close()
    for proc in (raw_proc, floor_proc):
        proc.kill()
        proc.wait()
    return rows


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    a = ap.parse_args()
    t = time.monotonic()
    rows = run_loop(bench, a.quick)
    print(machine_line())
    print_table(f"service host ({'quick' if a.quick else 'full'}, event loop "
                f"{event_loop_name()} in kernel and worker, {time.monotonic() - t:.1f}s)", rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
