"""``mechaway.client``: typed clients of a running daemon's admin API (``/api/v1``).

``Client`` is blocking and stdlib-only (urllib: what the ``mechaway`` command uses);
``AsyncClient`` is the same API on aiohttp, for asyncio programs::

    from mechaway.client import Client, Conflict

    api = Client.discover()                  # as the CLI: config, api.listen, token file
    for f in api.flows():
        print(f.id, f.rev, "running" if f.running else "stopped")
    current = api.flow("greenhouse")
    try:
        api.deploy(new_doc, if_rev=current.rev)   # refused if someone deployed meanwhile
    except Conflict as err:
        print("now at rev", err.current_rev)

    async with AsyncClient("http://127.0.0.1:7700", token) as api:
        status = await api.status()

Errors are typed: every failure is an ``ApiError`` (``status`` is the HTTP status, 0 when
no answer came): ``Unreachable``, ``NotADaemon``, ``Unauthorized`` (401), ``Forbidden``
(403: a read-only token), ``NotFound`` (404), ``Conflict`` (409, with ``current_rev``),
``ValidationFailed`` (400, with the located ``issues``). The API has no key-value
route: node KV data is reached through flows (``KVGetNode``), not this client.
"""

from __future__ import annotations

import http.client
import json
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from mechaway.errors import ConfigError, Issue, MechawayError

__all__ = [
    "ApiError",
    "AsyncClient",
    "BadURL",
    "Client",
    "Conflict",
    "Deployed",
    "FlowDoc",
    "FlowInfo",
    "Forbidden",
    "NotADaemon",
    "NotFound",
    "Revision",
    "Unauthorized",
    "Unreachable",
    "Validation",
    "ValidationFailed",
    "discover",
]

PREFIX = "/api/v1"
DEFAULT_TIMEOUT = 30.0


# -- errors ------------------------------------------------------------------------------------
class ApiError(MechawayError):
    """A call that failed: ``status`` is the HTTP status (0: no HTTP answer), ``body`` the
    decoded error body (``{}`` when there was none)."""

    def __init__(self, message: str, status: int = 0, body: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.body = body or {}


class BadURL(ApiError):
    """The URL is not one urllib can use (``notaurl``, ``http://[::1``)."""


class Unreachable(ApiError):
    """No answer: nothing listens there, the host is unknown, or the call timed out."""


class NotADaemon(ApiError):
    """Something answered that is not a mechaway daemon (not HTTP, or not JSON)."""


class Unauthorized(ApiError):
    """401: the token is missing or wrong."""


class Forbidden(ApiError):
    """403: a read-only token asked for a change, or a request from another origin."""


class NotFound(ApiError):
    """404: no such flow, series, node type or route."""


class Conflict(ApiError):
    """409: the deploy named a revision (``if_rev``) that is no longer the active one
    (``current_rev``: the active one, None if none), or the flow belongs to a file."""

    def __init__(self, message: str, status: int = 409, body: dict[str, Any] | None = None,
                 current_rev: int | None = None) -> None:  # fmt: skip
        super().__init__(message, status, body)
        self.current_rev = current_rev


class ValidationFailed(ApiError):
    """400: the document (or the request) is invalid; ``issues`` say where and why."""

    def __init__(self, message: str, issues: list[Issue], status: int = 400,
                 body: dict[str, Any] | None = None) -> None:  # fmt: skip
        super().__init__(message, status, body)
        self.issues = issues

    def __str__(self) -> str:
        return "\n".join(str(i) for i in self.issues) or self.message


_BY_STATUS: dict[int, type[ApiError]] = {401: Unauthorized, 403: Forbidden, 404: NotFound}


def _http_error(status: int, body: Any) -> ApiError:
    """The typed error of an HTTP error answer."""
    body = body if isinstance(body, dict) else {}
    message = str(body.get("error") or f"HTTP {status}")
    issues = body.get("issues")
    if status == 400 and isinstance(issues, list):
        found = [Issue(str(i.get("where", "")), str(i.get("message", "")))
                 for i in issues if isinstance(i, dict)]  # fmt: skip
        return ValidationFailed(message, found, status, body)
    if status == 409:
        rev = body.get("current_rev")
        return Conflict(message, status, body, rev if isinstance(rev, int) else None)
    return _BY_STATUS.get(status, ApiError)(message, status, body)


# -- results -----------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class FlowInfo:
    """One flow of ``flows()``."""

    id: str
    name: str
    rev: int
    source: str
    running: bool
    disabled: bool


@dataclass(frozen=True, slots=True)
class FlowDoc:
    """A flow's active revision: its document and where it came from (``file`` for a
    flow that belongs to a file in the flows directory)."""

    rev: int
    source: str
    flow: dict[str, Any]
    file: str | None = None
    #: the answer as the daemon sent it
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)


