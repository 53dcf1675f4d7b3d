"""Daemon configuration: ``mechaway.toml`` + ``MECHAWAY_*`` environment overrides.

Validated once at start. Unknown keys are errors that name the key. With no file at all
the embedded defaults apply, so ``mechaway start --flows DIR`` just works.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import tomllib
from pathlib import Path
from typing import Any, Literal

import msgspec

from mechaway.errors import ConfigError

CONFIG_ENV = "MECHAWAY_CONFIG"


def default_data_dir() -> str:
    """``/var/lib/mechaway`` for root (the systemd service), else the XDG data dir."""
    if os.geteuid() == 0:
        return "/var/lib/mechaway"
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return str(Path(base) / "mechaway")


class _Section(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    pass


class DeviceSettings(_Section):
    id: str = msgspec.field(default_factory=socket.gethostname)
    data_dir: str = msgspec.field(default_factory=default_data_dir)


class ApiSettings(_Section):
    #: host:port of the admin API; beyond loopback only with a token
    listen: str = "127.0.0.1:7700"
    token: str | None = None
    #: largest request body accepted (flow documents, webhooks)
    max_body_bytes: int = 1024 * 1024
    enabled: bool = True
    #: import the HTTP stack at the first request instead of at start (saves ~16 MB RSS
    #: on a device nobody queries; the first request takes ~0.2 s longer)
    lazy: bool = True


class FlowsSettings(_Section):
    #: directory of *.json / *.yaml flow files, watched for changes
    dir: str | None = None
    #: seconds between scans of the directory (SIGHUP rescans at once)
    poll_interval: float = 1.0


class HubSettings(_Section):
    url: str | None = None
    token: str | None = None
    public_key: str | None = None


class EngineSettings(_Section):
    #: bound on draining a sink's queue or stopping a node
    stop_timeout: float = 5.0


class StoreSettings(_Section):
    #: group-commit window: longer = fewer fsyncs and bytes per message, later acks
    commit_interval_ms: float = 10.0
    #: how often changed node context (``persist: true``) is saved
    context_interval_s: float = 2.0

    def __post_init__(self) -> None:
        if not 0 < self.commit_interval_ms <= 1000:
            raise ValueError("commit_interval_ms must be within (0, 1000]")
        if self.context_interval_s <= 0:
            raise ValueError("context_interval_s must be > 0")


class LogSettings(_Section):
    level: Literal["debug", "info", "warning", "error"] = "info"


class Settings(_Section):
    device: DeviceSettings = msgspec.field(default_factory=DeviceSettings)
    api: ApiSettings = msgspec.field(default_factory=ApiSettings)
    flows: FlowsSettings = msgspec.field(default_factory=FlowsSettings)
    engine: EngineSettings = msgspec.field(default_factory=EngineSettings)
    log: LogSettings = msgspec.field(default_factory=LogSettings)
    store: StoreSettings = msgspec.field(default_factory=StoreSettings)
    hub: HubSettings = msgspec.field(default_factory=HubSettings)
    #: ``[mqtt.NAME]`` connections; checked by the MQTT driver's settings struct
    mqtt: dict[str, dict[str, Any]] = msgspec.field(default_factory=dict)

    @property
    def data_dir(self) -> Path:
        return Path(self.device.data_dir).expanduser()

    @property
    def db_path(self) -> Path:
        return self.data_dir / "mechaway.db"


def parse_listen(listen: str) -> tuple[str, int]:
    """``"127.0.0.1:7700"`` / ``"[::1]:7700"`` -> (host, port); ConfigError when malformed."""
    host, sep, port_s = listen.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port_s.isdigit() or not 0 < int(port_s) < 65536:
        raise ConfigError(f"api.listen: {listen!r} is not host:port")
    return host, int(port_s)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _env_overrides(raw: dict[str, Any], env: dict[str, str]) -> None:
    """``MECHAWAY_API_TOKEN=x`` sets ``[api] token``; unknown names are errors too."""
    for name, value in env.items():
        if not name.startswith("MECHAWAY_") or name == CONFIG_ENV:
            continue
        rest = name[len("MECHAWAY_") :].lower()
        section, _, key = rest.partition("_")
        known = _SECTION_KEYS.get(section)
        if known is None or key not in known:
            raise ConfigError(f"environment: {name} is not a known setting")
        raw.setdefault(section, {})[key] = value


_SECTION_KEYS = {
    name: set(cls.__struct_fields__)
    for name, cls in (
        ("device", DeviceSettings),
        ("api", ApiSettings),
        ("flows", FlowsSettings),
        ("engine", EngineSettings),
        ("log", LogSettings),
        ("store", StoreSettings),
        ("hub", HubSettings),
    )
}


def _where(err: msgspec.ValidationError) -> str:
    text = str(err)
    head, _, path = text.partition(" - at `$")
    where = path.rstrip("`").lstrip(".")
    return f"{where}: {head}" if where else head


def load_settings(path: str | Path | None = None, *, env: dict[str, str] | None = None) -> Settings:
    """Read the config file (``path``, else ``$MECHAWAY_CONFIG``, else defaults) and env."""
    env = dict(os.environ) if env is None else env
    source = str(path) if path is not None else env.get(CONFIG_ENV)
    raw: dict[str, Any] = {}
    if source:
        p = Path(source)
        try:
            raw = tomllib.loads(p.read_text())
        except OSError as err:
            raise ConfigError(f"{p}: cannot read config: {err.strerror or err}") from err
        except tomllib.TOMLDecodeError as err:
            raise ConfigError(f"{p}: invalid TOML: {err}") from err
    _env_overrides(raw, env)
    try:
        settings = msgspec.convert(raw, Settings, strict=False)
    except msgspec.ValidationError as err:
        msg = _where(err).replace("Object contains unknown field", "unknown key")
        raise ConfigError(f"{source or 'config'}: {msg}") from err
    host, _port = parse_listen(settings.api.listen)
    if settings.api.enabled and not settings.api.token and not is_loopback(host):
        raise ConfigError(
            f"api.listen: refusing to listen on {host} without api.token "
            "(set a token, or listen on 127.0.0.1)"
        )
    if settings.flows.poll_interval <= 0:
        raise ConfigError("flows.poll_interval: must be > 0")
    return settings
