"""Helpers for the store tests: tiny flow documents and polling."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from mechaway.flow.validate import validate
from mechaway.runtime.engine import Engine
from mechaway.testing.nodes import COLLECTED

#: a source that never fires during a test (validation wants every flow to have a source)
IDLE: dict[str, Any] = {
    "id": "src",
    "type": "InjectNode",
    "params": {"once": True, "once_delay": 3600},
}


def node(nid: str, ntype: str, **params: Any) -> dict[str, Any]:
    return {"id": nid, "type": ntype, "params": params}


def edge(src: str, dst: str, port: str = "out") -> dict[str, Any]:
    return {"from": src, "to": dst, "port": port}


def flow(fid: str, nodes: list[dict[str, Any]], edges: list[dict[str, Any]]) -> dict[str, Any]:
    return {"id": fid, "name": fid, "nodes": [IDLE, *nodes], "edges": edges}


async def deploy(engine: Engine, raw: dict[str, Any], rev: int = 1) -> None:
    await engine.deploy(validate(raw), rev)


def got(fid: str, nid: str) -> list[dict[str, Any]]:
    return COLLECTED.get(f"{fid}.{nid}", [])


async def wait_until(pred: Callable[[], Any], timeout: float = 5.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or pred}")
        await asyncio.sleep(0.005)


async def settle(engine: Engine, fid: str, timeout: float = 5.0) -> None:
    """Every sink of the flow has written all it accepted, and its writes are committed."""
    rf = engine.flows[fid]
    await wait_until(
        lambda: all(not s.queue and s.idle.is_set() for s in rf.sinks.values()),
        timeout,
        f"sinks of {fid}",
    )
    for nid in rf.sinks:
        inflight = getattr(rf.instances[nid], "_inflight", None)
        if inflight is not None:
            await inflight.drain()