@dataclass(frozen=True, slots=True)
class Deployed:
    """What a deploy (or rollback) did: the revision now active and the node diff."""

    id: str
    rev: int
    new_revision: bool
    added: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Revision:
    """One stored revision of a flow (``history()``)."""

    rev: int
    source: str
    created_at: float
    active: bool


@dataclass(frozen=True, slots=True)
class Validation:
    """``validate()``: ``ok``, the located ``errors`` (each ``where``, ``message`` and,
    where known, ``node``, ``param``, ``line``, ``edge``) and ``warnings``."""

    ok: bool
    errors: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[dict[str, Any]] = field(default_factory=list)


def _flow_info(d: dict[str, Any]) -> FlowInfo:
    return FlowInfo(str(d["id"]), str(d.get("name", "")), int(d["rev"]), str(d["source"]),
                    bool(d["running"]), bool(d["disabled"]))  # fmt: skip


def _flow_doc(d: dict[str, Any]) -> FlowDoc:
    return FlowDoc(int(d["rev"]), str(d["source"]), dict(d["flow"]), d.get("file"), d)


def _deployed(d: dict[str, Any]) -> Deployed:
    return Deployed(str(d["id"]), int(d["rev"]), bool(d["new_revision"]),
                    list(d.get("added", [])), list(d.get("changed", [])),
                    list(d.get("removed", [])), list(d.get("kept", [])))  # fmt: skip


def _revision(d: dict[str, Any]) -> Revision:
    return Revision(int(d["rev"]), str(d["source"]), float(d["created_at"]), bool(d["active"]))


def _validation(d: dict[str, Any]) -> Validation:
    return Validation(bool(d.get("ok")), list(d.get("errors", [])), list(d.get("warnings", [])))


def _q(segment: str) -> str:
    """One URL path segment (``a b``, ``a/b``: the daemon answers 404, never another route)."""
    return urllib.parse.quote(segment, safe="")


def _series_query(start: float | str | None, end: float | str | None, agg: str | None,
                  bucket: float | None, limit: int | None) -> str:  # fmt: skip
    q = {k: str(v) for k, v in (("from", start), ("to", end), ("agg", agg), ("bucket", bucket),
                                ("limit", limit)) if v is not None}  # fmt: skip
    return f"?{urllib.parse.urlencode(q)}" if q else ""


def _deploy_args(doc: dict[str, Any], flow_id: str | None) -> str:
    fid = flow_id if flow_id is not None else doc.get("id")
    if not isinstance(fid, str) or not fid:
        raise ValidationFailed("invalid flow", [Issue("id", "missing flow id")])
    return fid


