"""The flows directory under hostile content: whatever lands there, the watcher never
raises, never drops a running flow because of a bad file, and names the file in
``errors()`` (``flow_file_errors`` in ``mechaway status``)."""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mechaway.flow.parse import MAX_FLOW_FILE_BYTES
from mechaway.runtime import manager as manager_mod
from mechaway.runtime.manager import FlowDirWatcher
from mechaway.testing.daemon import DaemonProc

from .test_watcher import flow, running


def put(path: Path, data: Any) -> None:
    """``test_watcher.put``, for bytes too."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data if isinstance(data, bytes) else json.dumps(data).encode())
    os.replace(tmp, path)


def keep_of(w: FlowDirWatcher, fid: str) -> int:
    keep: int = w.manager.engine.flows[fid].valid.doc.nodes[1].params["keep"]
    return keep


async def started_with_a(w: FlowDirWatcher) -> Path:
    """``a.json`` defines flow ``a`` (rev 1), running."""
    path = w.directory / "a.json"
    put(path, flow("a"))
    await w.start()
    assert running(w) == {"a": 1}
    return path


# -- what lands next to or instead of a good file -----------------------------------------------
@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("content", "needle"),
    [
        (b"\x00\xff\xfe\x89PNG\r\n\x1a\n" + bytes(range(256)), "invalid JSON"),
        (b"", "invalid JSON"),
        (b'{"id": "a", "nodes": [', "invalid JSON"),
        (b"[1, 2]", "must be an object"),
    ],
    ids=["binary", "empty", "truncated", "not-an-object"],
)
async def test_a_broken_file_keeps_the_running_revision(
    watcher: FlowDirWatcher, content: bytes, needle: str
) -> None:
    path = await started_with_a(watcher)
    put(path, content)
    await watcher.scan()
    assert running(watcher) == {"a": 1}
    (err,) = watcher.errors().values()
    assert err.startswith(f"{path}: ") and needle in err
    put(path, flow("a", keep=3))
    await watcher.scan()
    assert running(watcher) == {"a": 2}
    assert watcher.errors() == {}


@pytest.mark.asyncio
async def test_a_yaml_file_the_parser_chokes_on_is_a_located_error(
    watcher: FlowDirWatcher,
) -> None:
    # PyYAML raises AttributeError (not a YAMLError) on a malformed explicit timestamp
    path = watcher.directory / "t.yaml"
    put(path, b"id: t\nwhen: !!timestamp nope\n")
    await watcher.start()
    assert watcher.errors() == {str(path): f"{path}: invalid YAML: 'NoneType' object has no "
                                "attribute 'groupdict'"}  # fmt: skip


@pytest.mark.asyncio
async def test_a_file_written_in_two_steps_deploys_once_complete(
    watcher: FlowDirWatcher,
) -> None:
    path = await started_with_a(watcher)
    text = json.dumps(flow("a", keep=7)).encode()
    with path.open("wb") as f:  # not atomic: the watcher sees the first half
        f.write(text[: len(text) // 2])
        f.flush()
        await watcher.scan()
        assert running(watcher) == {"a": 1}
        assert "invalid JSON" in watcher.errors()[str(path)]
        f.write(text[len(text) // 2 :])
    await watcher.scan()
    assert running(watcher) == {"a": 2}
    assert keep_of(watcher, "a") == 7
    assert watcher.errors() == {}


@pytest.mark.asyncio
async def test_a_same_size_rewrite_within_one_mtime_tick_is_seen(
    watcher: FlowDirWatcher,
) -> None:
    # coarse timestamps (FAT on an SD card: 2 s) give an edit the old mtime; the size is
    # the same too: the inode of an atomic rename (or the ctime) still tells the change
    path = await started_with_a(watcher)
    st = path.stat()
    put(path, flow("a", keep=21))  # same length as keep=20
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert path.stat().st_size == st.st_size
    await watcher.scan()
    assert running(watcher) == {"a": 2}
    assert keep_of(watcher, "a") == 21


@pytest.mark.asyncio
async def test_a_directory_named_like_a_flow_file_is_reported(watcher: FlowDirWatcher) -> None:
    (watcher.directory / "y.json").mkdir()
    await started_with_a(watcher)
    y = watcher.directory / "y.json"
    assert watcher.errors() == {str(y): f"{y}: a directory, not a flow file"}


@pytest.mark.asyncio
async def test_dangling_symlink_and_symlink_loop_are_reported(watcher: FlowDirWatcher) -> None:
    d = watcher.directory
    (d / "dangling.json").symlink_to(d / "nowhere.json")
    (d / "loop.json").symlink_to(d / "loop2.json")
    (d / "loop2.json").symlink_to(d / "loop.json")
    await started_with_a(watcher)
    errors = watcher.errors()
    assert errors[str(d / "dangling.json")].endswith("dangling symlink: target not found")
    assert "Too many levels of symbolic links" in errors[str(d / "loop.json")]
    assert set(errors) == {str(d / n) for n in ("dangling.json", "loop.json", "loop2.json")}


@pytest.mark.asyncio
async def test_a_symlinked_flow_file_whose_target_goes_keeps_running(
    watcher: FlowDirWatcher, tmp_path: Path
) -> None:
    target = tmp_path / "elsewhere.json"
    put(target, flow("s"))
    (watcher.directory / "s.json").symlink_to(target)
    await watcher.start()
    assert running(watcher) == {"s": 1}
    target.unlink()  # the link is still there, dangling: a broken file, not a removed one
    await watcher.scan()
    assert running(watcher) == {"s": 1}
    assert "dangling symlink" in watcher.errors()[str(watcher.directory / "s.json")]
    put(target, flow("s", keep=2))
    await watcher.scan()
    assert running(watcher) == {"s": 2}
    assert watcher.errors() == {}


@pytest.mark.asyncio
async def test_a_fifo_named_like_a_flow_file_is_never_opened(watcher: FlowDirWatcher) -> None:
    fifo = watcher.directory / "pipe.json"
    os.mkfifo(fifo)  # opening it for reading would block the reading thread for good
    await started_with_a(watcher)
    assert watcher.errors() == {str(fifo): f"{fifo}: not a regular file, not a flow file"}


@pytest.mark.asyncio
async def test_a_huge_file_is_refused_unread(watcher: FlowDirWatcher) -> None:
    path = await started_with_a(watcher)
    with path.open("r+b") as f:
        f.truncate(MAX_FLOW_FILE_BYTES + 1)
    await watcher.scan()
    assert running(watcher) == {"a": 1}
    assert watcher.errors()[str(path)] == f"{path}: larger than 4096 KiB, not read"


@pytest.mark.asyncio
async def test_an_unreadable_file_is_reported_and_retried_when_readable(
    watcher: FlowDirWatcher, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = await started_with_a(watcher)
    put(path, flow("a", keep=5))
    real = manager_mod._read_capped

    def denied(p: Path) -> bytes | None:
        if p == path:
            raise PermissionError(13, "Permission denied")
        return real(p)

    # chmod 000 does not stop root (the test may run as root): deny the read itself
    monkeypatch.setattr(manager_mod, "_read_capped", denied)
    await watcher.scan()
    assert running(watcher) == {"a": 1}
    assert watcher.errors() == {str(path): f"{path}: cannot read: Permission denied"}
    monkeypatch.setattr(manager_mod, "_read_capped", real)
    os.chmod(path, 0o600)  # what an operator does to fix it: the ctime changes, not the mtime
    await watcher.scan()
    assert running(watcher) == {"a": 2}
    assert watcher.errors() == {}


@pytest.mark.asyncio
async def test_a_file_name_that_is_not_utf8_is_shown_escaped(watcher: FlowDirWatcher) -> None:
    raw_name = os.fsdecode(b"caf\xe9.json")  # Latin-1 bytes: not valid UTF-8
    path = watcher.directory / raw_name
    put(path, b"{")
    await started_with_a(watcher)
    errors = watcher.errors()
    (key,) = errors
    assert key == f"{watcher.directory}/caf\\xe9.json"
    json.dumps(errors).encode("utf-8")  # the status endpoint can serialise it
    errors[key].encode("utf-8")


# -- ids: duplicates, renames, removal -----------------------------------------------------------
@pytest.mark.asyncio
async def test_two_files_declaring_one_flow_id(watcher: FlowDirWatcher) -> None:
    d = watcher.directory
    put(d / "a.json", flow("x", keep=1))
    put(d / "b.json", flow("x", keep=2))
    await watcher.start()
    # the first file (by name) defines x; the second is refused, not deployed over it
    assert running(watcher) == {"x": 1}
    assert keep_of(watcher, "x") == 1
    assert watcher.errors() == {
        str(d / "b.json"): f"{d / 'b.json'}: id: flow 'x' is already defined by {d / 'a.json'}:"
        " this file is ignored"
    }
    # a restart does not flip-flop between the two documents, adding revisions
    await watcher.scan(force=True)
    assert running(watcher) == {"x": 1}
    # the defining file goes: the other one takes over without a stop
    (d / "a.json").unlink()
    await watcher.scan()
    assert running(watcher) == {"x": 2}
    assert keep_of(watcher, "x") == 2
    assert watcher.errors() == {}
    assert watcher.manager.store.active_rev("x") == 2


@pytest.mark.asyncio
async def test_renaming_a_file_keeps_the_flow_running(watcher: FlowDirWatcher) -> None:
    path = await started_with_a(watcher)
    instance = watcher.manager.engine.flows["a"]
    os.rename(path, watcher.directory / "renamed.yaml.json")
    await watcher.scan()
    assert running(watcher) == {"a": 1}  # same document: no new revision, no restart
    assert watcher.manager.engine.flows["a"] is instance
    os.rename(watcher.directory / "renamed.yaml.json", watcher.directory / "renamed.json.bak")
    await watcher.scan()
    assert running(watcher) == {}  # no flow file defines it any more


@pytest.mark.asyncio
async def test_a_flow_id_that_differs_from_the_file_name(watcher: FlowDirWatcher) -> None:
    put(watcher.directory / "greenhouse.json", flow("pump"))
    await watcher.start()
    assert running(watcher) == {"pump": 1}
    assert watcher.errors() == {}


@pytest.mark.asyncio
async def test_deleting_a_file_that_was_broken_since_start_stops_its_flow(
    watcher: FlowDirWatcher,
) -> None:
    path = await started_with_a(watcher)
    await watcher.stop()
    # while "the daemon is down" the file is broken; at the next start the stored
    # revision runs, the file is rejected, then the operator deletes the file
    put(path, {**flow("a"), "colour": "red"})
    w2 = FlowDirWatcher(watcher.manager, watcher.directory, interval=3600)
    await w2.start()
    try:
        assert running(w2) == {"a": 1}
        assert "unknown key `colour`" in w2.errors()[str(path)]
        path.unlink()
        await w2.scan()
        assert running(w2) == {}
        assert w2.manager.store.active_rev("a") is None
    finally:
        await w2.stop()


@pytest.mark.asyncio
async def test_an_unlistable_directory_keeps_every_flow(watcher: FlowDirWatcher) -> None:
    await started_with_a(watcher)
    moved = watcher.directory.with_name("flows.away")
    watcher.directory.rename(moved)  # unmounted, removed: nothing can be listed
    await watcher.scan()
    assert running(watcher) == {"a": 1}
    moved.rename(watcher.directory)
    await watcher.scan()
    assert running(watcher) == {"a": 1}
    (watcher.directory / "a.json").unlink()
    await watcher.scan()
    assert running(watcher) == {}


@pytest.mark.asyncio
async def test_a_missing_directory_at_start_forgets_nothing(
    watcher: FlowDirWatcher, tmp_path: Path
) -> None:
    await started_with_a(watcher)
    await watcher.stop()
    w2 = FlowDirWatcher(watcher.manager, tmp_path / "not-mounted-yet", interval=3600)
    await w2.start()
    try:
        assert running(w2) == {"a": 1}
        assert w2.manager.store.active_rev("a") == 1
    finally:
        await w2.stop()


# -- the real daemon -------------------------------------------------------------------------------
@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[DaemonProc]:
    d = DaemonProc(tmp_path / "root")
    d.start(poll_interval=0.1)
    try:
        yield d
    finally:
        d.kill()


def test_the_daemon_survives_a_hostile_flows_dir(daemon: DaemonProc) -> None:
    put(daemon.flows / "good.json", flow("good"))
    daemon.wait(lambda: daemon.flow_status("good"), 10, "flow good to run")
    f = daemon.flows
    put(f / "x.json", bytes(range(256)) * 4)
    put(f / "empty.json", b"")
    (f / "y.json").mkdir()
    (f / "dangling.json").symlink_to(f / "nowhere")
    (f / "loop.json").symlink_to(f / "loop.json")
    os.mkfifo(f / "fifo.json")
    (f / os.fsdecode(b"\xff.yaml")).write_bytes(b"id: [")
    put(f / "dup.json", flow("good", keep=3))
    put(f / "good.json", {**flow("good"), "nodes": "none"})  # break the running one

    def all_reported() -> dict[str, str] | None:
        errors: dict[str, str] = daemon.status()["flow_file_errors"]
        return errors if len(errors) == 9 else None

    errors = daemon.wait(all_reported, 15, "every bad file in flow_file_errors")
    assert "Traceback" not in daemon.log_tail(400)
    assert errors[str(f / "y.json")].endswith("a directory, not a flow file")
    assert "already defined by" in errors[str(f / "dup.json")]
    assert errors[f"{f}/\\xff.yaml"].startswith(f"{f}/\\xff.yaml: ")
    fs = daemon.flow_status("good")
    assert fs is not None and fs["rev"] == 1  # the last good revision runs on
    # the CLI shows it too, and SIGHUP (retrying every failed file) changes nothing
    daemon.signal(signal.SIGHUP)
    proc = daemon.cli("status", "--json")
    assert proc.returncode == 0, proc.stderr
    assert len(json.loads(proc.stdout)["flow_file_errors"]) == 9
    # fixed: deployed, and the duplicate is still refused
    put(f / "good.json", flow("good", keep=4))
    daemon.wait(
        lambda: (daemon.flow_status("good") or {}).get("rev") == 2, 10, "the fixed file to deploy"
    )
    assert daemon.alive()


# -- the same files through ``mechaway validate`` -------------------------------------------------
def test_validate_names_every_hostile_file_in_one_line_each(tmp_path: Path) -> None:
    from mechaway.testing.cli import mechaway, stderr_lines

    put(tmp_path / "x.json", bytes(range(256)))
    put(tmp_path / "empty.json", b"")
    put(tmp_path / "t.yaml", b"id: t\nwhen: !!timestamp nope\n")
    (tmp_path / "y.json").mkdir()
    (tmp_path / "dangling.json").symlink_to(tmp_path / "nowhere")
    (tmp_path / "loop.json").symlink_to(tmp_path / "loop.json")
    os.mkfifo(tmp_path / "pipe.json")  # read blocking, it would hang validate for good
    with (tmp_path / "huge.json").open("wb") as f:
        f.truncate(MAX_FLOW_FILE_BYTES + 1)
    names = ["x.json", "empty.json", "t.yaml", "y.json", "dangling.json", "loop.json"]
    names += ["pipe.json", "huge.json"]
    proc = mechaway("validate", *(str(tmp_path / n) for n in names))
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    lines = stderr_lines(proc)
    assert [ln.split(": ", 1)[0] for ln in lines] == [str(tmp_path / n) for n in names]
    assert lines[2] == (
        f"{tmp_path / 't.yaml'}: invalid YAML: 'NoneType' object has no attribute 'groupdict'"
    )
    assert lines[-2:] == [
        f"{tmp_path / 'pipe.json'}: cannot read: not a regular file",
        f"{tmp_path / 'huge.json'}: larger than 4096 KiB, not read",
    ]


def test_deploy_of_a_yaml_document_json_cannot_carry_is_one_line(tmp_path: Path) -> None:
    from mechaway.testing.cli import assert_one_line_error, mechaway
    from mechaway.testing.daemon import free_port

    url = f"http://127.0.0.1:{free_port()}"  # refused before any request is made
    for text, needle in (
        ("id: d\nnodes: []\nname: 2024-01-01\n", "date is not JSON serializable"),
        ("id: d\nnodes: []\nname: .nan\n", "Out of range float values"),
    ):
        src = tmp_path / "d.yaml"
        src.write_text(text)
        proc = mechaway("--url", url, "flows", "deploy", str(src))
        assert_one_line_error(proc, f"{src}: not JSON-compatible: ", needle)
