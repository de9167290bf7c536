"""User hook rules: deny or emit when a syscall touches a path matching a glob.

A rule is ``(op, glob, action, message)``:

* ``op``: a hookable syscall name (``write``, ``unlink``, ...) or ``"*"`` for all;
* ``glob``: an absolute path pattern. ``*`` matches within one segment (never ``/``),
  ``?`` one character of a segment, ``[abc]`` / ``[!abc]`` a character class, and a
  whole segment ``**`` any number (zero or more) of segments: ``/a/**`` matches ``/a``
  and everything below it, ``/**/*.tmp`` every ``.tmp`` file, ``/**`` everything;
* ``action``: ``deny`` (the pre-hook vetoes the syscall with ``message``) or ``emit``
  (after a successful syscall, ``ctx.emit(message or "hooks.match", payload)``).

A rename/copy matches when its source *or* destination matches.

Rules live in the RecordStore. Each worker keeps them compiled in memory and reloads
them when the ``rules_version`` counter (bumped in the same transaction as every rule
change) differs from the one it loaded; it reads the counter at most every
``refresh_interval`` seconds, and immediately after a change made through itself.
"""

from __future__ import annotations

import re
import threading
import time
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from nexusfs.errors import InvalidPath
from nexusfs.hookspecs import HOOKABLE
from nexusfs_hooks.models import RULES_VERSION, Counter, HookRule

__all__ = [
    "ACTIONS",
    "DEFAULT_EMIT_EVENT",
    "CompiledRule",
    "HookEngine",
    "compile_glob",
    "validate_rule",
]

ACTIONS = frozenset({"deny", "emit"})
DEFAULT_EMIT_EVENT = "hooks.match"
_MAX_GLOB = 4096
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _translate_segment(seg: str, glob: str) -> str:
    """One glob segment as a regex that never matches ``/``."""
    out: list[str] = []
    i, n = 0, len(seg)
    while i < n:
        c = seg[i]
        if c == "*":
            if i + 1 < n and seg[i + 1] == "*":
                raise InvalidPath("'**' must be a whole path segment", path=glob)
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "[":
            j = i + 1
            if j < n and seg[j] in "!^":
                j += 1
            if j < n and seg[j] == "]":
                j += 1
            while j < n and seg[j] != "]":
                j += 1
            if j >= n:
                raise InvalidPath("unterminated '[' in glob", path=glob)
            body = seg[i + 1 : j]
            negate = body[:1] in ("!", "^")
            if negate:
                body = body[1:]
            body = body.replace("\\", "\\\\")
            out.append(f"[^/{body}]" if negate else f"[{body}]")
            i = j
        else:
            out.append(re.escape(c))
        i += 1
    return "".join(out)


def compile_glob(glob: str) -> re.Pattern[str]:
    """Compile a rule glob to a regex matched (``fullmatch``) against a path with its
    trailing ``/`` removed (the root ``/`` becomes ``""``).

    Raises :class:`~nexusfs.errors.InvalidPath` for a relative glob, NUL or control
    characters, ``.``/``..`` or empty segments, ``**`` inside a segment, an unterminated
    ``[`` or a glob over 4096 bytes.
    """
    if not isinstance(glob, str) or not glob:
        raise InvalidPath("glob must be a non-empty string", path=str(glob))
    glob = unicodedata.normalize("NFC", glob)
    if not glob.startswith("/"):
        raise InvalidPath("glob must be absolute (start with '/')", path=glob)
    if len(glob.encode()) > _MAX_GLOB:
        raise InvalidPath("glob longer than 4096 bytes", path=glob[:64])
    if _CONTROL.search(glob):
        raise InvalidPath("glob contains NUL or control characters", path=glob)
    body = glob[1:]
    if body.endswith("/"):
        body = body[:-1]
    parts = body.split("/") if body else []
    regex: list[str] = []
    for seg in parts:
        if seg in ("", ".", ".."):
            raise InvalidPath(f"glob has an empty, '.' or '..' segment ({seg!r})", path=glob)
        regex.append("(?:/[^/]+)*" if seg == "**" else "/" + _translate_segment(seg, glob))
    try:
        return re.compile("".join(regex), re.DOTALL)
    except re.error as exc:  # e.g. a reversed range "[z-a]"
        raise InvalidPath(f"invalid glob: {exc}", path=glob) from exc


