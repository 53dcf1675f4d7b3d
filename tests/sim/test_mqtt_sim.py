"""The simulator's MQTT sensors publish to a real broker (a private mosquitto) when one is
configured, and reconnect when it comes back; with no broker they stay off."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import aiomqtt
import pytest
from mechaway_sim.runner import Simulator

from mechaway.testing.broker import MosquittoBroker

from .conftest import StartSim, scenario

SENSORS = """
[mqtt]
host = "127.0.0.1"
port = {port}
[[mqtt.sensors]]
name = "weather"
topic = "sim/weather"
values = {{ outside_c = "outside_c", sun = "sun_w_m2" }}
every = "1s"
max_rate = 50
"""


async def take(client: aiomqtt.Client, n: int, timeout: float = 5.0) -> list[dict[str, float]]:
    out: list[dict[str, float]] = []
    async with asyncio.timeout(timeout):
        async for msg in client.messages:
            assert isinstance(msg.payload, bytes)
            out.append(json.loads(msg.payload))
            if len(out) >= n:
                return out
    return out


@pytest.mark.asyncio
async def test_sensors_publish_their_signals_and_come_back_with_the_broker(
    start_sim: StartSim,
) -> None:
    with MosquittoBroker() as broker:
        async with aiomqtt.Client("127.0.0.1", broker.port) as client:
            await client.subscribe("sim/#")
            sim = await start_sim(SENSORS.format(port=broker.port), speed=60.0)
            got = await take(client, 3)
        assert all(m["outside_c"] == pytest.approx(sim.world.signal("outside_c"), abs=0.2)
                   for m in got)  # fmt: skip
        assert all("sun" in m and "ts" in m for m in got)
        assert sim.mqtt.connects == 1
        broker.restart()
        async with aiomqtt.Client("127.0.0.1", broker.port) as client:
            await client.subscribe("sim/#")
            await take(client, 2, timeout=10.0)
        assert sim.mqtt.connects == 2


@pytest.mark.asyncio
async def test_without_a_broker_the_sensors_stay_off(tmp_path: Path) -> None:
    sc = scenario(SENSORS.format(port=1883).replace('host = "127.0.0.1"\n', ""))
    sim = Simulator(sc, run_dir=tmp_path / "run")
    await sim.start()
    try:
        assert not sim.mqtt.enabled
        assert sim.describe()["mqtt"] is None
    finally:
        await sim.close()
