"""Secure by default: no web page reaches the admin API, a token from the first start, roles,
TLS beyond loopback, and no token in logs or status."""

from __future__ import annotations

import json
import re
import ssl
import stat
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from aiohttp.test_utils import TestClient, TestServer

from mechaway.api.auth import FAIL_FREE, Guard, Throttle, ensure_token_file
from mechaway.api.server import make_app
from mechaway.runtime.engine import Engine
from mechaway.runtime.manager import FlowManager
from mechaway.store.db import Database
from mechaway.store.flows import FlowStore
from mechaway.testing.cli import assert_one_line_error
from mechaway.testing.daemon import DaemonProc, free_port


def tiny_flow(fid: str) -> dict[str, Any]:
    return {
        "id": fid,
        "nodes": [
            {"id": "tick", "type": "InjectNode", "params": {"interval": 5, "payload": 1}},
            {"id": "log", "type": "LogNode"},
        ],
        "edges": [{"from": "tick", "to": "log"}],
    }


@pytest.fixture(scope="module")
def plain(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProc]:
    """A daemon with the shipped defaults: no token configured anywhere."""
    d = DaemonProc(tmp_path_factory.mktemp("secure"))
    d.start()
    try:
        yield d
    finally:
        d.kill()


def raw(d: DaemonProc, method: str, path: str, body: bytes | None, **headers: str) -> int:
    """Status of one request with exactly these headers (what curl -H would send)."""
    req = urllib.request.Request(f"{d.url}/api/v1{path}", data=body, method=method)
    for name, value in headers.items():
        req.add_header(name.replace("_", "-"), value)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as err:
        return int(err.code)


def test_a_token_is_made_at_the_first_start_mode_0600_and_never_logged(plain: DaemonProc) -> None:
    path = plain.data / "api-token"
    token = plain.own_token()
    assert token and len(token) >= 40
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    log = plain.logfile.read_text()
    assert f"token created in {path}" in log
    assert token not in log
    assert plain.api("GET", "/status", token=None)[0] == 401
    code, status = plain.api("GET", "/status")
    assert code == 200
    assert status["api"]["auth"] == "token" and status["api"]["token_source"] == str(path)
    assert token not in json.dumps(status)


def test_the_cli_finds_the_generated_token(plain: DaemonProc) -> None:
    proc = plain.cli("status")
    assert proc.returncode == 0, proc.stderr
    assert "auth: token" in proc.stdout and "problems: none" in proc.stdout
    assert plain.cli("flows", "list").returncode == 0


def test_the_issues_three_requests_are_refused_with_the_defaults(plain: DaemonProc) -> None:
    port = plain.port
    doc = json.dumps(tiny_flow("x")).encode()
    token = f"Bearer {plain.own_token()}"
    # 1. DNS rebinding: the page's own name in Host (even if it somehow had the token)
    assert raw(plain, "PUT", "/flows/x", doc, Host=f"attacker.example:{port}",
               Content_Type="application/json") == 421  # fmt: skip
    assert raw(plain, "PUT", "/flows/x", doc, Host=f"attacker.example:{port}",
               Content_Type="application/json", Authorization=token) == 421  # fmt: skip
    # 2. a cross-origin PUT of JSON sent as text/plain
    assert raw(plain, "PUT", "/flows/y", doc, Origin="http://attacker.example",
               Content_Type="text/plain") == 403  # fmt: skip
    # 3. a cross-origin "simple" POST
    assert raw(plain, "POST", "/flows/y/rollback", b'{"rev": 1}',
               Origin="http://attacker.example", Content_Type="text/plain") == 403  # fmt: skip
    # and with the token, a text/plain body is still not JSON to us
    assert raw(plain, "PUT", "/flows/y", doc, Content_Type="text/plain",
               Authorization=token) == 415  # fmt: skip
    flows = plain.api("GET", "/flows")[1]
    assert {f["id"] for f in flows}.isdisjoint({"x", "y"})  # nothing was deployed
    refused = plain.api("GET", "/status")[1]["api"]["refused"]
    assert refused["host"] >= 2 and refused["origin"] >= 2


