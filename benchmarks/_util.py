"""Helpers shared by the benchmarks: free ports, RSS/CPU of a process, waiting for HTTP."""

from __future__ import annotations

import os
import socket
import time
import urllib.request


def compile_package() -> None:
    """Byte-compile mechaway, as ``pip install`` does, so the daemon measured here loads
    .pyc files like an installed one (an editable install under PYTHONDONTWRITEBYTECODE
    would compile every module at every start: ~1 MB more RSS and a slower start)."""
    import compileall

    import mechaway

    compileall.compile_dir(os.path.dirname(mechaway.__file__), quiet=1)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def rss_mb(pid: int) -> float:
    """Resident set size of ``pid`` in MB (VmRSS)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds used so far by ``pid``."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def fault_and_switch_counts(pid: int) -> tuple[int, int]:
    """(minor page faults, voluntary + involuntary context switches) of ``pid`` so far."""
    with open(f"/proc/{pid}/stat") as f:
        minflt = int(f.read().rsplit(")", 1)[1].split()[7])
    switches = 0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.endswith("ctxt_switches:", 0, line.find(":") + 1):
                switches += int(line.split()[1])
    return minflt, switches


def notify_socket(tmp: str) -> tuple[socket.socket, str]:
    """A unix datagram socket standing in for systemd's NOTIFY_SOCKET."""
    path = os.path.join(tmp, "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    return sock, path


def wait_ready(sock: socket.socket, timeout: float = 20.0) -> None:
    """Block until the daemon sends READY=1 (as systemd's Type=notify would see it)."""
    sock.settimeout(timeout)
    while b"READY=1" not in sock.recv(4096):
        pass


def wait_http(url: str, timeout: float = 10.0) -> float:
    """Poll ``url`` until it answers 200; return the seconds it took."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return time.monotonic() - t0
        except OSError:
            time.sleep(0.005)
    raise TimeoutError(f"{url} did not answer within {timeout}s")
