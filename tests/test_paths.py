"""Unit and property tests of ``nexusfs.paths.normalize``: every path rule, the byte
limits at their exact boundaries (including multibyte UTF-8 and NFC changing a name's
length), and hypothesis fuzzing that checks canonical output on arbitrary text."""

from __future__ import annotations

import pathlib
import unicodedata

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nexusfs import paths
from nexusfs.errors import InvalidPath, NexusError
from nexusfs.paths import MAX_NAME_BYTES, MAX_PATH_BYTES, normalize

CONTROL = [chr(c) for c in (*range(0x20), *range(0x7F, 0xA0))]


def nbytes(s: str) -> int:
    return len(s.encode("utf-8"))


def rejects(path: object) -> InvalidPath:
    with pytest.raises(InvalidPath) as info:
        normalize(path)
    return info.value


# ----------------------------------------------------------------------- basic rules


@pytest.mark.parametrize(
    ("raw", "canonical"),
    [
        ("/", "/"),
        ("/a", "/a"),
        ("/a/b/c", "/a/b/c"),
        ("/a/", "/a"),  # trailing slash dropped
        ("/a/b///", "/a/b"),
        ("//", "/"),
        ("///a//b////c", "/a/b/c"),  # '//' collapse
        ("/.", "/"),
        ("/./", "/"),
        ("/./a/./b/.", "/a/b"),  # '.' segments dropped
        ("/a/.b", "/a/.b"),  # dot files are names
        ("/a/..b", "/a/..b"),
        ("/a/b..", "/a/b.."),
        ("/...", "/..."),
        ("/a b/ c ", "/a b/ c "),  # spaces are ordinary characters
        ("/\u00a0", "/\u00a0"),  # NBSP (just past the C1 range) is allowed
        ("/caf\u00e9/\u65e5\u672c/\U0001f600", "/caf\u00e9/\u65e5\u672c/\U0001f600"),
        ("/__sys__/x", "/__sys__/x"),  # reserved, but a valid path
    ],
)
def test_canonical_forms(raw: str, canonical: str) -> None:
    assert normalize(raw) == canonical
    assert normalize(canonical) == canonical


@pytest.mark.parametrize("raw", ["", "a", "a/b", "./a", "../a", " /a", "\\a", "~/a"])
def test_must_be_absolute(raw: str) -> None:
    rejects(raw)


@pytest.mark.parametrize("ch", CONTROL, ids=[f"U+{ord(c):04X}" for c in CONTROL])
def test_control_characters_rejected(ch: str) -> None:
    rejects(f"/a{ch}b")
    rejects(f"/{ch}")
    rejects(f"/ok/{ch}/x")


def test_nul_rejected_everywhere() -> None:
    for p in ("/\x00", "/a\x00", "/a/\x00/b", "\x00/a", "/" + "a" * 10 + "\x00"):
        rejects(p)


@pytest.mark.parametrize("raw", ["/..", "/../a", "/a/..", "/a/../b", "/a/./../b", "//..//"])
def test_dotdot_rejected(raw: str) -> None:
    err = rejects(raw)
    assert "'..'" in str(err)


def test_invalid_path_is_value_error_and_nexus_error() -> None:
    err = rejects("relative")
    assert isinstance(err, ValueError)
    assert isinstance(err, NexusError)
    assert err.code == "invalid_path"


@pytest.mark.parametrize(
    "value", [None, b"/a", bytearray(b"/a"), 1, 1.5, ["/a"], pathlib.PurePosixPath("/a"), object()]
)
def test_non_str_rejected(value: object) -> None:
    err = rejects(value)
    assert "str" in str(err)


def test_str_subclass_accepted_and_returns_plain_str() -> None:
    class MyStr(str):
        pass

    out = normalize(MyStr("//x/./y/"))
    assert out == "/x/y"
    assert type(out) is str


