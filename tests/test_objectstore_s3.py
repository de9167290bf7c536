"""The S3 object store against a real S3-compatible server (moto's server mode, or
``$NEXUS_TEST_S3_ENDPOINT``): the conformance suite, the multipart and copy paths,
deduplication, abort and crash leftovers, URI and open errors, transient failures, and
mounting ``s3://`` in a kernel. Skipped without a server unless
``NEXUS_TEST_REQUIRE_SERVERS=1``. Mocks appear only to inject faults a real server
cannot produce on demand (a 503, a refusal, a connection cut mid-body)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import blake3
import pytest
from botocore.exceptions import ResponseStreamingError
from botocore.stub import Stubber

from kernel_testkit import native_available
from nexusfs.abc import Durability, ObjectStoreABC
from nexusfs.drivers.objectstore import LocalObjectStore, open_object_store
from nexusfs.drivers.objectstore.s3 import (
    MIN_PART_SIZE,
    S3Error,
    S3ObjectStore,
    open_s3,
    parse_s3_uri,
)
from nexusfs.errors import (
    MountError,
    NotFound,
    PermissionDenied,
    ServiceUnavailable,
    StoreClosed,
)
from nexusfs.testing.objectstore import ObjectStoreContract
from nexusfs.testing.redis import free_port
from nexusfs.testing.s3 import (
    MotoServer,
    S3Unavailable,
    bucket_keys,
    create_bucket,
    credentials_env,
    delete_bucket,
    pending_uploads,
    s3_client,
    s3_endpoint_or_skip,
    s3_uri,
    servers_required,
    temporary_bucket,
)

PART = MIN_PART_SIZE  # 5 MiB: the smallest part size S3 accepts, so blobs stay small


def _payload(size: int, seed: int = 0) -> bytes:
    out = bytearray()
    counter = 0
    while len(out) < size:
        out += blake3.blake3(f"s3:{seed}:{counter}".encode()).digest(length=1 << 16)
        counter += 1
    return bytes(out[:size])


def _bid(data: bytes) -> str:
    return blake3.blake3(data).hexdigest()


@pytest.fixture(autouse=True)
def aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Credentials for the test server; no instance-metadata probing; no endpoint from
    the environment (the URIs name it)."""
    for key, value in credentials_env().items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    for key in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_PROFILE"):
        monkeypatch.delenv(key, raising=False)


@pytest.fixture
def endpoint() -> str:
    return s3_endpoint_or_skip()


@pytest.fixture
def bucket(endpoint: str) -> Iterator[str]:
    with temporary_bucket(endpoint) as name:
        yield name


@pytest.fixture
def make_store(endpoint: str, bucket: str) -> Iterator[Callable[..., S3ObjectStore]]:
    """``make_store(prefix="p", **kwargs)``: a store on the test bucket (5 MiB parts);
    every store made is closed at teardown."""
    made: list[S3ObjectStore] = []

    def factory(prefix: str = "p", uri_options: dict[str, str] | None = None,
                **kwargs: Any) -> S3ObjectStore:  # fmt: skip
        options = {"part_size": str(PART), **(uri_options or {})}
        store = S3ObjectStore.from_uri(s3_uri(endpoint, bucket, prefix, **options), **kwargs)
        made.append(store)
        return store

    yield factory
    for store in made:
        store.close()


class _Calls:
    """Records the S3 operations a client sends (botocore's own event hooks)."""

    def __init__(self, store: S3ObjectStore) -> None:
        self.names: list[str] = []
        store._client.meta.events.register("before-call.s3", self._record)

    def _record(self, model: Any, **_: Any) -> None:
        self.names.append(model.name)

    def count(self, name: str) -> int:
        return self.names.count(name)


# ------------------------------------------------------------------ conformance suite