def test_the_same_requests_from_the_right_place_with_the_token_are_accepted(
    plain: DaemonProc,
) -> None:
    port = plain.port
    doc = json.dumps(tiny_flow("ok1")).encode()
    token = f"Bearer {plain.own_token()}"
    for host in (f"127.0.0.1:{port}", f"localhost:{port}"):
        assert raw(plain, "PUT", "/flows/ok1", doc, Host=host, Content_Type="application/json",
                   Authorization=token) in (200, 201)  # fmt: skip
    origin = f"http://127.0.0.1:{port}"  # the daemon's own (the editor's) origin
    assert raw(plain, "PUT", "/flows/ok1", doc, Origin=origin, Host=f"127.0.0.1:{port}",
               Content_Type="application/json", Authorization=token) == 200  # fmt: skip
    assert raw(plain, "POST", "/flows/ok1/rollback", b'{"rev": 1}', Origin=origin,
               Host=f"127.0.0.1:{port}", Content_Type="application/json",
               Authorization=token) == 200  # fmt: skip


def test_allowed_hosts_and_origins_and_a_read_only_token(tmp_path: Path) -> None:
    read = "dashboard-read-only-token"
    d = DaemonProc(
        tmp_path,
        token="admin-token-for-this-test",
        config=(
            '[api]\nread_token = "dashboard-read-only-token"\n'
            'allowed_hosts = ["pi.example"]\nallowed_origins = ["https://dash.example"]\n'
        ),
    )
    # the DaemonProc writes its own [api] table: merge ours into it
    d.write_config = lambda poll_interval: d.config.write_text(  # type: ignore[method-assign]
        '[api]\ntoken = "admin-token-for-this-test"\nread_token = "dashboard-read-only-token"\n'
        'allowed_hosts = ["pi.example"]\nallowed_origins = ["https://dash.example"]\n'
        f"[flows]\npoll_interval = {poll_interval}\n"
    )
    d.start()
    try:
        doc = json.dumps(tiny_flow("r1")).encode()
        admin = "Bearer admin-token-for-this-test"
        assert raw(d, "PUT", "/flows/r1", doc, Host="pi.example:7700",
                   Origin="https://dash.example", Content_Type="application/json",
                   Authorization=admin) == 201  # fmt: skip
        assert raw(d, "GET", "/status", None, Authorization=f"Bearer {read}") == 200
        assert raw(d, "GET", "/flows/r1", None, Authorization=f"Bearer {read}") == 200
        for method, path, body in (("PUT", "/flows/r1", doc), ("DELETE", "/flows/r1", None),
                                   ("POST", "/flows/r1/rollback", b'{"rev": 1}')):  # fmt: skip
            assert raw(d, method, path, body, Content_Type="application/json",
                       Authorization=f"Bearer {read}") == 403  # fmt: skip
        status = d.api("GET", "/status")[1]
        assert status["api"]["read_token"] is True
        text = json.dumps(status) + d.logfile.read_text()
        assert "admin-token-for-this-test" not in text and read not in text
    finally:
        d.kill()


def test_a_tls_listener_is_reached_with_the_ca(tmp_path: Path) -> None:
    import trustme  # the test extra has it
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    cert_pem, key_pem, ca_pem = tmp_path / "cert.pem", tmp_path / "key.pem", tmp_path / "ca.pem"
    cert.private_key_and_cert_chain_pem.write_to_path(str(cert_pem))
    cert.private_key_pem.write_to_path(str(key_pem))
    ca.cert_pem.write_to_path(str(ca_pem))
    d = DaemonProc(tmp_path / "d", token="tls-test-token-123456")
    d.write_config = lambda poll_interval: d.config.write_text(  # type: ignore[method-assign]
        f'[api]\ntoken = "tls-test-token-123456"\ntls_cert = "{cert_pem}"\n'
        f'tls_key = "{key_pem}"\nlazy = false\n'
    )
    d.start(wait=False)
    ctx = ssl.create_default_context(cafile=str(ca_pem))
    url = f"https://127.0.0.1:{d.port}/api/v1/health"

    def healthy() -> bool:
        try:
            with urllib.request.urlopen(url, context=ctx, timeout=5) as resp:
                return bool(resp.status == 200)
        except OSError:
            return False

    try:
        d.wait(healthy, 20, "the TLS API to answer")
        with pytest.raises(OSError):  # a client without the CA does not trust it
            urllib.request.urlopen(url, context=ssl.create_default_context(), timeout=5)
        proc = d.cli("status", "--url", f"https://127.0.0.1:{d.port}")
        assert proc.returncode == 1  # the CLI does not know our CA: one line, no traceback
        assert "Traceback" not in proc.stderr
    finally:
        d.kill()


