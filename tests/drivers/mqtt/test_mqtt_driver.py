"""The MQTT driver against a real private mosquitto (mechaway.testing.broker), never a fake."""

from __future__ import annotations

import asyncio
import os
import signal
import struct
import sys
import textwrap
import time
import tracemalloc
from collections.abc import Callable, Iterator
from typing import Any

import orjson
import pytest

from mechaway.drivers.mqtt import (
    Incoming,
    MemorySpool,
    MqttConnection,
    MqttSettings,
    _fixed_header,
    parse_settings,
    topic_matches,
)
from mechaway.errors import ConfigError, NotConnected
from mechaway.testing.broker import MosquittoBroker


@pytest.fixture
def broker() -> Iterator[MosquittoBroker]:
    b = MosquittoBroker(persistence=True)
    b.start()
    try:
        yield b
    finally:
        b.close()


@pytest.fixture
def saving_broker() -> Iterator[MosquittoBroker]:
    """A broker that writes its database at every change: sessions survive SIGKILL."""
    b = MosquittoBroker(save_every_change=True)
    b.start()
    try:
        yield b
    finally:
        b.close()


def fast(broker: MosquittoBroker, **kw: Any) -> MqttSettings:
    """Settings that reconnect quickly (tests measure seconds, not minutes)."""
    kw.setdefault("reconnect_min", 0.05)
    kw.setdefault("reconnect_max", 0.3)
    return MqttSettings(port=broker.port, **kw)


async def until(pred: Callable[[], bool], timeout: float = 5.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or pred}")
        await asyncio.sleep(0.01)


class Collect:
    """A sync handler that records what it receives."""

    def __init__(self) -> None:
        self.got: list[Incoming] = []

    def __call__(self, msg: Incoming) -> None:
        self.got.append(msg)

    @property
    def payloads(self) -> list[bytes]:
        return [m.payload for m in self.got]

    def topics(self) -> set[str]:
        return {m.topic for m in self.got}


# -- pure parts ---------------------------------------------------------------------------
def test_topic_matching() -> None:
    assert topic_matches("a/+/c", "a/b/c")
    assert not topic_matches("a/+/c", "a/b/d/c")
    assert topic_matches("a/#", "a")
    assert topic_matches("a/#", "a/b/c")
    assert topic_matches("#", "x/y")
    assert not topic_matches("#", "$SYS/x")
    assert not topic_matches("+/x", "$SYS/x")
    assert topic_matches("$share/g/gh/+/temp", "gh/1/temp")
    assert not topic_matches("a/b", "a/b/c")


def test_memory_spool_bound_and_policies() -> None:
    s = MemorySpool(3, "drop_oldest")
    for i in range(5):
        s.append("t", b"%d" % i, 1, False)
    assert [p for _, _, p, _, _ in s.peek(10)] == [b"2", b"3", b"4"]
    assert s.dropped == 2 and len(s) == 3
    first_id = s.peek(1)[0][0]
    s.remove_upto(first_id)
    assert [p for _, _, p, _, _ in s.peek(10)] == [b"3", b"4"]
    n = MemorySpool(2, "drop_new")
    for i in range(4):
        n.append("t", b"%d" % i, 1, False)
    assert [p for _, _, p, _, _ in n.peek(10)] == [b"0", b"1"] and n.dropped == 2


def test_settings_validation_names_the_key() -> None:
    assert parse_settings({"port": 1884}).port == 1884
    # strict like every other section: a quoted number is a mistake worth naming
    with pytest.raises(ConfigError, match=r"mqtt\.plc\.port: Expected `int`, got `str`"):
        parse_settings({"port": "1883"}, "mqtt.plc")
    with pytest.raises(ConfigError, match=r"mqtt\.plc\.keepalive: Expected `int`, got `str`"):
        parse_settings({"keepalive": "60"}, "mqtt.plc")
    with pytest.raises(ConfigError, match=r"mqtt\.plc\.port"):
        parse_settings({"port": 0}, "mqtt.plc")
    with pytest.raises(ConfigError, match=r"unknown key.*hots"):
        parse_settings({"hots": "x"}, "mqtt.plc")
    with pytest.raises(ConfigError, match="key_file needs cert_file"):
        parse_settings({"key_file": "k.pem"}, "mqtt.plc")
    # an infinite backoff or timeout would never retry; MQTT 5 carries the expiry in 4 bytes
    for key, value in [("reconnect_max", float("inf")), ("connect_timeout", float("inf")),
                       ("reconnect_min", float("nan")), ("session_expiry", 2**32)]:  # fmt: skip
        with pytest.raises(ConfigError, match=rf"mqtt\.plc\.{key}: Expected `(float|int)`"):
            parse_settings({key: value}, "mqtt.plc")
    with pytest.raises(ValueError, match="wildcard"):
        MqttConnection("x", MqttSettings(), device_id="d").publish("a/#", b"")
    with pytest.raises(ValueError, match="'#' must be"):
        MqttConnection("x", MqttSettings(), device_id="d").subscribe("a/#/b", 0, Collect())


