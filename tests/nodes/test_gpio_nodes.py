"""GPIO nodes through real flows on gpiozero's MockFactory, and through a real daemon."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from mechaway.drivers.base import Connections, parse_sections
from mechaway.drivers.gpio import GpioDriver
from mechaway.errors import FlowError
from mechaway.flow.validate import validate
from mechaway.nodes.context import Services
from mechaway.runtime.engine import Engine
from mechaway.testing import flows
from mechaway.testing.daemon import DaemonProc
from mechaway.testing.flows import edge, node, wait_until

Rig = tuple[Engine, Connections]
EXAMPLE = Path(__file__).resolve().parents[2] / "configs/examples/gpio-greenhouse-fan.json"


@pytest_asyncio.fixture
async def rig() -> AsyncIterator[Rig]:
    conns = Connections(parse_sections({"gpio": {"backend": "mock"}}))
    engine = Engine(Services(drivers=conns), stop_timeout=2.0)
    yield engine, conns
    await engine.stop()
    await conns.close()


async def gpio(conns: Connections) -> GpioDriver:
    drv: GpioDriver = await conns.get(GpioDriver)
    return drv


def input_flow(fid: str, **params: Any) -> dict[str, Any]:
    return flows.doc(
        fid,
        [node("in", "GPIOInNode", **params), node("got", "CollectNode")],
        [edge("in", "got")],
    )


def pin_states(drv: GpioDriver, pin: int) -> list[tuple[float, float]]:
    return [(s.timestamp, float(s.state)) for s in drv.factory.pin(pin).states]


@pytest.mark.asyncio
async def test_gpio_in_emits_level_pin_and_ts_per_edge(rig: Rig) -> None:
    engine, conns = rig
    await flows.deploy(engine, input_flow("edges", pin=5, edge="both"))
    pin = (await gpio(conns)).factory.pin(5)
    t = threading.Thread(target=lambda: [(pin.drive_high(), pin.drive_low()) for _ in range(3)])
    t.start()
    t.join()
    await wait_until(lambda: len(flows.got("edges", "got")) == 6, what="six edges")
    got = flows.got("edges", "got")
    assert [m["payload"] for m in got] == [1, 0, 1, 0, 1, 0]
    assert {m["pin"] for m in got} == {5} and {m["topic"] for m in got} == {"gpio/5"}
    assert all(isinstance(m["ts"], float) for m in got)
    status = flows.stats(engine, "edges", "in")
    assert status["out"] == 6 and status["edges"] == 6 and status["open"]


@pytest.mark.asyncio
async def test_gpio_in_falling_only_with_bounce_and_periodic_levels(rig: Rig) -> None:
    engine, conns = rig
    await flows.deploy(engine, input_flow("btn", pin=6, pull="up", edge="falling", bounce_ms=150))
    await flows.deploy(engine, input_flow("lvl", pin=13, pull="up", edge="none", interval=0.02))
    pin = (await gpio(conns)).factory.pin(6)
    for level in (0, 1, 0, 1, 0):  # a press with contact bounce: one falling edge
        pin.drive_high() if level else pin.drive_low()
    await wait_until(lambda: flows.stats(engine, "btn", "in")["bounced"] >= 4, what="bounces")
    await asyncio.sleep(0.3)
    pin.drive_high()  # released (rising: filtered out)
    await asyncio.sleep(0.3)
    assert flows.payloads("btn", "got") == [0]
    await wait_until(lambda: len(flows.got("lvl", "got")) >= 3, what="three periodic levels")
    assert set(flows.payloads("lvl", "got")) == {1}  # pulled up, nothing drives it


@pytest.mark.asyncio
async def test_gpio_out_commands_blink_and_bad_payloads(rig: Rig) -> None:
    engine, conns = rig
    doc = flows.single("out", "GPIOOutNode", {"pin": 17}, ports=("error",))
    await flows.deploy(engine, doc)
    drv = await gpio(conns)
    for payload in (True, False, 1, "toggle", "toggle", 0):
        engine.inject("out", "n", {"payload": payload})
    await flows.settle(engine, "out")
    # initial off; on, off, on, toggled off, toggled on, off
    assert [s for _, s in pin_states(drv, 17)] == [0.0, 1.0, 0.0, 1.0, 0.0, 1.0, 0.0]
    for bad in ("on", 2, None, {"blink": {"on": 0.1}}, {"blink": {"on": -1, "off": 1}}):
        engine.inject("out", "n", {"payload": bad})
    await flows.settle(engine, "out")
    errors = flows.got("out", "sink_error")
    assert len(errors) == 5
    assert 'payload must be true, false, 0, 1, "toggle"' in errors[0]["error"]["message"]
    assert "missing required field `off`" in errors[3]["error"]["message"]
    assert "blink.on" in errors[4]["error"]["message"]
    st = flows.stats(engine, "out", "n")
    assert st["bad_commands"] == 5 and st["errors"] == 5
    # blink timing, read from the pin's recorded history (durations with generous bounds)
    drv.factory.pin(17).clear_states()
    engine.inject("out", "n", {"payload": {"blink": {"on": 0.05, "off": 0.1, "n": 3}}})
    await wait_until(lambda: len(pin_states(drv, 17)) >= 7, what="three blinks")
    await asyncio.sleep(0.2)
    history = pin_states(drv, 17)
    assert [s for _, s in history] == [0.0, 1.0, 0.0, 1.0, 0.0, 1.0, 0.0]
    on_times = [history[i][0] for i in (2, 4, 6)]  # time spent on before each fall
    off_times = [history[i][0] for i in (3, 5)]  # time spent off before each rise
    assert all(0.045 <= t < 1.0 for t in on_times), on_times
    assert all(0.095 <= t < 1.0 for t in off_times), off_times
    assert not flows.stats(engine, "out", "n")["on"]


@pytest.mark.asyncio
async def test_a_new_command_ends_a_blink(rig: Rig) -> None:
    engine, conns = rig
    await flows.deploy(engine, flows.single("stop", "GPIOOutNode", {"pin": 22}, ports=("error",)))
    drv = await gpio(conns)
    engine.inject("stop", "n", {"payload": {"blink": {"on": 0.02, "off": 0.02}}})
    await wait_until(lambda: len(pin_states(drv, 22)) >= 5, what="blinking")
    engine.inject("stop", "n", {"payload": True})
    await flows.settle(engine, "stop")
    await asyncio.sleep(0.1)
    n = len(pin_states(drv, 22))
    await asyncio.sleep(0.1)
    assert len(pin_states(drv, 22)) == n and pin_states(drv, 22)[-1][1] == 1.0


@pytest.mark.asyncio
async def test_pwm_duty_recorded_and_out_of_range_counted(rig: Rig) -> None:
    engine, conns = rig
    doc = flows.single("pwm", "PWMOutNode", {"pin": 18, "frequency": 1000}, ports=("error",))
    await flows.deploy(engine, doc)
    drv = await gpio(conns)
    for payload in (0.25, 1, 1.5, -0.1, "0.5", True, 0.75, 0):
        engine.inject("pwm", "n", {"payload": payload})
    await flows.settle(engine, "pwm")
    assert [s for _, s in pin_states(drv, 18)] == [0.0, 0.25, 1.0, 0.75, 0.0]
    assert drv.factory.pin(18).frequency == 1000
    errors = flows.got("pwm", "sink_error")
    assert [e["payload"] for e in errors] == [1.5, -0.1, "0.5", True]
    assert "duty cycle 0..1, got 1.5" in errors[0]["error"]["message"]
    assert flows.stats(engine, "pwm", "n")["out_of_range"] == 4


def test_a_pin_claimed_twice_in_one_flow_is_a_validation_error_naming_both() -> None:
    doc = flows.doc(
        "twice",
        [flows.IDLE_SOURCE, node("fan", "GPIOOutNode", pin=17), node("dim", "PWMOutNode", pin=17),
         node("btn", "GPIOInNode", pin=4), node("led", "GPIOOutNode", pin=4)],
        [edge("src", "fan"), edge("src", "dim"), edge("src", "led")],
    )  # fmt: skip
    with pytest.raises(FlowError) as info:
        validate(doc)
    text = str(info.value)
    assert ("nodes[2] (dim).params: GPIO pin 17 is claimed by both 'fan' (GPIOOutNode) and "
            "'dim' (PWMOutNode)") in text  # fmt: skip
    assert "GPIO pin 4 is claimed by both 'btn' (GPIOInNode) and 'led' (GPIOOutNode)" in text
    doc["nodes"][2]["params"]["pin"] = 18
    doc["nodes"][4]["disabled"] = True  # a disabled node holds nothing: an alternative wiring
    assert validate(doc).nodes.keys() == {"src", "fan", "dim", "btn"}
    doc["nodes"][4]["disabled"] = False
    doc["nodes"][4]["params"]["pin"] = 27
    assert validate(doc).nodes.keys() == {"src", "fan", "dim", "btn", "led"}
    with pytest.raises(FlowError, match=r"nodes\[1\] \(fan\)\.params\.pin: expected `int` <= 53"):
        validate(flows.doc("big", [flows.IDLE_SOURCE, node("fan", "GPIOOutNode", pin=60)],
                           [edge("src", "fan")]))  # fmt: skip


@pytest.mark.asyncio
async def test_a_pin_claimed_by_another_flow_fails_that_deploy_only(rig: Rig) -> None:
    engine, conns = rig
    await flows.deploy(engine, flows.single("a", "GPIOOutNode", {"pin": 17}, ports=("error",)))
    with pytest.raises(FlowError) as info:
        await flows.deploy(engine, flows.single("b", "PWMOutNode", {"pin": 17}, ports=("error",)))
    text = str(info.value)
    assert "nodes (n): failed to start" in text
    assert "GPIO pin 17 is claimed by flow 'a' node 'n' (GPIOOutNode)" in text
    assert "flow 'b' node 'n' (PWMOutNode) cannot claim it" in text
    assert "b" not in engine.flows
    engine.inject("a", "n", {"payload": True})  # the holder runs on
    await flows.settle(engine, "a")
    drv = await gpio(conns)
    assert pin_states(drv, 17)[-1][1] == 1.0
    with pytest.raises(FlowError, match=r"GPIO pin 30: outside BCM 0\.\.27"):
        await flows.deploy(engine, flows.single("c", "GPIOOutNode", {"pin": 30}, ports=("error",)))
    await engine.remove("a")  # released: another flow may have it now
    await flows.deploy(engine, flows.single("b", "PWMOutNode", {"pin": 17}, ports=("error",)))


@pytest.mark.asyncio
async def test_hot_swap_of_a_changed_output_hands_the_pin_over(rig: Rig) -> None:
    engine, conns = rig
    doc = flows.single("swap", "GPIOOutNode", {"pin": 17, "initial": True}, ports=("error",))
    await flows.deploy(engine, doc, rev=1)
    drv = await gpio(conns)
    assert pin_states(drv, 17)[-1][1] == 1.0
    doc["nodes"][1]["params"]["initial"] = False
    doc["nodes"][1]["params"]["active_high"] = False
    await flows.deploy(engine, doc, rev=2)  # the new node waited for the old one's pin
    owner = drv.status()["pins"]["17"]
    assert owner["open"] and "waiting" not in owner
    engine.inject("swap", "n", {"payload": True})
    await flows.settle(engine, "swap")
    assert pin_states(drv, 17)[-1][1] == 0.0  # active low now: on drives it low
    assert flows.stats(engine, "swap", "n")["on"]


def test_a_daemon_with_the_mock_backend_runs_gpio_flows(tmp_path: Path) -> None:
    d = DaemonProc(tmp_path, token="gpio-test-token", config='[gpio]\nbackend = "mock"\n')
    fan = {
        "id": "fan", "name": "fan",
        "nodes": [
            {"id": "tick", "type": "InjectNode", "params": {"interval": 0.05, "payload": "toggle"}},
            {"id": "out", "type": "GPIOOutNode", "params": {"pin": 17}},
            {"id": "btn", "type": "GPIOInNode",
             "params": {"pin": 5, "pull": "up", "edge": "none", "interval": 0.05}},
            {"id": "log", "type": "LogNode", "params": {"keep": 5}},
        ],
        "edges": [{"from": "tick", "to": "out"}, {"from": "btn", "to": "log"}],
    }  # fmt: skip
    (d.flows / "fan.json").write_text(json.dumps(fan))
    d.start()
    try:
        def ran() -> bool:
            fs = d.flow_status("fan")
            return bool(fs and fs["nodes"]["out"]["in"] >= 3 and fs["nodes"]["log"]["in"] >= 3)

        d.wait(ran, 20, "the fan to toggle and the button to be read")
        conn = d.status()["connections"]["gpio.default"]
        assert conn["state"] == "connected" and conn["backend"] == "mock"
        assert conn["pins"]["17"]["owner"] == "flow 'fan' node 'out' (GPIOOutNode)"
        assert conn["pins"]["5"]["mode"] == "input"
        assert d.flow_status("fan")["nodes"]["out"]["errors"] == 0  # type: ignore[index]
        # a second flow naming pin 17 is refused with both owners named; fan runs on
        thief = {**fan, "id": "thief", "nodes": [fan["nodes"][0], fan["nodes"][1]],
                 "edges": [fan["edges"][0]]}  # fmt: skip
        (d.flows / "thief.json").write_text(json.dumps(thief))

        def refused() -> str:
            errors: dict[str, str] = d.status()["flow_file_errors"]
            return errors.get(str(d.flows / "thief.json"), "")

        err = d.wait(refused, 20, "the thief flow to be refused")
        assert "GPIO pin 17 is claimed by flow 'fan' node 'out' (GPIOOutNode)" in err
        assert "flow 'thief' node 'out' (GPIOOutNode) cannot claim it" in err
        assert d.flow_status("thief") is None
    finally:
        assert d.terminate() == 0


@pytest.mark.asyncio
async def test_the_example_flow_drives_the_fan_from_a_bme280() -> None:
    """configs/examples/gpio-greenhouse-fan.json on the mock pins and the fake I2C bus."""
    from mechaway.drivers.i2c import I2CDriver, I2CSettings
    from mechaway.flow.parse import read_file
    from mechaway.testing.fake_i2c import FakeBME280, FakeSMBus

    bme = FakeBME280()  # the datasheet example: 25.08 °C
    fake = FakeSMBus(devices={0x76: bme})
    i2c = I2CDriver("default", I2CSettings(), bus_factory=lambda s: fake)

    async def get_i2c(name: str) -> I2CDriver:
        return i2c

    await i2c.start()
    conns = Connections(parse_sections({"gpio": {"backend": "mock"}}))
    engine = Engine(Services(drivers=conns, connections={"i2c": get_i2c}), stop_timeout=2.0)
    doc = read_file(EXAMPLE)
    doc["nodes"][0]["params"]["interval"] = 0.05
    try:
        await engine.deploy(validate(doc), 1)
        drv = await gpio(conns)
        await wait_until(lambda: flows.stats(engine, "gpio-greenhouse-fan", "fan_speed")["in"] >= 2,
                         what="readings to reach the fan")  # fmt: skip
        assert pin_states(drv, 18)[-1][1] == pytest.approx((25.08 - 24) / 8)
        assert pin_states(drv, 17)[-1][1] == 0.0  # 25.08 °C: the fan stays off
        bme.adc = (535888, *bme.adc[1:])  # 30.09 °C
        await wait_until(lambda: pin_states(drv, 17)[-1][1] == 1.0, what="the fan to start")
        assert pin_states(drv, 18)[-1][1] == pytest.approx((30.09 - 24) / 8)
        button = drv.factory.pin(27)
        button.drive_low()  # pressed: the light toggles on
        await wait_until(lambda: pin_states(drv, 22)[-1][1] == 1.0, what="the light")
    finally:
        await engine.stop()
        await conns.close()
        await i2c.close()
