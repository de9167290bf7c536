"""The permission gate: every syscall of the kernel process checked against ReBAC.

When the ``rebac`` service is configured, the kernel asks it, for each syscall, whether
the acting subject holds the permission the syscall needs on the path, and enforces the
answer itself. The kernel never imports the service's code: it only calls
``rebac.batch_check`` and ``rebac.revision`` over the bus, and keeps the answers in a
decision cache so a repeated check costs a dict lookup.

What each syscall needs (objects are ``folder:/a/b`` or ``file:/a/b/c.txt``, named by
kind as the kernel sees them; ``parent`` of a new path is its directory):

* ``stat``, ``exists``, ``read``, ``open(rb)``: ``read`` on the object;
* ``readdir``: ``list`` on the folder (the root needs none), and the listing shows only
  entries the subject may ``read`` (namespace views);
* ``write`` / ``open(wb|ab)``: ``write`` on the file if it exists, else on its parent;
  ``mkdir``: ``write`` on the parent; ``unlink`` / ``rmdir``: ``write`` on the object;
  ``rename``: ``write`` on the source and on the destination's parent; ``copy``: ``read``
  on the source and ``write`` on the destination (or its parent);
* ``mount``, ``unmount``, ``zone_create``, ``gc``, ``flush``: admin subjects only.

Invariants and failure semantics:

* **Invisible reads as missing.** A path the subject may not ``read`` raises
  ``NotFound``, exactly as if it did not exist; a denied mutation of a visible path
  raises ``PermissionDenied``. A path that does not exist is not checked (the syscall
  itself says ``NotFound``), so existence never leaks either way.
* **Admins bypass.** Admin subjects (the user that runs the kernel, service subjects
  ``service:*``, and the ``admins`` setting) are never checked. Paths under
  ``/__sys__/`` (read-only kernel facts) are readable by every subject.
* **Fresh decisions.** Cached decisions belong to one revision of the tuple store. A
  ``rebac.write`` or ``rebac.write_model`` that passes through this kernel clears the
  cache before its answer reaches the caller, so a revoke made through this kernel is
  enforced on the very next call of any client; a write made elsewhere (another kernel
  on the same database) is noticed by asking ``rebac.revision`` at most every
  ``revision_poll`` seconds.
* **Fail closed.** If the service cannot answer (stopped, crashed past its deadline,
  degraded), checked subjects get ``ServiceUnavailable``; nothing runs unchecked.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from typing import Any, Protocol

from nexusfs import paths
from nexusfs.errors import NexusError, NotFound, PermissionDenied, ServiceUnavailable

__all__ = ["ADMIN_OPS", "SERVICE", "GateRouter", "PermissionGate", "object_of"]

#: The service whose answers the gate enforces.
SERVICE = "rebac"
#: Syscalls only admin subjects may make.
ADMIN_OPS = frozenset({"mount", "unmount", "zone_create", "gc", "flush"})
#: rebac methods that change what ``check`` answers.
MUTATING_METHODS = frozenset({"write", "write_model"})
SYS_PREFIX = "/__sys__"

_READ_OPS = frozenset({"stat", "exists", "read", "open_read"})
_CACHE_LIMIT = 200_000


class GateRouter(Protocol):
    """What the gate needs from the service host."""

    async def call(
        self, service: str, method: str, args: dict[str, Any], *, deadline: float | None
    ) -> Any: ...

    def services(self) -> list[dict[str, Any]]: ...


def object_of(path: str, is_dir: bool) -> str:
    """The ReBAC object of a kernel path: ``folder:/a`` or ``file:/a/b`` (``#`` and
    ``%`` escaped as the rebac package's ``path_object`` does)."""
    encoded = path.replace("%", "%25").replace("#", "%23")
    return f"{'folder' if is_dir else 'file'}:{encoded}"


class PermissionGate:
    """Kernel-side enforcement of ReBAC decisions (see the module docstring).

    ``stat(path) -> bool | None`` tells whether a path is a directory (``None``: it
    does not exist); it must be cheap (the kernel's own metadata lookup).
    """

    def __init__(
        self,
        router: GateRouter,
        stat: Any,
        *,
        admins: Iterable[str] = (),
        timeout: float = 5.0,
        revision_poll: float = 1.0,
    ) -> None:
        self.router = router
        self._stat = stat
        self.admins = frozenset(admins)
        self.timeout = timeout
        self.revision_poll = revision_poll
        self.revision: Any = None
        self._polled_at = 0.0
        self._cache: dict[tuple[str, str, str], bool] = {}
        self.hits = 0
        self.misses = 0

    # -- state ---------------------------------------------------------------------------

    def active(self) -> bool:
        """Whether a ``rebac`` service is configured to run on this kernel (in any state
        but ``stopped``: one that failed to start still makes the gate fail closed).
        Decided when the kernel starts: installing the service later takes effect at the
        next start of the kernel process."""
        return any(
            s.get("name") == SERVICE and s.get("state") != "stopped"
            for s in self.router.services()
        )

    def stats(self) -> dict[str, int]:
        """Decision-cache counters: checks answered from the cache, asked, cached."""
        return {"hits": self.hits, "misses": self.misses, "cached": len(self._cache)}

    def is_admin(self, subject: str | None) -> bool:
        return subject is None or subject in self.admins or subject.startswith("service:")

    def invalidate(self, revision: Any = None) -> None:
        """Forget every cached decision (the tuple store changed)."""
        self._cache.clear()
        self.revision = revision
        self._polled_at = time.monotonic()

    async def _fresh(self) -> None:
        now = time.monotonic()
        if now - self._polled_at < self.revision_poll:
            return
        self._polled_at = now
        revision = await self._call("revision", {})
        if revision != self.revision:
            self._cache.clear()
            self.revision = revision

    async def _call(self, method: str, args: dict[str, Any]) -> Any:
        try:
            return await self.router.call(
                SERVICE, method, args, deadline=time.time() + self.timeout
            )
        except ServiceUnavailable:
            raise
        except NexusError as exc:
            raise ServiceUnavailable(f"permission check failed: {exc}") from exc

    # -- decisions -----------------------------------------------------------------------

    async def allowed(self, subject: str, checks: Sequence[tuple[str, str]]) -> list[bool]:
        """``[subject holds permission on object]`` for each ``(permission, object)``;
        cached per revision, misses asked in one ``batch_check``."""
        await self._fresh()
        out: list[bool | None] = []
        missing: list[tuple[str, str]] = []
        for perm, obj in checks:
            hit = self._cache.get((subject, perm, obj))
            if hit is None:
                missing.append((perm, obj))
            out.append(hit)
        if missing:
            self.misses += len(missing)
            revision = self.revision
            answers = await self._call(
                "batch_check",
                {"checks": [{"user": subject, "relation": p, "object": o} for p, o in missing]},
            )
            if not isinstance(answers, list) or len(answers) != len(missing):
                raise ServiceUnavailable("permission check failed: malformed answer")
            if len(self._cache) > _CACHE_LIMIT:
                self._cache.clear()
            decided = dict(zip(missing, (bool(a) for a in answers), strict=True))
            if self.revision == revision:  # not invalidated while we waited
                for (perm, obj), ok in decided.items():
                    self._cache[(subject, perm, obj)] = ok
            out = [decided[c] if v is None else v for c, v in zip(checks, out, strict=True)]
        self.hits += len(checks) - len(missing)
        return [bool(v) for v in out]

    # -- enforcement ---------------------------------------------------------------------

    def requirements(
        self, subject: str | None, op: str, path: str, dst: str | None = None
    ) -> list[Requirement]:
        """What ``subject`` needs for syscall ``op`` on ``path`` (``dst``: the
        destination of ``rename`` / ``copy``): ``(permission, object, error)`` triples,
        checked in order, the first one not held raising its error. Raises at once for
        what needs no lookup (admin-only syscalls, writes under ``/__sys__``)."""
        if self.is_admin(subject):
            return []
        if op in ADMIN_OPS:
            raise PermissionDenied(f"{op} is for admin subjects only", path=path)
        path = paths.normalize(path)
        if path == SYS_PREFIX or path.startswith(SYS_PREFIX + "/"):
            if op in _READ_OPS or op == "readdir":
                return []
            raise PermissionDenied("read-only", path=path)
        kind = self._stat(path)
        out: list[Requirement] = []
        if op in _READ_OPS:
            if kind is not None:
                self._visible(out, path, kind)
        elif op == "readdir":
            if kind is not None:
                self._visible(out, path, kind)
                if kind and path != "/":  # the root is always listed (filtered)
                    out.append(("list", object_of(path, True), _DENIED_LIST))
        elif op in ("write", "open_write", "mkdir"):
            self._writable_target(out, path, kind)
        elif op in ("unlink", "rmdir"):
            if kind is not None:
                self._writable(out, path, kind)
        elif op in ("rename", "copy"):
            if kind is not None:
                (self._writable if op == "rename" else self._visible)(out, path, kind)
            if dst is not None:
                dst = paths.normalize(dst)
                self._writable_target(out, dst, self._stat(dst))
        else:
            raise PermissionDenied(f"{op} is not covered by the permission gate", path=path)
        return out

    def authorize_cached(
        self, subject: str | None, op: str, path: str, dst: str | None = None
    ) -> bool:
        """:meth:`authorize` answered from the decision cache alone: ``True`` when every
        requirement is cached as held; raises the error of the first requirement cached
        as not held; ``False`` when something is not cached (or the revision is due for
        a check): then await :meth:`authorize`. Never blocks."""
        reqs = self.requirements(subject, op, path, dst)
        if not reqs:
            return True
        if time.monotonic() - self._polled_at >= self.revision_poll:
            return False
        assert subject is not None
        cache = self._cache
        for perm, obj, error in reqs:
            held = cache.get((subject, perm, obj))
            if held is None:
                return False
            if not held:
                raise _error(error, obj)
        self.hits += len(reqs)
        return True

    async def authorize(
        self, subject: str | None, op: str, path: str, dst: str | None = None
    ) -> None:
        """Raise unless ``subject`` may make syscall ``op`` on ``path`` (see
        :meth:`requirements` and the module docstring): ``NotFound`` for an invisible
        path, ``PermissionDenied`` for a denied one, ``ServiceUnavailable`` when the
        rebac service cannot answer."""
        reqs = self.requirements(subject, op, path, dst)
        if not reqs:
            return
        assert subject is not None
        answers = await self.allowed(subject, [(perm, obj) for perm, obj, _e in reqs])
        for (_perm, obj, error), held in zip(reqs, answers, strict=True):
            if not held:
                raise _error(error, obj)

    async def visible_names(
        self, subject: str | None, folder: str, entries: Sequence[tuple[str, bool]]
    ) -> set[str]:
        """The paths among ``entries`` (``(path, is_dir)``) that ``subject`` may read."""
        if self.is_admin(subject) or folder == SYS_PREFIX or folder.startswith(SYS_PREFIX + "/"):
            return {p for p, _d in entries}
        assert subject is not None
        answers = await self.allowed(subject, [("read", object_of(p, d)) for p, d in entries])
        return {p for (p, _d), ok in zip(entries, answers, strict=True) if ok}

    @staticmethod
    def _visible(out: list[Requirement], path: str, is_dir: bool) -> None:
        if path != "/":  # the root is always visible; its listing is filtered
            out.append(("read", object_of(path, is_dir), _INVISIBLE))

    def _writable(self, out: list[Requirement], path: str, is_dir: bool) -> None:
        self._visible(out, path, is_dir)
        out.append(("write", object_of(path, is_dir), _DENIED_WRITE))

    def _writable_target(self, out: list[Requirement], path: str, kind: bool | None) -> None:
        if kind is not None:
            self._writable(out, path, kind)
            return
        parent = path.rsplit("/", 1)[0] or "/"
        while parent != "/" and self._stat(parent) is None:  # mkdir -p: nearest existing
            parent = parent.rsplit("/", 1)[0] or "/"
        self._writable(out, parent, True)


#: ``(permission, object, error kind)``: one thing a syscall needs.
Requirement = tuple[str, str, str]
_INVISIBLE, _DENIED_WRITE, _DENIED_LIST = "invisible", "write", "list"


def _error(kind: str, obj: str) -> NexusError:
    path = obj.partition(":")[2].replace("%23", "#").replace("%25", "%")
    if kind == _INVISIBLE:
        return NotFound("no such file or directory", path=path)
    return PermissionDenied(f"no {kind} permission", path=path)
