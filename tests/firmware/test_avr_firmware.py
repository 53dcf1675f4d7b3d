"""The Arduino bridge sketch, built for the ATmega328P and run in simavr, talked to over
its UART pty: hello, readings, commands with acks, a pin that shows in the readings."""

from __future__ import annotations

import os
import pathlib
import select
import time
import tty
from typing import Any

from firmware_support import Simavr, avr_size

from mechaway.drivers.serial.protocol import (
    FrameError,
    ProtocolError,
    decode_message,
    encode_message,
    make_framer,
)

UNO_FLASH = 32 * 1024 - 512  # minus the Optiboot bootloader
UNO_RAM = 2 * 1024


class Port:
    """The host end of the simulated UART, raw, read in bulk and split by our framer."""

    def __init__(self, path: str, framing: str) -> None:
        self.fd = os.open(path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        tty.setraw(self.fd)
        self.framing = framing
        self.framer = make_framer(framing)
        self.errors: list[str] = []
        self.seen: list[dict[str, Any]] = []

    def send(self, msg: dict[str, Any]) -> None:
        os.write(self.fd, encode_message(self.framing, msg))

    def until(self, want: Any, timeout: float = 5.0) -> dict[str, Any]:
        """The first message for which ``want(msg)`` is true (others are dropped)."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            ready, _, _ = select.select([self.fd], [], [], left)
            if not ready:
                continue
            for item in self.framer.feed(os.read(self.fd, 4096)):
                # opening the pty mid-frame may cut the first frame: count errors after it
                if isinstance(item, FrameError):
                    if self.seen:
                        self.errors.append(item.code)
                    continue
                try:
                    msg = decode_message(self.framing, item)
                except ProtocolError as err:
                    if self.seen:
                        self.errors.append(err.code)
                    continue
                self.seen.append(msg)
                if want(msg):
                    return msg
        raise AssertionError(f"no such message within {timeout} s")

    def close(self) -> None:
        os.close(self.fd)


def test_firmware_fits_the_uno(avr_build: dict[str, pathlib.Path]) -> None:
    for framing in ("line", "cobs"):
        flash, ram = avr_size(avr_build[framing])
        print(f"{framing}: flash {flash} B of {UNO_FLASH}, static RAM {ram} B of {UNO_RAM}")
        assert flash < UNO_FLASH * 0.6
        assert ram < UNO_RAM * 0.5  # the rest is stack


def test_hello_readings_commands_and_a_pin_in_the_readings(simavr: Simavr) -> None:
    port = Port(simavr.pty, simavr.framing)
    try:
        # what the firmware sent before we opened the pty is lost, and what we send
        # before it enabled its UART too (as at a real board's reset): ask until heard
        for _ in range(5):
            port.send({"v": 1, "t": "cmd", "id": 1, "op": "hello"})
            try:
                port.until(lambda m: m == {"t": "ack", "id": 1}, timeout=1.0)
                break
            except AssertionError:
                continue
        hellos = [m for m in port.seen if m["t"] == "hello"]
        assert hellos and hellos[-1] == {"v": 1, "t": "hello", "device": "uno-1", "fw": "0.1.0",
                                         "caps": ["pin", "pwm", "custom"], "max_frame": 96}
        first = port.until(lambda m: m["t"] == "reading")
        assert first["values"]["d13"] == 0
        assert abs(first["values"]["a0"] - 205) <= 2  # 1000 mV of 5000 on a 10-bit ADC
        later = port.until(lambda m: m["t"] == "reading")
        assert later["seq"] == first["seq"] + 1
        assert later["values"]["count"] == first["values"]["count"] + 1

        port.send({"t": "cmd", "id": 2, "op": "pin", "pin": 13, "value": 1})
        assert port.until(lambda m: m["t"] in ("ack", "error")) == {"t": "ack", "id": 2}
        high = port.until(lambda m: m["t"] == "reading")
        assert high["values"]["d13"] == 1
        assert abs(high["values"]["a0"] - 614) <= 2  # pin 13 is wired to A0: 3000 mV

        port.send({"t": "cmd", "id": 3, "op": "pwm", "pin": 9, "value": 77})
        assert port.until(lambda m: m["t"] in ("ack", "error")) == {"t": "ack", "id": 3}
        port.send({"t": "cmd", "id": 4, "op": "pwm", "pin": 4, "value": 77})
        assert port.until(lambda m: m["t"] in ("ack", "error")) == {
            "t": "error", "id": 4, "code": "bad_pin"}
        port.send({"t": "cmd", "id": 5, "op": "custom", "name": "count", "arg": 1000})
        assert port.until(lambda m: m["t"] in ("ack", "error")) == {"t": "ack", "id": 5}
        assert port.until(lambda m: m["t"] == "reading")["values"]["count"] >= 1000

        # a broken frame is answered with an error, and the next command still works
        broken = bytearray(encode_message(simavr.framing, {"t": "cmd", "id": 6, "op": "hello"}))
        broken[3] ^= 0x20
        os.write(port.fd, bytes(broken))
        assert port.until(lambda m: m["t"] == "error")["code"] in {"crc", "json"}
        port.send({"t": "cmd", "id": 7, "op": "pin", "pin": 13, "value": 0})
        assert port.until(lambda m: m["t"] in ("ack", "error")) == {"t": "ack", "id": 7}
        assert port.until(lambda m: m["t"] == "reading")["values"]["d13"] == 0
        beat = port.until(lambda m: m["t"] == "heartbeat", timeout=3)
        assert beat["uptime_ms"] > 0
        assert port.errors == []
    finally:
        port.close()
