"""The permission gate: every syscall of the kernel process checked against ReBAC.

When the ``rebac`` service is configured, the kernel asks it, for each syscall, whether
the acting subject holds the permission the syscall needs, and enforces the answer
itself. The kernel never imports the service's code: it only calls
``rebac.batch_check`` and ``rebac.revision`` over the bus, and keeps the answers in a
decision cache so a repeated check costs a dict lookup.

What each syscall needs (objects are ``folder:/a/b`` or ``file:/a/b/c.txt``, named by
kind as the kernel sees them; permissions as in the default file model, where
``read`` = viewer, ``write`` = editor, ``list`` = viewer, each inherited from every
ancestor folder):

* ``stat``, ``exists``, ``read``, ``open(rb)``: ``read`` on the object;
* ``readdir``: ``read`` and ``list`` on the folder (the root needs neither), and the
  listing shows only entries the subject may ``read`` (namespace views);
* ``unlink`` / ``rmdir``: ``read`` and ``write`` on the object; ``rename``: the same on
  the source; ``copy``: ``read`` on the source;
* a **write target** (``write``, ``open(wb|ab)``, ``mkdir`` (``-p`` too), the destination
  of ``rename`` / ``copy``): ``write`` on the target if it exists, else ``write`` on the
  nearest existing ancestor folder (a new file or folder, and every parent ``mkdir -p``
  creates, are created in that folder). ``mkdir`` of an existing visible folder needs
  nothing more (the syscall answers ``AlreadyExists`` or returns it);
* an open handle: ``fread`` needs ``read`` on the file it was opened on, ``fwrite`` and
  the commit in ``fclose`` what opening it for writing needs, checked again at *each*
  call (a revoke stops an open handle at its next call, see ``nexusfs.server.session``);
* ``mount``, ``unmount``, ``zone_create``, ``gc``, ``flush``, ``watch``: admin subjects
  only.

Invariants and failure semantics:

* **Invisible reads as missing.** A path the subject may not ``read`` raises
  ``NotFound``, exactly as if it did not exist; a denied mutation of a visible path
  raises ``PermissionDenied`` naming the subject, the permission, the object and the
  path. A path that does not exist is not checked (the syscall itself says
  ``NotFound``). A write target whose nearest existing ancestor is invisible is judged
  as if that ancestor did not exist either (the next visible ancestor decides), so
  creating below an invisible folder answers exactly as creating below a missing one.
  The only unavoidable disclosure: a subject that may write a folder learns that a
  name in it is taken when it creates it.
* **Admins bypass.** Admin subjects (``None``: a client that named no subject, i.e. the
  kernel owner's own process; the user that runs the kernel; service subjects
  ``service:*``; the ``admins`` setting) are never checked. Paths under ``/__sys__/``
  (read-only kernel facts) are readable by every subject and writable by none.
* **Fresh decisions.** Cached decisions belong to one revision of the tuple store. A
  ``rebac.write`` or ``rebac.write_model`` that passes through this kernel clears the
  cache before its answer reaches the caller (so a revoke made through this kernel is
  enforced on the very next call of any client; :meth:`PermissionGate.after_write`);
  the rebac worker reports every new
  revision it learns of (other kernels' writes arrive on the cache store channel, or by
  its store poll) with the ``rebac.revision`` event, which clears the cache on arrival
  (:meth:`PermissionGate.on_revision`); and ``rebac.revision`` is asked at most every
  ``revision_poll`` seconds as a safety net. A batch answer that was in flight while
  the cache was cleared is used for its own call only, never cached.
* **Fail closed.** If the service cannot answer (stopped, crashed, past its deadline,
  degraded, a malformed answer), checked subjects get ``ServiceUnavailable``; nothing
  runs unchecked. Losing the rebac worker's connection (:meth:`PermissionGate.lost`)
  clears the cache at once, so no decision outlives the worker that made it.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, Protocol

from nexusfs import paths
from nexusfs.errors import (
    InvalidSubject,
    NexusError,
    NotFound,
    PermissionDenied,
    ServiceUnavailable,
)

__all__ = [
    "ADMIN_OPS",
    "REVISION_EVENT",
    "SERVICE",
    "GateRouter",
    "InvalidSubject",
    "PermissionGate",
    "Requirement",
    "Target",
    "check_subject",
    "object_of",
]

#: The service whose answers the gate enforces.
SERVICE = "rebac"
#: Syscalls only admin subjects may make while permissions apply.
ADMIN_OPS = frozenset({"mount", "unmount", "zone_create", "gc", "flush", "watch"})
#: rebac methods that change what ``check`` answers.
MUTATING_METHODS = frozenset({"write", "write_model"})
#: The event the rebac worker emits (``{"revision": int}``) when its revision moves.
REVISION_EVENT = "rebac.revision"
SYS_PREFIX = "/__sys__"

_READ_OPS = frozenset({"stat", "exists", "read", "open_read"})
_TARGET_OPS = frozenset({"write", "open_write", "mkdir", "fwrite", "fclose"})
_CACHE_LIMIT = 200_000
_ROOT = "folder:/"
#: ``type:id`` with no whitespace and no ``#`` (a subject acts, a userset does not).
_SUBJECT = re.compile(r"[a-z][a-z0-9_-]*:[^\s#]+")
_MAX_SUBJECT = 512


def check_subject(subject: object) -> str | None:
    """``subject`` if it is ``None`` or a ``type:id`` subject (``user:alice``,
    ``service:backup``, ``user:*``); ``InvalidSubject`` otherwise (usersets such as
    ``group:eng#member`` act through their members, never as a subject)."""
    if subject is None:
        return None
    if (
        not isinstance(subject, str)
        or len(subject) > _MAX_SUBJECT
        or not _SUBJECT.fullmatch(subject)
    ):
        raise InvalidSubject(
            f"{subject!r} is not a subject: expected type:id such as user:alice "
            "(no spaces, no '#')"
        )
    return subject


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


def _path_of(obj: str) -> str:
    return obj.partition(":")[2].replace("%23", "#").replace("%25", "%")


#: ``(permission, object, error kind)``: one thing a syscall needs; when it is not
#: held, the error kind says what the subject is told (see ``_INVISIBLE``, ...).
Requirement = tuple[str, str, str]
_INVISIBLE, _DENIED = "invisible", "denied"


class Target:
    """A write target (see the module docstring): ``path``; ``obj``, the target's own
    object when it exists (``None``: it is created); ``base`` / ``base_kind``, its
    nearest existing ancestor (every ancestor of that exists too: the tree has no
    gaps). ``create_only``: an existing visible target needs no ``write`` (``mkdir``)."""

    __slots__ = ("base", "base_kind", "create_only", "obj", "path")

    def __init__(self, path: str, obj: str | None, base: str, base_kind: bool,
                 create_only: bool) -> None:  # fmt: skip
        self.path = path
        self.obj = obj
        self.base = base
        self.base_kind = base_kind
        self.create_only = create_only

    def chain(self) -> Iterator[str]:
        """The objects of the existing ancestors, nearest first, ending with the root
        folder."""
        p = self.base
        if p != "/":
            yield object_of(p, self.base_kind)
            while True:
                p = p.rsplit("/", 1)[0] or "/"
                if p == "/":
                    break
                yield object_of(p, True)
        yield _ROOT

    def __repr__(self) -> str:
        return f"Target({self.path!r}, obj={self.obj!r}, base={self.base!r})"


Need = Requirement | Target
Lookup = Callable[[str, str], bool | None]


class PermissionGate:
    """Kernel-side enforcement of ReBAC decisions (see the module docstring).

    ``stat(path) -> bool | None`` tells whether a path is a directory (``None``: it
    does not exist); it must be cheap (the kernel's own metadata lookup).
    """

    def __init__(
        self,
        router: GateRouter,
        stat: Callable[[str], bool | None],
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
        #: The tuple-store revision the cached decisions belong to (``None``: unknown).
        self.revision: int | None = None
        self._polled_at = 0.0
        self._generation = 0
        self._cache: dict[tuple[str, str, str], bool] = {}
        self.hits = 0
        self.misses = 0
        self.polls = 0
        self.pushes = 0
        self.invalidations = 0

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

    def stats(self) -> dict[str, int | None]:
        """Decision-cache counters: checks answered from the cache (``hits``) and asked
        (``misses``), decisions ``cached``, revision ``polls`` made, ``pushes``
        (``rebac.revision`` events that cleared the cache), ``invalidations`` (every
        clearing) and the ``revision`` the cache belongs to."""
        return {
            "hits": self.hits, "misses": self.misses, "cached": len(self._cache),
            "polls": self.polls, "pushes": self.pushes,
            "invalidations": self.invalidations, "revision": self.revision,
        }  # fmt: skip

    def is_admin(self, subject: str | None) -> bool:
        """Whether ``subject`` bypasses the gate (see the module docstring)."""
        return subject is None or subject in self.admins or subject.startswith("service:")

    def invalidate(self, revision: int | None = None) -> None:
        """Forget every cached decision (the tuple store changed, now at ``revision``
        if known). Answers in flight are not cached."""
        self._cache.clear()
        self._generation += 1
        self.invalidations += 1
        self.revision = revision
        self._polled_at = time.monotonic()

    async def after_write(self) -> None:
        """A ``rebac.write`` / ``write_model`` through this kernel returned: forget every
        decision now, then learn the revision the service is at, so its own
        ``rebac.revision`` event for that write does not clear the cache a second time.
        Decisions cached while the revision was asked may be older than the answer, so
        they are forgotten with it (unless a push already settled it meanwhile). If the
        revision cannot be asked, the revision stays unknown (the next push or poll
        clears again): never raises."""
        self.invalidate()
        generation = self._generation
        try:
            answer = await self._call("revision", {})
        except NexusError:
            return
        revision = answer.get("revision") if isinstance(answer, dict) else None
        valid = isinstance(revision, int) and not isinstance(revision, bool)
        if valid and self._generation == generation:
            self.invalidate(revision)

    def on_revision(self, revision: object) -> None:
        """The rebac worker reports that it now answers at ``revision`` (the
        ``rebac.revision`` event): clear the cache unless it already belongs to that
        revision or a later one. A malformed revision clears it too (never trust)."""
        if isinstance(revision, bool) or not isinstance(revision, int):
            self.invalidate()
            return
        known = self.revision
        if known is not None and revision <= known:
            return
        self.pushes += 1
        self.invalidate(revision)

    def lost(self) -> None:
        """The rebac worker's connection ended (stop, crash, hot restart): clear the
        cache and ask the service before the next decision."""
        self.invalidate()
        self._polled_at = 0.0

    async def _fresh(self) -> None:
        now = time.monotonic()
        if now - self._polled_at < self.revision_poll:
            return
        self.polls += 1
        generation = self._generation
        try:
            answer = await self._call("revision", {})
        except ServiceUnavailable:
            self.lost()  # every call asks again until the service answers
            raise
        revision = answer.get("revision") if isinstance(answer, dict) else None
        if isinstance(revision, bool) or not isinstance(revision, int):
            self.lost()
            raise ServiceUnavailable(f"permission check failed: malformed revision {answer!r}")
        if revision != self.revision and self._generation == generation:
            self.invalidate(revision)  # (else a push or write settled it meanwhile)
        self._polled_at = now

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
        cached per revision, misses asked in one ``batch_check``.
        ``ServiceUnavailable`` if the service cannot answer."""
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
            generation = self._generation
            answers = await self._call(
                "batch_check",
                {"checks": [{"user": subject, "relation": p, "object": o} for p, o in missing]},
            )
            if not isinstance(answers, list) or len(answers) != len(missing):
                raise ServiceUnavailable("permission check failed: malformed answer")
            if len(self._cache) > _CACHE_LIMIT:
                self._cache.clear()
            decided = dict(zip(missing, (a is True for a in answers), strict=True))
            if self._generation == generation:  # not invalidated while we waited
                for (perm, obj), ok in decided.items():
                    self._cache[(subject, perm, obj)] = ok
            out = [decided[c] if v is None else v for c, v in zip(checks, out, strict=True)]
        self.hits += len(checks) - len(missing)
        return [bool(v) for v in out]

    # -- enforcement ---------------------------------------------------------------------

    def requirements(
        self, subject: str | None, op: str, path: str, dst: str | None = None
    ) -> list[Need]:
        """What ``subject`` needs for syscall ``op`` on ``path`` (``dst``: the
        destination of ``rename`` / ``copy``), in order: :data:`Requirement` triples
        and write :class:`Target` s. Raises at once what needs no lookup
        (``PermissionDenied`` for admin-only syscalls and writes under ``/__sys__``,
        ``InvalidPath`` for a bad path); ``[]`` for admins."""
        if self.is_admin(subject):
            return []
        if op in ADMIN_OPS:
            raise PermissionDenied(
                f"{subject} may not {op}: {op} is for admin subjects only (the kernel's "
                f"user, service:*, NEXUS_ADMINS) while permissions apply",
                path=path,
            )
        path = paths.normalize(path)
        if path == SYS_PREFIX or path.startswith(SYS_PREFIX + "/"):
            if op in _READ_OPS or op == "readdir" or op == "fread":
                return []
            raise PermissionDenied(
                f"{subject} may not {op} under {SYS_PREFIX} (read-only kernel facts): {path}",
                path=path,
            )
        out: list[Need] = []
        if op == "fread":  # the file the handle was opened on, existing or not
            out.append(("read", object_of(path, False), _DENIED))
            return out
        kind = self._stat(path)
        if op in _READ_OPS:
            if kind is not None and path != "/":
                out.append(("read", object_of(path, kind), _INVISIBLE))
        elif op == "readdir":
            if kind is not None and path != "/":  # the root is listed (filtered)
                out.append(("read", object_of(path, kind), _INVISIBLE))
                if kind:
                    out.append(("list", object_of(path, True), _DENIED))
        elif op in _TARGET_OPS:
            out.append(self._target(path, kind, create_only=op == "mkdir"))
        elif op in ("unlink", "rmdir", "rename", "copy"):
            if kind is not None and path != "/":
                obj = object_of(path, kind)
                out.append(("read", obj, _INVISIBLE))
                if op != "copy":
                    out.append(("write", obj, _DENIED))
            if dst is not None:
                dst = paths.normalize(dst)
                if not (dst == SYS_PREFIX or dst.startswith(SYS_PREFIX + "/")):
                    out.append(self._target(dst, self._stat(dst), create_only=False))
                else:
                    raise PermissionDenied(
                        f"{subject} may not {op} into {SYS_PREFIX} (read-only kernel "
                        f"facts): {dst}",
                        path=dst,
                    )
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
        needs = self.requirements(subject, op, path, dst)
        if not needs:
            return True
        if time.monotonic() - self._polled_at >= self.revision_poll:
            return False
        assert subject is not None
        cache = self._cache
        if len(needs) == 1 and type(needs[0]) is tuple:  # the common case, inline
            perm, obj, error = needs[0]
            held = cache.get((subject, perm, obj))
            if held is None:
                return False
            if not held:
                raise self._error(subject, op, path, error, perm, obj)
            self.hits += 1
            return True

        def look(perm: str, obj: str) -> bool | None:
            return cache.get((subject, perm, obj))

        if self._evaluate(subject, op, path, needs, look):
            return False
        self.hits += 1
        return True

    async def authorize(
        self, subject: str | None, op: str, path: str, dst: str | None = None
    ) -> None:
        """Raise unless ``subject`` may make syscall ``op`` on ``path`` (see
        :meth:`requirements` and the module docstring): ``NotFound`` for an invisible
        path, ``PermissionDenied`` (naming subject, permission, object and path) for a
        denied one, ``ServiceUnavailable`` when the rebac service cannot answer (the
        call is refused: fail closed)."""
        needs = self.requirements(subject, op, path, dst)
        if not needs:
            return
        assert subject is not None
        known: dict[tuple[str, str], bool] = {}
        for _round in range(64):  # each round resolves at least one chain level
            missing = self._evaluate(subject, op, path, needs, lambda p, o: known.get((p, o)))
            if not missing:
                return
            try:
                answers = await self.allowed(subject, missing)
            except ServiceUnavailable as exc:
                raise ServiceUnavailable(
                    f"the permission check of {subject} for {op} {path} could not be made, "
                    f"so the call is refused: {exc}"
                ) from exc
            known.update(zip(missing, answers, strict=True))
        raise ServiceUnavailable(f"the permission check for {op} {path} did not converge")

    async def visible_names(
        self, subject: str | None, folder: str, entries: Sequence[tuple[str, bool]]
    ) -> set[str]:
        """The paths among ``entries`` (``(path, is_dir)``) that ``subject`` may read.
        ``ServiceUnavailable`` when the service cannot answer."""
        if self.is_admin(subject) or folder == SYS_PREFIX or folder.startswith(SYS_PREFIX + "/"):
            return {p for p, _d in entries}
        assert subject is not None
        answers = await self.allowed(subject, [("read", object_of(p, d)) for p, d in entries])
        return {p for (p, _d), ok in zip(entries, answers, strict=True) if ok}

    # -- evaluation ----------------------------------------------------------------------

    def _target(self, path: str, kind: bool | None, *, create_only: bool) -> Target:
        if kind is not None:
            own = _ROOT if path == "/" else object_of(path, kind)
            base = path.rsplit("/", 1)[0] or "/"
            return Target(path, own, base, True, create_only)
        base = path
        while True:  # mkdir -p and write create the missing parents: nearest existing
            base = base.rsplit("/", 1)[0] or "/"
            base_kind = True if base == "/" else self._stat(base)
            if base_kind is not None:
                return Target(path, None, base, base_kind, create_only)

    def _evaluate(
        self, subject: str, op: str, path: str, needs: Sequence[Need], look: Lookup
    ) -> list[tuple[str, str]]:
        """The decisions still needed to judge ``needs`` (``[]``: every need is held).
        Raises the error of the first need known not held when every need before it is
        known to be held (so an unknown visibility never lets a later denial leak)."""
        missing: list[tuple[str, str]] = []
        for need in needs:
            if type(need) is tuple:
                perm, obj, error = need
                held = look(perm, obj)
                if held is None:
                    missing.append((perm, obj))
                elif not held and not missing:
                    raise self._error(subject, op, path, error, perm, obj)
            else:
                assert isinstance(need, Target)
                self._judge_target(subject, op, need, look, missing)
        return missing

    def _judge_target(self, subject: str, op: str, t: Target, look: Lookup,
                      missing: list[tuple[str, str]]) -> None:  # fmt: skip
        """Add to ``missing`` what judging ``t`` still needs, or raise its error when
        nothing before it is missing (see :meth:`_evaluate`)."""
        own = t.obj
        if own is not None:
            readable = True if own == _ROOT else look("read", own)
            if readable is None:
                missing.append(("read", own))
                if not t.create_only and look("write", own) is None:
                    missing.append(("write", own))
                return
            if readable:
                if t.create_only:
                    return
                writable = look("write", own)
                if writable is None:
                    missing.append(("write", own))
                elif not writable and not missing:
                    raise self._error(subject, op, t.path, _DENIED, "write", own)
                return
        # Created, or exists but invisible: judged as if it did not exist, by the
        # nearest visible existing ancestor (the root is always visible). If that one
        # may be written but an invisible entry stands in the way (``taken``), the
        # write is refused naming it: the one disclosure a writer of a folder gets.
        taken = own
        for folder in t.chain():
            readable = True if folder == _ROOT else look("read", folder)
            if readable is None:
                missing.append(("read", folder))
                if look("write", folder) is None:
                    missing.append(("write", folder))
                return
            if not readable:
                taken = folder
                continue
            writable = look("write", folder)
            if writable is None:
                missing.append(("write", folder))
            elif missing:
                pass  # judged once what comes before is known
            elif not writable:
                raise self._error(subject, op, t.path, _DENIED, "write", folder)
            elif taken is not None:
                raise self._error(subject, op, t.path, _DENIED, "read", taken)
            return

    @staticmethod
    def _error(subject: str, op: str, path: str, kind: str, perm: str, obj: str) -> NexusError:
        if kind == _INVISIBLE:
            return NotFound("no such file or directory", path=_path_of(obj))
        return PermissionDenied(
            f"{subject} has no {perm} permission on {obj} (needed for {op}): {path}",
            path=path,
        )
