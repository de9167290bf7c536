"""Syscall implementations, composed into :class:`nexusfs.kernel.NexusFS`."""

from nexusfs.syscalls.admin import AdminOps, GCReport, ZoneInfo
from nexusfs.syscalls.core import KernelCore
from nexusfs.syscalls.files import FileOps
from nexusfs.syscalls.namespace import NamespaceOps

__all__ = ["AdminOps", "FileOps", "GCReport", "KernelCore", "NamespaceOps", "ZoneInfo"]