# -- finding the daemon ------------------------------------------------------------------------
def discover(
    config: str | Path | None = None,
    *,
    url: str | None = None,
    token: str | None = None,
    data_dir: str | Path | None = None,
) -> tuple[str, str | None]:
    """The URL and token of this machine's daemon, as the ``mechaway`` command finds them:
    the URL from the config's ``api.listen`` (``--config``, ``$MECHAWAY_CONFIG``, else
    /etc/mechaway/mechaway.toml where it exists), the token from ``api.token``
    (``$MECHAWAY_API_TOKEN``), else the ``api-token`` file the daemon generated in its
    data directory. ``url``/``token`` given win; ``ConfigError`` for a token file that
    exists but cannot be read."""
    if url is not None and token is not None:
        return url, token
    from mechaway.settings import load_settings

    settings = load_settings(config)
    if data_dir:
        import msgspec

        settings = msgspec.structs.replace(
            settings, device=msgspec.structs.replace(settings.device, data_dir=str(data_dir))
        )
    if url is None:
        from mechaway.settings import parse_listen

        host, port = parse_listen(settings.api.listen)
        host = "127.0.0.1" if host in ("0.0.0.0", "::") else host
        scheme = "https" if settings.api.tls_cert else "http"
        url = f"{scheme}://{'[' + host + ']' if ':' in host else host}:{port}"
    if token is None:
        token = settings.api.token or read_token_file(settings.data_dir)
    return url, token


def read_token_file(data_dir: Path) -> str | None:
    """The token the daemon generated into ``data_dir`` (None: there is none); a file we
    may not read is a ``ConfigError`` naming it and what to do, not silence."""
    from mechaway.api.auth import token_path

    path = token_path(data_dir)
    try:
        text = path.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        return None
    except PermissionError:
        raise ConfigError(
            f"cannot read the daemon's token in {path} (permission denied): run as its"
            " user or root (sudo), or pass --token"
        ) from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"cannot read the daemon's token in {path}: {err}") from None
    return text or None