def validate_rule(op: str, glob: str, action: str, message: str | None) -> re.Pattern[str]:
    """Check a rule's fields; return its compiled glob.

    ``ValueError`` for an unknown ``op`` or ``action`` or a non-string ``message``;
    :class:`~nexusfs.errors.InvalidPath` (a ``ValueError``) for a bad ``glob``.
    """
    if not isinstance(op, str) or (op != "*" and op not in HOOKABLE):
        raise ValueError(f"unknown op {op!r}: expected '*' or one of {sorted(HOOKABLE)}")
    if not isinstance(action, str) or action not in ACTIONS:
        raise ValueError(f"unknown action {action!r}: expected one of {sorted(ACTIONS)}")
    if message is not None and not isinstance(message, str):
        raise ValueError(f"message must be a string or None, not {message!r}")
    return compile_glob(glob)


@dataclass(frozen=True, slots=True)
class CompiledRule:
    """A rule ready for matching."""

    id: int
    op: str
    glob: str
    action: str
    message: str | None
    pattern: re.Pattern[str]

    def matches(self, op: str, path: str, dst: str | None = None) -> bool:
        """Whether ``op`` on ``path`` (or its destination ``dst``) triggers this rule."""
        if self.op != "*" and self.op != op:
            return False
        if self.pattern.fullmatch(path.rstrip("/")) is not None:
            return True
        return dst is not None and self.pattern.fullmatch(dst.rstrip("/")) is not None


def _rule_to_dict(rule: HookRule) -> dict[str, Any]:
    return {
        "id": rule.id,
        "op": rule.op,
        "glob": rule.glob,
        "action": rule.action,
        "message": rule.message,
        "created_at": rule.created_at,
    }


def _bump_version(session: Session) -> None:
    counter = session.get(Counter, RULES_VERSION, with_for_update=True)
    if counter is None:
        session.add(Counter(name=RULES_VERSION, value=1))
    else:
        counter.value += 1


