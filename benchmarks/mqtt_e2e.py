"""End to end through the daemon: MQTT in -> threshold -> MQTT out, against a private mosquitto.

The daemon runs as a subprocess (``python -m mechaway --config X start``) with one flow
file: ``MQTTInNode`` on ``bench/in`` (JSON ``{seq, t, temp}``) -> threshold (``temp > 30``
-> ``state`` ``"on"``/``"off"``, ``seq`` and ``t`` kept, ``temp`` dropped) ->
``MQTTOutNode`` on ``bench/out``. Variants of the threshold:

- ``builtin``: ``RouteNode`` (ports ``on``/``off``) -> one ``ChangeNode`` per port (set
  ``payload.state``, delete ``payload.temp``) -> the same ``MQTTOutNode``;
- ``lua``: one ``FunLogicNode`` (Lua 5.4 sandbox) doing the same; measured only when
  ``mechaway.logic.lua`` exists and the node validates and runs in-process.

The measuring clients are raw sockets (TCP_NODELAY, the framing of
``benchmarks/mqtt_clients.py``), each in its own process. The broker floor is the same
measurement published and subscribed on ``bench/in`` through the same broker with no
engine: what the broker and the clients can do on this machine.

- latency: a publisher paces ``--rate`` msg/s on ``bench/in`` for ``--duration`` s, each
  message carrying ``t`` = CLOCK_MONOTONIC in ns taken just before the send; the
  subscriber takes CLOCK_MONOTONIC when ``recv`` returns and records the difference. The
  first ``--warmup`` messages are left out.
- paired floor: half a period after each of those messages the publisher sends a twin on
  ``bench/floor``, which no engine reads and the same subscriber times straight through
  the broker. ``p50_over_floor_us`` = engine p50 - paired floor p50: both from the same
  seconds, so drift of this shared VM between runs (20-40 µs seen) does not enter the
  difference. ``floor_p50_us`` is the floor measured alone before any engine ran, and
  ``p50_over_first_floor_us`` the difference to it, comparable with earlier runs.
- flood: ``mqtt_clients.py``'s publisher writes ``--messages`` QoS 0 messages as fast as
  the socket takes them, its counter counts ``bench/out``; msgs/s = received / (last
  received - first sent); loss = 1 - received/sent.
- engine CPU: the daemon's utime+stime over the flood / messages its MQTT connection took
  in during it (``rx`` counter, read from the API after the flood; messages the flow
  dropped cost less, so with ``flood_out_sink_dropped`` > 0 this understates).
  ``latency_cpu_us_per_msg``: the same over the paced run (cold caches, one message per
  wake-up); ``latency_minflt_per_msg`` and ``latency_ctxsw_per_msg``: its page faults and
  context switches per message.
- RSS: ``rss_idle_mb`` is VmRSS once the flow has passed a probe message, before any API
  call (the API imports aiohttp at its first request); ``rss_peak_mb`` is VmHWM after the
  flood, read before the API is touched. ``start_to_ready_s``: spawn to sd_notify READY=1.
- references (``--reference c,raw,uvloop,gmqtt``, the default): the same measurements with a
  bare loop in place of the daemon, keys ``ref_<name>_*``. ``c``: ``ref_forward.c``,
  blocking sockets in C, built with ``cc`` at the start (what the extra broker pass and
  process wake-up cost by themselves); ``raw``: the same loop in Python (orjson +
  threshold, no event loop, no library: what CPython itself costs per woken message);
  ``uvloop``: the same in one uvloop ``Protocol.data_received`` (the floor under any
  engine built on asyncio callbacks, as the daemon is);
  ``gmqtt``: ``mqtt_clients.py``'s gmqtt callback loop on uvloop (MQTT 3.1.1);
  ``mechaway_driver``: the same through ``mechaway.drivers.mqtt``.

Prints ONE JSON line; keys name their units; per-variant keys are prefixed
(``builtin_p50_latency_us``, ``lua_flood_msgs_per_s``, ...). ``targets_missed`` lists the
issue-3 targets this run missed. Diagnostics: ``*_flood_out_sink_dropped`` (MQTTOutNode
queue overflow), ``*_driver_drops`` (driver counters), ``*_broker_cpu_us_per_msg``.

    python benchmarks/mqtt_e2e.py [--variant builtin|lua|both] [--messages 50000]
        [--rate 500] [--duration 10] [--reference c,raw,uvloop,gmqtt,mechaway_driver|'']
        [--out-queue-size N] [--profile DIR]

``--out-queue-size`` sets the MQTTOutNode's ``queue_size`` (default: the node's own);
``--profile DIR`` runs ``py-spy record`` on each engine during its flood (speedscope
files; a profiled run's figures are not the benchmark's).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))
import mqtt_clients as mc
from _util import (
    compile_package,
    cpu_seconds,
    fault_and_switch_counts,
    free_port,
    notify_socket,
    rss_mb,
    wait_ready,
)

from mechaway.testing.broker import MosquittoBroker

IN_TOPIC = mc.IN_TOPIC  # "bench/in"
OUT_TOPIC = mc.OUT_TOPIC  # "bench/out"
#: the paired floor's topic: straight through the broker, no engine subscribes to it
FLOOR_TOPIC = "bench/floor"

TARGETS = {
    "flood_msgs_per_s": 22_000,  # >=
    "engine_cpu_us_per_msg": 30.0,  # <=
    "p50_over_floor_us": 60.0,  # <=
    "rss_idle_mb": 35.0,  # <=
    "rss_peak_mb": 60.0,  # <=
}

LUA_THRESHOLD = """
local p = msg.payload
return {topic = msg.topic, payload = {seq = p.seq, t = p.t,
        state = (p.temp > 30) and "on" or "off"}}
