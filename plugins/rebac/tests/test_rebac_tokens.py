"""Consistency and continuation tokens: round trips, and typed errors for anything
else (malformed, another store's)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nexusfs_rebac.errors import InvalidToken
from nexusfs_rebac.tokens import Token, format_token, parse_token, store_tag

TAG = store_tag(0xFB38C0B84D)


@given(
    revision=st.integers(0, 2**62),
    extra=st.one_of(st.none(), st.integers(0, 2**62).map(lambda c: ("change", c)),
                    st.integers(0, 2**62).map(lambda r: ("row", r))),
)  # fmt: skip
def test_round_trip(revision: int, extra: tuple[str, int] | None) -> None:
    change = extra[1] if extra and extra[0] == "change" else None
    row = extra[1] if extra and extra[0] == "row" else None
    text = format_token(TAG, revision, change, row=row)
    assert parse_token(text, TAG) == Token(revision, change, row)


@pytest.mark.parametrize(
    "bad",
    ["", ".", TAG, f"{TAG}.", f"{TAG}.x", f"{TAG}.01", f"{TAG}.-1", f"{TAG}.+1", f"{TAG}.1.",
     f"{TAG}.1.r", f"{TAG}.1.rx", f"{TAG}.1.r01", f"{TAG}.1.2.3", f"{TAG}.\u0661", "x" * 65,
     f"{TAG}.1 "],
)  # fmt: skip
def test_malformed_tokens(bad: str) -> None:
    with pytest.raises(InvalidToken):
        parse_token(bad, TAG)


@pytest.mark.parametrize("bad", [None, 5, b"fb.1", ["fb", 1]])
def test_non_strings(bad: object) -> None:
    with pytest.raises(InvalidToken, match="string"):
        parse_token(bad, TAG)


def test_another_stores_token() -> None:
    with pytest.raises(InvalidToken, match="another store"):
        parse_token(format_token(store_tag(7), 3), TAG)
