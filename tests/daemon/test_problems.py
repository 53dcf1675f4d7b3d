"""``problems`` in GET /api/v1/status: what an operator should look at, one line each."""

from __future__ import annotations

import time
from pathlib import Path

from mechaway.daemon import problems
from mechaway.testing.daemon import DaemonProc, free_port


def test_nothing_wrong_is_an_empty_list() -> None:
    assert problems({"trouble": None}, {"mqtt.default": {"state": "connected"}}, {}) == []


def test_each_kind_of_trouble_is_one_line() -> None:
    since = time.mktime((2026, 11, 26, 9, 24, 2, 0, 0, -1))
    found = problems(
        {"trouble": "disk full", "trouble_since": since},
        {
            "mqtt.plc": {"state": "connecting", "last_error": "connection refused"},
            "mqtt.default": {"state": "connected", "last_error": "an old one"},
        },
        {"/etc/mechaway/flows/a.json": "...", "/etc/mechaway/flows/b.yaml": "..."},
    )
    assert found == [
        "store: disk full since 2026-11-26 09:24:02: writes are refused",
        "mqtt.plc: connecting (connection refused)",
        "flow files: 2 rejected (see flow_file_errors)",
    ]


def test_a_daemon_whose_broker_is_unreachable_says_so(tmp_path: Path) -> None:
    port = free_port()  # nothing listens there
    d = DaemonProc(tmp_path / "d", config=f"[mqtt.default]\nport = {port}\nreconnect_max = 1\n")
    (d.flows / "in.json").write_text(
        '{"id": "in", "nodes": [{"id": "m", "type": "MQTTInNode", "params": {"topic": "a/#"}},'
        ' {"id": "l", "type": "LogNode"}], "edges": [{"from": "m", "to": "l"}]}'
    )
    d.start()
    try:
        found = d.wait(
            lambda: [p for p in d.status()["problems"] if p.startswith("mqtt.default: ")],
            20,
            "the unreachable broker among the problems",
        )
        assert found[0].startswith("mqtt.default: unreachable (")
        assert "Connection refused" in found[0]
    finally:
        assert d.terminate() == 0


def test_a_failing_node_is_a_problem_while_it_keeps_failing() -> None:
    flows = {
        "gh": {
            "nodes": {
                "calc": {"errors": 812, "last_error": "ZeroDivisionError:\n x",
                         "last_error_ts": 990.0},
                "old": {"errors": 3, "last_error": "long ago", "last_error_ts": 100.0},
                "fine": {"errors": 0, "last_error": None, "last_error_ts": None},
            }
        }
    }
    found = problems({}, {}, {}, flows, now=1000.0)
    assert found == ["flow gh: node calc failing (812 errors, last 10s ago: ZeroDivisionError: x)"]


def test_a_connection_can_name_its_own_problems() -> None:
    found = problems({}, {"mqtt.a": {"state": "connected", "problems": ["feedback storm"]}}, {})
    assert found == ["mqtt.a: feedback storm"]


def test_a_daemon_lists_a_node_that_errors_on_every_message(tmp_path: Path) -> None:
    d = DaemonProc(tmp_path / "d")
    (d.flows / "bad.json").write_text(
        '{"id": "bad", "nodes": [{"id": "t", "type": "InjectNode", "params": {"interval": 0.1,'
        ' "payload": "x"}}, {"id": "db", "type": "DeadbandNode", "params": {"band": 1}}],'
        ' "edges": [{"from": "t", "to": "db"}]}'
    )
    d.start()
    try:
        found = d.wait(
            lambda: [p for p in d.status()["problems"] if p.startswith("flow bad: node db")],
            20,
            "the failing node among the problems",
        )
        assert "failing (" in found[0] and "payload is not a number" in found[0]
    finally:
        assert d.terminate() == 0


def test_the_editors_brief_status_says_what_the_full_one_says(tmp_path: Path) -> None:
    """The events socket reads ``brief_status`` every second an editor is open: the same
    problems, connections and file errors as ``status``, without its costlier parts."""
    import asyncio

    from mechaway.daemon import Daemon
    from mechaway.settings import load_settings

    settings = load_settings(None, env={"MECHAWAY_DEVICE_DATA_DIR": str(tmp_path)})

    async def both() -> tuple[dict[str, object], dict[str, object]]:
        d = Daemon(settings)
        d.db.open()
        try:
            return d.status(), d.brief_status()
        finally:
            await d.db.close()

    full, brief = asyncio.run(both())
    assert brief == {k: full[k] for k in ("problems", "connections", "flow_file_errors")}
