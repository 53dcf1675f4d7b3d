"""Hostile configuration: any TOML value for any key, any MECHAWAY_* variable, any file at
the config path. Either valid settings or one ``ConfigError`` line naming the file and key
(or the variable): never another exception, and the CLI never shows a traceback."""

from __future__ import annotations

import datetime as dt
import http.server
import math
import socket
import tempfile
import threading
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from mechaway.errors import ConfigError
from mechaway.settings import (
    MAX_CONFIG_BYTES,
    ApiSettings,
    DeviceSettings,
    EngineSettings,
    FlowsSettings,
    HubSettings,
    LogSettings,
    Settings,
    StoreSettings,
    load_settings,
)
from mechaway.testing.cli import assert_one_line_error, mechaway, write
from mechaway.testing.daemon import clean_env, free_port

SECTIONS: dict[str, type[msgspec.Struct]] = {
    "device": DeviceSettings,
    "api": ApiSettings,
    "flows": FlowsSettings,
    "engine": EngineSettings,
    "log": LogSettings,
    "store": StoreSettings,
    "hub": HubSettings,
}
KEYS = [(s, k) for s, cls in SECTIONS.items() for k in cls.__struct_fields__]


# -- a TOML writer for arbitrary values (tomllib only reads) ------------------------------------
def toml_str(text: str) -> str:
    out = []
    for ch in text:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return (
            "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf") if math.isinf(v) else repr(v)
        )
    if isinstance(v, str):
        return toml_str(v)
    if isinstance(v, (dt.datetime, dt.date, dt.time)):
        return v.isoformat()
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{toml_str(k)} = {toml_value(x)}" for k, x in v.items()) + "}"
    raise TypeError(type(v))


scalars = st.one_of(
    st.text(max_size=40),
    st.sampled_from(["", " ", "0", "-1", "nan", "inf", "1e3", "127.0.0.1:7700", "[::1]:1", "a/b"]),
    st.integers(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(),
    st.booleans(),
    st.datetimes(max_value=dt.datetime(9999, 1, 1)),
    st.dates(),
    st.times(),
)
toml_values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=6,
)


@pytest.fixture(scope="module")
def cfg_dir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory() as d:
        yield Path(d)


def load_text(cfg_dir: Path, text: str, env: dict[str, str] | None = None) -> Settings:
    path = cfg_dir / "mechaway.toml"
    path.write_text(text, encoding="utf-8")
    return load_settings(path, env=env or {})


def assert_sane(s: Settings) -> None:
    """What the rest of the daemon relies on, whatever the file said."""
    for value in (
        s.flows.poll_interval,
        s.engine.stop_timeout,
        s.store.commit_interval_ms,
        s.store.context_interval_s,
    ):
        assert math.isfinite(value) and value > 0
    assert s.api.max_body_bytes >= 1
    assert s.device.id and s.device.data_dir and "\0" not in s.device.data_dir
    assert s.flows.dir is None or (s.flows.dir and "\0" not in s.flows.dir)
    assert s.api.token is None or s.api.token.isascii()


# -- properties -----------------------------------------------------------------------------------
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(key=st.sampled_from(KEYS), value=toml_values)
def test_any_value_for_any_key_is_settings_or_an_error_naming_the_key(
    cfg_dir: Path, key: tuple[str, str], value: Any
) -> None:
    section, name = key
    text = f"[{section}]\n{name} = {toml_value(value)}\n"
    try:
        tomllib.loads(text)
    except (tomllib.TOMLDecodeError, ValueError):
        assume(False)  # the writer's limits (e.g. a 4301-digit integer), not the reader's
    try:
        s = load_text(cfg_dir, text)
    except ConfigError as err:
        msg = str(err)
        assert msg.startswith(
            (f"{cfg_dir / 'mechaway.toml'}: {section}.{name}: ",
             f"{cfg_dir / 'mechaway.toml'}: {section}.{name}[")  # a list's item
        ), msg  # fmt: skip
        assert "\n" not in msg
    else:
        assert_sane(s)


