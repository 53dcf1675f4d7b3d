"""Which MQTT client should the driver use? A bare engine loop per client, measured.

For each client (gmqtt, aiomqtt 2, paho-mqtt driven directly on the event loop, amqtt)
a subprocess runs the bare loop "MQTT in -> orjson.loads -> threshold (temp > 30 ->
on/off) -> orjson.dumps -> MQTT out" under uvloop against a private mosquitto. A
raw-socket publisher process floods ``bench/in`` with 50,000 QoS 0 messages and a
raw-socket subscriber process counts ``bench/out``. The floor is the same flood counted
on ``bench/in`` with no engine: what the broker and the measuring clients can do.

Prints one JSON line; every key names its unit:
``<client>_flood_msgs_per_s``, ``<client>_loss_pct``, ``<client>_cpu_us_per_msg`` (client
process user+system CPU during the flood / messages it handled), ``<client>_rss_idle_mb``,
``<client>_rss_peak_mb``, and ``floor_flood_msgs_per_s``/``floor_loss_pct``. Figures are
medians of ``--repeat`` interleaved rounds (loss and peak RSS: the worst round).
``mechaway_driver`` is the same loop through ``mechaway.drivers.mqtt`` (gmqtt inside): the
driver's own cost on top of the bare client.

    python benchmarks/mqtt_clients.py [--messages 50000] [--repeat 3]
        [--clients gmqtt,aiomqtt,paho,amqtt,mechaway_driver]

All clients speak MQTT 3.1.1 (amqtt has no v5), QoS 0 both ways.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import statistics
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mechaway.testing.broker import MosquittoBroker

IN_TOPIC = "bench/in"
OUT_TOPIC = "bench/out"
CLIENTS = ("gmqtt", "aiomqtt", "paho", "amqtt", "mechaway_driver")
CLK_TCK = os.sysconf("SC_CLK_TCK")


# ---------------------------------------------------------------------------------------
# Raw MQTT 3.1.1 framing for the measuring processes (no client library in the way)
# ---------------------------------------------------------------------------------------
def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        n, b = divmod(n, 128)
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _str(s: str) -> bytes:
    b = s.encode()
    return struct.pack("!H", len(b)) + b


def _connect_packet(client_id: str) -> bytes:
    body = _str("MQTT") + bytes([4, 0x02]) + struct.pack("!H", 60) + _str(client_id)
    return b"\x10" + _varint(len(body)) + body


def _publish_packet(topic: str, payload: bytes) -> bytes:
    body = _str(topic) + payload
    return b"\x30" + _varint(len(body)) + body


def _raw_connect(port: int, client_id: str) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    sock.sendall(_connect_packet(client_id))
    connack = _recv_exact(sock, 4)
    if connack[0] != 0x20 or connack[3] != 0:
        raise RuntimeError(f"CONNACK refused: {connack!r}")
    return sock


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("closed")
        buf += chunk
    return buf


def frames(buf: bytes) -> Iterator[tuple[int, int, int]]:
    """(first byte, body start, body end) of each complete frame; the last yield is
    (-1, consumed, 0)."""
    i, end = 0, len(buf)
    while end - i >= 2:
        j, length, mult = i + 1, 0, 1
        while j < end:
            byte = buf[j]
            length += (byte & 0x7F) * mult
            mult <<= 7
            j += 1
            if not byte & 0x80:
                break
        else:
            break
        if j + length > end:
            break
        yield buf[i], j, j + length
        i = j + length
    yield -1, i, 0


def role_publisher(port: int, n: int) -> None:
    """Flood IN_TOPIC with n QoS 0 telemetry messages as fast as the socket takes them."""
    now = time.time()
    frames = b"".join(
        _publish_packet(IN_TOPIC, orjson.dumps({"seq": i, "t": now, "temp": 20 + i % 20}))
        for i in range(n)
    )
    sock = _raw_connect(port, "bench-pub")
    t0 = time.monotonic()
    view = memoryview(frames)
    for off in range(0, len(frames), 65536):
        sock.sendall(view[off : off + 65536])
    t1 = time.monotonic()
    sock.sendall(b"\xe0\x00")
    sock.close()
    print(json.dumps({"t_start": t0, "t_sent": t1, "bytes": len(frames)}), flush=True)


def role_counter(port: int, topic: str, n: int, idle: float, limit: float) -> None:
    """Subscribe to topic, say READY, count PUBLISH frames until n or idle/limit seconds."""
    sock = _raw_connect(port, f"bench-count-{os.getpid()}")
    body = struct.pack("!H", 1) + _str(topic) + b"\x00"
    sock.sendall(b"\x82" + _varint(len(body)) + body)
    suback = _recv_exact(sock, 5)
    if suback[0] != 0x90:
        raise RuntimeError(f"bad SUBACK {suback!r}")
    print("READY", flush=True)
    count = 0
    on = off = 0
    t_first = t_last = 0.0
    buf = b""
    sock.settimeout(0.2)
    start = time.monotonic()
    while count < n:
        try:
            chunk = sock.recv(1 << 20)
        except TimeoutError:
            now = time.monotonic()
            if (t_first and now - t_last > idle) or now - start > limit:
                break
            continue
        if not chunk:
            break
        t_last = time.monotonic()
        if not t_first:
            t_first = t_last
        buf = buf + chunk if buf else chunk
        for first, start, end in frames(buf):
            if first == -1:
                buf = buf[start:]
            elif first & 0xF0 == 0x30:
                count += 1
                if count % 97 == 0:  # spot-check the engine's output
                    (tlen,) = struct.unpack_from("!H", buf, start)
                    msg = orjson.loads(buf[start + 2 + tlen : end])
                    if "state" in msg:
                        on += msg["state"] == "on"
                        off += msg["state"] == "off"
    sock.close()
    print(
        json.dumps(
            {
                "count": count,
                "t_first": t_first,
                "t_last": t_last,
                "sample_on": on,
                "sample_off": off,
            }
        ),
        flush=True,
    )


# ---------------------------------------------------------------------------------------
# The engine loop, one implementation per client library
# ---------------------------------------------------------------------------------------
def _decide(payload: bytes) -> bytes:
    d = orjson.loads(payload)
    return orjson.dumps({"seq": d["seq"], "t": d["t"], "state": "on" if d["temp"] > 30 else "off"})


async def _until_term() -> None:
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()


def _ready() -> None:
    print("READY", flush=True)


async def engine_gmqtt(port: int) -> int:
    import gmqtt
    from gmqtt.mqtt.constants import MQTTv311

    count = 0
    subscribed = asyncio.Event()

    def on_message(client: Any, topic: str, payload: bytes, qos: int, props: Any) -> int:
        nonlocal count
        count += 1
        client.publish(OUT_TOPIC, _decide(payload), qos=0)
        return 0

    client = gmqtt.Client("bench-gmqtt")
    client.on_message = on_message
    client.on_subscribe = lambda *a: subscribed.set()
    await client.connect("127.0.0.1", port, version=MQTTv311)
    client.subscribe(IN_TOPIC, qos=0)
    await subscribed.wait()
    _ready()
    await _until_term()
    await client.disconnect()
    return count


async def engine_aiomqtt(port: int) -> int:
    import aiomqtt

    count = 0
    async with aiomqtt.Client(
        "127.0.0.1", port, identifier="bench-aiomqtt", protocol=aiomqtt.ProtocolVersion.V311
    ) as client:
        await client.subscribe(IN_TOPIC, qos=0)
        _ready()

        async def loop() -> None:
            nonlocal count
            async for msg in client.messages:
                count += 1
                await client.publish(OUT_TOPIC, _decide(msg.payload), qos=0)  # type: ignore[arg-type,unused-ignore]

        task = asyncio.create_task(loop(), name="bench.aiomqtt.loop")
        await _until_term()
        task.cancel()
    return count


async def engine_paho(port: int) -> int:
    """paho-mqtt 2 driven by the event loop's reader/writer callbacks (its async socket API)."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    loop = asyncio.get_running_loop()
    count = 0
    subscribed = asyncio.Event()
    connected = asyncio.Event()

    def on_message(client: Any, userdata: Any, msg: Any) -> None:
        nonlocal count
        count += 1
        client.publish(OUT_TOPIC, _decide(msg.payload), qos=0)

    client = mqtt.Client(
        CallbackAPIVersion.VERSION2, client_id="bench-paho", protocol=mqtt.MQTTv311
    )
    client.on_message = on_message
    client.on_connect = lambda *a: connected.set()
    client.on_subscribe = lambda *a: subscribed.set()

    def on_socket_open(c: Any, ud: Any, sock: Any) -> None:
        loop.add_reader(sock, c.loop_read)

    def on_socket_close(c: Any, ud: Any, sock: Any) -> None:
        loop.remove_reader(sock)

    def on_register_write(c: Any, ud: Any, sock: Any) -> None:
        loop.add_writer(sock, c.loop_write)

    def on_unregister_write(c: Any, ud: Any, sock: Any) -> None:
        loop.remove_writer(sock)

    client.on_socket_open = on_socket_open
    client.on_socket_close = on_socket_close
    client.on_socket_register_write = on_register_write
    client.on_socket_unregister_write = on_unregister_write

    async def misc() -> None:
        while client.loop_misc() == mqtt.MQTT_ERR_SUCCESS:  # noqa: ASYNC110 - a timer
            await asyncio.sleep(1)

    client.connect("127.0.0.1", port, keepalive=60)
    misc_task = asyncio.create_task(misc(), name="bench.paho.misc")
    await connected.wait()
    client.subscribe(IN_TOPIC, qos=0)
    await subscribed.wait()
    _ready()
    await _until_term()
    client.disconnect()
    misc_task.cancel()
    return count


