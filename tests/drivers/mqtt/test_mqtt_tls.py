"""MQTT over TLS against a real mosquitto TLS listener: server verification, client certs."""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mechaway.drivers.mqtt import Incoming, MqttConnection, MqttSettings
from mechaway.errors import ConfigError
from mechaway.testing.broker import MosquittoBroker, free_port


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA, a server cert for 127.0.0.1 and a client cert, made with openssl."""
    d = tmp_path_factory.mktemp("pki")
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=test-ca",
            "-keyout", "ca.key", "-out", "ca.crt", cwd=d)  # fmt: skip
    (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    for name in ("server", "client"):
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}",
                "-keyout", f"{name}.key", "-out", f"{name}.csr", cwd=d)  # fmt: skip
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
                "-CAcreateserial", "-days", "2", "-extfile", "san.ext",
                "-out", f"{name}.crt", cwd=d)  # fmt: skip
    (d / "other-ca.key").touch()
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=other",
            "-keyout", "other-ca.key", "-out", "other-ca.crt", cwd=d)  # fmt: skip
    return d


@pytest.fixture
def tls_broker(pki: Path) -> Iterator[MosquittoBroker]:
    """mosquitto with a plain listener (the helper's) and a TLS one requiring client certs."""
    port = free_port()
    conf = (
        f"listener {port} 127.0.0.1\n"
        f"cafile {pki / 'ca.crt'}\ncertfile {pki / 'server.crt'}\nkeyfile {pki / 'server.key'}\n"
        "require_certificate true\nallow_anonymous true\n"
    )
    with MosquittoBroker(extra_config=conf) as b:
        b.tls_port = port  # type: ignore[attr-defined]
        yield b


async def until_true(cond: object, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


@pytest.mark.asyncio
async def test_tls_with_client_certificate_round_trip(
    tls_broker: MosquittoBroker, pki: Path
) -> None:
    settings = MqttSettings(
        port=tls_broker.tls_port,  # type: ignore[attr-defined]
        tls=True, ca_file=str(pki / "ca.crt"),
        cert_file=str(pki / "client.crt"), key_file=str(pki / "client.key"),
        reconnect_min=0.05, reconnect_max=0.5,
    )  # fmt: skip
    got: list[Incoming] = []
    async with MqttConnection("tls", settings, device_id="tls") as conn:
        await conn.wait_connected(5)
        conn.subscribe("tls/t", 1, got.append)
        await conn.wait_subscribed()
        conn.publish("tls/t", b"secret", qos=1)
        await until_true(lambda: len(got) == 1)
        assert got[0].payload == b"secret"
        assert conn.status()["connected"]


@pytest.mark.asyncio
async def test_tls_refuses_a_server_signed_by_another_ca(
    tls_broker: MosquittoBroker, pki: Path
) -> None:
    settings = MqttSettings(
        port=tls_broker.tls_port,  # type: ignore[attr-defined]
        tls=True, ca_file=str(pki / "other-ca.crt"),
        cert_file=str(pki / "client.crt"), key_file=str(pki / "client.key"),
        reconnect_min=0.05, reconnect_max=0.2,
    )  # fmt: skip
    async with MqttConnection("tls", settings, device_id="tls") as conn:
        await until_true(lambda: conn.status()["counters"]["connect_failures"] >= 2)
        st = conn.status()
        assert not st["connected"]
        assert "certificate" in (st["last_error"] or "").lower()


def test_tls_with_a_missing_ca_file_is_a_config_error(tmp_path: Path) -> None:
    settings = MqttSettings(tls=True, ca_file=str(tmp_path / "nope.crt"))
    conn = MqttConnection("tls", settings, device_id="tls")
    with pytest.raises(ConfigError, match=r"mqtt\.tls\.ca_file: .*nope\.crt"):
        asyncio.run(conn.start())