"""


# ---------------------------------------------------------------------------------------
# Flows
# ---------------------------------------------------------------------------------------
#: extra MQTTOutNode params (``--out-queue-size``); empty = the node's defaults
OUT_EXTRA: dict[str, Any] = {}


#: the daemon's API token for the run (the API always has one)
BENCH_TOKEN = "bench-token-0123456789abcdef"

def _mqtt_nodes() -> list[dict[str, Any]]:
    out = {"topic": OUT_TOPIC, "encode": "json", **OUT_EXTRA}
    return [
        {"id": "in", "type": "MQTTInNode", "params": {"topic": IN_TOPIC, "decode": "json"}},
        {"id": "out", "type": "MQTTOutNode", "params": out},
    ]


def flow_builtin() -> dict[str, Any]:
    def change(state: str) -> dict[str, Any]:
        return {
            "id": state,
            "type": "ChangeNode",
            "params": {
                "rules": [
                    {"op": "set", "path": "payload.state", "value": state},
                    {"op": "delete", "path": "payload.temp"},
                ]
            },
        }

    route = {
        "id": "thr",
        "type": "RouteNode",
        "params": {
            "rules": [
                {"port": "on", "property": "payload.temp", "op": "gt", "value": 30},
                {"port": "off", "op": "else"},
            ]
        },
    }
    return {
        "id": "bench_builtin",
        "name": "MQTT in -> Route + Change threshold -> MQTT out",
        "nodes": [*_mqtt_nodes(), route, change("on"), change("off")],
        "edges": [
            {"from": "in", "to": "thr"},
            {"from": "thr", "to": "on", "port": "on"},
            {"from": "thr", "to": "off", "port": "off"},
            {"from": "on", "to": "out"},
            {"from": "off", "to": "out"},
        ],
    }


def flow_lua() -> dict[str, Any]:
    return {
        "id": "bench_lua",
        "name": "MQTT in -> Lua threshold -> MQTT out",
        "nodes": [
            *_mqtt_nodes(),
            {"id": "thr", "type": "FunLogicNode", "params": {"script": LUA_THRESHOLD}},
        ],
        "edges": [{"from": "in", "to": "thr"}, {"from": "thr", "to": "out"}],
    }


FLOWS = {"builtin": flow_builtin, "lua": flow_lua}


def lua_unavailable() -> str | None:
    """Why the Lua variant cannot run here (None when it can)."""
    if importlib.util.find_spec("mechaway.logic.lua") is None:
        return "mechaway.logic.lua does not exist"
    try:
        from mechaway.flow.validate import validate
        from mechaway.logic.lua import LuaSandbox

        validate(flow_lua())  # FunLogicNode registered, params valid, script compiles
        got = LuaSandbox(LUA_THRESHOLD).call(
            {"payload": {"seq": 1, "t": 2, "temp": 31}, "topic": IN_TOPIC}
        )
        if got != {"topic": IN_TOPIC, "payload": {"seq": 1, "t": 2, "state": "on"}}:
            return f"FunLogicNode returned {got!r}"
    except Exception as err:  # any failure means: skip the variant, say why
        return f"FunLogicNode does not work: {type(err).__name__}: {err}"
    return None


# ---------------------------------------------------------------------------------------
# Measuring roles (subprocesses): paced publisher, latency subscriber
# ---------------------------------------------------------------------------------------
def _subscribe(sock: socket.socket, topic: str) -> None:
    body = struct.pack("!H", 1) + mc._str(topic) + b"\x00"
    sock.sendall(b"\x82" + mc._varint(len(body)) + body)
    suback = mc._recv_exact(sock, 5)
    if suback[0] != 0x90 or suback[4] >= 0x80:
        raise RuntimeError(f"bad SUBACK {suback!r}")


def _payloads(sock: socket.socket) -> Iterator[tuple[int, bytes, bytes]]:
    """(monotonic ns at recv, topic, payload) of each PUBLISH read from ``sock`` (QoS 0).

    Reads into one buffer allocated here: ``sock.recv(1 << 20)`` would allocate (and
    page-fault in) a fresh megabyte per read, ~50 µs a message on this VM when messages
    come one per read, which is not what a forwarder or a timer needs to pay."""
    room = bytearray(1 << 20)
    view = memoryview(room)
    buf = b""
    while True:
        got = sock.recv_into(room)
        if not got:
            return
        now = time.monotonic_ns()
        chunk = bytes(view[:got])
        buf = buf + chunk if buf else chunk
        for first, start, end in mc.frames(buf):
            if first == -1:
                buf = buf[start:]
            elif first & 0xF0 == 0x30:
                (tlen,) = struct.unpack_from("!H", buf, start)
                yield now, buf[start + 2 : start + 2 + tlen], buf[start + 2 + tlen : end]


def role_pace(port: int, rate: float, n: int, floor_topic: str = "") -> None:
    """Publish n messages on bench/in at ``rate``/s; ``t`` is CLOCK_MONOTONIC ns just before
    the send. With ``floor_topic``, a second message goes to that topic half a period after
    each one (same payload shape, same ``seq``): the paired floor, sampled in the same
    seconds as the end-to-end run."""
    sock = mc._raw_connect(port, f"bench-pace-{os.getpid()}")
    period = 1e9 / rate
    t0 = time.monotonic_ns() + 20_000_000
    topics = [(0.0, IN_TOPIC)] + ([(0.5, floor_topic)] if floor_topic else [])
    for i in range(n):
        for offset, topic in topics:
            due = t0 + int((i + offset) * period)
            wait = due - time.monotonic_ns()
            if wait > 0:
                time.sleep(wait / 1e9)
            payload = orjson.dumps({"seq": i, "t": time.monotonic_ns(), "temp": 20 + i % 20})
            sock.sendall(mc._publish_packet(topic, payload))
    sock.sendall(b"\xe0\x00")
    sock.close()
    elapsed = (time.monotonic_ns() - t0) / 1e9
    print(json.dumps({"sent": n, "rate_msgs_per_s": round(n / elapsed, 1)}), flush=True)


def role_latency(port: int, topics: list[str], n: int, warmup: int, limit: float) -> None:
    """Subscribe to ``topics``, say READY, record recv time - ``t`` per topic for seq >=
    warmup until n arrived on each (or 2 s of silence, or ``limit`` s); print the
    percentiles in µs, one object per topic."""
    sock = mc._raw_connect(port, f"bench-lat-{os.getpid()}")
    for topic in topics:
        _subscribe(sock, topic)
    print("READY", flush=True)
    lat_ns: dict[bytes, list[int]] = {t.encode(): [] for t in topics}
    seen = dict.fromkeys(lat_ns, 0)
    bad = 0
    deadline = time.monotonic() + limit
    sock.settimeout(2.0)
    try:
        for now, topic, payload in _payloads(sock):
            msg = orjson.loads(payload)
            seq = msg.get("seq", -1)
            if seq < 0 or topic not in seen:
                continue  # a probe
            seen[topic] += 1
            if topic == OUT_TOPIC.encode() and msg.get("state") != (
                "on" if 20 + seq % 20 > 30 else "off"
            ):
                bad += 1
            if seq >= warmup:
                lat_ns[topic].append(now - msg["t"])
            if min(seen.values()) >= n or time.monotonic() > deadline:
                break
    except TimeoutError:
        pass
    sock.close()

    out: dict[str, Any] = {}
    for topic, got in lat_ns.items():
        got.sort()

        def pct(q: float, got: list[int] = got) -> float:
            return round(got[min(len(got) - 1, int(q * len(got)))] / 1000, 1)

        one: dict[str, Any] = {"received": seen[topic], "samples": len(got)}
        if got:
            one.update(p50=pct(0.50), p90=pct(0.90), p99=pct(0.99), max=round(got[-1] / 1000, 1))
        out[topic.decode()] = one
    out[OUT_TOPIC if OUT_TOPIC in topics else topics[0]]["wrong_state"] = bad
    print(json.dumps(out), flush=True)


def role_forward(port: int) -> None:
    """The least an engine can be: blocking raw sockets, bench/in -> orjson -> threshold
    -> bench/out, one process, no event loop; prints how many it handled at SIGTERM."""

    def stop(signum: int, frame: Any) -> None:
        raise SystemExit

    signal.signal(signal.SIGTERM, stop)
    sock = mc._raw_connect(port, f"bench-forward-{os.getpid()}")
    _subscribe(sock, IN_TOPIC)
    print("READY", flush=True)
    handled = 0
    try:
        for _now, _topic, payload in _payloads(sock):
            handled += 1
            sock.sendall(mc._publish_packet(OUT_TOPIC, mc._decide(payload)))
    except SystemExit:
        pass
    print(json.dumps({"handled": handled}), flush=True)


def role_uvforward(port: int) -> None:
    """The least an event-loop engine can be: one uvloop ``Protocol`` whose
    ``data_received`` frames PUBLISH packets, applies the threshold and writes; no
    library, no engine. The floor under anything built on asyncio callbacks."""
    import asyncio

    import uvloop

    handled = 0

    class Forward(asyncio.Protocol):
        rx = b""

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport: Any = transport

        def data_received(self, data: bytes) -> None:
            nonlocal handled
            buf = self.rx + data if self.rx else data
            pos, end = 0, len(buf)
            while end - pos >= 2:
                size, i, shift = 0, pos + 1, 0
                while i < end:  # the remaining length
                    size |= (buf[i] & 0x7F) << shift
                    shift += 7
                    i += 1
                    if not buf[i - 1] & 0x80:
                        break
                else:
                    break
                if i + size > end:
                    break
                if buf[pos] & 0xF0 == 0x30:  # QoS 0 PUBLISH: topic, then payload
                    handled += 1
                    payload = buf[i + 2 + (buf[i] << 8 | buf[i + 1]) : i + size]
                    self.transport.write(mc._publish_packet(OUT_TOPIC, mc._decide(payload)))
                pos = i + size
            self.rx = buf[pos:]

    async def main() -> None:
        sock = mc._raw_connect(port, f"bench-uvforward-{os.getpid()}")
        _subscribe(sock, IN_TOPIC)
        sock.setblocking(False)
        loop = asyncio.get_running_loop()
        await loop.connect_accepted_socket(Forward, sock)
        stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        print("READY", flush=True)
        await stop.wait()

    uvloop.run(main())
    print(json.dumps({"handled": handled}), flush=True)


# ---------------------------------------------------------------------------------------
# The harness
# ---------------------------------------------------------------------------------------
def _spawn_self(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, __file__, *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        text=True,
    )


def _last_json(proc: subprocess.Popen[str], timeout: float) -> dict[str, Any]:
    out, _ = proc.communicate(timeout=timeout)
    lines = [ln for ln in out.splitlines() if ln.startswith("{")]
    if proc.returncode or not lines:
        raise RuntimeError(f"measuring process failed (exit {proc.returncode}): {out!r}")
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def measure_latency(port: int, topic: str, args: argparse.Namespace) -> dict[str, Any]:
    """A paced run on bench/in, timed where it comes out on ``topic``. For ``OUT_TOPIC``
    (through an engine) the floor is paired: every message has a twin on ``FLOOR_TOPIC``
    half a period later, straight through the broker, and ``floor`` holds its figures, so
    the floor and the end-to-end times come from the same seconds of the same machine."""
    n = int(args.rate * args.duration)
    topics = [topic, FLOOR_TOPIC] if topic == OUT_TOPIC else [topic]
    sub = _spawn_self(
        "--role", "latency", "--port", str(port), "--topic", ",".join(topics), "-n", str(n),
        "--warmup", str(args.warmup), "--limit", str(args.duration + 20),
    )  # fmt: skip
    mc._expect_ready(sub, "latency subscriber")
    pub = _spawn_self(
        "--role", "pace", "--port", str(port), "--rate", str(args.rate), "-n", str(n),
        "--floor-topic", FLOOR_TOPIC if len(topics) > 1 else "",
    )  # fmt: skip
    sent = _last_json(pub, args.duration + 30)
    got = _last_json(sub, args.duration + 30)
    res: dict[str, Any] = got[topic]
    if len(topics) > 1:
        res["floor"] = got[FLOOR_TOPIC]
    res["sent"] = sent["sent"]
    res["paced_msgs_per_s"] = sent["rate_msgs_per_s"]
    return res


def measure_flood(
    port: int, topic: str, n: int, daemon_pid: int | None, broker_pid: int | None
) -> dict[str, Any]:
    """mqtt_clients.py's flood publisher and counter; CPU of the daemon and the broker."""
    counter = mc._spawn(
        "--role", "counter", "--port", str(port), "--topic", topic, "-n", str(n),
        "--limit", "40", "--idle", "2",
    )  # fmt: skip
    mc._expect_ready(counter, "counter")
    cpu0 = cpu_seconds(daemon_pid) if daemon_pid else 0.0
    bcpu0 = cpu_seconds(broker_pid) if broker_pid else 0.0
    publisher = mc._spawn("--role", "publisher", "--port", str(port), "-n", str(n))
    pub = json.loads(publisher.communicate(timeout=70)[0])
    got = json.loads(counter.communicate(timeout=70)[0])
    cpu1 = cpu_seconds(daemon_pid) if daemon_pid else 0.0
    bcpu1 = cpu_seconds(broker_pid) if broker_pid else 0.0
    count = got["count"]
    elapsed = got["t_last"] - pub["t_start"] if count else float("inf")
    return {
        "count": count,
        "msgs_per_s": round(count / elapsed) if count else 0,
        "loss_pct": round(100.0 * (n - count) / n, 2),
        "send_s": round(pub["t_sent"] - pub["t_start"], 3),
        "daemon_cpu_s": cpu1 - cpu0,
        "broker_cpu_s": bcpu1 - bcpu0,
        "sample_on": got["sample_on"],
        "sample_off": got["sample_off"],
    }


