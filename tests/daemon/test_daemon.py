"""``mechaway start`` as a real subprocess: flow files deployed by dropping them into the
watched directory, the admin API and the CLI against it, signals, restart on the same data."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mechaway.testing.cli import assert_one_line_error, mechaway, stderr_lines
from mechaway.testing.daemon import DaemonProc as _DaemonProc
from mechaway.testing.daemon import free_port

TOKEN = "daemon-test-token"


def pipe_flow(fid: str, *, keep: int = 5, interval: float = 0.05) -> dict[str, Any]:
    """InjectNode -> ChangeNode -> LogNode: only built-in node types (the daemon runs these)."""
    return {
        "id": fid,
        "name": f"pipe {fid}",
        "nodes": [
            {"id": "tick", "type": "InjectNode", "params": {"interval": interval, "payload": 1}},
            {
                "id": "mark",
                "type": "ChangeNode",
                "params": {"rules": [{"op": "set", "path": "payload", "value": fid}]},
            },
            {"id": "log", "type": "LogNode", "params": {"keep": keep, "level": "debug"}},
        ],
        "edges": [{"from": "tick", "to": "mark"}, {"from": "mark", "to": "log"}],
    }


def write_atomically(path: Path, data: Any) -> None:
    """Write beside and rename, so the watcher never reads half a file."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(data if isinstance(data, str) else json.dumps(data))
    os.replace(tmp, path)


class DaemonProc(_DaemonProc):
    """The shared daemon helper, with this module's token."""

    def __init__(self, root: Path) -> None:
        super().__init__(root, token=TOKEN)


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProc]:
    d = DaemonProc(tmp_path_factory.mktemp("daemon"))
    d.start()
    try:
        yield d
    finally:
        d.kill()


def wait_running(d: DaemonProc, fid: str, rev: int | None = None) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        fs = d.flow_status(fid)
        if fs is None or (rev is not None and fs["rev"] != rev):
            return None
        return fs

    result: dict[str, Any] = d.wait(check, 10, f"flow {fid} rev {rev} to run")
    return result


def counter(d: DaemonProc, fid: str, nid: str, key: str) -> int:
    fs = d.flow_status(fid)
    assert fs is not None, f"flow {fid} is not running"
    value: int = fs["nodes"][nid][key]
    return value


# -- flow files -------------------------------------------------------------------------------
def test_a_dropped_flow_file_runs(daemon: DaemonProc) -> None:
    write_atomically(daemon.flows / "drop.json", pipe_flow("drop"))
    fs = wait_running(daemon, "drop", rev=1)
    assert fs["name"] == "pipe drop"
    first = counter(daemon, "drop", "log", "in")
    daemon.wait(lambda: counter(daemon, "drop", "log", "in") >= first + 3, 10, "counters to grow")
    fs = daemon.flow_status("drop")
    assert fs is not None
    assert fs["nodes"]["log"]["recent"][-1] == "drop"
    assert fs["nodes"]["tick"]["errors"] == 0
    code, flows = daemon.api("GET", "/flows")
    assert code == 200
    assert {
        "id": "drop",
        "name": "pipe drop",
        "rev": 1,
        "source": "file",
        "running": True,
        "disabled": False,
    } in flows


def test_a_flow_from_a_file_is_changed_only_through_its_file(
    daemon: DaemonProc, tmp_path: Path
) -> None:
    """One truth: the API and the CLI refuse to roll back, redeploy or delete a flow that
    a file defines (the next scan or restart would silently put the file's version back)."""
    path = daemon.flows / "owned.json"
    write_atomically(path, pipe_flow("owned", interval=1.0))
    wait_running(daemon, "owned", rev=1)
    write_atomically(path, pipe_flow("owned", interval=2.0))
    wait_running(daemon, "owned", rev=2)
    for args in (("flows", "rollback", "owned", "1"), ("flows", "delete", "owned")):
        err = assert_one_line_error(daemon.cli(*args), "comes from the file")
        assert "owned.json" in err
    src = tmp_path / "owned.json"
    src.write_text(json.dumps(pipe_flow("owned", interval=3.0)))
    assert_one_line_error(daemon.cli("flows", "deploy", str(src)), "comes from the file")
    code, body = daemon.api("DELETE", "/flows/owned")
    assert code == 409 and "owned.json" in body["error"]
    assert daemon.flow_status("owned")["rev"] == 2  # type: ignore[index]
    path.unlink()  # the file's removal is how such a flow goes
    daemon.wait(lambda: daemon.flow_status("owned") is None, 10, "the flow to stop")