# -- against the broker -----------------------------------------------------------------------
@pytest.mark.asyncio
async def test_pubsub_both_ways_qos0_and_qos1(broker: MosquittoBroker) -> None:
    async with (
        MqttConnection("a", fast(broker), device_id="dev-a") as a,
        MqttConnection("b", fast(broker), device_id="dev-b") as b,
    ):
        await a.wait_connected(5)
        await b.wait_connected(5)
        got_a, got_b = Collect(), Collect()
        a.subscribe("to/a", 1, got_a)
        b.subscribe("to/b", 0, got_b)
        await a.wait_subscribed()
        await b.wait_subscribed()
        for i in range(50):
            a.publish("to/b", b"%d" % i, qos=0)
            b.publish("to/a", b"%d" % i, qos=1)
        await until(lambda: len(got_a.got) == 50 and len(got_b.got) == 50)
        assert got_a.payloads == [b"%d" % i for i in range(50)]
        assert {m.qos for m in got_a.got} == {1} and {m.qos for m in got_b.got} == {0}
        await until(lambda: b.status()["inflight"] == 0)
        st = b.status()
        assert st["connected"] and st["state"] == "connected"
        assert st["tcp_nodelay"] is True
        assert st["counters"]["acked"] >= 50  # 50 + the birth message
        assert a.status()["counters"]["rx"] == 50


@pytest.mark.asyncio
@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
async def test_wildcards_shared_and_unsubscribe(broker: MosquittoBroker, protocol: str) -> None:
    """Overlapping filters each get every message once (MQTT 5 brokers send one copy per
    subscription: the driver routes them by subscription identifier)."""
    async with (
        MqttConnection("pub", fast(broker), device_id="pub") as pub,
        MqttConnection("sub", fast(broker, protocol=protocol), device_id="sub") as sub,
    ):
        await pub.wait_connected(5)
        await sub.wait_connected(5)
        plus, hash_, shared = Collect(), Collect(), Collect()
        s_plus = sub.subscribe("gh/+/temp", 1, plus)
        sub.subscribe("gh/#", 0, hash_)
        sub.subscribe("$share/grp/sh/+", 1, shared)
        await sub.wait_subscribed()
        for topic in ("gh/1/temp", "gh/2/temp", "gh/1/hum", "gh", "other/1/temp", "sh/x"):
            pub.publish(topic, topic.encode(), qos=1)
        await until(lambda: len(hash_.got) == 4 and len(shared.got) == 1)
        await asyncio.sleep(0.05)
        assert sorted(m.topic for m in plus.got) == ["gh/1/temp", "gh/2/temp"]
        assert len(hash_.got) == 4
        assert hash_.topics() == {"gh/1/temp", "gh/2/temp", "gh/1/hum", "gh"}
        assert shared.topics() == {"sh/x"}
        sub.unsubscribe(s_plus)
        pub.publish("gh/3/temp", b"late", qos=1)
        await until(lambda: len(hash_.got) == 5)
        await asyncio.sleep(0.05)
        assert "gh/3/temp" not in plus.topics()


@pytest.mark.asyncio
async def test_qos1_is_acked_only_after_the_async_handler(broker: MosquittoBroker) -> None:
    """The durable outbox relies on it: a message whose handler had not finished when the
    connection died is delivered again (persistent session), the finished one is not."""
    gate = asyncio.Event()
    calls: list[bytes] = []
    dups: list[bool] = []

    async def slow(msg: Incoming) -> None:
        calls.append(msg.payload)
        dups.append(msg.dup)
        if msg.payload == b"held":
            await gate.wait()

    settings = fast(broker, clean_session=False, client_id="persist-1")
    async with (
        MqttConnection("pub", fast(broker), device_id="p") as pub,
        MqttConnection("sub", settings, device_id="s") as sub,
    ):
        await pub.wait_connected(5)
        await sub.wait_connected(5)
        sub.subscribe("outbox/in", 1, slow)
        await sub.wait_subscribed()
        pub.publish("outbox/in", b"done", qos=1)
        await until(lambda: calls == [b"done"])
        pub.publish("outbox/in", b"held", qos=1)
        await until(lambda: calls == [b"done", b"held"])
        await asyncio.sleep(0.1)
        sub._session.abort("test: socket dies mid-handler")  # type: ignore[union-attr]
        await until(lambda: calls.count(b"held") == 2, what="redelivery of the unacked one")
        gate.set()
        await until(lambda: sub.status()["connected"])
        await asyncio.sleep(0.2)
        assert calls.count(b"done") == 1
        assert sub.status()["reconnects"] == 1
        assert dups[:3] == [False, False, True]  # the redelivery carries the DUP flag


