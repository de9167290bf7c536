"""``RedisCacheStore``: the cache store on a Redis server (redis-py), degrading gracefully.

Data calls (``get``/``set``/``delete``/``publish``) go through one redis-py connection
pool with short socket timeouts (0.5 s by default; ``?socket_timeout=`` in the URL
overrides) and TTLs set with ``SET ... PX``. One background thread per store, the
*relay*, owns a dedicated pub/sub connection: it subscribes to every channel that has a
local subscriber, hands other processes' messages to the in-process
:class:`~nexusfs.drivers.cachestore.local.LocalHub`, pings the server when idle, and is
the store's health probe.

Degradation (see :mod:`~nexusfs.drivers.cachestore.resilient`): the first call or relay
read that fails with a connection error or timeout marks the backend down (logged
once). While down, reads miss, writes are skipped and ``publish`` delivers in-process,
all without touching the network; subscriptions stay open. The relay reconnects with
exponential backoff and jitter; on success it re-subscribes every channel, deletes the
keys whose writes were skipped during the outage (so that a skipped ``set``/``delete``
cannot leave a stale value behind; at most ``max_forgotten_keys`` are tracked, beyond
that a warning says values may stay stale until they expire), and marks the backend up
(logged once). A server-side error (``OOM``, ``WRONGTYPE``, ``NOPERM``...) is not an
outage: the call misses or is skipped and the first occurrence of each error is logged.

Pub/sub wire format: a message published here travels as ``b"\\x00nxc1"`` + the 8-byte
id of the publishing store + the payload. Subscribers drop messages carrying their own
store's id (those were delivered in-process already, so a message is never delivered
twice, even when a publish whose outcome was unknown reaches Redis later), strip the
envelope from the others, and deliver messages without it (from plain Redis clients)
unchanged.

Invariants: no call raises because the server is unreachable and none blocks longer
than about one connect plus one socket timeout; only the relay thread touches the
pub/sub connection (other threads queue SUBSCRIBE/UNSUBSCRIBE and wake it through a
socket pair); ``namespace`` prefixes every key and channel on the server.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import select
import socket
import ssl
import threading
import time
from collections import deque
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from nexusfs.abc import CacheState, CacheStoreABC, Subscription
from nexusfs.drivers.cachestore.local import (
    DEFAULT_QUEUE_SIZE,
    LocalHub,
    LocalSubscription,
    check_name,
    check_ttl_ms,
    check_value,
    redact_url,
)
from nexusfs.drivers.cachestore.resilient import BackendHealth, Backoff
from nexusfs.errors import ConfigError, StoreClosed

__all__ = ["ENVELOPE", "REDIS_SCHEMES", "RedisCacheStore"]

log = logging.getLogger("nexusfs.cachestore")

#: URL schemes this driver opens.
REDIS_SCHEMES = ("redis", "rediss", "unix")
#: Marker that starts every message published by a NexusFS store (then 8 origin bytes).
ENVELOPE = b"\x00nxc1"
_HEADER = len(ENVELOPE) + 8
#: Errors that mean the server is unreachable (as opposed to a server-side refusal).
_LOST = (redis.ConnectionError, redis.TimeoutError, OSError)
_FORGET_CHUNK = 500


def _identity(reply: Any) -> Any:
    return reply


def _positive(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise ValueError(f"{name} must be a positive number of seconds, not {value!r}")
    return float(value)


def _make_pool(url: str, socket_timeout: float, connect_timeout: float) -> redis.ConnectionPool:
    """A redis-py pool for ``url``; :class:`ConfigError` for anything malformed."""
    shown = redact_url(url)
    if not isinstance(url, str):
        raise ConfigError(f"cache store URL must be a str, not {type(url).__name__}")
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme not in REDIS_SCHEMES:
        raise ConfigError(
            f"cache store URL {shown!r} is not a Redis URL (expected redis://host:port/db, "
            "rediss://... or unix:///path/redis.sock)"
        )
    try:
        parts = urlsplit(url)
        _ = parts.port  # ValueError for a non-numeric or out-of-range port
        if scheme == "unix":
            if not parts.path:
                raise ValueError("a unix:// URL needs a socket path (unix:///path/redis.sock)")
        elif parts.path not in ("", "/") and not re.fullmatch(r"/\d+/?", parts.path):
            raise ValueError(f"the database {parts.path[1:]!r} is not a number")
        pool = redis.ConnectionPool.from_url(
            url,
            socket_timeout=socket_timeout,
            socket_connect_timeout=connect_timeout,
            # One immediate retry on a broken connection (a pooled socket left over from
            # before a server restart), none on a timeout: a hung server costs one
            # socket timeout, not several.
            retry=Retry(NoBackoff(), 1, supported_errors=(redis.ConnectionError,)),
        )
        # Building (not connecting) a connection rejects unknown ?options now.
        pool.connection_class(**pool.connection_kwargs)
        if pool.connection_kwargs.get("decode_responses"):
            raise ValueError("decode_responses is not supported: values and messages are bytes")
    except (ValueError, TypeError, redis.RedisError) as exc:
        raise ConfigError(f"invalid cache store URL {shown!r}: {exc}") from exc
    return pool


class RedisCacheStore(CacheStoreABC):
    """A :class:`~nexusfs.abc.CacheStoreABC` on Redis (see the module docstring).

    ``url``: ``redis://[user:password@]host:port/db``, ``rediss://...`` (TLS) or
    ``unix:///path/redis.sock?db=0``; redis-py connection options may be given as query
    arguments (they win over the keyword arguments here). ``namespace`` prefixes keys
    and channels on the server. ``socket_timeout`` / ``connect_timeout`` bound every
    network wait; ``retry_min`` / ``retry_max`` the reconnect backoff; the relay pings
    an idle server every ``ping_interval`` seconds.

    The constructor tries to connect once (bounded by the timeouts) and never fails for
    an unreachable server: it starts ``DEGRADED`` and keeps retrying. It raises
    :class:`~nexusfs.errors.ConfigError` for a malformed URL or unknown URL option and
    ``ValueError`` for a bad keyword argument.
    """

    def __init__(
        self,
        url: str,
        *,
        namespace: str = "",
        socket_timeout: float = 0.5,
        connect_timeout: float | None = None,
        retry_min: float = 0.1,
        retry_max: float = 5.0,
        ping_interval: float = 1.0,
        queue_size: int = DEFAULT_QUEUE_SIZE,
        max_forgotten_keys: int = 10_000,
    ) -> None:
        socket_timeout = _positive("socket_timeout", socket_timeout)
        connect_timeout = _positive("connect_timeout", connect_timeout or socket_timeout)
        self._backoff = Backoff(_positive("retry_min", retry_min),
                                _positive("retry_max", max(retry_max, retry_min)))
        self._ping_interval = _positive("ping_interval", ping_interval)
        if not isinstance(namespace, str):
            raise ValueError(f"namespace must be a str, not {type(namespace).__name__}")
        if isinstance(max_forgotten_keys, bool) or not isinstance(max_forgotten_keys, int) \
                or max_forgotten_keys < 0:
            raise ValueError(f"max_forgotten_keys must be an int >= 0, not {max_forgotten_keys!r}")
        self.url = url
        self.namespace = namespace
        self._shown = redact_url(url)
        self._pool = _make_pool(url, socket_timeout, connect_timeout)
        kwargs = self._pool.connection_kwargs
        self._timeout = float(kwargs.get("socket_timeout") or socket_timeout)
        self._ping_timeout = max(2 * self._timeout, 0.5)
        self._client = redis.Redis(connection_pool=self._pool)
        self._ns = namespace.encode()
        self._origin = os.urandom(8)
        self._hub = LocalHub(queue_size)
        self._closed = False
        self._stop = threading.Event()
        # Guards hub membership together with the relay's command queue, so that the
        # relay's re-subscription snapshot and queued commands never disagree.
        self._lock = threading.Lock()
        self._commands: deque[tuple[str, bytes, threading.Event | None]] = deque()
        self._pending: dict[bytes, deque[threading.Event | None]] = {}
        self._confirmed: set[bytes] = set()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        # Keys whose writes were skipped while down: deleted on the server on recovery.
        self._forget_lock = threading.Lock()
        self._forget: set[bytes] = set()
        self._forget_max = max_forgotten_keys
        self._forget_overflow = 0
        self._server_errors: set[str] = set()
        self._health = BackendHealth(self._shown, log)
        self._health.on_change(self._on_health_change)
        conn = self._connect_relay()
        self._thread = threading.Thread(
            target=self._relay_main, args=(conn,), name="nexusfs-cache-relay", daemon=True
        )
        self._thread.start()

    # ------------------------------------------------------------------ state

    @property
    def state(self) -> CacheState:
        if self._closed:
            return CacheState.CLOSED
        return CacheState.CONNECTED if self._health.up else CacheState.DEGRADED

    @property
    def health(self) -> BackendHealth:
        """The backend's health record (outages, last error, time down)."""
        return self._health

    def _check_open(self) -> None:
        if self._closed:
            raise StoreClosed(f"the cache store {self._shown} is closed")

    def _on_health_change(self, up: bool) -> None:
        # Lost or regained: remote messages may have been missed in between.
        self._hub.mark_gaps()
        if not up:
            self._wake()

    def _lost(self, exc: BaseException) -> None:
        self._health.mark_down(exc)

    def _server_error(self, op: str, exc: redis.RedisError) -> None:
        text = f"{type(exc).__name__}: {exc}"
        if text not in self._server_errors and len(self._server_errors) < 100:
            self._server_errors.add(text)
            log.warning("cache store %s refused %s (%s); treated as a miss / skipped write",
                        self._shown, op, text)  # fmt: skip

    # -------------------------------------------------------------- key/value

    def _key(self, key: str) -> bytes:
        return self._ns + check_name("key", key)

    def get(self, key: str) -> bytes | None:
        rkey = self._key(key)
        self._check_open()
        if not self._health.up:
            return None
        try:
            value = self._client.get(rkey)
        except _LOST as exc:
            self._lost(exc)
            return None
        except redis.RedisError as exc:
            self._server_error("GET", exc)
            return None
        return value if isinstance(value, bytes) or value is None else str(value).encode()

    def set(self, key: str, value: bytes | bytearray | memoryview,
            ttl: float | None = None) -> None:
        rkey = self._key(key)
        data = check_value("value", value)
        px = check_ttl_ms(ttl)
        self._check_open()
        if self._skip_write(rkey):
            return
        try:
            self._client.set(rkey, data, px=px)
        except _LOST as exc:
            self._lost(exc)
            self._skip_write(rkey, failed=True)
        except redis.RedisError as exc:
            self._server_error("SET", exc)

    def delete(self, key: str) -> None:
        rkey = self._key(key)
        self._check_open()
        if self._skip_write(rkey):
            return
        try:
            self._client.delete(rkey)
        except _LOST as exc:
            self._lost(exc)
            self._skip_write(rkey, failed=True)
        except redis.RedisError as exc:
            self._server_error("DEL", exc)

    def _skip_write(self, rkey: bytes, *, failed: bool = False) -> bool:
        """While down (or after a write failed), remember ``rkey`` so that recovery
        deletes it on the server; ``True`` if the write must be skipped."""
        if self._health.up and not failed:
            return False
        with self._forget_lock:
            if self._health.up and not failed:
                return False  # recovered meanwhile: write through
            if len(self._forget) < self._forget_max:
                self._forget.add(rkey)
            else:
                self._forget_overflow += 1
            still_down = not self._health.up
        if failed and not still_down:
            # Recovery finished between the failure and now: forget it directly.
            with contextlib.suppress(redis.RedisError, OSError):
                self._client.delete(rkey)
            with self._forget_lock:
                self._forget.discard(rkey)
        return True

    # ---------------------------------------------------------------- pub/sub

    def _channel(self, channel: str) -> bytes:
        return self._ns + check_name("channel", channel)

    def publish(self, channel: str, message: bytes | bytearray | memoryview) -> int:
        rchan = self._channel(channel)
        data = check_value("message", message)
        self._check_open()
        delivered = self._hub.publish(channel, data)
        if not self._health.up:
            return delivered
        # Our own relay connection counts in PUBLISH's answer but drops its own messages;
        # sample before publishing, so an UNSUBSCRIBE racing with us cannot be missed.
        own_relay = rchan in self._confirmed
        try:
            remote = int(self._client.publish(rchan, ENVELOPE + self._origin + data))
        except _LOST as exc:
            self._lost(exc)
            return delivered
        except redis.RedisError as exc:
            self._server_error("PUBLISH", exc)
            return delivered
        return delivered + max(0, remote - own_relay)

    def subscribe(self, channel: str) -> Subscription:
        rchan = self._channel(channel)
        self._check_open()
        confirmed = threading.Event()
        with self._lock:
            self._check_open()
            sub, _first = self._hub.subscribe(channel, self._unsubscribe)
            # Every new subscription asks for a (harmless, idempotent) SUBSCRIBE and
            # waits for its own confirmation, so remote messages published after this
            # call returns are delivered even if an UNSUBSCRIBE is still in flight.
            self._commands.append(("SUBSCRIBE", rchan, confirmed))
        self._wake()
        if self._health.up:
            confirmed.wait(self._ping_timeout)
        return sub

    def _unsubscribe(self, sub: LocalSubscription) -> None:
        with self._lock:
            if self._hub.unsubscribe(sub):
                self._commands.append(("UNSUBSCRIBE", self._ns + sub.channel.encode(), None))
        self._wake()

    # ------------------------------------------------------------------ relay

    def _wake(self) -> None:
        with contextlib.suppress(OSError):  # full (a wake-up is pending) or closed
            self._wake_w.send(b"x")

    def _drain_wake(self) -> None:
        with contextlib.suppress(OSError):
            while self._wake_r.recv(4096):
                pass

    def _new_connection(self) -> Any:
        conn = self._pool.connection_class(**self._pool.connection_kwargs)
        # With RESP3, pub/sub messages are push frames that redis-py hands to a handler
        # which logs each one; ours returns them untouched (reads use push_request=True).
        setter = getattr(getattr(conn, "_parser", None), "set_pubsub_push_handler", None)
        if setter is not None:
            setter(_identity)
        return conn

    def _connect_relay(self) -> Any | None:
        """One recovery attempt: connect the relay, re-subscribe every channel, forget
        the keys skipped while down, check the data path, mark up. Returns the relay
        connection, or ``None`` (and the backend stays / is marked down)."""
        conn = self._new_connection()
        try:
            conn.connect()
            with self._lock:
                channels = [self._ns + c.encode() for c in self._hub.channels()]
                dropped = list(self._commands)
                self._commands.clear()
            for _op, _chan, waiter in dropped:  # covered by the snapshot
                if waiter is not None:
                    waiter.set()
            self._pending = {}
            self._confirmed = set()
            if channels:
                conn.send_command("SUBSCRIBE", *channels, check_health=False)
                for chan in channels:
                    self._pending.setdefault(chan, deque()).append(None)
            conn.send_command("PING", check_health=False)
            deadline = time.monotonic() + self._ping_timeout
            while not self._handle(conn.read_response(push_request=True)):
                if time.monotonic() > deadline:
                    raise redis.TimeoutError("no reply to SUBSCRIBE/PING")
            self._client.ping()
            self._forget_skipped_and_mark_up()
            return conn
        except Exception as exc:
            if not isinstance(exc, redis.RedisError | OSError):  # a bug: say so
                log.exception("cache store %s: reconnecting failed", self._shown)
            with contextlib.suppress(Exception):
                conn.disconnect()
            self._release_waiters()
            if not self._closed:
                self._health.mark_down(exc)
            return None

    def _forget_skipped_and_mark_up(self) -> None:
        """Delete the keys whose writes were skipped while down, then mark the backend
        up under the same lock that skipping takes, so that no write can be skipped
        unnoticed in between. Raises (and stays down) if the server fails meanwhile."""
        total = 0
        while True:
            with self._forget_lock:
                keys = list(self._forget)
                overflow, self._forget_overflow = self._forget_overflow, 0
                if not keys and not overflow:
                    if self._closed:
                        raise redis.ConnectionError("the store is closed")
                    detail = f"forgot {total} keys written while it was away" if total else ""
                    self._health.mark_up(detail)
                    return
                self._forget.clear()
            if overflow:
                log.warning(
                    "cache store %s: %d more writes were skipped while it was away than "
                    "could be tracked; those values may stay stale until they expire",
                    self._shown, overflow,
                )  # fmt: skip
            for i in range(0, len(keys), _FORGET_CHUNK):
                self._client.delete(*keys[i : i + _FORGET_CHUNK])
            total += len(keys)

    def _release_waiters(self) -> None:
        for waiters in list(self._pending.values()):
            for waiter in waiters:
                if waiter is not None:
                    waiter.set()
        self._pending = {}
        self._confirmed = set()

    def _relay_main(self, conn: Any | None) -> None:
        try:
            while not self._stop.is_set():
                if conn is None:
                    if self._stop.wait(self._backoff.next()):
                        break
                    conn = self._connect_relay()
                    continue
                self._backoff.reset()
                try:
                    self._relay(conn)
                except (redis.RedisError, OSError) as exc:
                    if not self._stop.is_set():
                        self._lost(exc)
                except Exception as exc:  # a bug: log it, degrade, and keep retrying
                    log.exception("cache store %s: relay failed", self._shown)
                    self._lost(exc)
                with contextlib.suppress(Exception):
                    conn.disconnect()
                conn = None
                self._release_waiters()
        finally:
            if conn is not None:
                with contextlib.suppress(Exception):
                    conn.disconnect()
            self._release_waiters()

    def _send_commands(self, conn: Any) -> None:
        while True:
            with self._lock:
                if not self._commands:
                    return
                op, chan, waiter = self._commands.popleft()
            conn.send_command(op, chan, check_health=False)
            if op == "SUBSCRIBE":
                self._pending.setdefault(chan, deque()).append(waiter)

    def _relay(self, conn: Any) -> None:
        """Serve the pub/sub connection until the backend is marked down or the store
        closes; raises on a connection error or an unanswered PING."""
        last_io = time.monotonic()
        ping_sent: float | None = None
        while not self._stop.is_set() and self._health.up:
            self._send_commands(conn)
            while conn.can_read(0):
                if self._handle(conn.read_response(push_request=True)):
                    ping_sent = None
                last_io = time.monotonic()
            now = time.monotonic()
            if ping_sent is not None:
                if now - ping_sent > self._ping_timeout:
                    raise redis.TimeoutError(f"no PONG within {self._ping_timeout:g} s")
                wait = ping_sent + self._ping_timeout - now
            elif now - last_io >= self._ping_interval:
                conn.send_command("PING", check_health=False)
                ping_sent = now
                continue
            else:
                wait = last_io + self._ping_interval - now
            sock = getattr(conn, "_sock", None)
            if isinstance(sock, ssl.SSLSocket) and sock.pending():
                continue  # decrypted bytes are buffered: select() would not see them
            if sock is None:  # redis-py internals changed: poll instead of select
                conn.can_read(timeout=min(wait, 0.05))
                self._drain_wake()
                continue
            ready, _, _ = select.select([sock, self._wake_r], [], [], max(wait, 0.0))
            if self._wake_r in ready:
                self._drain_wake()

    def _handle(self, reply: Any) -> bool:
        """Process one reply on the relay connection; ``True`` for a PONG."""
        if isinstance(reply, bytes):
            return reply.upper() == b"PONG"
        if isinstance(reply, str):
            return reply.upper() == "PONG"
        if not isinstance(reply, list | tuple) or not reply:
            return False
        kind = reply[0]
        kind = kind.decode() if isinstance(kind, bytes) else str(kind)
        if kind == "message" and len(reply) >= 3:
            self._deliver(bytes(reply[1]), reply[2])
        elif kind == "subscribe":
            chan = bytes(reply[1])
            self._confirmed.add(chan)
            waiters = self._pending.get(chan)
            if waiters:
                waiter = waiters.popleft()
                if waiter is not None:
                    waiter.set()
        elif kind == "unsubscribe":
            self._confirmed.discard(bytes(reply[1]))
        elif kind == "pong":
            return True
        return False

    def _deliver(self, rchan: bytes, payload: Any) -> None:
        if not isinstance(payload, bytes) or not rchan.startswith(self._ns):
            return
        if payload.startswith(ENVELOPE) and len(payload) >= _HEADER:
            if payload[len(ENVELOPE) : _HEADER] == self._origin:
                return  # ours: already delivered in-process
            payload = payload[_HEADER:]
        try:
            channel = rchan[len(self._ns) :].decode()
        except UnicodeDecodeError:
            return
        self._hub.publish(channel, payload)

    # ------------------------------------------------------------------ close

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._health.close()
        self._stop.set()
        self._wake()
        self._hub.close_all()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(self._ping_timeout + 2 * self._timeout + 1.0)
        with contextlib.suppress(Exception):
            self._pool.disconnect()
        with contextlib.suppress(Exception):
            self._client.close()
        if not self._thread.is_alive():
            self._wake_r.close()
            self._wake_w.close()

    def subscriptions(self) -> Iterable[str]:
        """Channels with at least one open subscription in this store."""
        return self._hub.channels()

    def __repr__(self) -> str:
        ns = f", namespace={self.namespace!r}" if self.namespace else ""
        return f"RedisCacheStore({self._shown!r}{ns}, {self.state.value})"
