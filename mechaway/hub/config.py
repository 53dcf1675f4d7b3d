"""``hub.toml``: the hub server's settings, validated once at start (errors name the key)."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Annotated

import msgspec

from mechaway.errors import ConfigError, located
from mechaway.settings import TOKEN_RE, parse_listen

DEFAULT_LISTEN = "127.0.0.1:7800"


class HubServerSettings(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    listen: str = DEFAULT_LISTEN
    #: a SQLite file (relative to the config file) or a ``postgresql://`` DSN
    database: str = "hub.db"
    #: the token of admin calls (devices, deploys, reading telemetry); required
    admin_token: str | None = None
    #: Ed25519 private key (PEM), created with mode 0600 on first start
    signing_key: str = "hub-signing.key"
    #: devices that present this token may register themselves (``POST /api/v1/provision``)
    provisioning_token: str | None = None
    #: tags a self-registered device gets
    provision_tags: list[str] = msgspec.field(default_factory=list)
    #: serve HTTPS with this certificate chain and key (PEM files)
    tls_cert: str | None = None
    tls_key: str | None = None
    #: largest request body (a telemetry batch, compressed; a flow document)
    max_body_bytes: Annotated[int, msgspec.Meta(ge=1024, le=1024**3)] = 16 * 1024 * 1024
    #: bound on one request's handling (a long poll waits at most ``long_poll`` on top)
    request_timeout: Annotated[float, msgspec.Meta(gt=0, le=3600)] = 30.0
    #: longest a device's bundle long-poll is held open
    long_poll: Annotated[float, msgspec.Meta(ge=0, le=600)] = 25.0
    #: PostgreSQL connections per hub process
    pool_size: Annotated[int, msgspec.Meta(ge=1, le=200)] = 8


class LogSection(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    level: str = "info"


class HubFile(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    hub: HubServerSettings = msgspec.field(default_factory=HubServerSettings)
    log: LogSection = msgspec.field(default_factory=LogSection)


def is_postgres(database: str) -> bool:
    return database.startswith(("postgresql://", "postgres://"))


def load_hub_settings(path: str | Path | None) -> HubFile:
    """Read ``hub.toml``; relative paths in it are resolved against its directory."""
    raw: dict[str, object] = {}
    base = Path.cwd()
    where = "hub config"
    if path is not None:
        p = Path(path)
        where = str(p)
        try:
            raw = tomllib.loads(p.read_text(encoding="utf-8"))
        except OSError as err:
            raise ConfigError(f"{p}: cannot read: {err.strerror}") from err
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
            raise ConfigError(f"{p}: invalid TOML: {err}") from err
        base = p.resolve().parent
    try:
        cfg = msgspec.convert(raw, HubFile, strict=True)
    except msgspec.ValidationError as err:
        raise ConfigError(f"{where}: {located(err)}") from None
    h = cfg.hub
    parse_listen(h.listen, f"{where}: hub.listen")
    if not h.admin_token:
        raise ConfigError(f"{where}: hub.admin_token is required (a long random string)")
    for name in ("admin_token", "provisioning_token"):
        tok = getattr(h, name)
        if tok is not None and (not TOKEN_RE.fullmatch(tok) or len(tok) < 16):
            raise ConfigError(
                f"{where}: hub.{name}: at least 16 printable ASCII characters, no blanks"
            )
    if (h.tls_cert is None) != (h.tls_key is None):
        raise ConfigError(f"{where}: hub.tls_cert and hub.tls_key go together")
    if cfg.log.level not in ("debug", "info", "warning", "error"):
        raise ConfigError(f"{where}: log.level: expected debug, info, warning or error")

    def resolve(value: str | None) -> str | None:
        return None if value is None else str((base / value).expanduser())

    db = h.database if is_postgres(h.database) else resolve(h.database)
    assert db is not None
    return msgspec.structs.replace(
        cfg,
        hub=msgspec.structs.replace(
            h,
            database=db,
            signing_key=resolve(h.signing_key) or h.signing_key,
            tls_cert=resolve(h.tls_cert),
            tls_key=resolve(h.tls_key),
        ),
    )
