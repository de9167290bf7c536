"""The modeling-language parser: every construct, and one test per error with its
line and column."""

from __future__ import annotations

from pathlib import Path

import pytest

from nexusfs.errors import NexusError
from nexusfs_rebac import (
    ComputedUserset,
    Direct,
    Exclusion,
    Intersection,
    ModelError,
    Restriction,
    TupleToUserset,
    Union,
    load_model,
    parse_model,
)

HEAD = "model\n  schema 1.1\n"


def err(text: str) -> ModelError:
    with pytest.raises(ModelError) as ei:
        parse_model(text)
    return ei.value


def at(text: str, line: int, column: int, words: str) -> None:
    e = err(text)
    assert (e.line, e.column) == (line, column), str(e)
    assert words in e.reason, str(e)
    assert str(e).startswith(f"line {line}, column {column}: ")


# ------------------------------------------------------------------------ valid


def test_parses_every_construct() -> None:
    m = parse_model(
        HEAD
        + """
# a full-line comment
type user

type group
  relations
    define member: [user, user:*, group#member]   # a trailing comment

type doc
  relations
    define parent: [doc]
    define owner: [user]
    define editor: [user] or owner
    define viewer: [user, group#member] or editor or viewer from parent
    define allowed: [user]
    define both: viewer and allowed
    define blocked: [user]
    define can_read: viewer but not blocked
    define grouped: (viewer or owner) and (allowed but not blocked)
    define chained: viewer but not blocked but not owner
"""
    )
    assert [t.name for t in m.types] == ["user", "group", "doc"]
    member = m.relation("group", "member")
    assert member is not None
    assert member.rewrite == Direct(
        (Restriction("user"), Restriction("user", wildcard=True), Restriction("group", "member"))
    )
    viewer = m.relation("doc", "viewer")
    assert viewer is not None and isinstance(viewer.rewrite, Union)
    assert viewer.rewrite.children[1:] == (
        ComputedUserset("editor"),
        TupleToUserset("parent", "viewer"),
    )
    both = m.relation("doc", "both")
    assert both is not None and isinstance(both.rewrite, Intersection)
    can_read = m.relation("doc", "can_read")
    assert can_read is not None
    assert can_read.rewrite == Exclusion(ComputedUserset("viewer"), ComputedUserset("blocked"))
    grouped = m.relation("doc", "grouped")
    assert grouped is not None and isinstance(grouped.rewrite, Intersection)
    assert isinstance(grouped.rewrite.children[0], Union)
    assert isinstance(grouped.rewrite.children[1], Exclusion)
    chained = m.relation("doc", "chained")
    assert chained is not None
    # 'but not' chains to the left: (viewer but not blocked) but not owner
    assert chained.rewrite == Exclusion(
        Exclusion(ComputedUserset("viewer"), ComputedUserset("blocked")), ComputedUserset("owner")
    )


def test_layout_variants_crlf_wide_indent_multiline_and_blank_lines() -> None:
    text = (
        "# header comment\r\nmodel\r\n    schema 1.1\r\n\r\ntype user\r\n\r\n"
        "type doc\r\n    relations\r\n\r\n        define viewer: [user,\r\n"
        "                        user:*] or (owner\r\n            or editor)\r\n"
        "        define owner: [user]\r\n        define editor: [user]\r\n"
    )
    m = parse_model(text)
    viewer = m.relation("doc", "viewer")
    assert viewer is not None
    assert viewer.rewrite == Union(
        (
            Direct((Restriction("user"), Restriction("user", wildcard=True))),
            Union((ComputedUserset("owner"), ComputedUserset("editor"))),
        )
    )
    # positions point into the source
    assert viewer.pos is not None and (viewer.pos.line, viewer.pos.column) == (10, 16)


def test_type_without_relations_and_model_without_types() -> None:
    assert [t.name for t in parse_model(HEAD + "type user\ntype robot\n").types] == [
        "user",
        "robot",
    ]
    assert parse_model(HEAD).types == ()


def test_round_trip_through_to_dsl() -> None:
    m = parse_model(
        HEAD + "type user\ntype doc\n  relations\n    define a: [user]\n"
        "    define b: (a or [user:*]) but not (a and c)\n    define c: [user, doc#a]\n"
    )
    assert parse_model(m.to_dsl()) == m


def test_load_model_names_the_file(tmp_path: Path) -> None:
    good = tmp_path / "good.fga"
    good.write_text(HEAD + "type user\n")
    assert load_model(good).type("user") is not None
    bad = tmp_path / "bad.fga"
    bad.write_text(HEAD + "type user\n  relations\n    define a: [usr]\n")
    with pytest.raises(ModelError) as ei:
        load_model(bad)
    assert ei.value.path == str(bad) and ei.value.line == 5
    assert str(bad) in str(ei.value)


def test_model_error_is_a_typed_value_error_with_a_wire_code() -> None:
    e = err("nonsense")
    assert isinstance(e, NexusError) and isinstance(e, ValueError)
    assert e.code == "rebac_invalid_model"