def test_an_empty_token_and_auth_none_beyond_loopback_are_errors(tmp_path: Path) -> None:
    from mechaway.testing.cli import mechaway

    cfg = tmp_path / "m.toml"
    cfg.write_text('[api]\ntoken = ""\n')
    assert_one_line_error(mechaway("--config", str(cfg), "status"), "api.token: is empty")
    port = free_port()
    cfg.write_text(f'[api]\nauth = "none"\nlisten = "0.0.0.0:{port}"\ninsecure_http = true\n')
    proc = mechaway("--config", str(cfg), "start", "--data-dir", str(tmp_path / "d"))
    assert_one_line_error(proc, 'api.auth: "none" is allowed only on loopback')


def test_auth_none_on_loopback_is_loud(tmp_path: Path) -> None:
    d = DaemonProc(tmp_path)
    d.write_config = lambda poll_interval: d.config.write_text(  # type: ignore[method-assign]
        '[api]\nauth = "none"\n'
    )
    d.start()
    try:
        assert d.api("GET", "/status", token=None)[0] == 200
        assert "AUTH IS OFF" in d.logfile.read_text()
        assert not (d.data / "api-token").exists()
        assert d.api("GET", "/status", token=None)[1]["api"]["auth"] == "none"
    finally:
        d.kill()


# -- the app's routes, enumerated ---------------------------------------------------------------
@pytest_asyncio.fixture
async def app_client(tmp_path: Path) -> Any:
    db = Database(tmp_path / "m.db")
    db.open()
    manager = FlowManager(Engine(), FlowStore(db))
    guard = Guard(token="admin-token-0123456789", read_token="read-token-0123456789")
    app = make_app(manager, lambda: {}, token="admin-token-0123456789", max_body=1 << 20,
                   guard=guard)  # fmt: skip
    client = TestClient(TestServer(app))
    await client.start_server()
    try:
        yield client, app
    finally:
        await client.close()
        await manager.engine.stop()
        await db.close()


@pytest.mark.asyncio
async def test_a_read_only_token_is_refused_on_every_state_changing_route(app_client: Any) -> None:
    """Every route of the app, found by walking its router: a new route cannot be
    forgotten. A read token may GET what it may read; it changes nothing."""
    client, app = app_client
    read = {"Authorization": "Bearer read-token-0123456789", "Content-Type": "application/json"}
    changing, reading = 0, 0
    for route in app.router.routes():
        info = route.resource.get_info() if route.resource else {}
        path = info.get("path") or info.get("formatter") or ""
        if not path.startswith("/api/v1/") or path == "/api/v1/events":
            continue
        path = re.sub(r"\{(\w+)(:[^}]*)?\}", "x", path)
        resp = await client.request(route.method, path, headers=read, data=b"{}")
        if route.method in ("GET", "HEAD"):
            reading += 1
            assert resp.status not in (401, 403), (route.method, path)
        else:
            changing += 1
            assert resp.status == 403, (route.method, path, resp.status)
            assert "read-only" in (await resp.json())["error"]
    assert changing >= 3 and reading >= 5


