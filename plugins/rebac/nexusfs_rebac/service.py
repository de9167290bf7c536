"""The rebac service's methods: storage (:class:`~nexusfs_rebac.store.TupleStore`),
in-memory evaluation (:class:`~nexusfs_rebac.mirror.Mirror`) and consistency tokens,
behind JSON/msgpack-able arguments and results.

Every method here is reachable as ``nx.call("rebac.<method>", ...)``:

* writes: ``write_model(dsl) -> model_id``; ``write(writes, deletes, ignore_duplicates,
  ignore_missing) -> token`` (atomic, one revision);
* evaluation (in memory): ``check``, ``batch_check``, ``check_paths`` (the kernel gate's
  question: subject, permission, path), ``expand``, ``list_objects``, ``list_users``;
* storage reads: ``read_model``, ``read`` (tuples by prefix, paged), ``read_changes``
  (the change log, paged);
* ``revision()`` / ``wait_revision(after, timeout)``: the revision this worker answers
  at (cheap), and a long-poll that returns once it moves past ``after``.

**Telling the kernel.** With ``on_revision`` (the plugin passes ``ctx.emit`` of the
:data:`REVISION_EVENT` event), a notifier thread calls ``on_revision(revision)`` each time
the mirror moves to a newer revision, whoever wrote it (this worker, or another kernel
or tool on the same database, learnt through the cache store channel or the store poll),
after the mirror has moved: the kernel's permission gate then drops the decisions of
older revisions, so a revoke written elsewhere is enforced within one message rather
than at the gate's next revision poll. Bursts are coalesced (the newest revision is
sent); a failing ``on_revision`` is logged and retried with the next revision.

Tuples are accepted in OpenFGA's string form ``document:1#viewer@user:anne``, as
mappings ``{"object": ..., "relation": ..., "user": ...}`` and as ``[object, relation,
user]`` lists; results use the mapping form (``read``, ``read_changes``).

**Consistency.** ``write`` and ``write_model`` commit, update this worker's mirror and
publish ``b"<revision> <store>"`` on :data:`REVISION_CHANNEL`. Every evaluating method
takes ``consistency=token`` (any token this store issued) and answers only once the
mirror has reached the token's revision, replaying the change log synchronously if
needed, so a check made with a revoke's token never sees the revoked grant, whichever
worker or kernel answers it. A token naming a revision the store has not reached after
``token_wait`` seconds raises :class:`~nexusfs_rebac.errors.FutureToken`. Without a
token, the answer reflects the latest revision this worker knows: its own writes at
once, other writers' within one message on a shared cache store, or within ``poll``
seconds without one; if the follower has not confirmed freshness for ``stale``
seconds, the method syncs first.

**Decision cache.** ``check`` answers (without contextual tuples) are cached per
snapshot, i.e. keyed by revision (and so by model); a new revision starts an empty
cache. So are the users' group memberships (the engine's ``shared``), which makes an
uncached check of a user already seen at this revision cheaper.

Failure semantics: bad input raises the typed errors of :mod:`nexusfs_rebac.errors`
before anything is changed; database errors propagate (a failed write changed
nothing; an evaluation that cannot confirm freshness fails rather than answer from a
state older than the caller asked for); :class:`~nexusfs.errors.ServiceUnavailable`
before :meth:`RebacService.start` and after :meth:`RebacService.stop`.
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from nexusfs.abc import CacheStoreABC
from nexusfs.errors import ServiceUnavailable, StoreClosed
from nexusfs_rebac.defaults import default_model, default_model_text
from nexusfs_rebac.dsl import parse_model
from nexusfs_rebac.engine import DEFAULT_MAX_DEPTH, Engine
from nexusfs_rebac.errors import (
    FutureToken,
    InvalidRequest,
    InvalidToken,
    InvalidTuple,
    ModelNotFound,
)
from nexusfs_rebac.hierarchy import PathHierarchy, path_object
from nexusfs_rebac.mirror import DECISIONS_MAX, Mirror, Snapshot
from nexusfs_rebac.model import AuthorizationModel
from nexusfs_rebac.namespace import KernelNamespace
from nexusfs_rebac.source import MemoryTupleSource
from nexusfs_rebac.store import TupleStore
from nexusfs_rebac.tokens import format_token, parse_token, store_tag
from nexusfs_rebac.tuples import TupleKey

__all__ = [
    "MAX_PAGE",
    "MAX_WRITE",
    "REVISION_CHANNEL",
    "REVISION_EVENT",
    "RebacService",
    "ServiceConfig",
    "parse_tuple",
]

#: Cache store channel: ``b"<revision> <store tag>"`` after every write.
REVISION_CHANNEL = "nexusfs.rebac.revision"
#: The event (``{"revision": int}``) a worker emits to its kernel when its revision
#: moves (the kernel's ``nexusfs.server.gate.REVISION_EVENT``).
REVISION_EVENT = "rebac.revision"
#: How often the notifier thread looks whether it should stop.
_NOTIFY_TICK = 0.25
#: Most tuples (writes + deletes) in one ``write``.
MAX_WRITE = 10_000
#: Largest page of ``read`` / ``read_changes``; most items of one ``batch_check``.
MAX_PAGE = 1_000
MAX_BATCH = 10_000
#: Longest wait of one ``wait_revision`` call.
MAX_WAIT = 30.0
#: Restarts of a ``list_objects`` whose mirror moved while it listed the namespace,
#: before the last attempt keeps the read lock during the kernel calls.
_LIST_RESTARTS = 8
#: Parsed consistency tokens remembered.
_TOKENS_MAX = 4096


@dataclass(frozen=True, slots=True)
class ServiceConfig:
    """Tuning (``ctx.config`` keys in milliseconds: ``poll_ms``, ``shared_poll_ms``,
    ``stale_ms``, ``token_wait_ms``; and ``max_depth``).

    ``poll``: the follower's store poll period without a shared cache store;
    ``shared_poll``: its safety-net period with one; ``stale``: how long an evaluation
    trusts the follower before syncing itself; ``token_wait``: how long a token from
    the future is waited for before :class:`FutureToken`."""

    poll: float = 0.2
    shared_poll: float = 2.0
    stale: float = 5.0
    token_wait: float = 2.0
    max_depth: int = DEFAULT_MAX_DEPTH

    @classmethod
    def from_mapping(cls, config: Mapping[str, Any]) -> ServiceConfig:
        """Read the ``*_ms`` keys and ``max_depth``; ``InvalidRequest`` for bad values."""

        def ms(key: str, default: float) -> float:
            value = config.get(key)
            if value is None:
                return default
            if (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or not (math.isfinite(value) and value > 0)
            ):
                raise InvalidRequest(f"config {key} must be a positive number, not {value!r}")
            return float(value) / 1000.0

        depth = config.get("max_depth", DEFAULT_MAX_DEPTH)
        if isinstance(depth, bool) or not isinstance(depth, int) or depth < 1:
            raise InvalidRequest(f"config max_depth must be a positive integer, not {depth!r}")
        d = cls()
        return cls(
            poll=ms("poll_ms", d.poll),
            shared_poll=ms("shared_poll_ms", d.shared_poll),
            stale=ms("stale_ms", d.stale),
            token_wait=ms("token_wait_ms", d.token_wait),
            max_depth=depth,
        )


def parse_tuple(value: object) -> TupleKey:
    """A tuple from its string form, an ``{object, relation, user}`` mapping or an
    ``[object, relation, user]`` list; :class:`InvalidTuple` otherwise."""
    if isinstance(value, str):
        return TupleKey.parse(value)
    if isinstance(value, Mapping):
        if set(value) != {"object", "relation", "user"}:
            raise InvalidTuple(
                f"a tuple mapping has exactly the keys object, relation, user; got {value!r}"
            )
        t = TupleKey(value["object"], value["relation"], value["user"])
        t.check_syntax()
        return t
    if isinstance(value, list | tuple) and len(value) == 3:
        return TupleKey.coerce(tuple(value))
    raise InvalidTuple(
        "a tuple is 'type:id#relation@user', {object, relation, user} or "
        f"[object, relation, user], not {value!r}"
    )


def _tuples(value: object, what: str, limit: int = MAX_WRITE) -> list[TupleKey]:
    if value is None:
        return []
    if isinstance(value, str | bytes | Mapping) or not isinstance(value, Sequence):
        raise InvalidRequest(f"{what} must be a list of tuples, not {type(value).__name__}")
    if len(value) > limit:
        raise InvalidRequest(f"{what}: at most {limit} tuples per request, got {len(value)}")
    return [parse_tuple(v) for v in value]


def _flag(value: object, what: str) -> bool:
    if not isinstance(value, bool):
        raise InvalidRequest(f"{what} must be true or false, not {value!r}")
    return value


def _limit(value: object, what: str = "limit", most: int = MAX_PAGE) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= most:
        raise InvalidRequest(f"{what} must be an integer from 1 to {most}, not {value!r}")
    return value


def _opt_str(value: object, what: str) -> str | None:
    if value is not None and not isinstance(value, str):
        raise InvalidRequest(f"{what} must be a string, not {type(value).__name__}")
    return value


def _tuple_json(t: TupleKey) -> dict[str, str]:
    return {"object": t.object, "relation": t.relation, "user": t.user}


class _Restart(Exception):
    """The mirror moved while a ``list_objects`` listed the namespace: start over."""


class RebacService:
    """One worker's rebac service (see the module docstring). ``kernel`` is the
    FileSystem whose namespace ``list_objects`` walks for files and folders (``ctx.
    kernel``); ``cache`` the cache store whose channel spreads revisions."""

    def __init__(
        self,
        store: TupleStore,
        *,
        kernel: Any = None,
        cache: CacheStoreABC | None = None,
        config: ServiceConfig | None = None,
        log: logging.Logger | None = None,
        on_revision: Callable[[int], None] | None = None,
    ) -> None:
        self.store = store
        self.on_revision = on_revision
        self._notifier: threading.Thread | None = None
        self._stopping = threading.Event()
        self.cache = cache
        self.config = config or ServiceConfig()
        self.log = log or logging.getLogger("nexusfs_rebac.service")
        self.tag = store_tag(store.store_id)
        self.namespace = KernelNamespace(kernel)
        self.hierarchy = PathHierarchy(self.namespace.children)
        self._computed = self.hierarchy.computed_relations()
        self._validators: dict[str, Callable[[TupleKey], object]] = {}
        self._token_revs: dict[str, int] = {}
        self._mirror: Mirror | None = None

    # ------------------------------------------------------------ life cycle

    def _engine(self, model: AuthorizationModel, source: MemoryTupleSource) -> Engine:
        return Engine(model, source, computed=self._computed, max_depth=self.config.max_depth)

    def start(self) -> None:
        """Seed the default model into an empty store, load the mirror and start
        following other writers. Database errors propagate (the start fails)."""
        self.store.write_model(default_model(), default_model_text(), only_if_none=True)
        mirror = Mirror(self.store, self._engine, log=self.log)
        if self.cache is not None:
            mirror.follow(self.cache, REVISION_CHANNEL, poll=self.config.poll,
                          shared_poll=self.config.shared_poll)  # fmt: skip
        self._mirror = mirror
        if self.on_revision is not None:
            self._stopping.clear()
            self._notifier = threading.Thread(
                target=self._notify, args=(mirror, self.on_revision),
                name="rebac-notify", daemon=True,
            )  # fmt: skip
            self._notifier.start()

    def stop(self) -> None:
        """Stop following and notifying; later calls raise ``ServiceUnavailable``.
        Idempotent."""
        mirror, self._mirror = self._mirror, None
        self._stopping.set()
        notifier, self._notifier = self._notifier, None
        if notifier is not None:
            notifier.join(5.0)
        if mirror is not None:
            mirror.stop()

    def _notify(self, mirror: Mirror, on_revision: Callable[[int], None]) -> None:
        """The notifier thread (see the module docstring)."""
        told = mirror.revision
        while not self._stopping.is_set():
            if not mirror.wait_beyond(told, _NOTIFY_TICK) or self._stopping.is_set():
                continue
            revision = mirror.revision
            try:
                on_revision(revision)
            except Exception as exc:  # the kernel is going away, or a bug: keep going
                self.log.warning("rebac: reporting revision %d failed: %s", revision, exc)
            told = revision

    @property
    def mirror(self) -> Mirror:
        """The running mirror; ``ServiceUnavailable`` before start and after stop."""
        return self._m()

    def _m(self) -> Mirror:
        mirror = self._mirror
        if mirror is None:
            raise ServiceUnavailable("the rebac service is not running")
        return mirror

    def methods(self) -> dict[str, Callable[..., Any]]:
        """The RPC methods by name."""
        return {
            name: getattr(self, name)
            for name in ("write_model", "read_model", "write", "check", "batch_check",
                         "check_paths", "expand", "list_objects", "list_users", "read",
                         "read_changes", "revision", "wait_revision")
        }  # fmt: skip

    # ------------------------------------------------------------ consistency

    def token(self, revision: int, change: int | None = None) -> str:
        """The token of ``revision`` of this store."""
        return format_token(self.tag, revision, change)

    def _fresh(self, consistency: object) -> Mirror:
        """The mirror, at least at ``consistency``'s revision (or fresh, without one)."""
        mirror = self._m()
        if consistency is None:
            if time.monotonic() - mirror.synced_at > self.config.stale:
                mirror.sync()
            return mirror
        wanted = self._token_revision(consistency)
        if mirror.revision >= wanted:
            return mirror
        deadline = time.monotonic() + self.config.token_wait
        while mirror.sync() < wanted:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise FutureToken(
                    f"token {consistency!r} names revision {wanted}, but the store is at "
                    f"revision {mirror.revision}: it was not issued by this store's writes"
                )
            mirror.wait_beyond(wanted - 1, min(0.05, remaining))
        return mirror

    def _token_revision(self, token: object) -> int:
        """The revision of a token of this store (parsed tokens are remembered: a
        client passes the same one many times). ``InvalidToken`` if it is not one."""
        if not isinstance(token, str):
            return parse_token(token, self.tag).revision  # raises InvalidToken
        revision = self._token_revs.get(token)
        if revision is None:
            revision = parse_token(token, self.tag).revision
            if len(self._token_revs) >= _TOKENS_MAX:
                self._token_revs.clear()
            self._token_revs[token] = revision
        return revision

    def _published(self, revision: int) -> None:
        if self.cache is not None:
            with contextlib.suppress(StoreClosed):  # never fails the caller
                self.cache.publish(REVISION_CHANNEL, f"{revision} {self.tag}".encode())

    # ------------------------------------------------------------------ writes

    def _validator(self, model_id: str, load_json: Callable[[], str]
                   ) -> Callable[[TupleKey], object]:  # fmt: skip
        check = self._validators.get(model_id)
        if check is None:
            snap = self._m().snapshot
            if snap.engine.model.model_id == model_id:
                engine = snap.engine
            else:
                model = AuthorizationModel.from_json(load_json())
                engine = self._engine(model, MemoryTupleSource())
            check = self._validators[model_id] = engine.validate_tuple
        return check

    def write_model(self, dsl: str) -> str:
        """Make the model written in the modeling language ``dsl`` current; return its
        ``model_id``. Writing the current model again changes nothing. Raises
        ``ModelError`` (with line and column) for a bad model, also for one whose
        ``parent`` relation on ``file`` / ``folder`` is not a plain direct relation (the
        path hierarchy computes it). Stored tuples the new model does not allow stay
        stored and are ignored by evaluation."""
        mirror = self._m()
        if not isinstance(dsl, str):
            raise InvalidRequest(f"dsl must be a string, not {type(dsl).__name__}")
        model = parse_model(dsl)
        self._engine(model, MemoryTupleSource())  # computed relations fit the model
        revision, written = self.store.write_model(model, dsl)
        if written:
            self._apply(mirror, revision, (), model)
        return model.model_id

    def read_model(self, model_id: str | None = None) -> dict[str, Any]:
        """The current model, or the latest version with ``model_id``: ``model_id``,
        ``revision`` (from which it was current), ``created_at``, ``dsl`` (as written)
        and ``json`` (OpenFGA's JSON form). ``ModelNotFound`` for an unknown id."""
        self._m()
        _opt_str(model_id, "model_id")
        row = self.store.read_model(model_id)
        if row is None:
            raise ModelNotFound(f"no authorization model {model_id!r} in this store")
        return row.to_dict()

    def write(
        self,
        writes: Sequence[Any] | None = None,
        deletes: Sequence[Any] | None = None,
        ignore_duplicates: bool = False,
        ignore_missing: bool = False,
    ) -> str:
        """Write and delete tuples atomically and return the consistency token of the
        resulting revision (the current one if nothing changed). ``writes`` are
        validated against the current model (``InvalidTuple``); ``DuplicateTuple`` /
        ``MissingTuple`` unless ``ignore_duplicates`` / ``ignore_missing``;
        ``InvalidRequest`` for an empty request or more than :data:`MAX_WRITE` tuples."""
        mirror = self._m()
        ws = _tuples(writes, "writes")
        ds = _tuples(deletes, "deletes")
        if not ws and not ds:
            raise InvalidRequest("a write needs at least one tuple to write or delete")
        if len(ws) + len(ds) > MAX_WRITE:
            raise InvalidRequest(f"at most {MAX_WRITE} tuples per write")
        result = self.store.write(
            ws, ds, self._validator,
            ignore_duplicates=_flag(ignore_duplicates, "ignore_duplicates"),
            ignore_missing=_flag(ignore_missing, "ignore_missing"),
        )  # fmt: skip
        if result.changed:
            ops = [("write", t.object, t.relation, t.user) for t in result.written]
            ops += [("delete", t.object, t.relation, t.user) for t in result.deleted]
            self._apply(mirror, result.revision, ops, None)
        return self.token(result.revision)

    def _apply(self, mirror: Mirror, revision: int, ops: Sequence[tuple[str, str, str, str]],
               model: AuthorizationModel | None) -> None:  # fmt: skip
        try:
            mirror.applied(revision, ops, model)
        except Exception as exc:  # committed; the follower or a token catches up later
            self.log.warning("rebac: applying revision %d in memory failed: %s", revision, exc)
        self._published(revision)

    # ------------------------------------------------------------- evaluation

    def check(
        self,
        user: str,
        relation: str,
        object: str,
        contextual_tuples: Sequence[Any] | None = None,
        consistency: str | None = None,
    ) -> bool:
        """Whether ``user`` has ``relation`` on ``object`` (see ``Engine.check``), at
        least as of ``consistency``. Cached per revision unless ``contextual_tuples``."""
        mirror = self._mirror
        if consistency is not None:
            wanted = self._token_revs.get(consistency) if type(consistency) is str else None
            if wanted is None or mirror is None or mirror.snapshot.revision < wanted:
                mirror = self._fresh(consistency)
        elif mirror is None or time.monotonic() - mirror.synced_at > self.config.stale:
            mirror = self._fresh(None)
        if contextual_tuples:
            extra = _tuples(contextual_tuples, "contextual_tuples")
            mirror.lock.acquire_read()
            try:
                return mirror.snapshot.engine.check(user, relation, object, extra)
            finally:
                mirror.lock.release_read()
        key = (user, relation, object)
        try:
            hit = mirror.snapshot.decisions.get(key)
        except TypeError:  # unhashable arguments: let the engine reject them
            hit = None
        if hit is not None:
            return hit
        mirror.lock.acquire_read()
        try:
            snap: Snapshot = mirror.snapshot
            allowed = snap.engine.check(user, relation, object, shared=snap.memberships)
            decisions = snap.decisions
            if len(decisions) >= DECISIONS_MAX:
                decisions.clear()
            decisions[key] = allowed
        finally:
            mirror.lock.release_read()
        return allowed

    def batch_check(
        self,
        checks: Sequence[Any],
        contextual_tuples: Sequence[Any] | None = None,
        consistency: str | None = None,
    ) -> list[bool]:
        """``check`` of each ``[user, relation, object]`` (or ``{user, relation,
        object}``), in order, from one snapshot. At most 10,000 items."""
        mirror = self._fresh(consistency)
        if isinstance(checks, str | bytes | Mapping) or not isinstance(checks, Sequence):
            raise InvalidRequest("checks must be a list of [user, relation, object] items")
        if len(checks) > MAX_BATCH:
            raise InvalidRequest(f"at most {MAX_BATCH} checks per batch, got {len(checks)}")
        extra = _tuples(contextual_tuples, "contextual_tuples") if contextual_tuples else None
        mirror.lock.acquire_read()
        try:
            snap: Snapshot = mirror.snapshot
            if extra:
                return snap.engine.batch_check(checks, extra)
            decisions = snap.decisions
            out: list[bool] = [False] * len(checks)
            keys: list[tuple[str, str, str] | None] = []
            misses: list[int] = []
            for i, c in enumerate(checks):
                if isinstance(c, Mapping):
                    k = _key(c.get("user"), c.get("relation"), c.get("object"))
                elif isinstance(c, list | tuple) and len(c) == 3:
                    k = _key(*c)
                else:
                    k = None
                keys.append(k)
                hit = decisions.get(k) if k is not None else None
                if hit is None:
                    misses.append(i)
                else:
                    out[i] = hit
            if misses:
                answers = snap.engine.batch_check(
                    [checks[i] for i in misses], shared=snap.memberships
                )
                if len(decisions) + len(misses) >= DECISIONS_MAX:
                    decisions.clear()
                for i, ok in zip(misses, answers, strict=True):
                    out[i] = ok
                    k = keys[i]
                    if k is not None:
                        decisions[k] = ok
            return out
        finally:
            mirror.lock.release_read()

    def check_paths(self, checks: Sequence[Any], consistency: str | None = None) -> list[bool]:
        """The kernel gate's question: for each ``[subject, permission, path]`` or
        ``[subject, permission, path, kind]`` (``kind`` ``"file"`` or ``"folder"``;
        omitted or ``null``: either, i.e. allowed if allowed on the file or the folder
        of that path, among the types that have the permission), whether ``subject``
        has ``permission`` on it. Paths are plain kernel paths (escaped here). One
        snapshot, cached like ``batch_check``."""
        if isinstance(checks, str | bytes | Mapping) or not isinstance(checks, Sequence):
            raise InvalidRequest("checks must be a list of [subject, permission, path] items")
        model = self._m().snapshot.engine.model
        items: list[list[str]] = []
        spans: list[tuple[int, int]] = []
        for c in checks:
            if not isinstance(c, list | tuple) or len(c) not in (3, 4):
                raise InvalidRequest(f"check_paths items are [subject, permission, path, kind?], "
                                     f"got {c!r}")  # fmt: skip
            subject, permission, path = c[0], c[1], c[2]
            kind = c[3] if len(c) == 4 else None
            if not isinstance(permission, str):
                raise InvalidRequest(f"permission must be a string, not {permission!r}")
            if not isinstance(path, str) or not path.startswith("/"):
                raise InvalidRequest(f"path must be an absolute path, not {path!r}")
            if kind not in (None, "file", "folder"):
                raise InvalidRequest(f"kind must be 'file', 'folder' or null, not {kind!r}")
            if kind is None:  # either type, among those that have the permission
                kinds = tuple(k for k in ("file", "folder") if model.relation(k, permission))
                kinds = kinds or ("file",)  # neither has it: let the engine say so
            else:
                kinds = (kind,)
            start = len(items)
            items.extend([subject, permission, path_object(k, path)] for k in kinds)
            spans.append((start, len(items)))
        answers = self.batch_check(items, consistency=consistency) if items else []
        return [any(answers[a:b]) for a, b in spans]

    def expand(self, relation: str, object: str, contextual_tuples: Sequence[Any] | None = None,
               consistency: str | None = None) -> dict[str, Any]:  # fmt: skip
        """One level of the userset tree of ``object#relation`` (see ``Engine.expand``)."""
        mirror = self._fresh(consistency)
        extra = _tuples(contextual_tuples, "contextual_tuples") if contextual_tuples else None
        mirror.lock.acquire_read()
        try:
            return mirror.snapshot.engine.expand(relation, object, extra)
        finally:
            mirror.lock.release_read()

    def list_users(self, object: str, relation: str, user_types: Sequence[str],
                   contextual_tuples: Sequence[Any] | None = None,
                   consistency: str | None = None) -> dict[str, list[str]]:  # fmt: skip
        """Users of ``object#relation`` among ``user_types`` (``["user",
        "group#member"]``): ``{"users": [...], "excluded": [...]}`` (a wildcard in
        ``users`` covers every user of its type except ``excluded``)."""
        mirror = self._fresh(consistency)
        if isinstance(user_types, str) or not isinstance(user_types, Sequence):
            raise InvalidRequest("user_types must be a list such as ['user', 'group#member']")
        extra = _tuples(contextual_tuples, "contextual_tuples") if contextual_tuples else None
        mirror.lock.acquire_read()
        try:
            engine = mirror.snapshot.engine
            return engine.list_users(object, relation, list(user_types), extra).to_json()
        finally:
            mirror.lock.release_read()

    def list_objects(self, user: str, relation: str, type: str,
                     contextual_tuples: Sequence[Any] | None = None,
                     consistency: str | None = None) -> list[str]:  # fmt: skip
        """Every object of ``type`` on which ``user`` has ``relation``, sorted. For
        ``file`` / ``folder`` the kernel's namespace supplies the folders' children; the
        read lock is released around those kernel calls, and the request restarts if
        the mirror moved meanwhile (the listings are kept, so a restart is cheap)."""
        mirror = self._fresh(consistency)
        extra = _tuples(contextual_tuples, "contextual_tuples") if contextual_tuples else None
        lock = mirror.lock
        namespace = self.namespace
        namespace.begin()
        try:
            for attempt in range(_LIST_RESTARTS + 1):
                lock.acquire_read()
                try:
                    revision = mirror.revision

                    def around(before: bool, revision: int = revision) -> None:
                        if before:
                            lock.release_read()
                            return
                        lock.acquire_read()
                        if mirror.revision != revision:
                            raise _Restart

                    # The last attempt keeps the lock during kernel calls: it cannot fail.
                    namespace.set_around(around if attempt < _LIST_RESTARTS else None)
                    return mirror.snapshot.engine.list_objects(user, relation, type, extra)
                except _Restart:
                    continue
                finally:
                    lock.release_read()
        finally:
            namespace.end()
        raise AssertionError("unreachable")  # pragma: no cover

    # ------------------------------------------------------------ storage reads

    def read(
        self,
        filter: Mapping[str, Any] | None = None,
        object: str | None = None,
        relation: str | None = None,
        user: str | None = None,
        limit: int = 100,
        continuation: str | None = None,
    ) -> dict[str, Any]:
        """Stored tuples whose ``object``, ``relation`` and ``user`` start with the
        given prefixes (case-sensitive; each optional; also accepted as a ``filter``
        mapping), in storage order, at most ``limit`` (1..1000): ``{"tuples": [{object,
        relation, user}, ...], "continuation": token or None}``; pass the continuation
        back for the next page. Read from the store (always the latest state); stored
        tuples the current model ignores are listed too."""
        self._m()
        if filter is not None:
            if not isinstance(filter, Mapping) or set(filter) - {"object", "relation", "user"}:
                raise InvalidRequest("filter is a mapping with keys object, relation, user")
            object = filter.get("object", object)
            relation = filter.get("relation", relation)
            user = filter.get("user", user)
        n = _limit(limit)
        after = 0
        if continuation is not None:
            tok = parse_token(continuation, self.tag)
            if tok.row is None:
                raise InvalidToken(f"{continuation!r} is not a continuation token of read")
            after = tok.row
        rows = self.store.read(
            object=_opt_str(object, "object"), relation=_opt_str(relation, "relation"),
            user=_opt_str(user, "user"), after_id=after, limit=n,
        )  # fmt: skip
        more = len(rows) == n
        return {
            "tuples": [_tuple_json(t) for _, t in rows],
            "continuation": (
                format_token(self.tag, self._m().revision, row=rows[-1][0]) if more else None
            ),
        }

    def read_changes(self, since_token: str | None = None, limit: int = 100) -> dict[str, Any]:
        """The change log after ``since_token`` (a consistency token: changes after its
        revision; a previous page's ``token``: the changes after that page; ``None``:
        from the beginning), oldest first, at most ``limit`` (1..1000): ``{"changes":
        [{revision, operation ("write" | "delete"), object, relation, user, time}, ...],
        "token": ...}``. ``token`` continues after the last change (the given token when
        there is none yet). ``FutureToken`` for a token past the store's revision."""
        n = _limit(limit)
        if since_token is None:
            after_revision, after_id = 0, None
        else:
            tok = parse_token(since_token, self.tag)
            if tok.row is not None:
                raise InvalidToken(f"{since_token!r} continues read, not read_changes")
            self._fresh(since_token)  # rejects tokens from the future
            after_revision, after_id = tok.revision, tok.change
        self._m()
        rows = self.store.changes(after_revision=after_revision, after_id=after_id, limit=n)
        if rows:
            token = self.token(rows[-1].revision, rows[-1].id)
        else:
            token = since_token if since_token is not None else self.token(0)
        return {
            "changes": [
                {"revision": c.revision, "operation": c.operation, "object": c.object,
                 "relation": c.relation, "user": c.user, "time": c.time} for c in rows
            ],
            "token": token,
        }  # fmt: skip

    # ------------------------------------------------------------------ revision

    def revision(self) -> dict[str, Any]:
        """The revision this worker answers at (after the cheap freshness check):
        ``{"revision": int, "token": str, "model_id": str}``."""
        mirror = self._fresh(None)
        snap = mirror.snapshot
        return {
            "revision": snap.revision,
            "token": self.token(snap.revision),
            "model_id": snap.engine.model.model_id,
        }

    def wait_revision(self, after: int | str, timeout: float = 10.0) -> dict[str, Any]:
        """Wait until this worker's revision is past ``after`` (a revision number or a
        token), at most ``timeout`` seconds (capped at 30), then return
        :meth:`revision`; a long-poll for "the permissions changed" that needs no cache
        store. ``InvalidRequest`` / ``InvalidToken`` for bad arguments."""
        mirror = self._m()
        if isinstance(after, str):
            after = parse_token(after, self.tag).revision
        if isinstance(after, bool) or not isinstance(after, int):
            raise InvalidRequest(f"after must be a revision or a token, not {after!r}")
        if (
            isinstance(timeout, bool)
            or not isinstance(timeout, int | float)
            or not (math.isfinite(timeout) and timeout >= 0)
        ):
            raise InvalidRequest(f"timeout must be a non-negative number, not {timeout!r}")
        mirror.wait_beyond(after, min(float(timeout), MAX_WAIT))
        return self.revision()


def _key(user: object, relation: object, object: object) -> tuple[str, str, str] | None:
    if type(user) is str and type(relation) is str and type(object) is str:
        return (user, relation, object)
    return None
