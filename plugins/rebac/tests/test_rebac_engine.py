"""The engine, one rewrite form at a time: check, batch_check, expand, list_objects and
list_users on small hand-written models, plus request validation."""

from __future__ import annotations

from collections.abc import Iterable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nexusfs.errors import NexusError
from nexusfs_rebac import (
    Engine,
    InvalidRequest,
    InvalidTuple,
    MemoryTupleSource,
    PathHierarchy,
    TupleKey,
    TupleSource,
    UserList,
    parse_model,
)
from nexusfs_rebac.source import ComputedSource, OverlaySource

MODEL = parse_model(
    """model
  schema 1.1
type user
type group
  relations
    define member: [user, user:*, group#member]
type folder
  relations
    define viewer: [user, group#member]
type doc
  relations
    define parent: [folder]
    define owner: [user]
    define editor: [user] or owner
    define viewer: [user, user:*, group#member] or editor or viewer from parent
    define allowed: [user]
    define both: viewer and allowed
    define blocked: [user, group#member]
    define can_read: viewer but not blocked
"""
)


def engine(*tuples: str, model: object = MODEL) -> Engine:
    return Engine(model, MemoryTupleSource(tuples))  # type: ignore[arg-type]


def agree(e: Engine, user: str, relation: str, obj: str, users: Iterable[str] = ()) -> bool:
    """check, and that list_objects and list_users say the same."""
    answer = e.check(user, relation, obj)
    otype = obj.partition(":")[0]
    assert (obj in e.list_objects(user, relation, otype)) == answer
    kinds = sorted({user.partition(":")[0] if "#" not in user else
                    f"{user.partition(':')[0]}#{user.partition('#')[2]}"})  # fmt: skip
    assert e.list_users(obj, relation, kinds).includes(user) == answer
    return answer


# ------------------------------------------------------------------ rewrite forms


def test_direct() -> None:
    e = engine("doc:1#owner@user:anne")
    assert agree(e, "user:anne", "owner", "doc:1")
    assert not agree(e, "user:bob", "owner", "doc:1")
    assert not agree(e, "user:anne", "owner", "doc:2")


def test_computed_userset() -> None:
    e = engine("doc:1#owner@user:anne")
    assert agree(e, "user:anne", "editor", "doc:1")
    assert agree(e, "user:anne", "viewer", "doc:1")  # viewer <- editor <- owner
    assert not agree(e, "user:bob", "editor", "doc:1")


def test_tuple_to_userset() -> None:
    e = engine("doc:1#parent@folder:f", "folder:f#viewer@user:anne")
    assert agree(e, "user:anne", "viewer", "doc:1")
    assert not agree(e, "user:anne", "viewer", "doc:2")
    assert not agree(e, "user:bob", "viewer", "doc:1")


def test_tuple_to_userset_skips_types_without_the_relation() -> None:
    # doc#viewer from parent: a parent that is a folder has viewer; the tupleset only
    # allows folder, so a stored doc parent (not allowed) is ignored.
    e = engine("doc:1#parent@doc:2", "doc:2#viewer@user:anne")
    assert not agree(e, "user:anne", "viewer", "doc:1")


def test_union() -> None:
    e = engine("doc:1#viewer@user:anne", "doc:1#editor@user:bob")
    assert agree(e, "user:anne", "viewer", "doc:1")
    assert agree(e, "user:bob", "viewer", "doc:1")
    assert not agree(e, "user:cid", "viewer", "doc:1")


def test_intersection() -> None:
    e = engine("doc:1#viewer@user:anne", "doc:1#allowed@user:anne", "doc:1#viewer@user:bob",
               "doc:1#allowed@user:cid")  # fmt: skip
    assert agree(e, "user:anne", "both", "doc:1")
    assert not agree(e, "user:bob", "both", "doc:1")
    assert not agree(e, "user:cid", "both", "doc:1")


