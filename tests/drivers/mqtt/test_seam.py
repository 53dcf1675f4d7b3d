"""The gmqtt seam against the installed gmqtt: everything ``gmqtt_seam.py`` overrides,
calls or reads of gmqtt exists with the shape the seam assumes.

A gmqtt upgrade that moves or renames any of it fails here, naming the attribute, instead
of on the wire (docs/mqtt.md says what each one is for)."""

from __future__ import annotations

import importlib
import inspect

import pytest

from mechaway.drivers.mqtt import _gmqtt

#: (module, class, attribute, the parameter names it must start with, why the seam needs it)
CALLABLES: list[tuple[str, str, str, list[str], str]] = [
    # subclassed: Protocol(MQTTProtocol)
    ("gmqtt.mqtt.protocol", "MQTTProtocol", "__init__",
     ["self", "args", "connection_state", "id_generator", "kwargs"], "Protocol.__init__"),
    ("gmqtt.mqtt.protocol", "MQTTProtocol", "connection_made", ["self", "transport"],
     "overridden: no reader task"),
    ("gmqtt.mqtt.protocol", "BaseMQTTProtocol", "connection_made", ["self", "transport"],
     "called in its place"),
    ("gmqtt.mqtt.protocol", "MQTTProtocol", "data_received", ["self", "data"],
     "overridden: framing and the fast PUBLISH path"),
    ("gmqtt.mqtt.protocol", "MQTTProtocol", "write_data", ["self", "data"],
     "overridden: flushes corked writes first"),
    ("gmqtt.mqtt.protocol", "MQTTProtocol", "eof_received", ["self"], "overridden: close on FIN"),
    # subclassed: Connection(MQTTConnection)
    ("gmqtt.mqtt.connection", "MQTTConnection", "__init__",
     ["self", "transport", "protocol", "clean_session", "keepalive", "package_handler", "logger"],
     "built by Client._create_connection"),
    ("gmqtt.mqtt.connection", "MQTTConnection", "_keep_connection", ["self"],
     "overridden: a silent link is aborted"),
    ("gmqtt.mqtt.connection", "MQTTConnection", "put_package", ["self", "pkg"],
     "packets left to gmqtt's parser"),
    ("gmqtt.mqtt.connection", "MQTTConnection", "is_closing", ["self"], "keepalive, close"),
    ("gmqtt.mqtt.connection", "MQTTConnection", "close", ["self"], "a close without DISCONNECT"),
    # subclassed: Client(gmqtt.Client)
    ("gmqtt", "Client", "__init__",
     ["self", "client_id", "clean_session", "optimistic_acknowledgement", "will_message",
      "persistent_storage", "logger", "kwargs"], "one client per attempt"),
    ("gmqtt", "Client", "_create_connection",
     ["self", "host", "port", "ssl", "clean_session", "keepalive"],
     "overridden: our Protocol and Connection"),
    ("gmqtt", "Client", "_exit_reconnecting_state", ["self"], "called by _create_connection"),
    ("gmqtt", "Client", "reconnect", ["self", "delay"], "overridden: the driver reconnects"),
    ("gmqtt", "Client", "connect",
     ["self", "host", "port", "ssl", "keepalive", "version", "raise_exc"], "connect"),
    ("gmqtt", "Client", "subscribe", ["self", "subscription_or_topic"], "subscribe"),
    ("gmqtt", "Client", "unsubscribe", ["self", "topic"], "unsubscribe"),
    ("gmqtt", "Client", "disconnect", ["self", "reason_code"], "graceful close"),
    ("gmqtt", "Client", "set_auth_credentials", ["self", "username", "password"], "credentials"),
    # subclassed: Storage(PersistentStorage)
    ("gmqtt.storage", "PersistentStorage", "__init__", ["self"], "Storage.__init__"),
    ("gmqtt.storage", "PersistentStorage", "remove_message_by_mid", ["self", "mid"],
     "overridden: reports acks"),
    ("gmqtt.storage", "PersistentStorage", "push_message", ["self", "mid", "raw_package"],
     "our own QoS>=1 PUBLISH packets"),
    # the package handler: replaced per instance or called
    ("gmqtt.mqtt.handler", "MqttPackageHandler", "_handle_qos_1_publish_packet",
     ["self", "mid", "packet", "print_topic", "properties"], "replaced: acks after handlers"),
    ("gmqtt.mqtt.handler", "MqttPackageHandler", "_handle_qos_2_publish_packet",
     ["self", "mid", "packet", "print_topic", "properties"], "replaced: acks after handlers"),
    ("gmqtt.mqtt.handler", "MqttPackageHandler", "_handle_publish_packet",
     ["self", "cmd", "raw_packet"], "PUBLISH the fast path leaves to gmqtt"),
    ("gmqtt.mqtt.handler", "MqttPackageHandler", "_handle_connack_packet",
     ["self", "cmd", "packet"], "CONNACK, after our checks"),
    ("gmqtt.mqtt.handler", "MqttPackageHandler", "_handle_suback_packet",
     ["self", "cmd", "raw_packet"], "SUBACK, after our checks"),
    ("gmqtt.mqtt.handler", "MqttPackageHandler", "_handle_pubrec_packet",
     ["self", "cmd", "packet"], "PUBREC, after our checks"),
    *[
        ("gmqtt.mqtt.handler", "MqttPackageHandler", f"_handle_{name}_packet",
         ["self", "cmd"], "routed through the handler cache")
        for name in ("puback", "pubrel", "pubcomp", "unsuback", "pingresp", "disconnect")
    ],
    ("gmqtt.mqtt.handler", "MqttPackageHandler", "_parse_properties", ["self", "packet"],
     "CONNACK properties checked before gmqtt reads them"),
    ("gmqtt.mqtt.handler", "MqttPackageHandler", "_handle_packet", ["self", "cmd", "packet"],
     "dispatch through _handler_cache"),
    ("gmqtt.mqtt.handler", "MqttPackageHandler", "clear_topics_aliases", ["self"],
     "called by _create_connection"),
    ("gmqtt.mqtt.handler", "MQTTConnectError", "__init__", ["self", "code"], "refusals"),
    ("gmqtt.mqtt.handler", "IdGenerator", "next_id", ["self"], "packet ids of our PUBLISHes"),
    ("gmqtt.mqtt.package", "Package", "__init__", ["self", "cmd", "data"], "put_package"),
    ("gmqtt", "Subscription", "__init__", ["self", "topic", "qos"], "subscribe"),
    ("gmqtt", "Message", "__init__", ["self", "topic", "payload", "qos", "retain"], "the will"),
]  # fmt: skip


