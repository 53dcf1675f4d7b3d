"""A simulated serial device on a pseudo-terminal, for the serial driver's and nodes' tests.

mechaway opens ``link``, a symlink standing for ``/dev/serial/by-id/...``: ``unplug()``
closes the device's end (the port vanishes: reads fail), ``plug()`` makes a new pty and
points the same link at it (the device is back, under another /dev/pts/N).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pathlib
import threading
import tty
from collections.abc import Callable
from typing import Any

from mechaway.drivers.serial.protocol import (
    FrameError,
    ProtocolError,
    decode_message,
    encode_message,
    make_framer,
)


class PtyDevice:
    """The device end of a pty pair behind a stable symlink."""

    def __init__(self, directory: pathlib.Path, framing: str = "line",
                 name: str = "usb-Arduino_Uno_1234-if00") -> None:  # fmt: skip
        self.link = directory / name
        self.framing = framing
        self.master = -1
        self.slave = -1
        self.tty = ""
        self.framer = make_framer(framing)
        #: commands this device received (protocol messages)
        self.commands: list[dict[str, Any]] = []
        self.raw: list[bytes] = []
        self.pins: dict[int, int] = {}
        self._answering = False
        self.plug()

    def plug(self) -> None:
        self.master, self.slave = os.openpty()
        tty.setraw(self.slave)
        self.tty = os.ttyname(self.slave)
        tmp = self.link.with_name(self.link.name + ".new")
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        os.symlink(self.tty, tmp)
        os.replace(tmp, self.link)
        self.framer = make_framer(self.framing)
        if self._answering:
            asyncio.get_running_loop().add_reader(self.master, self._on_command)

    def unplug(self) -> None:
        """The port vanishes: both ends close (mechaway's reads fail), the link dangles."""
        if self.master >= 0:
            with contextlib.suppress(ValueError, RuntimeError):
                asyncio.get_running_loop().remove_reader(self.master)
            os.close(self.master)
            os.close(self.slave)
            self.master = self.slave = -1

    def write(self, data: bytes) -> None:
        """Blocking write of everything (from a thread when it is a lot)."""
        view = memoryview(data)
        while view:
            n = os.write(self.master, view)
            view = view[n:]

    def send(self, msg: dict[str, Any]) -> None:
        self.write(encode_message(self.framing, msg))

    def write_in_thread(self, data: bytes, chunk: int = 4096) -> threading.Thread:
        def run() -> None:
            for i in range(0, len(data), chunk):
                self.write(data[i : i + chunk])

        thread = threading.Thread(target=run, name="pty-device-writer")
        thread.start()
        return thread

    # -- a bridge device answering commands, on the event loop --------------------------
    def answer_commands(self, refuse: Callable[[dict[str, Any]], str | None] | None = None,
                        silent_ops: frozenset[str] = frozenset()) -> None:  # fmt: skip
        """Ack every command (``refuse(cmd)`` may return an error code instead); ops in
        ``silent_ops`` get no answer at all."""
        self._refuse = refuse
        self._silent = silent_ops
        self._answering = True
        asyncio.get_running_loop().add_reader(self.master, self._on_command)

    def _on_command(self) -> None:
        try:
            data = os.read(self.master, 65536)
        except OSError:
            asyncio.get_running_loop().remove_reader(self.master)
            return
        self.raw.append(data)
        for item in self.framer.feed(data):
            if isinstance(item, FrameError):
                continue
            try:
                cmd = decode_message(self.framing, item)
            except ProtocolError:
                continue
            if cmd.get("t") != "cmd":
                continue
            self.commands.append(cmd)
            if cmd["op"] in self._silent:
                continue
            code = self._refuse(cmd) if self._refuse is not None else None
            if code is not None:
                self.send({"t": "error", "id": cmd["id"], "code": code})
                continue
            if cmd["op"] == "pin":
                self.pins[cmd["pin"]] = cmd["value"]
            if cmd["op"] == "hello":
                self.send({"v": 1, "t": "hello", "device": "pty-1", "caps": ["pin"],
                           "max_frame": 256})
            self.send({"t": "ack", "id": cmd["id"]})

    def read_all(self) -> bytes:
        """What mechaway wrote that is waiting (non-blocking)."""
        os.set_blocking(self.master, False)
        out = b""
        with contextlib.suppress(BlockingIOError):
            while chunk := os.read(self.master, 65536):
                out += chunk
        os.set_blocking(self.master, True)
        return out
