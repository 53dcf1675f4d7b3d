"""mechaway.client against a running daemon (a real subprocess): the sync client and the
async one give the same typed answers and the same typed errors."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mechaway.client import (
    AsyncClient,
    BadURL,
    Client,
    Conflict,
    Forbidden,
    NotADaemon,
    NotFound,
    Unauthorized,
    Unreachable,
    ValidationFailed,
    discover,
)
from mechaway.errors import ConfigError
from mechaway.testing.daemon import DaemonProc, clean_env, free_port

TOKEN = "client-test-admin-token"
READ = "client-test-read-token"


def flow(fid: str, interval: float = 0.05) -> dict[str, Any]:
    return {"id": fid, "name": f"flow {fid}", "nodes": [
        {"id": "tick", "type": "InjectNode",
         "params": {"interval": interval, "payload": 21.5, "topic": "room"}},
        {"id": "keep", "type": "StoreNode", "params": {"series": f"{fid}.temp"}},
    ], "edges": [{"from": "tick", "to": "keep"}]}  # fmt: skip


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProc]:
    d = DaemonProc(tmp_path_factory.mktemp("client"), token=TOKEN,
                   env=clean_env(MECHAWAY_API_READ_TOKEN=READ))  # fmt: skip
    d.start()
    try:
        yield d
    finally:
        d.terminate()


def test_flows_deploy_conflict_history_rollback_delete(daemon: DaemonProc) -> None:
    api = Client(daemon.url, TOKEN)
    assert api.health()["status"] == "ok"
    first = api.deploy(flow("c1"))
    assert first.id == "c1" and first.new_revision and sorted(first.added) == ["keep", "tick"]
    assert [f.id for f in api.flows() if f.id == "c1"] == ["c1"]
    info = next(f for f in api.flows() if f.id == "c1")
    assert info.running and info.source == "api" and info.name == "flow c1"
    doc = api.flow("c1")
    assert doc.rev == first.rev and doc.flow["nodes"][0]["id"] == "tick" and doc.file is None
    second = api.deploy(flow("c1", 0.1), if_rev=doc.rev)  # based on the active revision
    assert second.rev == first.rev + 1 and second.changed == ["tick"]
    with pytest.raises(Conflict) as stale:
        api.deploy(flow("c1", 0.2), if_rev=doc.rev)  # someone deployed meanwhile
    assert stale.value.current_rev == second.rev and stale.value.status == 409
    assert [(r.rev, r.active) for r in api.history("c1")] == [(first.rev, False),
                                                              (second.rev, True)]
    back = api.rollback("c1", first.rev)
    assert back.rev == second.rev + 1 and api.flow("c1").flow["nodes"][0]["params"][
        "interval"] == 0.05  # fmt: skip
    api.delete("c1")
    with pytest.raises(NotFound, match="no flow 'c1'"):
        api.flow("c1")
    with pytest.raises(NotFound):
        api.delete("a/b")  # one path segment, never another route


def test_validate_status_series_schema(daemon: DaemonProc) -> None:
    api = Client(daemon.url, TOKEN)
    ok = api.validate(flow("v1"))
    assert ok.ok and ok.errors == []
    bad = flow("v2")
    bad["nodes"][1]["params"]["series"] = 5
    result = api.validate(bad)
    assert not result.ok and result.errors[0]["node"] == "keep"
    assert result.errors[0]["param"] == "series"
    with pytest.raises(ValidationFailed) as err:
        api.deploy(bad)
    assert any("series" in i.where for i in err.value.issues)
    api.deploy(flow("s1"))
    deadline = time.monotonic() + 20

    def points() -> list[Any]:
        try:
            return list(api.series("s1.temp")["points"])
        except NotFound:  # until the first sample is committed
            return []

    while not points():
        assert time.monotonic() < deadline, "no point stored"
        time.sleep(0.1)
    series = api.series("s1.temp", agg="count", bucket=3600)
    assert series["points"][0][1] >= 1
    with pytest.raises(NotFound):
        api.series("nothing.here")
    st = api.status()
    assert "s1" in st["flows"] and st["problems"] == []
    assert api.schema("StoreNode")["title"] == "StoreNode"
    assert "InjectNode" in api.schema()
    assert isinstance(api.plugins(), list)
    api.delete("s1")


def test_typed_errors(daemon: DaemonProc) -> None:
    with pytest.raises(Unauthorized) as err:
        Client(daemon.url, "wrong").flows()
    assert err.value.status == 401
    with pytest.raises(Unauthorized):
        Client(daemon.url).status()
    assert Client(daemon.url).health()["status"] == "ok"  # health needs no token
    reader = Client(daemon.url, READ)
    assert isinstance(reader.flows(), list)
    with pytest.raises(Forbidden, match="read-only"):
        reader.deploy(flow("r1"))
    port = free_port()
    with pytest.raises(Unreachable, match=f"not reachable at http://127.0.0.1:{port}"):
        Client(f"http://127.0.0.1:{port}", TOKEN, timeout=2).flows()
    with pytest.raises(BadURL, match="is not an http:// URL"):
        Client("http://[::1", TOKEN).flows()
    with pytest.raises(ValidationFailed, match="missing flow id"):
        Client(daemon.url, TOKEN).deploy({"nodes": []})


def test_not_a_daemon(tmp_path: Path) -> None:
    import http.server
    import threading

    class Html(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"<html>hello</html>")

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Html)
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    try:
        with pytest.raises(NotADaemon, match="not JSON"):
            Client(f"http://127.0.0.1:{server.server_port}").status()
    finally:
        server.shutdown()


def test_discover_finds_the_daemon_as_the_cli_does(daemon: DaemonProc, tmp_path: Path) -> None:
    url, token = discover(daemon.config, url=daemon.url, data_dir=daemon.data)
    assert (url, token) == (daemon.url, TOKEN)  # api.token of the config
    cfg = tmp_path / "m.toml"
    cfg.write_text(f'[api]\nlisten = "127.0.0.1:{daemon.port}"\n'
                   f'[device]\ndata_dir = "{tmp_path}"\n')
    (tmp_path / "api-token").write_text(f"{TOKEN}\n")
    api = Client.discover(cfg)
    assert api.url == daemon.url and api.token == TOKEN  # the generated token's file
    assert isinstance(api.flows(), list)  # the token works
    (tmp_path / "api-token").unlink()
    (tmp_path / "api-token").mkdir()  # there, and unreadable as a token: said, not ignored
    with pytest.raises(ConfigError, match="cannot read the daemon's token in"):
        discover(cfg)


@pytest.mark.asyncio
async def test_the_async_client_gives_the_same_answers(daemon: DaemonProc) -> None:
    async with AsyncClient(daemon.url, TOKEN) as api:
        assert (await api.health())["status"] == "ok"
        first = await api.deploy(flow("a1"))
        doc = await api.flow("a1")
        assert doc.rev == first.rev and doc.source == "api"
        assert "a1" in [f.id for f in await api.flows()]
        second = await api.deploy(flow("a1", 0.1), if_rev=doc.rev)
        with pytest.raises(Conflict) as stale:
            await api.deploy(flow("a1", 0.2), if_rev=doc.rev)
        assert stale.value.current_rev == second.rev
        assert [r.rev for r in await api.history("a1")] == [first.rev, second.rev]
        assert (await api.rollback("a1", first.rev)).rev == second.rev + 1
        assert (await api.validate(flow("x"))).ok
        assert "a1" in (await api.status())["flows"]
        assert (await api.schema("InjectNode"))["title"] == "InjectNode"
        await api.delete("a1")
        with pytest.raises(NotFound):
            await api.flow("a1")
        with pytest.raises(ValidationFailed):
            await api.deploy({"id": "bad", "nodes": "no"})
    async with AsyncClient(daemon.url, "wrong") as bad:
        with pytest.raises(Unauthorized):
            await bad.flows()
    async with AsyncClient(f"http://127.0.0.1:{free_port()}", TOKEN, timeout=2) as gone:
        with pytest.raises(Unreachable):
            await gone.status()
