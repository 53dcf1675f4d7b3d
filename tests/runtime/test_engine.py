"""The engine: diff, hot swap (state kept, in-flight messages delivered), failed deploys,
failing nodes, sink queues with their overflow policies and backpressure."""

from __future__ import annotations

import asyncio
from typing import Any, ClassVar

import pytest

from mechaway.errors import FlowError
from mechaway.flow.diff import diff
from mechaway.flow.validate import validate
from mechaway.nodes.base import Message, Node, NodeParams, Result, SinkNode
from mechaway.nodes.registry import register_node
from mechaway.runtime.engine import Engine
from mechaway.testing.flows import (
    IDLE_SOURCE,
    deploy,
    doc,
    edge,
    got,
    node,
    payloads,
    settle,
    single,
    stats,
    wait_until,
)
from mechaway.testing.nodes import COLLECTED

#: (event, node id, tag) from RecordNode
EVENTS: list[tuple[str, str, int]] = []


class RecordParams(NodeParams):
    tag: int = 0
    fail_start: bool = False


@register_node("CoreTestRecordNode")
class RecordNode(Node):
    """Tags messages with ``tag``; records start/stop; can refuse to start."""

    Params = RecordParams

    async def start(self) -> None:
        EVENTS.append(("start", self.id, self.params.tag))
        if self.params.fail_start:
            raise RuntimeError("start refused")

    async def stop(self) -> None:
        EVENTS.append(("stop", self.id, self.params.tag))

    def process(self, msg: Message) -> Result:
        return {**msg, "tag": self.params.tag}


@register_node("CoreTestBadInitNode")
class BadInitNode(Node):
    """Its constructor raises."""

    def __init__(self, node_id: str, params: Any, ctx: Any) -> None:
        raise ValueError("cannot build this node")


@register_node("CoreTestFlakySinkNode")
class FlakySinkNode(SinkNode):
    """A sink whose write fails on payload "bad"."""

    written: ClassVar[list[Any]] = []

    async def write(self, msg: Message) -> Result:
        if msg.get("payload") == "bad":
            raise OSError("bus error")
        FlakySinkNode.written.append(msg["payload"])
        return None


@register_node("CoreTestBadResultNode")
class BadResultNode(Node):
    """Returns something that is neither a message nor (port, message) pairs."""

    def process(self, msg: Message) -> Result:
        return [("out",)]  # type: ignore[list-item]


@register_node("CoreTestPairNode")
class PairNode(Node):
    """Returns the result its message asks for: ``payload`` names a shape below."""

    ports: ClassVar[tuple[str, ...]] = ("out", "alt")

    def process(self, msg: Message) -> Result:
        out = {"payload": msg["payload"]}
        shape = msg["payload"]
        results: dict[str, Any] = {
            "tuple-out": [("out", out)],
            "tuple-alt": [("alt", out)],
            "list-alt": [["alt", out]],  # a pair as a list (what a Lua table becomes)
            "two": [("out", out), ("alt", out)],
            "bad-message": [("alt", "not a message")],
            "bad-port": [(1, out)],
            "short": [("out",)],
        }
        result: Result = results[shape]
        return result


@pytest.fixture(autouse=True)
def _clear_events() -> None:
    EVENTS.clear()
    FlakySinkNode.written.clear()


def counting_flow(fid: str = "f", *, log_keep: int = 20, sink: str = "sink") -> dict[str, Any]:
    """``src -> cnt (CountNode) -> sink``, with a LogNode branch to change."""
    return doc(
        fid,
        [
            IDLE_SOURCE,
            node("cnt", "CountNode"),
            node(sink, "CollectNode"),
            node("log", "LogNode", keep=log_keep),
        ],
        [edge("src", "cnt"), edge("cnt", sink), edge("cnt", "log")],
    )


def m(v: Any) -> dict[str, Any]:
    return {"payload": v, "topic": "t", "ts": 0.0}


# -- diff -------------------------------------------------------------------------------------
def test_diff_added_changed_removed_kept() -> None:
    old = validate(counting_flow()).doc
    new_raw = counting_flow(log_keep=5)  # log changed
    new_raw["nodes"].remove(next(n for n in new_raw["nodes"] if n["id"] == "sink"))
    new_raw["nodes"].append(node("sink2", "CollectNode"))
    new_raw["edges"] = [edge("src", "cnt"), edge("cnt", "sink2"), edge("cnt", "log")]
    d = diff(old, validate(new_raw).doc)
    assert d.added == ("sink2",)
    assert d.changed == ("log",)
    assert d.removed == ("sink",)
    assert set(d.kept) == {"src", "cnt"}
    assert d.edges_changed
    assert not d.noop


