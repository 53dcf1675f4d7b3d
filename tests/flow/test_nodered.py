"""Node-RED flows.json import: real-shaped files, the mapping, the report, the CLI, and
random Node-RED-shaped graphs that must never crash it nor lose a node unreported."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mechaway.cli import main
from mechaway.flow.nodered import MAPPERS, PASS_THROUGH, convert
from mechaway.flow.validate import validate

DATA = Path(__file__).parent / "data" / "nodered"


def load(name: str) -> Any:
    return orjson.loads((DATA / name).read_bytes())


def accounted(raw: list[dict[str, Any]], result: dict[str, Any]) -> set[str]:
    """Every id the import accounts for: mapped nodes, tabs, merged links, reported."""
    seen = {p["node"] for p in result["report"]}
    for f in result["flows"]:
        seen.add(f["ui"]["nodered"]["tab"])
        seen.update(f["ui"]["nodered"]["merged"])
        seen.update(n["ui"]["nodered"]["id"] for n in f["nodes"] if "ui" in n)
    return seen


def problems(result: dict[str, Any], nid: str) -> list[str]:
    return [p["problem"] for p in result["report"] if p["node"] == nid]


def test_simple_flow_maps_and_validates() -> None:
    r = convert(load("simple.json")).as_dict()
    assert r["report"] == []
    (f,) = r["flows"]
    validate(f)
    assert f["id"] == "greenhouse"
    route = next(n for n in f["nodes"] if n["type"] == "RouteNode")
    assert route["params"]["mode"] == "first"
    assert route["params"]["rules"][0] == {"port": "rule1", "property": "payload", "op": "gt",
                                           "value": 30}  # fmt: skip
    assert {(e["from"][:4], e["port"], e["to"][:4]) for e in f["edges"]} == {
        ("a1b2", "out", "b2c3"), ("b2c3", "rule1", "c3d4"), ("b2c3", "rule2", "d4e5")}
    inject = next(n for n in f["nodes"] if n["type"] == "InjectNode")
    assert inject["params"] == {"interval": 5.0, "once": True, "once_delay": 0.1,
                                "payload": 21.5, "topic": "gh/temp"}  # fmt: skip
    assert inject["ui"]["x"] == 140 and inject["ui"]["nodered"]["type"] == "inject"


def test_mqtt_gpio_flow_and_broker_section() -> None:
    r = convert(load("mqtt_gpio.json"))
    (f,) = r.flows
    by = {n["id"]: n for n in f["nodes"]}
    assert by["2b3c4d5e6f708192"]["params"]["connection"] == "home_broker"
    assert by["6f708192a3b4c5d6"]["params"]["pin"] == 17  # header pin 11 is GPIO17
    assert by["708192a3b4c5d6e7"]["params"] == {
        "first": "value", "first_value": "on", "then": "value", "second_value": "off",
        "seconds": 120.0, "extend": True}  # fmt: skip
    # PWM 0..100 becomes 0..1 through an inserted RangeNode
    assert by["5e6f708192a3b4c5_duty"]["type"] == "RangeNode"
    assert {"from": "5e6f708192a3b4c5_duty", "to": "5e6f708192a3b4c5", "port": "out"} in f[
        "edges"]
    assert "[mqtt.home_broker]" in r.config and 'host = "192.168.1.10"' in r.config
    assert 'protocol = "3.1.1"' in r.config
    validate(f)  # GPIO nodes exist: the whole flow deploys as imported


def test_modbus_serial_admin_api_format_and_function() -> None:
    r = convert(load("modbus_serial.json")).as_dict()
    (f,) = r["flows"]
    by = {n["id"]: n for n in f["nodes"]}
    read = by["aa00bb11cc22dd34"]["params"]
    assert (read["unit"], read["interval"], read["connection"]) == (2, 5.0, "plc")
    assert [x["address"] for x in read["reads"]] == [100, 101, 102, 103]
    assert by["aa00bb11cc22dd3a"]["params"]["unit"] == 1  # from the client's unit_id
    fn = by["aa00bb11cc22dd35"]
    assert fn["type"] == "FunLogicNode" and fn["disabled"] is True
    js = load("modbus_serial.json")["flows"][2]["func"]
    assert js in fn["params"]["script"] and fn["ui"]["nodered"]["func"] == js
    assert "--[=[" in fn["params"]["script"]  # the JS holds "]]": a longer bracket
    assert "[serial.dev_ttyacm0]" in r["config"] and "baudrate = 115200" in r["config"]
    assert "[modbus.plc]" in r["config"] and "timeout = 1.5" in r["config"]
    assert by["aa00bb11cc22dd38"]["type"] == "RateLimitNode"


def test_the_big_file_maps_or_reports_everything() -> None:
    raw = load("big.json")
    r = convert(raw).as_dict()
    assert {n["id"] for n in raw} <= accounted(raw, r)
    flows = {f["id"]: f for f in r["flows"]}
    assert set(flows) == {"everything", "second_tab"} and flows["second_tab"]["disabled"]
    everything = flows["everything"]
    types = {n["type"] for n in everything["nodes"]}
    assert types >= {"InjectNode", "MQTTInNode", "RouteNode", "ChangeNode", "TriggerNode",
                     "RangeNode", "DelayNode", "FunLogicNode", "GPIOOutNode", "GPIOInNode",
                     "PWMOutNode", "MQTTOutNode", "SerialInNode", "SerialOutNode",
                     "ModbusReadNode", "ModbusWriteNode"}  # fmt: skip
    edges = {(e["from"], e["port"], e["to"]) for e in everything["edges"]}
    # link out -> link in -> junction -> two targets: direct edges from the function's 2nd port
    assert ("1000000000000009", "out2", "1000000000000013") in edges
    assert ("1000000000000009", "out2", "1000000000000014") in edges
    assert set(everything["ui"]["nodered"]["merged"]) == {
        "1000000000000011", "1000000000000012", "7000000000000002", "1000000000000020"}
    # reported, never silent
    assert any("JSONata" in p for p in problems(r, "1000000000000003"))
    assert any("cycle" in p for p in problems(r, "1000000000000016"))
    assert ("1000000000000016", "out", "1000000000000015") not in edges
    assert any("subflow" in p for p in problems(r, "5b00000000000001"))
    assert any("subflow" in p for p in problems(r, "7000000000000001"))
    assert any("unknown node type" in p for p in problems(r, "2000000000000001"))
    assert any("another tab" in p for p in problems(r, "1000000000000019"))
    assert any("not supported" in p for p in problems(r, "1000000000000025"))  # link call
    assert any("MHoldingRegisters" in p for p in problems(r, "1000000000000023"))
    assert problems(r, "c000000000000004")  # an unknown config node
    trig = next(n for n in everything["nodes"] if n["type"] == "TriggerNode")
    assert trig["params"]["repeat"] is True and trig["params"]["second_port"] is True
    assert next(n for n in everything["nodes"] if n["id"] == "1000000000000022")["disabled"]
    route = next(n for n in everything["nodes"] if n["type"] == "RouteNode")
    assert route["params"]["mode"] == "all"
    assert [r_["port"] for r_ in route["params"]["rules"]] == ["rule1", "rule2", "rule5",
                                                                "rule7"]  # fmt: skip
    assert route["params"]["rules"][1]["value"] == "(?i)^err"
    assert route["params"]["rules"][2] == {"port": "rule5", "property": "payload.temp.unit",
                                           "op": "exists"}  # fmt: skip


def test_not_a_flows_file_is_reported() -> None:
    for raw in ({"nope": 1}, 42, None, "x"):
        r = convert(raw)
        assert r.flows == [] and len(r.report) == 1
    r = convert([{"id": "a", "type": "tab"}, {"id": "a", "type": "tab"}, {"no": "id"}])
    assert len(r.flows) == 1 and len(r.report) == 3  # + the empty tab does not validate


def test_cli_writes_one_file_per_tab_and_prints_the_report(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["import-nodered", str(DATA / "big.json"), "--out", str(tmp_path)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["everything.json", "second_tab.json"]
    out = capsys.readouterr().out
    assert "report entries" in out and "[mqtt.localhost]" in out
    assert orjson.loads((tmp_path / "second_tab.json").read_bytes())["disabled"] is True
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    assert main(["import-nodered", str(bad)]) == 1
    assert "invalid JSON" in capsys.readouterr().err


# -- random Node-RED-shaped graphs --------------------------------------------------------
TYPES = [*MAPPERS, *PASS_THROUGH, "link call", "comment", "group", "catch", "ui_gauge",
         "subflow:sf1", "http in"]  # fmt: skip
scalar = st.one_of(st.none(), st.booleans(), st.integers(-5, 5), st.floats(allow_nan=True),
                   st.text(max_size=6), st.sampled_from(["", "1", "-1", "250", "true", "ms",
                   "s", "num", "str", "json", "msg", "jsonata", "pay", "nul", "pwm", "tcp"]))
FIELDS = ["repeat", "crontab", "once", "payload", "payloadType", "property", "propertyType",
          "checkall", "minin", "maxin", "minout", "maxout", "action", "pauseType", "timeout",
          "timeoutUnits", "rate", "op1", "op1type", "op2", "op2type", "duration", "units",
          "outputs", "func", "topic", "qos", "datatype", "pin", "out", "freq", "intype",
          "dataType", "adr", "quantity", "unitid", "mode", "complete", "retain", "bytopic"]


@st.composite
def flows_json(draw: st.DrawFn) -> list[dict[str, Any]]:
    n_tabs = draw(st.integers(0, 3))
    tabs = [f"t{i}" for i in range(n_tabs)]
    n = draw(st.integers(0, 14))
    ids = [f"n{i}" for i in range(n)]
    configs = [{"id": "b1", "type": "mqtt-broker", "broker": draw(scalar)},
               {"id": "s1", "type": "serial-port", "serialport": draw(scalar)},
               {"id": "m1", "type": "modbus-client", "clienttype": draw(scalar)},
               {"id": "sf1", "type": "subflow", "name": "sf"}]
    out: list[dict[str, Any]] = [{"id": t, "type": "tab", "label": draw(st.text(max_size=5))}
                                 for t in tabs] + draw(st.lists(st.sampled_from(configs),
                                                                max_size=4, unique_by=str))
    targets = st.sampled_from([*ids, "missing", "b1"]) if ids else st.just("missing")
    for nid in ids:
        node: dict[str, Any] = {
            "id": nid,
            "type": draw(st.sampled_from(TYPES)),
            "z": draw(st.one_of(st.sampled_from(tabs or ["nowhere"]), st.none(),
                                st.just("sf1"), st.integers(0, 2))),
            "wires": draw(st.lists(st.lists(targets, max_size=3), max_size=3)),
            "broker": "b1", "serial": "s1", "server": "m1",
        }
        if draw(st.booleans()):
            node["links"] = draw(st.lists(targets, max_size=2))
        for key in draw(st.lists(st.sampled_from(FIELDS), max_size=6, unique=True)):
            node[key] = draw(scalar)
        if draw(st.booleans()):
            node["rules"] = draw(st.lists(st.dictionaries(
                st.sampled_from(["t", "v", "vt", "p", "pt", "to", "tot", "v2", "v2t"]),
                scalar, max_size=5), max_size=3))
        if draw(st.booleans()):
            node["d"] = True
        out.append(node)
    return draw(st.permutations(out))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(flows_json())
def test_random_graphs_never_crash_and_every_node_is_mapped_or_reported(
    raw: list[dict[str, Any]],
) -> None:
    r = convert(raw).as_dict()
    assert {n["id"] for n in raw} <= accounted(raw, r)
    orjson.dumps(r)  # JSON all the way
    for f in r["flows"]:
        ids = {n["id"] for n in f["nodes"]}
        assert len(ids) == len(f["nodes"])
        assert all(e["from"] in ids and e["to"] in ids for e in f["edges"])
