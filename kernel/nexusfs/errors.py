"""Typed errors of the NexusFS public API.

Every error raised across the public API is a :class:`NexusError` and also subclasses the
builtin exception whose meaning it carries, so ``except FileNotFoundError`` keeps working
for callers that do not know NexusFS. Each error class has a stable ``code`` string used
when errors cross a process boundary (bus, gRPC): ``error_from_code`` rebuilds the same
class on the other side.

Invariant: raising one of these never leaves partial state behind; the syscall layer
raises before it commits anything, or after a commit that already happened completely.
"""

from __future__ import annotations

from typing import TypeVar

__all__ = [
    "AlreadyExists",
    "ConfigError",
    "Conflict",
    "CorruptStore",
    "DirectoryNotEmpty",
    "InvalidPath",
    "InvalidSubject",
    "IsADirectory",
    "MountError",
    "NexusError",
    "NotADirectory",
    "NotFound",
    "PermissionDenied",
    "ServiceUnavailable",
    "StoreClosed",
    "StoreLocked",
    "error_from_code",
    "register_error",
]


E = TypeVar("E", bound="NexusError")


class NexusError(Exception):
    """Base class of every NexusFS error. ``code`` names the error on the wire."""

    code = "nexus_error"

    def __init__(self, message: str = "", *, path: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.path = path

    def __str__(self) -> str:
        if self.path is None or self.message.endswith(f": {self.path}"):
            return self.message
        return f"{self.message}: {self.path}" if self.message else self.path


class NotFound(NexusError, FileNotFoundError):
    """The path (or blob, or key) does not exist."""

    code = "not_found"


class AlreadyExists(NexusError, FileExistsError):
    """The path exists and the operation required that it did not."""

    code = "already_exists"


class NotADirectory(NexusError, NotADirectoryError):
    """A directory operation met a file, or a path goes *through* a file."""

    code = "not_a_directory"


class IsADirectory(NexusError, IsADirectoryError):
    """A file operation met a directory."""

    code = "is_a_directory"


class DirectoryNotEmpty(NexusError, OSError):
    """``rmdir`` without ``recursive`` on a directory that has children, or unmount of a
    store that still holds files."""

    code = "directory_not_empty"


class InvalidPath(NexusError, ValueError):
    """The path breaks the path rules: not absolute, NUL or control characters, ``..``
    segments, a name over 255 bytes or a path over 4096 bytes, or a reserved prefix."""

    code = "invalid_path"


class PermissionDenied(NexusError, PermissionError):
    """The acting subject may not perform the operation, or a pre-hook vetoed it, or the
    path is read-only (``/__sys__``)."""

    code = "permission_denied"


class Conflict(NexusError):
    """Optimistic concurrency failed: ``if_version`` did not match the current version, or
    a compare-and-swap saw a different value."""

    code = "conflict"

    def __init__(
        self,
        message: str = "",
        *,
        path: str | None = None,
        expected: int | None = None,
        actual: int | None = None,
    ) -> None:
        super().__init__(message, path=path)
        self.expected = expected
        self.actual = actual


class ServiceUnavailable(NexusError, ConnectionError):
    """A service (or a remote kernel) could not answer within the deadline."""

    code = "service_unavailable"


class MountError(NexusError, OSError):
    """A mount or unmount request is invalid: unknown URI scheme, busy mount point,
    or not a mount point."""

    code = "mount_error"


class StoreLocked(NexusError, OSError):
    """The store (a redb file) is already open by another process."""

    code = "store_locked"


class CorruptStore(NexusError, OSError):
    """A store file failed its integrity checks; nothing was changed on disk."""

    code = "corrupt_store"


class StoreClosed(NexusError, OSError):
    """The store or kernel was used after ``close()``."""

    code = "store_closed"


class ConfigError(NexusError, ValueError):
    """The configuration is invalid: an unknown setting or driver, a malformed URL or
    value, an unreadable or malformed config file or distro manifest. Raised at start-up,
    before anything is opened; the message names the setting, where its value came from
    and what is allowed."""

    code = "config_error"


class InvalidSubject(NexusError, ValueError):
    """A client named a subject that is not ``type:id`` (e.g. ``user:alice``)."""

    code = "invalid_subject"


_BY_CODE: dict[str, type[NexusError]] = {
    cls.code: cls
    for cls in (
        NexusError,
        NotFound,
        AlreadyExists,
        NotADirectory,
        IsADirectory,
        DirectoryNotEmpty,
        InvalidPath,
        PermissionDenied,
        Conflict,
        ServiceUnavailable,
        MountError,
        StoreLocked,
        CorruptStore,
        StoreClosed,
        ConfigError,
        InvalidSubject,
    )
}


def error_from_code(code: str, message: str, path: str | None = None) -> NexusError:
    """Rebuild a typed error from its wire ``code``. An unknown code (an error class of
    a service package this process has not registered) gives a plain ``NexusError``
    that keeps the ``code``, so callers can still tell errors apart."""
    cls = _BY_CODE.get(code)
    if cls is not None:
        return cls(message, path=path)
    err = NexusError(message, path=path)
    err.code = code
    return err


def register_error(cls: type[E]) -> type[E]:
    """Make ``cls`` (a ``NexusError`` subclass with its own ``code``) rebuildable from
    the wire in this process; usable as a class decorator by service packages. Raises
    ``ValueError`` if another class already owns the code."""
    if not (isinstance(cls, type) and issubclass(cls, NexusError)):
        raise ValueError(f"{cls!r} is not a NexusError subclass")
    owner = _BY_CODE.get(cls.code)
    if owner is not None and owner is not cls:
        raise ValueError(f"error code {cls.code!r} already belongs to {owner.__qualname__}")
    _BY_CODE[cls.code] = cls
    return cls
