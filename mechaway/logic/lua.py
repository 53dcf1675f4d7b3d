"""Lua sandbox for logic nodes: user scripts on lupa's Lua 5.4 runtime, fenced in.

One :class:`LuaSandbox` owns one ``LuaRuntime`` (so the memory cap is per node) and one
compiled script. Per call the script sees ``msg``, ``data`` (= ``msg.payload``) and a
persistent ``state`` table and returns a message, a list of ``{port, message}`` pairs
or nil. Limits per call: an instruction budget (a count hook that ``pcall`` cannot
swallow, also set inside every coroutine), a wall-time cap and a memory cap.

Why the insides look as they do:

* LuaJIT is out: its compiled loops ignore count hooks. Lua 5.4 it is.
* User code is loaded as text into its own environment, never the runtime's globals;
  lupa's ``python`` module, ``load``, ``debug`` etc. are stripped from the runtime too.
* Strings share one metatable: its ``__index`` is pointed at the sandbox's ``string``
  table (no ``dump``) and hidden behind ``__metatable``.
* A count hook only fires between VM instructions, so C library calls that can loop
  for long in one instruction are wrapped: ``string.rep`` and the ``table`` functions
  charge their loop length to the budget; pattern functions estimate their worst case
  and, past a threshold, run on a Lua port of the 5.4 matcher that the hook can stop
  (``("a"):rep(1e6):find(".-b")`` is quadratic in C: hours).
* An error raised in a hook leaves hooks disabled in that thread until a pcall boundary
  restores them. Hence: once a limit is hit, the user's ``xpcall`` handler is skipped,
  coroutine bodies run under a pcall of their own (their ``__close`` handlers run after
  death), and the hook fires on every instruction until the call is over.
* Python -> Lua: ``table_from(recursive=True)`` (1.3 us for the threshold message,
  faster than any Lua-side builder tried). lupa does it through unprotected Lua API
  calls, where a refused allocation is a Lua panic (process abort), so the memory cap
  is lifted while it runs. Lua -> Python: a Lua encoder flattens the result into one
  tuple of scalars, decoded here; it runs under the budget and uses raw accesses only
  (no user metamethods). The whole threshold call costs about 4 us on the dev machine.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from importlib import resources
from time import monotonic
from typing import Any, Final

from mechaway.errors import LimitExceeded, SandboxError

__all__ = ["LuaCompileError", "LuaSandbox"]

_HOOK_EVERY: Final = 1000
"""The count hook fires every this many VM instructions (~2 us here); it then checks
the budget and the wall clock."""

_CHUNK: Final = 4096
"""Results with more tokens than this are fetched from Lua in pieces (stack size)."""

_PATTERN_STEPS: Final = 1e6
"""Worst-case matcher steps (~4.5 ns each here) above which a pattern call runs on the
Lua port of the matcher, where the budget applies, instead of the C one."""

_MAX_DEPTH: Final = 64
_MAX_TOKENS: Final = 2_000_000

# Every answer from the Lua side is a tuple whose LAST item is one of these.
_CHUNKED: Final = -1  # (total, -1): fetch the tokens in pieces, then read again
_DROP: Final = 0  # (false, 0)
_MESSAGE: Final = 1  # (tokens of one value..., 1)
_PORTS: Final = 2  # (count, port, tokens..., port, tokens..., 2)
_ERROR: Final = 3  # (message, 3)
_LIMIT: Final = 4  # (kind, line or None, 4)
_FLAT: Final = 5  # (key, value, key, value, ..., 5): a message of scalars, the common case


class LuaCompileError(SandboxError):
    """A Lua script does not compile; ``line`` is the Lua line number when known."""

    def __init__(self, message: str, line: int | None = None) -> None:
        super().__init__(message)
        self.line = line


class LuaSandbox:
    """One compiled Lua script in its own runtime, called once per message."""

    __slots__ = (
        "_abort",
        "_budget",
        "_cap",
        "_fetch",
        "_get_state",
        "_lua",
        "_lua_error",
        "_max_memory",
        "_memory_error",
        "_name",
        "_pos_re",
        "_run",
        "_set_max_memory",
        "_set_state",
        "_table_from",
        "_wall_time_s",
    )

    def __init__(
        self,
        script: str,
        *,
        name: str = "lua",
        max_memory: int = 8 * 1024 * 1024,
        instruction_budget: int = 1_000_000,
        wall_time_s: float = 0.1,
    ) -> None:
        if max_memory < 64 * 1024:
            raise ValueError(f"max_memory must be at least 64 KiB, got {max_memory}")
        if instruction_budget < 1:
            raise ValueError(f"instruction_budget must be positive, got {instruction_budget}")
        if not wall_time_s > 0:
            raise ValueError(f"wall_time_s must be positive, got {wall_time_s}")
        # Imported here: lupa costs memory that flows without Lua nodes should not pay.
        from lupa import lua54

        self._name = name
        self._max_memory = max_memory
        self._budget = instruction_budget
        self._wall_time_s = wall_time_s
        self._pos_re = re.compile(re.escape(name) + r":(\d+): (.*)", re.DOTALL)
        self._lua_error: type[Exception] = lua54.LuaError
        self._memory_error: type[Exception] = lua54.LuaMemoryError
        lua = lua54.LuaRuntime(
            register_eval=False,
            register_builtins=False,
            unpack_returned_tuples=False,
            attribute_filter=_deny_attribute,
            overflow_handler=float,
            max_memory=0,  # the counting allocator, no limit yet: see below
        )
        self._lua: Any = lua
        setup = lua.execute(_bootstrap(), name=_BOOTSTRAP_CHUNK)
        ok, *funcs = setup(
            script,
            name,
            instruction_budget,
            min(_HOOK_EVERY, instruction_budget),
            monotonic,
            max_memory,
            _MAX_DEPTH,
            _MAX_TOKENS,
            _CHUNK,
            _PATTERN_STEPS,
        )
        if not ok:
            raise self._compile_error(str(funcs[0]))
        self._run, self._fetch, self._get_state, self._set_state, self._abort = funcs
        self._table_from = lua.table_from
        # The cap is for the script's data: the sandbox's own tables (about 90 KB) and the
        # compiled script do not count.
        self._cap = max_memory + lua.get_memory_used()
        self._set_max_memory = lua.set_max_memory
        self._set_max_memory(self._cap)

    @property
    def name(self) -> str:
        """The name used as Lua chunk name and in every error message."""
        return self._name

    def call(self, msg: dict[str, Any]) -> dict[str, Any] | list[tuple[str, dict[str, Any]]] | None:
        """Run the script on ``msg``: a message, ``[(port, message), ...]`` or None (drop).

        Raises :class:`LimitExceeded` past the instruction budget, the wall-time cap or the
        memory cap, and :class:`SandboxError` for any other failure; the sandbox stays usable.
        """
        try:
            res = self._run(self._to_lua(msg), monotonic() + self._wall_time_s)
            status = res[-1]
            if status == _FLAT:
                pairs = iter(res)
                return dict(zip(pairs, pairs, strict=False))  # drops the odd trailing status
            if status == _CHUNKED:
                res = self._fetch_all(res[0])
                status = res[-1]
        except self._memory_error as err:
            self._abort()
            self._lua.gccollect()
            raise self._limit("memory", None) from err
        except self._lua_error as err:
            kind, line = self._abort()
            if kind:
                raise self._limit(kind, line) from err
            raise self._runtime_error(str(err)) from err
        except UnicodeDecodeError as err:
            raise SandboxError(f"{self._name}: returned a string that is not valid UTF-8") from err
        except (TypeError, OverflowError) as err:  # a message that is not plain JSON-like data
            raise SandboxError(f"{self._name}: message cannot be converted to Lua: {err}") from err
        if status == _DROP:
            return None
        if status == _MESSAGE:
            value = _decode(iter(res).__next__)
            if type(value) is not dict:
                raise SandboxError(
                    f"{self._name}: script returned a list; expected a message table, "
                    "a list of {port, message} pairs, or nil"
                )
            return value
        if status == _PORTS:
            return self._decode_ports(res)
        if status == _LIMIT:
            if res[0] == "memory":
                self._lua.gccollect()
            raise self._limit(res[0], res[1])
        raise self._runtime_error(res[0])

    def get_state(self) -> dict[str, Any]:
        """A JSON-compatible copy of the script's ``state`` table (for persistence)."""
        try:
            res = self._get_state()
            if res[-1] == _CHUNKED:
                res = self._fetch_all(res[0])
        except self._memory_error as err:
            self._lua.gccollect()
            raise self._limit("memory", None) from err
        except UnicodeDecodeError as err:
            raise SandboxError(
                f"{self._name}: state holds a string that is not valid UTF-8"
            ) from err
        if res[-1] != _MESSAGE:
            if res[-1] == _LIMIT:
                raise self._limit(res[0], res[1])
            raise SandboxError(f"{self._name}: state cannot be saved: {res[0]}")
        value = _decode(iter(res).__next__)
        if type(value) is not dict:  # a state used as an array: keys become strings, as in JSON
            value = {str(i): v for i, v in enumerate(value, 1)}
        return value

    def set_state(self, state: dict[str, Any]) -> None:
        """Replace the script's ``state`` table by a copy of ``state``.

        A state that does not fit in the memory cap is refused and the old one kept.
        """
        if not isinstance(state, dict):
            raise TypeError(f"state must be a dict, got {type(state).__name__}")
        try:
            table = self._to_lua(state)
        except (TypeError, OverflowError) as err:
            raise SandboxError(f"{self._name}: state cannot be converted to Lua: {err}") from err
        if self._lua.get_memory_used() > self._cap:
            del table
            self._lua.gccollect()
            raise LimitExceeded(
                f"{self._name}: memory cap of {self._max_memory} bytes exceeded by the state"
            )
        self._set_state(table)

    # -- insides ---------------------------------------------------------------------------

    def _to_lua(self, value: dict[str, Any]) -> Any:
        """Python dict -> Lua table, with the memory cap lifted meanwhile.

        lupa builds the table through unprotected Lua API calls: an allocation refused there
        is a Lua panic, which aborts the whole process. A script that filled its memory must
        fail its next call with LimitExceeded, not take the daemon down.
        """
        self._set_max_memory(0)
        try:
            return self._table_from(value, recursive=True)
        finally:
            self._set_max_memory(self._cap)

    def _fetch_all(self, total: int) -> tuple[Any, ...]:
        parts: list[Any] = []
        for start in range(1, total + 1, _CHUNK):
            part = self._fetch(start, min(start + _CHUNK - 1, total))
            if type(part) is tuple:
                parts.extend(part)
            else:
                parts.append(part)
        return tuple(parts)

    def _decode_ports(self, res: tuple[Any, ...]) -> list[tuple[str, dict[str, Any]]]:
        nxt = iter(res).__next__
        out: list[tuple[str, dict[str, Any]]] = []
        for index in range(1, nxt() + 1):
            port = nxt()
            message = _decode(nxt)
            if type(message) is not dict:
                raise SandboxError(
                    f"{self._name}: return value item {index}: the message is a list, not a table"
                )
            out.append((port, message))
        return out

    def _limit(self, kind: str, line: int | None) -> LimitExceeded:
        where = f" at line {line}" if line else ""
        if kind == "budget":
            text = f"instruction budget of {self._budget} exceeded{where}"
        elif kind == "time":
            text = f"wall time cap of {self._wall_time_s * 1000:g} ms exceeded{where}"
        else:
            text = f"memory cap of {self._max_memory} bytes exceeded{where}"
        return LimitExceeded(f"{self._name}: {text}")

    def _runtime_error(self, text: str) -> SandboxError:
        match = self._pos_re.match(text)
        if match:
            return SandboxError(f"{self._name}: line {match.group(1)}: {match.group(2)}")
        return SandboxError(f"{self._name}: {text}")

    def _compile_error(self, text: str) -> LuaCompileError:
        match = self._pos_re.match(text)
        if match:
            line = int(match.group(1))
            return LuaCompileError(f"{self._name}: line {line}: {match.group(2)}", line)
        return LuaCompileError(f"{self._name}: {text}")


def _deny_attribute(obj: object, attr_name: object, is_setting: bool) -> object:
    """lupa attribute filter: Lua code gets no attribute of any Python object."""
    raise AttributeError("Python attributes are not accessible from the Lua sandbox")


def _decode(nxt: Callable[[], Any]) -> Any:
    """Rebuild one value from the encoder's tokens (None opens a table; count > 0: list)."""
    value = nxt()
    if value is not None:
        return value
    count: int = nxt()
    if count > 0:
        return [_decode(nxt) for _ in range(count)]
    return {nxt(): _decode(nxt) for _ in range(-count)}


#: The trusted bootstrap, a Lua file shipped as package data: its chunk name is its path in
#: the package, so an error in it names a real file and line.
_BOOTSTRAP_FILE: Final = "lua/sandbox.lua"
_BOOTSTRAP_CHUNK: Final = "@mechaway/logic/lua/sandbox.lua"


@functools.cache
def _bootstrap() -> str:
    """The bootstrap's source, read once per process."""
    return (resources.files(__package__) / _BOOTSTRAP_FILE).read_text(encoding="utf-8")
