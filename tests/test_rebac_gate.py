"""The kernel permission gate: every syscall of a kernel process running the rebac
service is checked for the acting subject (``nexusfs.server.gate``).

A real kernel process with the installed ``nexusfs-rebac`` service; an admin client
(the user that runs the kernel) writes tuples with ``nx.call("rebac.write", ...)``, and
clients connected as other subjects see exactly what the default file model grants
them: allowed, denied, inherited along the path, revoked on the very next call (also in
another process), namespace views in ``readdir``, invisible paths as ``NotFound``, and
the explicit bypasses (admins, ``service:*``, ``/__sys__``).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import nexusfs
from nexusfs.errors import (
    ConfigError,
    MountError,
    NexusError,
    NotFound,
    PermissionDenied,
    ServiceUnavailable,
)
from nexusfs.server import daemon
from nexusfs.services.registry import installed_services

pytestmark = [
    pytest.mark.timeout(300),
    pytest.mark.skipif(
        "rebac" not in installed_services(),
        reason="nexusfs-rebac is not installed (pip install -e plugins/rebac)",
    ),
]


@pytest.fixture
def kernel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.setenv("NEXUS_SERVICES", "rebac")
    monkeypatch.setenv("NEXUS_ADMINS", "user:root-admin")
    monkeypatch.delenv("NEXUS_RECORD_STORE", raising=False)
    monkeypatch.delenv("NEXUS_CACHE_STORE", raising=False)
    data = tmp_path / "data"
    daemon.start(data)
    try:
        with nexusfs.connect(data_dir=data) as admin:
            deadline = time.monotonic() + 30
            while not any(
                s["name"] == "rebac" and s["state"] == "running"
                for s in admin.call("services.list")
            ):
                assert time.monotonic() < deadline, "rebac did not start"
                time.sleep(0.05)
            admin.mkdir("/docs/team", parents=True)
            admin.write("/docs/team/plan.md", b"plan")
            admin.write("/docs/secret.md", b"secret")
            admin.write("/public.txt", b"hello")
        yield data
    finally:
        daemon.stop(data)


def grant(data: Path, *tuples: str, delete: tuple[str, ...] = ()) -> str:
    with nexusfs.connect(data_dir=data) as admin:
        return str(admin.call("rebac.write", writes=list(tuples), deletes=list(delete)))


def as_user(data: Path, user: str) -> Any:
    return nexusfs.connect(data_dir=data, subject=user)


def names(listing: Any) -> list[str]:
    return sorted(e.path for e in listing)


def test_nothing_granted_means_nothing_visible(kernel: Path) -> None:
    with as_user(kernel, "user:bob") as bob:
        for path in ("/docs", "/docs/team/plan.md", "/public.txt"):
            with pytest.raises(NotFound):
                bob.stat(path)
            assert bob.exists(path) is False
        with pytest.raises(NotFound):
            bob.read("/public.txt")
        assert names(bob.readdir("/")) == []  # the root is visible, its entries are not
        with pytest.raises(PermissionDenied):
            bob.write("/new.txt", b"x")  # no write on folder:/


def test_inherited_read_and_write_along_the_path(kernel: Path) -> None:
    grant(kernel, "folder:/docs#viewer@user:alice", "folder:/docs/team#editor@user:carol")
    with as_user(kernel, "user:alice") as alice:
        assert alice.read("/docs/team/plan.md") == b"plan"  # inherited from /docs
        assert names(alice.readdir("/docs")) == ["/docs/secret.md", "/docs/team"]
        with pytest.raises(PermissionDenied):
            alice.write("/docs/team/plan.md", b"changed")  # viewer, not editor
        with pytest.raises(PermissionDenied):
            alice.unlink("/docs/secret.md")
    with as_user(kernel, "user:carol") as carol:
        carol.write("/docs/team/plan.md", b"v2")  # editor of the folder
        carol.write("/docs/team/new.md", b"new")  # create: write on the parent folder
        carol.mkdir("/docs/team/sub/deep", parents=True)
        carol.rename("/docs/team/new.md", "/docs/team/sub/new.md")
        assert carol.read("/docs/team/sub/new.md") == b"new"
        with pytest.raises(NotFound):
            carol.stat("/docs/secret.md")  # outside her folder
        with pytest.raises(NotFound):
            carol.stat("/docs")  # /docs itself is not granted to carol
        with pytest.raises(PermissionDenied):
            carol.copy("/docs/team/plan.md", "/copied.md")  # no write on /


def test_namespace_view_filters_readdir(kernel: Path) -> None:
    grant(kernel, "file:/docs/team/plan.md#viewer@user:dave", "file:/public.txt#viewer@user:*")
    with as_user(kernel, "user:dave") as dave:
        assert names(dave.readdir("/")) == ["/public.txt"]
        assert dave.read("/docs/team/plan.md") == b"plan"  # a direct grant on the file
        with pytest.raises(NotFound):
            dave.readdir("/docs/team")  # the folder itself is invisible to dave
        assert names(dave.readdir("/", recursive=True)) == ["/docs/team/plan.md", "/public.txt"]
    with as_user(kernel, "user:erin") as erin:  # user:* grants everyone the public file
        assert erin.read("/public.txt") == b"hello"


def test_group_membership_and_revoke_on_the_next_call(kernel: Path) -> None:
    grant(kernel, "group:eng#member@user:frank", "folder:/docs#viewer@group:eng#member")
    with as_user(kernel, "user:frank") as frank:
        assert frank.read("/docs/secret.md") == b"secret"
        grant(kernel, delete=("group:eng#member@user:frank",))
        with pytest.raises(NotFound):
            frank.read("/docs/secret.md")  # the very next call
        grant(kernel, "group:eng#member@user:frank")
        assert frank.stat("/docs/secret.md").size == 6


# A client in its own process, as ``argv[2]``: one JSON command per stdin line, one JSON
# answer per stdout line (``{"error": class name, "message": ...}`` for an exception).
CLIENT = r"""
import json, sys
import nexusfs
nx = nexusfs.connect(data_dir=sys.argv[1], subject=sys.argv[2])
files = {}
for line in sys.stdin:
    cmd = json.loads(line)
    op = cmd["op"]
    try:
        if op == "call":
            out = nx.call(cmd["method"], **cmd.get("args", {}))
        elif op == "stat":
            out = nx.stat(cmd["path"]).size
        elif op == "open":
            files[cmd["name"]] = nx.open(cmd["path"], cmd["mode"])
            out = "opened"
        elif op == "read":
            out = len(files[cmd["name"]].read(cmd["size"]))
        elif op == "write":
            out = files[cmd["name"]].write(b"w" * cmd["size"])
        elif op == "close":
            files.pop(cmd["name"]).close()
            out = "closed"
        else:
            out = {"error": "unknown op"}
    except Exception as exc:
        out = {"error": type(exc).__name__, "message": str(exc)}
    print(json.dumps(out), flush=True)
