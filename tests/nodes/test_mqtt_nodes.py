"""MQTT nodes against a real private mosquitto: in-process flows and the daemon itself."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import msgpack
import orjson
import pytest
import pytest_asyncio

from mechaway.drivers.mqtt import Incoming, MqttConnection, MqttSettings
from mechaway.flow.validate import validate
from mechaway.nodes.context import Services
from mechaway.runtime.engine import Engine
from mechaway.store.db import Database
from mechaway.store.outbox import Outbox
from mechaway.testing.broker import MosquittoBroker
from mechaway.testing.daemon import DaemonProc
from mechaway.testing.nodes import COLLECTED


def fast(broker: MosquittoBroker, **kw: Any) -> MqttSettings:
    return MqttSettings(port=broker.port, reconnect_min=0.05, reconnect_max=0.5, **kw)


async def until(cond: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


class Inbox:
    def __init__(self) -> None:
        self.got: list[Incoming] = []

    def __call__(self, m: Incoming) -> None:
        self.got.append(m)


@pytest.fixture
def broker() -> Iterator[MosquittoBroker]:
    with MosquittoBroker() as b:
        yield b


@pytest_asyncio.fixture
async def rig(broker: MosquittoBroker) -> AsyncIterator[tuple[Engine, MqttConnection]]:
    """An engine whose ``default`` MQTT connection is the broker, and a test client."""
    conns: dict[str, MqttConnection] = {}

    async def get(name: str) -> MqttConnection:  # shared per name, as in the daemon
        if name not in conns:
            conns[name] = MqttConnection(name, fast(broker, birth=False), device_id="dut")
            await conns[name].start()
            await conns[name].wait_connected(5)
        return conns[name]

    engine = Engine(Services(connections={"mqtt": get}))
    client = MqttConnection("t", fast(broker, birth=False), device_id="tester")
    await client.start()
    await client.wait_connected(5)
    yield engine, client
    await engine.stop()
    for c in [*conns.values(), client]:
        await c.close()


@pytest.mark.asyncio
async def test_wildcards_templates_and_both_directions(rig: tuple[Engine, MqttConnection]) -> None:
    engine, client = rig
    doc = {
        "id": "m",
        "nodes": [
            {"id": "in", "type": "MQTTInNode", "params": {"topic": "sensors/+/temp", "qos": 1}},
            {"id": "all", "type": "MQTTInNode", "params": {"topic": "sensors/#", "decode": "text"}},
            {"id": "out", "type": "MQTTOutNode",
             "params": {"topic": "out/{payload.room}", "qos": 1}},
            {"id": "seen", "type": "CollectNode"},
        ],
        "edges": [{"from": "in", "to": "out"}, {"from": "all", "to": "seen"}],
    }  # fmt: skip
    await engine.deploy(validate(doc))
    inbox = Inbox()
    client.subscribe("out/#", 1, inbox)
    await client.wait_subscribed()
    await asyncio.sleep(0.2)  # the daemon side's SUBACK
    client.publish("sensors/a/temp", b'{"room": "kitchen", "v": 21.5}', qos=1)
    client.publish("sensors/b/temp", b'{"room": "attic", "v": 30}', qos=1)
    client.publish("sensors/a/hum", b'{"room": "kitchen", "v": 40}', qos=1)
    await until(lambda: len(inbox.got) == 2 and len(COLLECTED.get("m.seen", [])) == 3)
    assert sorted(m.topic for m in inbox.got) == ["out/attic", "out/kitchen"]
    assert {json.loads(m.payload)["v"] for m in inbox.got} == {21.5, 30}
    assert {m.qos for m in inbox.got} == {1}
    seen = COLLECTED["m.seen"]
    assert sorted(m["topic"] for m in seen) == ["sensors/a/hum", "sensors/a/temp", "sensors/b/temp"]
    assert all(isinstance(m["payload"], str) and m["ts"] > 0 for m in seen)


@pytest.mark.asyncio
async def test_garbage_payloads_are_counted_and_routed_to_error(
    rig: tuple[Engine, MqttConnection],
) -> None:
    engine, client = rig
    doc = {
        "id": "g",
        "nodes": [
            {"id": "in", "type": "MQTTInNode", "params": {"topic": "g/in"}},
            {"id": "ok", "type": "CollectNode"},
            {"id": "bad", "type": "CollectNode"},
        ],
        "edges": [{"from": "in", "to": "ok"}, {"from": "in", "to": "bad", "port": "error"}],
    }
    await engine.deploy(validate(doc))
    await asyncio.sleep(0.3)
    for raw in (b"{not json", b"\xff\xfe", b"", b'{"fine": true}', b"[1, 2"):
        client.publish("g/in", raw, qos=1)
    await until(lambda: len(COLLECTED.get("g.ok", [])) + len(COLLECTED.get("g.bad", [])) == 5)
    assert [m["payload"] for m in COLLECTED["g.ok"]] == [{"fine": True}]
    bad = COLLECTED["g.bad"]
    assert len(bad) == 4
    assert base64.b64decode(bad[0]["payload"]) == b"{not json"
    assert bad[0]["error"]["type"] == "DecodeError"
    node = engine.status()["g"]["nodes"]["in"]
    assert node["decode_errors"] == 4 and node["errors"] == 4
    assert "invalid JSON" in node["last_error"]


@pytest.mark.asyncio
async def test_codecs_round_trip(rig: tuple[Engine, MqttConnection]) -> None:
    engine, client = rig
    nodes: list[dict[str, Any]] = []
    edges: list[dict[str, Any]] = []
    for codec in ("json", "msgpack", "text", "bytes"):
        nodes.append(
            {
                "id": f"in_{codec}",
                "type": "MQTTInNode",
                "params": {"topic": f"c/{codec}", "decode": codec},
            }
        )
        nodes.append(
            {
                "id": f"out_{codec}",
                "type": "MQTTOutNode",
                "params": {"topic": f"back/{codec}", "encode": codec},
            }
        )
        edges.append({"from": f"in_{codec}", "to": f"out_{codec}"})  # fmt: skip
    await engine.deploy(validate({"id": "c", "nodes": nodes, "edges": edges}))
    inbox = Inbox()
    client.subscribe("back/#", 0, inbox)
    await client.wait_subscribed()
    await asyncio.sleep(0.3)
    sent = {
        "json": orjson.dumps({"a": [1, 2.5, None]}),
        "msgpack": msgpack.packb({"a": [1, 2.5, None]}),
        "text": "grüße".encode(),
        "bytes": bytes(range(256)),
    }
    for codec, raw in sent.items():
        client.publish(f"c/{codec}", raw)
    await until(lambda: len(inbox.got) == 4)
    back = {m.topic.split("/")[1]: m.payload for m in inbox.got}
    assert orjson.loads(back["json"]) == {"a": [1, 2.5, None]}
    assert msgpack.unpackb(back["msgpack"]) == {"a": [1, 2.5, None]}
    assert back["text"] == sent["text"]
    assert back["bytes"] == sent["bytes"]


@pytest.mark.asyncio
async def test_bytes_from_msgpack_go_out_as_json_base64(rig: tuple[Engine, MqttConnection]) -> None:
    engine, client = rig
    doc = {
        "id": "b",
        "nodes": [
            {"id": "in", "type": "MQTTInNode", "params": {"topic": "bin/in", "decode": "msgpack"}},
            {"id": "out", "type": "MQTTOutNode", "params": {"topic": "bin/out"}},
        ],
        "edges": [{"from": "in", "to": "out"}],
    }
    await engine.deploy(validate(doc))
    inbox = Inbox()
    client.subscribe("bin/out", 0, inbox)
    await client.wait_subscribed()
    await asyncio.sleep(0.3)
    client.publish("bin/in", msgpack.packb({"raw": b"\x00\xff", "n": 1}, use_bin_type=True))
    await until(lambda: len(inbox.got) == 1)
    # before: orjson refused the bytes and every such message was a counted error
    assert orjson.loads(inbox.got[0].payload) == {"raw": "AP8=", "n": 1}
    assert engine.status()["b"]["nodes"]["out"]["errors"] == 0


def test_invalid_topics_are_flow_errors() -> None:
    from mechaway.errors import FlowError

    for params in ({"topic": "a/#/b"}, {"topic": "a+/b"}, {"topic": ""}, {"topic": "$share/x"}):
        doc = {"id": "v", "nodes": [{"id": "in", "type": "MQTTInNode", "params": params}]}
        with pytest.raises(FlowError, match=r"nodes\[0\] \(in\)\.params"):
            validate(doc)
    doc = {"id": "v", "nodes": [
        {"id": "in", "type": "MQTTInNode", "params": {"topic": "x"}},
        {"id": "out", "type": "MQTTOutNode", "params": {"topic": "a/+/b"}}],
        "edges": [{"from": "in", "to": "out"}]}  # fmt: skip
    with pytest.raises(FlowError, match="cannot contain"):
        validate(doc)


# -- the daemon as a subprocess ---------------------------------------------------------------
def mqtt_daemon(root: Path, mqtt: dict[str, Any]) -> DaemonProc:
    """``mechaway start`` with ``[mqtt.default]`` pointing at the test broker."""
    lines = ["[mqtt.default]", *(f"{k} = {json.dumps(v)}" for k, v in mqtt.items())]
    return DaemonProc(root, config="\n".join(lines))


def wait_for(cond: Callable[[], bool], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.05)


PRODUCER = {
    "id": "producer",
    "nodes": [
        {"id": "tick", "type": "InjectNode", "params": {"interval": 0.01, "repeat": 60}},
        {"id": "out", "type": "MQTTOutNode", "params": {"topic": "spool/test", "qos": 1}},
    ],
    "edges": [{"from": "tick", "to": "out"}],
}


def test_daemon_killed_while_publishes_are_spooled_delivers_them_after_restart(
    tmp_path: Path,
) -> None:
    """QoS 1 publishes made while the broker is down survive kill -9 and arrive in order."""
    broker = MosquittoBroker()  # not started: the broker is down
    try:
        daemon = mqtt_daemon(tmp_path, {"port": broker.port, "reconnect_max": 0.5})
        daemon.start()
        (daemon.flows / "producer.json").write_text(json.dumps(PRODUCER))

        def spooled() -> int:
            return int(daemon.get("/status")["connections"]["mqtt.default"]["spool"])

        wait_for(lambda: spooled() == 60)
        time.sleep(0.5)  # the spool's group commit is a few ms; leave ample margin
        daemon.kill9()
        (daemon.flows / "producer.json").unlink()  # the restart must drain without the flow

        broker.start()
        got: list[float] = []
        import paho.mqtt.client as paho

        sub = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="watcher")
        sub.on_message = lambda c, u, m: got.append(float(m.payload))
        sub.connect("127.0.0.1", broker.port)
        sub.subscribe("spool/test", qos=1)
        sub.loop_start()
        try:
            time.sleep(0.3)
            daemon.start()
            wait_for(lambda: len(got) >= 60)
            time.sleep(0.5)  # nothing more than what was spooled may arrive
            status = daemon.get("/status")["connections"]["mqtt.default"]
            assert daemon.terminate() == 0
        finally:
            sub.loop_stop()
            sub.disconnect()
        assert len(got) == 60, "exactly the spooled messages, no duplicates"
        assert got == sorted(got) and len(set(got)) == 60, "in the order they were published"
        assert status["spool"] == 0 and status["connected"]
    finally:
        broker.close()


def test_wrong_password_is_a_clear_status_and_the_daemon_keeps_running(tmp_path: Path) -> None:
    with MosquittoBroker(users={"edge": "right"}) as broker:
        mqtt = {"port": broker.port, "username": "edge", "password": "wrong", "reconnect_max": 0.5}
        daemon = mqtt_daemon(tmp_path, mqtt)
        daemon.start()
        try:
            (daemon.flows / "p.json").write_text(json.dumps(PRODUCER))

            def conn() -> dict[str, Any]:
                return dict(daemon.get("/status")["connections"]["mqtt.default"])

            wait_for(lambda: conn()["counters"]["auth_failures"] >= 2)
            st = conn()
            assert not st["connected"]
            assert "auth" in (st["last_error"] or "").lower() or "refused" in st["state"]
            assert daemon.get("/health")["status"] == "ok"
            wait_for(lambda: daemon.get("/status")["flows"].get("producer") is not None)
            log = daemon.logfile.read_text()
            assert "Traceback" not in log
        finally:
            assert daemon.terminate() == 0
    assert os.path.exists(tmp_path / "data" / "mechaway.db")


@contextlib.asynccontextmanager
async def upstream_rig(
    broker: MosquittoBroker, tmp_path: Path, topic: str, **conn: Any
) -> AsyncIterator[tuple[Engine, Database, Outbox, MqttConnection, dict[str, MqttConnection]]]:
    """A flow ``MQTTIn (topic, QoS 1) -> UpstreamNode`` on its own store, deployed, with a
    publisher: (engine, db, outbox, publisher, the flow's connections by name)."""
    db = Database(tmp_path / "m.db")
    db.open()
    conns: dict[str, MqttConnection] = {}
    settings = fast(broker, birth=False, **conn)

    async def get(name: str) -> MqttConnection:
        if name not in conns:
            conns[name] = MqttConnection(name, settings, device_id="dut")
            await conns[name].start()
            await conns[name].wait_connected(5)
        return conns[name]

    engine = Engine(Services(store=db, data_dir=tmp_path, connections={"mqtt": get}))
    doc = {
        "id": "up",
        "nodes": [
            {"id": "in", "type": "MQTTInNode", "params": {"topic": topic, "qos": 1}},
            {"id": "hub", "type": "UpstreamNode"},
        ],
        "edges": [{"from": "in", "to": "hub"}],
    }
    pub = MqttConnection("pub", fast(broker, birth=False), device_id="pub")
    await pub.start()
    try:
        await engine.deploy(validate(doc))
        await pub.wait_connected(5)
        await asyncio.sleep(0.3)
        yield engine, db, Outbox.of(db), pub, conns
    finally:
        await engine.stop()
        for c in [*conns.values(), pub]:
            await c.close()
        await db.close()


@pytest.mark.asyncio
async def test_qos1_puback_waits_for_the_outbox_commit(
    broker: MosquittoBroker, tmp_path: Path
) -> None:
    """A QoS 1 message whose outbox commit had not happened when the connection died is
    redelivered by the broker (no PUBACK yet) and stored again, flagged as a duplicate."""
    import threading

    async with upstream_rig(
        broker, tmp_path, "up/in", clean_session=False, client_id="dut-persist"
    ) as (engine, db, outbox, pub, conns):
        pub.publish("up/in", b'{"n": 1}', qos=1)
        await until(lambda: len(outbox.peek()) == 1)

        stall = threading.Event()
        db.submit(lambda conn: stall.wait(10))  # the writer is busy: the next commit waits
        pub.publish("up/in", b'{"n": 2}', qos=1)
        await until(lambda: engine.status()["up"]["nodes"]["in"]["out"] == 2)
        await asyncio.sleep(0.2)
        assert len(outbox.peek()) == 1  # n=2 is not durable yet, so it was not PUBACKed
        conns["default"]._session.abort("test: the link dies before the commit")  # type: ignore[union-attr]
        stall.set()
        await until(lambda: len(outbox.peek()) == 3)
        entries = outbox.peek()
        assert [e.value()["n"] for e in entries] == [1, 2, 2]
        assert [e.dup for e in entries] == [False, False, True]
        await asyncio.sleep(0.3)
        assert len(outbox.peek()) == 3  # n=1 was PUBACKed after its commit: never redelivered


#: QoS 1 in on the default connection, QoS 1 out on the ``far`` one
RELAY = {
    "id": "relay",
    "nodes": [
        {"id": "in", "type": "MQTTInNode", "params": {"topic": "relay/in", "qos": 1}},
        {
            "id": "out",
            "type": "MQTTOutNode",
            "params": {"connection": "far", "topic": "relay/out", "qos": 1},
        },
    ],
    "edges": [{"from": "in", "to": "out"}],
}


@pytest.mark.asyncio
@pytest.mark.parametrize("clean_session", [False, True])
async def test_a_message_the_full_disk_refused_is_redelivered_not_acked(
    broker: MosquittoBroker, tmp_path: Path, clean_session: bool
) -> None:
    """Disk full: the outbox refuses the message. With a persistent session it is not
    PUBACKed (the session ends, the broker delivers it again, it is stored once there is
    room); a clean session cannot be redelivered: acknowledged, counted and said."""
    async with upstream_rig(
        broker, tmp_path, "full/in", clean_session=clean_session, client_id="dut-full"
    ) as (_, db, outbox, pub, conns):
        pub.publish("full/in", b'{"n": 1}', qos=1)
        await until(lambda: len(outbox.peek()) == 1)
        pages = db.read("PRAGMA page_count")[0][0]
        await db.write(lambda c: c.execute(f"PRAGMA max_page_count={pages}").fetchone())
        pub.publish("full/in", orjson.dumps({"n": 2, "pad": "x" * 5000}), qos=1)

        def counter(name: str) -> int:
            value: int = conns["default"].status()["counters"][name]
            return value

        if clean_session:
            await until(lambda: counter("acked_unstored") == 1)
            assert counter("redeliveries_requested") == 0
        else:
            await until(lambda: counter("redeliveries_requested") >= 1)
            assert counter("acked_unstored") == 0
        await db.write(lambda c: c.execute("PRAGMA max_page_count=1073741823").fetchone())
        if clean_session:
            await asyncio.sleep(1.0)
            assert [e.value()["n"] for e in outbox.peek()] == [1]  # lost, and said so
        else:
            # before: PUBACKed although the outbox had refused it, i.e. lost
            await until(lambda: len(outbox.peek()) == 2, timeout=15)
            entries = outbox.peek()
            assert [e.value()["n"] for e in entries] == [1, 2]
            assert entries[1].dup


@pytest.mark.asyncio
async def test_qos1_relay_acks_upstream_only_once_the_far_side_has_it(
    broker: MosquittoBroker, tmp_path: Path
) -> None:
    """MQTTIn (QoS 1) -> MQTTOut (QoS 1, another broker): the input's PUBACK waits for the
    far broker's PUBACK, or, while the far broker is down, for the spool's fsync. So at
    no moment is an acknowledged message held only in the daemon's memory."""
    import signal
    import threading

    from mechaway.store.db import Database
    from mechaway.store.spool import SqliteSpool

    far = MosquittoBroker(persistence=True)
    far.start()
    db = Database(tmp_path / "m.db")
    db.open()
    conns: dict[str, MqttConnection] = {}

    async def get(name: str) -> MqttConnection:
        if name not in conns:
            if name == "far":
                c = MqttConnection(
                    name, fast(far, birth=False), device_id="dut", spool=SqliteSpool(db, "far")
                )
            else:
                c = MqttConnection(name, fast(broker, birth=False), device_id="dut")
            conns[name] = c
            await c.start()
            await c.wait_connected(5)
        return conns[name]

    engine = Engine(Services(store=db, data_dir=tmp_path, connections={"mqtt": get}))
    pub = MqttConnection("pub", fast(broker, birth=False), device_id="pub")
    watch_settings = fast(far, birth=False, clean_session=False, client_id="relay-watch")
    watcher = MqttConnection("watch", watch_settings, device_id="watch")
    inbox = Inbox()
    for c in (pub, watcher):
        await c.start()
        await c.wait_connected(5)
    watcher.subscribe("relay/out", 1, inbox)
    await watcher.wait_subscribed()

    def held() -> int:  # the daemon's PUBACKs to the first broker not sent yet
        return int(conns["default"].status()["acks_held"])

    def relayed() -> int:
        return int(engine.status()["relay"]["nodes"]["in"]["out"])

    try:
        await engine.deploy(validate(RELAY))
        await asyncio.sleep(0.3)
        pub.publish("relay/in", b'{"n": 1}', qos=1)
        await until(lambda: len(inbox.got) == 1 and held() == 0)

        # the far broker takes the PUBLISH but cannot answer: the input stays unacked
        assert far.pid is not None
        os.kill(far.pid, signal.SIGSTOP)
        try:
            pub.publish("relay/in", b'{"n": 2}', qos=1)
            await until(lambda: relayed() == 2)
            await asyncio.sleep(0.3)
            assert held() == 1, "PUBACKed upstream before the far broker acknowledged"
        finally:
            os.kill(far.pid, signal.SIGCONT)
        await until(lambda: held() == 0 and len(inbox.got) == 2)

        # the far broker is down: the publish is spooled; the PUBACK waits for the fsync
        await far.astop()
        await until(lambda: not conns["far"].connected)
        stall = threading.Event()
        db.submit(lambda conn: stall.wait(10))  # the writer is busy: the spool write waits
        pub.publish("relay/in", b'{"n": 3}', qos=1)
        await until(lambda: relayed() == 3)
        await asyncio.sleep(0.3)
        assert held() == 1, "PUBACKed upstream before the spooled copy was on disk"
        stall.set()
        await until(lambda: held() == 0)
        assert conns["far"].status()["spool"] == 1
        assert db.read("SELECT count(*) FROM mqtt_spool WHERE conn = 'far'")[0][0] == 1

        await far.astart()
        await until(lambda: len(inbox.got) == 3)
        assert [orjson.loads(m.payload)["n"] for m in inbox.got] == [1, 2, 3]

        # the far connection closes (daemon shutdown) with n=4 still unacknowledged: it
        # goes to the spool, and the input's PUBACK waits for that copy's fsync
        await until(lambda: conns["far"].connected)
        os.kill(far.pid, signal.SIGSTOP)
        try:
            pub.publish("relay/in", b'{"n": 4}', qos=1)
            await until(lambda: relayed() == 4 and held() == 1)
            stall = threading.Event()
            db.submit(lambda conn: stall.wait(10))
            await conns["far"].close(timeout=0.3)
            await asyncio.sleep(0.2)
            assert held() == 1, "PUBACKed upstream before the spooled copy was on disk"
            stall.set()
            await until(lambda: held() == 0)
            rows = db.read("SELECT payload FROM mqtt_spool WHERE conn = 'far' ORDER BY id")
            assert [orjson.loads(r[0])["n"] for r in rows] == [4]
        finally:
            os.kill(far.pid, signal.SIGCONT)
    finally:
        await engine.stop()
        for c in [*conns.values(), pub, watcher]:
            await c.close()
        await db.close()
        far.close()


def test_relay_killed_again_and_again_loses_nothing(tmp_path: Path) -> None:
    """The daemon relays QoS 1 from one broker to another that is down (so every message
    goes through the spool) and is killed with SIGKILL three times mid-stream. Every
    published message reaches the far side, first copies in order: what the daemon had
    not made safe it had not PUBACKed either, so the near broker delivered it again."""
    import random
    import threading

    import paho.mqtt.client as paho

    near = MosquittoBroker(persistence=True)
    far = MosquittoBroker(persistence=True)
    total = 300
    try:
        near.start()
        far.start()  # once, to leave a persistent session for the watcher, then down
        watch = paho.Client(
            paho.CallbackAPIVersion.VERSION2, client_id="relay-watch", clean_session=False
        )
        watch.connect("127.0.0.1", far.port)
        watch.subscribe("relay/out", qos=1)
        watch.loop_start()
        time.sleep(0.3)
        watch.loop_stop()
        watch.disconnect()
        far.stop()

        config = "\n".join(
            [
                "[mqtt.default]",
                f"port = {near.port}",
                'client_id = "relay-dut"',
                "clean_session = false",
                "reconnect_min = 0.05",
                "reconnect_max = 0.3",
                "[mqtt.far]",
                f"port = {far.port}",
                "reconnect_min = 0.05",
                "reconnect_max = 0.3",
            ]
        )
        daemon = DaemonProc(tmp_path, config=config)
        daemon.start()
        (daemon.flows / "relay.json").write_text(json.dumps(RELAY))
        wait_for(lambda: daemon.get("/status")["flows"].get("relay") is not None)

        def far_spooled() -> int:
            return int(daemon.get("/status")["connections"]["mqtt.far"]["spool"])

        pub = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="relay-pub")
        pub.connect("127.0.0.1", near.port)
        pub.loop_start()

        def produce() -> None:
            for i in range(total):
                pub.publish("relay/in", b"%d" % i, qos=1)
                time.sleep(0.004)

        producer = threading.Thread(target=produce)
        producer.start()
        rng = random.Random(7)
        for _ in range(3):
            time.sleep(rng.uniform(0.15, 0.35))
            daemon.kill9()
            daemon.start()
        producer.join()
        wait_for(lambda: far_spooled() >= total, timeout=30)

        got: list[int] = []
        far.start()
        watch = paho.Client(
            paho.CallbackAPIVersion.VERSION2, client_id="relay-watch", clean_session=False
        )
        watch.on_message = lambda c, u, m: got.append(int(m.payload))
        watch.connect("127.0.0.1", far.port)
        watch.loop_start()
        try:
            wait_for(lambda: set(range(total)) <= set(got), timeout=30)
            wait_for(lambda: far_spooled() == 0)
        finally:
            watch.loop_stop()
            watch.disconnect()
            pub.loop_stop()
            pub.disconnect()
        first = list(dict.fromkeys(got))
        assert first == list(range(total)), "every message, first copies in publish order"
        assert daemon.terminate() == 0
        assert "Traceback" not in daemon.logfile.read_text()
    finally:
        near.close()
        far.close()
