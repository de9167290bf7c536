"""The path hierarchy as a computed relation: ``file:/a/b/c.txt#parent`` is
``folder:/a/b`` without any stored tuple.

The kernel knows every path's parent from the path itself, so storing one ``parent``
tuple per file would only duplicate the namespace (and go stale on rename). Instead the
engine is given a :class:`PathHierarchy` for the model's ``parent`` relations::

    h = PathHierarchy(children=kernel_listing)        # children only for list_objects
    engine = Engine(model, source, computed=h.computed_relations())

* forward (``check``, ``expand``, ``list_users``): :meth:`PathHierarchy.parent_of` is pure
  string work on the object id (``/a/b/c.txt`` -> ``/a/b``; ``/`` has no parent; ids that
  are not absolute paths have no parent);
* reverse (``list_objects``): the objects whose parent is a folder are its direct
  children, from the ``children(path)`` callback (the kernel's directory listing, an
  ordered scan of direct children). Without that callback ``list_objects`` through the
  hierarchy raises :class:`~nexusfs_rebac.errors.InvalidRequest`.

Object ids are paths with ``%`` and ``#`` percent-escaped (``#`` separates a userset's
relation); :func:`encode_id` / :func:`decode_id` convert, and :func:`path_object` builds
``type:encoded-path``. Paths are expected normalised (absolute, no trailing ``/``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Iterable, Mapping

from nexusfs_rebac.errors import InvalidRequest
from nexusfs_rebac.source import ComputedRelation

__all__ = ["PathHierarchy", "PathTree", "decode_id", "encode_id", "path_object"]

_DECODE = re.compile(r"%(23|25)")
_EMPTY: frozenset[str] = frozenset()
_CACHE_MAX = 1 << 16

Children = Callable[[str], Iterable[tuple[str, bool]]]


def encode_id(path: str) -> str:
    """A path as an object id: ``%`` -> ``%25``, ``#`` -> ``%23`` (nothing else)."""
    return path.replace("%", "%25").replace("#", "%23")


def decode_id(object_id: str) -> str:
    """Inverse of :func:`encode_id`."""
    return _DECODE.sub(lambda m: "#" if m.group(1) == "23" else "%", object_id)


def path_object(type_name: str, path: str) -> str:
    """``type:encoded-path``, e.g. ``path_object("file", "/a/#1")`` -> ``file:/a/%231``."""
    return f"{type_name}:{encode_id(path)}"


class PathHierarchy:
    """The ``parent`` relation of path-named objects, computed from the path.

    ``children(path)`` yields ``(child_path, is_folder)`` for the direct children of a
    folder path (decoded paths); exceptions it raises propagate to the caller of
    ``list_objects``."""

    def __init__(
        self,
        children: Children | None = None,
        *,
        folder_type: str = "folder",
        file_type: str = "file",
    ) -> None:
        self.children = children
        self.folder_type = folder_type
        self.file_type = file_type
        self._folder_prefix = folder_type + ":"
        # read() results by object: pure functions of the id, so never stale; cleared
        # when large to bound memory.
        self._cache: dict[str, Mapping[str, Collection[str]]] = {}

    def parent_of(self, object: str) -> str | None:
        """The parent folder object of ``object`` (``None`` for the root and for ids
        that are not absolute paths)."""
        _, _, oid = object.partition(":")
        if len(oid) < 2 or oid[0] != "/":
            return None
        cut = oid.rfind("/")
        return self._folder_prefix + (oid[:cut] if cut > 0 else "/")

    def read(self, object: str) -> Mapping[str, Collection[str]]:
        got = self._cache.get(object)
        if got is None:
            parent = self.parent_of(object)
            got = {self.folder_type: (parent,)} if parent is not None else {}
            if len(self._cache) >= _CACHE_MAX:
                self._cache.clear()
            self._cache[object] = got
        return got

    def reverse(self, object_type: str, kind: str, subjects: Collection[str]) -> Collection[str]:
        if kind != self.folder_type or object_type not in (self.folder_type, self.file_type):
            return _EMPTY
        if self.children is None:
            raise InvalidRequest(
                "listing objects through the path hierarchy needs its children() resolver: "
                "construct PathHierarchy(children=...)"
            )
        want_folders = object_type == self.folder_type
        prefix = object_type + ":"
        out: set[str] = set()
        for s in subjects:
            for child, is_folder in self.children(decode_id(s.partition(":")[2])):
                if is_folder == want_folders:
                    out.add(prefix + encode_id(child))
        return out

    def computed_relations(
        self, relation: str = "parent", types: Iterable[str] | None = None
    ) -> dict[str, ComputedRelation]:
        """``{"file#parent": self, "folder#parent": self}`` for the engine's
        ``computed`` argument (``types`` defaults to the folder and file types)."""
        names = (self.folder_type, self.file_type) if types is None else tuple(types)
        return {f"{t}#{relation}": self for t in names}


class PathTree:
    """An in-memory namespace (for tests and benchmarks; the kernel has its own): folders
    and files by path, with ``children`` suitable for :class:`PathHierarchy`. Adding a
    path adds its missing parent folders."""

    def __init__(self) -> None:
        self._kids: dict[str, dict[str, bool]] = {"/": {}}

    def _add(self, path: str, is_folder: bool) -> None:
        if not path.startswith("/") or (path != "/" and path.endswith("/")):
            raise InvalidRequest(f"not a normalised absolute path: {path!r}")
        if path == "/":
            return
        cut = path.rfind("/")
        parent = path[:cut] or "/"
        if parent not in self._kids:
            self._add(parent, True)
        self._kids[parent][path] = is_folder
        if is_folder:
            self._kids.setdefault(path, {})

    def add_folder(self, path: str) -> None:
        """Add a folder (and its parents). Raises ``InvalidRequest`` for a bad path."""
        self._add(path, True)

    def add_file(self, path: str) -> None:
        """Add a file (and its parent folders). Raises ``InvalidRequest`` for a bad path."""
        self._add(path, False)

    def children(self, path: str) -> Iterable[tuple[str, bool]]:
        """``(child_path, is_folder)`` for each direct child of folder ``path``."""
        return self._kids.get(path, {}).items()

    def hierarchy(self, **kwargs: str) -> PathHierarchy:
        """A :class:`PathHierarchy` listing this tree."""
        return PathHierarchy(self.children, **kwargs)
