"""The hooks plugin driven in-process through pluggy, on a real SQLite record store."""

from __future__ import annotations

import logging
import multiprocessing
from pathlib import Path
from typing import Any

import pluggy
import pytest
from hooks_testkit import Service, ev, start_service

from nexusfs.drivers.recordstore import SQLAlchemyRecordStore
from nexusfs.errors import InvalidPath, ServiceUnavailable
from nexusfs.hookspecs import (
    HOOKABLE,
    PROJECT,
    ServiceContext,
    ServiceInfo,
    ServiceSpec,
    SyscallOutcome,
    Veto,
)
from nexusfs.services.protocols import EventLogProtocol, HookEngineProtocol
from nexusfs_hooks import EventLog, HookEngine, __version__, upgrade_schema
from nexusfs_hooks.plugin import HooksPlugin, plugin

# ----------------------------------------------------------------------- contract


def test_service_info() -> None:
    pm = pluggy.PluginManager(PROJECT)
    pm.add_hookspecs(ServiceSpec)
    pm.register(HooksPlugin())
    info = pm.hook.nexus_service_info()
    assert isinstance(info, ServiceInfo)
    assert info.name == "hooks"
    assert info.version == __version__
    assert info.pre_hooks == ("*",) and info.post_hooks == ("*",)
    assert info.needs == ("record_store", "cache_store")
    assert set(info.idempotent) == {"tail", "query", "last_seq", "wait_events", "list_rules"}


def test_module_plugin_object_is_a_hooks_plugin() -> None:
    assert isinstance(plugin, HooksPlugin)


def test_methods_exposed(service: Service) -> None:
    assert set(service.methods) == {
        "tail", "query", "last_seq", "wait_events", "add_rule", "list_rules", "remove_rule"
    }  # fmt: skip
    assert "append" not in service.methods


def test_protocols(service: Service) -> None:
    assert isinstance(service.plugin.events, EventLogProtocol)
    assert isinstance(service.plugin.rules, HookEngineProtocol)
    assert isinstance(service.plugin.events, EventLog)
    assert isinstance(service.plugin.rules, HookEngine)


def test_start_without_record_store_fails(tmp_path: Path) -> None:
    pm = pluggy.PluginManager(PROJECT)
    pm.add_hookspecs(ServiceSpec)
    p = HooksPlugin()
    pm.register(p)
    ctx = ServiceContext(name="hooks", state_dir=tmp_path, log=logging.getLogger("hooks"))
    with pytest.raises(ServiceUnavailable):
        pm.hook.nexus_service_start(ctx=ctx)
    with pytest.raises(ServiceUnavailable):
        pm.hook.nexus_pre_syscall(ctx=ctx, event=ev("read", "/a", 1))


# ------------------------------------------------------------------------- audit


def test_audit_entries_including_failures(service: Service) -> None:
    service.post(ev("write", "/a.txt", 1, subject="alice"), SyscallOutcome(ok=True, revision=7))
    service.post(
        ev("read", "/missing", 2, subject="bob"),
        SyscallOutcome(ok=False, error_code="not_found", message="no such file"),
    )
    service.post(ev("rename", "/a.txt", 3, subject="alice", dst="/b.txt"))
    rows = service.call("tail", n=10)
    assert [(r["seq"], r["kernel_seq"], r["op"]) for r in rows] == [
        (1, 1, "write"), (2, 2, "read"), (3, 3, "rename")
    ]  # fmt: skip
    assert rows[0]["ok"] is True and rows[0]["revision"] == 7 and rows[0]["subject"] == "alice"
    assert rows[1]["ok"] is False
    assert rows[1]["error_code"] == "not_found" and rows[1]["message"] == "no such file"
    assert rows[2]["dst"] == "/b.txt"
    assert rows[0]["time"] == 1.0
    assert service.call("last_seq") == 3


def test_seq_is_gapless_and_increasing(service: Service) -> None:
    for i in range(1, 51):
        service.post(ev("stat", f"/f{i}", 1000 + i))
    rows = service.call("query", limit=1000)
    assert [r["seq"] for r in rows] == list(range(1, 51))
    assert service.call("last_seq") == 50


