"""Service host: real worker processes over real Unix sockets.

Test plugins are fake installed distributions under ``tests/service_plugins`` (package
plus ``*.dist-info/{METADATA,entry_points.txt}``), found by ``importlib.metadata``
once that directory is on ``sys.path`` / ``PYTHONPATH``.
"""

from __future__ import annotations

import functools
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import anyio
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "service_plugins"))

from svc_test_helpers import (
    deadline,
    info,
    running_host,
    use_plugins,
    wait_for,
    wait_state,
)

from nexusfs.bus import InternalError, UnknownMethod
from nexusfs.errors import PermissionDenied, ServiceUnavailable
from nexusfs.hookspecs import SyscallEvent, SyscallOutcome
from nexusfs.services._spawn import prestart
from nexusfs.services.host import ServiceHost, UnknownService
from nexusfs.services.registry import installed_services

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def markers(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    return use_plugins(monkeypatch, tmp_path)


def events(host: ServiceHost, name: str = "echo") -> list[dict[str, Any]]:
    path = host.data_dir / "services" / name / "events.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_registry_reads_metadata_only(markers: Path) -> None:
    found = installed_services()
    assert {"echo", "badimport", "nohello", "crashloop"} <= set(found)
    e = found["echo"]
    assert (e.value, e.dist_name, e.dist_version) == ("nxtest_echo.plugin:plugin",
                                                      "nxtest_echo", "1.0")
    assert not markers.exists() or not list(markers.iterdir())
    assert not [m for m in sys.modules if m.startswith("nxtest_")]


@pytest.mark.anyio
async def test_handshake_and_rpc(tmp_path: Path, markers: Path) -> None:
    async with running_host(tmp_path, ["echo"]) as host:
        assert await host.call("echo", "echo", {"x": [1, "a"]}, deadline=deadline()) == {
            "x": [1, "a"]}
        assert await host.call("echo", "add", {"a": 2, "b": 3}) == 5  # sync, in a thread
        assert await host.call("echo", "kernel_ping", {}) == "pong"  # ctx.kernel callback
        with pytest.raises(InternalError, match="FileNotFoundError"):
            await host.call("echo", "fail", {})
        with pytest.raises(UnknownMethod):
            await host.call("echo", "nope", {})
        with pytest.raises(UnknownMethod):
            await host.call("echo", "service.stop", {})
        with pytest.raises(UnknownService) as ei:
            await host.call("nosuch", "x", {})
        assert ei.value.code == "unknown_service"
        s = info(host, "echo")
        assert s["state"] == "running" and s["version"] == "1.0" and s["pid"]
        assert {"echo", "add", "slow", "kernel_ping"} <= set(s["methods"])
        assert s["pre_hooks"] == ["write", "unlink"] and s["post_hooks"] == ["*"]
        assert s["pid"] == await host.call("echo", "pid", {})


@pytest.mark.anyio
async def test_pre_hook_veto_and_failure_fail_closed(tmp_path: Path, markers: Path) -> None:
    async with running_host(tmp_path, ["echo"]) as host:
        await host.call("echo", "pid", {}, deadline=deadline())
        assert host.has_pre_hooks("write") and host.has_pre_hooks("unlink")
        assert not host.has_pre_hooks("read")
        assert host.has_post_hooks("read")  # "*"
        await host.pre_syscall(SyscallEvent("write", "/ok/a", subject="alice"))
        await host.pre_syscall(SyscallEvent("read", "/forbidden/a"))  # not hooked
        with pytest.raises(PermissionDenied, match="echo: no writes under /forbidden"):
            await host.pre_syscall(SyscallEvent("write", "/forbidden/a"))
        with pytest.raises(ServiceUnavailable, match="pre-hook exploded"):
            await host.pre_syscall(SyscallEvent("unlink", "/boom"))
        await host.stop_service("echo")
        assert not host.has_pre_hooks("write") and not host.has_post_hooks("read")
        await host.pre_syscall(SyscallEvent("write", "/forbidden/a"))  # nobody hooks now


@pytest.mark.anyio
async def test_post_hooks_in_order_with_seq(tmp_path: Path, markers: Path) -> None:
    async with running_host(tmp_path, ["echo"]) as host:
        await host.call("echo", "pid", {}, deadline=deadline())
        for i in range(300):
            host.post_syscall(SyscallEvent("write", f"/f{i}"), SyscallOutcome(ok=i % 2 == 0))
        await wait_for(lambda: len(events(host)) >= 300, what="300 post events")
        evs = events(host)
        assert [e["seq"] for e in evs] == list(range(1, 301))
        assert [e["path"] for e in evs] == [f"/f{i}" for i in range(300)]
        assert evs[1]["ok"] is False
        # The worker writes an event before it acknowledges its batch: wait for the ack.
        await wait_for(lambda: info(host, "echo")["post_queue"] == 0, what="queue drained")
        row = info(host, "echo")
        assert row["post_delivered"] == 300 and row["post_dropped"] == 0
        assert 1 <= row["post_batches"] < 300  # lingered: events share deliveries


@pytest.mark.anyio
async def test_post_hooks_redelivered_to_successor(tmp_path: Path, markers: Path) -> None:
    async with running_host(tmp_path, ["echo"]) as host:
        pid = await host.call("echo", "pid", {}, deadline=deadline())
        n = 60
        for i in range(n):  # 50 ms each in the worker: a kill lands mid-stream
            host.post_syscall(SyscallEvent("write", f"/slowpost/{i}", seq=1000 + i),
                              SyscallOutcome(ok=True))
        await wait_for(lambda: len(events(host)) >= 5, what="first deliveries")
        os.kill(pid, signal.SIGKILL)
        await wait_for(lambda: {e["seq"] for e in events(host)} >= set(range(1000, 1000 + n)),
                       what="every event delivered")
        evs = events(host)
        pids = {e["pid"] for e in evs}
        assert len(pids) == 2
        for p in pids:  # each worker saw its events in order
            seqs = [e["seq"] for e in evs if e["pid"] == p]
            assert seqs == sorted(seqs)


@pytest.mark.anyio
async def test_import_failure_is_failed_and_isolated(tmp_path: Path, markers: Path) -> None:
    async with running_host(tmp_path, ["echo", "badimport"]) as host:
        s = await wait_state(host, "badimport", "failed")
        assert "broken on purpose" in s["last_error"] and "Traceback" in s["last_error"]
        assert s["last_exit"] == "exited with code 3"
        assert await host.call("echo", "add", {"a": 1, "b": 1}, deadline=deadline()) == 2
        await anyio.sleep(1.0)  # no tight retry loop
        s = info(host, "badimport")
        assert s["state"] == "failed" and s["restarts"] == 0 and s["pid"] is None
        with pytest.raises(ServiceUnavailable, match="failed"):
            await host.call("badimport", "x", {}, deadline=deadline())
        assert "broken on purpose" in host.logs("badimport")


@pytest.mark.anyio
async def test_prestarted_workers_are_adopted(tmp_path: Path, markers: Path) -> None:
    """The daemon starts its first workers before the host exists (their imports overlap
    the kernel's start-up); the host adopts them: same handshake, same failure reports."""
    pre = prestart(["echo", "badimport"], run_dir=tmp_path / "run", data_dir=tmp_path / "data")
    assert set(pre) == {"echo", "badimport"}
    echo_pid = pre["echo"].popen.pid
    await anyio.sleep(0.5)  # nothing listens yet: the workers wait for the socket
    async with running_host(tmp_path, ["echo", "badimport"], prestarted=pre) as host:
        s = await wait_state(host, "echo", "running")
        assert s["pid"] == echo_pid
        assert await host.call("echo", "pid", {}, deadline=deadline()) == echo_pid
        bad = await wait_state(host, "badimport", "failed")
        assert bad["last_exit"] == "exited with code 3"
        assert "broken on purpose" in bad["last_error"] and "Traceback" in bad["last_error"]
    assert pre["echo"].popen.poll() is not None  # stopped with the host


@pytest.mark.anyio
async def test_prestarted_workers_not_adopted_are_killed(tmp_path: Path, markers: Path) -> None:
    pre = prestart(["echo", "nohello"], run_dir=tmp_path / "run", data_dir=tmp_path / "data")
    nohello = pre["nohello"].popen
    async with running_host(tmp_path, ["echo"], prestarted=pre) as host:
        await wait_state(host, "echo", "running")
        assert nohello.poll() is not None  # not configured: killed at once
        s = info(host, "nohello")  # (listed because it is installed)
        assert s["state"] == "stopped" and s["pid"] is None


@pytest.mark.anyio
async def test_hot_restart_replaces_a_prestarted_worker(tmp_path: Path, markers: Path) -> None:
    pre = prestart(["echo"], run_dir=tmp_path / "run", data_dir=tmp_path / "data")
    async with running_host(tmp_path, ["echo"], prestarted=pre) as host:
        first = (await wait_state(host, "echo", "running"))["pid"]
        await host.restart_service("echo")
        second = info(host, "echo")["pid"]
        assert second != first and pre["echo"].popen.poll() is not None
        assert await host.call("echo", "pid", {}, deadline=deadline()) == second


@pytest.mark.anyio
async def test_no_handshake_is_killed_and_reported(tmp_path: Path, markers: Path) -> None:
    sup = {"handshake_timeout": 1.0, "max_restarts": 1}
    async with running_host(tmp_path, ["nohello", "echo"], supervisor=sup) as host:
        s = await wait_state(host, "nohello", "degraded", "failed")
        assert "handshake timeout" in s["last_error"]
        assert "did not say hello" in s["last_error"]
        assert await host.call("echo", "add", {"a": 1, "b": 1}, deadline=deadline()) == 2


@pytest.mark.anyio
async def test_crash_loop_degrades_visibly(tmp_path: Path, markers: Path) -> None:
    async with running_host(tmp_path, ["crashloop", "echo"]) as host:
        s = await wait_state(host, "crashloop", "degraded")
        assert "crashloop cannot start" in s["last_error"]
        assert "exited with code 1" in s["last_error"]
        n = s["restarts"]
        assert await host.call("echo", "add", {"a": 1, "b": 1}, deadline=deadline()) == 2
        # degraded keeps retrying (at the backoff cap), it never silently gives up
        await wait_for(lambda: info(host, "crashloop")["restarts"] > n, what="more retries")
        assert info(host, "crashloop")["state"] == "degraded"


@pytest.mark.anyio
async def test_hang_detected_by_heartbeat(tmp_path: Path, markers: Path) -> None:
    async with running_host(tmp_path, ["echo"]) as host:
        pid = await host.call("echo", "pid", {}, deadline=deadline())
        with pytest.raises(ServiceUnavailable):
            await host.call("echo", "hang", {}, deadline=time.time() + 0.5)
        await wait_for(lambda: info(host, "echo")["pid"] not in (None, pid),
                       what="replacement worker")
        assert "heartbeats missed" in info(host, "echo")["last_error"]
        assert await host.call("echo", "pid", {}, deadline=deadline()) != pid


@pytest.mark.anyio
async def test_calls_during_restart_wait_and_succeed(tmp_path: Path, markers: Path) -> None:
    async with running_host(tmp_path, ["echo"]) as host:
        pid = await host.call("echo", "pid", {}, deadline=deadline())
        os.kill(pid, signal.SIGKILL)
        results = []
        async with anyio.create_task_group() as tg:
            async def one() -> None:
                results.append(await host.call("echo", "pid", {}, deadline=deadline()))
            for _ in range(20):
                tg.start_soon(one)
        assert len(results) == 20 and pid not in results
        s = info(host, "echo")
        assert s["restarts"] == 1 and s["state"] == "running"
        assert s["last_exit"] == "killed by SIGKILL" or "lost" in s["last_error"]


@pytest.mark.anyio
async def test_idempotent_calls_are_retried(tmp_path: Path, markers: Path) -> None:
    async with running_host(tmp_path, ["echo"]) as host:
        pid = await host.call("echo", "pid", {}, deadline=deadline())
        out: dict[str, Any] = {}
        async with anyio.create_task_group() as tg:
            async def safe() -> None:
                out["safe"] = await host.call("echo", "slow", {"t": 1.0, "tag": "s"},
                                              deadline=deadline())

            async def unsafe() -> None:
                try:
                    out["unsafe"] = await host.call("echo", "slow_unsafe", {"t": 1.0},
                                                    deadline=deadline())
                except ServiceUnavailable as exc:
                    out["unsafe"] = exc

            tg.start_soon(safe)
            tg.start_soon(unsafe)
            await anyio.sleep(0.3)
            os.kill(pid, signal.SIGKILL)
        assert out["safe"]["tag"] == "s" and out["safe"]["pid"] != pid
        assert isinstance(out["unsafe"], ServiceUnavailable)
        assert "not idempotent" in str(out["unsafe"])


@pytest.mark.anyio
async def test_hot_restart_zero_failed_calls(tmp_path: Path, markers: Path) -> None:
    async with running_host(tmp_path, ["echo"]) as host:
        pid = await host.call("echo", "pid", {}, deadline=deadline())
        ok, failed = [0], []
        stop = anyio.Event()

        async def caller(slow: bool) -> None:
            while not stop.is_set():
                try:
                    if slow:  # non-idempotent and in flight across the switch
                        await host.call("echo", "slow_unsafe", {"t": 0.05},
                                        deadline=deadline())
                    else:
                        await host.call("echo", "echo", {"i": ok[0]}, deadline=deadline())
                    ok[0] += 1
                except Exception as exc:
                    failed.append(exc)

        pids = {pid}
        async with anyio.create_task_group() as tg:
            for i in range(6):
                tg.start_soon(caller, i % 2 == 0)
            for _ in range(3):
                await anyio.sleep(0.3)
                await host.restart_service("echo")
                pids.add(info(host, "echo")["pid"])
            await anyio.sleep(0.3)
            stop.set()
        assert failed == []
        assert ok[0] > 100 and len(pids) == 4
        s = info(host, "echo")
        assert s["state"] == "running" and s["restarts"] == 0  # hot restarts are not crashes


@pytest.mark.anyio
async def test_upgrade_picks_up_new_code(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                         ) -> None:
    site = tmp_path / "site"
    pkg = site / "nxtest_upgrade"
    pkg.mkdir(parents=True)
    dist = site / "nxtest_upgrade-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: nxtest_upgrade\n"
                                   "Version: 1.0\n")
    (dist / "entry_points.txt").write_text(
        "[nexusfs.services]\nupgrade = nxtest_upgrade:plugin\n")
    src = '''
from nexusfs.hookspecs import ServiceInfo, hookimpl
VERSION = "{v}"
class P:
    @hookimpl
    def nexus_service_info(self):
        return ServiceInfo(name="upgrade", version=VERSION)
    @hookimpl
    def nexus_service_methods(self, ctx):
        async def version():
            return VERSION
        return {{"version": version}}
plugin = P()
'''
    (pkg / "__init__.py").write_text(src.format(v="1.0"))
    use_plugins(monkeypatch, tmp_path, site)
    async with running_host(tmp_path, ["upgrade"]) as host:
        assert await host.call("upgrade", "version", {}, deadline=deadline()) == "1.0"
        (pkg / "__init__.py").write_text(src.format(v="2.0.0-new"))
        await host.restart_service("upgrade")
        assert await host.call("upgrade", "version", {}, deadline=deadline()) == "2.0.0-new"
        assert info(host, "upgrade")["version"] == "2.0.0-new"
        # a broken upgrade keeps the old worker serving and says why
        (pkg / "__init__.py").write_text("raise SyntaxError('bad release')\n")
        with pytest.raises(ServiceUnavailable, match="old worker keeps serving"):
            await host.restart_service("upgrade")
        assert await host.call("upgrade", "version", {}, deadline=deadline()) == "2.0.0-new"
        assert "bad release" in info(host, "upgrade")["last_error"]


