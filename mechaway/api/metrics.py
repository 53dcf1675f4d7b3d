"""``GET /metrics``: the daemon's figures in the Prometheus text exposition format (0.0.4).

Everything is read at scrape time from what the daemon keeps anyway: the engine's
per-node counters (``NodeStats``, the same numbers ``GET /api/v1/status`` shows), the
drivers' status, the store's counters, ``/proc/self``. Nothing is added to the hot path.

Event-loop lag needs a timer; it runs only while someone scrapes: the first scrape starts
it (one callback a second), and it stops by itself ``LAG_IDLE_S`` after the last scrape.
Each tick measures how late the loop ran it; a scrape reports the last lateness and the
largest since the previous scrape. Until the first tick the lag is not reported.

Access: the admin or the read-only token (the API's own rules; ``/metrics`` is listed with
the token-checked routes in ``server.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import resource
import time
from collections.abc import Iterable, Mapping
from typing import Any

from aiohttp import web

from mechaway import __version__
from mechaway.api.auth import Guard
from mechaway.api.webhook import UNKNOWN
from mechaway.nodes import websocket as ws_nodes
from mechaway.nodes.http import pending_answers
from mechaway.runtime.manager import FlowManager
from mechaway.store.outbox import Outbox

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
#: the lag timer's period, and how long it runs after the last scrape
LAG_PERIOD_S = 1.0
LAG_IDLE_S = 600.0

Labels = Mapping[str, str]
Sample = tuple[Labels, float]


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _num(value: float) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


class Exposition:
    """Families of samples, rendered as Prometheus text."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def add(
        self, name: str, kind: str, help_: str, samples: Iterable[Sample] | float
    ) -> None:
        if isinstance(samples, int | float):
            samples = [({}, samples)]
        rows = list(samples)
        if not rows:
            return
        suffix = "_total" if kind == "counter" else ""
        self.lines.append(f"# HELP {name}{suffix} {help_}")
        self.lines.append(f"# TYPE {name}{suffix} {kind}")
        for labels, value in rows:
            if labels:
                text = ",".join(f'{k}="{_escape(str(v))}"' for k, v in labels.items())
                self.lines.append(f"{name}{suffix}{{{text}}} {_num(value)}")
            else:
                self.lines.append(f"{name}{suffix} {_num(value)}")

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


class LoopLag:
    """Event-loop lateness, sampled by a 1 s timer that runs only while scrapes come."""

    def __init__(self, period_s: float = LAG_PERIOD_S, idle_s: float = LAG_IDLE_S) -> None:
        self.period_s = period_s
        self.idle_s = idle_s
        self._handle: asyncio.TimerHandle | None = None
        self._due = 0.0
        self._last_scrape = 0.0
        self.last: float | None = None
        self.max: float = 0.0
        self.samples = 0

    @property
    def running(self) -> bool:
        return self._handle is not None

    def scraped(self) -> None:
        """A scrape: (re)start the timer; the max starts afresh after this scrape."""
        loop = asyncio.get_running_loop()
        self._last_scrape = loop.time()
        if self._handle is None:
            self._schedule(loop)

    def _schedule(self, loop: asyncio.AbstractEventLoop) -> None:
        self._due = loop.time() + self.period_s
        self._handle = loop.call_at(self._due, self._tick, loop)

    def _tick(self, loop: asyncio.AbstractEventLoop) -> None:
        now = loop.time()
        lag = max(0.0, now - self._due)
        self.last = lag
        self.max = max(self.max, lag)
        self.samples += 1
        if now - self._last_scrape > self.idle_s:
            self._handle = None  # nobody scrapes any more: stop
            return
        self._schedule(loop)

    def take_max(self) -> float:
        value, self.max = self.max, 0.0
        return value

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None


MANAGER: web.AppKey[FlowManager] = web.AppKey("metrics_manager", FlowManager)
STATUS_FN: web.AppKey[Any] = web.AppKey("metrics_status", object)
METRICS_GUARD: web.AppKey[Guard] = web.AppKey("metrics_guard", Guard)
LAG: web.AppKey[LoopLag] = web.AppKey("metrics_lag", LoopLag)
SCRAPES: web.AppKey[list[int]] = web.AppKey("metrics_scrapes", list)

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
_STARTED = time.time()


def _rss_bytes() -> float:
    try:
        with open("/proc/self/statm", "rb") as f:
            return float(int(f.read().split()[1]) * _PAGE)
    except (OSError, ValueError, IndexError):
        return float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)


def _io() -> dict[str, int]:
    """``/proc/self/io``: write_bytes (what reached storage), wchar..."""
    out: dict[str, int] = {}
    try:
        with open("/proc/self/io") as f:
            for line in f:
                key, _, value = line.partition(":")
                out[key] = int(value)
    except (OSError, ValueError):
        pass
    return out


def _open_fds() -> int | None:
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return None


