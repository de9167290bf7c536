"""Wire format of the local bus: frames, messages, and typed errors.

A *frame* is a 4-byte big-endian unsigned length followed by that many bytes of msgpack
body. A body is one *message*, a map with a ``"t"`` (type) field:

* request  ``{"t": "req", "id": int, "m": str, "a": dict, "d": float | None}`` where
  ``d`` is an absolute deadline in Unix seconds (``time.time()``) or ``None``;
* response ``{"t": "res", "id": int, "r": any}``;
* error    ``{"t": "err", "id": int, "c": str, "msg": str, "p": str | None}`` (plus an
  optional ``"x"`` map of extra attributes, e.g. ``Conflict.expected/actual``);
* cancel   ``{"t": "cancel", "id": int}``;
* notify   ``{"t": "note", "m": str, "a": dict}`` (one way, never answered).

Invariants:

* Request ids are chosen by the *sender* of the request and are unique among its
  outstanding requests; the two directions of a connection have independent id spaces
  (``res``/``err``/``cancel`` always refer to the id space of the side that sent ``req``).
* :func:`encode_frame` raises :class:`FrameTooLarge` *before* anything is written when a
  body exceeds the limit; :class:`FrameDecoder` raises it as soon as a header announcing
  an oversized frame is seen, without buffering the body.
* Any malformed input (bad msgpack, trailing bytes, a non-map body, missing or mistyped
  fields, unknown ``"t"``) raises :class:`ProtocolError`; the caller must then close the
  connection (the byte stream can no longer be trusted).
* msgpack maps become ``dict`` and arrays become ``list`` (tuples do not round-trip);
  ``bytes`` stay ``bytes`` and ``str`` stays ``str``.
* :class:`FramePacker` is the per-connection encoder (one reusable msgpack packer, not
  thread-safe: one per connection or lock-protected); it enforces the same limit as
  :func:`encode_frame` and produces the same bytes.
"""

from __future__ import annotations

import math
import struct
import time
from typing import Any, Final

import msgpack
from msgpack import unpackb as _unpackb

from nexusfs.errors import Conflict, NexusError, ServiceUnavailable, error_from_code

__all__ = [
    "DEFAULT_MAX_FRAME_SIZE",
    "HEADER",
    "DeadlineExceeded",
    "FrameDecoder",
    "FramePacker",
    "FrameTooLarge",
    "InternalError",
    "ProtocolError",
    "UnknownMethod",
    "check_message",
    "decode_body",
    "encode_frame",
    "error_from_wire",
    "error_message",
]

DEFAULT_MAX_FRAME_SIZE: Final = 64 * 1024 * 1024
HEADER: Final = struct.Struct(">I")
_MAX_WIRE_SIZE: Final = 0xFFFFFFFF
_SMALL_FRAME: Final = 16384


class FrameTooLarge(NexusError, ValueError):
    """A frame body is larger than the configured maximum. Raised by the sender before
    writing anything; on the receiving side the connection is closed without reading
    the body."""

    code = "frame_too_large"


class ProtocolError(NexusError, ConnectionError):
    """The peer sent bytes that are not a valid bus message; the connection is closed."""

    code = "protocol_error"


class UnknownMethod(NexusError, LookupError):
    """The peer has no handler for the requested method."""

    code = "unknown_method"


class DeadlineExceeded(ServiceUnavailable, TimeoutError):
    """The call did not complete before its deadline. The caller has given up and sent a
    cancel frame; the handler's task scope is cancelled on the serving side."""

    code = "deadline_exceeded"


class InternalError(NexusError):
    """A handler raised an exception that is not a :class:`NexusError`; ``message`` holds
    ``"<ExceptionType>: <text>"``."""

    code = "internal"


_BUS_ERRORS: dict[str, type[NexusError]] = {
    cls.code: cls
    for cls in (FrameTooLarge, ProtocolError, UnknownMethod, DeadlineExceeded, InternalError)
}

_KINDS: Final = frozenset({"req", "res", "err", "cancel", "note"})


