"""Conditions shared by RouteNode and FilterNode (Node-RED switch-like operators)."""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

from mechaway.nodes.base import Message, get_path, split_path

Op = Literal[
    "eq",
    "neq",
    "lt",
    "lte",
    "gt",
    "gte",
    "between",
    "contains",
    "regex",
    "true",
    "false",
    "null",
    "nnull",
    "exists",
    "else",
]
Predicate = Callable[[Message], bool]

_MISSING = object()


class Condition(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """``property`` (a dotted path into the message) compared by ``op`` with ``value``."""

    property: Annotated[
        str, Meta(description="dotted path into the message, e.g. payload.temp")
    ] = "payload"
    op: Annotated[
        Op,
        Meta(
            description="eq, neq, lt, lte, gt, gte (numbers), between (value..value2), "
            "contains, regex, true, false, null, nnull, exists; else always matches"
        ),
    ]
    value: Annotated[
        Any,
        Meta(
            description="compared with the property: a number for lt..gte and between, a "
            "string for regex (checked at deploy)"
        ),
    ] = None
    value2: Annotated[Any, Meta(description="the other end of a between range")] = None

    def __post_init__(self) -> None:
        if self.op in ("lt", "lte", "gt", "gte") and not _is_num(self.value):
            raise ValueError(f"op {self.op!r} needs a numeric value")
        if self.op == "between" and not (_is_num(self.value) and _is_num(self.value2)):
            raise ValueError("op 'between' needs numeric value and value2")
        if self.op == "regex":
            if not isinstance(self.value, str):
                raise ValueError("op 'regex' needs a string value")
            try:
                re.compile(self.value)
            except (re.error, OverflowError, RecursionError) as err:  # a{2**32}, ((((...
                raise ValueError(f"bad regex: {err}") from err


def _is_num(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def compile_condition(c: Condition) -> Predicate:
    """A fast predicate for one condition; a missing property never matches (but ``else``).

    A property of one or two keys (``payload``, ``payload.temp``: nearly every rule) gets a
    generated closure that looks the value up and tests it in its own body. On the
    per-message path each Python call costs ~2 µs with cold caches, far more than the work
    it does, so one call instead of four or five is what counts. Other paths use
    ``_generic_condition``, which the generated code agrees with exactly.
    """
    keys = split_path(c.property)
    if c.op == "else" or not 1 <= len(keys) <= 2:
        return _generic_condition(c)
    v, v2 = c.value, c.value2
    lo, hi = (min(v, v2), max(v, v2)) if c.op == "between" else (None, None)
    search = re.compile(v).search if c.op == "regex" else None
    # ``contains``: a str is looked for in a string, a list or an object's keys, anything
    # else only in a list
    within = (str, list, dict) if isinstance(v, str) else (list,)
    k1, k2 = keys if len(keys) == 2 else (keys[0], None)
    return _factory(c.op, len(keys))(k1, k2, v, lo, hi, search, within)


# ``x`` is the property's value; a missing property (KeyError, IndexError, TypeError on the
# way, exactly where ``get_path`` gives up) returns False before the test runs.
_NUM = (
    "((t := type(x)) is int or t is float or (isinstance(x, _NUMBER) and not isinstance(x, bool)))"
)
_TESTS: dict[str, str] = {
    "eq": "x == v",
    "neq": "x != v",
    "lt": f"{_NUM} and x < v",
    "lte": f"{_NUM} and x <= v",
    "gt": f"{_NUM} and x > v",
    "gte": f"{_NUM} and x >= v",
    "between": f"{_NUM} and lo <= x <= hi",
    "contains": "isinstance(x, within) and v in x",
    "regex": "isinstance(x, str) and search(x) is not None",
    "true": "x is True",
    "false": "x is False",
    "null": "x is None",
    "nnull": "x is not None",
    "exists": "True",
}
_LOOKUPS = {1: "msg[k1]", 2: "msg[k1][k2]"}
_TEMPLATE = """\
def make(k1, k2, v, lo, hi, search, within):
    def {op}_{n}(msg):
        try:
            x = {lookup}
        except (KeyError, IndexError, TypeError):
            return False
        return {test}
    return {op}_{n}
"""


@functools.cache
def _factory(op: str, n: int) -> Callable[..., Predicate]:
    """``make(k1, k2, v, lo, hi, search, within)`` -> the predicate for ``op`` on ``n`` keys."""
    src = _TEMPLATE.format(op=op, n=n, lookup=_LOOKUPS[n], test=_TESTS[op])
    namespace: dict[str, Any] = {"_NUMBER": (int, float)}
    exec(compile(src, f"<condition {op}>", "exec"), namespace)
    make: Callable[..., Predicate] = namespace["make"]
    return make


def _generic_condition(c: Condition) -> Predicate:
    """The predicate for any path (the reference the generated predicates agree with)."""
    keys = split_path(c.property)
    v, v2 = c.value, c.value2

    def get(msg: Message) -> Any:
        return get_path(msg, keys, _MISSING)

    def num(x: Any) -> bool:
        return isinstance(x, int | float) and not isinstance(x, bool)

    op = c.op
    if op == "else":
        return lambda msg: True
    if op == "eq":
        return lambda msg: get(msg) == v
    if op == "neq":
        return lambda msg: (x := get(msg)) is not _MISSING and x != v
    if op == "gt":
        return lambda msg: num(x := get(msg)) and x > v
    if op == "gte":
        return lambda msg: num(x := get(msg)) and x >= v
    if op == "lt":
        return lambda msg: num(x := get(msg)) and x < v
    if op == "lte":
        return lambda msg: num(x := get(msg)) and x <= v
    if op == "between":
        lo, hi = min(v, v2), max(v, v2)
        return lambda msg: num(x := get(msg)) and lo <= x <= hi
    if op == "contains":
        # a substring of a string, an element of a list, a key of an object; any other
        # combination (``2 in "abc"``, an unhashable key) is a non-match, not an error
        def contains(msg: Message) -> bool:
            x = get(msg)
            if isinstance(x, str):
                return isinstance(v, str) and v in x
            if isinstance(x, list):
                return v in x
            if isinstance(x, dict):
                return isinstance(v, str) and v in x
            return False

        return contains
    if op == "regex":
        rx = re.compile(v)
        return lambda msg: isinstance(x := get(msg), str) and rx.search(x) is not None
    if op == "true":
        return lambda msg: get(msg) is True
    if op == "false":
        return lambda msg: get(msg) is False
    if op == "null":
        return lambda msg: get(msg) is None
    if op == "nnull":
        return lambda msg: (x := get(msg)) is not None and x is not _MISSING
    return lambda msg: get(msg) is not _MISSING  # exists