def test_idempotent_redelivery(service: Service) -> None:
    e = ev("write", "/x", 42)
    service.post(e)
    service.post(e)  # redelivered after a worker crash: same kernel seq
    service.post(ev("write", "/y", 43))
    rows = service.call("tail")
    assert [(r["seq"], r["kernel_seq"]) for r in rows] == [(1, 42), (2, 43)]
    log = service.plugin.events
    assert log is not None
    assert log.append({"op": "write", "path": "/x", "kernel_seq": 42}) == 1
    # Within one batch and against the log; events without a kernel seq never dedupe.
    seqs = log.append_many([
        {"op": "read", "path": "/z", "kernel_seq": 44},
        {"op": "read", "path": "/z", "kernel_seq": 44},
        {"op": "read", "path": "/x", "kernel_seq": 42},
        {"op": "read", "path": "/n"},
        {"op": "read", "path": "/n", "kernel_seq": 0},
    ])  # fmt: skip
    assert seqs == [3, 3, 1, 4, 5]
    assert log.last_seq() == 5


def test_redelivery_lookup_contiguous_sparse_and_large_batches(service: Service) -> None:
    log = service.plugin.events
    assert log is not None
    assert log.append({"op": "write", "path": "/five", "kernel_seq": 5}) == 1
    # Nearly contiguous (one range scan); 5 is logged, 7 is in the range but not asked.
    assert log.append({"op": "write", "path": "/seven", "kernel_seq": 7}) == 2
    got = log.record_many([{"op": "read", "path": "/a", "kernel_seq": ks} for ks in (1, 10, 5)])
    assert got == [(3, True), (4, True), (1, False)]
    # Sparse kernel seqs (IN lists instead of a range).
    sparse = [10**6, 5, 2 * 10**9, 10]
    assert log.record_many([{"op": "read", "path": "/s", "kernel_seq": ks} for ks in sparse]) == [
        (5, True), (1, False), (6, True), (4, False)
    ]  # fmt: skip
    # Larger than one IN chunk, half of it a redelivery, interleaved with new events.
    first = log.append_many([{"op": "stat", "path": f"/b/{ks}", "kernel_seq": ks}
                             for ks in range(100, 1300, 2)])  # fmt: skip
    assert first == list(range(7, 607))
    again = log.record_many([{"op": "stat", "path": f"/b/{ks}", "kernel_seq": ks}
                             for ks in range(100, 1300)])  # fmt: skip
    assert [seq for seq, new in again if not new] == first
    assert [seq for seq, new in again if new] == list(range(607, 1207))
    assert log.last_seq() == 1206
    rows = log.query(after_seq=606, limit=2)
    assert [(r["seq"], r["kernel_seq"], r["path"]) for r in rows] == [
        (607, 101, "/b/101"), (608, 103, "/b/103")
    ]  # fmt: skip
    # Sparse and larger than one IN chunk: every one found again on redelivery.
    spread = [{"op": "stat", "path": "/c", "kernel_seq": 10**7 + 1000 * i} for i in range(600)]
    assert log.append_many(spread) == list(range(1207, 1807))
    assert log.record_many(spread[::-1]) == [(seq, False) for seq in range(1806, 1206, -1)]
    assert log.last_seq() == 1806


def test_batch_round_trips_every_field(service: Service) -> None:
    log = service.plugin.events
    assert log is not None
    events = [
        {"op": "rename", "path": "/ä/ß", "dst": "/x/é", "kernel_seq": 1, "time": 1.5,
         "subject": "alice", "ok": False, "error_code": "conflict", "message": "m" * 5000,
         "revision": 2**62},
        {"op": "write", "path": "/plain"},
    ]  # fmt: skip
    assert log.append_many(events) == [1, 2]
    first, second = log.tail(2)
    assert {k: first[k] for k in events[0]} == events[0]
    assert second["ok"] is True and second["kernel_seq"] is None and second["dst"] is None
    assert second["time"] == 0.0


def test_positional_batch_insert_stores_what_sqlalchemy_would(
    service: Service, store: SQLAlchemyRecordStore
) -> None:
    """Where the dialect binds positionally (SQLite) the batch INSERT skips SQLAlchemy's
    per-row parameter building but stores exactly what ``conn.execute(insert, rows)``
    stores (the same values through the same bind processors); PostgreSQL keeps its
    one-statement ``unnest`` insert."""
    from sqlalchemy import select

    from nexusfs_hooks.eventlog import _INSERT, _positional_insert
    from nexusfs_hooks.models import AuditEvent

    dialect = store.engine.dialect
    fast = _positional_insert(dialect)
    assert (fast is not None) == (dialect.name == "sqlite")
    log = service.plugin.events
    assert log is not None
    rows = [{"kernel_seq": 10 + i, "time": 2.25, "subject": "user:bob", "op": "rename",
             "path": "/p", "dst": None if i else "/q", "ok": bool(i), "error_code": None,
             "message": "m" if i else None, "revision": 3 if i else None}
            for i in range(2)]  # fmt: skip
    assert log.record_rows([dict(r) for r in rows]) == [(1, True), (2, True)]
    with store.engine.begin() as conn:  # the same rows the standard way, seqs 3 and 4
        conn.execute(_INSERT, [{**r, "seq": 3 + i, "kernel_seq": 20 + i}
                               for i, r in enumerate(rows)])  # fmt: skip
        stored = conn.execute(select(AuditEvent.__table__).order_by("seq")).all()
    fields = [c for c in rows[0] if c != "kernel_seq"]
    assert [tuple(r._mapping[c] for c in fields) for r in stored[:2]] == [
        tuple(r._mapping[c] for c in fields) for r in stored[2:]]
    assert stored[0]._mapping["ok"] is False and stored[1]._mapping["ok"] is True