def error_from_wire(
    code: str, message: str, path: str | None = None, extra: dict[str, Any] | None = None
) -> NexusError:
    """Rebuild a typed error from an ``err`` message (bus codes first, then
    :func:`nexusfs.errors.error_from_code`; unknown codes give ``NexusError``)."""
    cls = _BUS_ERRORS.get(code)
    if cls is not None:
        return cls(message, path=path)
    if code == Conflict.code and extra:
        exp, act = extra.get("expected"), extra.get("actual")
        return Conflict(
            message,
            path=path,
            expected=exp if isinstance(exp, int) else None,
            actual=act if isinstance(act, int) else None,
        )
    return error_from_code(code, message, path)


def error_message(rid: int, exc: BaseException) -> dict[str, Any]:
    """The ``err`` message carrying ``exc`` for request ``rid``."""
    if isinstance(exc, NexusError):
        msg: dict[str, Any] = {
            "t": "err",
            "id": rid,
            "c": exc.code,
            "msg": exc.message,
            "p": exc.path,
        }
        if isinstance(exc, Conflict) and (exc.expected is not None or exc.actual is not None):
            msg["x"] = {"expected": exc.expected, "actual": exc.actual}
        return msg
    return {
        "t": "err",
        "id": rid,
        "c": InternalError.code,
        "msg": f"{type(exc).__name__}: {exc}",
        "p": None,
    }


def resolve_deadline(
    deadline: float | None, timeout: float | None, default_timeout: float | None
) -> float | None:
    """The absolute deadline of a call: the earlier of ``deadline`` (``time.time()``)
    and now + ``timeout`` (``default_timeout`` when ``None``); ``None`` means none.
    A non-finite deadline counts as none."""
    if timeout is None:
        timeout = default_timeout
    if timeout is not None:
        t = time.time() + timeout
        deadline = t if deadline is None else min(deadline, t)
    if deadline is not None and not math.isfinite(deadline):
        deadline = None
    return deadline


def _pack(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)  # type: ignore[no-any-return]


class FramePacker:
    """Encoder of whole frames with one reusable msgpack packer (cheaper than
    :func:`encode_frame`, which builds a packer per call). Not thread-safe.

    :meth:`frame` raises :class:`FrameTooLarge` above ``max_frame_size`` and ``TypeError``
    for values msgpack cannot encode; nothing is returned (so nothing is sent) then.
    """

    __slots__ = ("_pack", "max_frame_size")

    def __init__(self, max_frame_size: int = DEFAULT_MAX_FRAME_SIZE) -> None:
        self.max_frame_size = max_frame_size
        self._pack = msgpack.Packer(use_bin_type=True).pack

    def frame(self, msg: dict[str, Any]) -> bytes:
        try:
            body: bytes = self._pack(msg)
        except BaseException:
            # A failed pack may leave partial data in the packer's buffer: start afresh.
            self._pack = msgpack.Packer(use_bin_type=True).pack
            raise
        n = len(body)
        if n > self.max_frame_size or n > _MAX_WIRE_SIZE:
            raise FrameTooLarge(
                f"frame of {n} bytes exceeds the limit of {self.max_frame_size} bytes"
            )
        return HEADER.pack(n) + body


def encode_frame(msg: dict[str, Any], max_frame_size: int = DEFAULT_MAX_FRAME_SIZE) -> bytes:
    """Header + msgpack body of ``msg``.

    Raises :class:`FrameTooLarge` if the body exceeds ``max_frame_size`` and ``TypeError``
    if ``msg`` holds something msgpack cannot encode; nothing is written in either case.
    """
    body = _pack(msg)
    n = len(body)
    if n > max_frame_size or n > _MAX_WIRE_SIZE:
        raise FrameTooLarge(f"frame of {n} bytes exceeds the limit of {max_frame_size} bytes")
    return HEADER.pack(n) + body


def decode_body(body: bytes | bytearray | memoryview) -> dict[str, Any]:
    """Decode and validate one frame body; :class:`ProtocolError` if it is not a valid
    message."""
    try:
        obj = _unpackb(body, raw=False, strict_map_key=False)
    except Exception as exc:  # ExtraData, FormatError, StackError, ValueError...
        raise ProtocolError(f"undecodable frame body: {type(exc).__name__}: {exc}") from None
    return check_message(obj)


