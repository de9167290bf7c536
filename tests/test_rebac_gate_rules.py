"""The permission gate's rules, syscall by syscall, in one process.

The real parts of a kernel process without its sockets: an embedded kernel
(``NexusFS``), a :class:`~nexusfs.server.session.Session` whose handler table is what a
client connection gets, the real :class:`~nexusfs.server.gate.PermissionGate`, and the
real rebac service (``RebacService`` on a SQLite record store) answering the gate's
``batch_check`` / ``revision`` in process instead of over the bus (the bus path is
covered by ``test_rebac_gate.py``). Faults are injected by stopping the service or by
wrapping its router.

Proves: every ``fs.*`` handler of a session is gated (a new handler without a rule
fails :func:`test_every_fs_handler_is_gated`); invisible paths read as not found, and
writes below an invisible folder answer exactly as below a missing one; denials name
subject, permission, object and path; the write-target rules (create = ``write`` on the
nearest existing folder, ``mkdir -p``, rename/copy source and destination); the
``/__sys__`` and admin bypasses; subject validation; the service-call policy; revokes
and open handles; cache invalidation by push, by write and by a lost worker; fail-closed.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import pytest

import nexusfs
from nexusfs.drivers.recordstore import SQLAlchemyRecordStore, default_record_store_url
from nexusfs.errors import (
    AlreadyExists,
    NexusError,
    NotFound,
    PermissionDenied,
    ServiceUnavailable,
)
from nexusfs.kernel import NexusFS
from nexusfs.server.gate import REVISION_EVENT, InvalidSubject, PermissionGate, check_subject
from nexusfs.server.pipeline import Pipeline
from nexusfs.server.session import BadHandle, Session
from nexusfs.services.registry import installed_services

pytestmark = pytest.mark.skipif(
    "rebac" not in installed_services(),
    reason="nexusfs-rebac is not installed (pip install -e plugins/rebac)",
)

KERNEL_USER = "user:kernel-owner"
ADMIN = "user:root-admin"


class InProcessHost:
    """The service host's ``call`` / ``services``, answered by the started service
    in this process (``fail``: raise this instead, to inject a fault)."""

    def __init__(self, service: Any) -> None:
        self.service = service
        self.calls: list[str] = []
        self.fail: Exception | None = None
        self.during: Callable[[], None] | None = None

    async def call(
        self, service: str, method: str, args: dict[str, Any], *, deadline: float | None
    ) -> Any:
        assert service == "rebac", service
        self.calls.append(method)
        if self.fail is not None:
            raise self.fail
        result = self.service.methods()[method](**args)
        if self.during is not None:
            self.during()
        return result

    def services(self) -> list[dict[str, Any]]:
        return [{"name": "rebac", "state": "running"}]


class Env:
    """One kernel, one rebac service, one gate; :meth:`session` opens connections."""

    def __init__(self, fs: NexusFS, service: Any) -> None:
        self.fs = fs
        self.service = service
        self.host = InProcessHost(service)

        def kind(path: str) -> bool | None:
            try:
                return bool(fs.stat(path).is_dir)
            except NexusError:
                return None

        self.gate = PermissionGate(self.host, kind, admins=(KERNEL_USER, ADMIN))
        self.pipeline = Pipeline()
        self.pipeline.gate = self.gate
        self.shutdowns = 0

    def session(self, subject: str | None) -> Handlers:
        def shutdown() -> None:
            self.shutdowns += 1

        s = Session(self.fs, shutdown, {"version": "test"}, pipeline=self.pipeline,
                    services=self.host, subject=subject, notify=lambda m, a: None)  # fmt: skip
        return Handlers(s)

    def grant(self, *writes: str, deletes: tuple[str, ...] = ()) -> None:
        self.session(ADMIN).call("rebac.write", writes=list(writes), deletes=list(deletes))


class Handlers:
    """A session's handler table, called the way the bus calls it."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self.table = session.handlers()

    def call(self, method: str, /, **kwargs: Any) -> Any:
        fn = self.table.get(method)
        assert fn is not None, f"no handler {method}"

        async def go() -> Any:
            result = fn(**kwargs)
            while inspect.isawaitable(result):
                result = await result
            return result

        return anyio.run(go)


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    from nexusfs_rebac.service import RebacService
    from nexusfs_rebac.store import TupleStore
    from nexusfs_rebac.tables import upgrade_schema

    fs = nexusfs.connect(data_dir=tmp_path / "kernel", _embedded=True)
    assert isinstance(fs, NexusFS)
    fs.mkdir("/docs/team", parents=True)
    fs.write("/docs/plan.md", b"plan")
    fs.write("/docs/team/notes.md", b"notes")
    fs.write("/private/secret.txt", b"secret")
    fs.write("/public.txt", b"hello")
    store = SQLAlchemyRecordStore(default_record_store_url(tmp_path / "records"))
    upgrade_schema(store)
    service = RebacService(TupleStore(store.session_factory), kernel=fs)
    service.start()
    try:
        yield Env(fs, service)
    finally:
        service.stop()
        store.close()
        fs.close()


