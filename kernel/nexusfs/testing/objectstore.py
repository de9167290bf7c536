"""Conformance suite for :class:`~nexusfs.abc.ObjectStoreABC` drivers.

Subclass :class:`ObjectStoreContract` in a test module and provide an ``object_store``
fixture that yields an open, empty store (and closes it afterwards)::

    import pytest
    from nexusfs.testing.objectstore import ObjectStoreContract

    class TestMyStore(ObjectStoreContract):
        @pytest.fixture
        def object_store(self, tmp_path):
            store = MyStore(tmp_path / "blobs")
            yield store
            store.close()

Every ``test_*`` method then runs against the driver: round trips, BLAKE3 ids,
deduplication, ranges, chunked reads, streaming writers, abort and exception paths,
delete/exists/info/list, ``NotFound`` and ``InvalidPath`` errors, concurrent writers of
the same content, ``put`` from bytes / iterables / files, and a Hypothesis property test.
Needs ``pytest`` and ``hypothesis``; imported only by test code.
"""

from __future__ import annotations

import io
import itertools
import os
import threading
from collections.abc import Iterator

import blake3
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nexusfs.abc import BlobInfo, ObjectStoreABC
from nexusfs.errors import InvalidPath, NotFound

__all__ = ["ObjectStoreContract"]

EMPTY_ID = blake3.blake3(b"").hexdigest()
MISSING_ID = "0" * 64
INVALID_IDS = [
    "",
    "abc",
    "0" * 63,
    "0" * 65,
    "A" * 64,
    "g" * 64,
    "../" + "0" * 61,
    "/etc/passwd",
    "0" * 63 + "\n",
    "00/" + "0" * 61,
    "..",
]


def _bid(data: bytes) -> str:
    return blake3.blake3(data).hexdigest()


def _payload(size: int, seed: int = 0) -> bytes:
    """Deterministic incompressible-looking bytes."""
    out = bytearray()
    counter = 0
    while len(out) < size:
        out += blake3.blake3(f"{seed}:{counter}".encode()).digest(length=1 << 16)
        counter += 1
    return bytes(out[:size])


