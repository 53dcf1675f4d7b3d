"""The engine: compiles flows into plans of direct calls, deploys, hot-swaps and stops them.

Hot path: each pure node is wrapped in one closure (``dispatch``) that counts, calls
``process`` under ``try`` and calls the downstream closures directly, depth first. A hop is
a function call. Sinks get a bounded deque and one writer task each.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from mechaway.errors import FlowError, Issue, error_text
from mechaway.flow.diff import FlowDiff, diff
from mechaway.flow.validate import ValidFlow
from mechaway.nodes.base import Message, Node, NodeStats, SinkParams
from mechaway.nodes.context import NodeContext, Services

log = logging.getLogger("mechaway.engine")

Dispatch = Callable[[Message], None]


def _error_message(flow_id: str, node_id: str, msg: Message, exc: BaseException) -> Message:
    return {
        **msg,
        "error": {
            "flow": flow_id,
            "node": node_id,
            "type": type(exc).__name__,
            "message": error_text(exc),
        },
    }


class Router:
    """Routes what one node produced to the dispatchers wired to its ports."""

    __slots__ = ("errors", "flow_id", "node", "out", "ports", "stats")

    def __init__(
        self, flow_id: str, node: Node, stats: NodeStats, ports: dict[str, tuple[Dispatch, ...]]
    ) -> None:
        self.flow_id = flow_id
        self.node = node
        self.stats = stats
        self.ports = ports
        self.out = ports.get("out", ())
        self.errors = ports.get("error", ())

    def emit(self, msg: Message, port: str = "out") -> None:
        """Send one message out of ``port`` (bound as the node's ``emit``)."""
        self.stats.out += 1
        for d in self.out if port == "out" else self.ports.get(port, ()):
            d(msg)

    def route(self, result: Any, msg: Message) -> None:
        """Route a non-dict result: a list of ``(port, message)`` pairs (checked whole first,
        so a malformed result emits nothing)."""
        try:
            if type(result) is not list:
                raise TypeError(f"expected a dict, a list or None, got {type(result).__name__}")
            for item in result:
                port, m = item
                if type(m) is not dict or type(port) is not str:
                    raise TypeError(f"expected (port, message) pairs, got {item!r:.80}")
        except (TypeError, ValueError) as exc:
            self.fail(msg, TypeError(f"bad result from process(): {exc}"))
            return
        for port, m in result:
            self.emit(m, port)

    def fail(self, msg: Message, exc: BaseException) -> None:
        """Count an error, log it once per burst, send the message to the ``error`` port."""
        st = self.stats
        st.errors += 1
        st.last_error = f"{type(exc).__name__}: {error_text(exc)}"
        st.last_error_ts = time.time()
        self.node.ctx.burst.warning("node failed: %s", st.last_error)
        if self.errors:
            err = _error_message(self.flow_id, self.node.id, msg, exc)
            for d in self.errors:
                d(err)


def make_dispatch(node: Node, router: Router) -> Dispatch:
    """The hot-path closure for a pure node."""
    process = node.process
    st = router.stats
    out = router.out
    ports = router.ports
    route = router.route
    fail = router.fail

    def dispatch(msg: Message) -> None:
        st.inp += 1
        try:
            r = process(msg)
        except Exception as exc:
            fail(msg, exc)
            return
        if r is None:
            return
        if type(r) is dict:
            st.out += 1
            for d in out:
                d(r)
        elif type(r) is list and len(r) == 1 and type(r[0]) is tuple and len(r[0]) == 2:
            # a router's usual answer, one (port, message) pair, is routed here rather
            # than by ``route`` and ``emit``: two Python calls less per message, which
            # count when messages arrive to cold caches
            port, m = r[0]
            if type(m) is dict and type(port) is str:
                st.out += 1
                for d in out if port == "out" else ports.get(port, ()):
                    d(m)
            else:
                route(r, msg)
        else:
            route(r, msg)

    return dispatch


class SinkRunner:
    """A sink's bounded queue, overflow policy and single writer task."""

    def __init__(self, flow: RunningFlow, node: Node, stats: NodeStats) -> None:
        params: SinkParams = node.params
        self.flow_id = flow.doc_id
        self.node = node
        self.stats = stats
        self.bound = params.queue_size
        self.policy = params.overflow
        self.queue: collections.deque[Message] = collections.deque()
        self.wakeup = asyncio.Event()
        self.room = asyncio.Event()
        self.room.set()
        self.router: Router | None = None
        self.task: asyncio.Task[None] | None = None
        self.idle = asyncio.Event()
        self.idle.set()
        #: the message whose write is in progress (off the queue, not yet done)
        self.writing: Message | None = None

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(
            self._writer(), name=f"mechaway.sink[{self.flow_id}.{self.node.id}]"
        )

    def put(self, msg: Message) -> None:
        """The sink's dispatch: enqueue under the overflow policy."""
        st = self.stats
        st.inp += 1
        q = self.queue
        if len(q) >= self.bound:
            if self.policy == "drop_oldest":
                q.popleft()
                st.dropped += 1
            elif self.policy == "drop_new":
                st.dropped += 1
                return
            else:  # block: accept, and make the sources wait for room
                self.room.clear()
        q.append(msg)
        self.idle.clear()
        if not self.wakeup.is_set():
            self.wakeup.set()

    async def _writer(self) -> None:
        q = self.queue
        write = self.node.write
        while True:
            await self.wakeup.wait()
            self.wakeup.clear()
            while q:
                # taken off the queue before the write: a drop_oldest overflow during the
                # await must evict a waiting message, not the one being written
                msg = self.writing = q.popleft()
                try:
                    r = await write(msg)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    self.writing = None
                    if self.router is not None:
                        self.router.fail(msg, exc)
                else:
                    self.writing = None
                    if r is not None and self.router is not None:
                        if type(r) is dict:
                            self.router.emit(r)
                        else:
                            self.router.route(r, msg)
                if not self.room.is_set() and len(q) < self.bound:
                    self.room.set()
            self.room.set()
            self.idle.set()

    async def drain(self, timeout: float) -> int:
        """Wait until the queue is empty (bounded), stop the writer; return messages left."""
        if self.task is None:
            return len(self.queue)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.idle.wait(), timeout)
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task
        # the writer may have died with the queue full: a ``block`` source still waiting
        # for room (a kept source awaiting the old plan's room) must not wait forever
        self.room.set()
        left = len(self.queue) + (self.writing is not None)
        if left:
            self.stats.dropped += left
            log.warning(
                "flow %s node %s: %d queued messages not written before the stop timeout",
                self.flow_id,
                self.node.id,
                left,
            )
        return left