@pytest.mark.asyncio
@pytest.mark.parametrize("how", ["sigterm", "sigkill"])
async def test_broker_restart_mid_stream_loses_nothing(
    saving_broker: MosquittoBroker, how: str
) -> None:
    """QoS 1 publishes go on while the broker goes down and comes back.

    SIGTERM (the broker saves sessions and queues): every message arrives, in order, and
    nothing else (duplicates of unacked ones are QoS 1's right). SIGKILL: the broker loses
    what it had acknowledged but not yet forwarded, which no client can help; everything
    it had NOT acknowledged (the driver's responsibility) must still arrive, in order.
    (The broker saves at every change, so the subscriber's session survives SIGKILL.)
    """
    kill = how == "sigkill"
    broker = saving_broker
    sub_settings = fast(broker, clean_session=False, client_id=f"restart-sub-{how}")
    async with (
        MqttConnection("pub", fast(broker), device_id="rp") as pub,
        MqttConnection("sub", sub_settings, device_id="rs") as sub,
    ):
        await pub.wait_connected(5)
        await sub.wait_connected(5)
        got = Collect()
        sub.subscribe("stream/seq", 1, got)
        await sub.wait_subscribed()
        total = 1500
        published: list[bytes] = []

        async def produce() -> None:
            for i in range(total):
                payload = b"%d" % i
                pub.publish("stream/seq", payload, qos=1)
                published.append(payload)
                if i % 10 == 0:
                    await asyncio.sleep(0.005)

        producer = asyncio.create_task(produce(), name="test.producer")
        await until(lambda: len(got.got) > 200)
        await broker.astop(kill=kill)
        acked_before = pub.status()["counters"]["acked"] - 1  # minus the birth message
        await until(lambda: not pub.status()["connected"] and not sub.status()["connected"])
        await asyncio.sleep(0.3)  # publishes keep coming while the broker is down
        assert pub.status()["counters"]["spooled"] > 0
        await broker.astart()
        await producer
        must = published if not kill else published[acked_before:]
        await until(
            lambda: set(must) <= set(got.payloads),
            timeout=20,
            what=f"the {len(must)} messages that must arrive",
        )
        await until(lambda: pub.status()["inflight"] == 0 and pub.status()["spool"] == 0)
        first = list(dict.fromkeys(got.payloads))  # first occurrences, in arrival order
        assert set(first) <= set(published), "a message nobody published"
        assert [int(p) for p in first] == sorted(int(p) for p in first), "out of order"
        if not kill:
            assert first == published
        st = pub.status()
        assert st["reconnects"] >= 1 and st["retry_queue"] == 0
        assert st["counters"]["spool_dropped"] == 0


@pytest.mark.asyncio
async def test_wrong_password_is_a_status_not_an_exception() -> None:
    with MosquittoBroker(users={"edge": "secret"}) as broker:
        bad = fast(broker, username="edge", password="wrong", protocol="3.1.1")
        anon = fast(broker)
        good = fast(broker, username="edge", password="secret")
        async with (
            MqttConnection("bad", bad, device_id="d1") as c1,
            MqttConnection("anon", anon, device_id="d2") as c2,
            MqttConnection("good", good, device_id="d3") as c3,
        ):
            await until(lambda: c1.status()["state"] == "auth refused", what="refusal")
            await until(lambda: c2.status()["state"] == "auth refused", what="anon refusal")
            await c3.wait_connected(5)
            with pytest.raises(NotConnected, match="auth refused"):
                await c1.wait_connected(0.2)
            c1.publish("t", b"kept", qos=1)  # no exception: spooled for later
            c1.publish("t", b"gone", qos=0)
            st = c1.status()
            assert not st["connected"] and "not authorised" in (st["last_error"] or "")
            assert st["counters"]["auth_failures"] >= 1
            assert st["counters"]["spooled"] == 1 and st["spool"] == 1
            assert st["counters"]["qos0_dropped_offline"] == 1
            await until(
                lambda: c1.status()["counters"]["auth_failures"] >= 3, what="retries with backoff"
            )