def _flows(e: Exposition, flows: Mapping[str, Any]) -> None:
    ins, outs, errs, drops, depth, cap, extra, revs = [], [], [], [], [], [], [], []
    for fid, flow in flows.items():
        revs.append(({"flow": fid}, flow.get("rev") or 0))
        for nid, node in (flow.get("nodes") or {}).items():
            lab = {"flow": fid, "node": nid, "type": str(node.get("type", ""))}
            ins.append((lab, node.get("in", 0)))
            outs.append((lab, node.get("out", 0)))
            errs.append((lab, node.get("errors", 0)))
            drops.append((lab, node.get("dropped", 0)))
            if "queue" in node:
                depth.append(({"flow": fid, "node": nid}, node["queue"]))
                cap.append(({"flow": fid, "node": nid}, node.get("queue_size", 0)))
            for key, value in _figures(node):
                extra.append(({"flow": fid, "node": nid, "figure": key}, value))
    e.add("mechaway_flows", "gauge", "flows running", len(flows))
    e.add("mechaway_flow_revision", "gauge", "running revision of each flow", revs)
    e.add("mechaway_node_messages_in", "counter", "messages a node received", ins)
    e.add("mechaway_node_messages_out", "counter", "messages a node sent on", outs)
    e.add("mechaway_node_errors", "counter", "messages a node failed on", errs)
    e.add("mechaway_node_dropped", "counter", "messages a node dropped (overflow, ...)", drops)
    e.add("mechaway_node_queue_depth", "gauge", "messages waiting in a sink's queue", depth)
    e.add("mechaway_node_queue_capacity", "gauge", "a sink queue's bound", cap)
    e.add("mechaway_node_figure", "gauge",
          "a node's own figures from its status (decode_errors, requests, clients...)",
          extra)  # fmt: skip


#: node status keys that are the engine's (exposed by their own families) or not figures
_OWN = frozenset({"in", "out", "errors", "dropped", "queue", "queue_size", "last_error_ts",
                  "rev"})  # fmt: skip


def _figures(node: Mapping[str, Any], prefix: str = "") -> Iterable[tuple[str, float]]:
    """Numeric node extras, nested dicts flattened with ``_`` (strings left out)."""
    for key, value in node.items():
        if not prefix and key in _OWN:
            continue
        name = f"{prefix}{key}"
        if isinstance(value, bool):
            yield name, float(value)
        elif isinstance(value, int | float):
            yield name, value
        elif isinstance(value, dict) and not prefix:
            yield from _figures(value, f"{name}_")


def _connections(e: Exposition, conns: Mapping[str, Any]) -> None:
    up, state, reconnects, events = [], [], [], []
    for conn in conns.values():
        lab = {"kind": str(conn.get("kind", "")), "name": str(conn.get("name", ""))}
        up.append((lab, 1 if conn.get("state") == "connected" else 0))
        state.append(({**lab, "state": str(conn.get("state", "unknown"))}, 1))
        reconnects.append((lab, conn.get("reconnects") or 0))
        for key, value in (conn.get("counters") or {}).items():
            if isinstance(value, int | float) and not isinstance(value, bool):
                events.append(({**lab, "event": str(key)}, value))
    e.add("mechaway_connection_up", "gauge", "1 while a connection is connected", up)
    e.add("mechaway_connection_state", "gauge", "a connection's state (1 for its state)", state)
    e.add("mechaway_connection_reconnects", "counter", "reconnections of a connection",
          reconnects)  # fmt: skip
    e.add("mechaway_connection_events", "counter", "a connection's counters by name", events)


def _store(e: Exposition, store: Mapping[str, Any], outbox: Mapping[str, Any] | None) -> None:
    if store:
        for key, kind, help_ in (
            ("commits", "counter", "store transactions committed"),
            ("fsync_commits", "counter", "store commits that were fsynced"),
            ("writes", "counter", "write operations the store's writer ran"),
            ("failed_writes", "counter", "write operations that failed"),
            ("failed_commits", "counter", "commits that failed"),
        ):
            if isinstance(store.get(key), int):
                e.add(f"mechaway_store_{key}", kind, help_, store[key])
        if isinstance(store.get("queued"), int):
            e.add("mechaway_store_queue_depth", "gauge", "writes waiting for the store's writer",
                  store["queued"])  # fmt: skip
        e.add("mechaway_store_trouble", "gauge", "1 while the store refuses writes (disk full...)",
              1 if store.get("trouble") else 0)  # fmt: skip
        path = store.get("path")
        if isinstance(path, str):
            sizes = []
            for suffix, label in (("", "db"), ("-wal", "wal")):
                with contextlib.suppress(OSError):
                    sizes.append(({"file": label}, os.stat(path + suffix).st_size))
            e.add("mechaway_store_file_bytes", "gauge", "size of the SQLite file and its WAL",
                  sizes)  # fmt: skip
    if outbox:
        e.add("mechaway_outbox_messages", "gauge", "messages in the outbox (not yet acked)",
              outbox.get("messages", 0))  # fmt: skip
        e.add("mechaway_outbox_bytes", "gauge", "accounted bytes in the outbox",
              outbox.get("bytes", 0))  # fmt: skip
        e.add("mechaway_outbox_last_seq", "gauge", "highest sequence number appended",
              outbox.get("last_seq", 0))  # fmt: skip
        e.add("mechaway_outbox_acked_seq", "gauge", "highest sequence number the hub acked",
              outbox.get("acked_upto", 0))  # fmt: skip
        e.add("mechaway_outbox_dropped", "counter", "messages evicted from the outbox",
              outbox.get("dropped", 0))  # fmt: skip


