"""The ReBAC engine: Zanzibar-style evaluation of one model over one tuple source.

::

    engine = Engine(parse_model(dsl), MemoryTupleSource(tuples))
    engine.check("user:anne", "viewer", "document:1")               # -> bool
    engine.batch_check([("user:anne", "viewer", "document:1"), ...])  # -> [bool, ...]
    engine.expand("viewer", "document:1")                           # -> userset tree
    engine.list_objects("user:anne", "viewer", "document")          # -> ["document:1", ...]
    engine.list_users("document:1", "viewer", ["user", "group#member"])  # -> UserList

The three questions always agree: ``o in list_objects(u, r, T)`` iff ``check(u, r, o)``
iff ``list_users(o, r, [...]).includes(u)``, for concrete users, wildcards (``user:*``)
and usersets (``group:eng#member``) alike. Semantics (cycles, ``but not``, depth) are
those of :mod:`nexusfs_rebac.resolve`; tuples the model does not allow are ignored.

**Contextual tuples** (every method takes ``contextual_tuples``) are validated against
the model (:class:`InvalidTuple`) and count as stored for that one request.

**Computed relations**: ``computed={"file#parent": hierarchy, ...}`` makes those
relations come from a :class:`~nexusfs_rebac.source.ComputedRelation` instead of stored
tuples (see :mod:`nexusfs_rebac.hierarchy`). Keys naming a relation the model does not
have are ignored (a custom model need not have ``parent``); a relation that exists must
be a plain direct relation with concrete types (``define parent: [folder]``), else
:class:`ModelError`.

Failure semantics: bad arguments raise :class:`InvalidRequest` before any reads;
:class:`ResolutionTooComplex` when an answer needs more than ``max_depth`` nested steps;
exceptions raised by the source propagate unchanged. No answer is cached between
calls, so an answer reflects the source's state during the call (the engine only
caches parsed argument strings and the compiled model; a caller that knows the source
is unchanged may pass ``shared=`` memberships, see :meth:`Engine.check`). An engine may be shared by
threads as long as its source may; create one per (model, source) and reuse it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from functools import lru_cache
from typing import Any

from nexusfs_rebac.errors import (
    InvalidRequest,
    InvalidTuple,
    ModelError,
    ResolutionTooComplex,
)
from nexusfs_rebac.listing import UserList, expand, list_objects, list_users, memberships
from nexusfs_rebac.model import AuthorizationModel, Direct
from nexusfs_rebac.plan import Plan, RelPlan
from nexusfs_rebac.resolve import TRUE, Resolver
from nexusfs_rebac.source import (
    ComputedRelation,
    ComputedSource,
    MemoryTupleSource,
    OverlaySource,
    TupleSource,
)
from nexusfs_rebac.tuples import Subject, TupleKey, parse_object, parse_user, validate_tuple

__all__ = ["DEFAULT_MAX_DEPTH", "CheckItem", "Engine", "Memberships", "compile_model"]

DEFAULT_MAX_DEPTH = 25
_CACHE_MAX = 1 << 16

TupleLike = TupleKey | str | tuple[str, str, str]
CheckItem = tuple[str, str, str] | Mapping[str, str]
#: Group memberships remembered across requests: user -> shortcut plan key -> the
#: objects ``g`` with ``g#relation`` TRUE for that user (see :meth:`Engine.check`).
Memberships = dict[str, dict[str, frozenset[str]]]


@lru_cache(maxsize=32)
def compile_model(
    model: AuthorizationModel,
    computed: tuple[tuple[tuple[str, str], ComputedRelation], ...] = (),
) -> Plan:
    """The model compiled for evaluation, with ``computed`` relations (``((type,
    relation), resolver)`` pairs) compiled in; cached by ``model_id`` and resolver
    identity, so engines for the same model and hierarchy share one plan."""
    return Plan(model, dict(computed))


class Engine:
    """Evaluates ``model`` over ``source``; see the module docstring."""

    def __init__(
        self,
        model: AuthorizationModel,
        source: TupleSource,
        *,
        computed: Mapping[str, ComputedRelation] | None = None,
        max_depth: int = DEFAULT_MAX_DEPTH,
    ) -> None:
        if not isinstance(model, AuthorizationModel):
            raise InvalidRequest(f"model must be an AuthorizationModel, not {type(model).__name__}")
        if isinstance(max_depth, bool) or not isinstance(max_depth, int) or max_depth < 1:
            raise InvalidRequest(f"max_depth must be a positive integer, got {max_depth!r}")
        self.model = model
        self.max_depth = max_depth
        self._computed = self._bind_computed(computed or {})
        self.plan = compile_model(model, tuple(sorted(self._computed.items(), key=lambda i: i[0])))
        self._lister_fn = self._lister
        # Parsed and validated argument strings (pure functions of the string and the
        # model), bounded: cleared when they reach _CACHE_MAX entries.
        self._objects: dict[str, str] = {}
        self._users: dict[str, Subject] = {}
        self.stored = source
        # Checks read stored tuples directly (computed relations are compiled into the
        # plan); listings go through the routing wrapper.
        self.source: TupleSource = (
            ComputedSource(source, self._computed) if self._computed else source
        )

    def _bind_computed(
        self, computed: Mapping[str, ComputedRelation]
    ) -> dict[tuple[str, str], ComputedRelation]:
        out: dict[tuple[str, str], ComputedRelation] = {}
        for key, resolver in computed.items():
            t, hash_, rel = key.partition("#")
            if not hash_ or not t or not rel:
                raise InvalidRequest(f"computed relation keys are 'type#relation', got {key!r}")
            rd = self.model.relation(t, rel)
            if rd is None:
                continue
            rw = rd.rewrite
            if not isinstance(rw, Direct) or any(
                x.wildcard or x.relation is not None for x in rw.restrictions
            ):
                raise ModelError(
                    f"relation '{key}' is computed by the kernel, so the model must define it "
                    "as a plain direct relation with concrete types, like 'define "
                    f"{rel}: [folder]'"
                )
            out[(t, rel)] = resolver
        return out

    # ------------------------------------------------------------------ helpers

    def _rel(self, object_type: str, relation: str) -> RelPlan:
        rp = self.plan.rel(object_type, relation)
        if rp is None:
            if self.model.type(object_type) is None:
                raise InvalidRequest(f"type '{object_type}' is not in the model")
            raise InvalidRequest(f"type '{object_type}' has no relation '{relation}'")
        return rp

    def _user(self, user: str) -> Subject:
        s = self._users.get(user) if isinstance(user, str) else None
        if s is not None:
            return s
        s = parse_user(user)
        if self.model.type(s.type) is None:
            raise InvalidRequest(f"user {user!r}: type '{s.type}' is not in the model")
        if s.relation is not None and self.plan.rel(s.type, s.relation) is None:
            raise InvalidRequest(f"user {user!r}: type '{s.type}' has no relation '{s.relation}'")
        if len(self._users) >= _CACHE_MAX:
            self._users.clear()
        self._users[user] = s
        return s

    def _target(self, object: str, relation: str) -> RelPlan:
        """The plan of ``object#relation``; raises :class:`InvalidRequest`."""
        otype = self._objects.get(object) if isinstance(object, str) else None
        if otype is None:
            otype = parse_object(object)[0]
            if len(self._objects) >= _CACHE_MAX:
                self._objects.clear()
            self._objects[object] = otype
        rp = self.plan.rels.get((otype, relation))
        return rp if rp is not None else self._rel(otype, relation)

    def _listing_source(self, stored: TupleSource) -> TupleSource:
        return ComputedSource(stored, self._computed) if self._computed else stored

    def _source(self, contextual_tuples: Iterable[TupleLike] | None) -> TupleSource:
        """The stored tuples plus the request's contextual tuples (for checks; wrap with
        :meth:`_listing_source` for listings)."""
        if not contextual_tuples:
            return self.stored
        if isinstance(contextual_tuples, str | TupleKey):
            raise InvalidTuple("contextual_tuples must be a list of tuples, not a single tuple")
        extra = MemoryTupleSource()
        for raw in contextual_tuples:
            t = TupleKey.coerce(raw)
            validate_tuple(self.model, t)
            otype = t.object.partition(":")[0]
            if (otype, t.relation) in self._computed:
                raise InvalidTuple(
                    f"tuple {str(t)!r}: '{otype}#{t.relation}' is computed by the kernel; "
                    "it cannot be written or supplied"
                )
            extra.add(t)
        return OverlaySource(self.stored, extra)

    def validate_tuple(self, t: TupleLike) -> TupleKey:
        """``t`` as a :class:`TupleKey` if the model allows it and it is not a computed
        relation; raises :class:`InvalidTuple` otherwise."""
        key = TupleKey.coerce(t)
        validate_tuple(self.model, key)
        if (key.object.partition(":")[0], key.relation) in self._computed:
            raise InvalidTuple(
                f"tuple {str(key)!r}: '{key.object.partition(':')[0]}#{key.relation}' is "
                "computed by the kernel; it cannot be written"
            )
        return key

    def _lister(self, target: RelPlan, res: Resolver) -> frozenset[str]:
        """Objects of the shortcut ``target`` holding ``res.user`` (the resolver's
        membership sets). No computed relation can lead to a shortcut relation, so the
        request's source is read without routing."""
        return memberships(self.plan, res.source, res.user, target, self.max_depth)

    def _resolver(
        self,
        src: TupleSource,
        subj: Subject,
        reuse: bool = True,
        shared: Memberships | None = None,
    ) -> Resolver:
        """A resolver for one request reading ``src`` (stored + contextual tuples);
        ``reuse=False`` for a single question (skips memo bookkeeping). With ``shared``
        (and no contextual tuples: ``src`` is the stored source) the user's membership
        sets come from and go to ``shared[user]``."""
        msets = None
        if shared is not None and src is self.stored:
            msets = shared.get(subj.user)
            if msets is None:
                if len(shared) >= _CACHE_MAX:
                    shared.clear()
                msets = shared[subj.user] = {}
        return Resolver(src, subj, self.max_depth, self._lister_fn, reuse, msets)

    @staticmethod
    def _rewrap(e: ResolutionTooComplex, what: str) -> ResolutionTooComplex:
        return ResolutionTooComplex(f"{what}: {e.message}")

    # ------------------------------------------------------------------ queries

    def check(
        self,
        user: str,
        relation: str,
        object: str,
        contextual_tuples: Iterable[TupleLike] | None = None,
        *,
        shared: Memberships | None = None,
    ) -> bool:
        """Whether ``user`` (``user:anne``, ``user:*`` or ``group:eng#member``) has
        ``relation`` on ``object``. Raises :class:`InvalidRequest` for bad or unknown
        arguments, :class:`ResolutionTooComplex` past ``max_depth``.

        ``shared``: a dictionary the caller keeps across requests *while the source does
        not change* (clear it, or use a new one, after any write), in which the users'
        group memberships are remembered (:data:`Memberships`); ignored with
        contextual tuples. Answers are the same with or without it, only faster."""
        rp = self._target(object, relation)
        subj = self._user(user)
        res = self._resolver(self._source(contextual_tuples), subj, reuse=False, shared=shared)
        try:
            return res.node(object, rp) == TRUE
        except ResolutionTooComplex as e:
            raise self._rewrap(e, f"check {user} {relation} {object}") from None

    def batch_check(
        self,
        checks: Sequence[CheckItem],
        contextual_tuples: Iterable[TupleLike] | None = None,
        *,
        shared: Memberships | None = None,
    ) -> list[bool]:
        """``check`` for each ``(user, relation, object)`` (or mapping with those keys),
        in order. Checks of the same user share one memo, so a batch over siblings costs
        little more than one check. All arguments are validated first; an item that
        needs more than ``max_depth`` raises :class:`ResolutionTooComplex` naming it.
        ``shared`` as for :meth:`check`."""
        items: list[tuple[Subject, RelPlan, str, str]] = []
        for c in checks:
            if isinstance(c, Mapping):
                try:
                    u, r, o = c["user"], c["relation"], c["object"]
                except KeyError as e:
                    raise InvalidRequest(f"batch_check item {c!r} lacks {e}") from None
            elif isinstance(c, tuple | list) and len(c) == 3:
                u, r, o = c
            else:
                raise InvalidRequest(
                    f"batch_check items are (user, relation, object) or mappings, got {c!r}"
                )
            items.append((self._user(u), self._target(o, r), o, u))
        src = self._source(contextual_tuples)
        resolvers: dict[str, Resolver] = {}
        out: list[bool] = []
        for subj, rp, o, u in items:
            res = resolvers.get(u)
            if res is None:
                res = resolvers[u] = self._resolver(src, subj, shared=shared)
            try:
                out.append(res.node(o, rp) == TRUE)
            except ResolutionTooComplex as e:
                raise self._rewrap(e, f"check {u} {rp.name} {o}") from None
        return out

    def expand(
        self,
        relation: str,
        object: str,
        contextual_tuples: Iterable[TupleLike] | None = None,
    ) -> dict[str, Any]:
        """One level of the userset tree of ``object#relation``, JSON-able, in the shape of
        OpenFGA's Expand. Every node has ``name`` (``object#relation``) and one of:

        * ``leaf``: ``{"users": [...]}`` (direct users: ``user:anne``, ``user:*``,
          ``group:eng#member``), ``{"computed": {"userset": "doc:1#editor"}}``, or
          ``{"tuple_to_userset": {"tupleset": "doc:1#parent", "computed":
          ["folder:x#viewer", ...]}}``;
        * ``union`` / ``intersection``: ``{"nodes": [...]}``;
        * ``difference``: ``{"base": node, "subtract": node}``.

        Leaves naming other usersets are not expanded further (call ``expand`` on them).
        Only tuples the model allows appear."""
        otype, _ = parse_object(object)
        rp = self._rel(otype, relation)
        return expand(self.plan, self._listing_source(self._source(contextual_tuples)), object, rp)

    def list_objects(
        self,
        user: str,
        relation: str,
        type: str,
        contextual_tuples: Iterable[TupleLike] | None = None,
    ) -> list[str]:
        """Every object of ``type`` on which ``user`` has ``relation``, sorted. Raises
        :class:`InvalidRequest` for bad arguments, :class:`ResolutionTooComplex` past
        ``max_depth``."""
        rp = self._rel(type, relation)
        subj = self._user(user)
        src = self._source(contextual_tuples)
        res = self._resolver(src, subj)
        try:
            found = list_objects(
                self.plan, self._listing_source(src), subj, rp, res, self.max_depth
            )
        except ResolutionTooComplex as e:
            raise self._rewrap(e, f"list_objects {user} {relation} {type}") from None
        return sorted(found)

    def list_users(
        self,
        object: str,
        relation: str,
        user_types: Sequence[str],
        contextual_tuples: Iterable[TupleLike] | None = None,
    ) -> UserList:
        """Users that have ``relation`` on ``object``, among ``user_types``: ``"user"``
        (concrete users and the wildcard ``user:*``) and/or usersets such as
        ``"group#member"``. A wildcard in the answer covers every user of its type except
        ``excluded``; :meth:`UserList.includes` applies that rule."""
        otype, _ = parse_object(object)
        rp = self._rel(otype, relation)
        if isinstance(user_types, str) or not user_types:
            raise InvalidRequest(
                "user_types must be a non-empty list like ['user', 'group#member']"
            )
        filters: list[tuple[str, str | None]] = []
        for f in user_types:
            if not isinstance(f, str):
                raise InvalidRequest(f"user type {f!r} must be a string")
            t, hash_, r = f.partition("#")
            if self.model.type(t) is None:
                raise InvalidRequest(f"user type {f!r}: type '{t}' is not in the model")
            if hash_ and self.plan.rel(t, r) is None:
                raise InvalidRequest(f"user type {f!r}: type '{t}' has no relation '{r}'")
            filters.append((t, r if hash_ else None))
        src = self._source(contextual_tuples)

        def decide(u: str) -> bool:
            return self._resolver(src, parse_user(u), reuse=False).node(object, rp) == TRUE

        try:
            return list_users(
                self.plan, self._listing_source(src), object, rp, filters, decide, self.max_depth
            )
        except ResolutionTooComplex as e:
            raise self._rewrap(e, f"list_users {object} {relation}") from None
