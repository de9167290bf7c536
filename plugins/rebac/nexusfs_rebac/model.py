"""The typed, immutable authorization model: an AST of Zanzibar userset rewrites.

A model is a tuple of :class:`TypeDef`; each type defines relations, and each relation a
*rewrite* that says who is in it:

* :class:`Direct` - the users written as tuples, limited by type restrictions
  (``[user, user:*, group#member]``);
* :class:`ComputedUserset` - everyone in another relation of the same object (``editor``);
* :class:`TupleToUserset` - everyone in relation ``computed`` of the objects that relation
  ``tupleset`` points at (``viewer from parent``);
* :class:`Union` / :class:`Intersection` / :class:`Exclusion` (``or`` / ``and`` /
  ``but not``).

Invariants, enforced when an :class:`AuthorizationModel` is constructed (from the DSL,
from JSON or in code), each violation a :class:`~nexusfs_rebac.errors.ModelError`:

* schema ``1.1``; type and relation names are identifiers, unique, not reserved words;
* every referenced type and relation exists; a relation lists its direct types at most
  once and without duplicates;
* the tupleset relation of ``X from Y`` is a plain direct relation with concrete types
  only (``define parent: [folder]``), and ``X`` exists on at least one of those types;
* every relation has an *entrypoint*: some way for a user to be in it that does not only
  loop back to itself (OpenFGA's "impossible relation" rule).

Nodes carry their DSL source position (``pos``) for error messages; positions are not
part of equality, the JSON form or the ``model_id``. The JSON form is OpenFGA's
(``schema_version`` / ``type_definitions`` / ``this`` / ``computedUserset`` / ...), and
``model_id`` is a content hash of it (types and relations in sorted order), so the same
model always has the same id, in any process.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from nexusfs_rebac.errors import ModelError

__all__ = [
    "RESERVED_WORDS",
    "AuthorizationModel",
    "ComputedUserset",
    "Direct",
    "Exclusion",
    "Intersection",
    "Pos",
    "RelationDef",
    "Restriction",
    "Rewrite",
    "TupleToUserset",
    "TypeDef",
    "Union",
    "rewrite_to_dsl",
]

SCHEMA_VERSION = "1.1"
IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")
MAX_TYPE_NAME = 254
MAX_RELATION_NAME = 50
RESERVED_WORDS = frozenset(
    {
        "and", "but", "condition", "define", "extend", "from", "model", "module", "not",
        "or", "relations", "schema", "self", "this", "type", "with",
    }
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class Pos:
    """A 1-based position in DSL source."""

    line: int
    column: int


@dataclass(frozen=True, slots=True)
class Restriction:
    """One allowed kind of user in a direct relation: ``user`` (a concrete user),
    ``user:*`` (the wildcard) or ``group#member`` (a userset)."""

    type: str
    relation: str | None = None
    wildcard: bool = False
    pos: Pos | None = field(default=None, compare=False, repr=False)

    @property
    def key(self) -> str:
        """The restriction as written, which is also the *kind* of a tuple's user:
        ``user``, ``user:*`` or ``group#member``."""
        if self.wildcard:
            return f"{self.type}:*"
        if self.relation is not None:
            return f"{self.type}#{self.relation}"
        return self.type


@dataclass(frozen=True, slots=True)
class Direct:
    """Users related by a stored tuple, limited to ``restrictions``."""

    restrictions: tuple[Restriction, ...]
    pos: Pos | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class ComputedUserset:
    """Everyone in ``relation`` of the same object."""

    relation: str
    pos: Pos | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class TupleToUserset:
    """``computed from tupleset``: everyone in relation ``computed`` of each object that
    relation ``tupleset`` of this object points at."""

    tupleset: str
    computed: str
    pos: Pos | None = field(default=None, compare=False, repr=False)
    tupleset_pos: Pos | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class Union:
    """In any child (``or``)."""

    children: tuple[Rewrite, ...]
    pos: Pos | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class Intersection:
    """In every child (``and``)."""

    children: tuple[Rewrite, ...]
    pos: Pos | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class Exclusion:
    """In ``base`` but not in ``subtract`` (``but not``)."""

    base: Rewrite
    subtract: Rewrite
    pos: Pos | None = field(default=None, compare=False, repr=False)


