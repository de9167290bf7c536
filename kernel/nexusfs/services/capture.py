"""The post-hook capture: how a finished syscall is recorded for the post-hooks.

A syscall that only post-hooks apply to (the audit case) must cost its caller as little
as possible, so the pipeline records it in the *capture form* and does nothing else on
the syscall's path: one tuple of :data:`CAPTURE_FIELDS` appended to the host's journal
(``ServiceHost.journal``). Everything that can wait - normalising the paths, summarising
the result, building the :data:`~nexusfs.services.host.POST_FIELDS` wire tuple - is
done by :func:`wire_items` when an outbox's sender pulls the journal, a whole batch at
a time, off the syscalls' path (on a loaded kernel such a loop over hundreds of events
runs with warm caches, where the same work done one syscall at a time would not).

Invariants of a capture tuple ``(op, path, subject, dst, args, time, seq, outcome)``:

* ``path`` and ``dst`` are as the caller gave them (normalised, when valid, on the
  way out; an invalid path is sent as given - the syscall itself reported it);
* ``args`` is a dict or ``None`` (sent as ``{}``); ``time`` is the wall-clock time in
  seconds and ``seq`` the event's sequence number, both stamped when it was captured;
* ``outcome`` is ``None`` (success, nothing to summarise), a
  :class:`~nexusfs.metadata.inode.FileMetadata` (success, summarised by
  :func:`outcome_wire`), or a tuple of the ``SyscallOutcome`` fields;
* nothing in it may change after capture: a ``FileMetadata`` is immutable, and the
  pipeline never keeps a reference to a mutable result (such as a read's buffer or a
  listing) - only metadata is summarised.
"""

from __future__ import annotations

from typing import Any, Final

from nexusfs import paths
from nexusfs.errors import NexusError
from nexusfs.metadata.inode import EntryType, FileMetadata

__all__ = ["CAPTURE_FIELDS", "outcome_wire", "wire_items"]

CAPTURE_FIELDS: Final = ("op", "path", "subject", "dst", "args", "time", "seq", "outcome")

_TYPE_NAMES: Final = {t: t.name.lower() for t in EntryType}


def outcome_wire(result: Any) -> tuple[Any, ...]:
    """The ``SyscallOutcome`` fields of a successful syscall that returned ``result``:
    for a ``FileMetadata``, its revision and a small summary (size, version, content
    id, type); for anything else, a plain success."""
    if isinstance(result, FileMetadata):
        return (True, None, None, result.version or None,
                {"size": result.size, "version": result.version,
                 "content_id": result.content_id, "type": _TYPE_NAMES[result.entry_type]})
    return (True, None, None, None, {})


def wire_items(captured: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """The wire form (``POST_FIELDS``) of each capture tuple, in order. Never raises
    for a well-formed capture (see the module docstring)."""
    out: list[tuple[Any, ...]] = []
    append = out.append
    normalize = paths.normalize
    names = _TYPE_NAMES
    for op, path, subject, dst, args, time, seq, outcome in captured:
        # (try/except rather than contextlib.suppress, a context manager per event)
        try:  # noqa: SIM105
            path = normalize(path)
        except NexusError:
            pass  # the syscall itself reported the invalid path
        if dst is not None:
            try:  # noqa: SIM105
                dst = normalize(dst)
            except NexusError:
                pass
        if outcome is None:
            append((op, path, subject, dst, args or {}, time, seq, True, None, None, None, {}))
        elif outcome.__class__ is tuple:
            append((op, path, subject, dst, args or {}, time, seq, *outcome))
        else:  # a FileMetadata: outcome_wire, inlined
            version = outcome.version
            append((op, path, subject, dst, args or {}, time, seq, True, None, None,
                    version or None,
                    {"size": outcome.size, "version": version,
                     "content_id": outcome.content_id, "type": names[outcome.entry_type]}))
    return out
