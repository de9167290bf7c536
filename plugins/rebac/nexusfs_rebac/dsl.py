"""A parser for OpenFGA's modeling language, schema 1.1.

::

    model
      schema 1.1

    type user

    type group
      relations
        define member: [user, user:*, group#member]

    type document
      relations
        define parent: [folder]               # a comment
        define owner: [user]
        define viewer: [user, group#member] or owner or viewer from parent
        define can_read: viewer but not blocked
        define blocked: [user]

Layout: ``model`` and ``type`` start at column 1; ``schema``, ``relations`` and
``define`` are indented (spaces only) deeper than the line they belong to, and all
``define`` lines of one type share one indentation. A ``define`` may continue on the
next lines while a ``(`` or ``[`` is open. ``#`` starts a comment at the start of a line
or after whitespace (``group#member`` is not a comment).

Expressions: an operand is a direct type list ``[...]``, a relation of the same object,
``X from Y``, or a parenthesised expression; operands are joined by one operator kind
per level (``or``, ``and``, or ``but not``, which chains to the left); mixing kinds
needs parentheses, as in OpenFGA.

Not supported (each a clear :class:`~nexusfs_rebac.errors.ModelError`): conditions
(``with`` and ``condition`` blocks), modular models (``module``, ``extend type``), and
schema versions other than 1.1. Every error carries a 1-based line and column; semantic
errors (unknown types or relations, impossible relations, ...) come from
:class:`~nexusfs_rebac.model.AuthorizationModel` with positions of the offending name.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from nexusfs_rebac.errors import ModelError
from nexusfs_rebac.model import (
    AuthorizationModel,
    ComputedUserset,
    Direct,
    Exclusion,
    Intersection,
    Pos,
    RelationDef,
    Restriction,
    Rewrite,
    TupleToUserset,
    TypeDef,
    Union,
)

__all__ = ["load_model", "parse_model"]

_KEYWORDS = frozenset({"or", "and", "but", "not", "from", "with"})
_STATEMENTS = frozenset({None, "define", "type", "relations", "condition", "module", "extend"})
_TOKEN = re.compile(
    r"(?P<name>[A-Za-z_][A-Za-z0-9_-]*)|(?P<num>[0-9][0-9.]*)|(?P<punct>[\[\](),:#*])|(?P<bad>\S)"
)


@dataclass(frozen=True, slots=True)
class _Tok:
    kind: str  # name | num | punct | eol
    text: str
    line: int
    col: int

    @property
    def pos(self) -> Pos:
        return Pos(self.line, self.col)

    def describe(self) -> str:
        return "the end of the line" if self.kind == "eol" else f"'{self.text}'"


def _err(msg: str, line: int, col: int) -> ModelError:
    return ModelError(msg, line=line, column=col)


def _strip_comment(line: str) -> str:
    for i, c in enumerate(line):
        if c == "#" and (i == 0 or line[i - 1] in " \t" or not line[:i].strip()):
            return line[:i]
    return line


def _tokens(text: str, lineno: int, start: int) -> list[_Tok]:
    out: list[_Tok] = []
    for m in _TOKEN.finditer(text):
        kind = m.lastgroup or "bad"
        col = start + m.start() + 1
        if kind == "bad":
            raise _err(f"unexpected character '{m.group()}'", lineno, col)
        out.append(_Tok(kind, m.group(), lineno, col))
    return out


class _Lines:
    """Physical lines without comments; blank lines are skipped by :meth:`next`."""

    def __init__(self, text: str) -> None:
        self.lines = [_strip_comment(raw.rstrip("\r")) for raw in text.splitlines()]
        self.i = 0

    def next(self) -> tuple[int, int, str] | None:
        """``(lineno, indent, content)`` of the next non-blank line, or ``None``."""
        while self.i < len(self.lines):
            raw = self.lines[self.i]
            self.i += 1
            if not raw.strip():
                continue
            lead = raw[: len(raw) - len(raw.lstrip())]
            if "\t" in lead:
                raise _err("tab in indentation: indent with spaces", self.i, lead.index("\t") + 1)
            return self.i, len(lead), raw.rstrip()
        return None

    def peek_word(self) -> str | None:
        """The first word of the next non-blank line (without consuming it)."""
        for raw in self.lines[self.i :]:
            words = raw.split()
            if words:
                return words[0]
        return None


class _Expr:
    """Recursive-descent parser for one ``define`` expression."""

    def __init__(self, toks: list[_Tok], end: _Tok) -> None:
        self.toks = toks
        self.i = 0
        self.end = end

    def peek(self) -> _Tok:
        return self.toks[self.i] if self.i < len(self.toks) else self.end

    def take(self) -> _Tok:
        t = self.peek()
        self.i += 1
        return t

    def expect_punct(self, p: str, why: str) -> _Tok:
        t = self.peek()
        if t.kind != "punct" or t.text != p:
            raise _err(f"expected '{p}' {why}, found {t.describe()}", t.line, t.col)
        return self.take()

    def expect_name(self, what: str) -> _Tok:
        t = self.peek()
        if t.kind != "name" or t.text in _KEYWORDS:
            raise _err(f"expected {what}, found {t.describe()}", t.line, t.col)
        return self.take()

    def parse(self) -> Rewrite:
        rw = self.expr()
        t = self.peek()
        if t.kind != "eol":
            raise _err(f"unexpected {t.describe()} after the end of the expression", t.line, t.col)
        return rw

    def expr(self) -> Rewrite:
        first = self.operand()
        items = [first[0]]
        op: str | None = None
        start = first[1]
        while True:
            t = self.peek()
            if t.kind != "name" or t.text not in ("or", "and", "but"):
                break
            self.take()
            kw = t.text
            if kw == "but":
                n = self.peek()
                if n.kind != "name" or n.text != "not":
                    raise _err(f"expected 'not' after 'but', found {n.describe()}", n.line, n.col)
                self.take()
                kw = "but not"
            if op is None:
                op = kw
            elif op != kw:
                raise _err(
                    f"cannot mix '{op}' and '{kw}' without parentheses: group them, "
                    f"e.g. '(a {op} b) {kw} c'",
                    t.line,
                    t.col,
                )
            items.append(self.operand()[0])
        if op is None:
            return items[0]
        if op == "or":
            return Union(tuple(items), pos=start)
        if op == "and":
            return Intersection(tuple(items), pos=start)
        rw = items[0]
        for sub in items[1:]:
            rw = Exclusion(rw, sub, pos=start)
        return rw

    def operand(self) -> tuple[Rewrite, Pos]:
        t = self.peek()
        if t.kind == "punct" and t.text == "[":
            return self.direct(), t.pos
        if t.kind == "punct" and t.text == "(":
            self.take()
            inner = self.expr()
            close = self.peek()
            if close.kind != "punct" or close.text != ")":
                raise _err(
                    f"expected ')' to close the '(' at line {t.line}, column {t.col}, "
                    f"found {close.describe()}",
                    close.line,
                    close.col,
                )
            self.take()
            return inner, t.pos
        if t.kind == "eol":
            raise _err("expected a relation name, '[' or '(' here", t.line, t.col)
        if t.kind != "name" or t.text in _KEYWORDS:
            raise _err(f"expected a relation name, '[' or '(', found {t.describe()}", t.line, t.col)
        self.take()
        n = self.peek()
        if n.kind == "name" and n.text == "from":
            self.take()
            ts = self.expect_name("a relation name after 'from'")
            return TupleToUserset(ts.text, t.text, pos=t.pos, tupleset_pos=ts.pos), t.pos
        return ComputedUserset(t.text, pos=t.pos), t.pos

    def direct(self) -> Direct:
        open_ = self.take()
        out: list[Restriction] = []
        if self.peek().kind == "punct" and self.peek().text == "]":
            self.take()
            return Direct((), pos=open_.pos)
        while True:
            t = self.expect_name("a type name in the type list")
            rel: str | None = None
            wildcard = False
            p = self.peek()
            if p.kind == "punct" and p.text == ":":
                self.take()
                self.expect_punct("*", "after ':' (a wildcard is written 'user:*')")
                wildcard = True
            elif p.kind == "punct" and p.text == "#":
                self.take()
                rel = self.expect_name(f"a relation name after '{t.text}#'").text
            w = self.peek()
            if w.kind == "name" and w.text == "with":
                raise _err(
                    "conditions ('with ...') are not supported by this engine", w.line, w.col
                )
            out.append(Restriction(t.text, rel, wildcard, pos=t.pos))
            sep = self.peek()
            if sep.kind == "punct" and sep.text == ",":
                self.take()
                continue
            if sep.kind == "punct" and sep.text == "]":
                self.take()
                return Direct(tuple(out), pos=open_.pos)
            if sep.kind == "eol":
                raise _err(
                    f"the '[' at line {open_.line}, column {open_.col} is never closed",
                    sep.line,
                    sep.col,
                )
            raise _err(f"expected ',' or ']' in the type list, found {sep.describe()}",
                       sep.line, sep.col)  # fmt: skip


def _balance(toks: list[_Tok]) -> int:
    depth = 0
    for t in toks:
        if t.kind == "punct" and t.text in "([":
            depth += 1
        elif t.kind == "punct" and t.text in ")]":
            depth -= 1
    return depth


def _unsupported(word: str, lineno: int, col: int) -> ModelError:
    if word == "condition":
        return _err("conditions ('condition ...') are not supported by this engine", lineno, col)
    if word in ("module", "extend"):
        return _err(
            f"modular models ('{word}') are not supported: write one model file", lineno, col
        )
    raise AssertionError(word)


def parse_model(text: str) -> AuthorizationModel:
    """Parse a model written in the modeling language (schema 1.1).

    Raises :class:`ModelError` with the line and column of the first problem: syntax,
    layout, unsupported features, then the model's semantic rules."""
    if not isinstance(text, str):
        raise ModelError(f"a model must be text, not {type(text).__name__}")
    lines = _Lines(text)
    head = lines.next()
    if head is None:
        raise ModelError("the model is empty: it must start with 'model' and 'schema 1.1'")
    lineno, indent, content = head
    first = content[indent:].split(None, 1)[0].split("(", 1)[0]
    if first in ("module", "condition", "extend"):
        raise _unsupported(first, lineno, indent + 1)
    toks = _tokens(content[indent:], lineno, indent)
    if toks[0].text != "model" or len(toks) != 1:
        raise _err("a model must start with a line 'model' (then 'schema 1.1')", lineno,
                   toks[0].col)  # fmt: skip
    if indent:
        raise _err("'model' must start at column 1", lineno, indent + 1)
    nxt = lines.next()
    if nxt is None:
        raise _err("expected 'schema 1.1' on the line after 'model'", lineno + 1, 1)
    lineno, indent, content = nxt
    toks = _tokens(content[indent:], lineno, indent)
    if toks[0].text != "schema":
        raise _err(f"expected 'schema 1.1' after 'model', found '{toks[0].text}'", lineno,
                   toks[0].col)  # fmt: skip
    if not indent:
        raise _err("indent 'schema 1.1' under 'model'", lineno, 1)
    if len(toks) != 2 or toks[1].kind != "num":
        raise _err("expected a version after 'schema', e.g. 'schema 1.1'", lineno, toks[0].col)
    if toks[1].text != "1.1":
        raise _err(f"schema {toks[1].text} is not supported: use 'schema 1.1'", lineno,
                   toks[1].col)  # fmt: skip
    return _parse_types(lines)