Rewrite = Direct | ComputedUserset | TupleToUserset | Union | Intersection | Exclusion


def iter_rewrite(rw: Rewrite) -> Iterator[Rewrite]:
    """Every node of a rewrite tree, depth first, parents before children."""
    yield rw
    if isinstance(rw, Union | Intersection):
        for child in rw.children:
            yield from iter_rewrite(child)
    elif isinstance(rw, Exclusion):
        yield from iter_rewrite(rw.base)
        yield from iter_rewrite(rw.subtract)


@dataclass(frozen=True, slots=True)
class RelationDef:
    """``define name: rewrite``."""

    name: str
    rewrite: Rewrite
    pos: Pos | None = field(default=None, compare=False, repr=False)

    @property
    def direct(self) -> Direct | None:
        """The relation's direct term, if tuples can be written for it."""
        for node in iter_rewrite(self.rewrite):
            if isinstance(node, Direct):
                return node
        return None

    @property
    def restriction_keys(self) -> frozenset[str]:
        """The kinds of users a tuple of this relation may have (empty if none)."""
        d = self.direct
        return frozenset(r.key for r in d.restrictions) if d is not None else frozenset()


@dataclass(frozen=True, slots=True)
class TypeDef:
    """``type name`` and its relations, in declaration order."""

    name: str
    relations: tuple[RelationDef, ...] = ()
    pos: Pos | None = field(default=None, compare=False, repr=False)

    def relation(self, name: str) -> RelationDef | None:
        """The relation called ``name``, or ``None``."""
        for r in self.relations:
            if r.name == name:
                return r
        return None


def _err(msg: str, pos: Pos | None) -> ModelError:
    if pos is None:
        return ModelError(msg)
    return ModelError(msg, line=pos.line, column=pos.column)