def test_diff_identical_is_noop_and_param_order_does_not_matter() -> None:
    a = validate(counting_flow()).doc
    raw = counting_flow()
    raw["nodes"][0]["params"] = dict(reversed(list(raw["nodes"][0]["params"].items())))
    raw["edges"].reverse()
    d = diff(a, validate(raw).doc)
    assert d.noop
    assert set(d.kept) == {"src", "cnt", "sink", "log"}


def test_diff_type_change_is_a_change_and_edges_only_is_not_noop() -> None:
    a = validate(counting_flow()).doc
    raw = counting_flow()
    raw["nodes"][1]["type"] = "PassNode"
    assert diff(a, validate(raw).doc).changed == ("cnt",)
    raw = counting_flow()
    raw["edges"].pop()  # cnt -> log gone
    d = diff(a, validate(raw).doc)
    assert (d.added, d.changed, d.removed) == ((), (), ())
    assert d.edges_changed and not d.noop


def test_diff_against_nothing_adds_everything() -> None:
    d = diff(None, validate(counting_flow()).doc)
    assert d.added == ("src", "cnt", "sink", "log")
    assert d.kept == d.changed == d.removed == ()


# -- hot swap ---------------------------------------------------------------------------------
@pytest.mark.asyncio
async def test_hot_swap_keeps_state_of_unchanged_nodes(engine: Engine) -> None:
    await deploy(engine, counting_flow(), rev=1)
    cnt = engine.flows["f"].instances["cnt"]
    for v in range(3):
        engine.inject("f", "cnt", m(v))
    d = await deploy(engine, counting_flow(log_keep=5), rev=2)
    assert d.changed == ("log",)
    assert "cnt" in d.kept
    assert engine.flows["f"].instances["cnt"] is cnt
    assert engine.flows["f"].rev == 2
    for v in range(3, 5):
        engine.inject("f", "cnt", m(v))
    await settle(engine, "f")
    assert [x["count"] for x in got("f", "sink")] == [1, 2, 3, 4, 5]
    assert stats(engine, "f", "cnt")["in"] == 5  # counters survive the swap as well
    assert stats(engine, "f", "log")["in"] == 2  # the changed node starts afresh
    assert stats(engine, "f", "log")["recent"] == [3, 4]


@pytest.mark.asyncio
async def test_hot_swap_rewires_kept_nodes(engine: Engine) -> None:
    await deploy(engine, counting_flow())
    engine.inject("f", "cnt", m(0))
    await deploy(engine, counting_flow(sink="other"))
    engine.inject("f", "cnt", m(1))
    await settle(engine, "f")
    assert [x["count"] for x in got("f", "sink")] == [1]
    assert [x["count"] for x in got("f", "other")] == [2]


@pytest.mark.asyncio
async def test_hot_swap_stops_removed_and_changed_starts_new(engine: Engine) -> None:
    def flow(tag: int, extra: bool) -> dict[str, Any]:
        nodes = [
            IDLE_SOURCE,
            node("rec", "CoreTestRecordNode", tag=tag),
            node("sink", "CollectNode"),
        ]
        edges = [edge("src", "rec"), edge("rec", "sink")]
        if extra:
            nodes.append(node("gone", "CoreTestRecordNode", tag=9))
            edges.append(edge("rec", "gone"))
        return doc("f", nodes, edges)

    await deploy(engine, flow(1, True))
    assert EVENTS == [("start", "rec", 1), ("start", "gone", 9)]
    EVENTS.clear()
    await deploy(engine, flow(2, False))
    # the new instance starts before the swap; the old ones stop after it
    assert EVENTS == [("start", "rec", 2), ("stop", "rec", 1), ("stop", "gone", 9)]
    engine.inject("f", "rec", m(0))
    await settle(engine, "f")
    assert got("f", "sink")[0]["tag"] == 2


@pytest.mark.asyncio
async def test_identical_redeploy_is_a_noop(engine: Engine) -> None:
    await deploy(engine, counting_flow(), rev=1)
    rf = engine.flows["f"]
    d = await deploy(engine, counting_flow(), rev=0)
    assert d.noop
    assert engine.flows["f"] is rf
    assert rf.rev == 1