class TestS3Contract(ObjectStoreContract):
    @pytest.fixture
    def object_store(self, endpoint: str, bucket: str) -> Iterator[ObjectStoreABC]:
        store = open_s3(s3_uri(endpoint, bucket, "contract", part_size=PART))
        yield store
        store.close()
        # nothing left behind: no multipart upload, no temporary object
        assert pending_uploads(endpoint, bucket) == []
        assert [k for k in bucket_keys(endpoint, bucket) if "/tmp/" in k] == []


# ------------------------------------------------------------------ write paths


def test_multipart_upload_then_copy_to_content_key(
    make_store: Callable[..., S3ObjectStore], endpoint: str, bucket: str
) -> None:
    store = make_store("mp")
    calls = _Calls(store)
    data = _payload(2 * PART + 12_345, seed=1)
    with store.open_writer() as writer:
        for i in range(0, len(data), 1 << 20):
            writer.write(data[i : i + (1 << 20)])
        # streaming: the multipart upload is under way, and nothing is visible yet
        assert calls.count("CreateMultipartUpload") == 1
        assert [k.split("/")[1] for k in pending_uploads(endpoint, bucket)] == ["tmp"]
        assert list(store.list()) == []
        info = writer.commit()
    assert info.content_id == _bid(data)
    assert info.size == len(data)
    assert calls.count("CreateMultipartUpload") == 1
    assert calls.count("UploadPart") == 3
    assert calls.count("CompleteMultipartUpload") == 1
    assert calls.count("CopyObject") == 1
    assert calls.count("PutObject") == 0
    assert store.read(info.content_id) == data
    assert store.read(info.content_id, PART - 10, 20) == data[PART - 10 : PART + 10]
    assert pending_uploads(endpoint, bucket) == []
    assert bucket_keys(endpoint, bucket) == [f"mp/objects/{info.content_id[:2]}/{info.content_id}"]
    assert store.key_of(info.content_id) == bucket_keys(endpoint, bucket)[0]


def test_blob_of_one_part_is_a_single_put(make_store: Callable[..., S3ObjectStore]) -> None:
    store = make_store()
    calls = _Calls(store)
    data = _payload(PART, seed=2)  # exactly one part: no multipart upload needed
    info = store.put(data)
    assert info.content_id == _bid(data)
    assert calls.count("PutObject") == 1
    assert calls.count("CreateMultipartUpload") == 0
    assert store.read(info.content_id) == data


def test_large_copy_uses_upload_part_copy(
    make_store: Callable[..., S3ObjectStore], endpoint: str, bucket: str
) -> None:
    """Above ``single_copy_max`` (5 GiB on S3; lowered here) the server-side copy is a
    multipart copy in ranges."""
    store = make_store("big", single_copy_max=PART, copy_part_size=PART)
    calls = _Calls(store)
    data = _payload(2 * PART + 7, seed=3)
    info = store.put(data)
    assert calls.count("UploadPartCopy") == 3
    assert calls.count("CopyObject") == 0
    assert store.read(info.content_id) == data
    assert pending_uploads(endpoint, bucket) == []
    assert bucket_keys(endpoint, bucket) == [store.key_of(info.content_id)]


def test_dedup_multipart_aborts_the_upload(
    make_store: Callable[..., S3ObjectStore], endpoint: str, bucket: str
) -> None:
    store = make_store()
    data = _payload(PART + 99, seed=4)
    first = store.put(data)
    calls = _Calls(store)
    second = store.put(data)
    assert second.content_id == first.content_id
    assert second.created_at == store.info(first.content_id).created_at  # the old one
    assert calls.count("AbortMultipartUpload") == 1
    assert calls.count("CompleteMultipartUpload") == 0
    assert calls.count("CopyObject") == 0
    assert bucket_keys(endpoint, bucket) == [store.key_of(first.content_id)]
    assert pending_uploads(endpoint, bucket) == []