def _ids(row: tuple[str, str, str, list[str], str]) -> str:
    return f"{row[1]}.{row[2]}"


@pytest.mark.parametrize("row", CALLABLES, ids=_ids)
def test_every_gmqtt_callable_the_seam_uses_exists_with_its_shape(
    row: tuple[str, str, str, list[str], str],
) -> None:
    import gmqtt

    module, cls_name, attr, params, why = row
    where = f"gmqtt {gmqtt.__version__}: {module}.{cls_name}.{attr} ({why})"
    owner = getattr(importlib.import_module(module), cls_name, None)
    assert owner is not None, f"{where}: class {cls_name} is gone"
    fn = inspect.getattr_static(owner, attr, None)
    assert fn is not None, f"{where}: gone or renamed"
    if isinstance(fn, (staticmethod, classmethod)):
        fn = fn.__func__
    assert callable(fn), f"{where}: no longer callable"
    names = list(inspect.signature(fn).parameters)
    assert names[: len(params)] == params, f"{where}: parameters now {names}, seam assumes {params}"


#: instance attributes the seam reads or writes, by the object that holds them
CLIENT_ATTRS = ["_package_handler", "_connack_received", "_connection_lost",
                "_connection_state", "_logger", "_connection"]  # fmt: skip
HANDLER_ATTRS = ["_handler_cache", "_server_topics_aliases", "_error", "_connack_received",
                 "id_generator", "_connection", "has_error"]  # fmt: skip


def test_client_and_package_handler_keep_the_attributes_the_seam_touches() -> None:
    import gmqtt

    client = gmqtt.Client("seam-test")
    for name in CLIENT_ATTRS:
        assert hasattr(client, name), f"gmqtt {gmqtt.__version__}: Client.{name} is gone"
    handler = client._package_handler
    for name in HANDLER_ATTRS:
        assert hasattr(handler, name), (
            f"gmqtt {gmqtt.__version__}: MqttPackageHandler.{name} is gone"
        )
    assert isinstance(handler._handler_cache, dict)
    assert isinstance(handler._server_topics_aliases, dict)
    assert hasattr(client._connection_state, "protocol_version"), "ConnectionState.protocol_version"
    assert hasattr(gmqtt.Client, "on_message") and hasattr(gmqtt.Client, "on_connect")
    assert hasattr(gmqtt.Client, "on_disconnect") and hasattr(gmqtt.Client, "on_subscribe")


