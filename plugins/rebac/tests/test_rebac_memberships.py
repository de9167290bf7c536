"""Group memberships shared across requests (``Engine.check(shared=...)``), as the
service shares them within one revision: the same answers as without, per user, and
never carried over a write (the service starts a new dictionary at every revision)."""

from __future__ import annotations

import itertools

from rebac_service_kit import Worker

from nexusfs_rebac import Engine, MemoryTupleSource, PathTree, default_model

TUPLES = [
    "group:eng#member@user:a",
    "group:all#member@group:eng#member",
    "group:ops#member@user:b",
    "folder:/x#viewer@group:all#member",
    "folder:/y#editor@group:ops#member",
    "file:/y/g#owner@user:c",
]
USERS = ["user:a", "user:b", "user:c", "user:d", "group:eng#member", "group:ops#member"]
OBJECTS = ["file:/x/f", "file:/y/g", "folder:/x", "folder:/y"]
RELATIONS = ["read", "write", "owner"]


def engine() -> Engine:
    tree = PathTree()
    for p in ("/x/f", "/y/g"):
        tree.add_file(p)
    return Engine(default_model(), MemoryTupleSource(TUPLES),
                  computed=tree.hierarchy().computed_relations())  # fmt: skip


def test_shared_memberships_give_the_same_answers_per_user() -> None:
    e = engine()
    shared: dict[str, dict[str, frozenset[str]]] = {}
    grid = list(itertools.product(USERS, RELATIONS, OBJECTS))
    plain = [e.check(u, r, o) for u, r, o in grid]
    assert [e.check(u, r, o, shared=shared) for u, r, o in grid] == plain
    assert e.batch_check(grid, shared=shared) == plain
    assert any(plain) and not all(plain)
    # Remembered per user: anne's groups are not bob's.
    assert shared["user:a"]["group#member"] == {"group:eng", "group:all"}
    assert shared["user:b"]["group#member"] == {"group:ops"}
    # Contextual tuples change memberships: the shared sets are not used or filled.
    before = {u: dict(m) for u, m in shared.items()}
    assert e.check("user:d", "read", "file:/x/f", ["group:eng#member@user:d"], shared=shared)
    assert {u: dict(m) for u, m in shared.items()} == before


def test_the_service_never_reuses_memberships_across_revisions(service: Worker) -> None:
    service.call("write", writes=TUPLES)
    q = {"user": "user:a", "relation": "read", "object": "file:/x/f"}
    assert service.call("check", **q)
    assert service.call("batch_check", checks=[["user:a", "read", "folder:/x"]]) == [True]
    assert "user:a" in service.service.mirror.snapshot.memberships
    service.call("write", deletes=["group:eng#member@user:a"])
    assert "user:a" not in service.service.mirror.snapshot.memberships
    assert not service.call("check", **q)
    assert service.call("batch_check", checks=[["user:a", "read", "folder:/x"]]) == [False]