def test_non_text_input() -> None:
    with pytest.raises(ModelError, match="must be text"):
        parse_model(b"model")  # type: ignore[arg-type]


# ----------------------------------------------------------- header and layout


def test_empty_model() -> None:
    assert "empty" in err("  \n# only a comment\n").reason


def test_missing_model_header() -> None:
    at("type user\n", 1, 1, "must start with a line 'model'")


def test_model_indented() -> None:
    at("  model\n    schema 1.1\n", 1, 3, "'model' must start at column 1")


def test_missing_schema_line() -> None:
    at("model\n", 2, 1, "expected 'schema 1.1'")


def test_schema_line_is_something_else() -> None:
    at("model\n  type user\n", 2, 3, "expected 'schema 1.1' after 'model'")


def test_schema_not_indented() -> None:
    at("model\nschema 1.1\n", 2, 1, "indent 'schema 1.1' under 'model'")


def test_unsupported_schema_version() -> None:
    at("model\n  schema 1.0\n", 2, 10, "schema 1.0 is not supported")


def test_schema_without_version() -> None:
    at("model\n  schema\n", 2, 3, "expected a version")


def test_tab_indentation() -> None:
    at("model\n\tschema 1.1\n", 2, 1, "tab in indentation")


def test_type_indented() -> None:
    at(HEAD + "  type user\n", 3, 3, "'type' must start at column 1")


def test_type_without_name() -> None:
    at(HEAD + "type\n", 3, 5, "expected a type name")


def test_text_after_type_name() -> None:
    at(HEAD + "type user extra\n", 3, 11, "unexpected 'extra' after the type name")


def test_relations_before_any_type() -> None:
    at(HEAD + "  relations\n", 3, 3, "'relations' must follow a 'type' line")


def test_relations_not_indented() -> None:
    at(HEAD + "type doc\nrelations\n", 4, 1, "indent 'relations' under 'type doc'")


def test_relations_twice() -> None:
    text = HEAD + "type user\ntype doc\n  relations\n    define a: [user]\n  relations\n"
    at(text, 7, 3, "already has a 'relations' block")


def test_text_after_relations() -> None:
    at(HEAD + "type doc\n  relations now\n", 4, 13, "unexpected 'now' after 'relations'")


def test_empty_relations_block() -> None:
    at(
        HEAD + "type doc\n  relations\ntype user\n",
        4,
        3,
        "'relations' block of type 'doc' is empty",
    )


def test_define_outside_relations() -> None:
    at(HEAD + "type doc\n    define a: [doc]\n", 4, 5, "must be inside a 'relations' block")


def test_define_not_deeper_than_relations() -> None:
    at(HEAD + "type doc\n  relations\n  define a: [doc]\n", 5, 3, "indent 'define' deeper")


def test_inconsistent_define_indentation() -> None:
    text = HEAD + "type doc\n  relations\n    define a: [doc]\n      define b: [doc]\n"
    at(text, 6, 7, "indented 6 spaces but the ones before it 4")


def test_unknown_statement_at_column_one() -> None:
    at(HEAD + "types user\n", 3, 1, "expected 'type' at the start of a line, found 'types'")


def test_unknown_indented_statement() -> None:
    at(HEAD + "type doc\n  relation\n", 4, 3, "expected 'relations' or 'define'")


# ------------------------------------------------------------------ definitions

DOC = HEAD + "type user\ntype doc\n  relations\n"  # defines start on line 6


def test_define_without_name() -> None:
    at(DOC + "    define : [user]\n", 6, 12, "expected a relation name after 'define'")


def test_define_without_colon() -> None:
    at(DOC + "    define viewer [user]\n", 6, 19, "expected ':' after 'define viewer'")


def test_define_without_expression() -> None:
    at(DOC + "    define viewer:\n", 6, 19, "expected an expression")


def test_unexpected_character() -> None:
    at(DOC + "    define viewer: [user] & owner\n", 6, 27, "unexpected character '&'")


def test_mixing_operators_needs_parentheses() -> None:
    text = DOC + "    define a: [user]\n    define b: [user]\n    define c: a or b and a\n"
    at(text, 8, 22, "cannot mix 'or' and 'and' without parentheses")


def test_mixing_but_not_and_or() -> None:
    text = DOC + "    define a: [user]\n    define b: [user]\n    define c: a but not b or a\n"
    at(text, 8, 27, "cannot mix 'but not' and 'or'")


def test_but_without_not() -> None:
    text = DOC + "    define a: [user]\n    define c: a but a\n"
    at(text, 7, 21, "expected 'not' after 'but'")


def test_unclosed_parenthesis() -> None:
    text = DOC + "    define a: [user]\n    define c: (a or a\n    define d: [user]\n"
    at(text, 7, 22, "expected ')' to close the '(' at line 7, column 15")


def test_unclosed_bracket() -> None:
    text = DOC + "    define a: [user, user:*\n    define b: [user]\n"
    at(text, 6, 28, "the '[' at line 6, column 15 is never closed")


def test_bad_separator_in_type_list() -> None:
    at(DOC + "    define a: [user user:*]\n", 6, 21, "expected ',' or ']' in the type list")


