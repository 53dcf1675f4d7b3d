"""The GPIO driver (``[gpio] backend = "sim"``: a gpiozero pin factory over the simulator's
socket) against the simulated header: outputs and PWM the model observes, inputs the
scenario drives, edges through gpiozero's callbacks and the driver's thread bridge."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from mechaway_sim.runner import Simulator

from mechaway.drivers.base import parse_sections
from mechaway.drivers.gpio import GpioDriver, GpioError, GpioSettings, PinOwner
from mechaway.testing.flows import wait_until

from .conftest import SimThread, scenario

PINS = """
[[gpio]]
pin = 17
name = "fan"
mode = "output"
[[gpio]]
pin = 18
name = "vent"
mode = "pwm"
[[gpio]]
pin = 27
name = "door"
mode = "input"
schedule = [["+30m", 1], ["+31m", 0], ["+32m", 1]]
[[actuators]]
name = "fan"
input = "gpio:17"
power_w = 100
[[actuators]]
name = "vent"
input = "pwm:18"
power_w = 40
"""
OWNER = PinOwner("f", "n", "GPIOOutNode")


def settings(sim: Simulator) -> GpioSettings:
    raw = {"backend": "sim", "sim_socket": sim.socket_path}
    parsed = parse_sections({"gpio": raw})["gpio"]["default"]
    assert isinstance(parsed, GpioSettings)
    return parsed


@pytest_asyncio.fixture
async def rig(tmp_path: Path) -> AsyncIterator[tuple[Simulator, GpioDriver]]:
    sim = Simulator(scenario(PINS, speed=600.0), run_dir=tmp_path / "run")  # door: 3 s in
    with SimThread(sim):
        drv = GpioDriver("default", settings(sim))
        await drv.start()
        yield sim, drv
        await drv.close()


async def settle() -> None:
    """Let the simulator's thread handle what was sent (replies come before; the model
    is updated as the request is served, so this is only for releases on close)."""
    await asyncio.sleep(0.05)


@pytest.mark.asyncio
async def test_outputs_and_pwm_reach_the_model(rig: tuple[Simulator, GpioDriver]) -> None:
    sim, drv = rig
    fan = drv.open_output(17, OWNER)
    vent = drv.open_pwm(18, OWNER, frequency=100)
    await fan.wait_ready()
    await vent.wait_ready()
    fan.set(True)
    vent.duty(0.25)
    await settle()
    model = sim.world.model
    assert model.levels["fan"] == 1.0
    assert model.levels["vent"] == 0.25
    assert sim.header.pins[17].level() == 1
    assert model.signals["power_l1_w"] == sim.sc.model.base_load_w + 100.0 + 40 * 0.25
    fan.toggle()
    await settle()
    assert model.levels["fan"] == 0.0
    assert sim.world.changes["fan"] == 2
    fan.close()
    vent.close()
    await settle()
    assert sim.header.pins[18].owner is None  # released: the model sees the vent off
    assert model.levels["vent"] == 0.0


@pytest.mark.asyncio
async def test_inputs_read_what_the_scenario_drives_and_edges_arrive(
    rig: tuple[Simulator, GpioDriver],
) -> None:
    sim, drv = rig
    seen: list[tuple[int, float]] = []
    door = drv.open_input(27, OWNER, pull="down", edge="both",
                          on_level=lambda level, ts: seen.append((level, ts)))  # fmt: skip
    await door.wait_ready()
    assert door.level() == 0
    await wait_until(lambda: len(seen) >= 3, 10, "three edges of the door")
    assert [lv for lv, _ in seen[:3]] == [1, 0, 1]
    assert door.level() == 1
    assert sim.header.pins[27].toggles == 3


@pytest.mark.asyncio
async def test_a_pin_another_client_holds_is_refused(rig: tuple[Simulator, GpioDriver]) -> None:
    sim, drv = rig
    other = GpioDriver("default", settings(sim))
    await other.start()
    try:
        mine = drv.open_output(17, OWNER)
        await mine.wait_ready()
        with pytest.raises(GpioError, match="in use by another client"):
            other.open_output(17, OWNER)
    finally:
        await other.close()
    await settle()
    assert sim.header.pins[17].owner is not None  # still the first driver's


@pytest.mark.asyncio
async def test_the_pins_of_a_driver_that_closes_are_released(
    rig: tuple[Simulator, GpioDriver],
) -> None:
    sim, drv = rig
    fan = drv.open_output(17, OWNER, initial=True)
    await fan.wait_ready()
    await settle()
    assert sim.world.model.levels["fan"] == 1.0
    await drv.close()
    await wait_until(lambda: sim.header.pins[17].owner is None, 5, "the pin released")
    assert sim.world.model.levels["fan"] == 0.0
    assert drv.extra_status()["pins"] == {}


def test_no_simulator_is_a_config_error_naming_the_socket(tmp_path: Any) -> None:
    from mechaway.drivers.gpio.backends import make_factory
    from mechaway.errors import ConfigError

    with pytest.raises(ConfigError, match=r"none.sock.*mechaway-sim run"):
        make_factory("sim", None, str(tmp_path / "none.sock"))