@settings(max_examples=150, deadline=None)
@given(section=st.sampled_from(sorted(SECTIONS)), value=toml_values)
def test_a_value_where_a_section_goes_is_an_error_naming_the_section(
    cfg_dir: Path, section: str, value: Any
) -> None:
    assume(not isinstance(value, dict))
    with pytest.raises(ConfigError) as exc:
        load_text(cfg_dir, f"{section} = {toml_value(value)}\n")
    assert str(exc.value).startswith(f"{cfg_dir / 'mechaway.toml'}: {section}: ")


@settings(max_examples=100, deadline=None)
@given(section=st.sampled_from(sorted(SECTIONS)), name=st.text(min_size=1, max_size=20))
def test_an_unknown_key_is_named(cfg_dir: Path, section: str, name: str) -> None:
    assume(name not in SECTIONS[section].__struct_fields__)
    with pytest.raises(ConfigError) as exc:
        load_text(cfg_dir, f"[{section}]\n{toml_str(name)} = 1\n")
    assert f"{section}: unknown key `{name}`" in str(exc.value)


@settings(max_examples=400, deadline=None)
@given(key=st.sampled_from(KEYS), value=st.text(max_size=30).filter(lambda t: "\0" not in t))
def test_any_environment_value_is_settings_or_an_error_naming_the_variable(
    key: tuple[str, str], value: str
) -> None:
    section, name = key
    var = f"MECHAWAY_{section.upper()}_{name.upper()}"
    try:
        s = load_settings(None, env={var: value})
    except ConfigError as err:
        assert str(err).startswith(f"environment: {var} ({section}.{name}): "), str(err)
    else:
        assert_sane(s)


# -- examples, pinned ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("[flows]\npoll_interval = nan\n", "flows.poll_interval: Expected `float` > 0.0"),
        ("[flows]\npoll_interval = inf\n", "flows.poll_interval: Expected `float` <= 86400.0"),
        ("[engine]\nstop_timeout = -1\n", "engine.stop_timeout: Expected `float` > 0.0"),
        ("[store]\ncontext_interval_s = nan\n", "store.context_interval_s: Expected `float` > 0.0"),
        ("[store]\ncommit_interval_ms = 0\n", "store.commit_interval_ms: Expected `float` > 0.0"),
        ("[api]\nmax_body_bytes = -1\n", "api.max_body_bytes: Expected `int` >= 1"),
        ("[api]\nmax_body_bytes = 99999999999999999999\n", "api.max_body_bytes: Expected `int` <="),
        ('[api]\nmax_body_bytes = "10"\n', "api.max_body_bytes: Expected `int`, got `str`"),
        ('[device]\nid = ""\n', "device.id: Expected `str` of length >= 1"),
        ('[device]\nid = "plant/1"\n', "device.id: 'plant/1' is not a usable device id"),
        ('[device]\ndata_dir = ""\n', "device.data_dir: Expected `str` of length >= 1"),
        ('[device]\ndata_dir = "a\\u0000b"\n', "device.data_dir: a path cannot contain a NUL"),
        ('[flows]\ndir = ""\n', "flows.dir: Expected `str` of length >= 1"),
        ('[api]\ntoken = ""\n', "api.token: is empty: an empty token is not 'no auth'"),
        ('[api]\ntoken = "tøken"\n', "api.token: must be printable ASCII"),
        (
            '[api]\nlisten = "127.0.0.1:７７００"\n',
            "api.listen: '127.0.0.1:７７００' is not host:port",
        ),
        ('[api]\nlisten = "127.0.0.1:' + "9" * 5000 + '"\n', "api.listen: '127.0.0.1:99999"),
        ('[api]\nlisten = "a\\u0000b:1"\n', "is not host:port"),
        ("[mqtt]\nplc = 3\n", "mqtt.plc: expected a table [mqtt.plc], got a number"),
        ('[mqtt.plc]\nport = "x"\n', "mqtt.plc.port: Expected `int`, got `str`"),
        ("a = " + "[" * 3000 + "]" * 3000 + "\n", "invalid TOML: nested too deeply"),
        ("[api]\nmax_body_bytes = " + "9" * 5000 + "\n", "invalid TOML: Exceeds the limit"),
    ],
)
def test_bad_values_are_one_line_naming_the_key(tmp_path: Path, text: str, needle: str) -> None:
    cfg = write(tmp_path / "m.toml", text)
    line = assert_one_line_error(mechaway("--config", str(cfg), "status"), str(cfg), needle)
    assert len(line) < 300


