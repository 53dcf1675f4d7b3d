"""Deploys racing with traffic and with each other: hot swaps under load, full ``block``
sinks, cancelled and failing deploys, engine stop with deploys in flight, hanging stops."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, ClassVar

import pytest

from mechaway.errors import FlowError
from mechaway.nodes.base import Message, Node, SourceNode
from mechaway.nodes.registry import register_node
from mechaway.runtime.engine import Engine
from mechaway.runtime.manager import FlowManager
from mechaway.store.db import Database
from mechaway.store.flows import FlowStore
from mechaway.testing.flows import (
    IDLE_SOURCE,
    deploy,
    doc,
    edge,
    got,
    node,
    payloads,
    settle,
    wait_until,
)
from mechaway.testing.nodes import COLLECTED


@register_node("RaceTestGateSourceNode")
class GateSourceNode(SourceNode):
    """A source whose start() waits until the test opens ``gate`` (a slow device)."""

    gate: ClassVar[asyncio.Event | None] = None
    entered: ClassVar[asyncio.Event | None] = None

    async def start(self) -> None:
        assert self.gate is not None and self.entered is not None
        self.entered.set()
        await self.gate.wait()


@register_node("RaceTestEmitOnStartNode")
class EmitOnStartNode(SourceNode):
    """Emits one message as it starts (a source that sends what it held)."""

    async def start(self) -> None:
        self.emit({"payload": "held", "topic": "t", "ts": 0.0})


@register_node("RaceTestBadSourceNode")
class BadSourceNode(SourceNode):
    """A source whose hardware is missing: start() raises."""

    async def start(self) -> None:
        raise RuntimeError("no such device")


@register_node("RaceTestHangingStopNode")
class HangingStopNode(Node):
    """A pure node whose stop() never returns."""

    async def stop(self) -> None:
        await asyncio.Event().wait()


@register_node("RaceTestGateStopNode")
class GateStopNode(Node):
    """A pure node whose stop() waits until the test opens ``GateSourceNode.gate``."""

    async def stop(self) -> None:
        assert GateSourceNode.gate is not None and GateSourceNode.entered is not None
        GateSourceNode.entered.set()
        await GateSourceNode.gate.wait()


def m(v: Any) -> Message:
    return {"payload": v, "topic": "t", "ts": 0.0}


def _sink_tasks(fid: str) -> set[str]:
    return {
        t.get_name()
        for t in asyncio.all_tasks()
        if t.get_name().startswith(f"mechaway.sink[{fid}.")
        or t.get_name().startswith(f"mechaway.inject[{fid}.")
    }


@pytest.fixture(autouse=True)
def _gates() -> None:
    GateSourceNode.gate = asyncio.Event()
    GateSourceNode.entered = asyncio.Event()
    for k in [k for k in COLLECTED if k.startswith(("r", "s"))]:
        COLLECTED.pop(k)


def _bumped(i: int) -> dict[str, Any]:
    """``src -> cnt -> sink`` kept; a side branch added, changed and removed by turns."""
    nodes = [IDLE_SOURCE, node("cnt", "CountNode"), node("sink", "CollectNode", queue_size=100000)]
    edges = [edge("src", "cnt"), edge("cnt", "sink")]
    if i % 3:
        nodes.append(node("log", "LogNode", keep=i % 3))
        edges.append(edge("cnt", "log"))
    if i % 2:
        nodes.append(node("side", "CollectNode"))
        edges.append(edge("cnt", "side"))
    return doc("r", nodes, edges)


@pytest.mark.asyncio
async def test_100_redeploys_under_traffic_lose_and_duplicate_nothing(engine: Engine) -> None:
    await deploy(engine, _bumped(0))
    tasks_before = len(asyncio.all_tasks())
    stop = asyncio.Event()
    sent = 0

    async def feed() -> None:
        nonlocal sent
        while not stop.is_set():
            for _ in range(20):
                engine.inject("r", "cnt", m(sent))
                sent += 1
            await asyncio.sleep(0)

    feeder = asyncio.get_running_loop().create_task(feed())
    cnt = engine.flows["r"].instances["cnt"]
    for i in range(1, 101):
        await deploy(engine, _bumped(i), rev=i + 1)
        await asyncio.sleep(0)
    stop.set()
    await feeder
    await settle(engine, "r")
    rf = engine.flows["r"]
    assert rf.instances["cnt"] is cnt  # kept all along, with its state
    assert cnt.count == sent
    assert payloads("r", "sink") == list(range(sent))  # in order, once each
    st = rf.stats["cnt"]
    assert st.inp == st.out + st.errors + st.dropped == sent
    sk = rf.stats["sink"]
    assert sk.inp == sent and sk.dropped == 0 and sk.errors == 0
    # the changed/removed side branches stopped: their writers are gone
    assert len(asyncio.all_tasks()) <= tasks_before
    assert _sink_tasks("r") == {"mechaway.sink[r.sink]", "mechaway.inject[r.src]"} | (
        {"mechaway.sink[r.side]"} if "side" in rf.sinks else set()
    )


def _blocking(sink: str, delay: float) -> dict[str, Any]:
    return doc(
        "s",
        [
            node("inj", "InjectNode", interval=0.001, payload=1),
            node(sink, "CollectNode", queue_size=1, overflow="block", delay=delay),
        ],
        [edge("inj", sink)],
    )


@pytest.mark.asyncio
async def test_a_kept_source_waiting_on_a_removed_block_sink_is_released() -> None:
    """The removed ``block`` sink cannot drain within the stop timeout: its writer is
    cancelled with the queue full. The kept source waited for that sink's room: it used to
    wait forever (the flow silently produced nothing again)."""
    engine = Engine(stop_timeout=0.1)
    try:
        await deploy(engine, _blocking("a", 3600))
        rf = engine.flows["s"]
        room = rf.sinks["a"].room
        # the source is inside the old plan's wait for room (not between two ticks)
        await wait_until(lambda: room._waiters, what="the source to wait for room")  # type: ignore[attr-defined]
        await deploy(engine, _blocking("b", 0), rev=2)
        await wait_until(lambda: len(got("s", "b")) >= 3, what="the kept source to feed b")
        assert engine.flows["s"].instances["inj"] is rf.instances["inj"]
    finally:
        await engine.stop()


@pytest.mark.asyncio
async def test_deploy_while_a_block_sink_is_full_does_not_deadlock(engine: Engine) -> None:
    """The kept full sink keeps its queue; a removed blocked source is released (stopped)."""
    raw = doc(
        "s",
        [
            node("inj", "InjectNode", interval=0.001, payload=1),
            node("inj2", "InjectNode", interval=0.001, payload=2),
            node("sink", "CollectNode", queue_size=2, overflow="block", delay=0.02),
        ],
        [edge("inj", "sink"), edge("inj2", "sink")],
    )
    await deploy(engine, raw)
    rf = engine.flows["s"]
    await wait_until(lambda: not rf.sinks["sink"].room.is_set(), what="sink full")
    raw2 = {**raw, "nodes": raw["nodes"][:1] + raw["nodes"][2:], "edges": raw["edges"][:1]}
    await asyncio.wait_for(deploy(engine, raw2, rev=2), 5)
    assert "mechaway.inject[s.inj2]" not in _sink_tasks("s")
    st = engine.flows["s"].stats["sink"]
    assert st.dropped == 0
    n = len(got("s", "sink"))
    await wait_until(lambda: len(got("s", "sink")) > n + 2, what="the kept source to go on")


@pytest.mark.asyncio
async def test_a_cancelled_deploy_leaves_the_old_revision_running(engine: Engine) -> None:
    old = doc(
        "r",
        [IDLE_SOURCE, node("cnt", "CountNode"), node("sink", "CollectNode")],
        [edge("src", "cnt"), edge("cnt", "sink")],
    )
    await deploy(engine, old)
    rf = engine.flows["r"]
    engine.inject("r", "cnt", m(0))
    new = {
        **old,
        "nodes": [
            *old["nodes"],
            node("sink2", "CollectNode"),
            node("gate", "RaceTestGateSourceNode"),
        ],
        "edges": [*old["edges"], edge("cnt", "sink2"), edge("gate", "cnt")],
    }
    task = asyncio.get_running_loop().create_task(deploy(engine, new, rev=2))
    assert GateSourceNode.entered is not None
    await GateSourceNode.entered.wait()  # the new plan is bound, a source is starting
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert engine.flows["r"] is rf
    cnt = rf.instances["cnt"]
    # the kept node routes by the old plan again; the new sink's writer is gone
    assert cnt.emit == rf.routers["cnt"].emit
    assert "mechaway.sink[r.sink2]" not in _sink_tasks("r")
    engine.inject("r", "cnt", m(1))
    await settle(engine, "r")
    assert payloads("r", "sink") == [0, 1]
    assert got("r", "sink2") == []
    assert cnt.count == 2


@pytest.mark.asyncio
async def test_a_failed_deploy_writes_what_its_new_sink_accepted(engine: Engine) -> None:
    """A new source sent a message into the new plan before another new source failed:
    the new sink wrote it before it stopped (it used to be dropped, the sink stopped first)."""
    old = doc(
        "r",
        [IDLE_SOURCE, node("cnt", "CountNode"), node("sink", "CollectNode")],
        [edge("src", "cnt"), edge("cnt", "sink")],
    )
    await deploy(engine, old)
    rf = engine.flows["r"]
    new = {
        **old,
        "nodes": [
            *old["nodes"],
            node("sink2", "CollectNode", delay=0.01),
            node("early", "RaceTestEmitOnStartNode"),
            node("bad", "RaceTestBadSourceNode"),
        ],
        "edges": [*old["edges"], edge("cnt", "sink2"), edge("early", "cnt"), edge("bad", "cnt")],
    }
    with pytest.raises(FlowError, match="failed to start"):
        await deploy(engine, new, rev=2)
    assert engine.flows["r"] is rf
    assert payloads("r", "sink2") == ["held"]
    assert "mechaway.sink[r.sink2]" not in _sink_tasks("r")
    assert rf.instances["cnt"].emit == rf.routers["cnt"].emit


@pytest.mark.asyncio
async def test_engine_stop_with_a_deploy_in_flight_leaves_nothing_running() -> None:
    engine = Engine(stop_timeout=1.0)
    raw = doc(
        "r",
        [
            node("gate", "RaceTestGateSourceNode"),
            node("inj", "InjectNode", interval=0.01),
            node("sink", "CollectNode"),
        ],
        [edge("gate", "sink"), edge("inj", "sink")],
    )
    task = asyncio.get_running_loop().create_task(deploy(engine, raw))
    assert GateSourceNode.entered is not None and GateSourceNode.gate is not None
    await GateSourceNode.entered.wait()
    stopping = asyncio.get_running_loop().create_task(engine.stop())
    await asyncio.sleep(0.01)
    GateSourceNode.gate.set()
    await task
    await stopping
    assert engine.flows == {}
    assert _sink_tasks("r") == set()
    # a deploy after stop is refused, not left running
    with pytest.raises(FlowError, match="stopping"):
        await deploy(engine, raw)
    assert engine.flows == {}


@pytest.mark.asyncio
async def test_remove_while_a_sink_drains_slowly_writes_everything(engine: Engine) -> None:
    raw = doc(
        "r",
        [IDLE_SOURCE, node("sink", "CollectNode", delay=0.005)],
        [edge("src", "sink")],
    )
    await deploy(engine, raw)
    for v in range(20):
        engine.inject("r", "sink", m(v))
    removing = asyncio.get_running_loop().create_task(engine.remove("r"))
    await asyncio.sleep(0)
    assert "r" not in engine.flows
    # a redeploy waits for the removal to finish, then starts afresh
    await deploy(engine, raw, rev=2)
    assert await removing
    assert payloads("r", "sink") == list(range(20))
    assert "r" in engine.flows


@pytest.mark.asyncio
async def test_a_hanging_stop_is_bounded_by_the_stop_timeout() -> None:
    engine = Engine(stop_timeout=0.1)
    raw = doc(
        "r",
        [IDLE_SOURCE, node("hang", "RaceTestHangingStopNode"), node("sink", "CollectNode")],
        [edge("src", "hang"), edge("hang", "sink")],
    )
    await deploy(engine, raw)
    raw2 = doc("r", [IDLE_SOURCE, node("sink", "CollectNode")], [edge("src", "sink")])
    await asyncio.wait_for(deploy(engine, raw2, rev=2), 5)
    assert "hang" not in engine.flows["r"].instances
    await asyncio.wait_for(engine.stop(), 5)


@pytest.mark.asyncio
async def test_concurrent_deploys_of_one_flow_agree_in_engine_and_store(tmp_path: Path) -> None:
    db = Database(tmp_path / "mechaway.db")
    db.open()
    engine = Engine(stop_timeout=1.0)
    mgr = FlowManager(engine, FlowStore(db))
    try:
        revs = [
            doc("r", [IDLE_SOURCE, node("log", "LogNode", keep=k)], [edge("src", "log")])
            for k in range(1, 9)
        ]
        results = await asyncio.gather(
            *(mgr.deploy(r, "api" if i % 2 else "file") for i, r in enumerate(revs))
        )
        last = max(results, key=lambda r: r.rev)
        rf = engine.flows["r"]
        active = mgr.store.get("r", mgr.store.active_rev("r") or 0)
        assert active is not None
        assert rf.rev == last.rev == mgr.store.active_rev("r")
        assert rf.valid.doc.to_builtins() == active.doc
    finally:
        await engine.stop()
        await db.close()


@pytest.mark.asyncio
async def test_a_deploy_cancelled_while_recorded_agrees_in_engine_and_store(
    tmp_path: Path,
) -> None:
    """Shutdown cancels a deploy after the swap, while the store records it: the engine ran
    the new revision and the store kept the old one active (the old one came back at boot)."""
    db = Database(tmp_path / "mechaway.db")
    db.open()
    engine = Engine(stop_timeout=1.0)
    store = FlowStore(db)
    mgr = FlowManager(engine, store)
    try:
        one = doc("r", [IDLE_SOURCE, node("log", "LogNode", keep=1)], [edge("src", "log")])
        two = doc("r", [IDLE_SOURCE, node("log", "LogNode", keep=2)], [edge("src", "log")])
        await mgr.deploy(one, "api")
        gate, entered = asyncio.Event(), asyncio.Event()
        real_save = store.save

        async def slow_save(d: dict[str, Any], source: Any) -> tuple[int, bool]:
            entered.set()
            await gate.wait()
            return await real_save(d, source)

        store.save = slow_save  # type: ignore[method-assign]
        task = asyncio.get_running_loop().create_task(mgr.deploy(two, "file"))
        await entered.wait()
        task.cancel()
        await asyncio.sleep(0)
        gate.set()
        with pytest.raises(asyncio.CancelledError):
            await task
        rf = engine.flows["r"]
        active_rev = store.active_rev("r")
        assert active_rev is not None
        active = store.get("r", active_rev)
        assert active is not None
        assert rf.rev == active_rev
        assert rf.valid.doc.to_builtins() == active.doc
    finally:
        await engine.stop()
        await db.close()


@pytest.mark.asyncio
async def test_a_deploy_cancelled_while_retired_nodes_stop_is_recorded(tmp_path: Path) -> None:
    """Cancelled after the swap, while a removed node stops: the new revision runs, so it
    is recorded too (the store used to keep the old one active) and every node stopped."""
    db = Database(tmp_path / "mechaway.db")
    db.open()
    engine = Engine(stop_timeout=5.0)
    store = FlowStore(db)
    mgr = FlowManager(engine, store)
    try:
        one = doc(
            "r",
            [IDLE_SOURCE, node("g", "RaceTestGateStopNode"), node("sink", "CollectNode")],
            [edge("src", "g"), edge("g", "sink")],
        )
        two = doc("r", [IDLE_SOURCE, node("sink", "CollectNode")], [edge("src", "sink")])
        await mgr.deploy(one, "api")
        task = asyncio.get_running_loop().create_task(mgr.deploy(two, "api"))
        assert GateSourceNode.entered is not None and GateSourceNode.gate is not None
        await GateSourceNode.entered.wait()
        task.cancel()
        await asyncio.sleep(0)
        GateSourceNode.gate.set()
        with pytest.raises(asyncio.CancelledError):
            await task
        rf = engine.flows["r"]
        assert "g" not in rf.instances
        active_rev = store.active_rev("r")
        assert active_rev == rf.rev == 2
        active = store.get("r", active_rev)
        assert active is not None and rf.valid.doc.to_builtins() == active.doc
    finally:
        await engine.stop()
        await db.close()
