"""Benchmark of the local bus against a raw Unix-socket ping-pong.

    python bench/bench_bus.py [--quick]

Measures, in one run (servers in separate processes):
  (a) raw blocking Unix-socket ping-pong (8-byte echo) p50/p99 - the baseline; (a'')
      the same with a client that polls for 50 us before it sleeps;
  (a') the event-loop floor: the same 8-byte blocking ping-pong against a minimal
       asyncio ``Protocol`` echo server on the event loop the bus server uses (no
       framing, no encoding, no dispatch) - what any asyncio server costs here;
  (b) BlockingClient round trip to an anyio bus server, both sides busy-polling as the
      kernel and a service worker do (``NEXUS_BUS_BUSY_POLL_US``): an ``async def``
      handler without ``await`` (served inline) and a plain handler - the targets; and
      the same with busy-polling off on both sides (each sleeps at once), for comparison
      (``bench_services.py`` measures the kernel's own ServiceHost -> worker calls);
  (b') an ``async def`` handler that does await (it runs in a task of its own);
  (c) async Connection round trip (anyio, same event loop choice);
  (d) pipelined throughput: BlockingClient.call_many and 64 concurrent async callers.
The event loop is ``nexusfs.bus.runner``'s choice (``NEXUS_EVENT_LOOP``: uvloop when
installed, else asyncio), as in the kernel process and the service workers. Latency
rounds interleave the cases so that machine noise hits all alike; the reported p50 is
the median of the per-round p50s. Always exits 0; prints PASS/MISS per target.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any, cast

import anyio

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "kernel"))

from nexusfs.bus import BlockingClient, connect_unix, serve_unix  # noqa: E402
from nexusfs.bus._busy_poll import busy_poll_limit  # noqa: E402
from nexusfs.bus.runner import event_loop_name  # noqa: E402
from nexusfs.bus.runner import run as run_loop  # noqa: E402

TARGET_P50_US = 40.0
TARGET_RATIO = 4.0
TARGET_CALLS_S = 50_000.0


# -- servers (run as child processes) ---------------------------------------------------


def serve_raw(path: str) -> None:
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    srv.listen()
    print("ready", flush=True)
    while True:
        conn, _ = srv.accept()
        while True:
            data = conn.recv(8)
            if not data:
                break
            conn.sendall(data)
        conn.close()


def serve_floor(path: str) -> None:
    class Echo(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = cast(asyncio.WriteTransport, transport)  # uvloop's: no subclass

        def data_received(self, data: bytes) -> None:
            self.transport.write(data)

    async def main() -> None:
        await asyncio.get_running_loop().create_unix_server(Echo, path)
        print("ready", flush=True)
        await anyio.sleep_forever()

    run_loop(main)


class EchoService:
    async def echo(self, x: Any) -> Any:
        return x

    def echo_sync(self, x: Any) -> Any:
        return x

    async def echo_awaits(self, x: Any) -> Any:
        await asyncio.sleep(0)
        return x


def serve_bus(path: str, busy_poll: float) -> None:
    async def main() -> None:
        async with anyio.create_task_group() as tg:
            await tg.start(partial(serve_unix, path, lambda conn: EchoService(),
                                   busy_poll=busy_poll))
            print("ready", flush=True)

    run_loop(main)


def spawn(kind: str, path: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, __file__, f"--serve-{kind}", path],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if line.strip() != "ready":
        raise RuntimeError(f"{kind} server failed to start")
    return proc


# -- measurements -----------------------------------------------------------------------


def pct(samples: list[float], q: float) -> float:
    s = sorted(samples)
    return s[min(len(s) - 1, int(len(s) * q))] * 1e6


def time_loop(fn: Callable[[], Any], n: int) -> list[float]:
    out = []
    perf = time.perf_counter
    for _ in range(n):
        t0 = perf()
        fn()
        out.append(perf() - t0)
    return out


def measure_latencies(raw_path: str, floor_path: str, bus_path: str, sleeping_path: str,
                      n: int, rounds: int) -> dict[str, tuple[float, float]]:
    raw = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    raw.connect(raw_path)
    floor = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    floor.connect(floor_path)

    def ping(sock: socket.socket) -> None:
        sock.sendall(b"12345678")
        got = len(sock.recv(8))
        while got < 8:
            got += len(sock.recv(8 - got))

    def ping_polling(sock: socket.socket) -> None:
        sock.sendall(b"12345678")
        got = 0
        until = time.perf_counter() + 50e-6
        while got < 8:
            try:
                got += len(sock.recv(8 - got, socket.MSG_DONTWAIT))
            except BlockingIOError:
                if time.perf_counter() >= until:
                    got += len(sock.recv(8 - got))

    # The calling side busy-polls as the kernel does for a worker's answer.
    client = BlockingClient(bus_path, timeout=30, busy_poll=busy_poll_limit())
    sleeper = BlockingClient(sleeping_path, timeout=30, busy_poll=0)
    cases: dict[str, Callable[[], Any]] = {
        "raw": lambda: ping(raw),
        "raw_polling": lambda: ping_polling(raw),
        "floor": lambda: ping(floor),
        "bus_async": lambda: client.call("echo", x=1),
        "bus_sync": lambda: client.call("echo_sync", x=1),
        "bus_sleeping": lambda: sleeper.call("echo", x=1),
        "bus_awaits": lambda: client.call("echo_awaits", x=1),
    }
    for fn in cases.values():  # warm up
        time_loop(fn, 200)
    p50s: dict[str, list[float]] = {k: [] for k in cases}
    p99s: dict[str, list[float]] = {k: [] for k in cases}
    for _ in range(rounds):
        for name, fn in cases.items():
            samples = time_loop(fn, n)
            p50s[name].append(pct(samples, 0.5))
            p99s[name].append(pct(samples, 0.99))
    client.close()
    sleeper.close()
    raw.close()
    floor.close()
    return {k: (statistics.median(p50s[k]), statistics.median(p99s[k])) for k in cases}


def measure_async(bus_path: str, n: int, batch: int) -> tuple[float, float, float]:
    result: list[float] = []

    async def main() -> None:
        async with connect_unix(bus_path) as conn:
            for _ in range(200):
                await conn.call("echo", x=1)
            samples = []
            perf = time.perf_counter
            for _ in range(n):
                t0 = perf()
                await conn.call("echo", x=1)
                samples.append(perf() - t0)
            result.extend([pct(samples, 0.5), pct(samples, 0.99)])
            per_worker = batch // 64

            async def worker() -> None:
                for _ in range(per_worker):
                    await conn.call("echo", x=1)

            t0 = perf()
            async with anyio.create_task_group() as tg:
                for _ in range(64):
                    tg.start_soon(worker)
            result.append(per_worker * 64 / (perf() - t0))

    run_loop(main)
    return result[0], result[1], result[2]


def measure_call_many(bus_path: str, batch: int, method: str) -> float:
    with BlockingClient(bus_path, timeout=60) as client:
        client.call_many([(method, {"x": 1})] * 1000)  # warm up
        calls = [(method, {"x": i}) for i in range(batch)]
        t0 = time.perf_counter()
        out = client.call_many(calls)
        dt = time.perf_counter() - t0
        assert out[-1] == batch - 1
    return batch / dt


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--quick", action="store_true", help="short run (< 10 s)")
    ap.add_argument("--serve-raw", metavar="PATH", help=argparse.SUPPRESS)
    ap.add_argument("--serve-bus", metavar="PATH", help=argparse.SUPPRESS)
    ap.add_argument("--serve-floor", metavar="PATH", help=argparse.SUPPRESS)
    ap.add_argument("--serve-bus-sleeping", metavar="PATH", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve_raw:
        serve_raw(args.serve_raw)
        return 0
    if args.serve_bus:  # polls like a service worker's connection to the kernel
        serve_bus(args.serve_bus, busy_poll_limit())
        return 0
    if args.serve_bus_sleeping:
        serve_bus(args.serve_bus_sleeping, 0.0)
        return 0
    if args.serve_floor:
        serve_floor(args.serve_floor)
        return 0

    n, rounds, batch = (1500, 3, 20_000) if args.quick else (10_000, 5, 200_000)
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="nexus-bench-bus-") as tmp:
        raw_path, bus_path = os.path.join(tmp, "raw.sock"), os.path.join(tmp, "run", "bus.sock")
        floor_path = os.path.join(tmp, "floor.sock")
        sleeping_path = os.path.join(tmp, "sleeping.sock")
        procs = [spawn("raw", raw_path), spawn("floor", floor_path), spawn("bus", bus_path),
                 spawn("bus-sleeping", sleeping_path)]
        try:
            lat = measure_latencies(raw_path, floor_path, bus_path, sleeping_path, n, rounds)
            a50, a99, async_tput = measure_async(bus_path, n, batch)
            many_async = measure_call_many(bus_path, batch, "echo")
            many_sync = measure_call_many(bus_path, batch, "echo_sync")
        finally:
            for p in procs:
                p.terminate()
                p.wait(5)

    raw50, raw99 = lat["raw"]
    rows: list[tuple[str, str, str, str]] = []

    def verdict(ok: bool) -> str:
        return "PASS" if ok else "MISS"

    floor50, floor99 = lat["floor"]
    rows.append(("(a) raw socket ping-pong", f"{raw50:7.1f}", f"{raw99:7.1f}", "baseline"))
    rows.append(("(a') event-loop floor (8 bytes)", f"{floor50:7.1f}", f"{floor99:7.1f}",
                 f"{floor50 / raw50:4.1f}x raw  (no target: the floor)"))
    p50, p99 = lat["raw_polling"]
    rows.append(("(a'') raw ping-pong, busy-polling client", f"{p50:7.1f}", f"{p99:7.1f}",
                 f"{p50 / raw50:4.1f}x raw  (no target: what polling saves)"))
    for key, label in (("bus_async", "async handler"), ("bus_sync", "plain handler")):
        p50, p99 = lat[key]
        ratio = p50 / raw50
        ok = p50 <= TARGET_P50_US and ratio <= TARGET_RATIO
        rows.append((f"(b) BlockingClient, {label}", f"{p50:7.1f}", f"{p99:7.1f}",
                     f"{ratio:4.1f}x raw, {p50 / floor50:4.1f}x floor  "
                     f"p50<={TARGET_P50_US:.0f}us & <={TARGET_RATIO:.0f}x {verdict(ok)}"))
    p50, p99 = lat["bus_sleeping"]
    rows.append(("(b) same, neither side busy-polls", f"{p50:7.1f}", f"{p99:7.1f}",
                 f"{p50 / raw50:4.1f}x raw, {p50 / floor50:4.1f}x floor  (no target)"))
    p50, p99 = lat["bus_awaits"]
    rows.append(("(b') BlockingClient, awaiting handler", f"{p50:7.1f}", f"{p99:7.1f}",
                 f"{p50 / raw50:4.1f}x raw, {p50 / floor50:4.1f}x floor  (no target)"))
    rows.append(("(c) async Connection", f"{a50:7.1f}", f"{a99:7.1f}",
                 f"{a50 / raw50:4.1f}x raw  (no target)"))
    print(f"\nbus benchmark ({'quick' if args.quick else 'full'}; {n} calls x {rounds} rounds; "
          f"python {sys.version.split()[0]}, {os.cpu_count()} cpus; "
          f"event loop {event_loop_name()})\n")
    print(f"{'case':42} {'p50 us':>8} {'p99 us':>8}  result")
    for r in rows:
        print(f"{r[0]:42} {r[1]:>8} {r[2]:>8}  {r[3]}")
    print(f"\n{'throughput':42} {'calls/s':>17}  result")
    for label, v in (("(d) call_many, async handler", many_async),
                     ("(d) call_many, plain handler", many_sync),
                     ("(d) 64 concurrent async callers", async_tput)):
        print(f"{label:42} {v:17,.0f}  >={TARGET_CALLS_S:,.0f}/s "
              f"{verdict(v >= TARGET_CALLS_S)}")
    print(f"\ntotal {time.perf_counter() - t_start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
