"""The browser flow editor: the built bundle in ``editor_dist/`` served at ``/``.

The bundle is built from ``editor/`` (React + TypeScript) and committed, so a device
needs no Node.js. ``index.html`` is never cached (it names the current assets); the
assets have content hashes in their names and are cached for a year. The page holds no
secret: it asks for the API token and sends it with every API call.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

from aiohttp import web

log = logging.getLogger("mechaway.api.editor")

DIST = Path(__file__).with_name("editor_dist")
#: assets are content-hashed by the build: a new build has new names
IMMUTABLE = "public, max-age=31536000, immutable"
_ASSET_RE = re.compile(r"^[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)*\.(?:js|css|svg|png|woff2)$")
_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    # React Flow and CodeMirror set inline styles; no inline or foreign script runs
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
        "img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
}
_MISSING = (
    "<!doctype html><title>mechaway</title><p>The editor bundle is not in this install "
    "(build it: <code>cd editor &amp;&amp; npm ci &amp;&amp; npm run build</code>). "
    "The API is at <code>/api/v1/</code>.</p>"
)


def setup_editor(app: web.Application, dist: Path = DIST) -> None:
    """Serve the editor at ``/`` and its assets at ``/assets/NAME``."""
    index_file = dist / "index.html"
    assets = (dist / "assets").resolve()
    try:
        index = index_file.read_bytes()
    except OSError:
        log.info("no editor bundle at %s: / answers with a note", dist)
        index = _MISSING.encode()

    async def page(request: web.Request) -> web.Response:
        return web.Response(
            body=index,
            content_type="text/html",
            charset="utf-8",
            headers={**_HEADERS, "Cache-Control": "no-cache"},
        )

    async def asset(request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        path = assets / name
        if not _ASSET_RE.match(name) or not path.is_file():
            raise web.HTTPNotFound()
        return web.FileResponse(path, headers={**_HEADERS, "Cache-Control": IMMUTABLE})

    app.router.add_get("/", page)
    app.router.add_get("/assets/{name}", asset)
