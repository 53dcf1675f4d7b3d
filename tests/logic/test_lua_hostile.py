"""Hostile scripts against the Lua sandbox, each in a subprocess where it could crash.

A child process builds a sandbox, runs the attack through ``LuaSandbox.call`` (or
``get_state``), prints what came out as one JSON line, then proves the same sandbox still
serves a normal message. A segfault, an abort, an OOM kill or a hang fails the test
instead of taking pytest down.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from typing import Any

import pytest

from mechaway.errors import LimitExceeded, SandboxError
from mechaway.logic.lua import LuaSandbox

CHILD = textwrap.dedent(
    """
    import json, sys
    from mechaway.errors import LimitExceeded, SandboxError
    from mechaway.logic.lua import LuaSandbox

    evil, limits, action = json.loads(sys.argv[1])
    sandbox = LuaSandbox(
        "if data.evil then\\n" + evil + "\\nend\\nreturn {payload = data.x + 1}", **limits
    )
    out = {}
    try:
        res = sandbox.call({"payload": {"evil": True, "x": 0}})
        if action == "state":
            res = sandbox.get_state()
        out["ok"] = len(json.dumps(res))
    except LimitExceeded as err:
        out["limit"] = str(err)
    except SandboxError as err:
        out["error"] = str(err)
    out["next"] = sandbox.call({"payload": {"x": 41}})
    # VmHWM, this process's own peak: ru_maxrss also counts the forking parent's RSS
    # (a pytest process grown by a whole suite), which would hide or fake a blow-up
    with open("/proc/self/status") as status:
        hwm = next(line for line in status if line.startswith("VmHWM:"))
    out["rss_mb"] = int(hwm.split()[1]) // 1024
    print(json.dumps(out))
    """
)


def attack(evil: str, action: str = "call", **limits: Any) -> dict[str, Any]:
    """Run ``evil`` in a child process; its report, once it exited cleanly."""
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, json.dumps([evil, limits, action])],
        capture_output=True,
        check=False,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, f"child died ({proc.returncode}): {proc.stderr[-2000:]}"
    out: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["next"] == {"payload": 42}
    return out


# --- one Lua string, many Python strings ------------------------------------------------

BIG = 'local s = ("xxxxxxxxxx"):rep(2e5) '  # 2 MB
AMPLIFIERS = {
    "list of references": BIG + "local t = {} for i = 1, 200 do t[i] = s end return {payload = t}",
    "binary tree of references": BIG
    + "local t = {s} for i = 1, 12 do t = {t, t} end return {payload = t}",
    "flat message": BIG + 'local t = {} for i = 1, 200 do t["k" .. i] = s end return t',
    "keys": BIG + "local t = {} for i = 1, 200 do t[i] = {[s] = 1} end return {payload = t}",
    "ports": BIG + 'local r = {} for i = 1, 200 do r[i] = {"out", {payload = s}} end return r',
}


@pytest.mark.parametrize("evil", AMPLIFIERS.values(), ids=AMPLIFIERS.keys())
def test_a_string_referenced_many_times_cannot_blow_up_the_result(evil: str) -> None:
    # used to: 200 x 2 MB = 400 MB of Python strings (the tree: 8 GB, an OOM kill)
    out = attack(evil)
    assert out.get("error") == "lua: value holds more than 8388608 bytes of strings"
    assert out["rss_mb"] < 200


def test_a_state_referencing_one_string_many_times_cannot_be_saved() -> None:
    out = attack(BIG + "state.t = {} for i = 1, 200 do state.t[i] = s end", action="state")
    assert out.get("error") == (
        "lua: state cannot be saved: value holds more than 8388608 bytes of strings"
    )
    assert out["rss_mb"] < 200


def test_results_within_the_limit_still_come_back() -> None:
    sandbox = LuaSandbox(
        'local s = ("ab"):rep(data.n) return {payload = {s, s, s}, k = s}',
        max_memory=1024 * 1024,
    )
    out = sandbox.call({"payload": {"n": 100_000}})  # 4 x 200 KB: fine under 1 MiB
    assert out == {"payload": ["ab" * 100_000] * 3, "k": "ab" * 100_000}
    with pytest.raises(SandboxError, match="more than 1048576 bytes of strings"):
        sandbox.call({"payload": {"n": 150_000}})  # 4 x 300 KB


# --- nothing of one call stays pinned in memory for the next ------------------------------


@pytest.mark.parametrize("big", ["{payload = s}", "{payload = {s, 1, 2}}", '{{"out", {p = s}}}'])
def test_a_big_result_does_not_stay_pinned_against_the_cap(big: str) -> None:
    # used to: the encoder's buffer kept the 3 MB string, so every later call that
    # needed 4 MB failed the memory cap, forever
    sandbox = LuaSandbox(
        f'if data.big then local s = ("xxxxxxxxxx"):rep(3e5) return {big} end\n'
        'local t = ("yyyyyyyyyy"):rep(3e5) return {payload = #t}'
    )
    assert sandbox.call({"payload": {}}) == {"payload": 3_000_000}
    assert sandbox.call({"payload": {"big": True}}) is not None
    for _ in range(3):
        assert sandbox.call({"payload": {}}) == {"payload": 3_000_000}


# --- Python objects that reach the sandbox in a message -------------------------------------


@pytest.mark.parametrize(
    "evil",
    ["data.x()", "local y = data.x.__class__", "data.x.y = 1", "local f = data.x.__call__"],
)
def test_python_objects_in_a_message_cannot_be_used(evil: str) -> None:
    # used to: a callable in a message (a plugin's, say) could be called from Lua
    calls: list[Any] = []
    sandbox = LuaSandbox(f'if type(data.x) == "userdata" then {evil} end return {{payload = 1}}')
    with pytest.raises(SandboxError, match="Python objects are not accessible"):
        sandbox.call({"payload": {"x": lambda *a: calls.append(a)}})
    assert calls == []
    assert sandbox.call({"payload": {"x": 1}}) == {"payload": 1}


def test_python_objects_show_no_python_text() -> None:
    class Loud:
        def __str__(self) -> str:
            raise AssertionError("str() ran for the sandbox")

    sandbox = LuaSandbox(
        "return {t = type(data.x), s = tostring(data.x), m = getmetatable(data.x)}"
    )
    assert sandbox.call({"payload": {"x": Loud()}}) == {
        "t": "userdata",
        "s": "python object",
        "m": False,
    }


def test_big_integers_still_become_floats_through_lupas_handler() -> None:
    assert LuaSandbox("return {payload = data}").call({"payload": 2**70}) == {
        "payload": float(2**70)
    }


# --- error messages -----------------------------------------------------------------------


def test_a_huge_error_message_is_cut_on_a_character_boundary() -> None:
    sandbox = LuaSandbox('error(("é"):rep(1e6))')
    with pytest.raises(SandboxError) as info:
        sandbox.call({"payload": {}})
    text = str(info.value)
    assert text.startswith("lua: line 1: éé") and text.endswith("é...")
    assert len(text.encode()) < 2100


def test_error_objects_with_hostile_tostring() -> None:
    for evil in (
        "error(setmetatable({}, {__tostring = function() while true do end end}))",
        'error(setmetatable({}, {__tostring = function() error("x") end}))',
    ):
        out = attack(evil)
        assert out.get("error") == "lua: error object is a table value"


# --- C library calls that walk megabytes in one instruction -------------------------------

LINEAR = {
    "upper": "while true do local t = s:upper() end",
    "lower": "while true do local t = s:lower() end",
    "reverse": "while true do local t = s:reverse() end",
    "utf8.len": "while true do local n = utf8.len(s) end",
    "format": 'while true do local t = ("%s"):format(s) end',
    "sub": "while true do local t = s:sub(2) end",
    "pack": 'while true do local t = string.pack("z", s) end',
}


@pytest.mark.parametrize("evil", LINEAR.values(), ids=LINEAR.keys())
def test_linear_c_functions_are_charged_to_the_budget(evil: str) -> None:
    # used to: one instruction each, so ~250,000 calls of a millisecond: minutes with a
    # generous wall-time cap (the hook only looks at the clock every 1000 instructions)
    out = attack(BIG + evil, wall_time_s=600.0)
    assert out.get("limit", "").startswith("lua: instruction budget of 1000000 exceeded")


def test_small_calls_of_wrapped_functions_behave_as_before() -> None:
    sandbox = LuaSandbox(
        'return {a = ("abc"):sub(2), b = ("x"):upper(), c = ("%d-%s"):format(3, "x"), '
        'd = utf8.len("héllo"), e = utf8.char(233, 97), f = #string.pack("i4", 1), '
        'g = ("ab"):reverse(), h = string.lower("AB"), i = select(2, utf8.len("a\\xff"))}'
    )
    assert sandbox.call({"payload": {}}) == {
        "a": "bc", "b": "X", "c": "3-x", "d": 5, "e": "éa", "f": 4, "g": "ba", "h": "ab", "i": 2,
    }  # fmt: skip
    with pytest.raises(SandboxError, match=r"^lua: line 1: bad argument #2 to 'format'"):
        LuaSandbox('string.format("%d", "x")').call({"payload": {}})


# --- crashes that must stay plain errors (pinned) -----------------------------------------

CSTACK = {
    "__index": "local t = setmetatable({}, {}) getmetatable(t).__index = function(s, k) "
    'return s[k .. "x"] end local x = t.a',
    "__add": "local mt = {} mt.__add = function(a, b) return a + b end "
    "local x = setmetatable({}, mt) + 1",
    "__concat": "local mt = {} mt.__concat = function(a, b) return a .. b end "
    'local x = setmetatable({}, mt) .. "x"',
    "__tostring": "local mt = {} mt.__tostring = function(a) return tostring(a) end "
    "local x = tostring(setmetatable({}, mt))",
    "sort comparator": "local function c(a, b) table.sort({3, 2, 1}, c) return a < b end "
    "table.sort({3, 2, 1}, c)",
    "gsub callback": 'local function g(s) return (s:gsub(".", g)) end g("xx")',
    "nested coroutines": "local function f() return coroutine.wrap(f)() end f()",
    "string.format width": 'local s = string.format("%099999999d", 1)',
    "string.pack size": 'local s = string.pack("i17", 1)',
}


@pytest.mark.parametrize("evil", CSTACK.values(), ids=CSTACK.keys())
def test_deep_c_recursion_and_bad_formats_are_plain_errors(evil: str) -> None:
    out = attack(evil)
    assert "error" in out or "limit" in out, out
    assert len(out.get("error", "")) < 2100


def test_hostile_metatables_on_the_result_are_not_run() -> None:
    out = attack(
        "return setmetatable({payload = 7}, {__pairs = function() while true do end end, "
        "__index = function() while true do end end, __len = function() while true do end end})"
    )
    assert out.get("ok") == len(json.dumps({"payload": 7}))


def test_limit_errors_are_limit_exceeded() -> None:
    with pytest.raises(LimitExceeded):
        LuaSandbox(BIG + "while true do local t = s:upper() end").call({"payload": {}})