def raises(exc: type[BaseException], fn: Callable[[], Any]) -> BaseException:
    with pytest.raises(exc) as info:
        fn()
    return info.value


# ------------------------------------------------------------ every syscall is gated

#: Every ``fs.*`` handler of a session, called by a subject with no grant on paths that
#: exist but are invisible to it -> what it must get. Ungated by design (kernel facts
#: or the subject's own handles/watches) are marked so.
NO_GRANT_CASES: dict[str, tuple[dict[str, Any], Any]] = {
    "fs.write": ({"path": "/private/secret.txt", "data": b"x"}, PermissionDenied),
    "fs.read": ({"path": "/private/secret.txt"}, NotFound),
    "fs.stat": ({"path": "/private/secret.txt"}, NotFound),
    "fs.exists": ({"path": "/private/secret.txt"}, False),
    "fs.readdir": ({"path": "/private"}, NotFound),
    "fs.mkdir": ({"path": "/private/sub", "parents": True}, PermissionDenied),
    "fs.rmdir": ({"path": "/private", "recursive": True}, NotFound),
    "fs.unlink": ({"path": "/private/secret.txt"}, NotFound),
    "fs.rename": ({"src": "/private/secret.txt", "dst": "/stolen.txt"}, NotFound),
    "fs.copy": ({"src": "/private/secret.txt", "dst": "/stolen.txt"}, NotFound),
    "fs.open": ({"path": "/private/secret.txt", "mode": "rb"}, NotFound),
    "fs.mount": ({"path": "/m", "uri": "memory://"}, PermissionDenied),
    "fs.unmount": ({"path": "/"}, PermissionDenied),
    "fs.zone_create": ({"name": "z"}, PermissionDenied),
    "fs.gc": ({}, PermissionDenied),
    "fs.flush": ({}, PermissionDenied),
    "fs.watch": ({"path": "/"}, PermissionDenied),
    # Handles and watches are per session: another session's ids are unknown here.
    "fs.fread": ({"handle": 1}, BadHandle),
    "fs.fwrite": ({"handle": 1, "data": b"x"}, BadHandle),
    "fs.fseek": ({"handle": 1, "offset": 0}, BadHandle),
    "fs.fclose": ({"handle": 1}, BadHandle),
    "fs.fdiscard": ({"handle": 1}, BadHandle),
    "fs.unwatch": ({"watch": 1}, False),
    # Kernel facts every subject may read (the same as /__sys__ offers).
    "fs.mounts": ({}, list),
    "fs.zones": ({}, list),
    "fs.revision": ({}, int),
}


def test_every_fs_handler_is_gated(env: Env) -> None:
    bob = env.session("user:bob")
    handlers = sorted(n for n in bob.table if n.startswith("fs."))
    assert handlers == sorted(NO_GRANT_CASES), "a new fs.* handler needs a gate rule here"
    for name in handlers:
        kwargs, expected = NO_GRANT_CASES[name]
        if isinstance(expected, type) and issubclass(expected, BaseException):
            raises(expected, partial(bob.call, name, **kwargs))
        elif isinstance(expected, type):
            assert isinstance(bob.call(name, **kwargs), expected), name
        else:
            assert bob.call(name, **kwargs) == expected, name
    assert env.fs.read("/private/secret.txt") == b"secret"  # nothing changed
    assert not env.fs.exists("/stolen.txt") and not env.fs.exists("/private/sub")
    assert bob.call("fs.readdir", path="/")["entries"] == []  # the root, filtered