@pytest.mark.parametrize("raw", ["/\ud800", "/a\udfff", "/a/\udc80b", "/\ud83d", "/ok/\ude00/x"])
def test_lone_surrogates_rejected(raw: str) -> None:
    err = rejects(raw)
    assert "surrogate" in str(err)


def test_astral_characters_are_not_surrogates() -> None:
    assert normalize("/\U0001f600") == "/\U0001f600"


# ---------------------------------------------------------------------- unicode NFC


def test_nfc_two_spellings_one_path() -> None:
    decomposed = "/cafe\u0301"
    composed = "/caf\u00e9"
    assert normalize(decomposed) == composed
    assert normalize(composed) == composed
    assert normalize("/e\u0301") == normalize("/\u00e9") == "/\u00e9"
    # Hangul: conjoining jamo compose to one syllable.
    assert normalize("/\u1100\u1161") == "/\uac00"
    # Canonical singletons: OHM SIGN -> GREEK CAPITAL OMEGA, KELVIN SIGN -> 'K'.
    assert normalize("/\u2126") == "/\u03a9"
    assert normalize("/\u212a") == "/K"


def test_nfc_applies_to_every_segment() -> None:
    assert normalize("/e\u0301/a/\u0041\u030a") == "/\u00e9/a/\u00c5"


def test_nfc_not_nfkc() -> None:
    # Compatibility characters are kept (NFKC would fold them): the fi ligature, a
    # circled 1, a fullwidth A and the one dot leader.
    for p in ("/\ufb01", "/\u2460", "/\uff21", "/\u2024"):
        assert normalize(p) == p


def test_name_limit_counts_nfc_bytes() -> None:
    # 'e' + COMBINING ACUTE is 3 UTF-8 bytes; its NFC form is 2. 100 of them: 300 bytes
    # as written, 200 as stored, so the name is accepted.
    out = normalize("/" + "e\u0301" * 100)
    assert out == "/" + "\u00e9" * 100
    # U+0958 is a composition exclusion: NFC *expands* it (3 -> 6 bytes). 85 of them
    # are 255 bytes as written but 510 as stored, so the name is too long.
    assert nbytes("\u0958" * 85) == 255
    rejects("/" + "\u0958" * 85)
    assert nbytes(unicodedata.normalize("NFC", "\u0958" * 42)) == 252
    assert normalize("/" + "\u0958" * 42) == "/" + unicodedata.normalize("NFC", "\u0958" * 42)


# ------------------------------------------------------------------- length limits


@pytest.mark.parametrize(
    ("name", "ok"),
    [
        ("a" * 255, True),
        ("a" * 256, False),
        ("\u00e9" * 127 + "a", True),  # 2-byte chars: 254 + 1 = 255
        ("\u00e9" * 128, False),  # 256 bytes, only 128 characters
        ("a" + "\u00e9" * 127, True),
        ("aa" + "\u00e9" * 127, False),
        ("\u20ac" * 85, True),  # 3-byte chars: 255
        ("\u20ac" * 85 + "a", False),  # 256
        ("\U0001f600" * 63 + "abc", True),  # 4-byte chars: 252 + 3 = 255
        ("\U0001f600" * 64, False),  # 256 bytes, 64 characters
        ("\U0001f600" * 63 + "\u00e9" + "a", True),  # 252 + 2 + 1
        ("\U0001f600" * 63 + "\u20ac", True),  # 252 + 3
        ("\U0001f600" * 63 + "\u20ac" + "a", False),  # 256
        ("." * 255, True),  # dots are a name when there are three or more
        ("." * 256, False),
    ],
)
def test_name_byte_limit(name: str, ok: bool) -> None:
    if ok:
        assert nbytes(name) <= MAX_NAME_BYTES
        assert normalize("/" + name) == "/" + name
        assert normalize(f"/dir/{name}/x") == f"/dir/{name}/x"
    else:
        assert nbytes(name) > MAX_NAME_BYTES
        assert "255" in str(rejects("/" + name))
        rejects(f"/dir/{name}/x")


