"""Services end to end: a real kernel process with the installed ``nexusfs-hooks``
service in its own worker, driven through the public API and the ``nexus`` CLI."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import nexusfs
from nexusfs.client import RemoteNexusFS
from nexusfs.server import daemon
from nexusfs.services.registry import installed_services

pytestmark = [
    pytest.mark.timeout(300),
    pytest.mark.skipif(
        "hooks" not in installed_services(),
        reason="nexusfs-hooks is not installed (pip install -e plugins/hooks)",
    ),
]


@pytest.fixture
def kernel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.setenv("NEXUS_SERVICES", "hooks")
    data = tmp_path / "data"
    daemon.start(data)
    try:
        yield data
    finally:
        daemon.stop(data)


def wait_for(predicate: object, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.02)
    raise AssertionError("condition not reached in time")


def nexus(data: Path, *args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "nexusfs.cli", "--data-dir", str(data), *args],
        input=None if stdin is None else stdin.decode(),
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_every_syscall_is_audited_with_its_subject_and_result(kernel: Path) -> None:
    with nexusfs.connect(data_dir=kernel, subject="user:alice") as nx:
        assert isinstance(nx, RemoteNexusFS)
        nx.write("/docs/a.md", b"# a")
        nx.rename("/docs/a.md", "/docs/b.md")
        with pytest.raises(nexusfs.NotFound):
            nx.read("/docs/missing")
        wait_for(lambda: len(nx.call("hooks.query", path_prefix="/docs")) >= 3)
        events = nx.call("hooks.query", path_prefix="/docs")
        assert [(e["op"], e["path"], e["ok"]) for e in events] == [
            ("write", "/docs/a.md", True),
            ("rename", "/docs/a.md", True),
            ("read", "/docs/missing", False),
        ]
        assert events[1]["dst"] == "/docs/b.md"
        # Mutations report the revision they committed (rename and write alike).
        assert events[0]["revision"] and events[1]["revision"]
        assert events[2]["error_code"] == "not_found" and events[2]["revision"] is None
        assert {e["subject"] for e in events} == {"user:alice"}
        seqs = [e["seq"] for e in events]
        assert seqs == sorted(seqs) and len(set(seqs)) == 3


def test_deny_rule_vetoes_and_the_attempt_is_logged(kernel: Path) -> None:
    with nexusfs.connect(data_dir=kernel) as nx:
        rule = nx.call("hooks.add_rule", op="write", glob="/secret/**", action="deny",
                       message="no secrets here")  # fmt: skip
        with pytest.raises(nexusfs.PermissionDenied, match="no secrets here"):
            nx.write("/secret/key", b"x")
        assert not nx.exists("/secret/key")
        nx.write("/public/key", b"x")  # other paths are not affected
        wait_for(lambda: nx.call("hooks.query", path_prefix="/secret"))
        (denied,) = nx.call("hooks.query", path_prefix="/secret")
        assert not denied["ok"] and denied["error_code"] == "permission_denied"
        assert nx.call("hooks.remove_rule", rule_id=rule["id"])
        nx.write("/secret/key", b"x")


def test_kernel_process_never_imports_plugin_code(kernel: Path) -> None:
    with nexusfs.connect(data_dir=kernel) as nx:
        status = nx.status()  # type: ignore[attr-defined]
        assert status["plugin_modules_loaded"] == []
        services = {s["name"]: s for s in nx.call("services.list")}
        assert services["hooks"]["state"] == "running"
        assert services["hooks"]["pid"] != status["pid"]


def test_first_workers_start_with_the_kernel_and_are_adopted(kernel: Path) -> None:
    """The daemon starts its workers as soon as it holds the data directory (their
    imports overlap its own start-up): the running hooks worker is that process, not a
    standby spare."""
    with nexusfs.connect(data_dir=kernel) as nx:
        pid = next(s["pid"] for s in nx.call("services.list") if s["name"] == "hooks")
    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    assert b"nexusfs.services.worker" in cmdline and b"--standby" not in cmdline
    assert os.getpgid(pid) == pid  # its own session, like every worker


def test_hot_restart_under_load_fails_no_call(kernel: Path) -> None:
    """`nexus service restart hooks` while clients drive 1,000+ hooked syscalls per
    second: zero failed calls."""
    stop = threading.Event()
    errors: list[BaseException] = []
    counts: list[int] = []

    def client(k: int) -> None:
        n = 0
        with nexusfs.connect(data_dir=kernel) as nx:
            while not stop.is_set():
                try:
                    nx.write(f"/load/{k}/{n % 50}", b"payload")
                    nx.stat(f"/load/{k}/{n % 50}")
                    n += 2
                except BaseException as exc:
                    errors.append(exc)
                    return
        counts.append(n)

    threads = [threading.Thread(target=client, args=(k,)) for k in range(4)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    time.sleep(0.5)
    out = nexus(kernel, "service", "restart", "hooks")
    assert out.returncode == 0, out.stderr
    time.sleep(0.5)
    stop.set()
    for t in threads:
        t.join(60)
    elapsed = time.monotonic() - t0
    assert not errors, errors[:3]
    rate = sum(counts) / elapsed
    print(f"hooked syscalls across the restart: {rate:.0f} calls/s")
    assert rate >= 1000, f"only {rate:.0f} calls/s"
    with nexusfs.connect(data_dir=kernel) as nx:
        (svc,) = [s for s in nx.call("services.list") if s["name"] == "hooks"]
        assert svc["state"] == "running" and svc["restarts"] == 0


def test_cli_plugins_service_events_hooks(kernel: Path) -> None:
    out = nexus(kernel, "plugins", "list", "--json")
    assert out.returncode == 0, out.stderr
    assert '"nexusfs-hooks"' in out.stdout
    out = nexus(kernel, "service", "list")
    assert out.returncode == 0 and "running" in out.stdout
    assert nexus(kernel, "write", "/cli.txt", "-", stdin=b"hello").returncode == 0
    out = nexus(kernel, "hooks", "add", "unlink", "/cli.txt", "deny", "-m", "keep it")
    assert out.returncode == 0 and "rule" in out.stdout
    out = nexus(kernel, "rm", "/cli.txt")
    assert out.returncode == 1 and "keep it" in out.stderr
    assert "Traceback" not in out.stderr
    assert "/cli.txt" in nexus(kernel, "hooks", "list").stdout
    time.sleep(0.5)
    out = nexus(kernel, "events", "query", "--path", "/cli.txt", "--json")
    assert out.returncode == 0, out.stderr
    assert '"unlink"' in out.stdout and '"permission_denied"' in out.stdout
    out = nexus(kernel, "events", "tail", "-n", "2")
    assert out.returncode == 0 and "unlink" in out.stdout
    out = nexus(kernel, "service", "logs", "hooks")
    assert out.returncode == 0 and "ready" in out.stdout
    out = nexus(kernel, "service", "restart", "nope")
    assert out.returncode == 1 and "nope" in out.stderr


def test_service_commands_without_a_kernel_process_fail_clearly(tmp_path: Path) -> None:
    data = tmp_path / "data"
    assert nexus(data, "init").returncode == 0
    out = nexus(data, "service", "list")
    assert out.returncode == 1
    assert "nexus up" in out.stderr and "Traceback" not in out.stderr


def test_watch_streams_syscalls_and_emitted_events(kernel: Path) -> None:
    with nexusfs.connect(data_dir=kernel, subject="user:bob") as nx:
        nx.call("hooks.add_rule", op="write", glob="/w/**", action="emit", message="changed")
        got: list[dict[str, object]] = []
        ready = threading.Event()

        def consume() -> None:
            stream = nx.watch("/w", timeout=5)
            ready.set()
            for event in stream:
                got.append(event)
                kinds = {(e["kind"], e.get("op") or e.get("name")) for e in got}
                if {("syscall", "write"), ("emit", "changed"), ("syscall", "rename")} <= kinds:
                    return

        t = threading.Thread(target=consume)
        t.start()
        assert ready.wait(10)
        time.sleep(0.3)  # let the subscription reach the kernel
        nx.write("/elsewhere/f", b"not watched")
        nx.write("/w/f", b"watched")
        nx.write("/outside2", b"x")
        nx.rename("/outside2", "/w/moved-in")
        t.join(20)
        assert not t.is_alive(), got
        paths = {(e["kind"], e["path"]) for e in got}
        assert ("syscall", "/w/f") in paths
        assert all("/elsewhere" not in str(e["path"]) for e in got)
        (moved,) = [e for e in got if e.get("op") == "rename"]
        assert moved["dst"] == "/w/moved-in" and moved["subject"] == "user:bob"
        emitted = next(e for e in got if e["kind"] == "emit")
        assert emitted["name"] == "changed" and emitted["path"] == "/w/f"


def test_watch_needs_the_kernel_process(tmp_path: Path) -> None:
    with (
        nexusfs.connect(data_dir=tmp_path / "embedded") as nx,
        pytest.raises(nexusfs.ServiceUnavailable),
    ):
        next(iter(nx.watch("/")))


PLUGIN_SRC = """
from nexusfs.hookspecs import ServiceInfo, hookimpl