class ObjectStoreContract:
    """The object store contract. Provide an ``object_store`` fixture (see module doc)."""

    @pytest.fixture
    def object_store(self) -> Iterator[ObjectStoreABC]:
        raise NotImplementedError("subclasses must provide an `object_store` fixture")

    # -- put / read ----------------------------------------------------------------

    def test_put_read_roundtrip(self, object_store: ObjectStoreABC) -> None:
        data = _payload(300_001, seed=1)
        info = object_store.put(data)
        assert isinstance(info, BlobInfo)
        assert info.size == len(data)
        assert object_store.read(info.content_id) == data

    def test_content_id_is_blake3_hex(self, object_store: ObjectStoreABC) -> None:
        data = b"hello, nexus"
        info = object_store.put(data)
        assert info.content_id == _bid(data)
        assert len(info.content_id) == 64
        assert info.content_id == info.content_id.lower()
        int(info.content_id, 16)

    def test_dedup(self, object_store: ObjectStoreABC) -> None:
        data = _payload(70_000, seed=2)
        first = object_store.put(data)
        second = object_store.put(data)
        assert first.content_id == second.content_id
        assert first.size == second.size == len(data)
        assert list(object_store.list()).count(first.content_id) == 1
        assert object_store.read(first.content_id) == data

    def test_empty_blob(self, object_store: ObjectStoreABC) -> None:
        info = object_store.put(b"")
        assert info.content_id == EMPTY_ID
        assert info.size == 0
        assert object_store.read(EMPTY_ID) == b""
        assert list(object_store.iter_chunks(EMPTY_ID)) == []
        assert object_store.exists(EMPTY_ID)
        assert object_store.info(EMPTY_ID).size == 0
        assert EMPTY_ID in set(object_store.list())

    def test_range_reads(self, object_store: ObjectStoreABC) -> None:
        data = _payload(10_000, seed=3)
        cid = object_store.put(data).content_id
        assert object_store.read(cid, 0, 10) == data[:10]
        assert object_store.read(cid, 100) == data[100:]
        assert object_store.read(cid, 9_990, 100) == data[9_990:]
        assert object_store.read(cid, 10_000) == b""
        assert object_store.read(cid, 50_000, 10) == b""
        assert object_store.read(cid, 5, 0) == b""
        assert object_store.read(cid, size=None) == data

    def test_negative_range_rejected(self, object_store: ObjectStoreABC) -> None:
        cid = object_store.put(b"abc").content_id
        with pytest.raises(ValueError):
            object_store.read(cid, -1)
        with pytest.raises(ValueError):
            object_store.read(cid, 0, -1)

    # -- iter_chunks ---------------------------------------------------------------

    def test_iter_chunks_bounded_and_exact(self, object_store: ObjectStoreABC) -> None:
        data = _payload(25_000, seed=4)
        cid = object_store.put(data).content_id
        chunks = list(object_store.iter_chunks(cid, chunk_size=1_000))
        assert all(0 < len(c) <= 1_000 for c in chunks)
        assert b"".join(chunks) == data
        ranged = list(object_store.iter_chunks(cid, offset=1_234, size=5_555, chunk_size=999))
        assert all(0 < len(c) <= 999 for c in ranged)
        assert b"".join(ranged) == data[1_234 : 1_234 + 5_555]
        assert list(object_store.iter_chunks(cid, offset=len(data))) == []
        assert list(object_store.iter_chunks(cid, offset=len(data) + 10, size=5)) == []
        tail = b"".join(object_store.iter_chunks(cid, offset=24_000, size=10_000))
        assert tail == data[24_000:]

    def test_iter_chunks_default_chunk_size(self, object_store: ObjectStoreABC) -> None:
        data = _payload((1 << 20) * 2 + 17, seed=5)
        cid = object_store.put(data).content_id
        chunks = list(object_store.iter_chunks(cid))
        assert all(len(c) <= 1 << 20 for c in chunks)
        assert b"".join(chunks) == data

    def test_iter_chunks_missing_raises_not_found(self, object_store: ObjectStoreABC) -> None:
        it = object_store.iter_chunks(MISSING_ID)
        with pytest.raises(NotFound):
            next(it)

    # -- streaming writer ----------------------------------------------------------

    def test_streaming_small_writes_equal_put(self, object_store: ObjectStoreABC) -> None:
        data = _payload(3 * (1 << 20) + 333, seed=6)
        with object_store.open_writer() as writer:
            for i in range(0, len(data), 4_099):
                assert writer.write(data[i : i + 4_099]) == len(data[i : i + 4_099])
            streamed = writer.commit()
        assert streamed.content_id == _bid(data)
        assert streamed.size == len(data)
        assert object_store.put(data).content_id == streamed.content_id
        assert object_store.read(streamed.content_id) == data

    def test_streaming_mixed_sizes_and_buffer_types(self, object_store: ObjectStoreABC) -> None:
        data = _payload(9 * (1 << 20) + 5, seed=7)
        cuts = [0, 1, 100, 70_000, 70_001, 3 << 20, (3 << 20) + 10, 8 << 20, len(data)]
        with object_store.open_writer() as writer:
            for n, (a, b) in enumerate(itertools.pairwise(cuts)):
                piece = data[a:b]
                kind = n % 3
                if kind == 0:
                    writer.write(piece)
                elif kind == 1:
                    writer.write(bytearray(piece))
                else:
                    writer.write(memoryview(piece))
            info = writer.commit()
        assert info.content_id == _bid(data)
        assert object_store.read(info.content_id) == data

    def test_writer_does_not_keep_caller_buffer(self, object_store: ObjectStoreABC) -> None:
        """A bytearray reused (mutated and resized) right after write() returns."""
        parts = [_payload(600_000, seed=s) for s in range(8)]
        buf = bytearray()
        with object_store.open_writer() as writer:
            for part in parts:
                buf[:] = part  # resize + overwrite: fails if a view is still exported
                writer.write(buf)
                buf.extend(b"garbage")
                del buf[:]
            info = writer.commit()
        assert info.content_id == _bid(b"".join(parts))

    def test_abort_leaves_nothing(self, object_store: ObjectStoreABC) -> None:
        data = _payload(3 << 20, seed=8)
        writer = object_store.open_writer()
        writer.write(data)
        writer.abort()
        writer.abort()  # idempotent
        assert not object_store.exists(_bid(data))
        assert list(object_store.list()) == []
        with pytest.raises(ValueError):
            writer.write(b"more")

    def test_exception_in_with_leaves_nothing(self, object_store: ObjectStoreABC) -> None:
        data = _payload(1 << 20, seed=9)

        class Boom(Exception):
            pass

        with pytest.raises(Boom), object_store.open_writer() as writer:
            writer.write(data)
            raise Boom
        assert not object_store.exists(_bid(data))
        assert list(object_store.list()) == []

    def test_abort_after_commit_is_noop(self, object_store: ObjectStoreABC) -> None:
        writer = object_store.open_writer()
        writer.write(b"keep me")
        info = writer.commit()
        writer.abort()
        assert object_store.read(info.content_id) == b"keep me"
        with pytest.raises(ValueError):
            writer.commit()

    def test_uncommitted_blob_invisible(self, object_store: ObjectStoreABC) -> None:
        data = b"not yet" * 1000
        with object_store.open_writer() as writer:
            writer.write(data)
            assert not object_store.exists(_bid(data))
            assert list(object_store.list()) == []
            writer.commit()
        assert object_store.exists(_bid(data))

    # -- delete / exists / info / list ---------------------------------------------

    def test_delete_exists_info_list(self, object_store: ObjectStoreABC) -> None:
        blobs = [_payload(n, seed=n) for n in (1, 10, 1_000, 100_000)]
        ids = [object_store.put(b).content_id for b in blobs]
        assert sorted(object_store.list()) == sorted(ids)
        for cid, data in zip(ids, blobs, strict=True):
            assert object_store.exists(cid)
            info = object_store.info(cid)
            assert info.content_id == cid
            assert info.size == len(data)
            assert info.created_at > 0
        assert object_store.delete(ids[0]) is True
        assert object_store.delete(ids[0]) is False
        assert not object_store.exists(ids[0])
        assert sorted(object_store.list()) == sorted(ids[1:])
        with pytest.raises(NotFound):
            object_store.read(ids[0])
        with pytest.raises(NotFound):
            object_store.info(ids[0])
        # content can come back after deletion
        assert object_store.put(blobs[0]).content_id == ids[0]
        assert object_store.read(ids[0]) == blobs[0]

    def test_missing_blob_not_found(self, object_store: ObjectStoreABC) -> None:
        assert not object_store.exists(MISSING_ID)
        assert object_store.delete(MISSING_ID) is False
        with pytest.raises(NotFound):
            object_store.read(MISSING_ID)
        with pytest.raises(NotFound):
            object_store.info(MISSING_ID)
        with pytest.raises(FileNotFoundError):  # NotFound is also the builtin
            object_store.read(MISSING_ID, 0, 1)

    @pytest.mark.parametrize("bad", INVALID_IDS)
    def test_invalid_ids_rejected(self, object_store: ObjectStoreABC, bad: str) -> None:
        with pytest.raises(InvalidPath):
            object_store.read(bad)
        with pytest.raises(InvalidPath):
            object_store.info(bad)
        with pytest.raises(InvalidPath):
            object_store.exists(bad)
        with pytest.raises(InvalidPath):
            object_store.delete(bad)
        with pytest.raises(InvalidPath):
            list(object_store.iter_chunks(bad))
        with pytest.raises(ValueError):  # InvalidPath is also a ValueError
            object_store.read(bad)

    def test_non_string_id_rejected(self, object_store: ObjectStoreABC) -> None:
        with pytest.raises(InvalidPath):
            object_store.read(b"0" * 64)  # type: ignore[arg-type]

    # -- concurrency ---------------------------------------------------------------

    def test_concurrent_writers_same_content(self, object_store: ObjectStoreABC) -> None:
        data = _payload((3 << 20) + 7, seed=10)
        results: list[str] = []
        errors: list[BaseException] = []
        barrier = threading.Barrier(8)

        def work(step: int) -> None:
            try:
                barrier.wait()
                with object_store.open_writer() as writer:
                    for i in range(0, len(data), step):
                        writer.write(data[i : i + step])
                    results.append(writer.commit().content_id)
            except BaseException as exc:  # surfaced below
                errors.append(exc)

        threads = [
            threading.Thread(target=work, args=(s,))
            for s in (1 << 20, 65_536, 3 << 20, 999_999, 4_096, 2 << 20, 123_457, 1 << 22)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        assert results == [_bid(data)] * 8
        assert list(object_store.list()) == [_bid(data)]
        assert object_store.read(_bid(data)) == data

    def test_concurrent_writers_distinct_content(self, object_store: ObjectStoreABC) -> None:
        blobs = [_payload(500_000 + i, seed=100 + i) for i in range(6)]
        out: dict[int, str] = {}

        def work(i: int) -> None:
            out[i] = object_store.put(blobs[i]).content_id

        threads = [threading.Thread(target=work, args=(i,)) for i in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(object_store.list()) == sorted(_bid(b) for b in blobs)
        for i, data in enumerate(blobs):
            assert object_store.read(out[i]) == data

    # -- put sources ---------------------------------------------------------------

    def test_put_from_bytes_iterable_file(self, object_store: ObjectStoreABC) -> None:
        data = _payload((2 << 20) + 99, seed=11)
        expected = _bid(data)
        assert object_store.put(data).content_id == expected
        assert object_store.put(bytearray(data)).content_id == expected  # type: ignore[arg-type]
        assert object_store.put(memoryview(data)).content_id == expected
        pieces = [data[i : i + 77_777] for i in range(0, len(data), 77_777)]
        assert object_store.put(iter(pieces)).content_id == expected
        assert object_store.put(io.BytesIO(data)).content_id == expected
        assert object_store.put([]).content_id == EMPTY_ID
        assert sorted(object_store.list()) == sorted({expected, EMPTY_ID})

    def test_put_from_real_file(
        self, object_store: ObjectStoreABC, tmp_path: os.PathLike[str]
    ) -> None:
        data = _payload(1_500_000, seed=12)
        path = os.path.join(os.fspath(tmp_path), "src.bin")
        with open(path, "wb") as f:
            f.write(data)
        with open(path, "rb") as f:
            info = object_store.put(f)
        assert info.content_id == _bid(data)
        assert object_store.read(info.content_id) == data

    def test_put_iterable_error_leaves_nothing(self, object_store: ObjectStoreABC) -> None:
        def chunks() -> Iterator[bytes]:
            yield b"a" * 100_000
            raise RuntimeError("source failed")

        with pytest.raises(RuntimeError):
            object_store.put(chunks())
        assert list(object_store.list()) == []

    # -- property ------------------------------------------------------------------

    # The store fixture is shared by all examples (harmless: content addressing makes
    # examples independent), and each subclass runs this method on its own instance.
    @settings(
        max_examples=40,
        deadline=None,
        suppress_health_check=[
            HealthCheck.function_scoped_fixture,
            HealthCheck.too_slow,
            HealthCheck.differing_executors,
        ],
    )
    @given(
        chunks=st.lists(st.binary(max_size=5_000), max_size=12),
        big=st.integers(min_value=0, max_value=600_000),
        ranges=st.lists(
            st.tuples(st.integers(0, 700_000), st.none() | st.integers(0, 700_000)),
            max_size=6,
        ),
        chunk_size=st.integers(1, 300_000),
    )
    def test_property_stream_and_ranges(
        self,
        object_store: ObjectStoreABC,
        chunks: list[bytes],
        big: int,
        ranges: list[tuple[int, int | None]],
        chunk_size: int,
    ) -> None:
        if big:
            chunks = [*chunks, _payload(big, seed=big)]
        data = b"".join(chunks)
        with object_store.open_writer() as writer:
            for c in chunks:
                writer.write(c)
            info = writer.commit()
        assert info.content_id == _bid(data)
        assert info.size == len(data)
        for offset, size in ranges:
            end = None if size is None else offset + size
            assert object_store.read(info.content_id, offset, size) == data[offset:end]
        pieces = list(object_store.iter_chunks(info.content_id, chunk_size=chunk_size))
        assert all(0 < len(p) <= chunk_size for p in pieces)
        assert b"".join(pieces) == data