def _full_path(segments: int, last: str) -> str:
    return "/" + "/".join(["a" * 255] * segments + [last])


def test_path_byte_limit_exact() -> None:
    # 16 segments of "/" + 255 bytes = 4096 bytes exactly.
    exact = "/" + "/".join(["b" * 255] * 16)
    assert nbytes(exact) == MAX_PATH_BYTES
    assert normalize(exact) == exact
    over = exact + "/c"
    assert nbytes(over) == MAX_PATH_BYTES + 2
    assert "4096" in str(rejects(over))
    rejects(_full_path(15, "a" * 254) + "x/y")


def test_path_byte_limit_counts_bytes_not_characters() -> None:
    seg = "\u00e9" * 127 + "a"  # 255 bytes, 128 characters
    exact = "/" + "/".join([seg] * 16)
    assert nbytes(exact) == 4096 and len(exact) < 4096
    assert normalize(exact) == exact
    over = exact + "/\u00e9"
    assert nbytes(over) == 4099 and len(over) < 4096
    rejects(over)
    # 4097 bytes in 4096 characters: the last character is the multibyte one that
    # straddles the limit, and every name is within 255 bytes.
    head = "/" + "/".join(["a" * 255] * 15) + "/" + "a" * 253
    straddle = head + "/\u00e9"
    assert nbytes(straddle) == 4097 and len(straddle) == 4096
    rejects(straddle)
    fits = head + "/e"
    assert nbytes(fits) == 4096
    assert normalize(fits) == fits


def test_path_limit_applies_to_the_canonical_form() -> None:
    # Redundant slashes and '.' segments do not count: the stored path is what matters.
    exact = "/" + "/".join(["b" * 255] * 16)
    noisy = exact.replace("/", "//./") + "/"
    assert nbytes(noisy) > MAX_PATH_BYTES
    assert normalize(noisy) == exact
    assert normalize("/" * 10_000 + "a") == "/a"
    assert normalize("/." * 5_000) == "/"


def test_many_short_segments() -> None:
    deep = "/a" * 2048
    assert nbytes(deep) == 4096
    assert normalize(deep) == deep
    rejects(deep + "/a")


# ------------------------------------------------------------------------- helpers


def test_split_parent_basename_join() -> None:
    assert paths.split("/") == ("/", "")
    assert paths.split("/a") == ("/", "a")
    assert paths.split("/a/b/c") == ("/a/b", "c")
    assert paths.parent("/") == "/"
    assert paths.parent("/a/b") == "/a"
    assert paths.basename("/a/b") == "b"
    assert paths.basename("/") == ""
    assert paths.join("/", "x") == "/x"
    assert paths.join("/a", "x") == "/a/x"


def test_is_within_and_reserved() -> None:
    assert paths.is_within("/a/b", "/a")
    assert paths.is_within("/a", "/a")
    assert not paths.is_within("/ab", "/a")
    assert paths.is_within("/anything", "/")
    assert paths.is_reserved("/__sys__")
    assert paths.is_reserved("/__sys__/mounts")
    assert not paths.is_reserved("/__sys__x")
    assert not paths.is_reserved("/a/__sys__")


def test_cache_does_not_change_answers() -> None:
    # The normalise cache must return the same canonical string, and must never cache
    # a rejection as a success.
    for _ in range(3):
        assert normalize("//cache/./me/") == "/cache/me"
        rejects("/cache/../me")
    for i in range(paths._CACHE_MAX + 10):  # overflow the cache (it is cleared)
        normalize(f"/fill/{i}")
    assert normalize("//cache/./me/") == "/cache/me"


# ------------------------------------------------------------------ property tests

