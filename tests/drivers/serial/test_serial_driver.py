"""The serial driver over real pseudo-terminals: framing with garbage, the bridge protocol's
status and commands, a port that vanishes and comes back, a burst, settings."""

from __future__ import annotations

import asyncio
import os
import pathlib
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
from pty_device import PtyDevice

from mechaway.drivers.base import parse_sections
from mechaway.drivers.serial import (
    CommandFailed,
    Received,
    SerialDriver,
    SerialSettings,
    WriteRefused,
)
from mechaway.drivers.serial.protocol import encode_frame, encode_message
from mechaway.errors import ConfigError, NotConnected
from mechaway.testing.flows import wait_until

FAST = {"reconnect_min": 0.05, "reconnect_max": 0.2, "stable_after": 0.5}


def settings(**kw: Any) -> SerialSettings:
    parsed = parse_sections({"serial": {"t": {**FAST, **kw}}})["serial"]["t"]
    assert isinstance(parsed, SerialSettings)
    return parsed


@pytest_asyncio.fixture
async def loop_errors() -> AsyncIterator[list[dict[str, Any]]]:
    """Everything the event loop's exception handler saw during the test."""
    loop = asyncio.get_running_loop()
    seen: list[dict[str, Any]] = []
    old = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, ctx: seen.append(ctx))
    yield seen
    loop.set_exception_handler(old)


class Rig:
    def __init__(self, device: PtyDevice, driver: SerialDriver) -> None:
        self.device = device
        self.driver = driver
        self.got: list[Received] = []
        driver.subscribe(self.got.append)

    def frames(self) -> list[bytes]:
        return [r.frame for r in self.got if r.error is None and r.frame is not None]

    def errors(self) -> list[str]:
        return [r.error for r in self.got if r.error is not None]


async def open_rig(tmp_path: pathlib.Path, framing: str, **kw: Any) -> Rig:
    device = PtyDevice(tmp_path, framing)
    driver = SerialDriver("t", settings(port=str(device.link), framing=framing, **kw))
    rig = Rig(device, driver)
    await driver.start()
    await driver.wait_connected(5)
    return rig


@pytest_asyncio.fixture
async def line_rig(tmp_path: pathlib.Path) -> AsyncIterator[Rig]:
    rig = await open_rig(tmp_path, "line", max_frame_bytes=64)
    yield rig
    await rig.driver.close()
    rig.device.unplug()


@pytest_asyncio.fixture
async def cobs_rig(tmp_path: pathlib.Path) -> AsyncIterator[Rig]:
    rig = await open_rig(tmp_path, "cobs", max_frame_bytes=64)
    yield rig
    await rig.driver.close()
    rig.device.unplug()


# --- settings ------------------------------------------------------------------------------


def test_settings_defaults_and_located_errors() -> None:
    s = settings(port="/dev/ttyACM0")
    assert (s.baudrate, s.framing, s.bytesize, s.parity, s.stopbits) == (115200, "line", 8,
                                                                         "N", 1)
    assert s.max_frame_bytes == 4096 and not s.speaks_bridge
    assert settings(port="/dev/x", framing="cobs").speaks_bridge
    assert settings(port="/dev/x", stopbits=1.5).stopbits == 1.5
    with pytest.raises(ConfigError, match=r"serial\.t\.framing"):
        settings(port="/dev/x", framing="slip")
    with pytest.raises(ConfigError, match=r"serial\.t.*stopbits must be 1, 1.5 or 2"):
        settings(port="/dev/x", stopbits=1.2)
    with pytest.raises(ConfigError, match=r"serial\.t.*port"):
        settings()
    with pytest.raises(ConfigError, match=r"serial\.t\.baudrate"):
        settings(port="/dev/x", baudrate=0)
    with pytest.raises(ConfigError, match=r"serial\.t.*parity"):
        settings(port="/dev/x", parity="X")


# --- reading -------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_line_frames_with_garbage_oversize_and_bad_utf8(line_rig: Rig) -> None:
    dev, drv = line_rig.device, line_rig.driver
    dev.write(b"$GPGGA,1*00\r\n" + b"x" * 100 + b"\n\xff\xfe\n" + b'{"a":1}\n' + b"tail")
    await wait_until(lambda: len(line_rig.got) == 4, what="three frames and an error")
    assert line_rig.frames() == [b"$GPGGA,1*00", b"\xff\xfe", b'{"a":1}']  # text, not bridge
    dev.write(b"\n")
    await wait_until(lambda: len(line_rig.got) == 5, what="the oversize error and the tail")
    assert [(r.frame, r.error) for r in line_rig.got] == [
        (b"$GPGGA,1*00", None), (None, "oversize"), (b"\xff\xfe", None), (b'{"a":1}', None),
        (b"tail", None),
    ]  # fmt: skip
    seqs = [r.seq for r in line_rig.got]
    assert seqs == sorted(seqs) and len(set(seqs)) == 5
    st = drv.status()
    assert st["state"] == "connected" and st["counters"]["oversize"] == 1
    assert st["counters"]["frames_in"] == 4 and st["counters"]["bytes_in"] > 100
    assert st["device_path"] == dev.tty and st["port"] == str(dev.link)


