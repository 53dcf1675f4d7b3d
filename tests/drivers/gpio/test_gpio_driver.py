"""The [gpio] driver against gpiozero's MockFactory: settings, claims, edges from foreign
threads, bounce, outputs, PWM, the backend seam, gpiozero loaded only by the first pin."""

from __future__ import annotations

import asyncio
import itertools
import subprocess
import sys
import threading
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio

from mechaway.drivers.base import driver_class, parse_sections
from mechaway.drivers.gpio import (
    GpioDriver,
    GpioError,
    GpioSettings,
    PinClaimed,
    PinOwner,
    backends,
)
from mechaway.errors import ConfigError, NotConnected
from mechaway.testing.flows import wait_until

A = PinOwner("fa", "n1", "GPIOInNode")
B = PinOwner("fb", "n2", "GPIOOutNode")


@pytest_asyncio.fixture
async def gpio() -> AsyncIterator[GpioDriver]:
    drv = GpioDriver("default", GpioSettings(backend="mock"))
    await drv.start()
    yield drv
    await drv.close()


def states(drv: GpioDriver, pin: int) -> list[Any]:
    return [s.state for s in drv.factory.pin(pin).states]


def test_gpio_is_one_section_validated_with_located_errors() -> None:
    assert driver_class("gpio") is GpioDriver and not GpioDriver.named
    parsed = parse_sections({"gpio": {"backend": "mock", "max_pin": 45}}, "m.toml")
    settings = parsed["gpio"]["default"]
    assert isinstance(settings, GpioSettings) and settings.max_pin == 45
    for raw, text in [
        ({"backend": "rpio"}, "m.toml: gpio.backend: Invalid enum value 'rpio'"),
        ({"max_pin": 60}, "m.toml: gpio.max_pin: Expected `int` <= 53"),
        ({"pins": 3}, "m.toml: gpio: unknown key `pins`"),
    ]:
        with pytest.raises(ConfigError) as info:
            parse_sections({"gpio": raw}, "m.toml")
        assert str(info.value).startswith(text), str(info.value)


