"""``[mqtt.NAME]`` settings: one struct, validated once, with located errors."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta as M

from mechaway.drivers.base import DriverSettings
from mechaway.errors import ConfigError, located

__all__ = ["MqttSettings", "parse_settings"]


class MqttSettings(DriverSettings):
    """One ``[mqtt.NAME]`` section. Constraints are checked by ``parse_settings``."""

    host: Annotated[str, M(min_length=1, description="broker host name or address")] = (
        "127.0.0.1"
    )
    port: Annotated[int, M(ge=1, le=65535, description="broker TCP port")] = 1883
    client_id: Annotated[
        str | None,
        M(description="MQTT client id; default mechaway-<device id>-<connection name> "
                      "(stable, as persistent sessions need)"),
    ] = None
    username: Annotated[str | None, M(description="user name, if the broker asks for one")] = None
    password: Annotated[str | None, M(description="password (keep the file mode 0640)")] = None
    tls: Annotated[bool, M(description="connect over TLS")] = False
    ca_file: Annotated[
        str | None, M(description="PEM CA bundle to verify the broker (default: the system's)")
    ] = None
    cert_file: Annotated[str | None, M(description="PEM client certificate (mutual TLS)")] = None
    key_file: Annotated[
        str | None, M(description="PEM key of cert_file (needs cert_file)")
    ] = None
    keepalive: Annotated[
        int, M(ge=0, le=65535, description="seconds between pings when idle (0: none)")
    ] = 60
    clean_session: Annotated[
        bool,
        M(description="false: a persistent session, kept session_expiry seconds after a "
                      "drop; its subscriptions and queued QoS 1/2 messages survive restarts"),
    ] = True
    session_expiry: Annotated[
        int,
        M(ge=0, le=0xFFFFFFFF,
          description="MQTT 5: seconds the broker keeps a persistent session (0xFFFFFFFF: "
                      "never expires)"),
    ] = 3600
    protocol: Annotated[Literal["3.1.1", "5"], M(description="MQTT protocol version")] = "5"
    max_payload_bytes: Annotated[
        int,
        M(ge=1, le=255 * 1024 * 1024,
          description="larger incoming payloads are dropped and counted before any handler; "
                      "larger outgoing ones are refused and counted"),
    ] = 256 * 1024
    offline_qos0: Annotated[
        Literal["drop", "queue"],
        M(description="QoS 0 published while disconnected: dropped (counted) or spooled "
                      "like QoS 1"),
    ] = "drop"
    spool_max: Annotated[
        int, M(ge=0, description="bound of the durable offline queue (messages)")
    ] = 100_000
    spool_overflow: Annotated[
        Literal["drop_oldest", "drop_new"],
        M(description="what the full offline queue drops (counted)"),
    ] = "drop_oldest"
    max_inflight: Annotated[
        int,
        M(ge=1, le=60_000,
          description="QoS>=1 publishes awaiting their ack at once (also capped by the "
                      "broker's receive maximum)"),
    ] = 100
    max_write_buffer_bytes: Annotated[
        int,
        M(ge=1024, description="QoS 0 is dropped (counted) while this much is unsent in the "
                               "socket's buffer"),
    ] = 4 * 1024 * 1024
    connect_timeout: Annotated[
        float, M(gt=0, le=3600, description="seconds a connection attempt may take")
    ] = 10.0
    birth: Annotated[
        bool,
        M(description="publish retained online/offline (the last will) on "
                      "mechaway/<device id>/status"),
    ] = True

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
