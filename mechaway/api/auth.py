"""Who may call the admin API, and from where: tokens, roles, Host and Origin checks.

The daemon drives actuators, so the API is never open by default:

- a token exists from the first start (``[api] token``, else one generated into the data
  directory, mode 0600, that the CLI on the same machine reads);
- ``Host`` must name this daemon (its listen address, ``localhost``, an IP literal, or a
  name in ``[api] allowed_hosts``): a DNS-rebinding page's own name is refused;
- a state-changing request (or a WebSocket upgrade) whose ``Origin`` is not the daemon's
  own (or in ``[api] allowed_origins``) is refused, so no web page can post to it;
- a read-only token (``[api] read_token``) may read (status, flows, series, metrics,
  events) but never deploy, delete, roll back or write.

Tokens are compared in constant time; an address that keeps presenting wrong tokens is
slowed down and counted. Nothing here logs a token.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import os
import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from mechaway.logs import BurstLog

log = logging.getLogger("mechaway.api.auth")

Role = Literal["admin", "read"]

TOKEN_FILE = "api-token"
#: methods that change nothing (a read token may use them; Origin is not checked)
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
#: wrong tokens from one address within ``FAIL_WINDOW_S`` before its answers are delayed
FAIL_FREE = 5
FAIL_WINDOW_S = 60.0
#: the longest delay a failing address gets per request
MAX_DELAY_S = 2.0
#: addresses remembered for throttling (the least recently failing is forgotten)
MAX_TRACKED = 1024


def token_path(data_dir: Path) -> Path:
    return data_dir / TOKEN_FILE


def read_token_file(data_dir: Path) -> str | None:
    """The generated token, or None when there is none (or it cannot be read by us)."""
    try:
        text = token_path(data_dir).read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return text or None


def ensure_token_file(data_dir: Path) -> tuple[str, bool]:
    """The token in ``data_dir/api-token``, created (mode 0600, 256 bits) when missing.

    Returns (token, created). Created with O_EXCL so two starts cannot write two tokens.
    """
    path = token_path(data_dir)
    existing = read_token_file(data_dir)
    if existing is not None:
        return existing, False
    data_dir.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(32)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # empty or unreadable: refuse to guess, say where
        raise PermissionError(
            13, "exists but holds no readable token (delete it to have a new one made)", str(path)
        ) from None
    with os.fdopen(fd, "w", encoding="ascii") as f:
        f.write(token + "\n")
        f.flush()
        os.fsync(f.fileno())
    return token, True


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


def split_host(value: str) -> str:
    """``example.com:7700`` -> ``example.com``; ``[::1]:7700`` -> ``::1``; lower-case."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1 : value.find("]")] if "]" in value else value
    host, sep, port = value.rpartition(":")
    return host if sep and port.isdigit() else value


@dataclass
class Throttle:
    """Wrong tokens per address: after ``FAIL_FREE`` in a window, each answer waits."""

    fails: OrderedDict[str, tuple[int, float]] = field(default_factory=OrderedDict)
    total: int = 0

    def delay(self, addr: str) -> float:
        n, since = self.fails.get(addr, (0, 0.0))
        if not n or time.monotonic() - since > FAIL_WINDOW_S or n < FAIL_FREE:
            return 0.0
        return float(min(MAX_DELAY_S, 0.1 * 2.0 ** (n - FAIL_FREE)))

    def failed(self, addr: str) -> None:
        self.total += 1
        now = time.monotonic()
        n, since = self.fails.pop(addr, (0, now))
        if now - since > FAIL_WINDOW_S:
            n, since = 0, now
        self.fails[addr] = (n + 1, since)
        while len(self.fails) > MAX_TRACKED:
            self.fails.popitem(last=False)

    def succeeded(self, addr: str) -> None:
        self.fails.pop(addr, None)


class Guard:
    """The API's access rules, built once from the settings."""

    def __init__(
        self,
        *,
        token: str | None,
        read_token: str | None = None,
        mode: Literal["token", "none"] = "token",
        listen_host: str = "127.0.0.1",
        allowed_hosts: tuple[str, ...] = (),
        allowed_origins: tuple[str, ...] = (),
        token_source: str = "api.token",
    ) -> None:
        if mode == "token" and not token:
            raise ValueError("token mode needs a token")
        self.mode = mode
        self._admin = token.encode() if token else b""
        self._read = read_token.encode() if read_token else b""
        self.token_source = token_source
        host = listen_host.lower()
        self.hosts = {h.lower() for h in allowed_hosts} | {"localhost", host}
        self.any_host = host in ("0.0.0.0", "::")
        self.origins = {o.rstrip("/").lower() for o in allowed_origins}
        self.throttle = Throttle()
        self.refused: dict[str, int] = {"host": 0, "origin": 0, "token": 0, "role": 0}
        self._burst = BurstLog(log)

    # -- tokens ---------------------------------------------------------------------------
    def role_of(self, presented: str | bytes | None) -> Role | None:
        """The role a presented token (bare, not ``Bearer ...``) grants, or None."""
        if self.mode == "none":
            return "admin"
        if presented is None:
            return None
        got = presented if isinstance(presented, bytes) else presented.encode(
            "utf-8", "surrogateescape"
        )
        # both compared every time: the timing says nothing about which one matched
        admin = hmac.compare_digest(got, self._admin)
        read = bool(self._read) and hmac.compare_digest(got, self._read)
        return "admin" if admin else ("read" if read else None)

    def bearer_role(self, header: str | None) -> Role | None:
        if self.mode == "none":
            return "admin"
        raw = (header or "").encode("utf-8", "surrogateescape")
        if not raw.startswith(b"Bearer "):
            return None
        return self.role_of(raw[len(b"Bearer ") :])

    # -- where a request comes from -------------------------------------------------------
    def host_ok(self, host_header: str | None) -> bool:
        """This daemon's own names, IP literals (no DNS rebinding through those), or
        ``allowed_hosts``. A missing Host (HTTP/1.0 tools) is allowed: browsers send one."""
        if not host_header:
            return True
        host = split_host(host_header)
        return host in self.hosts or _is_ip(host)

    def origin_ok(self, origin: str | None, host_header: str | None, scheme: str) -> bool:
        """No Origin (not a browser), the daemon's own origin, or an allowed one."""
        if origin is None:
            return True
        origin = origin.rstrip("/").lower()
        if origin in self.origins:
            return True
        if origin == "null" or not host_header:
            return False
        return origin == f"{scheme}://{host_header.strip().lower()}"

    def refuse(self, what: str, text: str, *args: object) -> None:
        """Count a refusal and log it once per burst (never with a token in it)."""
        self.refused[what] += 1
        self._burst.warning("api: refused: " + text, *args)

    def status(self) -> dict[str, object]:
        return {
            "auth": self.mode,
            "token_source": self.token_source if self.mode == "token" else None,
            "read_token": bool(self._read),
            "refused": dict(self.refused),
            "wrong_tokens": self.throttle.total,
        }