@pytest.mark.asyncio
async def test_cobs_bridge_frames_decoded_once_with_corrupt_frames(cobs_rig: Rig) -> None:
    dev, drv = cobs_rig.device, cobs_rig.driver
    good = [{"t": "reading", "seq": i, "values": {"a0": i * 10}} for i in range(4)]
    bad_crc = bytearray(encode_message("cobs", good[0]))
    bad_crc[4] ^= 0x40
    stream = (encode_message("cobs", good[0]) + bytes(bad_crc) + b"\x13\x37\x00"
              + encode_message("cobs", good[1]) + encode_frame("cobs", b"\xc1")
              + encode_message("cobs", {"t": "heartbeat", "uptime_ms": 4242})
              + b"\x99" * 300 + b"\x00" + encode_message("cobs", good[2])
              + encode_message("cobs", {"v": 1, "t": "hello", "device": "pty-1"})
              + encode_message("cobs", good[3]))  # fmt: skip
    dev.write(stream)
    await wait_until(lambda: len(cobs_rig.got) == 10, what="ten frames and errors")
    assert [r.message["values"]["a0"] for r in cobs_rig.got
            if r.message and r.message["t"] == "reading"] == [0, 10, 20, 30]
    assert cobs_rig.errors() == ["crc", "cobs", "msgpack", "oversize"]
    c = drv.status()["counters"]
    assert (c["crc"], c["cobs"], c["msgpack"], c["oversize"]) == (1, 1, 1, 1)
    assert c["heartbeats"] == 1 and c["hellos"] == 1
    st = drv.status()
    assert st["device"] == {"v": 1, "t": "hello", "device": "pty-1"}
    assert st["device_uptime_ms"] == 4242 and st["bridge"] is True


@pytest.mark.asyncio
async def test_bridge_asks_for_hello_when_the_port_opens(tmp_path: pathlib.Path) -> None:
    device = PtyDevice(tmp_path, "line")
    device.answer_commands()
    drv = SerialDriver("t", settings(port=str(device.link), bridge=True))
    await drv.start()
    try:
        await wait_until(lambda: drv.device is not None, what="hello")
        assert device.commands[0]["op"] == "hello"
        assert drv.status()["device"]["device"] == "pty-1"
        await asyncio.sleep(0.1)
        assert len([c for c in device.commands if c["op"] == "hello"]) == 1  # answered: once
    finally:
        await drv.close()
        device.unplug()


# --- commands ------------------------------------------------------------------------------


@pytest.mark.asyncio
@pytest.mark.parametrize("framing", ["line", "cobs"])
async def test_commands_acked_refused_and_timed_out(tmp_path: pathlib.Path,
                                                    framing: str) -> None:
    device = PtyDevice(tmp_path, framing)
    device.answer_commands(refuse=lambda c: "bad_pin" if c.get("pin") == 99 else None,
                           silent_ops=frozenset({"custom"}))
    drv = SerialDriver("t", settings(port=str(device.link), framing=framing, bridge=True))
    await drv.start()
    try:
        await drv.wait_connected(5)
        ack = await drv.command({"op": "pin", "pin": 13, "value": 1})
        assert ack["t"] == "ack" and device.pins == {13: 1}
        with pytest.raises(CommandFailed, match="bad_pin") as refused:
            await drv.command({"op": "pin", "pin": 99, "value": 1})
        assert refused.value.code == "bad_pin"
        with pytest.raises(CommandFailed, match="no ack") as silent:
            await drv.command({"op": "custom", "name": "x"}, timeout=0.2)
        assert silent.value.code == "timeout"
        with pytest.raises(WriteRefused, match="value"):
            await drv.command({"op": "pin", "pin": 13, "value": 7})
        c = drv.status()["counters"]
        assert (c["commands"], c["acks"], c["command_errors"], c["command_timeouts"]) == (
            3, 1, 1, 1)
        ids = [cmd["id"] for cmd in device.commands]
        assert len(ids) == len(set(ids))  # every command its own id
    finally:
        await drv.close()
        device.unplug()


