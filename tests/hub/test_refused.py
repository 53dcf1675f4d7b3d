"""A real edge refuses bundles it must not run: tampered, unsigned, replayed (also after a
restart), for another device. A fake hub in the test serves them; the edge's reports
come back to it in heartbeats."""

from __future__ import annotations

import asyncio
import base64
import threading
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web

from mechaway.hub.keys import Signer, generate_pem
from mechaway.hub.wire import bundle_payload, decode_batch, envelope

from .harness import edge, flow, wait_for

KEY = Signer(generate_pem(), "test key")


class FakeHub:
    """Answers heartbeats with the next queued envelope and records the edge's reports."""

    def __init__(self) -> None:
        self.queue: list[dict[str, Any]] = []
        self.reports: list[dict[str, Any]] = []
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._runner: web.AppRunner | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        assert self._ready.wait(10)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        app = web.Application()
        app.router.add_post("/api/v1/devices/{id}/heartbeat", self._beat)
        app.router.add_get("/api/v1/devices/{id}/bundle", self._poll)
        app.router.add_post("/api/v1/devices/{id}/telemetry", self._telemetry)
        self._runner = web.AppRunner(app)
        self._loop.run_until_complete(self._runner.setup())
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        self._loop.run_until_complete(site.start())
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self._ready.set()
        self._loop.run_forever()

    async def _beat(self, request: web.Request) -> web.Response:
        hb = orjson.loads(await request.read())
        self.reports += hb.get("reports", [])
        env = self.queue.pop(0) if self.queue else None
        return web.json_response({"bundle": env})

    async def _poll(self, request: web.Request) -> web.Response:
        await asyncio.sleep(0.5)
        return web.Response(status=204)

    async def _telemetry(self, request: web.Request) -> web.Response:
        b = decode_batch(await request.read())
        return web.json_response({"epoch": b.epoch, "acked": b.last, "live_hi": 0})

    def refusals(self) -> list[str]:
        return [r["detail"] for r in self.reports if r["result"] == "refused"]

    def close(self) -> None:
        async def stop() -> None:
            if self._runner is not None:
                await self._runner.cleanup()

        asyncio.run_coroutine_threadsafe(stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)


def signed(seq: int, flows: dict[str, Any], device: str = "edge-x") -> dict[str, str]:
    payload = bundle_payload(device, seq, flows)
    return envelope(payload, KEY.sign(payload))


def test_edge_refuses_bad_bundles(tmp_path: Path) -> None:
    hub = FakeHub()
    d = edge(
        tmp_path / "x", "edge-x", f"http://127.0.0.1:{hub.port}", "device-token-x",
        public_key=KEY.public_key,
    )  # fmt: skip
    try:
        good = {"a": flow("a", 1.0)}
        hub.queue.append(signed(5, good))
        d.start()
        d.wait(lambda: "a" in d.status()["flows"], 15, "the signed bundle to run")

        evil = {"a": flow("a", 1.0), "evil": flow("evil", 1.0)}
        tampered = signed(6, good)
        tampered["payload"] = base64.b64encode(bundle_payload("edge-x", 6, evil)).decode()
        unsigned = {**signed(7, evil), "sig": ""}
        steps = [
            (tampered, "bad signature"),
            (unsigned, "unsigned"),
            (signed(8, evil, device="edge-y"), "wrong device"),
            (signed(3, evil), "replayed"),
        ]
        for env, reason in steps:
            hub.queue.append(env)
            wait_for(lambda r=reason: any(r in x for x in hub.refusals()), 15, reason)
        assert d.status()["hub"]["refused"] == 4
        assert any(p.startswith("hub: last bundle refused") for p in d.status()["problems"])

        # after a restart the applied seq is remembered: an older bundle is still a replay
        d.terminate()
        hub.reports.clear()
        hub.queue.append(signed(4, evil))
        d.start()
        wait_for(lambda: any("replayed" in x for x in hub.refusals()), 15, "replay refused")
        assert sorted(d.status()["flows"]) == ["a"]
        assert d.status()["hub"]["bundle_seq"] == 5
    finally:
        d.kill9()
        hub.close()