def test_dedup_small_is_a_refused_conditional_put(
    make_store: Callable[..., S3ObjectStore], endpoint: str, bucket: str
) -> None:
    store = make_store()
    data = b"same bytes" * 1000
    first = store.put(data)
    created = store.info(first.content_id).created_at
    calls = _Calls(store)
    second = store.put(data)
    assert second.content_id == first.content_id == _bid(data)
    assert second.created_at == created  # the stored object was not replaced
    assert calls.names == ["PutObject", "HeadObject"]  # If-None-Match refused, then stat
    assert bucket_keys(endpoint, bucket) == [store.key_of(first.content_id)]


def test_damaged_small_blob_is_replaced(
    make_store: Callable[..., S3ObjectStore], endpoint: str, bucket: str
) -> None:
    """An object under a content key whose size is wrong (damaged, truncated) is
    overwritten by the next commit of that content, as the local store does."""
    store = make_store()
    data = _payload(50_000, seed=14)
    s3_client(endpoint).put_object(Bucket=bucket, Key=store.key_of(_bid(data)), Body=b"torn")
    assert store.put(data).content_id == _bid(data)
    assert store.read(_bid(data)) == data


def test_same_content_ids_as_the_local_store(
    make_store: Callable[..., S3ObjectStore], tmp_path: Path
) -> None:
    local = LocalObjectStore(tmp_path / "blobs")
    store = make_store()
    for data in (b"", b"x", _payload(100_000, seed=5), _payload(PART + 1, seed=6)):
        assert store.put(data).content_id == local.put(data).content_id
    local.close()


def test_prefixes_are_isolated_and_foreign_keys_ignored(
    make_store: Callable[..., S3ObjectStore], endpoint: str, bucket: str
) -> None:
    a, b = make_store("tenant/a"), make_store("tenant/b")
    cid = a.put(b"only in a").content_id
    assert a.exists(cid) and not b.exists(cid)
    assert list(b.list()) == []
    client = s3_client(endpoint)
    for key in ("tenant/a/objects/zz/" + "0" * 64, "tenant/a/objects/notablob",
                f"tenant/a/objects/00/{cid}", "tenant/a/readme.txt"):  # fmt: skip
        client.put_object(Bucket=bucket, Key=key, Body=b"foreign")
    assert list(a.list()) == [cid]


# ------------------------------------------------------------------ abort and leftovers


def test_abort_mid_multipart_leaves_nothing(
    make_store: Callable[..., S3ObjectStore], endpoint: str, bucket: str
) -> None:
    store = make_store()
    writer = store.open_writer()
    writer.write(_payload(2 * PART + 1, seed=7))
    assert len(pending_uploads(endpoint, bucket)) == 1
    writer.abort()
    writer.abort()
    assert pending_uploads(endpoint, bucket) == []
    assert bucket_keys(endpoint, bucket) == []
    with pytest.raises(ValueError):
        writer.write(b"more")


def test_close_aborts_open_writers(
    make_store: Callable[..., S3ObjectStore], endpoint: str, bucket: str
) -> None:
    store = make_store()
    cid = store.put(b"kept").content_id
    writer = store.open_writer()
    writer.write(_payload(PART + 1, seed=8))
    store.close()
    store.close()
    assert pending_uploads(endpoint, bucket) == []
    with pytest.raises(StoreClosed):
        writer.commit()
    for call in (lambda: store.read(cid), store.open_writer, lambda: store.info(cid),
                 lambda: list(store.list()), lambda: store.exists(cid)):  # fmt: skip
        with pytest.raises(StoreClosed):
            call()
    store.flush()  # nothing to flush; harmless after close


