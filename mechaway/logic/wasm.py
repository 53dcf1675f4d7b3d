"""WASM sandbox for logic nodes: one wasmtime instance behind the ABI in WASM-ABI.md.

A module gets no imports at all (no WASI: no filesystem, clock or network), a fuel
budget per call and a cap on its linear memory. Messages cross as msgpack (default) or
JSON bytes in linear memory. Calls go through wasmtime's *unchecked* raw call, because
``Func.__call__`` rebuilds the function type on every call (~50 us against ~1 us);
export signatures are checked once at load, which is what makes the raw call safe.

wasmtime is imported on first use: importing this module costs nothing on a Pi that
never runs WASM (armv7 has no wasmtime wheel at all).
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import pathlib
import platform
import stat
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, TypeAlias

from mechaway.errors import LimitExceeded, SandboxError
from mechaway.files import read_capped

if TYPE_CHECKING:
    import wasmtime

__all__ = [
    "CODECS",
    "MAX_MODULE_BYTES",
    "CompiledModule",
    "Output",
    "WasmLoadError",
    "WasmSandbox",
    "load_module",
]

log = logging.getLogger(__name__)

Output: TypeAlias = dict[str, Any] | list[tuple[str, dict[str, Any]]] | None
"""What ``WasmSandbox.call`` returns: drop, one message, or (port, message) pairs."""

CODECS: Final = ("msgpack", "json")

_PAGE: Final = 65536
_MAX_MEMORY: Final = 2**31  # packed pointers must stay below bit 31 (bit 63 = error)
_MIN_INPUT_BUFFER: Final = 1024
_TABLE_ELEMENTS: Final = 65536  # 8 bytes each: bounds what tables can take outside memory
_U32: Final = 0xFFFF_FFFF
_PACKED: Final = (1 << 63) - 1  # a result without its error bit
MAX_MODULE_BYTES: Final = 32 * 1024 * 1024
"""Largest module file (binary or WAT text) read from disk."""
_MAX_CACHE_BYTES: Final = 256 * 1024 * 1024  # a serialized module, native code included
# A cache file: magic, sha256 of the wasm it was compiled from, sha256 of the payload
# (wasmtime's serialized module), payload. wasmtime checks version and settings but not
# integrity: a truncated, bit-rotten or misplaced file must never reach it.
_CACHE_MAGIC: Final = b"mechaway-cwasm1\n"
_CACHE_HEADER: Final = len(_CACHE_MAGIC) + 64
_CACHE_MAX_FILES: Final = 64  # every new module version adds one: the oldest go

# (params, results) of every export the ABI knows; "memory" is checked separately
_REQUIRED: Final = {"alloc": (("i32",), ("i32",)), "process": (("i32", "i32"), ("i64",))}
_OPTIONAL: Final = {"init": (("i32", "i32"), ("i64",)), "dealloc": (("i32", "i32"), ())}


class WasmLoadError(SandboxError):
    """A module cannot be used: not WASM, imports, missing or mistyped exports, init failed."""


# --- the process-wide wasmtime runtime ----------------------------------------------


@dataclass(frozen=True, slots=True)
class _Runtime:
    """One engine per process plus private ctypes bindings for the hot path.

    The bindings are fresh function objects (``dll[name]``), so giving them our own
    restype/argtypes does not change the ones wasmtime-py itself uses.
    """

    engine: wasmtime.Engine
    version: str
    cache_tag: str  # changes whenever compiled code could differ
    call_unchecked: Callable[[int, int, int, int, int], int | None]
    set_fuel: Callable[[int, int], int | None]
    memory_data: Callable[[int, int], int | None]
    memory_size: Callable[[int, int], int]


_runtime_lock = threading.Lock()
_runtime: _Runtime | None = None


def _get_runtime() -> _Runtime:
    global _runtime
    with _runtime_lock:
        if _runtime is None:
            _runtime = _make_runtime()
        return _runtime


def _make_runtime() -> _Runtime:
    import importlib.metadata

    import wasmtime
    from wasmtime import _ffi

    config = wasmtime.Config()
    config.consume_fuel = True
    # Proposals that would let a module hold memory outside the one capped linear
    # memory, or break the 32-bit pointer packing of the ABI.
    config.wasm_threads = False
    config.shared_memory = False
    config.wasm_multi_memory = False
    config.wasm_memory64 = False
    config.wasm_custom_page_sizes = False
    config.wasm_gc = False
    config.wasm_component_model = False
    settings = "fuel;no-threads,shared-memory,multi-memory,memory64,custom-pages,gc,cm"

    def bind(name: str, restype: Any, *argtypes: Any) -> Any:
        fn = _ffi.dll[name]
        fn.restype = restype
        fn.argtypes = list(argtypes)
        return fn

    vp, size_t = ctypes.c_void_p, ctypes.c_size_t
    version = importlib.metadata.version("wasmtime")
    return _Runtime(
        engine=wasmtime.Engine(config),
        version=version,
        cache_tag=f"wasmtime-{version};{platform.machine()};{settings}",
        call_unchecked=bind("wasmtime_func_call_unchecked", vp, vp, vp, vp, size_t, vp),
        set_fuel=bind("wasmtime_context_set_fuel", vp, vp, ctypes.c_uint64),
        memory_data=bind("wasmtime_memory_data", vp, vp, vp),
        memory_size=bind("wasmtime_memory_data_size", size_t, vp, vp),
    )


# --- codecs -----------------------------------------------------------------------------


def _codec(codec: str) -> tuple[Callable[[Any], bytes], Callable[[bytes], Any]]:
    if codec == "msgpack":
        import msgpack  # type: ignore[import-untyped,unused-ignore]

        packer = msgpack.Packer(use_bin_type=True)

        def unpack(data: bytes) -> Any:
            return msgpack.unpackb(data, raw=False, strict_map_key=True)

        return packer.pack, unpack
    if codec == "json":
        import orjson

        return orjson.dumps, orjson.loads
    raise WasmLoadError(f"unknown codec {codec!r}: expected one of {', '.join(CODECS)}")


# --- loading ----------------------------------------------------------------------------


def _read_module(module: bytes | str | pathlib.Path, name: str) -> tuple[bytes, str]:
    """The binary WASM of ``module`` (bytes, or a path to a .wasm/.wat file) and a label."""
    import wasmtime

    if isinstance(module, bytes | bytearray):
        data, origin = bytes(module), "<bytes>"
    else:
        path = pathlib.Path(module)
        try:
            data = read_capped(path, MAX_MODULE_BYTES)
        except OSError as err:
            reason = err.strerror or str(err)
            raise WasmLoadError(f"{name}: cannot read WASM module {path}: {reason}") from err
        origin = str(path)
    label = f"{name} ({origin})"
    if data.startswith(b"\0asm"):
        return data, label
    try:
        return bytes(wasmtime.wat2wasm(data)), label
    except (wasmtime.WasmtimeError, UnicodeDecodeError) as err:
        reason = _first_line(err)
        raise WasmLoadError(f"{label}: neither a WASM binary nor valid WAT text: {reason}") from err


def _compile(
    rt: _Runtime, wasm: bytes, origin: str, cache_dir: pathlib.Path | None
) -> tuple[wasmtime.Module, pathlib.Path | None, bool]:
    """Compile ``wasm``, or load it from ``cache_dir``; returns (module, cache file, hit)."""
    import wasmtime

    path, digest = None, b""
    if cache_dir is not None:
        digest = hashlib.sha256(wasm).digest()
        tag = hashlib.sha256(rt.cache_tag.encode()).hexdigest()[:12]
        path = cache_dir / f"{digest.hex()}-wasmtime{rt.version}-{tag}.cwasm"
        payload = _read_cache(path, digest)
        if payload is not None:
            try:
                return wasmtime.Module.deserialize(rt.engine, payload), path, True
            except wasmtime.WasmtimeError as err:
                log.warning("wasm cache %s unusable, recompiling: %s", path, _first_line(err))
    try:
        module = wasmtime.Module(rt.engine, wasm)
    except wasmtime.WasmtimeError as err:
        raise WasmLoadError(f"{origin}: not a valid WASM module: {_first_line(err)}") from err
    if path is not None:
        _write_cache(path, digest, module)
    return module, path, False


def _read_cache(path: pathlib.Path, wasm_digest: bytes) -> bytes | None:
    """The serialized module stored for ``wasm_digest``, or None (absent or unusable).

    wasmtime runs a deserialized module's native code without validating it, so only a
    regular file that this user owns and nobody else may write, whose header names the
    same wasm and whose payload matches its digest, is handed over.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as err:
        log.warning("wasm cache %s unusable, recompiling: %s", path, err.strerror or err)
        return None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(fd)
        problem = ""
        if not stat.S_ISREG(st.st_mode):
            problem = "not a regular file"
        elif st.st_uid != os.geteuid() or st.st_mode & 0o022:
            problem = "not owned by this user, or writable by others"
        elif not _CACHE_HEADER < st.st_size <= _MAX_CACHE_BYTES:
            problem = f"implausible size {st.st_size}"
        if problem:
            log.warning("wasm cache %s unusable, recompiling: %s", path, problem)
            return None
        try:
            data = f.read(_MAX_CACHE_BYTES + 1)
        except OSError as err:
            log.warning("wasm cache %s unusable, recompiling: %s", path, err.strerror or err)
            return None
    magic, rest = data[: len(_CACHE_MAGIC)], data[len(_CACHE_MAGIC) :]
    payload = rest[64:]
    if magic != _CACHE_MAGIC or rest[:32] != wasm_digest:
        problem = "not a mechaway cache file for this module"
    elif hashlib.sha256(payload).digest() != rest[32:64]:
        problem = "truncated or corrupted (digest mismatch)"
    if problem:
        log.warning("wasm cache %s unusable, recompiling: %s", path, problem)
        return None
    return payload