@pytest.mark.asyncio
async def test_broker_down_at_start_then_up() -> None:
    broker = MosquittoBroker()
    try:
        settings = fast(broker, offline_qos0="queue")
        async with MqttConnection("late", settings, device_id="late") as conn:
            await until(lambda: conn.status()["state"] == "unreachable")
            conn.publish("late/q0", b"0", qos=0)
            conn.publish("late/q1", b"1", qos=1)
            assert conn.status()["spool"] == 2
            await broker.astart()
            await conn.wait_connected(5)
            await until(lambda: conn.status()["spool"] == 0, what="spool drained")
            assert conn.status()["counters"]["connect_failures"] >= 1
    finally:
        broker.close()


@pytest.mark.asyncio
async def test_oversize_and_failing_handlers_are_counted(broker: MosquittoBroker) -> None:
    async with (
        MqttConnection("pub", fast(broker), device_id="op") as pub,
        MqttConnection("sub", fast(broker, max_payload_bytes=1000), device_id="os") as sub,
    ):
        await pub.wait_connected(5)
        await sub.wait_connected(5)
        got = Collect()

        def boom(msg: Incoming) -> None:
            if msg.payload == b"boom":
                raise RuntimeError("bad payload")
            got(msg)

        sub.subscribe("in/#", 1, boom)
        await sub.wait_subscribed()
        pub.publish("in/big", b"x" * 2000, qos=1)
        pub.publish("in/x", b"boom", qos=1)
        pub.publish("in/small", b"ok", qos=1)
        await until(lambda: got.payloads == [b"ok"])
        c = sub.status()["counters"]
        assert c["oversize_dropped"] == 1 and c["handler_errors"] == 1
        sub.publish("out", b"y" * 1001, qos=0)
        assert sub.status()["counters"]["tx_oversize_dropped"] == 1
        await until(lambda: pub.status()["inflight"] == 0, what="all three acked")


@pytest.mark.asyncio
async def test_birth_and_last_will(broker: MosquittoBroker) -> None:
    async with MqttConnection("obs", fast(broker), device_id="observer") as obs:
        await obs.wait_connected(5)
        status = Collect()
        obs.subscribe("mechaway/+/status", 1, status)
        await obs.wait_subscribed()

        def last(device: str) -> bytes | None:
            mine = [m.payload for m in status.got if m.topic == f"mechaway/{device}/status"]
            return mine[-1] if mine else None

        # graceful: online, then the retained offline published by close()
        async with MqttConnection("x", fast(broker), device_id="polite") as conn:
            await conn.wait_connected(5)
            await until(lambda: last("polite") == b"online")
        await until(lambda: last("polite") == b"offline")

        # the socket dies (kill -9): the broker publishes the will
        code = textwrap.dedent(f"""
            import asyncio
            from mechaway.drivers.mqtt import MqttConnection, MqttSettings
            async def main():
                conn = MqttConnection("w", MqttSettings(port={broker.port}), device_id="victim")
                await conn.start()
                await conn.wait_connected(5)
                print("READY", flush=True)
                await asyncio.sleep(60)
            asyncio.run(main())
        """)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", code, stdout=asyncio.subprocess.PIPE, env=env
        )
        try:
            assert proc.stdout is not None
            line = await asyncio.wait_for(proc.stdout.readline(), 20)
            assert line.strip() == b"READY"
            await until(lambda: last("victim") == b"online")
            proc.send_signal(signal.SIGKILL)
            await until(lambda: last("victim") == b"offline", what="the last will")
        finally:
            if proc.returncode is None:
                proc.kill()
            await proc.wait()

    # retained: a newcomer sees both states without anyone publishing again
    async with MqttConnection("late", fast(broker), device_id="latecomer") as late:
        await late.wait_connected(5)
        seen = Collect()
        late.subscribe("mechaway/+/status", 0, seen)
        await until(lambda: {"mechaway/polite/status", "mechaway/victim/status"} <= seen.topics())
        retained = {m.topic: m.payload for m in seen.got if m.retain}
        assert retained["mechaway/polite/status"] == b"offline"
        assert retained["mechaway/victim/status"] == b"offline"


@pytest.mark.asyncio
async def test_close_is_idempotent_and_publish_after_close_raises(broker: MosquittoBroker) -> None:
    conn = MqttConnection("c", fast(broker), device_id="closer")
    await conn.start()
    await conn.wait_connected(5)
    await asyncio.gather(conn.close(), conn.close())  # concurrent closes wait for the first
    await conn.close()
    assert conn.status()["state"] == "closed"
    with pytest.raises(NotConnected):
        conn.publish("t", b"x")


