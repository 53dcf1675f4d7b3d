"""``/webhook/{flow_id}/{path}``: the server side of ``WebhookNode`` (mechaway.nodes.http).

The admin API's middleware has already checked ``Host`` and, for a request that changes
something, ``Origin`` (a web page elsewhere cannot post to a hook unless its origin is in
``api.allowed_origins``). What is checked here, in this order, each answered with a JSON
error and counted on the hook: the hook exists in the running flow (404), the method
(405), the hook's own token (401: the API's admin and read-only tokens do not open a
hook, and a hook token opens nothing else), the body's size (413, at once when
Content-Length says so) and time (408), its parsing (400/415). Wrong tokens slow their
sender down with the API's own throttle.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from typing import Any

import orjson
from aiohttp import web

from mechaway.api.auth import Guard
from mechaway.logs import BurstLog
from mechaway.nodes.http import Answer, BadRequest, HTTPResponseNode, WebhookNode, normalize_path
from mechaway.runtime.engine import Engine, RunningFlow

log = logging.getLogger("mechaway.api.webhook")

ENGINE: web.AppKey[Engine] = web.AppKey("webhook_engine", Engine)
HOOK_GUARD: web.AppKey[Guard] = web.AppKey("webhook_guard", Guard)
#: requests to hooks that do not exist, per app (/metrics)
UNKNOWN: web.AppKey[list[int]] = web.AppKey("webhook_unknown", list)

#: bytes read from a request body at a time
CHUNK = 64 * 1024

#: flow id -> (its running revision, that revision's hooks by path, whether it answers
#: through an HTTPResponseNode); a deploy makes a new RunningFlow, so a new index
_INDEX: dict[str, tuple[weakref.ref[RunningFlow], dict[str, WebhookNode], bool]] = {}
_burst = BurstLog(log)


def _error(status: int, message: str, **extra: Any) -> web.Response:
    return web.Response(
        body=orjson.dumps({"error": message, **extra}),
        status=status,
        content_type="application/json",
    )


def find_hook(engine: Engine, flow_id: str, path: str) -> tuple[WebhookNode, bool] | None:
    """The running WebhookNode at ``path`` of ``flow_id`` and whether its flow answers."""
    rf = engine.flows.get(flow_id)
    if rf is None:
        _INDEX.pop(flow_id, None)
        return None
    index = _INDEX.get(flow_id)
    if index is None or index[0]() is not rf:
        hooks = {n.route: n for n in rf.instances.values() if isinstance(n, WebhookNode)}
        answers = any(isinstance(n, HTTPResponseNode) for n in rf.instances.values())
        index = _INDEX[flow_id] = (weakref.ref(rf), hooks, answers)
    hook = index[1].get(normalize_path(path))
    return (hook, index[2]) if hook is not None else None


def presented_token(request: web.Request) -> bytes | None:
    """The bare token of ``Authorization: Bearer`` or ``X-Mechaway-Token`` (None: none)."""
    auth = request.headers.get("Authorization")
    if auth is not None:
        raw = auth.encode("utf-8", "surrogateescape")
        return raw[len(b"Bearer ") :] if raw.startswith(b"Bearer ") else b""
    other = request.headers.get("X-Mechaway-Token")
    return other.encode("utf-8", "surrogateescape") if other is not None else None


async def refuse_token(request: web.Request, guard: Guard, what: str) -> web.Response:
    """401 for a wrong or missing hook token, slowed down like the API's own."""
    peer = request.remote or "?"
    guard.throttle.failed(peer)
    delay = guard.throttle.delay(peer)
    guard.refuse("token", "wrong or missing token for %s from %s", what, peer)
    if delay:
        await asyncio.sleep(delay)
    resp = _error(401, f"missing or wrong token for {what} (the hook's own token, not the API's)")
    resp.headers["WWW-Authenticate"] = 'Bearer realm="mechaway-hook"'
    return resp


async def _read(request: web.Request, hook: WebhookNode) -> bytes | web.Response:
    """The body, or the error response (413, 408)."""
    cap = hook.params.max_body_bytes
    if (request.content_length or 0) > cap:
        hook.counts["too_large"] += 1
        return _error(413, f"request body larger than {cap} bytes (the hook's max_body_bytes)")
    content = request.content
    if content.is_eof():  # the whole body came with the headers: no timer, no wait
        data = content.read_nowait()
        if len(data) > cap:
            hook.counts["too_large"] += 1
            return _error(413, f"request body larger than {cap} bytes (the hook's max_body_bytes)")
        return data
    buf = bytearray()
    try:
        async with asyncio.timeout(hook.params.body_timeout_s):
            while True:
                chunk = await content.read(CHUNK)
                if not chunk:
                    break
                buf += chunk
                if len(buf) > cap:
                    hook.counts["too_large"] += 1
                    return _error(
                        413, f"request body larger than {cap} bytes (the hook's max_body_bytes)"
                    )
    except TimeoutError:
        hook.counts["bad_request"] += 1
        return _error(408, f"request body not received within {hook.params.body_timeout_s:g} s")
    return bytes(buf)


def _query(request: web.Request) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k in request.query:
        values = request.query.getall(k)
        out[k] = values[0] if len(values) == 1 else values
    return out


def _response(answer: Answer) -> web.Response:
    resp = web.Response(status=answer.status, body=answer.body, headers=answer.headers)
    resp.headers["Content-Type"] = answer.content_type
    return resp


async def handle(request: web.Request) -> web.StreamResponse:
    """``{METHOD} /webhook/{flow_id}/{path}``."""
    app = request.app
    fid = request.match_info["flow_id"]
    path = request.match_info["path"]
    found = find_hook(app[ENGINE], fid, path)
    if found is None:
        app[UNKNOWN][0] += 1
        return _error(404, f"no webhook /{path[:100]} in a running flow {fid[:100]!r}")
    hook, answers = found
    hook.counts["requests"] += 1
    if request.method not in hook.methods:
        hook.counts["bad_request"] += 1
        allowed = ", ".join(sorted(hook.methods))
        resp = _error(405, f"{request.method} not allowed here (allowed: {allowed})")
        resp.headers["Allow"] = allowed
        return resp
    if hook.protected and not hook.authorize(presented_token(request)):
        hook.counts["unauthorized"] += 1
        return await refuse_token(request, app[HOOK_GUARD], f"webhook /{hook.route}")
    body = await _read(request, hook)
    if isinstance(body, web.Response):
        return body
    try:
        payload = hook.parse_body(
            request.content_type if "Content-Type" in request.headers else "",
            request.charset,
            body,
        )
    except BadRequest as err:
        hook.counts["bad_request"] += 1
        _burst.warning("webhook %s/%s: %s (%d)", fid, hook.route, err, err.status)
        return _error(err.status, str(err))
    msg = hook.message(
        payload,
        method=request.method,
        path=request.path,
        query=_query(request),
        headers=dict(request.headers),
        remote=request.remote,
    )
    respond = hook.params.respond
    wait = respond == "flow" or (respond == "auto" and answers)
    return _response(await hook.accept(msg, wait=wait))


def setup_webhooks(app: web.Application, engine: Engine, guard: Guard) -> None:
    """Serve ``/webhook/{flow_id}/{path}`` (every method: the hook says which it takes)."""
    app[ENGINE] = engine
    app[HOOK_GUARD] = guard
    app[UNKNOWN] = [0]
    app.router.add_route("*", "/webhook/{flow_id}/{path:.+}", handle)
