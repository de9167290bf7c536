"""Type stubs of ``nexusfs._native``, the Rust core (``native/src``)."""

from collections.abc import Sequence
from os import PathLike
from typing import Any

__version__: str

class Metastore:
    """redb-backed ordered key-value store with a write-ahead log.

    Errors: ``NotFound`` (missing directory, or missing file with ``create=False``),
    ``StoreLocked`` (file open elsewhere), ``CorruptStore`` (not a valid store file),
    ``StoreClosed`` (use after ``close()``), ``Conflict`` (failed batch check), ``OSError``
    (other I/O), ``ValueError`` (bad argument).
    """

    def __new__(
        cls,
        path: str | PathLike[str],
        durability: str = "deferred",
        flush_interval_ms: int = 1000,
        create: bool = True,
    ) -> Metastore: ...
    @property
    def durability(self) -> str: ...
    @property
    def path(self) -> str: ...
    @property
    def closed(self) -> bool: ...
    def get(self, key: bytes) -> bytes | None: ...
    def get_many(self, keys: Sequence[bytes]) -> list[bytes | None]: ...
    def put(self, key: bytes, value: bytes) -> None: ...
    def delete(self, key: bytes) -> bool: ...
    def cas(self, key: bytes, expected: bytes | None, new: bytes | None) -> bool: ...
    def scan(
        self,
        prefix: bytes = b"",
        *,
        start: bytes | None = None,
        end: bytes | None = None,
        after: bytes | None = None,
        limit: int | None = None,
        keys_only: bool = False,
    ) -> list[tuple[bytes, bytes]]: ...
    def batch(
        self,
        puts: Sequence[tuple[bytes, bytes]] = (),
        deletes: Sequence[bytes] = (),
        checks: Sequence[tuple[bytes, bytes | None]] = (),
    ) -> None: ...
    def flush(self) -> None: ...
    def close(self) -> None: ...
    def stats(self) -> dict[str, Any]: ...
