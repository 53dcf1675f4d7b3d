"""The bridge protocol (firmware-bridges/PROTOCOL.md), pure: no I/O, no event loop.

Framers take the bytes of one bulk read and return what they completed, in order:
``bytes`` (a frame's content) or a ``FrameError`` (a framing failure, already
resynchronised). Message decoding turns a frame into a validated protocol message or
raises ``ProtocolError`` naming one code of the protocol's closed set.

Speed matters here (a USB CDC link carries ~25,000 frames/s): splitting is done by
``bytes.split`` and the CRC by ``binascii.crc_hqx``, both in C.
"""

from __future__ import annotations

import binascii
from typing import Any, ClassVar, Final, Literal

import msgpack
import orjson

from mechaway.errors import MechawayError

__all__ = [
    "ERROR_CODES",
    "FRAMINGS",
    "MAX_FRAME_LIMIT",
    "PROTOCOL_VERSION",
    "CobsFramer",
    "FrameError",
    "Framer",
    "Framing",
    "LineFramer",
    "ProtocolError",
    "cobs_decode",
    "cobs_encode",
    "crc16",
    "decode_message",
    "encode_frame",
    "encode_message",
    "encode_payload",
    "make_framer",
    "validate_message",
]

PROTOCOL_VERSION: Final = 1
#: the protocol's ceiling for a frame's size (PROTOCOL.md section 1)
MAX_FRAME_LIMIT: Final = 4096
Framing = Literal["line", "cobs"]
FRAMINGS: Final = ("line", "cobs")
ERROR_CODES: Final = frozenset(
    {"oversize", "cobs", "short", "crc", "msgpack", "utf8", "json", "schema", "version"}
)


class FrameError:
    """A framing failure the framer recovered from; ``code`` is one of ``ERROR_CODES``.

    One shared instance per code (``FrameError.of``): the hot path allocates nothing."""

    __slots__ = ("code",)
    _shared: dict[str, FrameError] = {}  # noqa: RUF012 (filled once below)

    def __init__(self, code: str) -> None:
        self.code = code

    @classmethod
    def of(cls, code: str) -> FrameError:
        return cls._shared[code]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, FrameError) and other.code == self.code

    def __hash__(self) -> int:
        return hash(self.code)

    def __repr__(self) -> str:
        return f"FrameError({self.code!r})"


for _code in ERROR_CODES:
    FrameError._shared[_code] = FrameError(_code)
_OVERSIZE: Final = FrameError.of("oversize")
_COBS: Final = FrameError.of("cobs")
_SHORT: Final = FrameError.of("short")
_CRC: Final = FrameError.of("crc")