def test_the_same_calls_are_allowed_for_an_admin(env: Env) -> None:
    admin = env.session(ADMIN)
    assert admin.call("fs.read", path="/private/secret.txt")["data"] == b"secret"
    assert admin.call("fs.exists", path="/private/secret.txt") is True
    listing = admin.call("fs.readdir", path="/private")["entries"]
    assert len(listing) == 1
    admin.call("fs.copy", src="/private/secret.txt", dst="/private/copy.txt")
    admin.call("fs.mkdir", path="/private/sub/deep", parents=True)
    assert isinstance(admin.call("fs.watch", path="/private"), int)
    assert env.host.calls == []  # admins never ask the service


# ------------------------------------------------- invisible = missing, and messages


def test_writes_below_an_invisible_folder_answer_as_below_a_missing_one(env: Env) -> None:
    bob = env.session("user:bob")
    for op, kwargs in (
        ("fs.write", {"data": b"x"}),
        ("fs.mkdir", {"parents": True}),
        ("fs.open", {"mode": "wb"}),
    ):
        hidden = raises(PermissionDenied, partial(bob.call, op, path="/private/a/x", **kwargs))
        missing = raises(PermissionDenied, partial(bob.call, op, path="/nowhere/a/x", **kwargs))
        assert str(hidden).replace("/private/", "/nowhere/") == str(missing)
        assert "no write permission on folder:/ " in str(hidden)
    for below in ("", "/nope"):  # the folder itself, or a missing path below it
        hidden = raises(NotFound, partial(bob.call, "fs.stat", path="/private" + below))
        missing = raises(NotFound, partial(bob.call, "fs.stat", path="/nowhere" + below))
        assert str(hidden).replace("/private", "/nowhere") == str(missing)


def test_a_denial_names_subject_permission_object_and_path(env: Env) -> None:
    env.grant("folder:/docs#viewer@user:carol")
    carol = env.session("user:carol")
    err = raises(PermissionDenied, lambda: carol.call("fs.write", path="/docs/plan.md", data=b"x"))
    assert str(err) == (
        "user:carol has no write permission on file:/docs/plan.md (needed for write): "
        "/docs/plan.md"
    )
    assert err.path == "/docs/plan.md"  # type: ignore[attr-defined]
    err = raises(PermissionDenied, lambda: carol.call("fs.write", path="/docs/new.md", data=b"x"))
    assert "user:carol has no write permission on folder:/docs (needed for write)" in str(err)
    err = raises(PermissionDenied, lambda: carol.call("fs.gc"))
    assert "user:carol may not gc" in str(err) and "admin" in str(err)
    err = raises(NotFound, lambda: carol.call("fs.read", path="/private/secret.txt"))
    assert str(err) == "no such file or directory: /private/secret.txt"  # no hint of a denial


# ------------------------------------------------------------- write-target rules


def test_create_needs_write_on_the_nearest_existing_folder(env: Env) -> None:
    """Default model: a new file (and every parent ``mkdir -p`` makes) is created in the
    nearest existing folder, so it needs ``write`` there (editor, inherited)."""
    env.grant("folder:/docs/team#editor@user:dave", "folder:/docs#viewer@user:dave")
    dave = env.session("user:dave")
    dave.call("fs.write", path="/docs/team/new/deeper/x.md", data=b"x")  # parents created
    dave.call("fs.mkdir", path="/docs/team/a/b", parents=True)
    assert env.fs.read("/docs/team/new/deeper/x.md") == b"x"
    raises(PermissionDenied, lambda: dave.call("fs.write", path="/docs/x.md", data=b"x"))
    raises(PermissionDenied, lambda: dave.call("fs.mkdir", path="/docs/sub/deep", parents=True))
    # mkdir of an existing visible folder needs no write: the syscall answers.
    raises(AlreadyExists, lambda: dave.call("fs.mkdir", path="/docs"))
    assert dave.call("fs.mkdir", path="/docs", exist_ok=True)[0] == "/docs"
    # rename: write on the source, write on the destination's folder.
    dave.call("fs.rename", src="/docs/team/notes.md", dst="/docs/team/a/notes.md")
    raises(PermissionDenied, lambda: dave.call("fs.rename", src="/docs/plan.md",
                                                 dst="/docs/team/plan.md"))  # fmt: skip
    raises(PermissionDenied, lambda: dave.call("fs.rename", src="/docs/team/a/notes.md",
                                                 dst="/docs/notes.md"))  # fmt: skip
    # copy: read on the source, write on the destination's folder (or itself).
    dave.call("fs.copy", src="/docs/plan.md", dst="/docs/team/plan-copy.md")
    raises(PermissionDenied, lambda: dave.call("fs.copy", src="/docs/team/a/notes.md",
                                                 dst="/docs/plan.md"))  # fmt: skip
    raises(NotFound, lambda: dave.call("fs.copy", src="/private/secret.txt",
                                         dst="/docs/team/s.txt"))  # fmt: skip
    assert env.fs.read("/docs/plan.md") == b"plan"