def _vm_hwm_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _probe(port: int, timeout: float = 20.0) -> tuple[float, int]:
    """Publish probe messages on bench/in until one comes out on bench/out: (seconds
    taken, probes sent)."""
    t0 = time.monotonic()
    sent = 0
    sub = mc._raw_connect(port, f"bench-probe-sub-{os.getpid()}")
    pub = mc._raw_connect(port, f"bench-probe-pub-{os.getpid()}")
    try:
        _subscribe(sub, OUT_TOPIC)
        sub.settimeout(0.1)
        probe = mc._publish_packet(IN_TOPIC, b'{"seq": -1, "t": 0, "temp": 99}')
        while time.monotonic() - t0 < timeout:
            pub.sendall(probe)
            sent += 1
            try:
                for _now, _topic, payload in _payloads(sub):
                    if orjson.loads(payload).get("seq") == -1:  # state: checked later
                        return time.monotonic() - t0, sent
            except TimeoutError:
                continue
        raise RuntimeError(f"no probe came out on {OUT_TOPIC} within {timeout:g} s")
    finally:
        for s in (pub, sub):
            s.close()


def _api_status(api_port: int) -> dict[str, Any]:
    req = urllib.request.Request(f"http://127.0.0.1:{api_port}/api/v1/status")
    req.add_header("Authorization", f"Bearer {BENCH_TOKEN}")
    with urllib.request.urlopen(req, timeout=20) as r:
        data: dict[str, Any] = json.loads(r.read())
        return data