@pytest.mark.anyio
async def test_kernel_never_imports_plugin_code(tmp_path: Path, markers: Path) -> None:
    async with running_host(tmp_path, ["echo", "badimport", "crashloop"]) as host:
        await host.call("echo", "pid", {}, deadline=deadline())
        await wait_state(host, "badimport", "failed")
        await wait_for(lambda: info(host, "crashloop")["restarts"] >= 1)
    imported = {p.name for p in markers.iterdir()}
    assert any(n.startswith("nxtest_echo-") for n in imported)
    assert any(n.startswith("nxtest_badimport-") for n in imported)
    assert not [n for n in imported if n.endswith(f"-{os.getpid()}")]
    assert not [m for m in sys.modules if m.startswith("nxtest_")]


@pytest.mark.anyio
async def test_logs_kept_per_service_and_rotated(tmp_path: Path, markers: Path) -> None:
    sup = {"log_max_bytes": 2000}
    async with running_host(tmp_path, ["echo", "badimport"], supervisor=sup) as host:
        await host.call("echo", "pid", {}, deadline=deadline())
        await wait_state(host, "badimport", "failed")
        text = host.logs("echo")
        rec = json.loads(text.splitlines()[0])
        assert rec["service"] == "echo" and rec["level"] == "info"
        assert "echo starting" in text and "broken" not in text
        assert "ImportError" in host.logs("badimport")
        assert len(host.logs("echo", lines=1).splitlines()) == 1
        for _ in range(6):
            await host.restart_service("echo")
        await wait_for(lambda: (host.run_dir / "services" / "echo.log.1").exists())
        assert (host.run_dir / "services" / "echo.log").stat().st_size < 8000
        with pytest.raises(UnknownService):
            host.logs("nosuch")