# -- the blocking client -----------------------------------------------------------------------
class Client:
    """A blocking client of one daemon (stdlib only). Each method is one request."""

    def __init__(self, url: str, token: str | None = None, *,
                 timeout: float = DEFAULT_TIMEOUT) -> None:  # fmt: skip
        self.url = url.rstrip("/")
        self.token = token
        self.timeout = timeout

    @classmethod
    def discover(cls, config: str | Path | None = None, *, url: str | None = None,
                 token: str | None = None, data_dir: str | Path | None = None,
                 timeout: float = DEFAULT_TIMEOUT) -> Client:  # fmt: skip
        """A client of this machine's daemon, found as the CLI finds it (``discover``)."""
        found_url, found_token = discover(config, url=url, token=token, data_dir=data_dir)
        return cls(found_url, found_token, timeout=timeout)

    def request(self, method: str, path: str, body: Any = None,
                headers: dict[str, str] | None = None) -> Any:  # fmt: skip
        """``method`` ``/api/v1{path}`` with a JSON ``body``: the decoded answer, or a
        typed ``ApiError``."""
        status, answer = self._send(method, path, body, headers)
        if status >= 400:
            raise _http_error(status, answer)
        return answer

    def _send(self, method: str, path: str, body: Any,
              headers: dict[str, str] | None) -> tuple[int, Any]:  # fmt: skip
        data = json.dumps(body).encode() if body is not None else None
        try:
            req = urllib.request.Request(f"{self.url}{PREFIX}{path}", data=data, method=method)
        except ValueError as err:  # "notaurl", "http://[::1"
            raise BadURL(f"{self.url!r} is not an http:// URL ({err})") from err
        req.add_header("Content-Type", "application/json")
        if self.token:
            req.add_header("Authorization", f"Bearer {self.token}")
        for k, v in (headers or {}).items():
            req.add_header(k, v)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                status, raw = resp.status, resp.read()
        except urllib.error.HTTPError as err:
            status, raw = err.code, err.read()
            try:
                return status, json.loads(raw or b"{}")
            except ValueError:
                return status, {}
        except urllib.error.URLError as err:
            raise Unreachable(
                f"daemon not reachable at {self.url} ({err.reason}); is it running?"
            ) from err
        except (TimeoutError, ConnectionError) as err:
            raise Unreachable(f"daemon at {self.url} did not answer ({err})") from err
        except (http.client.HTTPException, ValueError) as err:  # not HTTP; a bad port
            why = " ".join(str(err).split())  # one line, whatever the peer sent
            raise NotADaemon(f"{self.url} is not a mechaway daemon ({why})") from err
        try:
            return status, json.loads(raw or b"null")
        except ValueError as err:
            raise NotADaemon(
                f"{self.url} is not a mechaway daemon (its answer is not JSON)"
            ) from err

    # -- the API --------------------------------------------------------------------------
    def health(self) -> dict[str, Any]:
        """``{status, version, uptime_s}`` (needs no token)."""
        return dict(self.request("GET", "/health"))

    def flows(self) -> list[FlowInfo]:
        return [_flow_info(d) for d in self.request("GET", "/flows")]

    def flow(self, flow_id: str) -> FlowDoc:
        return _flow_doc(self.request("GET", f"/flows/{_q(flow_id)}"))

    def deploy(self, doc: dict[str, Any], *, flow_id: str | None = None,
               if_rev: int | None = None) -> Deployed:  # fmt: skip
        """Deploy ``doc`` (its ``id``, or ``flow_id``); with ``if_rev``, only if that
        revision is still the active one (else ``Conflict``)."""
        fid = _deploy_args(doc, flow_id)
        headers = {"If-Match": f'"{if_rev}"'} if if_rev is not None else None
        return _deployed(self.request("PUT", f"/flows/{_q(fid)}", doc, headers))

    def delete(self, flow_id: str) -> None:
        self.request("DELETE", f"/flows/{_q(flow_id)}")

    def history(self, flow_id: str) -> list[Revision]:
        return [_revision(d) for d in self.request("GET", f"/flows/{_q(flow_id)}/revisions")]

    def rollback(self, flow_id: str, rev: int) -> Deployed:
        """Deploy revision ``rev`` again, as a new revision."""
        return _deployed(self.request("POST", f"/flows/{_q(flow_id)}/rollback", {"rev": rev}))

    def validate(self, doc: Any) -> Validation:
        """Validate as a deploy would; nothing is deployed (``ok`` False: ``errors``)."""
        status, answer = self._send("POST", "/validate", doc, None)
        if status in (200, 422) and isinstance(answer, dict):
            return _validation(answer)
        raise _http_error(status, answer)

    def status(self) -> dict[str, Any]:
        """The daemon's status: problems, flows and nodes, connections, store."""
        return dict(self.request("GET", "/status"))

    def series(self, name: str, *, start: float | str | None = None,
               end: float | str | None = None, agg: str | None = None,
               bucket: float | None = None,
               limit: int | None = None) -> dict[str, Any]:  # fmt: skip
        """A stored series (``StoreNode``), optionally aggregated per ``bucket`` seconds."""
        path = f"/series/{_q(name)}{_series_query(start, end, agg, bucket, limit)}"
        return dict(self.request("GET", path))

    def schema(self, node_type: str | None = None) -> dict[str, Any]:
        """The JSON Schema of one node type's params, or of every type by name."""
        return dict(self.request("GET", f"/schema/{_q(node_type)}" if node_type else "/schema"))

    def plugins(self) -> list[dict[str, Any]]:
        return list(self.request("GET", "/plugins"))