def _parse_types(lines: _Lines) -> AuthorizationModel:
    types: list[TypeDef] = []
    cur: tuple[str, Pos] | None = None  # the current type
    rels: list[RelationDef] = []
    rel_block: tuple[int, int] | None = None  # (lineno, indent) of 'relations'
    define_indent: int | None = None

    def close_type() -> None:
        if cur is None:
            return
        if rel_block is not None and not rels:
            raise _err(f"the 'relations' block of type '{cur[0]}' is empty: add 'define' lines "
                       "or remove 'relations'", rel_block[0], rel_block[1] + 1)  # fmt: skip
        types.append(TypeDef(cur[0], tuple(rels), pos=cur[1]))

    while (item := lines.next()) is not None:
        lineno, indent, content = item
        first = content[indent:].split(None, 1)[0].split("(", 1)[0]
        if first in ("condition", "module", "extend"):
            raise _unsupported(first, lineno, indent + 1)
        toks = _tokens(content[indent:], lineno, indent)
        word = toks[0]
        if word.text == "type":
            if indent:
                raise _err("'type' must start at column 1", lineno, indent + 1)
            if len(toks) < 2 or toks[1].kind != "name":
                raise _err("expected a type name after 'type'", lineno, word.col + 4)
            if len(toks) > 2:
                raise _err(f"unexpected {toks[2].describe()} after the type name", lineno,
                           toks[2].col)  # fmt: skip
            close_type()
            cur, rels, rel_block, define_indent = (toks[1].text, toks[1].pos), [], None, None
        elif word.text == "relations":
            if cur is None:
                raise _err("'relations' must follow a 'type' line", lineno, word.col)
            if not indent:
                raise _err(f"indent 'relations' under 'type {cur[0]}'", lineno, 1)
            if rel_block is not None:
                raise _err(f"type '{cur[0]}' already has a 'relations' block", lineno, word.col)
            if len(toks) > 1:
                raise _err(f"unexpected {toks[1].describe()} after 'relations'", lineno,
                           toks[1].col)  # fmt: skip
            rel_block = (lineno, indent)
        elif word.text == "define":
            if cur is None or rel_block is None:
                raise _err("'define' must be inside a 'relations' block of a type", lineno,
                           word.col)  # fmt: skip
            if indent <= rel_block[1]:
                raise _err(f"indent 'define' deeper than 'relations' (line {rel_block[0]})",
                           lineno, word.col)  # fmt: skip
            if define_indent is None:
                define_indent = indent
            elif indent != define_indent:
                raise _err(f"this 'define' is indented {indent} spaces but the ones before it "
                           f"{define_indent}", lineno, word.col)  # fmt: skip
            rels.append(_parse_define(toks, lines, lineno))
        elif indent == 0:
            raise _err(f"expected 'type' at the start of a line, found '{word.text}'", lineno,
                       word.col)  # fmt: skip
        else:
            raise _err(f"unexpected '{word.text}': expected 'relations' or 'define'", lineno,
                       word.col)  # fmt: skip
    close_type()
    return AuthorizationModel(types)


