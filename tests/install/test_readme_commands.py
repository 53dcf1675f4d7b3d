"""The README's first command, as written, on a fresh Debian bookworm root: in a root shell
(no sudo needed) and as a user with sudo. It installs, starts the daemon on the example
flow and the daemon answers; the tour's first CLI call finds its token."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from debian_root import REPO, Chroot

PORT = 7700  # the README's command uses the default listen address


def first_command() -> str:
    readme = (REPO / "README.md").read_text()
    (line,) = [ln for ln in readme.splitlines() if ln.startswith("s=$(command -v sudo")]
    assert "mechaway start --flows configs/flows --data-dir ./data" in line
    return line


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Chroot]:
    r = Chroot(tmp_path_factory.mktemp("readme"))
    try:
        yield r
    finally:
        r.close()


def health() -> dict[str, object] | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{PORT}/api/v1/health", timeout=2) as r:
            data: dict[str, object] = json.loads(r.read())
            return data
    except OSError:
        return None


def run_until_healthy(
    root: Chroot, shell: list[str], log: Path, then: Callable[[], None] = lambda: None
) -> None:
    """Run the README's command until the daemon answers, do ``then``, stop it."""
    assert health() is None, f"something already answers on {PORT}"
    with log.open("wb") as out:
        proc = subprocess.Popen(["chroot", str(root.path), *shell], stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 600  # a first install downloads its wheels
        while health() is None:
            assert proc.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(1)
        then()
    finally:
        stop_inside(root)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            stop_inside(root, signal.SIGKILL)
            proc.wait(10)


def stop_inside(root: Chroot, sig: int = signal.SIGTERM) -> None:
    """Signal every process whose root is the chroot (runuser -l starts a session of its
    own, so the daemon is not in ours), and wait until none is left."""
    target = str(root.path.resolve())
    deadline = time.monotonic() + 30
    while True:
        pids = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    if os.readlink(entry / "root") == target:
                        pids.append(int(entry.name))
                except OSError:
                    continue
        if not pids or time.monotonic() > deadline:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        time.sleep(0.5)


def test_the_first_command_in_a_root_shell(root: Chroot, tmp_path: Path) -> None:
    cmd = f"cd /src/mechaway && {first_command()}"

    def tour() -> None:  # the tour's first steps, against the running daemon
        steps = ("cd /src/mechaway && . .venv/bin/activate"
                 " && export MECHAWAY_DEVICE_DATA_DIR=$PWD/data && mechaway flows list")
        out = root.run("/bin/bash", "-c", steps)
        assert re.search(r"^demo\s+rev 1\s+running\s+file", out.stdout, re.M), out.stdout

    run_until_healthy(root, ["/bin/bash", "-c", cmd], tmp_path / "root.log", tour)
    token = root.path / "src" / "mechaway" / "data" / "api-token"
    assert token.stat().st_mode & 0o777 == 0o600


def test_the_first_command_as_a_user_with_sudo(root: Chroot, tmp_path: Path) -> None:
    root.run("useradd", "--create-home", "--shell", "/bin/bash", "pi")
    (root.path / "etc" / "sudoers.d" / "pi").write_text("pi ALL=(ALL) NOPASSWD:ALL\n")
    root.run("cp", "-a", "/src/mechaway", "/home/pi/mechaway")
    root.run("rm", "-rf", "/home/pi/mechaway/.venv", "/home/pi/mechaway/data")
    root.run("chown", "-R", "pi:pi", "/home/pi/mechaway")
    cmd = f"cd ~/mechaway && {first_command()}"
    run_until_healthy(root, ["runuser", "-l", "pi", "-c", cmd], tmp_path / "pi.log")
    assert (root.path / "home" / "pi" / "mechaway" / "data" / "api-token").exists()
