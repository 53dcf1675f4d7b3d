"""systemd/install.sh in a throw-away Debian bookworm root (amd64; see debian_root.py):
install, run again (nothing changes, nothing restarts), the daemon as its service user
with the CLI on PATH finding it, a user with sudo, uninstall keeping the data, purge. The
units are checked with ``systemd-analyze verify`` against the installed root.

systemd is not PID 1 in a chroot: the unit is enabled, not started; the daemon is started
here with the unit's user and environment (the same as prove-arm64.sh does on arm64)."""

from __future__ import annotations

import json
import stat
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from debian_root import REPO, Chroot

from mechaway.testing.daemon import free_port

INSTALL = "/src/mechaway/systemd/install.sh"


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Chroot]:
    r = Chroot(tmp_path_factory.mktemp("installer"))
    try:
        yield r
    finally:
        r.close()


def mode_owner(path: Path) -> tuple[str, str, str]:
    import grp
    import pwd

    st = path.stat()
    del pwd, grp  # the host's names differ: read the root's own files
    return oct(stat.S_IMODE(st.st_mode)), str(st.st_uid), str(st.st_gid)


def ids(root: Chroot, name: str) -> tuple[str, str]:
    uid = root.run("id", "-u", name).stdout.strip()
    gid = root.run("id", "-g", name).stdout.strip()
    return uid, gid


def test_python_older_than_3_11_is_refused_before_anything_changes(root: Chroot) -> None:
    fake = root.path / "tmp" / "oldpy"
    fake.mkdir()
    (fake / "python3").write_text(
        "#!/bin/sh\ncase \"$*\" in *version_info*) exit 1;; *platform*) echo 3.9.2;; esac\n")
    (fake / "python3").chmod(0o755)
    r = root.run(INSTALL, check=False,
                 env={"PATH": "/tmp/oldpy:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin"
                      ":/sbin:/bin"})  # fmt: skip
    assert r.returncode == 1
    assert "mechaway needs Python >= 3.11; python3 here is 3.9.2" in r.stderr
    assert not (root.path / "opt" / "mechaway").exists()
    assert root.run("id", "mechaway", check=False).returncode != 0


def test_install(root: Chroot) -> None:
    r = root.run(INSTALL)
    assert "package installed or upgraded" in r.stdout
    assert "systemd is not running here" in r.stdout
    assert "apt-get" not in r.stdout  # python3-venv is there: no apt at all
    p = root.path
    link = p / "usr" / "local" / "bin" / "mechaway"
    assert link.is_symlink() and str(link.readlink()) == "/opt/mechaway/.venv/bin/mechaway"
    version = root.run("mechaway", "--version").stdout
    assert version.startswith("mechaway ")
    uid, gid = ids(root, "mechaway")
    assert mode_owner(p / "etc" / "mechaway" / "mechaway.toml") == ("0o640", "0", gid)
    assert mode_owner(p / "etc" / "mechaway") == ("0o750", "0", gid)
    assert mode_owner(p / "var" / "lib" / "mechaway") == ("0o750", uid, gid)
    assert list((p / "etc" / "mechaway" / "flows").iterdir()) == []  # no demo flow
    assert 'level = "info"' in (p / "etc" / "mechaway" / "mechaway.toml").read_text()
    assert root.run("systemctl", "is-enabled", "mechaway.service").stdout.strip() == "enabled"
    doc = p / "opt" / "mechaway" / "share" / "doc" / "operations.md"
    assert doc.is_file()  # what the unit's Documentation= points at
    unit = (p / "etc" / "systemd" / "system" / "mechaway.service").read_text()
    assert "Documentation=file:/opt/mechaway/share/doc/operations.md" in unit


def test_the_units_verify_against_the_installed_root(root: Chroot) -> None:
    units = root.path / "etc" / "systemd" / "system"
    hub = units / "mechaway-hub.service"
    hub.write_bytes((REPO / "systemd" / "mechaway-hub.service").read_bytes())
    try:
        for unit in (units / "mechaway.service", hub):
            r = subprocess.run(["systemd-analyze", "verify", f"--root={root.path}",
                                "--man=no", str(unit)],
                               capture_output=True, text=True, check=False)  # fmt: skip
            assert r.returncode == 0, (unit.name, r.stdout, r.stderr)
            assert r.stderr.strip() == "", (unit.name, r.stderr)
        # and the check can fail: a unit whose program is not installed
        bad = units / "broken.service"
        bad.write_text("[Service]\nExecStart=/opt/nothing/here\n")
        r = subprocess.run(["systemd-analyze", "verify", f"--root={root.path}", "--man=no",
                            str(bad)], capture_output=True, text=True, check=False)  # fmt: skip
        assert r.returncode != 0 and "is not executable" in r.stderr
        bad.unlink()
    finally:
        hub.unlink()


