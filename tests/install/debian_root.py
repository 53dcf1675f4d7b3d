"""A throw-away Debian bookworm root for the installer's tests.

The base (``debootstrap --variant=minbase`` with python3, python3-venv, systemd, sudo) is
made once and cached under the repository's gitignored ``.cache/roots/``; each test
session works on a copy (``cp -a``, a few seconds) so the base stays clean. ``Chroot``
mounts /proc and /dev, puts the checkout in ``/src/mechaway`` and the host's pip cache
at ``/root/.cache/pip`` (downloads are shared, not repeated), and unmounts on close.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CACHE = REPO / ".cache" / "roots"
PACKAGES = "python3,python3-venv,ca-certificates,systemd,sudo,procps"


def ensure_base(arch: str = "amd64") -> Path:
    """The cached base root, made when missing (debootstrap: ~3 min natively)."""
    base = CACHE / f"bookworm-{arch}"
    if (base / "usr" / "bin" / "python3").exists():
        return base
    if shutil.which("debootstrap") is None:
        subprocess.run(["apt-get", "update", "-qq"], check=True)
        subprocess.run(["apt-get", "install", "-y", "-qq", "debootstrap"], check=True,
                       env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})  # fmt: skip
    tmp = base.with_name(base.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    CACHE.mkdir(parents=True, exist_ok=True)
    with (CACHE / f"bookworm-{arch}.debootstrap.log").open("wb") as log:
        subprocess.run(["debootstrap", f"--arch={arch}", "--variant=minbase",
                        f"--include={PACKAGES}", "bookworm", str(tmp)],
                       check=True, stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
    tmp.rename(base)
    return base


def checkout_files() -> list[str]:
    """The checkout as it is: tracked and new files (not .venv, .cache, node_modules)."""
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                         cwd=REPO, check=True, capture_output=True).stdout  # fmt: skip
    return [f for f in out.decode().split("\0") if f and (REPO / f).is_file()]


class Chroot:
    """A copy of the base root with the checkout in it; ``run`` a command inside."""

    def __init__(self, where: Path, arch: str = "amd64") -> None:
        self.path = where / "root"
        subprocess.run(["cp", "-a", str(ensure_base(arch)), str(self.path)], check=True)
        shutil.copy("/etc/resolv.conf", self.path / "etc" / "resolv.conf")
        # this machine's trust store (a TLS-intercepting proxy's CA, where there is one)
        shutil.copy("/etc/ssl/certs/ca-certificates.crt",
                    self.path / "etc" / "ssl" / "certs" / "ca-certificates.crt")
        src = self.path / "src" / "mechaway"
        for f in checkout_files():
            (src / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / f, src / f)
        self._mounts: list[Path] = []
        for m in ("proc", "dev"):
            self._bind(Path("/") / m, self.path / m)
        pip_cache = Path("/root/.cache/pip")
        if pip_cache.is_dir():
            self._bind(pip_cache, self.path / "root" / ".cache" / "pip")

    def _bind(self, src: Path, dst: Path) -> None:
        dst.mkdir(parents=True, exist_ok=True)
        subprocess.run(["mount", "--bind", str(src), str(dst)], check=True)
        self._mounts.append(dst)

    def run(self, *cmd: str, check: bool = True, timeout: float = 600,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:  # fmt: skip
        """``cmd`` inside the root as root (with PATH as a login shell has it)."""
        base_env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                    "HOME": "/root", "LANG": "C.UTF-8"}  # fmt: skip
        result = subprocess.run(["chroot", str(self.path), *cmd], check=False,
                                capture_output=True, text=True, timeout=timeout,
                                env={**base_env, **(env or {})})  # fmt: skip
        if check and result.returncode != 0:
            raise AssertionError(f"{' '.join(cmd)} exited {result.returncode}:\n"
                                 f"{result.stdout}\n{result.stderr}")  # fmt: skip
        return result

    def popen(self, *cmd: str) -> subprocess.Popen[bytes]:
        return subprocess.Popen(["chroot", str(self.path), *cmd], stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT)  # fmt: skip

    def close(self) -> None:
        """Unmount, then delete the copy: never while anything is still mounted in it
        (deleting through a bind mount of /dev would delete the host's)."""
        for m in reversed(self._mounts):
            subprocess.run(["umount", str(m)], check=False)
            if os.path.ismount(m):
                subprocess.run(["umount", "-l", str(m)], check=False)
        still = [m for m in self._mounts if os.path.ismount(m)]
        if still:
            raise RuntimeError(f"still mounted, {self.path} kept: {still}")
        self._mounts.clear()
        shutil.rmtree(self.path, ignore_errors=True)
