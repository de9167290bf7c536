"""The ``hooks`` service plugin: audit log of every syscall plus user hook rules.

The worker registers :data:`plugin` with a pluggy ``PluginManager("nexusfs")``:

* ``nexus_service_start``: creates or upgrades the tables on ``ctx.record_store``
  (required) with the package's Alembic revisions; a hot restart onto a newer package
  upgrades them once, even while the old worker still runs.
* ``nexus_pre_syscall``: the first matching ``deny`` rule vetoes the syscall.
* ``nexus_post_syscall``: appends the event to the audit log (deduplicated by the
  kernel's ``event.seq``) and, for a successful syscall, emits one event per matching
  ``emit`` rule through ``ctx.emit``.
* ``nexus_service_methods``: ``tail``, ``query``, ``last_seq``, ``wait_events``,
  ``add_rule``, ``list_rules``, ``remove_rule``
  (``nx.call("hooks.query", path_prefix="/a")``). Events enter the log only through
  post-hooks; there is no ``append`` method.

The cache store (``ctx.cache_store``) only cuts latency, it is never the truth: after
each commit to the log the service publishes the last ``seq`` on
:data:`EVENTS_CHANNEL`, which wakes ``wait_events`` long-polls (``nexus events tail
-f``) in this worker and, with a shared store (Redis), in every other; a rule change is
published on :data:`RULES_CHANNEL` so every worker reloads its rules at once instead of
within ``rules_refresh_ms``. With no cache store, or with Redis down, delivery stays
in-process and the RecordStore is polled: slower, nothing lost, nothing fails.

Failure semantics: without a record store the start fails (``ServiceUnavailable``) and
the supervisor reports the service failed; so does a failed migration
(``MigrationError``: the schema stays at its previous revision). A database error in
the pre-hook propagates, so the kernel fails the syscall with ``ServiceUnavailable``
(deny rules fail closed). In the post-hook a transient database error
(``OperationalError``, e.g. a lock held past the busy timeout or a dropped PostgreSQL
connection) is retried a few times with backoff (safe: appends are idempotent by
``kernel_seq``); after that it propagates and the host logs it. Emits are
at-least-once: they happen before the event is logged, and an event whose ``seq`` is
already logged is neither logged nor emitted again.

Config (``ctx.config``): ``rules_refresh_ms`` (default 200): how stale another worker's
rule change may be before this worker sees it.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from sqlalchemy.exc import OperationalError

from nexusfs.abc import CacheStoreABC, Subscription
from nexusfs.errors import ServiceUnavailable, StoreClosed
from nexusfs.hookspecs import (
    ServiceContext,
    ServiceInfo,
    SyscallEvent,
    SyscallOutcome,
    Veto,
    hookimpl,
)
from nexusfs_hooks import __version__
from nexusfs_hooks.eventlog import EventLog
from nexusfs_hooks.models import upgrade_schema
from nexusfs_hooks.rules import DEFAULT_EMIT_EVENT, HookEngine

__all__ = ["READ_ONLY_METHODS", "SERVICE_NAME", "HooksPlugin", "plugin"]

SERVICE_NAME = "hooks"
#: Methods without side effects: safe for the kernel to retry on a new worker.
READ_ONLY_METHODS = ("tail", "query", "last_seq", "wait_events", "list_rules")
DEFAULT_REFRESH_MS = 200
#: Cache store channel: the last ``seq`` committed to the audit log (a wake-up signal).
EVENTS_CHANNEL = "nexusfs.hooks.events"
#: Cache store channel: hook rules changed (reload them).
RULES_CHANNEL = "nexusfs.hooks.rules"
#: Longest wait of one ``wait_events`` call, and the poll period without a shared cache.
MAX_WAIT = 30.0
POLL_INTERVAL = 0.25
#: Back-off (seconds) between retries of a transient database error in the post-hook.
RETRY_DELAYS = (0.05, 0.2, 1.0)

T = TypeVar("T")


class HooksPlugin:
    """The hooks service. One instance per worker; all state is in the RecordStore."""

    def __init__(self) -> None:
        self.events: EventLog | None = None
        self.rules: HookEngine | None = None
        self.cache: CacheStoreABC | None = None
        self._rules_sub: Subscription | None = None

    def _require(self) -> tuple[EventLog, HookEngine]:
        if self.events is None or self.rules is None:
            raise ServiceUnavailable("the hooks service has not been started")
        return self.events, self.rules

    @hookimpl
    def nexus_service_info(self) -> ServiceInfo:
        """Who we are: every syscall is hooked before (deny rules) and after (audit)."""
        return ServiceInfo(
            name=SERVICE_NAME,
            version=__version__,
            description="Audit log of every syscall and user hook rules (deny / emit).",
            pre_hooks=("*",),
            post_hooks=("*",),
            needs=("record_store", "cache_store"),
            idempotent=READ_ONLY_METHODS,
        )

    @hookimpl
    def nexus_service_start(self, ctx: ServiceContext) -> None:
        """Upgrade the schema and build the in-memory rule cache. ``ServiceUnavailable``
        if the host gave no record store; ``MigrationError`` and database errors
        propagate (start fails)."""
        store = ctx.record_store
        if store is None:
            raise ServiceUnavailable("the hooks service needs a record store")
        applied = upgrade_schema(store)
        if applied:
            ctx.log.info("hooks schema upgraded: %s", ", ".join(applied))
        refresh_ms = float(ctx.config.get("rules_refresh_ms", DEFAULT_REFRESH_MS))
        self.events = EventLog(store.session_factory)
        set_hooks = ctx.set_hooks

        def on_deny_ops(ops: frozenset[str]) -> None:
            # Pre-hook only the syscalls some deny rule applies to: without deny rules,
            # syscalls do not wait for this service at all (post-hooks are queued).
            if set_hooks is not None:
                set_hooks(pre=["*"] if "*" in ops else sorted(ops))

        self.rules = HookEngine(
            store.session_factory, refresh_interval=refresh_ms / 1000.0, on_deny_ops=on_deny_ops
        )
        self.rules.invalidate()
        self.rules.refresh()
        self.cache = ctx.cache_store
        if self.cache is not None:
            self._rules_sub = self.cache.subscribe(RULES_CHANNEL)
            threading.Thread(
                target=self._watch_rules, args=(self._rules_sub, self.rules),
                name="hooks-rules", daemon=True,
            ).start()  # fmt: skip

    @hookimpl
    def nexus_service_methods(self, ctx: ServiceContext) -> dict[str, Callable[..., Any]]:
        """The RPC methods (bound to the started log and rule engine)."""
        events, rules = self._require()
        def add_rule(
            op: str, glob: str, action: str, message: str | None = None
        ) -> dict[str, Any]:
            rule = rules.add_rule(op, glob, action, message)
            self._publish(RULES_CHANNEL, b"add")
            return rule

        def remove_rule(rule_id: int) -> bool:
            removed = rules.remove_rule(rule_id)
            self._publish(RULES_CHANNEL, b"rm")
            return removed

        return {
            "tail": events.tail,
            "query": events.query,
            "last_seq": events.last_seq,
            "wait_events": self.wait_events,
            "add_rule": add_rule,
            "list_rules": rules.list_rules,
            "remove_rule": remove_rule,
        }

    def wait_events(
        self, after_seq: int, timeout: float = 10.0, limit: int = 1000
    ) -> list[dict[str, Any]]:
        """The events after ``after_seq`` (oldest first, at most ``limit``), waiting up
        to ``timeout`` seconds (capped at :data:`MAX_WAIT`) for the first one; ``[]``
        when none arrived in time. Woken by :data:`EVENTS_CHANNEL` signals; polls the
        log every :data:`POLL_INTERVAL` while the cache store is not shared, and after
        every signal, so a lost signal only delays. ``ValueError`` for bad arguments."""
        events, _rules = self._require()
        if isinstance(after_seq, bool) or not isinstance(after_seq, int):
            raise ValueError(f"after_seq must be an integer, not {after_seq!r}")
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout < 0:
            raise ValueError(f"timeout must be a non-negative number, not {timeout!r}")
        deadline = time.monotonic() + min(float(timeout), MAX_WAIT)
        cache = self.cache
        if cache is None:
            rows = events.query(after_seq=after_seq, limit=limit)
            while not rows and time.monotonic() < deadline:
                time.sleep(min(POLL_INTERVAL, max(0.0, deadline - time.monotonic())))
                rows = events.query(after_seq=after_seq, limit=limit)
            return rows
        with cache.subscribe(EVENTS_CHANNEL) as sub:  # before the first read: no gap
            while True:
                rows = events.query(after_seq=after_seq, limit=limit)
                remaining = deadline - time.monotonic()
                if rows or remaining <= 0:
                    return rows
                sub.get(remaining if cache.shared else min(remaining, POLL_INTERVAL))
                while sub.get(0) is not None:  # coalesce a burst into one read
                    pass

    def _publish(self, channel: str, message: bytes) -> None:
        # Never fails the caller: the cache store degrades by itself (CacheStoreABC).
        if self.cache is not None:
            with contextlib.suppress(StoreClosed):
                self.cache.publish(channel, message)

    @staticmethod
    def _watch_rules(sub: Subscription, rules: HookEngine) -> None:
        for _message in sub:  # ends when the subscription is closed
            rules.invalidate()

    @hookimpl
    def nexus_pre_syscall(self, ctx: ServiceContext, event: SyscallEvent) -> Veto | None:
        """Veto with the first matching deny rule's message; ``None`` otherwise."""
        _events, rules = self._require()
        rule = rules.check_deny(event.op, event.path, event.dst)
        if rule is None:
            return None
        return Veto(rule.message or f"denied by hook rule {rule.id} ({rule.op} {rule.glob})")

    @hookimpl
    def nexus_post_syscall(
        self, ctx: ServiceContext, event: SyscallEvent, outcome: SyscallOutcome
    ) -> None:
        """Log the event (once per kernel ``seq``) and run matching emit rules."""
        events, rules = self._require()
        if event.seq > 0 and _retry(lambda: events.contains_kernel_seq(event.seq)):
            return  # a redelivery of an event already logged (and emitted)
        if outcome.ok and ctx.emit is not None:
            matched = _retry(lambda: rules.matching_emits(event.op, event.path, event.dst))
            for rule in matched:
                ctx.emit(rule.message or DEFAULT_EMIT_EVENT, _emit_payload(rule.id, event))
        record = _record(event, outcome)
        seq = _retry(lambda: events.append(record))
        self._publish(EVENTS_CHANNEL, str(seq).encode())

    @hookimpl
    def nexus_post_syscall_batch(
        self, ctx: ServiceContext, batch: list[tuple[SyscallEvent, SyscallOutcome]]
    ) -> bool:
        """Log a delivery batch in one transaction (one fsync for the batch), then run
        the emit rules of the events that were new (a redelivered batch emits nothing
        twice; a crash between the commit and the emits loses those emits: at most
        once)."""
        events, rules = self._require()
        # The kernel's events are well-formed: stored without re-validation. (A retry
        # rebuilds the rows: record_rows sets their seq.)
        results = _retry(lambda: events.record_rows([_record(e, o) for e, o in batch]))
        if any(new for _seq, new in results):
            self._publish(EVENTS_CHANNEL, str(max(seq for seq, _new in results)).encode())
        if ctx.emit is not None:
            rules.refresh()  # once for the batch
            if not rules.has_emit_rules:
                return True
            for (event, outcome), (_seq, new) in zip(batch, results, strict=True):
                if new and outcome.ok:
                    for rule in rules.matching_emits(event.op, event.path, event.dst,
                                                     refresh=False):
                        ctx.emit(rule.message or DEFAULT_EMIT_EVENT,
                                 _emit_payload(rule.id, event))  # fmt: skip
        return True

    @hookimpl
    def nexus_service_stop(self, ctx: ServiceContext) -> None:
        """Stop watching rule changes and drop references; the record and cache stores
        belong to the host, which closes them."""
        if self._rules_sub is not None:
            self._rules_sub.close()
            self._rules_sub = None
        self.events = None
        self.rules = None
        self.cache = None


def _retry(fn: Callable[[], T]) -> T:
    """Run ``fn``, retrying transient database errors with backoff; the last error
    propagates."""
    for delay in RETRY_DELAYS:
        try:
            return fn()
        except OperationalError:
            time.sleep(delay)
    return fn()


def _record(event: SyscallEvent, outcome: SyscallOutcome) -> dict[str, Any]:
    """The event log row (``EventLog.record_rows`` form) of one kernel event."""
    return {
        "kernel_seq": event.seq if event.seq and event.seq > 0 else None,
        "time": float(event.time or 0.0),
        "subject": event.subject,
        "op": event.op,
        "path": event.path,
        "dst": event.dst,
        "ok": outcome.ok,
        "error_code": outcome.error_code,
        "message": outcome.message,
        "revision": outcome.revision,
    }


def _emit_payload(rule_id: int, event: SyscallEvent) -> dict[str, Any]:
    return {
        "rule_id": rule_id,
        "op": event.op,
        "path": event.path,
        "dst": event.dst,
        "subject": event.subject,
        "time": event.time,
        "kernel_seq": event.seq,
    }


#: The object named by the ``nexusfs.services`` entry point ``hooks``.
plugin = HooksPlugin()