def _write_cache(path: pathlib.Path, wasm_digest: bytes, module: wasmtime.Module) -> None:
    """Atomically store the serialized module; the cache is only an optimisation."""
    import wasmtime

    try:
        payload = module.serialize()
    except wasmtime.WasmtimeError as err:
        log.warning("cannot serialize for the wasm cache %s: %s", path, _first_line(err))
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".cwasm")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(_CACHE_MAGIC + wasm_digest + hashlib.sha256(payload).digest())
                f.write(payload)
            os.replace(tmp, path)
        except BaseException:
            os.unlink(tmp)
            raise
    except OSError as err:
        log.warning("cannot write wasm cache %s: %s", path, err)
        return
    _prune_cache(path.parent)


def _prune_cache(cache_dir: pathlib.Path) -> None:
    """Keep the newest ``_CACHE_MAX_FILES`` cache files: modules that are rewritten again
    and again (hot-reloaded packs, wasmtime upgrades) must not fill the disk."""
    try:
        files, stale = [], time.time_ns() - 3600 * 10**9  # a write killed midway
        for entry in os.scandir(cache_dir):
            if not entry.name.endswith(".cwasm") or not entry.is_file(follow_symlinks=False):
                continue
            mtime = entry.stat(follow_symlinks=False).st_mtime_ns
            if not entry.name.startswith(".tmp-"):
                files.append((mtime, entry.path))
            elif mtime < stale:
                os.unlink(entry.path)
        files.sort(reverse=True)
        for _, old in files[_CACHE_MAX_FILES:]:
            os.unlink(old)
    except OSError as err:
        log.warning("cannot prune wasm cache %s: %s", cache_dir, err)