class ProtocolError(MechawayError):
    """A frame is not a valid protocol message; ``code`` is one of ``ERROR_CODES``."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail


def crc16(data: bytes, crc: int = 0xFFFF) -> int:
    """CRC-16/CCITT-FALSE (poly 0x1021, init 0xFFFF, no reflection; check 0x29B1)."""
    return binascii.crc_hqx(data, crc)


def cobs_encode(data: bytes) -> bytes:
    """COBS-encode ``data`` (the result holds no 0x00; the delimiter is not added)."""
    out = bytearray()
    for block in data.split(b"\x00"):
        start, n = 0, len(block)
        while n - start >= 254:
            out.append(255)
            out += block[start : start + 254]
            start += 254
        out.append(n - start + 1)
        out += block[start:]
    return bytes(out)


def cobs_decode(data: bytes) -> bytes:
    """Decode one COBS frame (without its delimiter); ``ValueError`` if malformed."""
    out = bytearray()
    i, n = 0, len(data)
    while i < n:
        code = data[i]
        end = i + code
        if code == 0 or end > n:
            raise ValueError(f"COBS code byte {code} at {i} points past the frame end ({n})")
        out += data[i + 1 : end]
        i = end
        if code != 255 and i < n:
            out.append(0)
    return bytes(out)


def _check_limit(max_frame: int) -> int:
    if not 1 <= max_frame <= 1 << 20:
        raise ValueError(f"max_frame must be 1..1048576 bytes, not {max_frame}")
    return max_frame


class _DelimitedFramer:
    """What both framings share: frames end at one delimiter byte; a partial frame is held
    between reads; after an oversize frame, bytes are dropped up to the next delimiter
    (resynchronised)."""

    __slots__ = ("_buf", "_dropping", "max_frame")
    DELIM: ClassVar[bytes]

    def __init__(self, max_frame: int = MAX_FRAME_LIMIT) -> None:
        self.max_frame = _check_limit(max_frame)
        self._buf = b""
        self._dropping = False

    @property
    def pending(self) -> int:
        """Bytes held of a frame not yet complete."""
        return len(self._buf)

    def reset(self) -> None:
        """Forget a partial frame (a new connection starts clean)."""
        self._buf = b""
        self._dropping = False

    def _split(self, data: bytes) -> tuple[list[bytes], bytes]:
        """The complete frames in what is held + ``data`` (after any oversize frame being
        dropped), and the incomplete rest."""
        if self._dropping:
            cut = data.find(self.DELIM)
            if cut < 0:
                return [], b""
            self._dropping = False
            data = data[cut + 1 :]
        parts = (self._buf + data if self._buf else data).split(self.DELIM)
        return parts, parts.pop()

    def _hold(self, rest: bytes, limit: int, out: list[bytes | FrameError]) -> None:
        """Keep ``rest`` for the next read, unless it is already over ``limit``: then it is
        one oversize error, and what follows is dropped up to the next delimiter."""
        if len(rest) > limit:
            out.append(_OVERSIZE)
            rest = b""
            self._dropping = True
        self._buf = rest


class LineFramer(_DelimitedFramer):
    """``line`` framing: frames end at ``\\n``; one trailing ``\\r`` is removed; empty lines
    are skipped; a line longer than ``max_frame`` is one ``oversize`` error and is
    dropped up to its newline. Holds at most ``max_frame + 1`` bytes between reads."""

    __slots__ = ()
    framing: Final = "line"
    DELIM: ClassVar[bytes] = b"\n"

    def feed(self, data: bytes) -> list[bytes | FrameError]:
        """Split ``data`` (appended to what is held) into frames and errors, in order."""
        parts, rest = self._split(data)
        limit = self.max_frame
        out: list[bytes | FrameError] = []
        append = out.append
        for part in parts:
            if part[-1:] == b"\r":
                part = part[:-1]  # noqa: PLW2901
            if not part:
                continue
            append(part if len(part) <= limit else _OVERSIZE)
        self._hold(rest, limit + 1, out)  # room for the line and its optional \r
        return out


class CobsFramer(_DelimitedFramer):
    """``cobs`` framing: COBS(payload + CRC-16 big-endian) + 0x00. Empty frames are
    skipped; every failure is one error and ends at the next 0x00 (resynchronised)."""

    __slots__ = ("_enc_max",)
    framing: Final = "cobs"
    DELIM: ClassVar[bytes] = b"\x00"

    def __init__(self, max_frame: int = MAX_FRAME_LIMIT) -> None:
        super().__init__(max_frame)
        n = max_frame + 2
        self._enc_max = n + n // 254 + 1

    def feed(self, data: bytes) -> list[bytes | FrameError]:
        """Split ``data`` (appended to what is held) into frames and errors, in order."""
        parts, rest = self._split(data)
        enc_max = self._enc_max
        out: list[bytes | FrameError] = []
        append = out.append
        for part in parts:
            if not part:
                continue
            if len(part) > enc_max:
                append(_OVERSIZE)
                continue
            append(self._decode(part))
        self._hold(rest, enc_max, out)
        return out

    def _decode(self, part: bytes) -> bytes | FrameError:
        # inline COBS decode: the common frame is a handful of short blocks
        out = bytearray()
        i, n = 0, len(part)
        while i < n:
            code = part[i]
            end = i + code
            if end > n:
                return _COBS
            out += part[i + 1 : end]
            i = end
            if code != 255 and i < n:
                out.append(0)
        size = len(out) - 2
        if size < 1:
            return _SHORT
        if binascii.crc_hqx(out, 0xFFFF) != 0:  # CRC over data + its big-endian CRC is 0
            return _CRC
        if size > self.max_frame:
            return _OVERSIZE
        return bytes(out[:size])


Framer = LineFramer | CobsFramer


def make_framer(framing: str, max_frame: int = MAX_FRAME_LIMIT) -> Framer:
    """The framer for ``framing`` (``"line"`` or ``"cobs"``)."""
    if framing == "line":
        return LineFramer(max_frame)
    if framing == "cobs":
        return CobsFramer(max_frame)
    raise ValueError(f"framing must be one of line, cobs, not {framing!r}")


def encode_frame(framing: str, payload: bytes) -> bytes:
    """Wrap ``payload`` into one frame on the wire. A ``line`` payload may not hold a
    newline (it would become two frames): ``ValueError``."""
    if framing == "line":
        if b"\n" in payload:
            raise ValueError("a line frame cannot contain a newline")
        return payload + b"\n"
    if framing == "cobs":
        return cobs_encode(payload + crc16(payload).to_bytes(2, "big")) + b"\x00"
    raise ValueError(f"framing must be one of line, cobs, not {framing!r}")


def encode_payload(framing: str, message: dict[str, Any]) -> bytes:
    """A message's frame content: compact JSON (``line``) or msgpack (``cobs``)."""
    if framing == "line":
        return orjson.dumps(message)
    out: bytes = msgpack.packb(message)
    return out


def encode_message(framing: str, message: dict[str, Any]) -> bytes:
    """One protocol message as one frame: compact JSON line, or msgpack in COBS + CRC."""
    if framing == "line":
        return orjson.dumps(message) + b"\n"
    return encode_frame(framing, msgpack.packb(message))


