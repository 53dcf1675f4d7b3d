"""Lua and WASM logic nodes inside flows: results, ports, limits, isolation, persistence."""

from __future__ import annotations

import asyncio
import pathlib
import time
from typing import Any

import pytest

from mechaway.errors import FlowError
from mechaway.flow.validate import validate
from mechaway.nodes.context import Services
from mechaway.runtime.engine import Engine
from mechaway.store.context import ContextKeeper
from mechaway.store.db import Database
from mechaway.testing.nodes import COLLECTED

THRESHOLD = """
if data.temp > 30 then
  return {payload = {state = "on", seq = data.seq}}
end
return {payload = {state = "off", seq = data.seq}}
"""


def logic_flow(fid: str, node: dict[str, Any], ports: tuple[str, ...] = ("out",)) -> dict[str, Any]:
    nodes = [
        {"id": "src", "type": "InjectNode", "params": {"once": True, "once_delay": 3600}},
        {**node, "id": "logic"},
        {"id": "err", "type": "CollectNode"},
    ]
    edges = [{"from": "src", "to": "logic"}, {"from": "logic", "to": "err", "port": "error"}]
    for p in ports:
        nodes.append({"id": p, "type": "CollectNode"})
        edges.append({"from": "logic", "to": p, "port": p})
    return {"id": fid, "nodes": nodes, "edges": edges}


async def drain(engine: Engine, fid: str) -> None:
    for runner in engine.flows[fid].sinks.values():
        await runner.idle.wait()
    await asyncio.sleep(0)


def msg(temp: float, seq: int) -> dict[str, Any]:
    return {"payload": {"temp": temp, "seq": seq}, "topic": "t", "ts": 1.0}


@pytest.mark.asyncio
async def test_lua_threshold_and_ports() -> None:
    engine = Engine()
    script = """
    if data.temp > 30 then return {{"hot", {payload = data.seq}}} end
    if data.temp < 0 then return nil end
    return msg
    """
    node = {"type": "FunLogicNode", "params": {"engine": "mlua", "script": script,
                                               "ports": ["hot"]}}  # fmt: skip
    await engine.deploy(validate(logic_flow("l", node, ("out", "hot"))))
    for i, t in enumerate([31.0, 20.0, -5.0, 40.0]):
        engine.inject("l", "logic", msg(t, i))
    await drain(engine, "l")
    assert [m["payload"] for m in COLLECTED["l.hot"]] == [0, 3]
    assert [m["payload"]["seq"] for m in COLLECTED["l.out"]] == [1]
    st = engine.status()["l"]["nodes"]["logic"]
    assert (st["in"], st["out"], st["errors"]) == (4, 3, 0)
    await engine.stop()


def test_lua_syntax_error_is_a_deploy_time_error_with_the_line() -> None:
    node = {"type": "FunLogicNode", "params": {"script": "local x = 1\nif x then\n  return msg\n"}}
    with pytest.raises(FlowError, match=r"nodes\[1\] \(logic\)\.params: script: .*line \d"):
        validate(logic_flow("l", node))


@pytest.mark.parametrize(
    ("params", "where", "kind"),
    [
        ({"wall_time_ms": 600_000}, "wall_time_ms", "float"),  # ten minutes on the loop
        ({"wall_time_ms": 0}, "wall_time_ms", "float"),
        ({"instruction_budget": 10**13}, "instruction_budget", "int"),
        ({"instruction_budget": 10}, "instruction_budget", "int"),
        ({"max_memory_kb": 2**30}, "max_memory_kb", "int"),
        ({"max_memory_kb": 1}, "max_memory_kb", "int"),
    ],
)
def test_lua_limits_are_bounded_at_validation(
    params: dict[str, Any], where: str, kind: str
) -> None:
    node = {"type": "FunLogicNode", "params": {"script": "return msg", **params}}
    needle = rf"nodes\[1\] \(logic\)\.params\.{where}: expected `{kind}` [<>]=?"
    with pytest.raises(FlowError, match=needle):
        validate(logic_flow("l", node))


@pytest.mark.parametrize(
    ("params", "where"),
    [
        ({"fuel": 10**15}, "fuel"),  # a runaway call would hold the event loop for minutes
        ({"fuel": 10}, "fuel"),
        ({"max_memory_kb": 2**40}, "max_memory_kb"),
        ({"max_memory_kb": 1}, "max_memory_kb"),
    ],
)
def test_wasm_limits_are_bounded_at_validation(params: dict[str, Any], where: str) -> None:
    node = {"type": "WASMNode", "params": {"module": "x.wasm", **params}}
    needle = rf"nodes\[1\] \(logic\)\.params\.{where}: expected `int` [<>]="
    with pytest.raises(FlowError, match=needle):
        validate(logic_flow("w", node))


