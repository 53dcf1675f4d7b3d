"""Helpers for tests that drive flows in-process: tiny documents, polling, draining sinks."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from mechaway.flow.validate import validate
from mechaway.runtime.engine import Engine
from mechaway.testing.nodes import COLLECTED

#: a source that never fires during a test (validation wants every flow to have a source)
IDLE_SOURCE: dict[str, Any] = {
    "id": "src",
    "type": "InjectNode",
    "params": {"once": True, "once_delay": 3600},
}


def node(nid: str, ntype: str, **params: Any) -> dict[str, Any]:
    return {"id": nid, "type": ntype, "params": params}


def edge(src: str, dst: str, port: str = "out") -> dict[str, Any]:
    return {"from": src, "to": dst, "port": port}


def doc(fid: str, nodes: list[dict[str, Any]], edges: list[dict[str, Any]]) -> dict[str, Any]:
    return {"id": fid, "name": f"test {fid}", "nodes": nodes, "edges": edges}


def single(
    fid: str, ntype: str, params: dict[str, Any], *, ports: tuple[str, ...] = ("out",)
) -> dict[str, Any]:
    """``src (idle) -> n (the node under test) -> one CollectNode per port``."""
    nodes = [IDLE_SOURCE, {"id": "n", "type": ntype, "params": params}]
    edges = [edge("src", "n")]
    for p in ports:
        nodes.append(node(f"sink_{p}", "CollectNode"))
        edges.append(edge("n", f"sink_{p}", p))
    return doc(fid, nodes, edges)


def got(fid: str, nid: str) -> list[dict[str, Any]]:
    """What the CollectNode ``nid`` of flow ``fid`` has written so far."""
    return COLLECTED.get(f"{fid}.{nid}", [])


def payloads(fid: str, nid: str) -> list[Any]:
    return [m.get("payload") for m in got(fid, nid)]


async def deploy(engine: Engine, raw: dict[str, Any], rev: int = 1) -> Any:
    return await engine.deploy(validate(raw), rev)


async def wait_until(pred: Callable[[], Any], timeout: float = 5.0, what: str = "") -> None:
    """Poll ``pred`` until true; fail the test (naming ``what``) after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or pred}")
        await asyncio.sleep(0.005)


async def settle(engine: Engine, fid: str, timeout: float = 5.0) -> None:
    """Every sink of the flow has written all it accepted (and committed, for store sinks)."""
    rf = engine.flows[fid]

    def idle() -> bool:
        return all(not s.queue and s.idle.is_set() for s in rf.sinks.values())

    await wait_until(idle, timeout, f"sinks of {fid} to drain")
    for nid in rf.sinks:
        inflight = getattr(rf.instances[nid], "_inflight", None)
        if inflight is not None:
            await inflight.drain()


def stats(engine: Engine, fid: str, nid: str) -> dict[str, Any]:
    """The status entry of one node (counters and node extras)."""
    entry: dict[str, Any] = engine.status()[fid]["nodes"][nid]
    return entry


def laughs(levels: int, width: int = 10) -> str:
    """A flow whose inject payload is a "billion laughs": ``width ** levels`` leaves."""
    lines = ["id: f", "nodes:", "  - id: a", "    type: InjectNode", "    params:"]
    lines += ["      once: true", "      payload:", f"        l0: &l0 [{', '.join(['x'] * width)}]"]
    for i in range(1, levels):
        lines.append(f"        l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * width)}]")
    lines += ["  - {id: b, type: LogNode}", "edges:", "  - {from: a, to: b}"]
    return "\n".join(lines) + "\n"
