"""Test helpers: a tiny brute-force reference evaluator and model builders.

The reference evaluator shares nothing with the engine but the model AST: it computes
the Kripke-Kleene semantics literally, by iterating the three-valued immediate
consequence operator over *every* node ``object#relation`` of a finite universe, starting
from all-UNKNOWN, until nothing changes. No stack, no memo, no shortcuts, no indexes.
"""

from __future__ import annotations

from collections.abc import Iterable

from nexusfs_rebac import (
    AuthorizationModel,
    ComputedUserset,
    Direct,
    Exclusion,
    Intersection,
    TupleKey,
    TupleToUserset,
    Union,
)
from nexusfs_rebac.model import Rewrite

F, T, U = "F", "T", "U"


def _or(vals: Iterable[str]) -> str:
    vs = list(vals)
    return T if T in vs else U if U in vs else F


def _and(vals: Iterable[str]) -> str:
    vs = list(vals)
    return F if F in vs else U if U in vs else T


def _kind(user: str) -> str:
    obj, hash_, rel = user.partition("#")
    t, _, oid = obj.partition(":")
    if hash_:
        return f"{t}#{rel}"
    return f"{t}:*" if oid == "*" else t


def reference(
    model: AuthorizationModel,
    tuples: Iterable[TupleKey],
    subject: str,
    objects: Iterable[str],
) -> dict[tuple[str, str], str]:
    """``{(object, relation): "T" | "F" | "U"}`` for ``subject`` over every object in
    ``objects`` (``type:id``) and every relation of its type."""
    idx: dict[tuple[str, str], list[str]] = {}
    for t in tuples:
        idx.setdefault((t.object, t.relation), []).append(t.user)
    nodes: list[tuple[str, str]] = []
    for o in sorted(set(objects)):
        td = model.type(o.partition(":")[0])
        if td is not None:
            nodes.extend((o, r.name) for r in td.relations)
    node_set = set(nodes)
    s_obj, s_hash, s_rel = subject.partition("#")
    s_type, _, s_id = s_obj.partition(":")
    reflexive = (s_obj, s_rel) if s_hash else None
    wildcard_of_subject = f"{s_type}:*" if not s_hash and s_id != "*" else None
    val = dict.fromkeys(nodes, U)

    def get(o: str, r: str) -> str:
        return val.get((o, r), F)  # objects outside the universe have no tuples

    def ev(rw: Rewrite, o: str, rel: str) -> str:
        otype = o.partition(":")[0]
        if isinstance(rw, Direct):
            allowed = {x.key for x in rw.restrictions}
            out = []
            for user in idx.get((o, rel), ()):
                kind = _kind(user)
                if kind not in allowed:
                    continue
                if user in (subject, wildcard_of_subject):
                    out.append(T)
                elif "#" in user:
                    g, _, m = user.partition("#")
                    out.append(T if (g, m) == reflexive else get(g, m))
            return _or(out)
        if isinstance(rw, ComputedUserset):
            return get(o, rw.relation)
        if isinstance(rw, TupleToUserset):
            ts = model.relation(otype, rw.tupleset)
            assert ts is not None
            ts_allowed = ts.restriction_keys
            out = []
            for user in idx.get((o, rw.tupleset), ()):
                kind = _kind(user)
                if kind in ts_allowed and model.relation(kind, rw.computed) is not None:
                    out.append(T if (user, rw.computed) == reflexive else get(user, rw.computed))
            return _or(out)
        if isinstance(rw, Union):
            return _or(ev(c, o, rel) for c in rw.children)
        if isinstance(rw, Intersection):
            return _and(ev(c, o, rel) for c in rw.children)
        assert isinstance(rw, Exclusion)
        b, s = ev(rw.base, o, rel), ev(rw.subtract, o, rel)
        return F if b == F or s == T else T if (b == T and s == F) else U

    changed = True
    while changed:
        changed = False
        new = {}
        for o, r in nodes:
            if (o, r) == reflexive:
                new[(o, r)] = T
                continue
            rd = model.relation(o.partition(":")[0], r)
            assert rd is not None
            new[(o, r)] = ev(rd.rewrite, o, r)
        for k, v in new.items():
            if v != val[k]:
                assert val[k] == U, "the operator must be monotone from UNKNOWN"
                val[k] = v
                changed = True
    assert set(val) == node_set
    return val
