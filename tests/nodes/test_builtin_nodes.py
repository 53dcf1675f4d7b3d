"""Every built-in node type driven through a tiny flow on the real Engine (Node-RED style).

Each test deploys a validated document ``src -> n -> CollectNode`` (or a source straight into
a sink), feeds it with ``engine.inject`` (or lets an InjectNode run) and asserts on what the
collecting sink wrote. Timing-based tests only assert on order and counts, with generous waits.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import math
from typing import Any

import pytest

from mechaway.errors import FlowError
from mechaway.flow.validate import validate
from mechaway.runtime.engine import Engine
from mechaway.testing.flows import (
    IDLE_SOURCE,
    deploy,
    doc,
    edge,
    got,
    node,
    payloads,
    settle,
    single,
    stats,
    wait_until,
)

pytestmark = pytest.mark.asyncio


def msg(payload: Any, topic: str = "t", **extra: Any) -> dict[str, Any]:
    return {"payload": payload, "topic": topic, "ts": 1.0, **extra}


async def feed(
    engine: Engine, fid: str, values: list[Any], nid: str = "n", topic: str = "t"
) -> None:
    for v in values:
        engine.inject(fid, nid, msg(v, topic))
    await settle(engine, fid)


# -- InjectNode -------------------------------------------------------------------------------
def inject_flow(fid: str, **params: Any) -> dict[str, Any]:
    return doc(
        fid,
        [node("inj", "InjectNode", **params), node("sink", "CollectNode")],
        [edge("inj", "sink")],
    )


async def test_inject_interval_emits_repeatedly(engine: Engine) -> None:
    await deploy(engine, inject_flow("f", interval=0.02, payload={"v": 1}, topic="tick"))
    await wait_until(lambda: len(got("f", "sink")) >= 5, what="5 interval messages")
    for m in got("f", "sink")[:5]:
        assert m["payload"] == {"v": 1}
        assert m["topic"] == "tick"
        assert isinstance(m["ts"], float)
    assert stats(engine, "f", "inj")["sent"] >= 5


async def test_inject_null_payload_sends_the_time(engine: Engine) -> None:
    await deploy(engine, inject_flow("f", once=True))
    await wait_until(lambda: got("f", "sink"), what="the once message")
    m = got("f", "sink")[0]
    assert m["payload"] == m["ts"]
    assert m["topic"] == ""


async def test_inject_once_fires_exactly_once(engine: Engine) -> None:
    await deploy(engine, inject_flow("f", once=True, payload="hello", topic="boot"))
    await wait_until(lambda: got("f", "sink"), what="the once message")
    await asyncio.sleep(0.3)
    assert payloads("f", "sink") == ["hello"]
    assert stats(engine, "f", "inj")["sent"] == 1


async def test_inject_once_delay_waits(engine: Engine) -> None:
    await deploy(engine, inject_flow("f", once=True, once_delay=0.5, payload=1))
    await asyncio.sleep(0.1)
    assert got("f", "sink") == []
    await wait_until(lambda: got("f", "sink"), what="the delayed once message")


async def test_inject_repeat_stops_after_n(engine: Engine) -> None:
    await deploy(engine, inject_flow("f", interval=0.01, repeat=3, payload="x"))
    await wait_until(lambda: len(got("f", "sink")) >= 3, what="3 messages")
    await asyncio.sleep(0.2)
    assert payloads("f", "sink") == ["x", "x", "x"]


async def test_inject_once_then_interval_counts_toward_repeat(engine: Engine) -> None:
    await deploy(engine, inject_flow("f", once=True, interval=0.01, repeat=2, payload=0))
    await wait_until(lambda: len(got("f", "sink")) >= 2, what="2 messages")
    await asyncio.sleep(0.2)
    assert len(got("f", "sink")) == 2


async def test_inject_cron_with_seconds_fires(engine: Engine) -> None:
    # six fields: the last one is seconds (croniter), so this fires every second
    await deploy(engine, inject_flow("f", cron="* * * * * *", payload="c"))
    await wait_until(lambda: got("f", "sink"), timeout=3.5, what="a cron message")
    assert payloads("f", "sink")[0] == "c"


@pytest.mark.parametrize(
    ("params", "needle"),
    [
        ({"cron": "not a cron"}, "not a valid cron expression"),
        ({"cron": "61 * * * *"}, "not a valid cron expression"),
        ({"cron": "0 0 30 2 *"}, "never fires (no such date)"),  # the task died at start
        ({"interval": 1, "cron": "* * * * *"}, "not both"),
        ({}, "set at least one of interval, cron, once"),
        ({"interval": 0}, "params.interval: expected `float` > 0.0"),
        ({"interval": -1}, "params.interval: expected `float` > 0.0"),
        ({"once": True, "repeat": -1}, "params.repeat: expected `int` >= 0"),
        ({"interval": "1s"}, "expected `float | null`, got `str`"),
    ],
)
async def test_inject_params_are_validated(params: dict[str, Any], needle: str) -> None:
    with pytest.raises(FlowError) as exc:
        validate(inject_flow("f", **params))
    text = str(exc.value)
    assert "nodes[0] (inj).params" in text
    assert needle in text


async def test_inject_valid_cron_validates() -> None:
    validate(inject_flow("f", cron="*/5 * * * *"))


async def test_inject_stops_with_its_flow(engine: Engine) -> None:
    await deploy(engine, inject_flow("f", interval=0.01))
    await wait_until(lambda: got("f", "sink"), what="a message")
    await engine.remove("f")
    n = len(got("f", "sink"))
    await asyncio.sleep(0.1)
    assert len(got("f", "sink")) == n


# -- JSONTransformNode ------------------------------------------------------------------------
READING = {
    "id": "s-17",
    "score": 0.93,
    "readings": [{"ok": True, "v": 1}, {"ok": False, "v": 2}, {"ok": True, "v": 3}],
    "tags": ["a", "b", "c"],
    "meta": {"site": {"name": "gh1"}},
}


async def test_jsontransform_seed_map_syntax(engine: Engine) -> None:
    await deploy(engine, single("f", "JSONTransformNode", {"map": "{id=$.id, score=$.score}"}))
    original = copy.deepcopy(READING)
    inp = msg(READING, "sensors/1")
    engine.inject("f", "n", inp)
    await settle(engine, "f")
    (out,) = got("f", "sink_out")
    assert out["payload"] == {"id": "s-17", "score": 0.93}
    assert out["topic"] == "sensors/1"  # the rest of the message is kept
    assert inp["payload"] == original  # the input is not mutated


async def test_jsontransform_filters_wildcards_and_literals(engine: Engine) -> None:
    spec = (
        "{ok=$.readings[?(@.ok == true)].v, tags=$.tags[*], site=$.meta.site.name, "
        'second=$.readings[1].v, unit="C", n=5, on=true, none=null, missing=$.nope.deeper}'
    )
    await deploy(engine, single("f", "JSONTransformNode", {"map": spec}))
    await feed(engine, "f", [READING])
    assert payloads("f", "sink_out") == [
        {
            "ok": [1, 3],
            "tags": ["a", "b", "c"],
            "site": "gh1",
            "second": 2,
            "unit": "C",
            "n": 5,
            "on": True,
            "none": None,
            "missing": None,
        }
    ]


async def test_jsontransform_dict_map_and_message_root(engine: Engine) -> None:
    params = {"map": {"t": "$.topic", "v": "$.payload.x", "all": "$..x"}, "root": "message"}
    await deploy(engine, single("f", "JSONTransformNode", params))
    await feed(engine, "f", [{"x": 4, "nested": {"x": 5}}], topic="room/2")
    assert payloads("f", "sink_out") == [{"t": "room/2", "v": 4, "all": [4, 5]}]


async def test_jsontransform_multi_match_expressions_always_yield_lists(engine: Engine) -> None:
    spec = "{one=$.readings[?(@.v == 2)].v, none=$.readings[?(@.v > 99)].v, first=$.readings[0].v}"
    await deploy(engine, single("f", "JSONTransformNode", {"map": spec}))
    await feed(engine, "f", [READING])
    assert payloads("f", "sink_out") == [{"one": [2], "none": [], "first": 1}]


async def test_jsontransform_non_object_payload_yields_nulls(engine: Engine) -> None:
    await deploy(engine, single("f", "JSONTransformNode", {"map": "{id=$.id}"}))
    await feed(engine, "f", [42, None, "text"])
    assert payloads("f", "sink_out") == [{"id": None}] * 3
    assert stats(engine, "f", "n")["errors"] == 0


@pytest.mark.parametrize(
    "spec",
    ["id=$.id", "{}", "{id}", "{1x=$.a}", "{a=$.a, a=$.b}", "{a=$.[}", "{a=not-json}", "{a=$.b"],
)
async def test_jsontransform_bad_maps_are_located(spec: str) -> None:
    with pytest.raises(FlowError) as exc:
        validate(single("f", "JSONTransformNode", {"map": spec}))
    assert "nodes[1] (n).params" in str(exc.value)
    assert "map" in str(exc.value)


# -- RouteNode --------------------------------------------------------------------------------
RULES = [
    {"op": "gt", "value": 30, "port": "hot"},
    {"op": "lt", "value": 10, "port": "cold"},
    {"op": "else", "port": "ok"},
]


async def test_route_first_match(engine: Engine) -> None:
    await deploy(engine, single("f", "RouteNode", {"rules": RULES}, ports=("hot", "cold", "ok")))
    await feed(engine, "f", [35, 5, 20, 31, "text"])
    assert payloads("f", "sink_hot") == [35, 31]
    assert payloads("f", "sink_cold") == [5]
    assert payloads("f", "sink_ok") == [20, "text"]  # else catches everything left


async def test_route_all_matches(engine: Engine) -> None:
    rules = [
        {"op": "gt", "value": 10, "port": "a"},
        {"op": "gt", "value": 20, "port": "b"},
        {"property": "topic", "op": "eq", "value": "x", "port": "a"},
    ]
    await deploy(
        engine, single("f", "RouteNode", {"rules": rules, "mode": "all"}, ports=("a", "b"))
    )
    await feed(engine, "f", [25, 15, 5])
    assert payloads("f", "sink_a") == [25, 15]
    assert payloads("f", "sink_b") == [25]


async def test_route_no_match_is_dropped_not_an_error(engine: Engine) -> None:
    rules = [{"op": "eq", "value": "on", "port": "on"}]
    await deploy(engine, single("f", "RouteNode", {"rules": rules}, ports=("on",)))
    await feed(engine, "f", ["off", "on"])
    assert payloads("f", "sink_on") == ["on"]
    assert stats(engine, "f", "n")["errors"] == 0


async def test_route_else_in_all_mode_always_matches(engine: Engine) -> None:
    await deploy(
        engine,
        single("f", "RouteNode", {"rules": RULES, "mode": "all"}, ports=("hot", "cold", "ok")),
    )
    await feed(engine, "f", [35])
    assert payloads("f", "sink_hot") == [35]
    assert payloads("f", "sink_ok") == [35]


async def test_route_edges_must_name_declared_ports() -> None:
    raw = single("f", "RouteNode", {"rules": RULES}, ports=("hot", "warm"))
    with pytest.raises(FlowError) as exc:
        validate(raw)
    text = str(exc.value)
    assert "edges[2] (n -> sink_warm).port" in text
    assert "no port 'warm'" in text
    assert "hot, cold, ok, error" in text


@pytest.mark.parametrize(
    ("params", "needle"),
    [
        ({"rules": []}, "params.rules: expected `array` of length >= 1"),
        ({"rules": [{"op": "gt", "value": 1, "port": "error"}]}, "port 'error' is reserved"),
        ({"rules": [{"op": "gt", "value": 1, "port": ""}]}, "rules[0].port: expected `str` of"),
        ({"rules": [{"op": "gt", "value": "x", "port": "a"}]}, "needs a numeric value"),
        ({"rules": [{"op": "lol", "port": "a"}]}, "op"),
        ({"rules": RULES, "mode": "some"}, "mode"),
    ],
)
async def test_route_params_are_validated(params: dict[str, Any], needle: str) -> None:
    with pytest.raises(FlowError) as exc:
        validate(single("f", "RouteNode", params, ports=()))
    assert "nodes[1] (n).params" in str(exc.value)
    assert needle in str(exc.value)


# -- ChangeNode -------------------------------------------------------------------------------
async def test_change_set_delete_move_without_mutating_input(engine: Engine) -> None:
    rules = [
        {"op": "set", "path": "payload.unit", "value": "C"},
        {"op": "set", "path": "payload.deep.new.x", "value": [1, 2]},
        {"op": "set", "path": "copy", "from": "payload.v"},
        {"op": "set", "path": "payload.list[1]", "value": 99},
        {"op": "delete", "path": "secret"},
        {"op": "delete", "path": "payload.gone"},
        {"op": "move", "path": "value", "from": "payload.v"},
        {"op": "move", "path": "x", "from": "payload.absent"},
    ]
    await deploy(engine, single("f", "ChangeNode", {"rules": rules}))
    inp = {
        "payload": {"v": 21.5, "gone": 1, "list": [1, 2, 3], "deep": {"keep": True}},
        "topic": "t",
        "secret": "s3cret",
    }
    before = copy.deepcopy(inp)
    engine.inject("f", "n", inp)
    await settle(engine, "f")
    assert inp == before  # copy-on-write: nested containers were copied, not changed
    (out,) = got("f", "sink_out")
    assert out == {
        "payload": {
            "unit": "C",
            "list": [1, 99, 3],
            "deep": {"keep": True, "new": {"x": [1, 2]}},
        },
        "topic": "t",
        "copy": 21.5,
        "value": 21.5,
    }


async def test_change_move_needs_from() -> None:
    with pytest.raises(FlowError) as exc:
        validate(single("f", "ChangeNode", {"rules": [{"op": "move", "path": "a"}]}))
    assert "nodes[1] (n).params.rules[0]" in str(exc.value)
    assert "needs 'from'" in str(exc.value)


@pytest.mark.parametrize("op", ["move", "set"])
async def test_change_from_must_name_a_field(op: str) -> None:
    """``from: "."`` used to pass validation, then raise per message (move) or quietly
    set ``value`` (set)."""
    rule = {"op": op, "path": "a", "from": "."}
    with pytest.raises(FlowError) as exc:
        validate(single("f", "ChangeNode", {"rules": [rule]}))
    assert "nodes[1] (n).params.rules[0]" in str(exc.value)
    assert "names no field" in str(exc.value)


async def test_change_rules_are_strict() -> None:
    with pytest.raises(FlowError) as exc:
        validate(single("f", "ChangeNode", {"rules": [{"op": "set", "path": "a", "vlaue": 1}]}))
    assert "nodes[1] (n).params.rules[0]" in str(exc.value)
    assert "unknown key `vlaue`" in str(exc.value)


# -- FilterNode -------------------------------------------------------------------------------
VALUES: list[Any] = [5, 10, 15, "abc", "xyz", True, False, None, [1, 2], {"k": 1}]


@pytest.mark.parametrize(
    ("cond", "expected"),
    [
        ({"op": "eq", "value": 10}, [10]),
        ({"op": "neq", "value": 10}, [v for v in VALUES if v != 10]),
        ({"op": "lt", "value": 10}, [5]),
        ({"op": "lte", "value": 10}, [5, 10]),
        ({"op": "gt", "value": 10}, [15]),
        ({"op": "gte", "value": 10}, [10, 15]),
        ({"op": "between", "value": 12, "value2": 4}, [5, 10]),
        ({"op": "contains", "value": "b"}, ["abc"]),
        ({"op": "contains", "value": 2}, [[1, 2]]),
        ({"op": "contains", "value": "k"}, [{"k": 1}]),
        ({"op": "regex", "value": "^x.z$"}, ["xyz"]),
        ({"op": "true"}, [True]),
        ({"op": "false"}, [False]),
        ({"op": "null"}, [None]),
        ({"op": "nnull"}, [v for v in VALUES if v is not None]),
        ({"op": "exists"}, VALUES),
        ({"op": "else"}, VALUES),
    ],
)
async def test_filter_ops(engine: Engine, cond: dict[str, Any], expected: list[Any]) -> None:
    await deploy(engine, single("f", "FilterNode", cond))
    await feed(engine, "f", VALUES)
    assert payloads("f", "sink_out") == expected
    assert stats(engine, "f", "n")["errors"] == 0


async def test_filter_on_nested_property_missing_never_matches(engine: Engine) -> None:
    await deploy(
        engine, single("f", "FilterNode", {"property": "payload.t", "op": "gte", "value": 0})
    )
    await feed(engine, "f", [{"t": 1}, {"t": -1}, {}, 7, {"t": "hot"}])
    assert payloads("f", "sink_out") == [{"t": 1}]
    assert stats(engine, "f", "n")["suppressed"] == 4  # counted, shown in status
    # neq on a missing property does not match either
    await deploy(
        engine, single("g", "FilterNode", {"property": "payload.t", "op": "neq", "value": 1})
    )
    await feed(engine, "g", [{"t": 2}, {}, {"t": 1}])
    assert payloads("g", "sink_out") == [{"t": 2}]


@pytest.mark.parametrize(
    ("cond", "needle"),
    [
        ({"op": "gt"}, "needs a numeric value"),
        ({"op": "gt", "value": True}, "needs a numeric value"),
        ({"op": "between", "value": 1}, "needs numeric value and value2"),
        ({"op": "regex", "value": 3}, "needs a string value"),
        ({"op": "regex", "value": "("}, "bad regex"),
        ({"op": "regex", "value": "a{4294967296}"}, "bad regex"),  # OverflowError in re
        ({"op": "regex", "value": "(" * 1000 + ")" * 1000}, "bad regex"),  # RecursionError
        ({"op": "nope"}, "op"),
        ({"value": 1}, "missing required key `op`"),
    ],
)
async def test_filter_params_are_validated(cond: dict[str, Any], needle: str) -> None:
    with pytest.raises(FlowError) as exc:
        validate(single("f", "FilterNode", cond))
    assert "nodes[1] (n).params" in str(exc.value)
    assert needle in str(exc.value)


# -- DeadbandNode -----------------------------------------------------------------------------
async def test_deadband_absolute_band(engine: Engine) -> None:
    await deploy(engine, single("f", "DeadbandNode", {"band": 1.0}))
    await feed(engine, "f", [10, 10.5, 11, 11.2, 9.9, 9.9])
    assert payloads("f", "sink_out") == [10, 11, 9.9]
    assert stats(engine, "f", "n")["suppressed"] == 3


async def test_deadband_zero_band_passes_changes_only(engine: Engine) -> None:
    await deploy(engine, single("f", "DeadbandNode", {}))
    await feed(engine, "f", [1, 1, 2, 2, 2, 1])
    assert payloads("f", "sink_out") == [1, 2, 1]


async def test_deadband_percent(engine: Engine) -> None:
    await deploy(engine, single("f", "DeadbandNode", {"percent": 10}))
    await feed(engine, "f", [100, 105, 111, 100, 99])
    # 105: 5% of 100; 111: 11% -> pass; 100: 9.9% of 111; 99: 10.8% of 111 -> pass
    assert payloads("f", "sink_out") == [100, 111, 99]


async def test_deadband_per_topic_and_global(engine: Engine) -> None:
    await deploy(engine, single("f", "DeadbandNode", {"band": 1}))
    for topic, v in [("a", 10), ("b", 10), ("a", 10.2), ("b", 12), ("a", 11)]:
        engine.inject("f", "n", msg(v, topic))
    await settle(engine, "f")
    assert [(m["topic"], m["payload"]) for m in got("f", "sink_out")] == [
        ("a", 10),
        ("b", 10),
        ("b", 12),
        ("a", 11),
    ]
    await deploy(engine, single("g", "DeadbandNode", {"band": 1, "key": "none"}))
    for topic, v in [("a", 10), ("b", 10), ("a", 10.2), ("b", 12)]:
        engine.inject("g", "n", msg(v, topic))
    await settle(engine, "g")
    assert [(m["topic"], m["payload"]) for m in got("g", "sink_out")] == [("a", 10), ("b", 12)]


async def test_deadband_refuses_nan_and_inf(engine: Engine) -> None:
    raw = single("f", "DeadbandNode", {"band": 1}, ports=("out", "error"))
    await deploy(engine, raw)
    await feed(engine, "f", [10, math.nan, math.inf, 10.5, -math.inf, 12, "x" * 100_000])
    # before: NaN passed and became the last value, so nothing after it was ever blocked
    assert payloads("f", "sink_out") == [10, 12]
    errors = [m["error"]["message"] for m in got("f", "sink_error")]
    assert errors[0] == "payload is not a finite number: nan"
    assert len(errors) == 4 and len(errors[-1]) < 200  # a long value is shown short


async def test_deadband_forgets_the_least_recently_seen_topic_past_max_keys(
    engine: Engine,
) -> None:
    await deploy(engine, single("f", "DeadbandNode", {"band": 1, "max_keys": 2}))
    for topic, v in [("a", 1), ("b", 1), ("a", 1), ("c", 1), ("a", 1), ("b", 1), ("c", 1)]:
        engine.inject("f", "n", msg(v, topic))
    await settle(engine, "f")
    # c evicts b (a, though blocked, was seen after b); the blocked a moves behind c, so
    # b comes back evicting c, and c evicting a
    assert [m["topic"] for m in got("f", "sink_out")] == ["a", "b", "c", "b", "c"]
    assert stats(engine, "f", "n")["evicted"] == 3
    assert stats(engine, "f", "n")["keys"] == 2
    for i in range(10_000):  # a stream of distinct topics stays within the bound
        engine.inject("f", "n", msg(1, f"t{i}"))
    await settle(engine, "f")
    assert stats(engine, "f", "n")["keys"] == 2


async def test_deadband_property_and_non_numbers_are_errors(engine: Engine) -> None:
    raw = single("f", "DeadbandNode", {"property": "payload.v", "band": 2})
    raw["nodes"].append(node("errs", "CollectNode"))
    raw["edges"].append(edge("n", "errs", "error"))
    await deploy(engine, raw)
    await feed(engine, "f", [{"v": 1}, {"v": "x"}, {"v": 2}, {"v": True}, {"v": 4}])
    assert payloads("f", "sink_out") == [{"v": 1}, {"v": 4}]
    assert stats(engine, "f", "n")["errors"] == 2
    assert [m["error"]["node"] for m in got("f", "errs")] == ["n", "n"]


async def test_deadband_negative_band_rejected() -> None:
    with pytest.raises(FlowError) as exc:
        validate(single("f", "DeadbandNode", {"band": -1}))
    assert "nodes[1] (n).params" in str(exc.value)


# -- RateLimitNode ----------------------------------------------------------------------------
async def test_ratelimit_drops_are_counted(engine: Engine) -> None:
    await deploy(engine, single("f", "RateLimitNode", {"rate": 3, "per": 60}))
    await feed(engine, "f", list(range(10)))
    assert payloads("f", "sink_out") == [0, 1, 2]
    st = stats(engine, "f", "n")
    assert st["in"] == 10
    assert st["dropped"] == 7
    assert st["out"] == 3


async def test_ratelimit_bucket_refills(engine: Engine) -> None:
    await deploy(engine, single("f", "RateLimitNode", {"rate": 2, "per": 0.1}))
    await feed(engine, "f", [1, 2, 3, 4])
    await asyncio.sleep(0.3)  # refilled to capacity (2), never beyond
    await feed(engine, "f", [5, 6, 7, 8])
    assert payloads("f", "sink_out") == [1, 2, 5, 6]
    assert stats(engine, "f", "n")["dropped"] == 4


async def test_ratelimit_rate_must_be_positive() -> None:
    with pytest.raises(FlowError) as exc:
        validate(single("f", "RateLimitNode", {"rate": 0}))
    assert "nodes[1] (n).params.rate: expected `float` > 0.0" in str(exc.value)
    with pytest.raises(FlowError) as exc:
        validate(single("f", "RateLimitNode", {}))
    assert "missing required key `rate`" in str(exc.value)


# -- DebounceNode -----------------------------------------------------------------------------
async def test_debounce_emits_last_of_each_burst(engine: Engine) -> None:
    await deploy(engine, single("f", "DebounceNode", {"quiet": 0.1}))
    for v in (1, 2, 3):
        engine.inject("f", "n", msg(v))
    assert got("f", "sink_out") == []  # nothing before the burst went quiet
    await wait_until(lambda: got("f", "sink_out"), what="the end of burst 1")
    for v in (4, 5):
        engine.inject("f", "n", msg(v))
    await wait_until(lambda: len(got("f", "sink_out")) >= 2, what="the end of burst 2")
    await asyncio.sleep(0.25)
    assert payloads("f", "sink_out") == [3, 5]
    assert stats(engine, "f", "n")["dropped"] == 3


async def test_debounce_hands_on_pending_message_at_stop(engine: Engine) -> None:
    await deploy(engine, single("f", "DebounceNode", {"quiet": 3600}))
    for v in (1, 2):
        engine.inject("f", "n", msg(v))
    await engine.remove("f")
    assert payloads("f", "sink_out") == [2]


# -- WindowNode -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("op", "expected"),
    [
        ("mean", [3.0, 4.0]),
        ("min", [1, 2]),
        ("max", [5, 8]),
        ("sum", [9.0, 12.0]),
        ("last", [3, 8]),
        ("first", [1, 2]),
        ("count", [3, 3]),
    ],
)
async def test_window_count_ops(engine: Engine, op: str, expected: list[Any]) -> None:
    await deploy(engine, single("f", "WindowNode", {"size": 3, "op": op}))
    await feed(engine, "f", [1, 5, 3, 2, 2, 8, 100])  # the 7th waits for the next window
    out = got("f", "sink_out")
    assert [m["payload"] for m in out] == expected
    assert [m["count"] for m in out] == [3, 3]
    assert out[0]["topic"] == "t"


async def test_window_time_window(engine: Engine) -> None:
    await deploy(engine, single("f", "WindowNode", {"seconds": 0.15, "op": "mean"}))
    for v in (1, 2, 6):
        engine.inject("f", "n", msg(v, "room"))
    await wait_until(lambda: got("f", "sink_out"), what="a time window")
    await asyncio.sleep(0.4)  # empty windows emit nothing
    (out,) = got("f", "sink_out")
    assert out["payload"] == 3.0
    assert out["count"] == 3
    assert out["topic"] == "room"
    engine.inject("f", "n", msg(10, "room"))
    await wait_until(lambda: len(got("f", "sink_out")) == 2, what="a second window")
    assert payloads("f", "sink_out")[1] == 10.0


@pytest.mark.parametrize("op", ["mean", "min", "max", "sum", "last", "first", "count"])
async def test_window_time_window_ops(engine: Engine, op: str) -> None:
    await deploy(
        engine, single("f", "WindowNode", {"seconds": 0.1, "op": op, "property": "payload.x"})
    )
    for v in (4, -2, 7):
        engine.inject("f", "n", msg({"x": v}))
    await wait_until(lambda: got("f", "sink_out"), what="a time window")
    expected = {"mean": 3.0, "min": -2, "max": 7, "sum": 9.0, "last": 7, "first": 4, "count": 3}
    assert payloads("f", "sink_out")[0] == expected[op]


async def test_window_non_number_is_an_error_and_skipped(engine: Engine) -> None:
    await deploy(engine, single("f", "WindowNode", {"size": 2, "op": "sum"}))
    await feed(engine, "f", [1, "two", 2])
    assert payloads("f", "sink_out") == [3.0]
    st = stats(engine, "f", "n")
    assert st["errors"] == 1
    assert "not a number" in st["last_error"]


@pytest.mark.parametrize(
    "params",
    [{}, {"size": 2, "seconds": 1}, {"size": 0}, {"seconds": 0}, {"size": 2, "op": "median"}],
)
async def test_window_params_are_validated(params: dict[str, Any]) -> None:
    with pytest.raises(FlowError) as exc:
        validate(single("f", "WindowNode", params))
    assert "nodes[1] (n).params" in str(exc.value)


# -- DelayNode --------------------------------------------------------------------------------
async def test_delay_keeps_order(engine: Engine) -> None:
    await deploy(engine, single("f", "DelayNode", {"seconds": 0.1}))
    for v in range(5):
        engine.inject("f", "n", msg(v))
    assert got("f", "sink_out") == []
    assert stats(engine, "f", "n")["pending"] == 5
    await wait_until(lambda: len(got("f", "sink_out")) == 5, what="5 delayed messages")
    assert payloads("f", "sink_out") == [0, 1, 2, 3, 4]
    assert stats(engine, "f", "n")["pending"] == 0


async def test_delay_interleaved_batches_keep_order(engine: Engine) -> None:
    await deploy(engine, single("f", "DelayNode", {"seconds": 0.05}))
    for batch in range(3):
        for i in range(3):
            engine.inject("f", "n", msg(batch * 3 + i))
        await asyncio.sleep(0.02)
    await wait_until(lambda: len(got("f", "sink_out")) == 9, what="9 delayed messages")
    assert payloads("f", "sink_out") == list(range(9))


async def test_delay_flushes_held_messages_on_stop(engine: Engine) -> None:
    await deploy(engine, single("f", "DelayNode", {"seconds": 3600}))
    for v in range(3):
        engine.inject("f", "n", msg(v))
    await engine.remove("f")
    assert payloads("f", "sink_out") == [0, 1, 2]


@pytest.mark.parametrize(
    ("overflow", "kept"), [("drop_new", [0, 1, 2]), ("drop_oldest", [2, 3, 4])]
)
async def test_delay_max_pending_overflow(engine: Engine, overflow: str, kept: list[int]) -> None:
    params = {"seconds": 3600, "max_pending": 3, "overflow": overflow}
    await deploy(engine, single("f", "DelayNode", params))
    for v in range(5):
        engine.inject("f", "n", msg(v))
    assert stats(engine, "f", "n")["dropped"] == 2
    await engine.remove("f")
    assert payloads("f", "sink_out") == kept


# -- LogNode ----------------------------------------------------------------------------------
async def test_log_keeps_recent_in_status_and_passes_through(
    engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    await deploy(engine, single("f", "LogNode", {"keep": 2}))
    with caplog.at_level(logging.INFO, logger="mechaway.flow.f.n"):
        await feed(engine, "f", [{"a": 1}, "two", 3])
    assert payloads("f", "sink_out") == [{"a": 1}, "two", 3]
    assert stats(engine, "f", "n")["recent"] == ["two", 3]
    logged = [r.getMessage() for r in caplog.records if r.name == "mechaway.flow.f.n"]
    assert logged == ['{"a":1}', '"two"', "3"]


async def test_log_whole_message_and_property(engine: Engine) -> None:
    await deploy(engine, single("f", "LogNode", {"property": ""}))
    engine.inject("f", "n", msg(1, "tp"))
    await deploy(engine, single("g", "LogNode", {"property": "payload.v", "level": "debug"}))
    engine.inject("g", "n", msg({"v": 7}))
    assert stats(engine, "f", "n")["recent"] == [msg(1, "tp")]
    assert stats(engine, "g", "n")["recent"] == [7]


async def test_log_params_are_validated() -> None:
    with pytest.raises(FlowError) as exc:
        validate(single("f", "LogNode", {"level": "loud"}))
    assert "nodes[1] (n).params.level" in str(exc.value)
    with pytest.raises(FlowError):
        validate(single("f", "LogNode", {"keep": 5000}))


# -- a whole chain ----------------------------------------------------------------------------
async def test_chain_inject_transform_route_window_sink(engine: Engine) -> None:
    raw = doc(
        "chain",
        [
            node("inj", "InjectNode", interval=0.01, repeat=6, payload={"t": 31, "id": "a"}),
            node("tr", "JSONTransformNode", map="{temp=$.t, id=$.id}"),
            node(
                "rt",
                "RouteNode",
                rules=[{"property": "payload.temp", "op": "gt", "value": 30, "port": "hot"}],
            ),
            node("win", "WindowNode", size=3, op="max", property="payload.temp"),
            node("sink", "CollectNode"),
        ],
        [edge("inj", "tr"), edge("tr", "rt"), edge("rt", "win", "hot"), edge("win", "sink")],
    )
    await deploy(engine, raw)
    await wait_until(lambda: len(got("chain", "sink")) >= 2, what="2 windows")
    assert payloads("chain", "sink") == [31, 31]
    assert stats(engine, "chain", "tr")["in"] == 6


async def test_idle_source_is_a_real_inject() -> None:
    # the helper's idle source must stay a valid InjectNode (the other tests rely on it)
    validate(doc("f", [IDLE_SOURCE], []))