def _measure_engine(
    pid: int, broker: MosquittoBroker, args: argparse.Namespace, floor_p50: float, what: str
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Probe, idle RSS, latency run, flood, peak RSS of a running engine process (pid).

    Returns (figures, raw): raw has ``probes``, ``latency_sent`` and the flood's CPU."""
    res: dict[str, Any] = {}
    flowing_s, probes = _probe(broker.port)
    res["ready_to_flowing_s"] = round(flowing_s, 3)
    time.sleep(1.0)  # let start-up garbage settle
    res["rss_idle_mb"] = round(rss_mb(pid), 1)

    cpu0 = cpu_seconds(pid)
    faults0, switches0 = fault_and_switch_counts(pid)
    lat = measure_latency(broker.port, OUT_TOPIC, args)
    res["latency_cpu_us_per_msg"] = round((cpu_seconds(pid) - cpu0) * 1e6 / lat["sent"], 1)
    faults1, switches1 = fault_and_switch_counts(pid)
    res["latency_minflt_per_msg"] = round((faults1 - faults0) / lat["sent"], 2)
    res["latency_ctxsw_per_msg"] = round((switches1 - switches0) / lat["sent"], 2)
    res["p50_latency_us"] = lat.get("p50")
    res["p99_latency_us"] = lat.get("p99")
    paired = lat.get("floor", {}).get("p50")
    res["paired_floor_p50_us"] = paired
    res["p50_over_floor_us"] = round(lat["p50"] - paired, 1) if "p50" in lat and paired else None
    # the floor measured on its own before any engine ran, for comparison with older runs
    res["p50_over_first_floor_us"] = (
        round(lat["p50"] - floor_p50, 1) if "p50" in lat and floor_p50 else None
    )
    res["latency_loss_pct"] = round(100.0 * (lat["sent"] - lat["received"]) / lat["sent"], 2)
    if lat["wrong_state"]:
        res["latency_wrong_state"] = lat["wrong_state"]

    profiler = _start_profiler(pid, args.profile, what) if args.profile else None
    flood = measure_flood(broker.port, OUT_TOPIC, args.messages, pid, broker.pid)
    if profiler is not None:
        profiler.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
        profiler.wait(60)
    res["rss_peak_mb"] = round(_vm_hwm_mb(pid), 1)
    res["flood_msgs_per_s"] = flood["msgs_per_s"]
    res["flood_loss_pct"] = flood["loss_pct"]
    res["broker_cpu_us_per_msg"] = round(flood["broker_cpu_s"] * 1e6 / args.messages, 1)
    if flood["count"] and not flood["sample_on"] + flood["sample_off"]:
        raise RuntimeError(f"{what}: output carries no on/off state")
    return res, {"probes": probes, "latency_sent": lat["sent"], "cpu_s": flood["daemon_cpu_s"]}


def run_variant(
    variant: str, broker: MosquittoBroker, args: argparse.Namespace, floor_p50: float
) -> dict[str, Any]:
    """The daemon with the ``variant`` flow: start-up, then ``_measure_engine``."""
    res: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="mechaway-e2e-") as tmp:
        flows = Path(tmp, "flows")
        flows.mkdir()
        doc = FLOWS[variant]()
        (flows / f"{doc['id']}.json").write_bytes(orjson.dumps(doc))
        api_port = free_port()
        config = Path(tmp, "mechaway.toml")
        config.write_text(
            f'[device]\nid = "bench"\ndata_dir = "{tmp}/data"\n'
            f'[api]\nlisten = "127.0.0.1:{api_port}"\nlazy = true\ntoken = "{BENCH_TOKEN}"\n'
            f'[flows]\ndir = "{flows}"\n'
            f'[log]\nlevel = "warning"\n'
            f'[mqtt.default]\nhost = "127.0.0.1"\nport = {broker.port}\n'
        )
        notify, notify_path = notify_socket(tmp)
        env = {k: v for k, v in os.environ.items() if not k.startswith("MECHAWAY_")}
        env["NOTIFY_SOCKET"] = notify_path
        log_path = Path(tmp, "daemon.log")
        with open(log_path, "wb") as log_file:
            t0 = time.monotonic()
            proc = subprocess.Popen(
                [sys.executable, "-m", "mechaway", "--config", str(config), "start"],
                env=env, stdin=subprocess.DEVNULL, stdout=log_file, stderr=log_file,
            )  # fmt: skip
        try:
            try:
                wait_ready(notify, timeout=30)
            except TimeoutError:
                raise RuntimeError(f"daemon not ready: {log_path.read_text()[-2000:]}") from None
            res["start_to_ready_s"] = round(time.monotonic() - t0, 3)
            figures, raw = _measure_engine(proc.pid, broker, args, floor_p50, variant)
            res.update(figures)
            try:  # diagnostics: where lost messages went (loads aiohttp, so after the RSS)
                st = _api_status(api_port)
            except OSError as err:
                st = {}
                res["status_error"] = str(err)
            conn = st.get("connections", {}).get("mqtt.default", {}).get("counters", {})
            # rx counts since start: probes + latency run + flood
            handled = conn.get("rx", 0) - raw["probes"] - raw["latency_sent"]
            handled = handled if handled > 0 else args.messages
            res["engine_cpu_us_per_msg"] = round(raw["cpu_s"] * 1e6 / handled, 1)
            res["flood_engine_rx"] = handled
            nodes = st.get("flows", {}).get(doc["id"], {}).get("nodes", {})
            res["flood_out_sink_dropped"] = nodes.get("out", {}).get("dropped")
            drops = {k: v for k, v in conn.items() if "drop" in k and v}
            if drops:
                res["driver_drops"] = drops
        finally:
            _stop(proc)
            notify.close()
            if res.get("flood_out_sink_dropped") is None and log_path.exists():
                sys.stderr.write(log_path.read_text()[-2000:])
    return {f"{variant}_{k}": v for k, v in res.items()}


