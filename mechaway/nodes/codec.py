"""Payload codecs shared by nodes that cross a wire: json, msgpack, text, bytes.

``bytes`` payloads travel inside messages as base64 text (messages stay JSON-compatible).
Decoding failures raise ``ValueError`` with a short reason.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable
from typing import Any, Literal

import orjson

Codec = Literal["json", "msgpack", "text", "bytes"]


def _msgpack_decode(data: bytes) -> Any:
    import msgpack

    try:
        return msgpack.unpackb(data, raw=False, strict_map_key=True)
    except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as err:
        raise ValueError(f"invalid msgpack: {err}") from err


def _json_decode(data: bytes) -> Any:
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as err:
        raise ValueError(f"invalid JSON: {err.msg} at {err.pos}") from err


def _text_decode(data: bytes) -> Any:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"invalid UTF-8 at byte {err.start}") from err


def _bytes_decode(data: bytes) -> Any:
    return base64.b64encode(data).decode("ascii")


def _json_encode(value: Any) -> bytes:
    return orjson.dumps(value)


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


DECODERS: dict[str, Callable[[bytes], Any]] = {
    "json": _json_decode,
    "msgpack": _msgpack_decode,
    "text": _text_decode,
    "bytes": _bytes_decode,
}
ENCODERS: dict[str, Callable[[Any], bytes]] = {
    "json": _json_encode,
    "msgpack": _msgpack_encode,
    "text": _text_encode,
    "bytes": _bytes_encode,
}