@pytest.mark.asyncio
async def test_send_frames_and_refuse_what_cannot_be_a_frame(line_rig: Rig) -> None:
    drv, dev = line_rig.driver, line_rig.device
    await drv.send(b"PING 1")
    await drv.send(b"PING 2")
    await asyncio.sleep(0.05)
    assert dev.read_all() == b"PING 1\nPING 2\n"
    with pytest.raises(WriteRefused, match="newline"):
        await drv.send(b"a\nb")
    with pytest.raises(WriteRefused, match="max_frame_bytes") as big:
        await drv.send(b"x" * 65)
    assert big.value.kind == "oversize"
    with pytest.raises(WriteRefused, match="bridge"):
        await drv.command({"op": "hello"})
    assert drv.status()["counters"]["frames_out"] == 2


# --- the port vanishes and comes back ------------------------------------------------------


@pytest.mark.asyncio
@pytest.mark.parametrize("framing", ["line", "cobs"])
async def test_unplug_mid_frame_and_replug_under_the_same_link(
    tmp_path: pathlib.Path, framing: str, loop_errors: list[dict[str, Any]]
) -> None:
    rig = await open_rig(tmp_path, framing, bridge=True)
    dev, drv = rig.device, rig.driver
    try:
        def reading(i: int) -> bytes:
            return encode_message(framing, {"t": "reading", "seq": i, "values": {"i": i}})

        dev.write(b"".join(reading(i) for i in range(50)) + reading(50)[:7])  # cut mid-frame
        await wait_until(lambda: len(rig.got) == 50, what="50 readings")
        first_tty = dev.tty
        dev.unplug()
        await wait_until(lambda: drv.status()["state"] == "connecting", what="loss noticed")
        with pytest.raises(NotConnected):
            await drv.send(b"x")
        await asyncio.sleep(0.3)  # a few reopen attempts find nothing
        st = drv.status()
        assert st["counters"]["connect_failures"] >= 1
        assert "no such device" in (st["last_error"] or "")
        spare = os.openpty()  # holds the old /dev/pts/N: the device comes back as another
        dev.plug()  # back behind the same link
        os.close(spare[0])
        os.close(spare[1])
        assert dev.tty != first_tty
        await drv.wait_connected(5)
        # the cut frame's rest arrives first on the new port: it must not join the old half
        dev.write(reading(50)[7:] + b"".join(reading(i) for i in range(51, 100)))
        await wait_until(lambda: len([r for r in rig.got if r.message]) == 99,
                         what="readings after the replug")
        seen = [r.message["values"]["i"] for r in rig.got if r.message]
        assert seen == [i for i in range(100) if i != 50]  # each once, in order; 50 was cut
        assert [r.seq for r in rig.got] == sorted({r.seq for r in rig.got})
        st = drv.status()
        assert st["state"] == "connected" and st["reconnects"] == 1
        assert st["device_path"] == dev.tty
        assert st["counters"]["partial_dropped"] == 1
        assert loop_errors == []
    finally:
        await drv.close()
        dev.unplug()


@pytest.mark.asyncio
async def test_absent_port_at_start_connects_when_it_appears(tmp_path: pathlib.Path) -> None:
    link = tmp_path / "usb-later"
    drv = SerialDriver("t", settings(port=str(link)))
    got: list[Received] = []
    drv.subscribe(got.append)
    await drv.start()
    try:
        await wait_until(lambda: drv.status()["counters"]["connect_failures"] >= 2,
                         what="failed opens")
        assert drv.status()["state"] == "connecting" and not drv.connected
        dev = PtyDevice(tmp_path, "line", name="usb-later")
        await drv.wait_connected(5)
        dev.write(b"hello\n")
        await wait_until(lambda: len(got) == 1, what="a line")
        assert got[0].frame == b"hello"
        dev.unplug()
    finally:
        await drv.close()
    assert drv.status()["state"] == "closed"


# --- load ----------------------------------------------------------------------------------


@pytest.mark.asyncio
@pytest.mark.parametrize("framing", ["line", "cobs"])
async def test_burst_of_20000_frames_without_loop_errors(
    tmp_path: pathlib.Path, framing: str, loop_errors: list[dict[str, Any]]
) -> None:
    rig = await open_rig(tmp_path, framing, bridge=True)
    try:
        n = 20_000
        data = b"".join(
            encode_message(framing, {"t": "reading", "seq": i, "values": {"a0": i % 1024}})
            for i in range(n)
        )
        t0 = time.perf_counter()
        writer = rig.device.write_in_thread(data)
        await wait_until(lambda: len(rig.got) >= n, timeout=60, what=f"{n} frames")
        elapsed = time.perf_counter() - t0
        writer.join()
        assert [r.message["seq"] for r in rig.got if r.message] == list(range(n))
        assert rig.errors() == []
        assert rig.driver.status()["counters"]["frames_in"] == n
        assert loop_errors == []
        print(f"{framing}: {n} frames in {elapsed:.2f} s ({n / elapsed:.0f} frames/s)")
    finally:
        await rig.driver.close()
        rig.device.unplug()
