"""The hot-path specialisations of conditions, RouteNode and ChangeNode agree exactly with
the generic code they stand in for (hypothesis), and make as few Python calls as promised.

On the per-message path each Python call costs ~2 µs with cold caches, so a one- or
two-key path is looked up and tested in one generated closure (``compile_condition``) and
ChangeNode runs its set/delete rules in ``process`` itself. The generic code
(``_generic_condition``, ``_apply_rules_generic``) is the reference.
"""

from __future__ import annotations

import copy
import sys
from collections.abc import Callable
from typing import Any, get_args

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mechaway.nodes.base import Node, split_path
from mechaway.nodes.conditions import Condition, Op, _generic_condition, compile_condition
from mechaway.nodes.context import NodeContext, Services
from mechaway.nodes.transform import (
    ChangeNode,
    ChangeParams,
    ChangeRule,
    RouteNode,
    _apply_rules_generic,
    _generic_rule,
)


def examples(n: int) -> settings:
    """``n`` examples, however long a slow machine takes."""
    return settings(max_examples=n, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# a small alphabet, so that random paths often find something
KEYS = ["payload", "a", "temp", "state"]
TEXT = st.sampled_from(["", "a", "ab", "temp", "xa", "b"]) | st.text(max_size=4)
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(-3, 40)
    | st.integers()
    | st.floats(-5, 40)
    | st.floats(allow_nan=False)
    | TEXT
)
JSON = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.sampled_from(KEYS), inner, max_size=4)
    ),
    max_leaves=8,
)
#: values next to the thresholds and types that the operators tell apart
EDGES = st.sampled_from(
    [None, True, False, 0, 1, -1, 1.0, 2.5, 30, 30.0, 31, "", "a", "ab", "temp", [], {}]
)
OPS: tuple[str, ...] = get_args(Op)
ANY_OP = st.sampled_from(OPS)
MESSAGES = st.dictionaries(st.sampled_from(KEYS), JSON, max_size=4)
INDEXES = [-3, -2, -1, 0, 1, 2, 3]
KEY = st.sampled_from([*KEYS, *KEYS, *INDEXES])
#: a message never has an int key, so a path mostly starts with a name
FIRST_KEY = st.sampled_from([*KEYS, *KEYS, *KEYS, -1, 0, 1])
PATHS = st.integers(1, 3).flatmap(lambda n: st.tuples(FIRST_KEY, *[KEY] * (n - 1)))
NUMBERS = st.integers(-3, 40) | st.floats(-5, 40)


def nest(keys: tuple[str | int, ...], leaf: Any, pad: int) -> Any:
    """A value where ``keys`` lead to ``leaf``: lists are ``pad`` longer than the index
    needs (``pad == -1``: one too short, the index is out of range)."""
    for k in reversed(keys):
        if isinstance(k, int):
            items: list[Any] = [None] * (max(k + 1, -k) + pad)
            if -len(items) <= k < len(items):
                items[k] = leaf
            leaf = items
        else:
            leaf = {k: leaf}
    return leaf


@st.composite
def messages(
    draw: st.DrawFn,
    paths: list[tuple[str | int, ...]],
    leaves: st.SearchStrategy[Any] = JSON | EDGES,
) -> dict[str, Any]:
    """A random message in which some of ``paths`` (or a prefix: then the rest of the path
    crosses whatever ``leaves`` gave) lead to a value; the others may be missing."""
    msg = draw(MESSAGES)
    for keys in paths:
        how = draw(st.sampled_from(["path", "path", "prefix", "random"]))
        if how != "random" and isinstance(keys[0], str):
            prefix = keys if how == "path" else keys[: draw(st.integers(1, len(keys)))]
            msg = {**msg, **nest(prefix, draw(leaves), draw(st.integers(-1, 2)))}
    return msg


def path_text(keys: tuple[str | int, ...]) -> str:
    """``("payload", 1, "a")`` -> ``"payload[1].a"`` (what ``split_path`` reads back)."""
    text = "".join(f"[{k}]" if isinstance(k, int) else f".{k}" for k in keys).lstrip(".")
    assert split_path(text) == keys
    return text


