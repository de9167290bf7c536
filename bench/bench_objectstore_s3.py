"""Benchmark of the S3 object store against raw boto3 on the same server, in one run.

Usage: ``python bench/bench_objectstore_s3.py [--quick] [--endpoint URL] [--strict]``

The server is ``--endpoint``, else ``$NEXUS_TEST_S3_ENDPOINT``, else a private moto
server (``nexusfs.testing.s3``); with none available the run is skipped (exit 0) unless
``NEXUS_TEST_REQUIRE_SERVERS=1`` (then it fails). Credentials come from the ``AWS_*``
variables (dummy ones for the private server).

Rows (each a ratio of seconds per blob, driver / raw, interleaved so that both see the
same load; lower is better), for 1 MiB and 64 MiB blobs (1 MiB and 16 MiB with
``--quick``):

* put: ``S3ObjectStore.put`` (BLAKE3 while uploading; up to one part a conditional
  PutObject, else a multipart upload to a temporary key, a HeadObject for dedup, a
  server-side CopyObject to the content key and a DeleteObject) vs one raw
  ``put_object`` of the same bytes. Targets: 1 MiB <= 1.3x (the same one request),
  64 MiB <= 2.5x (the server-side copy re-reads and re-writes every byte on the
  server). Measured on moto here (2 shared cores): 1.01x and 2.24x.
* get: ``S3ObjectStore.read`` vs raw ``get_object(...)["Body"].read()``: <= 1.2x.
* stream: ``iter_chunks`` (1 MiB chunks) vs raw ``Body.iter_chunks``: <= 1.2x.

Every put stores new content (a counter is written into the first bytes), so dedup never
short-cuts a timed put. ``--quick`` (CI smoke) uses 3 repetitions; figures are then
noisy. Exits 0 unless ``--strict`` and a target is missed.
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
import time
from typing import Any

from _common import MiB, Row, ensure_kernel_importable, machine_line, paired_per_op, print_table

ensure_kernel_importable()

from nexusfs.drivers.objectstore.s3 import S3ObjectStore  # noqa: E402
from nexusfs.testing.s3 import (  # noqa: E402
    S3Unavailable,
    credentials_env,
    s3_client,
    s3_endpoint,
    s3_uri,
    servers_required,
    temporary_bucket,
)

TARGETS = {"put small": 1.3, "put large": 2.5, "get": 1.2, "stream": 1.2}
_counter = itertools.count()


def fmt_mbps(size: int, seconds: float) -> str:
    return f"{size / seconds / 1e6:,.1f} MB/s"


def stamp(buf: bytearray) -> bytearray:
    """Make ``buf`` new content (a fresh counter in its first 8 bytes); O(1)."""
    buf[:8] = next(_counter).to_bytes(8, "little")
    return buf


def bench_size(store: S3ObjectStore, client: Any, bucket: str, size: int, reps: int,
               label: str) -> list[Row]:  # fmt: skip
    data = bytearray(os.urandom(size))
    raw_keys: list[str] = []

    def driver_put(_rep: int) -> None:
        store.put(stamp(data))

    def raw_put(_rep: int) -> None:
        key = f"raw/{next(_counter)}"
        client.put_object(Bucket=bucket, Key=key, Body=stamp(data))
        raw_keys.append(key)

    t_put, t_raw_put, r_put = paired_per_op(driver_put, raw_put, reps)
    cid = store.put(stamp(data)).content_id
    key = f"raw/{next(_counter)}"
    client.put_object(Bucket=bucket, Key=key, Body=bytes(data))

    def driver_get(_rep: int) -> None:
        assert len(store.read(cid)) == size

    def raw_get(_rep: int) -> None:
        assert len(client.get_object(Bucket=bucket, Key=key)["Body"].read()) == size

    def driver_stream(_rep: int) -> None:
        assert sum(len(c) for c in store.iter_chunks(cid, chunk_size=MiB)) == size

    def raw_stream(_rep: int) -> None:
        body = client.get_object(Bucket=bucket, Key=key)["Body"]
        assert sum(len(c) for c in body.iter_chunks(MiB)) == size

    t_get, t_raw_get, r_get = paired_per_op(driver_get, raw_get, reps)
    t_st, t_raw_st, r_st = paired_per_op(driver_stream, raw_stream, reps)
    put_target = TARGETS["put small" if size < store.part_size else "put large"]
    return [
        Row(f"put {label}", fmt_mbps(size, t_put), "boto3 put_object",
            fmt_mbps(size, t_raw_put), r_put, put_target),
        Row(f"read {label}", fmt_mbps(size, t_get), "boto3 get_object().read()",
            fmt_mbps(size, t_raw_get), r_get, TARGETS["get"]),
        Row(f"iter_chunks {label}", fmt_mbps(size, t_st), "boto3 Body.iter_chunks",
            fmt_mbps(size, t_raw_st), r_st, TARGETS["stream"]),
    ]  # fmt: skip


def run(endpoint: str, quick: bool) -> list[Row]:
    sizes = [(MiB, "1 MiB"), (16 * MiB, "16 MiB")] if quick else [(MiB, "1 MiB"),
                                                                  (64 * MiB, "64 MiB")]
    reps = 3 if quick else 7
    client = s3_client(endpoint)
    rows: list[Row] = []
    with temporary_bucket(endpoint, "nexus-bench") as bucket:
        store = S3ObjectStore.from_uri(s3_uri(endpoint, bucket, "bench"))
        try:
            for size, label in sizes:
                rows += bench_size(store, client, bucket, size, reps if size <= 16 * MiB
                                   else max(3, reps // 2), label)  # fmt: skip
        finally:
            store.close()
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke mode (CI)")
    parser.add_argument("--endpoint", default=None, help="S3 endpoint URL to use")
    parser.add_argument("--strict", action="store_true", help="exit 1 if a target is missed")
    args = parser.parse_args(argv)
    os.environ.update(credentials_env())
    try:
        endpoint = args.endpoint or s3_endpoint()
    except S3Unavailable as exc:
        print(f"FAIL: {exc}", file=sys.stderr)
        return 1
    if endpoint is None:
        why = "no S3 server (set NEXUS_TEST_S3_ENDPOINT or install moto[server])"
        if servers_required():
            print(f"FAIL: {why}", file=sys.stderr)
            return 1
        print(f"SKIP: {why}")
        return 0
    print(machine_line())
    print(f"endpoint: {endpoint}; mode: {'quick' if args.quick else 'full'}")
    start = time.perf_counter()
    rows = run(endpoint, args.quick)
    print()
    misses = print_table("S3 object store vs raw boto3 (seconds per blob; ratio = driver / raw)",
                         rows)  # fmt: skip
    print(f"total {time.perf_counter() - start:.1f} s")
    return 1 if args.strict and misses else 0


if __name__ == "__main__":
    raise SystemExit(main())
