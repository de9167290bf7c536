"""Benchmark the cache store drivers against raw redis-py on the same server, same run.

    python bench/bench_cachestore.py [--quick]

Measures, per operation (medians of interleaved batches, see ``_common.paired_per_op``):
  (a) ``RedisCacheStore`` get (hit, 100 B), set (100 B, TTL) and publish (no subscriber)
      against the same redis-py calls (``GET``, ``SET PX``, ``PUBLISH``) on the same server
      and connection pool settings: the ratio is the driver's overhead (argument checks,
      namespace, health check, envelope);
  (b) pub/sub delivery: publish in one store, ``get`` in another store's subscription
      (through the relay thread) against redis-py ``PubSub.get_message`` in the
      publishing thread (informational: ours includes a thread hand-off);
  (c) ``NullCacheStore`` get/publish and a degraded ``RedisCacheStore`` (server
      unreachable) get/set/publish: what a call costs when there is no backend.

The server is ``$NEXUS_TEST_REDIS_URL`` or a private ``redis-server`` (started and
stopped here). Without one, (a) and (b) print "skipped" and the run still exits 0,
unless ``NEXUS_TEST_REQUIRE_SERVERS=1`` (then exit 1). ``--quick`` (CI smoke) runs small
batches; its figures are noisy. Always exits 0 otherwise; prints PASS/MISS per target.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "kernel"))
sys.path.insert(0, str(ROOT / "bench"))

from _common import Row, fmt_time, machine_line, median_per_op, paired_per_op, print_table  # noqa: E402
from nexusfs.drivers.cachestore import NullCacheStore, open_cache_store  # noqa: E402
from nexusfs.testing.redis import (  # noqa: E402
    RedisUnavailable,
    free_port,
    redis_url,
    servers_required,
)

#: Driver overhead targets (driver time / raw redis-py time on the same server).
TARGET_KV = 1.25
TARGET_PUBLISH = 1.3
#: A call with no backend (null, or Redis unreachable) is answered locally: it must stay
#: far below one loopback round trip to Redis (~50-300 us on these machines).
TARGET_LOCAL_US = 20.0
VALUE = os.urandom(100)


def batch(fn: Callable[[int], object], n: int) -> Callable[[int], int]:
    def run(_rep: int) -> int:
        for i in range(n):
            fn(i)
        return n

    return run


def _reachable(url: str) -> bool:
    import redis

    client = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
    try:
        return bool(client.ping())
    except (redis.RedisError, OSError):
        return False
    finally:
        client.close()


def bench_redis(url: str, n: int, reps: int) -> list[Row]:
    import redis

    ns = f"nexus-bench-{uuid.uuid4().hex[:8]}:"
    raw = redis.Redis.from_url(url, socket_timeout=0.5, socket_connect_timeout=0.5)
    store = open_cache_store(url, namespace=ns)
    rows: list[Row] = []
    try:
        store.set("hit", VALUE, ttl=600)
        raw.set(ns + "raw-hit", VALUE, px=600_000)
        for name, ours, base, target in (
            ("get (hit, 100 B)", lambda i: store.get("hit"),
             lambda i: raw.get(ns + "raw-hit"), TARGET_KV),
            ("set (100 B, TTL)", lambda i: store.set(f"k{i % 64}", VALUE, ttl=60),
             lambda i: raw.set(f"{ns}r{i % 64}", VALUE, px=60_000), TARGET_KV),
            ("publish (no subscriber)", lambda i: store.publish("quiet", VALUE),
             lambda i: raw.publish(ns + "raw-quiet", VALUE), TARGET_PUBLISH),
        ):  # fmt: skip
            s, b, ratio = paired_per_op(batch(ours, n), batch(base, n), reps)
            rows.append(Row(f"redis {name}", fmt_time(s), "redis-py", fmt_time(b), ratio,
                            target))  # fmt: skip

        # Pub/sub delivery: publish here, receive in another store's subscription.
        other = open_cache_store(url, namespace=ns)
        sub = other.subscribe("deliver")
        pubsub = raw.pubsub(ignore_subscribe_messages=True)  # type: ignore[no-untyped-call]
        pubsub.subscribe(ns + "raw-deliver")
        while pubsub.get_message(timeout=0.1) is not None:
            pass

        def ours_deliver(_i: int) -> None:
            store.publish("deliver", VALUE)
            if sub.get(5) is None:
                raise RuntimeError("a message was not delivered")

        def raw_deliver(_i: int) -> None:
            raw.publish(ns + "raw-deliver", VALUE)
            if pubsub.get_message(timeout=5) is None:
                raise RuntimeError("a message was not delivered")

        s, b, ratio = paired_per_op(batch(ours_deliver, n // 2), batch(raw_deliver, n // 2),
                                    reps)  # fmt: skip
        rows.append(Row("redis publish -> other store get", fmt_time(s),
                        "redis-py PubSub (same thread)", fmt_time(b), ratio))  # fmt: skip
        pubsub.close()
        other.close()
    finally:
        store.close()
        keys = list(raw.scan_iter(match=ns + "*", count=1000))
        if keys:
            raw.delete(*keys)
        raw.close()
    return rows


def bench_local(n: int, reps: int) -> list[Row]:
    rows: list[Row] = []
    null = NullCacheStore()
    model: dict[str, bytes] = {}
    s, b, ratio = paired_per_op(batch(lambda i: null.get("k"), n),
                                batch(lambda i: model.get("k"), n), reps)  # fmt: skip
    rows.append(Row("null get", fmt_time(s), "dict.get", fmt_time(b), ratio,
                    TARGET_LOCAL_US, target_unit=" us", measured=s * 1e6))  # fmt: skip
    with null.subscribe("c") as sub:

        def publish_and_take(_i: int) -> None:
            null.publish("c", VALUE)
            sub.get(0)

        t = median_per_op(batch(publish_and_take, n), reps)
        rows.append(Row("null publish + get (in-process)", fmt_time(t), "", "", None))
    null.close()

    # A store whose server is unreachable: every call must be answered locally at once.
    logging.getLogger("nexusfs.cachestore").setLevel(logging.ERROR)  # expected warning
    down = open_cache_store(f"redis://127.0.0.1:{free_port()}/0", socket_timeout=0.2)
    try:
        for name, fn in (
            ("get", lambda i: down.get("k")),
            ("set", lambda i: down.set(f"k{i % 64}", VALUE, ttl=60)),
            ("publish", lambda i: down.publish("c", VALUE)),
        ):
            t = median_per_op(batch(fn, n), reps)
            rows.append(Row(f"degraded redis {name}", fmt_time(t), "", "", None,
                            TARGET_LOCAL_US, target_unit=" us", measured=t * 1e6))  # fmt: skip
    finally:
        down.close()
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="small batches (CI smoke)")
    args = ap.parse_args()
    n, reps = (100, 5) if args.quick else (500, 21)
    started = time.monotonic()
    rows: list[Row] = []
    try:
        url = redis_url()
    except RedisUnavailable as exc:
        print(f"bench_cachestore: {exc}", file=sys.stderr)
        return 1
    if url is None:
        if servers_required():  # pragma: no cover - redis_url raised already
            return 1
        print("bench_cachestore: redis rows skipped (no Redis server: set "
              "NEXUS_TEST_REDIS_URL or install redis-server)")  # fmt: skip
    elif not _reachable(url):
        print(f"bench_cachestore: the Redis server at {url} does not answer")
        if servers_required():
            return 1
        print("bench_cachestore: redis rows skipped")
        url = None
    else:
        rows += bench_redis(url, n, reps)
    rows += bench_local(n * 4, reps)
    print(machine_line())
    where = "no server" if url is None else url
    print_table(f"cache store ({'quick' if args.quick else 'full'}, {where}, "
                f"{time.monotonic() - started:.1f} s)", rows)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
