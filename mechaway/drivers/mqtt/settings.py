"""``[mqtt.NAME]`` settings: one struct, validated once, with located errors."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Literal

import msgspec

from mechaway.drivers.base import DriverSettings
from mechaway.errors import ConfigError, located

__all__ = ["MqttSettings", "parse_settings"]


class MqttSettings(DriverSettings):
    """One ``[mqtt.NAME]`` section. Constraints are checked by ``parse_settings``."""

    host: str = "127.0.0.1"
    port: Annotated[int, msgspec.Meta(ge=1, le=65535)] = 1883
    #: default ``mechaway-<device id>-<connection name>`` (stable, for persistent sessions)
    client_id: str | None = None
    username: str | None = None
    password: str | None = None
    tls: bool = False
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    keepalive: Annotated[int, msgspec.Meta(ge=0, le=65535)] = 60
    #: False = persistent session (MQTT 5: kept ``session_expiry`` seconds after a drop)
    clean_session: bool = True
    #: MQTT 5 carries it in 4 bytes (0xFFFFFFFF = never expires)
    session_expiry: Annotated[int, msgspec.Meta(ge=0, le=0xFFFFFFFF)] = 3600
    protocol: Literal["3.1.1", "5"] = "5"
    #: larger incoming payloads are dropped and counted before any handler; larger
    #: outgoing ones are refused and counted (MQTT caps a packet at 256 MB)
    max_payload_bytes: Annotated[int, msgspec.Meta(ge=1, le=255 * 1024 * 1024)] = 256 * 1024
    #: QoS 0 published while disconnected: dropped (counted) or spooled like QoS 1
    offline_qos0: Literal["drop", "queue"] = "drop"
    spool_max: Annotated[int, msgspec.Meta(ge=0)] = 100_000
    spool_overflow: Literal["drop_oldest", "drop_new"] = "drop_oldest"
    #: QoS>=1 publishes awaiting their ack at once (also capped by the broker's window)
    max_inflight: Annotated[int, msgspec.Meta(ge=1, le=60_000)] = 100
    #: QoS 0 is dropped (counted) while this much is unsent in the socket's buffer
    max_write_buffer_bytes: Annotated[int, msgspec.Meta(ge=1024)] = 4 * 1024 * 1024
    connect_timeout: Annotated[float, msgspec.Meta(gt=0, le=3600)] = 10.0
    #: publish retained ``online``/``offline`` on ``mechaway/<device id>/status``
    birth: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.key_file and not self.cert_file:
            raise ValueError("key_file needs cert_file")



def parse_settings(data: Mapping[str, Any], where: str = "mqtt.default") -> MqttSettings:
    """Validate one ``[mqtt.NAME]`` table; ConfigError names the key (``mqtt.plc.port: ...``).

    Strict like every section: ``port = "1883"`` is an error, not a number (the same
    check as ``Driver.parse_settings``, which the daemon uses)."""
    try:
        return msgspec.convert(dict(data), MqttSettings, strict=True)
    except msgspec.ValidationError as err:
        raise ConfigError(located(err, where)) from err
