"""Soak / leak hunt: the daemon under a steady QoS 1 stream, hot swaps and broker restarts.

A private mosquitto (``persistence true``, so a graceful stop keeps sessions and queued
QoS 1 messages) and the daemon as a subprocess (``python -m mechaway --config X start``,
sd_notify READY awaited) with one flow file::

    MQTTInNode (soak/in, QoS 1, JSON {seq, t, temp})
      -> RouteNode (payload.temp > threshold) -> ChangeNode on/off -> MQTTOutNode (soak/out, QoS 1)
      -> StoreNode (series "soak", payload.temp, bounded)
      -> UpstreamNode (durable outbox, drop_oldest, bounded: no hub drains it)

The daemon's connection has a persistent session (``clean_session = false``, fixed
``client_id``), so what reaches ``soak/in`` while it reconnects is kept for it.

For ``--minutes``: a publisher thread (raw socket, QoS 1, packet ids, PUBACKs read, every
unacknowledged PUBLISH resent with DUP after a reconnect) paces ``--rate`` msg/s; a
subscriber thread (raw socket, QoS 1, persistent session ``soak-sub``, PUBACKs sent)
reads ``soak/out``. Every ``--redeploy-s`` the flow file is rewritten with another
threshold (hot swap); every ``--broker-restart-s`` mosquitto is stopped (SIGTERM), left
down ``--broker-down-s`` and started again on the same port. Every ``--sample-s`` the
daemon's VmRSS, open fds (``/proc/PID/fd``), threads (``/proc/PID/status``) and
``GET /api/v1/status`` counters are sampled. The API is first used during warm-up, so
its lazy import (aiohttp, ~12 MB) is in ``rss_start_mb``.

Counting: ``messages_published`` = distinct seqs the broker PUBACKed to the publisher
(a resend after a restart keeps its seq); ``messages_received`` = distinct seqs read on
``soak/out``; ``lost`` = published seqs never received (after a drain of up to
``--drain-s`` once publishing stops); ``duplicates`` = receptions beyond the first of a
seq (QoS 1 is at-least-once: redeliveries after a restart are expected, not errors).
``rss_growth_mb_per_hour`` is the least-squares slope of VmRSS over the samples after
``--warmup-s`` (default: one broker-restart period + one sample, so the step the first
reconnect burst makes is in ``rss_start_mb``, not in the slope); ``fds_*``/``threads_*``:
first/last after warm-up.

Prints ONE JSON line; keys name their units.

    python benchmarks/soak.py [--minutes 3] [--rate 1000] [--redeploy-s 5]
        [--broker-restart-s 30] [--sample-s 10] [--warmup-s 30]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _util import compile_package, free_port, notify_socket, rss_mb, wait_ready
from mqtt_clients import frames

from mechaway.testing.broker import MosquittoBroker

IN_TOPIC = "soak/in"
OUT_TOPIC = "soak/out"
FLOW_ID = "soak"


# ---------------------------------------------------------------------------------------
# The flow
# ---------------------------------------------------------------------------------------
#: the daemon's API token for the run (the API always has one)
BENCH_TOKEN = "bench-token-0123456789abcdef"

def flow(threshold: float) -> dict[str, Any]:
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

    return {
        "id": FLOW_ID,
        "name": "soak: MQTT in -> threshold -> MQTT out, + store + upstream",
        "nodes": [
            {
                "id": "in",
                "type": "MQTTInNode",
                "params": {"topic": IN_TOPIC, "qos": 1, "decode": "json"},
            },
            {
                "id": "thr",
                "type": "RouteNode",
                "params": {
                    "rules": [
                        {"port": "on", "property": "payload.temp", "op": "gt", "value": threshold},
                        {"port": "off", "op": "else"},
                    ]
                },
            },
            change("on"),
            change("off"),
            {
                "id": "out",
                "type": "MQTTOutNode",
                "params": {"topic": OUT_TOPIC, "encode": "json", "qos": 1},
            },
            {
                "id": "store",
                "type": "StoreNode",
                "params": {"series": "soak", "property": "payload.temp", "max_bytes": 1 << 20},
            },
            {
                "id": "up",
                "type": "UpstreamNode",
                "params": {"policy": "drop_oldest", "max_messages": 20_000},
            },
        ],
        "edges": [
            {"from": "in", "to": "thr"},
            {"from": "thr", "to": "on", "port": "on"},
            {"from": "thr", "to": "off", "port": "off"},
            {"from": "on", "to": "out"},
            {"from": "off", "to": "out"},
            {"from": "in", "to": "store"},
            {"from": "in", "to": "up"},
        ],
    }


def write_flow(path: Path, threshold: float) -> None:
    """Atomic rewrite (the watcher never sees half a file)."""
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(orjson.dumps(flow(threshold)))
    os.replace(tmp, path)


# ---------------------------------------------------------------------------------------
# MQTT 3.1.1 QoS 1 raw clients (threads), reconnecting
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


def _connect(port: int, client_id: str, clean: bool) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=2.0)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    flags = 0x02 if clean else 0x00
    body = _str("MQTT") + bytes([4, flags]) + struct.pack("!H", 30) + _str(client_id)
    sock.sendall(b"\x10" + _varint(len(body)) + body)
    connack = b""
    while len(connack) < 4:
        chunk = sock.recv(4 - len(connack))
        if not chunk:
            raise ConnectionError("closed before CONNACK")
        connack += chunk
    if connack[0] != 0x20 or connack[3] != 0:
        raise ConnectionError(f"CONNACK refused: {connack!r}")
    sock.settimeout(None)
    return sock


def _frames(buf: bytes) -> tuple[list[tuple[int, bytes]], bytes]:
    """Complete frames (first byte, body) in ``buf`` and the rest (``mqtt_clients.frames``
    does the splitting, as for the other benchmarks)."""
    out = []
    for first, start, stop in frames(buf):
        if first < 0:
            return out, buf[start:]
        out.append((first, buf[start:stop]))
    raise AssertionError("frames() always ends with its (-1, consumed, 0) marker")


class Publisher(threading.Thread):
    """Paces QoS 1 PUBLISHes of ``{seq, t, temp}``; resends the unacknowledged (DUP) after
    every reconnect; ``acked`` holds the seqs the broker PUBACKed."""

    def __init__(self, port: int, rate: float) -> None:
        super().__init__(daemon=True)
        self.port, self.rate = port, rate
        self.stop = threading.Event()
        self.acked: set[int] = set()
        self.sent = 0  # seqs made
        self.resent = 0
        self.reconnects = 0
        self.unacked: dict[int, tuple[int, bytes]] = {}  # packet id -> (seq, body after id)
        self._next_pid = 0
        self._topic = _str(IN_TOPIC)

    def _pid(self) -> int:
        for _ in range(65535):
            self._next_pid = self._next_pid % 65535 + 1
            if self._next_pid not in self.unacked:
                return self._next_pid
        raise RuntimeError("65535 publishes unacknowledged")

    @staticmethod
    def _packet(pid: int, payload: bytes, topic: bytes, dup: bool) -> bytes:
        body = topic + struct.pack("!H", pid) + payload
        return bytes([0x3A if dup else 0x32]) + _varint(len(body)) + body

    def run(self) -> None:
        sock: socket.socket | None = None
        rx = b""
        period = 1.0 / self.rate
        batch = max(1, int(self.rate / 100))  # one write every ~10 ms
        due = time.monotonic()
        last_ping = time.monotonic()
        while not self.stop.is_set():
            if sock is None:
                try:
                    sock = _connect(self.port, "soak-pub", clean=True)
                except OSError:
                    time.sleep(0.1)
                    continue
                rx = b""
                if self.sent:
                    self.reconnects += 1
                out = [
                    self._packet(pid, payload, self._topic, True)
                    for pid, (_, payload) in sorted(self.unacked.items())
                ]
                self.resent += len(out)
                try:
                    if out:
                        sock.sendall(b"".join(out))
                except OSError:
                    sock.close()
                    sock = None
                    continue
                due = max(due, time.monotonic())
            try:
                now = time.monotonic()
                if now >= due and len(self.unacked) < 60_000:
                    pkts = []
                    for _ in range(batch):
                        seq = self.sent
                        self.sent += 1
                        payload = orjson.dumps(
                            {"seq": seq, "t": time.monotonic_ns(), "temp": 20 + seq % 20}
                        )
                        pid = self._pid()
                        self.unacked[pid] = (seq, payload)
                        pkts.append(self._packet(pid, payload, self._topic, False))
                    sock.sendall(b"".join(pkts))
                    due += batch * period
                if now - last_ping > 10:
                    sock.sendall(b"\xc0\x00")
                    last_ping = now
                wait = max(0.0, due - time.monotonic())
                r, _, _ = select.select([sock], [], [], min(wait, 0.05))
                if r:
                    chunk = sock.recv(1 << 16)
                    if not chunk:
                        raise ConnectionError("closed")
                    frames, rx = _frames(rx + chunk)
                    for first, body in frames:
                        if first & 0xF0 == 0x40:  # PUBACK
                            (pid,) = struct.unpack_from("!H", body)
                            got = self.unacked.pop(pid, None)
                            if got is not None:
                                self.acked.add(got[0])
            except OSError:
                sock.close()
                sock = None
        if sock is not None:
            # wait for the last PUBACKs, then disconnect
            deadline = time.monotonic() + 10
            while self.unacked and time.monotonic() < deadline:
                try:
                    r, _, _ = select.select([sock], [], [], 0.1)
                    if r:
                        chunk = sock.recv(1 << 16)
                        if not chunk:
                            break
                        frames, rx = _frames(rx + chunk)
                        for first, body in frames:
                            if first & 0xF0 == 0x40:
                                (pid,) = struct.unpack_from("!H", body)
                                got = self.unacked.pop(pid, None)
                                if got is not None:
                                    self.acked.add(got[0])
                except OSError:
                    break
            with contextlib.suppress(OSError):
                sock.sendall(b"\xe0\x00")
            sock.close()


class Subscriber(threading.Thread):
    """QoS 1 subscriber on ``soak/out`` with a persistent session; counts each seq."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.stop = threading.Event()
        self.ready = threading.Event()
        self.counts: dict[int, int] = {}
        self.received = 0
        self.reconnects = 0
        self.last_rx = time.monotonic()
        self.bad = 0

    def run(self) -> None:
        sock: socket.socket | None = None
        rx = b""
        last_ping = time.monotonic()
        while not self.stop.is_set():
            if sock is None:
                try:
                    sock = _connect(self.port, "soak-sub", clean=False)
                    body = struct.pack("!H", 1) + _str(OUT_TOPIC) + b"\x01"
                    sock.sendall(b"\x82" + _varint(len(body)) + body)
                except OSError:
                    sock = None
                    time.sleep(0.1)
                    continue
                if self.ready.is_set():
                    self.reconnects += 1
                rx = b""
            try:
                now = time.monotonic()
                if now - last_ping > 10:
                    sock.sendall(b"\xc0\x00")
                    last_ping = now
                r, _, _ = select.select([sock], [], [], 0.1)
                if not r:
                    continue
                chunk = sock.recv(1 << 18)
                if not chunk:
                    raise ConnectionError("closed")
                frames, rx = _frames(rx + chunk)
                acks = []
                for first, body in frames:
                    kind = first & 0xF0
                    if kind == 0x90:  # SUBACK
                        self.ready.set()
                    elif kind == 0x30:
                        qos = (first >> 1) & 3
                        (tlen,) = struct.unpack_from("!H", body)
                        pos = 2 + tlen
                        if qos:
                            acks.append(b"\x40\x02" + body[pos : pos + 2])
                            pos += 2
                        try:
                            seq = orjson.loads(body[pos:])["seq"]
                        except (orjson.JSONDecodeError, KeyError, TypeError):
                            self.bad += 1
                            continue
                        self.received += 1
                        self.counts[seq] = self.counts.get(seq, 0) + 1
                        self.last_rx = time.monotonic()
                if acks:
                    sock.sendall(b"".join(acks))
            except OSError:
                sock.close()
                sock = None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.sendall(b"\xe0\x00")
            sock.close()