async def engine_amqtt(port: int) -> int:
    from amqtt.client import MQTTClient

    count = 0
    client = MQTTClient(client_id="bench-amqtt", config={"auto_reconnect": False})
    await client.connect(f"mqtt://127.0.0.1:{port}/")
    await client.subscribe([(IN_TOPIC, 0)])
    _ready()

    async def loop() -> None:
        nonlocal count
        while True:
            msg = await client.deliver_message()
            if msg is None:
                continue
            count += 1
            await client.publish(OUT_TOPIC, _decide(bytes(msg.data or b"")), qos=0)

    task = asyncio.create_task(loop(), name="bench.amqtt.loop")
    await _until_term()
    task.cancel()
    await client.disconnect()
    return count


async def engine_mechaway(port: int) -> int:
    """The same loop through mechaway's own driver (gmqtt underneath): its overhead."""
    from mechaway.drivers.mqtt import Incoming, MqttConnection, MqttSettings

    count = 0
    settings = MqttSettings(port=port, protocol="3.1.1", birth=False)
    conn = MqttConnection("bench", settings, device_id="bench")

    def handler(msg: Incoming) -> None:
        nonlocal count
        count += 1
        conn.publish(OUT_TOPIC, _decide(msg.payload), qos=0)

    conn.subscribe(IN_TOPIC, 0, handler)
    await conn.start()
    await conn.wait_connected(10)
    await conn.wait_subscribed()
    _ready()
    await _until_term()
    dropped = {k: v for k, v in conn.status()["counters"].items() if "drop" in k and v}
    if dropped:
        print(f"driver drops: {dropped}", file=sys.stderr)
    await conn.close()
    return count


