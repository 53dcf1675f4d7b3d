"""Our Lua lives in .lua files shipped as package data, loaded under its own path as chunk
name: an error in it names a real file and line; a user script keeps its own lines."""

from __future__ import annotations

from importlib import resources

import pytest

from mechaway.errors import SandboxError
from mechaway.logic import lua as lua_mod
from mechaway.logic.lua import LuaSandbox


def test_the_bootstrap_is_the_packaged_file() -> None:
    path = resources.files("mechaway.logic") / "lua" / "sandbox.lua"
    assert path.is_file()
    assert lua_mod._bootstrap() == path.read_text(encoding="utf-8")
    assert lua_mod._BOOTSTRAP_CHUNK == "@mechaway/logic/lua/sandbox.lua"
    python_side = resources.files("mechaway.logic").joinpath("lua.py").read_text()
    assert "local function" not in python_side  # no Lua left in a Python string


def test_lua_positions_in_the_bootstrap_are_lines_of_the_file() -> None:
    from lupa import lua54

    source = lua_mod._bootstrap()
    lines = source.splitlines()
    setup_line = next(i for i, ln in enumerate(lines, 1) if ln.startswith("return function("))
    runtime = lua54.LuaRuntime(register_eval=False)
    getinfo = runtime.eval("debug.getinfo")  # before the bootstrap strips the globals
    setup = runtime.execute(source, name=lua_mod._BOOTSTRAP_CHUNK)
    info = getinfo(setup, "S")
    assert info["source"] == lua_mod._BOOTSTRAP_CHUNK
    assert info["short_src"] == "mechaway/logic/lua/sandbox.lua"
    assert info["linedefined"] == setup_line
    # an error raised by our own Lua code names the file and the line it is on
    with pytest.raises(lua54.LuaError, match=r"^mechaway/logic/lua/sandbox\.lua:(\d+): ") as exc:
        setup(None)  # load(nil): the first line of the setup function that uses the script
    line = int(str(exc.value).split(":")[1])
    assert "load(script" in lines[line - 1]


def test_a_user_script_keeps_its_own_line_numbers() -> None:
    sandbox = LuaSandbox("local a = 1\nlocal b = 2\nreturn {payload = a .. nil}", name="f.n")
    with pytest.raises(SandboxError, match=r"^f\.n: line 3: attempt to concatenate a nil value"):
        sandbox.call({"payload": 1})
    # an error raised inside one of our wrappers is moved to the user's line, as before
    sandbox = LuaSandbox('\n\nreturn {payload = ("x"):rep("a")}', name="f.n")
    with pytest.raises(SandboxError, match=r"^f\.n: line 3: bad argument #2 to 'rep'"):
        sandbox.call({"payload": 1})