# ---------------------------------------------------------------------------------------
# Sampling
# ---------------------------------------------------------------------------------------
def _threads(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("Threads:"):
                return int(line.split()[1])
    return -1


def _fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _status(api_port: int) -> dict[str, Any]:
    req = urllib.request.Request(f"http://127.0.0.1:{api_port}/api/v1/status")
    req.add_header("Authorization", f"Bearer {BENCH_TOKEN}")
    with urllib.request.urlopen(req, timeout=10) as r:
        data: dict[str, Any] = json.loads(r.read())
        return data


def _counters(st: dict[str, Any]) -> dict[str, Any]:
    """The status figures that would show something piling up."""
    conn = st.get("connections", {}).get("mqtt.default", {})
    nodes = st.get("flows", {}).get(FLOW_ID, {}).get("nodes", {})
    out: dict[str, Any] = {
        k: conn.get(k) for k in ("inflight", "acks_held", "retry_queue", "spool", "reconnects")
    }
    out.update({f"mqtt_{k}": v for k, v in conn.get("counters", {}).items() if v})
    for nid in ("out", "store", "up"):
        n = nodes.get(nid, {})
        for k in ("dropped", "errors"):
            if n.get(k):
                out[f"{nid}_{k}"] = n[k]
    return out


def _slope_per_hour(ts: list[float], ys: list[float]) -> float | None:
    if len(ts) < 2:
        return None
    mt, my = sum(ts) / len(ts), sum(ys) / len(ys)
    den = sum((t - mt) ** 2 for t in ts)
    if not den:
        return None
    return sum((t - mt) * (y - my) for t, y in zip(ts, ys, strict=True)) / den * 3600


# ---------------------------------------------------------------------------------------
# The harness
# ---------------------------------------------------------------------------------------
def run(args: argparse.Namespace) -> dict[str, Any]:
    res: dict[str, Any] = {
        "minutes": args.minutes,
        "rate_msgs_per_s": args.rate,
        "redeploy_every_s": args.redeploy_s,
        "broker_restart_every_s": args.broker_restart_s,
        "warmup_s": args.warmup_s,
    }
    samples: list[dict[str, Any]] = []
    broker = MosquittoBroker(persistence=True)
    broker.start()
    try:
        with tempfile.TemporaryDirectory(prefix="mechaway-soak-") as tmp:
            flows = Path(tmp, "flows")
            flows.mkdir()
            flow_path = flows / f"{FLOW_ID}.json"
            threshold = 30.0
            write_flow(flow_path, threshold)
            api_port = free_port()
            config = Path(tmp, "mechaway.toml")
            config.write_text(
                f'[device]\nid = "soak"\ndata_dir = "{tmp}/data"\n'
                f'[api]\nlisten = "127.0.0.1:{api_port}"\nlazy = true\ntoken = "{BENCH_TOKEN}"\n'
                f'[flows]\ndir = "{flows}"\n'
                f'[log]\nlevel = "warning"\n'
                f'[mqtt.default]\nhost = "127.0.0.1"\nport = {broker.port}\n'
                f'client_id = "soak-daemon"\nclean_session = false\n'
                f"reconnect_min = 0.2\nreconnect_max = 2.0\n"
            )
            notify, notify_path = notify_socket(tmp)
            env = {k: v for k, v in os.environ.items() if not k.startswith("MECHAWAY_")}
            env["NOTIFY_SOCKET"] = notify_path
            log_path = Path(tmp, "daemon.log")
            with open(log_path, "wb") as log_file:
                proc = subprocess.Popen(
                    [sys.executable, "-m", "mechaway", "--config", str(config), "start"],
                    env=env, stdin=subprocess.DEVNULL, stdout=log_file, stderr=log_file,
                )  # fmt: skip
            pub = sub = None
            try:
                try:
                    wait_ready(notify, timeout=30)
                except TimeoutError:
                    raise RuntimeError(
                        f"daemon not ready: {log_path.read_text()[-2000:]}"
                    ) from None
                pid = proc.pid
                time.sleep(1.0)  # the daemon subscribes
                sub = Subscriber(broker.port)
                sub.start()
                if not sub.ready.wait(10):
                    raise RuntimeError("subscriber got no SUBACK")
                pub = Publisher(broker.port, args.rate)
                pub.start()

                t0 = time.monotonic()
                end = t0 + args.minutes * 60
                next_redeploy = t0 + args.redeploy_s
                next_restart = t0 + args.broker_restart_s
                next_sample = t0
                redeploys = restarts = 0
                while True:
                    now = time.monotonic()
                    if now >= end:
                        break
                    if proc.poll() is not None:
                        raise RuntimeError(f"daemon exited {proc.returncode}")
                    if now >= next_sample:
                        s: dict[str, Any] = {
                            "t_s": round(now - t0, 1),
                            "rss_mb": round(rss_mb(pid), 2),
                            "fds": _fds(pid),
                            "threads": _threads(pid),
                            "published": len(pub.acked),
                            "received": len(sub.counts),
                        }
                        try:
                            s.update(_counters(_status(api_port)))
                        except OSError as err:
                            s["status_error"] = str(err)
                        samples.append(s)
                        if args.verbose:
                            print(json.dumps(s), file=sys.stderr, flush=True)
                        next_sample += args.sample_s
                    if now >= next_restart:
                        broker.stop()  # SIGTERM: sessions and queued QoS 1 saved
                        time.sleep(args.broker_down_s)
                        broker.start()
                        restarts += 1
                        next_restart += args.broker_restart_s
                    if now >= next_redeploy:
                        threshold = 31.0 if threshold == 30.0 else 30.0
                        write_flow(flow_path, threshold)
                        redeploys += 1
                        next_redeploy += args.redeploy_s
                    time.sleep(
                        max(
                            0.0,
                            min(next_sample, next_restart, next_redeploy, end) - time.monotonic(),
                        )
                    )
                # stop publishing, let everything drain
                pub.stop.set()
                pub.join(20)
                published = set(pub.acked)
                deadline = time.monotonic() + args.drain_s
                while time.monotonic() < deadline:
                    if published.issubset(sub.counts.keys()):
                        break
                    time.sleep(0.2)
                time.sleep(1.0)  # a last redelivery, if any
                final = {
                    "rss_mb": round(rss_mb(pid), 2),
                    "fds": _fds(pid),
                    "threads": _threads(pid),
                }
                try:
                    res["final_status"] = _counters(_status(api_port))
                except OSError as err:
                    res["final_status"] = {"error": str(err)}
                sub.stop.set()
                sub.join(5)

                after = [s for s in samples if s["t_s"] >= args.warmup_s] or samples
                rss = [s["rss_mb"] for s in after]
                res["rss_start_mb"] = after[0]["rss_mb"]
                res["rss_end_mb"] = final["rss_mb"]
                res["rss_max_mb"] = max([*rss, final["rss_mb"]])
                slope = _slope_per_hour([s["t_s"] for s in after], rss)
                res["rss_growth_mb_per_hour"] = round(slope, 2) if slope is not None else None
                fslope = _slope_per_hour([s["t_s"] for s in after], [s["fds"] for s in after])
                res["fds_growth_per_hour"] = round(fslope, 2) if fslope is not None else None
                res["fds_start"], res["fds_end"] = after[0]["fds"], final["fds"]
                res["threads_start"], res["threads_end"] = after[0]["threads"], final["threads"]
                res["samples_after_warmup"] = len(after)
                received = set(sub.counts)
                res["messages_published"] = len(published)
                res["messages_made"] = pub.sent
                res["messages_received"] = len(received)
                res["lost"] = len(published - received)
                res["duplicates"] = sub.received - len(received)
                res["unexpected_received"] = len(received - published)
                res["publisher_resent"] = pub.resent
                res["publisher_reconnects"] = pub.reconnects
                res["subscriber_reconnects"] = sub.reconnects
                res["redeploys"] = redeploys
                res["broker_restarts"] = restarts
                if res["lost"]:
                    missing = sorted(published - received)
                    res["lost_first_seqs"] = missing[:20]
                res["samples"] = samples
            finally:
                for t in (pub, sub):
                    if t is not None:
                        t.stop.set()
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
                notify.close()
                res["daemon_exit"] = proc.returncode
                tail = log_path.read_text(errors="replace")[-1500:] if log_path.exists() else ""
                if tail:
                    res["daemon_log_tail"] = tail
    finally:
        broker.close()
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=3.0)
    ap.add_argument("--rate", type=float, default=1000.0, help="QoS 1 msg/s on soak/in")
    ap.add_argument("--redeploy-s", type=float, default=5.0, help="hot swap period")
    ap.add_argument("--broker-restart-s", type=float, default=30.0)
    ap.add_argument("--broker-down-s", type=float, default=1.0)
    ap.add_argument("--sample-s", type=float, default=10.0)
    ap.add_argument(
        "--warmup-s",
        type=float,
        default=None,
        help="samples before this are left out of the *_start figures and the slopes "
        "(default: one broker-restart period + one sample, so the first reconnect "
        "burst, a one-off high-water step, is in rss_start_mb)",
    )
    ap.add_argument("--drain-s", type=float, default=30.0)
    ap.add_argument("-v", "--verbose", action="store_true", help="samples on stderr as taken")
    args = ap.parse_args()
    if args.warmup_s is None:
        args.warmup_s = args.broker_restart_s + args.sample_s
    compile_package()  # the daemon loads .pyc files, as an installed one does
    print(json.dumps(run(args)), flush=True)


if __name__ == "__main__":
    main()