def test_exclusion() -> None:
    e = engine("doc:1#viewer@user:anne", "doc:1#viewer@user:bob", "doc:1#blocked@user:bob")
    assert agree(e, "user:anne", "can_read", "doc:1")
    assert not agree(e, "user:bob", "can_read", "doc:1")
    assert not agree(e, "user:cid", "can_read", "doc:1")


def test_exclusion_through_a_group() -> None:
    e = engine("doc:1#viewer@user:*", "doc:1#blocked@group:bad#member",
               "group:bad#member@user:bob")  # fmt: skip
    assert agree(e, "user:anne", "can_read", "doc:1")
    assert not agree(e, "user:bob", "can_read", "doc:1")


def test_wildcard() -> None:
    e = engine("doc:1#viewer@user:*")
    assert agree(e, "user:anyone", "viewer", "doc:1")
    assert agree(e, "user:*", "viewer", "doc:1")  # "is it public?"
    assert not agree(e, "user:*", "viewer", "doc:2")
    assert e.list_users("doc:1", "viewer", ["user"]) == UserList(("user:*",), ())


def test_wildcard_subject_does_not_match_a_concrete_tuple() -> None:
    e = engine("doc:1#viewer@user:anne")
    assert not agree(e, "user:*", "viewer", "doc:1")


def test_wildcard_with_exclusion_lists_the_excluded() -> None:
    e = engine("doc:1#viewer@user:*", "doc:1#blocked@user:bob", "doc:1#viewer@user:cid")
    got = e.list_users("doc:1", "can_read", ["user"])
    assert got.users == ("user:*", "user:cid") and got.excluded == ("user:bob",)
    assert got.includes("user:anne") and not got.includes("user:bob")
    assert got.to_json() == {"users": ["user:*", "user:cid"], "excluded": ["user:bob"]}
    assert not e.check("user:bob", "can_read", "doc:1")
    assert e.check("user:*", "can_read", "doc:1")


def test_userset_as_user() -> None:
    e = engine("group:eng#member@user:anne", "group:eng#member@group:ops#member",
               "group:ops#member@user:bob", "doc:1#viewer@group:eng#member")  # fmt: skip
    assert agree(e, "user:anne", "viewer", "doc:1")
    assert agree(e, "user:bob", "viewer", "doc:1")  # nested group
    assert agree(e, "group:eng#member", "viewer", "doc:1")  # the userset itself
    assert agree(e, "group:ops#member", "viewer", "doc:1")  # included in eng
    assert not agree(e, "group:other#member", "viewer", "doc:1")
    assert agree(e, "group:eng#member", "member", "group:eng")  # trivially itself
    got = e.list_users("doc:1", "viewer", ["user", "group#member"])
    assert got.users == ("group:eng#member", "group:ops#member", "user:anne", "user:bob")
    assert e.list_objects("group:ops#member", "member", "group") == ["group:eng", "group:ops"]


def test_userset_with_wildcard_members() -> None:
    e = engine("group:all#member@user:*", "doc:1#viewer@group:all#member")
    assert agree(e, "user:anne", "viewer", "doc:1")
    assert agree(e, "user:*", "viewer", "doc:1")
    assert e.list_users("doc:1", "viewer", ["user"]).users == ("user:*",)


def test_contextual_tuples() -> None:
    e = engine("doc:1#parent@folder:f")
    ctx = ["folder:f#viewer@user:anne"]
    assert e.check("user:anne", "viewer", "doc:1", contextual_tuples=ctx)
    assert not e.check("user:anne", "viewer", "doc:1")  # only for that request
    assert e.list_objects("user:anne", "viewer", "doc", contextual_tuples=ctx) == ["doc:1"]
    assert e.list_users("doc:1", "viewer", ["user"], contextual_tuples=ctx).users == ("user:anne",)
    assert e.batch_check([("user:anne", "viewer", "doc:1")], contextual_tuples=ctx) == [True]
    tree = e.expand("viewer", "folder:f", contextual_tuples=[("folder:f", "viewer", "user:x")])
    assert tree["leaf"]["users"] == ["user:x"]
    # merged with stored tuples of the same object#relation
    e2 = engine("doc:1#viewer@user:bob")
    assert e2.list_users(
        "doc:1", "viewer", ["user"], contextual_tuples=["doc:1#viewer@user:a"]
    ).users == ("user:a", "user:bob")


