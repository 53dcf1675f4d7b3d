"""A private mosquitto for tests and benchmarks: free port, temp config, start/stop/kill/restart.

Tests prove the MQTT driver against the real broker, never a fake, and kill it mid-stream
to prove reconnection. ``MosquittoBroker`` owns one temp directory (config, optional
password file, persistence, log) and at most one broker process at a time; the port
stays the same across restarts so clients reconnect to the same address.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType

from mechaway.errors import MechawayError

__all__ = ["BrokerError", "MosquittoBroker", "find_mosquitto", "free_port", "hash_password"]

_CANDIDATES = ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto", "/usr/bin/mosquitto")


class BrokerError(MechawayError):
    """The test broker could not be found, started or stopped."""


def find_mosquitto() -> str:
    """Path of the mosquitto binary (``MW_MOSQUITTO`` overrides); BrokerError if none."""
    env = os.environ.get("MW_MOSQUITTO")
    if env:
        return env
    found = shutil.which("mosquitto")
    if found:
        return found
    for path in _CANDIDATES:
        if os.access(path, os.X_OK):
            return path
    raise BrokerError("mosquitto not found: apt-get install mosquitto, or set MW_MOSQUITTO")


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (the kernel's pick)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def hash_password(password: str, salt: bytes | None = None) -> str:
    """A mosquitto password-file hash (``$6$``: salted SHA-512, read by mosquitto 1.5-2.x)."""
    salt = salt if salt is not None else os.urandom(12)
    digest = hashlib.sha512(password.encode() + salt).digest()
    return f"$6${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


class MosquittoBroker:
    """One private mosquitto on ``127.0.0.1:port``.

    ``users`` maps user name to password: anonymous access is then refused. With
    ``persistence`` the broker keeps sessions and queued QoS>0 messages across a graceful
    ``stop()`` (SIGTERM) and ``start()``; ``stop(kill=True)`` (SIGKILL) loses what was
    not saved, like a power cut. ``save_every_change`` writes the database after every
    subscription change or queued message, so even SIGKILL keeps sessions.
    """

    def __init__(
        self,
        *,
        port: int | None = None,
        users: Mapping[str, str] | None = None,
        persistence: bool = False,
        save_every_change: bool = False,
        extra_config: str = "",
        binary: str | None = None,
        log: bool = False,
    ) -> None:
        self.host = "127.0.0.1"
        self.port = port if port is not None else free_port(self.host)
        self.users = dict(users or {})
        self.persistence = persistence or save_every_change
        self.save_every_change = save_every_change
        self.extra_config = extra_config
        self.binary = binary or find_mosquitto()
        self.log = log
        self._dir = Path(tempfile.mkdtemp(prefix="mechaway-mosquitto-"))
        self._proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    # -- paths ---------------------------------------------------------------------------
    @property
    def config_path(self) -> Path:
        return self._dir / "mosquitto.conf"

    @property
    def log_path(self) -> Path:
        return self._dir / "mosquitto.log"

    @property
    def pid(self) -> int | None:
        """The running broker's process id (None when stopped)."""
        return self._proc.pid if self.running and self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def set_users(self, users: Mapping[str, str] | None) -> None:
        """Change the accounts; takes effect at the next ``start()``/``restart()``."""
        self.users = dict(users or {})

    def _write_config(self) -> None:
        lines = [
            f"listener {self.port} {self.host}",
            f"allow_anonymous {'false' if self.users else 'true'}",
            "max_queued_messages 1000000",
            "max_inflight_messages 20",
            "set_tcp_nodelay true",
        ]
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            # As root mosquitto drops to user "mosquitto", who cannot read our temp dir.
            lines.append("user root")
        if self.users:
            pw = self._dir / "passwd"
            pw.write_text("".join(f"{u}:{hash_password(p)}\n" for u, p in self.users.items()))
            pw.chmod(0o600)
            lines.append(f"password_file {pw}")
        if self.persistence:
            lines += [
                "persistence true",
                f"persistence_location {self._dir}/",
            ]
            if self.save_every_change:
                lines += ["autosave_on_changes true", "autosave_interval 1"]
            else:
                lines.append("autosave_interval 3600")
        else:
            lines.append("persistence false")
        if self.log:
            lines += [f"log_dest file {self.log_path}", "log_type all"]
        else:
            lines.append("log_dest none")
        if self.extra_config:
            lines.append(self.extra_config)
        self.config_path.write_text("\n".join(lines) + "\n")

    # -- lifecycle -----------------------------------------------------------------------
    def start(self, timeout: float = 5.0) -> None:
        """Start the broker and return once it accepts TCP connections."""
        if self.running:
            return
        self._write_config()
        self._proc = subprocess.Popen(
            [self.binary, "-c", str(self.config_path)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        self.starts += 1
        deadline = time.monotonic() + timeout
        while True:
            if self._proc.poll() is not None:
                err = self._proc.stderr.read().decode(errors="replace") if self._proc.stderr else ""
                self._proc = None
                raise BrokerError(f"mosquitto exited at start on port {self.port}: {err.strip()}")
            try:
                with socket.create_connection((self.host, self.port), timeout=0.2):
                    return
            except OSError:
                if time.monotonic() > deadline:
                    self.stop(kill=True)
                    raise BrokerError(f"mosquitto did not accept on port {self.port}") from None
                time.sleep(0.01)

    def stop(self, *, kill: bool = False, timeout: float = 5.0) -> None:
        """Stop the broker: SIGTERM (persistence saved) or SIGKILL with ``kill=True``."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout)
        if proc.stderr is not None:
            proc.stderr.close()

    def restart(self, *, kill: bool = False, timeout: float = 5.0) -> None:
        self.stop(kill=kill, timeout=timeout)
        self.start(timeout=timeout)

    def close(self) -> None:
        """Stop the broker and remove its temp directory. Idempotent."""
        self.stop(kill=True)
        shutil.rmtree(self._dir, ignore_errors=True)

    # -- async variants (keep the event loop free while the broker starts/stops) ----------
    async def astart(self, timeout: float = 5.0) -> None:
        await asyncio.to_thread(self.start, timeout)

    async def astop(self, *, kill: bool = False, timeout: float = 5.0) -> None:
        await asyncio.to_thread(lambda: self.stop(kill=kill, timeout=timeout))

    async def arestart(self, *, kill: bool = False, timeout: float = 5.0) -> None:
        await asyncio.to_thread(lambda: self.restart(kill=kill, timeout=timeout))

    def __enter__(self) -> MosquittoBroker:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __del__(self) -> None:
        # Last resort only: a forgotten broker must not outlive the test run.
        with contextlib.suppress(Exception):
            if self._proc is not None and self._proc.poll() is None:
                self._proc.kill()
                self._proc.wait(1)

    def __repr__(self) -> str:
        state = f"pid {self.pid}" if self.running else "stopped"
        return f"MosquittoBroker({self.host}:{self.port}, {state})"