def _check_module(module: wasmtime.Module, origin: str, max_memory_bytes: int) -> set[str]:
    """Reject imports and mistyped exports; returns the names of the exports present."""
    import wasmtime

    imports = [f"{i.module}.{i.name}" for i in module.imports]
    if imports:
        raise WasmLoadError(
            f"{origin}: the module imports {', '.join(imports)}; mechaway provides no "
            "imports (no WASI, no host functions): build it freestanding"
        )
    exports = {e.name: e.type for e in module.exports}
    memory = exports.get("memory")
    if not isinstance(memory, wasmtime.MemoryType):
        raise WasmLoadError(f"{origin}: the module must export its linear memory as 'memory'")
    if memory.limits.min * _PAGE > max_memory_bytes:
        raise WasmLoadError(
            f"{origin}: the module needs {memory.limits.min * _PAGE} bytes of memory at start, "
            f"more than max_memory_bytes={max_memory_bytes}"
        )
    present = set()
    for table, required in ((_REQUIRED, True), (_OPTIONAL, False)):
        for name, (params, results) in table.items():
            ty = exports.get(name)
            if ty is None and not required:
                continue
            want = f"({', '.join(params)}) -> ({', '.join(results)})"
            if not isinstance(ty, wasmtime.FuncType):
                raise WasmLoadError(f"{origin}: the module must export a function {name}{want}")
            got = (tuple(str(p) for p in ty.params), tuple(str(r) for r in ty.results))
            if got != (params, results):
                have = f"({', '.join(got[0])}) -> ({', '.join(got[1])})"
                raise WasmLoadError(f"{origin}: export {name} must be {want}, is {have}")
            present.add(name)
    return present


