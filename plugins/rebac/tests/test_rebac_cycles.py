"""Cycles never grant access; a cycle under ``but not`` never reads as "not excluded";
memoised answers do not depend on the path that computed them; the depth limit raises
ResolutionTooComplex instead of answering wrong."""

from __future__ import annotations

import pytest
from rebac_testkit import T, reference

from nexusfs.errors import NexusError
from nexusfs_rebac import (
    AuthorizationModel,
    Engine,
    MemoryTupleSource,
    ResolutionTooComplex,
    TupleKey,
    parse_model,
)

HEAD = "model\n  schema 1.1\ntype user\n"


def model(body: str) -> AuthorizationModel:
    return parse_model(HEAD + body)


def all_agree(m: AuthorizationModel, tuples: list[str], user: str, rel: str, obj: str) -> bool:
    """The engine's check, batch_check, list_objects and list_users, and the
    reference, all agree; returns the answer."""
    keys = [TupleKey.parse(t) for t in tuples]
    e = Engine(m, MemoryTupleSource(keys))
    objects = {k.object for k in keys} | {obj}
    ref = reference(m, keys, user, objects)[(obj, rel)] == T
    answer = e.check(user, rel, obj)
    assert answer == ref
    # batch_check keeps its memo across items (the single check does not memoise walks)
    assert e.batch_check([(user, rel, obj), (user, rel, obj)]) == [answer, answer]
    assert (obj in e.list_objects(user, rel, obj.partition(":")[0])) == answer
    kind = user.partition(":")[0] if "#" not in user else (
        f"{user.partition(':')[0]}#{user.partition('#')[2]}")  # fmt: skip
    assert e.list_users(obj, rel, [kind]).includes(user) == answer
    return answer


GROUPS = model("type group\n  relations\n    define member: [user, group#member]\n")


def test_group_cycle_without_members_grants_nothing() -> None:
    tuples = ["group:a#member@group:b#member", "group:b#member@group:a#member"]
    assert not all_agree(GROUPS, tuples, "user:anne", "member", "group:a")
    assert all_agree(GROUPS, tuples, "group:b#member", "member", "group:a")


def test_group_cycle_with_a_member_grants_the_whole_cycle() -> None:
    tuples = ["group:a#member@group:b#member", "group:b#member@group:c#member",
              "group:c#member@group:a#member", "group:c#member@user:anne"]  # fmt: skip
    for g in ("a", "b", "c"):
        assert all_agree(GROUPS, tuples, "user:anne", "member", f"group:{g}")
    assert not all_agree(GROUPS, tuples, "user:bob", "member", "group:a")


FOLDERS = model(
    "type folder\n  relations\n    define parent: [folder]\n"
    "    define viewer: [user] or viewer from parent\n"
)


def test_parent_cycle_grants_nothing_and_inherits_within_the_cycle() -> None:
    cyc = ["folder:a#parent@folder:b", "folder:b#parent@folder:a"]
    assert not all_agree(FOLDERS, cyc, "user:anne", "viewer", "folder:a")
    granted = [*cyc, "folder:b#viewer@user:anne"]
    assert all_agree(FOLDERS, granted, "user:anne", "viewer", "folder:a")


BLOCKING = model(
    "type doc\n  relations\n    define viewer: [user]\n"
    "    define blocked: [user, doc#blocked]\n    define can_read: viewer but not blocked\n"
)


def test_cycle_under_but_not_is_not_read_as_not_excluded() -> None:
    base = ["doc:1#viewer@user:anne"]
    assert all_agree(BLOCKING, base, "user:anne", "can_read", "doc:1")
    # doc:1#blocked and doc:2#blocked include each other and nothing else: whether anne
    # is blocked is unknown, so she must not be let in.
    cyc = [*base, "doc:1#blocked@doc:2#blocked", "doc:2#blocked@doc:1#blocked"]
    assert not all_agree(BLOCKING, cyc, "user:anne", "can_read", "doc:1")
    e = Engine(BLOCKING, MemoryTupleSource(cyc))
    assert e.list_users("doc:1", "can_read", ["user"]).users == ()
    assert not e.check("user:anne", "blocked", "doc:1")  # and she is not "blocked" either


def test_self_contradicting_model_cycle_denies() -> None:
    m = model(
        "type doc\n  relations\n    define viewer: [user] but not blocked\n"
        "    define blocked: [user, doc#viewer]\n"
    )
    assert all_agree(m, ["doc:1#viewer@user:anne"], "user:anne", "viewer", "doc:1")
    # viewer = anne but not viewer: neither true nor false
    paradox = ["doc:1#viewer@user:anne", "doc:1#blocked@doc:1#viewer"]
    assert not all_agree(m, paradox, "user:anne", "viewer", "doc:1")


def test_double_negation_over_a_cycle_stays_denied() -> None:
    m = model(
        "type doc\n  relations\n    define r: [user, doc#r]\n    define s: [user] but not r\n"
        "    define view: [user] but not s\n"
    )
    base = ["doc:1#s@user:anne", "doc:1#view@user:anne"]
    assert not all_agree(m, base, "user:anne", "view", "doc:1")  # r false, s true
    cyc = [*base, "doc:1#r@doc:2#r", "doc:2#r@doc:1#r"]
    # r unknown -> s unknown -> view unknown: deny, never "not (not r)" = allow
    assert not all_agree(m, cyc, "user:anne", "view", "doc:1")


