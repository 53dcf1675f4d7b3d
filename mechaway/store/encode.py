"""What the store writes as JSON: one encoder, one error that names the value's place.

Messages are JSON-compatible by convention, but a codec can hand the flow values JSON
has no form for: msgpack ``bin`` (``bytes``), bytes or non-string map keys, integers
beyond 64 bits, nesting deeper than orjson's 255 levels. ``to_json`` writes ``bytes``
as base64 text (the convention of ``mechaway.codec``: bytes travel as base64) and
a msgpack timestamp as epoch seconds; anything else it cannot write fails with
``UnstorableValue`` naming where the value was going. NaN and infinities become
``null`` (orjson's rule, and JavaScript's).

The check costs nothing on the common path: orjson calls ``_default`` only for a value
of a type it does not know.
"""

from __future__ import annotations

import math
import reprlib
import time
from typing import Any

import orjson

from mechaway.codec import json_default


class UnstorableValue(ValueError):
    """A value the store cannot write (not JSON-compatible, out of range)."""


def _default(obj: Any) -> Any:
    to_unix = getattr(obj, "to_unix", None)  # msgpack.Timestamp, without importing msgpack
    if to_unix is not None and type(obj).__module__.startswith("msgpack"):
        return to_unix()
    return json_default(obj)  # bytes as base64, as messages carry them


def place(where: str, *names: Any) -> str:
    """``where % names``, each name shown short (built only once something failed)."""
    return where % tuple(show(n) for n in names)


def to_json(value: Any, where: str, *names: Any) -> bytes:
    """``value`` as JSON bytes; ``UnstorableValue`` naming ``place(where, *names)`` when it
    has no form (the place is formatted only then: this runs once per message)."""
    try:
        # an exact-size copy: orjson's result holds ~4 KB whatever its length, and a
        # backlog of thousands of queued writes (a reconnect) kept ~20 MB resident
        return memoryview(orjson.dumps(value, default=_default)).tobytes()
    except TypeError as err:  # orjson.JSONEncodeError is a TypeError
        raise UnstorableValue(f"{place(where, *names)}: cannot be stored as JSON: {err}") from err


def show(value: Any) -> str:
    """A short ``repr`` for error messages: bounded length and depth, whatever the value."""
    return reprlib.repr(value)


def timestamp(ts: float | None, where: str, *names: Any) -> float:
    """``ts`` as a finite float (``None``: now); else ``UnstorableValue`` naming the place.

    An ``int`` of 2**63 or more (msgpack and JSON carry up to 2**64-1; SQLite's INTEGER
    stops at 2**63-1) becomes a float here: SQLite would refuse it, and with it the whole
    op it came in.
    """
    if ts is None:
        return time.time()
    try:
        t = float(ts)
    except (TypeError, ValueError, OverflowError):
        t = math.nan
    if not math.isfinite(t):
        raise UnstorableValue(f"{place(where, *names)}: ts {show(ts)} is not a finite number")
    return t
