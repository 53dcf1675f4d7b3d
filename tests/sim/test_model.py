"""The greenhouse model: without control the air leaves any sensible band (so a closed
loop that keeps it in means something), fans cool, the heater heats, power and energy
follow the actuators, and faults open and close on the timeline."""

from __future__ import annotations

from mechaway_sim.model import Greenhouse, SimClock, saturation_hpa
from mechaway_sim.scenario import DAY, load
from mechaway_sim.world import World


def day(levels: dict[str, float]) -> tuple[Greenhouse, list[float]]:
    sc = load("greenhouse")
    model = Greenhouse(sc.model, sc.actuators, sc.start_tod)
    for name, level in levels.items():
        model.set_level(name, level)
    temps = []
    for minute in range(1, 24 * 60 + 1):
        model.advance(minute * 60.0)
        temps.append(model.air_c)
    return model, temps


def test_without_control_the_day_is_too_hot_and_the_night_too_cold() -> None:
    _, temps = day({})
    assert max(temps) > 40.0
    assert min(temps) < 12.0


def test_the_fan_and_vent_cool_the_afternoon_and_the_heater_warms_the_night() -> None:
    _, free = day({})
    _, cooled = day({"fan": 1.0, "vent": 1.0})
    _, heated = day({"heater": 1.0})
    assert max(cooled) < 25.0 < max(free)
    assert min(heated) > min(free) + 10.0


def test_power_and_energy_follow_the_actuators() -> None:
    sc = load("greenhouse")
    model = Greenhouse(sc.model, sc.actuators, sc.start_tod)
    base = sc.model.base_load_w
    assert model.signals["power_l1_w"] == base
    model.set_level("fan", 1.0)
    assert model.signals["power_l1_w"] == base + 250.0
    model.set_level("vent", 0.5)
    assert model.signals["power_l3_w"] == base + 20.0
    model.set_level("heater", 1.0)
    assert model.signals["power_w"] == 3 * base + 250.0 + 20.0 + 3000.0
    model.advance(3600.0)
    assert abs(model.energy_kwh - (3 * base + 3270.0) / 1000.0) < 1e-6
    model.set_level("fan", 7.0)  # levels are clamped to 0..1
    assert model.levels["fan"] == 1.0


def test_humidity_stays_physical_and_the_sun_sets() -> None:
    sc = load("greenhouse")
    model = Greenhouse(sc.model, sc.actuators, sc.start_tod)
    for hour in range(1, 25):
        model.advance(hour * 3600.0)
        assert 1.0 <= model.signals["air_rh"] <= 100.0
        tod = model.tod()
        up = 6 * 3600 < tod < 20.5 * 3600
        assert (model.signals["sun_w_m2"] > 0) == up, tod
    assert 6.0 < saturation_hpa(0.0) < 6.2  # 6.11 hPa over water at 0 °C


def test_the_clock_runs_at_its_speed_and_stamps_the_time_of_day() -> None:
    clock = SimClock(speed=3600.0, start_tod=23 * 3600.0)
    assert clock.stamp(1800.0) == "23:30"
    assert clock.stamp(3600.0 + 300.0) == "d2 00:05"
    assert clock.real_in(7200.0) == 2.0


def test_fault_windows_repeat_daily_and_offsets_do_not() -> None:
    sc = load("greenhouse")
    world = World(sc, speed=1.0)
    silent = next(w for w in world.windows if w.fault.kind == "silent")
    assert silent.start == 3 * 3600.0  # 08:00, the clock starts at 05:00
    assert not silent.active(3 * 3600.0 - 1)
    assert silent.active(3 * 3600.0 + 60)
    assert not silent.active(3 * 3600.0 + 1800)
    assert silent.active(3 * 3600.0 + DAY + 60)
    edges = world.boundaries(DAY)
    assert [(t, w.fault.kind, b) for t, w, b in edges][:2] == [
        (3 * 3600.0, "silent", True), (3 * 3600.0 + 1800.0, "silent", False)
    ]
