"""Pure transform nodes: JSONTransform, Route, Change, Filter, Deadband."""

from __future__ import annotations

import json
import math
import reprlib
from collections.abc import Callable
from typing import Annotated, Any, ClassVar, Literal

import msgspec
from msgspec import Meta

from mechaway.nodes.base import Message, Node, NodeParams, Result, get_path, split_path
from mechaway.nodes.conditions import Condition, Predicate, compile_condition
from mechaway.nodes.context import NodeContext
from mechaway.nodes.registry import register_node

Getter = Callable[[Any], Any]


# -- JSONPath --------------------------------------------------------------------------------
def compile_jsonpath(expr: str) -> Getter:
    """Compile a JSONPath (via jsonpath-ng). Plain ``$.a.b[0]`` paths become direct lookups
    (a value, or ``None`` when absent); any other expression yields the list of matches.

    Raises ``ValueError`` with the parser's message on a bad expression.
    """
    from jsonpath_ng import jsonpath as jp
    from jsonpath_ng.ext.parser import parse

    try:
        tree = parse(expr)
    except Exception as err:  # jsonpath-ng raises bare Exception/JsonPathLexerError
        raise ValueError(f"bad JSONPath {expr!r}: {err}") from err

    def simple(node: Any) -> tuple[str | int, ...] | None:
        if isinstance(node, jp.Root):
            return ()
        if isinstance(node, jp.Child):
            left, right = simple(node.left), simple(node.right)
            return None if left is None or right is None else left + right
        if isinstance(node, jp.Fields) and len(node.fields) == 1 and node.fields[0] != "*":
            return (node.fields[0],)
        if isinstance(node, jp.Index) and len(node.indices) == 1:
            return (node.indices[0],)
        return None

    keys = simple(tree)
    if keys is not None:
        return lambda obj: get_path(obj, keys)

    def find(obj: Any) -> Any:
        # a wildcard, filter, slice or descent yields a list, however many matched, so the
        # output's shape does not depend on the data
        return [m.value for m in tree.find(obj)]

    return find


def _split_top(text: str) -> list[str]:
    """Split on commas that are not inside brackets, braces, parens or quotes."""
    parts: list[str] = []
    depth = 0
    quote = ""
    cur: list[str] = []
    for ch in text:
        if quote:
            cur.append(ch)
            if ch == quote:
                quote = ""
            continue
        if ch in "'\"":
            quote = ch
        elif ch in "[({":
            depth += 1
        elif ch in "])}":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append("".join(cur))
            cur = []
            continue
        cur.append(ch)
    if quote or depth:
        raise ValueError("unbalanced quotes or brackets")
    parts.append("".join(cur))
    return [p.strip() for p in parts if p.strip()]


def parse_map(spec: str | dict[str, str]) -> dict[str, str]:
    """The seed's map syntax ``{id=$.id, score=$.score}`` (or a dict) -> ``{key: expr}``."""
    if isinstance(spec, dict):
        return dict(spec)
    text = spec.strip()
    if not (text.startswith("{") and text.endswith("}")):
        raise ValueError("map must look like {key=$.path, ...}")
    out: dict[str, str] = {}
    for part in _split_top(text[1:-1]):
        key, sep, expr = part.partition("=")
        key = key.strip()
        if not sep or not key.isidentifier():
            raise ValueError(f"map entry {part!r} must be key=expression")
        if key in out:
            raise ValueError(f"map key {key!r} appears twice")
        out[key] = expr.strip()
    if not out:
        raise ValueError("map is empty")
    return out


def compile_expr(expr: str) -> Getter:
    """A ``$...`` JSONPath, or a JSON literal (number, "string", true, false, null)."""
    if expr.startswith("$"):
        return compile_jsonpath(expr)
    try:
        value = json.loads(expr)
    except ValueError as err:
        raise ValueError(f"{expr!r} is neither a JSONPath ($...) nor a JSON literal") from err
    return lambda obj: value


class JSONTransformParams(NodeParams):
    map: Annotated[
        str | dict[str, str],
        Meta(
            description="the new payload: {key=EXPR, ...} or an object of key: EXPR; EXPR is "
            "a JSONPath ($.a.b[0]) or a JSON literal (checked at deploy)"
        ),
    ]
    root: Annotated[
        Literal["payload", "message"],
        Meta(description="what $ refers to: the message payload, or the whole message"),
    ] = "payload"


