"""The in-memory mirror of a :class:`~nexusfs_rebac.store.TupleStore`: the tuple index
and the current model at one revision, evaluated in memory.

Invariants:

* ``mirror.snapshot`` is the state of exactly one store revision: the index holds the
  store's tuples as of ``snapshot.revision`` and ``snapshot.engine`` evaluates the model
  current at that revision. The revision only grows.
* Changes are applied in revision order, under the write side of a readers-writer lock,
  together with the new snapshot; evaluation runs under the read side, so it never sees
  half of a write (a write is atomic in memory as in the database).
* ``snapshot.decisions`` caches check answers of that snapshot only, and
  ``snapshot.memberships`` the users' group memberships; a new revision brings new,
  empty caches, so a cached answer is never older than the snapshot a caller reads it
  from.

The mirror moves forward in three ways: the worker's own writes, applied at commit
(:meth:`Mirror.applied`); :meth:`Mirror.sync`, which reads the store's revision (one
primary-key lookup) and replays the change log up to it; and the follower thread
(:meth:`Mirror.follow`), which syncs whenever a "revision N" message arrives on the
cache store's channel (another worker or kernel wrote), after a gap in that channel,
and as a safety net every ``poll`` seconds (every ``shared_poll`` while the cache store
is shared and messages flow).

Failure semantics: ``sync`` raises the database's error and leaves the snapshot as it
was (still a consistent, older revision); the follower logs such errors and retries at
its next tick. Thread-safe: any number of threads may evaluate while one applies.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from sys import intern

from nexusfs.abc import CacheStoreABC, Subscription
from nexusfs.errors import StoreClosed
from nexusfs_rebac.engine import Engine, Memberships
from nexusfs_rebac.model import AuthorizationModel
from nexusfs_rebac.source import MemoryTupleSource
from nexusfs_rebac.store import ChangeRow, ModelRow, TupleStore

__all__ = ["Mirror", "RWLock", "Snapshot"]

#: Decision cache entries per snapshot before the cache is cleared.
DECISIONS_MAX = 1 << 18

EngineFactory = Callable[[AuthorizationModel, MemoryTupleSource], Engine]
Op = tuple[str, str, str, str]  # (operation, object, relation, user)


class RWLock:
    """A readers-writer lock that prefers writers: once a writer waits, new readers
    wait too, so a stream of checks cannot starve a write. Not reentrant: a thread
    holding the read side must not take it again (a waiting writer would deadlock it).
    """

    __slots__ = ("_cond", "_readers", "_waiting", "_writer")

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._readers = 0
        self._waiting = 0
        self._writer = False

    def acquire_read(self) -> None:
        with self._cond:
            while self._writer or self._waiting:
                self._cond.wait()
            self._readers += 1

    def release_read(self) -> None:
        with self._cond:
            self._readers -= 1
            if not self._readers:
                self._cond.notify_all()

    def acquire_write(self) -> None:
        with self._cond:
            self._waiting += 1
            try:
                while self._writer or self._readers:
                    self._cond.wait()
            finally:
                self._waiting -= 1
            self._writer = True

    def release_write(self) -> None:
        with self._cond:
            self._writer = False
            self._cond.notify_all()


@dataclass(slots=True)
class Snapshot:
    """The mirror at one revision: its engine and its decision cache."""

    revision: int
    engine: Engine
    decisions: dict[tuple[str, str, str], bool] = field(default_factory=dict)
    #: Users' group memberships at this revision (``Engine.check(shared=...)``).
    memberships: Memberships = field(default_factory=dict)


class Mirror:
    """An in-memory copy of ``store`` (see the module docstring). ``make_engine`` builds
    the engine of a model over the mirror's index. The constructor loads the store and
    replays its change log (database errors propagate; ``RuntimeError`` if the store
    has no model yet)."""

    def __init__(
        self,
        store: TupleStore,
        make_engine: EngineFactory,
        *,
        log: logging.Logger | None = None,
    ) -> None:
        self.store = store
        self.index = MemoryTupleSource()
        self.lock = RWLock()
        self._make_engine = make_engine
        self._log = log or logging.getLogger("nexusfs_rebac.mirror")
        self._sync_lock = threading.Lock()  # one writer of the mirror at a time
        self._advanced = threading.Condition(threading.Lock())
        self._models: dict[str, AuthorizationModel] = {}
        self._sub: Subscription | None = None
        self._thread: threading.Thread | None = None
        #: ``time.monotonic()`` of the last successful look at the store's revision.
        self.synced_at = 0.0
        self.snapshot: Snapshot = self._load()
        self.sync()

    # ------------------------------------------------------------------ state

    @property
    def revision(self) -> int:
        return self.snapshot.revision

    def model(self, row: ModelRow) -> AuthorizationModel:
        """The parsed model of a stored version (parsed once per model id)."""
        model = self._models.get(row.model_id)
        if model is None:
            model = AuthorizationModel.from_json(row.json)
            self._models[row.model_id] = model
        return model

    def _load(self) -> Snapshot:
        """Read every tuple and the current model (see :meth:`TupleStore.load`); the
        constructor then replays the change log past the load."""
        revision, rows = self.store.load()
        row = self.store.read_model()
        if row is None:
            raise RuntimeError("the store has no authorization model (seed one first)")
        index = self.index
        for o, r, u in rows:  # interned: shared by every tuple, ~10% faster checks
            index.add_trusted(intern(o), intern(r), intern(u))
        self.synced_at = time.monotonic()
        return Snapshot(revision, self._make_engine(self.model(row), index))

    def _publish(self, revision: int, ops: Iterable[Op], model: AuthorizationModel | None) -> None:
        """Apply ``ops`` and install the snapshot of ``revision`` (caller holds
        ``_sync_lock``)."""
        engine = self.snapshot.engine
        if model is not None and model.model_id != engine.model.model_id:
            engine = self._make_engine(model, self.index)
        index = self.index
        self.lock.acquire_write()
        try:
            for op, o, r, u in ops:
                if op == "write":
                    index.add_trusted(intern(o), intern(r), intern(u))
                else:
                    index.remove_trusted(o, r, u)
            self.snapshot = Snapshot(revision, engine)
        finally:
            self.lock.release_write()
        with self._advanced:
            self._advanced.notify_all()

    def _catch_up(self) -> int:
        """Replay the store up to its current revision (caller holds ``_sync_lock``)."""
        head = self.store.head()
        self.synced_at = time.monotonic()
        current = self.revision
        if head <= current:
            return current
        changes = self.store.changes(after_revision=current, upto_revision=head)
        row = self.store.model_since(current, head)
        model = self.model(row) if row is not None else None
        self._publish(head, _ops(changes), model)
        return head

    def sync(self) -> int:
        """Catch up with the store now; returns the revision reached. Raises the
        database's error (nothing changed then)."""
        with self._sync_lock:
            return self._catch_up()

    def applied(self, revision: int, ops: Iterable[Op], model: AuthorizationModel | None = None
                ) -> None:  # fmt: skip
        """This worker committed ``ops`` (and/or made ``model`` current) as
        ``revision``: apply it at once if it is the next revision, else replay the
        change log up to it (another writer committed in between). A database error in
        the replay propagates; the mirror stays at its older, consistent revision."""
        with self._sync_lock:
            current = self.revision
            if revision <= current:
                return
            if revision == current + 1:
                self._publish(revision, ops, model)
            else:
                self._catch_up()

    def wait_beyond(self, revision: int, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds until the mirror is past ``revision``; whether
        it is."""
        deadline = time.monotonic() + timeout
        with self._advanced:
            while self.revision <= revision:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._advanced.wait(remaining)
        return True

    # --------------------------------------------------------------- following

    def follow(self, cache: CacheStoreABC, channel: str, *, poll: float,
               shared_poll: float) -> None:  # fmt: skip
        """Start the follower thread: sync on every message on ``channel`` that names a
        revision past the mirror's, and every ``poll`` seconds (``shared_poll`` while
        ``cache.shared``). Subscribes before returning, so no later message is
        missed."""
        self._sub = cache.subscribe(channel)
        self._thread = threading.Thread(
            target=self._follow, args=(self._sub, cache, poll, shared_poll),
            name="rebac-follow", daemon=True,
        )  # fmt: skip
        self._thread.start()

    def _follow(self, sub: Subscription, cache: CacheStoreABC, poll: float,
                shared_poll: float) -> None:  # fmt: skip
        # Wakes at least every ``poll`` to notice the cache store's state (a blocked
        # get() is not woken when the backend is lost); syncs on a message naming a newer
        # revision, on a gap, every ``poll`` while not shared, every ``shared_poll`` while
        # shared.
        gaps = sub.gaps
        last = time.monotonic()
        while True:
            message = sub.get(poll)
            if sub.closed:
                return
            due = False
            if message is not None:
                newest = _revision_of(message)
                while (more := sub.get(0)) is not None:  # coalesce a burst
                    newest = max(newest, _revision_of(more))
                due = newest > self.revision
            if sub.gaps != gaps:
                gaps = sub.gaps
                due = True
            if not cache.shared or time.monotonic() - last >= shared_poll:
                due = True
            if not due:
                continue
            try:
                self.sync()
                last = time.monotonic()
            except StoreClosed:
                return
            except Exception as exc:  # the database is down: keep the older snapshot
                self._log.warning("rebac: catching up with the store failed: %s", exc)

    def stop(self) -> None:
        """Stop the follower (idempotent)."""
        if self._sub is not None:
            self._sub.close()
            self._sub = None
        if self._thread is not None:
            self._thread.join(5.0)
            self._thread = None


def _ops(changes: Iterable[ChangeRow]) -> Iterable[Op]:
    return ((c.operation, c.object, c.relation, c.user) for c in changes)


def _revision_of(message: bytes) -> int:
    """The revision a channel message (``b"<revision> <store tag>"``) names; a huge
    number if it names none, so the follower syncs anyway."""
    with contextlib.suppress(ValueError):
        return int(bytes(message).split(b" ", 1)[0])
    return 1 << 62