def test_crash_leftovers_are_cleaned_up(
    make_store: Callable[..., S3ObjectStore], endpoint: str, bucket: str
) -> None:
    """A crashed writer leaves a multipart upload (or a completed temporary object):
    the next open removes those idle for longer than ``temp_grace``;
    ``cleanup_temp(0)`` removes every one except those of live writers."""
    client = s3_client(endpoint)
    old_ms = int((time.time() - 7200) * 1000)
    client.create_multipart_upload(Bucket=bucket, Key=f"p/tmp/{old_ms:013d}-{'a' * 16}")
    leftover = f"p/tmp/{old_ms:013d}-{'b' * 16}"
    client.put_object(Bucket=bucket, Key=leftover, Body=b"half")  # written just now
    store = make_store()  # opening cleans up what has been idle for an hour
    assert pending_uploads(endpoint, bucket) == []
    assert bucket_keys(endpoint, bucket) == [leftover]  # recently written: kept
    writer = store.open_writer()
    writer.write(_payload(PART + 1, seed=9))
    young = pending_uploads(endpoint, bucket)
    assert len(young) == 1
    stranger = make_store()  # another store: knows nothing of the live writer
    assert stranger.cleanup_temp() == 0  # young: kept
    assert store.cleanup_temp(0) == 1  # the leftover object; its own live writer: kept
    assert pending_uploads(endpoint, bucket) == young
    info = writer.commit()
    assert store.read(info.content_id, 0, 4) == _payload(4, seed=9)
    client.create_multipart_upload(Bucket=bucket, Key=store._new_temp_key())
    assert store.cleanup_temp(0) == 1
    assert pending_uploads(endpoint, bucket) == []
    assert bucket_keys(endpoint, bucket) == [store.key_of(info.content_id)]


def test_cleanup_spares_old_uploads_still_being_written(
    make_store: Callable[..., S3ObjectStore], endpoint: str, bucket: str
) -> None:
    """Idleness, not age, decides: an upload started long ago by another process that
    wrote a part recently is kept (its writer is alive)."""
    client = s3_client(endpoint)
    key = f"p/tmp/{int((time.time() - 7200) * 1000):013d}-{'c' * 16}"
    upload = client.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
    client.upload_part(Bucket=bucket, Key=key, UploadId=upload, PartNumber=1, Body=b"busy")
    store = make_store()
    assert pending_uploads(endpoint, bucket) == [key]
    assert store.cleanup_temp(3600) == 0
    assert store.cleanup_temp(0) == 1
    assert pending_uploads(endpoint, bucket) == []


def test_dropped_writer_is_aborted_when_collected(
    make_store: Callable[..., S3ObjectStore], endpoint: str, bucket: str
) -> None:
    """A writer dropped without commit or abort (a caller bug) does not leak its upload
    for the store's lifetime: the store holds writers weakly, and collection aborts."""
    import gc

    store = make_store()
    writer = store.open_writer()
    writer.write(_payload(PART + 1, seed=15))
    assert len(pending_uploads(endpoint, bucket)) == 1
    del writer
    gc.collect()
    assert pending_uploads(endpoint, bucket) == []


# ------------------------------------------------------------------ URIs and opening


@pytest.mark.parametrize(
    ("uri", "why"),
    [
        ("s3://", "no bucket"),
        ("s3:///prefix", "no bucket"),
        ("s3://Upper-Case/x", "not a valid bucket name"),
        ("s3://ab/x", "not a valid bucket name"),
        ("s3://a..b/x", "not a valid bucket name"),
        ("s3://key:secret@bucket/x", "credentials do not belong"),
        ("s3://bucket/a//b", "empty, '.' or '..' segment"),
        ("s3://bucket/a/../b", "empty, '.' or '..' segment"),
        ("s3://bucket/x#frag", "fragment"),
        ("s3://bucket/x?bogus=1", "unknown option 'bogus'"),
        ("s3://bucket/x?region=us-east-1&region=eu-west-1", "given twice"),
        ("s3://bucket/x?region", "malformed query"),
        ("s3://bucket/x?part_size=1024", "between 5MiB and 5GiB"),
        ("s3://bucket/x?part_size=6GiB", "between 5MiB and 5GiB"),
        ("s3://bucket/x?part_size=lots", "byte count"),
        ("s3://bucket/x?max_attempts=0", "max_attempts"),
        ("s3://bucket/x?connect_timeout=nan", "connect_timeout"),
        ("s3://bucket/x?read_timeout=-1", "read_timeout"),
        ("s3://bucket/x?addressing=sideways", "addressing"),
        ("s3://bucket/x?region=US_EAST", "region"),
        ("s3://bucket/x?profile=a%20b", "profile"),
        ("s3://bucket/x?endpoint=ftp://host", "endpoint"),
        ("s3://bucket/x?endpoint=http://127.0.0.1:99999", "invalid port"),
        ("local:///x", "scheme"),
    ],
)
def test_bad_uri_is_a_mount_error(uri: str, why: str) -> None:
    with pytest.raises(MountError, match="invalid S3 URI") as exc_info:
        open_s3(uri)
    assert why in str(exc_info.value)


