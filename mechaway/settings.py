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

from mechaway.errors import ConfigError, split_validation

CONFIG_ENV = "MECHAWAY_CONFIG"
#: read when neither ``--config`` nor ``$MECHAWAY_CONFIG`` names a file (systemd/install.sh
#: puts the service's config there, so ``mechaway status`` finds the service as it is)
SYSTEM_CONFIG = Path("/etc/mechaway/mechaway.toml")
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
    """This device: its identity and where it keeps its data."""

    id: Annotated[
        NonEmpty,
        msgspec.Meta(
            description="the device id, in MQTT topics, client ids and the hub (default: the "
            "host name; no / + # blanks or control characters, at most 253 characters)"
        ),
    ] = msgspec.field(default_factory=socket.gethostname)
    data_dir: Annotated[
        NonEmpty,
        msgspec.Meta(
            description="where the SQLite file, the API token and plugins live (default: "
            "/var/lib/mechaway for root, else $XDG_DATA_HOME/mechaway)"
        ),
    ] = msgspec.field(default_factory=default_data_dir)


class ApiSettings(_Section):
    listen: Annotated[
        str,
        msgspec.Meta(
            description="host:port of the admin API; beyond loopback only with TLS (or "
            "insecure_http)"
        ),
    ] = "127.0.0.1:7700"
    token: Annotated[
        str | None,
        msgspec.Meta(
            description="the admin token; without one, a token is generated into the data "
            "directory at the first start (api-token, mode 0600) and the CLI on this "
            "machine reads it there"
        ),
    ] = None
    auth: Annotated[
        Literal["token", "none"],
        msgspec.Meta(
            description="token (always); none turns auth off, allowed only on loopback, logged"
        ),
    ] = "token"
    read_token: Annotated[
        str | None,
        msgspec.Meta(
            description="a token that can read (status, flows, series, metrics, events) but "
            "change nothing"
        ),
    ] = None
    allowed_hosts: Annotated[
        list[str],
        msgspec.Meta(
            description="more names this daemon answers to in Host (besides its listen "
            "address, localhost and IP literals); other names are refused (DNS rebinding)"
        ),
    ] = msgspec.field(default_factory=list)
    allowed_origins: Annotated[
        list[str],
        msgspec.Meta(
            description="web origins allowed to change state (https://dash.example:8443); "
            "others are refused, as is every cross-origin write"
        ),
    ] = msgspec.field(default_factory=list)
    tls_cert: Annotated[
        NonEmpty | None,
        msgspec.Meta(description="PEM certificate chain: with tls_key, the API serves HTTPS"),
    ] = None
    tls_key: Annotated[
        NonEmpty | None, msgspec.Meta(description="PEM private key of tls_cert (with tls_cert)")
    ] = None
    insecure_http: Annotated[
        bool,
        msgspec.Meta(
            description="allow plain HTTP on a non-loopback address (tokens cross the network "
            "in clear)"
        ),
    ] = False
    max_body_bytes: Annotated[
        int,
        msgspec.Meta(
            ge=1,
            le=1024**3,
            description="largest request body accepted (flow documents, webhooks)",
        ),
    ] = 1024 * 1024
    enabled: Annotated[bool, msgspec.Meta(description="serve the admin API at all")] = True
    lazy: Annotated[
        bool,
        msgspec.Meta(
            description="import the HTTP stack at the first request instead of at start "
            "(saves ~16 MB RSS on a device nobody queries; the first request takes ~0.2 s "
            "longer)"
        ),
    ] = True


class FlowsSettings(_Section):
    dir: Annotated[
        NonEmpty | None,
        msgspec.Meta(description="directory of *.json / *.yaml flow files, watched for changes"),
    ] = None
    poll_interval: Annotated[
        float,
        msgspec.Meta(
            gt=0,
            le=86400,
            description="seconds between scans of the directory (SIGHUP rescans at once)",
        ),
    ] = 1.0


