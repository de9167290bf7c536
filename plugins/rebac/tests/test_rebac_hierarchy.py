"""The default file model over the computed ``parent`` relation: permissions inherited
along the path hierarchy without any stored parent tuple."""

from __future__ import annotations

from collections.abc import Iterable

import pytest

from nexusfs_rebac import (
    Engine,
    InvalidRequest,
    InvalidTuple,
    MemoryTupleSource,
    ModelError,
    PathHierarchy,
    PathTree,
    ResolutionTooComplex,
    decode_id,
    default_model,
    encode_id,
    parse_model,
    path_object,
)
from nexusfs_rebac.source import ComputedRelation

PATHS = ["/a/b/c.txt", "/a/b/d.txt", "/a/e.txt", "/x/y/z.txt", "/a/b/deep/er/f.txt"]


def setup(*tuples: str, paths: Iterable[str] = PATHS) -> tuple[Engine, PathTree]:
    tree = PathTree()
    for p in paths:
        tree.add_file(p)
    src = MemoryTupleSource(tuples)
    return Engine(default_model(), src, computed=tree.hierarchy().computed_relations()), tree


def test_parent_is_computed_from_the_path() -> None:
    h = PathHierarchy()
    assert h.parent_of("file:/a/b/c.txt") == "folder:/a/b"
    assert h.parent_of("folder:/a") == "folder:/"
    assert h.parent_of("folder:/") is None
    assert h.parent_of("file:relative") is None
    e, _ = setup()
    assert e.check("folder:/a/b", "parent", "file:/a/b/c.txt")
    assert not e.check("folder:/a", "parent", "file:/a/b/c.txt")
    assert e.expand("parent", "file:/a/b/c.txt")["leaf"]["users"] == ["folder:/a/b"]
    assert e.list_users("file:/a/b/c.txt", "parent", ["folder"]).users == ("folder:/a/b",)
    assert e.list_objects("folder:/a/b", "parent", "file") == [
        "file:/a/b/c.txt", "file:/a/b/d.txt"]  # fmt: skip


def test_grants_are_inherited_down_the_tree() -> None:
    e, _ = setup("folder:/a#viewer@user:anne", "folder:/a/b#editor@user:bob",
                 "folder:/#owner@user:root")  # fmt: skip
    assert e.check("user:anne", "read", "file:/a/b/c.txt")
    assert e.check("user:anne", "read", "file:/a/b/deep/er/f.txt")
    assert e.check("user:anne", "list", "folder:/a/b")
    assert not e.check("user:anne", "write", "file:/a/b/c.txt")
    assert not e.check("user:anne", "read", "file:/x/y/z.txt")
    assert e.check("user:bob", "write", "file:/a/b/d.txt") and e.check(
        "user:bob", "read", "file:/a/b/c.txt"
    )
    assert not e.check("user:bob", "write", "file:/a/e.txt")
    assert e.check("user:root", "write", "file:/x/y/z.txt")
    readable = ["file:/a/b/c.txt", "file:/a/b/d.txt", "file:/a/b/deep/er/f.txt", "file:/a/e.txt"]
    assert e.list_objects("user:anne", "read", "file") == readable
    assert e.list_objects("user:bob", "write", "folder") == [
        "folder:/a/b", "folder:/a/b/deep", "folder:/a/b/deep/er"]  # fmt: skip
    assert e.list_users("file:/a/b/c.txt", "read", ["user"]).users == (
        "user:anne",
        "user:bob",
        "user:root",
    )
    assert e.list_users("file:/a/e.txt", "write", ["user"]).users == ("user:root",)


def test_groups_and_public_folders() -> None:
    e, _ = setup("group:eng#member@user:anne", "folder:/a/b#viewer@group:eng#member",
                 "folder:/x#viewer@user:*")  # fmt: skip
    assert e.check("user:anne", "read", "file:/a/b/c.txt")
    assert not e.check("user:anne", "read", "file:/a/e.txt")
    assert e.check("user:stranger", "read", "file:/x/y/z.txt")
    assert e.check("user:*", "read", "file:/x/y/z.txt")
    assert e.list_objects("user:stranger", "read", "file") == ["file:/x/y/z.txt"]


def test_direct_file_grants_and_batch_over_a_folder() -> None:
    e, _ = setup("file:/a/b/c.txt#viewer@user:anne", paths=[f"/big/f{i}" for i in range(50)])
    assert (
        e.batch_check([("user:anne", "read", f"file:/big/f{i}") for i in range(3)]) == [False] * 3
    )
    e2, _ = setup("folder:/big#viewer@user:anne", paths=[f"/big/f{i}" for i in range(50)])
    items = [("user:anne", "read", f"file:/big/f{i}") for i in range(50)]
    assert e2.batch_check(items) == [True] * 50
    assert len(e2.list_objects("user:anne", "read", "file")) == 50


def test_stored_parent_tuples_are_never_read() -> None:
    e, _ = setup("file:/a/e.txt#parent@folder:/x", "folder:/x#viewer@user:anne")
    # the stored (wrong) parent is ignored: /a/e.txt's parent is /a
    assert not e.check("user:anne", "read", "file:/a/e.txt")
    assert e.list_objects("user:anne", "read", "file") == ["file:/x/y/z.txt"]