def test_failed_batch_consumes_no_seq(service: Service) -> None:
    log = service.plugin.events
    assert log is not None
    log.append({"op": "write", "path": "/a", "kernel_seq": 1})
    with pytest.raises(ValueError):
        log.append_many([{"op": "write", "path": "/b"}, {"op": "write"}])
    with pytest.raises(ValueError):
        log.append({"op": "write", "path": "/b", "bogus": 1})
    with pytest.raises(ValueError):
        log.append({"op": "write", "path": "/b", "time": "noon"})
    assert log.append({"op": "write", "path": "/c"}) == 2
    assert log.append_many([]) == []


def _paths(rows: list[dict[str, Any]]) -> list[str]:
    return [r["path"] for r in rows]


def test_query_path_prefix_edge_cases(service: Service) -> None:
    paths = ["/a", "/a/b", "/a/b/c", "/ab", "/ab/c", "/a-b", "/a.b", "/b", "/A/b", "/a0"]
    for i, p in enumerate(paths, 1):
        service.post(ev("write", p, i))
    q = service.methods["query"]
    assert _paths(q(path_prefix="/a")) == ["/a", "/a/b", "/a/b/c"]
    assert _paths(q(path_prefix="/a/")) == ["/a", "/a/b", "/a/b/c"]
    assert _paths(q(path_prefix="/a/b")) == ["/a/b", "/a/b/c"]
    assert _paths(q(path_prefix="/ab")) == ["/ab", "/ab/c"]
    assert _paths(q(path_prefix="/A")) == ["/A/b"]  # case-sensitive
    assert _paths(q(path_prefix="/a%")) == []  # no LIKE wildcards
    assert _paths(q(path_prefix="/a_")) == []
    assert len(q(path_prefix="/")) == len(paths)
    assert _paths(q(path_prefix="/zzz")) == []
    with pytest.raises(InvalidPath):
        q(path_prefix="a")


def test_query_prefix_matches_rename_destination(service: Service) -> None:
    service.post(ev("rename", "/tmp/x", 1, dst="/secret/x"))
    service.post(ev("write", "/tmp/y", 2))
    assert [r["seq"] for r in service.call("query", path_prefix="/secret")] == [1]


def test_query_filters(service: Service) -> None:
    service.post(ev("write", "/d/1", 1, subject="alice"))
    service.post(ev("read", "/d/1", 2, subject="bob"))
    service.post(ev("write", "/d/2", 3, subject="bob"))
    service.post(ev("unlink", "/d/1", 4, subject="alice"))
    service.post(ev("write", "/e/1", 5, subject="alice"))
    q = service.methods["query"]
    assert [r["seq"] for r in q(subject="alice")] == [1, 4, 5]
    assert [r["seq"] for r in q(op="write")] == [1, 3, 5]
    assert [r["seq"] for r in q(since=2.0, until=4.0)] == [2, 3]  # since <= t < until
    assert [r["seq"] for r in q(since=4.0)] == [4, 5]
    assert [r["seq"] for r in q(until=2.0)] == [1]
    assert [r["seq"] for r in q(after_seq=3)] == [4, 5]
    assert [r["seq"] for r in q(after_seq=1, limit=2)] == [2, 3]
    assert [r["seq"] for r in q(path_prefix="/d", subject="bob", op="write")] == [3]
    assert q(limit=0) == []
    with pytest.raises(ValueError):
        q(limit=-1)
    # Paging with after_seq visits everything once.
    seen: list[int] = []
    after = 0
    while page := q(after_seq=after, limit=2):
        seen += [r["seq"] for r in page]
        after = page[-1]["seq"]
    assert seen == [1, 2, 3, 4, 5]