def _first_line(err: BaseException) -> str:
    return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__


def _trap_reason(trap: wasmtime.Trap) -> str:
    """The cause of a trap without wasmtime's backtrace ("wasm trap: ..." line)."""
    lines = [line.strip() for line in str(trap).strip().splitlines() if line.strip()]
    reason = lines[-1] if lines else "trap"
    return reason.removeprefix("wasm trap: ")


def _instantiate(
    rt: _Runtime, module: wasmtime.Module, name: str, fuel: int, max_memory_bytes: int
) -> tuple[wasmtime.Store, wasmtime.Instance]:
    """A fresh store under the limits, and the module instantiated in it (start included)."""
    import wasmtime

    store = wasmtime.Store(rt.engine)
    store.set_limits(
        memory_size=max_memory_bytes,
        table_elements=_TABLE_ELEMENTS,
        instances=1,
        memories=1,
    )
    store.set_fuel(fuel)  # a start function runs during instantiation
    try:
        return store, wasmtime.Instance(store, module, [])
    except wasmtime.Trap as err:
        reason = _trap_reason(err)
        raise WasmLoadError(f"{name}: start function trapped: {reason}") from err
    except wasmtime.WasmtimeError as err:
        raise WasmLoadError(f"{name}: cannot instantiate: {_first_line(err)}") from err


@dataclass(frozen=True, slots=True)
class CompiledModule:
    """A module read, compiled (or loaded from the cache) and checked against the ABI once,
    ready for any number of sandboxes: ``WasmSandbox(compiled, ...)`` only instantiates."""

    module: wasmtime.Module
    label: str
    cache_path: pathlib.Path | None
    from_cache: bool


def load_module(
    module: bytes | str | pathlib.Path,
    *,
    name: str = "wasm",
    fuel: int = 10_000_000,
    max_memory_bytes: int = 16 * 1024 * 1024,
    cache_dir: pathlib.Path | None = None,
) -> CompiledModule:
    """Read, compile and check ``module``, and instantiate it once under the limits (its
    start function runs on ``fuel``), so that every load-time fault is a WasmLoadError
    here and not at the first sandbox. Blocking: compiling takes milliseconds to seconds.
    """
    _check_limits(name, fuel, max_memory_bytes)
    rt = _get_runtime()
    wasm, label = _read_module(module, name)
    compiled, cache_path, hit = _compile(rt, wasm, label, cache_dir)
    _check_module(compiled, label, max_memory_bytes)
    _instantiate(rt, compiled, name, fuel, max_memory_bytes)
    return CompiledModule(compiled, label, cache_path, hit)


def _check_limits(name: str, fuel: int, max_memory_bytes: int) -> None:
    if fuel <= 0:
        raise WasmLoadError(f"{name}: fuel must be positive, got {fuel}")
    if not _PAGE <= max_memory_bytes <= _MAX_MEMORY:
        raise WasmLoadError(
            f"{name}: max_memory_bytes must be between {_PAGE} and {_MAX_MEMORY}, "
            f"got {max_memory_bytes}"
        )


# --- the sandbox ------------------------------------------------------------------------