"""


class Client:
    """A client process connected as ``subject`` for its whole life."""

    def __init__(self, data: Path, subject: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", CLIENT, str(data), subject],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip

    def __call__(self, op: str, **kwargs: Any) -> Any:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps({"op": op, **kwargs}) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        assert line, "the client process died"
        return json.loads(line)

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait(30)


def test_a_revoke_in_one_client_process_is_enforced_in_another_on_its_next_call(
    kernel: Path,
) -> None:
    """Client A (an admin, its own process) revokes; client B (another process, with
    warm decisions and two open handles) is refused on its very next call of each kind,
    with no sleep in between: a stat reads as not found, the open reader and writer get
    PermissionDenied, and the writer's close commits nothing."""
    with nexusfs.connect(data_dir=kernel) as admin:
        admin.write("/docs/big.bin", b"b" * (3 << 20))  # larger than the reader's buffer
    grant(kernel, "folder:/docs#editor@user:gina")
    a, b = Client(kernel, "user:root-admin"), Client(kernel, "user:gina")
    try:
        for _ in range(3):  # warm: answered from the kernel's decision cache
            assert b("stat", path="/docs/secret.md") == 6
        assert b("open", name="r", path="/docs/big.bin", mode="rb") == "opened"
        assert b("read", name="r", size=1 << 20) == 1 << 20
        assert b("open", name="w", path="/docs/team/upload.bin", mode="wb") == "opened"
        assert b("write", name="w", size=1000) == 1000
        token = a("call", method="rebac.write",
                  args={"deletes": ["folder:/docs#editor@user:gina"]})  # fmt: skip
        assert isinstance(token, str)
        assert b("stat", path="/docs/secret.md")["error"] == "NotFound"
        denied = b("read", name="r", size=1 << 20)
        assert denied["error"] == "PermissionDenied"
        assert "user:gina has no read permission on file:/docs/big.bin" in denied["message"]
        assert b("write", name="w", size=1000)["error"] == "PermissionDenied"
        assert b("close", name="w")["error"] == "PermissionDenied"
        assert b("close", name="r") == "closed"
        assert a("call", method="fs.exists", args={"path": "/docs/team/upload.bin"}) is False
        # Granted again by A: B's next call sees it.
        a("call", method="rebac.write", args={"writes": ["folder:/docs#viewer@user:gina"]})
        assert b("stat", path="/docs/secret.md") == 6
    finally:
        a.close()
        b.close()


def test_a_stopped_rebac_service_fails_closed(kernel: Path) -> None:
    """Stopping the service (through the kernel, as `nexus service stop` does) refuses
    every checked call with ServiceUnavailable at once, cached decisions included;
    admins are not checked; starting it again restores the decisions."""
    grant(kernel, "folder:/docs#viewer@user:kai")
    with as_user(kernel, "user:kai") as kai, nexusfs.connect(data_dir=kernel) as admin:
        assert kai.stat("/docs/secret.md").size == 6  # cached now
        admin.call("services.stop", name="rebac")
        for call in (
            lambda: kai.stat("/docs/secret.md"),
            lambda: kai.read("/docs/secret.md"),
            lambda: kai.exists("/docs/secret.md"),
            lambda: kai.readdir("/docs"),
            lambda: kai.write("/docs/new.md", b"x"),
        ):
            with pytest.raises(ServiceUnavailable, match=r"refused|rebac"):
                call()
        assert admin.read("/docs/secret.md") == b"secret"
        admin.call("services.start", name="rebac")
        assert kai.stat("/docs/secret.md").size == 6