# Every code point, surrogates and control characters included.
ANY_CHAR = st.characters(exclude_categories=())
PIECES = st.sampled_from(
    [
        "", ".", "..", "...", "a", "B", "e\u0301", "\u00e9", "\u0958", "\u2126", "\u212a",
        "\u1100\u1161", "\U0001f600", "\x00", "\x1f", "\x7f", "\x9f", "\u00a0", "\ud800",
        "\udfff", " ", "\\", "__sys__", "a" * 255, "a" * 256, "\u00e9" * 127, "\u00e9" * 128,
        "\u20ac" * 85, "x" * 300,
    ]
)
SEGMENT = st.one_of(
    PIECES,
    st.text(ANY_CHAR, max_size=8),
    st.text(st.sampled_from("ab.\u00e9e\u0301/"), max_size=12),
    st.lists(PIECES, max_size=4).map("".join),
)
STRUCTURED = st.builds(
    lambda lead, segs, tail: lead + "/".join(segs) + tail,
    st.sampled_from(["/", "//", "/./", "", "a/", "./"]),
    st.lists(SEGMENT, max_size=20),
    st.sampled_from(["", "/", "//", "/.", "/.."]),
)
LONG = st.builds(
    lambda seg, n, extra: "/" + "/".join([seg] * n) + extra,
    st.sampled_from(["a" * 255, "\u00e9" * 127 + "a", "\u20ac" * 85, "b" * 100, "e\u0301" * 60]),
    st.integers(1, 45),
    st.sampled_from(["", "/", "/x", "/\u00e9", "/..", "/."]),
)
ANY_PATH = st.one_of(st.text(ANY_CHAR), st.text(ANY_CHAR).map(lambda s: "/" + s), STRUCTURED, LONG)


def _reference(path: str) -> str:
    """An independent, slow statement of the rules (no fast path, no cache)."""
    if not path.startswith("/"):
        raise InvalidPath("relative")
    if any(ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 for c in path):
        raise InvalidPath("control")
    if any(0xD800 <= ord(c) <= 0xDFFF for c in path):
        raise InvalidPath("surrogate")
    segments = [s for s in unicodedata.normalize("NFC", path).split("/") if s not in ("", ".")]
    if ".." in segments or any(nbytes(s) > MAX_NAME_BYTES for s in segments):
        raise InvalidPath("segment")
    out = "/" + "/".join(segments)
    if nbytes(out) > MAX_PATH_BYTES:
        raise InvalidPath("too long")
    return out


def assert_canonical(out: str) -> None:
    assert type(out) is str
    assert out.startswith("/")
    assert out == "/" or not out.endswith("/")
    assert "//" not in out
    segments = out.split("/")[1:] if out != "/" else []
    assert all(s not in ("", ".", "..") for s in segments)
    assert all(nbytes(s) <= MAX_NAME_BYTES for s in segments)
    assert nbytes(out) <= MAX_PATH_BYTES  # also proves there is no lone surrogate
    assert not any(ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 for c in out)
    assert unicodedata.is_normalized("NFC", out)


FUZZ = settings(
    max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None
)


@FUZZ
@given(ANY_PATH)
def test_fuzz_normalize_is_canonical_or_invalid(raw: str) -> None:
    try:
        out = normalize(raw)
    except InvalidPath as exc:
        assert isinstance(exc, ValueError)
        with pytest.raises(InvalidPath):
            _reference(raw)
        return
    assert out == _reference(raw)
    assert_canonical(out)
    assert normalize(out) == out  # idempotent
    assert normalize(normalize(raw)) == normalize(raw)
    # Other spellings of the same path normalise to the same string.
    assert normalize(unicodedata.normalize("NFD", out)) == out
    assert normalize(out.replace("/", "//./") + "/") == out


@settings(FUZZ, max_examples=500)
@given(st.lists(st.text(st.characters(exclude_categories=("Cs", "Cc")), min_size=1, max_size=20),
                min_size=1, max_size=10))
def test_fuzz_valid_names_round_trip(names: list[str]) -> None:
    # Paths built from NFC names (no '/', '.', '..', controls; within limits) come back
    # unchanged.
    names = [unicodedata.normalize("NFC", n).replace("/", "_") for n in names]
    names = [n for n in names if n not in (".", "..")]
    path = "/" + "/".join(names)
    assert normalize(path) == path
