"""The driver layer: registry, sections, shared connections, supervisor, bus, thread bridge."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import Annotated, Any

import msgspec
import pytest

from mechaway.drivers.base import (
    Backoff,
    Bus,
    Connections,
    Driver,
    DriverEnv,
    DriverSettings,
    LinkFailed,
    Supervisor,
    ThreadBridge,
    driver_class,
    known_kinds,
    parse_sections,
    register_driver,
    registered_drivers,
)
from mechaway.errors import ConfigError
from mechaway.nodes.context import Services
from mechaway.settings import load_settings


class FakeSettings(DriverSettings):
    port: Annotated[str, msgspec.Meta(min_length=1, description="where")]
    speed: Annotated[int, msgspec.Meta(ge=1, description="how fast")] = 9600


@register_driver("fake_test")
class FakeDriver(Driver[FakeSettings]):
    """Records its lifecycle; ``start`` takes a while so concurrent getters overlap."""

    Settings = FakeSettings
    created: list[str] = []  # noqa: RUF012 - a class-level record for the tests

    async def start(self) -> None:
        FakeDriver.created.append(self.name)
        await asyncio.sleep(0.01)
        self.health.set("connected")

    async def close(self, timeout: float = 5.0) -> None:
        self.health.set("closed")


@register_driver("fake_single_test")
class FakeSingle(Driver[DriverSettings]):
    named = False


def test_registry_finds_kinds_and_refuses_a_second_class() -> None:
    assert "mqtt" in known_kinds()
    assert driver_class("mqtt").kind == "mqtt"
    assert driver_class("fake_test") is FakeDriver
    with pytest.raises(KeyError, match=r"no driver of kind 'nope' \(known: .*mqtt"):
        driver_class("nope")
    with pytest.raises(ValueError, match="registered twice"):

        @register_driver("fake_test")
        class Other(Driver[DriverSettings]):
            pass

    assert "mqtt" in registered_drivers() and "fake_test" not in registered_drivers()


def test_sections_are_validated_with_located_errors() -> None:
    parsed = parse_sections({"fake_test": {"a": {"port": "/dev/x"}}}, "m.toml")
    settings = parsed["fake_test"]["a"]
    assert isinstance(settings, FakeSettings) and settings.speed == 9600
    cases: list[tuple[dict[str, Any], str]] = [
        ({"fake_test": {"a": {"port": "/dev/x", "speed": "9600"}}},
         "m.toml: fake_test.a.speed: Expected `int`, got `str`"),
        ({"fake_test": {"a": {"port": "/dev/x", "sped": 1}}},
         "m.toml: fake_test.a: unknown key `sped`"),
        ({"fake_test": {"a": {}}}, "m.toml: fake_test.a: Object missing required field `port`"),
        ({"fake_test": {"a": 3}},
         "m.toml: fake_test.a: expected a table [fake_test.a], got a number"),
        ({"fake_test": {"a": {"port": "x", "reconnect_min": 5, "reconnect_max": 1}}},
         "m.toml: fake_test.a: reconnect_min must be <= reconnect_max"),
        ({"serail": {"a": {}}}, "m.toml: [serail]: no driver of kind 'serail'"),
        ({"fake_single_test": {"reconnect_min": "x"}},
         "m.toml: fake_single_test.reconnect_min: Expected `float`, got `str`"),
    ]  # fmt: skip
    for raw, text in cases:
        with pytest.raises(ConfigError) as info:
            parse_sections(raw, "m.toml")
        assert str(info.value).startswith(text), (str(info.value), text)
    single = parse_sections({"fake_single_test": {"stable_after": 2.0}})
    assert single["fake_single_test"]["default"].stable_after == 2.0


def test_config_file_sections_reach_the_drivers(tmp_path: Any) -> None:
    cfg = tmp_path / "m.toml"
    cfg.write_text('[api]\nlisten = "127.0.0.1:7711"\n[fake_test.arduino]\nport = "/dev/ttyACM0"\n')
    settings = load_settings(cfg, env={})
    assert settings.drivers["fake_test"]["arduino"].port == "/dev/ttyACM0"
    cfg.write_text("[spi.x]\nbus = 0\n")
    with pytest.raises(ConfigError, match=r"m\.toml: \[spi\]: no driver of kind 'spi'"):
        load_settings(cfg, env={})
    cfg.write_text("drivers = 1\n")
    with pytest.raises(ConfigError, match="drivers: unknown key"):
        load_settings(cfg, env={})


@pytest.mark.asyncio
async def test_connections_are_shared_started_once_and_typed() -> None:
    FakeDriver.created.clear()
    conns = Connections(parse_sections({"fake_test": {"a": {"port": "p"}}}), DriverEnv())
    services = Services(drivers=conns)
    first, second = await asyncio.gather(
        services.connection(FakeDriver, "a"), services.connection("fake_test", "a")
    )
    assert first is second and FakeDriver.created == ["a"]
    assert first.settings.port == "p"  # typed: FakeDriver[FakeSettings]
    with pytest.raises(KeyError, match=r"no \[fake_test\.b\] connection is configured"):
        await services.connection(FakeDriver, "b")
    single = await services.connection(FakeSingle)  # [fake_single_test] needs no section
    assert single.name == "default"
    status = conns.status()
    assert status["fake_test.a"]["state"] == "connected"
    assert set(status["fake_test.a"]) >= {
        "kind", "name", "state", "since", "last_error", "reconnects", "counters"
    }  # fmt: skip
    await conns.close()
    assert first.health.state == "closed" and conns.status() == {}


@pytest.mark.asyncio
async def test_start_configured_starts_sections_and_logs_a_failing_one(
    caplog: pytest.LogCaptureFixture,
) -> None:
    FakeDriver.created.clear()
    conns = Connections(parse_sections({"fake_test": {"x": {"port": "p"}, "y": {"port": "q"}}}))
    await conns.start_configured()
    assert sorted(FakeDriver.created) == ["x", "y"]
    await conns.close()


def test_backoff_doubles_with_jitter_and_caps() -> None:
    b = Backoff(0.5, 4.0)
    delays = [b.next() for _ in range(8)]
    for n, d in enumerate(delays):
        hi = min(4.0, 0.5 * 2**n)
        assert hi / 2 <= d <= hi
    b.reset()
    assert b.next() <= 0.5


class FakeLink:
    def __init__(self) -> None:
        self.lost: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self.released = False


@pytest.mark.asyncio
async def test_supervisor_reconnects_logs_once_per_burst_and_recovers(
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = FakeSettings(port="p", reconnect_min=0.001, reconnect_max=0.002, stable_after=0.05)
    drv = FakeDriver("s", settings)
    attempts: list[float] = []
    links: list[FakeLink] = []

    async def open_link() -> FakeLink:
        attempts.append(time.monotonic())
        if len(attempts) <= 5:  # five failures of two kinds, then up
            if len(attempts) % 2:
                raise OSError(111, "Connection refused")
            raise LinkFailed("refused", "device said no", counter="refusals")
        link = FakeLink()
        links.append(link)
        return link

    async def lost(link: FakeLink) -> str:
        return await link.lost

    async def release(link: FakeLink) -> None:
        link.released = True

    up = asyncio.Event()

    sup = Supervisor(
        "fake[s]", drv.health, settings, open=open_link, lost=lost, release=release,
        up=lambda link: up.set(), logger=logging.getLogger("test.sup"),
    )  # fmt: skip
    with caplog.at_level(logging.DEBUG, "test.sup"):
        sup.start()
        await asyncio.wait_for(up.wait(), 5)
        up.clear()
        assert drv.health.state == "connected" and drv.health.reconnects == 0
        assert drv.health.counters == {"connect_failures": 5, "refusals": 2}
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 2, warnings  # one per kind of failure in the burst
        assert "unreachable: Connection refused" in warnings[0]
        await asyncio.sleep(0.08)  # stable: the burst ends, said once
        assert any("stable again after 5 failed attempts" in r.getMessage()
                   for r in caplog.records)  # fmt: skip
        links[0].lost.set_result("cable pulled")
        await asyncio.wait_for(up.wait(), 5)
        assert links[0].released and drv.health.reconnects == 1
        assert drv.health.last_error == "cable pulled"
        await sup.stop()
    assert links[1].released


@pytest.mark.asyncio
async def test_bus_runs_one_transaction_at_a_time_with_a_gap_on_its_thread() -> None:
    bus = Bus("i2c[test]", gap=0.005)
    inside = 0
    peak = 0
    threads: set[str] = set()
    ends: list[float] = []
    starts: list[float] = []

    def blocking() -> str:
        time.sleep(0.002)
        return threading.current_thread().name

    async def exchange() -> None:
        nonlocal inside, peak
        async with bus.transaction():
            starts.append(time.monotonic())
            inside += 1
            peak = max(peak, inside)
            threads.add(await bus.call(blocking))
            inside -= 1
            ends.append(time.monotonic())

    await asyncio.gather(*(exchange() for _ in range(5)))
    bus.close()
    assert peak == 1 and bus.transactions == 5
    assert len(threads) == 1 and next(iter(threads)).startswith("mechaway-i2c[test]")
    for prev_end, start in zip(sorted(ends)[:-1], sorted(starts)[1:], strict=True):
        assert start - prev_end >= 0.005 * 0.9


@pytest.mark.asyncio
async def test_bus_is_released_when_a_transaction_fails_or_is_cancelled_in_its_gap() -> None:
    bus = Bus("rtu[test]", gap=0.5)
    with pytest.raises(RuntimeError, match="device said no"):
        async with bus.transaction():
            raise RuntimeError("device said no")
    assert not bus.busy and bus.transactions == 1
    # the next transaction waits out the gap; cancelled there, it leaves the bus free
    waiting = asyncio.ensure_future(bus.transaction().__aenter__())
    await asyncio.sleep(0.01)
    assert bus.busy
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert not bus.busy and bus.transactions == 1
    bus.gap = 0.0
    async with bus.transaction():
        assert bus.busy
    assert not bus.busy and bus.transactions == 2


@pytest.mark.asyncio
async def test_thread_bridge_runs_callbacks_on_the_loop_thread() -> None:
    bridge = ThreadBridge()
    loop_thread = threading.get_ident()
    seen: list[tuple[int, int]] = []
    done = asyncio.Event()

    def on_loop(value: int) -> None:
        seen.append((value, threading.get_ident()))
        if len(seen) == 100:
            done.set()

    posted = bridge.wrap(on_loop)
    workers = [threading.Thread(target=lambda k=k: [posted(k * 10 + i) for i in range(10)])
               for k in range(10)]  # fmt: skip
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    await asyncio.wait_for(done.wait(), 5)
    assert sorted(v for v, _ in seen) == list(range(100))
    assert {t for _, t in seen} == {loop_thread}


def test_thread_bridge_counts_calls_after_the_loop_closed() -> None:
    loop = asyncio.new_event_loop()
    bridge = ThreadBridge(loop)
    loop.close()
    t = threading.Thread(target=bridge.call, args=(print, "never"))
    t.start()
    t.join()
    assert bridge.dropped == 1


@pytest.mark.asyncio
async def test_supervisor_sorts_losses_by_key_names_states_by_kind_and_says_stable(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """What MQTT needs of the supervisor: a loss returned as a ``LinkFailed`` is logged
    once per ``key`` (a broker fault apart from a plain drop) and counted; with
    ``states_by_kind`` a failed attempt shows its kind as the state; ``on_stable`` runs
    when a burst ends; the "connected" line names the peer."""
    # stable_after: far longer than a loss takes to be handled, so only the last link is
    settings = FakeSettings(port="p", reconnect_min=0.001, reconnect_max=0.002, stable_after=1.0)
    drv = FakeDriver("k", settings)
    attempts = 0
    links: list[FakeLink] = []
    stable: list[float] = []
    states: list[str] = []

    async def open_link() -> FakeLink:
        nonlocal attempts
        attempts += 1
        if attempts == 1:
            raise LinkFailed("auth refused", "bad password", counter="auth_failures")
        states.append(drv.health.state)
        link = FakeLink()
        links.append(link)
        return link

    async def lost(link: FakeLink) -> str | LinkFailed:
        reason = await link.lost
        if reason.startswith("fault"):
            return LinkFailed("lost", reason, counter="faults", key="faults")
        return reason

    sup = Supervisor(
        "fake[k]", drv.health, settings, open=open_link, lost=lost, states_by_kind=True,
        on_stable=lambda: stable.append(time.monotonic()), target="host:1",
        logger=logging.getLogger("test.sup2"),
    )  # fmt: skip
    with caplog.at_level(logging.DEBUG, "test.sup2"):
        sup.start()
        await until_true(lambda: len(links) == 1)
        assert states == ["auth refused"]  # the state a failed attempt left
        assert drv.health.last_error == "bad password"
        links[0].lost.set_result("fault: bad packet")
        await until_true(lambda: len(links) == 2)
        links[1].lost.set_result("fault: bad packet again")
        await until_true(lambda: len(links) == 3)
        links[2].lost.set_result("cable pulled")
        await until_true(lambda: len(links) == 4)
        assert drv.health.counters == {"connect_failures": 1, "auth_failures": 1, "faults": 2}
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert warnings == [
            "fake[k]: auth refused: bad password (retrying with backoff; logged once per burst)",
            "fake[k]: lost: fault: bad packet (retrying with backoff; logged once per burst)",
            "fake[k]: lost: cable pulled (retrying with backoff; logged once per burst)",
        ]
        assert drv.health.state == "connected" and drv.health.last_error == "cable pulled"
        assert not stable
        await until_true(lambda: bool(stable))
        said = [r.getMessage() for r in caplog.records]
        assert any("connected and stable again after 1 failed attempts" in m for m in said)
        await sup.stop()
    caplog.clear()
    quiet = Supervisor(
        "fake[q]", drv.health, settings, open=open_link, lost=lost, target="host:2",
        logger=logging.getLogger("test.sup3"),
    )  # fmt: skip
    with caplog.at_level(logging.INFO, "test.sup3"):
        quiet.start()
        await until_true(lambda: any("connected to host:2" in r.getMessage()
                                     for r in caplog.records))  # fmt: skip
        await quiet.stop()


@pytest.mark.asyncio
async def test_connections_tell_each_driver_the_daemon_is_stopping() -> None:
    told: list[str] = []

    class Stopping(FakeDriver):
        def stopping(self) -> None:
            told.append(self.name)
            raise RuntimeError("a driver's bug must not stop the others being told")

    conns = Connections(parse_sections({"fake_test": {"a": {"port": "p"}, "b": {"port": "q"}}}))
    await conns.get(Stopping, "a")
    await conns.get(Stopping, "b")
    conns.stopping()
    assert sorted(told) == ["a", "b"]
    await conns.close()


async def until_true(cond: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.005)