@pytest.mark.anyio
async def test_stop_and_start(tmp_path: Path, markers: Path) -> None:
    async with running_host(tmp_path, ["echo"]) as host:
        pid = await host.call("echo", "pid", {}, deadline=deadline())
        await host.stop_service("echo")
        s = info(host, "echo")
        assert s["state"] == "stopped" and s["pid"] is None
        t = time.monotonic()
        with pytest.raises(ServiceUnavailable, match="stopped"):
            await host.call("echo", "pid", {}, deadline=deadline())
        assert time.monotonic() - t < 5  # immediately, not at the deadline
        await wait_for(lambda: not _alive(pid), what="old worker gone")
        await host.start_service("echo")
        assert await host.call("echo", "pid", {}, deadline=deadline()) != pid


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


# -- units of the hot paths: outbox batching, the worker's thread pool, ctx.kernel ------


@pytest.mark.anyio
async def test_outbox_lingers_longer_under_load() -> None:
    """Sparse events leave after one linger, a few at a time; a fast stream keeps the
    sender lingering (up to max_linger) until half a batch is queued."""
    from nexusfs.services.outbox import Outbox

    box = Outbox("t", batch=64, linger=0.02, max_linger=2.0)
    sizes: list[int] = []

    async def send(first: int, batch: list[Any]) -> int:
        sizes.append(len(batch))
        return first + len(batch) - 1

    async with anyio.create_task_group() as tg:
        tg.start_soon(box.run, send)
        box.append({"seq": 1})  # sparse: one event, nothing follows within the linger
        await wait_for(lambda: box.delivered == 1, what="the sparse event")
        t0 = time.monotonic()
        for i in range(2, 40):  # a stream: well over 2 (= 64 // 32) per linger
            box.append({"seq": i})
            await anyio.sleep(0.001)
        await wait_for(lambda: box.delivered == 39, what="the stream")
        tg.cancel_scope.cancel()
    assert sizes[0] == 1
    assert sizes[1] >= 32, sizes  # lingered past the first 20 ms, to half a batch
    assert time.monotonic() - t0 < 1.5  # (never past max_linger)
    assert Outbox("t", linger=0.1, max_linger=0.05).max_linger == 0.1  # (at least linger)


