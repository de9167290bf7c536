"""The rebac service end to end: a real kernel process running the installed
``nexusfs-rebac`` service in its own worker, driven through ``nx.call("rebac.*")``, the
``nexus rebac`` CLI, several client processes, a hot restart, and two kernels sharing
one PostgreSQL record store (and a Redis cache store)."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

import nexusfs
from nexusfs.errors import NexusError, NotFound
from nexusfs.server import daemon
from nexusfs.services.registry import installed_services

pytestmark = [
    pytest.mark.timeout(300),
    pytest.mark.skipif(
        "rebac" not in installed_services(),
        reason="nexusfs-rebac is not installed (pip install -e plugins/rebac)",
    ),
]

# Runs the nexus CLI with the rebac group registered even if cli/app.py does not list
# it yet (the real `nexus` once it does; add_command is skipped then).
CLI = (
    "import sys\n"
    "from nexusfs.cli.app import cli, run\n"
    "from nexusfs.cli.rebac import COMMANDS\n"
    "for c in COMMANDS:\n"
    "    if c.name not in cli.commands:\n"
    "        cli.add_command(c)\n"
    "run(sys.argv[1:])\n"
)

# A client process: reads commands from stdin, one per line, answers one JSON line each.
CLIENT = """
import json, sys
import nexusfs
nx = nexusfs.connect(data_dir=sys.argv[1])
for line in sys.stdin:
    cmd = json.loads(line)
    try:
        out = nx.call("rebac." + cmd.pop("method"), **cmd)
    except Exception as exc:
        out = {"error": getattr(exc, "code", type(exc).__name__)}
    print(json.dumps(out), flush=True)