def _did_you_mean(name: str, choices: Sequence[str]) -> str:
    close = difflib.get_close_matches(name, list(choices), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


class AuthorizationModel:
    """A validated, immutable authorization model (schema 1.1).

    Construction validates everything listed in the module docstring and raises
    :class:`ModelError` on the first problem (in source order where positions are
    known). Equality and hashing follow ``model_id``.
    """

    __slots__ = ("_id", "_rel", "_types", "schema_version", "types")

    types: tuple[TypeDef, ...]
    schema_version: str

    def __init__(self, types: Sequence[TypeDef], schema_version: str = SCHEMA_VERSION) -> None:
        self.types = tuple(types)
        self.schema_version = schema_version
        self._types: dict[str, TypeDef] = {}
        self._rel: dict[tuple[str, str], RelationDef] = {}
        _validate(self)
        canonical = json.dumps(
            _canonical(self.to_json()), sort_keys=True, separators=(",", ":"), ensure_ascii=True
        )
        self._id = hashlib.sha256(canonical.encode()).hexdigest()[:32]

    # ------------------------------------------------------------------ lookups

    @property
    def model_id(self) -> str:
        """A content hash (32 hex digits) of the canonical JSON form: equal models, equal
        ids; any semantic change, a different id."""
        return self._id

    def type(self, name: str) -> TypeDef | None:
        """The type called ``name``, or ``None``."""
        return self._types.get(name)

    def relation(self, type_name: str, relation: str) -> RelationDef | None:
        """Relation ``relation`` of type ``type_name``, or ``None``."""
        return self._rel.get((type_name, relation))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, AuthorizationModel) and other._id == self._id

    def __hash__(self) -> int:
        return hash(self._id)

    def __repr__(self) -> str:
        return f"AuthorizationModel(model_id={self._id!r}, types={[t.name for t in self.types]})"

    # --------------------------------------------------------------------- JSON

    def to_json(self) -> dict[str, Any]:
        """OpenFGA's JSON form (``schema_version``, ``type_definitions``), in declaration
        order. JSON-serialisable; :meth:`from_json` reads it back to an equal model."""
        tds: list[dict[str, Any]] = []
        for t in self.types:
            rels = {r.name: _rewrite_json(r.rewrite) for r in t.relations}
            meta: dict[str, Any] | None = None
            if t.relations:
                meta = {
                    "relations": {
                        r.name: {
                            "directly_related_user_types": [
                                _restriction_json(x)
                                for x in (r.direct.restrictions if r.direct else ())
                            ]
                        }
                        for r in t.relations
                    }
                }
            tds.append({"type": t.name, "relations": rels, "metadata": meta})
        return {"schema_version": self.schema_version, "type_definitions": tds}

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | str) -> AuthorizationModel:
        """Build a model from OpenFGA's JSON form (a mapping, or a JSON string).

        Raises :class:`ModelError` (without a position) for a malformed document or an
        invalid model."""
        if isinstance(data, str):
            try:
                data = json.loads(data)
            except ValueError as e:
                raise ModelError(f"model JSON does not parse: {e}") from None
        if not isinstance(data, Mapping):
            raise ModelError("model JSON must be an object with 'type_definitions'")
        version = data.get("schema_version")
        if not isinstance(version, str):
            raise ModelError("model JSON: 'schema_version' (a string such as \"1.1\") is required")
        tds = data.get("type_definitions")
        if not isinstance(tds, list):
            raise ModelError("model JSON: 'type_definitions' must be a list")
        types = [_typedef_from_json(td, i) for i, td in enumerate(tds)]
        return cls(types, schema_version=version)

    # ---------------------------------------------------------------------- DSL

    def to_dsl(self) -> str:
        """The model in the modeling language; :func:`nexusfs_rebac.dsl.parse_model`
        reads it back to an equal model."""
        out = ["model", f"  schema {self.schema_version}"]
        for t in self.types:
            out.append("")
            out.append(f"type {t.name}")
            if t.relations:
                out.append("  relations")
                for r in t.relations:
                    out.append(f"    define {r.name}: {rewrite_to_dsl(r.rewrite)}")
        return "\n".join(out) + "\n"


# ------------------------------------------------------------------------ JSON helpers


def _restriction_json(r: Restriction) -> dict[str, Any]:
    if r.wildcard:
        return {"type": r.type, "wildcard": {}}
    if r.relation is not None:
        return {"type": r.type, "relation": r.relation}
    return {"type": r.type}


def _rewrite_json(rw: Rewrite) -> dict[str, Any]:
    if isinstance(rw, Direct):
        return {"this": {}}
    if isinstance(rw, ComputedUserset):
        return {"computedUserset": {"relation": rw.relation}}
    if isinstance(rw, TupleToUserset):
        return {
            "tupleToUserset": {
                "tupleset": {"relation": rw.tupleset},
                "computedUserset": {"relation": rw.computed},
            }
        }
    if isinstance(rw, Union):
        return {"union": {"child": [_rewrite_json(c) for c in rw.children]}}
    if isinstance(rw, Intersection):
        return {"intersection": {"child": [_rewrite_json(c) for c in rw.children]}}
    return {"difference": {"base": _rewrite_json(rw.base), "subtract": _rewrite_json(rw.subtract)}}


def _canonical(doc: dict[str, Any]) -> dict[str, Any]:
    """The JSON form with types sorted by name (relations are sorted by ``sort_keys``):
    declaration order does not change a model's meaning, so it does not change its id."""
    tds = sorted(doc["type_definitions"], key=lambda td: str(td["type"]))
    return {"schema_version": doc["schema_version"], "type_definitions": tds}


def _need(obj: Any, key: str, where: str) -> Any:
    if not isinstance(obj, Mapping) or key not in obj:
        raise ModelError(f"model JSON: {where}: missing '{key}'")
    return obj[key]