def test_a_config_that_is_not_utf8(tmp_path: Path) -> None:
    cfg = tmp_path / "m.toml"
    cfg.write_bytes(b'[device]\nid = "ok"\n[api]\nlisten = "\xff\xfe"\n')
    assert_one_line_error(
        mechaway("--config", str(cfg), "status"), f"{cfg}: invalid TOML: line 4: not UTF-8"
    )


def test_a_config_path_that_is_a_directory(tmp_path: Path) -> None:
    assert_one_line_error(
        mechaway("--config", str(tmp_path), "status"), f"{tmp_path}: cannot read config"
    )


def test_a_config_that_is_huge_is_refused_unread(tmp_path: Path) -> None:
    cfg = tmp_path / "m.toml"
    cfg.write_bytes(b"# " + b"x" * MAX_CONFIG_BYTES + b"\n")
    assert_one_line_error(mechaway("--config", str(cfg), "status"), "larger than 1024 KiB")
    # a device in place of the file is not read to the end of memory
    assert_one_line_error(mechaway("--config", "/dev/zero", "status"), "/dev/zero")


def test_an_unreadable_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = write(tmp_path / "m.toml", "[api]\n")
    real_open = Path.open

    def denied(self: Path, *args: Any, **kwargs: Any) -> Any:
        # chmod 000 does not stop root (CI runs as root): deny the open itself
        if self == cfg:
            raise PermissionError(13, "Permission denied")
        return real_open(self, *args, **kwargs)

    monkeypatch.setattr(Path, "open", denied)
    with pytest.raises(ConfigError) as exc:
        load_settings(cfg, env={})
    assert str(exc.value) == f"{cfg}: cannot read config: Permission denied"


@pytest.mark.parametrize(
    ("name", "value", "needle"),
    [
        ("MECHAWAY_FLOWS_POLL_INTERVAL", "soon", "Expected `float`, got `str`"),
        ("MECHAWAY_FLOWS_POLL_INTERVAL", "nan", "Expected `float` > 0.0"),
        ("MECHAWAY_API_MAX_BODY_BYTES", "", "Expected `int`, got `str`"),
        ("MECHAWAY_API_ENABLED", "yes", "Expected `bool`, got `str`"),
        ("MECHAWAY_API_TOKEN", "", "is empty: an empty token is not 'no auth'"),
        ("MECHAWAY_API_LISTEN", "0.0.0.0:7700", "refusing plain HTTP on 0.0.0.0"),
        ("MECHAWAY_DEVICE_DATA_DIR", "", "Expected `str` of length >= 1"),
        ("MECHAWAY_LOG_LEVEL", "INFO", "Invalid enum value 'INFO'"),
    ],
)
def test_bad_environment_values_name_the_variable(name: str, value: str, needle: str) -> None:
    key = name.removeprefix("MECHAWAY_").lower().replace("_", ".", 1)
    proc = mechaway("status", env=clean_env(**{name: value}))
    assert_one_line_error(proc, f"mechaway: environment: {name} ({key}): {needle}")


def test_an_environment_override_of_a_section_the_file_breaks(tmp_path: Path) -> None:
    # used to be a TypeError traceback: the file's ``api = 5`` took the env value
    cfg = write(tmp_path / "m.toml", "api = 5\n")
    proc = mechaway("--config", str(cfg), "status", env=clean_env(MECHAWAY_API_TOKEN="x"))
    assert_one_line_error(proc, f"{cfg}: api: Expected `object`, got `int`")


