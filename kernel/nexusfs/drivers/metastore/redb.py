"""The redb metastore: the kernel's default, durable, ordered key-value store.

``RedbMetastore`` is the native class ``nexusfs._native.Metastore`` (Rust, redb 4) with
:class:`~nexusfs.abc.MetastoreABC` mixed in; every data method dispatches straight to Rust
with no Python wrapper in between, and releases the GIL around redb and log I/O.

On disk: ``<path>`` is a redb file holding one table of ``bytes -> bytes`` (plus a small
meta table), and ``<path>.wal`` is a write-ahead log.

Invariants:

* Atomicity: each ``put``/``delete``/``cas``/``batch`` is one redb transaction and one log
  record (its resolved effects; a ``cas`` is logged as the put or delete it performed).
  After any crash a mutation is entirely visible or entirely absent.
* Order: writers are serialised by one lock under which the commit is applied and logged,
  so log order is commit order. Readers never wait for writers (redb MVCC) and see one
  snapshot per call, including every mutation that returned before the call started.
* ``Durability.DEFERRED``: the log record is written (``write(2)``, no fsync) before the
  call returns, so a returned mutation survives a process crash (SIGKILL). A background
  thread checkpoints every ``flush_interval_ms`` (1000 by default; 0 disables it): a
  durable redb commit, after which the log is emptied; so a mutation is power-loss safe
  within about one interval, and at once after ``flush()`` or ``close()``.
* ``Durability.IMMEDIATE``: the record is ``fdatasync``ed before the call returns, so a
  returned mutation survives power loss.
* Recovery: on open, log records after the last checkpoint are replayed in order up to
  the first torn or corrupt record, committed durably, and the log is emptied. Replay is
  idempotent, so a crash during recovery is harmless.

Failure semantics: the constructor raises ``NotFound`` (missing parent directory, or a
missing file with ``create=False``), ``StoreLocked`` (the file is open by another process
or another handle), ``CorruptStore`` (not a valid redb file; the file is not modified).
A mutation that raises has changed nothing. Use after ``close()`` raises ``StoreClosed``;
``close()`` is idempotent. ``batch`` raises ``Conflict`` naming the first failed check and
then writes nothing. Other I/O failures raise ``OSError``.
"""

from __future__ import annotations

import os

from nexusfs._native import Metastore as _NativeMetastore
from nexusfs.abc import Durability, MetastoreABC

__all__ = ["RedbMetastore"]


class RedbMetastore(_NativeMetastore, MetastoreABC):
    """redb metastore at ``path`` (``str`` or ``os.PathLike``).

    ``RedbMetastore(path, durability=Durability.DEFERRED, flush_interval_ms=1000,
    create=True)``; ``durability`` may be a :class:`~nexusfs.abc.Durability` or its string
    value. With ``create=False`` a missing file raises ``NotFound``.
    """

    def __new__(
        cls,
        path: str | os.PathLike[str],
        durability: Durability | str = Durability.DEFERRED,
        flush_interval_ms: int = 1000,
        create: bool = True,
    ) -> RedbMetastore:
        mode = Durability(durability).value
        return super().__new__(cls, os.fspath(path), mode, flush_interval_ms, create)  # type: ignore[return-value]

    # MetastoreABC declares ``durability`` as a plain attribute; here it is read-only.
    @property
    def durability(self) -> Durability:  # type: ignore[override]
        """The store's durability as a :class:`~nexusfs.abc.Durability`."""
        return Durability(_NativeMetastore.durability.__get__(self))

    def __enter__(self) -> RedbMetastore:
        return self

    def __repr__(self) -> str:
        state = " closed" if self.closed else ""
        return f"<RedbMetastore {self.path!r} {self.durability.value}{state}>"