def _parse_define(toks: list[_Tok], lines: _Lines, lineno: int) -> RelationDef:
    if len(toks) < 2 or toks[1].kind != "name":
        t = toks[1] if len(toks) > 1 else _Tok("eol", "", lineno, toks[0].col + 6)
        raise _err(f"expected a relation name after 'define', found {t.describe()}", t.line, t.col)
    name = toks[1]
    if len(toks) < 3 or toks[2].text != ":":
        t = toks[2] if len(toks) > 2 else _Tok("eol", "", lineno, name.col + len(name.text))
        raise _err(f"expected ':' after 'define {name.text}', found {t.describe()}", t.line,
                   t.col)  # fmt: skip
    body = toks[3:]
    last_line, last_end = lineno, toks[-1].col + len(toks[-1].text)
    while _balance(body) > 0 and lines.peek_word() not in _STATEMENTS:
        more = lines.next()
        if more is None:
            break  # the parser reports the unclosed bracket
        ml, mi, mc = more
        extra = _tokens(mc[mi:], ml, mi)
        body.extend(extra)
        last_line, last_end = ml, extra[-1].col + len(extra[-1].text)
    if not body:
        raise _err(f"expected an expression after 'define {name.text}:'", lineno,
                   toks[2].col + 1)  # fmt: skip
    end = _Tok("eol", "", last_line, last_end)
    rewrite = _Expr(body, end).parse()
    return RelationDef(name.text, rewrite, pos=name.pos)


def load_model(path: str | Path) -> AuthorizationModel:
    """Read and parse a ``.fga`` file. Raises :class:`ModelError` (naming the file) for
    an invalid model and ``OSError`` if the file cannot be read."""
    p = Path(path)
    text = p.read_text(encoding="utf-8")
    try:
        return parse_model(text)
    except ModelError as e:
        raise ModelError(e.reason, path=str(p), line=e.line, column=e.column) from None