class Plugin:
    @hookimpl
    def nexus_service_info(self):
        return ServiceInfo(name="nxinstallable", version="{version}", post_hooks=("write",))

    @hookimpl
    def nexus_service_methods(self, ctx):
        return {{"version": lambda: "{version}"}}


plugin = Plugin()
"""


def _make_package(root: Path, version: str) -> Path:
    pkg = root / f"nxinstallable-{version}"
    (pkg / "nxinstallable").mkdir(parents=True)
    (pkg / "nxinstallable" / "__init__.py").write_text(PLUGIN_SRC.format(version=version))
    (pkg / "pyproject.toml").write_text(
        "[build-system]\nrequires = ['setuptools>=64']\nbuild-backend = 'setuptools.build_meta'\n"
        f"[project]\nname = 'nxinstallable'\nversion = '{version}'\n"
        "[project.entry-points.'nexusfs.services']\nnxinstallable = 'nxinstallable:plugin'\n"
    )
    return pkg


def test_plugins_install_upgrade_uninstall_like_os_packages(kernel: Path, tmp_path: Path) -> None:
    """`nexus plugins install PATH` installs a service package into the kernel's
    environment with pip and starts it; installing a newer version and restarting that
    one service runs the new code without restarting the kernel; uninstall removes it."""
    v1, v2 = _make_package(tmp_path, "1.0"), _make_package(tmp_path, "2.0")
    try:
        out = nexus(kernel, "plugins", "install", str(v1))
        assert out.returncode == 0, out.stderr
        assert "nxinstallable" in out.stdout
        with nexusfs.connect(data_dir=kernel) as nx:
            kernel_pid = nx.status()["pid"]  # type: ignore[attr-defined]
            assert nx.call("nxinstallable.version") == "1.0"
            out = nexus(kernel, "plugins", "install", str(v2))
            assert out.returncode == 0, out.stderr
            assert nexus(kernel, "service", "restart", "nxinstallable").returncode == 0
            assert nx.call("nxinstallable.version") == "2.0"
            assert nx.status()["pid"] == kernel_pid  # type: ignore[attr-defined]
        listed = nexus(kernel, "plugins", "list", "--json").stdout
        assert '"nxinstallable"' in listed and '"2.0"' in listed
    finally:
        out = nexus(kernel, "plugins", "uninstall", "nxinstallable")
    assert out.returncode == 0, out.stderr
    assert "nxinstallable" not in installed_services()
    assert '"nxinstallable"' not in nexus(kernel, "plugins", "list", "--json").stdout


@pytest.mark.parametrize("cache", ["none", "redis"])
def test_events_tail_follow_streams_new_events(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cache: str
) -> None:
    """`nexus events tail -f` long-polls the hooks service: a new event is printed at
    once, through Redis pub/sub when a cache store is configured, in-process without."""
    from nexusfs.testing.redis import redis_url_or_skip

    monkeypatch.setenv("NEXUS_SERVICES", "hooks")
    if cache == "redis":
        monkeypatch.setenv("NEXUS_CACHE_STORE", redis_url_or_skip())
    else:
        monkeypatch.delenv("NEXUS_CACHE_STORE", raising=False)
    data = tmp_path / "data"
    daemon.start(data)
    tail = subprocess.Popen(
        [sys.executable, "-m", "nexusfs.cli", "--data-dir", str(data),
         "events", "tail", "-f", "-n", "1", "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        with nexusfs.connect(data_dir=data) as nx:
            nx.write("/before.txt", b"x")
            time.sleep(1.0)  # the tail is now waiting in the service
            t0 = time.monotonic()
            nx.write("/followed.txt", b"y")
        assert tail.stdout is not None
        seen = ""
        while '"/followed.txt"' not in seen:
            line = tail.stdout.readline()
            assert line, f"tail ended early: {tail.stderr.read() if tail.stderr else ''}"
            seen += line
        assert time.monotonic() - t0 < 5.0
    finally:
        tail.kill()
        tail.wait()
        daemon.stop(data)