@pytest.mark.asyncio
async def test_disabled_flow_is_stopped(engine: Engine) -> None:
    await deploy(engine, counting_flow())
    raw = counting_flow()
    raw["disabled"] = True
    d = await deploy(engine, raw)
    assert "f" not in engine.flows
    assert set(d.removed) == {"src", "cnt", "sink", "log"}


# -- failed deploys ---------------------------------------------------------------------------
async def _assert_old_revision_runs(engine: Engine, rf: Any, cnt: Node, expect: list[int]) -> None:
    assert engine.flows["f"] is rf
    assert rf.rev == 1
    assert rf.instances["cnt"] is cnt
    engine.inject("f", "cnt", m("after"))
    await settle(engine, "f")
    assert [x["count"] for x in got("f", "sink")] == expect


@pytest.mark.asyncio
async def test_failed_start_leaves_running_revision_untouched(engine: Engine) -> None:
    await deploy(engine, counting_flow(), rev=1)
    rf = engine.flows["f"]
    cnt = rf.instances["cnt"]
    engine.inject("f", "cnt", m(0))
    bad = counting_flow(sink="new_sink")
    bad["nodes"].append(node("ok", "CoreTestRecordNode", tag=1))
    bad["nodes"].append(node("bad", "CoreTestRecordNode", tag=2, fail_start=True))
    bad["edges"] += [edge("cnt", "ok"), edge("ok", "bad")]
    with pytest.raises(FlowError) as exc:
        await deploy(engine, bad, rev=2)
    assert "nodes (bad): failed to start: start refused" in str(exc.value)
    # what started before the failure (topological order) was stopped again
    assert ("start", "ok", 1) in EVENTS
    assert ("stop", "ok", 1) in EVENTS
    await _assert_old_revision_runs(engine, rf, cnt, [1, 2])
    assert got("f", "new_sink") == []


@pytest.mark.asyncio
async def test_failed_source_start_rebinds_kept_nodes_to_old_plan(engine: Engine) -> None:
    await deploy(engine, counting_flow(), rev=1)
    rf = engine.flows["f"]
    cnt = rf.instances["cnt"]
    bad = counting_flow(sink="new_sink")  # cnt is kept but wired to a new sink...
    bad["nodes"].append(node("hw", "CoreTestBadSourceNode"))  # ...and a source fails last
    with pytest.raises(FlowError) as exc:
        await deploy(engine, bad, rev=2)
    assert "nodes (hw): failed to start: no such device" in str(exc.value)
    await _assert_old_revision_runs(engine, rf, cnt, [1])
    assert got("f", "new_sink") == []


@pytest.mark.asyncio
async def test_node_constructor_failure_is_a_flow_error(engine: Engine) -> None:
    await deploy(engine, counting_flow(), rev=1)
    rf = engine.flows["f"]
    bad = counting_flow()
    bad["nodes"].append(node("weird", "CoreTestBadInitNode"))
    with pytest.raises(FlowError) as exc:
        await deploy(engine, bad, rev=2)
    assert "nodes (weird): cannot create node: cannot build this node" in str(exc.value)
    await _assert_old_revision_runs(engine, rf, rf.instances["cnt"], [1])


@pytest.mark.asyncio
async def test_failed_first_deploy_leaves_nothing_running(engine: Engine) -> None:
    raw = doc(
        "f",
        [node("hw", "CoreTestBadSourceNode"), node("sink", "CollectNode")],
        [edge("hw", "sink")],
    )
    with pytest.raises(FlowError):
        await deploy(engine, raw)
    assert "f" not in engine.flows


# -- in-flight messages -----------------------------------------------------------------------
def slow_flow(fid: str, tag: int, *, delay: float = 0.004) -> dict[str, Any]:
    return doc(
        fid,
        [
            IDLE_SOURCE,
            node("tag", "ChangeNode", rules=[{"op": "set", "path": "tag", "value": tag}]),
            node("sink", "CollectNode", delay=delay),
        ],
        [edge("src", "tag"), edge("tag", "sink")],
    )


@pytest.mark.asyncio
async def test_in_flight_messages_survive_redeploy_of_the_same_flow(engine: Engine) -> None:
    await deploy(engine, slow_flow("f", 1))
    for v in range(100):
        engine.inject("f", "tag", m(v))
    assert stats(engine, "f", "sink")["queue"] == 100  # all in flight when the deploy starts
    d = await deploy(engine, slow_flow("f", 2))  # the node upstream of the sink changes
    assert d.changed == ("tag",)
    assert "sink" in d.kept
    for v in range(100, 110):
        engine.inject("f", "tag", m(v))
    await settle(engine, "f", timeout=10)
    out = got("f", "sink")
    assert [x["payload"] for x in out] == list(range(110))
    assert [x["tag"] for x in out] == [1] * 100 + [2] * 10
    assert stats(engine, "f", "sink")["dropped"] == 0