def test_runs_under_uvloop(broker: MosquittoBroker) -> None:
    """The daemon runs on uvloop: the same round trip there."""
    import uvloop

    async def scenario() -> list[bytes]:
        got = Collect()
        async with MqttConnection("u", fast(broker), device_id="uv") as conn:
            await conn.wait_connected(5)
            conn.subscribe("uv/+", 1, got)
            await conn.wait_subscribed()
            for i in range(20):
                conn.publish(f"uv/{i % 3}", b"%d" % i, qos=i % 2)
            await until(lambda: len(got.got) == 20)
            assert conn.status()["tcp_nodelay"] is True
        return got.payloads

    assert uvloop.run(scenario()) == [b"%d" % i for i in range(20)]


# -- the wire path: corked writes, the incoming fast path ------------------------------------
def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        n, byte = divmod(n, 128)
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def publish_packet(
    topic: str,
    payload: bytes,
    *,
    qos: int = 0,
    mid: int = 0,
    retain: bool = False,
    dup: bool = False,
    props: bytes | None = None,
) -> bytes:
    """A PUBLISH as the broker sends it; ``props`` (MQTT 5) without its length."""
    body = struct.pack("!H", len(topic.encode())) + topic.encode()
    if qos:
        body += struct.pack("!H", mid)
    if props is not None:
        body += varint(len(props)) + props
    first = 0x30 | dup << 3 | qos << 1 | retain
    return bytes([first]) + varint(len(body) + len(payload)) + body + payload


def frames(data: bytes) -> list[tuple[int, bytes]]:
    """(first byte, body) of each packet in ``data``."""
    out, i = [], 0
    while i < len(data):
        first, j, size, shift = data[i], i + 1, 0, 0
        while True:
            size |= (data[j] & 0x7F) << shift
            j += 1
            if data[j - 1] < 0x80:
                break
            shift += 7
        out.append((first, data[j : j + size]))
        i = j + size
    return out


class Tap:
    """Stands in for a session's transport on its write side: records each write and
    forwards it (or swallows it, for packets the broker must not see)."""

    def __init__(self, transport: Any, forward: bool = True) -> None:
        self._t = transport
        self.forward = forward
        self.writes: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.writes.append(bytes(data))
        if self.forward:
            self._t.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._t, name)


def tap(conn: MqttConnection, forward: bool = True) -> Tap:
    proto = conn._session._proto  # type: ignore[union-attr]
    t = Tap(proto._transport, forward)
    proto._transport = t
    return t


def test_fixed_header_lengths() -> None:
    for n in (0, 1, 127, 128, 16383, 16384, 2_097_151, 2_097_152, 268_435_455):
        assert _fixed_header(0x30, n) == b"\x30" + varint(n)
    with pytest.raises(ValueError, match="256 MB"):
        _fixed_header(0x30, 268_435_456)
    with pytest.raises(ValueError, match="65535 bytes"):
        MqttConnection("x", MqttSettings(), device_id="d").publish("t" * 65536, b"")


@pytest.mark.asyncio
async def test_corked_writes_one_write_per_pass_in_call_order(broker: MosquittoBroker) -> None:
    """Publishes made in one loop pass go out in one write, QoS 0 and 1 in call order;
    gmqtt's own packets (here a SUBSCRIBE) go after what was corked before them."""
    async with (
        MqttConnection("pub", fast(broker, birth=False), device_id="cp") as pub,
        MqttConnection("sub", fast(broker), device_id="cs") as sub,
    ):
        await pub.wait_connected(5)
        await sub.wait_connected(5)
        got = Collect()
        sub.subscribe("ord/#", 0, got)
        await sub.wait_subscribed()
        wire = tap(pub)
        sent = []
        for i in range(24):  # 12 QoS 1: inside the in-flight window, none spooled
            topic = f"ord/{i % 3}"
            pub.publish(topic, b"%d" % i, qos=i % 2, retain=i == 5)
            sent.append((topic, b"%d" % i))
        assert wire.writes == [] and pub._session.write_buffer_size() > 0  # type: ignore[union-attr]
        await asyncio.sleep(0)  # the flush is the next callback of the loop
        assert len(wire.writes) == 1
        packets = frames(wire.writes[0])
        assert [(first & 0xF0, first >> 1 & 3, first & 1) for first, _ in packets] == [
            (0x30, i % 2, int(i == 5)) for i in range(24)
        ]
        pub.publish("ord/x", b"before-subscribe", qos=0)
        pub.subscribe("whatever/+", 0, Collect())  # SUBSCRIBE: written by gmqtt, not corked
        assert [w[0] for w in wire.writes[1:]] == [0x30, 0x82]
        await until(lambda: len(got.got) == 25, what="all 25 at the subscriber")
        assert [(m.topic, m.payload) for m in got.got] == [*sent, ("ord/x", b"before-subscribe")]
        await until(lambda: pub.status()["inflight"] == 0, what="the 12 QoS 1 acked")
        assert pub.status()["counters"]["acked"] == 12