def test_contextual_tuples_are_validated() -> None:
    e = engine()
    with pytest.raises(InvalidTuple, match="not 'user:\\*'"):
        e.check("user:a", "owner", "doc:1", contextual_tuples=["doc:1#owner@user:*"])
    with pytest.raises(InvalidTuple, match="not of the form"):
        e.check("user:a", "owner", "doc:1", contextual_tuples=["garbage"])
    with pytest.raises(InvalidTuple, match="a list of tuples"):
        e.check("user:a", "owner", "doc:1", contextual_tuples="doc:1#owner@user:a")


def test_tuples_a_newer_model_forbids_are_ignored() -> None:
    old = parse_model(
        "model\n  schema 1.1\ntype user\ntype doc\n  relations\n"
        "    define viewer: [user, user:*]\n    define editor: [user]\n"
    )
    new = parse_model(
        "model\n  schema 1.1\ntype user\ntype doc\n  relations\n"
        "    define viewer: [user] or editor\n    define editor: [user]\n"
    )
    src = MemoryTupleSource(["doc:1#viewer@user:*", "doc:1#viewer@user:anne",
                             "doc:1#gone@user:bob", "robot:1#viewer@user:anne"])  # fmt: skip
    before, after = Engine(old, src), Engine(new, src)
    assert before.check("user:zed", "viewer", "doc:1")
    assert not after.check("user:zed", "viewer", "doc:1")  # wildcard no longer allowed
    assert after.check("user:anne", "viewer", "doc:1")
    assert after.list_users("doc:1", "viewer", ["user"]).users == ("user:anne",)
    assert after.list_objects("user:zed", "viewer", "doc") == []
    assert after.expand("viewer", "doc:1")["union"]["nodes"][0]["leaf"]["users"] == ["user:anne"]
    # a relation that became computed: its stored tuples no longer count
    newer = parse_model(
        "model\n  schema 1.1\ntype user\ntype doc\n  relations\n"
        "    define viewer: editor\n    define editor: [user]\n"
    )
    assert not Engine(newer, src).check("user:anne", "viewer", "doc:1")


def test_expand_tree_shape() -> None:
    e = engine("doc:1#viewer@user:anne", "doc:1#viewer@group:eng#member", "doc:1#viewer@user:*",
               "doc:1#parent@folder:f", "doc:1#blocked@user:bob")  # fmt: skip
    assert e.expand("viewer", "doc:1") == {
        "name": "doc:1#viewer",
        "union": {
            "nodes": [
                {"name": "doc:1#viewer",
                 "leaf": {"users": ["group:eng#member", "user:*", "user:anne"]}},
                {"name": "doc:1#viewer", "leaf": {"computed": {"userset": "doc:1#editor"}}},
                {"name": "doc:1#viewer", "leaf": {"tuple_to_userset": {
                    "tupleset": "doc:1#parent", "computed": ["folder:f#viewer"]}}},
            ]
        },
    }  # fmt: skip
    assert e.expand("can_read", "doc:1") == {
        "name": "doc:1#can_read",
        "difference": {
            "base": {"name": "doc:1#can_read", "leaf": {"computed": {"userset": "doc:1#viewer"}}},
            "subtract": {"name": "doc:1#can_read",
                         "leaf": {"computed": {"userset": "doc:1#blocked"}}},
        },
    }  # fmt: skip
    assert "intersection" in e.expand("both", "doc:1")


def test_batch_check_in_order_with_mappings() -> None:
    e = engine("doc:1#viewer@user:anne", "doc:2#owner@user:bob")
    got = e.batch_check(
        [
            ("user:anne", "viewer", "doc:1"),
            {"user": "user:bob", "relation": "viewer", "object": "doc:2"},
            ("user:anne", "viewer", "doc:2"),
            ("user:bob", "viewer", "doc:1"),
        ]
    )
    assert got == [True, True, False, False]
    assert e.batch_check([]) == []