# -- the asyncio client ------------------------------------------------------------------------
class AsyncClient:
    """The same API for asyncio programs (aiohttp). Use ``async with``, or ``close()``."""

    def __init__(self, url: str, token: str | None = None, *,
                 timeout: float = DEFAULT_TIMEOUT) -> None:  # fmt: skip
        self.url = url.rstrip("/")
        self.token = token
        self.timeout = timeout
        self._session: Any = None

    @classmethod
    def discover(cls, config: str | Path | None = None, *, url: str | None = None,
                 token: str | None = None, data_dir: str | Path | None = None,
                 timeout: float = DEFAULT_TIMEOUT) -> AsyncClient:  # fmt: skip
        found_url, found_token = discover(config, url=url, token=token, data_dir=data_dir)
        return cls(found_url, found_token, timeout=timeout)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:  # fmt: skip
        await self.close()

    async def close(self) -> None:
        """Close the connection pool. Idempotent."""
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    def _client(self) -> Any:
        if self._session is None:
            import aiohttp

            headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
            self._session = aiohttp.ClientSession(
                headers=headers, timeout=aiohttp.ClientTimeout(total=self.timeout)
            )
        return self._session

    async def request(self, method: str, path: str, body: Any = None,
                      headers: dict[str, str] | None = None) -> Any:  # fmt: skip
        status, answer = await self._send(method, path, body, headers)
        if status >= 400:
            raise _http_error(status, answer)
        return answer

    async def _send(self, method: str, path: str, body: Any,
                    headers: dict[str, str] | None) -> tuple[int, Any]:  # fmt: skip
        import aiohttp

        data = json.dumps(body).encode() if body is not None else None
        hdrs = {"Content-Type": "application/json", **(headers or {})}
        try:
            async with self._client().request(method, f"{self.url}{PREFIX}{path}", data=data,
                                              headers=hdrs) as resp:  # fmt: skip
                status, raw = resp.status, await resp.read()
        except (aiohttp.InvalidURL, ValueError) as err:
            raise BadURL(f"{self.url!r} is not an http:// URL ({err})") from err
        except (TimeoutError, aiohttp.ClientConnectorError, OSError) as err:
            raise Unreachable(
                f"daemon not reachable at {self.url} ({err}); is it running?"
            ) from err
        except aiohttp.ClientError as err:
            why = " ".join(str(err).split())
            raise NotADaemon(f"{self.url} is not a mechaway daemon ({why})") from err
        try:
            return status, json.loads(raw or (b"{}" if status >= 400 else b"null"))
        except ValueError as err:
            if status >= 400:
                return status, {}
            raise NotADaemon(
                f"{self.url} is not a mechaway daemon (its answer is not JSON)"
            ) from err

    async def health(self) -> dict[str, Any]:
        return dict(await self.request("GET", "/health"))

    async def flows(self) -> list[FlowInfo]:
        return [_flow_info(d) for d in await self.request("GET", "/flows")]

    async def flow(self, flow_id: str) -> FlowDoc:
        return _flow_doc(await self.request("GET", f"/flows/{_q(flow_id)}"))

    async def deploy(self, doc: dict[str, Any], *, flow_id: str | None = None,
                     if_rev: int | None = None) -> Deployed:  # fmt: skip
        fid = _deploy_args(doc, flow_id)
        headers = {"If-Match": f'"{if_rev}"'} if if_rev is not None else None
        return _deployed(await self.request("PUT", f"/flows/{_q(fid)}", doc, headers))

    async def delete(self, flow_id: str) -> None:
        await self.request("DELETE", f"/flows/{_q(flow_id)}")

    async def history(self, flow_id: str) -> list[Revision]:
        answer = await self.request("GET", f"/flows/{_q(flow_id)}/revisions")
        return [_revision(d) for d in answer]

    async def rollback(self, flow_id: str, rev: int) -> Deployed:
        answer = await self.request("POST", f"/flows/{_q(flow_id)}/rollback", {"rev": rev})
        return _deployed(answer)

    async def validate(self, doc: Any) -> Validation:
        status, answer = await self._send("POST", "/validate", doc, None)
        if status in (200, 422) and isinstance(answer, dict):
            return _validation(answer)
        raise _http_error(status, answer)

    async def status(self) -> dict[str, Any]:
        return dict(await self.request("GET", "/status"))

    async def series(self, name: str, *, start: float | str | None = None,
                     end: float | str | None = None, agg: str | None = None,
                     bucket: float | None = None,
                     limit: int | None = None) -> dict[str, Any]:  # fmt: skip
        path = f"/series/{_q(name)}{_series_query(start, end, agg, bucket, limit)}"
        return dict(await self.request("GET", path))

    async def schema(self, node_type: str | None = None) -> dict[str, Any]:
        path = f"/schema/{_q(node_type)}" if node_type else "/schema"
        return dict(await self.request("GET", path))

    async def plugins(self) -> list[dict[str, Any]]:
        return list(await self.request("GET", "/plugins"))