def exact(x: Any) -> Any:
    """``x`` with types and dict key order made part of equality (1 != 1.0 != True)."""
    if isinstance(x, dict):
        return ("dict", [(exact(k), exact(v)) for k, v in x.items()])
    if isinstance(x, list):
        return ("list", [exact(v) for v in x])
    return (type(x).__name__, x)


def outcome(f: Callable[[Any], Any], arg: Any) -> Any:
    """The exact result of ``f(arg)``, or the type of what it raised."""
    try:
        return exact(f(arg))
    except Exception as exc:
        return ("raised", type(exc))


def ctx() -> NodeContext:
    return NodeContext("f", "n", Services())


def build(cls: type[Node], params: dict[str, Any]) -> Any:
    return cls("n", msgspec.convert(params, cls.Params), ctx())


# -- conditions -------------------------------------------------------------------------------
@st.composite
def conditions(draw: st.DrawFn, ops: st.SearchStrategy[str] = ANY_OP) -> Condition:
    op = draw(ops)
    value: Any = None
    value2: Any = None
    if op in ("lt", "lte", "gt", "gte"):
        value = draw(NUMBERS)
    elif op == "between":
        value, value2 = draw(NUMBERS), draw(NUMBERS)
    elif op == "regex":
        value = draw(st.sampled_from(["", "^a", "b$", "a.?b", "temp"]))
    elif op in ("eq", "neq", "contains"):
        value = draw(st.one_of(EDGES, TEXT, JSON))
    prop = path_text(draw(PATHS))
    return Condition(property=prop, op=op, value=value, value2=value2)


@pytest.mark.parametrize("op", OPS)
@examples(80)
@given(data=st.data())
def test_compiled_condition_equals_the_generic_one(op: str, data: st.DataObject) -> None:
    c = data.draw(conditions(st.just(op)))
    v = c.value
    near: list[Any] = [v, [1, v], True, False, None]  # values the operator tells apart
    if isinstance(v, str):
        near += [{v: 1}, f"x{v}x", v[:1]]
    elif isinstance(v, int | float) and not isinstance(v, bool):
        near += [c.value2, v - 1, v + 1, float(v), int(v)]
    leaves = st.sampled_from(near) | JSON | EDGES
    msg = data.draw(messages([split_path(c.property)], leaves))
    before = copy.deepcopy(msg)
    assert outcome(compile_condition(c), msg) == outcome(_generic_condition(c), msg)
    assert exact(msg) == exact(before)


@pytest.mark.parametrize(
    ("cond", "payload"),
    [
        ({"op": "contains", "value": "a"}, {"a": 1}),
        ({"op": "contains", "value": 1}, {"1": 1}),
        ({"op": "contains", "value": "a"}, ["a"]),
        ({"op": "contains", "value": "a"}, "xax"),
        ({"op": "gt", "value": 0}, True),
        ({"op": "between", "value": 30, "value2": 0}, 30.0),
        ({"op": "neq", "value": None}, None),
        ({"op": "eq", "value": 1}, 1.0),
        ({"property": "payload[-2]", "op": "eq", "value": 1}, [1, 2]),
        ({"property": "payload[-3]", "op": "exists"}, [1, 2]),
        ({"property": "payload[0]", "op": "eq", "value": "x"}, "xy"),
        ({"property": "payload.a", "op": "exists"}, "a"),
        ({"property": "payload.a", "op": "null"}, {"a": None}),
        ({"property": "payload", "op": "nnull"}, None),
    ],
)
def test_condition_edge_cases(cond: dict[str, Any], payload: Any) -> None:
    c = msgspec.convert(cond, Condition)
    for msg in ({"payload": payload}, {"topic": "t"}, {"payload": {"payload": payload}}):
        assert outcome(compile_condition(c), msg) == outcome(_generic_condition(c), msg)