def _is_int(v: Any) -> bool:
    return type(v) is int


def check_message(obj: Any) -> dict[str, Any]:
    """Validate a decoded body (see the module docstring); return it or raise
    :class:`ProtocolError` naming what is wrong."""
    # Fast path for the two messages of every call; anything else (or anything
    # suspicious) takes the full check below, which names the problem.
    if type(obj) is dict:
        t = obj.get("t")
        if t == "res":
            if type(obj.get("id")) is int and "r" in obj:
                return obj
        elif t == "req":
            d = obj.get("d", 0)
            if (
                type(obj.get("id")) is int
                and type(obj.get("m")) is str
                and type(obj.get("a")) is dict
                and (d is None or type(d) is float or type(d) is int)
                and "d" in obj
            ):
                return obj
    return _check_message_slow(obj)


def _check_message_slow(obj: Any) -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise ProtocolError(f"frame body is a {type(obj).__name__}, not a map")
    t = obj.get("t")
    if t not in _KINDS:
        raise ProtocolError(f"unknown message type {t!r}")
    if t != "note" and not _is_int(obj.get("id")):
        raise ProtocolError(f"{t} message without an integer 'id'")
    if t == "req" or t == "note":
        if not isinstance(obj.get("m"), str):
            raise ProtocolError(f"{t} message without a string 'm'")
        if not isinstance(obj.get("a"), dict):
            raise ProtocolError(f"{t} message without an 'a' map")
        if t == "req":
            d = obj.get("d", 0)
            if d is not None and type(d) not in (int, float):
                raise ProtocolError("req message with a non-numeric deadline 'd'")
            if "d" not in obj:
                raise ProtocolError("req message without 'd'")
    elif t == "res":
        if "r" not in obj:
            raise ProtocolError("res message without 'r'")
    elif t == "err":
        p = obj.get("p")
        if not isinstance(obj.get("c"), str) or not isinstance(obj.get("msg"), str):
            raise ProtocolError("err message without string 'c' and 'msg'")
        if p is not None and not isinstance(p, str):
            raise ProtocolError("err message with a non-string 'p'")
    return obj


class FrameDecoder:
    """Incremental frame splitter for a byte stream.

    ``feed(data)`` returns the complete, validated messages now available, in order, and
    keeps any partial frame buffered. Raises :class:`FrameTooLarge` on a header above
    the limit (the body is never buffered) and :class:`ProtocolError` on a bad body; after
    either the decoder must be discarded with its connection. ``pending`` is the number of
    buffered bytes of an incomplete frame (non-zero at EOF means a truncated frame).
    """

    __slots__ = ("_buf", "max_frame_size")

    def __init__(self, max_frame_size: int = DEFAULT_MAX_FRAME_SIZE) -> None:
        self.max_frame_size = max_frame_size
        self._buf = bytearray()

    @property
    def pending(self) -> int:
        return len(self._buf)

    def feed(self, data: bytes | bytearray) -> list[dict[str, Any]]:
        buf = self._buf
        if buf:
            buf += data
            src: bytes | bytearray = buf
        else:
            src = data
        out: list[dict[str, Any]] = []
        pos = 0
        end = len(src)
        limit = self.max_frame_size
        unpack_from = HEADER.unpack_from
        while end - pos >= 4:
            (size,) = unpack_from(src, pos)
            if size > limit:
                raise FrameTooLarge(
                    f"peer announced a frame of {size} bytes; the limit is {limit} bytes"
                )
            stop = pos + 4 + size
            if stop > end:
                break
            if size <= _SMALL_FRAME:  # a copy is cheaper to unpack than a view
                out.append(decode_body(src[pos + 4 : stop]))
            else:  # no copy of a large body; the view is released before buf changes
                with memoryview(src) as view, view[pos + 4 : stop] as body:
                    out.append(decode_body(body))
            pos = stop
        if src is buf:
            del buf[:pos]
        elif pos < end:
            buf += data[pos:]
        return out
