"""The one path every flow takes: validate -> diff -> start -> swap -> stop -> record.

Files (the watched flows dir), the admin API and the hub all call ``FlowManager.deploy``.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import logging
import os
import stat
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mechaway.errors import FlowError, Issue, MechawayError
from mechaway.flow.diff import FlowDiff
from mechaway.flow.parse import FLOW_SUFFIXES, MAX_FLOW_FILE_BYTES, format_for, parse_text
from mechaway.flow.parse import read_capped as _read_capped
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


class RevisionConflict(MechawayError):
    """A deploy named the revision it was based on (``If-Match``) and another revision
    became active meanwhile; ``current`` is the active one (``None``: no active revision)."""

    def __init__(self, flow_id: str, expected: int, current: int | None) -> None:
        super().__init__(
            f"flow {flow_id!r}: revision {expected} is no longer the active one"
            f" (now {current if current is not None else 'none'})"
        )
        self.flow_id = flow_id
        self.expected = expected
        self.current = current


class FileOwned(MechawayError):
    """The flow comes from a file in the watched directory: the file is its one truth, so
    a deploy, rollback or delete from elsewhere is refused (it would be undone by the next
    scan or restart). Edit, replace or remove the file instead."""

    def __init__(self, flow_id: str, path: str, action: str) -> None:
        super().__init__(
            f"flow {flow_id!r} comes from the file {path}: {action} it there (edit or remove"
            " the file); a change made here would be undone at the next scan or restart"
        )
        self.flow_id = flow_id
        self.path = path


#: told of every recorded change: ``{"flow", "rev", "source"}`` (+ ``"deleted": True``)
ChangeHook = Callable[[dict[str, Any]], None]


class FlowManager:
    """Deploys, deletes and rolls back flows; remembers why file deploys failed."""

    def __init__(self, engine: Engine, store: FlowStore) -> None:
        self.engine = engine
        self.store = store
        self._lock = asyncio.Lock()
        #: awaited with the flow id after a flow was deleted (e.g. to drop its node state)
        self.on_deleted: list[Callable[[str], Awaitable[None]]] = []
        #: called (synchronously, under the deploy lock) after a new revision is recorded
        #: or a flow deleted: the editor's events socket tells other tabs
        self.on_change: list[ChangeHook] = []
        #: flow id -> the file its active revision came from (flows deployed by file)
        self.files: dict[str, str] = {}

    def _changed(self, event: dict[str, Any]) -> None:
        for hook in self.on_change:
            try:
                hook(event)
            except Exception:
                log.exception("flow %s: a change listener failed", event.get("flow"))

    async def deploy(
        self, raw: Any, source: Source, *, origin: str = "", if_rev: int | None = None
    ) -> DeployResult:
        """Validate and run ``raw``; on any failure the running revision is untouched.

        ``if_rev``: deploy only if that revision is still the active one, checked under the
        lock that serialises deploys (else ``RevisionConflict``, nothing changes).
        """
        valid = validate(raw, source=origin)
        fid = valid.doc.id
        for warning in valid.warnings:  # deployable, but maybe not meant (a feedback loop)
            log.warning("flow %s: %s", fid, warning)
        async with self._lock:
            owner = self.files.get(fid)
            if owner is not None and source != "file":
                raise FileOwned(fid, owner, "roll it back" if source == "rollback" else "change")
            if if_rev is not None:
                current = self.store.active_rev(fid)
                if current != if_rev:
                    raise RevisionConflict(fid, if_rev, current)
            before = self.engine.flows.get(fid)
            previous = (before.valid, before.rev) if before is not None else None
            cancelled = False
            try:
                d = await self.engine.deploy(valid)
            except asyncio.CancelledError:
                now = self.engine.flows.get(fid)
                if now is None or now.valid is not valid:
                    raise  # rolled back by the engine: nothing runs that is not recorded
                cancelled = True  # cancelled after the swap (retired nodes stopping)
            # the revision runs now: a cancellation (shutdown) while it is being recorded
            # waits for the outcome, so the engine and the store never disagree
            saving = asyncio.ensure_future(self.store.save(valid.doc.to_builtins(), source))
            try:
                try:
                    rev, new = await asyncio.shield(saving)
                except asyncio.CancelledError:
                    if saving.cancelled():
                        raise
                    cancelled = True
                    rev, new = await saving
            except BaseException:
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
            if source == "file" and origin:  # a file deploy names its file (tests may not)
                self.files[fid] = origin
            elif new:
                self.files.pop(fid, None)
            if new:
                self._changed({"flow": fid, "rev": rev, "source": source})
            if cancelled:
                raise asyncio.CancelledError
        log.info(
            "flow %s: rev %d from %s%s", valid.doc.id, rev, source, f" ({origin})" if origin else ""
        )
        return DeployResult(valid.doc.id, rev, new, d)

    async def delete(self, flow_id: str, *, by_file: bool = False) -> bool:
        """Stop a flow and mark it inactive (its history stays). False if unknown.

        A flow from a file is deleted only by its file's removal (``by_file``)."""
        async with self._lock:
            owner = self.files.get(flow_id)
            if owner is not None and not by_file:
                raise FileOwned(flow_id, owner, "delete")
            active = self.store.active_rev(flow_id)
            known = active is not None
            was = self.store.get(flow_id, active) if active is not None else None
            running = await self.engine.remove(flow_id)
            if known:
                await self.store.deactivate(flow_id)
            self.files.pop(flow_id, None)
            for hook in self.on_deleted:
                await hook(flow_id)
            if was is not None:
                self._changed(
                    {"flow": flow_id, "rev": was.rev, "source": was.source, "deleted": True}
                )
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


