"""Scenario files: which devices, where, wired to what model, and the faults on a timeline.

A scenario is TOML (``.toml``) or YAML (``.yaml``/``.yml``) with the tables below (see
docs/simulator.md for every key). It is outside input: ``load``/``parse`` check it once,
and every mistake is one ``ScenarioError`` naming the file and the key
(``greenhouse.toml: faults[2].target: no device named 'air2' (known: air, meter, ...)``).

Times: ``at`` and the day's landmarks (``start``, ``sunrise``...) are times of day
(``"13:30"``, ``"06:00:30"``), or an offset from the start (``"+90m"``); durations
(``for``, ``every``, ``duration``) are ``"250ms"``, ``"90s"``, ``"15m"``, ``"2h"``,
``"1d"`` or a number of seconds.
"""

from __future__ import annotations

import math
import re
import tomllib
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

from mechaway.errors import located


class ScenarioError(ValueError):
    """A scenario file that cannot be run, with where and why."""


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_TIME = re.compile(r"^\s*(\d{1,2}):(\d{2})(?::(\d{2}))?\s*$")
DAY = 86400.0

Duration = Annotated[
    str | float,
    Meta(description='a duration: "250ms", "90s", "15m", "2h", "1d", or seconds'),
]
TimeOfDay = Annotated[
    str,
    Meta(description='a time of day "HH:MM[:SS]" (or, for at, "+DURATION" after the start)'),
]


def duration_s(value: str | float, what: str = "duration") -> float:
    """Seconds of a duration; ``ValueError`` saying what it expected."""
    if isinstance(value, bool):
        raise ValueError(f"{what}: expected a duration, got {value!r}")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        m = _DURATION.match(value)
        if m is None:
            raise ValueError(f'{what}: {value!r} is not a duration ("90s", "15m", "2h", "1d")')
        seconds = float(m.group(1)) * _UNITS[m.group(2)]
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"{what}: {value!r} is not a duration of zero or more seconds")
    return seconds


def time_of_day_s(value: str, what: str = "time") -> float:
    """Seconds after midnight of ``"HH:MM[:SS]"``."""
    m = _TIME.match(value) if isinstance(value, str) else None
    if m is None:
        raise ValueError(f'{what}: {value!r} is not a time of day "HH:MM" or "HH:MM:SS"')
    h, mi, s = int(m.group(1)), int(m.group(2)), int(m.group(3) or 0)
    if h > 23 or mi > 59 or s > 59:
        raise ValueError(f"{what}: {value!r} is not a time of day (00:00..23:59:59)")
    return h * 3600.0 + mi * 60.0 + s


def offset_s(value: str, start_tod: float, what: str = "at") -> float:
    """Seconds after the start of ``at``: ``"+DURATION"``, or the first ``"HH:MM"`` at or
    after the start time of day."""
    if isinstance(value, str) and value.strip().startswith("+"):
        return duration_s(value.strip()[1:], what)
    tod = time_of_day_s(value, what)
    return (tod - start_tod) % DAY