def test_environment_values_convert_from_text() -> None:
    s = load_settings(
        None,
        env={
            "MECHAWAY_FLOWS_POLL_INTERVAL": "0.25",
            "MECHAWAY_API_MAX_BODY_BYTES": "2048",
            "MECHAWAY_API_ENABLED": "false",
            "MECHAWAY_DEVICE_ID": "pi-7",
        },
    )
    assert (s.flows.poll_interval, s.api.max_body_bytes, s.api.enabled) == (0.25, 2048, False)
    assert s.device.id == "pi-7"


def test_the_example_config_and_ipv6_listen_still_load(tmp_path: Path) -> None:
    root = Path(__file__).resolve().parents[2]
    load_settings(root / "configs" / "mechaway.toml", env={})
    s = load_text(tmp_path, '[api]\nlisten = "[::1]:7700"\n[flows]\npoll_interval = 1\n')
    assert (s.api.listen, s.flows.poll_interval) == ("[::1]:7700", 1.0)
    s = load_text(tmp_path, '[api]\nlisten = "localhost:7700"\n')
    assert s.api.listen == "localhost:7700"


# -- the command line -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (("--listen", "1.2.3.4:x"), "--listen: '1.2.3.4:x' is not host:port"),
        (("--flows", ""), "--flows: must not be empty"),
        (("--data-dir", ""), "--data-dir: must not be empty"),
        (("--flows", "/etc/hostname"), "--flows: /etc/hostname is not a directory"),
    ],
)
def test_start_flags_are_named(tmp_path: Path, args: tuple[str, ...], needle: str) -> None:
    proc = mechaway("start", "--data-dir", str(tmp_path / "d"), *args)
    assert_one_line_error(proc, needle)


@pytest.mark.parametrize(
    ("url", "needle"),
    [
        ("notaurl", "--url: 'notaurl' needs a scheme: http://notaurl"),
        ("127.0.0.1:7701", "--url: '127.0.0.1:7701' needs a scheme: http://127.0.0.1:7701"),
        ("http://[::1", "--url: 'http://[::1' is not an http:// URL"),
    ],
)
def test_a_malformed_url_is_one_line(url: str, needle: str) -> None:
    assert_one_line_error(mechaway("--url", url, "status"), needle)


def test_a_token_that_cannot_travel_in_a_header_is_one_line() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    assert_one_line_error(
        mechaway("--url", url, "--token", "tøk€n", "status"), "--token: must be printable ASCII"
    )


def test_a_flow_id_with_blanks_is_quoted_into_the_url() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    assert_one_line_error(mechaway("--url", url, "flows", "show", "a b"), "daemon not reachable")


@pytest.fixture
def not_a_daemon() -> Iterator[tuple[str, str]]:
    """An HTTP server answering HTML, and a TCP server answering something else than HTTP."""

    class Html(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.end_headers()
            self.wfile.write(b"<html>hello</html>")

        def log_message(self, *args: Any) -> None:
            pass

    httpd = http.server.HTTPServer(("127.0.0.1", 0), Html)
    raw = socket.socket()
    raw.bind(("127.0.0.1", 0))
    raw.listen(8)

    def banner() -> None:
        while True:
            try:
                conn, _ = raw.accept()
            except OSError:
                return
            with conn:
                conn.recv(4096)
                conn.sendall(b"SSH-2.0-OpenSSH_9.2\r\nProtocol mismatch.\r\n")

    threads = [
        threading.Thread(target=httpd.serve_forever, daemon=True),
        threading.Thread(target=banner, daemon=True),
    ]
    for t in threads:
        t.start()
    try:
        yield (
            f"http://127.0.0.1:{httpd.server_address[1]}",
            f"http://127.0.0.1:{raw.getsockname()[1]}",
        )
    finally:
        httpd.shutdown()
        httpd.server_close()
        raw.close()


def test_a_url_that_is_not_a_mechaway_daemon_is_one_line(not_a_daemon: tuple[str, str]) -> None:
    html, ssh = not_a_daemon
    assert_one_line_error(mechaway("--url", html, "status"), "is not a mechaway daemon", "JSON")
    assert_one_line_error(mechaway("--url", ssh, "status"), f"{ssh} is not a mechaway daemon")