def test_list_objects_and_list_users_sorted() -> None:
    e = engine(*[f"doc:{i}#viewer@user:anne" for i in (3, 1, 2)], "doc:1#viewer@user:bob")
    assert e.list_objects("user:anne", "viewer", "doc") == ["doc:1", "doc:2", "doc:3"]
    assert e.list_users("doc:1", "viewer", ["user"]).users == ("user:anne", "user:bob")


def test_source_protocol_is_runtime_checkable() -> None:
    assert isinstance(MemoryTupleSource(), TupleSource)


def test_memory_source_add_remove_iterate() -> None:
    src = MemoryTupleSource()
    assert src.add("doc:1#viewer@group:eng#member") and not src.add(
        ("doc:1", "viewer", "group:eng#member")
    )
    assert src.add("doc:1#viewer@user:*") and len(src) == 2
    assert (
        TupleKey("doc:1", "viewer", "group:eng#member") in src and "doc:9#viewer@user:x" not in src
    )
    assert 42 not in src
    assert sorted(map(str, src)) == ["doc:1#viewer@group:eng#member", "doc:1#viewer@user:*"]
    assert src.reverse("viewer", "doc", "group#member", {"group:eng"}) == {"doc:1"}
    assert src.remove("doc:1#viewer@group:eng#member") and not src.remove(
        "doc:1#viewer@group:eng#member"
    )
    assert src.remove("doc:1#viewer@user:*") and len(src) == 0
    assert (
        src.read("doc:1", "viewer", ()) == {}
        and src.reverse("viewer", "doc", "user:*", {"user:*"}) == set()
    )
    with pytest.raises(InvalidTuple):
        src.add("bad")


SOURCE_OPS = st.lists(
    st.tuples(
        st.booleans(),  # add (True) or remove
        st.sampled_from(["doc:1", "doc:2", "folder:f"]),
        st.sampled_from(["viewer", "editor", "owner"]),
        st.sampled_from(["user:a", "user:b", "user:*", "group:g#member", "group:h#member"]),
    ),
    max_size=40,
)


def _by_subject(tuples: set[tuple[str, str, str]], obj: str) -> dict[str, dict[str, set[str]]]:
    """The brute-force ``read_subjects(obj)``."""
    out: dict[str, dict[str, set[str]]] = {}
    for o, r, u in tuples:
        if o == obj:
            head, hash_, urel = u.partition("#")
            t, _, oid = head.partition(":")
            kind = f"{t}#{urel}" if hash_ else f"{t}:*" if oid == "*" else t
            out.setdefault(kind, {}).setdefault(head, set()).add(r)
    return out


@settings(max_examples=150, deadline=None)
@given(ops=SOURCE_OPS)
def test_memory_source_indexes_agree_after_adds_and_removes(
    ops: list[tuple[bool, str, str, str]],
) -> None:
    src = MemoryTupleSource()
    model: set[tuple[str, str, str]] = set()
    for add, o, r, u in ops:
        if add:
            assert src.add((o, r, u)) == ((o, r, u) not in model)
            model.add((o, r, u))
        else:
            assert src.remove((o, r, u)) == ((o, r, u) in model)
            model.discard((o, r, u))
    assert len(src) == len(model) and {(t.object, t.relation, t.user) for t in src} == model
    interned: dict[frozenset[str], frozenset[str]] = {}
    for obj in ("doc:1", "doc:2", "folder:f"):
        got = src.read_subjects(obj)
        assert {k: {s: set(rs) for s, rs in v.items()} for k, v in got.items()} == _by_subject(
            model, obj
        )
        for by_subject in got.values():
            assert by_subject  # no empty entries are kept
            for rs in by_subject.values():
                assert isinstance(rs, frozenset) and interned.setdefault(rs, rs) is rs
    for o, r, u in sorted(model):
        src.remove_trusted(o, r, u)
    assert len(src) == 0 and all(not src.read_subjects(o) for o in ("doc:1", "doc:2", "folder:f"))


