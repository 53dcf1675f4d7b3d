"""The HTTP client driver: one aiohttp session (a connection pool) per ``[http.NAME]``.

Why a driver and not a session per node: the pool (keep-alive connections, TLS settings, a
CA file, the limits on open sockets) is configuration of the machine, not of a flow; the
nodes that name one connection share its sockets; and its counters appear with every
other connection in ``GET /api/v1/status`` and ``/metrics``. ``default`` exists without
a section. There is no link to keep up, so no ``Supervisor``: the state is ``connected``
while the pool is open (``closed`` after), and each request reports its own failure.

aiohttp is imported when the first connection starts (a daemon without HTTP client flows
never loads it here). Requests are retried on connection errors, timeouts and the
statuses of ``Retry.on_status`` with jittered exponential backoff (``Retry-After`` is
honoured up to the backoff cap); a response body over ``max_bytes`` is an error, read
no further than that.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any

import msgspec

from mechaway.drivers.base import Driver, DriverEnv, DriverSettings, register_driver
from mechaway.errors import ConfigError, MechawayError, NotConnected

__all__ = ["COUNTERS", "HttpDriver", "HttpResponse", "HttpSettings", "RequestFailed", "Retry"]

#: counters of every HTTP connection (its status ``counters``)
COUNTERS = ("requests", "responses", "retries", "timeouts", "connect_errors", "failures",
            "too_large")  # fmt: skip
#: bytes read per chunk of a response body
CHUNK = 65536


class HttpSettings(DriverSettings):
    """``[http.NAME]``: an HTTP client pool (``default`` exists without a section)."""

    limit: Annotated[
        int,
        msgspec.Meta(ge=1, le=1000, description="open connections at most, all hosts together"),
    ] = 32
    limit_per_host: Annotated[
        int,
        msgspec.Meta(ge=0, le=1000, description="open connections to one host at most (0: no "
                     "limit but ``limit``)"),
    ] = 8
    verify_tls: Annotated[
        bool,
        msgspec.Meta(description="check servers' TLS certificates (turn off only for a test "
                     "rig: anyone on the path can then read and change the traffic)"),
    ] = True
    ca_file: Annotated[
        str | None,
        msgspec.Meta(description="PEM file of the certificate authorities to trust (a "
                     "private CA), instead of the system's"),
    ] = None
    user_agent: Annotated[
        str, msgspec.Meta(max_length=200, description="the User-Agent header of requests")
    ] = "mechaway"
    keepalive_s: Annotated[
        float,
        msgspec.Meta(ge=0, le=3600, description="seconds an idle connection is kept for reuse"),
    ] = 15.0


@dataclass(frozen=True, slots=True)
class Retry:
    """How a request is retried: ``retries`` more attempts after the first, waiting
    ``backoff_s * 2**n`` (jittered, at most ``backoff_max_s``) between them."""

    retries: int = 2
    backoff_s: float = 0.5
    backoff_max_s: float = 10.0
    on_status: frozenset[int] = frozenset({429, 502, 503, 504})

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        if retry_after is not None:
            return min(max(retry_after, 0.0), self.backoff_max_s)
        top = min(self.backoff_max_s, self.backoff_s * 2 ** min(attempt, 30))
        return random.uniform(top / 2, top)


@dataclass(frozen=True, slots=True)
class HttpResponse:
    """A response read whole: status, headers (lower-case names, repeated ones joined with
    ``, ``), body, the URL answered and how many attempts it took."""

    status: int
    headers: dict[str, str]
    body: bytes
    url: str
    attempts: int
    content_type: str = ""
    elapsed_s: float = 0.0


class RequestFailed(MechawayError):
    """A request that did not get a response (after its retries): ``kind`` is
    ``timeout``, ``connect``, ``too_large``, ``bad_url`` (nothing a retry can
    cure: an invalid URL or header) or ``protocol``."""

    def __init__(self, kind: str, message: str, attempts: int = 1) -> None:
        super().__init__(message)
        self.kind = kind
        self.attempts = attempts


def _retry_after(value: str | None) -> float | None:
    """``Retry-After: 3`` -> 3.0 (an HTTP date is not honoured: backoff applies)."""
    if value is None:
        return None
    try:
        return float(value.strip())
    except ValueError:
        return None


@register_driver("http")
class HttpDriver(Driver[HttpSettings]):
    """One pooled aiohttp client session; see the module docstring."""

    Settings = HttpSettings
    implicit_default = True

    def __init__(self, name: str, settings: HttpSettings, env: DriverEnv | None = None) -> None:
        super().__init__(name, settings, env)
        self.health.counters.update(dict.fromkeys(COUNTERS, 0))
        self._session: Any = None
        self._aiohttp: Any = None
        self.in_flight = 0

    async def start(self) -> None:
        if self._session is not None:
            return
        try:
            import aiohttp
        except ImportError as err:  # pragma: no cover - aiohttp is a core dependency
            raise ConfigError(f"{self.label}: aiohttp is not installed") from err
        import ssl

        s = self.settings
        ctx: ssl.SSLContext | bool
        if not s.verify_tls:
            ctx = False
            self.log.warning("%s: TLS certificates are NOT checked (verify_tls = false)",
                             self.label)  # fmt: skip
        else:
            try:
                ctx = ssl.create_default_context(cafile=s.ca_file)
            except (OSError, ssl.SSLError) as err:
                raise ConfigError(f"{self.label}.ca_file: cannot load {s.ca_file}: {err}") from err
        connector = aiohttp.TCPConnector(
            limit=s.limit, limit_per_host=s.limit_per_host, ssl=ctx,
            keepalive_timeout=s.keepalive_s if s.keepalive_s > 0 else None,
            force_close=s.keepalive_s == 0,
        )  # fmt: skip
        self._aiohttp = aiohttp
        self._session = aiohttp.ClientSession(
            connector=connector, headers={"User-Agent": s.user_agent}, auto_decompress=True,
            raise_for_status=False,
        )  # fmt: skip
        self.health.set("connected")

    async def close(self, timeout: float = 5.0) -> None:
        session, self._session = self._session, None
        if session is not None:
            try:
                await asyncio.wait_for(session.close(), timeout)
            except TimeoutError:
                self.log.warning("%s: closing the pool timed out", self.label)
        self.health.set("closed")

    def extra_status(self) -> dict[str, Any]:
        return {"in_flight": self.in_flight}

    # -- requests -------------------------------------------------------------------------
    async def request(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        data: bytes | None = None,
        timeout_s: float = 10.0,
        connect_timeout_s: float = 5.0,
        retry: Retry | None = None,
        max_bytes: int = 1 << 20,
    ) -> HttpResponse:
        """One request with its retries; ``RequestFailed`` when no response came back
        (a response of any status is returned, not raised)."""
        session, aiohttp = self._session, self._aiohttp
        if session is None:
            raise NotConnected(f"{self.label}: the pool is closed")
        retry = retry or Retry()
        timeout = aiohttp.ClientTimeout(total=timeout_s, connect=connect_timeout_s)
        counters = self.health.counters
        attempt = 0
        began = time.monotonic()
        self.in_flight += 1
        try:
            while True:
                attempt += 1
                counters["requests"] += 1
                try:
                    resp = await self._once(session, method, url, headers, data, timeout,
                                            max_bytes, attempt)  # fmt: skip
                except RequestFailed as err:
                    err.attempts = attempt
                    if err.kind in ("too_large", "bad_url") or attempt > retry.retries:
                        counters["failures"] += 1
                        raise
                    counters["retries"] += 1
                    await asyncio.sleep(retry.delay(attempt - 1))
                    continue
                counters["responses"] += 1
                if resp.status in retry.on_status and attempt <= retry.retries:
                    counters["retries"] += 1
                    wait = retry.delay(attempt - 1, _retry_after(resp.headers.get("retry-after")))
                    await asyncio.sleep(wait)
                    continue
                return HttpResponse(
                    resp.status, resp.headers, resp.body, resp.url, attempt, resp.content_type,
                    time.monotonic() - began,
                )  # fmt: skip
        finally:
            self.in_flight -= 1

    async def _once(  # noqa: PLR0917 (private, one call site)
        self, session: Any, method: str, url: str, headers: Mapping[str, str] | None,
        data: bytes | None, timeout: Any, max_bytes: int, attempt: int,
    ) -> HttpResponse:  # fmt: skip
        aiohttp = self._aiohttp
        counters = self.health.counters
        try:
            async with session.request(method, url, headers=headers, data=data,
                                       timeout=timeout, allow_redirects=True) as r:  # fmt: skip
                length = r.content_length
                if length is not None and length > max_bytes:
                    counters["too_large"] += 1
                    raise RequestFailed("too_large", f"response of {length} bytes is over "
                                        f"max_response_bytes ({max_bytes})")  # fmt: skip
                buf = bytearray()
                async for chunk in r.content.iter_chunked(CHUNK):
                    buf += chunk
                    if len(buf) > max_bytes:
                        counters["too_large"] += 1
                        raise RequestFailed("too_large", f"response body over "
                                            f"max_response_bytes ({max_bytes})")  # fmt: skip
                hdrs: dict[str, str] = {}
                for k, v in r.headers.items():
                    key = k.lower()
                    hdrs[key] = f"{hdrs[key]}, {v}" if key in hdrs else v
                return HttpResponse(r.status, hdrs, bytes(buf), str(r.url), attempt,
                                    r.content_type or "")  # fmt: skip
        except RequestFailed:
            raise
        except TimeoutError:
            counters["timeouts"] += 1
            raise RequestFailed("timeout", f"{method} {url}: timed out") from None
        except aiohttp.InvalidURL as err:
            raise RequestFailed("bad_url", f"{method} {url}: invalid URL: {err}") from None
        except ValueError as err:  # a header aiohttp refuses (a newline in a value...)
            raise RequestFailed("bad_url", f"{method} {url}: cannot send: {err}") from None
        except aiohttp.ClientConnectionError as err:
            counters["connect_errors"] += 1
            why = str(err) or type(err).__name__
            raise RequestFailed("connect", f"{method} {url}: {why}") from None
        except aiohttp.ClientError as err:
            why = str(err) or type(err).__name__
            raise RequestFailed("protocol", f"{method} {url}: {why}") from None