CUSTOM_MODEL = """
model
  schema 1.1
type user
type folder
  relations
    define parent: [folder]
    define blocked: [user]
    define editor: [user] or editor from parent
    define viewer: ([user] or editor or viewer from parent) but not blocked
    define read: viewer
    define write: editor but not blocked
    define list: viewer
type file
  relations
    define parent: [folder]
    define blocked: [user]
    define editor: [user] or editor from parent
    define viewer: ([user] or editor or viewer from parent) but not blocked
    define read: viewer
    define write: editor but not blocked
"""


def test_an_invisible_name_in_a_writable_folder_is_refused_not_written(env: Env) -> None:
    """With a model that can hide an entry from an editor of its folder, creating or
    overwriting through the hidden entry is refused, naming it (the one unavoidable
    disclosure: whoever may create in a folder learns that a name is taken)."""
    env.fs.mkdir("/a/hidden", parents=True)
    env.fs.write("/a/hidden.txt", b"h")
    env.session(ADMIN).call("rebac.write_model", dsl=CUSTOM_MODEL)
    env.grant("folder:/a#editor@user:alice", "folder:/a/hidden#blocked@user:alice",
              "file:/a/hidden.txt#blocked@user:alice")  # fmt: skip
    alice = env.session("user:alice")
    raises(NotFound, lambda: alice.call("fs.stat", path="/a/hidden"))
    assert [e[0] for e in alice.call("fs.readdir", path="/a")["entries"]] == []
    err = raises(PermissionDenied, lambda: alice.call("fs.write", path="/a/hidden/x", data=b"x"))
    assert "no read permission on folder:/a/hidden" in str(err)
    err = raises(PermissionDenied, lambda: alice.call("fs.write", path="/a/hidden.txt", data=b"x"))
    assert "no read permission on file:/a/hidden.txt" in str(err)
    assert env.fs.read("/a/hidden.txt") == b"h" and not env.fs.exists("/a/hidden/x")
    alice.call("fs.write", path="/a/mine.txt", data=b"m")


# ------------------------------------------------------------ bypasses and subjects


def test_sys_is_readable_by_every_subject_and_writable_by_none(env: Env) -> None:
    bob = env.session("user:bob")
    assert bob.call("fs.exists", path="/__sys__") is True
    assert bob.call("fs.readdir", path="/__sys__")["entries"]
    bob.call("fs.stat", path="/__sys__")
    for call in (
        lambda: bob.call("fs.write", path="/__sys__/x", data=b"x"),
        lambda: bob.call("fs.mkdir", path="/__sys__/d"),
        lambda: bob.call("fs.unlink", path="/__sys__/x"),
        lambda: bob.call("fs.open", path="/__sys__/x", mode="wb"),
    ):
        assert "read-only kernel facts" in str(raises(PermissionDenied, call))
    env.grant("file:/public.txt#editor@user:bob")
    err = raises(PermissionDenied, lambda: bob.call("fs.rename", src="/public.txt",
                                                      dst="/__sys__/p"))  # fmt: skip
    assert "read-only kernel facts" in str(err)


