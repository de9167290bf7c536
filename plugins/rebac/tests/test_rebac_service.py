"""The rebac service's methods on a real record store (SQLite and PostgreSQL), driven
through a real pluggy manager as a worker drives them: storage, model versions, atomic
writes, typed errors, paging, and evaluation over a real embedded kernel's namespace."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import pluggy
import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from rebac_service_kit import DOCS_MODEL, Worker, start_service, wait_until

from nexusfs.api import FileSystem
from nexusfs.drivers.cachestore import NullCacheStore, open_cache_store
from nexusfs.drivers.recordstore import SQLAlchemyRecordStore
from nexusfs.errors import NexusError, ServiceUnavailable
from nexusfs.hookspecs import PROJECT, ServiceContext, ServiceInfo, ServiceSpec
from nexusfs.testing.recordstore import assert_migrations_match
from nexusfs_rebac import default_model
from nexusfs_rebac.errors import (
    DuplicateTuple,
    FutureToken,
    InvalidRequest,
    InvalidToken,
    InvalidTuple,
    MissingTuple,
    ModelError,
    ModelNotFound,
    ResolutionTooComplex,
)
from nexusfs_rebac.plugin import READ_ONLY_METHODS, RebacPlugin, plugin
from nexusfs_rebac.service import REVISION_EVENT as SERVICE_EVENT
from nexusfs_rebac.service import RebacService
from nexusfs_rebac.store import TupleStore
from nexusfs_rebac.tables import MIGRATIONS, VERSION_TABLE, Base, upgrade_schema


def docs(svc: Worker) -> str:
    """Make the documents model current; return its id."""
    model_id: str = svc.call("write_model", dsl=DOCS_MODEL)
    return model_id


def stored(svc: Worker, **filters: str) -> set[str]:
    page = svc.call("read", limit=1000, **filters)
    return {f"{t['object']}#{t['relation']}@{t['user']}" for t in page["tuples"]}


# ------------------------------------------------------------------- plugin shape


def test_service_info_declares_methods_and_read_only_ones(service: Worker) -> None:
    info = plugin.nexus_service_info()
    assert isinstance(info, ServiceInfo) and info.name == "rebac"
    assert set(info.needs) == {"record_store", "cache_store"}
    assert info.pre_hooks == () and info.post_hooks == ()
    assert set(info.idempotent) == set(READ_ONLY_METHODS) <= set(service.methods)
    assert {"write", "write_model"}.isdisjoint(info.idempotent)
    assert set(service.methods) == set(READ_ONLY_METHODS) | {"write", "write_model"}
    assert isinstance(plugin, RebacPlugin)


def test_entry_point_names_the_plugin() -> None:
    from nexusfs.services.registry import find_entry_point, installed_services

    if "rebac" not in installed_services():
        pytest.skip("nexusfs-rebac is not installed (pip install -e plugins/rebac)")
    ep = find_entry_point("rebac")
    assert ep is not None and ep.value == "nexusfs_rebac.plugin:plugin"
    assert ep.load() is plugin


def test_start_without_record_store_fails(tmp_path: Path) -> None:
    with pytest.raises(ServiceUnavailable, match="record store"):
        start_service(None, tmp_path)


def test_bad_config_fails_the_start(store: SQLAlchemyRecordStore, tmp_path: Path) -> None:
    with pytest.raises(InvalidRequest, match="poll_ms"):
        start_service(store, tmp_path, config={"poll_ms": -1})
    with pytest.raises(InvalidRequest, match="max_depth"):
        start_service(store, tmp_path, config={"max_depth": "deep"})


def test_migrations_match_the_orm_models(store: SQLAlchemyRecordStore) -> None:
    assert_migrations_match(store, MIGRATIONS, Base.metadata, version_table=VERSION_TABLE)


def test_fresh_install_is_built_from_the_models(store: SQLAlchemyRecordStore) -> None:
    assert upgrade_schema(store) == ("0001",)
    assert upgrade_schema(store) == ()
    with store.engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE})
        assert compare_metadata(context, Base.metadata) == []


def test_calls_after_stop_are_service_unavailable(service: Worker) -> None:
    methods = service.methods
    service.stop()
    with pytest.raises(ServiceUnavailable):
        methods["check"](user="user:a", relation="read", object="file:/x")
    with pytest.raises(ServiceUnavailable):
        methods["write"](writes=["folder:/a#viewer@user:a"])


# ------------------------------------------------------------------------ models


def test_default_file_model_is_seeded_once(
    service: Worker, store: SQLAlchemyRecordStore, tmp_path: Path
) -> None:
    current = service.call("read_model")
    assert current["model_id"] == default_model().model_id
    assert current["revision"] == 1 and "type folder" in current["dsl"]
    assert current["json"]["schema_version"] == "1.1"
    second = start_service(store, tmp_path / "second")  # another worker starts
    try:
        assert second.call("revision")["revision"] == 1  # nothing written again
    finally:
        second.stop()


def test_model_versions(service: Worker) -> None:
    default_id = service.call("read_model")["model_id"]
    docs_id = docs(service)
    assert docs_id != default_id
    current = service.call("read_model")
    assert current["model_id"] == docs_id and current["dsl"] == DOCS_MODEL
    assert service.call("read_model", model_id=default_id)["revision"] == 1
    rev = service.call("revision")
    assert rev["model_id"] == docs_id
    assert docs(service) == docs_id  # the current model again: no new revision
    assert service.call("revision")["revision"] == rev["revision"]
    with pytest.raises(ModelNotFound):
        service.call("read_model", model_id="f" * 32)
    with pytest.raises(InvalidRequest):
        service.call("read_model", model_id=7)


def test_bad_models_are_model_errors_with_positions(service: Worker) -> None:
    with pytest.raises(ModelError) as err:
        service.call("write_model", dsl="model\n  schema 1.1\ntype doc\n  relations\n"
                                        "    define viewer: [usr]\n")  # fmt: skip
    assert err.value.line == 5 and err.value.column is not None
    with pytest.raises(InvalidRequest, match="string"):
        service.call("write_model", dsl=None)
    # The path hierarchy computes folder#parent: it must stay a plain direct relation.
    bad_parent = DOCS_MODEL + "\ntype folder\n  relations\n    define parent: [folder, user:*]\n"
    with pytest.raises(ModelError, match="computed by the kernel"):
        service.call("write_model", dsl=bad_parent)
    assert service.call("read_model")["model_id"] == default_model().model_id


def test_a_model_that_invalidates_tuples_ignores_them_without_deleting(service: Worker) -> None:
    docs_id = docs(service)
    service.call("write", writes=["document:1#viewer@user:*", "document:1#blocked@user:bob",
                                  "document:1#editor@user:carol"])  # fmt: skip
    assert service.call("check", user="user:anne", relation="can_read", object="document:1")
    assert not service.call("check", user="user:bob", relation="can_read", object="document:1")
    # v2: no wildcard viewers, no 'blocked' relation at all.
    v2 = DOCS_MODEL.replace("[user, user:*, group#member] or editor", "[user] or editor")
    v2 = v2.replace("    define blocked: [user]\n", "").replace(" but not blocked", "")
    v2_id = service.call("write_model", dsl=v2)
    assert v2_id != docs_id
    assert not service.call("check", user="user:anne", relation="can_read", object="document:1")
    assert service.call("check", user="user:bob", relation="viewer", object="document:1") is False
    assert service.call("check", user="user:carol", relation="can_read", object="document:1")
    carol = {"users": ["user:carol"], "excluded": []}
    assert service.call("list_users", object="document:1", relation="viewer",
                        user_types=["user"]) == carol  # fmt: skip
    # Still stored, readable, and deletable; no error anywhere.
    assert "document:1#viewer@user:*" in stored(service)
    with pytest.raises(InvalidTuple):  # but not writable under v2
        service.call("write", writes=["document:2#viewer@user:*"])
    # The old model again: the tuples count again.
    assert service.call("write_model", dsl=DOCS_MODEL) == docs_id
    assert service.call("check", user="user:anne", relation="can_read", object="document:1")
    service.call("write", deletes=["document:1#blocked@user:bob"])
    assert service.call("check", user="user:bob", relation="can_read", object="document:1")


# ------------------------------------------------------------------------ writes


def test_write_accepts_strings_mappings_and_lists(service: Worker) -> None:
    docs(service)
    token = service.call("write", writes=[
        "document:1#viewer@user:anne",
        {"object": "document:1", "relation": "editor", "user": "group:eng#member"},
        ["group:eng", "member", "user:bob"],
    ])  # fmt: skip
    assert isinstance(token, str)
    assert stored(service) == {"document:1#viewer@user:anne",
                               "document:1#editor@group:eng#member",
                               "group:eng#member@user:bob"}  # fmt: skip
    assert service.call("check", user="user:bob", relation="viewer", object="document:1",
                        consistency=token)  # fmt: skip
    assert service.call("revision")["token"] == token


def test_write_is_atomic(service: Worker) -> None:
    docs(service)
    before = service.call("revision")["revision"]
    with pytest.raises(InvalidTuple, match="allows"):
        service.call("write", writes=["document:1#viewer@user:anne",
                                      "document:1#owner@group:eng#member"])  # fmt: skip
    service.call("write", writes=["document:1#viewer@user:anne"])
    with pytest.raises(DuplicateTuple, match="document:1#viewer@user:anne"):
        service.call("write", writes=["document:2#viewer@user:anne",
                                      "document:1#viewer@user:anne"])  # fmt: skip
    with pytest.raises(MissingTuple, match="document:9"):
        service.call("write", writes=["document:3#viewer@user:anne"],
                     deletes=["document:9#viewer@user:anne"])  # fmt: skip
    assert stored(service) == {"document:1#viewer@user:anne"}
    assert service.call("revision")["revision"] == before + 1
    assert not service.call("check", user="user:anne", relation="viewer", object="document:2")


def test_ignore_duplicates_and_missing(service: Worker) -> None:
    docs(service)
    t1 = service.call("write", writes=["document:1#viewer@user:anne"])
    same = service.call("write", writes=["document:1#viewer@user:anne"], ignore_duplicates=True)
    assert same == t1  # nothing changed: no new revision
    t2 = service.call(
        "write",
        writes=["document:1#viewer@user:anne", "document:2#viewer@user:anne"],
        deletes=["document:7#viewer@user:zed"],
        ignore_duplicates=True, ignore_missing=True,
    )  # fmt: skip
    assert t2 != t1
    assert stored(service) == {"document:1#viewer@user:anne", "document:2#viewer@user:anne"}
    assert service.call("write", deletes=["document:5#owner@user:x"], ignore_missing=True) == t2
    # Listed twice: an error unless the matching ignore flag is set.
    with pytest.raises(InvalidRequest, match="twice"):
        service.call("write", writes=["document:3#viewer@user:a"] * 2)
    service.call("write", writes=["document:3#viewer@user:a"] * 2, ignore_duplicates=True)
    assert "document:3#viewer@user:a" in stored(service)


def test_bad_write_requests_are_typed_errors(service: Worker) -> None:
    docs(service)
    cases: list[tuple[dict[str, object], type[NexusError], str]] = [
        ({}, InvalidRequest, "at least one"),
        ({"writes": "document:1#viewer@user:a"}, InvalidRequest, "list of tuples"),
        ({"writes": ["document:1#viewer"]}, InvalidTuple, "form"),
        ({"writes": [{"object": "document:1", "relation": "viewer"}]}, InvalidTuple, "keys"),
        ({"writes": [42]}, InvalidTuple, "not 42"),
        ({"writes": ["document:1#nope@user:a"]}, InvalidTuple, "no relation 'nope'"),
        ({"writes": ["folder:/a#viewer@user:a"]}, InvalidTuple, "type 'folder'"),
        ({"writes": ["document:1#can_read@user:a"]}, InvalidTuple, "computed"),
        ({"writes": ["document:1#viewer@user:a"], "deletes": ["document:1#viewer@user:a"]},
         InvalidRequest, "both written and deleted"),
        ({"writes": ["document:1#viewer@user:a"], "ignore_duplicates": "yes"},
         InvalidRequest, "true or false"),
        ({"writes": [f"document:{i}#viewer@user:a" for i in range(10_001)]},
         InvalidRequest, "at most"),
    ]  # fmt: skip
    for kwargs, error, match in cases:
        with pytest.raises(error, match=match):
            service.call("write", **kwargs)
    assert stored(service) == set()


def test_parent_tuples_are_computed_never_written(service: Worker) -> None:
    with pytest.raises(InvalidTuple, match="computed by the kernel"):
        service.call("write", writes=["file:/a/b.txt#parent@folder:/a"])
    with pytest.raises(InvalidTuple, match="computed by the kernel"):
        service.call("check", user="user:a", relation="read", object="file:/a/b.txt",
                     contextual_tuples=["file:/a/b.txt#parent@folder:/z"])  # fmt: skip


# -------------------------------------------------------------------- evaluation


def test_check_batch_check_and_the_decision_cache(service: Worker) -> None:
    docs(service)
    t1 = service.call("write", writes=["document:1#viewer@group:eng#member",
                                       "group:eng#member@user:anne"])  # fmt: skip
    q = {"user": "user:anne", "relation": "can_read", "object": "document:1"}
    assert service.call("check", **q) is True
    assert service.call("check", **q) is True  # cached
    assert service.service.mirror.snapshot.decisions[("user:anne", "can_read", "document:1")]
    t2 = service.call("write", writes=["document:1#blocked@user:anne"])
    assert t2 != t1
    assert service.call("check", **q) is False  # a new revision: a new cache
    assert service.call("batch_check", checks=[
        ["user:anne", "viewer", "document:1"], q, ("user:bob", "viewer", "document:1"),
        ["user:anne", "can_read", "document:1"],
    ]) == [True, False, False, False]  # fmt: skip
    assert service.call("check", contextual_tuples=["document:1#owner@user:bob"],
                        user="user:bob", relation="editor", object="document:1")  # fmt: skip
    assert service.call("batch_check", checks=[["user:bob", "editor", "document:1"]],
                        contextual_tuples=["document:1#owner@user:bob"]) == [True]  # fmt: skip
    assert not service.call("check", user="user:bob", relation="editor", object="document:1")


def test_bad_evaluation_requests_are_typed_errors(service: Worker) -> None:
    docs(service)
    with pytest.raises(InvalidRequest, match="no relation 'nope'"):
        service.call("check", user="user:a", relation="nope", object="document:1")
    with pytest.raises(InvalidRequest, match="type 'dog'"):
        service.call("check", user="user:a", relation="viewer", object="dog:1")
    with pytest.raises(InvalidRequest):
        service.call("check", user=["user:a"], relation="viewer", object="document:1")
    with pytest.raises(InvalidRequest):
        service.call("check", user="anne", relation="viewer", object="document:1")
    with pytest.raises(InvalidRequest, match="lacks"):
        service.call("batch_check", checks=[{"user": "user:a"}])
    with pytest.raises(InvalidRequest, match="list of"):
        service.call("batch_check", checks="user:a viewer document:1")
    with pytest.raises(InvalidRequest, match="user_types"):
        service.call("list_users", object="document:1", relation="viewer", user_types="user")
    with pytest.raises(InvalidRequest, match="type 'dog'"):
        service.call("list_objects", user="user:a", relation="viewer", type="dog")
    with pytest.raises(InvalidRequest, match="relation"):
        service.call("expand", relation="nope", object="document:1")
    with pytest.raises(InvalidTuple):
        service.call("check", user="user:a", relation="viewer", object="document:1",
                     contextual_tuples=["not a tuple"])  # fmt: skip


def test_bad_tokens_are_typed_errors(service: Worker, store: SQLAlchemyRecordStore,
                                     tmp_path: Path) -> None:  # fmt: skip
    fast = start_service(store, tmp_path / "fast", config={"token_wait_ms": 100})
    try:
        token = fast.call("revision")["token"]
        tag, _, rev = token.partition(".")
        q = {"user": "user:a", "relation": "read", "object": "file:/x"}
        for bad in ("", "x", f"{tag}.", f"{tag}.01", f"{tag}.-1", f"{tag}.1.2.3", 5):
            with pytest.raises(InvalidToken):
                fast.call("check", consistency=bad, **q)
        with pytest.raises(InvalidToken, match="another store"):
            fast.call("check", consistency=f"0{tag}.{rev}", **q)
        with pytest.raises(FutureToken, match="revision 1000"):
            fast.call("check", consistency=f"{tag}.1000", **q)
        with pytest.raises(FutureToken):
            fast.call("read_changes", since_token=f"{tag}.1000")
        assert fast.call("check", consistency=token, **q) is False
    finally:
        fast.stop()


def test_check_paths_the_gate_question(service: Worker, kernel: FileSystem) -> None:
    service.call("write", writes=["folder:/projects#viewer@user:anne",
                                  "file:/notes/a%231.txt#editor@user:bob"])  # fmt: skip
    assert service.call("check_paths", checks=[
        ["user:anne", "read", "/projects/x/y.txt", "file"],
        ["user:anne", "list", "/projects/x", "folder"],
        ["user:anne", "read", "/projects/x"],          # file or folder: either
        ["user:anne", "write", "/projects/x/y.txt"],
        ["user:bob", "write", "/notes/a#1.txt"],       # '#' escaped in the object id
        ["user:bob", "read", "/notes/a#1.txt", "folder"],
    ]) == [True, True, True, False, True, False]  # fmt: skip
    with pytest.raises(InvalidRequest, match="absolute"):
        service.call("check_paths", checks=[["user:a", "read", "rel/path"]])
    with pytest.raises(InvalidRequest, match="kind"):
        service.call("check_paths", checks=[["user:a", "read", "/p", "dir"]])
    with pytest.raises(InvalidRequest, match="items"):
        service.call("check_paths", checks=[["user:a", "read"]])
    assert service.call("check_paths", checks=[]) == []


def test_list_objects_walks_the_kernel_namespace(service: Worker, kernel: FileSystem) -> None:
    for p in ("/a/1.txt", "/a/b/2.txt", "/a/b/c/3.txt", "/z/4.txt", "/z/y/5.txt", "/q/6.txt"):
        kernel.write(p, b"x")
    service.call("write", writes=[
        "folder:/a/b#viewer@user:anne", "file:/z/4.txt#owner@user:anne",
        "folder:/z/y#viewer@group:g#member", "group:g#member@user:anne",
        "folder:/gone#viewer@user:anne",  # a folder that is not in the namespace
    ])  # fmt: skip
    ns = service.service.namespace
    before = ns.fetches
    files = service.call("list_objects", user="user:anne", relation="read", type="file")
    assert files == ["file:/a/b/2.txt", "file:/a/b/c/3.txt", "file:/z/4.txt", "file:/z/y/5.txt"]
    assert ns.fetches - before <= 3  # one recursive listing per granted folder
    assert service.call("list_objects", user="user:anne", relation="list", type="folder") == [
        "folder:/a/b", "folder:/a/b/c", "folder:/gone", "folder:/z/y"]  # fmt: skip
    assert service.call("list_objects", user="user:anne", relation="write", type="file") == [
        "file:/z/4.txt"]  # fmt: skip
    kernel.write("/a/b/new.txt", b"x")  # listings live for one request
    assert "file:/a/b/new.txt" in service.call(
        "list_objects", user="user:anne", relation="read", type="file")  # fmt: skip
    for f in files:  # the three agree
        assert service.call("check", user="user:anne", relation="read", object=f)
        assert "user:anne" in service.call(
            "list_users", object=f, relation="read", user_types=["user"])["users"]  # fmt: skip


def test_list_users_and_expand(service: Worker) -> None:
    docs(service)
    service.call("write", writes=["document:1#viewer@user:*", "document:1#blocked@user:bob",
                                  "document:1#editor@group:eng#member"])  # fmt: skip
    assert service.call(
        "list_users", object="document:1", relation="can_read", user_types=["user"]
    ) == {"users": ["user:*"], "excluded": ["user:bob"]}
    assert service.call("list_users", object="document:1", relation="editor",
                        user_types=["group#member"]) == {"users": ["group:eng#member"],
                                                         "excluded": []}  # fmt: skip
    tree = service.call("expand", relation="viewer", object="document:1")
    assert tree["name"] == "document:1#viewer" and "union" in tree
    leaf = tree["union"]["nodes"][0]
    assert leaf["leaf"]["users"] == ["user:*"]
    with_ctx = service.call("expand", relation="owner", object="document:1",
                            contextual_tuples=["document:1#owner@user:zoe"])  # fmt: skip
    assert with_ctx["leaf"]["users"] == ["user:zoe"]


def test_depth_limit_is_a_typed_error(store: SQLAlchemyRecordStore, tmp_path: Path) -> None:
    svc = start_service(store, tmp_path, config={"max_depth": 3})
    try:
        docs(svc)
        chain = [f"group:g{i}#member@group:g{i + 1}#member" for i in range(6)]
        svc.call("write", writes=[*chain, "group:g6#member@user:anne",
                                  "document:1#viewer@group:g0#member"])  # fmt: skip
        with pytest.raises(ResolutionTooComplex):
            svc.call("check", user="user:anne", relation="viewer", object="document:1")
    finally:
        svc.stop()


# ---------------------------------------------------------------- storage reads


def test_read_filters_and_pages(service: Worker) -> None:
    docs(service)
    service.call("write", writes=[f"document:{i:02d}#viewer@user:u{i % 3}" for i in range(25)]
                 + ["document:Xy#owner@user:u0", "document:xy#owner@user:u0"])  # fmt: skip
    seen: list[dict[str, str]] = []
    continuation = None
    pages = 0
    while True:
        page = service.call("read", limit=10, continuation=continuation)
        seen += page["tuples"]
        pages += 1
        continuation = page["continuation"]
        if continuation is None:
            break
    assert len(seen) == 27 and pages == 3 and len({str(t) for t in seen}) == 27
    assert len(stored(service, user="user:u1")) == 8
    assert stored(service, object="document:X") == {"document:Xy#owner@user:u0"}  # case
    assert stored(service, relation="own") == {"document:Xy#owner@user:u0",
                                               "document:xy#owner@user:u0"}  # fmt: skip
    assert service.call("read", filter={"object": "document:0", "user": "user:u0"},
                        limit=100)["tuples"] == [
        {"object": f"document:0{i}", "relation": "viewer", "user": "user:u0"}
        for i in (0, 3, 6, 9)]  # fmt: skip
    with pytest.raises(InvalidRequest, match="limit"):
        service.call("read", limit=0)
    with pytest.raises(InvalidRequest, match="filter"):
        service.call("read", filter={"type": "document"})
    with pytest.raises(InvalidToken, match="continuation"):
        service.call("read", continuation=service.call("revision")["token"])
    first = service.call("read", limit=10)["continuation"]
    with pytest.raises(InvalidToken, match="continues read"):
        service.call("read_changes", since_token=first)
    # ... but it is a consistency token like any other.
    assert service.call("check", user="user:u0", relation="viewer", object="document:00",
                        consistency=first)  # fmt: skip


def test_read_changes_pages_through_writes_and_deletes(service: Worker) -> None:
    docs(service)
    start = service.call("revision")["token"]
    t1 = service.call("write", writes=[f"document:{i}#viewer@user:a" for i in range(5)])
    t2 = service.call("write", deletes=["document:0#viewer@user:a"],
                      writes=["document:0#owner@user:a"])  # fmt: skip
    changes: list[dict[str, object]] = []
    token = start
    while True:
        page = service.call("read_changes", since_token=token, limit=2)
        if not page["changes"]:
            assert page["token"] == token  # nothing new: the same token comes back
            break
        changes += page["changes"]
        token = page["token"]
    ops = [(c["operation"], c["object"], c["relation"], c["revision"]) for c in changes]
    r1 = int(t1.rpartition(".")[2])
    assert ops == [("write", f"document:{i}", "viewer", r1) for i in range(5)] + [
        ("write", "document:0", "owner", r1 + 1),
        ("delete", "document:0", "viewer", r1 + 1),
    ]
    assert int(t2.rpartition(".")[2]) == r1 + 1
    after_t1 = service.call("read_changes", since_token=t1)["changes"]
    assert [c["operation"] for c in after_t1] == ["write", "delete"]
    everything = service.call("read_changes", limit=1000)["changes"]
    assert len(everything) == 7
    # The continuation token is a consistency token too.
    assert service.call("check", user="user:a", relation="owner", object="document:0",
                        consistency=token)  # fmt: skip
    with pytest.raises(InvalidRequest, match="limit"):
        service.call("read_changes", limit=1001)


def test_revision_and_wait_revision(service: Worker) -> None:
    import threading

    rev = service.call("revision")
    assert set(rev) == {"revision", "token", "model_id"}
    assert service.call("wait_revision", after=rev["revision"], timeout=0.2) == rev
    assert service.call("wait_revision", after=rev["revision"] - 1, timeout=5)["revision"] == (
        rev["revision"])  # fmt: skip
    timer = threading.Timer(0.3, lambda: service.call(
        "write", writes=["folder:/w#viewer@user:a"]))  # fmt: skip
    timer.start()
    got = service.call("wait_revision", after=rev["token"], timeout=20)
    timer.join()
    assert got["revision"] == rev["revision"] + 1
    with pytest.raises(InvalidRequest, match="timeout"):
        service.call("wait_revision", after=0, timeout=-1)
    with pytest.raises(InvalidRequest, match="after"):
        service.call("wait_revision", after=1.5)


@pytest.mark.parametrize("shared", [True, False], ids=["redis", "store-poll"])
def test_the_kernel_is_told_of_every_new_revision(
    shared: bool, store: SQLAlchemyRecordStore, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """``ctx.emit("rebac.revision", {"revision": n})`` once the worker answers at a new
    revision: after its own writes, and after another worker's (another kernel on the
    same database), learnt from the cache store channel (its safety-net poll set to a
    minute, so only the message can be in time) or, without a shared cache store, from
    its store poll. The kernel's permission gate listens for exactly this event."""
    from nexusfs.server.gate import REVISION_EVENT

    assert SERVICE_EVENT == REVISION_EVENT
    if shared:
        redis = request.getfixturevalue("redis")
        caches = [open_cache_store(redis.url), open_cache_store(redis.url)]
        config = {"shared_poll_ms": 60_000}
    else:
        caches = [NullCacheStore(), NullCacheStore()]
        config = {"poll_ms": 50}
    emitted: list[tuple[str, dict[str, object]]] = []
    pm = pluggy.PluginManager(PROJECT)
    pm.add_hookspecs(ServiceSpec)
    plugin_a = RebacPlugin()
    pm.register(plugin_a, name="rebac")
    ctx = ServiceContext(
        name="rebac", state_dir=tmp_path / "a", log=logging.getLogger("nexusfs.services.rebac"),
        record_store=store, cache_store=caches[0], config=config,
        emit=lambda name, data: emitted.append((name, data)),
    )  # fmt: skip
    pm.hook.nexus_service_start(ctx=ctx)
    other = start_service(store, tmp_path / "b", cache_store=caches[1], config=config)
    try:
        a = plugin_a.service
        assert a is not None
        own = a.write(writes=["folder:/x#viewer@user:a"])
        mine = a.revision()["revision"]
        wait_until(lambda: (REVISION_EVENT, {"revision": mine}) in emitted, what="own write")
        assert own
        other.call("write", writes=["folder:/x#viewer@user:b"])
        theirs = other.call("revision")["revision"]
        assert theirs == mine + 1
        wait_until(lambda: (REVISION_EVENT, {"revision": theirs}) in emitted, timeout=20,
                   what="another worker's write reported")  # fmt: skip
        assert all(name == REVISION_EVENT for name, _ in emitted)
        revisions = [int(str(d["revision"])) for _, d in emitted]
        assert revisions == sorted(set(revisions))  # each new revision once, in order
    finally:
        pm.hook.nexus_service_stop(ctx=ctx)
        other.stop()
        for cache in caches:
            cache.close()
    assert not [t for t in threading.enumerate() if t.name == "rebac-notify"]


def test_a_failing_notification_is_logged_and_the_next_is_sent(
    store: SQLAlchemyRecordStore, caplog: pytest.LogCaptureFixture
) -> None:
    upgrade_schema(store)
    told: list[int] = []

    def on_revision(revision: int) -> None:
        told.append(revision)
        if len(told) == 1:
            raise ServiceUnavailable("the kernel is going away")

    svc = RebacService(TupleStore(store.session_factory), on_revision=on_revision)
    svc.start()
    try:
        svc.write(writes=["folder:/y#viewer@user:a"])
        wait_until(lambda: len(told) == 1, what="first notification")
        svc.write(writes=["folder:/y#viewer@user:b"])
        wait_until(lambda: len(told) == 2, what="second notification")
        assert told[1] == told[0] + 1
        assert "reporting revision" in caplog.text
    finally:
        svc.stop()