class WasmSandbox:
    """One WASM module instance that turns messages into messages under the ABI.

    Construction compiles (or loads from ``cache_dir``; or takes a ``CompiledModule``
    from ``load_module``), checks the exports, instantiates and calls ``init`` with
    ``params``. ``call`` runs ``process`` on one message. After a trap (fuel, stack,
    memory limit, ``unreachable``...) the instance is rebuilt from the compiled module
    before the next message, so module globals reset. Not thread-safe: one caller at a time.
    """

    def __init__(
        self,
        module: bytes | str | pathlib.Path | CompiledModule,
        *,
        name: str = "wasm",
        params: dict[str, Any] | None = None,
        codec: str = "msgpack",
        fuel: int = 10_000_000,
        max_memory_bytes: int = 16 * 1024 * 1024,
        cache_dir: pathlib.Path | None = None,
    ) -> None:
        _check_limits(name, fuel, max_memory_bytes)
        self.name = name
        self.codec = codec
        self.fuel = fuel
        self.max_memory_bytes = max_memory_bytes
        self._encode, self._decode = _codec(codec)
        self._params = params or {}
        try:
            self._params_data = self._encode(self._params)
        except (TypeError, ValueError, OverflowError) as err:
            raise WasmLoadError(f"{name}: params cannot be encoded as {codec}: {err}") from err

        self._rt = _get_runtime()
        if isinstance(module, CompiledModule):
            label = module.label
            self._module, self.cache_path = module.module, module.cache_path
            self.from_cache = module.from_cache
        else:
            wasm, label = _read_module(module, name)
            self._module, self.cache_path, self.from_cache = _compile(
                self._rt, wasm, label, cache_dir
            )
        self._exports = _check_module(self._module, label, max_memory_bytes)
        if self._params and "init" not in self._exports:
            raise WasmLoadError(f"{name}: params given but the module exports no init")

        self.restarts = 0
        """How often the instance was rebuilt after a trap or a memory-limit failure."""
        self._closed = False
        self._live = False
        # raw call plumbing: addresses handed to the C API on every call
        self._args: Any = (_raw_val_type() * 2)()
        self._args_addr = ctypes.addressof(self._args)
        self._trap = ctypes.c_void_p()
        self._trap_addr = ctypes.addressof(self._trap)
        # the live instance (set by _start); the Python objects keep the addresses valid
        self._store: wasmtime.Store | None = None
        self._keep: tuple[object, ...] = ()
        self._ctx = 0
        self._memory = 0
        self._alloc = self._process = self._init = self._dealloc = 0
        self._base = 0
        self._in_ptr = self._in_cap = 0
        try:
            self._start()
        except WasmLoadError:
            raise
        except SandboxError as err:
            raise WasmLoadError(str(err)) from err

    # -- public --------------------------------------------------------------------

    def call(self, msg: dict[str, Any]) -> Output:
        """Run ``process`` on ``msg``: None (drop), a message, or (port, message) pairs.

        Raises LimitExceeded (fuel, stack, memory) or SandboxError (trap, bad output,
        module-reported error); the sandbox serves the next message either way.
        """
        if not self._live:
            self.restarts += 1
            self._start()
        try:
            data = self._encode(msg)
        except (TypeError, ValueError, OverflowError) as err:
            raise SandboxError(
                f"{self.name}: message cannot be encoded as {self.codec}: {err}"
            ) from err
        n = len(data)
        if n > self._in_cap:
            self._grow_input(n)
        ctypes.memmove(self._base + self._in_ptr, data, n)
        args = self._args
        args[0].i32 = self._in_ptr
        args[1].i32 = n
        rt = self._rt
        ctx = self._ctx
        rt.set_fuel(ctx, self.fuel)
        error = rt.call_unchecked(ctx, self._process, self._args_addr, 2, self._trap_addr)
        if error or self._trap.value:
            raise self._failure("process", error)
        result: int = args[0].i64
        base = rt.memory_data(ctx, self._memory) or 0
        size = rt.memory_size(ctx, self._memory)
        self._base = base
        if result == 0:
            return None
        if result < 0:
            raise self._module_error("process", result, base, size)
        ptr, length = result >> 32, result & _U32
        if length == 0 or ptr + length > size:
            raise self._at_limit(
                size,
                SandboxError(
                    f"{self.name}: process returned output at {ptr}+{length}, outside its "
                    f"{size}-byte memory"
                ),
            )
        raw = ctypes.string_at(base + ptr, length)
        try:
            out = self._decode(raw)
        except (ValueError, TypeError) as err:
            raise SandboxError(
                f"{self.name}: process returned {length} bytes that are not valid "
                f"{self.codec}: {err}"
            ) from err
        if type(out) is dict:
            return out
        return self._shape(out)

    @property
    def memory_bytes(self) -> int:
        """Current size of the module's linear memory."""
        if self._store is None:
            return 0
        return self._rt.memory_size(self._ctx, self._memory)

    def close(self) -> None:
        """Drop the instance; idempotent. ``call`` raises SandboxError afterwards."""
        self._closed = True
        self._drop()

    def __enter__(self) -> WasmSandbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<WasmSandbox {self.name!r} codec={self.codec} restarts={self.restarts}>"

    # -- instance lifecycle ----------------------------------------------------------

    def _start(self) -> None:
        """(Re)build store and instance from the compiled module, then run init."""
        import wasmtime

        if self._closed:
            raise SandboxError(f"{self.name}: sandbox is closed")
        self._drop()
        store, instance = _instantiate(
            self._rt, self._module, self.name, self.fuel, self.max_memory_bytes
        )
        exports = instance.exports(store)

        def func(name: str) -> int:
            f = exports[name]
            assert isinstance(f, wasmtime.Func)
            return ctypes.addressof(f._func)

        memory = exports["memory"]
        assert isinstance(memory, wasmtime.Memory)
        # keep the Python objects: the raw addresses below point into them
        self._store, self._keep = store, (instance, exports)
        self._ctx = ctypes.cast(store._context(), ctypes.c_void_p).value or 0
        self._memory = ctypes.addressof(memory._memory)
        self._alloc = func("alloc")
        self._process = func("process")
        self._init = func("init") if "init" in self._exports else 0
        self._dealloc = func("dealloc") if "dealloc" in self._exports else 0
        self._base = self._rt.memory_data(self._ctx, self._memory) or 0
        self._in_ptr = 0
        self._in_cap = 0
        self._live = True
        if self._init:
            self._run_init()

    def _run_init(self) -> None:
        data = self._params_data
        if len(data) > self._in_cap:
            self._grow_input(len(data))
        ctypes.memmove(self._base + self._in_ptr, data, len(data))
        result = self._raw("init", self._init, self._in_ptr, len(data))
        if result < 0:
            size = self._rt.memory_size(self._ctx, self._memory)
            err = self._module_error("init", result, self._base, size)
            self._drop()
            raise WasmLoadError(str(err))

    def _drop(self) -> None:
        self._live = False
        self._store = None
        self._keep = ()
        self._ctx = self._memory = self._base = 0

    def _grow_input(self, n: int) -> None:
        """Get an input buffer of at least n bytes from alloc (reused across messages)."""
        if n > self.max_memory_bytes:
            raise LimitExceeded(
                f"{self.name}: a {n}-byte message cannot fit the {self.max_memory_bytes}-byte "
                "memory limit"
            )
        cap = max(n, 2 * self._in_cap, _MIN_INPUT_BUFFER)
        if cap > self.max_memory_bytes // 2:
            cap = n
        ptr = self._raw("alloc", self._alloc, cap) & _U32
        size = self._rt.memory_size(self._ctx, self._memory)
        if ptr == 0:
            # the ABI's "out of memory": restart so a leaking module gets a fresh heap
            self._live = False
            raise LimitExceeded(
                f"{self.name}: alloc({cap}) returned 0: no room for the message within "
                f"max_memory_bytes={self.max_memory_bytes} (the instance is restarted)"
            )
        if ptr + cap > size:
            # checked before the host writes there: this is what keeps memmove in bounds
            raise SandboxError(
                f"{self.name}: alloc({cap}) returned {ptr}, not a {cap}-byte region of its "
                f"{size}-byte memory"
            )
        if self._dealloc and self._in_cap:
            self._raw("dealloc", self._dealloc, self._in_ptr, self._in_cap)
        self._in_ptr, self._in_cap = ptr, cap

    def _raw(self, what: str, func: int, *values: int) -> int:
        """Unchecked call of an export with i32 arguments; returns the raw result slot."""
        args = self._args
        for i, v in enumerate(values):
            args[i].i32 = v
        rt = self._rt
        rt.set_fuel(self._ctx, self.fuel)
        err = rt.call_unchecked(self._ctx, func, self._args_addr, len(values), self._trap_addr)
        if err or self._trap.value:
            raise self._failure(what, err)
        self._base = rt.memory_data(self._ctx, self._memory) or 0
        return int(args[0].i64)

    # -- errors ----------------------------------------------------------------------

    def _failure(self, what: str, err: int | None) -> SandboxError:
        """The exception for a trap or a wasmtime error; the instance is rebuilt next call."""
        import wasmtime
        from wasmtime import _ffi

        size = self._rt.memory_size(self._ctx, self._memory)
        cause: Exception
        if self._trap.value:
            trap_ptr = ctypes.cast(
                ctypes.c_void_p(self._trap.value), ctypes.POINTER(_ffi.wasm_trap_t)
            )
            self._trap.value = None
            trap = wasmtime.Trap._from_ptr(trap_ptr)
            code, reason, cause = trap.trap_code, _trap_reason(trap), trap
        else:
            err_ptr = ctypes.cast(ctypes.c_void_p(err), ctypes.POINTER(_ffi.wasmtime_error_t))
            cause = wasmtime.WasmtimeError._from_ptr(err_ptr)
            code, reason = None, _first_line(cause)
        self._live = False
        exc: SandboxError
        if code == wasmtime.TrapCode.OUT_OF_FUEL:
            exc = LimitExceeded(
                f"{self.name}: {what} ran out of fuel ({self.fuel} units per call): "
                "an endless loop, or raise the fuel param"
            )
        elif code == wasmtime.TrapCode.STACK_OVERFLOW:
            exc = LimitExceeded(
                f"{self.name}: {what} overflowed the wasm stack (runaway recursion?)"
            )
        else:
            exc = self._at_limit(size, SandboxError(f"{self.name}: {what} trapped: {reason}"))
        exc.__cause__ = cause
        return exc

    def _at_limit(self, size: int, exc: SandboxError) -> SandboxError:
        """A failure with memory at its cap is the cap's doing: say so, start afresh."""
        if size + _PAGE <= self.max_memory_bytes:
            return exc
        self._live = False
        limit = LimitExceeded(
            f"{exc} (linear memory is at its limit: {size} of {self.max_memory_bytes} bytes; "
            "the instance is restarted)"
        )
        limit.__cause__ = exc
        return limit

    def _module_error(self, what: str, result: int, base: int, size: int) -> SandboxError:
        packed = result & _PACKED  # Python ints are unbounded: mask, do not clear
        ptr, length = packed >> 32, packed & _U32
        if 0 < length <= 4096 and ptr >= 0 and ptr + length <= size:
            text = ctypes.string_at(base + ptr, length).decode("utf-8", "replace")
        else:
            text = f"(no readable message: {result:#x})"
        return self._at_limit(size, SandboxError(f"{self.name}: {what} failed: {text}"))

    def _shape(self, out: Any) -> Output:
        """Validate a non-map output: nil (drop) or an array of [port, map] pairs."""
        if out is None:
            return None
        if type(out) is not list:
            raise SandboxError(
                f"{self.name}: process output must be a map, an array of [port, map] pairs "
                f"or nil, not {type(out).__name__}"
            )
        pairs: list[tuple[str, dict[str, Any]]] = []
        for i, item in enumerate(out):
            if (
                type(item) is not list
                or len(item) != 2
                or type(item[0]) is not str
                or type(item[1]) is not dict
            ):
                raise SandboxError(f"{self.name}: process output[{i}] is not a [port, map] pair")
            pairs.append((item[0], item[1]))
        return pairs


def _raw_val_type() -> type[ctypes.Union]:
    from wasmtime import _ffi

    return _ffi.wasmtime_val_raw