def test_cached_answers_do_not_depend_on_the_path_exact_mode() -> None:
    """Evaluating ``r`` visits ``n`` first while ``a`` is on the stack, so ``n`` looks
    UNKNOWN at that moment; ``a`` then turns TRUE via ``x``. ``n`` must not be cached as
    UNKNOWN: r = a and n is TRUE, so s is FALSE and view TRUE."""
    m = model(
        "type doc\n  relations\n    define x: [user]\n    define a: n or x\n    define n: a\n"
        "    define r: a and n\n    define s: [user] but not r\n    define view: [user] but not s\n"
    )
    tuples = ["doc:1#x@user:anne", "doc:1#s@user:anne", "doc:1#view@user:anne"]
    assert all_agree(m, tuples, "user:anne", "view", "doc:1")


def test_cached_answers_do_not_depend_on_the_path_positive_walk() -> None:
    """The walk for ``w`` reaches ``p = a and q`` while ``a`` is being evaluated below
    it, so ``p`` is not TRUE *at that moment*; ``a`` then turns TRUE via ``x``. ``p`` must
    not be remembered as FALSE: r = a and p is TRUE."""
    m = model(
        "type doc\n  relations\n    define x: [user]\n    define y: [user]\n    define q: [user]\n"
        "    define a: (w and y) or x\n    define w: p\n    define p: a and q\n"
        "    define r: a and p\n"
    )
    tuples = ["doc:1#x@user:anne", "doc:1#y@user:anne", "doc:1#q@user:anne"]
    assert all_agree(m, tuples, "user:anne", "r", "doc:1")


def test_batch_check_shares_a_memo_without_leaking_cycle_assumptions() -> None:
    m = model(
        "type doc\n  relations\n    define x: [user]\n    define a: n or x\n    define n: a\n"
    )
    e = Engine(m, MemoryTupleSource(["doc:1#x@user:anne"]))
    items = [("user:anne", r, "doc:1") for r in ("n", "a", "n", "x")]
    assert e.batch_check(items) == [True, True, True, True]
    assert e.batch_check([("user:bob", r, "doc:1") for r in ("n", "a")]) == [False, False]


# ------------------------------------------------------------------------ depth


def chain(n: int) -> list[str]:
    """group:g0 <- g1 <- ... <- g{n}: anne is in g{n}, hence in every group."""
    out = [f"group:g{i}#member@group:g{i + 1}#member" for i in range(n)]
    return [*out, f"group:g{n}#member@user:anne"]


DOCS = model(
    "type group\n  relations\n    define member: [user, group#member]\n"
    "type doc\n  relations\n    define viewer: [user, group#member]\n"
    "    define banned: [user]\n    define blocked: [group#member] or banned\n"
    "    define can_read: [user] but not blocked\n"
)


def test_depth_limit_raises_instead_of_answering() -> None:
    tuples = [*chain(40), "doc:1#viewer@group:g0#member"]
    e = Engine(DOCS, MemoryTupleSource(tuples))
    for call in (
        lambda: e.check("user:anne", "viewer", "doc:1"),
        lambda: e.list_objects("user:anne", "viewer", "doc"),
        lambda: e.list_users("doc:1", "viewer", ["user"]),
        lambda: e.batch_check([("user:anne", "viewer", "doc:1")]),
    ):
        with pytest.raises(ResolutionTooComplex) as ei:
            call()
        assert "25" in str(ei.value)
        assert isinstance(ei.value, NexusError) and isinstance(ei.value, RuntimeError)
        assert ei.value.code == "rebac_resolution_too_complex"
    deep = Engine(DOCS, MemoryTupleSource(tuples), max_depth=100)
    assert deep.check("user:anne", "viewer", "doc:1")
    assert deep.list_objects("user:anne", "viewer", "doc") == ["doc:1"]
    assert deep.list_users("doc:1", "viewer", ["user"]).users == ("user:anne",)
    # within the limit, the default works
    shallow = Engine(DOCS, MemoryTupleSource([*chain(10), "doc:1#viewer@group:g0#member"]))
    assert shallow.check("user:anne", "viewer", "doc:1")


def test_depth_limit_under_but_not() -> None:
    tuples = [*chain(40), "doc:1#blocked@group:g0#member", "doc:1#can_read@user:bob",
              "doc:1#can_read@user:cid", "doc:1#banned@user:cid"]  # fmt: skip
    e = Engine(DOCS, MemoryTupleSource(tuples))
    # Whether bob is blocked needs the whole chain: too deep, so no answer.
    with pytest.raises(ResolutionTooComplex, match="check user:bob can_read doc:1"):
        e.check("user:bob", "can_read", "doc:1")
    # cid is banned: blocked is TRUE whatever the chain says, so the answer is certain.
    assert e.check("user:cid", "can_read", "doc:1") is False
    assert Engine(DOCS, MemoryTupleSource(tuples), max_depth=100).check(
        "user:bob", "can_read", "doc:1"
    )