def test_packets_are_dispatched_through_the_handler_cache() -> None:
    """The seam routes each packet type by filling ``_handler_cache`` (``_arm``): gmqtt
    must still look a handler up there, for every packet, before computing its own."""
    import gmqtt

    handler = gmqtt.Client("seam-test")._package_handler
    seen: list[tuple[int, bytes]] = []
    for first in (0x20, 0x30, 0x40, 0x90, 0xE0):
        handler._handler_cache[first & 0xF0] = lambda cmd, packet: seen.append((cmd, packet))
        handler._handle_packet(first, b"\x00\x01")
    assert [cmd for cmd, _ in seen] == [0x20, 0x30, 0x40, 0x90, 0xE0], (
        f"gmqtt {gmqtt.__version__}: MqttPackageHandler._handle_packet no longer uses"
        " _handler_cache"
    )


def test_connect_error_keeps_its_code_and_storage_its_messages() -> None:
    from gmqtt.mqtt.handler import MQTTConnectError
    from gmqtt.storage import PersistentStorage

    assert MQTTConnectError(5)._code == 5, "MQTTConnectError._code"
    storage = PersistentStorage()
    storage.push_message(7, b"packet")
    assert 7 in storage._messages, "PersistentStorage._messages (in-flight ids)"
    from gmqtt.mqtt.constants import MQTTv50, MQTTv311

    assert (MQTTv311, MQTTv50) == (4, 5)


def test_the_read_loop_the_seam_replaces_is_what_connection_made_starts() -> None:
    """``Protocol.connection_made`` calls ``BaseMQTTProtocol.connection_made`` and skips
    ``MQTTProtocol``'s, whose only extra is the reader task: if gmqtt adds more there,
    the seam would skip it silently."""
    from gmqtt.mqtt.protocol import MQTTProtocol

    body = inspect.getsource(MQTTProtocol.connection_made)
    code = [
        line.strip()
        for line in body.splitlines()[1:]
        if line.strip() and not line.strip().startswith("#")
    ]
    assert code == [
        "super().connection_made(transport)",
        "self._read_loop_future = asyncio.ensure_future(self._read_loop())",
    ], f"MQTTProtocol.connection_made changed: {code}"


class _Transport:
    def is_closing(self) -> bool:
        return False

    def get_write_buffer_size(self) -> int:
        return 0

    def write(self, data: bytes) -> None:
        pass

    def abort(self) -> None:
        pass


@pytest.mark.asyncio
async def test_protocol_and_connection_instances_hold_what_the_seam_reads() -> None:
    """Built the way ``Client._create_connection`` builds them: the attributes the seam's
    overrides read exist on the instances."""
    import gmqtt
    from gmqtt.mqtt.handler import IdGenerator
    from gmqtt.mqtt.protocol import ConnectionState

    client_cls = _gmqtt()[0]
    proto = client_cls.protocol_class(
        connection_state=ConnectionState(), id_generator=IdGenerator(), deliver=None
    )
    for name in ("_connection", "_transport", "_connection_state"):
        assert hasattr(proto, name), f"MQTTProtocol instance: {name} is gone"
    handler = gmqtt.Client("seam-test")._package_handler
    from gmqtt.mqtt.connection import MQTTConnection

    conn = MQTTConnection(_Transport(), proto, True, 60, package_handler=handler)
    try:
        for name in ("_keepalive", "_last_data_in", "_last_data_out", "_transport",
                     "_protocol", "_handler"):  # fmt: skip
            assert hasattr(conn, name), f"MQTTConnection instance: {name} is gone"
        assert proto._connection is conn, "MQTTConnection no longer calls set_connection"
        assert handler._connection is conn, "the handler no longer points at its connection"
    finally:
        conn._keep_connection_callback.cancel()


def test_gmqtt_classes_load_with_the_overrides() -> None:
    """``_gmqtt()`` builds the four subclasses (its own guard raises ConfigError naming
    what is missing); each overrides what docs/mqtt.md says it does."""
    client_cls, storage_cls, message_cls, sub_cls = _gmqtt()
    assert "_create_connection" in vars(client_cls) and "reconnect" in vars(client_cls)
    assert {"data_received", "connection_made", "write_data", "eof_received"} <= set(
        vars(client_cls.protocol_class)
    )
    assert "remove_message_by_mid" in vars(storage_cls)
    assert message_cls.__name__ == "Message" and sub_cls.__name__ == "Subscription"
