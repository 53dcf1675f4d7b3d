"""Scenario files are outside input: the built-in ones load, every mistake is one
ScenarioError naming the file and the key, and no input makes the parser fail otherwise."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from mechaway_sim import scenario as scn
from mechaway_sim.scenario import ScenarioError, duration_s, offset_s, parse, time_of_day_s

GREENHOUSE = Path(scn.__file__).parent / "scenarios" / "greenhouse.toml"


def test_the_builtin_greenhouse_loads_with_every_kind_of_device_and_fault() -> None:
    assert "greenhouse" in scn.builtin()
    sc = scn.load("greenhouse")
    kinds = set(sc.device_kinds().values())
    assert kinds == {"i2c", "gpio", "modbus", "serial", "mqtt"}
    assert {f.kind for f in sc.faults} == {"silent", "noise", "unplug", "exception"}
    assert {m.transport for m in sc.modbus} == {"tcp", "rtu"}
    assert {s.framing for s in sc.serial} == {"cobs", "line"}
    assert sc.duration == 86400.0
    assert sc.start_tod == 5 * 3600.0


def test_the_same_scenario_in_yaml_is_the_same_scenario(tmp_path: Path) -> None:
    import tomllib

    raw = tomllib.loads(GREENHOUSE.read_text())
    path = tmp_path / "gh.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert scn.load(str(path)) == scn.load("greenhouse")


BASE = """
[scenario]
name = "t"
[[gpio]]
pin = 17
name = "fan"
mode = "output"
[[actuators]]
name = "fan"
input = "gpio:17"
[[i2c]]
name = "air"
chip = "bme280"
"""


@pytest.mark.parametrize(
    ("extra", "where"),
    [
        ('[[faults]]\nat = "25:00"\ntarget = "air"\nkind = "silent"', "faults[0]: at: '25:00'"),
        ('[[faults]]\nat = "10:00"\ntarget = "nope"\nkind = "silent"',
         "faults[0].target: no device named 'nope' (known: air, fan)"),
        ('[[faults]]\nat = "10:00"\ntarget = "air"\nkind = "unplug"',
         "faults[0].kind: a i2c device cannot have fault 'unplug'"),
        ('[[faults]]\nat = "10:00"\nfor = "soon"\ntarget = "air"\nkind = "silent"',
         "faults[0]: for: 'soon' is not a duration"),
        ('[[i2c]]\nname = "air2"\nchip = "bme280"', "i2c[1].address: bus 1 address 0x76"),
        ('[[i2c]]\nname = "x"\nchip = "tmp102"\nsignals = {temperature_c = "moon"}',
         "i2c[1].signals.temperature_c: no model signal 'moon'"),
        ('[[i2c]]\nname = "x"\nchip = "tmp999"', "i2c[1].chip: Invalid enum value 'tmp999'"),
        ('[[i2c]]\nname = "x"\nchip = "tmp102"\nspeed = 3', "i2c[1]: unknown key `speed`"),
        ('[[actuators]]\nname = "heat"\ninput = "coil:plc:1:0"',
         "actuators[1].input: no [[modbus]] server 'plc'"),
        ('[[actuators]]\nname = "vent"\ninput = "pwm:18"',
         "actuators[1].input: no [[gpio]] pin 18 with mode pwm"),
        ('[[actuators]]\nname = "x"\ninput = "relay 3"', "actuators[1]: input 'relay 3'"),
        ('[[modbus]]\nname = "m"\ntransport = "rtu"\nunits = [{unit = 1, device = "plc"}]',
         "modbus[0]: rtu needs link"),
        ('[[serial]]\nname = "gps"\nlink = "g"\nprotocol = "nmea"\nframing = "cobs"',
         "serial[0]: nmea sentences are lines"),
        ('[[gpio]]\npin = 17\nname = "x"\nmode = "input"', "gpio[1].pin: pin 17 is also gpio[0]"),
        ('[model]\nsunrise = "21:00"', "model: sunrise must be before sunset"),
    ],
)
def test_mistakes_are_located(extra: str, where: str) -> None:
    with pytest.raises(ScenarioError) as info:
        parse(BASE + extra, "gh.toml")
    assert str(info.value).startswith("gh.toml: ")
    assert where in str(info.value), str(info.value)


def test_broken_files_name_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[scenario\nname = 1")
    with pytest.raises(ScenarioError, match=r"bad.toml: invalid TOML"):
        scn.load(str(bad))
    ybad = tmp_path / "bad.yaml"
    ybad.write_text("scenario: [1, 2\n")
    with pytest.raises(ScenarioError, match=r"bad.yaml: invalid YAML"):
        scn.load(str(ybad))
    with pytest.raises(ScenarioError, match=r"no scenario 'nowhere'.*built-in: greenhouse"):
        scn.load("nowhere")
    (tmp_path / "list.yaml").write_text("- 1\n")
    with pytest.raises(ScenarioError, match="expected a table of sections, got list"):
        scn.load(str(tmp_path / "list.yaml"))


@given(st.integers(0, 10**7), st.sampled_from(["ms", "s", "m", "h", "d"]))
def test_durations_read_their_unit(n: int, unit: str) -> None:
    factor = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}[unit]
    assert duration_s(f"{n}{unit}") == pytest.approx(n * factor)


@given(st.integers(0, 23), st.integers(0, 59), st.integers(0, 59), st.integers(0, 86399))
def test_times_of_day_and_offsets(h: int, m: int, s: int, start: int) -> None:
    text = f"{h:02d}:{m:02d}:{s:02d}"
    tod = time_of_day_s(text)
    assert tod == h * 3600 + m * 60 + s
    off = offset_s(text, float(start))
    assert 0 <= off < 86400
    assert (start + off) % 86400 == tod


@given(st.text(max_size=12))
def test_anything_else_is_not_a_duration(text: str) -> None:
    try:
        value = duration_s(text)
    except ValueError as err:
        assert repr(text) in str(err)
    else:
        assert value >= 0 and text.strip()[-1] in "smhd"


JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.floats(allow_nan=False)
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=4),
    max_leaves=20,
)  # fmt: skip
KEYS = st.sampled_from(["scenario", "model", "actuators", "i2c", "gpio", "modbus", "serial",
                        "mqtt", "faults", "other"])  # fmt: skip


@settings(max_examples=150, deadline=None)
@given(st.dictionaries(KEYS, JSONISH, max_size=6))
def test_no_document_breaks_the_parser(doc: dict[str, object]) -> None:
    """Whatever a file holds, the answer is a scenario or one ScenarioError."""
    doc.setdefault("scenario", {"name": "x"})
    try:
        parse(yaml.safe_dump(doc), "fuzz.yaml", "yaml")
    except ScenarioError as err:
        assert str(err).startswith("fuzz.yaml: ")


@settings(max_examples=100, deadline=None)
@given(st.data())
def test_mutating_the_greenhouse_gives_a_scenario_or_a_located_error(data: st.DataObject) -> None:
    import tomllib

    raw = tomllib.loads(GREENHOUSE.read_text())
    section = data.draw(st.sampled_from(["i2c", "gpio", "modbus", "serial", "faults",
                                         "actuators"]))  # fmt: skip
    items = raw[section]
    i = data.draw(st.integers(0, len(items) - 1))
    key = data.draw(st.sampled_from(sorted(items[i])))
    items[i][key] = data.draw(JSONISH)
    try:
        parse(json.dumps(raw), "gh.yaml", "yaml")
    except ScenarioError as err:
        assert str(err).startswith("gh.yaml: "), str(err)


def test_the_cli_lists_and_checks(tmp_path: Path) -> None:
    run = [sys.executable, "-m", "mechaway_sim"]
    out = subprocess.run([*run, "list"], capture_output=True, text=True, check=True).stdout
    assert out.startswith("greenhouse ")
    bad = tmp_path / "bad.toml"
    bad.write_text(BASE + '[[faults]]\nat = "10:00"\ntarget = "nope"\nkind = "silent"\n')
    res = subprocess.run([*run, "check", str(GREENHOUSE), str(bad)], capture_output=True,
                         text=True, check=False)  # fmt: skip
    assert res.returncode == 1
    assert "greenhouse.toml: ok (12 devices, 4 faults)" in res.stdout
    assert f"{bad}: faults[0].target: no device named 'nope'" in res.stderr
