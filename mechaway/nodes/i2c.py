"""I2C nodes: ``I2CReadNode`` (a chip polled every ``interval``) and ``I2CWriteNode``.

Both reach their bus through the ``[i2c.NAME]`` driver (``connection``), which serialises
transactions and runs them on the bus's thread. A reading that fails (the device does not
answer, a CRC mismatch, a wrong chip id) is counted at every poll and reported, to the log
and the error port, once per kind of failure until a reading succeeds again; the poll goes
on at its interval, so a device that comes back is read again without a redeploy.
"""

from __future__ import annotations

import asyncio
import time
from typing import Annotated, Any, ClassVar, Literal

import msgspec
from msgspec import Meta

from mechaway.drivers.i2c import DeviceNotAnswering, I2CDriver, chips
from mechaway.drivers.i2c.devices import (
    Ads1115Reader,
    Bme280Reader,
    RawReader,
    RawSpec,
    Reader,
    Sht31Reader,
    Tmp102Reader,
)
from mechaway.errors import error_text
from mechaway.nodes.base import Message, NodeParams, Result, SinkNode, SinkParams, SourceNode, now
from mechaway.nodes.context import NodeContext
from mechaway.nodes.registry import register_node
from mechaway.tasks import OwnedTask

_CONNECTION = Meta(description="name of the [i2c.NAME] connection (the bus)")
_REGISTER = Meta(ge=0, le=255, description="register (command byte) address")
Device = Literal["tmp102", "bme280", "sht31", "ads1115", "raw"]
#: each chip's usual address (its address pin tied low)
DEFAULT_ADDRESS = {
    "tmp102": chips.TMP102_ADDRESS,
    "bme280": chips.BME280_ADDRESS,
    "sht31": chips.SHT31_ADDRESS,
    "ads1115": chips.ADS1115_ADDRESS,
}