def _build_c_forwarder() -> str:
    """Compile ``ref_forward.c`` (the C reference); returns the binary (caller removes it)."""
    out = Path(tempfile.gettempdir(), f"mechaway-ref-forward-{os.getpid()}")
    src = Path(__file__).with_name("ref_forward.c")
    subprocess.run([os.environ.get("CC", "cc"), "-O2", "-o", str(out), str(src)], check=True)
    return str(out)


def run_reference(
    client: str, broker: MosquittoBroker, args: argparse.Namespace, floor_p50: float
) -> dict[str, Any]:
    """A bare loop in place of the daemon: ``c`` (``ref_forward.c``: blocking sockets in C,
    no Python at all), ``raw`` (``role_forward``: the same in Python, no event loop, no
    library: the cost of the extra broker pass and process wake-up alone),
    or ``mqtt_clients.py``'s ``gmqtt`` / ``mechaway_driver`` loops (MQTT 3.1.1): what the
    client library (and the driver) cost without the engine."""
    port = str(broker.port)
    if client == "raw":
        engine = _spawn_self("--role", "forward", "--port", port)
    elif client == "uvloop":
        engine = _spawn_self("--role", "uvforward", "--port", port)
    elif client == "c":
        engine = subprocess.Popen(
            [_build_c_forwarder(), port], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            text=True,
        )  # fmt: skip
    else:
        engine = mc._spawn("--role", "engine", "--client", client, "--port", port)
    try:
        mc._expect_ready(engine, f"engine {client}")
        figures, raw = _measure_engine(engine.pid, broker, args, floor_p50, client)
    finally:
        handled = mc.stop_engine(engine) or 0
        if client == "c":
            Path(engine.args[0]).unlink(missing_ok=True)
    handled -= raw["probes"] + raw["latency_sent"]
    handled = handled if handled > 0 else args.messages
    figures["engine_cpu_us_per_msg"] = round(raw["cpu_s"] * 1e6 / handled, 1)
    return {f"ref_{client}_{k}": v for k, v in figures.items()}


