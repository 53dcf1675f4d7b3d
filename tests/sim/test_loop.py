"""The whole greenhouse loop as separate processes, as a newcomer runs it: ``mechaway-sim
run greenhouse`` and ``mechaway start`` with configs/greenhouse/, over one simulated day
(at 1440x: a minute). The daemon's real drivers keep the air in the band; the simulator's
log is the truth the test checks the daemon against."""

from __future__ import annotations

import bisect
import json
import statistics
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from mechaway_sim.demo import BAND, Loop
from mechaway_sim.plot import plot_log

SPEED = 1440.0
#: how far the air may go past the band: the controller reads every 0.25 s (6 simulated
#: minutes at this speed) and the sun keeps heating meanwhile
MARGIN = 2.0


@pytest.fixture(scope="module")
def day(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """One simulated day of the loop; what the test looks at afterwards."""
    root = tmp_path_factory.mktemp("loop")
    loop = Loop(root, speed=SPEED)
    try:
        ready = loop.start_sim()
        loop.start_daemon()
        end = float(ready["wall_start"]) + 86400 / SPEED
        polls: list[dict[str, Any]] = []
        while loop.sim_alive() and time.time() < end - 0.7:
            st = loop.status()
            polls.append({"ts": time.time(), "problems": st["problems"],
                          "connections": st["connections"]})  # fmt: skip
            time.sleep(0.1)
        final = loop.status()
        assert loop.wait_sim(30) == 0, loop.tail("sim.out")
        series = {name: loop.series(name) for name in
                  ("air_c", "fan", "heater", "power_l1_w", "power_l2_w", "light_lux", "door")}
        log = [json.loads(line) for line in loop.sim_log.read_text().splitlines()]
        yield {"loop": loop, "ready": ready, "polls": polls, "final": final, "series": series,
               "log": log, "root": root}  # fmt: skip
    finally:
        loop.stop()


def events(day: dict[str, Any], **match: Any) -> list[dict[str, Any]]:
    return [r for r in day["log"] if all(r.get(k) == v for k, v in match.items())]


def test_the_air_stays_in_the_band_all_day(day: dict[str, Any]) -> None:
    samples = [r for r in day["log"] if r.get("sample")]
    assert samples[-1]["t"] >= 86400 - 60  # a whole day was simulated
    air = [s["air_c"] for s in samples]
    assert BAND[0] - MARGIN <= min(air), min(air)
    assert max(air) <= BAND[1] + MARGIN, max(air)
    # the same day without control leaves that band (tests/sim/test_model.py): the band
    # held because the daemon acted
    assert len(events(day, event="actuator", name="heater")) >= 2
    assert len(events(day, event="actuator", name="vent")) >= 10


def test_the_fan_pin_toggled_and_the_daemon_decided_it(day: dict[str, Any]) -> None:
    fan = events(day, event="actuator", name="fan")
    assert len(fan) >= 4, fan
    assert all(e["by"] == "gpio 17 write" for e in fan)  # GPIOOutNode, over the sim backend
    decided = [v for _, v in day["series"]["fan"]]
    assert 1 in decided and 0 in decided


def level_at(changes: list[tuple[float, float]], ts: float) -> float:
    i = bisect.bisect_right([t for t, _ in changes], ts) - 1
    return changes[i][1] if i >= 0 else 0.0


def test_the_meters_power_follows_the_fan_and_the_heater(day: dict[str, Any]) -> None:
    for series, name, watts in (("power_l1_w", "fan", 250.0), ("power_l2_w", "heater", 3000.0)):
        changes = [(e["ts"], e["level"]) for e in events(day, event="actuator", name=name)]
        points = day["series"][series]
        assert len(points) > 60
        # a poll straddling a switch may see either side: skip 0.1 s around each switch
        usable = [(ts, v) for ts, v in points if all(abs(ts - t) > 0.1 for t, _ in changes)]
        agree = [(v > watts / 2) == (level_at(changes, ts) > 0.5) for ts, v in usable]
        assert sum(agree) / len(agree) >= 0.95, (series, sum(agree), len(agree))
        assert max(v for _, v in usable) >= watts  # it was seen on


def test_the_daemons_readings_are_the_simulated_air(day: dict[str, Any]) -> None:
    samples = [r for r in day["log"] if r.get("sample")]
    wall = [s["ts"] for s in samples]
    errors = []
    for ts, value in day["series"]["air_c"]:
        i = min(max(bisect.bisect_left(wall, ts), 1), len(wall) - 1)
        errors.append(abs(value - samples[i]["air_c"]))
    assert len(errors) > 100
    assert statistics.median(errors) < 0.15


def test_a_pulled_device_is_a_problem_then_recovers(day: dict[str, Any]) -> None:
    def during_the_day(state: str) -> list[dict[str, Any]]:  # (the end unplugs everything)
        return [e for e in events(day, event="serial", name="bridge", state=state)
                if e["t"] < 86400]  # fmt: skip

    unplugged, plugged = during_the_day("unplugged"), during_the_day("plugged")
    assert len(unplugged) == 1 and len(plugged) == 2  # at the start, and back after 1 h
    pulled_at, back_at = unplugged[0]["ts"], plugged[1]["ts"]
    during = [p for p in day["polls"] if pulled_at + 0.3 < p["ts"] < back_at]
    assert during, "no status taken while the cable was out"
    assert any(any(line.startswith("serial.bridge: connecting") for line in p["problems"])
               for p in during)  # fmt: skip
    after = [p for p in day["polls"] if p["ts"] > back_at + 2.0]
    assert after and after[-1]["connections"]["serial.bridge"]["state"] == "connected"
    assert not any(line.startswith("serial.bridge") for line in after[-1]["problems"])
    bridge = day["final"]["connections"]["serial.bridge"]
    assert bridge["reconnects"] >= 1
    assert bridge["device"]["device"] == "uno-greenhouse"  # its hello after the plug
    assert day["series"]["light_lux"], "readings of the bridge reached the store"


def test_the_other_faults_show_and_pass(day: dict[str, Any]) -> None:
    seen = [line for p in day["polls"] for line in p["problems"]]
    assert any("node air failing" in line and "does not answer" in line for line in seen)
    assert any("node heater failing" in line and "exception 6" in line for line in seen)
    final = day["final"]
    assert {k: v["state"] for k, v in final["connections"].items()} == {
        "gpio.default": "connected", "i2c.air": "connected", "modbus.meter": "connected",
        "modbus.plc": "connected", "serial.bridge": "connected", "serial.gps": "connected",
    }  # fmt: skip
    door = [v for _, v in day["series"]["door"]]
    assert door == [1, 0, 1, 0]  # the door contact's schedule, through GPIOInNode


def test_the_day_plots_as_a_png(day: dict[str, Any]) -> None:
    out = Path(day["root"]) / "day.png"
    readings = [(ts, v) for ts, v in day["series"]["air_c"]]
    info = plot_log(day["loop"].sim_log, out, band=BAND, readings=readings)
    data = out.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and data.endswith(b"IEND\xaeB`\x82")
    assert info["faults"] == 4 and info["readings"] > 100