@pytest.mark.asyncio
async def test_in_flight_messages_survive_deploy_of_another_flow(engine: Engine) -> None:
    await deploy(engine, slow_flow("a", 1))
    for v in range(100):
        engine.inject("a", "tag", m(v))
    assert stats(engine, "a", "sink")["queue"] == 100
    await deploy(engine, slow_flow("b", 1, delay=0))
    engine.inject("b", "tag", m("b1"))
    await deploy(engine, slow_flow("b", 2, delay=0))
    await engine.remove("b")
    await settle(engine, "a", timeout=10)
    assert payloads("a", "sink") == list(range(100))
    assert payloads("b", "sink") == ["b1"]


@pytest.mark.asyncio
async def test_changed_sink_drains_its_queue_before_it_stops(engine: Engine) -> None:
    await deploy(engine, slow_flow("f", 1, delay=0.004))
    for v in range(50):
        engine.inject("f", "tag", m(v))
    d = await deploy(engine, slow_flow("f", 1, delay=0.0))  # the sink itself changes
    assert d.changed == ("sink",)
    engine.inject("f", "tag", m(50))
    await settle(engine, "f")
    # COLLECTED is keyed by flow.node: old and new instance append to the same list
    assert sorted(payloads("f", "sink")) == list(range(51))


def delay_flow(seconds: float, sink: str = "sink") -> dict[str, Any]:
    return doc(
        "f",
        [IDLE_SOURCE, node("dly", "DelayNode", seconds=seconds), node(sink, "CollectNode")],
        [edge("src", "dly"), edge("dly", sink)],
    )


@pytest.mark.asyncio
async def test_kept_timer_node_emits_into_the_new_plan(engine: Engine) -> None:
    await deploy(engine, delay_flow(0.2))
    for v in range(3):
        engine.inject("f", "dly", m(v))
    await deploy(engine, delay_flow(0.2, sink="sink2"))  # dly kept, its downstream replaced
    await wait_until(lambda: len(got("f", "sink2")) == 3, what="held messages in sink2")
    assert payloads("f", "sink2") == [0, 1, 2]
    assert got("f", "sink") == []


@pytest.mark.asyncio
async def test_changed_timer_node_hands_on_what_it_held(engine: Engine) -> None:
    await deploy(engine, delay_flow(3600))
    for v in range(3):
        engine.inject("f", "dly", m(v))
    await deploy(engine, delay_flow(0.01))  # dly changed: the old instance flushes on stop
    engine.inject("f", "dly", m(3))
    await wait_until(lambda: len(got("f", "sink")) == 4, what="4 messages")
    assert payloads("f", "sink") == [0, 1, 2, 3]


@pytest.mark.asyncio
async def test_stop_drains_sinks(engine: Engine) -> None:
    await deploy(engine, slow_flow("f", 1, delay=0.002))
    for v in range(30):
        engine.inject("f", "tag", m(v))
    await engine.stop()
    assert payloads("f", "sink") == list(range(30))
    assert engine.flows == {}


@pytest.mark.asyncio
async def test_stop_timeout_bounds_the_drain_and_counts_what_was_left() -> None:
    engine = Engine(stop_timeout=0.2)
    await deploy(engine, slow_flow("f", 1, delay=0.5))
    for v in range(5):
        engine.inject("f", "tag", m(v))
    rf = engine.flows["f"]
    t = asyncio.get_running_loop().time()
    await engine.stop()
    assert asyncio.get_running_loop().time() - t < 2.0
    assert len(got("f", "sink")) + rf.stats["sink"].dropped == 5
    assert rf.stats["sink"].dropped >= 4


