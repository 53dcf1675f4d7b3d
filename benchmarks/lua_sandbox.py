"""Per-message cost of the Lua sandbox doing the threshold logic (issue 4 target: <= 8 us).

Measures ``LuaSandbox.call`` end to end: dict -> Lua table, the script under the count
hook, result -> dict. Also: a script returning the whole (nested) message, a drop, the
cost of creating a sandbox, the Lua memory one holds, how long a runaway script runs
before the default budget cuts it, and what the count hook costs a long loop: with any
count hook set, Lua 5.4 traps into luaG_traceexec on every instruction, so a
compute-bound script runs about 2.5x slower than bare Lua (the hook calls themselves,
one per 1000 instructions, add under 10%). Prints one JSON line.
"""

from __future__ import annotations

import contextlib
import json
import time
import timeit
from typing import Any

import lupa.lua54

from mechaway.errors import LimitExceeded
from mechaway.logic.lua import LuaSandbox

THRESHOLD = (
    'if data.temp > 30 then return {payload="on", seq=msg.payload.seq} '
    'else return {payload="off"} end'
)
MSG: dict[str, Any] = {"payload": {"seq": 1, "t": 1.0, "temp": 31.5}, "topic": "x", "ts": 1.0}
RUNS = 100_000
LOOP = "local n = 0 for i = 1, 300000 do n = n + i % 7 end return {payload = n}"


def us_per_call(sandbox: LuaSandbox, msg: dict[str, Any]) -> float:
    best = min(timeit.repeat(lambda: sandbox.call(msg), number=RUNS, repeat=5))
    return round(best / RUNS * 1e6, 2)


def main() -> None:
    figures: dict[str, float] = {}
    sandbox = LuaSandbox(THRESHOLD)
    assert sandbox.call(MSG) == {"payload": "on", "seq": 1}
    figures["lua_call_us_per_msg"] = us_per_call(sandbox, MSG)
    figures["lua_call_whole_msg_us_per_msg"] = us_per_call(LuaSandbox("return msg"), MSG)
    figures["lua_call_drop_us_per_msg"] = us_per_call(LuaSandbox("return nil"), MSG)

    t0 = time.perf_counter()
    for _ in range(20):
        LuaSandbox(THRESHOLD)
    figures["lua_create_ms"] = round((time.perf_counter() - t0) / 20 * 1e3, 2)
    figures["lua_sandbox_kb"] = round(LuaSandbox(THRESHOLD)._lua.get_memory_used() / 1024, 1)

    runaway = LuaSandbox("while true do end")
    t0 = time.perf_counter()
    with contextlib.suppress(LimitExceeded):
        runaway.call(MSG)
    figures["lua_runaway_cut_ms"] = round((time.perf_counter() - t0) * 1e3, 2)

    # the same loop under the sandbox (count hook every 1000 instructions) and bare
    hooked = LuaSandbox(LOOP)
    bare = lupa.lua54.LuaRuntime().eval(f"function() {LOOP} end")
    with_hook = min(timeit.repeat(lambda: hooked.call(MSG), number=20, repeat=5)) / 20
    without = min(timeit.repeat(bare, number=20, repeat=5)) / 20
    figures["lua_hook_overhead_pct"] = round((with_hook / without - 1) * 100, 1)

    print(json.dumps(figures))


if __name__ == "__main__":
    main()