def test_service_and_kernel_calls_of_a_subject_are_policed(kernel: Path) -> None:
    with as_user(kernel, "user:bob") as bob:
        with pytest.raises(PermissionDenied, match=r"user:bob may not call rebac\.write"):
            bob.call("rebac.write", writes=["folder:/#owner@user:bob"])
        with pytest.raises(PermissionDenied, match="only about itself"):
            bob.call("rebac.check", user="user:alice", relation="read", object="folder:/docs")
        assert bob.call("rebac.check", user="user:bob", relation="read",
                        object="folder:/docs") is False  # fmt: skip
        with pytest.raises(PermissionDenied, match="admin"):
            bob.call("services.restart", name="rebac")
        with pytest.raises(PermissionDenied, match="admin"):
            bob.call("kernel.shutdown")
        assert any(s["name"] == "rebac" for s in bob.call("services.list"))
        with pytest.raises(NotFound):
            bob.stat("/docs")  # the grant bob tried to write does not exist
    assert daemon.kernel_state(kernel) is not None  # still running


def test_bad_subjects_and_admins_are_refused_clearly(
    kernel: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for bad in ("alice", "group:eng#member", "user:a b"):
        with pytest.raises(NexusError, match="is not a subject") as err:
            nexusfs.connect(data_dir=kernel, subject=bad)
        assert err.value.code == "invalid_subject"
    monkeypatch.setenv("NEXUS_ADMINS", "user:ok, alice")
    with pytest.raises(ConfigError, match=r"NEXUS_ADMINS.*'alice' is not a subject"):
        daemon.start(tmp_path / "other")


def test_admin_and_sys_bypass(kernel: Path) -> None:
    with as_user(kernel, "user:root-admin") as admin:  # NEXUS_ADMINS
        assert admin.read("/docs/secret.md") == b"secret"
    with nexusfs.connect(data_dir=kernel) as owner:  # the user running the kernel
        assert owner.read("/docs/secret.md") == b"secret"
    with as_user(kernel, "user:bob") as bob:
        assert bob.exists("/__sys__") and names(bob.readdir("/__sys__"))  # read-only facts
        with pytest.raises((PermissionDenied, MountError)):
            bob.mount("/m", "memory://x")  # admin-only syscall
        with pytest.raises(PermissionDenied):
            bob.zone_create("z")


def test_decisions_are_cached_until_the_revision_changes(kernel: Path) -> None:
    grant(kernel, "folder:/docs#viewer@user:hal")
    with as_user(kernel, "user:hal") as hal:
        hal.stat("/docs/secret.md")
        before = hal.call("kernel.gate_stats")
        for _ in range(20):
            hal.stat("/docs/secret.md")
        after = hal.call("kernel.gate_stats")
        assert after["misses"] == before["misses"]  # all 20 answered from the cache
        assert after["hits"] >= before["hits"] + 20


def test_every_remaining_syscall_is_gated(kernel: Path) -> None:
    """Handles, rmdir, exists, copy and the admin-only calls, allowed and denied."""
    grant(kernel, "folder:/docs/team#editor@user:ivy", "folder:/docs#viewer@user:ivy")
    with as_user(kernel, "user:ivy") as ivy:
        with ivy.open("/docs/team/streamed.bin", "wb") as f:  # write on the folder
            f.write(b"s" * 1000)
        with ivy.open("/docs/team/streamed.bin", "rb") as f:
            assert f.read() == b"s" * 1000
        with pytest.raises(PermissionDenied):
            ivy.open("/docs/secret.md", "wb")  # viewer only
        ivy.copy("/docs/secret.md", "/docs/team/copy.md")  # read src, write dst folder
        assert ivy.exists("/docs/team/copy.md")
        ivy.mkdir("/docs/team/empty")
        ivy.rmdir("/docs/team/empty")
        with pytest.raises(PermissionDenied):
            ivy.rmdir("/docs", recursive=True)  # viewer of /docs only
        for call in (lambda: ivy.gc(), lambda: ivy.flush(), lambda: next(iter(ivy.watch("/")))):
            with pytest.raises(PermissionDenied):
                call()
    with as_user(kernel, "user:nobody") as nobody:
        assert nobody.exists("/docs/team/copy.md") is False
        with pytest.raises(NotFound):
            nobody.open("/docs/team/copy.md", "rb")
        with pytest.raises(NotFound):
            nobody.unlink("/docs/team/copy.md")  # invisible: not found, not denied
        with pytest.raises(NotFound):
            nobody.rename("/docs/team/copy.md", "/x.md")