# -- failing nodes ----------------------------------------------------------------------------
@pytest.mark.asyncio
async def test_a_raising_node_does_not_stop_the_flow(engine: Engine) -> None:
    raw = doc(
        "f",
        [
            IDLE_SOURCE,
            node("fail", "FailNode", on="boom"),
            node("sink", "CollectNode"),
            node("errs", "CollectNode"),
        ],
        [edge("src", "fail"), edge("fail", "sink"), edge("fail", "errs", "error")],
    )
    await deploy(engine, raw)
    await deploy(engine, counting_flow("other"))
    for v in ("ok1", "boom", "ok2", "boom", "ok3"):
        engine.inject("f", "fail", m(v))
        engine.inject("other", "cnt", m(v))
    await settle(engine, "f")
    await settle(engine, "other")
    assert payloads("f", "sink") == ["ok1", "ok2", "ok3"]
    st = stats(engine, "f", "fail")
    assert st["errors"] == 2
    assert st["in"] == 5
    assert st["out"] == 3
    assert st["last_error"] == "RuntimeError: failing on 'boom'"
    assert st["last_error_ts"] is not None
    errs = got("f", "errs")
    assert [e["payload"] for e in errs] == ["boom", "boom"]
    assert errs[0]["error"] == {
        "flow": "f",
        "node": "fail",
        "type": "RuntimeError",
        "message": "failing on 'boom'",
    }
    assert errs[0]["topic"] == "t"  # the rest of the message travels with the error
    assert len(got("other", "sink")) == 5  # another flow never noticed


@pytest.mark.asyncio
async def test_a_raising_node_without_error_port_just_counts(engine: Engine) -> None:
    raw = doc(
        "f",
        [IDLE_SOURCE, node("fail", "FailNode"), node("sink", "CollectNode")],
        [edge("src", "fail"), edge("fail", "sink")],
    )
    await deploy(engine, raw)
    for v in ("boom", "x"):
        engine.inject("f", "fail", m(v))
    await settle(engine, "f")
    assert payloads("f", "sink") == ["x"]
    assert stats(engine, "f", "fail")["errors"] == 1


@pytest.mark.asyncio
async def test_a_bad_result_is_an_error_not_a_crash(engine: Engine) -> None:
    raw = doc(
        "f",
        [IDLE_SOURCE, node("bad", "CoreTestBadResultNode"), node("sink", "CollectNode")],
        [edge("src", "bad"), edge("bad", "sink")],
    )
    await deploy(engine, raw)
    engine.inject("f", "bad", m(1))
    await settle(engine, "f")
    st = stats(engine, "f", "bad")
    assert st["errors"] == 1
    assert "bad result from process()" in st["last_error"]
    assert got("f", "sink") == []


@pytest.mark.asyncio
async def test_a_failing_sink_write_is_counted_and_the_writer_goes_on(engine: Engine) -> None:
    raw = doc(
        "f",
        [IDLE_SOURCE, node("out", "CoreTestFlakySinkNode"), node("errs", "CollectNode")],
        [edge("src", "out"), edge("out", "errs", "error")],
    )
    await deploy(engine, raw)
    for v in ("a", "bad", "b"):
        engine.inject("f", "out", m(v))
    await settle(engine, "f")
    assert FlakySinkNode.written == ["a", "b"]
    st = stats(engine, "f", "out")
    assert st["errors"] == 1
    assert st["last_error"] == "OSError: bus error"
    assert [(e["payload"], e["error"]["type"]) for e in got("f", "errs")] == [("bad", "OSError")]


# -- sink queues ------------------------------------------------------------------------------
def sink_flow(**sink_params: Any) -> dict[str, Any]:
    return doc(
        "f", [IDLE_SOURCE, node("sink", "CollectNode", **sink_params)], [edge("src", "sink")]
    )


@pytest.mark.asyncio
@pytest.mark.parametrize(("policy", "kept"), [("drop_oldest", [7, 8, 9]), ("drop_new", [0, 1, 2])])
async def test_sink_overflow_drop_policies(engine: Engine, policy: str, kept: list[int]) -> None:
    await deploy(engine, sink_flow(queue_size=3, overflow=policy, delay=0.01))
    # injected synchronously: the writer has not run yet, so the queue overflows
    for v in range(10):
        engine.inject("f", "sink", m(v))
    st = stats(engine, "f", "sink")
    assert (st["in"], st["dropped"], st["queue"], st["queue_size"]) == (10, 7, 3, 3)
    await settle(engine, "f")
    assert payloads("f", "sink") == kept


@pytest.mark.asyncio
async def test_sink_block_backpressures_the_inject_source(engine: Engine) -> None:
    raw = doc(
        "f",
        [
            node("inj", "InjectNode", interval=0.002, payload=1),
            node("sink", "CollectNode", queue_size=2, overflow="block", delay=0.05),
        ],
        [edge("inj", "sink")],
    )
    await deploy(engine, raw)
    rf = engine.flows["f"]
    deepest = 0
    for _ in range(60):  # ~0.6 s: unthrottled, the source would send ~300 messages
        deepest = max(deepest, len(rf.sinks["sink"].queue))
        await asyncio.sleep(0.01)
    sent = stats(engine, "f", "inj")["sent"]
    st = stats(engine, "f", "sink")
    # the source ran at the writer's pace (~20/s), not the timer's (500/s): nothing was
    # dropped and the queue never grew past its bound (plus the one accepted when full)
    assert st["dropped"] == 0
    assert deepest <= 3
    assert sent == len(got("f", "sink")) + st["queue"]
    assert sent >= 3


