"""Group memberships: computed per check by :func:`nexusfs_rebac.listing.memberships`
(the same sets, and the same depth rule, as ``list_objects``), and shared across
requests (``Engine.check(shared=...)``), as the service shares them within one revision:
the same answers as without, per user, and never carried over a write (the service
starts a new dictionary at every revision)."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rebac_service_kit import Worker

from nexusfs_rebac import (
    Engine,
    MemoryTupleSource,
    PathTree,
    ResolutionTooComplex,
    default_model,
    parse_model,
)
from nexusfs_rebac.listing import memberships
from nexusfs_rebac.tuples import parse_user

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


GROUPS = parse_model(
    """model
  schema 1.1
type user
type team
  relations
    define member: [user, user:*, group#member]
type group
  relations
    define member: [user, team#member, group#member]
"""
)
UNITS = [f"{t}:{i}" for t in ("group", "team") for i in range(3)]
MEMBER_USERS = ["user:a", "user:b", "user:*", *[f"{u}#member" for u in UNITS]]


def _members_or_error(e: Engine, user: str, otype: str) -> set[str] | str:
    target = e.plan.rel(otype, "member")
    assert target is not None and target.shortcut
    try:
        return set(memberships(e.plan, e.stored, parse_user(user), target, e.max_depth))
    except ResolutionTooComplex:
        return "too deep"


def _listed_or_error(e: Engine, user: str, otype: str) -> set[str] | str:
    try:
        return set(e.list_objects(user, "member", otype))
    except ResolutionTooComplex:
        return "too deep"


@settings(max_examples=150, deadline=None)
@given(
    raw=st.lists(
        st.tuples(st.sampled_from(UNITS), st.sampled_from(MEMBER_USERS)),
        max_size=14,
        unique=True,
    ),
    max_depth=st.integers(1, 4),
)
def test_memberships_equal_list_objects(raw: list[tuple[str, str]], max_depth: int) -> None:
    """Nested (and cyclic) groups and teams, wildcards, usersets as users, and small
    depth limits: the per-check membership closure is list_objects' answer, or both
    raise."""
    e = Engine(GROUPS, MemoryTupleSource((o, "member", u) for o, u in raw), max_depth=max_depth)
    for user in ["user:a", "user:z", "user:*", *[f"{u}#member" for u in UNITS]]:
        for otype in ("group", "team"):
            assert _members_or_error(e, user, otype) == _listed_or_error(e, user, otype), (
                user, otype, raw, max_depth,
            )  # fmt: skip


def test_memberships_past_the_depth_limit_raise_and_checks_say_so() -> None:
    chain = [(f"group:{i + 1}", "member", f"group:{i}#member") for i in range(6)]
    e = Engine(GROUPS, MemoryTupleSource([("group:0", "member", "user:a"), *chain]), max_depth=3)
    assert _members_or_error(e, "user:a", "group") == "too deep"
    with pytest.raises(ResolutionTooComplex):
        e.check("user:a", "member", "group:6")
    deep = Engine(GROUPS, e.stored, max_depth=10)
    assert _members_or_error(deep, "user:a", "group") == {f"group:{i}" for i in range(7)}
    assert deep.check("user:a", "member", "group:6")