@register_node("JSONTransformNode")
class JSONTransformNode(Node[JSONTransformParams]):
    """Build a new payload from JSONPath expressions: ``{id=$.id, score=$.score}``."""

    @classmethod
    def check(cls, params: JSONTransformParams) -> list[str]:
        try:
            for expr in parse_map(params.map).values():
                compile_expr(expr)
        except ValueError as err:
            return [f"map: {err}"]
        return []

    def __init__(self, node_id: str, params: JSONTransformParams, ctx: NodeContext) -> None:
        super().__init__(node_id, params, ctx)
        self._fields = tuple((k, compile_expr(e)) for k, e in parse_map(params.map).items())
        self._whole = params.root == "message"

    def process(self, msg: Message) -> Result:
        src = msg if self._whole else msg.get("payload")
        return {**msg, "payload": {k: get(src) for k, get in self._fields}}


class Rule(Condition):
    """A condition and the port a matching message goes to."""

    port: Annotated[
        str,
        Meta(
            min_length=1,
            description="the output port a matching message goes to (not error; rules may "
            "share a port)",
        ),
    ]

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.port == "error":
            raise ValueError("port 'error' is reserved for failures")


class RouteParams(NodeParams):
    rules: Annotated[
        list[Rule],
        Meta(min_length=1, description="conditions tried in order, each naming its port"),
    ]
    mode: Annotated[
        Literal["first", "all"],
        Meta(
            description="first: stop at the first matching rule (Node-RED's 'stop after first "
            "match'); all: send to every matching rule's port"
        ),
    ] = "first"


@register_node("RouteNode")
class RouteNode(Node[RouteParams]):
    """Send each message to the port of the first (or every) matching rule, like a switch."""

    @classmethod
    def output_ports(cls, params: RouteParams) -> tuple[str, ...]:
        return tuple(dict.fromkeys(r.port for r in params.rules))

    def __init__(self, node_id: str, params: RouteParams, ctx: NodeContext) -> None:
        super().__init__(node_id, params, ctx)
        rules: list[Rule] = params.rules
        self._first = params.mode == "first"
        #: ``first`` mode: the rules before the first ``else`` (nothing after it is tried)
        #: and that ``else``'s port (it always matches: no call needed)
        self._rules: tuple[tuple[Predicate, str], ...] = ()
        self._else: str | None = None
        #: ``all`` mode: every rule, an ``else`` with None for its predicate
        self._every: tuple[tuple[Predicate | None, str], ...] = ()
        if self._first:
            cut = next((i for i, r in enumerate(rules) if r.op == "else"), len(rules))
            self._rules = tuple((compile_condition(r), r.port) for r in rules[:cut])
            self._else = rules[cut].port if cut < len(rules) else None
        else:
            self._every = tuple(
                (None if r.op == "else" else compile_condition(r), r.port) for r in rules
            )

    def process(self, msg: Message) -> Result:
        # loops, not comprehensions: on Python 3.11 a comprehension is one more call
        if self._first:
            for pred, port in self._rules:
                if pred(msg):
                    return [(port, msg)]
            return None if self._else is None else [(self._else, msg)]
        out: list[tuple[str, Message]] = []
        for maybe, port in self._every:
            if maybe is None or maybe(msg):
                out.append((port, msg))
        return out or None


class FilterParams(Condition, NodeParams):
    """The condition a message must meet to pass."""


@register_node("FilterNode")
class FilterNode(Node[FilterParams]):
    """Pass messages whose ``property`` matches the condition; drop the rest."""

    def __init__(self, node_id: str, params: FilterParams, ctx: NodeContext) -> None:
        super().__init__(node_id, params, ctx)
        self._pred = compile_condition(params)
        #: messages held back by the condition (shown in status: a filter that passes
        #: nothing is visible, not silent)
        self.suppressed = 0

    def process(self, msg: Message) -> Result:
        if self._pred(msg):
            return msg
        self.suppressed += 1
        return None

    def status(self) -> dict[str, Any] | None:
        return {"suppressed": self.suppressed}