@pytest.mark.asyncio
async def test_sink_queue_size_is_validated() -> None:
    with pytest.raises(FlowError) as exc:
        validate(sink_flow(queue_size=0))
    assert "nodes[1] (sink).params.queue_size: expected `int` >= 1" in str(exc.value)
    with pytest.raises(FlowError) as exc:
        validate(sink_flow(overflow="drop_everything"))
    assert "nodes[1] (sink).params.overflow" in str(exc.value)


@pytest.mark.asyncio
async def test_status_shows_every_flow_and_node(engine: Engine) -> None:
    await deploy(engine, counting_flow("a"), rev=3)
    await deploy(engine, counting_flow("b"), rev=1)
    engine.inject("a", "cnt", m(1))
    st = engine.status()
    assert set(st) == {"a", "b"}
    assert st["a"]["rev"] == 3
    assert st["a"]["name"] == "test a"
    assert set(st["a"]["nodes"]) == {"src", "cnt", "sink", "log"}
    assert st["a"]["nodes"]["cnt"] == {
        "type": "CountNode",
        "in": 1,
        "out": 1,
        "errors": 0,
        "dropped": 0,
        "last_error": None,
        "last_error_ts": None,
    }
    assert st["a"]["nodes"]["sink"]["queue_size"] == 1000
    assert st["a"]["nodes"]["src"]["sent"] == 0
    COLLECTED.clear()


@pytest.mark.asyncio
async def test_drop_oldest_never_evicts_the_message_being_written() -> None:
    """Overflow while a write is in progress drops the oldest *waiting* message: the one
    being written is delivered, and every message is either written or counted."""
    engine = Engine()
    raw = single("ov", "PassNode", {})
    raw["nodes"][2]["params"] = {"queue_size": 2, "overflow": "drop_oldest", "delay": 0.05}
    await deploy(engine, raw)
    engine.inject("ov", "n", {"payload": 1})
    await asyncio.sleep(0.01)  # the writer has taken message 1 and is writing it
    for i in (2, 3, 4, 5):
        engine.inject("ov", "n", {"payload": i})
    await settle(engine, "ov")
    assert payloads("ov", "sink_out") == [1, 4, 5]
    assert stats(engine, "ov", "sink_out")["dropped"] == 2
    await engine.stop()


@pytest.mark.asyncio
async def test_pair_results_route_alike_on_every_path(engine: Engine) -> None:
    """One (port, message) tuple is routed inline by the dispatcher; lists of pairs in
    other shapes go through Router.route: both must route, count and refuse alike."""
    raw = doc(
        "f",
        [IDLE_SOURCE, node("pair", "CoreTestPairNode"), node("o", "CollectNode"),
         node("a", "CollectNode")],
        [edge("src", "pair"), edge("pair", "o"), edge("pair", "a", port="alt")],
    )  # fmt: skip
    await deploy(engine, raw)
    shapes = ["tuple-out", "tuple-alt", "list-alt", "two", "bad-message", "bad-port", "short"]
    for shape in shapes:
        engine.inject("f", "pair", m(shape))
    await settle(engine, "f")
    assert payloads("f", "o") == ["tuple-out", "two"]
    assert payloads("f", "a") == ["tuple-alt", "list-alt", "two"]
    st = stats(engine, "f", "pair")
    assert st["in"] == len(shapes)
    assert st["out"] == 5
    assert st["errors"] == 3
    assert "bad result from process()" in st["last_error"]


@pytest.mark.asyncio
async def test_a_huge_error_text_is_cut_in_status_and_error_messages(engine: Engine) -> None:
    raw = single("f", "FailNode", {"on": "x" * 100_000}, ports=("out", "error"))
    await deploy(engine, raw)
    engine.inject("f", "n", {"payload": "x" * 100_000})
    await settle(engine, "f")
    (err,) = got("f", "sink_error")
    assert len(err["error"]["message"]) <= 500
    assert err["error"]["message"].endswith("... (100013 characters)")  # failing on 'x...'
    assert len(stats(engine, "f", "n")["last_error"]) <= 500 + len("RuntimeError: ")
