"""The physical model: one greenhouse's air over a day, and the simulated clock.

The air is one heat capacity ``C``: the sun heats it (a half sine between sunrise and
sunset), it loses heat to the outside air through the walls (``loss_w_per_k``) and
through ventilation (each actuator's ``ventilation_w_per_k`` times its level), heaters add
``heat_w`` times their level::

    C dT/dt = sun(t) + sum(heat_w * level) - (loss + sum(vent * level)) * (T - outside(t))

integrated with explicit Euler steps of at most ``MAX_STEP_S`` simulated seconds (the
fastest time constant, all fans on, is about 20 minutes). The outside temperature is a
cosine around its mean peaking at ``outside_peak``; humidity follows from a vapour
pressure (the outside air's plus what the plants add, which ventilation removes); each
actuator draws ``power_w`` times its level on its phase (the meter's reading).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

from mechaway_sim.scenario import DAY, Actuator, ModelSpec, time_of_day_s

MAX_STEP_S = 10.0
#: lux per W/m² of sunlight (about 120 for daylight)
LUX_PER_W_M2 = 120.0


def saturation_hpa(celsius: float) -> float:
    """Saturation vapour pressure over water (Magnus, WMO constants)."""
    return 6.112 * math.exp(17.62 * celsius / (243.12 + celsius))


class SimClock:
    """Simulated seconds since the start, running ``speed`` times faster than real time.

    ``now()`` is computed from the monotonic clock, so every part of the simulator (the
    model, the devices, the fault timeline) agrees on one time without a shared tick.
    """

    def __init__(self, speed: float, start_tod: float) -> None:
        self.speed = speed
        self.start_tod = start_tod
        self._real0 = time.monotonic()
        self.wall0 = time.time()

    def restart(self) -> None:
        """Simulated time 0 is now (once every device is up)."""
        self._real0 = time.monotonic()
        self.wall0 = time.time()

    def now(self) -> float:
        return (time.monotonic() - self._real0) * self.speed

    def time_of_day(self, t: float | None = None) -> float:
        return (self.start_tod + (self.now() if t is None else t)) % DAY

    def real_in(self, sim_seconds: float) -> float:
        """Real seconds until ``sim_seconds`` from now."""
        return sim_seconds / self.speed

    def stamp(self, t: float) -> str:
        """``HH:MM`` of simulated time ``t`` (day 2 onward: ``d2 HH:MM``)."""
        total = self.start_tod + t
        day = int(total // DAY)
        tod = total % DAY
        hm = f"{int(tod // 3600):02d}:{int(tod % 3600 // 60):02d}"
        return hm if day == 0 else f"d{day + 1} {hm}"


@dataclass
class Greenhouse:
    """The model's state; ``signals`` are what devices read."""

    spec: ModelSpec
    actuators: list[Actuator]
    start_tod: float
    t: float = 0.0
    air_c: float = 0.0
    soil_pct: float = 0.0
    energy_kwh: float = 0.0
    #: actuator name -> level 0..1 (set by the devices that observe pins and coils)
    levels: dict[str, float] = field(default_factory=dict)
    signals: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        s = self.spec
        self.air_c = s.air_start_c
        self.soil_pct = s.soil_start_pct
        self._sunrise = time_of_day_s(s.sunrise)
        self._sunset = time_of_day_s(s.sunset)
        self._peak = time_of_day_s(s.outside_peak)
        self._capacity = s.capacity_kj_per_k * 1000.0
        for a in self.actuators:
            self.levels.setdefault(a.name, 0.0)
        self._update_signals()

    # -- the day --------------------------------------------------------------------------
    def sun_fraction(self, tod: float) -> float:
        """0 at night, rising to 1 at solar noon (half sine between sunrise and sunset)."""
        if not self._sunrise < tod < self._sunset:
            return 0.0
        return math.sin(math.pi * (tod - self._sunrise) / (self._sunset - self._sunrise))

    def outside_c(self, tod: float) -> float:
        s = self.spec
        phase = 2 * math.pi * (tod - self._peak) / DAY
        return s.outside_mean_c + s.outside_swing_c * math.cos(phase)

    def tod(self, t: float | None = None) -> float:
        return (self.start_tod + (self.t if t is None else t)) % DAY

    # -- integration --------------------------------------------------------------------
    def advance(self, t: float) -> None:
        """Integrate up to simulated time ``t`` (a no-op if ``t`` is not later)."""
        while self.t < t:
            dt = min(MAX_STEP_S, t - self.t)
            self._step(dt)
            self.t += dt
        self._update_signals()

    def _step(self, dt: float) -> None:
        s = self.spec
        tod = self.tod()
        out = self.outside_c(tod)
        sun = self.sun_fraction(tod)
        heat = sun * s.sun_gain_w
        conductance = s.loss_w_per_k
        watts = 3 * s.base_load_w
        for a in self.actuators:
            level = self.levels.get(a.name, 0.0)
            heat += a.heat_w * level
            conductance += a.ventilation_w_per_k * level
            watts += a.power_w * level
        self.air_c += dt * (heat - conductance * (self.air_c - out)) / self._capacity
        self.soil_pct = max(0.0, self.soil_pct - dt / 3600.0 * s.soil_dry_pct_per_h * (0.3 + sun))
        self.energy_kwh += watts * dt / 3.6e6

    def ventilation(self) -> float:
        return sum(a.ventilation_w_per_k * self.levels.get(a.name, 0.0) for a in self.actuators)

    def _update_signals(self) -> None:
        s = self.spec
        tod = self.tod()
        out = self.outside_c(tod)
        sun = self.sun_fraction(tod)
        e_out = s.outside_rh / 100.0 * saturation_hpa(out)
        keep = s.loss_w_per_k / (s.loss_w_per_k + self.ventilation()) if s.loss_w_per_k else 0.0
        e_air = e_out + s.transpiration_rh / 100.0 * saturation_hpa(self.air_c) * (
            0.3 + 0.7 * sun
        ) * keep
        rh = min(100.0, max(1.0, 100.0 * e_air / saturation_hpa(self.air_c)))
        phases = [s.base_load_w] * 3
        for a in self.actuators:
            phases[a.phase - 1] += a.power_w * self.levels.get(a.name, 0.0)
        sig = self.signals
        sig.update(
            air_c=self.air_c, air_rh=rh,
            pressure_hpa=s.pressure_hpa + 1.5 * math.sin(2 * math.pi * tod / DAY),
            outside_c=out, sun_w_m2=sun * s.sun_peak_w_m2,
            lux=sun * s.sun_peak_w_m2 * LUX_PER_W_M2, soil_pct=self.soil_pct,
            power_l1_w=phases[0], power_l2_w=phases[1], power_l3_w=phases[2],
            power_w=sum(phases), energy_kwh=self.energy_kwh,
        )  # fmt: skip
        for a in self.actuators:
            sig[a.name] = self.levels.get(a.name, 0.0)

    def set_level(self, name: str, level: float) -> None:
        """An actuator's input changed (a pin, a PWM duty, a coil); takes effect from now."""
        self.levels[name] = min(1.0, max(0.0, level))
        self._update_signals()