@pytest.mark.asyncio
async def test_corked_writes_are_flushed_on_close(broker: MosquittoBroker) -> None:
    async with MqttConnection("sub", fast(broker), device_id="fs") as sub:
        await sub.wait_connected(5)
        got = Collect()
        sub.subscribe("flush/+", 1, got)
        await sub.wait_subscribed()
        for graceful in (True, False):
            conn = MqttConnection("pub", fast(broker, birth=False), device_id=f"fp{graceful}")
            await conn.start()
            await conn.wait_connected(5)
            for i in range(50):
                conn.publish(f"flush/{graceful}", b"%d" % i, qos=0)
            if graceful:
                await conn.close()  # DISCONNECT goes after the 50
            else:
                session = conn._session
                assert session is not None
                await session.close(graceful=False, timeout=1.0)  # no DISCONNECT
                await conn.close()
        await until(lambda: len(got.got) == 100, what="both batches of 50")
        for graceful in (True, False):
            mine = [m.payload for m in got.got if m.topic == f"flush/{graceful}"]
            assert mine == [b"%d" % i for i in range(50)]


@pytest.mark.asyncio
@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
async def test_incoming_fast_path_split_reads_and_fallbacks(
    broker: MosquittoBroker, protocol: str
) -> None:
    """Packets split across reads at every size, 1- to 3-byte lengths, QoS 1 acks (corked,
    in order), retain/DUP flags; MQTT 5 packets the fast path leaves to gmqtt (other
    properties, topic aliases) arrive all the same; broken framing drops the connection."""
    v5 = protocol == "5"
    async with MqttConnection("fp", fast(broker, protocol=protocol), device_id="fp") as conn:
        await conn.wait_connected(5)
        got = Collect()
        conn.subscribe("in/#", 1, got)
        await conn.wait_subscribed()
        sid = conn._filter_ids["in/#"]
        wire = tap(conn, forward=False)  # acks for ids the broker never sent stay here
        proto = conn._session._proto  # type: ignore[union-attr]
        sub_id = b"\x0b" + varint(sid)  # identifiers are stable hashes: often > 127
        props = sub_id if v5 else None
        big = bytes(range(256)) * 80  # 20480 bytes: a 3-byte remaining length
        stream = [
            publish_packet("in/a", b"small", props=props),
            publish_packet("in/b", big, qos=1, mid=777, props=props),
            publish_packet("in/c", b"kept", retain=True, props=props),
            publish_packet("in/d", b"again", qos=1, mid=778, dup=True, props=props),
        ]
        want = [
            ("in/a", b"small", 0, False, False),
            ("in/b", big, 1, False, False),
            ("in/c", b"kept", 0, True, False),
            ("in/d", b"again", 1, False, True),
        ]
        if v5:  # gmqtt's path: other properties (routed by topic without an identifier),
            # a topic alias set and used
            user = bytes([0x26]) + struct.pack("!H", 1) + b"k" + struct.pack("!H", 1) + b"v"
            ctype = bytes([0x03]) + struct.pack("!H", 4) + b"text"
            alias = bytes([0x23, 0, 5])
            stream += [
                publish_packet("in/e", b"props", props=user),
                publish_packet("in/e", b"format", props=b"\x01\x00"),  # payload format
                publish_packet("in/e", b"ctype", props=ctype + sub_id),
                publish_packet("in/f", b"alias-set", props=alias + sub_id),
                publish_packet("", b"alias-use", props=alias + sub_id),
            ]
            want += [
                ("in/e", b"props", 0, False, False),
                ("in/e", b"format", 0, False, False),
                ("in/e", b"ctype", 0, False, False),
                ("in/f", b"alias-set", 0, False, False),
                ("in/f", b"alias-use", 0, False, False),
            ]
        data = b"".join(stream)
        for chunk in (len(data), 1, 7, 1000):
            got.got.clear()
            wire.writes.clear()
            for i in range(0, len(data), chunk):
                proto.data_received(data[i : i + chunk])
            assert [(m.topic, m.payload, m.qos, m.retain, m.dup) for m in got.got] == want
            assert b"".join(wire.writes) == b"\x40\x02\x03\x09" + b"\x40\x02\x03\x0a"
        assert conn.status()["counters"]["unrouted"] == 0
        proto.data_received(b"\x30\xff\xff\xff\xff\x01")  # a 5-byte remaining length
        await until(lambda: conn.status()["reconnects"] >= 1, what="a new connection")
        await conn.wait_connected(5)