@pytest.mark.anyio
async def test_outbox_under_load_waits_for_half_a_batch_in_few_wakeups() -> None:
    """A steady stream: after the first linger the sender sleeps about as long as half a
    batch takes to arrive at the rate it saw, instead of waking every linger."""
    from nexusfs.services.outbox import Outbox

    box = Outbox("t", batch=4096, linger=0.01, max_linger=5.0)
    sizes: list[int] = []
    pulls = 0

    def pull() -> None:
        nonlocal pulls
        pulls += 1

    box.pull = pull

    async def send(first: int, batch: list[Any]) -> int:
        sizes.append(len(batch))
        return first + len(batch) - 1

    async def stream() -> None:
        i = 0
        while not sizes:  # 20,000-40,000 events/s (load: 128 per 10 ms linger)
            box.extend([{"seq": i + k} for k in range(40)])
            i += 40
            await anyio.sleep(0.001)

    async with anyio.create_task_group() as tg:
        tg.start_soon(stream)
        await anyio.sleep(0.005)
        tg.start_soon(box.run, send)
        await wait_for(lambda: sizes, what="the first delivery")
        tg.cancel_scope.cancel()
    assert sizes[0] >= 1500, sizes  # about half a batch (at least 7/8 of it, roughly)
    # One pull before lingering, one per wait: 10 ms waits would be 6 or more.
    assert pulls <= 4, pulls