def test_read_subjects_of_the_overlay_and_of_computed_relations() -> None:
    base = MemoryTupleSource(["doc:1#viewer@user:a", "doc:1#editor@user:a",
                              "doc:1#viewer@group:g#member", "file:/a/b#parent@folder:/x",
                              "file:/a/b#viewer@user:a"])  # fmt: skip
    extra = MemoryTupleSource(["doc:1#owner@user:a", "doc:1#viewer@user:b"])
    over = OverlaySource(base, extra)
    assert over.read_subjects("doc:1") == {
        "user": {"user:a": {"viewer", "editor", "owner"}, "user:b": {"viewer"}},
        "group#member": {"group:g": {"viewer"}},
    }
    assert over.read_subjects("doc:2") == {} and over.read_subjects("file:/a/b") == {
        "user": {"user:a": {"viewer"}},
        "folder": {"folder:/x": {"parent"}},
    }
    # Base's own result is left as it was.
    assert base.read_subjects("doc:1")["user"]["user:a"] == {"viewer", "editor"}
    h = PathHierarchy()
    routed = ComputedSource(base, {("file", "parent"): h, ("folder", "parent"): h})
    # The stored parent tuple is not read; the computed parent is.
    assert routed.read_subjects("file:/a/b") == {
        "user": {"user:a": {"viewer"}},
        "folder": {"folder:/a": {"parent"}},
    }
    assert routed.read_subjects("doc:1") == base.read_subjects("doc:1")
    assert routed.read_subjects("folder:/") == {}


# -------------------------------------------------------------- request errors


@pytest.mark.parametrize(
    ("call", "words"),
    [
        (lambda e: e.check("user:anne", "viewer", "robot:1"), "type 'robot' is not in the model"),
        (lambda e: e.check("user:anne", "nope", "doc:1"), "type 'doc' has no relation 'nope'"),
        (lambda e: e.check("robot:1", "viewer", "doc:1"), "type 'robot' is not in the model"),
        (lambda e: e.check("group:eng#nope", "viewer", "doc:1"), "has no relation 'nope'"),
        (lambda e: e.check("anne", "viewer", "doc:1"), "is not of the form"),
        (lambda e: e.check("user:anne", "viewer", "doc"), "is not of the form 'type:id'"),
        (lambda e: e.check("user:anne", "viewer", "doc:*"), "names users, not objects"),
        (lambda e: e.list_objects("user:anne", "viewer", "robot"), "type 'robot' is not in"),
        (lambda e: e.list_users("doc:1", "viewer", []), "non-empty list"),
        (lambda e: e.list_users("doc:1", "viewer", "user"), "non-empty list"),
        (lambda e: e.list_users("doc:1", "viewer", ["robot"]), "type 'robot' is not in"),
        (lambda e: e.list_users("doc:1", "viewer", ["group#nope"]), "has no relation 'nope'"),
        (lambda e: e.list_users("doc:1", "viewer", [3]), "must be a string"),
        (lambda e: e.expand("nope", "doc:1"), "has no relation 'nope'"),
        (lambda e: e.batch_check([("user:a", "viewer")]), "batch_check items are"),
        (lambda e: e.batch_check([{"user": "user:a"}]), "lacks"),
    ],
)
def test_bad_requests(call: object, words: str) -> None:
    e = engine()
    with pytest.raises(InvalidRequest) as ei:
        call(e)  # type: ignore[operator]
    assert words in str(ei.value)
    assert isinstance(ei.value, NexusError) and isinstance(ei.value, ValueError)


def test_bad_engine_arguments() -> None:
    with pytest.raises(InvalidRequest, match="max_depth"):
        Engine(MODEL, MemoryTupleSource(), max_depth=0)
    with pytest.raises(InvalidRequest, match="max_depth"):
        Engine(MODEL, MemoryTupleSource(), max_depth=True)
    with pytest.raises(InvalidRequest, match="AuthorizationModel"):
        Engine("model", MemoryTupleSource())  # type: ignore[arg-type]