class ChangeRule(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """``set`` path to ``value`` (or to the value at ``from``); ``delete`` path; ``move``."""

    op: Annotated[
        Literal["set", "delete", "move"],
        Meta(
            description="set: path to value (or to the value at from); delete: path; "
            "move: the value at from to path"
        ),
    ]
    path: Annotated[
        str, Meta(description="dotted path of the field changed, e.g. payload.temp or topic")
    ]
    value: Annotated[Any, Meta(description="the value set (op set without from)")] = None
    from_: Annotated[
        str | None,
        Meta(description="dotted path the value is read from (needed by op move)"),
    ] = msgspec.field(default=None, name="from")

    def __post_init__(self) -> None:
        if not split_path(self.path):
            raise ValueError("path must not be empty")
        if self.op == "move" and not self.from_:
            raise ValueError("op 'move' needs 'from'")
        if self.from_ is not None and not split_path(self.from_):
            raise ValueError(f"from {self.from_!r} names no field")


class ChangeParams(NodeParams):
    rules: Annotated[list[ChangeRule], Meta(description="changes applied in order")]


def _copy_to(msg: dict[str, Any], keys: tuple[str | int, ...]) -> tuple[Any, str | int] | None:
    """Copy the containers along ``keys[:-1]`` (copy-on-write); return (parent, last key)."""
    parent: Any = msg
    for k in keys[:-1]:
        child = parent.get(k) if isinstance(parent, dict) else None
        if isinstance(child, dict):
            child = dict(child)
        elif isinstance(child, list):
            child = list(child)
        elif child is None and isinstance(parent, dict):
            child = {}
        else:
            return None
        parent[k] = child
        parent = child
    return parent, keys[-1]


def _set(msg: dict[str, Any], keys: tuple[str | int, ...], value: Any) -> None:
    found = _copy_to(msg, keys)
    if found is None:
        return
    parent, last = found
    if isinstance(parent, dict) or (isinstance(last, int) and -len(parent) <= last < len(parent)):
        parent[last] = value


def _delete(msg: dict[str, Any], keys: tuple[str | int, ...]) -> None:
    found = _copy_to(msg, keys)
    if found is None:
        return
    parent, last = found
    if isinstance(parent, dict):
        parent.pop(last, None)
    elif isinstance(last, int) and -len(parent) <= last < len(parent):
        del parent[last]


_ABSENT = object()

#: rules ChangeNode.process runs in its own body: set (a value) or delete one or two keys
_SET1, _DELETE1, _SET2, _DELETE2 = range(4)
#: any other rule (``from``, ``move``, a longer path) goes through ``_apply_rule``
_GENERIC = 4
GenericRule = tuple[str, tuple[str | int, ...], tuple[str | int, ...] | None, Any]


def _generic_rule(r: ChangeRule) -> GenericRule:
    """``(op, keys, from keys or None, value)``: a rule as ``_apply_rule`` takes it."""
    return (r.op, split_path(r.path), split_path(r.from_) if r.from_ else None, r.value)


def _apply_rule(
    out: Message,
    op: str,
    keys: tuple[str | int, ...],
    src: tuple[str | int, ...] | None,
    value: Any,
) -> None:
    """Apply one rule to ``out`` (a copy of the message), copying what it changes."""
    if op == "set":
        _set(out, keys, get_path(out, src) if src else value)
    elif op == "delete":
        _delete(out, keys)
    else:
        assert src is not None
        v = get_path(out, src, _ABSENT)
        if v is not _ABSENT:
            _delete(out, src)
            _set(out, keys, v)


def _apply_rules_generic(msg: Message, rules: tuple[GenericRule, ...]) -> Message:
    """Every rule through ``_apply_rule`` (the reference ``ChangeNode.process`` agrees with)."""
    out = dict(msg)
    for rule in rules:
        _apply_rule(out, *rule)
    return out


@register_node("ChangeNode")
class ChangeNode(Node[ChangeParams]):
    """Set, delete or move message fields (copy-on-write: the input is never mutated)."""

    def __init__(self, node_id: str, params: ChangeParams, ctx: NodeContext) -> None:
        super().__init__(node_id, params, ctx)
        steps: list[tuple[int, Any, Any, Any, GenericRule]] = []
        for r in params.rules:
            rule = _generic_rule(r)
            op, keys, src, value = rule
            if op == "delete" and len(keys) <= 2:
                kind = _DELETE1 if len(keys) == 1 else _DELETE2
            elif op == "set" and not src and len(keys) <= 2:
                kind = _SET1 if len(keys) == 1 else _SET2
            else:
                kind = _GENERIC
            steps.append((kind, keys[0], keys[-1], value, rule))
        self._steps = tuple(steps)

    def process(self, msg: Message) -> Result:
        """The rules on a copy of ``msg``, in one call for the common rules.

        Each Python call costs ~2 µs with cold caches on the per-message path, so
        set/delete on paths of one or two keys run here rather than through ``_apply_rule``
        (which they agree with exactly), and the container at a path's first key is copied
        once per message rather than once per rule.
        """
        out = dict(msg)
        mine: dict[str | int, Any] = {}  # first key -> the container this call put there
        for kind, k1, k2, value, rule in self._steps:
            if kind == _SET1:
                out[k1] = value
            elif kind == _DELETE1:
                out.pop(k1, None)
            elif kind == _GENERIC:
                _apply_rule(out, *rule)
                mine.clear()  # a ``from`` may have put one of them in a second place
            else:  # _SET2, _DELETE2: what ``_copy_to`` does for one level, then the change
                c = out.get(k1)
                if mine.get(k1, _ABSENT) is not c:
                    if isinstance(c, dict):
                        c = dict(c)
                    elif isinstance(c, list):
                        c = list(c)
                    elif c is None:
                        c = {}
                    else:
                        continue  # a path through a scalar changes nothing
                    out[k1] = mine[k1] = c
                if isinstance(c, dict):
                    if kind == _SET2:
                        c[k2] = value
                    else:
                        c.pop(k2, None)
                elif isinstance(k2, int) and -len(c) <= k2 < len(c):
                    if kind == _SET2:
                        c[k2] = value
                    else:
                        del c[k2]
        return out


class DeadbandParams(NodeParams):
    property: Annotated[str, Meta(description="dotted path of the numeric value watched")] = (
        "payload"
    )
    band: Annotated[
        float,
        Meta(ge=0, description="pass when |value - last passed value| >= band (absolute units)"),
    ] = 0.0
    percent: Annotated[
        Annotated[float, Meta(ge=0)] | None,
        Meta(
            description="or: pass when the change is >= this percentage of the last passed "
            "value (set, it replaces band)",
        ),
    ] = None
    key: Annotated[
        Literal["topic", "none"],
        Meta(description="keep a last value per message topic (topic), or one for all (none)"),
    ] = "topic"
    persist: Annotated[
        bool, Meta(description="the last passed values survive restarts (node context)")
    ] = False
    max_keys: Annotated[
        int,
        Meta(
            ge=1,
            description="most topics remembered; past it the least recently seen is forgotten "
            "(counted) and its next value passes as a first one (topics come from outside: "
            "memory stays bounded)",
        ),
    ] = 10_000


@register_node("DeadbandNode")
class DeadbandNode(Node[DeadbandParams]):
    """Report by exception: pass a value only when it moved past the deadband."""

    stateful: ClassVar[bool] = True

    def __init__(self, node_id: str, params: DeadbandParams, ctx: NodeContext) -> None:
        super().__init__(node_id, params, ctx)
        self._keys = split_path(params.property)
        #: topic -> last passed value, least recently seen first
        self._last: dict[str, float] = {}
        self.evicted = 0
        #: values held back inside the band
        self.suppressed = 0

    def process(self, msg: Message) -> Result:
        v = get_path(msg, self._keys)
        if not isinstance(v, int | float) or isinstance(v, bool) or not math.isfinite(v):
            # NaN compares false with everything: it would pass, then block nothing
            what = "a finite number" if isinstance(v, float) else "a number"
            raise ValueError(f"{self.params.property} is not {what}: {reprlib.repr(v)}")
        if self.params.key == "topic":
            k = msg.get("topic", "")
            if type(k) is not str:
                k = str(k) if isinstance(k, int | float) else reprlib.repr(k)
        else:
            k = ""
        last_seen = self._last
        last = last_seen.pop(k, None)
        if last is not None:
            p = self.params
            delta = abs(v - last)
            if p.percent is not None:
                if (last == 0 and v == 0) or (last != 0 and delta * 100.0 / abs(last) < p.percent):
                    last_seen[k] = last
                    self.suppressed += 1
                    return None
            elif delta < p.band or (p.band == 0 and delta == 0):
                last_seen[k] = last
                self.suppressed += 1
                return None
        elif len(last_seen) >= self.params.max_keys:
            del last_seen[next(iter(last_seen))]
            self.evicted += 1
        last_seen[k] = float(v)
        return msg

    def status(self) -> dict[str, Any] | None:
        return {"keys": len(self._last), "evicted": self.evicted, "suppressed": self.suppressed}

    def get_state(self) -> Any:
        return dict(self._last)

    def set_state(self, state: Any) -> None:
        if isinstance(state, dict):
            last = {
                str(k): float(v)
                for k, v in state.items()
                if isinstance(v, int | float) and math.isfinite(v)
            }
            cap = self.params.max_keys  # a smaller cap than the saved state's: newest kept
            self._last = dict(list(last.items())[-cap:])