def outbox_state(manager: FlowManager) -> dict[str, Any] | None:
    """The outbox's depth and bytes (two index lookups); None when it cannot be read."""
    db = manager.store.db
    try:
        box = Outbox.existing(db)
        if box is not None:
            return box.state()
        rows = db.read(
            "SELECT floor_seq, floor_cum, acked_upto, dropped FROM outbox_state WHERE id = 1"
        )
        if not rows:
            return None
        floor_seq, floor_cum, acked, dropped = rows[0]
        last = db.read("SELECT seq, cum FROM outbox ORDER BY seq DESC LIMIT 1")
        last_seq, last_cum = (last[0][0], last[0][1]) if last else (floor_seq, floor_cum)
        return {"messages": last_seq - floor_seq, "bytes": last_cum - floor_cum,
                "last_seq": last_seq, "acked_upto": acked, "dropped": dropped}  # fmt: skip
    except Exception:  # a closed or broken store: the rest of the page still serves
        return None


def render(app: web.Application) -> str:
    """The whole page."""
    e = Exposition()
    manager = app[MANAGER]
    try:
        status: Mapping[str, Any] = app[STATUS_FN]() or {}
    except Exception:
        status = {}
    e.add("mechaway_info", "gauge", "1, labelled with the version and device",
          [({"version": __version__, "device": str(status.get("device", ""))}, 1)])  # fmt: skip
    if isinstance(status.get("uptime_s"), int | float):
        e.add("mechaway_uptime_seconds", "gauge", "seconds since the daemon started",
              status["uptime_s"])  # fmt: skip
    flows = status.get("flows")
    _flows(e, flows if isinstance(flows, Mapping) else manager.engine.status())
    _connections(e, status.get("connections") or {})
    store = status.get("store") or {}
    _store(e, store if isinstance(store, Mapping) else {}, outbox_state(manager))
    # the HTTP side: hooks, sockets, the API's refusals
    eps = ws_nodes.endpoints()
    e.add("mechaway_websocket_clients", "gauge", "clients connected to an endpoint",
          [({"flow": ep.flow_id, "path": ep.path}, len(ep.clients)) for ep in eps])  # fmt: skip
    e.add("mechaway_websocket_slow_closed", "counter",
          "clients disconnected for reading too slowly",
          [({"flow": ep.flow_id, "path": ep.path}, ep.slow_closed) for ep in eps])  # fmt: skip
    e.add("mechaway_webhook_waiting", "gauge", "webhook requests waiting for the flow's answer",
          pending_answers())  # fmt: skip
    e.add("mechaway_webhook_unknown", "counter", "requests to webhooks that do not exist",
          app[UNKNOWN][0] if UNKNOWN in app else 0)  # fmt: skip
    guard = app[METRICS_GUARD]
    e.add("mechaway_api_refused", "counter", "API requests refused, by reason",
          [({"reason": k}, v) for k, v in guard.refused.items()])  # fmt: skip
    e.add("mechaway_metrics_scrapes", "counter", "scrapes of this page", app[SCRAPES][0])
    # the process
    e.add("process_resident_memory_bytes", "gauge", "resident set size", _rss_bytes())
    t = os.times()
    e.add("process_cpu_seconds", "counter", "user and system CPU time", t.user + t.system)
    e.add("process_start_time_seconds", "gauge", "start of the process, epoch seconds",
          _STARTED)  # fmt: skip
    fds = _open_fds()
    if fds is not None:
        e.add("process_open_fds", "gauge", "open file descriptors", fds)
    io = _io()
    if "write_bytes" in io:
        e.add("mechaway_process_write_bytes", "counter",
              "bytes the process caused to be written to storage (/proc/self/io)",
              io["write_bytes"])  # fmt: skip
    lag = app[LAG]
    if lag.last is not None:
        e.add("mechaway_event_loop_lag_seconds", "gauge",
              "how late the loop ran the last 1 s timer tick", lag.last)  # fmt: skip
        e.add("mechaway_event_loop_lag_max_seconds", "gauge",
              "largest lateness since the previous scrape", lag.take_max())  # fmt: skip
    return e.text()


async def metrics(request: web.Request) -> web.Response:
    app = request.app
    app[SCRAPES][0] += 1
    app[LAG].scraped()
    return web.Response(body=render(app).encode(), headers={"Content-Type": CONTENT_TYPE})


def setup_metrics(
    app: web.Application, manager: FlowManager, status_fn: Any, guard: Guard
) -> None:
    """Serve ``GET /metrics``; the lag timer stops with the app."""
    app[MANAGER] = manager
    app[STATUS_FN] = status_fn
    app[METRICS_GUARD] = guard
    app[LAG] = LoopLag()
    app[SCRAPES] = [0]
    app.router.add_get("/metrics", metrics)

    async def _stop(app: web.Application) -> None:
        app[LAG].stop()

    app.on_cleanup.append(_stop)