def test_worker_speaks_the_hosts_protocol() -> None:
    from nexusfs.services import host, worker

    assert worker.PROTOCOL == host.PROTOCOL  # (the worker does not import the host)


@pytest.mark.anyio
async def test_outbox_lingers_to_batch_and_redelivers() -> None:
    from nexusfs.errors import NexusError
    from nexusfs.services.outbox import Outbox

    box = Outbox("t", linger=0.3, retry_delay=0.01)
    sent: list[list[int]] = []
    fail = [True]

    async def send(first: int, batch: list[Any]) -> int:
        sent.append([first + i for i in range(len(batch))])
        assert [item["seq"] for item in batch] == sent[-1]
        if fail[0]:
            fail[0] = False
            raise NexusError("worker lost")  # the same items must come again
        return first + len(batch) - 1

    async with anyio.create_task_group() as tg:
        tg.start_soon(box.run, send)
        box.append({"seq": 1})
        await anyio.sleep(0.05)
        for i in range(2, 11):  # arrive while the first one lingers
            box.append({"seq": i})
            await anyio.sleep(0)
        await wait_for(lambda: len(box) == 0, what="delivery")
        tg.cancel_scope.cancel()
    assert sent == [list(range(1, 11)), list(range(1, 11))]  # one batch, sent twice
    assert box.delivered == 10 and box.acked == 10 and box.batches == 2
    # Bounded: beyond capacity the oldest go (counted); oseqs keep counting.
    small = Outbox("t", capacity=3)
    assert [small.append({"seq": i}) for i in range(1, 6)] == [1, 2, 3, 4, 5]
    assert len(small) == 3 and small.dropped == 2
    small.ack(4)  # 3 and 4 acknowledged (1 and 2 were dropped, not delivered)
    assert len(small) == 1 and small.delivered == 2 and small.acked == 4
    small.extend([{"seq": 6}, {"seq": 7}])
    small.ack(100)
    assert len(small) == 0 and small.delivered == 5
    with pytest.raises(ValueError):
        Outbox("t", linger=-1)


