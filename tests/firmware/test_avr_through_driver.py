"""mechaway talking to the Arduino bridge firmware running in simavr, through the serial
driver and the serial nodes: hello, readings, a command that sets a pin and the reading
that reflects it, in both framings."""

from __future__ import annotations

from typing import Any

import pytest
from firmware_support import Simavr

from mechaway.drivers.base import Connections, parse_sections
from mechaway.drivers.serial import SerialDriver
from mechaway.nodes.context import Services
from mechaway.runtime.engine import Engine
from mechaway.testing import flows
from mechaway.testing.flows import edge, node, wait_until


def bridge_flow() -> dict[str, Any]:
    """Readings in; commands out (with their acks and errors collected)."""
    return flows.doc(
        "uno",
        [node("in", "SerialInNode", connection="uno"), node("readings", "CollectNode"),
         node("in_bad", "CollectNode"),
         node("cmd", "SerialOutNode", connection="uno", ack_timeout=3.0),
         node("acks", "CollectNode"), node("cmd_bad", "CollectNode")],
        [edge("in", "readings"), edge("in", "in_bad", "error"), edge("cmd", "acks"),
         edge("cmd", "cmd_bad", "error")],
    )  # fmt: skip


@pytest.mark.asyncio
async def test_flow_reads_and_commands_the_simulated_uno(simavr: Simavr) -> None:
    section = {"port": simavr.pty, "framing": simavr.framing, "bridge": True,
               "reconnect_min": 0.1, "reconnect_max": 0.5}  # fmt: skip
    conns = Connections(parse_sections({"serial": {"uno": section}}))
    engine = Engine(Services(drivers=conns), stop_timeout=2.0)
    try:
        await flows.deploy(engine, bridge_flow())
        drv: SerialDriver = await conns.get(SerialDriver, "uno")
        # the driver asks for hello when it opens the port (the board's own was lost)
        await wait_until(lambda: drv.device is not None, timeout=15, what="the hello")
        assert drv.device is not None
        assert (drv.device["device"], drv.device["caps"]) == ("uno-1", ["pin", "pwm", "custom"])

        def readings() -> list[dict[str, Any]]:
            return flows.got("uno", "readings")

        await wait_until(lambda: len(readings()) >= 3, timeout=10, what="readings")
        last = readings()[-1]
        assert last["topic"] == "serial/uno/reading" and last["device"] == "uno-1"
        assert last["payload"]["d13"] == 0 and abs(last["payload"]["a0"] - 205) <= 2
        seqs = [m["seq"] for m in readings()]
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))  # none lost, none twice

        engine.inject("uno", "cmd", {"payload": {"t": "cmd", "op": "pin", "pin": 13,
                                                 "value": 1}})  # fmt: skip
        await wait_until(lambda: len(flows.got("uno", "acks")) == 1, timeout=10, what="ack")
        assert flows.got("uno", "acks")[0]["ack"]["t"] == "ack"
        seen = len(readings())
        await wait_until(lambda: len(readings()) >= seen + 2, timeout=10, what="readings")
        high = readings()[-1]["payload"]
        assert high["d13"] == 1 and abs(high["a0"] - 614) <= 2  # pin 13 wired to A0

        engine.inject("uno", "cmd", {"payload": {"t": "cmd", "op": "pwm", "pin": 4,
                                                 "value": 10}})  # fmt: skip
        await wait_until(lambda: len(flows.got("uno", "cmd_bad")) == 1, timeout=10,
                         what="the refusal")  # fmt: skip
        assert flows.got("uno", "cmd_bad")[0]["error"]["kind"] == "bad_pin"
        engine.inject("uno", "cmd", {"payload": {"t": "cmd", "op": "custom", "name": "count",
                                                 "arg": 5000}})  # fmt: skip
        await wait_until(lambda: readings()[-1]["payload"]["count"] >= 5000, timeout=10,
                         what="the counter set by a custom command")  # fmt: skip
        status = drv.status()
        assert status["counters"]["acks"] == 2 and status["counters"]["command_errors"] == 1
        assert status["counters"]["crc"] == 0
        # opening the pty mid-frame may cost the first frame; nothing else failed
        assert len(flows.got("uno", "in_bad")) <= 1
    finally:
        await engine.stop()
        await conns.close()