@pytest.mark.asyncio
async def test_kept_payloads_do_not_pin_oversized_buffers() -> None:
    """orjson's output holds ~4 KB whatever its length: the spool keeps compact copies."""
    conn = MqttConnection("x", MqttSettings(port=1), device_id="d")  # never started
    conn.publish("t", b"warm", qos=1)  # first-call allocations out of the measure
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(2000):
            conn.publish("t", orjson.dumps({"seq": i, "state": "on"}), qos=1)
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert conn.status()["spool"] == 2001
    assert grown < 1_000_000, f"{grown} bytes for 2000 spooled messages"


@pytest.mark.asyncio
@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
async def test_broker_gone_is_noticed_at_once(broker: MosquittoBroker, protocol: str) -> None:
    """An idle connection sees the broker's socket close (MQTT 3.1.1 gets no DISCONNECT
    from the broker first): lost now, not a keepalive later."""
    async with MqttConnection("idle", fast(broker, protocol=protocol), device_id="i") as conn:
        await conn.wait_connected(5)
        await asyncio.sleep(0.1)
        await broker.astop(kill=True)
        await until(lambda: not conn.status()["connected"], timeout=3, what="the loss")


@pytest.mark.asyncio
@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
async def test_two_clients_with_one_client_id_are_named_as_the_cause(
    broker: MosquittoBroker, protocol: str
) -> None:
    """Another client connects with our client id (two daemons sharing a device id): the
    broker kicks us at each of its reconnects. Counted, reported with the likely cause,
    retried with backoff; once the other client is gone we are connected again."""
    import paho.mqtt.client as paho

    settings = fast(broker, client_id="twin", protocol=protocol)
    async with MqttConnection("default", settings, device_id="d") as conn:
        await conn.wait_connected(5)
        version = paho.MQTTv5 if protocol == "5" else paho.MQTTv311
        other = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="twin", protocol=version)
        other.reconnect_delay_set(0.2, 0.2)
        other.connect("127.0.0.1", broker.port)
        other.loop_start()
        try:
            await until(lambda: conn.status()["counters"]["broker_disconnects"] >= 2, 10)
            st = conn.status()
            assert "client id 'twin'" in (st["last_error"] or "")
            assert st["counters"]["connect_failures"] == 0  # each attempt was accepted
        finally:
            other.loop_stop()
            other.disconnect()
        await conn.wait_connected(5)
        assert conn.status()["state"] == "connected"


@pytest.mark.asyncio
async def test_a_broker_disconnect_reason_code_is_reported() -> None:
    """MQTT 5 brokers may say why they end a session (DISCONNECT with a reason code; the
    mosquitto used here only closes the socket, so a scripted broker says it)."""
    connects = 0

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connects
        first = await reader.readexactly(1)
        assert first == b"\x10"
        size = shift = 0
        while True:
            byte = (await reader.readexactly(1))[0]
            size |= (byte & 0x7F) << shift
            shift += 7
            if byte < 0x80:
                break
        await reader.readexactly(size)  # CONNECT body
        connects += 1
        writer.write(b"\x20\x03\x00\x00\x00")  # CONNACK: accepted, no properties
        await writer.drain()
        await asyncio.sleep(0.1)
        writer.write(b"\xe0\x02\x8e\x00")  # DISCONNECT: session taken over
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    settings = MqttSettings(
        port=port, client_id="twin", birth=False, reconnect_min=0.05, reconnect_max=0.2
    )
    try:
        async with MqttConnection("default", settings, device_id="d") as conn:
            await until(lambda: conn.status()["counters"]["session_taken_over"] >= 2, 10)
            st = conn.status()
            assert st["last_error"] == (
                "broker disconnected the client: session taken over (0x8E): another client "
                "connected with client id 'twin'"
            )
            assert st["counters"]["broker_disconnects"] >= 2 and connects >= 2
    finally:
        server.close()
        await server.wait_closed()