@pytest.mark.anyio
async def test_thread_runner() -> None:
    import threading

    from nexusfs.services._context import ThreadRunner

    runner = ThreadRunner(3, idle_timeout=0.2)
    main_thread = threading.get_ident()
    assert await runner.run(threading.get_ident) != main_thread

    def boom() -> None:
        raise KeyError("from the thread")

    with pytest.raises(KeyError, match="from the thread"):
        await runner.run(boom)

    # Up to max_threads jobs run at the same time (the barrier needs all three).
    barrier = threading.Barrier(3, timeout=10)
    async with anyio.create_task_group() as tg:
        for _ in range(3):
            tg.start_soon(runner.run, barrier.wait)
    assert runner.threads == 3

    # Beyond that, jobs wait for a free thread (in order) instead of failing.
    release = threading.Event()
    order: list[int] = []

    def blocked(i: int) -> None:
        release.wait(10)
        order.append(i)

    async with anyio.create_task_group() as tg:
        for i in range(5):
            tg.start_soon(runner.run, functools.partial(blocked, i))
        await anyio.sleep(0.1)
        assert order == [] and runner.threads == 3
        release.set()
    assert sorted(order) == list(range(5)) and runner.threads <= 3

    # anyio.from_thread works in its threads, as in AnyIO worker threads.
    async def on_loop() -> int:
        return threading.get_ident()

    assert await runner.run(lambda: anyio.from_thread.run(on_loop)) == main_thread

    # A cancelled caller drops the result; the pool keeps working.
    with anyio.move_on_after(0.05):
        await runner.run(lambda: time.sleep(0.2))
    assert await runner.run(lambda: 42) == 42
    await wait_for(lambda: runner.threads == 0, timeout=10, what="idle threads exit")
    with pytest.raises(ValueError, match="max_threads"):
        ThreadRunner(0)