def test_empty_type_list() -> None:
    at(DOC + "    define a: []\n", 6, 15, "empty type list")


def test_bad_wildcard() -> None:
    at(DOC + "    define a: [user:anne]\n", 6, 21, "expected '*' after ':'")


def test_userset_without_relation() -> None:
    at(DOC + "    define a: [doc#]\n", 6, 20, "expected a relation name after 'doc#'")


def test_condition_in_type_list_not_supported() -> None:
    at(
        DOC + "    define a: [user with in_office]\n",
        6,
        21,
        "conditions ('with ...') are not supported",
    )


def test_condition_block_not_supported() -> None:
    at(
        DOC + "    define a: [user]\ncondition in_office(x: int) {\n",
        7,
        1,
        "'condition ...') are not supported",
    )


def test_modules_not_supported() -> None:
    at("module core\n", 1, 1, "modular models ('module') are not supported")
    at(HEAD + "extend type doc\n", 3, 1, "modular models ('extend') are not supported")


def test_keyword_where_an_operand_belongs() -> None:
    at(DOC + "    define a: or [user]\n", 6, 15, "expected a relation name, '[' or '(', found 'or'")


def test_expression_ends_early() -> None:
    at(DOC + "    define a: [user] or\n", 6, 24, "expected a relation name, '[' or '(' here")


def test_text_after_expression() -> None:
    at(DOC + "    define a: [user] b\n", 6, 22, "unexpected 'b' after the end of the expression")


def test_from_without_tupleset() -> None:
    at(
        DOC + "    define a: [user]\n    define b: a from\n",
        7,
        21,
        "expected a relation name after 'from'",
    )


def test_from_after_a_parenthesis_is_not_allowed() -> None:
    text = DOC + "    define p: [doc]\n    define a: [user]\n    define b: (a) from p\n"
    at(text, 8, 19, "unexpected 'from' after the end of the expression")


# --------------------------------------------------------------------- semantics


def test_unknown_type_in_type_list_suggests_a_name() -> None:
    e = err(DOC + "    define a: [usr]\n")
    assert (e.line, e.column) == (6, 16)
    assert "type 'usr' is not defined" in e.reason and "did you mean 'user'" in e.reason


def test_unknown_relation_in_userset_restriction() -> None:
    at(
        DOC + "    define a: [user, doc#viewr]\n",
        6,
        22,
        "relation 'viewr' is not defined on type 'doc'",
    )


def test_unknown_computed_relation() -> None:
    at(
        DOC + "    define owner: [user]\n    define a: [user] or ownr\n",
        7,
        25,
        "did you mean 'owner'",
    )


def test_unknown_tupleset_relation() -> None:
    at(DOC + "    define a: [user] or a from parent\n", 6, 32, "relation 'parent' is not defined")


def test_tupleset_must_be_direct_only() -> None:
    text = DOC + "    define owner: [user]\n    define parent: [doc] or owner\n" \
        "    define a: [user] or a from parent\n"  # fmt: skip
    at(text, 8, 32, "must be directly assignable and nothing else")


def test_tupleset_must_allow_concrete_types_only() -> None:
    text = (
        DOC
        + "    define parent: [doc, doc#parent, user:*]\n    define a: [user] or a from parent\n"
    )
    at(text, 7, 32, "may only allow concrete types, not 'doc#parent', 'user:*'")


def test_from_relation_missing_on_every_target_type() -> None:
    text = DOC + "    define parent: [user]\n    define a: [user] or a from parent\n"
    at(text, 7, 25, "relation 'a' is not defined on any type that 'parent' can point at (user)")


def test_duplicate_type() -> None:
    at(HEAD + "type user\ntype doc\ntype user\n", 5, 6, "type 'user' is defined twice")


def test_duplicate_relation() -> None:
    at(DOC + "    define a: [user]\n    define a: [user]\n", 7, 12, "relation 'a' is defined twice")


def test_duplicate_type_restriction() -> None:
    at(DOC + "    define a: [user, user]\n", 6, 22, "type restriction 'user' is listed twice")


def test_direct_types_listed_twice() -> None:
    at(DOC + "    define a: [user] or [user:*]\n", 6, 25, "lists direct types more than once")


def test_relation_without_entrypoint() -> None:
    at(DOC + "    define a: b\n    define b: a\n", 6, 12, "can never have any member")


def test_userset_loop_without_entrypoint() -> None:
    at(HEAD + "type group\n  relations\n    define member: [group#member]\n", 5, 12,
       "can never have any member")  # fmt: skip


def test_intersection_with_an_impossible_side_has_no_entrypoint() -> None:
    text = DOC + "    define a: [user]\n    define b: a and c\n    define c: b\n"
    at(text, 7, 12, "can never have any member")


def test_reserved_names() -> None:
    at(HEAD + "type this\n", 3, 6, "'this' is a reserved word")
    at(DOC + "    define from: [user]\n", 6, 12, "'from' is a reserved word")


def test_name_too_long() -> None:
    at(DOC + f"    define {'r' * 51}: [user]\n", 6, 12, "too long (51 > 50 characters)")