def test_changing_the_file_bumps_the_revision_and_keeps_state(daemon: DaemonProc) -> None:
    path = daemon.flows / "swap.json"
    write_atomically(path, pipe_flow("swap", keep=5))
    wait_running(daemon, "swap", rev=1)
    daemon.wait(lambda: counter(daemon, "swap", "mark", "in") >= 5, 10, "some traffic")
    sent_before = counter(daemon, "swap", "tick", "sent")
    mark_before = counter(daemon, "swap", "mark", "in")
    write_atomically(path, pipe_flow("swap", keep=2))  # only the LogNode changes
    fs = wait_running(daemon, "swap", rev=2)
    # the kept nodes went on counting (no restart from zero); the changed one is new
    assert fs["nodes"]["tick"]["sent"] >= sent_before
    assert fs["nodes"]["mark"]["in"] >= mark_before
    daemon.wait(lambda: counter(daemon, "swap", "log", "in") >= 3, 10, "traffic after the swap")
    fs = daemon.flow_status("swap")
    assert fs is not None
    assert len(fs["nodes"]["log"]["recent"]) == 2  # keep=2: the new LogNode instance
    code, revs = daemon.api("GET", "/flows/swap/revisions")
    assert code == 200
    assert [(r["rev"], r["source"], r["active"]) for r in revs] == [
        (1, "file", False),
        (2, "file", True),
    ]


def test_an_invalid_file_leaves_the_running_revision(daemon: DaemonProc) -> None:
    path = daemon.flows / "keep.json"
    write_atomically(path, pipe_flow("keep"))
    wait_running(daemon, "keep", rev=1)
    bad = pipe_flow("keep")
    bad["nodes"][2]["params"]["keep"] = "many"
    write_atomically(path, bad)

    def error_shown() -> str:
        errors: dict[str, str] = daemon.status()["flow_file_errors"]
        return errors.get(str(path), "")

    err = daemon.wait(error_shown, 10, "the file error in status")
    assert "nodes[2] (log).params.keep: expected `int`, got `str`" in err
    assert str(path) in err
    before = counter(daemon, "keep", "log", "in")
    daemon.wait(lambda: counter(daemon, "keep", "log", "in") > before, 10, "traffic to go on")
    fs = daemon.flow_status("keep")
    assert fs is not None and fs["rev"] == 1
    # broken JSON: the error names the line
    broken = daemon.flows / "broken.json"
    write_atomically(broken, '{\n  "id": "broken",\n  "nodes": [\n')
    daemon.wait(
        lambda: "line " in daemon.status()["flow_file_errors"].get(str(broken), ""),
        10,
        "the JSON error in status",
    )
    broken.unlink()
    # fixing the file clears the error and deploys
    write_atomically(path, pipe_flow("keep", keep=4))
    wait_running(daemon, "keep", rev=2)
    daemon.wait(lambda: str(path) not in daemon.status()["flow_file_errors"], 10, "error cleared")


def test_removing_the_file_deletes_the_flow(daemon: DaemonProc) -> None:
    path = daemon.flows / "gone.yaml"
    write_atomically(
        path,
        "id: gone\nnodes:\n  - {id: t, type: InjectNode, params: {interval: 0.5}}\n"
        "  - {id: l, type: LogNode}\nedges:\n  - {from: t, to: l}\n",
    )
    wait_running(daemon, "gone", rev=1)
    path.unlink()
    daemon.wait(lambda: daemon.flow_status("gone") is None, 10, "the flow to stop")
    code, _ = daemon.api("GET", "/flows/gone")
    assert code == 404


# -- the API and the CLI against the daemon ---------------------------------------------------
def test_api_requires_the_token(daemon: DaemonProc) -> None:
    assert daemon.api("GET", "/status", token=None)[0] == 401
    assert daemon.api("GET", "/status", token="wrong")[0] == 401
    assert daemon.api("PUT", "/flows/x", pipe_flow("x"), token=None)[0] == 401
    assert daemon.api("GET", "/health", token=None)[0] == 200