@given(st.sampled_from(OPS), PATHS)
def test_short_paths_get_one_generated_closure(op: str, keys: tuple[str | int, ...]) -> None:
    value = 1 if op in ("lt", "lte", "gt", "gte", "between") else "a"
    c = msgspec.convert(
        {"property": path_text(keys), "op": op, "value": value, "value2": 2}, Condition
    )
    generated = compile_condition(c).__code__.co_filename.startswith("<condition")
    assert generated == (op != "else" and len(keys) <= 2)


# -- RouteNode --------------------------------------------------------------------------------
RULES = st.lists(st.tuples(conditions(), st.sampled_from(["p", "q", "r"])), min_size=1, max_size=4)


@examples(200)
@given(RULES, st.sampled_from(["first", "all"]), st.data())
def test_route_equals_the_generic_rules(
    rules: list[tuple[Condition, str]], mode: str, data: st.DataObject
) -> None:
    msg = data.draw(messages([split_path(c.property) for c, _ in rules]))
    node = build(
        RouteNode,
        {"mode": mode, "rules": [{**msgspec.to_builtins(c), "port": p} for c, p in rules]},
    )
    matching = [(p, msg) for c, p in rules if _generic_condition(c)(msg)]
    expected = matching[:1] if mode == "first" else matching
    got = node.process(msg)
    assert got == (expected or None)
    assert all(m is msg for _, m in got or ())


# -- ChangeNode -------------------------------------------------------------------------------
#: mostly a few paths, so that rules often meet on the same containers
CHANGE_PATHS = st.one_of(
    st.sampled_from([("payload",), ("a",), ("payload", "a"), ("payload", "b"), ("a", "b")]),
    st.sampled_from([("payload", 0), ("payload", -1), ("payload", 2), ("payload", -3)]),
    PATHS,
)


@st.composite
def change_rules(draw: st.DrawFn) -> ChangeRule:
    op = draw(st.sampled_from(["set", "set", "delete", "move"]))
    path = path_text(draw(CHANGE_PATHS))
    # ``delete`` ignores a ``from``
    src = draw(CHANGE_PATHS if op == "move" else st.one_of(st.none(), CHANGE_PATHS))
    value = draw(JSON) if op == "set" else None
    return ChangeRule(op=op, path=path, value=value, from_=path_text(src) if src else None)


@examples(400)
@given(st.lists(change_rules(), min_size=1, max_size=6), st.data())
def test_change_equals_the_generic_rules_and_never_mutates(
    rules: list[ChangeRule], data: st.DataObject
) -> None:
    paths = [split_path(p) for r in rules for p in (r.path, r.from_) if p]
    msg = data.draw(messages(paths))
    values = copy.deepcopy([r.value for r in rules])
    node = ChangeNode("n", ChangeParams(rules=rules), ctx())
    reference = tuple(_generic_rule(r) for r in rules)
    before = copy.deepcopy(msg)
    for _ in range(2):  # the second message must not see what the first one changed
        got = outcome(node.process, msg)
        assert exact(msg) == exact(before)
        assert got == outcome(lambda m: _apply_rules_generic(m, reference), msg)
        assert exact(msg) == exact(before)
    assert [r.value for r in rules] == values  # nor are the rules' values ever changed