ENGINES = {
    "gmqtt": engine_gmqtt,
    "mechaway_driver": engine_mechaway,
    "aiomqtt": engine_aiomqtt,
    "paho": engine_paho,
    "amqtt": engine_amqtt,
}


def role_engine(client: str, port: int) -> None:
    import logging

    import uvloop

    logging.basicConfig(level=logging.CRITICAL)  # library chatter must not cost CPU here
    count = uvloop.run(ENGINES[client](port))
    print(json.dumps({"handled": count}), flush=True)


# ---------------------------------------------------------------------------------------
# The harness
# ---------------------------------------------------------------------------------------
def _proc_cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime


def _proc_mem_mb(pid: int, key: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return 0.0


def _spawn(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, __file__, *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        text=True,
    )


def _expect_ready(proc: subprocess.Popen[str], what: str, timeout: float = 20.0) -> None:
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    line = _readline(proc.stdout, deadline)
    if line.strip() != "READY":
        proc.kill()
        raise RuntimeError(f"{what} not ready: {line!r}")


def _readline(stream: IO[str], deadline: float) -> str:
    import selectors

    sel = selectors.DefaultSelector()
    sel.register(stream, selectors.EVENT_READ)
    try:
        while time.monotonic() < deadline:
            if sel.select(timeout=0.1):
                return stream.readline()
        return ""
    finally:
        sel.close()


def stop_engine(engine: subprocess.Popen[str]) -> int | None:
    """SIGTERM an engine process; the messages it says it handled (None: it did not say)."""
    engine.send_signal(signal.SIGTERM)
    try:
        out, _ = engine.communicate(timeout=10)
        handled: int = json.loads(out.strip().splitlines()[-1])["handled"]
    except (subprocess.TimeoutExpired, ValueError, IndexError, KeyError):
        engine.kill()
        engine.wait()
        return None
    return handled


def run_case(client: str | None, n: int, limit: float) -> dict[str, float]:
    """One flood through a fresh broker; client None = the floor (no engine)."""
    with MosquittoBroker() as broker:
        port = str(broker.port)
        engine = None
        if client is not None:
            engine = _spawn("--role", "engine", "--client", client, "--port", port)
            _expect_ready(engine, f"engine {client}")
            time.sleep(0.3)  # let start-up garbage settle before the idle RSS
        counter = _spawn(
            "--role",
            "counter",
            "--port",
            port,
            "--topic",
            OUT_TOPIC if client else IN_TOPIC,
            "-n",
            str(n),
            "--limit",
            str(limit),
        )
        _expect_ready(counter, "counter")
        rss_idle = _proc_mem_mb(engine.pid, "VmRSS") if engine else 0.0
        cpu0 = _proc_cpu_s(engine.pid) if engine else 0.0
        publisher = _spawn("--role", "publisher", "--port", port, "-n", str(n))
        pub_out, _ = publisher.communicate(timeout=limit + 30)
        count_out, _ = counter.communicate(timeout=limit + 30)
        pub, got = json.loads(pub_out), json.loads(count_out)
        result: dict[str, float] = {}
        name = client or "floor"
        elapsed = got["t_last"] - pub["t_start"] if got["count"] else float("inf")
        result[f"{name}_flood_msgs_per_s"] = round(got["count"] / elapsed) if got["count"] else 0
        result[f"{name}_loss_pct"] = round(100.0 * (n - got["count"]) / n, 2)
        if engine is not None:
            cpu1 = _proc_cpu_s(engine.pid)
            result[f"{name}_rss_idle_mb"] = round(rss_idle, 1)
            result[f"{name}_rss_peak_mb"] = round(_proc_mem_mb(engine.pid, "VmHWM"), 1)
            handled = stop_engine(engine)
            if handled is None:
                handled = got["count"]
            result[f"{name}_cpu_us_per_msg"] = (
                round((cpu1 - cpu0) * 1e6 / handled, 1) if handled else 0.0
            )
            if got["sample_on"] + got["sample_off"] == 0 and got["count"]:
                raise RuntimeError(f"{name}: output carries no on/off state")
        return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--role", default="harness")
    ap.add_argument("--client", default="")
    ap.add_argument("--clients", default=",".join(CLIENTS))
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--topic", default=IN_TOPIC)
    ap.add_argument("-n", "--messages", type=int, default=50_000)
    ap.add_argument("--limit", type=float, default=25.0, help="max seconds per flood")
    ap.add_argument("--idle", type=float, default=2.0, help="stop counting after idle s")
    ap.add_argument("--repeat", type=int, default=3, help="rounds; figures are medians")
    args = ap.parse_args()
    if args.role == "publisher":
        role_publisher(args.port, args.messages)
    elif args.role == "counter":
        role_counter(args.port, args.topic, args.messages, args.idle, args.limit)
    elif args.role == "engine":
        role_engine(args.client, args.port)
    else:
        rounds: list[dict[str, float]] = []
        for _ in range(args.repeat):  # interleaved, so a slow moment hits every client
            one: dict[str, float] = {}
            one.update(run_case(None, args.messages, args.limit))
            for client in args.clients.split(","):
                one.update(run_case(client, args.messages, args.limit))
            rounds.append(one)
        results: dict[str, float] = {
            key: (max if key.endswith(("_loss_pct", "_peak_mb")) else statistics.median)(
                r[key] for r in rounds
            )
            for key in rounds[0]
        }
        results["messages_per_flood"] = args.messages
        results["rounds"] = args.repeat
        print(json.dumps(results), flush=True)


if __name__ == "__main__":
    main()