#: what a directory entry looked like at the last scan; a change means "read it again".
#: Inode and ctime catch a same-size rewrite within the mtime granularity (FAT: 2 s), an
#: atomic rename, and a ``chmod`` that makes an unreadable file readable again.
_Signature = tuple[int, ...]


@dataclass
class _FileState:
    digest: str
    #: the flow this file deployed (and keeps running while the file is broken)
    flow_id: str | None
    error: str = ""
    #: the flow id the file's document declares, when it parsed that far
    declared: str | None = None


@dataclass(frozen=True, slots=True)
class _Entry:
    """One flow file candidate found by a scan; ``problem`` when it cannot be a flow file."""

    path: Path
    sig: _Signature
    problem: str = ""


def display_path(path: Path) -> str:
    """``str(path)`` that is valid UTF-8 (a file name may hold any bytes): it goes to JSON."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def _list_dir(directory: Path) -> list[_Entry]:
    """The flow file candidates in ``directory`` (blocking: run in a thread). Raises OSError
    when the directory itself cannot be listed."""
    entries = []
    with os.scandir(directory) as it:
        names = [e.name for e in it]
    for name in sorted(names):
        path = directory / name
        if name.startswith(".") or path.suffix.lower() not in FLOW_SUFFIXES:
            continue
        try:
            st = path.stat()  # follows symlinks: a link to a flow file is a flow file
        except FileNotFoundError:
            if not os.path.lexists(path):
                continue  # removed between the listing and now: gone, not broken
            entries.append(_Entry(path, (-1, errno.ENOENT), "dangling symlink: target not found"))
            continue
        except OSError as err:  # ELOOP (a symlink loop), EACCES on a directory on the way
            entries.append(_Entry(path, (-1, err.errno or 0), f"cannot read: {err.strerror}"))
            continue
        kind = stat.S_IFMT(st.st_mode)
        if kind == stat.S_IFREG:
            entries.append(_Entry(path, (st.st_mtime_ns, st.st_size, st.st_ino, st.st_ctime_ns)))
        else:
            what = "a directory" if kind == stat.S_IFDIR else "not a regular file"
            entries.append(_Entry(path, (-2, kind, st.st_ino), f"{what}, not a flow file"))
    return entries


@dataclass
class FlowDirWatcher:
    """Polls a directory of flow files; deploys what changed, removes what disappeared.

    Polling (stat of a handful of files once a second) needs no extra dependency or
    thread and works on every filesystem, including the SD card's and network mounts.

    A file that cannot be used (unreadable, not JSON/YAML, invalid, too large, a directory
    or a dangling symlink by that name, a second file for a flow another file defines)
    never stops what runs: its error is in ``errors()`` and the last good revision stays.
    A directory that cannot be listed (unmounted, permissions) keeps every flow running.
    """

    manager: FlowManager
    directory: Path
    interval: float = 1.0
    files: dict[Path, _FileState] = field(default_factory=dict)
    _mtimes: dict[Path, _Signature] = field(default_factory=dict)
    _present: set[Path] = field(default_factory=set)
    #: why the directory could not be listed at the last scan ("" when it could)
    _listing_error: str | None = None
    _task: OwnedTask = field(default_factory=lambda: OwnedTask("mechaway.flows.watcher"))
    _wake: asyncio.Event = field(default_factory=asyncio.Event)

    def errors(self) -> dict[str, str]:
        return {display_path(p): s.error for p, s in self.files.items() if s.error}

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
        if self._listing_error != "":
            return  # the directory could not be listed: nothing is known to be gone
        if any(s.error for s in self.files.values()):
            return  # a rejected file may be the vanished flow's: keep everything running
        from_files = {s.flow_id for s in self.files.values() if s.flow_id}
        for revision in self.manager.store.active():
            if revision.source == "file" and revision.flow_id not in from_files:
                log.info(
                    "flow %s: its file is gone from %s, deleting", revision.flow_id, self.directory
                )
                await self.manager.delete(revision.flow_id, by_file=True)

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
            entries = await asyncio.to_thread(_list_dir, self.directory)
        except OSError as err:
            # unmounted, removed, no permission: not "every file was deleted"
            why = f"flows dir {self.directory}: {err.strerror or err}; running flows kept"
            if why != self._listing_error:
                log.warning("%s", why)
            self._listing_error = why
            return
        if self._listing_error:
            log.info("flows dir %s can be listed again", self.directory)
        self._listing_error = ""
        self._present = {e.path for e in entries}
        for entry in entries:
            if not force and self._mtimes.get(entry.path) == entry.sig:
                continue
            self._mtimes[entry.path] = entry.sig
            if entry.problem:
                self._reject(entry.path, entry.problem)
            else:
                await self._load(entry.path)
        for path in [p for p in self.files if p not in self._present]:
            state = self.files.pop(path)
            self._mtimes.pop(path, None)
            if state.flow_id:
                await self._release(state.flow_id, f"{display_path(path)} removed")

    def _kept(self, flow_id: str | None) -> str:
        """What runs instead of a rejected file: said as it is (at a first start, nothing)."""
        rf = self.manager.engine.flows.get(flow_id) if flow_id else None
        if rf is None:
            return "nothing of it runs" if flow_id is None else f"flow {flow_id} does not run"
        return f"flow {flow_id} rev {rf.rev} keeps running"

    def _reject(self, path: Path, message: str) -> None:
        """``path`` cannot be used now: report it, keep what it runs."""
        prev = self.files.get(path)
        state = _FileState("", prev.flow_id if prev else None)
        state.declared = prev.declared if prev else None
        state.error = f"{display_path(path)}: {message}"
        self.files[path] = state
        log.error("flow file rejected, %s: %s", self._kept(state.flow_id), state.error)

    def _runs(self, flow_id: str, other_than: Path | None = None) -> Path | None:
        """The present file (not ``other_than``) whose flow ``flow_id`` is."""
        for p, s in self.files.items():
            if p != other_than and p in self._present and s.flow_id == flow_id:
                return p
        return None

    async def _release(self, flow_id: str, why: str) -> None:
        """No file runs ``flow_id`` any more: a file that declares it takes over, else it stops."""
        if self._runs(flow_id) is not None:
            return
        for p, s in list(self.files.items()):
            if p in self._present and s.error and s.declared == flow_id:
                await self._load(p)  # e.g. refused as a duplicate of the file that went
                if self.files[p].flow_id == flow_id:
                    log.info("%s: flow %s now comes from %s", why, flow_id, display_path(p))
                    return
        log.info("%s: deleting flow %s", why, flow_id)
        await self.manager.delete(flow_id, by_file=True)

    async def _load(self, path: Path) -> None:
        origin = display_path(path)
        try:
            data = await asyncio.to_thread(_read_capped, path)
        except FileNotFoundError:
            return  # removed since the scan listed it: the next scan sees it gone
        except OSError as err:
            self._reject(path, f"cannot read: {err.strerror or err}")
            return
        if data is None:
            self._reject(path, f"larger than {MAX_FLOW_FILE_BYTES // 1024} KiB, not read")
            return
        digest = hashlib.sha256(data).hexdigest()
        prev = self.files.get(path)
        if prev is not None and prev.digest == digest and not prev.error:
            return  # unchanged; a file that failed is retried on a forced scan (SIGHUP)
        # published in ``files`` once the outcome is known: status never shows a broken
        # file as fine while it is being parsed or deployed
        state = _FileState(digest, prev.flow_id if prev else None)
        try:
            # in a thread: a large YAML document takes a while, the flows keep running
            raw = await asyncio.to_thread(parse_text, data, fmt=format_for(path), source=origin)
            fid = raw.get("id") if isinstance(raw, dict) else None
            state.declared = fid if isinstance(fid, str) else None
            if state.declared is not None:
                owner = self._runs(state.declared, path)
                if owner is not None:
                    raise FlowError(
                        [
                            Issue(
                                "id",
                                f"flow {state.declared!r} is already defined by"
                                f" {display_path(owner)}: this file is ignored",
                            )
                        ],
                        origin,
                    )
            result = await self.manager.deploy(raw, "file", origin=origin)
        except FlowError as err:
            state.error = err.render()
            self.files[path] = state
            kept = self._kept(state.flow_id or state.declared)
            log.error("flow file rejected, %s:\n%s", kept, state.error)
            await self._adopt_or_retire(path, state, prev)
            return
        except Exception as err:
            state.error = f"{origin}: {err}"
            self.files[path] = state
            log.exception("flow file %s failed to deploy", origin)
            return
        state.flow_id = result.flow_id
        self.files[path] = state
        retired = prev.flow_id if prev else None
        if retired and retired != result.flow_id:
            await self._release(retired, f"{origin} now defines flow {result.flow_id}")

    async def _adopt_or_retire(
        self, path: Path, state: _FileState, prev: _FileState | None
    ) -> None:
        """After a rejected document: which flow, if any, this file now stands for."""
        declared = state.declared
        if declared is None or declared == state.flow_id:
            return  # unknown, or the flow it runs: that revision stays
        if self._runs(declared, path) is not None:
            # valid but a duplicate: the file plainly no longer defines its old flow
            retired, state.flow_id = state.flow_id, None
            if retired:
                await self._release(retired, f"{display_path(path)} now defines flow {declared}")
            return
        if state.flow_id is None and prev is None:
            # first sight since start, broken: if its flow runs from a file revision, the
            # file still stands for it (removing the file will stop it)
            active = next((r for r in self.manager.store.active() if r.flow_id == declared), None)
            if active is not None and active.source == "file":
                state.flow_id = declared