@dataclass
class RunningFlow:
    """A deployed revision: node instances, counters, the compiled plan."""

    valid: ValidFlow
    rev: int
    instances: dict[str, Node]
    stats: dict[str, NodeStats]
    sinks: dict[str, SinkRunner] = field(default_factory=dict)
    dispatch: dict[str, Dispatch] = field(default_factory=dict)
    routers: dict[str, Router] = field(default_factory=dict)
    #: the room events of the ``block`` sinks only (drop-policy sinks never push back)
    block_rooms: tuple[asyncio.Event, ...] = ()
    deployed_at: float = field(default_factory=time.time)

    @property
    def doc_id(self) -> str:
        return self.valid.doc.id

    def order(self) -> list[str]:
        """Node ids in topological order (sources first)."""
        indeg = dict.fromkeys(self.valid.nodes, 0)
        for (_src, _port), dsts in self.valid.routes.items():
            for d in dsts:
                indeg[d] += 1
        ready = [n for n, k in indeg.items() if k == 0]
        out: list[str] = []
        while ready:
            n = ready.pop(0)
            out.append(n)
            for (src, _port), dsts in self.valid.routes.items():
                if src == n:
                    for d in dsts:
                        indeg[d] -= 1
                        if indeg[d] == 0:
                            ready.append(d)
        return out

    def compile(self) -> None:
        """Build dispatchers and routers for every node (reverse topological order)."""
        self.dispatch = {}
        self.routers = {}
        for nid in reversed(self.order()):
            node = self.instances[nid]
            ports: dict[str, tuple[Dispatch, ...]] = {}
            for (src, port), dsts in self.valid.routes.items():
                if src == nid:
                    ports[port] = tuple(self.dispatch[d] for d in dsts)
            router = Router(self.doc_id, node, self.stats[nid], ports)
            self.routers[nid] = router
            if node.kind == "sink":
                self.dispatch[nid] = self.sinks[nid].put
            elif node.kind == "pure":
                self.dispatch[nid] = make_dispatch(node, router)

    def bind(self) -> None:
        """Point every node's ``emit``/``room`` (and sink writers) at this plan."""
        self.block_rooms = tuple(s.room for s in self.sinks.values() if s.policy == "block")
        room = self.wait_room
        # most flows have no ``block`` sink: their sources then ask a constant per message
        blocked = self.is_blocked if self.block_rooms else _never_blocked
        for nid, node in self.instances.items():
            node.emit = self.routers[nid].emit
            node.room = room
            node.blocked = blocked
            node.stats = self.stats[nid]
            if nid in self.sinks:
                self.sinks[nid].router = self.routers[nid]

    def is_blocked(self) -> bool:
        """True while a ``block`` sink of this flow is full (sources call this per message)."""
        return any(not room.is_set() for room in self.block_rooms)

    async def wait_room(self) -> None:
        """Sources await this: returns when no ``block`` sink of the flow is full."""
        for s in self.sinks.values():
            if not s.room.is_set():
                await s.room.wait()