def _stop(proc: subprocess.Popen[Any]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _start_profiler(pid: int, out_dir: str, name: str) -> subprocess.Popen[bytes]:
    """py-spy on ``pid`` for the flood (one speedscope file per engine; the figures of a
    profiled run are not the benchmark's: sampling costs the engine a little)."""
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    out = Path(out_dir, f"{name}.speedscope.json")
    prof = subprocess.Popen(
        ["py-spy", "record", "--pid", str(pid), "--rate", "1000", "--nonblocking",
         "--format", "speedscope", "-o", str(out)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    time.sleep(1.0)  # attached before the first message
    return prof


def _missed(results: dict[str, Any], variants: list[str]) -> list[str]:
    missed = []
    for v in variants:
        for key, bound in TARGETS.items():
            got = results.get(f"{v}_{key}")
            if got is None:
                continue
            ok = got >= bound if key == "flood_msgs_per_s" else got <= bound
            if not ok:
                missed.append(
                    f"{v}_{key}={got} (target {'>=' if key.startswith('flood') else '<='} {bound})"
                )
    return missed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--role", default="harness", choices=["harness", "pace", "latency", "forward", "uvforward"]
    )
    ap.add_argument("--variant", default="both", choices=["builtin", "lua", "both"])
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--topic", default=OUT_TOPIC, help="latency role: comma separated")
    ap.add_argument("--floor-topic", default="", help="pace role: the paired floor's topic")
    ap.add_argument("-n", "--messages", type=int, default=50_000, help="flood size")
    ap.add_argument("--rate", type=float, default=500.0, help="latency run msg/s")
    ap.add_argument("--duration", type=float, default=10.0, help="latency run seconds")
    ap.add_argument("--warmup", type=int, default=100, help="latency messages left out")
    ap.add_argument("--limit", type=float, default=40.0)
    ap.add_argument(
        "--reference",
        default="c,raw,uvloop,gmqtt",
        help="also measure bare loops in place of the daemon (comma separated: c, raw, "
        "uvloop, gmqtt, mechaway_driver; '' for none): what a hop costs before mechaway "
        "adds anything",
    )
    ap.add_argument(
        "--profile", default="", help="py-spy each engine during its flood; files go here"
    )
    ap.add_argument(
        "--out-queue-size",
        type=int,
        default=0,
        help="MQTTOutNode queue_size (default: the node's own default)",
    )
    args = ap.parse_args()
    if args.role == "harness":
        compile_package()  # the daemon loads .pyc files, as an installed one does
    if args.role == "pace":
        role_pace(args.port, args.rate, args.messages, args.floor_topic)
        return
    if args.role == "forward":
        role_forward(args.port)
        return
    if args.role == "uvforward":
        role_uvforward(args.port)
        return
    if args.role == "latency":
        topics = args.topic.split(",")
        role_latency(args.port, topics, args.messages, args.warmup, args.limit)
        return

    variants = ["builtin", "lua"] if args.variant == "both" else [args.variant]
    results: dict[str, Any] = {"loadavg_1m_at_start": os.getloadavg()[0]}
    if args.out_queue_size:
        OUT_EXTRA["queue_size"] = args.out_queue_size
        results["out_queue_size"] = args.out_queue_size
    if "lua" in variants:
        why = lua_unavailable()
        if why:
            variants.remove("lua")
            results["lua_skipped"] = why
    with MosquittoBroker() as broker:
        lat = measure_latency(broker.port, IN_TOPIC, args)
        flood = measure_flood(broker.port, IN_TOPIC, args.messages, None, broker.pid)
        results["floor_p50_us"] = lat.get("p50")
        results["floor_p99_us"] = lat.get("p99")
        results["floor_flood_msgs_per_s"] = flood["msgs_per_s"]
        results["floor_flood_loss_pct"] = flood["loss_pct"]
        results["floor_broker_cpu_us_per_msg"] = round(
            flood["broker_cpu_s"] * 1e6 / args.messages, 1
        )
        for variant in variants:
            results.update(run_variant(variant, broker, args, lat.get("p50") or 0.0))
        for client in filter(None, args.reference.split(",")):
            results.update(run_reference(client, broker, args, lat.get("p50") or 0.0))
    results["messages_per_flood"] = args.messages
    results["latency_rate_msgs_per_s"] = args.rate
    results["latency_duration_s"] = args.duration
    results["targets_missed"] = _missed(results, variants)
    print(json.dumps(results), flush=True)


if __name__ == "__main__":
    main()