@pytest.mark.asyncio
async def test_runaway_lua_is_cut_off_and_another_flow_keeps_flowing() -> None:
    engine = Engine()
    runaway = {"type": "FunLogicNode", "params": {
        "script": "if data.temp > 100 then while true do end end return msg",
        "instruction_budget": 200_000, "wall_time_ms": 50}}  # fmt: skip
    await engine.deploy(validate(logic_flow("bad", runaway)))
    calm = {"type": "FunLogicNode", "params": {"script": THRESHOLD}}
    other = logic_flow("good", calm)
    other["nodes"][0]["params"] = {"interval": 0.005, "payload": {"temp": 31, "seq": 1}}
    await engine.deploy(validate(other))
    await asyncio.sleep(0.1)
    before = len(COLLECTED["good.out"])
    t0 = time.monotonic()
    for i in range(5):
        engine.inject("bad", "logic", msg(500.0, i))  # each one loops until its budget is spent
        engine.inject("bad", "logic", msg(20.0, i))
        await asyncio.sleep(0.02)
    elapsed = time.monotonic() - t0
    await drain(engine, "bad")
    errors = COLLECTED["bad.err"]
    assert len(errors) == 5 and all(e["error"]["type"] == "LimitExceeded" for e in errors)
    assert [m["payload"]["seq"] for m in COLLECTED["bad.out"]] == [0, 1, 2, 3, 4]
    st = engine.status()["bad"]["nodes"]["logic"]
    assert st["errors"] == 5 and "budget" in st["last_error"]
    assert len(COLLECTED["good.out"]) > before  # the other flow kept going
    assert elapsed < 2.0  # five cut-offs, each bounded by the budget
    await engine.stop()


@pytest.mark.asyncio
async def test_lua_state_survives_a_restart_when_persisted(tmp_path: pathlib.Path) -> None:
    script = "state.n = (state.n or 0) + 1\nreturn {payload = state.n}"
    node = {"type": "FunLogicNode", "params": {"script": script, "persist": True}}
    counts: list[Any] = []
    for _ in range(2):  # the daemon's life twice, on one SQLite file
        db = Database(tmp_path / "ctx.db")
        db.open()
        engine = Engine(Services(store=db))
        keeper = ContextKeeper(db)
        keeper.attach(engine)
        await engine.deploy(validate(logic_flow("p", node)))
        for i in range(3):
            engine.inject("p", "logic", msg(1.0, i))
        await drain(engine, "p")
        counts += [m["payload"] for m in COLLECTED["p.out"]]
        COLLECTED["p.out"].clear()
        await engine.stop()  # retiring the node saves its state
        await db.close()
    assert counts == [1, 2, 3, 4, 5, 6]


@pytest.mark.asyncio
@pytest.mark.parametrize("example", ["wat_wasm", "c_wasm"])
async def test_wasm_node_threshold_in_a_flow(
    example: str, request: pytest.FixtureRequest, tmp_path: pathlib.Path
) -> None:
    module: pathlib.Path = request.getfixturevalue(example)
    engine = Engine(Services(data_dir=tmp_path))
    node = {"type": "WASMNode", "params": {"module": str(module)}}
    await engine.deploy(validate(logic_flow("w", node)))
    engine.inject("w", "logic", {"payload": {"temp": 31.5}, "seq": 7, "topic": "t"})
    engine.inject("w", "logic", {"payload": {"temp": 12.0}, "seq": 8, "topic": "t"})
    engine.inject("w", "logic", {"payload": "not a map with temp", "seq": 9, "topic": "t"})
    await drain(engine, "w")
    assert [(m["payload"], m["seq"]) for m in COLLECTED["w.out"]] == [("on", 7), ("off", 8)]
    (err,) = COLLECTED["w.err"]
    assert err["seq"] == 9 and err["error"]["type"] in ("SandboxError", "WasmError")
    assert (tmp_path / "wasm-cache").is_dir()  # compiled once, cached for the next deploy
    await engine.stop()


@pytest.mark.asyncio
async def test_wasm_runaway_is_cut_by_fuel_and_the_node_serves_on(
    tmp_path: pathlib.Path, chaos_wasm: pathlib.Path
) -> None:
    engine = Engine(Services(data_dir=tmp_path))
    node = {"type": "WASMNode", "params": {"module": str(chaos_wasm), "fuel": 100_000}}
    await engine.deploy(validate(logic_flow("c", node)))
    engine.inject("c", "logic", {"do": 1})  # chaos.wat mode 1: an endless loop
    engine.inject("c", "logic", {"do": 0})  # mode 0: echo
    engine.inject("c", "logic", {"do": 2})  # mode 2: grow memory until refused
    engine.inject("c", "logic", {"do": 0})
    await drain(engine, "c")
    assert [e["error"]["type"] for e in COLLECTED["c.err"]] == ["LimitExceeded", "LimitExceeded"]
    assert "fuel" in COLLECTED["c.err"][0]["error"]["message"]
    assert COLLECTED["c.out"] == [{"do": 0}, {"do": 0}]
    await engine.stop()


@pytest.mark.asyncio
async def test_deleting_a_flow_forgets_its_persisted_state(tmp_path: pathlib.Path) -> None:
    from mechaway.runtime.manager import FlowManager
    from mechaway.store.flows import FlowStore

    script = "state.n = (state.n or 0) + 1\nreturn {payload = state.n}"
    doc = logic_flow("p", {"type": "FunLogicNode", "params": {"script": script, "persist": True}})
    db = Database(tmp_path / "ctx.db")
    db.open()
    engine = Engine(Services(store=db))
    keeper = ContextKeeper(db)
    keeper.attach(engine)
    manager = FlowManager(engine, FlowStore(db))
    manager.on_deleted.append(keeper.forget)
    try:
        for _ in range(2):
            await manager.deploy(doc, "api")
            for i in range(3):
                engine.inject("p", "logic", msg(1.0, i))
            await drain(engine, "p")
            assert [m["payload"] for m in COLLECTED["p.out"]] == [1, 2, 3]  # fresh each time
            COLLECTED["p.out"].clear()
            assert await manager.delete("p")
            rows = db.read("SELECT COUNT(*) FROM node_context WHERE flow_id = 'p'")
            assert rows[0][0] == 0
    finally:
        await engine.stop()
        await db.close()
