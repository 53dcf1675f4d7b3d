"""The hardware simulator's local socket, seen from the daemon: one client for the ``sim``
backends of GPIO (``[gpio] backend = "sim"``) and I2C (``[i2c.NAME] backend = "sim"``).

The simulator (``hardware-sim/``, ``mechaway-sim run SCENARIO``) listens on a Unix stream
socket. The wire is one JSON object per line, both ways:

- request ``{"i": ID, "op": NAME, ...arguments}``;
- reply ``{"i": ID, "r": RESULT}`` or ``{"i": ID, "e": ERRNO, "m": TEXT}`` (an I2C device
  that does not acknowledge is ``e: 121``, EREMOTEIO, as the kernel's i2c-dev says);
- event (no ``i``) ``{"ev": "edge", "pin": N, "level": 0|1}``: an input pin the scenario
  drives changed, sent to the connections that watch the pin.

Ops: ``hello``; ``i2c`` (``bus``, ``m``: messages, each ``[addr, [bytes...]]`` to write or
``[addr, n]`` to read, done as one combined transaction; the result lists what each read
got); ``gpio.setup`` (``pin``, ``function`` input/output, ``pull``, ``state``),
``gpio.write`` (``pin``, ``value``: 0/1, or the duty 0..1 of a PWM pin), ``gpio.read``,
``gpio.pwm`` (``pin``, ``frequency`` or null), ``gpio.watch`` (``pin``, ``on``),
``gpio.release``.

Nothing here is faked on the daemon's side: the driver above calls this module exactly as
it calls smbus2 or lgpio, and errors come back as the same ``OSError`` numbers.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import threading
from collections.abc import Callable
from typing import Any

import orjson

#: newest wire version this client speaks (``hello`` answers the simulator's)
WIRE_VERSION = 1


def default_dir() -> str:
    """The simulator's run directory when none is given: ``$XDG_RUNTIME_DIR/mechaway-sim``,
    else ``/tmp/mechaway-sim-UID`` (the socket and the serial devices' links live there)."""
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime:
        return os.path.join(runtime, "mechaway-sim")
    return f"/tmp/mechaway-sim-{os.getuid()}"


def default_socket() -> str:
    """``sim_socket``'s default: ``sim.sock`` in ``default_dir()``."""
    return os.path.join(default_dir(), "sim.sock")


class SimGone(OSError):
    """The simulator's socket is closed or unreachable (errno ENODEV: the bus is gone)."""


class SimLink:
    """One connection to the simulator; ``call(op, **args)`` is a blocking round trip.

    Without ``on_event`` the reply is read inline by the caller (one thread at a time, the
    I2C bus thread). With ``on_event`` a reader thread takes every line: replies wake their
    caller, events go to ``on_event(event)`` on that thread (as lgpio's callbacks do).
    """

    def __init__(
        self,
        path: str | None = None,
        *,
        on_event: Callable[[dict[str, Any]], None] | None = None,
        timeout: float = 5.0,
    ) -> None:
        self.path = path or default_socket()
        self.timeout = timeout
        self._on_event = on_event
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.settimeout(timeout)
        try:
            self._sock.connect(self.path)
        except OSError as err:
            self._sock.close()
            raise SimGone(
                err.errno or errno.ENODEV,
                f"hardware simulator not reachable at {self.path}: {err.strerror or err} "
                f"(is `mechaway-sim run SCENARIO` running?)",
            ) from err
        self._buf = bytearray()
        self._lock = threading.Lock()
        self._next = 0
        self._closed = False
        self._waiting: dict[int, list[Any]] = {}
        self._cond = threading.Condition()
        self._reader: threading.Thread | None = None
        if on_event is not None:
            self._sock.settimeout(None)
            self._reader = threading.Thread(
                target=self._read_loop, name=f"mechaway-sim-link[{self.path}]", daemon=True
            )
            self._reader.start()

    # -- calls ----------------------------------------------------------------------------
    def call(self, op: str, **args: Any) -> Any:
        """Send ``op`` and return its result; ``OSError`` with the simulator's errno when it
        refused, ``SimGone`` (ENODEV) when the socket is gone."""
        if self._closed:
            raise SimGone(errno.ENODEV, f"hardware simulator link {self.path} is closed")
        if self._reader is not None:
            return self._call_threaded(op, args)
        with self._lock:
            self._next += 1
            ident = self._next
            self._send(ident, op, args)
            while True:
                msg = self._read_one()
                if msg.get("i") == ident:
                    return _result(msg)

    def _call_threaded(self, op: str, args: dict[str, Any]) -> Any:
        slot: list[Any] = []
        with self._lock:
            self._next += 1
            ident = self._next
            with self._cond:
                self._waiting[ident] = slot
            self._send(ident, op, args)
        with self._cond:
            if not self._cond.wait_for(lambda: bool(slot) or self._closed, self.timeout):
                self._waiting.pop(ident, None)
                raise SimGone(errno.ETIMEDOUT, f"hardware simulator: no reply to {op}")
            self._waiting.pop(ident, None)
        if not slot:
            raise SimGone(errno.ENODEV, f"hardware simulator link {self.path} closed")
        return _result(slot[0])

    def _send(self, ident: int, op: str, args: dict[str, Any]) -> None:
        try:
            self._sock.sendall(orjson.dumps({"i": ident, "op": op, **args}) + b"\n")
        except OSError as err:
            self._gone(err)

    def _read_one(self) -> dict[str, Any]:
        while True:
            nl = self._buf.find(b"\n")
            if nl >= 0:
                line = bytes(self._buf[:nl])
                del self._buf[: nl + 1]
                msg: dict[str, Any] = orjson.loads(line)
                return msg
            try:
                chunk = self._sock.recv(65536)
            except OSError as err:
                self._gone(err)
            if not chunk:
                self._gone(None)
            self._buf += chunk

    def _gone(self, err: OSError | None) -> Any:
        self._closed = True
        why = f": {err.strerror or err}" if err is not None else ""
        raise SimGone(errno.ENODEV, f"hardware simulator at {self.path} went away{why}")

    def _read_loop(self) -> None:
        try:
            while True:
                msg = self._read_one()
                ident = msg.get("i")
                if ident is None:
                    if self._on_event is not None:
                        self._on_event(msg)
                    continue
                with self._cond:
                    slot = self._waiting.get(ident)
                    if slot is not None:
                        slot.append(msg)
                        self._cond.notify_all()
        except (OSError, ValueError):
            pass
        finally:
            self._closed = True
            with self._cond:
                self._cond.notify_all()

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Close the connection (idempotent); a reader thread ends with it."""
        self._closed = True
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        self._sock.close()
        reader = self._reader
        if reader is not None and reader is not threading.current_thread():
            reader.join(2.0)


def _result(msg: dict[str, Any]) -> Any:
    code = msg.get("e")
    if code is not None:
        raise OSError(int(code), str(msg.get("m") or os.strerror(int(code))))
    return msg.get("r")
