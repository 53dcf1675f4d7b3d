"""Payload codecs shared by whatever crosses a wire: json, msgpack, text, bytes.

Used by nodes (MQTT in/out), the store (``mechaway.store.encode``) and drivers alike, so it
sits below all of them and imports nothing of mechaway.

``bytes`` payloads travel inside messages as base64 text (messages stay JSON-compatible).
Decoding failures raise ``ValueError`` with a short reason.

msgpack: map keys must be strings (``bin`` keys pass as ``bytes``); a timestamp (ext -1)
decodes to epoch seconds (a float); any other ext type is a decoding failure (a flow has
no use for opaque application types, and nothing downstream could store them); ``bin``
values stay ``bytes`` (walking every payload to convert them would cost every message),
and the store writes them as base64 text (``mechaway.store.encode``).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable
from typing import Any, Literal

import orjson

Codec = Literal["json", "msgpack", "text", "bytes"]


def _msgpack_ext(code: int, data: bytes) -> Any:
    raise ValueError(f"ext type {code} ({len(data)} bytes) is not supported")


def _msgpack_decode(data: bytes) -> Any:
    import msgpack

    try:
        return msgpack.unpackb(
            data, raw=False, strict_map_key=True, timestamp=1, ext_hook=_msgpack_ext
        )
    except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as err:
        raise ValueError(f"invalid msgpack: {err}") from err


def _text_decode(data: bytes) -> Any:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"invalid UTF-8 at byte {err.start}") from err


def _bytes_decode(data: bytes) -> Any:
    return base64.b64encode(data).decode("ascii")


def _msgpack_encode(value: Any) -> bytes:
    import msgpack

    out: bytes = msgpack.packb(value, use_bin_type=True)
    return out


def _text_encode(value: Any) -> bytes:
    if isinstance(value, str):
        return value.encode("utf-8")
    return orjson.dumps(value)


def _bytes_encode(value: Any) -> bytes:
    if isinstance(value, bytes):
        return value
    if not isinstance(value, str):
        raise ValueError("a bytes payload must be base64 text")
    try:
        return base64.b64decode(value, validate=True)
    except binascii.Error as err:
        raise ValueError(f"invalid base64: {err}") from err


#: Decoders raise ValueError on bad input (``describe`` phrases it). JSON and its encoder
#: are orjson's own functions, not wrappers: these run once per message, and a Python
#: frame more per message costs microseconds when messages arrive to cold caches.
DECODERS: dict[str, Callable[[bytes], Any]] = {
    "json": orjson.loads,
    "msgpack": _msgpack_decode,
    "text": _text_decode,
    "bytes": _bytes_decode,
}
ENCODERS: dict[str, Callable[[Any], bytes]] = {
    "json": orjson.dumps,
    "msgpack": _msgpack_encode,
    "text": _text_encode,
    "bytes": _bytes_encode,
}


def json_default(obj: Any) -> Any:
    """orjson's ``default``: bytes (a msgpack ``bin``) as base64 text, as bytes travel in
    messages; anything else stays unserialisable."""
    if isinstance(obj, bytes | bytearray | memoryview):
        return base64.b64encode(obj).decode("ascii")
    raise TypeError(f"Type is not JSON serializable: {type(obj).__name__}")


def _json_lenient(value: Any) -> bytes:
    return orjson.dumps(value, default=json_default)


def _text_lenient(value: Any) -> bytes:
    return value.encode("utf-8") if isinstance(value, str) else _json_lenient(value)


#: The encoders again, for a value the plain one refused with TypeError: JSON writes bytes
#: as base64. Called only after that failure, so the usual message pays nothing for it.
LENIENT_ENCODERS: dict[str, Callable[[Any], bytes]] = {
    **ENCODERS,
    "json": _json_lenient,
    "text": _text_lenient,
}


def describe(err: ValueError) -> str:
    """The reason a decoder gave, in one line (orjson's error carries its own fields)."""
    if isinstance(err, orjson.JSONDecodeError):
        return f"invalid JSON: {err.msg} at {err.pos}"
    return str(err)