class RawRead(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """One register of a ``raw`` read: ``{name: value * scale + offset}`` in the payload."""

    name: Annotated[str, Meta(min_length=1, description="key of the value in the payload")]
    register: Annotated[int, _REGISTER]
    type: Annotated[
        chips.RawType, Meta(description="int8, uint8, int16, uint16, int32 or uint32")
    ] = "uint16"
    byte_order: Annotated[
        chips.ByteOrder, Meta(description="big (most significant byte first) or little")
    ] = "big"
    scale: Annotated[float, Meta(description="the value is multiplied by this...")] = 1.0
    offset: Annotated[float, Meta(description="...and then this is added")] = 0.0


class I2CReadParams(NodeParams):
    device: Annotated[
        Device,
        Meta(description="the chip: tmp102, bme280, sht31, ads1115, or raw (reads: registers)"),
    ]
    connection: Annotated[str, _CONNECTION] = "default"
    address: Annotated[
        Annotated[int, Meta(ge=0x03, le=0x77)] | None,
        Meta(
            description="7-bit device address (null: the chip's usual one: tmp102 0x48, "
            "bme280 0x76, sht31 0x44, ads1115 0x48; raw needs one)"
        ),
    ] = None
    interval: Annotated[
        float, Meta(gt=0, le=86_400, description="seconds between readings")
    ] = 10.0
    topic: Annotated[
        str, Meta(description="topic of the messages (empty: i2c/CONNECTION/0xADDRESS)")
    ] = ""
    oversampling: Annotated[
        Literal[1, 2, 4, 8, 16],
        Meta(description="bme280: oversampling of temperature, pressure and humidity"),
    ] = 1
    repeatability: Annotated[
        Literal["high", "medium", "low"],
        Meta(description="sht31: measurement repeatability (high: 15 ms, low: 4.5 ms)"),
    ] = "high"
    channel: Annotated[
        chips.Ads1115Channel,
        Meta(description="ads1115: input 0..3 against GND, or a differential pair "
             "\"0-1\", \"0-3\", \"1-3\", \"2-3\""),
    ] = 0  # fmt: skip
    gain: Annotated[
        chips.Ads1115Gain,
        Meta(description="ads1115: PGA gain, full scale 2/3: ±6.144 V, 1: ±4.096 V, "
             "2: ±2.048 V, 4: ±1.024 V, 8: ±0.512 V, 16: ±0.256 V"),
    ] = 1  # fmt: skip
    data_rate: Annotated[
        Literal[8, 16, 32, 64, 128, 250, 475, 860],
        Meta(description="ads1115: samples per second (one conversion takes 1/rate)"),
    ] = 128
    reads: Annotated[
        list[RawRead],
        Meta(max_length=32, description="raw: the registers read, in one transaction"),
    ] = msgspec.field(default_factory=list)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.device == "raw":
            if not self.reads:
                raise ValueError("device raw needs reads (at least one register)")
            if self.address is None:
                raise ValueError("device raw needs an address")
            names = [r.name for r in self.reads]
            if len(set(names)) != len(names):
                raise ValueError("reads: names must be unique")
        elif self.reads:
            raise ValueError(f"reads is for device raw, not {self.device}")


def make_reader(p: I2CReadParams) -> Reader:
    """The chip reader the params describe."""
    addr = p.address if p.address is not None else DEFAULT_ADDRESS[p.device]
    if p.device == "tmp102":
        return Tmp102Reader(addr)
    if p.device == "bme280":
        return Bme280Reader(addr, p.oversampling)
    if p.device == "sht31":
        return Sht31Reader(addr, p.repeatability)
    if p.device == "ads1115":
        return Ads1115Reader(addr, p.channel, p.gain, p.data_rate)
    specs = [RawSpec(r.name, r.register, r.type, r.byte_order, r.scale, r.offset)
             for r in p.reads]  # fmt: skip
    return RawReader(addr, specs)


@register_node("I2CReadNode")
class I2CReadNode(SourceNode[I2CReadParams]):
    """Read a chip every ``interval`` seconds: ``{payload: {temperature_c, ...}, topic,
    device, address, connection, ts}``. Failed readings are counted; each kind is
    reported once (log and ``error`` port) until a reading succeeds again."""

    ports: ClassVar[tuple[str, ...]] = ("out",)

    def __init__(self, node_id: str, params: I2CReadParams, ctx: NodeContext) -> None:
        super().__init__(node_id, params, ctx)
        self.reader = make_reader(params)
        self.address = self.reader.address
        self.topic = params.topic or f"i2c/{params.connection}/0x{self.address:02x}"
        self.conn: I2CDriver | None = None
        self._task = OwnedTask(f"mechaway.i2c_read[{ctx.flow_id}.{node_id}]")
        self.readings = 0
        self.failures: dict[str, int] = {}
        #: kinds of failure already reported in the current burst
        self._reported: set[str] = set()

    async def start(self) -> None:
        self.conn = await self.ctx.services.connection(I2CDriver, self.params.connection)
        self._task.start(self._run)

    async def stop(self) -> None:
        await self._task.stop()

    async def _run(self) -> None:
        interval = self.params.interval
        while True:
            await self.room()
            started = time.monotonic()
            await self.poll()
            await asyncio.sleep(max(0.0, interval - (time.monotonic() - started)))

    async def poll(self) -> bool:
        """One reading, emitted; False (counted, reported once) if it failed."""
        assert self.conn is not None
        try:
            values = await self.reader.read(self.conn)
        except Exception as exc:
            self._failed(exc)
            return False
        self.readings += 1
        if self._reported:
            self.ctx.log.info("0x%02x: readings again", self.address)
            self._reported.clear()
        self.emit({
            "payload": values, "topic": self.topic, "device": self.params.device,
            "address": self.address, "connection": self.params.connection, "ts": now(),
        })  # fmt: skip
        return True

    def _failed(self, exc: Exception) -> None:
        kind = type(exc).__name__
        if isinstance(exc, DeviceNotAnswering):
            self.reader.forget()  # it may come back power-cycled or replaced: set up again
        self.failures[kind] = self.failures.get(kind, 0) + 1
        st = self.stats
        st.errors += 1
        st.last_error = f"{kind}: {error_text(exc)}"
        st.last_error_ts = time.time()
        if kind in self._reported:
            return
        self._reported.add(kind)
        self.ctx.log.warning("reading failed: %s (reported once until a reading succeeds)",
                             st.last_error)  # fmt: skip
        self.emit({
            "payload": None, "topic": self.topic, "ts": now(),
            "error": {"flow": self.ctx.flow_id, "node": self.id, "type": kind,
                      "message": error_text(exc)},
        }, "error")  # fmt: skip

    def status(self) -> dict[str, Any] | None:
        return {
            "device": self.params.device,
            "address": f"0x{self.address:02x}",
            "readings": self.readings,
            "failures": dict(self.failures),
        }


class I2CWriteParams(SinkParams, kw_only=True):
    address: Annotated[int, Meta(ge=0x03, le=0x77, description="7-bit device address")]
    connection: Annotated[str, _CONNECTION] = "default"
    register: Annotated[
        Annotated[int, Meta(ge=0, le=255)] | None,
        Meta(description="register written (null: the bytes go out as they are)"),
    ] = None
    type: Annotated[
        Literal["bytes", "int8", "uint8", "int16", "uint16", "int32", "uint32"],
        Meta(
            description="bytes: the payload is a byte 0..255 or a list of up to 32; else "
            "the payload is a number encoded as this type"
        ),
    ] = "bytes"
    byte_order: Annotated[
        chips.ByteOrder, Meta(description="numbers: big (most significant byte first) or little")
    ] = "big"
    scale: Annotated[
        float, Meta(description="numbers: (payload - offset) / scale is written")
    ] = 1.0
    offset: Annotated[float, Meta(description="numbers: see scale")] = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.scale == 0:
            raise ValueError("scale must not be 0")


def encode_payload(p: I2CWriteParams, payload: Any) -> bytes:
    """The bytes a payload writes; ``ValueError`` saying why it cannot be written."""
    if p.type == "bytes":
        items = [payload] if type(payload) is int else payload
        if (
            type(items) is not list
            or not 1 <= len(items) <= 32
            or any(type(b) is not int or not 0 <= b <= 255 for b in items)
        ):
            raise ValueError(
                f"payload must be a byte 0..255 or a list of 1..32 of them, got {payload!r:.60}"
            )
        return bytes(items)
    if type(payload) not in (int, float):
        raise ValueError(f"payload must be a number for type {p.type}, got {payload!r:.60}")
    return chips.raw_encode(payload, p.type, p.byte_order, p.scale, p.offset)


@register_node("I2CWriteNode")
class I2CWriteNode(SinkNode[I2CWriteParams]):
    """Write the payload to a device (a register, or raw bytes). Bad payloads go to the
    error port; a write while the bus is down is refused and counted, never replayed."""

    def __init__(self, node_id: str, params: I2CWriteParams, ctx: NodeContext) -> None:
        super().__init__(node_id, params, ctx)
        self.conn: I2CDriver | None = None
        self.written = 0
        self.bad_payloads = 0

    async def start(self) -> None:
        self.conn = await self.ctx.services.connection(I2CDriver, self.params.connection)

    async def write(self, msg: Message) -> Result:
        p = self.params
        try:
            data = encode_payload(p, msg.get("payload"))
        except ValueError:
            self.bad_payloads += 1
            raise
        assert self.conn is not None
        a, reg = p.address, p.register

        def send(b: Any) -> None:
            if reg is None:
                from smbus2 import i2c_msg

                b.i2c_rdwr(i2c_msg.write(a, data))
            elif len(data) == 1:
                b.write_byte_data(a, reg, data[0])
            else:
                b.write_i2c_block_data(a, reg, list(data))

        await self.conn.transfer(a, send)
        self.written += 1
        return None

    def status(self) -> dict[str, Any] | None:
        return {"address": f"0x{self.params.address:02x}", "written": self.written,
                "bad_payloads": self.bad_payloads}  # fmt: skip
