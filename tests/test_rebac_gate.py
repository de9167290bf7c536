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

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import nexusfs
from nexusfs.errors import MountError, NotFound, PermissionDenied
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


def test_a_revoke_in_one_process_is_enforced_in_another(kernel: Path) -> None:
    grant(kernel, "folder:/docs#viewer@user:gina")
    script = (
        "import sys, nexusfs\n"
        "nx = nexusfs.connect(data_dir=sys.argv[1], subject='user:gina')\n"
        "for line in sys.stdin:\n"
        "    try:\n"
        "        nx.stat('/docs/secret.md'); print('ok', flush=True)\n"
        "    except Exception as exc:\n"
        "        print(type(exc).__name__, flush=True)\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script, str(kernel)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stdin is not None and proc.stdout is not None
    try:
        proc.stdin.write("check\n")
        proc.stdin.flush()
        assert proc.stdout.readline().strip() == "ok"
        grant(kernel, delete=("folder:/docs#viewer@user:gina",))  # another process revokes
        proc.stdin.write("check\n")
        proc.stdin.flush()
        assert proc.stdout.readline().strip() == "NotFound"
    finally:
        proc.kill()
        proc.wait()


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
