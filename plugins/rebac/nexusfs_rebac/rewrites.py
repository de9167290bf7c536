"""Evaluation closures for rewrite nodes, and the positive-mode walk.

Every relation of a model compiles (:mod:`nexusfs_rebac.plan`) to an ``Eval``:
``fn(resolver, object) -> FALSE | TRUE | UNKNOWN``, built from the closures here (one per
rewrite node, Kleene three-valued logic, see :mod:`nexusfs_rebac.resolve`), plus a
positive-mode ``pfn`` that is :func:`make_walk` for relations whose union-only region
reaches other relations.

Error semantics shared by all closures: a child that raises ``ResolutionTooComplex`` is
skipped while the node can still be decided by its other children (TRUE for a union,
FALSE for an intersection or exclusion); otherwise the error is re-raised.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from nexusfs_rebac.errors import ResolutionTooComplex
from nexusfs_rebac.resolve import ACTIVE, FALSE, TRUE, UNKNOWN, Eval, Resolver
from nexusfs_rebac.source import ComputedRelation

if TYPE_CHECKING:
    from nexusfs_rebac.plan import Plan, RelPlan

__all__ = [
    "computed",
    "computed_direct",
    "computed_ttu",
    "direct",
    "exclusion",
    "intersection",
    "make_walk",
    "ttu",
    "union",
]


def direct(
    rel: str,
    allowed: frozenset[str],
    usersets: list[tuple[str, RelPlan]],
    shortcut: list[tuple[str, RelPlan]],
) -> Eval:
    recurse = [(k, p) for k, p in usersets if not p.shortcut]

    def ev(res: Resolver, obj: str) -> int:
        d = res.read(obj, rel, allowed)
        if not d:
            return FALSE
        k = res.kind
        if k in allowed:
            s = d.get(k)
            if s and res.subject in s:
                return TRUE
        w = res.wild
        if w is not None and w in allowed and d.get(w):
            return TRUE
        if not usersets:
            return FALSE
        todo = usersets
        if res.pos:
            # Only TRUE matters here: test the usersets against the user's memberships.
            for kind, plan in shortcut:
                s = d.get(kind)
                if s and not res.members(plan).isdisjoint(s):
                    return TRUE
            todo = recurse
        return _any_target(res, d, todo)

    return ev


def computed_direct(cr: ComputedRelation, allowed: frozenset[str]) -> Eval:
    """A kernel-computed relation (validated to have concrete types only)."""

    def ev(res: Resolver, obj: str) -> int:
        d = cr.read(obj)
        k = res.kind
        if k in allowed:
            s = d.get(k)
            if s and res.subject in s:
                return TRUE
        return FALSE

    return ev


def _any_target(res: Resolver, d: Any, targets: list[tuple[str, RelPlan]]) -> int:
    """The union of ``plan`` over the tupleset's users of each target kind (three-valued:
    TRUE wins; a depth error is raised only if nothing granted)."""
    out = FALSE
    err: ResolutionTooComplex | None = None
    for kind, plan in targets:
        s = d.get(kind)
        if s:
            for p in s:
                try:
                    v = res.node(p, plan)
                except ResolutionTooComplex as e:
                    err = e
                    continue
                if v == TRUE:
                    return TRUE
                if v:
                    out = UNKNOWN
    if err is not None:
        raise err
    return out


def computed_ttu(cr: ComputedRelation, targets: list[tuple[str, RelPlan]]) -> Eval:
    """``X from Y`` where ``Y`` is kernel-computed (``viewer from parent``)."""

    def ev(res: Resolver, obj: str) -> int:
        d = cr.read(obj)
        return _any_target(res, d, targets) if d else FALSE

    return ev


def computed(plan: RelPlan) -> Eval:
    name = plan.name

    def ev(res: Resolver, obj: str) -> int:
        v = (res.pmemo if res.pos else res.memo).get((obj, name))
        if v is not None and v < ACTIVE:
            return v
        return res.node(obj, plan)

    return ev


def ttu(tupleset: str, allowed: frozenset[str], targets: list[tuple[str, RelPlan]]) -> Eval:
    def ev(res: Resolver, obj: str) -> int:
        d = res.read(obj, tupleset, allowed)
        return _any_target(res, d, targets) if d else FALSE

    return ev


def union(fns: list[Eval]) -> Eval:
    if len(fns) == 2:
        return _union2(*fns)
    if len(fns) == 3:
        return _union3(*fns)

    def ev(res: Resolver, obj: str) -> int:
        out = FALSE
        err: ResolutionTooComplex | None = None
        for f in fns:
            try:
                v = f(res, obj)
            except ResolutionTooComplex as e:
                err = e
                continue
            if v == TRUE:
                return TRUE
            if v:
                out = UNKNOWN
        if err is not None:
            raise err
        return out

    return ev


def _union2(f1: Eval, f2: Eval) -> Eval:
    """``f1 or f2`` unrolled (the common shapes are worth the saved loop overhead)."""

    def ev(res: Resolver, obj: str) -> int:
        try:
            v1 = f1(res, obj)
        except ResolutionTooComplex:
            if f2(res, obj) == TRUE:
                return TRUE
            raise
        if v1 == TRUE:
            return TRUE
        v2 = f2(res, obj)
        return v2 if v2 != FALSE else v1

    return ev


def _union3(f1: Eval, f2: Eval, f3: Eval) -> Eval:
    """``f1 or f2 or f3`` unrolled."""
    rest = _union2(f2, f3)

    def ev(res: Resolver, obj: str) -> int:
        try:
            v1 = f1(res, obj)
        except ResolutionTooComplex:
            if rest(res, obj) == TRUE:
                return TRUE
            raise
        if v1 == TRUE:
            return TRUE
        v2 = rest(res, obj)
        return v2 if v2 != FALSE else v1

    return ev


def intersection(fns: list[Eval]) -> Eval:
    def ev(res: Resolver, obj: str) -> int:
        out = TRUE
        err: ResolutionTooComplex | None = None
        for f in fns:
            try:
                v = f(res, obj)
            except ResolutionTooComplex as e:
                err = e
                continue
            if v == FALSE:
                return FALSE
            if v == UNKNOWN:
                out = UNKNOWN
        if err is not None:
            raise err
        return out

    return ev


def exclusion(base: Eval, subtract: Eval) -> Eval:
    def ev(res: Resolver, obj: str) -> int:
        err: ResolutionTooComplex | None = None
        try:
            b = base(res, obj)
        except ResolutionTooComplex as e:
            err, b = e, UNKNOWN
        if b == FALSE:
            return FALSE
        pos = res.pos
        res.pos = False  # "not excluded" must be exact: UNKNOWN is not FALSE here
        try:
            s = subtract(res, obj)
        except ResolutionTooComplex as e:
            err, s = e, UNKNOWN
        finally:
            res.pos = pos
        if s == TRUE:
            return FALSE
        if err is not None:
            raise err
        if b == TRUE and s == FALSE:
            return TRUE
        return UNKNOWN

    return ev


def make_walk(plan: Plan, root: RelPlan) -> Eval:
    """The positive-mode evaluator of ``root``: a walk over union-only reachability.

    State: objects carrying sets of relations still to examine. For each object the
    set is closed under computed usersets in union position (``viewer`` -> ``editor`` ->
    ``owner``), and its :class:`~nexusfs_rebac.plan.WalkGroup` says what to test: the
    plain direct terms of all those relations at once against the object's stored
    tuples (one :meth:`~nexusfs_rebac.source.TupleSource.read_subjects`: the user, its
    wildcard, its membership sets), the other direct terms and the ``and`` / ``but
    not`` parts through the ordinary closures; every ``X from Y`` in union position
    becomes one read of ``Y`` and a step to its objects with the set of their ``X``.

    Returns TRUE as soon as anything matches; FALSE when the region is exhausted (in
    positive mode FALSE stands for "not TRUE"). With memo bookkeeping (a resolver that
    answers several questions) the examined pairs are then memoised as FALSE if the
    walk met no node on the evaluation stack below its root (as in
    :meth:`Resolver.node`), and pairs already known not TRUE are not examined again.
    Object hops count against ``max_depth``.
    """
    start_key = (root.type, frozenset((root.name,)))
    name0 = root.name

    def ev(res: Resolver, obj0: str) -> int:
        pmemo = res.pmemo
        target = res.target
        reuse = res.reuse
        # Only a batch (memo bookkeeping) or a userset user (its own node) needs the
        # per-pair tests; a single check of a concrete user skips them.
        keyed = reuse or target is not None
        read_subjects = res.read_subjects
        ukind, subject, wild = res.kind, res.subject, res.wild
        msets = res.msets
        groups = plan.walk_groups
        root_depth = res.depth - 1  # node() entered the root already
        limit = res.max_depth
        seen: dict[str, frozenset[str]] = {}
        touched: list[tuple[str, str]] = []
        todo: list[tuple[str, tuple[str, frozenset[str]], int]] = [(obj0, start_key, root_depth)]
        err: ResolutionTooComplex | None = None
        too_deep = False
        while todo:
            o, key, level = todo.pop()
            group = groups.get(key) or plan.walk_group(*key)
            done = seen.get(o)
            if done is None:
                seen[o] = group.names
            else:
                fresh = group.names - done
                if not fresh:
                    continue
                seen[o] = done | fresh
                group = plan.group(group.type, fresh)
            skip: set[str] | None = None
            if keyed:
                live = False  # whether any relation here still needs its region walked
                for name in group.names:
                    pair = (o, name)
                    if pair == target:
                        return TRUE
                    if reuse and (o != obj0 or name != name0):
                        v = pmemo.get(pair)
                        if v is None:
                            touched.append(pair)
                        elif v == TRUE:
                            return TRUE
                        elif v < ACTIVE:
                            # Known not TRUE: nor is any of its direct terms, so the
                            # inline test below may include it; the rest is skipped.
                            skip = {name} if skip is None else skip | {name}
                            continue
                        # else: on the evaluation stack. Its region is reachable from
                        # here anyway, so walking on through it is sound; its marker
                        # stays.
                    live = True
                if not live:
                    continue
            allow = group.allow
            if allow:
                # The plain direct terms of every relation here, against the object's
                # tuples: the user, its wildcard, its memberships.
                by_kind = read_subjects(o)
                if by_kind:
                    x = by_kind.get(ukind)
                    if x is not None:
                        rs = x.get(subject)
                        if rs is not None and (a := allow.get(ukind)) and not rs.isdisjoint(a):
                            return TRUE
                    if wild is not None:
                        x = by_kind.get(wild)
                        if x is not None:
                            rs = x.get(wild)
                            if rs is not None and (a := allow.get(wild)) and not rs.isdisjoint(a):
                                return TRUE
                    for kind, splan, names in group.usersets:
                        x = by_kind.get(kind)
                        if x:
                            m = msets.get(splan.key)
                            if m is None:
                                try:
                                    m = res.members(splan)
                                except ResolutionTooComplex as e:
                                    err = e
                                    continue
                            keys = x.keys()
                            if not keys.isdisjoint(m):
                                for g in keys & m:
                                    if not x[g].isdisjoint(names):
                                        return TRUE
            for name, direct_fn, complex_fns in group.slow:
                if skip is not None and name in skip:
                    continue
                if direct_fn is not None:
                    try:
                        if direct_fn(res, o) == TRUE:
                            return TRUE
                    except ResolutionTooComplex as e:
                        err = e
                for f in complex_fns:
                    try:
                        if f(res, o) == TRUE:
                            return TRUE
                    except ResolutionTooComplex as e:
                        err = e
            if group.steps:
                if level + 1 > limit:
                    too_deep = True
                    continue
                for tupleset, cr, allowed, targets in group.steps:
                    d = cr.read(o) if cr is not None else res.read(o, tupleset, allowed)
                    if d:
                        for kind, target_key in targets:
                            s = d.get(kind)
                            if s:
                                for p in s:
                                    todo.append((p, target_key, level + 1))
        if err is not None:
            raise err
        if too_deep:
            raise ResolutionTooComplex(
                f"resolution needs more than {limit} nested steps (from {obj0}#{name0})"
            )
        if res.low >= root_depth:
            for pair in touched:
                pmemo[pair] = FALSE
        return FALSE

    return ev
