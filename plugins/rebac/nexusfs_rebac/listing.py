"""``list_objects``, ``list_users`` and ``expand`` over a compiled :class:`Plan`.

Both listings compute exactly the set of answers ``check`` gives TRUE for (the
three-valued semantics of :mod:`nexusfs_rebac.resolve`), so the three always agree:

* **list_objects** walks the model backwards from the user, breadth first, one *set* of
  objects per ``type#relation`` at a time (set operations and one batched ``reverse``
  lookup per edge and level, no per-object recursion). Membership that follows along
  unions only is certain; membership that passes an intersection or the base of an
  exclusion yields *candidates*, confirmed by a check that shares one memo with every
  other candidate of the request. Only ``type#relation`` nodes that can lead to the
  requested relation are expanded.
* **list_users** walks the model forwards from the object, breadth first, one batched
  ``read_many`` per relation and level, collecting every user of the requested types it
  meets. Users met along unions only are certain; the others are checked. A wildcard
  ``user:*`` in the answer means every user of that type *except* the ones listed in
  ``excluded`` (users met on the way whose check is FALSE, e.g. under ``but not``).

* **memberships** is ``list_objects`` for a *shortcut* relation (``group#member`` when
  every relation that can lead to it is a plain stored direct relation, see
  :attr:`~nexusfs_rebac.plan.RelPlan.shortcut`): every reverse edge is then certain,
  so it is a plain breadth-first closure over ``reverse`` lookups, computed once per
  check to decide userset terms by set intersection.

A walk longer than ``max_depth`` levels raises
:class:`~nexusfs_rebac.errors.ResolutionTooComplex`, as a check would.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any

from nexusfs_rebac.errors import ResolutionTooComplex
from nexusfs_rebac.model import (
    ComputedUserset,
    Direct,
    Exclusion,
    Intersection,
    Rewrite,
    TupleToUserset,
    Union,
)
from nexusfs_rebac.plan import Plan, RelPlan
from nexusfs_rebac.resolve import TRUE, Resolver
from nexusfs_rebac.source import TupleSource
from nexusfs_rebac.tuples import Subject

__all__ = ["UserList", "expand", "list_objects", "list_users", "memberships"]


@dataclass(frozen=True, slots=True)
class UserList:
    """The answer of ``list_users``: ``users`` (sorted; may contain a wildcard
    ``type:*`` and usersets ``type:id#relation``) and ``excluded``: concrete users of a
    type whose wildcard is in ``users`` but who do not have the relation."""

    users: tuple[str, ...]
    excluded: tuple[str, ...] = ()

    def includes(self, user: str) -> bool:
        """Whether ``user`` has the relation according to this answer: listed, or
        covered by its type's wildcard and not excluded. Equals ``check(user, ...)``."""
        if user in self.users:
            return True
        t, _, rest = user.partition(":")
        if "#" in rest or rest == "*":
            return False
        return f"{t}:*" in self.users and user not in self.excluded

    def to_json(self) -> dict[str, list[str]]:
        return {"users": list(self.users), "excluded": list(self.excluded)}


def _too_deep(what: str, max_depth: int) -> ResolutionTooComplex:
    return ResolutionTooComplex(f"{what} needs more than {max_depth} nested steps")


def list_objects(
    plan: Plan,
    source: TupleSource,
    user: Subject,
    target: RelPlan,
    resolver: Resolver,
    max_depth: int,
) -> set[str]:
    """Objects of ``target.type`` whose ``target`` relation holds ``user``."""
    rev = plan.reverse_for(target)  # only what can lead to target
    found: dict[tuple[str, str], set[str]] = {}
    queue: deque[tuple[int, RelPlan, set[str]]] = deque()

    def add(rp: RelPlan, objs: Collection[str], level: int, positive: bool) -> None:
        if not objs:
            return
        key = (rp.type, rp.name)
        cur = found.get(key)
        if cur is None:
            cur = found[key] = set()
            new = set(objs)
        else:
            new = set(objs) - cur
        if new and not positive:
            new = {o for o in new if resolver.node(o, rp) == TRUE}
        if new:
            if level > max_depth:
                raise _too_deep("listing objects", max_depth)
            cur |= new
            queue.append((level, rp, new))

    if user.relation is None:
        # A concrete user is in tuples naming it and in its type's wildcard tuples.
        seeds = [(user.kind, user.subject)]
        if user.id != "*":
            seeds.append((f"{user.type}:*", f"{user.type}:*"))
        for kind, subject in seeds:
            for rp, positive in rev.seeds.get(kind, ()):
                add(rp, source.reverse(rp.name, rp.type, kind, (subject,)), 0, positive)
    else:
        own = plan.rel(user.type, user.relation)
        assert own is not None  # validated by the engine
        # A userset is trivially in itself; level -1 so that a direct tuple holding it is
        # level 0, the depth at which check finds it.
        if (own.type, own.name) in plan.relevant(target):
            add(own, (user.subject,), -1, True)
    while queue:
        level, rp, objs = queue.popleft()
        for e in rev.edges_from.get((rp.type, rp.name), ()):
            if e.via == "computed":
                add(e.target, objs, level + 1, e.positive)
            else:
                hits = source.reverse(e.relation, e.target.type, e.kind, objs)
                add(e.target, hits, level + 1, e.positive)
    return found.get((target.type, target.name), set())


def memberships(
    plan: Plan, source: TupleSource, user: Subject, target: RelPlan, max_depth: int
) -> frozenset[str]:
    """``list_objects(plan, source, user, target, ...)`` for a shortcut ``target``
    (``target.shortcut``; ``source`` need not route computed relations, none can lead to
    it), without checks: the same answer and the same depth rule (an object first
    reached past ``max_depth`` levels raises
    :class:`~nexusfs_rebac.errors.ResolutionTooComplex`). Breadth first, one level at a
    time, so every object is reached at its lowest level, as in ``list_objects``."""
    assert target.shortcut, f"{target.key} is not a shortcut relation"
    rev = plan.reverse_for(target)
    edges_from = rev.edges_from
    found: dict[tuple[str, str], set[str]] = {}
    frontier: list[tuple[RelPlan, Collection[str]]] = []
    level = 0
    if user.relation is None:
        for rp, _ in rev.seeds.get(user.kind, ()):
            frontier.append((rp, source.reverse(rp.name, rp.type, user.kind, (user.subject,))))
        if user.id != "*":
            wild = f"{user.type}:*"
            for rp, _ in rev.seeds.get(wild, ()):
                frontier.append((rp, source.reverse(rp.name, rp.type, wild, (wild,))))
    else:
        own = plan.rel(user.type, user.relation)
        assert own is not None  # validated by the engine
        if (own.type, own.name) in plan.relevant(target):
            frontier.append((own, (user.subject,)))
            level = -1  # the userset itself; a tuple holding it is level 0, as in check
    while frontier:
        arrived: list[tuple[RelPlan, set[str]]] = []
        for rp, objs in frontier:
            if not objs:
                continue
            cur = found.get((rp.type, rp.name))
            if cur is None:
                new = set(objs)
                found[(rp.type, rp.name)] = set(new)
            else:
                new = set(objs).difference(cur)
                if not new:
                    continue
                cur |= new
            if level > max_depth:
                raise _too_deep("listing objects", max_depth)
            arrived.append((rp, new))
        frontier = []
        for rp, new in arrived:
            for e in edges_from.get((rp.type, rp.name), ()):
                if e.via == "computed":
                    frontier.append((e.target, new))
                else:
                    frontier.append(
                        (e.target, source.reverse(e.relation, e.target.type, e.kind, new))
                    )
        level += 1
    return frozenset(found.get((target.type, target.name), ()))


def _user_string(kind: str, subject: str) -> str:
    _, hash_, rel = kind.partition("#")
    return f"{subject}#{rel}" if hash_ else subject


def list_users(
    plan: Plan,
    source: TupleSource,
    obj: str,
    root: RelPlan,
    filters: list[tuple[str, str | None]],
    check: Callable[[str], bool],
    max_depth: int,
) -> UserList:
    """Users (of the types in ``filters``: ``(type, None)`` for concrete users and the
    wildcard, ``(type, relation)`` for usersets) that hold ``obj#root``; ``check(user)``
    decides candidates that are not certain."""
    concrete = {t for t, r in filters if r is None}
    usersets = {f"{t}#{r}" for t, r in filters if r is not None}
    visited: dict[tuple[str, str], bool] = {}
    cands: dict[str, bool] = {}

    def cand(user: str, positive: bool) -> None:
        if positive or user not in cands:
            cands[user] = positive or cands.get(user, False)

    frontier: dict[RelPlan, dict[str, bool]] = {}

    def reach(o: str, rp: RelPlan, positive: bool, into: dict[RelPlan, dict[str, bool]]) -> None:
        key = (o, rp.name)
        prev = visited.get(key)
        if prev is None or (positive and not prev):
            visited[key] = positive
            slot = into.setdefault(rp, {})
            slot[o] = positive or slot.get(o, False)
            if rp.key in usersets:
                cand(f"{o}#{rp.name}", positive)

    reach(obj, root, True, frontier)
    level = 0
    while frontier:
        nxt: dict[RelPlan, dict[str, bool]] = {}
        for rp, objs in frontier.items():
            for term, tpos in rp.terms:
                if isinstance(term, ComputedUserset):
                    target = plan.rels[(rp.type, term.relation)]
                    for o, p in objs.items():
                        reach(o, target, p and tpos, nxt)
                    continue
                if isinstance(term, Direct):
                    rows = source.read_many(objs.keys(), rp.name, rp.allowed)
                    for o, d in rows.items():
                        p = objs[o] and tpos
                        for kind in rp.allowed:
                            subjects = d.get(kind)
                            if not subjects:
                                continue
                            t, hash_, rel = kind.partition("#")
                            if hash_:
                                target = plan.rels[(t, rel)]
                                for g in subjects:
                                    reach(g, target, p, nxt)
                            elif kind.endswith(":*"):
                                if kind[:-2] in concrete:
                                    cand(kind, p)
                            elif kind in concrete:
                                for s in subjects:
                                    cand(s, p)
                    continue
                assert isinstance(term, TupleToUserset)
                ts = plan.rels[(rp.type, term.tupleset)]
                rows = source.read_many(objs.keys(), ts.name, ts.allowed)
                for o, d in rows.items():
                    p = objs[o] and tpos
                    for kind in ts.allowed:
                        target_rp = plan.rels.get((kind, term.computed))
                        subjects = d.get(kind)
                        if target_rp is not None and subjects:
                            for s in subjects:
                                reach(s, target_rp, p, nxt)
        if nxt and level + 1 > max_depth:
            raise _too_deep("listing users", max_depth)
        frontier = nxt
        level += 1
    users = {u for u, positive in cands.items() if positive or check(u)}
    excluded = {
        u
        for u in cands
        if u not in users
        and "#" not in u
        and not u.endswith(":*")
        and f"{u.partition(':')[0]}:*" in users
    }
    return UserList(tuple(sorted(users)), tuple(sorted(excluded)))


def expand(plan: Plan, source: TupleSource, obj: str, rp: RelPlan) -> dict[str, Any]:
    """One level of the userset tree of ``obj#rp`` (see ``Engine.expand``)."""
    name = f"{obj}#{rp.name}"

    def node(rw: Rewrite) -> dict[str, Any]:
        if isinstance(rw, Direct):
            d = source.read(obj, rp.name, rp.allowed)
            users = sorted(_user_string(kind, s) for kind in rp.allowed for s in d.get(kind, ()))
            return {"name": name, "leaf": {"users": users}}
        if isinstance(rw, ComputedUserset):
            return {"name": name, "leaf": {"computed": {"userset": f"{obj}#{rw.relation}"}}}
        if isinstance(rw, Union | Intersection):
            op = "union" if isinstance(rw, Union) else "intersection"
            return {"name": name, op: {"nodes": [node(c) for c in rw.children]}}
        if isinstance(rw, Exclusion):
            return {"name": name, "difference": {"base": node(rw.base),
                                                  "subtract": node(rw.subtract)}}  # fmt: skip
        ts = plan.rels[(rp.type, rw.tupleset)]
        d = source.read(obj, ts.name, ts.allowed)
        computed = sorted(
            f"{s}#{rw.computed}"
            for kind in ts.allowed
            if (kind, rw.computed) in plan.rels
            for s in d.get(kind, ())
        )
        return {
            "name": name,
            "leaf": {
                "tuple_to_userset": {"tupleset": f"{obj}#{rw.tupleset}", "computed": computed}
            },
        }

    return node(rp.definition.rewrite)