def decode_message(framing: str, frame: bytes) -> dict[str, Any]:
    """Decode and validate one frame's content; ``ProtocolError`` with the code."""
    obj: object
    if framing == "line":
        try:
            obj = orjson.loads(frame)
        except orjson.JSONDecodeError as err:
            try:
                frame.decode("utf-8")
            except UnicodeDecodeError:
                raise ProtocolError("utf8", "line is not UTF-8") from None
            raise ProtocolError("json", f"not JSON: {err}") from None
    else:
        try:
            obj = msgpack.unpackb(frame, raw=False, strict_map_key=False)
        except Exception as err:  # ExtraData, OutOfData, FormatError, UnicodeDecodeError...
            raise ProtocolError("msgpack", f"not one msgpack value: {err}") from None
    return validate_message(obj)


# --- validation (PROTOCOL.md section 2) ---

_U32: Final = 0xFFFFFFFF
_I32_MIN: Final = -(1 << 31)
_I32_MAX: Final = (1 << 31) - 1


def _bad(detail: str) -> ProtocolError:
    return ProtocolError("schema", detail)


def _int(msg: dict[str, Any], key: str, lo: int, hi: int, *, required: bool) -> None:
    value = msg.get(key)
    if value is None:
        if required or key in msg:
            raise _bad(f"{key}: required integer {lo}..{hi}")
        return
    if type(value) is not int or not lo <= value <= hi:
        raise _bad(f"{key}: expected an integer {lo}..{hi}, got {value!r:.40}")


def _str(msg: dict[str, Any], key: str, lo: int, hi: int, *, required: bool) -> None:
    value = msg.get(key)
    if value is None:
        if required or key in msg:
            raise _bad(f"{key}: required string of {lo}..{hi} characters")
        return
    if type(value) is not str or not lo <= len(value) <= hi:
        raise _bad(f"{key}: expected a string of {lo}..{hi} characters, got {value!r:.40}")


_SCALAR: Final = (int, float, str, bool, type(None))


def _hello(msg: dict[str, Any]) -> None:
    if "v" not in msg:
        raise _bad("v: required in hello")
    _str(msg, "device", 1, 32, required=True)
    _str(msg, "fw", 0, 64, required=False)
    caps = msg.get("caps")
    if caps is not None and (
        type(caps) is not list or len(caps) > 32 or any(type(c) is not str for c in caps)
    ):
        raise _bad("caps: expected a list of up to 32 strings")
    _int(msg, "max_frame", 16, MAX_FRAME_LIMIT, required=False)


def _reading(msg: dict[str, Any]) -> None:
    values = msg.get("values")
    if type(values) is not dict or not 1 <= len(values) <= 32:
        raise _bad("values: expected a map of 1..32 names to numbers, booleans, text or null")
    for key, value in values.items():
        if type(key) is not str or type(value) not in _SCALAR:
            raise _bad(f"values.{key!s:.40}: expected a number, boolean, text or null")
    _int(msg, "seq", 0, _U32, required=False)
    _int(msg, "ts_ms", 0, _U32, required=False)


def _ack(msg: dict[str, Any]) -> None:
    _int(msg, "id", 0, _U32, required=True)


def _error(msg: dict[str, Any]) -> None:
    _str(msg, "code", 1, 64, required=True)
    _int(msg, "id", 0, _U32, required=False)
    if "msg" in msg and type(msg["msg"]) is not str:
        raise _bad("msg: expected a string")


def _heartbeat(msg: dict[str, Any]) -> None:
    _int(msg, "uptime_ms", 0, (1 << 64) - 1, required=True)


def _cmd(msg: dict[str, Any]) -> None:
    _int(msg, "id", 0, _U32, required=True)
    _str(msg, "op", 1, 32, required=True)
    op = msg["op"]
    if op == "pin":
        _int(msg, "pin", 0, 255, required=True)
        _int(msg, "value", 0, 1, required=True)
    elif op == "pwm":
        _int(msg, "pin", 0, 255, required=True)
        _int(msg, "value", 0, 255, required=True)
    elif op == "custom":
        _str(msg, "name", 1, 32, required=True)


_CHECKS: Final = {
    "hello": _hello,
    "reading": _reading,
    "ack": _ack,
    "error": _error,
    "heartbeat": _heartbeat,
    "cmd": _cmd,
}


def validate_message(obj: object) -> dict[str, Any]:
    """``obj`` if it is a valid protocol message (returned as is, extra fields kept),
    else ``ProtocolError`` (``version`` is checked first, then ``schema``)."""
    if type(obj) is not dict:
        raise _bad(f"expected a map, got {type(obj).__name__}")
    version = obj.get("v", PROTOCOL_VERSION)
    if version != PROTOCOL_VERSION or type(version) is not int:
        if type(version) is int:
            raise ProtocolError("version", f"v: this receiver speaks {PROTOCOL_VERSION}, "
                                f"not {version}")
        raise _bad(f"v: expected an integer, got {version!r:.40}")
    kind = obj.get("t")
    check = _CHECKS.get(kind) if type(kind) is str else None
    if check is None:
        raise _bad(f"t: expected one of {', '.join(_CHECKS)}, got {kind!r:.40}")
    for key in obj:
        if type(key) is not str:
            raise _bad(f"keys must be strings, got {key!r:.40}")
    check(obj)
    return obj