@pytest.mark.asyncio
async def test_a_stop_keeps_the_session_and_a_start_parks_what_it_brings(
    broker: MosquittoBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 12, point 0, at the driver: after ``stopping()`` an unsubscribe stays local
    (the persistent session keeps its subscription) and a QoS 1 message no handler takes
    is not acknowledged; the next run, started before any subscription (a daemon's
    configured connection comes up before its flows), parks what the session brings
    until a subscription takes it, and acknowledges as unrouted what none takes within
    ``_SETTLE_S``."""
    from mechaway.drivers.mqtt import connection

    monkeypatch.setattr(connection, "_SETTLE_S", 1.0)
    settings = fast(broker, clean_session=False, client_id="park-1", birth=False)
    got = Collect()
    async with MqttConnection("pub", fast(broker, birth=False), device_id="p") as pub:
        await pub.wait_connected(5)
        first = MqttConnection("sub", settings, device_id="s")
        await first.start()
        await first.wait_connected(5)
        sub_a = first.subscribe("park/a/#", 1, got)
        first.subscribe("park/b/#", 1, got)
        await first.wait_subscribed()
        first.stopping()
        first.unsubscribe(sub_a)  # a source stopping with the daemon
        pub.publish("park/a/1", b"while stopping", qos=1)
        await until(lambda: first.status()["counters"]["held_at_stop"] == 1)
        await first.close()
        for i in range(3):
            pub.publish("park/a/1", b"down %d" % i, qos=1)
        pub.publish("park/b/1", b"no one", qos=1)
        await asyncio.sleep(0.2)

        second = MqttConnection("sub", settings, device_id="s")
        await second.start()
        try:
            await until(lambda: second.status()["counters"]["parked"] == 5, what="5 parked")
            assert got.got == [] and second.status()["counters"]["unrouted"] == 0
            second.subscribe("park/a/#", 1, got)  # the flow's source, a moment later
            assert got.payloads == [b"while stopping", b"down 0", b"down 1", b"down 2"]
            await until(lambda: second.status()["counters"]["unrouted"] == 1, 5, "expiry")
        finally:
            await second.close()
        third = MqttConnection("sub", settings, device_id="s")
        await third.start()
        try:
            third.subscribe("park/a/#", 1, got)
            third.subscribe("park/b/#", 1, got)
            await third.wait_connected(5)
            await third.wait_subscribed()
            await asyncio.sleep(0.3)
            # all acknowledged the run before: nothing comes again
            assert got.payloads == [b"while stopping", b"down 0", b"down 1", b"down 2"]
        finally:
            await third.close()


def test_subscription_identifiers_are_the_same_in_every_run() -> None:
    """What a persistent session kept is tagged with the identifier of the run that
    subscribed: the next run gives each filter the same one, whatever the order."""
    one = MqttConnection("a", MqttSettings(), device_id="d")
    two = MqttConnection("a", MqttSettings(), device_id="d")
    for flt in ("x/#", "y/+", "z"):
        one.subscribe(flt, 1, Collect())
    for flt in ("z", "x/#", "y/+"):
        two.subscribe(flt, 1, Collect())
    assert one._filter_ids == two._filter_ids
    assert all(1 <= i <= 268_435_455 for i in one._filter_ids.values())


@pytest.mark.asyncio
@pytest.mark.parametrize("qos", [0, 1])
async def test_a_flow_that_feeds_itself_is_cut_after_max_hops_and_reported(
    broker: MosquittoBroker, qos: int
) -> None:
    """Issue 12, point 2, at run time: a handler that publishes to a topic its own
    subscription takes (MQTTOutNode's default ``{topic}``) made one message into tens of
    thousands; now each message from outside goes round at most ``_MAX_HOPS`` times, the
    next publish is dropped, counted and said in ``problems``. A chain that ends (one
    subscription's handler publishing to another's topic, once) is not touched."""
    from mechaway.drivers.mqtt.connection import _MAX_HOPS

    async with (
        MqttConnection("pub", fast(broker, birth=False), device_id="lp") as pub,
        MqttConnection("me", fast(broker, birth=False), device_id="lm") as conn,
    ):
        await pub.wait_connected(5)
        await conn.wait_connected(5)
        seen: list[bytes] = []
        chained: list[bytes] = []

        def feed_self(msg: Incoming) -> None:
            seen.append(msg.payload)
            conn.publish(msg.topic, msg.payload, qos)  # MQTTOutNode with topic "{topic}"

        def forward(msg: Incoming) -> None:
            conn.publish("chain/b", msg.payload, qos)

        conn.subscribe("loop/#", qos, feed_self)
        conn.subscribe("chain/a", qos, forward)
        conn.subscribe("chain/b", qos, lambda m: chained.append(m.payload))
        await conn.wait_subscribed()
        assert conn.status()["problems"] == []
        pub.publish("chain/a", b"once", qos)
        await until(lambda: chained == [b"once"])
        pub.publish("loop/x", b"ping", qos)
        await until(lambda: conn.status()["counters"]["loop_dropped"] == 1, what="the cut")
        await asyncio.sleep(0.3)  # nothing more comes round
        assert seen == [b"ping"] * (1 + _MAX_HOPS)
        counters = conn.status()["counters"]
        assert counters["echoes"] == _MAX_HOPS + 1  # 8 rounds + the chain's one
        assert chained == [b"once"]
        (line,) = conn.status()["problems"]
        assert "a flow feeds itself: 1 publishes dropped after 8 rounds" in line
        assert "'loop/x'" in line
