"""Daemon configuration: ``mechaway.toml`` + ``MECHAWAY_*`` environment overrides.

Validated once at start. Unknown keys are errors that name the key. With no file at all
the embedded defaults apply, so ``mechaway start --flows DIR`` just works.
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec

from mechaway.errors import ConfigError

CONFIG_ENV = "MECHAWAY_CONFIG"
#: a config file larger than this is refused unread (a wrong path: a log, a device, ...)
MAX_CONFIG_BYTES = 1024 * 1024


def default_data_dir() -> str:
    """``/var/lib/mechaway`` for root (the systemd service), else the XDG data dir."""
    if os.geteuid() == 0:
        return "/var/lib/mechaway"
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return str(Path(base) / "mechaway")


class _Section(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    pass


#: a string that must not be empty (an empty path would silently mean the current directory)
NonEmpty = Annotated[str, msgspec.Meta(min_length=1)]


class DeviceSettings(_Section):
    id: NonEmpty = msgspec.field(default_factory=socket.gethostname)
    data_dir: NonEmpty = msgspec.field(default_factory=default_data_dir)


class ApiSettings(_Section):
    #: host:port of the admin API; beyond loopback only with a token
    listen: str = "127.0.0.1:7700"
    token: NonEmpty | None = None
    #: largest request body accepted (flow documents, webhooks)
    max_body_bytes: Annotated[int, msgspec.Meta(ge=1, le=1024**3)] = 1024 * 1024
    enabled: bool = True
    #: import the HTTP stack at the first request instead of at start (saves ~16 MB RSS
    #: on a device nobody queries; the first request takes ~0.2 s longer)
    lazy: bool = True


class FlowsSettings(_Section):
    #: directory of *.json / *.yaml flow files, watched for changes
    dir: NonEmpty | None = None
    #: seconds between scans of the directory (SIGHUP rescans at once)
    poll_interval: Annotated[float, msgspec.Meta(gt=0, le=86400)] = 1.0


class HubSettings(_Section):
    """Sync with a mechaway hub (``mechaway/hub/edge.py``); off unless ``url`` is set."""

    url: str | None = None
    #: this device's token (``mechaway hub devices add`` prints it)
    token: str | None = None
    #: the hub's signing key, as ``mechaway hub public-key`` prints it: bundles must verify
    public_key: str | None = None
    #: seconds between heartbeats (each one jittered by up to +-10%)
    heartbeat: Annotated[float, msgspec.Meta(ge=1, le=86400)] = 30.0
    #: CA certificate (PEM) that an https:// hub's certificate must chain to
    ca_file: str | None = None
    #: with no token: register with this token at the hub, keep the token it gives
    provisioning_token: str | None = None
    #: messages per upload batch
    batch: Annotated[int, msgspec.Meta(ge=1, le=50_000)] = 2000
    #: backlog messages sent per second at most (live data goes first, unthrottled)
    backlog_rate: Annotated[float, msgspec.Meta(gt=0)] = 50_000.0
    #: after a hub deploy: a flow whose nodes error more than ``error_threshold`` times
    #: within ``health_window`` seconds is rolled back to the last good revision
    health_window: Annotated[float, msgspec.Meta(ge=0, le=86400)] = 30.0
    error_threshold: Annotated[int, msgspec.Meta(ge=0)] = 10
    #: bound on one request to the hub
    timeout: Annotated[float, msgspec.Meta(gt=0, le=3600)] = 30.0


class EngineSettings(_Section):
    #: bound on draining a sink's queue or stopping a node
    stop_timeout: Annotated[float, msgspec.Meta(gt=0, le=3600)] = 5.0


class StoreSettings(_Section):
    #: group-commit window: longer = fewer fsyncs and bytes per message, later acks
    commit_interval_ms: Annotated[float, msgspec.Meta(gt=0, le=1000)] = 10.0
    #: how often changed node context (``persist: true``) is saved
    context_interval_s: Annotated[float, msgspec.Meta(gt=0, le=86400)] = 2.0


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
    #: ``{kind: {name: settings}}``: every ``[KIND.NAME]`` driver section (``[mqtt.plc]``,
    #: ``[serial.arduino]``, ``[gpio]``), validated by its driver's settings struct
    #: (``mechaway.drivers.base.parse_sections``); not a section of the file itself
    drivers: dict[str, dict[str, Any]] = msgspec.field(default_factory=dict)

    @property
    def data_dir(self) -> Path:
        return Path(self.device.data_dir).expanduser()

    @property
    def db_path(self) -> Path:
        return self.data_dir / "mechaway.db"


#: a host name (labels of letters, digits, ``-`` and, as container names have them, ``_``)
#: or an IP address: a NUL, a blank or a 64-character label would fail later, not as OSError
_HOST_RE = re.compile(r"[A-Za-z0-9_-]{1,63}(\.[A-Za-z0-9_-]{1,63})*\.?")
#: a device id goes into MQTT topics and client ids: no wildcards, separators or blanks
_DEVICE_ID_RE = re.compile(r"[^/+#\s\x00-\x1f\x7f]{1,253}")
#: a bearer token travels in an HTTP header: printable ASCII, no blanks
TOKEN_RE = re.compile(r"[\x21-\x7e]+")


def parse_listen(listen: str, where: str = "api.listen") -> tuple[str, int]:
    """``"127.0.0.1:7700"`` / ``"[::1]:7700"`` -> (host, port); ConfigError when malformed.

    ``where`` names the setting in the error (``--listen`` for the command-line flag).
    """
    host, sep, port_s = listen.rpartition(":")
    host = host.strip("[]")
    ok = (
        sep
        and host
        and port_s.isascii()
        and port_s.isdigit()
        and len(port_s) <= 5
        and 0 < int(port_s) < 65536
        and (_is_ip(host) or (len(host) <= 253 and _HOST_RE.fullmatch(host) is not None))
    )
    if not ok:
        raise ConfigError(f"{where}: {_short(listen)} is not host:port")
    return host, int(port_s)


def _short(value: str, limit: int = 60) -> str:
    """``repr`` of a value for an error line, cut to ``limit`` characters."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 4] + "...'"


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


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


