"""``mechaway start`` as a real subprocess, for tests: start, talk to its API, signal, kill.

The daemon runs the installed CLI (or another entry script, e.g. one that registers a
test-only node type first) on a private port, data dir and flows dir under ``root``.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any


def clean_env(**extra: str) -> dict[str, str]:
    """The environment without any MECHAWAY_* setting of the machine running the tests."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MECHAWAY_")}
    env.update(extra)
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class DaemonProc:
    """One daemon subprocess under ``root`` (flows/, data/, mechaway.toml, daemon.log)."""

    def __init__(
        self,
        root: Path,
        *,
        token: str | None = None,
        config: str = "",
        entry: Sequence[str] = ("-m", "mechaway"),
        env: dict[str, str] | None = None,
    ) -> None:
        self.root = root
        self.flows = root / "flows"
        self.data = root / "data"
        self.config = root / "mechaway.toml"
        self.logfile = root / "daemon.log"
        self.flows.mkdir(parents=True, exist_ok=True)
        self.token = token
        self.extra_config = config
        self.entry = list(entry)
        self.env = env if env is not None else clean_env()
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def db(self) -> Path:
        return self.data / "mechaway.db"

    def write_config(self, poll_interval: float) -> None:
        api = f'[api]\ntoken = "{self.token}"\n\n' if self.token else ""
        self.config.write_text(
            f'{api}[flows]\npoll_interval = {poll_interval}\n\n[log]\nlevel = "info"\n\n'
            f"[engine]\nstop_timeout = 2.0\n\n{self.extra_config}\n"
        )

    def start(self, poll_interval: float = 0.2, *, wait: bool = True) -> None:
        """Start the daemon; with ``wait``, return once ``/health`` answers."""
        self.write_config(poll_interval)
        self.port = free_port()
        with self.logfile.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, *self.entry, "--config", str(self.config), "start",
                 "--flows", str(self.flows), "--data-dir", str(self.data),
                 "--listen", f"127.0.0.1:{self.port}"],
                stdout=log, stderr=subprocess.STDOUT, env=self.env,
            )  # fmt: skip
        if wait:
            self.wait(lambda: self.health() == 200, 20, "the API to answer /health")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.logfile.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def wait(self, pred: Callable[[], Any], timeout: float, what: str) -> Any:
        """Poll ``pred`` until truthy (returned); fail with the log if the daemon died."""
        deadline = time.monotonic() + timeout
        while True:
            assert self.alive(), (
                f"the daemon exited ({self.proc and self.proc.returncode}):\n{self.log_tail()}"
            )
            value = pred()
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"timed out waiting for {what}; daemon log:\n{self.log_tail()}"
                )
            time.sleep(0.05)

    def health(self) -> int:
        try:
            return int(self.api("GET", "/health", token=None)[0])
        except OSError:
            return 0

    def own_token(self) -> str | None:
        """The configured token, else the one the daemon generated into its data dir."""
        if self.token:
            return self.token
        try:
            return (self.data / "api-token").read_text().strip() or None
        except OSError:
            return None

    def api(
        self,
        method: str,
        path: str,
        body: Any = None,
        token: str | None = "",
        headers: dict[str, str] | None = None,
    ) -> Any:
        """(status, decoded body); ``token=""`` means the daemon's own token."""
        token = self.own_token() if token == "" else token
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(f"{self.url}/api/v1{path}", data=data, method=method)
        req.add_header("Content-Type", "application/json")
        if token:
            req.add_header("Authorization", f"Bearer {token}")
        for name, value in (headers or {}).items():
            req.add_header(name, value)
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read() or b"null")

    def get(self, path: str) -> Any:
        """The body of a GET that must succeed."""
        code, body = self.api("GET", path)
        assert code == 200, (code, body)
        return body

    def status(self) -> dict[str, Any]:
        result: dict[str, Any] = self.get("/status")
        return result

    def flow_status(self, fid: str) -> dict[str, Any] | None:
        flow: dict[str, Any] | None = self.status()["flows"].get(fid)
        return flow

    def cli(self, *args: str, token: str | None = None) -> subprocess.CompletedProcess[str]:
        extra = ["--token", token] if token is not None else []
        return subprocess.run(
            [sys.executable, "-m", "mechaway", "--config", str(self.config), "--url", self.url,
             "--data-dir", str(self.data), *extra, *args],
            check=False, capture_output=True, text=True, timeout=60, env=self.env,
        )  # fmt: skip

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def terminate(self, timeout: float = 20.0) -> int:
        """SIGTERM and the exit status; fails (after killing it) if it does not stop."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"SIGTERM did not stop the daemon:\n{self.log_tail()}") from None

    def kill9(self) -> None:
        """SIGKILL, as a power cut would (for the daemon's process)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    kill = kill9