def test_admin_subjects(env: Env) -> None:
    gate = env.gate
    for subject in (None, KERNEL_USER, ADMIN, "service:rebac", "service:backup"):
        assert gate.is_admin(subject), subject
    for subject in ("user:bob", "user:*", "group:admins", "user:root-admin2"):
        assert not gate.is_admin(subject), subject
    # The kernel owner (a client that named no subject) sees everything.
    assert env.session(None).call("fs.read", path="/private/secret.txt")["data"] == b"secret"


def test_subjects_are_validated(env: Env) -> None:
    for good in ("user:alice", "service:backup", "user:*", "agent:a-1/x"):
        assert check_subject(good) == good
    assert check_subject(None) is None
    for bad in ("alice", "group:eng#member", "user:a b", "User:x", ":x", "user:", 5, ""):
        with pytest.raises(InvalidSubject, match="is not a subject"):
            check_subject(bad)
    bob = env.session("user:bob")
    raises(InvalidSubject, lambda: bob.call("kernel.hello", subject="group:eng#member"))
    assert bob.session.subject == "user:bob"  # unchanged after a refused hello
    bob.call("kernel.hello", subject="user:eve")
    assert bob.session.subject == "user:eve"


# ---------------------------------------------------------------- service calls


def test_service_calls_follow_the_subjects_policy(env: Env) -> None:
    bob = env.session("user:bob")
    for name, kwargs in (
        ("rebac.write", {"writes": ["folder:/#owner@user:bob"]}),
        ("rebac.write_model", {"dsl": CUSTOM_MODEL}),
        ("rebac.expand", {"relation": "read", "object": "folder:/docs"}),
        ("rebac.list_users", {"object": "folder:/docs", "relation": "read",
                              "user_types": ["user"]}),
        ("rebac.read", {}),
        ("rebac.read_changes", {}),
        ("rebac.check", {"user": "user:alice", "relation": "read", "object": "folder:/docs"}),
        ("rebac.list_objects", {"user": "user:alice", "relation": "read", "type": "file"}),
        ("rebac.batch_check", {"checks": [["user:bob", "read", "folder:/docs"],
                                          ["user:alice", "read", "folder:/docs"]]}),
        ("rebac.check_paths", {"checks": [["user:alice", "read", "/docs"]]}),
        ("hooks.add", {"op": "write"}),
        ("kernel.shutdown", {}),
        ("kernel.emit", {"name": "fake", "data": {"path": "/"}}),
    ):  # fmt: skip
        err = raises(PermissionDenied, partial(bob.call, name, **kwargs))
        assert "user:bob" in str(err), err
    assert env.shutdowns == 0
    assert env.host.calls == []  # none of them reached the service
    ask = {"relation": "read", "object": "folder:/docs"}
    assert bob.call("rebac.check", user="user:bob", **ask) is False
    assert bob.call("rebac.batch_check", checks=[["user:bob", "read", "folder:/docs"]]) == [False]
    assert bob.call("rebac.check_paths", checks=[["user:bob", "read", "/docs"]]) == [False]
    assert bob.call("rebac.list_objects", user="user:bob", relation="read", type="file") == []
    assert isinstance(bob.call("rebac.revision")["revision"], int)
    assert env.session(ADMIN).call("rebac.check", user="user:bob", **ask) is False


def test_admin_tables_are_for_admins(env: Env) -> None:
    restarted: list[str] = []

    async def restart(name: str) -> None:
        restarted.append(name)

    bob, admin = env.session("user:bob"), env.session(ADMIN)
    for h in (bob, admin):  # what the daemon adds to every client session
        h.table.update({"services.restart": restart, "services.list": lambda: ["rebac"]})
    assert bob.call("services.list") == ["rebac"]
    raises(PermissionDenied, lambda: bob.call("services.restart", name="rebac"))
    assert restarted == []
    env.grant("folder:/docs#viewer@user:bob")
    bob.call("fs.stat", path="/docs/plan.md")
    assert env.gate.stats()["cached"]
    admin.call("services.restart", name="rebac")
    assert restarted == ["rebac"]
    assert env.gate.stats()["cached"] == 0  # no decision outlives the worker


# -------------------------------------------------------- revokes, handles, cache