class _Places:
    """Where each setting came from, so an error names the file or the environment variable."""

    def __init__(self, source: str | None) -> None:
        self.source = source
        #: (section, key) -> the MECHAWAY_* variable that set it
        self.env: dict[tuple[str, str], str] = {}

    def of(self, dotted: str) -> str:
        """``api.token`` -> ``/etc/mechaway.toml: api.token`` or ``MECHAWAY_API_TOKEN``."""
        section, _, rest = dotted.partition(".")
        name = self.env.get((section, rest.partition(".")[0]))
        if name is not None:
            return f"environment: {name} ({dotted})"
        return f"{self.source}: {dotted}" if self.source else dotted

    def error(self, dotted: str, message: str) -> ConfigError:
        return ConfigError(f"{self.of(dotted)}: {message}")


def _env_overrides(raw: dict[str, Any], env: dict[str, str], places: _Places) -> None:
    """``MECHAWAY_API_TOKEN=x`` sets ``[api] token``; unknown names are errors too."""
    for name, value in sorted(env.items()):
        if not name.startswith("MECHAWAY_") or name == CONFIG_ENV:
            continue
        rest = name[len("MECHAWAY_") :].lower()
        section, _, key = rest.partition("_")
        known = _SECTION_KEYS.get(section)
        if known is None or key not in known:
            raise ConfigError(f"environment: {name} is not a known setting")
        raw.setdefault(section, {})[key] = value  # the file's sections are tables (checked)
        places.env[(section, key)] = name


def _read_toml(p: Path) -> dict[str, Any]:
    """The parsed file; every way it can be unusable is one ConfigError naming it."""
    try:
        with p.open("rb") as f:
            data = f.read(MAX_CONFIG_BYTES + 1)
    except OSError as err:
        raise ConfigError(f"{p}: cannot read config: {err.strerror or err}") from err
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{p}: larger than {MAX_CONFIG_BYTES // 1024} KiB: not a config file?")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise ConfigError(f"{p}: invalid TOML: line {line}: not UTF-8 text") from err
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{p}: invalid TOML: {err}") from err
    except RecursionError as err:  # a = [[[[... thousands deep
        raise ConfigError(f"{p}: invalid TOML: nested too deeply") from err
    except ValueError as err:  # an integer of more than 4300 digits
        raise ConfigError(f"{p}: invalid TOML: {err}") from err


def _convert(raw: dict[str, Any], places: _Places, *, strict: bool) -> Settings:
    """``strict`` for the file (TOML has types: ``"10"`` is not a number there); the
    environment only has strings, so values that came from it are converted leniently."""
    if "drivers" in raw:
        raise places.error("drivers", "unknown key")
    try:
        return msgspec.convert(raw, Settings, strict=strict)
    except msgspec.ValidationError as err:
        text = str(err).replace("Object contains unknown field", "unknown key")
        head, _, path = text.partition(" - at `$")
        where = path.rstrip("`").lstrip(".")
        if not where:
            raise ConfigError(f"{places.source or 'config'}: {head}") from err
        raise places.error(where, head) from err


def _check(settings: Settings, places: _Places) -> None:
    """What the types alone do not say."""
    if not _DEVICE_ID_RE.fullmatch(settings.device.id):
        raise places.error(
            "device.id",
            f"{_short(settings.device.id)} is not a usable device id (it goes into MQTT topics:"
            " no / + # blanks or control characters, at most 253 characters)",
        )
    for dotted, value in (
        ("device.data_dir", settings.device.data_dir),
        ("flows.dir", settings.flows.dir),
    ):
        if value is not None and "\0" in value:
            raise places.error(dotted, "a path cannot contain a NUL character")
    token = settings.api.token
    if token is not None and not TOKEN_RE.fullmatch(token):
        raise places.error(
            "api.token", "must be printable ASCII without blanks (it travels in an HTTP header)"
        )
    try:
        host, _port = parse_listen(settings.api.listen, "")
    except ConfigError:
        raise places.error(
            "api.listen", f"{_short(settings.api.listen)} is not host:port"
        ) from None
    if settings.api.enabled and not settings.api.token and not is_loopback(host):
        raise places.error(
            "api.listen",
            f"refusing to listen on {host} without api.token (set a token, or listen on 127.0.0.1)",
        )


def load_settings(path: str | Path | None = None, *, env: dict[str, str] | None = None) -> Settings:
    """Read the config file (``path``, else ``$MECHAWAY_CONFIG``, else defaults) and env.

    Every mistake is one ``ConfigError`` that names the file and key, or the variable.
    """
    env = dict(os.environ) if env is None else env
    source = str(path) if path is not None else env.get(CONFIG_ENV)
    places = _Places(source or None)
    raw = _read_toml(Path(source)) if source else {}
    # every top-level table that is not one of ours is a driver's: [mqtt.plc], [gpio], ...
    driver_raw = {k: raw.pop(k) for k in list(raw) if k not in Settings.__struct_fields__}
    _convert(raw, places, strict=True)
    _env_overrides(raw, env, places)
    settings = _convert(raw, places, strict=False)
    _check(settings, places)
    if driver_raw:
        from mechaway.drivers.base import parse_sections

        settings.drivers = parse_sections(driver_raw, places.source or "config")
    return settings