def _name_from_json(obj: Any, where: str) -> str:
    rel = _need(obj, "relation", where)
    if not isinstance(rel, str):
        raise ModelError(f"model JSON: {where}.relation must be a string")
    return rel


def _rewrite_from_json(obj: Any, where: str, direct: Direct) -> Rewrite:
    if not isinstance(obj, Mapping) or len(obj) != 1:
        raise ModelError(
            f"model JSON: {where}: a rewrite is an object with exactly one of 'this', "
            "'computedUserset', 'tupleToUserset', 'union', 'intersection', 'difference'"
        )
    ((kind, body),) = obj.items()
    if kind == "this":
        return direct
    if kind == "computedUserset":
        return ComputedUserset(_name_from_json(body, f"{where}.computedUserset"))
    if kind == "tupleToUserset":
        ts = _name_from_json(_need(body, "tupleset", where), f"{where}.tupleset")
        cu = _name_from_json(_need(body, "computedUserset", where), f"{where}.computedUserset")
        return TupleToUserset(ts, cu)
    if kind in ("union", "intersection"):
        children = _need(body, "child", f"{where}.{kind}")
        if not isinstance(children, list):
            raise ModelError(f"model JSON: {where}.{kind}.child must be a list")
        kids = tuple(
            _rewrite_from_json(c, f"{where}.{kind}.child[{i}]", direct)
            for i, c in enumerate(children)
        )
        return Union(kids) if kind == "union" else Intersection(kids)
    if kind == "difference":
        base = _rewrite_from_json(_need(body, "base", where), f"{where}.base", direct)
        sub = _rewrite_from_json(_need(body, "subtract", where), f"{where}.subtract", direct)
        return Exclusion(base, sub)
    raise ModelError(f"model JSON: {where}: unknown rewrite '{kind}'")


def _restriction_from_json(obj: Any, where: str) -> Restriction:
    if not isinstance(obj, Mapping) or not isinstance(obj.get("type"), str):
        raise ModelError(f"model JSON: {where} must be an object with a string 'type'")
    if obj.get("condition"):
        raise ModelError(f"model JSON: {where}: conditions are not supported")
    rel = obj.get("relation")
    if rel is not None and not isinstance(rel, str):
        raise ModelError(f"model JSON: {where}.relation must be a string")
    wildcard = "wildcard" in obj
    if wildcard and rel:
        raise ModelError(f"model JSON: {where}: a restriction is a wildcard or a userset, not both")
    return Restriction(obj["type"], rel or None, wildcard)


def _typedef_from_json(td: Any, i: int) -> TypeDef:
    where = f"type_definitions[{i}]"
    name = _need(td, "type", where)
    if not isinstance(name, str):
        raise ModelError(f"model JSON: {where}.type must be a string")
    rels = td.get("relations") or {}
    meta = (td.get("metadata") or {}).get("relations") or {}
    if not isinstance(rels, Mapping) or not isinstance(meta, Mapping):
        raise ModelError(f"model JSON: {where}: 'relations' and 'metadata' must be objects")
    out: list[RelationDef] = []
    for rname, body in rels.items():
        rw_where = f"{where}.relations.{rname}"
        drut = (meta.get(rname) or {}).get("directly_related_user_types") or []
        if not isinstance(drut, list):
            raise ModelError(f"model JSON: {rw_where}: directly_related_user_types must be a list")
        direct = Direct(
            tuple(_restriction_from_json(x, f"{rw_where} type {j}") for j, x in enumerate(drut))
        )
        out.append(RelationDef(str(rname), _rewrite_from_json(body, rw_where, direct)))
    return TypeDef(name, tuple(out))


# ------------------------------------------------------------------------- DSL printer