def test_parent_cannot_be_written_or_supplied() -> None:
    e, _ = setup()
    with pytest.raises(InvalidTuple, match="computed by the kernel"):
        e.validate_tuple("file:/a/e.txt#parent@folder:/x")
    with pytest.raises(InvalidTuple, match="computed by the kernel"):
        e.check(
            "user:a", "read", "file:/a/e.txt", contextual_tuples=["file:/a/e.txt#parent@folder:/x"]
        )
    assert e.validate_tuple("folder:/a#viewer@user:anne").user == "user:anne"


def test_ids_with_hash_and_percent_are_escaped() -> None:
    path = "/a/#1 100%.txt"
    assert encode_id(path) == "/a/%231 100%25.txt" and decode_id(encode_id(path)) == path
    assert decode_id("%2523") == "%23"
    e, _ = setup("folder:/a#viewer@user:anne", paths=[path])
    obj = path_object("file", path)
    assert e.check("user:anne", "read", obj)
    assert e.list_objects("user:anne", "read", "file") == [obj]


def test_check_needs_no_children_but_listing_does() -> None:
    e = Engine(default_model(), MemoryTupleSource(["folder:/a#viewer@user:anne"]),
               computed=PathHierarchy().computed_relations())  # fmt: skip
    assert e.check("user:anne", "read", "file:/a/anything.txt")
    with pytest.raises(InvalidRequest, match="needs its children"):
        e.list_objects("user:anne", "read", "file")


def test_computed_relation_must_be_plain_direct() -> None:
    m = parse_model(
        "model\n  schema 1.1\ntype user\ntype folder\n  relations\n"
        "    define parent: [folder] or owner\n    define owner: [user]\n"
    )
    with pytest.raises(ModelError, match="must define it as a plain direct relation"):
        Engine(m, MemoryTupleSource(), computed=PathHierarchy().computed_relations())
    with pytest.raises(InvalidRequest, match="type#relation"):
        Engine(m, MemoryTupleSource(), computed={"parent": PathHierarchy()})


def test_models_without_the_computed_relation_are_fine() -> None:
    m = parse_model(
        "model\n  schema 1.1\ntype user\ntype file\n  relations\n    define viewer: [user]\n"
    )
    e = Engine(m, MemoryTupleSource(["file:/a#viewer@user:anne"]),
               computed=PathHierarchy().computed_relations())  # fmt: skip
    assert e.check("user:anne", "viewer", "file:/a")


def test_custom_types_and_relation_names() -> None:
    m = parse_model(
        "model\n  schema 1.1\ntype user\ntype dir\n  relations\n    define up: [dir]\n"
        "    define reader: [user] or reader from up\n"
        "type doc\n  relations\n    define up: [dir]\n    define reader: [user] or reader from up\n"
    )
    tree = PathTree()
    tree.add_file("/p/q/r")
    h = tree.hierarchy(folder_type="dir", file_type="doc")
    assert isinstance(h, ComputedRelation)
    e = Engine(m, MemoryTupleSource(["dir:/p#reader@user:anne"]),
               computed=h.computed_relations(relation="up", types=["dir", "doc"]))  # fmt: skip
    assert e.check("user:anne", "reader", "doc:/p/q/r")
    assert e.list_objects("user:anne", "reader", "doc") == ["doc:/p/q/r"]


def test_path_tree_rejects_bad_paths() -> None:
    tree = PathTree()
    for bad in ("relative", "/trailing/"):
        with pytest.raises(InvalidRequest):
            tree.add_file(bad)
    tree.add_folder("/")
    tree.add_folder("/empty")
    assert list(tree.children("/")) == [("/empty", True)]
    assert list(tree.children("/missing")) == []


def test_deep_trees_need_a_matching_max_depth() -> None:
    """Each parent step is one resolution step: a grant 30 folders up is out of reach of
    the default limit (an error, not a wrong answer); a larger max_depth answers."""
    deep = "/" + "/".join(f"d{i}" for i in range(30)) + "/f.txt"
    tree = PathTree()
    tree.add_file(deep)
    src = MemoryTupleSource(["folder:/#viewer@user:anne"])
    computed = tree.hierarchy().computed_relations()
    e = Engine(default_model(), src, computed=computed)
    assert e.check("user:anne", "read", "file:/d0/d1/x")  # shallow: fine
    with pytest.raises(ResolutionTooComplex):
        e.check("user:anne", "read", f"file:{deep}")
    with pytest.raises(ResolutionTooComplex):
        e.list_objects("user:anne", "read", "file")
    big = Engine(default_model(), src, computed=computed, max_depth=64)
    assert big.check("user:anne", "read", f"file:{deep}")
    assert not big.check("user:bob", "read", f"file:{deep}")
    assert big.list_objects("user:anne", "read", "file") == [f"file:{deep}"]
    assert big.list_users(f"file:{deep}", "read", ["user"]).users == ("user:anne",)
