"""The ``mechaway`` command as a user runs it: exit codes and one-line errors, no tracebacks."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from mechaway.testing.cli import assert_one_line_error, mechaway, stderr_lines, write
from mechaway.testing.daemon import clean_env, free_port
from mechaway.testing.flows import IDLE_SOURCE, doc, edge, node


def good_flow() -> dict[str, Any]:
    return doc("ok", [IDLE_SOURCE, node("log", "LogNode")], [edge("src", "log")])


# -- validate ---------------------------------------------------------------------------------
def test_validate_ok_exits_0(tmp_path: Path) -> None:
    a = write(tmp_path / "a.json", good_flow())
    b = write(
        tmp_path / "b.yaml",
        "id: b\nnodes:\n  - {id: t, type: InjectNode, params: {interval: 5}}\n"
        "  - {id: l, type: LogNode}\nedges:\n  - {from: t, to: l}\n",
    )
    proc = mechaway("validate", str(a), str(b))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [f"{a}: ok", f"{b}: ok"]
    assert stderr_lines(proc) == []


def test_validate_bad_exits_1_with_located_errors_on_stderr(tmp_path: Path) -> None:
    good = write(tmp_path / "good.json", good_flow())
    raw = good_flow()
    raw["nodes"][1] = node("log", "LogNode", level="loud", extra=1)
    raw["edges"].append(edge("log", "src"))
    bad = write(tmp_path / "bad.json", raw)
    proc = mechaway("validate", str(good), str(bad))
    assert proc.returncode == 1
    assert proc.stdout.splitlines() == [f"{good}: ok"]
    assert "Traceback" not in proc.stderr
    assert stderr_lines(proc) == [
        f"{bad}: nodes[1] (log).params.level: invalid value 'loud'",
        f"{bad}: edges[1] (log -> src).to: 'src' is a source (InjectNode) and takes no input",
        f"{bad}: edges: cycle: log -> src -> log",
    ]


def test_validate_bad_json_names_the_line(tmp_path: Path) -> None:
    bad = write(tmp_path / "bad.json", '{\n  "id": "x",\n  "nodes": [,]\n}\n')
    line = assert_one_line_error(mechaway("validate", str(bad)), str(bad), "line 3 column")
    assert "invalid JSON" in line


def test_validate_missing_file_is_one_clear_line(tmp_path: Path) -> None:
    missing = tmp_path / "nope.json"
    assert_one_line_error(
        mechaway("validate", str(missing)), str(missing), "cannot read: No such file or directory"
    )


def test_validate_directory_is_one_clear_line(tmp_path: Path) -> None:
    d = tmp_path / "flows.json"
    d.mkdir()
    assert_one_line_error(mechaway("validate", str(d)), str(d), "cannot read")


# -- schema -----------------------------------------------------------------------------------
def test_schema_all_types() -> None:
    proc = mechaway("schema")
    assert proc.returncode == 0, proc.stderr
    schemas = json.loads(proc.stdout)
    assert {"InjectNode", "RouteNode", "WindowNode", "LogNode"} <= set(schemas)
    assert schemas["RouteNode"]["title"] == "RouteNode"


def test_schema_one_type() -> None:
    proc = mechaway("schema", "DebounceNode")
    assert proc.returncode == 0, proc.stderr
    s = json.loads(proc.stdout)
    assert s["title"] == "DebounceNode"
    body = s["$defs"][s["$ref"].removeprefix("#/$defs/")] if "$ref" in s else s
    assert "quiet" in body["properties"]
    assert body["required"] == ["quiet"]


def test_schema_unknown_type_exits_1() -> None:
    assert_one_line_error(
        mechaway("schema", "NopeNode"), "unknown node type 'NopeNode'", "InjectNode"
    )


# -- config and daemon errors -----------------------------------------------------------------
def test_bad_toml_is_one_line_no_traceback(tmp_path: Path) -> None:
    cfg = write(tmp_path / "mechaway.toml", "[api\nlisten = 1\n")
    assert_one_line_error(mechaway("--config", str(cfg), "status"), str(cfg), "invalid TOML")


def test_bad_toml_via_environment(tmp_path: Path) -> None:
    cfg = write(tmp_path / "mechaway.toml", "listen = = 3\n")
    proc = mechaway("status", env=clean_env(MECHAWAY_CONFIG=str(cfg)))
    assert_one_line_error(proc, "invalid TOML")


def test_unknown_config_key_is_named(tmp_path: Path) -> None:
    cfg = write(tmp_path / "mechaway.toml", '[api]\nlisten = "127.0.0.1:7700"\ntokn = "x"\n')
    assert_one_line_error(mechaway("--config", str(cfg), "status"), "unknown key", "tokn")


def test_missing_config_file_is_one_line(tmp_path: Path) -> None:
    cfg = tmp_path / "absent.toml"
    assert_one_line_error(mechaway("--config", str(cfg), "status"), str(cfg), "cannot read config")


def test_unknown_environment_setting_is_named() -> None:
    proc = mechaway("status", env=clean_env(MECHAWAY_API_TOKNE="x"))
    assert_one_line_error(proc, "MECHAWAY_API_TOKNE is not a known setting")
    proc = mechaway("status", env=clean_env(MECHAWAY_NOPE_X="x"))
    assert_one_line_error(proc, "MECHAWAY_NOPE_X is not a known setting")


def test_start_with_bad_config_exits_1(tmp_path: Path) -> None:
    cfg = write(tmp_path / "mechaway.toml", "[flows]\npoll_interval = 0\n")
    assert_one_line_error(mechaway("--config", str(cfg), "start"), "poll_interval")


@pytest.mark.parametrize(
    "args",
    [
        ("status",),
        ("flows", "list"),
        ("flows", "show", "x"),
        ("flows", "history", "x"),
        ("flows", "delete", "x"),
        ("flows", "rollback", "x", "1"),
    ],
)
def test_daemon_not_running_is_a_clear_error(args: tuple[str, ...]) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    assert_one_line_error(mechaway("--url", url, *args), "daemon not reachable", url, "running?")


def test_daemon_not_running_via_config_listen(tmp_path: Path) -> None:
    port = free_port()
    cfg = write(tmp_path / "m.toml", f'[api]\nlisten = "127.0.0.1:{port}"\n')
    assert_one_line_error(
        mechaway("--config", str(cfg), "status"), f"http://127.0.0.1:{port}", "not reachable"
    )


def test_deploy_of_a_bad_file_fails_before_calling_the_daemon(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    missing = tmp_path / "nope.json"
    assert_one_line_error(mechaway("--url", url, "flows", "deploy", str(missing)), "cannot read")
    no_id = write(tmp_path / "noid.json", {"nodes": []})
    assert_one_line_error(
        mechaway("--url", url, "flows", "deploy", str(no_id)), str(no_id), "missing flow id"
    )


def test_usage_errors_exit_2() -> None:
    proc = mechaway("flows", "explode")
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr


def test_version() -> None:
    proc = mechaway("--version")
    assert proc.returncode == 0
    assert proc.stdout.startswith("mechaway ")


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (("--flows", "/proc/no/such/dir"), "flows directory /proc/no/such/dir does not exist"),
        (("--data-dir", "/proc/no/such/dir"), "cannot create the data directory"),
    ],
)
def test_start_with_an_unusable_directory_is_one_line(
    tmp_path: Path, args: tuple[str, ...], needle: str
) -> None:
    base = ("--data-dir", str(tmp_path / "data"), "--listen", f"127.0.0.1:{free_port()}")
    proc = mechaway("start", *base, *args, env=clean_env(MECHAWAY_LOG_LEVEL="warning"))
    assert_one_line_error(proc, needle)
