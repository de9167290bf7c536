"""Service protocols: the interfaces that service packages implement.

These are the *kinds* of service NexusFS knows (from the kernel design document). Each
service package implements one or more of them with a class whose public methods are
also its RPC methods (``nx.call("<service>.<method>", ...)``); a test of each package
checks ``isinstance(impl, Protocol)``. All values crossing the bus are plain data
(dicts, lists, str, int, float, bool, bytes, None).

Failure semantics shared by all: methods raise :mod:`nexusfs.errors` types (``NotFound``,
``AlreadyExists``, ``InvalidPath``/``ValueError`` for bad arguments, ``Conflict``),
never bare exceptions; a method either completes its change in the RecordStore in one
transaction or changes nothing.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

__all__ = [
    "AgentRegistryProtocol",
    "ContextManifestProtocol",
    "EventLogProtocol",
    "HookEngineProtocol",
    "NamespaceManagerProtocol",
    "SchedulerProtocol",
]


@runtime_checkable
class AgentRegistryProtocol(Protocol):
    """Agent identities (RecordStore)."""

    def register(self, agent_id: str, *, owner: str, metadata: dict[str, Any] | None = None
                 ) -> dict[str, Any]: ...  # fmt: skip
    def get(self, agent_id: str) -> dict[str, Any]: ...
    def list(self, *, owner: str | None = None) -> list[dict[str, Any]]: ...
    def unregister(self, agent_id: str) -> bool: ...


@runtime_checkable
class NamespaceManagerProtocol(Protocol):
    """ReBAC permissions and namespace views (RecordStore + CacheStore)."""

    def check(self, user: str, relation: str, object: str, **options: Any) -> bool: ...
    def write(self, writes: list[dict[str, str]] = ..., deletes: list[dict[str, str]] = ...,
              ) -> str: ...  # fmt: skip
    def list_objects(self, user: str, relation: str, type: str) -> list[str]: ...


@runtime_checkable
class EventLogProtocol(Protocol):
    """Append-only audit log (RecordStore). Sequence numbers increase without gaps."""

    def append(self, event: dict[str, Any]) -> int: ...
    def query(
        self,
        *,
        path_prefix: str | None = None,
        subject: str | None = None,
        op: str | None = None,
        since: float | None = None,
        until: float | None = None,
        after_seq: int | None = None,
        limit: int = 100,
    ) -> list[dict[str, Any]]: ...
    def tail(self, n: int = 20) -> list[dict[str, Any]]: ...
    def last_seq(self) -> int: ...


@runtime_checkable
class HookEngineProtocol(Protocol):
    """User hook rules evaluated around syscalls (CacheStore or RecordStore)."""

    def add_rule(self, op: str, glob: str, action: str, message: str | None = None
                 ) -> dict[str, Any]: ...  # fmt: skip
    def list_rules(self) -> list[dict[str, Any]]: ...
    def remove_rule(self, rule_id: int) -> bool: ...


@runtime_checkable
class SchedulerProtocol(Protocol):
    """A work queue with leases (CacheStore or RecordStore)."""

    def submit(self, task: dict[str, Any], *, priority: int = 0, delay: float = 0.0) -> str: ...
    def claim(self, worker: str, *, lease: float = 30.0) -> dict[str, Any] | None: ...
    def complete(self, task_id: str, result: Any = None) -> None: ...
    def fail(self, task_id: str, error: str) -> None: ...


@runtime_checkable
class ContextManifestProtocol(Protocol):
    """Deterministic context assembly before an agent runs (service models)."""

    def resolve(self, manifest: dict[str, Any]) -> dict[str, Any]: ...