def test_the_driver_and_nodes_load_no_gpiozero_until_a_pin_opens() -> None:
    code = (
        "import asyncio, sys\n"
        "import mechaway.nodes.gpio\n"
        "from mechaway.drivers.gpio import GpioDriver, GpioSettings, PinOwner\n"
        "async def main():\n"
        "    d = GpioDriver('default', GpioSettings(backend='mock'))\n"
        "    await d.start()\n"
        "    print('gpiozero' in sys.modules)\n"
        "    d.open_output(17, PinOwner('f', 'n'))\n"
        "    print('gpiozero' in sys.modules)\n"
        "    await d.close()\n"
        "asyncio.run(main())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, check=True).stdout.split()  # fmt: skip
    assert out == ["False", "True"]


def test_backend_seam_reports_a_board_without_gpio_clearly(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_gpio(chip: int | None) -> Any:
        raise OSError(2, "No such file or directory", "/dev/gpiochip0")

    monkeypatch.setitem(backends.FACTORIES, "auto", no_gpio)
    with pytest.raises(ConfigError, match=r"backend 'auto' found no GPIO: .*gpiochip0.*mock"):
        backends.make_factory("auto")
    with pytest.raises(ConfigError, match="known: auto, lgpio, mock, sim"):
        backends.make_factory("pigpio")
    made: list[int | None] = []
    def sim(chip: int | None) -> str:
        made.append(chip)
        return "factory"

    monkeypatch.setitem(backends.FACTORIES, "sim", sim)
    assert backends.make_factory("sim", 3) == "factory" and made == [3]  # one more factory


@pytest.mark.asyncio
async def test_a_failing_factory_fails_the_pin_and_the_status(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def broken(chip: int | None) -> Any:
        raise RuntimeError("lgpio: cannot open gpiochip")

    monkeypatch.setitem(backends.FACTORIES, "lgpio", broken)
    drv = GpioDriver("default", GpioSettings(backend="lgpio"))
    await drv.start()
    assert drv.status()["state"] == "connected"  # ready: nothing opened yet
    with pytest.raises(ConfigError, match="cannot open gpiochip"):
        drv.open_output(17, A)
    status = drv.status()
    assert status["state"] == "failed" and "cannot open gpiochip" in status["last_error"]
    assert status["pins"] == {}
    await drv.close()


@pytest.mark.asyncio
async def test_edges_from_a_foreign_thread_arrive_on_the_loop_in_order(gpio: GpioDriver) -> None:
    seen: list[tuple[int, float, int]] = []
    loop_thread = threading.get_ident()
    handle = gpio.open_input(
        5, A, pull="down", on_level=lambda lv, ts: seen.append((lv, ts, threading.get_ident()))
    )
    pin = gpio.factory.pin(5)

    def wiggle() -> None:
        for _ in range(50):
            pin.drive_high()
            pin.drive_low()

    t = threading.Thread(target=wiggle)
    t.start()
    t.join()
    await wait_until(lambda: len(seen) == 100, what="100 edges")
    assert [lv for lv, _, _ in seen] == [1, 0] * 50
    assert {tid for _, _, tid in seen} == {loop_thread}
    assert all(a[1] <= b[1] for a, b in itertools.pairwise(seen))
    assert handle.edges == 100 and handle.level() == 0


@pytest.mark.asyncio
async def test_edge_filter_and_pull(gpio: GpioDriver) -> None:
    rising: list[int] = []
    gpio.open_input(6, A, pull="up", edge="rising", on_level=lambda lv, ts: rising.append(lv))
    pin = gpio.factory.pin(6)
    assert pin.state  # pulled up
    for _ in range(3):
        pin.drive_low()
        pin.drive_high()
    await wait_until(lambda: len(rising) == 3, what="three rising edges")
    await asyncio.sleep(0.02)
    assert rising == [1, 1, 1]


@pytest.mark.asyncio
async def test_bounce_merges_a_burst_and_reports_where_the_pin_settled(gpio: GpioDriver) -> None:
    seen: list[int] = []
    handle = gpio.open_input(7, A, bounce_s=0.2, on_level=lambda lv, ts: seen.append(lv))
    pin = gpio.factory.pin(7)
    # a switch closing: high, then contact bounce ending high -> one rising edge
    for level in (1, 0, 1, 0, 1):
        pin.drive_high() if level else pin.drive_low()
    await wait_until(lambda: handle.bounced >= 3, what="bounces seen")
    await asyncio.sleep(0.3)  # past the lock-out: the pin settled where it was accepted
    assert seen == [1]
    # a pulse shorter than the lock-out: rising accepted, and the fall is not lost
    await asyncio.sleep(0.25)
    pin.drive_low()
    await wait_until(lambda: seen == [1, 0], what="the release")
    await asyncio.sleep(0.25)  # past the lock-out the release started
    pin.drive_high()
    pin.drive_low()
    await wait_until(lambda: seen == [1, 0, 1, 0], timeout=2, what="the pulse and its end")
    assert handle.bounced >= 4


@pytest.mark.asyncio
async def test_a_pin_has_one_owner_across_flows(gpio: GpioDriver) -> None:
    gpio.open_output(17, A)
    with pytest.raises(PinClaimed) as info:
        gpio.open_output(17, B)
    text = str(info.value)
    assert "GPIO pin 17" in text and "flow 'fa' node 'n1'" in text and "flow 'fb' node 'n2'" in text
    assert gpio.status()["counters"]["refused"] == 1
    with pytest.raises(GpioError, match=r"GPIO pin 28: outside BCM 0\.\.27"):
        gpio.open_output(28, B)


@pytest.mark.asyncio
async def test_a_hot_swap_successor_waits_and_takes_the_pin_over(gpio: GpioDriver) -> None:
    old = gpio.open_output(17, PinOwner("f", "fan", "GPIOOutNode"), initial=True)
    new = gpio.open_output(17, PinOwner("f", "fan", "GPIOOutNode"), initial=False)
    assert old.active and not new.active
    assert gpio.status()["pins"]["17"]["waiting"] == ["flow 'f' node 'fan' (GPIOOutNode)"]
    with pytest.raises(NotConnected, match="GPIO pin 17: still held by flow 'f' node 'fan'"):
        await new.wait_ready(timeout=0.01)
    waiter = asyncio.ensure_future(new.wait_ready(timeout=5))
    old.close()
    await waiter
    assert new.active and not new.is_on
    # a rolled-back deploy: the successor leaves, the old holder never noticed
    third = gpio.open_output(17, PinOwner("f", "fan", "GPIOOutNode"))
    third.close()
    assert new.active and gpio.status()["pins"]["17"].get("waiting") is None
    new.close()
    assert gpio.status()["pins"] == {}


@pytest.mark.asyncio
async def test_outputs_and_pwm_are_recorded_by_the_mock_pins(gpio: GpioDriver) -> None:
    out = gpio.open_output(17, A)
    out.set(True)
    out.toggle()
    out.toggle()
    out.set(False)
    assert states(gpio, 17) == [False, 1.0, 0.0, 1.0, 0.0]
    low = gpio.open_output(27, A, active_high=False, initial=False)
    low.set(True)
    assert states(gpio, 27)[-1] == 0.0 and low.is_on  # on drives an active-low pin low
    pwm = gpio.open_pwm(18, A, frequency=500)
    for duty in (0.25, 0.5, 1.0):
        pwm.duty(duty)
    assert states(gpio, 18)[1:] == [0.25, 0.5, 1.0]  # after the initial 0
    assert gpio.factory.pin(18).frequency == 500
    pwm.close()
    assert gpio.factory.pin(18).frequency is None  # closed: PWM off