def test_running_again_changes_nothing_and_a_sudo_user_can_run_it(root: Chroot) -> None:
    r = root.run(INSTALL)
    assert "package unchanged" in r.stdout
    (root.path / "etc" / "mechaway" / "mechaway.toml").write_text("# edited by the operator\n")
    root.run("useradd", "--create-home", "pi")
    (root.path / "etc" / "sudoers.d" / "pi").write_text("pi ALL=(ALL) NOPASSWD:ALL\n")
    r = root.run("runuser", "-u", "pi", "--", INSTALL)
    assert "package unchanged" in r.stdout  # re-ran itself through sudo, as root
    # an upgrade never overwrites the operator's config
    assert (root.path / "etc" / "mechaway" / "mechaway.toml").read_text() == (
        "# edited by the operator\n"
    )


def health(port: int) -> dict[str, object] | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/health", timeout=2) as r:
            body: dict[str, object] = json.load(r)
            return body
    except OSError:
        return None


def test_the_service_user_runs_it_and_the_cli_finds_it(root: Chroot) -> None:
    port = free_port()
    cfg = root.path / "etc" / "mechaway" / "mechaway.toml"
    cfg.write_text((REPO / "systemd" / "mechaway.toml").read_text()
                   .replace("127.0.0.1:7700", f"127.0.0.1:{port}"))  # fmt: skip
    proc = root.popen("setpriv", "--reuid=mechaway", "--regid=mechaway", "--init-groups",
                      "env", "HOME=/var/lib/mechaway",
                      "MECHAWAY_CONFIG=/etc/mechaway/mechaway.toml",
                      "/opt/mechaway/.venv/bin/mechaway", "start")  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while health(port) is None:
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else b""
            assert time.monotonic() < deadline, "no health answer"
            time.sleep(0.2)
        token = root.path / "var" / "lib" / "mechaway" / "api-token"
        uid, gid = ids(root, "mechaway")
        assert mode_owner(token) == ("0o600", uid, gid)
        # root, no option: /etc/mechaway/mechaway.toml and the generated token
        out = root.run("mechaway", "status").stdout
        assert out.startswith("mechaway ") and "problems: none" in out and "flows: 0" in out
        # another user may not read the service's config (0640 root:mechaway: it may hold
        # DSNs and tokens) and is told so in one line; with sudo it works
        denied = root.run("runuser", "-u", "pi", "--", "/usr/local/bin/mechaway", "status",
                          check=False)  # fmt: skip
        assert denied.returncode == 1
        assert denied.stderr == "mechaway: Permission denied (/etc/mechaway/mechaway.toml)\n"
        out = root.run("runuser", "-u", "pi", "--", "sudo", "mechaway", "status").stdout
        assert "problems: none" in out
    finally:
        proc.terminate()
        proc.wait(30)
    db = root.path / "var" / "lib" / "mechaway" / "mechaway.db"
    assert db.stat().st_uid == int(ids(root, "mechaway")[0])


def test_an_upgrade_restarts_the_running_service_and_nothing_else_does(root: Chroot) -> None:
    """With systemd up (here a stand-in systemctl that records its calls and says the
    service is active): a run that changes nothing leaves the service alone; a changed
    package restarts it."""
    calls = root.path / "tmp" / "systemctl.calls"
    stub = root.path / "usr" / "local" / "sbin" / "systemctl"
    stub.write_text(f"#!/bin/sh\necho \"$*\" >> /tmp/{calls.name}\n"
                    "case \"$1\" in is-active) exit 0;; esac\nexit 0\n")  # fmt: skip
    stub.chmod(0o755)
    running = root.path / "run" / "systemd" / "system"
    running.mkdir(parents=True)
    try:
        r = root.run(INSTALL)
        assert "nothing changed; the running service was left alone" in r.stdout
        assert "restart" not in calls.read_text()
        calls.unlink()
        module = root.path / "src" / "mechaway" / "mechaway" / "__init__.py"
        module.write_text(module.read_text() + "\n# an upgrade\n")
        r = root.run(INSTALL)
        assert "package or unit changed: restarting the service" in r.stdout
        assert "restart mechaway.service" in calls.read_text().splitlines()
        assert "package installed or upgraded" in r.stdout
    finally:
        stub.unlink()
        running.rmdir()
        calls.unlink(missing_ok=True)


def test_uninstall_keeps_config_and_data_and_purge_removes_them(root: Chroot) -> None:
    r = root.run(INSTALL, "--uninstall")
    assert "kept /etc/mechaway" in r.stdout
    p = root.path
    assert not (p / "opt" / "mechaway").exists()
    assert not (p / "usr" / "local" / "bin" / "mechaway").is_symlink()
    assert not (p / "etc" / "systemd" / "system" / "mechaway.service").exists()
    assert (p / "var" / "lib" / "mechaway" / "mechaway.db").is_file()
    assert (p / "etc" / "mechaway" / "mechaway.toml").is_file()
    assert root.run("id", "mechaway").returncode == 0
    r = root.run(INSTALL, "--uninstall", "--purge")
    assert not (p / "var" / "lib" / "mechaway").exists()
    assert not (p / "etc" / "mechaway").exists()
    assert root.run("id", "mechaway", check=False).returncode != 0
    bad = root.run(INSTALL, "--purge", check=False)
    assert bad.returncode == 2 and "--purge goes with --uninstall" in bad.stderr
