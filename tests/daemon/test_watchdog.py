"""systemd's watchdog: pings from the event loop while the daemon can do its job."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mechaway.daemon import run_watchdog, watchdog_interval
from mechaway.testing.daemon import DaemonProc, clean_env


def test_the_interval_is_half_the_timeout_and_only_for_this_process() -> None:
    assert watchdog_interval({"WATCHDOG_USEC": "30000000"}) == 15.0
    mine = str(os.getpid())
    assert watchdog_interval({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": mine}) == 1.0
    assert watchdog_interval({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "1"}) is None
    for usec in ("", "0", "-5", "soon"):
        assert watchdog_interval({"WATCHDOG_USEC": usec}) is None
    assert watchdog_interval({}) is None


@pytest.mark.asyncio
async def test_pings_stop_for_good_once_the_daemon_is_in_trouble(
    caplog: pytest.LogCaptureFixture,
) -> None:
    sent: list[str] = []
    checks = iter([None, None, "the store's writer thread for x.db has stopped", None])
    with caplog.at_level(logging.ERROR, "mechaway.daemon"):
        await asyncio.wait_for(run_watchdog(0.001, lambda: next(checks), sent.append), 5)
    assert sent == ["WATCHDOG=1", "WATCHDOG=1"]
    assert "watchdog: the store's writer thread for x.db has stopped" in caplog.text


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    path = str(tmp_path / "notify.sock")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(path)
    s.settimeout(0.2)
    yield s, path
    s.close()


def messages(s: socket.socket, seconds: float) -> list[str]:
    got: list[str] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with contextlib.suppress(TimeoutError):
            got.append(s.recv(4096).decode())
    return got


def test_the_running_daemon_pings_systemd(
    tmp_path: Path, notify_socket: tuple[socket.socket, str]
) -> None:
    s, path = notify_socket
    d = DaemonProc(tmp_path / "d", env=clean_env(NOTIFY_SOCKET=path, WATCHDOG_USEC="200000"))
    d.start()
    try:
        got = messages(s, 1.5)
        assert got[0] == "READY=1"
        assert got.count("WATCHDOG=1") >= 3, got
    finally:
        assert d.terminate() == 0
    assert messages(s, 0.3)[-1] == "STOPPING=1"  # queued while it stopped; no ping after


def test_no_pings_when_the_watchdog_is_meant_for_another_process(
    tmp_path: Path, notify_socket: tuple[socket.socket, str]
) -> None:
    s, path = notify_socket
    env = clean_env(NOTIFY_SOCKET=path, WATCHDOG_USEC="200000", WATCHDOG_PID="1")
    d = DaemonProc(tmp_path / "d", env=env)
    d.start()
    try:
        got = messages(s, 1.0)
    finally:
        d.terminate()
    assert got == ["READY=1"]
