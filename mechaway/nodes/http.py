"""HTTP nodes: webhooks in, the flow's answer, requests out.

``WebhookNode`` (requests in), ``HTTPResponseNode`` (the flow's answer) and
``HTTPRequestNode`` (requests out, through the ``[http.NAME]`` client driver).

A ``WebhookNode`` is served by the daemon's own HTTP server (the admin API's port) at
``/webhook/{flow_id}/{path}``; ``mechaway.api.webhook`` finds the node in the running
flow, checks the method, the hook's token and the body's size, parses the body and calls
``WebhookNode.accept``. Nothing here imports aiohttp: the server side lives in the API,
the client side in the driver.

The answer: ``202 Accepted`` once the flow has taken the message (its pure nodes ran, its
sinks queued it, and what the flow makes durable, e.g. the outbox, is on disk: the same
receipts an MQTT QoS 1 PUBACK waits for); or, when the flow has an ``HTTPResponseNode``,
that node's answer (status, headers, body from the message), correlated by the request id
in ``msg.http.id``, or ``504`` after ``timeout_s``.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import os
import re
import time
from collections.abc import Callable
from typing import Annotated, Any, ClassVar, Literal
from urllib.parse import parse_qs, quote

import msgspec
import orjson
from msgspec import Meta

from mechaway.codec import DECODERS, json_default
from mechaway.errors import MechawayError, StoreUnavailable
from mechaway.nodes.base import (
    Message,
    Node,
    NodeParams,
    Result,
    SinkNode,
    SinkParams,
    SourceNode,
    compile_template,
    emit_collecting,
    get_path,
    split_path,
)
from mechaway.nodes.context import NodeContext
from mechaway.nodes.registry import register_node

__all__ = [
    "Answer",
    "BadRequest",
    "HTTPRequestNode",
    "HTTPResponseNode",
    "WebhookNode",
    "normalize_path",
]

#: a hook's path: segments of URL-safe characters (no empty, ``.`` or ``..`` segment)
PATH_PATTERN = r"^/?[A-Za-z0-9_~-][A-Za-z0-9_.~-]*(/[A-Za-z0-9_~-][A-Za-z0-9_.~-]*)*$"
#: a token: at least 16 characters (or sha256:<64 hex digits>)
TokenStr = Annotated[str, Meta(min_length=16)]
HookMethod = Literal["POST", "PUT", "PATCH", "GET", "DELETE"]
#: request headers never copied into a message (credentials)
SECRET_HEADERS = frozenset({"authorization", "x-mechaway-token", "cookie", "proxy-authorization"})
#: response headers a flow may not set (the server owns framing and connection handling)
HOP_HEADERS = frozenset({
    "connection", "keep-alive", "transfer-encoding", "content-length", "content-encoding",
    "upgrade", "te", "trailer", "proxy-authenticate", "proxy-connection", "date", "server",
})  # fmt: skip
_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")


def normalize_path(path: str) -> str:
    """``"/grade"`` and ``"grade"`` name the same hook: ``grade``."""
    return path.strip("/")


class Answer:
    """What the server sends back for one request (a plain class: one is made per
    request, and a frozen dataclass's ``__init__`` costs several times more)."""

    __slots__ = ("body", "content_type", "headers", "status")

    def __init__(
        self,
        status: int,
        body: bytes = b"",
        content_type: str = "application/json",
        headers: dict[str, str] | None = None,
    ) -> None:
        self.status = status
        self.body = body
        self.content_type = content_type
        #: extra headers (shared between answers: never mutated)
        self.headers = headers if headers is not None else _NO_HEADERS


_NO_HEADERS: dict[str, str] = {}


def json_answer(status: int, data: Any) -> Answer:
    return Answer(status, orjson.dumps(data))


class BadRequest(MechawayError):
    """A request body the hook cannot take: ``status`` (400, 415) and why."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


# -- request ids and the answers waited for -----------------------------------------------------
_PREFIX = os.urandom(4).hex()
_SEQ = itertools.count(1)
#: request id -> the future its webhook waits on (set by an HTTPResponseNode)
_PENDING: dict[str, asyncio.Future[Answer]] = {}


def _request_id() -> str:
    return f"{_PREFIX}-{next(_SEQ):x}"


def pending_answers() -> int:
    """Requests waiting for a flow's answer now (all hooks)."""
    return len(_PENDING)


# -- the webhook ----------------------------------------------------------------------------------
class WebhookParams(NodeParams):
    path: Annotated[
        str,
        Meta(
            pattern=PATH_PATTERN,
            description="served at /webhook/{flow_id}/{path} on the daemon's HTTP port (a "
            "leading / is optional: /grade and grade are the same hook)",
        ),
    ]
    methods: Annotated[
        list[HookMethod],
        Meta(min_length=1, description="HTTP methods the hook takes (others get 405)"),
    ] = msgspec.field(default_factory=lambda: ["POST"])
    token: Annotated[
        TokenStr | None,
        Meta(
            description="when set, a request must carry Authorization: Bearer <token> or "
            "X-Mechaway-Token: <token> (compared in constant time; the API's admin token "
            "does not open a hook). sha256:<64 hex> stores only the token's SHA-256. "
            "Without one the hook is open to anyone who reaches the port",
        ),
    ] = None
    max_body_bytes: Annotated[
        int,
        Meta(ge=0, le=64 << 20, description="largest request body taken (larger: 413)"),
    ] = 1 << 20
    respond: Annotated[
        Literal["auto", "accepted", "flow"],
        Meta(
            description="accepted: 202 once the flow took the message; flow: wait for an "
            "HTTPResponseNode's answer (504 after timeout_s); auto: flow when the flow has "
            "an HTTPResponseNode, else accepted"
        ),
    ] = "auto"
    timeout_s: Annotated[
        float,
        Meta(
            gt=0,
            le=300,
            description="seconds to wait for the flow's answer (504), or for room in a full "
            "flow (503)",
        ),
    ] = 10.0
    body_timeout_s: Annotated[
        float,
        Meta(gt=0, le=300, description="seconds a client has to send its body (then 408)"),
    ] = 10.0
    max_in_flight: Annotated[
        int,
        Meta(
            ge=1,
            le=100_000,
            description="requests this hook handles at once, at most (more: 503 at once)",
        ),
    ] = 256

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.token is not None and self.token.startswith("sha256:"):
            digest = self.token[len("sha256:") :]
            if not re.fullmatch(r"[0-9a-fA-F]{64}", digest):
                raise ValueError("token: sha256: must be followed by 64 hex digits")


#: the counters a WebhookNode keeps (its status, and /metrics)
HOOK_COUNTERS = ("requests", "accepted", "answered", "unauthorized", "too_large",
                 "bad_request", "timeouts", "busy", "store_refused")  # fmt: skip


@register_node("WebhookNode")
class WebhookNode(SourceNode[WebhookParams]):
    """Receive HTTP requests at ``/webhook/{flow_id}/{path}``; each becomes a message
    ``{payload, topic, ts, http: {id, method, path, query, headers, remote}}``.

    The body is parsed by its Content-Type: JSON (``application/json``, ``+json``),
    a form (``application/x-www-form-urlencoded``: a dict, repeated keys as lists) or
    text (``text/*``, or no type); others are 415, a body that does not parse 400, one
    over ``max_body_bytes`` 413. The answer is 202 once the flow took the message, or an
    ``HTTPResponseNode``'s (see ``respond``). Credentials (Authorization, Cookie, the
    token header) never enter the message.
    """

    Params = WebhookParams
    ports: ClassVar[tuple[str, ...]] = ("out",)

    def __init__(self, node_id: str, params: WebhookParams, ctx: NodeContext) -> None:
        super().__init__(node_id, params, ctx)
        self.route = normalize_path(params.path)
        self.methods = frozenset(params.methods)
        self.counts: dict[str, int] = dict.fromkeys(HOOK_COUNTERS, 0)
        self.in_flight = 0
        token = params.token
        self._hashed = token is not None and token.startswith("sha256:")
        if token is None:
            self._token = b""
        elif self._hashed:
            self._token = token[len("sha256:") :].lower().encode()
        else:
            self._token = token.encode()

    @classmethod
    def claims(cls, params: WebhookParams) -> tuple[str, ...]:
        return (f"webhook path /{normalize_path(params.path)}",)

    @property
    def protected(self) -> bool:
        return bool(self._token)

    def authorize(self, presented: bytes | None) -> bool:
        """Is ``presented`` (the bare token from a header) this hook's token? Constant time."""
        if not self._token:
            return True
        if presented is None:
            return False
        if self._hashed:
            presented = hashlib.sha256(presented).hexdigest().encode()
        import hmac  # here: a daemon without protected hooks never loads it

        return hmac.compare_digest(presented, self._token)

    def parse_body(self, content_type: str, charset: str | None, data: bytes) -> Any:
        """The payload a body makes; ``BadRequest`` (400/415) when it cannot."""
        ctype = content_type.lower()
        if ctype == "application/json" or ctype.endswith("+json"):
            if not data:
                return None
            try:
                return DECODERS["json"](data)
            except ValueError as err:
                raise BadRequest(400, f"body is not valid JSON: {err}") from None
        if not (ctype.startswith("text/") or ctype in ("", "application/x-www-form-urlencoded")):
            raise BadRequest(
                415,
                f"Content-Type {content_type[:60]!r} is not taken here: send application/json,"
                " application/x-www-form-urlencoded or text/*",
            )
        text = self._text(charset, data)
        if ctype == "application/x-www-form-urlencoded":
            try:
                fields = parse_qs(text, keep_blank_values=True, max_num_fields=1000,
                                  strict_parsing=False)  # fmt: skip
            except ValueError as err:
                raise BadRequest(400, f"form body: {err}") from None
            return {k: v[0] if len(v) == 1 else v for k, v in fields.items()}
        return text

    @staticmethod
    def _text(charset: str | None, data: bytes) -> str:
        try:
            return data.decode(charset or "utf-8")
        except (UnicodeDecodeError, LookupError):
            raise BadRequest(400, f"body is not valid {charset or 'utf-8'} text") from None

    def message(
        self,
        payload: Any,
        *,
        method: str,
        path: str,
        query: dict[str, Any],
        headers: dict[str, str],
        remote: str | None,
    ) -> Message:
        return {
            "payload": payload,
            "topic": self.route,
            "ts": time.time(),
            "http": {
                "id": _request_id(),
                "method": method,
                "path": path,
                "query": query,
                "headers": {
                    k.lower(): v for k, v in headers.items() if k.lower() not in SECRET_HEADERS
                },
                "remote": remote,
            },
        }

    async def accept(self, msg: Message, *, wait: bool) -> Answer:
        """Hand ``msg`` to the flow; the answer to send (202, the flow's, 503 or 504)."""
        counts = self.counts
        if self.in_flight >= self.params.max_in_flight:
            counts["busy"] += 1
            return json_answer(503, {"error": f"hook busy: {self.in_flight} requests in flight"})
        self.in_flight += 1
        rid: str = msg["http"]["id"]
        try:
            if self.blocked():  # a ``block`` sink of the flow is full: wait for room
                try:
                    await asyncio.wait_for(self.room(), self.params.timeout_s)
                except TimeoutError:
                    counts["busy"] += 1
                    return json_answer(503, {"error": "the flow is full: retry later"})
            fut: asyncio.Future[Answer] | None = None
            if wait:
                fut = _PENDING[rid] = asyncio.get_running_loop().create_future()
            receipts = emit_collecting(self.emit, msg)
            if receipts:
                for result in await asyncio.gather(*receipts, return_exceptions=True):
                    if isinstance(result, StoreUnavailable):
                        counts["store_refused"] += 1
                        return json_answer(503, {"error": f"not stored: {result}"})
            if fut is None:
                counts["accepted"] += 1
                return json_answer(202, {"accepted": True, "id": rid})
            try:
                # an answer made while emit ran (a flow of pure nodes) is taken at once:
                # wait_for would cost a loop iteration more
                answer = fut.result() if fut.done() else await asyncio.wait_for(
                    fut, self.params.timeout_s
                )
            except TimeoutError:
                counts["timeouts"] += 1
                self.ctx.burst.warning(
                    "webhook /%s: no answer from the flow within %g s (504)",
                    self.route,
                    self.params.timeout_s,
                )
                return json_answer(504, {"error": "the flow did not answer in time", "id": rid})
            counts["answered"] += 1
            return answer
        finally:
            self.in_flight -= 1
            _PENDING.pop(rid, None)

    def status(self) -> dict[str, Any] | None:
        return {**self.counts, "in_flight": self.in_flight, "path": f"/{self.route}"}


# -- the flow's answer ----------------------------------------------------------------------------
Encoding = Literal["auto", "json", "text", "bytes"]


class HTTPResponseParams(NodeParams):
    status: Annotated[
        int,
        Meta(ge=100, le=599, description="status when the message has no integer status field"),
    ] = 200
    headers: Annotated[
        dict[str, str],
        Meta(description="headers of every answer (the message's headers field adds to them)"),
    ] = msgspec.field(default_factory=dict)
    property: Annotated[
        str, Meta(description='what becomes the body: a dotted path into the message, "" for all')
    ] = "payload"
    encode: Annotated[
        Encoding,
        Meta(
            description="auto: a string as text/plain, bytes as they are, anything else as "
            "JSON; json, text, or bytes (base64 text in the message)"
        ),
    ] = "auto"


@register_node("HTTPResponseNode")
class HTTPResponseNode(Node[HTTPResponseParams]):
    """Answer the webhook request a message came from (found by ``msg.http.id``).

    Status: the message's ``status`` (an integer 100-599), else the ``status`` param;
    headers: the ``headers`` param, then the message's ``headers`` (a dict of strings;
    framing headers such as Content-Length are the server's and left out); body: the
    ``property`` of the message, encoded. A message whose request was already answered
    or timed out (504) is counted (``late``) and dropped. A node that rebuilds messages
    (Lua) must keep ``http``: ``return {http = msg.http, payload = ...}``.
    """

    Params = HTTPResponseParams
    ports: ClassVar[tuple[str, ...]] = ()

    def __init__(self, node_id: str, params: HTTPResponseParams, ctx: NodeContext) -> None:
        super().__init__(node_id, params, ctx)
        self._keys = split_path(params.property)
        key = self._keys[0] if len(self._keys) == 1 else None
        #: the usual ``property`` (``payload``): one key, read without get_path
        self._key: str | None = key if isinstance(key, str) else None
        fixed = {k: v for k, v in params.headers.items() if _header_ok(k, v)}
        self._ctype = next((v for k, v in fixed.items() if k.lower() == "content-type"), None)
        self._headers = {k: v for k, v in fixed.items() if k.lower() != "content-type"}
        self.late = 0
        self.bad_headers = 0

    @classmethod
    def check(cls, params: HTTPResponseParams) -> list[str]:
        return [
            f"headers: {k!r} cannot be sent (a framing header, or not a valid name/value)"
            for k, v in params.headers.items()
            if not _header_ok(k, v)
        ]

    def process(self, msg: Message) -> Result:
        http = msg.get("http")
        rid = http.get("id") if type(http) is dict else None
        if not isinstance(rid, str):
            raise ValueError(
                "the message has no http.id: it did not come from a WebhookNode, or a node "
                "on the way dropped msg.http"
            )
        fut = _PENDING.pop(rid, None)
        if fut is None or fut.done():
            self.late += 1
            self.stats.dropped += 1
            return None
        try:
            answer = self._answer(msg)
        except Exception:
            fut.set_result(json_answer(500, {"error": "the flow's answer could not be made"}))
            raise
        fut.set_result(answer)
        return None

    def _answer(self, msg: Message) -> Answer:
        p = self.params
        status = msg.get("status")
        if type(status) is not int or not 100 <= status <= 599:
            status = p.status
        if self._key is not None:
            value = msg.get(self._key)
        else:
            value = get_path(msg, self._keys) if self._keys else msg
        body, default_type = _encode_body(value, p.encode)
        extra = msg.get("headers")
        if type(extra) is not dict or not extra:  # the usual answer: the param headers only
            return Answer(status, body, self._ctype or default_type, self._headers)
        headers = dict(self._headers)
        ctype = self._ctype
        for k, v in extra.items():
            if isinstance(k, str) and isinstance(v, str) and _header_ok(k, v):
                if k.lower() == "content-type":
                    ctype = v
                else:
                    headers[k] = v
            else:
                self.bad_headers += 1
        return Answer(status, body, ctype or default_type, headers)

    def status(self) -> dict[str, Any] | None:
        return {"late": self.late, "bad_headers": self.bad_headers}


def _header_ok(name: str, value: str) -> bool:
    return (
        bool(_HEADER_NAME.match(name))
        and name.lower() not in HOP_HEADERS
        and "\r" not in value
        and "\n" not in value
        and "\0" not in value
    )


def _encode_body(value: Any, encode: Encoding) -> tuple[bytes, str]:
    """(body, its default Content-Type)."""
    if encode == "auto":
        if value is None:
            return b"", "application/octet-stream"
        if isinstance(value, str):
            return value.encode(), "text/plain; charset=utf-8"
        if isinstance(value, bytes | bytearray):
            return bytes(value), "application/octet-stream"
        encode = "json"
    if encode == "json":
        return orjson.dumps(value, default=json_default), "application/json"
    if encode == "text":
        text = value if isinstance(value, str) else orjson.dumps(value, default=json_default)
        return (text.encode() if isinstance(text, str) else text), "text/plain; charset=utf-8"
    from mechaway.codec import ENCODERS

    return ENCODERS["bytes"](value), "application/octet-stream"


# -- requests out ---------------------------------------------------------------------------------
RequestMethod = Literal["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD"]


class HTTPRequestParams(SinkParams, kw_only=True):
    url: Annotated[
        str,
        Meta(
            min_length=8,
            description="http:// or https:// URL; {field} parts are taken from the message "
            "and percent-encoded: https://api.example/items/{payload.id}",
        ),
    ]
    method: Annotated[RequestMethod, Meta(description="HTTP method")] = "GET"
    connection: Annotated[
        str,
        Meta(description="name of the [http.NAME] client pool (default needs no section)"),
    ] = "default"
    headers: Annotated[
        dict[str, str], Meta(description="request headers (static)")
    ] = msgspec.field(default_factory=dict)
    body: Annotated[
        Literal["auto", "json", "text", "none"],
        Meta(
            description="what is sent: auto (nothing for GET/HEAD/DELETE, a string as text, "
            "anything else as JSON), json, text, or none"
        ),
    ] = "auto"
    property: Annotated[
        str, Meta(description='what the body is made of: a dotted path, "" for the message')
    ] = "payload"
    decode: Annotated[
        Literal["auto", "json", "text", "bytes"],
        Meta(
            description="how the response body becomes the payload: auto (JSON when its "
            "Content-Type says so, text for text/*, else bytes as base64), json, text, bytes"
        ),
    ] = "auto"
    timeout_s: Annotated[
        float, Meta(gt=0, le=600, description="seconds one attempt may take, in all")
    ] = 10.0
    connect_timeout_s: Annotated[
        float, Meta(gt=0, le=600, description="seconds to open a connection")
    ] = 5.0
    retries: Annotated[
        int,
        Meta(
            ge=0,
            le=10,
            description="attempts after the first on a connection error, a timeout or a "
            "retry_on status (a POST retried may be done twice by the server)",
        ),
    ] = 2
    backoff_s: Annotated[
        float, Meta(gt=0, le=60, description="first wait between attempts (doubling, jittered)")
    ] = 0.5
    backoff_max_s: Annotated[
        float, Meta(gt=0, le=600, description="longest wait between attempts")
    ] = 10.0
    retry_on: Annotated[
        list[Annotated[int, Meta(ge=100, le=599)]],
        Meta(description="response statuses that are retried (Retry-After honoured)"),
    ] = msgspec.field(default_factory=lambda: [429, 502, 503, 504])
    concurrency: Annotated[
        int,
        Meta(
            ge=1,
            le=256,
            description="requests in flight at once, at most (more wait in the queue, "
            "whose queue_size and overflow apply)",
        ),
    ] = 4
    max_response_bytes: Annotated[
        int, Meta(ge=0, le=64 << 20, description="largest response body read (larger: error)")
    ] = 1 << 20

    def __post_init__(self) -> None:
        super().__post_init__()
        head = self.url.split("{", 1)[0].lower()
        if not (head.startswith("http://") or head.startswith("https://")) or len(head) < 8:
            raise ValueError("url must begin with http:// or https:// and a host (not a field)")
        if self.backoff_s > self.backoff_max_s:
            raise ValueError("backoff_s must be <= backoff_max_s")


def compile_url(template: str) -> Callable[[Message], str]:
    """``"http://h/x/{payload.id}"`` -> a function rendering it, values percent-encoded."""

    def encode(v: Any) -> str:
        return quote(v if isinstance(v, str) else orjson.dumps(v).decode(), safe="")

    return compile_template(template, encode, "url")


@register_node("HTTPRequestNode")
class HTTPRequestNode(SinkNode[HTTPRequestParams]):
    """Send an HTTP request per message; the response goes on as
    ``{**msg, payload: body, status, headers, url}`` (any status: a 404 is an answer).

    Requests that get no response after their retries (connection refused, timeout, a
    body over ``max_response_bytes``) are errors: counted, and sent to the ``error`` port.
    At most ``concurrency`` requests are in flight; the rest wait in the sink's bounded
    queue. The connection pool, TLS settings and counters are the ``[http.NAME]`` driver's.
    """

    Params = HTTPRequestParams
    ports: ClassVar[tuple[str, ...]] = ("out",)

    def __init__(self, node_id: str, params: HTTPRequestParams, ctx: NodeContext) -> None:
        super().__init__(node_id, params, ctx)
        self._url = compile_url(params.url)
        self._keys = split_path(params.property)
        self._slots = asyncio.Semaphore(params.concurrency)
        self._tasks: set[asyncio.Task[None]] = set()
        self._driver: Any = None
        self._retry: Any = None
        self.in_flight = 0
        self.failed = 0
        self.responses = 0

    async def start(self) -> None:
        from mechaway.drivers.http import Retry

        p = self.params
        self._driver = await self.ctx.services.connection("http", p.connection)
        self._retry = Retry(p.retries, p.backoff_s, p.backoff_max_s, frozenset(p.retry_on))

    async def stop(self) -> None:
        tasks = list(self._tasks)
        for t in tasks:
            t.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    async def write(self, msg: Message) -> Result:
        # the sink's one writer waits here while ``concurrency`` requests are in flight:
        # the queue behind it fills, and its overflow policy applies
        await self._slots.acquire()
        task = asyncio.get_running_loop().create_task(
            self._run(msg), name=f"mechaway.http[{self.ctx.flow_id}.{self.id}]"
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return None

    async def _run(self, msg: Message) -> None:
        self.in_flight += 1
        try:
            out = await self._request(msg)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._fail(msg, exc)
        else:
            self.responses += 1
            self.emit(out)
        finally:
            self.in_flight -= 1
            self._slots.release()

    def _body(self, msg: Message) -> tuple[bytes | None, str | None]:
        p = self.params
        mode = p.body
        if mode == "none" or (mode == "auto" and p.method in ("GET", "HEAD", "DELETE")):
            return None, None
        value = get_path(msg, self._keys) if self._keys else msg
        if mode == "text" or (mode == "auto" and isinstance(value, str)):
            text = value if isinstance(value, str) else orjson.dumps(value, default=json_default)
            data = text.encode() if isinstance(text, str) else text
            return data, "text/plain; charset=utf-8"
        return orjson.dumps(value, default=json_default), "application/json"

    async def _request(self, msg: Message) -> Message:
        p = self.params
        url = self._url(msg)
        data, ctype = self._body(msg)
        headers = dict(p.headers)
        if ctype is not None and not any(k.lower() == "content-type" for k in headers):
            headers["Content-Type"] = ctype
        resp = await self._driver.request(
            p.method, url, headers=headers, data=data, timeout_s=p.timeout_s,
            connect_timeout_s=p.connect_timeout_s, retry=self._retry,
            max_bytes=p.max_response_bytes,
        )  # fmt: skip
        return {
            **msg,
            "payload": _decode_response(resp.body, resp.content_type, p.decode),
            "status": resp.status,
            "headers": resp.headers,
            "url": resp.url,
        }

    def _fail(self, msg: Message, exc: BaseException) -> None:
        """What the engine does for a failing node, from this node's own task."""
        from mechaway.errors import error_text

        self.failed += 1
        st = self.stats
        st.errors += 1
        st.last_error = f"{type(exc).__name__}: {error_text(exc)}"
        st.last_error_ts = time.time()
        self.ctx.burst.warning("node failed: %s", st.last_error)
        err = {
            **msg,
            "error": {
                "flow": self.ctx.flow_id,
                "node": self.id,
                "type": type(exc).__name__,
                "kind": getattr(exc, "kind", None),
                "message": error_text(exc),
            },
        }
        self.emit(err, "error")
        st.out -= 1  # the error port is not an output (the engine counts it the same way)

    def status(self) -> dict[str, Any] | None:
        return {"in_flight": self.in_flight, "responses": self.responses, "failed": self.failed}


def _decode_response(body: bytes, content_type: str, decode: str) -> Any:
    """The payload a response body makes (``decode`` json/text may raise ValueError)."""
    if decode != "auto":
        return DECODERS[decode](body)
    ct = content_type.lower()
    if ct == "application/json" or ct.endswith("+json"):
        if not body:
            return None
        try:
            return DECODERS["json"](body)
        except ValueError:  # a server that says JSON and sends an error page: as text
            decode = "text"
    if decode == "text" or ct.startswith("text/") or ct == "application/xml":
        try:
            return DECODERS["text"](body)
        except ValueError:
            pass
    return DECODERS["bytes"](body)
