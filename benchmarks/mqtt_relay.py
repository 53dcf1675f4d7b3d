"""A QoS 1 relay in one process: what holding the input's PUBACK for the output's costs.

Flow ``MQTTIn (r/in, QoS 1) -> MQTTOut (r/out)`` in an in-process engine against a
private mosquitto. A publisher connection sends ``--messages`` QoS 1 messages; a watcher
subscribed to ``r/out`` (QoS 1) counts them. Variants:

- ``qos1_out``: every input PUBACK waits for the broker's PUBACK of the relayed copy
  (``publish(confirm=True)``), as the daemon does;
- ``qos1_out_no_hold``: the same with the wait switched off (``collecting`` patched to
  say no source waits): the input is PUBACKed at once, as before the hold existed; the
  difference to ``qos1_out`` is what the hold costs;
- ``qos0_out``: the output at QoS 0, nothing to wait for.

Publisher, relay and watcher share one event loop, so the figures are relative ones: the
variants side by side, medians of ``--repeat`` interleaved rounds, a fresh broker each.

Prints one JSON line: ``relay_<variant>_msgs_per_s`` and ``loss_pct`` (worst round).

    python benchmarks/mqtt_relay.py [--messages 20000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mechaway.drivers.mqtt import Incoming, MqttConnection, MqttSettings
from mechaway.flow.validate import validate
from mechaway.nodes.context import Services
from mechaway.runtime.engine import Engine
from mechaway.testing.broker import MosquittoBroker


async def one_round(variant: str, n: int) -> tuple[float, float]:
    """(relayed msg/s, loss %) for one relay, ``variant`` as in the module docstring."""
    import mechaway.nodes.mqtt as mqtt_nodes

    out_qos = 0 if variant == "qos0_out" else 1
    names = vars(mqtt_nodes)  # the name MQTTOutNode.process looks up
    hold = names["collecting"]
    if variant == "qos1_out_no_hold":
        names["collecting"] = lambda: False
    try:
        return await _relay(out_qos, n)
    finally:
        names["collecting"] = hold


async def _relay(out_qos: int, n: int) -> tuple[float, float]:
    with MosquittoBroker() as broker:
        conns: dict[str, MqttConnection] = {}

        def settings() -> MqttSettings:
            return MqttSettings(port=broker.port, birth=False)

        async def get(name: str) -> MqttConnection:
            if name not in conns:
                conns[name] = MqttConnection(name, settings(), device_id=f"relay-{name}")
                await conns[name].start()
                await conns[name].wait_connected(5)
            return conns[name]

        engine = Engine(Services(connections={"mqtt": get}))
        doc = {
            "id": "relay",
            "nodes": [
                {
                    "id": "in",
                    "type": "MQTTInNode",
                    "params": {"topic": "r/in", "qos": 1, "decode": "bytes"},
                },
                {
                    "id": "out",
                    "type": "MQTTOutNode",
                    "params": {"topic": "r/out", "qos": out_qos, "encode": "bytes"},
                },
            ],
            "edges": [{"from": "in", "to": "out"}],
        }
        await engine.deploy(validate(doc))
        pub = MqttConnection("pub", settings(), device_id="bench-pub")
        watch = MqttConnection("watch", settings(), device_id="bench-watch")
        got = 0

        def count(m: Incoming) -> None:
            nonlocal got
            got += 1

        try:
            for c in (pub, watch):
                await c.start()
                await c.wait_connected(5)
            watch.subscribe("r/out", 1, count)
            await watch.wait_subscribed()
            await asyncio.sleep(0.3)
            t0 = time.monotonic()
            last = t0
            for i in range(n):
                pub.publish("r/in", b"%d" % i, qos=1)
                if i % 100 == 0:
                    await asyncio.sleep(0)
            seen = 0
            while got < n and time.monotonic() - last < 5:  # stop after 5 s of silence
                await asyncio.sleep(0.01)
                if got != seen:
                    seen, last = got, time.monotonic()
            elapsed = (last if got < n else time.monotonic()) - t0
        finally:
            await engine.stop()
            for c in [*conns.values(), pub, watch]:
                await c.close()
        return got / elapsed, 100.0 * (n - got) / n


VARIANTS = ("qos1_out", "qos1_out_no_hold", "qos0_out")


async def main_async(n: int, repeat: int) -> dict[str, float]:
    rates: dict[str, list[float]] = {v: [] for v in VARIANTS}
    loss = 0.0
    for _ in range(repeat):
        for variant in VARIANTS:
            rate, lost = await one_round(variant, n)
            rates[variant].append(rate)
            loss = max(loss, lost)
    out: dict[str, float] = {
        f"relay_{v}_msgs_per_s": round(statistics.median(r)) for v, r in rates.items()
    }
    out.update(loss_pct=round(loss, 2), messages=n, rounds=repeat)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-n", "--messages", type=int, default=20_000)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    import uvloop

    print(json.dumps(uvloop.run(main_async(args.messages, args.repeat))), flush=True)


if __name__ == "__main__":
    main()