@pytest.mark.parametrize(
    ("rules", "msg"),
    [
        ([{"op": "set", "path": "payload[-3]", "value": 9}], {"payload": [1, 2, 3]}),
        ([{"op": "delete", "path": "payload[-3]"}], {"payload": [1, 2, 3]}),
        ([{"op": "set", "path": "payload[-4]", "value": 9}], {"payload": [1, 2, 3]}),
        ([{"op": "delete", "path": "payload[3]"}], {"payload": [1, 2, 3]}),
        ([{"op": "set", "path": "payload.a", "value": 9}], {"payload": [1]}),
        ([{"op": "delete", "path": "payload.a"}], {"payload": "text"}),
        ([{"op": "delete", "path": "payload.a"}], {"payload": None}),
        ([{"op": "delete", "path": "payload.a"}], {"topic": "t"}),
        ([{"op": "set", "path": "[0]", "value": 1}, {"op": "delete", "path": "[1].a"}], {}),
        (
            [
                {"op": "set", "path": "payload", "value": {"a": 1}},
                {"op": "set", "path": "payload.b", "value": 2},
            ],
            {"payload": {"c": 3}},
        ),
        (
            [
                {"op": "move", "path": "payload.b", "from": "payload.a"},
                {"op": "delete", "path": "payload.a"},
            ],
            {"payload": {"a": {"x": 1}}},
        ),
    ],
)
def test_change_edge_cases(rules: list[dict[str, Any]], msg: dict[str, Any]) -> None:
    node = build(ChangeNode, {"rules": rules})
    before = copy.deepcopy(msg)
    out = node.process(msg)
    assert exact(msg) == exact(before)
    reference = tuple(_generic_rule(r) for r in node.params.rules)
    assert exact(out) == exact(_apply_rules_generic(msg, reference))
    assert exact(node.process(msg)) == exact(out)


def test_change_copies_a_container_again_once_a_from_shared_it() -> None:
    node = build(
        ChangeNode,
        {
            "rules": [
                {"op": "set", "path": "payload.state", "value": "on"},
                {"op": "delete", "path": "payload.temp"},
                {"op": "set", "path": "copy", "from": "payload"},
                {"op": "set", "path": "payload.after", "value": 1},
            ]
        },
    )
    inp = {"payload": {"temp": 25, "seq": 1}, "topic": "t"}
    out = node.process(inp)
    assert inp == {"payload": {"temp": 25, "seq": 1}, "topic": "t"}
    # ``copy`` is the payload as it was when copied: the later set did not change it
    assert out == {
        "payload": {"seq": 1, "state": "on", "after": 1},
        "topic": "t",
        "copy": {"seq": 1, "state": "on"},
    }


# -- calls per message ------------------------------------------------------------------------
BENCH_MSG = {
    "payload": {"seq": 1, "t": 2, "temp": 25},
    "topic": "bench/in",
    "qos": 0,
    "retain": False,
    "ts": 1.0,
}


def python_calls(f: Callable[[Any], Any], arg: Any) -> tuple[int, Any]:
    """How many Python frames ``f(arg)`` runs (C functions are not counted), and its result."""
    calls = 0

    def profile(frame: Any, event: str, _: Any) -> None:
        nonlocal calls
        if event == "call":
            calls += 1

    sys.setprofile(profile)
    try:
        result = f(arg)
    finally:
        sys.setprofile(None)
    return calls, result


def test_benchmark_case_calls_per_message() -> None:
    """The builtin flow of benchmarks/mqtt_e2e.py: a route on ``payload.temp``, then a
    ChangeNode setting ``payload.state`` and deleting ``payload.temp``."""
    rules = [
        {"port": "on", "property": "payload.temp", "op": "gt", "value": 30},
        {"port": "off", "op": "else"},
    ]
    hot = {**BENCH_MSG, "payload": {**BENCH_MSG["payload"], "temp": 35}}
    for mode in ("first", "all"):
        route = build(RouteNode, {"rules": rules, "mode": mode})
        calls, result = python_calls(route.process, BENCH_MSG)
        assert calls <= 2  # process and the one generated predicate (``else`` needs none)
        assert result == [("off", BENCH_MSG)]
        calls, result = python_calls(route.process, hot)
        assert calls <= 2
        assert result == ([("on", hot)] if mode == "first" else [("on", hot), ("off", hot)])
    change = build(
        ChangeNode,
        {
            "rules": [
                {"op": "set", "path": "payload.state", "value": "on"},
                {"op": "delete", "path": "payload.temp"},
            ]
        },
    )
    calls, out = python_calls(change.process, BENCH_MSG)
    assert calls == 1  # process alone, copying ``payload`` once
    assert out == {**BENCH_MSG, "payload": {"seq": 1, "t": 2, "state": "on"}}