"""


def start_kernel(data: Path, monkeypatch: pytest.MonkeyPatch, **env: str) -> Path:
    monkeypatch.setenv("NEXUS_SERVICES", "rebac")
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    daemon.start(data)
    with nexusfs.connect(data_dir=data) as nx:
        wait_for(lambda: _running(nx), what="rebac running")
    return data


def _running(nx: Any) -> bool:
    return any(s["name"] == "rebac" and s["state"] == "running" for s in nx.call("services.list"))


@pytest.fixture
def kernel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.delenv("NEXUS_RECORD_STORE", raising=False)
    monkeypatch.delenv("NEXUS_CACHE_STORE", raising=False)
    data = start_kernel(tmp_path / "data", monkeypatch)
    try:
        yield data
    finally:
        daemon.stop(data)


@contextmanager
def kernels_sharing_postgres_and_redis(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[Path, Path]]:
    """Two kernels (data directories ``k1`` and ``k2``) whose rebac services share one
    fresh PostgreSQL database and one Redis; both stopped and the database dropped
    afterwards. Skips (or fails, when servers are required) without PostgreSQL/Redis."""
    from nexusfs.testing.postgres import create_database, drop_database, require_postgres
    from nexusfs.testing.redis import redis_url_or_skip

    url = create_database(require_postgres())
    env = {"NEXUS_RECORD_STORE": url, "NEXUS_CACHE_STORE": redis_url_or_skip()}
    started: list[Path] = []
    try:
        for name in ("k1", "k2"):
            started.append(start_kernel(tmp_path / name, monkeypatch, **env))
        yield started[0], started[1]
    finally:
        for k in started:
            daemon.stop(k)
        drop_database(url)


def wait_for(predicate: Any, timeout: float = 20.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"not reached in time: {what}")


def nexus(data: Path, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", CLI, "--data-dir", str(data), *args],
        input=stdin, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


class Client:
    """A client in its own process, connected to the kernel for its whole life."""

    def __init__(self, data: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", CLIENT, str(data)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip

    def call(self, method: str, **kwargs: Any) -> Any:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps({"method": method, **kwargs}) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        assert line, "the client process died"
        return json.loads(line)

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        self.proc.wait(30)


# --------------------------------------------------------------------- the API


def test_write_check_and_list_through_the_kernel(kernel: Path) -> None:
    with nexusfs.connect(data_dir=kernel) as nx:
        for path in ("/team/plan.md", "/team/notes/a.md", "/private/diary.md"):
            nx.write(path, b"x")
        token = nx.call("rebac.write", writes=[
            "folder:/team#viewer@group:eng#member",
            {"object": "group:eng", "relation": "member", "user": "user:anne"},
            "file:/private/diary.md#owner@user:bob",
        ])  # fmt: skip
        assert isinstance(token, str)
        ask = {"user": "user:anne", "relation": "read", "consistency": token}
        assert nx.call("rebac.check", object="file:/team/notes/a.md", **ask) is True
        assert nx.call("rebac.check", object="file:/private/diary.md", **ask) is False
        # list_objects walks the kernel's namespace from inside the worker (ctx.kernel).
        assert nx.call("rebac.list_objects", user="user:anne", relation="read", type="file") == [
            "file:/team/notes/a.md", "file:/team/plan.md"]  # fmt: skip
        assert nx.call("rebac.check_paths", checks=[
            ["user:bob", "write", "/private/diary.md", "file"],
            ["user:anne", "list", "/team/notes"],
        ]) == [True, True]  # fmt: skip
        assert nx.call(
            "rebac.list_users", object="file:/team/plan.md", relation="read", user_types=["user"]
        ) == {"users": ["user:anne"], "excluded": []}
        assert nx.call("rebac.read_model")["model_id"] == nx.call("rebac.revision")["model_id"]
        with pytest.raises(NexusError) as err:
            nx.call("rebac.write", writes=["folder:/team#viewer@group:eng#member"])
        assert err.value.code == "rebac_duplicate_tuple"
        with pytest.raises(NexusError) as err:
            nx.call("rebac.check", user="user:anne", relation="nope", object="file:/x")
        assert err.value.code == "rebac_invalid_request"
        status = nx.status()  # type: ignore[attr-defined]
        assert status["plugin_modules_loaded"] == []  # the kernel never imports the plugin


def test_typed_errors_are_rebuilt_where_the_package_is_imported(kernel: Path) -> None:
    from nexusfs_rebac.errors import InvalidTuple, MissingTuple

    with nexusfs.connect(data_dir=kernel) as nx:
        with pytest.raises(InvalidTuple, match="allows"):
            nx.call("rebac.write", writes=["folder:/a#owner@user:*"])
        with pytest.raises(MissingTuple):
            nx.call("rebac.write", deletes=["folder:/a#owner@user:x"])


def test_a_revoke_in_one_client_is_seen_by_another_clients_next_check(kernel: Path) -> None:
    """Two client processes, each with its own connection for its whole life: B's next
    check with A's revoke token is denied."""
    a, b = Client(kernel), Client(kernel)
    try:
        q = {"user": "user:eve", "relation": "read", "object": "file:/shared/x.txt"}
        grant = a.call("write", writes=["folder:/shared#viewer@user:eve"])
        assert b.call("check", consistency=grant, **q) is True
        revoke = a.call("write", deletes=["folder:/shared#viewer@user:eve"])
        assert b.call("check", consistency=revoke, **q) is False
        assert b.call("check", consistency="nope", **q) == {"error": "rebac_invalid_token"}
    finally:
        a.close()
        b.close()