def test_bad_uri_through_the_registry_is_a_mount_error() -> None:
    with pytest.raises(MountError, match="unknown option 'nope'"):
        open_object_store("s3://bucket/x?nope=1")


def test_parse_canonical_uri() -> None:
    loc = parse_s3_uri(
        "s3://my.bucket-1/a/b%20c/?region=eu-west-1&part_size=16MiB&endpoint=http://h:9000/"
        "&max_attempts=2&read_timeout=5&addressing=virtual&profile=dev"
    )
    assert (loc.bucket, loc.prefix, loc.region, loc.profile) == (
        "my.bucket-1", "a/b c", "eu-west-1", "dev")  # fmt: skip
    assert (loc.part_size, loc.max_attempts, loc.read_timeout) == (16 << 20, 2, 5.0)
    assert (loc.endpoint, loc.addressing) == ("http://h:9000", "virtual")
    assert loc.uri.startswith("s3://my.bucket-1/a/b%20c?addressing=virtual&endpoint=")
    assert parse_s3_uri(loc.uri) == loc
    assert parse_s3_uri("s3://bucket").prefix == ""


def test_missing_bucket_is_a_mount_error(endpoint: str) -> None:
    with pytest.raises(MountError, match="does not exist"):
        open_s3(s3_uri(endpoint, "nexus-no-such-bucket-here", "x"))


def test_unreachable_endpoint_is_a_mount_error() -> None:
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    with pytest.raises(MountError, match="cannot reach"):
        open_s3(s3_uri(dead, "some-bucket", "x", max_attempts=1, connect_timeout=2))