def rewrite_to_dsl(rw: Rewrite) -> str:
    """A rewrite in the modeling language; nested operators are parenthesised."""

    def part(c: Rewrite) -> str:
        s = rewrite_to_dsl(c)
        return f"({s})" if isinstance(c, Union | Intersection | Exclusion) else s

    if isinstance(rw, Direct):
        return "[" + ", ".join(r.key for r in rw.restrictions) + "]"
    if isinstance(rw, ComputedUserset):
        return rw.relation
    if isinstance(rw, TupleToUserset):
        return f"{rw.computed} from {rw.tupleset}"
    if isinstance(rw, Union):
        return " or ".join(part(c) for c in rw.children)
    if isinstance(rw, Intersection):
        return " and ".join(part(c) for c in rw.children)
    return f"{part(rw.base)} but not {part(rw.subtract)}"


# -------------------------------------------------------------------------- validation


def _check_name(name: str, what: str, limit: int, pos: Pos | None) -> None:
    if not isinstance(name, str) or not IDENTIFIER.fullmatch(name):
        raise _err(
            f"{what} name {name!r} is not valid: use letters, digits, '_' and '-', "
            "starting with a letter or '_'",
            pos,
        )
    if len(name) > limit:
        raise _err(f"{what} name '{name}' is too long ({len(name)} > {limit} characters)", pos)
    if name in RESERVED_WORDS:
        raise _err(f"'{name}' is a reserved word and cannot name a {what}", pos)


def _validate(m: AuthorizationModel) -> None:
    if m.schema_version != SCHEMA_VERSION:
        raise ModelError(
            f"schema version {m.schema_version!r} is not supported: use 'schema {SCHEMA_VERSION}'"
        )
    # Pass 1: names and duplicates; build the indexes.
    for t in m.types:
        if not isinstance(t, TypeDef):
            raise ModelError(f"model types must be TypeDef, not {type(t).__name__}")
        _check_name(t.name, "type", MAX_TYPE_NAME, t.pos)
        if t.name in m._types:
            raise _err(f"type '{t.name}' is defined twice", t.pos)
        m._types[t.name] = t
        for r in t.relations:
            _check_name(r.name, "relation", MAX_RELATION_NAME, r.pos)
            if (t.name, r.name) in m._rel:
                raise _err(f"relation '{r.name}' is defined twice in type '{t.name}'", r.pos)
            m._rel[(t.name, r.name)] = r
    # Pass 2: references, in source order.
    for t in m.types:
        for r in t.relations:
            _validate_relation(m, t, r)
    # Pass 3: every relation can have a member.
    _validate_entrypoints(m)


def _validate_relation(m: AuthorizationModel, t: TypeDef, r: RelationDef) -> None:
    rel_names = [x.name for x in t.relations]
    directs = 0
    for node in iter_rewrite(r.rewrite):
        if isinstance(node, Direct):
            directs += 1
            if directs > 1:
                raise _err(
                    f"relation '{r.name}' of type '{t.name}' lists direct types more than "
                    "once: merge them into one [...] list",
                    node.pos,
                )
            _validate_direct(m, t, r, node)
        elif isinstance(node, ComputedUserset):
            if node.relation not in rel_names:
                raise _err(
                    f"relation '{node.relation}' is not defined on type '{t.name}' "
                    f"(used in relation '{r.name}')" + _did_you_mean(node.relation, rel_names),
                    node.pos,
                )
        elif isinstance(node, TupleToUserset):
            _validate_ttu(m, t, r, node, rel_names)
        elif isinstance(node, Union | Intersection) and len(node.children) < 2:
            op = "or" if isinstance(node, Union) else "and"
            raise _err(f"'{op}' in relation '{r.name}' needs at least two operands", node.pos)


