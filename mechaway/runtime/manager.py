"""The one path every flow takes: validate -> diff -> start -> swap -> stop -> record.

Files (the watched flows dir), the admin API and the hub all call ``FlowManager.deploy``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mechaway.errors import FlowError
from mechaway.flow.diff import FlowDiff
from mechaway.flow.parse import FLOW_SUFFIXES, read_file
from mechaway.flow.validate import validate
from mechaway.runtime.engine import Engine
from mechaway.store.flows import FlowStore, Source
from mechaway.tasks import OwnedTask

log = logging.getLogger("mechaway.flows")


@dataclass(frozen=True, slots=True)
class DeployResult:
    flow_id: str
    rev: int
    new_revision: bool
    diff: FlowDiff

    def as_dict(self) -> dict[str, Any]:
        d = self.diff
        return {
            "id": self.flow_id,
            "rev": self.rev,
            "new_revision": self.new_revision,
            "added": list(d.added),
            "changed": list(d.changed),
            "removed": list(d.removed),
            "kept": list(d.kept),
        }


class FlowManager:
    """Deploys, deletes and rolls back flows; remembers why file deploys failed."""

    def __init__(self, engine: Engine, store: FlowStore) -> None:
        self.engine = engine
        self.store = store
        self._lock = asyncio.Lock()
        #: awaited with the flow id after a flow was deleted (e.g. to drop its node state)
        self.on_deleted: list[Callable[[str], Awaitable[None]]] = []

    async def deploy(self, raw: Any, source: Source, *, origin: str = "") -> DeployResult:
        """Validate and run ``raw``; on any failure the running revision is untouched."""
        valid = validate(raw, source=origin)
        fid = valid.doc.id
        async with self._lock:
            before = self.engine.flows.get(fid)
            previous = (before.valid, before.rev) if before is not None else None
            d = await self.engine.deploy(valid)
            try:
                rev, new = await self.store.save(valid.doc.to_builtins(), source)
            except Exception:
                # not recorded = not deployed: put back what ran (or nothing) and report
                log.error("flow %s: recording the revision failed; the previous one runs", fid)
                if previous is not None:
                    await self.engine.deploy(*previous)
                else:
                    await self.engine.remove(fid)
                raise
            rf = self.engine.flows.get(fid)
            if rf is not None:
                rf.rev = rev
        log.info(
            "flow %s: rev %d from %s%s", valid.doc.id, rev, source, f" ({origin})" if origin else ""
        )
        return DeployResult(valid.doc.id, rev, new, d)

    async def delete(self, flow_id: str) -> bool:
        """Stop a flow and mark it inactive (its history stays). False if unknown."""
        async with self._lock:
            known = self.store.active_rev(flow_id) is not None
            running = await self.engine.remove(flow_id)
            if known:
                await self.store.deactivate(flow_id)
            for hook in self.on_deleted:
                await hook(flow_id)
        return known or running

    async def rollback(self, flow_id: str, rev: int) -> DeployResult:
        """Deploy an older revision again (recorded as a new revision, source rollback)."""
        old = self.store.get(flow_id, rev)
        if old is None:
            raise KeyError(f"flow {flow_id!r} has no revision {rev}")
        return await self.deploy(old.doc, "rollback", origin=f"{flow_id}@{rev}")

    async def start_stored(self) -> None:
        """At boot: start the active revision of every stored flow (failures reported)."""
        for revision in self.store.active():
            try:
                valid = validate(revision.doc, source=f"store:{revision.flow_id}@{revision.rev}")
                await self.engine.deploy(valid, revision.rev)
            except Exception as err:
                log.error("flow %s rev %d could not start: %s", revision.flow_id, revision.rev, err)


@dataclass
class _FileState:
    digest: str
    flow_id: str | None
    error: str = ""


@dataclass
class FlowDirWatcher:
    """Polls a directory of flow files; deploys what changed, removes what disappeared.

    Polling (stat of a handful of files once a second) needs no extra dependency or
    thread and works on every filesystem, including the SD card's and network mounts.
    """

    manager: FlowManager
    directory: Path
    interval: float = 1.0
    files: dict[Path, _FileState] = field(default_factory=dict)
    _mtimes: dict[Path, tuple[float, int]] = field(default_factory=dict)
    _task: OwnedTask = field(default_factory=lambda: OwnedTask("mechaway.flows.watcher"))
    _wake: asyncio.Event = field(default_factory=asyncio.Event)

    def errors(self) -> dict[str, str]:
        return {str(p): s.error for p, s in self.files.items() if s.error}

    async def start(self) -> None:
        await self.scan()
        await self._forget_vanished()
        self._task.start(self._run)

    async def stop(self) -> None:
        await self._task.stop()

    async def _forget_vanished(self) -> None:
        """Flows deployed from a file that is gone (deleted while the daemon was down) stop.

        The file is the source of truth for a file-deployed flow; a flow whose active
        revision came from the API, the hub or a rollback is left alone.
        """
        if any(s.error for s in self.files.values()):
            return  # a rejected file may be the vanished flow's: keep everything running
        from_files = {s.flow_id for s in self.files.values() if s.flow_id}
        for revision in self.manager.store.active():
            if revision.source == "file" and revision.flow_id not in from_files:
                log.info(
                    "flow %s: its file is gone from %s, deleting", revision.flow_id, self.directory
                )
                await self.manager.delete(revision.flow_id)

    def nudge(self) -> None:
        """Scan now (SIGHUP)."""
        self._wake.set()

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.interval)
            forced = self._wake.is_set()
            self._wake.clear()
            try:
                await self.scan(force=forced)
            except Exception:
                log.exception("scanning %s failed", self.directory)

    async def scan(self, *, force: bool = False) -> None:
        """One pass over the directory."""
        try:
            present = sorted(
                p
                for p in self.directory.iterdir()
                if p.suffix.lower() in FLOW_SUFFIXES and p.is_file() and not p.name.startswith(".")
            )
        except OSError as err:
            log.warning("flows dir %s: %s", self.directory, err.strerror or err)
            present = []
        for path in present:
            try:
                st = path.stat()
            except OSError:
                continue
            sig = (st.st_mtime, st.st_size)
            if not force and self._mtimes.get(path) == sig:
                continue
            self._mtimes[path] = sig
            await self._load(path)
        for path in [p for p in self.files if p not in present]:
            state = self.files.pop(path)
            self._mtimes.pop(path, None)
            if state.flow_id and not any(s.flow_id == state.flow_id for s in self.files.values()):
                log.info("%s removed: deleting flow %s", path, state.flow_id)
                await self.manager.delete(state.flow_id)

    async def _load(self, path: Path) -> None:
        try:
            data = await asyncio.to_thread(path.read_bytes)
        except OSError as err:
            log.warning("%s: %s", path, err.strerror or err)
            return
        digest = hashlib.sha256(data).hexdigest()
        prev = self.files.get(path)
        if prev is not None and prev.digest == digest and not prev.error:
            return  # unchanged; a file that failed is retried on a forced scan (SIGHUP)
        state = _FileState(digest, prev.flow_id if prev else None)
        self.files[path] = state
        try:
            raw = read_file(path)
            result = await self.manager.deploy(raw, "file", origin=str(path))
        except FlowError as err:
            state.error = err.render()
            log.error("flow file rejected, running revision kept:\n%s", state.error)
            return
        except Exception as err:
            state.error = f"{path}: {err}"
            log.exception("flow file %s failed to deploy", path)
            return
        state.flow_id = result.flow_id
        retired = prev.flow_id if prev else None
        if (
            retired
            and retired != result.flow_id
            and not any(s.flow_id == retired for s in self.files.values())
        ):
            log.info("%s now defines flow %s: deleting flow %s", path, result.flow_id, retired)
            await self.manager.delete(retired)
