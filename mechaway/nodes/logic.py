"""User logic nodes: ``FunLogicNode`` (Lua 5.4 sandbox) and ``WASMNode`` (wasmtime sandbox).

Both run on the hot path as pure nodes, bounded per message by an instruction/fuel budget,
a wall-time cap and a memory cap. A message that breaks a limit fails alone: it goes to
the node's ``error`` port and into status, and the node serves the next message.
lupa and wasmtime are imported when a flow uses them, never before.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal

import msgspec
from msgspec import Meta

from mechaway.nodes.base import Message, Node, NodeParams, P, Result
from mechaway.nodes.context import NodeContext
from mechaway.nodes.registry import register_node

if TYPE_CHECKING:
    from mechaway.logic.wasm import WasmSandbox


def _check_ports(ports: list[str]) -> None:
    for p in ports:
        if not p or p in ("out", "error") or not p.replace("_", "").replace("-", "").isalnum():
            raise ValueError(f"bad port name {p!r}")


_PORTS = Meta(
    description="extra output ports the code may return pairs for (out always exists; "
    "names of letters, digits, _ and -, not error)"
)


class FunLogicParams(NodeParams):
    script: Annotated[
        str,
        Meta(
            description="Lua 5.4: sees msg, data (= msg.payload) and state; returns a message, "
            "a list of {port, message} pairs, or nil to drop (compiled at deploy)"
        ),
    ]
    engine: Annotated[
        Literal["lua", "mlua"],
        Meta(description="lua (and the seed's mlua): Lua 5.4 through lupa"),
    ] = "lua"
    ports: Annotated[list[str], _PORTS] = msgspec.field(default_factory=list)
    # the call runs on the event loop: the top bounds keep one runaway script from stalling
    # every flow for more than about a second
    instruction_budget: Annotated[
        int,
        Meta(ge=1000, le=1_000_000_000, description="Lua VM instructions per call, at most"),
    ] = 1_000_000
    wall_time_ms: Annotated[
        float, Meta(gt=0, le=1000, description="wall time per call, at most (milliseconds)")
    ] = 100.0
    max_memory_kb: Annotated[
        int,
        Meta(ge=256, le=256 * 1024, description="memory of the script's data, at most (KiB)"),
    ] = 8 * 1024
    persist: Annotated[
        bool,
        Meta(description="keep the state table across restarts and redeploys (node context)"),
    ] = False

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_ports(self.ports)


@register_node("FunLogicNode")
class FunLogicNode(Node[FunLogicParams]):
    """Run a Lua 5.4 script per message in a sandbox (no os/io/require/load/debug)."""

    stateful: ClassVar[bool] = True

    @classmethod
    def output_ports(cls, params: FunLogicParams) -> tuple[str, ...]:
        return ("out", *params.ports)

    #: sandboxes compiled by ``check`` (validation), reused by the deploy that follows so a
    #: script compiles once per deploy; keyed by the params object, a few at most
    _compiled: ClassVar[dict[int, tuple[Any, Any]]] = {}

    @classmethod
    def check(cls, params: FunLogicParams) -> list[str]:
        from mechaway.logic.lua import LuaCompileError

        try:
            sandbox = cls._sandbox(params, "lua")
        except LuaCompileError as err:
            return [f"script: {err}"]
        while len(cls._compiled) >= 16:
            cls._compiled.pop(next(iter(cls._compiled)))
        cls._compiled[id(params)] = (params, sandbox)
        return []

    @staticmethod
    def _sandbox(params: FunLogicParams, name: str) -> Any:
        from mechaway.logic.lua import LuaSandbox

        return LuaSandbox(
            params.script,
            name=name,
            max_memory=params.max_memory_kb * 1024,
            instruction_budget=params.instruction_budget,
            wall_time_s=params.wall_time_ms / 1000.0,
        )

    def __init__(self, node_id: str, params: FunLogicParams, ctx: NodeContext) -> None:
        super().__init__(node_id, params, ctx)
        cached = self._compiled.pop(id(params), None)
        if cached is not None and cached[0] is params:
            self._lua = cached[1]
        else:
            self._lua = self._sandbox(params, f"{ctx.flow_id}.{node_id}")
        self.process = self._lua.call  # type: ignore[method-assign]

    def process(self, msg: Message) -> Result:  # replaced per instance by the sandbox call
        result: Result = self._lua.call(msg)
        return result

    def get_state(self) -> Any:
        return self._lua.get_state()

    def set_state(self, state: Any) -> None:
        if isinstance(state, dict):
            self._lua.set_state(state)


class WASMParams(NodeParams):
    module: Annotated[
        str, Meta(description="a .wasm file: absolute, or relative to <data_dir>/plugins")
    ]
    codec: Annotated[
        Literal["msgpack", "json"], Meta(description="wire format of messages across the ABI")
    ] = "msgpack"
    init: Annotated[
        dict[str, Any], Meta(description="passed to the module's optional init export")
    ] = msgspec.field(default_factory=dict)
    ports: Annotated[list[str], _PORTS] = msgspec.field(default_factory=list)
    # the top bound keeps one call to about a second of the event loop (a runaway module
    # must not stall every flow for minutes)
    fuel: Annotated[
        int,
        Meta(ge=1000, le=1_000_000_000, description="instructions per call, roughly, at most"),
    ] = 10_000_000
    max_memory_kb: Annotated[
        int,
        Meta(ge=64, le=2 * 1024 * 1024, description="the module's linear memory, at most (KiB)"),
    ] = 16 * 1024

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_ports(self.ports)


def resolve_module(module: str, data_dir: Path) -> Path:
    """Where a ``module`` param points: absolute, or under ``<data_dir>/plugins``."""
    p = Path(module).expanduser()
    return p if p.is_absolute() else data_dir / "plugins" / p


class WasmCallNode(Node[P]):
    """A node whose ``process`` is a WASM sandbox's call: ``WASMNode`` and the node types of
    WASM node packs (``mechaway.nodes.plugins``). Subclasses create ``self._wasm``."""

    _wasm: WasmSandbox

    def process(self, msg: Message) -> Result:  # replaced per instance by the sandbox call
        result: Result = self._wasm.call(msg)
        return result

    async def stop(self) -> None:
        self._wasm.close()


@register_node("WASMNode")
class WASMNode(WasmCallNode[WASMParams]):
    """Run a WebAssembly module's ``process`` per message (fuel and memory capped, no WASI)."""

    @classmethod
    def output_ports(cls, params: WASMParams) -> tuple[str, ...]:
        return ("out", *params.ports)

    def __init__(self, node_id: str, params: WASMParams, ctx: NodeContext) -> None:
        super().__init__(node_id, params, ctx)
        from mechaway.logic.wasm import WasmSandbox

        data_dir = Path(ctx.services.data_dir)
        self._wasm = WasmSandbox(
            resolve_module(params.module, data_dir),
            name=f"{ctx.flow_id}.{node_id}",
            params=params.init,
            codec=params.codec,
            fuel=params.fuel,
            max_memory_bytes=params.max_memory_kb * 1024,
            cache_dir=data_dir / "wasm-cache",
        )
        self.process = self._wasm.call  # type: ignore[method-assign]