def test_tail_and_last_seq_on_empty_log(service: Service) -> None:
    assert service.call("tail") == []
    assert service.call("last_seq") == 0
    for i in range(1, 6):
        service.post(ev("stat", f"/{i}", i))
    assert [r["seq"] for r in service.call("tail", n=2)] == [4, 5]
    assert service.call("tail", n=0) == []


# ------------------------------------------------------------------------- rules


def test_deny_rule_vetoes_matching_ops_and_paths_only(service: Service) -> None:
    rule = service.call("add_rule", op="unlink", glob="/protected/**", action="deny",
                        message="protected files cannot be deleted")  # fmt: skip
    assert rule["id"] >= 1 and rule["action"] == "deny"
    veto = service.pre(ev("unlink", "/protected/a/b.txt", 1))
    assert veto == Veto("protected files cannot be deleted")
    assert service.pre(ev("unlink", "/protected", 2)) is not None  # ** matches zero segments
    assert service.pre(ev("write", "/protected/a", 3)) is None  # other op
    assert service.pre(ev("unlink", "/protectedX/a", 4)) is None  # other path
    assert service.pre(ev("unlink", "/other/protected/a", 5)) is None


def test_deny_rule_wildcards(service: Service) -> None:
    service.call("add_rule", op="*", glob="/tmp/*.lock", action="deny")
    service.call("add_rule", op="write", glob="/**/secret-?.txt", action="deny", message="s")
    assert service.pre(ev("write", "/tmp/a.lock", 1)) is not None
    assert service.pre(ev("read", "/tmp/a.lock", 2)) is not None
    assert service.pre(ev("write", "/tmp/sub/a.lock", 3)) is None  # * stays in a segment
    assert service.pre(ev("write", "/secret-1.txt", 4)) == Veto("s")
    assert service.pre(ev("write", "/x/y/secret-2.txt", 5)) == Veto("s")
    assert service.pre(ev("write", "/x/y/secret-22.txt", 6)) is None
    default = service.pre(ev("mkdir", "/tmp/b.lock", 7))
    assert isinstance(default, Veto) and "denied by hook rule" in default.reason


def test_deny_rule_matches_rename_destination(service: Service) -> None:
    service.call("add_rule", op="rename", glob="/locked/**", action="deny")
    assert service.pre(ev("rename", "/free/a", 1, dst="/locked/a")) is not None
    assert service.pre(ev("rename", "/locked/a", 2, dst="/free/a")) is not None
    assert service.pre(ev("rename", "/free/a", 3, dst="/free/b")) is None


def test_remove_rule(service: Service) -> None:
    rule = service.call("add_rule", op="write", glob="/a", action="deny")
    assert service.pre(ev("write", "/a", 1)) is not None
    assert service.call("remove_rule", rule_id=rule["id"]) is True
    assert service.call("remove_rule", rule_id=rule["id"]) is False
    assert service.pre(ev("write", "/a", 2)) is None
    assert service.call("list_rules") == []


def test_emit_rule_calls_ctx_emit(service: Service) -> None:
    rule = service.call("add_rule", op="write", glob="/inbox/*", action="emit",
                        message="inbox.new")  # fmt: skip
    service.call("add_rule", op="*", glob="/**", action="emit")
    service.post(ev("write", "/inbox/m1", 1, subject="alice"))
    service.post(ev("write", "/inbox/m1", 1, subject="alice"))  # redelivery: no re-emit
    service.post(ev("write", "/inbox/m2", 2), SyscallOutcome(ok=False, error_code="conflict"))
    service.post(ev("read", "/inbox/m1", 3))
    names = [name for name, _ in service.emitted.calls]
    assert names == ["inbox.new", "hooks.match", "hooks.match"]
    payload = service.emitted.calls[0][1]
    assert payload["rule_id"] == rule["id"]
    assert payload["path"] == "/inbox/m1" and payload["subject"] == "alice"
    assert payload["kernel_seq"] == 1
    assert service.pre(ev("write", "/inbox/m3", 4)) is None  # emit rules never veto
    assert service.call("last_seq") == 3


def test_rules_visible_across_plugin_instances(
    store: SQLAlchemyRecordStore, tmp_path: Path
) -> None:
    first = start_service(store, tmp_path / "s1")
    second = start_service(store, tmp_path / "s2")  # e.g. the restarted worker
    assert second.pre(ev("write", "/x", 1)) is None  # second has cached "no rules"
    first.call("add_rule", op="write", glob="/x", action="deny", message="no")
    assert second.pre(ev("write", "/x", 2)) == Veto("no")
    assert [r["glob"] for r in second.call("list_rules")] == ["/x"]
    second.call("remove_rule", rule_id=second.call("list_rules")[0]["id"])
    assert first.pre(ev("write", "/x", 3)) is None
    # A brand-new instance (fresh process after a crash) starts with the stored rules.
    first.call("add_rule", op="read", glob="/y", action="deny")
    first.stop()
    third = start_service(store, tmp_path / "s3")
    assert third.pre(ev("read", "/y", 4)) is not None
    third.stop()
    second.stop()