def test_hot_restart_keeps_state_and_fails_no_check(kernel: Path) -> None:
    """`nexus service restart rebac` while clients check: the new worker reloads the
    tuples from the record store, and the read-only calls are retried across the
    switch, so none fails."""
    with nexusfs.connect(data_dir=kernel) as nx:
        token = nx.call("rebac.write", writes=[f"folder:/p{i}#viewer@user:u{i}" for i in range(50)])
    stop = threading.Event()
    errors: list[BaseException] = []
    answers: list[bool] = []

    def client() -> None:
        with nexusfs.connect(data_dir=kernel) as nx:
            i = 0
            while not stop.is_set():
                try:
                    answers.append(nx.call("rebac.check", user=f"user:u{i % 50}",
                                           relation="read", object=f"file:/p{i % 50}/f",
                                           consistency=token))  # fmt: skip
                except BaseException as exc:
                    errors.append(exc)
                    return
                i += 1

    threads = [threading.Thread(target=client) for _ in range(3)]
    for t in threads:
        t.start()
    time.sleep(0.5)
    out = nexus(kernel, "service", "restart", "rebac")
    time.sleep(0.5)
    stop.set()
    for t in threads:
        t.join(60)
    assert out.returncode == 0, out.stderr
    assert not errors, errors[:3]
    assert len(answers) > 50 and all(answers)
    with nexusfs.connect(data_dir=kernel) as nx:
        (svc,) = [s for s in nx.call("services.list") if s["name"] == "rebac"]
        assert svc["state"] == "running"
        assert nx.call("rebac.check", user="user:u7", relation="read", object="file:/p7/f")


# --------------------------------------------------------------------- the CLI


def test_cli_rebac_commands(kernel: Path, tmp_path: Path) -> None:
    model = tmp_path / "docs.fga"
    model.write_text(
        "model\n  schema 1.1\ntype user\ntype document\n  relations\n"
        "    define owner: [user]\n    define viewer: [user, user:*] or owner\n"
        "    define blocked: [user]\n    define can_read: viewer but not blocked\n"
    )
    out = nexus(kernel, "rebac", "model", "write", str(model))
    assert out.returncode == 0 and out.stdout.startswith("model "), out.stderr
    model_id = out.stdout.split()[1]
    shown = nexus(kernel, "rebac", "model", "show")
    assert shown.returncode == 0 and model_id in shown.stdout and "can_read" in shown.stdout
    as_json = json.loads(nexus(kernel, "rebac", "model", "show", "--json").stdout)
    assert as_json["model_id"] == model_id
    out = nexus(kernel, "rebac", "model", "write", "-", stdin="model\n  schema 1.1\ntype user\n")
    assert out.returncode == 0
    older = nexus(kernel, "rebac", "model", "show", "--id", model_id)
    assert "can_read" in older.stdout
    assert nexus(kernel, "rebac", "model", "write", str(model)).returncode == 0

    out = nexus(kernel, "rebac", "write", "--add", "document:1#viewer@user:*",
                "--add", "document:1#blocked@user:bob")  # fmt: skip
    assert out.returncode == 0, out.stderr
    token = out.stdout.strip()
    allowed = nexus(kernel, "rebac", "check", "user:anne", "can_read", "document:1",
                    "--consistency", token)  # fmt: skip
    assert (allowed.returncode, allowed.stdout.strip()) == (0, "allowed")
    denied = nexus(kernel, "rebac", "check", "user:bob", "can_read", "document:1")
    assert (denied.returncode, denied.stdout.strip()) == (1, "denied")
    out = nexus(kernel, "rebac", "list-objects", "user:anne", "can_read", "document")
    assert out.stdout.split() == ["document:1"]
    out = nexus(kernel, "rebac", "list-users", "document:1", "can_read", "--type", "user")
    assert out.stdout.splitlines() == ["user:*", "except: user:bob"]
    out = nexus(kernel, "rebac", "expand", "can_read", "document:1")
    assert "difference" in out.stdout and "but not" in out.stdout
    out = nexus(kernel, "rebac", "expand", "viewer", "document:1")
    assert "union" in out.stdout and "document:1#viewer: user:*" in out.stdout
    out = nexus(kernel, "rebac", "read", "--user", "user:b")
    assert "document:1" in out.stdout and "blocked" in out.stdout and "viewer" not in out.stdout
    out = nexus(kernel, "rebac", "changes", "--json")
    page = json.loads(out.stdout)
    assert [c["operation"] for c in page["changes"]] == ["write", "write"]
    out = nexus(kernel, "rebac", "write", "--delete", "document:1#blocked@user:bob")
    after = nexus(kernel, "rebac", "changes", "--since", page["token"])
    assert "delete" in after.stdout and "next: " in after.stdout
    assert nexus(kernel, "rebac", "check", "user:bob", "can_read", "document:1",
                 "--consistency", out.stdout.strip()).returncode == 0  # fmt: skip
    assert "revision" in nexus(kernel, "rebac", "revision").stdout

    bad = nexus(kernel, "rebac", "write", "--add", "document:1#viewer")
    assert bad.returncode == 1 and "Traceback" not in bad.stderr
    assert bad.stderr.startswith("nexus: rebac invalid tuple") and len(bad.stderr.splitlines()) == 1
    bad = nexus(kernel, "rebac", "model", "write", "-", stdin="model\n  schema 1.1\ntype x\n  rel")
    assert bad.returncode == 1 and "line 4" in bad.stderr
    assert nexus(kernel, "rebac", "write").returncode == 2  # usage: nothing to write