def test_a_revoke_through_a_session_is_enforced_on_the_next_call(env: Env) -> None:
    env.grant("folder:/docs#viewer@user:gina")
    gina = env.session("user:gina")
    for _ in range(3):
        gina.call("fs.stat", path="/docs/plan.md")
    env.grant(deletes=("folder:/docs#viewer@user:gina",))
    raises(NotFound, lambda: gina.call("fs.stat", path="/docs/plan.md"))


def test_open_handles_are_checked_at_each_call(env: Env) -> None:
    """A revoke stops an open reader at its next fread and an open writer at its next
    fwrite; the writer's fclose refuses to commit (and discards it)."""
    env.grant("folder:/docs#editor@user:hal")
    hal = env.session("user:hal")
    reader = hal.call("fs.open", path="/docs/plan.md", mode="rb")
    writer = hal.call("fs.open", path="/docs/team/new.bin", mode="wb")
    assert hal.call("fs.fread", handle=reader, size=2) == b"pl"
    hal.call("fs.fwrite", handle=writer, data=b"12")
    env.grant(deletes=("folder:/docs#editor@user:hal",))
    err = raises(PermissionDenied, lambda: hal.call("fs.fread", handle=reader, size=2))
    assert "user:hal has no read permission on file:/docs/plan.md (needed for fread)" in str(err)
    raises(PermissionDenied, lambda: hal.call("fs.fwrite", handle=writer, data=b"34"))
    hal.call("fs.fseek", handle=reader, offset=0)  # moves no data
    raises(PermissionDenied, lambda: hal.call("fs.fclose", handle=writer))
    assert not env.fs.exists("/docs/team/new.bin")  # never committed
    raises(BadHandle, lambda: hal.call("fs.fclose", handle=writer))  # discarded
    assert hal.call("fs.fclose", handle=reader) is None  # a reader is released
    # Granted again: a new writer commits.
    env.grant("folder:/docs#editor@user:hal")
    w2 = hal.call("fs.open", path="/docs/team/new.bin", mode="wb")
    hal.call("fs.fwrite", handle=w2, data=b"ok")
    hal.call("fs.fclose", handle=w2)
    assert env.fs.read("/docs/team/new.bin") == b"ok"


def test_a_pushed_revision_clears_the_cache_and_a_stale_one_does_not(env: Env) -> None:
    env.grant("folder:/docs#viewer@user:ivy")
    ivy = env.session("user:ivy")
    revision: int = ivy.call("rebac.revision")["revision"]
    gate = env.gate
    assert gate.revision == revision  # learnt right after the write through the session
    ivy.call("fs.stat", path="/docs/plan.md")  # cached at that revision
    gate.on_revision(revision)  # the write's own event arriving late: nothing to forget
    gate.on_revision(revision - 1)  # older: ignored
    assert gate.stats()["cached"] and gate.stats()["pushes"] == 0
    # Another writer revokes behind this gate's back (straight into the service)...
    env.service.write(deletes=["folder:/docs#viewer@user:ivy"])
    ivy.call("fs.stat", path="/docs/plan.md")  # ...the cached grant still answers
    # ...until the rebac worker's session reports the new revision.
    worker = env.session("service:rebac")
    worker.call("kernel.emit", name=REVISION_EVENT, data={"revision": revision + 1})
    assert gate.stats()["pushes"] == 1
    raises(NotFound, lambda: ivy.call("fs.stat", path="/docs/plan.md"))
    # The same event from anyone else is an ordinary event (no effect on the gate).
    before = gate.stats()["invalidations"]
    env.session("service:hooks").call("kernel.emit", name=REVISION_EVENT,
                                      data={"revision": revision + 5})  # fmt: skip
    assert gate.stats()["invalidations"] == before
    gate.on_revision("garbage")  # malformed: forget everything
    assert gate.stats()["invalidations"] == before + 1


def test_an_answer_in_flight_across_an_invalidation_is_not_cached(env: Env) -> None:
    env.grant("folder:/docs#viewer@user:joe")
    joe = env.session("user:joe")
    env.host.during = env.gate.invalidate  # a revoke lands while the check is answered
    joe.call("fs.stat", path="/docs/plan.md")
    env.host.during = None
    assert env.gate.stats()["cached"] == 0


