"""The world every simulated device reads and acts on: the clock, the model, the noise, and
which faults are active now."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from mechaway_sim.model import Greenhouse, SimClock
from mechaway_sim.scenario import DAY, Fault, Scenario, duration_s, offset_s


@dataclass(frozen=True)
class Window:
    """One fault: from ``start`` for ``length`` simulated seconds (every day if ``daily``)."""

    fault: Fault
    start: float
    length: float
    daily: bool

    def active(self, t: float) -> bool:
        if t < self.start:
            return False
        since = (t - self.start) % DAY if self.daily else t - self.start
        return since < self.length


Hook = Callable[[Fault, bool], None]


class World:
    """Shared by the devices; everything runs on the simulator's one event loop."""

    def __init__(self, sc: Scenario, speed: float | None = None) -> None:
        self.sc = sc
        self.clock = SimClock(speed or sc.scenario.speed, sc.start_tod)
        self.model = Greenhouse(sc.model, sc.actuators, sc.start_tod)
        self.rng = random.Random(sc.scenario.seed)
        self.windows = [
            Window(f, offset_s(f.at, sc.start_tod), duration_s(f.duration, "for"),
                   not f.at.strip().startswith("+"))
            for f in sc.faults
        ]  # fmt: skip
        #: target -> hooks told when one of its faults starts (True) or ends (False)
        self.hooks: dict[str, list[Hook]] = {}
        #: what happened, for the log: (sim t, wall ts, text)
        self.listeners: list[Callable[[dict[str, Any]], None]] = []
        #: actuator changes: name -> count of changes
        self.changes: dict[str, int] = {}

    # -- time and the model ---------------------------------------------------------------
    def now(self) -> float:
        return self.clock.now()

    def sync(self) -> Greenhouse:
        """The model advanced to now."""
        self.model.advance(self.clock.now())
        return self.model

    def signal(self, name: str, device: str = "", noise: float = 0.0) -> float:
        """A model signal now, as ``device`` measures it (its noise, plus a noise fault's)."""
        value = self.sync().signals[name]
        sigma = noise
        fault = self.fault(device, "noise") if device else None
        if fault is not None:
            sigma += fault.sigma
        if sigma:
            value += self.rng.gauss(0.0, sigma)
        return value

    def actuate(self, name: str, level: float, why: str) -> None:
        """An actuator's input changed: the model integrates up to now with the old level,
        then goes on with the new one."""
        model = self.sync()
        old = model.levels.get(name)
        if old is not None and abs(old - level) < 1e-9:
            return
        model.set_level(name, level)
        self.changes[name] = self.changes.get(name, 0) + 1
        self.emit({"event": "actuator", "name": name, "level": round(level, 4), "by": why})

    # -- faults ---------------------------------------------------------------------------
    def fault(self, target: str, kind: str) -> Fault | None:
        """The fault of ``kind`` active on ``target`` now, if any."""
        t = self.clock.now()
        for w in self.windows:
            if w.fault.target == target and w.fault.kind == kind and w.active(t):
                return w.fault
        return None

    def on_fault(self, target: str, hook: Hook) -> None:
        self.hooks.setdefault(target, []).append(hook)

    def boundaries(self, until: float) -> list[tuple[float, Window, bool]]:
        """Every start and end of a fault up to simulated time ``until``, in order."""
        out: list[tuple[float, Window, bool]] = []
        for w in self.windows:
            start = w.start
            while start <= until:
                out.append((start, w, True))
                out.append((start + w.length, w, False))
                if not w.daily:
                    break
                start += DAY
        out.sort(key=lambda item: (item[0], not item[2]))
        return out

    def fire(self, window: Window, begins: bool) -> None:
        f = window.fault
        self.emit({"event": "fault", "target": f.target, "kind": f.kind,
                   "state": "start" if begins else "end"})  # fmt: skip
        for hook in self.hooks.get(f.target, []):
            hook(f, begins)

    # -- the log --------------------------------------------------------------------------
    def emit(self, record: dict[str, Any]) -> None:
        t = self.clock.now()
        full = {"t": round(t, 3), "clock": self.clock.stamp(t), "ts": round(time.time(), 4),
                **record}  # fmt: skip
        for listener in self.listeners:
            listener(full)
