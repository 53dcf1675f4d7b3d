"""The edge's side of the hub: heartbeats, signed flow bundles, rollback, outbox upload.

Constructed by the daemon only when ``[hub] url`` is set (so a device without a hub pays
nothing). Four owned tasks:

- ``beat``: every ``heartbeat`` s (+-10% jitter) the device's state, its flows (revision,
  state, source: flows created on the device too), outbox backlog, problems and what it
  did with bundles; the answer may carry a newer bundle.
- ``poll``: a long poll for a newer bundle, so a deploy reaches the device in about a
  second instead of at the next heartbeat.
- ``upload``: drains the outbox in batches keyed by (epoch, seq); deletes only what the
  hub acknowledged. With a backlog, the newest messages go first and the backlog follows,
  throttled to ``backlog_rate`` messages/s.
- ``health``: a hub revision whose nodes error more than ``error_threshold`` times within
  ``health_window`` s is rolled back to the revision that ran before it.

A bundle runs only after its Ed25519 signature verified against the pinned
``public_key``; unsigned, badly signed, older (replayed) bundles and bundles for another
device are refused and reported. The highest applied bundle sequence is kept in
``hub-state.json`` in the data dir, so a replay is refused after a restart too.

The rule when the device and the hub both changed a flow: the hub's bundle is the desired
state. A flow the hub manages that was changed on the device keeps running as changed
(reported with ``drift: true``) until the hub sends a new bundle; then every flow in that
bundle is deployed as the hub has it. Flows the hub does not manage are never touched.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from mechaway import __version__
from mechaway.errors import ConfigError
from mechaway.hub.http import HttpClient, HubUnreachable
from mechaway.hub.wire import (
    BATCH_CONTENT_TYPE,
    BundleRefused,
    Heartbeat,
    Report,
    WireError,
    canonical,
    encode_batch,
    encode_heartbeat,
    open_bundle,
    parse_public_key,
)
from mechaway.hub.wire import FlowReport as WireFlow
from mechaway.runtime.manager import FlowManager
from mechaway.settings import HubSettings
from mechaway.store.db import Database
from mechaway.store.outbox import Outbox
from mechaway.tasks import OwnedTask

log = logging.getLogger("mechaway.hub.edge")

STATE_FILE = "hub-state.json"
TOKEN_FILE = "hub-token"
#: how often an idle uploader looks at the outbox
IDLE_POLL_S = 0.2
#: failures in a row before the hub counts as a problem
FAILURES_FOR_PROBLEM = 3
MAX_PENDING_REPORTS = 100
#: a backlog batch is this many times ``batch`` messages, at most ``MAX_BACKLOG_BATCH``
BACKLOG_BATCH_FACTOR = 5
MAX_BACKLOG_BATCH = 20_000


def _digest(doc: Any) -> str:
    return hashlib.sha256(canonical(doc)).hexdigest()


@dataclass
class EdgeState:
    """What must survive a restart: the applied bundle seq, managed and failed flows."""

    path: Path
    bundle_seq: int = 0
    #: flow id -> digest of the document the hub sent
    managed: dict[str, str] = field(default_factory=dict)
    #: flow id -> digest of a document that failed (not deployed again until it changes)
    failed: dict[str, str] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path) -> EdgeState:
        try:
            doc = orjson.loads(path.read_bytes())
        except FileNotFoundError:
            return cls(path)
        except (OSError, orjson.JSONDecodeError) as err:
            # not trusting a damaged file means: accept only bundles newer than nothing.
            # Refusing everything would strand the device; the hub's seq keeps growing.
            log.error("%s unreadable (%s): starting from bundle seq 0", path, err)
            return cls(path)
        ok = isinstance(doc, dict) and isinstance(doc.get("bundle_seq"), int)
        if not ok:
            log.error("%s malformed: starting from bundle seq 0", path)
            return cls(path)
        return cls(
            path,
            int(doc["bundle_seq"]),
            {str(k): str(v) for k, v in dict(doc.get("managed") or {}).items()},
            {str(k): str(v) for k, v in dict(doc.get("failed") or {}).items()},
        )

    def save(self) -> None:
        """Atomically (write, fsync, rename, fsync the directory)."""
        data = orjson.dumps(
            {"bundle_seq": self.bundle_seq, "managed": self.managed, "failed": self.failed}
        )
        _write_atomic(self.path, data)


def _write_atomic(path: Path, data: bytes, mode: int = 0o644) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    with contextlib.suppress(OSError):
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


@dataclass
class _Watch:
    rev: int
    good_rev: int | None
    baseline: int
    deadline: float
    digest: str
    bundle_seq: int


class HubSync:
    """The sync client; ``start``/``stop`` from the daemon, ``status``/``problem`` for it."""

    def __init__(
        self,
        settings: HubSettings,
        *,
        device_id: str,
        data_dir: Path,
        manager: FlowManager,
        db: Database,
        status: Any = None,
    ) -> None:
        if not settings.url:
            raise ConfigError("hub.url: not set")
        if not settings.public_key:
            raise ConfigError(
                "hub.public_key: required with hub.url (`mechaway hub public-key` prints it):"
                " bundles are verified against it before anything runs"
            )
        try:
            self.public_key = parse_public_key(settings.public_key)
        except WireError as err:
            raise ConfigError(str(err)) from None
        self.s = settings
        self.device = device_id
        self.data_dir = data_dir
        self.manager = manager
        self.db = db
        self.status_fn = status
        self.token_file = data_dir / TOKEN_FILE
        token = settings.token
        if token is None and self.token_file.exists():
            with contextlib.suppress(OSError):
                token = self.token_file.read_text().strip() or None
        self.http = HttpClient(settings.url, token=token, ca_file=settings.ca_file)
        self.poll_http = HttpClient(settings.url, token=token, ca_file=settings.ca_file)
        self.state = EdgeState.load(data_dir / STATE_FILE)
        self._dev = _quote(device_id)
        self._tasks = [
            OwnedTask(f"mechaway.hub[{settings.url}].{n}")
            for n in ("beat", "poll", "upload", "health")
        ]
        self._beat_now = asyncio.Event()
        self._apply_lock = asyncio.Lock()
        self._reports: list[Report] = []
        self._watches: dict[str, _Watch] = {}
        # figures and troubles
        self.heartbeats = 0
        self.failures_in_row = 0
        self.last_ok: float | None = None
        self.last_error: str | None = None
        self.trouble_since: float | None = None
        self.refused = 0
        self.last_refusal: str | None = None
        self.applied = 0
        self.rolled_back = 0
        self.uploaded = 0
        self.upload_batches = 0
        self.acked_upto = 0
        self.upload_error: str | None = None
        self.live_mode = False
        #: the deletion of acknowledged rows in flight (owned: cancelled by ``stop``)
        self._ack_task: asyncio.Future[None] | None = None
        self._acked_deleted = 0

    # -- lifecycle -----------------------------------------------------------------------
    async def start(self) -> None:
        beat, poll, upload, health = self._tasks
        beat.start(self._beat_loop)
        poll.start(self._poll_loop)
        upload.start(self._upload_loop)
        health.start(self._health_loop)

    async def stop(self) -> None:
        for t in self._tasks:
            await t.stop()
        if self._ack_task is not None:
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.wait_for(self._ack_task, 5)
        await self.http.close()
        await self.poll_http.close()

    # -- status --------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        return {
            "url": self.s.url,
            "connected": self.failures_in_row == 0 and self.last_ok is not None,
            "last_ok": self.last_ok,
            "last_error": self.last_error,
            "heartbeats": self.heartbeats,
            "bundle_seq": self.state.bundle_seq,
            "managed_flows": sorted(self.state.managed),
            "failed_flows": sorted(self.state.failed),
            "applied": self.applied,
            "refused": self.refused,
            "last_refusal": self.last_refusal,
            "rolled_back": self.rolled_back,
            "uploaded": self.uploaded,
            "upload_batches": self.upload_batches,
            "acked_upto": self.acked_upto,
            "live_first": self.live_mode,
            "upload_error": self.upload_error,
        }

    def problem(self) -> str | None:
        """One line when sync needs an operator's look, else None."""
        if self.http.token is None:
            return "hub: no device token (set hub.token or hub.provisioning_token)"
        if self.failures_in_row >= FAILURES_FOR_PROBLEM:
            since = time.strftime("%H:%M:%S", time.localtime(self.trouble_since or time.time()))
            return f"hub: unreachable since {since} ({self.last_error}); data waits in the outbox"
        if self.upload_error:
            return f"hub: uploads refused ({self.upload_error})"
        if self.last_refusal:
            return f"hub: last bundle refused ({self.last_refusal})"
        return None

    def _ok(self) -> None:
        self.failures_in_row = 0
        self.last_ok = time.time()
        self.trouble_since = None

    def _failed(self, why: str) -> None:
        if self.failures_in_row == 0:
            self.trouble_since = time.time()
        self.failures_in_row += 1
        if why != self.last_error or self.failures_in_row == FAILURES_FOR_PROBLEM:
            log.warning("hub %s: %s", self.s.url, why)
        self.last_error = why

    def _report(self, result: str, *, flow: str = "", detail: str = "", seq: int = 0) -> None:
        self._reports.append(
            Report(ts=time.time(), result=result, bundle_seq=seq, flow=flow, detail=detail[:500])
        )
        del self._reports[:-MAX_PENDING_REPORTS]
        self._beat_now.set()

    # -- token ---------------------------------------------------------------------------
    async def _ensure_token(self) -> None:
        if self.http.token is not None or not self.s.provisioning_token:
            return
        prov = HttpClient(self.s.url or "", token=self.s.provisioning_token, ca_file=self.s.ca_file)
        try:
            r = await prov.request(
                "POST", "/api/v1/provision", orjson.dumps({"id": self.device}),
                timeout=self.s.timeout,
            )  # fmt: skip
        finally:
            await prov.close()
        if r.status != 201:
            raise HubUnreachable(f"provisioning refused: HTTP {r.status} {r.body[:200]!r}")
        token = orjson.loads(r.body)["token"]
        await asyncio.to_thread(_write_atomic, self.token_file, token.encode(), 0o600)
        self.http.token = self.poll_http.token = token
        log.info("registered at the hub as %s (token kept in %s)", self.device, self.token_file)

    # -- heartbeat -----------------------------------------------------------------------
    def heartbeat_doc(self) -> Heartbeat:
        flows = []
        running = self.manager.engine.flows
        for rev in self.manager.store.active():
            managed = rev.flow_id in self.state.managed
            flows.append(
                WireFlow(
                    id=rev.flow_id,
                    rev=rev.rev,
                    state="running" if rev.flow_id in running else "stopped",
                    source=rev.source,
                    hub=managed,
                    drift=managed and rev.source not in ("hub", "rollback"),
                )
            )
        backlog: dict[str, Any] = {}
        with contextlib.suppress(Exception):
            st = Outbox.of(self.db).state()
            backlog = {k: st[k] for k in ("epoch", "messages", "bytes", "last_seq", "dropped")}
        problems: list[str] = []
        if self.status_fn is not None:
            with contextlib.suppress(Exception):
                problems = list(self.status_fn().get("problems", []))
        return Heartbeat(
            state="running",
            version=__version__,
            bundle_seq=self.state.bundle_seq,
            flows=flows,
            backlog=backlog,
            problems=problems,
            reports=list(self._reports),
        )

    async def _beat_loop(self) -> None:
        while True:
            try:
                await self._ensure_token()
                await self.beat()
            except HubUnreachable as err:
                self._failed(str(err))
            except Exception as err:  # never let one odd answer end the sync
                self._failed(f"{type(err).__name__}: {err}")
            wait = self.s.heartbeat * random.uniform(0.9, 1.1)
            if self.failures_in_row:
                wait = min(wait, 2.0 ** min(self.failures_in_row, 5))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._beat_now.wait(), wait)
            self._beat_now.clear()

    async def beat(self) -> None:
        """One heartbeat; a bundle in the answer is applied."""
        if self.http.token is None:
            return
        hb = self.heartbeat_doc()
        sent = len(hb.reports)
        r = await self.http.request(
            "POST", f"/api/v1/devices/{self._dev}/heartbeat", encode_heartbeat(hb),
            timeout=self.s.timeout,
        )  # fmt: skip
        if r.status != 200:
            raise HubUnreachable(f"heartbeat: HTTP {r.status} {r.body[:200]!r}")
        del self._reports[:sent]
        self.heartbeats += 1
        self._ok()
        body = orjson.loads(r.body)
        env = body.get("bundle") if isinstance(body, dict) else None
        if env is not None:
            await self.apply(env)

    async def _poll_loop(self) -> None:
        """Long-poll for a newer bundle: the nudge that makes deploys quick."""
        delay = 1.0
        while True:
            if self.poll_http.token is None:
                await asyncio.sleep(1.0)
                continue
            try:
                r = await self.poll_http.request(
                    "GET",
                    f"/api/v1/devices/{self._dev}/bundle?after={self.state.bundle_seq}&wait=25",
                    timeout=25 + self.s.timeout,
                )
                if r.status == 200:
                    env = orjson.loads(r.body).get("bundle")
                    if env is not None:
                        await self.apply(env)
                    delay = 1.0
                    continue
                if r.status == 204:
                    delay = 1.0
                    continue
                why = f"HTTP {r.status}"
            except HubUnreachable as err:
                why = str(err)
            except Exception as err:
                why = f"{type(err).__name__}: {err}"
            log.debug("bundle poll: %s", why)
            await asyncio.sleep(delay * random.uniform(0.8, 1.2))
            delay = min(delay * 2, self.s.heartbeat)

    # -- bundles -------------------------------------------------------------------------
    async def apply(self, env: Any) -> None:
        """Verify, then deploy a bundle through the same path as a local deploy."""
        async with self._apply_lock:
            try:
                bundle = open_bundle(
                    env, self.public_key, device=self.device, last_seq=self.state.bundle_seq
                )
            except BundleRefused as err:
                self.refused += 1
                self.last_refusal = str(err)
                log.error("hub bundle refused: %s", err)
                self._report("refused", detail=str(err))
                return
            if bundle is None:
                return
            self.last_refusal = None
            seq = bundle.seq
            for fid, doc in bundle.flows.items():
                await self._deploy_one(fid, doc, seq)
            for fid in [f for f in self.state.managed if f not in bundle.flows]:
                self.state.managed.pop(fid, None)
                self.state.failed.pop(fid, None)
                self._watches.pop(fid, None)
                await self.manager.delete(fid)
                self._report("removed", flow=fid, seq=seq)
            self.state.bundle_seq = seq
            await asyncio.to_thread(self.state.save)
            self.applied += 1
            log.info("hub bundle %d applied (%d flows)", seq, len(bundle.flows))
            self._report("applied", seq=seq, detail=f"{len(bundle.flows)} flows")

    async def _deploy_one(self, fid: str, doc: dict[str, Any], seq: int) -> None:
        digest = _digest(doc)
        if self.state.failed.get(fid) == digest:
            return  # this very document failed before: reported then, not retried
        if doc.get("id") != fid:
            self.state.failed[fid] = digest
            self._report("failed", flow=fid, seq=seq, detail=f"document id is {doc.get('id')!r}")
            return
        good = self.manager.store.active_rev(fid)
        try:
            res = await self.manager.deploy(doc, "hub", origin=f"hub bundle {seq}")
        except asyncio.CancelledError:
            raise
        except Exception as err:
            self.state.failed[fid] = digest
            self.state.managed[fid] = digest
            kept = f"rev {good} keeps running" if good else "nothing runs"
            text = err.render() if hasattr(err, "render") else str(err)
            log.error("hub flow %s (bundle %d) failed, %s: %s", fid, seq, kept, text)
            self._report("failed", flow=fid, seq=seq, detail=f"{kept}: {text}")
            return
        self.state.managed[fid] = digest
        self.state.failed.pop(fid, None)
        if res.new_revision and self.s.health_window > 0:
            self._watches[fid] = _Watch(
                rev=res.rev,
                good_rev=good if good != res.rev else None,
                baseline=self._errors(fid),
                deadline=time.monotonic() + self.s.health_window,
                digest=digest,
                bundle_seq=seq,
            )

    def _errors(self, fid: str) -> int:
        rf = self.manager.engine.flows.get(fid)
        return sum(st.errors for st in rf.stats.values()) if rf is not None else 0

    async def _health_loop(self) -> None:
        while True:
            await asyncio.sleep(0.5)
            for fid, w in list(self._watches.items()):
                rf = self.manager.engine.flows.get(fid)
                if rf is None or rf.rev != w.rev:
                    self._watches.pop(fid, None)
                    continue
                errors = self._errors(fid) - w.baseline
                if errors > self.s.error_threshold:
                    self._watches.pop(fid, None)
                    try:
                        await self._roll_back(fid, w, errors)
                    except Exception as err:
                        log.exception("rolling back flow %s failed", fid)
                        self._report("failed", flow=fid, seq=w.bundle_seq, detail=str(err))
                elif time.monotonic() > w.deadline:
                    self._watches.pop(fid, None)

    async def _roll_back(self, fid: str, w: _Watch, errors: int) -> None:
        why = f"{errors} node errors within {self.s.health_window:g} s"
        if w.good_rev is not None:
            await self.manager.rollback(fid, w.good_rev)
            detail = f"rev {w.rev}: {why}; back to rev {w.good_rev}"
        else:
            await self.manager.delete(fid)
            detail = f"rev {w.rev}: {why}; no earlier revision, stopped"
        self.state.failed[fid] = w.digest
        await asyncio.to_thread(self.state.save)
        self.rolled_back += 1
        log.error("hub flow %s rolled back: %s", fid, detail)
        self._report("rolled_back", flow=fid, seq=w.bundle_seq, detail=detail)

    # -- upload --------------------------------------------------------------------------
    async def _upload_loop(self) -> None:
        outbox = Outbox.of(self.db)
        self.acked_upto = int(outbox.state()["acked_upto"])
        delay = 0.5
        live_lo: int | None = None
        live_sent = 0
        tokens, t_last = float(self.s.batch), time.monotonic()
        batch = self.s.batch
        #: backlog batches are larger (fewer round trips, one COPY each); live ones small
        big = min(BACKLOG_BATCH_FACTOR * batch, MAX_BACKLOG_BATCH)
        while True:
            if self.http.token is None:
                await asyncio.sleep(1.0)
                continue
            st = outbox.state()
            epoch, last = str(st["epoch"]), int(st["last_seq"])
            floor = int(st["first_seq"]) - 1 if st["first_seq"] else last
            base = max(self.acked_upto, floor)
            if last <= base:
                live_lo = None
                self.live_mode = False
                self._ack_later(outbox)  # the last acknowledged rows, once idle
                await asyncio.sleep(IDLE_POLL_S)
                continue
            try:
                if live_lo is None and last - base > 2 * batch:
                    live_lo = max(base + 1, last - batch + 1)  # the newest go first
                    live_sent = live_lo - 1
                self.live_mode = live_lo is not None
                if live_lo is not None and last > live_sent:
                    rows = outbox.peek(live_sent, batch)
                    if rows:
                        await self._send(epoch, floor, rows)
                        live_sent = rows[-1].seq
                upto = (live_lo - 1) if live_lo is not None else last
                base = max(self.acked_upto, floor)
                if base < upto:
                    n = min(big if live_lo is not None else batch, upto - base)
                    if live_lo is not None:  # backlog: throttled
                        now = time.monotonic()
                        tokens = min(float(big), tokens + (now - t_last) * self.s.backlog_rate)
                        t_last = now
                        if tokens < n:
                            await asyncio.sleep((n - tokens) / self.s.backlog_rate)
                            tokens, t_last = float(n), time.monotonic()
                        tokens -= n
                    rows = outbox.peek(base, n)
                    if rows:
                        await self._send(epoch, floor, rows)
                if live_lo is not None and self.acked_upto >= live_sent:
                    live_lo = None  # the backlog caught up with the live range
                self._ack_later(outbox)
                delay = 0.5
                self.upload_error = None
                await asyncio.sleep(0)
            except HubUnreachable as err:
                live_lo = None  # resent later; the hub stores each message once
                self._failed(str(err))
                await asyncio.sleep(delay * random.uniform(0.8, 1.2))
                delay = min(delay * 2, self.s.heartbeat)
            except _Refused as err:
                live_lo = None
                self.upload_error = str(err)
                log.error("hub refused an upload: %s", err)
                await asyncio.sleep(self.s.heartbeat)

    def _ack_later(self, outbox: Outbox) -> None:
        """Delete what the hub acknowledged, while the next batch goes up (one at a time)."""
        running = self._ack_task is not None and not self._ack_task.done()
        if running or self.acked_upto <= self._acked_deleted:
            return
        upto = self.acked_upto

        async def ack() -> None:
            await outbox.ack(upto)
            self._acked_deleted = upto

        self._ack_task = asyncio.ensure_future(ack())
        self._ack_task.add_done_callback(_log_ack_failure)

    async def _send(self, epoch: str, floor: int, rows: list[Any]) -> None:
        data = [(e.seq, e.ts, e.topic, e.payload, e.flags) for e in rows]
        body = encode_batch(epoch, floor, data)
        r = await self.http.request(
            "POST", f"/api/v1/devices/{self._dev}/telemetry", body,
            content_type=BATCH_CONTENT_TYPE, timeout=self.s.timeout,
        )  # fmt: skip
        if r.status >= 500 or r.status in (401, 403, 429):
            raise HubUnreachable(f"upload: HTTP {r.status} {r.body[:200]!r}")
        if r.status != 200:
            raise _Refused(f"HTTP {r.status} {r.body[:200]!r}")
        answer = orjson.loads(r.body)
        acked = answer.get("acked") if isinstance(answer, dict) else None
        if not isinstance(acked, int) or answer.get("epoch") != epoch:
            raise _Refused(f"unexpected answer {r.body[:200]!r}")
        self._ok()
        self.upload_batches += 1
        self.uploaded += len(rows)
        self.acked_upto = max(self.acked_upto, acked)


def _log_ack_failure(fut: asyncio.Future[None]) -> None:
    if not fut.cancelled() and (exc := fut.exception()) is not None:
        # the rows stay and are sent again; the hub stores each message once
        log.warning("deleting acknowledged outbox rows failed: %s", exc)


class _Refused(Exception):
    """The hub answered an upload with a 4xx that retrying will not change."""


def _quote(text: str) -> str:
    import urllib.parse

    return urllib.parse.quote(text, safe="")