def test_wrong_tokens_from_one_address_are_slowed_down() -> None:
    t = Throttle()
    for _ in range(FAIL_FREE - 1):
        t.failed("10.0.0.9")
    assert t.delay("10.0.0.9") == 0
    delays = []
    for _ in range(6):
        t.failed("10.0.0.9")
        delays.append(t.delay("10.0.0.9"))
    assert delays == sorted(delays) and delays[0] > 0 and max(delays) <= 2.0
    assert t.delay("10.0.0.10") == 0  # another address is not punished
    t.succeeded("10.0.0.9")
    assert t.delay("10.0.0.9") == 0 and t.total == FAIL_FREE + 5


def test_guard_rules() -> None:
    g = Guard(token="admin-token-0123456789", listen_host="127.0.0.1",
              allowed_hosts=("pi.local",), allowed_origins=("https://dash.example",))  # fmt: skip
    assert g.host_ok("127.0.0.1:7700") and g.host_ok("localhost") and g.host_ok("[::1]:7700")
    assert g.host_ok("192.168.1.7:7700") and g.host_ok("PI.LOCAL:7700") and g.host_ok(None)
    assert not g.host_ok("attacker.example:7700") and not g.host_ok("localhost.evil:7700")
    assert g.origin_ok(None, "127.0.0.1:7700", "http")
    assert g.origin_ok("http://127.0.0.1:7700", "127.0.0.1:7700", "http")
    assert g.origin_ok("https://dash.example", "127.0.0.1:7700", "http")
    assert not g.origin_ok("http://attacker.example", "127.0.0.1:7700", "http")
    assert not g.origin_ok("null", "127.0.0.1:7700", "http")
    assert not g.origin_ok("https://127.0.0.1:7700", "127.0.0.1:7700", "http")
    assert g.role_of("admin-token-0123456789") == "admin" and g.role_of("nope") is None
    assert g.bearer_role("Bearer admin-token-0123456789") == "admin"
    assert g.bearer_role("admin-token-0123456789") is None


def test_the_token_file_is_made_once(tmp_path: Path) -> None:
    first, created = ensure_token_file(tmp_path)
    again, created_again = ensure_token_file(tmp_path)
    assert created and not created_again and first == again
    (tmp_path / "api-token").write_text("")
    with pytest.raises(PermissionError, match="holds no readable token"):
        ensure_token_file(tmp_path)


@pytest.mark.asyncio
async def test_the_events_socket_takes_admin_and_read_tokens_and_checks_origin(
    app_client: Any,
) -> None:
    client, _app = app_client
    for token in ("admin-token-0123456789", "read-token-0123456789"):
        ws = await client.ws_connect("/api/v1/events")
        await ws.send_json({"type": "auth", "token": token})
        first = await ws.receive_json(timeout=5)
        assert first["type"] == "hello", first
        await ws.close()
    ws = await client.ws_connect("/api/v1/events")
    await ws.send_json({"type": "auth", "token": "wrong-token-0123456789"})
    msg = await ws.receive(timeout=5)
    assert ws.close_code == 4401 or msg.data == 4401
    # a page elsewhere cannot even open it (cross-site WebSocket hijacking)
    resp = await client.get("/api/v1/events", headers={
        "Origin": "http://attacker.example", "Upgrade": "websocket", "Connection": "Upgrade",
        "Sec-WebSocket-Version": "13", "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
    })  # fmt: skip
    assert resp.status == 403


def test_an_unreadable_certificate_fails_the_start_before_anything_runs(tmp_path: Path) -> None:
    from mechaway.testing.cli import mechaway

    cfg = tmp_path / "m.toml"
    cfg.write_text(
        f'[api]\nlisten = "127.0.0.1:{free_port()}"\n'
        f'tls_cert = "{tmp_path}/missing.pem"\ntls_key = "{tmp_path}/missing.key"\n'
    )
    proc = mechaway("--config", str(cfg), "start", "--data-dir", str(tmp_path / "d"))
    assert_one_line_error(proc, "api.tls_cert / api.tls_key: cannot load")
    assert not (tmp_path / "d" / "mechaway.db").exists()