def test_the_end_of_the_rebac_workers_connection_clears_the_cache(env: Env) -> None:
    env.grant("folder:/docs#viewer@user:kim")
    kim = env.session("user:kim")
    kim.call("fs.stat", path="/docs/plan.md")
    assert env.gate.stats()["cached"]
    env.session("service:hooks").session.close()
    assert env.gate.stats()["cached"]
    env.session("service:rebac").session.close()  # the worker's connection ended
    assert env.gate.stats()["cached"] == 0


# ----------------------------------------------------------------- fail closed


def test_the_service_down_fails_closed(env: Env) -> None:
    env.grant("folder:/docs#viewer@user:lee")
    lee = env.session("user:lee")
    lee.call("fs.stat", path="/docs/plan.md")
    env.service.stop()  # the real service: every method now raises ServiceUnavailable
    env.session("service:rebac").session.close()  # ...and its connection ends
    for name, kwargs in (
        ("fs.stat", {"path": "/docs/plan.md"}),
        ("fs.read", {"path": "/docs/plan.md"}),
        ("fs.exists", {"path": "/docs/plan.md"}),
        ("fs.readdir", {"path": "/docs"}),
        ("fs.write", {"path": "/docs/x", "data": b"x"}),
        ("fs.open", {"path": "/docs/plan.md", "mode": "rb"}),
    ):
        err = raises(ServiceUnavailable, partial(lee.call, name, **kwargs))
        assert "user:lee" in str(err) or name == "fs.readdir", err
    # The root's listing needs no check of its own, but its entries do.
    raises(ServiceUnavailable, lambda: lee.call("fs.readdir", path="/"))
    assert env.session(ADMIN).call("fs.stat", path="/docs/plan.md")  # admins are not checked


def test_a_failed_revision_poll_fails_closed_even_for_cached_decisions(env: Env) -> None:
    env.grant("folder:/docs#viewer@user:mo")
    mo = env.session("user:mo")
    mo.call("fs.stat", path="/docs/plan.md")
    env.host.fail = ServiceUnavailable("service rebac is degraded")
    env.gate._polled_at = 0.0  # the poll is due (instead of sleeping a second)
    raises(ServiceUnavailable, lambda: mo.call("fs.stat", path="/docs/plan.md"))
    raises(ServiceUnavailable, lambda: mo.call("fs.stat", path="/docs/plan.md"))  # still
    assert env.gate.stats()["cached"] == 0
    env.host.fail = None
    mo.call("fs.stat", path="/docs/plan.md")  # the service answers again


def test_a_malformed_answer_fails_closed(env: Env) -> None:
    class Garbled(InProcessHost):
        async def call(self, service: str, method: str, args: dict[str, Any], *,
                       deadline: float | None) -> Any:  # fmt: skip
            result = await super().call(service, method, args, deadline=deadline)
            return result[:-1] if method == "batch_check" else result

    env.grant("folder:/docs#viewer@user:ned")
    env.gate.router = Garbled(env.service)
    raises(ServiceUnavailable, lambda: env.session("user:ned").call("fs.stat", path="/docs"))


def test_filtered_pages_are_filled_and_their_cursors_name_only_visible_entries(
    env: Env,
) -> None:
    for name in "abcdefgh":
        env.fs.write(f"/pager/{name}", name.encode())
    env.session(ADMIN).call("rebac.write_model", dsl=CUSTOM_MODEL)  # 'blocked' hides
    env.grant("folder:/pager#viewer@user:pat",
              *(f"file:/pager/{n}#blocked@user:pat" for n in "abdef"))  # fmt: skip
    pat = env.session("user:pat")
    pages, cursor = [], None
    while True:
        page = pat.call("fs.readdir", path="/pager", limit=2, cursor=cursor)
        pages.append([e[0] for e in page["entries"]])
        cursor = page["cursor"]
        assert cursor in (None, "/pager/c", "/pager/g", "/pager/h"), cursor
        if cursor is None:
            break
    assert pages[0] == ["/pager/c", "/pager/g"]  # filled from later pages, not [] / [c]
    assert [p for page in pages for p in page] == ["/pager/c", "/pager/g", "/pager/h"]
    admin_page = env.session(ADMIN).call("fs.readdir", path="/pager", limit=2)
    assert [e[0] for e in admin_page["entries"]] == ["/pager/a", "/pager/b"]