#: what sources of a flow without ``block`` sinks ask per message: ``bool()`` is False,
#: and a C call costs no Python frame
_never_blocked: Callable[[], bool] = bool


class Engine:
    """Owns the running flows. All methods run on the event loop thread."""

    def __init__(self, services: Services | None = None, *, stop_timeout: float = 5.0) -> None:
        self.services = services or Services()
        self.flows: dict[str, RunningFlow] = {}
        self.stop_timeout = stop_timeout
        self._locks: dict[str, asyncio.Lock] = {}
        #: set by ``stop``: a deploy that gets its flow's lock afterwards is refused
        self._closing = False
        #: called with (flow_id, node_id, node) after a node is created, before start
        self.on_node_created: Callable[[str, str, Node], None] | None = None
        #: called with (flow_id, node_id, node) before a node is stopped for good
        self.on_node_retired: Callable[[str, str, Node], None] | None = None

    def _lock(self, flow_id: str) -> asyncio.Lock:
        return self._locks.setdefault(flow_id, asyncio.Lock())

    async def deploy(self, valid: ValidFlow, rev: int = 0) -> FlowDiff:
        """Validate-diff-start-swap-stop. On failure the running revision stays untouched."""
        fid = valid.doc.id
        async with self._lock(fid):
            if self._closing:
                raise FlowError([Issue("id", f"flow {fid!r} not deployed: the engine is stopping")])
            return await self._deploy(valid, rev)

    async def _deploy(self, valid: ValidFlow, rev: int) -> FlowDiff:
        fid = valid.doc.id
        old = self.flows.get(fid)
        d = diff(old.valid.doc if old else None, valid.doc)
        if valid.doc.disabled:
            await self._remove(fid)
            return FlowDiff((), (), tuple(old.instances) if old else (), (), True)
        if old is not None and d.noop:
            old.rev = rev or old.rev
            return d
        # a ``disabled`` node is in the document, not in ``valid.nodes``: never started
        fresh_ids = [nid for nid in (*d.added, *d.changed) if nid in valid.nodes]
        instances: dict[str, Node] = {}
        stats: dict[str, NodeStats] = {}
        for nid in d.kept:
            if nid not in valid.nodes:
                continue
            assert old is not None
            instances[nid] = old.instances[nid]
            stats[nid] = old.stats[nid]
        new_nodes: dict[str, Node] = {}
        try:
            for nid in fresh_ids:
                vn = valid.nodes[nid]
                node = vn.cls(nid, vn.params, NodeContext(fid, nid, self.services))
                new_nodes[nid] = node
                if self.on_node_created is not None:
                    self.on_node_created(fid, nid, node)
        except Exception as exc:
            raise FlowError([Issue(f"nodes ({nid})", f"cannot create node: {exc}")]) from exc
        instances.update(new_nodes)
        stats.update({nid: NodeStats() for nid in new_nodes})
        rf = RunningFlow(valid, rev, instances, stats)
        for nid, node in instances.items():
            if node.kind == "sink":
                if old is not None and nid in d.kept:
                    rf.sinks[nid] = old.sinks[nid]
                else:
                    rf.sinks[nid] = SinkRunner(rf, node, stats[nid])
        started: list[Node] = []
        current = ""
        try:
            for nid in rf.order():
                fresh = new_nodes.get(nid)
                if fresh is None or fresh.kind == "source":
                    continue
                current = nid
                await fresh.start()
                started.append(fresh)
            rf.compile()
            rf.bind()
            for nid, fresh in new_nodes.items():
                if fresh.kind == "sink":
                    rf.sinks[nid].start()
            for nid, fresh in new_nodes.items():
                if fresh.kind == "source":
                    current = nid
                    await fresh.start()
                    started.append(fresh)
        except BaseException as exc:
            # a failed start, or the deploy cancelled (shutdown): the old revision runs on
            await self._roll_back(old, rf, new_nodes, started)
            if not isinstance(exc, Exception):
                raise
            raise FlowError([Issue(f"nodes ({current})", f"failed to start: {exc}")]) from exc
        self.flows[fid] = rf
        if old is not None:
            gone = [nid for nid in old.order() if nid not in d.kept]
            # the swap is done: the retired nodes stop even if this deploy is cancelled now
            stopping = asyncio.ensure_future(self._stop_nodes(old, gone))
            try:
                await asyncio.shield(stopping)
            except asyncio.CancelledError:
                await stopping
                raise
        log.debug(
            "flow %s swapped (+%d ~%d -%d =%d)",
            fid,
            len(d.added),
            len(d.changed),
            len(d.removed),
            len(d.kept),
        )
        return d

    async def _roll_back(
        self,
        old: RunningFlow | None,
        rf: RunningFlow,
        new_nodes: dict[str, Node],
        started: list[Node],
    ) -> None:
        """Undo a deploy that did not complete: the old plan back, the new nodes stopped
        (sources first; a new sink writes what the kept nodes sent it, then stops)."""
        if old is not None:
            old.bind()
        started_ids = {id(n) for n in started}
        for nid in rf.order():
            node = new_nodes.get(nid)
            if node is None:
                continue
            if nid in rf.sinks:
                await rf.sinks[nid].drain(self.stop_timeout)
            if id(node) in started_ids:
                await self._stop_node(rf.doc_id, node, retire=False)

    async def _stop_node(self, fid: str, node: Node, *, retire: bool = True) -> None:
        if retire and self.on_node_retired is not None:
            try:
                self.on_node_retired(fid, node.id, node)
            except Exception:
                log.exception("flow %s node %s: saving state failed", fid, node.id)
        try:
            await asyncio.wait_for(node.stop(), self.stop_timeout)
        except Exception:
            log.exception("flow %s node %s: stop failed", fid, node.id)

    async def _stop_nodes(self, rf: RunningFlow, ids: list[str]) -> None:
        """Stop nodes in topological order: sources first, sinks drained before stopping."""
        for nid in ids:
            node = rf.instances[nid]
            if nid in rf.sinks:
                await rf.sinks[nid].drain(self.stop_timeout)
            await self._stop_node(rf.doc_id, node)

    async def remove(self, flow_id: str) -> bool:
        """Stop and forget a flow; False if it was not running."""
        async with self._lock(flow_id):
            return await self._remove(flow_id)

    async def _remove(self, flow_id: str) -> bool:
        rf = self.flows.pop(flow_id, None)
        if rf is None:
            return False
        await self._stop_nodes(rf, rf.order())
        log.info("flow %s stopped", flow_id)
        return True

    async def stop(self) -> None:
        """Stop every flow (sources first within each), draining sinks. Deploys in flight
        finish first (then stop); deploys that come later are refused."""
        self._closing = True
        while self.flows or any(lock.locked() for lock in self._locks.values()):
            for fid in [*self.flows, *(f for f, lk in self._locks.items() if lk.locked())]:
                await self.remove(fid)

    def inject(self, flow_id: str, node_id: str, msg: Message) -> None:
        """Feed a message into a node as if an upstream node sent it (tests, webhooks)."""
        self.flows[flow_id].dispatch[node_id](msg)

    def status(self) -> dict[str, Any]:
        """Per flow and node: type, counters, queue depth, last error, node extras."""
        out: dict[str, Any] = {}
        for fid, rf in self.flows.items():
            nodes: dict[str, Any] = {}
            for nid, node in rf.instances.items():
                entry: dict[str, Any] = {"type": node.type_name, **rf.stats[nid].as_dict()}
                if nid in rf.sinks:
                    runner = rf.sinks[nid]  # accepted, not yet written (the one in progress too)
                    entry["queue"] = len(runner.queue) + (runner.writing is not None)
                    entry["queue_size"] = rf.sinks[nid].bound
                extra = node.status()
                if extra:
                    entry.update(extra)
                nodes[nid] = entry
            out[fid] = {
                "rev": rf.rev,
                "name": rf.valid.doc.name,
                "deployed_at": rf.deployed_at,
                "nodes": nodes,
            }
        return out
