"""Hot-path figures of the engine, printed as one JSON line.

- ``per_hop_ns``: (time through a 50-node chain - time through a 1-node chain) / 49 hops,
  pass-through nodes, in-process.
- ``flow5_msgs_per_s``: messages/s through inject -> transform -> route -> window -> sink
  (every message reaches the sink's queue and is written by its writer task).
- ``rss_idle_mb``, ``start_to_ready_s``: the daemon as a subprocess with one flow.

Run: python benchmarks/hop_latency.py
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import uvloop

sys.path.insert(0, str(Path(__file__).parent))
from _util import compile_package, free_port, notify_socket, rss_mb, wait_http, wait_ready

import mechaway.testing.nodes
from mechaway.flow.validate import validate
from mechaway.runtime.engine import Engine

N = 200_000


def chain(n: int) -> dict[str, object]:
    nodes = [{"id": "src", "type": "InjectNode", "params": {"once": True, "once_delay": 3600}}]
    nodes += [{"id": f"p{i}", "type": "PassNode"} for i in range(n)]
    edges = [{"from": "src", "to": "p0"}]
    edges += [{"from": f"p{i}", "to": f"p{i + 1}"} for i in range(n - 1)]
    return {"id": f"chain{n}", "nodes": nodes, "edges": edges}


FLOW5 = {
    "id": "flow5",
    "nodes": [
        {"id": "src", "type": "InjectNode", "params": {"once": True, "once_delay": 3600}},
        {"id": "shape", "type": "JSONTransformNode", "params": {"map": "{seq=$.seq, temp=$.temp}"}},
        {"id": "route", "type": "RouteNode", "params": {"rules": [
            {"port": "hot", "property": "payload.temp", "op": "gt", "value": 30},
            {"port": "cold", "op": "else"}]}},
        {"id": "win", "type": "WindowNode",
         "params": {"size": 1, "property": "payload.temp", "op": "max"}},
        {"id": "sink", "type": "CollectNode", "params": {"queue_size": N + 1}},
    ],
    "edges": [
        {"from": "src", "to": "shape"}, {"from": "shape", "to": "route"},
        {"from": "route", "to": "win", "port": "hot"},
        {"from": "route", "to": "win", "port": "cold"},
        {"from": "win", "to": "sink"},
    ],
}


def best_of(fn: object, repeat: int = 5) -> float:
    return min(fn() for _ in range(repeat))  # type: ignore[operator]


async def in_process() -> dict[str, float]:
    engine = Engine()
    out: dict[str, float] = {}
    per_msg: dict[int, float] = {}
    msg = {"payload": {"seq": 1, "temp": 31.5}, "topic": "t", "ts": 0.0}
    for n in (1, 50):
        doc = chain(n)
        await engine.deploy(validate(doc))
        emit = engine.flows[str(doc["id"])].routers["src"].emit
        count = N // 10 if n == 50 else N

        def run(emit: object = emit, count: int = count) -> float:
            t0 = time.perf_counter_ns()
            for _ in range(count):
                emit(msg)  # type: ignore[operator]
            return (time.perf_counter_ns() - t0) / count

        per_msg[n] = best_of(run)
    out["per_hop_ns"] = round((per_msg[50] - per_msg[1]) / 49, 1)
    out["chain1_ns_per_msg"] = round(per_msg[1], 1)

    await engine.deploy(validate(FLOW5))
    rf = engine.flows["flow5"]
    emit = rf.routers["src"].emit
    sink = rf.sinks["sink"]
    got = mechaway.testing.nodes.COLLECTED["flow5.sink"]
    rates = []
    for _ in range(3):
        got.clear()
        t0 = time.perf_counter()
        for i in range(N):
            emit({"payload": {"seq": i, "temp": 20.0 + (i % 20)}, "topic": "t", "ts": 0.0})
        await sink.idle.wait()
        assert len(got) == N, (len(got), N)  # every message reached the sink and was written
        rates.append(N / (time.perf_counter() - t0))
    out["flow5_msgs_per_s"] = round(max(rates))
    out["flow5_us_per_msg"] = round(1e6 / max(rates), 2)
    await engine.stop()
    return out


def daemon_figures() -> dict[str, float]:
    compile_package()
    with tempfile.TemporaryDirectory() as tmp:
        flows = Path(tmp, "flows")
        flows.mkdir()
        demo = Path(__file__).resolve().parent.parent / "configs" / "flows" / "demo.json"
        (flows / "demo.json").write_bytes(demo.read_bytes())
        port = free_port()
        notify, notify_path = notify_socket(tmp)
        env = {**os.environ, "MECHAWAY_LOG_LEVEL": "warning", "NOTIFY_SOCKET": notify_path}
        t0 = time.monotonic()
        proc = subprocess.Popen(
            [sys.executable, "-m", "mechaway", "start", "--flows", str(flows),
             "--data-dir", str(Path(tmp, "data")), "--listen", f"127.0.0.1:{port}"],
            env=env,
        )
        try:
            wait_ready(notify)
            ready = time.monotonic() - t0
            time.sleep(3.0)
            rss = rss_mb(proc.pid)
            first_call = wait_http(f"http://127.0.0.1:{port}/api/v1/health", timeout=20)
            time.sleep(0.5)
            rss_api = rss_mb(proc.pid)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(10)
    return {"start_to_ready_s": round(ready, 3), "rss_idle_mb": round(rss, 1),
            "rss_after_api_use_mb": round(rss_api, 1), "first_api_call_s": round(first_call, 3)}


def main() -> None:
    figures = uvloop.run(in_process())
    figures.update(daemon_figures())
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
