"""The typed model: JSON form, model_id, construction in code, and tuple parsing and
validation against type restrictions."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import nexusfs_rebac
from nexusfs.errors import NexusError
from nexusfs_rebac import (
    AuthorizationModel,
    ComputedUserset,
    Direct,
    InvalidRequest,
    InvalidTuple,
    ModelError,
    RelationDef,
    Restriction,
    TupleKey,
    TypeDef,
    default_model,
    parse_model,
    parse_object,
    parse_user,
    validate_tuple,
)

TEXT = """model
  schema 1.1
type user
type group
  relations
    define member: [user, user:*, group#member]
type doc
  relations
    define parent: [doc]
    define owner: [user]
    define viewer: [user, group#member] or owner or viewer from parent
    define blocked: [user]
    define can_read: viewer but not blocked
    define both: viewer and owner
"""


def test_json_is_openfga_shaped_and_round_trips() -> None:
    m = parse_model(TEXT)
    doc = m.to_json()
    json.dumps(doc)  # JSON-serialisable
    assert doc["schema_version"] == "1.1"
    tds = {td["type"]: td for td in doc["type_definitions"]}
    assert tds["user"] == {"type": "user", "relations": {}, "metadata": None}
    assert tds["doc"]["relations"]["viewer"] == {
        "union": {
            "child": [
                {"this": {}},
                {"computedUserset": {"relation": "owner"}},
                {
                    "tupleToUserset": {
                        "tupleset": {"relation": "parent"},
                        "computedUserset": {"relation": "viewer"},
                    }
                },
            ]
        }
    }
    assert tds["doc"]["relations"]["can_read"] == {
        "difference": {
            "base": {"computedUserset": {"relation": "viewer"}},
            "subtract": {"computedUserset": {"relation": "blocked"}},
        }
    }
    assert tds["group"]["metadata"]["relations"]["member"]["directly_related_user_types"] == [
        {"type": "user"},
        {"type": "user", "wildcard": {}},
        {"type": "group", "relation": "member"},
    ]
    assert AuthorizationModel.from_json(doc) == m
    assert AuthorizationModel.from_json(json.dumps(doc)) == m


def test_model_id_is_a_stable_content_hash() -> None:
    m = parse_model(TEXT)
    assert len(m.model_id) == 32 and int(m.model_id, 16) >= 0
    assert parse_model(TEXT).model_id == m.model_id
    # declaration order of types does not change the id
    lines = TEXT.splitlines(keepends=True)
    reordered = "".join(lines[:2] + lines[6:] + lines[2:6])
    assert parse_model(reordered).model_id == m.model_id
    # any semantic change does
    assert parse_model(TEXT.replace("[user, user:*,", "[user,")).model_id != m.model_id
    # the same in another process (no per-process hash seed)
    pkg_root = str(Path(nexusfs_rebac.__file__).resolve().parent.parent)
    code = (
        f"import sys; sys.path.insert(0, {pkg_root!r});"
        "from nexusfs_rebac import parse_model;"
        f"print(parse_model({TEXT!r}).model_id)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == m.model_id


def test_model_equality_and_hash_follow_the_id() -> None:
    a, b = parse_model(TEXT), parse_model(TEXT)
    assert a == b and hash(a) == hash(b) and a != "not a model"
    assert "AuthorizationModel(model_id=" in repr(a)


def test_build_in_code_and_validation_without_positions() -> None:
    m = AuthorizationModel(
        [
            TypeDef("user"),
            TypeDef("doc", (RelationDef("viewer", Direct((Restriction("user"),))),)),
        ]
    )
    assert m.relation("doc", "viewer") is not None and m.type("nope") is None
    with pytest.raises(ModelError) as ei:
        AuthorizationModel([TypeDef("doc", (RelationDef("a", ComputedUserset("b")),))])
    assert ei.value.line is None and "relation 'b' is not defined on type 'doc'" in str(ei.value)


def test_unsupported_schema_version_in_code() -> None:
    with pytest.raises(ModelError, match=r"schema version '1\.0' is not supported"):
        AuthorizationModel([TypeDef("user")], schema_version="1.0")


def test_invalid_type_name_in_code() -> None:
    with pytest.raises(ModelError, match="type name 'bad name' is not valid"):
        AuthorizationModel([TypeDef("bad name")])


def test_non_typedef_in_code() -> None:
    with pytest.raises(ModelError, match="must be TypeDef"):
        AuthorizationModel(["user"])  # type: ignore[list-item]


def test_union_with_one_operand_in_code() -> None:
    from nexusfs_rebac import Union

    with pytest.raises(ModelError, match="needs at least two operands"):
        AuthorizationModel(
            [
                TypeDef("user"),
                TypeDef("d", (RelationDef("a", Union((Direct((Restriction("user"),)),))),)),
            ]
        )


@pytest.mark.parametrize(
    ("doc", "words"),
    [
        ("[1, 2]", "must be an object"),
        ('{"type_definitions": []}', "'schema_version'"),
        ('{"schema_version": "1.1", "type_definitions": {}}', "must be a list"),
        ('{"schema_version": "1.1", "type_definitions": [{}]}', "missing 'type'"),
        ("not json", "does not parse"),
        (
            '{"schema_version": "1.1", "type_definitions": [{"type": "d", "relations": '
            '{"a": {"nope": {}}}}]}',
            "unknown rewrite 'nope'",
        ),
        (
            '{"schema_version": "1.1", "type_definitions": [{"type": "d", "relations": '
            '{"a": {"this": {}, "union": {}}}}]}',
            "exactly one of",
        ),
        (
            '{"schema_version": "1.1", "type_definitions": [{"type": "user"}, {"type": "d", '
            '"relations": {"a": {"this": {}}}, "metadata": {"relations": {"a": '
            '{"directly_related_user_types": [{"type": "user", "condition": "c"}]}}}}]}',
            "conditions are not supported",
        ),
        (
            '{"schema_version": "1.1", "type_definitions": [{"type": "user"}, {"type": "d", '
            '"relations": {"a": {"this": {}}}, "metadata": {"relations": {"a": '
            '{"directly_related_user_types": [{"type": "user", "relation": "x", '
            '"wildcard": {}}]}}}}]}',
            "a wildcard or a userset, not both",
        ),
    ],
)
def test_bad_json_models(doc: str, words: str) -> None:
    with pytest.raises(ModelError, match=None) as ei:
        AuthorizationModel.from_json(doc)
    assert words in str(ei.value)


def test_default_model_ships_and_parses() -> None:
    m = default_model()
    for t in ("folder", "file"):
        for r in ("parent", "viewer", "editor", "owner", "read", "write"):
            assert m.relation(t, r) is not None, (t, r)
    assert m.relation("folder", "list") is not None
    assert default_model() is m  # parsed once


# ------------------------------------------------------------------------ tuples


def test_tuple_string_forms() -> None:
    t = TupleKey.parse("document:1#viewer@group:eng#member")
    assert t == TupleKey("document:1", "viewer", "group:eng#member")
    assert str(t) == "document:1#viewer@group:eng#member"
    # user ids may contain '@' and ':'; object ids '/', ':' and spaces
    t2 = TupleKey.parse("file:/a b/c:d.txt#viewer@user:anne@example.com")
    assert (t2.object, t2.user) == ("file:/a b/c:d.txt", "user:anne@example.com")
    assert TupleKey.coerce(("doc:1", "viewer", "user:*")) == TupleKey("doc:1", "viewer", "user:*")
    assert TupleKey.coerce(["doc:1", "viewer", "user:a"]).user == "user:a"
    assert TupleKey.coerce(t) is t


def test_parse_user_kinds_and_subjects() -> None:
    u = parse_user("user:anne")
    assert (u.kind, u.subject, u.relation, u.wildcard) == ("user", "user:anne", None, False)
    w = parse_user("user:*")
    assert (w.kind, w.subject, w.wildcard) == ("user:*", "user:*", True)
    s = parse_user("group:eng#member")
    assert (s.kind, s.subject, s.relation) == ("group#member", "group:eng", "member")
    assert parse_object("file:/a:b") == ("file", "/a:b")


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("document:1viewer@user:anne", "not of the form"),
        ("document:1#viewer", "not of the form"),
        ("document#viewer@user:anne", "not of the form 'type:id'"),
        ("document:#viewer@user:anne", "the id after ':' is empty"),
        ("document:1#bad rel@user:anne", "not a valid relation name"),
        ("document:1#viewer@anne", "not of the form 'type:id'"),
        ("document:1#viewer@user:*#member", "a wildcard cannot have a relation"),
        ("document:*#viewer@user:anne", "the wildcard '*' names users, not objects"),
        ("document:1#viewer@user:a\x00b", "may not contain"),
        ("9doc:1#viewer@user:anne", "not a valid type name"),
        ("document:1#viewer@group:eng#", "not a valid relation name"),
    ],
)
def test_malformed_tuples(text: str, words: str) -> None:
    with pytest.raises(InvalidTuple) as ei:
        TupleKey.parse(text)
    assert words in str(ei.value)
    assert isinstance(ei.value, NexusError) and isinstance(ei.value, ValueError)
    assert ei.value.code == "rebac_invalid_tuple"


def test_malformed_tuple_values() -> None:
    bad: list[Any] = [42, ("doc:1", "viewer"), None]
    for value in bad:
        with pytest.raises(InvalidTuple):
            TupleKey.coerce(value)
    with pytest.raises(InvalidTuple, match="must be a string"):
        TupleKey.parse(7)  # type: ignore[arg-type]


def test_malformed_objects_and_users_are_invalid_requests() -> None:
    bad: list[Any] = ["doc", 3, None, "doc:"]
    for value in bad:
        with pytest.raises(InvalidRequest):
            parse_object(value)
    bad_users: list[Any] = ["user", 3, None, "user:"]
    for value in bad_users:
        with pytest.raises(InvalidRequest):
            parse_user(value)
    with pytest.raises(InvalidRequest, match="longer than"):
        parse_object("doc:" + "x" * 9000)


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("robot:1#viewer@user:anne", "type 'robot' is not in the model"),
        ("doc:1#editor@user:anne", "type 'doc' has no relation 'editor'"),
        ("doc:1#can_read@user:anne", "computed from other relations"),
        ("doc:1#viewer@user:*", "allows users of kind group#member, user, not 'user:*'"),
        ("doc:1#viewer@group:eng", "not 'group'"),
        ("doc:1#parent@doc:2#viewer", "not 'doc#viewer'"),
        ("group:eng#member@doc:1", "not 'doc'"),
    ],
)
def test_tuples_not_allowed_by_the_model(text: str, words: str) -> None:
    m = parse_model(TEXT)
    with pytest.raises(InvalidTuple) as ei:
        validate_tuple(m, TupleKey.parse(text))
    assert words in str(ei.value)


def test_tuples_allowed_by_the_model() -> None:
    m = parse_model(TEXT)
    for text in (
        "doc:1#viewer@user:anne",
        "doc:1#viewer@group:eng#member",
        "group:eng#member@user:*",
        "group:eng#member@group:ops#member",
        "doc:1#parent@doc:2",
    ):
        validate_tuple(m, TupleKey.parse(text))
