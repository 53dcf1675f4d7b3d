"""RangeNode and TriggerNode, driven through a tiny flow (src -> node -> collectors)."""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec
import pytest
import pytest_asyncio

from mechaway.nodes.registry import get_node_type
from mechaway.nodes.shaping import RangeParams, TriggerParams
from mechaway.runtime.engine import Engine
from mechaway.testing.flows import deploy, payloads, single, wait_until


@pytest_asyncio.fixture
async def engine() -> Any:
    e = Engine(stop_timeout=2.0)
    yield e
    await e.stop()


async def run(engine: Engine, ntype: str, params: dict[str, Any], msgs: list[dict[str, Any]],
              ports: tuple[str, ...] = ("out",)) -> None:  # fmt: skip
    await deploy(engine, single("f", ntype, params, ports=(*ports, "error")))
    for m in msgs:
        engine.inject("f", "n", m)


async def drained(engine: Engine) -> None:
    for runner in engine.flows["f"].sinks.values():
        await asyncio.wait_for(runner.idle.wait(), 2)


@pytest.mark.parametrize(
    ("action", "value", "out"),
    [("scale", 5, 50.0), ("scale", 15, 150.0), ("clamp", 15, 100.0), ("clamp", -3, 0.0),
     ("wrap", 12, 20.0), ("wrap", -1, 90.0), ("scale", "2.5", 25.0)],
)  # fmt: skip
@pytest.mark.asyncio
async def test_range_actions(engine: Engine, action: str, value: Any, out: float) -> None:
    p = {"action": action, "in_min": 0, "in_max": 10, "out_min": 0, "out_max": 100}
    await run(engine, "RangeNode", p, [{"payload": value}])
    await drained(engine)
    assert payloads("f", "sink_out") == [pytest.approx(out)]


@pytest.mark.asyncio
async def test_range_drop_round_missing_and_errors(engine: Engine) -> None:
    p = {"action": "drop", "in_min": 0, "in_max": 10, "out_min": 0, "out_max": 3,
         "round": True, "property": "payload.v"}  # fmt: skip
    msgs = [{"payload": {"v": 5}}, {"payload": {"v": 11}}, {"payload": {}},
            {"payload": {"v": "hot"}}, {"payload": {"v": True}}]  # fmt: skip
    await run(engine, "RangeNode", p, msgs)
    await drained(engine)
    # 5 -> 1.5 -> 2 (halves up); 11 dropped; a missing property passes unchanged
    assert payloads("f", "sink_out") == [{"v": 2}, {}]
    assert len(payloads("f", "sink_error")) == 2
    assert msgs[0] == {"payload": {"v": 5}}  # the input was not mutated


def test_range_params_are_checked() -> None:
    with pytest.raises(msgspec.ValidationError, match="differ"):
        msgspec.convert({"in_min": 1, "in_max": 1, "out_min": 0, "out_max": 1}, RangeParams)
    with pytest.raises(msgspec.ValidationError, match="finite"):
        msgspec.convert({"in_min": 0, "in_max": float("inf"), "out_min": 0, "out_max": 1},
                        RangeParams)
    with pytest.raises(msgspec.ValidationError, match="repeat"):
        msgspec.convert({"repeat": True, "seconds": 0}, TriggerParams)
    with pytest.raises(msgspec.ValidationError):
        msgspec.convert({"seconds": -1}, TriggerParams)


@pytest.mark.asyncio
async def test_trigger_send_wait_send(engine: Engine) -> None:
    await run(engine, "TriggerNode", {"seconds": 0.05, "first_value": "on",
                                      "second_value": "off"}, [{"payload": 1, "topic": "a"}])
    await wait_until(lambda: payloads("f", "sink_out") == ["on", "off"], what="on then off")
    engine.inject("f", "n", {"payload": 2})  # re-armed after the second message
    await wait_until(lambda: len(payloads("f", "sink_out")) == 4, what="second round")


@pytest.mark.asyncio
async def test_trigger_ignores_while_armed_and_resets(engine: Engine) -> None:
    p = {"seconds": 0, "first": "message", "reset_payload": "stop"}
    await run(engine, "TriggerNode", p, [{"payload": 1}, {"payload": 2}, {"payload": "stop"},
                                         {"payload": 3}, {"payload": 4}, {"reset": True},
                                         {"payload": 5}])  # fmt: skip
    await drained(engine)
    assert payloads("f", "sink_out") == [1, 3, 5]


@pytest.mark.asyncio
async def test_trigger_extend_latest_second_port_and_topics(engine: Engine) -> None:
    p = {"seconds": 0.15, "first": "nothing", "then": "latest_message", "extend": True,
         "second_port": True, "per_topic": True}  # fmt: skip
    await run(engine, "TriggerNode", p, [{"payload": 1, "topic": "a"},
                                         {"payload": 10, "topic": "b"}], ports=("out", "second"))
    for v in (2, 3):
        await asyncio.sleep(0.1)
        engine.inject("f", "n", {"payload": v, "topic": "a"})  # extends a's wait
    await wait_until(lambda: len(payloads("f", "sink_second")) == 2, what="both topics")
    assert payloads("f", "sink_second") == [10, 3]  # b fired first; a with its latest payload
    assert payloads("f", "sink_out") == []


@pytest.mark.asyncio
async def test_trigger_repeat_until_reset_and_cap(engine: Engine) -> None:
    await run(engine, "TriggerNode", {"seconds": 0.02, "repeat": True, "first_value": "tick",
                                      "per_topic": True, "max_topics": 1},
              [{"payload": 0, "topic": "a"}, {"payload": 0, "topic": "b"}])  # fmt: skip
    await wait_until(lambda: len(payloads("f", "sink_out")) >= 4, what="repeats")
    assert engine.flows["f"].stats["n"].dropped == 1  # topic b: over max_topics
    engine.inject("f", "n", {"reset": 1, "topic": "a"})
    await drained(engine)
    n = len(payloads("f", "sink_out"))
    await asyncio.sleep(0.1)
    assert len(payloads("f", "sink_out")) == n and set(payloads("f", "sink_out")) == {"tick"}


def test_every_shaping_param_is_described() -> None:
    for name in ("RangeNode", "TriggerNode"):
        cls = get_node_type(name)
        assert cls is not None
        for f in msgspec.structs.fields(cls.Params):
            meta = [m for m in getattr(f.type, "__metadata__", ()) if isinstance(m, msgspec.Meta)]
            assert meta and meta[0].description, (name, f.name)
