"""Chaos tests of the service host: SIGKILL storms and hot restarts under load."""

from __future__ import annotations

import os
import random
import signal
import sys
import time
from pathlib import Path
from typing import Any

import anyio
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "service_plugins"))

from svc_test_helpers import deadline, info, running_host, use_plugins, wait_for

from nexusfs.errors import ServiceUnavailable

pytestmark = [pytest.mark.timeout(180), pytest.mark.slow]

CHAOS = {"max_restarts": 10_000, "backoff_base": 0.01, "backoff_cap": 0.05,
         "heartbeat_interval": 0.5, "heartbeat_timeout": 2.0}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.mark.anyio
async def test_sigkill_100_times_with_calls_in_flight(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    use_plugins(monkeypatch, tmp_path)
    rng = random.Random(7)
    t0 = time.monotonic()
    stats: dict[str, int] = {"ok": 0, "unsafe_ok": 0, "unsafe_unavailable": 0}
    problems: list[str] = []
    async with running_host(tmp_path, ["echo"], supervisor=CHAOS) as host:
        pid = await host.call("echo", "pid", {}, deadline=deadline())

        async def safe(i: int) -> None:
            d = time.time() + 15.0
            try:
                r = await host.call("echo", "slow", {"t": rng.random() * 0.05, "tag": i},
                                    deadline=d)
                assert r["tag"] == i
                stats["ok"] += 1
            except Exception as exc:
                problems.append(f"idempotent call {i} failed: {exc!r}")

        async def unsafe() -> None:
            d = time.time() + 15.0
            try:
                await host.call("echo", "slow_unsafe", {"t": rng.random() * 0.05},
                                deadline=d)
                stats["unsafe_ok"] += 1
            except ServiceUnavailable:
                stats["unsafe_unavailable"] += 1
                if time.time() > d + 1.0:
                    problems.append("non-idempotent call failed after its deadline")
            except Exception as exc:
                problems.append(f"non-idempotent call: unexpected {exc!r}")

        for k in range(100):
            async with anyio.create_task_group() as tg:
                for i in range(8):
                    tg.start_soon(safe, k * 100 + i)
                tg.start_soon(unsafe)
                tg.start_soon(unsafe)
                await anyio.sleep(rng.random() * 0.03)
                os.kill(pid, signal.SIGKILL)
            new = await host.call("echo", "pid", {}, deadline=deadline())
            assert new != pid
            pid = new
        s = info(host, "echo")
        assert s["state"] in ("running", "degraded") and s["restarts"] >= 100
    elapsed = time.monotonic() - t0
    assert problems == []
    assert stats["ok"] == 800
    assert stats["unsafe_ok"] + stats["unsafe_unavailable"] == 200
    assert elapsed < 60, f"took {elapsed:.1f}s"


@pytest.mark.anyio
async def test_hot_restart_under_1000_calls_per_second(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    use_plugins(monkeypatch, tmp_path)
    async with running_host(tmp_path, ["echo"]) as host:
        await host.call("echo", "pid", {}, deadline=deadline())
        ok = [0]
        failed: list[Any] = []
        stop = anyio.Event()

        async def caller(j: int) -> None:
            n = 0
            while not stop.is_set():
                try:
                    r = await host.call("echo", "echo", {"j": j, "n": n}, deadline=deadline())
                    assert r == {"j": j, "n": n}
                    ok[0] += 1
                except Exception as exc:
                    failed.append(exc)
                n += 1

        async with anyio.create_task_group() as tg:
            for j in range(16):
                tg.start_soon(caller, j)
            t = time.monotonic()
            await anyio.sleep(0.5)
            await host.restart_service("echo")
            await anyio.sleep(1.5)
            stop.set()
            elapsed = time.monotonic() - t
        rate = ok[0] / elapsed
        assert failed == []
        assert rate >= 1000, f"{rate:.0f} calls/s"
        await wait_for(lambda: info(host, "echo")["state"] == "running")
