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