@pytest.mark.anyio
async def test_kernel_client_from_any_thread_but_the_loop(tmp_path: Path) -> None:
    import threading

    from nexusfs.bus import connect_unix, serve_unix
    from nexusfs.services._context import KernelClient

    path = tmp_path / "k.sock"
    async with anyio.create_task_group() as tg:
        await tg.start(serve_unix, path, lambda conn: {"kernel.ping": lambda: "pong"})
        async with connect_unix(path) as conn:
            kernel = KernelClient(conn, timeout=5.0)
            with pytest.raises(RuntimeError, match="acall"):
                kernel._call("kernel.ping")  # would deadlock the loop it runs on
            got: list[Any] = []
            t = threading.Thread(target=lambda: got.append(kernel._call("kernel.ping")))
            t.start()  # a plain thread, not one of the worker's pool
            await wait_for(lambda: got, timeout=10, what="the call from a thread")
            t.join(5)
            assert got == ["pong"] and await kernel.acall("kernel.ping") == "pong"
        tg.cancel_scope.cancel()


@pytest.mark.anyio
async def test_pipeline_post_only_path_captures_then_builds_wire_events() -> None:
    """The post-only path appends capture tuples to the host's journal (kicking the
    senders once, when it was empty); ``wire_items`` turns them into wire events
    (normalised paths, summarised metadata, typed failures) that the worker reads."""
    from nexusfs.errors import NotFound
    from nexusfs.metadata.inode import EntryType, FileMetadata
    from nexusfs.server.pipeline import Pipeline
    from nexusfs.services.capture import CAPTURE_FIELDS, wire_items
    from nexusfs.services.host import EVENT_FIELDS, OUTCOME_FIELDS, POST_FIELDS
    from nexusfs.services.worker import _from_wire

    class PostOnly:
        def __init__(self) -> None:
            self.journal: list[tuple[Any, ...]] = []
            self.kicks = 0

        def has_pre_hooks(self, op: str) -> bool:
            return False

        def has_post_hooks(self, op: str) -> bool:
            return op != "readdir"

        async def pre_syscall(self, event: SyscallEvent) -> None:
            raise AssertionError("no pre-hooks here")

        def post_syscall(self, event: SyscallEvent, outcome: SyscallOutcome) -> None:
            raise AssertionError("the post-only path captures")

        def post(self, item: tuple[Any, ...]) -> None:
            raise AssertionError("the post-only path captures")

        def kick(self) -> None:
            self.kicks += 1

    host = PostOnly()
    pipe = Pipeline(host)
    meta = FileMetadata(path="/a/b", entry_type=EntryType.FILE, size=3, version=7,
                        content_id="c1")
    assert pipe.runs_now("write")
    assert pipe.run_now("write", "/a//b/", lambda: meta, subject="alice",
                        args={"size": 3}) is meta
    assert host.kicks == 1

    def missing() -> None:
        raise NotFound("no such file", path="/x")

    with pytest.raises(NotFound):
        await pipe.run("stat", "/x", missing)
    assert await pipe.run("copy", "/c", lambda: 5, threaded=True) == 5  # in a thread
    assert await pipe.run("readdir", "/", lambda: []) == []  # not hooked: nothing posted
    buf = bytearray(b"data")
    assert pipe.run_now("read", "/r", lambda: buf, subject="bob") is buf
    assert host.kicks == 1 and len(host.journal) == 4
    assert all(len(c) == len(CAPTURE_FIELDS) for c in host.journal)
    assert all(c[-1] is not buf for c in host.journal)  # a mutable result is not kept
    wire = wire_items(host.journal)
    (ev1, out1), (ev2, out2), (ev3, out3), (ev4, out4) = [
        (dict(zip(EVENT_FIELDS, item, strict=False)),
         dict(zip(OUTCOME_FIELDS, item[len(EVENT_FIELDS):], strict=True)))
        for item in wire]
    assert all(len(item) == len(POST_FIELDS) for item in wire)
    assert {k: ev1[k] for k in ("op", "path", "subject", "dst", "args")} == {
        "op": "write", "path": "/a/b", "subject": "alice", "dst": None, "args": {"size": 3}}
    assert ev1["seq"] < ev2["seq"] < ev3["seq"] < ev4["seq"] and ev1["time"] > 0
    assert out1 == {"ok": True, "error_code": None, "message": None, "revision": 7,
                    "result": {"size": 3, "version": 7, "content_id": "c1", "type": "file"}}
    assert (out2["ok"], out2["error_code"]) == (False, "not_found")
    assert "no such file" in out2["message"] and ev3["op"] == "copy" and out3["ok"]
    assert (ev4["op"], ev4["args"], out4) == ("read", {}, {
        "ok": True, "error_code": None, "message": None, "revision": None, "result": {}})
    # What the worker rebuilds from the wire form (a list, after msgpack) is the same.
    event, outcome = _from_wire(list(wire[0]))
    assert (event.op, event.path, event.seq, outcome.revision) == (
        "write", "/a/b", ev1["seq"], 7)


