"""Per-message cost of a Lua and a WASM logic node doing the threshold logic inside a flow.

Each figure is (time per message through inject -> LOGIC -> pass) minus (time per message
through inject -> pass -> pass): the node's own cost, conversions and budget included.
Prints one JSON line: ``lua_node_us_per_msg``, ``wasm_node_us_per_msg`` (WAT example),
``wasm_c_node_us_per_msg`` (C example, when clang is installed).

Run: python benchmarks/logic_nodes.py
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import uvloop
import wasmtime

import mechaway.testing.nodes  # noqa: F401  (PassNode)
from mechaway.flow.validate import validate
from mechaway.nodes.context import Services
from mechaway.runtime.engine import Engine

SRC = Path(__file__).resolve().parents[1] / "tests" / "wasm_src"
N = 100_000
LUA = 'if data.temp > 30 then return {payload = "on", seq = msg.seq} end\n' \
      'return {payload = "off", seq = msg.seq}'  # fmt: skip


def flow(fid: str, node: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": fid,
        "nodes": [
            {"id": "src", "type": "InjectNode", "params": {"once": True, "once_delay": 3600}},
            {**node, "id": "logic"},
            {"id": "end", "type": "PassNode"},
        ],
        "edges": [{"from": "src", "to": "logic"}, {"from": "logic", "to": "end"}],
    }


def build_modules(tmp: Path) -> dict[str, Path]:
    out = {"wasm": tmp / "threshold-wat.wasm"}
    out["wasm"].write_bytes(wasmtime.wat2wasm((SRC / "threshold.wat").read_text()))
    clang = shutil.which("clang")
    if clang:
        out["wasm_c"] = tmp / "threshold-c.wasm"
        subprocess.run(
            [clang, "--target=wasm32", "-O2", "-ffreestanding", "-nostdlib", "-fno-builtin",
             "-Wl,--no-entry", "-o", str(out["wasm_c"]), str(SRC / "threshold.c")],
            check=True,
        )  # fmt: skip
    return out


async def per_msg_ns(engine: Engine, fid: str) -> float:
    emit = engine.flows[fid].routers["src"].emit
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter_ns()
        for i in range(N):
            emit({"payload": {"temp": 20.0 + (i % 20)}, "seq": i, "topic": "t", "ts": 0.0})
        best = min(best, (time.perf_counter_ns() - t0) / N)
    return best


async def main() -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        modules = build_modules(Path(tmp))
        engine = Engine(Services(data_dir=Path(tmp)))
        nodes: dict[str, dict[str, Any]] = {
            "base": {"type": "PassNode"},
            "lua": {"type": "FunLogicNode", "params": {"script": LUA}},
        }
        for name, path in modules.items():
            nodes[name] = {"type": "WASMNode", "params": {"module": str(path)}}
        cost: dict[str, float] = {}
        for name, node in nodes.items():
            await engine.deploy(validate(flow(name, node)))
            cost[name] = await per_msg_ns(engine, name)
            st = engine.status()[name]["nodes"]["logic"]
            assert st["errors"] == 0 and st["out"] == st["in"], st
        await engine.stop()
    return {
        f"{name}_node_us_per_msg": round((ns - cost["base"]) / 1000, 2)
        for name, ns in cost.items()
        if name != "base"
    }


if __name__ == "__main__":
    print(json.dumps(uvloop.run(main())))
