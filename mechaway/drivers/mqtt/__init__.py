"""The MQTT driver: ``[mqtt.NAME]`` connections over gmqtt, registered as kind ``mqtt``.

One module per responsibility:

- ``settings``: ``MqttSettings`` (a ``[mqtt.NAME]`` section) and ``parse_settings``;
- ``topics``: topic filters, matching and the checks on what may be published;
- ``wire``: the pure MQTT codec (framing, PUBLISH), ``Incoming``;
- ``gmqtt_seam``: every line that knows gmqtt (subclasses, private attributes);
- ``connection``: ``MqttConnection``, the driver (registered here, on import);
- ``spool``: the ``Spool`` protocol and ``MemorySpool``.

The names below are what nodes, tests and benchmarks import from ``mechaway.drivers.mqtt``.
"""

from __future__ import annotations

from mechaway.drivers.mqtt.connection import (
    _RECEIVE_MAX,
    Handler,
    MqttConnection,
    Subscription,
)
from mechaway.drivers.mqtt.gmqtt_seam import _MAX_ALIASES, _gmqtt
from mechaway.drivers.mqtt.settings import MqttSettings, parse_settings
from mechaway.drivers.mqtt.spool import MemorySpool, Spool, SpoolItem
from mechaway.drivers.mqtt.topics import check_filter, template_may_match, topic_matches
from mechaway.drivers.mqtt.wire import Incoming
from mechaway.drivers.mqtt.wire import fixed_header as _fixed_header

__all__ = [
    "_MAX_ALIASES",
    "_RECEIVE_MAX",
    "Handler",
    "Incoming",
    "MemorySpool",
    "MqttConnection",
    "MqttSettings",
    "Spool",
    "SpoolItem",
    "Subscription",
    "_fixed_header",
    "_gmqtt",
    "check_filter",
    "parse_settings",
    "template_may_match",
    "topic_matches",
]
