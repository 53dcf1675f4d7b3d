"""A small HTTP/1.1 client on asyncio streams, for the edge's sync with the hub.

The edge does not use aiohttp's client: importing aiohttp costs a device ~13 MB of RSS,
and the sync needs little: one keep-alive connection, bodies with Content-Length (or
chunked answers), TLS verified against the system CAs or a given CA file, a timeout on
every exchange, bounded answers. Any failure closes the connection and raises
``HubUnreachable``; the next request opens a new one.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import urllib.parse
from dataclasses import dataclass

from mechaway.errors import ConfigError, MechawayError

MAX_HEADER_BYTES = 64 * 1024
MAX_RESPONSE_BYTES = 32 * 1024 * 1024


class HubUnreachable(MechawayError):
    """The hub could not be reached or did not answer HTTP in time."""


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    body: bytes
    content_type: str


class HttpClient:
    """One connection to one base URL; requests on it take turns."""

    def __init__(
        self, base_url: str, *, token: str | None = None, ca_file: str | None = None
    ) -> None:
        u = urllib.parse.urlsplit(base_url)
        if u.scheme not in ("http", "https") or not u.hostname:
            raise ConfigError(f"hub.url: {base_url!r} is not an http:// or https:// URL")
        self.host = u.hostname
        self.port = u.port or (443 if u.scheme == "https" else 80)
        self.prefix = u.path.rstrip("/")
        self.host_header = u.netloc.rpartition("@")[2]
        self.token = token
        self.ssl: ssl.SSLContext | None = None
        if u.scheme == "https":
            try:
                self.ssl = ssl.create_default_context(cafile=ca_file)
            except (OSError, ssl.SSLError) as err:
                raise ConfigError(f"hub.ca_file: cannot load {ca_file}: {err}") from err
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._lock = asyncio.Lock()
        self.requests = 0
        self.failures = 0
        self.bytes_sent = 0

    async def close(self) -> None:
        w, self._writer, self._reader = self._writer, None, None
        if w is not None:
            w.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(w.wait_closed(), 1.0)

    async def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        *,
        content_type: str = "application/json",
        timeout: float = 30.0,
    ) -> Response:
        async with self._lock:
            self.requests += 1
            try:
                async with asyncio.timeout(timeout):
                    return await self._exchange(method, path, body, content_type)
            except (OSError, EOFError, ValueError, ssl.SSLError, TimeoutError) as err:
                self.failures += 1
                await self.close()
                what = "timed out" if isinstance(err, TimeoutError) else f"{err}"
                raise HubUnreachable(f"{method} {path}: {what or type(err).__name__}") from None
            except asyncio.CancelledError:
                await self.close()  # a half-done exchange leaves the stream unusable
                raise

    async def _exchange(
        self, method: str, path: str, body: bytes | None, content_type: str
    ) -> Response:
        if self._writer is None or self._writer.is_closing():
            self._reader, self._writer = await asyncio.open_connection(
                self.host,
                self.port,
                ssl=self.ssl,
                server_hostname=self.host if self.ssl else None,
                limit=MAX_HEADER_BYTES,
            )
        reader, writer = self._reader, self._writer
        assert reader is not None
        head = [f"{method} {self.prefix}{path} HTTP/1.1", f"Host: {self.host_header}"]
        if self.token:
            head.append(f"Authorization: Bearer {self.token}")
        if body is not None:
            head.append(f"Content-Type: {content_type}")
        head.append(f"Content-Length: {len(body) if body is not None else 0}")
        data = ("\r\n".join(head) + "\r\n\r\n").encode()
        writer.write(data + body if body is not None and len(body) < 65536 else data)
        if body is not None and len(body) >= 65536:
            writer.write(body)
        await writer.drain()
        self.bytes_sent += len(data) + (len(body) if body else 0)
        status_line = await reader.readuntil(b"\r\n")
        parts = status_line.split(None, 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
            raise ValueError(f"not an HTTP answer: {status_line[:60]!r}")
        status = int(parts[1])
        headers: dict[str, str] = {}
        size = 0
        while True:
            line = await reader.readuntil(b"\r\n")
            size += len(line)
            if size > MAX_HEADER_BYTES:
                raise ValueError("answer headers too large")
            if line == b"\r\n":
                break
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        if method == "HEAD" or status in (204, 304) or 100 <= status < 200:
            payload = b""
        elif headers.get("transfer-encoding", "").lower() == "chunked":
            payload = await self._chunked(reader)
        elif "content-length" in headers:
            n = int(headers["content-length"])
            if not 0 <= n <= MAX_RESPONSE_BYTES:
                raise ValueError(f"answer of {n} bytes is larger than allowed")
            payload = await reader.readexactly(n)
        else:
            payload = await reader.read(MAX_RESPONSE_BYTES)
            headers["connection"] = "close"
        if headers.get("connection", "").lower() == "close":
            await self.close()
        return Response(status, payload, headers.get("content-type", "").split(";")[0])

    @staticmethod
    async def _chunked(reader: asyncio.StreamReader) -> bytes:
        out = bytearray()
        while True:
            line = await reader.readuntil(b"\r\n")
            n = int(line.split(b";")[0].strip() or b"0", 16)
            if n == 0:
                await reader.readuntil(b"\r\n")
                return bytes(out)
            if len(out) + n > MAX_RESPONSE_BYTES:
                raise ValueError("answer larger than allowed")
            out += await reader.readexactly(n)
            await reader.readexactly(2)