def test_cli_flows_commands(daemon: DaemonProc, tmp_path: Path) -> None:
    src = tmp_path / "cli.json"
    src.write_text(json.dumps(pipe_flow("cli", interval=0.2)))
    proc = daemon.cli("flows", "deploy", str(src))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "cli: deployed rev 1"
    proc = daemon.cli("flows", "deploy", str(src))
    assert proc.stdout.strip() == "cli: deployed rev 1 (unchanged)"
    src.write_text(json.dumps(pipe_flow("cli", interval=0.2, keep=9)))
    assert daemon.cli("flows", "deploy", str(src)).stdout.strip() == "cli: deployed rev 2"

    proc = daemon.cli("flows", "list")
    assert proc.returncode == 0, proc.stderr
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("cli "))
    assert line.split()[:5] == ["cli", "rev", "2", "running", "api"]

    proc = daemon.cli("flows", "show", "cli")
    shown = json.loads(proc.stdout)
    assert (shown["rev"], shown["flow"]["nodes"][2]["params"]["keep"]) == (2, 9)

    proc = daemon.cli("flows", "history", "cli")
    assert proc.returncode == 0, proc.stderr
    hist = [(ln.startswith("*"), ln.lstrip("* ").split()[:3]) for ln in proc.stdout.splitlines()]
    assert hist == [(False, ["rev", "1", "api"]), (True, ["rev", "2", "api"])]

    proc = daemon.cli("flows", "rollback", "cli", "1")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "cli: rolled back to rev 1 (now rev 3)"
    fs = wait_running(daemon, "cli", rev=3)
    assert len(fs["nodes"]["log"]["recent"]) <= 5

    proc = daemon.cli("status", "--json")  # options after the command too
    assert proc.returncode == 0, proc.stderr
    st = json.loads(proc.stdout)
    assert st["flows"]["cli"]["rev"] == 3
    assert "flow_file_errors" in st
    proc = daemon.cli("status")  # for a person: a summary with ages, not raw JSON
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("mechaway ") and "problems: none" in lines
    at = next(i for i, ln in enumerate(lines) if ln.strip().startswith("cli  rev 3"))
    assert "deployed" in lines[at] and "ago" in lines[at]
    nodes = lines[at + 1 : at + 4]  # its three nodes, indented under it
    assert [ln.split()[:2] for ln in nodes] == [
        ["tick", "InjectNode"], ["mark", "ChangeNode"], ["log", "LogNode"]
    ]  # fmt: skip
    assert all("in " in ln and "errors" in ln for ln in nodes)

    proc = daemon.cli("flows", "delete", "cli")
    assert (proc.returncode, proc.stdout.strip()) == (0, "cli: deleted")
    assert daemon.flow_status("cli") is None
    assert_one_line_error(daemon.cli("flows", "delete", "cli"), "no flow 'cli'")
    assert_one_line_error(daemon.cli("flows", "show", "nope"), "no flow 'nope'")
    assert_one_line_error(daemon.cli("flows", "rollback", "cli", "42"), "has no revision 42")


def test_cli_deploy_of_an_invalid_flow_shows_located_errors(
    daemon: DaemonProc, tmp_path: Path
) -> None:
    raw = pipe_flow("bad")
    raw["nodes"][1]["type"] = "ChangeNod"
    src = tmp_path / "bad.json"
    src.write_text(json.dumps(raw))
    proc = daemon.cli("flows", "deploy", str(src))
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    (line,) = stderr_lines(proc)
    assert line.startswith("nodes[1] (mark).type: unknown node type 'ChangeNod'")
    assert daemon.flow_status("bad") is None


def test_cli_wrong_token_is_one_clear_line(daemon: DaemonProc, tmp_path: Path) -> None:
    # its own flow: the test stands alone (``pytest -k token``)
    src = tmp_path / "guarded.json"
    src.write_text(json.dumps(pipe_flow("guarded", interval=1.0)))
    assert daemon.cli("flows", "deploy", str(src)).returncode == 0
    wait_running(daemon, "guarded", rev=None)
    for args in (("status",), ("flows", "list"), ("flows", "delete", "guarded")):
        assert_one_line_error(daemon.cli(*args, token="wrong"), "refused the token")
    assert daemon.flow_status("guarded") is not None


