"""Rigs for the simulator's tests: a scenario built from TOML snippets, and a simulator
running in the test's own event loop (its socket, Modbus servers and ptys are real; the
daemon's drivers connect to them exactly as they would to a board's)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest_asyncio
from mechaway_sim.runner import Simulator
from mechaway_sim.scenario import Scenario, parse

#: a scenario's head: a slow clock, so a value read is the value the test computes
HEAD = """
[scenario]
name = "t"
start = "12:00"
speed = {speed}
seed = 3
"""


def scenario(body: str, speed: float = 0.001) -> Scenario:
    return parse(HEAD.format(speed=speed) + body, "test.toml")


StartSim = Callable[..., Awaitable[Simulator]]


@pytest_asyncio.fixture
async def start_sim(tmp_path: Path) -> AsyncIterator[StartSim]:
    """``await start_sim(body, speed=...)``: a started simulator (closed after the test)."""
    started: list[Simulator] = []

    async def start(body: str, speed: float = 0.001) -> Simulator:
        sim = Simulator(scenario(body, speed), run_dir=tmp_path / f"run{len(started)}",
                        free_ports=True)  # fmt: skip
        started.append(sim)
        await sim.start()
        return sim

    yield start
    for sim in started:
        await sim.close()


class SimThread:
    """A simulator on its own thread and event loop: for drivers that make blocking calls
    on the test's loop thread (gpiozero's pins do, as on a board), which would otherwise
    wait for a reply the same thread has to serve."""

    def __init__(self, sim: Simulator) -> None:
        self.sim = sim
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="sim", daemon=True)

    def __enter__(self) -> Simulator:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self.sim.start(), self.loop).result(10)
        return self.sim

    def call(self, fn: Callable[[], Any]) -> Any:
        """``fn()`` on the simulator's loop (its state is that loop's)."""

        async def run() -> Any:
            return fn()

        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(10)

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self.sim.close(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()