class Strict(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Unknown keys are errors (a typo is not silently a default)."""


class ScenarioInfo(Strict, kw_only=True):
    name: Annotated[str, Meta(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")]
    description: str = ""
    start: Annotated[TimeOfDay, Meta(description="time of day the clock starts at")] = "06:00"
    duration: Annotated[
        Duration, Meta(description="simulated time to run, then exit (0: until stopped)")
    ] = 0
    speed: Annotated[
        float, Meta(gt=0, le=100_000, description="simulated seconds per real second")
    ] = 60.0
    seed: Annotated[int, Meta(description="seed of the noise (same seed, same noise)")] = 1
    tick: Annotated[
        float, Meta(gt=0, le=1, description="real seconds between two steps of the model")
    ] = 0.02

    def __post_init__(self) -> None:
        time_of_day_s(self.start, "start")
        duration_s(self.duration, "duration")


class ModelSpec(Strict, kw_only=True):
    """One air volume heated by the sun, losing heat to the outside; actuators add heat or
    ventilation. Signals: air_c, air_rh, pressure_hpa, outside_c, sun_w_m2, lux, soil_pct,
    power_l1_w/_l2_w/_l3_w, power_w, and each actuator's name (its level 0..1)."""

    type: Literal["greenhouse"] = "greenhouse"
    air_start_c: float = 17.0
    capacity_kj_per_k: Annotated[float, Meta(gt=0)] = 2000.0
    loss_w_per_k: Annotated[float, Meta(ge=0)] = 200.0
    sun_gain_w: Annotated[float, Meta(ge=0, description="heat from the sun at noon, W")] = 8000.0
    sun_peak_w_m2: Annotated[float, Meta(ge=0)] = 850.0
    sunrise: TimeOfDay = "06:00"
    sunset: TimeOfDay = "20:00"
    outside_mean_c: float = 12.0
    outside_swing_c: Annotated[float, Meta(ge=0)] = 6.0
    outside_peak: TimeOfDay = "15:00"
    outside_rh: Annotated[float, Meta(ge=0, le=100)] = 75.0
    transpiration_rh: Annotated[
        float, Meta(ge=0, le=100, description="relative humidity the plants add, %")
    ] = 10.0
    pressure_hpa: Annotated[float, Meta(ge=300, le=1100)] = 1013.25
    soil_start_pct: Annotated[float, Meta(ge=0, le=100)] = 60.0
    soil_dry_pct_per_h: Annotated[float, Meta(ge=0)] = 1.0
    mains_v: Annotated[float, Meta(gt=0, le=500)] = 230.0
    base_load_w: Annotated[float, Meta(ge=0, description="load on each phase, W")] = 15.0

    def __post_init__(self) -> None:
        for key in ("sunrise", "sunset", "outside_peak"):
            time_of_day_s(getattr(self, key), key)
        if time_of_day_s(self.sunrise) >= time_of_day_s(self.sunset):
            raise ValueError("sunrise must be before sunset")


_INPUT = re.compile(r"^(gpio|pwm):(\d{1,2})$|^coil:([A-Za-z0-9_.-]+):(\d{1,3}):(\d{1,5})$")


class Actuator(Strict, kw_only=True):
    name: Annotated[str, Meta(min_length=1, max_length=32, pattern=r"^[a-z][a-z0-9_]*$")]
    input: Annotated[
        str,
        Meta(description='what drives it: "gpio:PIN" (an output pin, on/off), "pwm:PIN" '
             '(a PWM pin, its duty) or "coil:SERVER:UNIT:ADDRESS" (a PLC coil)'),
    ]
    ventilation_w_per_k: Annotated[float, Meta(ge=0)] = 0.0
    heat_w: Annotated[float, Meta(ge=0)] = 0.0
    power_w: Annotated[float, Meta(ge=0, description="electrical power when fully on, W")] = 0.0
    phase: Literal[1, 2, 3] = 1

    def __post_init__(self) -> None:
        if _INPUT.match(self.input) is None:
            raise ValueError(
                f'input {self.input!r}: expected "gpio:PIN", "pwm:PIN" or '
                f'"coil:SERVER:UNIT:ADDRESS"'
            )

    def source(self) -> tuple[str, str, int, int]:
        """(kind, server, unit, pin-or-address)."""
        m = _INPUT.match(self.input)
        assert m is not None
        if m.group(1):
            return m.group(1), "", 0, int(m.group(2))
        return "coil", m.group(3), int(m.group(4)), int(m.group(5))


Chip = Literal["bme280", "sht31", "tmp102", "ads1115"]
#: each chip's quantities and the model signal each reads by default
CHIP_SIGNALS: dict[str, dict[str, str]] = {
    "bme280": {"temperature_c": "air_c", "humidity_pct": "air_rh", "pressure_hpa": "pressure_hpa"},
    "sht31": {"temperature_c": "air_c", "humidity_pct": "air_rh"},
    "tmp102": {"temperature_c": "air_c"},
    "ads1115": {"ain0": "", "ain1": "", "ain2": "", "ain3": ""},
}
CHIP_ADDRESSES = {"bme280": 0x76, "sht31": 0x44, "tmp102": 0x48, "ads1115": 0x48}


class I2CDevice(Strict, kw_only=True):
    name: Annotated[str, Meta(min_length=1, max_length=32, pattern=r"^[A-Za-z0-9_.-]+$")]
    chip: Chip
    bus: Annotated[int, Meta(ge=0, le=255)] = 1
    address: Annotated[int, Meta(ge=0x03, le=0x77)] | None = None
    signals: Annotated[
        dict[str, str],
        Meta(description="quantity -> model signal (ads1115: ain0..ain3 -> a signal, "
             "whose value is volts; scale with volts_per_unit)"),
    ] = msgspec.field(default_factory=dict)
    volts_per_unit: Annotated[
        dict[str, float], Meta(description="ads1115: volts per unit of each input's signal")
    ] = msgspec.field(default_factory=dict)
    noise: Annotated[float, Meta(ge=0, description="standard deviation added, always")] = 0.0

    def __post_init__(self) -> None:
        known = CHIP_SIGNALS[self.chip]
        for key in self.signals:
            if key not in known:
                raise ValueError(f"signals: {self.chip} has no {key!r} (it has "
                                 f"{', '.join(known)})")  # fmt: skip
        for key in self.volts_per_unit:
            if self.chip != "ads1115" or key not in known:
                raise ValueError(f"volts_per_unit: {key!r} is not an ads1115 input")

    @property
    def addr(self) -> int:
        return self.address if self.address is not None else CHIP_ADDRESSES[self.chip]

    def wiring(self) -> dict[str, str]:
        """quantity -> signal, defaults filled in (empty: not wired)."""
        return {**CHIP_SIGNALS[self.chip], **self.signals}


class GpioPin(Strict, kw_only=True):
    pin: Annotated[int, Meta(ge=0, le=53)]
    name: Annotated[str, Meta(min_length=1, max_length=32, pattern=r"^[A-Za-z0-9_.-]+$")]
    mode: Annotated[
        Literal["input", "output", "pwm"],
        Meta(description="input: the scenario drives it; output/pwm: the daemon drives it "
             "and the model observes it"),
    ]
    schedule: Annotated[
        list[tuple[TimeOfDay, Literal[0, 1]]],
        Meta(description='input: levels on the timeline, e.g. [["09:00", 1], ["09:20", 0]]'),
    ] = msgspec.field(default_factory=list)
    initial: Literal[0, 1] = 0

    def __post_init__(self) -> None:
        if self.schedule and self.mode != "input":
            raise ValueError("schedule drives an input pin (mode input)")
        for i, (at, _level) in enumerate(self.schedule):
            if not at.strip().startswith("+"):
                time_of_day_s(at, f"schedule[{i}]")
            else:
                duration_s(at.strip()[1:], f"schedule[{i}]")


class ModbusUnit(Strict, kw_only=True):
    unit: Annotated[int, Meta(ge=1, le=247)]
    device: Annotated[
        Literal["sdm630", "plc"],
        Meta(description="sdm630: the Eastron meter (the driver's eastron-sdm630 profile); "
             "plc: coils, discrete inputs, holding and input registers (docs/simulator.md)"),
    ]


class ModbusServer(Strict, kw_only=True):
    name: Annotated[str, Meta(min_length=1, max_length=32, pattern=r"^[A-Za-z0-9_.-]+$")]
    transport: Literal["tcp", "rtu"]
    host: str = "127.0.0.1"
    port: Annotated[int, Meta(ge=0, le=65535, description="tcp: 0 picks a free port")] = 5020
    link: Annotated[
        str,
        Meta(pattern=r"^[A-Za-z0-9_.-]+$",
             description="rtu: name of the pty's symlink in the run directory"),
    ] = ""
    units: Annotated[list[ModbusUnit], Meta(min_length=1)]

    def __post_init__(self) -> None:
        if self.transport == "rtu" and not self.link:
            raise ValueError("rtu needs link (the symlink the daemon opens)")
        nums = [u.unit for u in self.units]
        if len(set(nums)) != len(nums):
            raise ValueError("units: each unit number once")


class SerialDevice(Strict, kw_only=True):
    name: Annotated[str, Meta(min_length=1, max_length=32, pattern=r"^[A-Za-z0-9_.-]+$")]
    link: Annotated[
        str,
        Meta(pattern=r"^[A-Za-z0-9_.-]+$",
             description="name of the pty's symlink in the run directory"),
    ]
    protocol: Annotated[
        Literal["bridge", "nmea"],
        Meta(description="bridge: the mechaway bridge protocol (hello, readings, acks); "
             "nmea: a GPS's GGA and RMC sentences"),
    ]
    framing: Literal["line", "cobs"] = "line"
    every: Annotated[Duration, Meta(description="simulated time between readings")] = "1m"
    max_rate: Annotated[
        float, Meta(gt=0, le=10_000, description="at most this many readings per real second")
    ] = 20.0
    device: Annotated[str, Meta(min_length=1, max_length=32)] = "sim-bridge"
    values: Annotated[
        dict[str, str], Meta(description="bridge: reading key -> model signal")
    ] = msgspec.field(default_factory=dict)
    latitude: Annotated[float, Meta(ge=-90, le=90)] = 52.52
    longitude: Annotated[float, Meta(ge=-180, le=180)] = 13.405

    def __post_init__(self) -> None:
        if duration_s(self.every, "every") <= 0:
            raise ValueError("every must be more than 0")
        if self.protocol == "nmea" and self.framing != "line":
            raise ValueError("nmea sentences are lines (framing line)")
        if len(self.values) > 32:
            raise ValueError("values: at most 32 (the protocol's limit per reading)")


class MqttSensor(Strict, kw_only=True):
    name: Annotated[str, Meta(min_length=1, max_length=32, pattern=r"^[A-Za-z0-9_.-]+$")]
    topic: Annotated[str, Meta(min_length=1, max_length=256)]
    values: Annotated[dict[str, str], Meta(min_length=1, description="key -> model signal")]
    every: Duration = "1m"
    max_rate: Annotated[float, Meta(gt=0, le=10_000)] = 20.0

    def __post_init__(self) -> None:
        if duration_s(self.every, "every") <= 0:
            raise ValueError("every must be more than 0")
        if any(c in self.topic for c in "+#\0"):
            raise ValueError("topic: no wildcards (+ #) in a topic published to")


class MqttSpec(Strict, kw_only=True):
    host: str | None = None
    port: Annotated[int, Meta(ge=1, le=65535)] = 1883
    sensors: list[MqttSensor] = msgspec.field(default_factory=list)


class Fault(Strict, kw_only=True):
    at: Annotated[TimeOfDay, Meta(description="when it starts")]
    duration: Annotated[Duration, Meta(description="how long it lasts")] = msgspec.field(
        default="10m", name="for"
    )
    target: Annotated[str, Meta(min_length=1, description="the device's name")]
    kind: Annotated[
        Literal["silent", "noise", "unplug", "exception"],
        Meta(description="silent: stops answering; noise: readings get noise (sigma); "
             "unplug: a serial device's pty is closed, then reopened at the same link; "
             "exception: a Modbus server answers with exception code"),
    ]
    sigma: Annotated[float, Meta(ge=0)] = 0.5
    code: Annotated[int, Meta(ge=1, le=11)] = 6

    def __post_init__(self) -> None:
        if not self.at.strip().startswith("+"):
            time_of_day_s(self.at, "at")
        else:
            duration_s(self.at.strip()[1:], "at")
        duration_s(self.duration, "for")


class Scenario(Strict, kw_only=True):
    scenario: ScenarioInfo
    model: ModelSpec = msgspec.field(default_factory=ModelSpec)
    actuators: list[Actuator] = msgspec.field(default_factory=list)
    i2c: list[I2CDevice] = msgspec.field(default_factory=list)
    gpio: list[GpioPin] = msgspec.field(default_factory=list)
    modbus: list[ModbusServer] = msgspec.field(default_factory=list)
    serial: list[SerialDevice] = msgspec.field(default_factory=list)
    mqtt: MqttSpec = msgspec.field(default_factory=MqttSpec)
    faults: list[Fault] = msgspec.field(default_factory=list)

    # -- derived -------------------------------------------------------------------------
    @property
    def start_tod(self) -> float:
        return time_of_day_s(self.scenario.start)

    @property
    def duration(self) -> float:
        return duration_s(self.scenario.duration)

    def device_kinds(self) -> dict[str, str]:
        """Every named device -> its kind (i2c, gpio, modbus, serial, mqtt)."""
        out: dict[str, str] = {}
        for kind, items in (("i2c", self.i2c), ("gpio", self.gpio), ("modbus", self.modbus),
                            ("serial", self.serial), ("mqtt", self.mqtt.sensors)):  # fmt: skip
            for item in items:
                out[item.name] = kind
        return out

    def signals(self) -> list[str]:
        """The model's signals a device may read."""
        return [*MODEL_SIGNALS, *(a.name for a in self.actuators)]


MODEL_SIGNALS = ("air_c", "air_rh", "pressure_hpa", "outside_c", "sun_w_m2", "lux",
                 "soil_pct", "power_l1_w", "power_l2_w", "power_l3_w", "power_w")  # fmt: skip
#: the faults each kind of device can have
FAULTS = {
    "i2c": {"silent", "noise"},
    "gpio": set(),
    "modbus": {"silent", "exception", "noise"},
    "serial": {"silent", "noise", "unplug"},
    "mqtt": {"silent", "noise"},
}


def _cross_check(sc: Scenario, where: str) -> None:
    """What the types alone cannot say: unique names, signals that exist, wiring that
    points at something, faults a device can have."""

    def fail(key: str, message: str) -> ScenarioError:
        return ScenarioError(f"{where}: {key}: {message}")

    seen: dict[str, str] = {}
    groups: list[tuple[str, Sequence[Any]]] = [
        ("i2c", sc.i2c), ("gpio", sc.gpio), ("modbus", sc.modbus), ("serial", sc.serial),
        ("mqtt.sensors", sc.mqtt.sensors),
    ]  # fmt: skip
    for kind, items in groups:
        for i, item in enumerate(items):
            if item.name in seen:
                raise fail(f"{kind}[{i}].name", f"{item.name!r} is also {seen[item.name]}'s name")
            seen[item.name] = f"{kind}[{i}]"
    signals = set(sc.signals())
    names = [a.name for a in sc.actuators]
    for i, a in enumerate(sc.actuators):
        if names.count(a.name) > 1 or a.name in MODEL_SIGNALS:
            raise fail(f"actuators[{i}].name", f"{a.name!r} is taken (actuator or signal)")
    pins: dict[int, int] = {}
    for i, p in enumerate(sc.gpio):
        if p.pin in pins:
            raise fail(f"gpio[{i}].pin", f"pin {p.pin} is also gpio[{pins[p.pin]}]")
        pins[p.pin] = i
    addrs: dict[tuple[int, int], int] = {}
    for i, d in enumerate(sc.i2c):
        key = (d.bus, d.addr)
        if key in addrs:
            raise fail(f"i2c[{i}].address", f"bus {d.bus} address 0x{d.addr:02x} is also "
                       f"i2c[{addrs[key]}]'s")  # fmt: skip
        addrs[key] = i
        for q, sig in d.wiring().items():
            if sig and sig not in signals:
                raise fail(f"i2c[{i}].signals.{q}", _unknown_signal(sig, signals))
    links: dict[str, str] = {}
    for kind, items2 in groups[2:4]:
        for i, s in enumerate(items2):
            link = s.link
            if link:
                if link in links or link == "sim.sock":
                    raise fail(f"{kind}[{i}].link", f"{link!r} is used twice")
                links[link] = kind
    tcp: dict[int, int] = {}
    for i, m in enumerate(sc.modbus):
        if m.transport == "tcp" and m.port:
            if m.port in tcp:
                raise fail(f"modbus[{i}].port", f"port {m.port} is also modbus[{tcp[m.port]}]'s")
            tcp[m.port] = i
    for i, s in enumerate(sc.serial):
        for name, sig in s.values.items():
            if sig not in signals:
                raise fail(f"serial[{i}].values.{name}", _unknown_signal(sig, signals))
    for i, ms in enumerate(sc.mqtt.sensors):
        for name, sig in ms.values.items():
            if sig not in signals:
                raise fail(f"mqtt.sensors[{i}].values.{name}", _unknown_signal(sig, signals))
    servers = {srv.name: srv for srv in sc.modbus}
    for i, a in enumerate(sc.actuators):
        source, server, unit, num = a.source()
        if source in ("gpio", "pwm"):
            j = pins.get(num)
            want = "output" if source == "gpio" else "pwm"
            if j is None or sc.gpio[j].mode != want:
                raise fail(f"actuators[{i}].input", f"no [[gpio]] pin {num} with mode {want}")
        else:
            srv = servers.get(server)
            if srv is None:
                raise fail(f"actuators[{i}].input", f"no [[modbus]] server {server!r}")
            plc = [u.unit for u in srv.units if u.device == "plc"]
            if unit not in plc:
                raise fail(f"actuators[{i}].input", f"{server!r} has no plc unit {unit}")
            if num >= PLC_COILS:
                raise fail(f"actuators[{i}].input", f"a plc has coils 0..{PLC_COILS - 1}")
    kinds = sc.device_kinds()
    for i, f in enumerate(sc.faults):
        dkind = kinds.get(f.target)
        if dkind is None:
            known = ", ".join(sorted(kinds)) or "none"
            raise fail(f"faults[{i}].target", f"no device named {f.target!r} (known: {known})")
        if f.kind not in FAULTS[dkind]:
            can = ", ".join(sorted(FAULTS[dkind])) or "none"
            raise fail(f"faults[{i}].kind", f"a {dkind} device cannot have fault {f.kind!r} "
                       f"(it can: {can})")  # fmt: skip


#: the plc's tables (docs/simulator.md)
PLC_COILS = 16


def _unknown_signal(sig: str, signals: set[str]) -> str:
    return f"no model signal {sig!r} (known: {', '.join(sorted(signals))})"


def parse(text: str, where: str = "scenario", fmt: str = "toml") -> Scenario:
    """Check a scenario's text (``fmt`` toml or yaml); ``ScenarioError`` naming ``where``
    and the key."""
    raw: Any
    if fmt == "toml":
        try:
            raw = tomllib.loads(text)
        except tomllib.TOMLDecodeError as err:
            raise ScenarioError(f"{where}: invalid TOML: {err}") from None
    else:
        import yaml

        try:
            raw = yaml.safe_load(text)
        except yaml.YAMLError as err:
            raise ScenarioError(f"{where}: invalid YAML: {' '.join(str(err).split())}") from None
    if not isinstance(raw, dict):
        raise ScenarioError(f"{where}: expected a table of sections, got {type(raw).__name__}")
    try:
        sc = msgspec.convert(raw, Scenario, strict=fmt == "toml")
    except msgspec.ValidationError as err:
        raise ScenarioError(f"{where}: {located(err)}") from None
    except UnicodeError:  # YAML's "\ud800" escapes make strings that are not Unicode
        raise ScenarioError(f"{where}: text that is not valid Unicode (a lone surrogate "
                            f"escape?)") from None  # fmt: skip
    _cross_check(sc, where)
    return sc


FORMATS = {".toml": "toml", ".yaml": "yaml", ".yml": "yaml"}
MAX_BYTES = 1 << 20


def builtin() -> list[str]:
    """Names of the scenarios shipped with the simulator."""
    root = resources.files("mechaway_sim") / "scenarios"
    return sorted(p.name.rsplit(".", 1)[0] for p in root.iterdir()
                  if p.name.endswith((".toml", ".yaml")))  # fmt: skip


def load(name_or_path: str) -> Scenario:
    """A built-in scenario by name (``greenhouse``) or a scenario file by path."""
    path = Path(name_or_path)
    if path.suffix in FORMATS or path.exists():
        try:
            data = path.read_bytes()
        except OSError as err:
            raise ScenarioError(f"{path}: cannot read: {err.strerror or err}") from None
        if len(data) > MAX_BYTES:
            raise ScenarioError(f"{path}: larger than 1 MiB: not a scenario?")
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            raise ScenarioError(f"{path}: not UTF-8 text") from None
        return parse(text, str(path), FORMATS.get(path.suffix, "toml"))
    root = resources.files("mechaway_sim") / "scenarios"
    for suffix, fmt in FORMATS.items():
        item = root / f"{name_or_path}{suffix}"
        if item.is_file():
            return parse(item.read_text(encoding="utf-8"), f"{name_or_path}{suffix}", fmt)
    raise ScenarioError(
        f"no scenario {name_or_path!r}: not a file, and not a built-in one "
        f"(built-in: {', '.join(builtin())})"
    )
