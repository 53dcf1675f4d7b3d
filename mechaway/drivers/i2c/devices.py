"""Readers of the built-in chips: the register sequences, on top of ``I2CDriver.transfer``.

Each reader is one device at one address. ``read(conn)`` makes one reading and returns its
values (``{"temperature_c": ...}``); the bytes are decoded by the pure ``chips`` module,
which checks them. Waits for a conversion happen on the event loop between transactions,
so the bus is free for other devices meanwhile. A reader whose device stopped answering
calls ``forget()``: its setup (chip id, calibration) is read again when it answers (it may
have been power-cycled, or replaced).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from mechaway.drivers.i2c import chips
from mechaway.drivers.i2c.driver import I2CDriver


class Reader(Protocol):
    address: int

    async def read(self, conn: I2CDriver) -> dict[str, Any]: ...

    def forget(self) -> None: ...


class Tmp102Reader:
    def __init__(self, address: int) -> None:
        self.address = address

    async def read(self, conn: I2CDriver) -> dict[str, Any]:
        a = self.address
        data = await conn.transfer(a, lambda b: b.read_i2c_block_data(a, chips.TMP102_TEMP, 2))
        return {"temperature_c": chips.tmp102_celsius(data)}

    def forget(self) -> None:
        pass


class Bme280Reader:
    """Forced mode: each reading triggers one measurement, waits its datasheet maximum,
    then reads the 8 data bytes; the chip sleeps in between (about 0.1 µA)."""

    def __init__(self, address: int, oversampling: int = 1) -> None:
        self.address = address
        self.oversampling = oversampling
        self.calibration: chips.Bme280Calibration | None = None
        #: how many times the calibration was read (once, unless the chip went away)
        self.setups = 0

    async def setup(self, conn: I2CDriver) -> chips.Bme280Calibration:
        a = self.address

        def read_setup(b: Any) -> tuple[int, list[int], list[int]]:
            chip_id = b.read_byte_data(a, chips.BME280_REG_ID)
            if chip_id != chips.BME280_CHIP_ID:
                return chip_id, [], []
            return (
                chip_id,
                b.read_i2c_block_data(a, chips.BME280_REG_CALIB1, 26),
                b.read_i2c_block_data(a, chips.BME280_REG_CALIB2, 7),
            )

        chip_id, block1, block2 = await conn.transfer(a, read_setup)
        chips.bme280_check_id(chip_id)
        self.calibration = chips.bme280_calibration(block1, block2)
        self.setups += 1
        return self.calibration

    async def read(self, conn: I2CDriver) -> dict[str, Any]:
        cal = self.calibration or await self.setup(conn)
        a = self.address
        ctrl_hum, ctrl_meas = chips.bme280_ctrl(self.oversampling)

        def trigger(b: Any) -> None:
            b.write_byte_data(a, chips.BME280_REG_CTRL_HUM, ctrl_hum)  # applies at ctrl_meas
            b.write_byte_data(a, chips.BME280_REG_CTRL_MEAS, ctrl_meas)

        def fetch(b: Any) -> tuple[int, list[int]]:
            status = b.read_byte_data(a, chips.BME280_REG_STATUS)
            return status, b.read_i2c_block_data(a, chips.BME280_REG_DATA, 8)

        await conn.transfer(a, trigger)
        await asyncio.sleep(chips.bme280_measure_s(self.oversampling))
        for _ in range(5):
            status, data = await conn.transfer(a, fetch)
            if not status & 0x08:  # measuring bit clear: the data registers are new
                return chips.bme280_decode(cal, data)
            await asyncio.sleep(0.002)
        raise chips.ChipError("BME280: still measuring after the datasheet's maximum time")

    def forget(self) -> None:
        self.calibration = None


class Sht31Reader:
    """Single shot without clock stretching: a command, the measurement time, a read of
    six bytes (each word's CRC checked)."""

    def __init__(self, address: int, repeatability: str = "high") -> None:
        self.address = address
        self.command = chips.SHT31_MEASURE[repeatability]
        self.wait_s = chips.SHT31_MEASURE_S[repeatability]

    async def read(self, conn: I2CDriver) -> dict[str, Any]:
        from smbus2 import i2c_msg

        a = self.address
        await conn.transfer(a, lambda b: b.i2c_rdwr(i2c_msg.write(a, self.command)))
        await asyncio.sleep(self.wait_s)

        def fetch(b: Any) -> bytes:
            msg = i2c_msg.read(a, 6)
            b.i2c_rdwr(msg)
            return bytes(msg)

        return chips.sht31_decode(await conn.transfer(a, fetch))

    def forget(self) -> None:
        pass


class Ads1115Reader:
    """One single-shot conversion: write the config (OS set), wait one conversion time,
    poll OS until idle, read the conversion register."""

    def __init__(
        self, address: int, channel: str | int = 0, gain: str | int = 1, data_rate: int = 128
    ) -> None:
        self.address = address
        self.channel = channel
        self.gain = gain
        self.data_rate = data_rate
        self.config = chips.ads1115_config(channel, gain, data_rate)

    async def read(self, conn: I2CDriver) -> dict[str, Any]:
        a = self.address
        word = [self.config >> 8, self.config & 0xFF]
        await conn.transfer(a, lambda b: b.write_i2c_block_data(a, chips.ADS1115_CONFIG, word))
        await asyncio.sleep(chips.ads1115_conversion_s(self.data_rate))
        for _ in range(10):
            config = await conn.transfer(
                a, lambda b: b.read_i2c_block_data(a, chips.ADS1115_CONFIG, 2)
            )
            if not chips.ads1115_busy(config):
                break
            await asyncio.sleep(chips.ads1115_conversion_s(self.data_rate) / 4)
        else:
            raise chips.ChipError("ADS1115: the conversion did not finish in time")
        data = await conn.transfer(
            a, lambda b: b.read_i2c_block_data(a, chips.ADS1115_CONVERSION, 2)
        )
        raw, volts = chips.ads1115_volts(data, self.gain)
        return {"volts": volts, "raw": raw, "channel": self.channel}

    def forget(self) -> None:
        pass


@dataclass(frozen=True, slots=True)
class RawSpec:
    """One register value of a raw read."""

    name: str
    register: int
    type: chips.RawType
    byte_order: chips.ByteOrder = "big"
    scale: float = 1.0
    offset: float = 0.0


class RawReader:
    """Registers read in one transaction, each decoded as its type says."""

    def __init__(self, address: int, reads: Sequence[RawSpec]) -> None:
        self.address = address
        self.reads = list(reads)

    async def read(self, conn: I2CDriver) -> dict[str, Any]:
        a = self.address
        specs = self.reads

        def fetch(b: Any) -> list[list[int]]:
            return [b.read_i2c_block_data(a, s.register, chips.RAW_SIZES[s.type]) for s in specs]

        blocks = await conn.transfer(a, fetch)
        return {
            s.name: chips.raw_decode(d, s.type, s.byte_order, s.scale, s.offset)
            for s, d in zip(specs, blocks, strict=True)
        }

    def forget(self) -> None:
        pass
