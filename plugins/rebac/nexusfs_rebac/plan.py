"""A model compiled for evaluation.

:class:`Plan` turns each relation of an :class:`~nexusfs_rebac.model.AuthorizationModel`
into a :class:`RelPlan`: the exact three-valued evaluator ``fn``, the positive-mode
evaluator ``pfn`` (see :mod:`nexusfs_rebac.resolve`), the relation's union-position
leaves for the positive walk, its leaf terms with polarity for ``list_users``, and the
reverse edges ``list_objects`` walks. A plan is immutable once built and shared by all
requests; its small caches (relation-set closures, walk groups, relevance sets) only
ever grow with the same answers.

Kernel-computed relations (``parent``) are compiled in: their reads go straight to the
:class:`~nexusfs_rebac.source.ComputedRelation`, never to stored tuples.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from nexusfs_rebac.model import (
    AuthorizationModel,
    ComputedUserset,
    Direct,
    Exclusion,
    Intersection,
    RelationDef,
    Rewrite,
    TupleToUserset,
    Union,
)
from nexusfs_rebac.resolve import Eval, Resolver
from nexusfs_rebac.rewrites import (
    computed,
    computed_direct,
    computed_ttu,
    direct,
    exclusion,
    intersection,
    make_walk,
    ttu,
    union,
)
from nexusfs_rebac.source import ComputedRelation

__all__ = ["DirectSpec", "Edge", "Plan", "RelPlan", "WalkGroup", "WalkStep"]

DirectSpec = tuple[frozenset[str], ComputedRelation | None, tuple[tuple[str, "RelPlan"], ...]]


def _unset(res: Resolver, obj: str) -> int:  # pragma: no cover - replaced by compile
    raise AssertionError("relation plan used before it was compiled")


class RelPlan:
    """One compiled relation of one type."""

    __slots__ = (
        "allowed",
        "complex_fns",
        "computed_leaves",
        "definition",
        "dinline",
        "direct_fn",
        "fn",
        "key",
        "name",
        "pfn",
        "shortcut",
        "terms",
        "ttu_leaves",
        "type",
    )  # fmt: skip

    def __init__(self, type_name: str, definition: RelationDef) -> None:
        self.type = type_name
        self.name = definition.name
        self.key = f"{type_name}#{definition.name}"
        self.definition = definition
        self.allowed: frozenset[str] = definition.restriction_keys
        self.fn: Eval = _unset
        self.pfn: Eval = _unset
        # Union-position leaves (only unions between them and the root), for the walk:
        self.direct_fn: Eval | None = None  # the direct term's evaluator
        # The direct term as data, when the walk can test it inline (no userset kinds
        # that need recursion): (allowed kinds, computed resolver, shortcut usersets).
        self.dinline: DirectSpec | None = None
        self.complex_fns: tuple[Eval, ...] = ()  # 'and' / 'but not' parts
        self.computed_leaves: tuple[str, ...] = ()  # relations of the same object
        self.ttu_leaves: tuple[tuple[str, str], ...] = ()  # (tupleset, computed)
        # True if membership in this relation can be decided from the user's membership
        # set (a cheap reverse walk; see Plan._shortcuts).
        self.shortcut = False
        # (leaf rewrite, positive): every Direct / ComputedUserset / TupleToUserset leaf
        # with whether only unions lie between it and the root (used by list_users).
        self.terms: list[tuple[Rewrite, bool]] = []

    def __repr__(self) -> str:
        return f"RelPlan({self.key})"


@dataclass(frozen=True, slots=True)
class Edge:
    """A reverse edge for list_objects: membership in the source node implies
    (``positive``) or may imply (a candidate to check) membership in ``target``.

    ``via``: ``computed`` (same object), ``userset`` (objects with a tuple whose user is
    ``source_object#relation``, kind ``kind``), ``ttu`` (objects whose ``relation``
    tupleset points at the source object, kind ``kind``)."""

    target: RelPlan
    positive: bool
    via: str
    relation: str = ""
    kind: str = ""


#: A walk step: (tupleset, its computed resolver or None, its allowed kinds,
#: ((kind, walk group key ``(kind, relations of that kind's objects)``), ...)).
WalkStep = tuple[
    str, ComputedRelation | None, frozenset[str], tuple[tuple[str, tuple[str, frozenset[str]]], ...]
]


@dataclass(frozen=True, slots=True)
class WalkGroup:
    """What the positive walk does at one object of ``type`` for the set of relations
    ``names`` (closed under computed usersets in union position).

    * ``allow`` and ``usersets``: the direct terms the walk tests inline against the
      object's stored tuples (:meth:`TupleSource.read_subjects`), merged over the
      relations: ``allow[kind]`` = the relations whose direct term admits users of
      ``kind``; ``usersets`` = ``(kind, plan of the userset, relations admitting it)``
      for each userset kind decided by the user's membership set (shortcut plans);
    * ``slow``: ``(relation, direct term's evaluator or None, 'and' / 'but not'
      parts)`` for the relations with something the walk cannot test inline (a direct
      term with recursive usersets or a kernel-computed one, intersections,
      exclusions);
    * ``steps``: one :data:`WalkStep` per tupleset of the ``X from Y`` leaves."""

    type: str
    names: frozenset[str]
    allow: dict[str, frozenset[str]]
    usersets: tuple[tuple[str, RelPlan, frozenset[str]], ...]
    slow: tuple[tuple[str, Eval | None, tuple[Eval, ...]], ...]
    steps: tuple[WalkStep, ...]


@dataclass(slots=True)
class _Reverse:
    edges_from: dict[tuple[str, str], list[Edge]] = field(default_factory=dict)
    # direct kind ("user", "user:*") -> [(target, positive)]
    seeds: dict[str, list[tuple[RelPlan, bool]]] = field(default_factory=dict)


class Plan:
    """A model compiled for evaluation: a :class:`RelPlan` per relation, and the reverse
    edges ``list_objects`` walks. Immutable once built; shared by all requests."""

    def __init__(
        self,
        model: AuthorizationModel,
        computed: Mapping[tuple[str, str], ComputedRelation] | None = None,
    ) -> None:
        self.model = model
        # Kernel-computed relations are read from their resolver directly (no stored
        # tuples, no routing on the hot path).
        self.computed = dict(computed or {})
        self.rels: dict[tuple[str, str], RelPlan] = {}
        for t in model.types:
            for r in t.relations:
                self.rels[(t.name, r.name)] = RelPlan(t.name, r)
        self.reverse = _Reverse()
        self._relevant: dict[tuple[str, str], frozenset[tuple[str, str]]] = {}
        self._reverse_for: dict[tuple[str, str], _Reverse] = {}
        self._closures: dict[tuple[str, frozenset[str]], frozenset[str]] = {}
        self._groups: dict[tuple[str, frozenset[str]], WalkGroup] = {}
        self.walk_groups: dict[tuple[str, frozenset[str]], WalkGroup] = {}
        for rp in self.rels.values():
            self._terms(rp, rp.definition.rewrite, True)
            self._edges(rp, rp.definition.rewrite, True)
        self._shortcuts()
        for rp in self.rels.values():
            rp.fn = self._compile(rp, rp.definition.rewrite)
            self._leaves(rp)
        for rp in self.rels.values():
            walks = rp.computed_leaves or rp.ttu_leaves
            rp.pfn = make_walk(self, rp) if walks else rp.fn

    def rel(self, type_name: str, relation: str) -> RelPlan | None:
        return self.rels.get((type_name, relation))

    def _leaves(self, rp: RelPlan) -> None:
        """Collect ``rp``'s union-position leaves for the positive walk."""
        complex_: list[Eval] = []
        comp: list[str] = []
        ttus: list[tuple[str, str]] = []

        def visit(rw: Rewrite) -> None:
            if isinstance(rw, Union):
                for c in rw.children:
                    visit(c)
            elif isinstance(rw, Direct):
                rp.direct_fn = self._compile(rp, rw)
                usersets = [
                    (x.key, self.rels[(x.type, x.relation)])
                    for x in rw.restrictions
                    if x.relation is not None
                ]
                if all(p.shortcut for _, p in usersets):
                    cr = self.computed.get((rp.type, rp.name))
                    rp.dinline = (rp.allowed, cr, tuple(usersets))
            elif isinstance(rw, ComputedUserset):
                comp.append(rw.relation)
            elif isinstance(rw, TupleToUserset):
                ttus.append((rw.tupleset, rw.computed))
            else:
                complex_.append(self._compile(rp, rw))

        visit(rp.definition.rewrite)
        rp.complex_fns, rp.computed_leaves, rp.ttu_leaves = (
            tuple(complex_),
            tuple(comp),
            tuple(ttus),
        )

    def closure(self, type_name: str, rels: frozenset[str]) -> frozenset[str]:
        """``rels`` plus every relation of the same type they include through computed
        usersets in union position (``viewer`` -> ``editor`` -> ``owner``)."""
        key = (type_name, rels)
        got = self._closures.get(key)
        if got is None:
            out = set(rels)
            todo = list(rels)
            while todo:
                for r2 in self.rels[(type_name, todo.pop())].computed_leaves:
                    if r2 not in out:
                        out.add(r2)
                        todo.append(r2)
            got = self._closures[key] = frozenset(out)
        return got

    def walk_group(self, type_name: str, rels: frozenset[str]) -> WalkGroup:
        """``group(type_name, closure(type_name, rels))``, cached in one step."""
        key = (type_name, rels)
        got = self.walk_groups.get(key)
        if got is None:
            got = self.walk_groups[key] = self.group(type_name, self.closure(type_name, rels))
        return got

    def group(self, type_name: str, rels: frozenset[str]) -> WalkGroup:
        """The :class:`WalkGroup` for examining ``rels`` on objects of ``type_name``."""
        key = (type_name, rels)
        got = self._groups.get(key)
        if got is None:
            plans = tuple(self.rels[(type_name, r)] for r in sorted(rels))
            by_tupleset: dict[str, set[str]] = {}
            for rp in plans:
                for tupleset, comp in rp.ttu_leaves:
                    by_tupleset.setdefault(tupleset, set()).add(comp)
            steps: list[WalkStep] = []
            for tupleset, comps in sorted(by_tupleset.items()):
                ts = self.rels[(type_name, tupleset)]
                targets = tuple(
                    (kind, (kind, xs))
                    for kind in sorted(ts.allowed)
                    if (xs := frozenset(c for c in comps if (kind, c) in self.rels))
                )
                cr = self.computed.get((type_name, tupleset))
                steps.append((tupleset, cr, ts.allowed, targets))
            allow: dict[str, set[str]] = {}
            usersets: dict[str, tuple[RelPlan, set[str]]] = {}
            slow: list[tuple[str, Eval | None, tuple[Eval, ...]]] = []
            for rp in plans:
                spec = rp.dinline
                inline = spec is not None and spec[1] is None
                if inline:
                    for kind in rp.allowed:
                        allow.setdefault(kind, set()).add(rp.name)
                    for kind, splan in spec[2] if spec is not None else ():
                        usersets.setdefault(kind, (splan, set()))[1].add(rp.name)
                if (not inline and rp.direct_fn is not None) or rp.complex_fns:
                    slow.append((rp.name, None if inline else rp.direct_fn, rp.complex_fns))
            got = self._groups[key] = WalkGroup(
                type_name,
                rels,
                {kind: frozenset(names) for kind, names in allow.items()},
                tuple((kind, sp, frozenset(ns)) for kind, (sp, ns) in sorted(usersets.items())),
                tuple(slow),
                tuple(steps),
            )
        return got

    def _shortcuts(self) -> None:
        """Mark userset targets (``group#member`` in ``[group#member]``) whose every
        relevant relation is a plain stored direct relation: the set of such objects a
        user is in comes from a reverse walk with no checks (all edges positive), and
        then deciding a direct term is a set intersection instead of one recursive
        check per group."""
        for rp in self.rels.values():
            for term, _ in rp.terms:
                if not isinstance(term, Direct):
                    continue
                for x in term.restrictions:
                    if x.relation is None:
                        continue
                    target = self.rels[(x.type, x.relation)]
                    target.shortcut = all(
                        isinstance(self.rels[k].definition.rewrite, Direct)
                        and k not in self.computed
                        for k in self.relevant(target)
                    )

    # ----------------------------------------------------------------- compile

    def _targets(
        self, rp: RelPlan, tupleset: str, computed: str
    ) -> tuple[frozenset[str], list[tuple[str, RelPlan]]]:
        """The tupleset's allowed kinds, and ``(kind, plan of computed on that kind)``
        for each allowed type that defines ``computed``."""
        ts = self.rels[(rp.type, tupleset)]
        out = []
        for kind in sorted(ts.allowed):
            target = self.rels.get((kind, computed))
            if target is not None:
                out.append((kind, target))
        return ts.allowed, out

    def _compile(self, rp: RelPlan, rw: Rewrite) -> Eval:
        if isinstance(rw, Direct):
            usersets = [
                (x.key, self.rels[(x.type, x.relation)])
                for x in rw.restrictions
                if x.relation is not None
            ]
            shortcut = [(k, p) for k, p in usersets if p.shortcut]
            cr = self.computed.get((rp.type, rp.name))
            if cr is not None:
                return computed_direct(cr, rp.allowed)
            return direct(rp.name, rp.allowed, usersets, shortcut)
        if isinstance(rw, ComputedUserset):
            return computed(self.rels[(rp.type, rw.relation)])
        if isinstance(rw, TupleToUserset):
            allowed, targets = self._targets(rp, rw.tupleset, rw.computed)
            cr = self.computed.get((rp.type, rw.tupleset))
            if cr is not None:
                return computed_ttu(cr, targets)
            return ttu(rw.tupleset, allowed, targets)
        if isinstance(rw, Union):
            # Cheap terms first: a direct read before recursion into other nodes.
            order = sorted(rw.children, key=lambda c: 0 if isinstance(c, Direct) else 1)
            return union([self._compile(rp, c) for c in order])
        if isinstance(rw, Intersection):
            return intersection([self._compile(rp, c) for c in rw.children])
        assert isinstance(rw, Exclusion)
        return exclusion(self._compile(rp, rw.base), self._compile(rp, rw.subtract))

    def _terms(self, rp: RelPlan, rw: Rewrite, positive: bool) -> None:
        if isinstance(rw, Direct | ComputedUserset | TupleToUserset):
            rp.terms.append((rw, positive))
        elif isinstance(rw, Union):
            for c in rw.children:
                self._terms(rp, c, positive)
        elif isinstance(rw, Intersection):
            for c in rw.children:
                self._terms(rp, c, False)
        else:
            assert isinstance(rw, Exclusion)
            self._terms(rp, rw.base, False)
            self._terms(rp, rw.subtract, False)

    def _edges(self, rp: RelPlan, rw: Rewrite, positive: bool) -> None:
        """Reverse edges into ``rp``. Following one operand of an intersection (the
        first) and the base of an exclusion is enough: a TRUE node has a TRUE chain
        through them; the candidates found that way are then checked."""
        rev = self.reverse
        if isinstance(rw, Direct):
            for x in rw.restrictions:
                if x.relation is None:
                    rev.seeds.setdefault(x.key, []).append((rp, positive))
                else:
                    rev.edges_from.setdefault((x.type, x.relation), []).append(
                        Edge(rp, positive, "userset", rp.name, x.key)
                    )
        elif isinstance(rw, ComputedUserset):
            rev.edges_from.setdefault((rp.type, rw.relation), []).append(
                Edge(rp, positive, "computed")
            )
        elif isinstance(rw, TupleToUserset):
            for kind, target in self._targets(rp, rw.tupleset, rw.computed)[1]:
                rev.edges_from.setdefault((target.type, target.name), []).append(
                    Edge(rp, positive, "ttu", rw.tupleset, kind)
                )
        elif isinstance(rw, Union):
            for c in rw.children:
                self._edges(rp, c, positive)
        elif isinstance(rw, Intersection):
            self._edges(rp, rw.children[0], False)
        else:
            assert isinstance(rw, Exclusion)
            self._edges(rp, rw.base, False)

    def reverse_for(self, target: RelPlan) -> _Reverse:
        """The reverse seeds and edges restricted to nodes that can reach ``target``
        (cached): list_objects for ``target`` needs nothing else."""
        key = (target.type, target.name)
        got = self._reverse_for.get(key)
        if got is None:
            keep = self.relevant(target)
            got = _Reverse(
                {
                    src: live
                    for src, edges in self.reverse.edges_from.items()
                    if src in keep
                    and (live := [e for e in edges if (e.target.type, e.target.name) in keep])
                },
                {
                    kind: kept
                    for kind, seeds in self.reverse.seeds.items()
                    if (kept := [(rp, pos) for rp, pos in seeds if (rp.type, rp.name) in keep])
                },
            )
            self._reverse_for[key] = got
        return got

    def relevant(self, target: RelPlan) -> frozenset[tuple[str, str]]:
        """The nodes ``(type, relation)`` from which reverse edges can reach
        ``target`` (including itself): list_objects expands nothing else."""
        key = (target.type, target.name)
        got = self._relevant.get(key)
        if got is None:
            into: dict[tuple[str, str], list[tuple[str, str]]] = {}
            for src, edges in self.reverse.edges_from.items():
                for e in edges:
                    into.setdefault((e.target.type, e.target.name), []).append(src)
            seen = {key}
            todo = [key]
            while todo:
                for src in into.get(todo.pop(), ()):
                    if src not in seen:
                        seen.add(src)
                        todo.append(src)
            got = self._relevant[key] = frozenset(seen)
        return got