def test_worker_builds_the_same_frozen_event_and_outcome_as_their_constructors() -> None:
    import dataclasses

    from nexusfs.services.worker import _from_wire

    item = ["write", "/a", "user:alice", None, {"size": 3}, 12.5, 77, True, None, None, 4,
            {"size": 3}]
    event, outcome = _from_wire(item)
    assert (event, outcome) == (SyscallEvent(*item[:7]), SyscallOutcome(*item[7:]))
    with pytest.raises(dataclasses.FrozenInstanceError):
        event.path = "/b"  # type: ignore[misc]
    assert repr(outcome) == repr(SyscallOutcome(*item[7:]))


def test_wire_items_keeps_invalid_paths_as_given() -> None:
    """A capture of a syscall on an invalid path (which the syscall itself refused)
    goes out with that path as given, not with an error; a valid ``dst`` beside it is
    still normalised."""
    from nexusfs.services.capture import wire_items

    (item,) = wire_items([("rename", "relative", None, "/a//b", None, 1.0, 5,
                           (False, "invalid_path", "bad", None, {}))])
    assert item[:5] == ("rename", "relative", None, "/a/b", {})
    assert item[5:] == (1.0, 5, False, "invalid_path", "bad", None, {})


@pytest.mark.anyio
async def test_bad_service_configuration_is_failed_not_restarted(
    tmp_path: Path, markers: Path
) -> None:
    """A service whose storage configuration cannot work (a cache URL no driver takes)
    is reported failed at once with the reason, like a plugin that cannot load; the
    others run."""
    async with running_host(tmp_path, ["echo", "hooks"], cache_url="nope://x") as host:
        s = await wait_state(host, "hooks", "failed")
        assert "bad service configuration" in host.logs("hooks")
        assert s["restarts"] == 0 and s["last_exit"] == "exited with code 3"
        assert await host.call("echo", "add", {"a": 1, "b": 2}, deadline=deadline()) == 3