def test_cli_without_a_kernel_process_fails_in_one_line(tmp_path: Path) -> None:
    data = tmp_path / "data"
    assert nexus(data, "init").returncode == 0
    out = nexus(data, "rebac", "check", "user:a", "read", "file:/x")
    assert out.returncode == 1 and "nexus up" in out.stderr and "Traceback" not in out.stderr


# ---------------------------------------------------- two kernels, one database


def test_two_kernels_sharing_postgres_and_redis(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another kernel on the same PostgreSQL: a token from kernel 1 is honoured by
    kernel 2 (no new enemy), and without a token kernel 2 learns of writes through
    the shared Redis channel at once."""
    with (
        kernels_sharing_postgres_and_redis(tmp_path, monkeypatch) as (k1, k2),
        nexusfs.connect(data_dir=k1) as one,
        nexusfs.connect(data_dir=k2) as two,
    ):
        q = {"user": "user:zoe", "relation": "read", "object": "file:/x/y"}
        grant = one.call("rebac.write", writes=["folder:/x#viewer@user:zoe"])
        assert two.call("rebac.check", consistency=grant, **q) is True
        revoke = one.call("rebac.write", deletes=["folder:/x#viewer@user:zoe"])
        assert two.call("rebac.check", consistency=revoke, **q) is False
        one.call("rebac.write", writes=["folder:/x#editor@user:zoe"])
        t0 = time.monotonic()
        wait_for(lambda: two.call("rebac.check", **q), timeout=10, what="pushed to k2")
        assert time.monotonic() - t0 < 3.0


def test_a_revoke_written_on_another_kernel_is_pushed_to_this_kernels_gate(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two kernels on one PostgreSQL and one Redis. A subject of kernel 2 has a warm
    decision cache; kernel 1 revokes (not through kernel 2): kernel 2's rebac worker
    learns it from the Redis channel and reports the revision to its kernel
    (``rebac.revision``), whose gate forgets the grant: the subject is refused well
    before the gate's own 1 s revision poll would have noticed (the push is counted)."""
    with kernels_sharing_postgres_and_redis(tmp_path, monkeypatch) as (k1, k2):
        with nexusfs.connect(data_dir=k2) as owner2:
            owner2.write("/x/y.txt", b"y")
        with (
            nexusfs.connect(data_dir=k1) as one,
            nexusfs.connect(data_dir=k2, subject="user:zoe") as zoe,
        ):
            one.call("rebac.write", writes=["folder:/x#viewer@user:zoe"])

            def visible() -> bool:
                try:
                    zoe.stat("/x/y.txt")
                except NotFound:
                    return False
                return True

            wait_for(visible, timeout=10, what="the grant reached kernel 2")
            for _ in range(5):
                assert visible()  # warm: from kernel 2's decision cache
            pushes = zoe.call("kernel.gate_stats")["pushes"]
            one.call("rebac.write", deletes=["folder:/x#viewer@user:zoe"])
            t0 = time.monotonic()
            wait_for(lambda: not visible(), timeout=10, what="the revoke reached kernel 2")
            took = time.monotonic() - t0
            assert zoe.call("kernel.gate_stats")["pushes"] > pushes
            print(f"revoke on kernel 1 enforced on kernel 2 after {took * 1000:.0f} ms")
