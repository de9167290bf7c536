"""Check evaluation: the per-request resolver, with three-valued results, cycle
detection and memoisation (the model is compiled in :mod:`nexusfs_rebac.plan`, the
rewrite closures live in :mod:`nexusfs_rebac.rewrites`).

**Semantics.** For a fixed user, every node ``object#relation`` has a value in Kleene's
three-valued logic: TRUE, FALSE or UNKNOWN. The value of a node is its rewrite evaluated
over its children (union = any TRUE, else UNKNOWN if any UNKNOWN, else FALSE;
intersection dually; ``a but not b`` = FALSE if ``a`` is FALSE or ``b`` is TRUE, TRUE if
``a`` is TRUE and ``b`` FALSE, else UNKNOWN). The answer is the least fixpoint in the
information order (start with every node UNKNOWN and iterate): the Kripke-Kleene model.
A node that is only reachable through a cycle stays UNKNOWN, and UNKNOWN is never
access: so a cycle never grants access, and a cycle under ``but not`` makes the
exclusion UNKNOWN (deny), never "not excluded".

**Evaluation.** Depth-first with a stack of the nodes being evaluated; meeting a node
already on the stack yields UNKNOWN. That computes exactly the fixpoint above for the
root, because each node's value is evaluated with the nodes above it pinned to UNKNOWN,
and a definite value obtained under that pinning is the true value (Kleene operators
are monotone). Memoisation within a request follows from the same argument: a definite
value is always cached; an UNKNOWN value is cached only if its evaluation met no stack
node below itself (tracked like Tarjan's low-link), i.e. it did not depend on the path
that led to it.

**Positive mode.** Wherever only "is it TRUE?" matters (everywhere except under the
right side of ``but not``, which needs exact FALSE), the resolver runs in positive mode:
FALSE and UNKNOWN are not told apart, which allows two shortcuts that are exact for
TRUE: union-only regions are evaluated as a reachability walk over objects carrying
*sets* of relations (one ``parent`` step serves ``viewer``, ``editor`` and ``owner``),
and plain userset relations such as ``group#member`` are decided by intersecting with
the user's membership set, computed once per request. Replacing UNKNOWN by FALSE only
ever lowers truth in positive positions (union, intersection, exclusion base), so a
TRUE found is TRUE and a TRUE is never missed. The two modes memoise apart.

**Depth.** ``max_depth`` bounds nesting: nodes on the evaluation stack (the root is
depth 0), plus the object hops (``from`` and userset steps) of a positive walk. A
branch that would go deeper raises :class:`ResolutionTooComplex`; a union still answers
TRUE if another branch is TRUE (and an intersection / exclusion FALSE when that is
decided without the branch), otherwise the error propagates: never a guessed answer.

**Type restrictions.** Direct terms read only the kinds of users the current model
allows for the relation, and ``X from Y`` follows only objects of types ``Y`` allows
that define ``X``; tuples a newer model forbids are thereby ignored, not errors.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import TYPE_CHECKING

from nexusfs_rebac.errors import ResolutionTooComplex
from nexusfs_rebac.source import BySubject, Kinds, TupleSource
from nexusfs_rebac.tuples import Subject

if TYPE_CHECKING:
    from nexusfs_rebac.plan import RelPlan

__all__ = ["ACTIVE", "FALSE", "TRUE", "UNKNOWN", "Eval", "Lister", "Read", "Resolver"]

FALSE, TRUE, UNKNOWN = 0, 1, 2
ACTIVE = 8  # memo values >= ACTIVE mark nodes on the stack (value - ACTIVE = depth)
_INF = 1 << 30

Eval = Callable[["Resolver", str], int]
Read = Callable[[str, str, Collection[str]], Kinds]
Lister = Callable[["RelPlan", "Resolver"], frozenset[str]]


class Resolver:
    """The state of one request for one user: the memo and the evaluation stack.

    Reusable for several top-level :meth:`node` calls with the same user and the same
    source state (batch_check, list_objects candidates); never across writes."""

    __slots__ = (
        "depth", "kind", "lister", "low", "max_depth", "memo", "msets", "pmemo", "pos", "read",
        "read_subjects", "reuse", "source", "subject", "target", "user", "wild",
    )  # fmt: skip

    def __init__(
        self,
        source: TupleSource,
        user: Subject,
        max_depth: int,
        lister: Lister,
        reuse: bool = True,
        msets: dict[str, frozenset[str]] | None = None,
    ) -> None:
        self.source = source
        # Whether more top-level questions will follow (batch, listings): only then is
        # it worth memoising every pair a positive walk examined.
        self.reuse = reuse
        self.read: Read = source.read
        self.read_subjects: Callable[[str], BySubject] = source.read_subjects
        # Positive mode: only whether a node is TRUE matters (the default at the top of
        # a check). Under ``but not`` the resolver switches to exact mode. Results of the
        # two modes are memoised apart: in positive mode FALSE may stand for UNKNOWN.
        self.pos = True
        self.lister = lister
        # The user's membership sets by shortcut plan: pure functions of the user and the
        # tuples, so a caller may share them across requests while nothing is written.
        self.msets: dict[str, frozenset[str]] = {} if msets is None else msets
        self.pmemo: dict[tuple[str, str], int] = {}
        self.user = user
        self.kind = user.kind
        self.subject = user.subject
        # A concrete user also matches its type's wildcard tuples.
        self.wild = f"{user.type}:*" if user.relation is None and user.id != "*" else None
        # A userset user ``g#m`` is trivially in node ``g#m``.
        self.target = (user.subject, user.relation) if user.relation is not None else None
        self.max_depth = max_depth
        # Finished nodes map to FALSE / TRUE / UNKNOWN; a node being evaluated maps to
        # ACTIVE + its depth (one dictionary serves as memo and stack).
        self.memo: dict[tuple[str, str], int] = {}
        self.depth = 0
        self.low = _INF

    def node(self, obj: str, plan: RelPlan) -> int:
        """The value of ``obj#plan`` (TRUE, FALSE or UNKNOWN). Raises
        :class:`ResolutionTooComplex` past ``max_depth``."""
        key = (obj, plan.name)
        memo = self.pmemo if self.pos else self.memo
        v = memo.get(key)
        if v is not None:
            if v < ACTIVE:
                return v
            # On the stack: a cycle. Remember the lowest stack depth it reached.
            if v - ACTIVE < self.low:
                self.low = v - ACTIVE
            return UNKNOWN
        if key == self.target:
            return TRUE
        depth = self.depth
        if depth > self.max_depth:
            raise ResolutionTooComplex(
                f"resolution needs more than {self.max_depth} nested steps "
                f"(reached {obj}#{plan.name})"
            )
        memo[key] = ACTIVE + depth
        self.depth = depth + 1
        outer = self.low
        self.low = _INF
        try:
            v = (plan.pfn if self.pos else plan.fn)(self, obj)
        except BaseException:
            del memo[key]
            self.depth = depth
            if outer < self.low:
                self.low = outer
            raise
        self.depth = depth
        low = self.low
        if low >= depth:
            # Met no stack node below itself: the value does not depend on the path.
            self.low = outer
            memo[key] = v
        else:
            if outer < low:
                self.low = outer
            if v == UNKNOWN:
                del memo[key]
            else:
                memo[key] = v
        return v

    def members(self, plan: RelPlan) -> frozenset[str]:
        """The objects ``g`` with ``g#plan`` TRUE for this user (shortcut plans only),
        computed once per request by the ``lister``."""
        got = self.msets.get(plan.key)
        if got is None:
            got = self.msets[plan.key] = self.lister(plan, self)
        return got