def test_rule_cache_refresh_interval(store: SQLAlchemyRecordStore) -> None:
    upgrade_schema(store)
    now = [0.0]
    reader = HookEngine(store.session_factory, refresh_interval=1.0, clock=lambda: now[0])
    writer = HookEngine(store.session_factory, refresh_interval=1.0, clock=lambda: now[0])
    assert reader.check_deny("write", "/a") is None
    writer.add_rule("write", "/a", "deny")
    assert writer.check_deny("write", "/a") is not None  # own write: immediate
    now[0] = 0.5
    assert reader.check_deny("write", "/a") is None  # cached; not re-checked yet
    now[0] = 1.01
    assert reader.check_deny("write", "/a") is not None


@pytest.mark.parametrize(
    ("op", "glob", "action", "error"),
    [
        ("frobnicate", "/a", "deny", ValueError),
        ("", "/a", "deny", ValueError),
        ("write", "/a", "explode", ValueError),
        ("write", "relative/a", "deny", InvalidPath),
        ("write", "", "deny", InvalidPath),
        ("write", "/a/../b", "deny", InvalidPath),
        ("write", "/a//b", "deny", InvalidPath),
        ("write", "/a\x00b", "deny", InvalidPath),
        ("write", "/a\nb", "deny", InvalidPath),
        ("write", "/a**b", "deny", InvalidPath),
        ("write", "/a/[abc", "deny", InvalidPath),
        ("write", "/a/[z-a]", "deny", InvalidPath),
        ("write", "/" + "x" * 5000, "deny", InvalidPath),
    ],
)
def test_bad_rule_input_is_a_typed_error(
    service: Service, op: str, glob: str, action: str, error: type[Exception]
) -> None:
    with pytest.raises(error):
        service.call("add_rule", op=op, glob=glob, action=action)
    assert service.call("list_rules") == []


def test_bad_rule_types(service: Service) -> None:
    with pytest.raises(ValueError):
        service.call("add_rule", op="write", glob="/a", action="deny", message=3)
    with pytest.raises(ValueError):
        service.call("remove_rule", rule_id="1")
    assert InvalidPath.__mro__.index(ValueError) > 0


def test_every_hookable_op_accepted(service: Service) -> None:
    for op in sorted(HOOKABLE):
        service.call("add_rule", op=op, glob="/q", action="emit")
    assert len(service.call("list_rules")) == len(HOOKABLE)


# ------------------------------------------------------------- multi-process


def test_two_process_concurrent_append_is_gapless(store_url: str) -> None:
    from _workers import append_range

    with SQLAlchemyRecordStore(store_url) as store:
        upgrade_schema(store)
    per_proc, batch = 300, 7
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(2)
    # Overlapping kernel seqs (1..300 and 201..500): the overlap is stored once.
    procs = [
        ctx.Process(target=append_range, args=(store_url, 1, per_proc, batch, barrier)),
        ctx.Process(target=append_range, args=(store_url, 201, per_proc, batch, barrier)),
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    with SQLAlchemyRecordStore(store_url) as store:
        log = EventLog(store.session_factory)
        rows = log.query(limit=10_000)
        assert [r["seq"] for r in rows] == list(range(1, 501))
        assert sorted(r["kernel_seq"] for r in rows) == list(range(1, 501))
        assert log.last_seq() == 500


def test_post_hook_retries_transient_database_errors(
    service: Service, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sqlalchemy.exc import OperationalError

    import nexusfs_hooks.plugin as plugin_module

    monkeypatch.setattr(plugin_module, "RETRY_DELAYS", (0.0, 0.0))
    log = service.plugin.events
    assert log is not None
    real_append = log.append
    failures = [2]

    def flaky(event: dict[str, Any]) -> int:
        if failures[0]:
            failures[0] -= 1
            raise OperationalError("INSERT", {}, Exception("database is locked"))
        return real_append(event)

    monkeypatch.setattr(log, "append", flaky)
    service.post(ev("write", "/r", 1))
    assert service.call("last_seq") == 1
    failures[0] = 5  # more failures than retries: the error reaches the host
    with pytest.raises(OperationalError):
        service.post(ev("write", "/r", 2))
    assert service.call("last_seq") == 1