def _validate_direct(m: AuthorizationModel, t: TypeDef, r: RelationDef, d: Direct) -> None:
    if not d.restrictions:
        raise _err(
            f"relation '{r.name}' of type '{t.name}' has an empty type list []: name at "
            "least one type, e.g. [user]",
            d.pos,
        )
    seen: set[str] = set()
    type_names = list(m._types)
    for x in d.restrictions:
        if not isinstance(x, Restriction):
            raise ModelError(f"type restrictions must be Restriction, not {type(x).__name__}")
        target = m._types.get(x.type)
        if target is None:
            raise _err(
                f"type '{x.type}' is not defined (used in relation '{r.name}' of type "
                f"'{t.name}')" + _did_you_mean(x.type, type_names),
                x.pos,
            )
        if x.wildcard and x.relation is not None:
            raise _err(f"'{x.type}:*#{x.relation}' is not valid: a wildcard has no relation", x.pos)
        if x.relation is not None and m._rel.get((x.type, x.relation)) is None:
            raise _err(
                f"relation '{x.relation}' is not defined on type '{x.type}' (used as "
                f"'{x.key}' in relation '{r.name}' of type '{t.name}')"
                + _did_you_mean(x.relation, [y.name for y in target.relations]),
                x.pos,
            )
        if x.key in seen:
            raise _err(f"type restriction '{x.key}' is listed twice in relation '{r.name}'", x.pos)
        seen.add(x.key)


def _validate_ttu(
    m: AuthorizationModel, t: TypeDef, r: RelationDef, node: TupleToUserset, names: list[str]
) -> None:
    where = f"'{node.computed} from {node.tupleset}' in relation '{r.name}' of type '{t.name}'"
    ts = m._rel.get((t.name, node.tupleset))
    if ts is None:
        raise _err(
            f"relation '{node.tupleset}' is not defined on type '{t.name}' (used in {where})"
            + _did_you_mean(node.tupleset, names),
            node.tupleset_pos or node.pos,
        )
    if not isinstance(ts.rewrite, Direct):
        raise _err(
            f"relation '{node.tupleset}' used after 'from' must be directly assignable and "
            f"nothing else, like 'define {node.tupleset}: [folder]' (in {where})",
            node.tupleset_pos or node.pos,
        )
    bad = [x.key for x in ts.rewrite.restrictions if x.wildcard or x.relation is not None]
    if bad:
        raise _err(
            f"relation '{node.tupleset}' used after 'from' may only allow concrete types, "
            f"not {', '.join(repr(b) for b in bad)} (in {where})",
            node.tupleset_pos or node.pos,
        )
    targets = [x.type for x in ts.rewrite.restrictions]
    if not any(m._rel.get((tt, node.computed)) for tt in targets):
        raise _err(
            f"relation '{node.computed}' is not defined on any type that "
            f"'{node.tupleset}' can point at ({', '.join(targets)}) (in {where})",
            node.pos,
        )


def _validate_entrypoints(m: AuthorizationModel) -> None:
    """Least fixpoint of "can have a member": a relation has an entrypoint if some
    evaluation path reaches a concrete or wildcard direct type without only looping."""
    ok: set[tuple[str, str]] = set()

    def has(tname: str, rw: Rewrite) -> bool:
        if isinstance(rw, Direct):
            return any(x.relation is None or (x.type, x.relation) in ok for x in rw.restrictions)
        if isinstance(rw, ComputedUserset):
            return (tname, rw.relation) in ok
        if isinstance(rw, TupleToUserset):
            ts = m._rel[(tname, rw.tupleset)]
            assert isinstance(ts.rewrite, Direct)
            return any((x.type, rw.computed) in ok for x in ts.rewrite.restrictions)
        if isinstance(rw, Union):
            return any(has(tname, c) for c in rw.children)
        if isinstance(rw, Intersection):
            return all(has(tname, c) for c in rw.children)
        return has(tname, rw.base)

    changed = True
    while changed:
        changed = False
        for t in m.types:
            for r in t.relations:
                if (t.name, r.name) not in ok and has(t.name, r.rewrite):
                    ok.add((t.name, r.name))
                    changed = True
    for t in m.types:
        for r in t.relations:
            if (t.name, r.name) not in ok:
                raise _err(
                    f"relation '{r.name}' of type '{t.name}' can never have any member: every "
                    "way into it loops back to itself or needs another relation that can "
                    "never have members (no entrypoint)",
                    r.pos,
                )
