"""An ordinary restart (SIGTERM, start again) of a daemon on a persistent MQTT session
loses nothing (issue 12, point 0).

Before the fix the daemon UNSUBSCRIBEd as its sources stopped, before it DISCONNECTed:
the broker kept a session with no subscription, so what was published while the daemon
was down found no subscriber (MQTT 5 PUBACK reason 16) and was dropped, and QoS 1
messages arriving after the sources stopped were acknowledged as unrouted."""

from __future__ import annotations

import json
import random
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import orjson

from mechaway.testing.broker import MosquittoBroker
from mechaway.testing.daemon import DaemonProc

FLOW = {
    "id": "keep",
    "nodes": [
        {"id": "in", "type": "MQTTInNode", "params": {"topic": "keep/in", "qos": 1}},
        {"id": "up", "type": "UpstreamNode"},
    ],
    "edges": [{"from": "in", "to": "up"}],
}
NO_MATCHING_SUBSCRIBERS = 16


def outbox_seqs(db: Path) -> set[int]:
    """The sequence numbers the daemon's outbox holds (read beside the running daemon)."""
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as conn:
            rows = conn.execute("SELECT payload FROM outbox").fetchall()
    except sqlite3.OperationalError:  # the table is created at the first append
        return set()
    return {int(orjson.loads(bytes(r[0]))) for r in rows}


def subscribed(daemon: DaemonProc) -> bool:
    conn: dict[str, Any] = daemon.get("/status")["connections"].get("mqtt.default") or {}
    return bool(conn.get("connected")) and "keep/in" in conn.get("subscriptions", [])


def test_sigterm_restarts_keep_the_session_and_lose_no_accepted_publish(tmp_path: Path) -> None:
    import paho.mqtt.client as paho
    from paho.mqtt.reasoncodes import ReasonCode

    broker = MosquittoBroker()
    broker.start()
    config = "\n".join(
        [
            "[mqtt.default]",
            f"port = {broker.port}",
            'client_id = "keep-dut"',
            "clean_session = false",
            "reconnect_min = 0.05",
            "reconnect_max = 0.3",
        ]
    )
    daemon = DaemonProc(tmp_path, config=config)
    pub = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="keep-pub",  # type: ignore[attr-defined]
                      protocol=paho.MQTTv5)  # fmt: skip
    sent: dict[int, int] = {}  # packet id -> sequence number (ids do not wrap: < 65535 sent)
    acked: dict[int, int] = {}  # packet id -> PUBACK reason code

    def on_publish(c: Any, u: Any, mid: int, rc: ReasonCode, props: Any) -> None:
        acked[mid] = rc.value

    pub.on_publish = on_publish
    stop = threading.Event()

    def produce() -> None:
        seq = 0
        next_at = time.monotonic()
        while not stop.is_set():  # ~300 msg/s
            info = pub.publish("keep/in", json.dumps(seq).encode(), qos=1)
            sent[info.mid] = seq
            seq += 1
            next_at += 1 / 300
            time.sleep(max(0.0, next_at - time.monotonic()))

    try:
        (daemon.flows / "keep.json").write_text(json.dumps(FLOW))
        daemon.start()
        daemon.wait(lambda: subscribed(daemon), 20, "the flow's subscription")
        pub.connect("127.0.0.1", broker.port)
        pub.loop_start()
        producer = threading.Thread(target=produce)
        producer.start()
        rng = random.Random(12)
        for _ in range(3):
            time.sleep(rng.uniform(0.6, 1.2))
            assert daemon.terminate() == 0
            time.sleep(rng.uniform(0.3, 0.8))  # down: the broker keeps what comes for us
            daemon.start()
            daemon.wait(lambda: subscribed(daemon), 20, "the subscription after a restart")
        time.sleep(0.5)
        stop.set()
        producer.join()
        deadline = time.monotonic() + 10
        while len(acked) < len(sent) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(acked) == len(sent), "the broker answered every publish"
        unheard = [sent[mid] for mid, rc in acked.items() if rc == NO_MATCHING_SUBSCRIBERS]
        assert unheard == [], f"{len(unheard)} publishes found no subscriber"
        accepted = {sent[mid] for mid, rc in acked.items() if rc < 0x80}
        assert len(accepted) == len(sent) > 1000
        daemon.wait(lambda: accepted <= outbox_seqs(daemon.db), 30, "every message in the outbox")
        assert daemon.terminate() == 0
        assert accepted <= outbox_seqs(daemon.db)
        assert "Traceback" not in daemon.logfile.read_text()
    finally:
        stop.set()
        pub.loop_stop()
        pub.disconnect()
        daemon.kill9()
        broker.close()