class HubSettings(_Section):
    """Sync with a mechaway hub (``mechaway/hub/edge.py``); off unless ``url`` is set."""

    url: Annotated[str | None, msgspec.Meta(description="the hub's URL (null: no sync)")] = None
    token: Annotated[
        str | None,
        msgspec.Meta(description="this device's token (mechaway hub devices add prints it)"),
    ] = None
    public_key: Annotated[
        str | None,
        msgspec.Meta(
            description="the hub's signing key, as mechaway hub public-key prints it: "
            "bundles must verify"
        ),
    ] = None
    heartbeat: Annotated[
        float,
        msgspec.Meta(
            ge=1,
            le=86400,
            description="seconds between heartbeats (each one jittered by up to +-10%)",
        ),
    ] = 30.0
    ca_file: Annotated[
        str | None,
        msgspec.Meta(
            description="CA certificate (PEM) that an https:// hub's certificate must chain to"
        ),
    ] = None
    provisioning_token: Annotated[
        str | None,
        msgspec.Meta(
            description="with no token: register with this token at the hub, keep the token "
            "it gives"
        ),
    ] = None
    batch: Annotated[
        int, msgspec.Meta(ge=1, le=50_000, description="messages per upload batch")
    ] = 2000
    backlog_rate: Annotated[
        float,
        msgspec.Meta(
            gt=0,
            description="backlog messages sent per second at most (live data goes first, "
            "unthrottled)",
        ),
    ] = 50_000.0
    health_window: Annotated[
        float,
        msgspec.Meta(
            ge=0,
            le=86400,
            description="after a hub deploy: a flow whose nodes error more than "
            "error_threshold times within this many seconds is rolled back to the last "
            "good revision",
        ),
    ] = 30.0
    error_threshold: Annotated[
        int, msgspec.Meta(ge=0, description="errors within health_window that roll back")
    ] = 10
    timeout: Annotated[
        float, msgspec.Meta(gt=0, le=3600, description="bound on one request to the hub")
    ] = 30.0


class EngineSettings(_Section):
    stop_timeout: Annotated[
        float,
        msgspec.Meta(
            gt=0,
            le=3600,
            description="bound on draining a sink's queue or stopping a node, seconds",
        ),
    ] = 5.0


class StoreSettings(_Section):
    commit_interval_ms: Annotated[
        float,
        msgspec.Meta(
            gt=0,
            le=1000,
            description="group-commit window: longer = fewer fsyncs and bytes per message, "
            "later acks",
        ),
    ] = 10.0
    context_interval_s: Annotated[
        float,
        msgspec.Meta(
            gt=0,
            le=86400,
            description="how often changed node context (persist: true) is saved, seconds",
        ),
    ] = 2.0


class LogSettings(_Section):
    level: Annotated[
        Literal["debug", "info", "warning", "error"],
        msgspec.Meta(description="the daemon's log level"),
    ] = "info"


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
        where, head = split_validation(err)
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
    api = settings.api
    for key in ("token", "read_token"):
        token = getattr(api, key)
        if token is None:
            continue
        if token == "":
            raise places.error(
                f"api.{key}",
                "is empty: an empty token is not 'no auth' (remove the key to have one"
                " generated, or set auth = \"none\" on loopback)",
            )
        if not TOKEN_RE.fullmatch(token):
            raise places.error(
                f"api.{key}",
                "must be printable ASCII without blanks (it travels in an HTTP header)",
            )
    if api.token is not None and api.token == api.read_token:
        raise places.error("api.read_token", "is the same as api.token")
    try:
        host, _port = parse_listen(api.listen, "")
    except ConfigError:
        raise places.error("api.listen", f"{_short(api.listen)} is not host:port") from None
    if (api.tls_cert is None) != (api.tls_key is None):
        given, missing = ("tls_cert", "tls_key") if api.tls_key is None else ("tls_key", "tls_cert")
        raise places.error(f"api.{given}", f"needs api.{missing} too")
    problem = exposure_problem(api, host)
    if problem is not None:
        raise places.error(*problem)


def exposure_problem(api: ApiSettings, host: str) -> tuple[str, str] | None:
    """(key, why) when listening on ``host`` would expose the API unsafely, else None:
    beyond loopback, auth must be on and TLS used (or plain HTTP asked for by name)."""
    if not api.enabled or is_loopback(host):
        return None
    if api.auth == "none":
        return "api.auth", f'"none" is allowed only on loopback, not on {host}'
    if api.tls_cert is None and not api.insecure_http:
        return (
            "api.listen",
            f"refusing plain HTTP on {host}: set api.tls_cert and api.tls_key, or"
            " api.insecure_http = true to send tokens in clear on purpose",
        )
    return None


def load_settings(path: str | Path | None = None, *, env: dict[str, str] | None = None) -> Settings:
    """Read the config file (``path``, else ``$MECHAWAY_CONFIG``, else
    ``/etc/mechaway/mechaway.toml`` where it exists, else defaults) and the environment.

    Every mistake is one ``ConfigError`` that names the file and key, or the variable.
    """
    env = dict(os.environ) if env is None else env
    source = str(path) if path is not None else env.get(CONFIG_ENV)
    if source is None and SYSTEM_CONFIG.is_file():  # the service's, where installed
        if not os.access(SYSTEM_CONFIG, os.R_OK):
            raise ConfigError(
                f"{SYSTEM_CONFIG}: the service's config, readable by root and the mechaway"
                " group only: run with sudo, or name another with --config"
            )
        source = str(SYSTEM_CONFIG)
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
