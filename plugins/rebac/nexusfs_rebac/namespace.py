"""The kernel's namespace as the ``children`` of the path hierarchy, for ``list_objects``
over files and folders.

``list_objects(user, "read", "file")`` walks the model backwards: from the folders a user
may read it needs their children, which only the kernel knows. :class:`KernelNamespace`
answers ``children(path)`` from ``ctx.kernel`` (the FileSystem API over the bus,
blocking): on the first question about a folder in a request it lists that folder's
whole subtree with one paged recursive ``readdir`` (whoever may read a folder may, in the
file model, read everything below it, so the subtree is needed anyway) and answers every
later question in the subtree from that listing. Listings live for one request (a
thread-local cache between :meth:`KernelNamespace.begin` and :meth:`end`), so renames
and new files are seen by the next request.

Evaluation runs under the mirror's read lock, and a kernel call may take a while (or,
once the kernel gates syscalls, wait on this service), so the lock is *released* around
each kernel call: ``on_fetch`` is called before and after it (the service releases and
re-takes the read lock there and raises to restart the request if the mirror moved
meanwhile).

Failure semantics: a folder that does not exist in the namespace, or a path that is not
one, has no children (a grant may name a folder that was deleted or never existed).
Other kernel errors (``ServiceUnavailable``, ...) propagate to the caller of
``list_objects``. Without a kernel (``kernel=None``) every folder has no children.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from typing import Any

from nexusfs.errors import InvalidPath, NotADirectory, NotFound

__all__ = ["PAGE", "KernelNamespace"]

#: Entries per ``readdir`` page.
PAGE = 5_000

Kids = list[tuple[str, bool]]


def _parent(path: str) -> str:
    cut = path.rfind("/")
    return path[:cut] if cut > 0 else "/"


class _Local(threading.local):
    cache: dict[str, Kids] | None = None
    around: Callable[[bool], None] | None = None


class KernelNamespace:
    """``children(path)`` for :class:`~nexusfs_rebac.hierarchy.PathHierarchy` from a
    kernel's ``readdir`` (see the module docstring). ``kernel`` is any object with the
    FileSystem ``readdir(path, recursive=, limit=, cursor=)`` call, or ``None``."""

    def __init__(self, kernel: Any, *, page: int = PAGE) -> None:
        self.kernel = kernel
        self.page = page
        self._local = _Local()
        #: Recursive listings made (for tests and diagnostics).
        self.fetches = 0

    def begin(self) -> None:
        """Start a request in this thread: a fresh listing cache."""
        self._local.cache = {}
        self._local.around = None

    def set_around(self, around: Callable[[bool], None] | None) -> None:
        """Call ``around(True)`` just before and ``around(False)`` just after each
        kernel call of this thread's request (``None``: no calls). An exception from
        ``around(False)`` propagates out of :meth:`children`."""
        self._local.around = around

    def end(self) -> None:
        """End this thread's request (drop its listings)."""
        self._local.cache = None
        self._local.around = None

    def children(self, path: str) -> Iterable[tuple[str, bool]]:
        """``(child_path, is_folder)`` of the direct children of folder ``path``."""
        local = self._local
        cache = local.cache
        if cache is None:  # outside a request: list without caching
            return self._fetch(path).get(path, [])
        got = cache.get(path)
        if got is None:
            around = local.around
            if around is not None:
                around(True)
            try:
                cache.update(self._fetch(path))  # kept even if around() restarts
            finally:
                if around is not None:
                    around(False)
            got = cache.setdefault(path, [])
        return got

    def _fetch(self, path: str) -> dict[str, Kids]:
        """The subtree of ``path``: children lists of ``path`` and every folder below."""
        kids: dict[str, Kids] = {path: []}
        if self.kernel is None:
            return kids
        self.fetches += 1
        cursor: str | None = None
        try:
            while True:
                page = self.kernel.readdir(path, recursive=True, limit=self.page, cursor=cursor)
                for meta in page:
                    p = meta.path
                    kids.setdefault(_parent(p), []).append((p, meta.is_dir))
                    if meta.is_dir:
                        kids.setdefault(p, [])
                cursor = page.cursor
                if cursor is None:
                    return kids
        except (NotFound, NotADirectory, InvalidPath):
            return {path: []}
