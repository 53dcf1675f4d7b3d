"""The admin API against bytes that are not HTTP, on a real daemon: answered, not logged
as a flood of tracebacks, and the daemon keeps serving."""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterator

import pytest

from mechaway.daemon import BadRequestLog
from mechaway.testing.daemon import DaemonProc

MALFORMED = [
    b"GET /api/v1/health HTTP/1.1\r\nHost: x\r\nX-Long: " + b"a" * 9000 + b"\r\n\r\n",
    b"GET /api/v1/\xff HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /api/v1/health HTTP/1.1\r\nHost: x\r\nBad\x01Header: 1\r\n\r\n",
    b"GET /api/v1/health HTTP/9.9\r\n\r\n",
    b"FOO /api/v1/health HTTP/1.1\r\n\r\n",  # the first request: aiohttp logs it at DEBUG
    b"GET /api/v1/health HTTP/1.1\r\nHost: x\r\n\r\nFOO / HTTP/1.1\r\n\r\n",
]


def raw_request(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(data)  # and keep it open: aiohttp answers, then closes
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProc]:
    d = DaemonProc(tmp_path_factory.mktemp("wire"))
    d.start()
    yield d
    d.terminate()


def test_malformed_http_is_a_400_and_one_log_line_per_burst(daemon: DaemonProc) -> None:
    for _ in range(10):
        for data in MALFORMED:
            reply = raw_request(daemon.port, data)
            assert b"HTTP/1.0 400 Bad Request\r\n" in reply, reply[:80]
    assert daemon.health() == 200
    log = daemon.logfile.read_text(errors="replace")
    lines = [line for line in log.splitlines() if "Error handling request" in line]
    assert len(lines) == 1, lines
    assert lines[0].split()[2] == "WARNING", lines[0]  # asctime takes two fields
    assert "Traceback" not in log


def test_the_filter_counts_what_it_kept_out() -> None:
    f = BadRequestLog(window_s=3600)
    logger = logging.getLogger("test.badrequest")

    def record() -> logging.LogRecord:
        try:
            raise ValueError("Invalid method encountered:\n\n  b'FOO'")
        except ValueError:
            import sys

            return logger.makeRecord(
                logger.name, logging.ERROR, __file__, 1, "Error handling request from %s",
                ("127.0.0.1",), sys.exc_info(),
            )  # fmt: skip

    first = record()
    assert f.filter(first)
    assert first.getMessage() == (
        "Error handling request from 127.0.0.1: Invalid method encountered: b'FOO'"
    )
    assert first.levelname == "WARNING" and first.exc_info is None
    assert not f.filter(record()) and not f.filter(record())
    f._until = 0.0  # the burst window is over
    later = record()
    assert f.filter(later)
    assert later.getMessage().endswith("(2 similar in the last burst not logged)")
