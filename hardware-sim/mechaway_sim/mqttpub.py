"""Simulated MQTT sensors: each publishes its wired signals as JSON every ``every`` to a
broker, when the scenario names one (``[mqtt] host``). Without a broker they stay off.

A small MQTT 3.1.1 publisher of its own (CONNECT, QoS 0 PUBLISH, PINGREQ): a sensor is a
fire-and-forget device, and the simulator needs no client library for it. It reconnects
with a doubling pause (0.5 s .. 10 s) when the broker goes away.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import orjson

from mechaway_sim.scenario import MqttSensor, MqttSpec, duration_s
from mechaway_sim.world import World

KEEPALIVE_S = 30


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _str(s: str) -> bytes:
    b = s.encode("utf-8")
    return len(b).to_bytes(2, "big") + b


def connect_packet(client_id: str, keepalive: int = KEEPALIVE_S) -> bytes:
    body = _str("MQTT") + bytes([4, 0x02]) + keepalive.to_bytes(2, "big") + _str(client_id)
    return b"\x10" + _varint(len(body)) + body


def publish_packet(topic: str, payload: bytes) -> bytes:
    body = _str(topic) + payload
    return b"\x30" + _varint(len(body)) + body


class MqttSensors:
    """The scenario's MQTT sensors over one connection to the broker."""

    def __init__(self, world: World, spec: MqttSpec) -> None:
        self.world = world
        self.spec = spec
        self.published = 0
        self.connects = 0
        self._writer: asyncio.StreamWriter | None = None
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def enabled(self) -> bool:
        return self.spec.host is not None and bool(self.spec.sensors)

    async def start(self) -> None:
        if not self.enabled:
            return
        self._tasks.append(asyncio.create_task(self._connection(), name="mechaway-sim.mqtt"))
        for s in self.spec.sensors:
            task = asyncio.create_task(self._sensor(s), name=f"mechaway-sim.mqtt[{s.name}]")
            self._tasks.append(task)

    async def close(self) -> None:
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        self._tasks.clear()
        if self._writer is not None:
            with contextlib.suppress(Exception):
                self._writer.write(b"\xe0\x00")
                self._writer.close()
            self._writer = None

    async def _connection(self) -> None:
        pause = 0.5
        assert self.spec.host is not None
        while True:
            try:
                reader, writer = await asyncio.open_connection(self.spec.host, self.spec.port)
                writer.write(connect_packet(f"mechaway-sim-{self.world.sc.scenario.name}"))
                ack = await asyncio.wait_for(reader.readexactly(4), 5)
                if ack[0] != 0x20 or ack[3] != 0:
                    raise ConnectionError(f"broker refused: CONNACK {ack.hex()}")
                self._writer = writer
                self.connects += 1
                self.world.emit({"event": "mqtt", "state": "connected"})
                pause = 0.5
                while True:  # keep alive; a closed socket ends the read
                    try:
                        data = await asyncio.wait_for(reader.read(64), KEEPALIVE_S / 2)
                    except TimeoutError:
                        writer.write(b"\xc0\x00")
                        continue
                    if not data:
                        raise ConnectionError("broker closed the connection")
            except (OSError, ConnectionError, asyncio.IncompleteReadError, TimeoutError) as err:
                self._writer = None
                self.world.emit({"event": "mqtt", "state": "down", "why": str(err)[:100]})
                await asyncio.sleep(pause)
                pause = min(10.0, pause * 2)

    async def _sensor(self, s: MqttSensor) -> None:
        every = duration_s(s.every)
        clock = self.world.clock
        while True:
            await asyncio.sleep(max(1.0 / s.max_rate, clock.real_in(every)))
            writer = self._writer
            if writer is None or self.world.fault(s.name, "silent") is not None:
                continue
            payload: dict[str, Any] = {k: round(self.world.signal(sig, s.name), 3)
                                       for k, sig in s.values.items()}  # fmt: skip
            payload["ts"] = round(time.time(), 3)
            writer.write(publish_packet(s.topic, orjson.dumps(payload)))
            self.published += 1
