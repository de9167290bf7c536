"""The metastore conformance suite: every :class:`~nexusfs.abc.MetastoreABC` driver must pass it.

Usage: subclass :class:`MetastoreContract` in a test module and provide a ``metastore``
fixture that yields an open, empty store (and closes it afterwards)::

    import pytest
    from nexusfs.testing.metastore import MetastoreContract

    class TestMyMetastore(MetastoreContract):
        @pytest.fixture
        def metastore(self, tmp_path):
            with MyMetastore(tmp_path / "db") as store:
                yield store

        # Optional, for the persistence tests: a callable that closes the given store and
        # returns a new one opened on the same storage.
        @pytest.fixture
        def reopen(self, tmp_path):
            return lambda old: (old.close(), MyMetastore(tmp_path / "db"))[1]

Without ``reopen`` the persistence tests are skipped (as for an in-memory store). The
suite covers point operations, binary keys, compare-and-swap, ordered scans with
prefix/range/cursor/limit, atomic batches with checks, snapshot reads under concurrent
writes, closed-store errors, and a Hypothesis property test against a ``dict`` model.
It needs ``pytest`` and ``hypothesis``; import it from test code only.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nexusfs.abc import MetastoreABC
from nexusfs.errors import Conflict, StoreClosed

__all__ = ["MetastoreContract", "Reopen"]

Reopen = Callable[[MetastoreABC], MetastoreABC]

#: Keys that exercise bytewise ordering edge cases.
EDGE_KEYS = [
    b"",
    b"\x00",
    b"\x00\x00",
    b"\x01",
    b"a",
    b"a\x00",
    b"a\xff",
    b"ab",
    b"b",
    b"\xff",
    b"\xff\x00",
    b"\xff\xff",
]


def _model_scan(
    model: dict[bytes, bytes],
    prefix: bytes = b"",
    start: bytes | None = None,
    end: bytes | None = None,
    after: bytes | None = None,
    limit: int | None = None,
    keys_only: bool = False,
) -> list[tuple[bytes, bytes]]:
    out = []
    for k in sorted(model):
        if not k.startswith(prefix):
            continue
        if start is not None and k < start:
            continue
        if end is not None and k >= end:
            continue
        if after is not None and k <= after:
            continue
        out.append((k, b"" if keys_only else model[k]))
    return out if limit is None else out[:limit]


class MetastoreContract:
    """Contract tests; subclass and provide the ``metastore`` fixture (see module doc)."""

    @pytest.fixture
    def reopen(self) -> Reopen | None:
        """Override to enable the persistence tests."""
        return None

    # ------------------------------------------------------------ point operations

    def test_get_missing(self, metastore: MetastoreABC) -> None:
        assert metastore.get(b"nope") is None

    def test_put_get_overwrite(self, metastore: MetastoreABC) -> None:
        metastore.put(b"k", b"v1")
        assert metastore.get(b"k") == b"v1"
        metastore.put(b"k", b"v2")
        assert metastore.get(b"k") == b"v2"
        assert isinstance(metastore.get(b"k"), bytes)

    def test_delete(self, metastore: MetastoreABC) -> None:
        metastore.put(b"k", b"v")
        assert metastore.delete(b"k") is True
        assert metastore.get(b"k") is None
        assert metastore.delete(b"k") is False
        assert metastore.delete(b"never") is False

    def test_empty_value_is_not_absent(self, metastore: MetastoreABC) -> None:
        metastore.put(b"k", b"")
        assert metastore.get(b"k") == b""
        assert metastore.scan() == [(b"k", b"")]

    def test_binary_keys(self, metastore: MetastoreABC) -> None:
        for i, key in enumerate(EDGE_KEYS):
            metastore.put(key, bytes([i]) * 3)
        for i, key in enumerate(EDGE_KEYS):
            assert metastore.get(key) == bytes([i]) * 3
        assert [k for k, _ in metastore.scan()] == sorted(EDGE_KEYS)

    def test_large_value(self, metastore: MetastoreABC) -> None:
        value = bytes(range(256)) * 4096  # 1 MiB
        metastore.put(b"big", value)
        assert metastore.get(b"big") == value

    def test_get_many(self, metastore: MetastoreABC) -> None:
        metastore.put(b"a", b"1")
        metastore.put(b"c", b"3")
        assert metastore.get_many([b"a", b"b", b"c", b"a"]) == [b"1", None, b"3", b"1"]
        assert metastore.get_many([]) == []

    # --------------------------------------------------------------------- cas

    def test_cas_absent_to_value(self, metastore: MetastoreABC) -> None:
        assert metastore.cas(b"k", None, b"v") is True
        assert metastore.get(b"k") == b"v"
        assert metastore.cas(b"k", None, b"w") is False
        assert metastore.get(b"k") == b"v"

    def test_cas_value_to_value(self, metastore: MetastoreABC) -> None:
        metastore.put(b"k", b"v")
        assert metastore.cas(b"k", b"wrong", b"x") is False
        assert metastore.get(b"k") == b"v"
        assert metastore.cas(b"k", b"v", b"x") is True
        assert metastore.get(b"k") == b"x"

    def test_cas_value_to_absent(self, metastore: MetastoreABC) -> None:
        metastore.put(b"k", b"v")
        assert metastore.cas(b"k", b"other", None) is False
        assert metastore.get(b"k") == b"v"
        assert metastore.cas(b"k", b"v", None) is True
        assert metastore.get(b"k") is None
        assert metastore.scan() == []

    def test_cas_absent_to_absent(self, metastore: MetastoreABC) -> None:
        assert metastore.cas(b"k", None, None) is True
        assert metastore.get(b"k") is None
        metastore.put(b"k", b"v")
        assert metastore.cas(b"k", None, None) is False
        assert metastore.get(b"k") == b"v"

    def test_cas_empty_value_differs_from_absent(self, metastore: MetastoreABC) -> None:
        assert metastore.cas(b"k", b"", b"v") is False
        metastore.put(b"k", b"")
        assert metastore.cas(b"k", None, b"v") is False
        assert metastore.cas(b"k", b"", b"v") is True

    # -------------------------------------------------------------------- scan

    @pytest.fixture
    def filled(self, metastore: MetastoreABC) -> dict[bytes, bytes]:
        model = {k: b"v" + k for k in EDGE_KEYS}
        model.update({b"dir/%03d" % i: b"%d" % i for i in range(50)})
        model[b"dir0"] = b"x"
        model[b"dir."] = b"y"
        metastore.batch(puts=sorted(model.items()))
        return model

    def test_scan_all_sorted(self, metastore: MetastoreABC, filled: dict[bytes, bytes]) -> None:
        assert metastore.scan() == sorted(filled.items())

    @pytest.mark.parametrize("prefix", [b"", b"a", b"dir/", b"dir", b"\xff", b"\x00", b"zz"])
    def test_scan_prefix(
        self, metastore: MetastoreABC, filled: dict[bytes, bytes], prefix: bytes
    ) -> None:
        assert metastore.scan(prefix) == _model_scan(filled, prefix)

    def test_scan_start_end(self, metastore: MetastoreABC, filled: dict[bytes, bytes]) -> None:
        for start, end in [
            (b"a", b"b"),
            (b"dir/010", b"dir/020"),
            (b"b", b"a"),
            (None, b"a"),
            (b"\xff", None),
            (b"dir/005", b"dir/005"),
            (b"", b"\x00"),
        ]:
            assert metastore.scan(start=start, end=end) == _model_scan(
                filled, start=start, end=end
            ), (start, end)
        assert metastore.scan(b"dir/", start=b"a", end=b"dir/003") == _model_scan(
            filled, b"dir/", end=b"dir/003"
        )

    def test_scan_after_cursor_pagination(
        self, metastore: MetastoreABC, filled: dict[bytes, bytes]
    ) -> None:
        pages: list[list[tuple[bytes, bytes]]] = []
        after: bytes | None = None
        while True:
            page = metastore.scan(b"dir/", after=after, limit=7)
            if not page:
                break
            assert len(page) <= 7
            pages.append(page)
            after = page[-1][0]
        assert [kv for page in pages for kv in page] == _model_scan(filled, b"dir/")
        assert len(pages) == 8
        # ``after`` is exclusive and may name a key that does not exist.
        assert metastore.scan(after=b"dir/0105") == _model_scan(filled, after=b"dir/0105")
        assert metastore.scan(b"dir/", after=b"dir/") == _model_scan(filled, b"dir/")
        assert metastore.scan(after=b"\xff\xff") == []

    def test_scan_limit_and_keys_only(
        self, metastore: MetastoreABC, filled: dict[bytes, bytes]
    ) -> None:
        assert metastore.scan(limit=0) == []
        assert metastore.scan(limit=3) == sorted(filled.items())[:3]
        assert metastore.scan(b"dir/", keys_only=True, limit=2) == [
            (b"dir/000", b""),
            (b"dir/001", b""),
        ]
        with pytest.raises(ValueError):
            metastore.scan(limit=-1)

    def test_scan_empty_store(self, metastore: MetastoreABC) -> None:
        assert metastore.scan() == []
        assert metastore.scan(b"x", start=b"a", end=b"z", after=b"m", limit=5) == []

    # ------------------------------------------------------------------- batch

    def test_batch_puts_and_deletes(self, metastore: MetastoreABC) -> None:
        metastore.put(b"old", b"1")
        metastore.batch(puts=[(b"a", b"1"), (b"b", b"2")], deletes=[b"old", b"missing"])
        assert metastore.scan() == [(b"a", b"1"), (b"b", b"2")]

    def test_batch_deletes_applied_before_puts(self, metastore: MetastoreABC) -> None:
        metastore.put(b"k", b"old")
        metastore.batch(puts=[(b"k", b"new")], deletes=[b"k"])
        assert metastore.get(b"k") == b"new"

    def test_batch_checks_pass(self, metastore: MetastoreABC) -> None:
        metastore.put(b"ver", b"1")
        metastore.batch(
            puts=[(b"ver", b"2"), (b"data", b"x")],
            checks=[(b"ver", b"1"), (b"data", None)],
        )
        assert metastore.get_many([b"ver", b"data"]) == [b"2", b"x"]

    def test_batch_failed_check_writes_nothing(self, metastore: MetastoreABC) -> None:
        metastore.put(b"ver", b"1")
        metastore.put(b"gone", b"g")
        before = metastore.scan()
        with pytest.raises(Conflict) as info:
            metastore.batch(
                puts=[(b"ver", b"2"), (b"new", b"n")],
                deletes=[b"gone"],
                checks=[(b"ver", b"1"), (b"absent\xff", b"something")],
            )
        assert "absent" in str(info.value)
        assert metastore.scan() == before
        with pytest.raises(Conflict):
            metastore.batch(puts=[(b"x", b"1")], checks=[(b"ver", None)])
        assert metastore.get(b"x") is None
        assert metastore.scan() == before

    def test_batch_empty(self, metastore: MetastoreABC) -> None:
        metastore.batch()
        metastore.batch(checks=[(b"nothing", None)])
        assert metastore.scan() == []

    def test_batch_large(self, metastore: MetastoreABC) -> None:
        puts = [(b"k%06d" % i, b"v%d" % i) for i in range(20_000)]
        metastore.batch(puts=puts)
        assert metastore.scan(limit=3) == puts[:3]
        assert len(metastore.scan(keys_only=True)) == 20_000
        metastore.batch(deletes=[k for k, _ in puts[::2]])
        assert metastore.scan() == puts[1::2]

    # ------------------------------------------------------------- concurrency

    def test_concurrent_readers_see_consistent_snapshots(self, metastore: MetastoreABC) -> None:
        """One writer updates two keys atomically; readers never see them disagree."""
        metastore.batch(puts=[(b"a", b"0"), (b"b", b"0")])
        stop = threading.Event()
        errors: list[str] = []

        def writer() -> None:
            for i in range(1, 400):
                value = b"%d" % i
                metastore.batch(puts=[(b"a", value), (b"b", value)])
            stop.set()

        def reader() -> None:
            last = 0
            while not stop.is_set():
                a, b = metastore.get_many([b"a", b"b"])
                rows = metastore.scan()
                if a != b:
                    errors.append(f"get_many saw a={a!r} b={b!r}")
                if rows[0][1] != rows[1][1]:
                    errors.append(f"scan saw {rows!r}")
                assert a is not None
                if int(a) < last:
                    errors.append(f"went backwards: {last} -> {a!r}")
                last = int(a)

        threads = [threading.Thread(target=reader) for _ in range(3)]
        threads.append(threading.Thread(target=writer))
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        assert not errors, errors[:5]
        assert metastore.get(b"a") == b"399"

    def test_concurrent_cas_counter(self, metastore: MetastoreABC) -> None:
        """CAS increments from several threads lose no update."""
        metastore.put(b"n", b"0")

        def bump(times: int) -> None:
            done = 0
            while done < times:
                cur = metastore.get(b"n")
                assert cur is not None
                if metastore.cas(b"n", cur, b"%d" % (int(cur) + 1)):
                    done += 1

        threads = [threading.Thread(target=bump, args=(50,)) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        assert metastore.get(b"n") == b"200"

    def test_read_your_write_visible_across_threads(self, metastore: MetastoreABC) -> None:
        seen: list[bytes | None] = []
        for i in range(50):
            metastore.put(b"k", b"%d" % i)
            t = threading.Thread(target=lambda: seen.append(metastore.get(b"k")))
            t.start()
            t.join()
        assert seen == [b"%d" % i for i in range(50)]

    # ------------------------------------------------------------ closed store

    def test_closed_store_raises(self, metastore: MetastoreABC) -> None:
        metastore.put(b"k", b"v")
        metastore.close()
        metastore.close()  # idempotent
        calls: list[Callable[[], Any]] = [
            lambda: metastore.get(b"k"),
            lambda: metastore.get_many([b"k"]),
            lambda: metastore.put(b"k", b"v"),
            lambda: metastore.delete(b"k"),
            lambda: metastore.cas(b"k", None, b"v"),
            lambda: metastore.scan(),
            lambda: metastore.batch(puts=[(b"x", b"y")]),
            metastore.flush,
        ]
        for call in calls:
            with pytest.raises(StoreClosed):
                call()
        assert isinstance(StoreClosed("x"), OSError)

    def test_context_manager_closes(self, metastore: MetastoreABC) -> None:
        with metastore as store:
            assert store is metastore
            store.put(b"k", b"v")
        with pytest.raises(StoreClosed):
            metastore.get(b"k")

    def test_flush_keeps_data(self, metastore: MetastoreABC) -> None:
        metastore.put(b"k", b"v")
        metastore.flush()
        metastore.flush()
        assert metastore.get(b"k") == b"v"

    # -------------------------------------------------------------- persistence

    def test_reopen_keeps_everything(self, metastore: MetastoreABC, reopen: Reopen | None) -> None:
        if reopen is None:
            pytest.skip("driver is not persistent")
        model = {k: b"v" + k for k in EDGE_KEYS}
        metastore.batch(puts=list(model.items()))
        metastore.delete(b"a")
        del model[b"a"]
        assert metastore.cas(b"b", b"vb", b"cas") is True
        model[b"b"] = b"cas"
        store = reopen(metastore)
        try:
            assert store.scan() == sorted(model.items())
        finally:
            store.close()

    # ----------------------------------------------------------- property test

    @settings(
        max_examples=60,
        deadline=None,
        suppress_health_check=[
            HealthCheck.function_scoped_fixture,
            HealthCheck.too_slow,
            # The same test runs on several driver classes; it keeps no state on self.
            HealthCheck.differing_executors,
        ],
    )
    @given(data=st.data())
    def test_matches_dict_model(self, metastore: MetastoreABC, data: st.DataObject) -> None:
        """Random operation sequences behave exactly like a ``dict`` with sorted scans."""
        existing = metastore.scan(keys_only=True)
        if existing:
            metastore.batch(deletes=[k for k, _ in existing])
        model: dict[bytes, bytes] = {}
        keys = st.sampled_from(EDGE_KEYS) | st.binary(max_size=3)
        values = st.binary(max_size=8)
        maybe_value = st.none() | values
        ops = st.lists(
            st.one_of(
                st.tuples(st.just("put"), keys, values),
                st.tuples(st.just("delete"), keys),
                st.tuples(st.just("cas"), keys, maybe_value, maybe_value),
                st.tuples(
                    st.just("batch"),
                    st.lists(st.tuples(keys, values), max_size=4),
                    st.lists(keys, max_size=3),
                    st.lists(st.tuples(keys, maybe_value), max_size=2),
                ),
                st.tuples(st.just("get"), keys),
                st.tuples(
                    st.just("scan"),
                    st.sampled_from([b"", b"a", b"\xff", b"\x00"]) | st.binary(max_size=2),
                    st.none() | keys,
                    st.none() | keys,
                    st.none() | keys,
                    st.none() | st.integers(0, 5),
                    st.booleans(),
                ),
            ),
            max_size=40,
        )
        for op in data.draw(ops):
            name = op[0]
            if name == "put":
                metastore.put(op[1], op[2])
                model[op[1]] = op[2]
            elif name == "delete":
                assert metastore.delete(op[1]) == (op[1] in model)
                model.pop(op[1], None)
            elif name == "cas":
                _, key, expected, new = op
                ok = model.get(key) == expected
                assert metastore.cas(key, expected, new) == ok
                if ok:
                    if new is None:
                        model.pop(key, None)
                    else:
                        model[key] = new
            elif name == "batch":
                _, puts, deletes, checks = op
                ok = all(model.get(k) == e for k, e in checks)
                if ok:
                    metastore.batch(puts=puts, deletes=deletes, checks=checks)
                    for k in deletes:
                        model.pop(k, None)
                    model.update(puts)
                else:
                    with pytest.raises(Conflict):
                        metastore.batch(puts=puts, deletes=deletes, checks=checks)
            elif name == "get":
                assert metastore.get(op[1]) == model.get(op[1])
            else:
                _, prefix, start, end, after, limit, keys_only = op
                got = metastore.scan(
                    prefix, start=start, end=end, after=after, limit=limit, keys_only=keys_only
                )
                assert got == _model_scan(model, prefix, start, end, after, limit, keys_only)
        assert metastore.scan() == sorted(model.items())