def test_no_credentials_is_a_mount_error(
    endpoint: str, bucket: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    with pytest.raises(MountError, match="no usable AWS credentials"):
        open_s3(s3_uri(endpoint, bucket))


def test_unknown_profile_is_a_mount_error(endpoint: str, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    with pytest.raises(MountError, match="profile"):
        open_s3(s3_uri(endpoint, "any-bucket", profile="nobody"))


def test_bad_credentials_are_a_mount_error() -> None:
    """A private moto server with authentication on refuses unknown access keys."""
    try:
        server = MotoServer(env={"INITIAL_NO_AUTH_ACTION_COUNT": "0"}).start()
    except S3Unavailable as exc:
        if servers_required():
            raise
        pytest.skip(str(exc))
    try:
        with pytest.raises(MountError, match="denied"):
            open_s3(s3_uri(server.url, "some-bucket", max_attempts=1))
    finally:
        server.close()


def test_durability_modes(make_store: Callable[..., S3ObjectStore]) -> None:
    for mode in ("immediate", "deferred"):
        store = make_store(durability=mode)
        assert store.durability is Durability(mode)
        cid = store.put(b"durable on return").content_id
        store.flush()
        assert store.read(cid) == b"durable on return"
    with pytest.raises(ValueError):
        make_store(durability="sometimes")


# ------------------------------------------------------------------ failures mid-operation


def test_server_gone_mid_operation_is_service_unavailable(bucket: str) -> None:
    """A real server that stops: every request then fails to connect."""
    try:
        server = MotoServer().start()
    except S3Unavailable as exc:
        if servers_required():
            raise
        pytest.skip(str(exc))
    try:
        s3_client(server.url).create_bucket(Bucket=bucket)
        store = open_s3(s3_uri(server.url, bucket, max_attempts=2, connect_timeout=2))
        cid = store.put(b"before the outage").content_id
        writer = store.open_writer()
        writer.write(b"x" * 100)
        server.stop()
        with pytest.raises(ServiceUnavailable, match="cannot read a blob"):
            store.read(cid)
        with pytest.raises(ServiceUnavailable):
            store.exists(cid)
        with pytest.raises(ServiceUnavailable):
            list(store.list())
        with pytest.raises(ServiceUnavailable):
            writer.commit()
        with pytest.raises(ValueError):  # the failed commit aborted the writer
            writer.write(b"y")
        store.close()  # never raises for an unreachable server
    finally:
        server.close()


@pytest.mark.parametrize(
    ("status", "code", "error"),
    [
        (503, "SlowDown", ServiceUnavailable),
        (500, "InternalError", ServiceUnavailable),
        (403, "AccessDenied", PermissionDenied),
        (400, "InvalidArgument", S3Error),
    ],
)
def test_error_answers_are_typed(
    make_store: Callable[..., S3ObjectStore], status: int, code: str, error: type[Exception]
) -> None:
    """Answers a real server gives only under load or misconfiguration, injected with
    botocore's Stubber."""
    store = make_store()
    cid = store.put(b"blob").content_id
    with Stubber(store._client) as stub:
        stub.add_client_error("head_object", code, "injected", http_status_code=status)
        with pytest.raises(error, match=f"cannot stat a blob: {code} injected"):
            store.exists(cid)
        stub.add_client_error("put_object", code, "injected", http_status_code=status)
        writer = store.open_writer()
        writer.write(b"new blob")
        with pytest.raises(error, match=f"cannot commit a blob: {code} injected"):
            writer.commit()
        stub.assert_no_pending_responses()
    assert not store.exists(_bid(b"new blob"))


class _CutBody:
    """A GetObject body whose connection drops after ``good`` bytes (fault injection)."""

    def __init__(self, body: Any, good: int) -> None:
        self._body, self._left = body, good

    def read(self, amt: int | None = None) -> bytes:
        if self._left <= 0:
            raise ResponseStreamingError(error="connection reset by peer (injected)")
        want = self._left if amt is None else min(amt, self._left)
        chunk: bytes = self._body.read(want)
        self._left -= len(chunk)
        if amt is None and len(chunk) == want:  # read-all met the cut
            raise ResponseStreamingError(error="connection reset by peer (injected)")
        return chunk

    def close(self) -> None:
        self._body.close()


def test_reads_resume_after_a_cut_connection(
    make_store: Callable[..., S3ObjectStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    store = make_store(uri_options={"max_attempts": "3"})
    data = _payload(300_000, seed=10)
    cid = store.put(data).content_id
    real_get = store._get_body
    cuts: list[int] = []

    def flaky(key: str, offset: int, end: int | None) -> Any:
        cuts.append(offset)
        body = real_get(key, offset, end)
        return None if body is None else _CutBody(body, 100_000)

    monkeypatch.setattr(store, "_get_body", flaky)
    assert b"".join(store.iter_chunks(cid, 10, None, 30_000)) == data[10:]
    assert cuts == [10, 100_010, 200_010]  # resumed where each cut happened
    cuts.clear()
    with pytest.raises(ServiceUnavailable, match="connection reset"):
        store.read(cid)  # the whole body each time: fails every attempt
    assert cuts == [0, 0, 0]
    assert store.read(cid, 5, 50_000) == data[5:50_005]  # under the cut: fine


# ------------------------------------------------------------------ in a kernel


@pytest.mark.skipif(not native_available(), reason="nexusfs._native is not built")
def test_kernel_on_s3_root_store(
    endpoint: str, bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``nexusfs.connect`` with ``object_store = s3://...``: files beyond the inline
    limit live in the bucket, survive a reopen and are reclaimed when deleted."""
    import nexusfs

    uri = s3_uri(endpoint, bucket, "root", part_size=PART)
    monkeypatch.setenv("NEXUS_OBJECT_STORE", uri)
    monkeypatch.delenv("NEXUS_METASTORE", raising=False)
    small, big, huge = b"tiny", _payload(100_000, seed=11), _payload(2 * PART + 3, seed=12)
    with nexusfs.connect(data_dir=tmp_path / "data", durability="immediate") as nx:
        assert [m.uri for m in nx.mounts()] == [uri]
        nx.write("/small.txt", small)  # inline in the metastore
        nx.write("/docs/big.bin", big)
        with nx.open("/huge.bin", "wb") as f:  # streamed: a multipart upload
            for i in range(0, len(huge), 1 << 20):
                f.write(huge[i : i + (1 << 20)])
        assert nx.stat("/docs/big.bin").content_id == _bid(big)
        assert nx.read("/docs/big.bin", offset=50_000, size=10) == big[50_000:50_010]
    keys = bucket_keys(endpoint, bucket, "root/")
    assert sorted(k.rsplit("/", 1)[1] for k in keys) == sorted([_bid(big), _bid(huge)])
    with nexusfs.connect(data_dir=tmp_path / "data", durability="immediate") as nx:
        assert nx.read("/small.txt") == small
        assert nx.read("/docs/big.bin") == big
        assert nx.read("/huge.bin") == huge
        nx.unlink("/docs/big.bin")
        nx.flush()
    assert [k.rsplit("/", 1)[1] for k in bucket_keys(endpoint, bucket, "root/")] == [_bid(huge)]
    assert pending_uploads(endpoint, bucket) == []


def test_mount_s3_under_a_local_root(endpoint: str, bucket: str, tmp_path: Path) -> None:
    from kernel_testkit import make_fs

    nx = make_fs("memory", tmp_path)
    try:
        uri = s3_uri(endpoint, bucket, "mnt")
        nx.mount("/s3", uri)
        data = _payload(40_000, seed=13)
        nx.write("/s3/dir/file.bin", data)
        nx.write("/local.bin", data)
        assert nx.read("/s3/dir/file.bin") == data
        assert {m.path: m.uri for m in nx.mounts()}["/s3"] == uri
        assert bucket_keys(endpoint, bucket) == [f"mnt/objects/{_bid(data)[:2]}/{_bid(data)}"]
        with pytest.raises(NotFound):
            nx.read("/s3/dir/missing")
    finally:
        nx.close()


def test_mounting_a_missing_bucket_fails_cleanly(endpoint: str, tmp_path: Path) -> None:
    from kernel_testkit import make_fs

    nx = make_fs("memory", tmp_path)
    try:
        name = create_bucket(endpoint)
        delete_bucket(endpoint, name)
        with pytest.raises(MountError, match="does not exist"):
            nx.mount("/gone", s3_uri(endpoint, name))
        assert "/gone" not in {m.path for m in nx.mounts()}
    finally:
        nx.close()


def test_writer_memory_is_bounded(make_store: Callable[..., S3ObjectStore]) -> None:
    """The writer holds at most two parts, whatever the blob size."""
    import tracemalloc

    store = make_store()
    piece = os.urandom(1 << 20)
    tracemalloc.start()
    try:
        with store.open_writer() as writer:
            for _ in range(4 * PART // len(piece)):
                writer.write(piece)
            writer.commit()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 3 * PART, f"peak {peak} bytes for a {4 * PART}-byte blob"
