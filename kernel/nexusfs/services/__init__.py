"""Services: the protocols service packages implement, and (in the kernel process) the
host that runs each one in its own supervised worker process."""

from nexusfs.services.protocols import (
    AgentRegistryProtocol,
    ContextManifestProtocol,
    EventLogProtocol,
    HookEngineProtocol,
    NamespaceManagerProtocol,
    SchedulerProtocol,
)

__all__ = [
    "AgentRegistryProtocol",
    "ContextManifestProtocol",
    "EventLogProtocol",
    "HookEngineProtocol",
    "NamespaceManagerProtocol",
    "SchedulerProtocol",
]