class HookEngine:
    """Hook rules on the RecordStore (implements
    :class:`nexusfs.services.protocols.HookEngineProtocol`).

    Writers (``add_rule``/``remove_rule``) change the rule and bump ``rules_version``
    in one transaction, so a change is all-or-nothing and every worker sees it on its
    next version check (at most ``refresh_interval`` seconds later; 0 = check on every
    evaluation). ``clock`` is injectable for tests. Thread-safe.
    """

    def __init__(
        self,
        session_factory: sessionmaker[Session],
        *,
        refresh_interval: float = 0.2,
        clock: Callable[[], float] = time.monotonic,
        on_deny_ops: Callable[[frozenset[str]], None] | None = None,
    ) -> None:
        self._sessions = session_factory
        self._on_deny_ops = on_deny_ops
        self._reported: frozenset[str] | None = None
        self.refresh_interval = refresh_interval
        self._clock = clock
        self._lock = threading.Lock()
        self._version: int | None = None
        self._checked_at = -float("inf")
        self._deny: tuple[CompiledRule, ...] = ()
        self._emit: tuple[CompiledRule, ...] = ()

    # ------------------------------------------------------------- management

    def add_rule(
        self, op: str, glob: str, action: str, message: str | None = None
    ) -> dict[str, Any]:
        """Add a rule and return it as a dict (``id``, ``op``, ``glob``, ``action``,
        ``message``, ``created_at``). ``ValueError``/``InvalidPath`` for bad input (then
        nothing is stored)."""
        validate_rule(op, glob, action, message)
        glob = unicodedata.normalize("NFC", glob)
        with self._sessions.begin() as session:
            _bump_version(session)
            rule = HookRule(op=op, glob=glob, action=action, message=message,
                            created_at=time.time())  # fmt: skip
            session.add(rule)
            session.flush()
            out = _rule_to_dict(rule)
        self.invalidate()
        self.refresh()  # reload now, so the kernel hooks what the new rule needs
        return out

    def list_rules(self) -> list[dict[str, Any]]:
        """Every rule, ordered by ``id``."""
        with self._sessions() as session:
            rows = session.scalars(select(HookRule).order_by(HookRule.id))
            return [_rule_to_dict(r) for r in rows]

    def remove_rule(self, rule_id: int) -> bool:
        """Delete a rule; return whether it existed. ``ValueError`` for a non-integer id."""
        if isinstance(rule_id, bool) or not isinstance(rule_id, int):
            raise ValueError(f"rule_id must be an integer, not {rule_id!r}")
        with self._sessions.begin() as session:
            rule = session.get(HookRule, rule_id)
            if rule is None:
                return False
            session.delete(rule)
            _bump_version(session)
        self.invalidate()
        self.refresh()
        return True

    # ------------------------------------------------------------- evaluation

    def invalidate(self) -> None:
        """Make the next evaluation re-check ``rules_version`` (and reload if changed)."""
        with self._lock:
            self._checked_at = -float("inf")

    def deny_ops(self) -> frozenset[str]:
        """The syscalls some deny rule applies to (``"*"`` = all), as of the last
        refresh: exactly the ones the service must pre-hook."""
        return frozenset(r.op for r in self._deny)

    def refresh(self) -> None:
        """Reload the rules if their version changed (at most every
        ``refresh_interval``) and report a changed set of deny operations."""
        self._reload()
        ops = self.deny_ops()
        if self._on_deny_ops is not None and ops != self._reported:
            self._on_deny_ops(ops)
            self._reported = ops

    def _reload(self) -> None:
        now = self._clock()
        with self._lock:
            if now - self._checked_at < self.refresh_interval:
                return
            with self._sessions() as session:
                counter = session.get(Counter, RULES_VERSION)
                version = counter.value if counter is not None else 0
                if version != self._version:
                    rows = list(session.scalars(select(HookRule).order_by(HookRule.id)))
                    compiled = [
                        CompiledRule(r.id, r.op, r.glob, r.action, r.message,
                                     compile_glob(r.glob))
                        for r in rows
                    ]  # fmt: skip
                    self._deny = tuple(r for r in compiled if r.action == "deny")
                    self._emit = tuple(r for r in compiled if r.action == "emit")
                    self._version = version
            self._checked_at = now

    def check_deny(self, op: str, path: str, dst: str | None = None) -> CompiledRule | None:
        """The first ``deny`` rule (lowest id) matching the syscall, or ``None``.

        Database errors propagate (the pre-hook then fails the syscall with
        ``ServiceUnavailable``: rules are never silently skipped)."""
        self.refresh()
        for rule in self._deny:
            if rule.matches(op, path, dst):
                return rule
        return None

    def matching_emits(self, op: str, path: str, dst: str | None = None, *,
                       refresh: bool = True) -> list[CompiledRule]:
        """Every ``emit`` rule matching the syscall, by id (as of the last refresh with
        ``refresh=False``: for a batch of events, refreshed once before it)."""
        if refresh:
            self.refresh()
        return [rule for rule in self._emit if rule.matches(op, path, dst)]

    @property
    def has_emit_rules(self) -> bool:
        """Whether the cached rule set has any emit rule (as of the last refresh)."""
        return bool(self._emit)

    @property
    def has_deny_rules(self) -> bool:
        """Whether the cached rule set has any deny rule (as of the last refresh)."""
        return bool(self._deny)
