"""Consistency and continuation tokens: opaque strings naming a point of a store's
history.

A token is ``<store>.<revision>``, or, as a ``read_changes`` continuation,
``<store>.<revision>.<change>``, or, as a ``read`` continuation,
``<store>.<revision>.r<row>``: ``store`` is the store's random id in hex (so a token
from another database is recognised instead of being silently misread), ``revision`` a
revision of the store (every write that changes something makes exactly one),
``change`` the id of the last change-log row a page returned and ``row`` that of the
last tuple row. Clients treat tokens as opaque; any token may be passed as
``consistency`` (only its revision counts).

Invariant: ``format_token(parse_token(t, store)) == t`` for every well-formed token of
``store``. Parsing raises :class:`~nexusfs_rebac.errors.InvalidToken` for anything else.
"""

from __future__ import annotations

from dataclasses import dataclass

from nexusfs_rebac.errors import InvalidToken

__all__ = ["Token", "format_token", "parse_token", "store_tag"]

_MAX_LEN = 64


@dataclass(frozen=True, slots=True)
class Token:
    """A parsed token: ``revision`` and, for a change-log continuation, ``change``, or
    for a ``read`` continuation, ``row``."""

    revision: int
    change: int | None = None
    row: int | None = None


def store_tag(store_id: int) -> str:
    """The store part of a token (lower-case hex of the store id)."""
    return f"{store_id:x}"


def format_token(
    tag: str, revision: int, change: int | None = None, *, row: int | None = None
) -> str:
    """The token string for ``revision`` (and ``change`` or ``row``) of the store tagged
    ``tag``."""
    if row is not None:
        return f"{tag}.{revision}.r{row}"
    if change is None:
        return f"{tag}.{revision}"
    return f"{tag}.{revision}.{change}"


def _number(part: str, token: str) -> int:
    if not part.isascii() or not part.isdigit() or (len(part) > 1 and part[0] == "0"):
        raise InvalidToken(f"malformed token {token!r}")
    return int(part)


def parse_token(token: object, tag: str) -> Token:
    """Parse a token of the store tagged ``tag``. Raises :class:`InvalidToken` for a
    value that is not a token string, a malformed token, or one of another store."""
    if not isinstance(token, str):
        raise InvalidToken(f"a token must be a string, not {type(token).__name__}")
    if not token or len(token) > _MAX_LEN:
        raise InvalidToken(f"malformed token {token[:_MAX_LEN]!r}")
    parts = token.split(".")
    if len(parts) not in (2, 3):
        raise InvalidToken(f"malformed token {token!r}")
    if parts[0] != tag:
        raise InvalidToken(
            f"token {token!r} was issued by another store (this store's tokens start with "
            f"{tag + '.'!r}); was the database replaced?"
        )
    revision = _number(parts[1], token)
    if len(parts) == 2:
        return Token(revision)
    if parts[2].startswith("r"):
        return Token(revision, row=_number(parts[2][1:], token))
    return Token(revision, _number(parts[2], token))