# -- signals and restart (last: it restarts the module's daemon) ------------------------------
def test_sigterm_exits_0_and_a_restart_brings_flows_back(
    daemon: DaemonProc, tmp_path: Path
) -> None:
    src = tmp_path / "persist.json"
    src.write_text(json.dumps(pipe_flow("persist", interval=0.5)))
    assert daemon.cli("flows", "deploy", str(src)).returncode == 0
    wait_running(daemon, "persist", rev=1)

    t = time.monotonic()
    assert daemon.terminate() == 0
    assert time.monotonic() - t < 5.0
    log = daemon.log_tail(400)
    assert "Traceback" not in log, log

    # restart on the same data dir, now with a slow poll so only SIGHUP finds new files
    daemon.start(poll_interval=60)
    fs = wait_running(daemon, "persist", rev=1)
    assert fs["name"] == "pipe persist"
    code, body = daemon.api("GET", "/flows/persist")
    assert (code, body["source"]) == (200, "api")
    wait_running(daemon, "drop", rev=1)  # the file flow is back too, still rev 1

    write_atomically(daemon.flows / "late.json", pipe_flow("late"))
    time.sleep(1.0)
    assert daemon.flow_status("late") is None  # not picked up before the next (60 s) poll
    daemon.signal(signal.SIGHUP)
    wait_running(daemon, "late", rev=1)

    assert daemon.terminate() == 0


def test_refuses_plain_http_beyond_loopback_unless_asked_by_name(tmp_path: Path) -> None:
    port = free_port()
    proc = mechaway("start", "--data-dir", str(tmp_path / "d"), "--listen", f"0.0.0.0:{port}")
    assert_one_line_error(proc, "--listen: refusing plain HTTP on 0.0.0.0")
    cfg = tmp_path / "m.toml"
    cfg.write_text(f'[api]\nlisten = "0.0.0.0:{port}"\n')
    proc = mechaway("--config", str(cfg), "start", "--data-dir", str(tmp_path / "d"))
    assert_one_line_error(proc, "api.listen: refusing plain HTTP on 0.0.0.0")
    cfg.write_text(f'[api]\nlisten = "0.0.0.0:{port}"\nauth = "none"\ninsecure_http = true\n')
    proc = mechaway("--config", str(cfg), "start", "--data-dir", str(tmp_path / "d"))
    assert_one_line_error(proc, 'api.auth: "none" is allowed only on loopback, not on 0.0.0.0')


def test_port_in_use_is_one_clear_line(tmp_path: Path) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        proc = mechaway("start", "--data-dir", str(tmp_path / "d"), "--listen", f"127.0.0.1:{port}")
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert f"cannot listen on 127.0.0.1:{port}" in proc.stderr
    # the port is bound before anything starts: no database was even created
    assert not (tmp_path / "d" / "mechaway.db").exists()


def test_a_second_daemon_on_a_busy_data_dir_leaves_at_once_touching_nothing(
    tmp_path: Path,
) -> None:
    first = DaemonProc(tmp_path / "one")
    first.start()
    try:
        write_atomically(first.flows / "busy.json", pipe_flow("busy", interval=1.0))
        wait_running(first, "busy", rev=1)
        other_flows = tmp_path / "other-flows"
        other_flows.mkdir()
        write_atomically(other_flows / "busy.json", pipe_flow("busy", interval=9.0))
        proc = mechaway(
            "--config", str(first.config), "start", "--data-dir", str(first.data),
            "--flows", str(other_flows), "--listen", f"127.0.0.1:{free_port()}",
        )  # fmt: skip
        assert first.proc is not None
        assert_one_line_error(
            proc, f"is in use by another mechaway daemon (pid {first.proc.pid})"
        )
        # the running daemon saw nothing: same revision, no new one written
        assert first.flow_status("busy")["rev"] == 1  # type: ignore[index]
        history = first.api("GET", "/flows/busy/revisions")[1]
        assert [r["rev"] for r in history] == [1]
        assert first.alive()
    finally:
        first.kill()


def test_health_uptime_counts_from_the_start_not_the_first_request(tmp_path: Path) -> None:
    d = DaemonProc(tmp_path / "d")  # the API is lazy: aiohttp loads at the first request
    d.start(wait=False)
    try:
        d.wait(lambda: " ready: " in d.logfile.read_text(), 20, "the daemon to be ready")
        time.sleep(1.5)
        code, body = d.api("GET", "/health", token=None)
        assert code == 200 and body["uptime_s"] >= 1.5
    finally:
        d.kill()
